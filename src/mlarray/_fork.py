"""Fork safety: c-blosc2's thread pools do not survive ``fork()``.

c-blosc2 (3.x) runs multi-threaded (de)compression on process-wide worker pools,
one per thread count, that a context attaches to the first time it runs with
``nthreads > 1``. After ``fork()`` the child inherits the pools' bookkeeping but
not their threads, so in a forked data-loader worker

* a context attached in the parent, used in the child, queues work no thread
  picks up: the worker deadlocks;
* a new context with the same thread count attaches to the same dead pool;
* freeing a context that was the pool's last user, or ``blosc2_destroy()`` (which
  python-blosc2 runs at exit), joins threads that do not exist: the child hangs.

What mlarray does in a forked child (``os.register_at_fork``):

* every context it creates runs one thread (:func:`threads`: decompression via
  ``mlarray.io.clamp_dparams``, compression via ``mlarray.layout``);
* MLArrays made in the parent whose Blosc2 contexts may run threads (registered
  with :func:`track`: file handles, and in-memory arrays compressed or read with
  threads) get their Blosc2 objects *parked*: kept alive for the life of the
  process (never used, never freed). On its next use a file handle reopens its
  file with one thread, and an in-memory array is rebuilt from its compressed
  chunks with one thread (``MLArray._after_fork_in_child``; ``to_cframe`` copies
  the chunks without using the parked object's contexts);
* python-blosc2's exit hook ``blosc2_destroy()`` is unregistered (it would join
  the parent's pool threads; the process is exiting anyway).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import sys
import threading
import weakref
from typing import Any

__all__ = ["forked", "park", "reopen_lock", "threads", "track", "usable_cores"]

_forked = False
_CORES = os.cpu_count() or 1  # asked once: every open clamps its threads to it

# Serializes the reopening/rebuilding of parked stores in a forked child (a worker may
# use one MLArray from several threads). Replaced in the child: the parent's may be held.
_REOPEN_LOCK = threading.Lock()

# MLArrays of this process whose Blosc2 contexts may run threads. Weak: an array the
# program dropped is not kept alive for the sake of a possible fork.
_TRACKED: weakref.WeakSet = weakref.WeakSet()


def forked() -> bool:
    """Whether this process was forked from one that had imported mlarray."""
    return _forked


def threads(n: int, cores: int | None = None) -> int:
    """The thread count a Blosc2 context created now may use: ``n`` clamped to 1..cores.

    Always 1 in a forked child (see the module docstring).
    """
    if _forked:
        return 1
    return min(max(int(n), 1), cores if cores is not None else _CORES)


def usable_cores() -> int:
    """Cores this process may run on; compression uses them all unless ``cparams`` sets
    ``nthreads``.

    Saving is not done while a data loader decodes, so it may use the whole machine;
    decompression stays at :data:`mlarray.layout.DEFAULT_DPARAMS` (one thread per loader process).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def track(owner: Any) -> None:
    """Register ``owner`` (it has an ``_after_fork_in_child()`` method) for fork handling."""
    _TRACKED.add(owner)


def reopen_lock() -> threading.Lock:
    """The lock under which a forked child replaces a parked store."""
    return _REOPEN_LOCK


def park(obj: Any) -> None:
    """Keep ``obj`` alive for the life of the process, and never use it again.

    A Blosc2 object whose context was attached to a thread pool in the parent
    must not be freed in a forked child (see the module docstring); one extra
    reference that nothing releases keeps it alive even through interpreter
    finalization. The cost is the object's memory (its compressed chunks stay
    where they are: in the file mapping, shared with the parent; an in-memory
    array's pages are shared with the parent until either writes to them).
    """
    if obj is not None:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _after_fork_in_child() -> None:
    global _forked, _REOPEN_LOCK
    _forked = True
    _REOPEN_LOCK = threading.Lock()
    owners = list(_TRACKED)
    _TRACKED.clear()
    for owner in owners:
        # Nothing may escape a fork hook; a handle that cannot be prepared stays
        # as it was (parking is what makes it safe, and it only parks objects).
        with contextlib.suppress(Exception):
            owner._after_fork_in_child()
    blosc2_ext = sys.modules.get("blosc2.blosc2_ext")
    destroy = getattr(blosc2_ext, "destroy", None)
    if destroy is not None:
        atexit.unregister(destroy)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
