"""Reading and writing ``.mla`` containers on disk.

* :func:`open_store` checks a path and opens its Blosc2 frame safely.
* :func:`read_meta` reads only the metadata record.
* :func:`save_mla` streams any array-like into a new file chunk by chunk and
  atomically replaces the destination, so a failed save never destroys the
  file that was there, and saving over the file the data came from works.
* :func:`write_in_place` makes one in-place write (``a[...] = v`` through a
  writable handle, a metadata flush on ``close()``) all-or-nothing: space is
  reserved first and the bytes c-blosc2 may overwrite are saved in an undo
  journal next to the file; :func:`recover` (run by every open and save) rolls
  back a write that a crash interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import itertools
import math
import mmap
import os
import secrets
import stat
import struct
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import blosc2
import numpy as np

from mlarray import _direct, _fork, _framewrite, _maps, _prefetch, integrity
from mlarray import frame as _frame
from mlarray._sidefiles import SUFFIX, _temp_prefix, journal_path
from mlarray.errors import (
    DiskFullError,
    FileChangedError,
    InvalidModeError,
    InvalidPathError,
    MetaValidationError,
    MLArrayError,
    MLArrayFileNotFoundError,
    MLArrayFormatError,
    MLArrayIOError,
    MLArrayMemoryError,
    os_errors,
)
from mlarray.frame import FRAME_MAGIC
from mlarray.layout import StorageOptions, normalize_dparams, resolve_storage
from mlarray.meta import Meta, MetaBlosc2, _meta_internal_write
from mlarray.record import VLMETA_KEY, encode_record, read_frame, record_from_meta
from mlarray.record import meta_of_frame as _meta_from_raw

__all__ = [
    "FRAME_MAGIC",
    "check_dtype",
    "check_path",
    "iter_chunk_slices",
    "journal_path",
    "open_store",
    "os_errors",
    "read_meta",
    "recover",
    "save_mla",
    "write_in_place",
]


Progress = Callable[[int, int], Any]


#: Paths (as given, str) that passed :func:`check_path`'s suffix check, as Paths: a data
#: loader opens the same few thousand paths again and again, and building a Path is a
#: tenth of an open once a patch read has pushed this code out of the CPU caches.
_CHECKED_PATHS: dict[str, Path] = {}
_CHECKED_PATHS_MAX = 4096


def check_path(path: str | os.PathLike, *, must_exist: bool) -> Path:
    """Return ``path`` as a Path after checking its suffix (and existence when asked)."""
    try:
        s = os.fspath(path)
        known = _CHECKED_PATHS.get(s) if type(s) is str else None
        p = known if known is not None else Path(s)
    except TypeError:
        raise InvalidPathError(None, f"expected a file path, got {type(path).__name__}") from None
    if known is None:
        if p.suffix.lower() != SUFFIX:
            raise InvalidPathError(p, f"an MLArray file must end with '{SUFFIX}'")
        if type(s) is str:
            if len(_CHECKED_PATHS) >= _CHECKED_PATHS_MAX:
                _CHECKED_PATHS.clear()
            _CHECKED_PATHS[s] = p
    if must_exist:
        if p.is_dir():
            raise InvalidPathError(p, "is a directory, not an .mla file")
        if not p.exists():
            raise MLArrayFileNotFoundError(p)
    return p


def check_dtype(dtype: Any, where: Any = None) -> np.dtype:
    """Return ``np.dtype(dtype)``; refuse dtypes an ``.mla`` file cannot hold."""
    dt = np.dtype(dtype)
    if dt.hasobject or dt.kind in "OUSVMm" or dt.fields is not None or dt.itemsize > 16:
        # > 16 bytes: complex256, which the frame check (mlarray.frame) does not read back
        raise MetaValidationError(
            "dtype",
            f"{dt} cannot be stored in an .mla file (use a numeric or bool dtype of at most "
            "16 bytes per value)" + (f" [{where}]" if where else ""),
        )
    return dt


_OPEN_MMAP_MODES = {"r", "r+", "c", None}


def open_store(
    path: str | os.PathLike,
    *,
    mmap_mode: str | None = "r",
    writable: bool = False,
    dparams: dict | None = None,
) -> tuple[blosc2.NDArray, Meta]:
    """Open an existing ``.mla`` file; return its Blosc2 NDArray and its :class:`Meta`.

    Parameters
    ----------
    path : str or PathLike
        An existing ``.mla`` file.
    mmap_mode : {"r", "r+", "c", None}
        Memory-map the file (``None`` uses plain file I/O).
    writable : bool
        With ``mmap_mode=None``, open for appending/modifying (mode ``"a"``).
    dparams : dict, optional
        Blosc2 decompression parameters.
    """
    if mmap_mode not in _OPEN_MMAP_MODES:  # arguments first, then the file system
        raise InvalidModeError(
            f"{path}: mmap_mode must be 'r', 'r+', 'c' or None to open a file, got {mmap_mode!r}"
        )
    p = check_path(path, must_exist=False)  # the stat of the mapping below: missing, a folder
    for attempt in range(_OPEN_ATTEMPTS):
        # after an attempt that saw the file change: with in-place writes of mlarray held off
        with _writes_held_off(p) if attempt else contextlib.nullcontext():
            buf, version = _map_versioned(p)
            try:
                return _open_mapped(p, buf, version, mmap_mode, writable, dparams)
            except MemoryError as exc:  # a frame of millions of chunks, under a memory limit
                raise _frame.open_memory_error(p, exc) from None
            except MLArrayFormatError as exc:  # damaged, or read while another program wrote it
                if not _maps.changed_since(p, version):
                    raise
                _forget_version(version)  # what was learned from a frame changing meanwhile
                if attempt + 1 == _OPEN_ATTEMPTS:
                    if isinstance(exc, FileChangedError):
                        raise
                    raise FileChangedError(
                        p,
                        "changed on disk while it was being opened (another program or "
                        "handle is writing it in place); open it again once the write is done",
                    ) from exc
    raise AssertionError("unreachable")


# Opens of a file found changing while it was being opened (another process writing it in
# place): the last one that fails raises FileChangedError, not the damage it saw.
_OPEN_ATTEMPTS = 3


@contextlib.contextmanager
def _writes_held_off(p: Path) -> Iterator[None]:
    """Hold the writer lock of ``p`` shared (see :func:`write_in_place`), waiting up to
    :data:`_WRITER_WAIT` for a write under way to end: no in-place write of mlarray
    starts meanwhile. Without the lock (none to be had in time, or no ``flock``) the
    caller goes on all the same."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        yield
        return
    try:
        if _fcntl is not None:
            deadline = time.monotonic() + _WRITER_WAIT
            pause = 0.0005
            while time.monotonic() < deadline:
                try:
                    _fcntl.flock(fd, _fcntl.LOCK_SH | _fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.01)
                except OSError:  # a file system without locks
                    break
        yield
    finally:
        os.close(fd)


def _open_mapped(
    p: Path, buf: Any, version: tuple, mmap_mode: str | None, writable: bool, dparams: Any
) -> tuple[blosc2.NDArray, Meta]:
    """:func:`open_store` of the file version ``version`` of ``p``, mapped as ``buf``."""
    checked = _CHECKED_FRAMES.get(version)
    if checked is None or not checked[3]:
        # An in-place write a crash interrupted is rolled back first. Such a write
        # changed the file (its ctime: a new version), so a version seen without a
        # journal needs no look for one.
        journal = _recover(p)
        if journal is not None:  # rolled back, or a live writer's write waited for
            buf, version = _map_versioned(p)
            checked = _CHECKED_FRAMES.get(version)
        if checked is None:
            # The frame checked and its record (a restricted unpickler in Python) built
            # into a Meta once per file version; every open gets its own copy of that
            # Meta. Then: whether blosc2.open accepted this version (see _store_in), and
            # whether it was seen without a journal.
            with _maps.reader(p, version) as read_at:
                checked = [*read_frame(buf, p, read_at), False, False]
            _CHECKED_FRAMES[version] = checked
            with contextlib.suppress(KeyError):  # emptied by another thread meanwhile
                while len(_CHECKED_FRAMES) > _CHECKED_FRAMES_MAX:
                    _CHECKED_FRAMES.popitem(last=False)
        checked[3] = journal is None
    else:
        with contextlib.suppress(KeyError):  # another thread's save may have dropped it
            _CHECKED_FRAMES.move_to_end(version)
    info, proto, accepted, _ = checked
    verify = integrity.verifying()  # once: what the handle does and which kept one fits
    dp = clamp_dparams(dparams or _stored_dparams(proto))
    if mmap_mode == "r" and not writable and accepted:
        store = _idle_store(buf, version, _pool_key(dp, verify))
        if store is not None:
            integrity.reattach(store, p)
            _maps.rename(store, p)  # its file checks name the path of this open
            return store, proto._clone()
    read_only = not writable and mmap_mode in ("r", None)  # "c": writes may move chunks
    prefetcher = _prefetch.for_frame(buf, info, version) if read_only else None
    if prefetcher is not None:
        prefetcher.frame_ends(info.header_len)  # what blosc2.open reads, asked for at once
    meta = proto._clone()
    kwargs: dict[str, Any] = {"deserialize": "safe"}
    if mmap_mode is not None:
        kwargs["mmap_mode"] = mmap_mode
    else:
        kwargs["mode"] = "a" if writable else "r"
    kwargs["dparams"] = dp
    if (writable or mmap_mode == "r+") and not _may_write(p):
        raise MLArrayIOError(
            p, "cannot open for writing: the file is write-protected", errno.EACCES
        )
    source = os.fspath(p)
    pin = _pin(p, version, buf) if mmap_mode is None and not writable else None
    if pin is not None:
        source = pin.path
    pooled = False
    try:
        if (
            mmap_mode == "r"
            and not writable
            and accepted
            and (prefetcher is None or prefetcher.headers_resident())
        ):
            store = _store_in(buf, kwargs["dparams"], info, version)
            pooled = True
        else:
            store = blosc2.open(source, **kwargs)
            checked[2] = True
            if (
                mmap_mode == "r"
                and not writable
                and (prefetcher is None or prefetcher.headers_resident())
            ):
                # Blosc2 accepted this version: decode from the shared mapping instead of
                # keeping Blosc2's own handle, and its file descriptor, for this one
                store = _store_in(buf, kwargs["dparams"], info, version)
                pooled = True
    except MLArrayError:
        raise
    except PermissionError as exc:
        raise MLArrayIOError(
            p, f"cannot open for writing: {exc.strerror or exc}", exc.errno
        ) from None
    except Exception as exc:
        raise MLArrayFormatError(
            p, f"cannot open the Blosc2 frame ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(store, blosc2.NDArray):
        raise MLArrayFormatError(p, f"holds a {type(store).__name__}, not a b2nd NDArray")
    if (
        tuple(store.shape) != info.shape
        or np.dtype(store.dtype) != info.dtype
        or (info.nchunks and tuple(store.chunks) != info.chunks)
    ):
        raise FileChangedError(p, "the file changed while it was being opened")
    if pin is not None:
        store._mlarray_pin = pin  # the descriptor lives as long as the handle
    _direct.guard(store, info)
    # every read checks the file was not cut short (nor, for a handle reading by the
    # path, replaced: a writable one, or where no descriptor name could be given to
    # c-blosc2)
    by_path = mmap_mode is None and pin is None
    _maps.watch(store, p, buf, version, info, by_path=by_path)
    integrity.attach(store, p, buf, info, version, verify=verify)
    if writable or mmap_mode in ("r+",):
        integrity.remember_identity(store, p)
    store._mlarray_threads = _store_threads(store, writable or mmap_mode in ("r+", "c"))
    _prefetch.attach(store, prefetcher)
    if pooled and kwargs["dparams"].get("nthreads", 1) == 1:
        _pool_store(buf, version, _pool_key(kwargs["dparams"], verify), store)
    return store, meta


# Where an open descriptor can be opened again by name: c-blosc2 opens the file it
# reads by its path for every chunk it reads.
_FD_DIR = "/proc/self/fd"
_PIN_KEY = "io.pin"


class _Pinned:
    """A descriptor of the file version a read-only plain-I/O handle opened, and the
    name under which opening it again gives that very file (``/proc/self/fd/N``).

    c-blosc2 opens the path it was given for each chunk read: given the file's own
    path, a handle would read whatever the path names at that moment, and a save over
    the path (a new file renamed onto it) in between two reads would give one patch of
    two versions, or the new version through the checks of the old. Given this name it
    reads the version it opened, as a memory-mapped handle does, whatever the path
    names later (another file, or none).
    """

    __slots__ = ("fd", "path")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.path = f"{_FD_DIR}/{fd}"

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        try:  # kept ones go at interpreter exit, when module globals may be gone
            _close(self.fd)
        except OSError:  # (not contextlib: it may be gone by then)
            return


def _pin(p: Path, version: tuple, buf: Any) -> _Pinned | None:
    """A :class:`_Pinned` of ``p`` if ``p`` is still the file version ``version`` (else
    :class:`~mlarray.errors.FileChangedError`: the open tries again); None where an
    open descriptor has no name to open it by (not Linux). One per file version while
    its mapping ``buf`` is cached: handles of one file share a descriptor."""
    if not os.path.isdir(_FD_DIR):
        return None
    extras = _maps.attached(version, buf)
    kept = None if extras is None else extras.get(_PIN_KEY)
    if kept is not None:
        return kept
    with os_errors(p, "cannot read"):
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO put there: no wait
    pin = _Pinned(fd)
    st = os.fstat(fd)
    if _maps.version_of(st) != version:
        raise FileChangedError(p, "the file changed while it was being opened")
    if extras is not None:
        extras[_PIN_KEY] = pin
    return pin


def _stored_dparams(meta: Meta) -> dict | None:
    """The decompression parameters the writer of a file recorded, if usable."""
    if meta.blosc2.dparams:
        # Decompress as the writer asked (the default is one thread: the nnU-Net case of
        # one reading process per core). Unusable stored values are simply not applied.
        with contextlib.suppress(MLArrayError, TypeError, ValueError):
            return normalize_dparams(meta.blosc2.dparams)
    return None


# Read-only handles built on a shared mapping (_store_in) are kept with the mapping
# (mlarray._maps.attached) and reused by later opens of the same file version once
# nothing refers to them any more: a data loader that opens a file per patch then
# pays neither for making the Blosc2 array (every chunk header read, ~50-150 us) nor
# for its checks and hooks. Only one-thread handles are kept: their contexts own no
# thread pool, so they stay usable in a forked child. Whether anything still refers
# to one is its reference count, which a build without the GIL does not keep exactly:
# nothing is kept there.
_POOL_KEY = "io.stores"
_POOL_MAX = 8  # per file version; more handles in use at once are not kept
_POOL_LOCK = threading.Lock()
_POOLING = not sysconfig.get_config_var("Py_GIL_DISABLED")


def _first_idle(objs: list) -> Any:
    """The first of ``objs`` that nothing but the list ``objs`` refers to, or None.

    What ``sys.getrefcount`` says of such an object is measured on a probe in the
    same loop (the interpreter, or a tracer reading the frame's locals, decides which
    of the loop's own references count); anything else that refers to an object
    (a handle, a variable) adds to its count.
    """
    probe = [object()]
    idle = -1
    for group in (probe, objs):
        for obj in group:
            if group is probe:
                idle = sys.getrefcount(obj)
            elif sys.getrefcount(obj) == idle:
                return obj
    return None


def _pool_key(dparams: dict, verify: bool) -> tuple:
    return (tuple(sorted(dparams.items())), verify)


def _idle_store(buf: Any, version: tuple, key: tuple) -> blosc2.NDArray | None:
    """A kept read-only handle of this file version that nothing uses, or None."""
    extras = _maps.attached(version, buf) if _POOLING else None
    if extras is None:
        return None
    with _POOL_LOCK:
        return _first_idle(extras.get(_POOL_KEY, {}).get(key, []))


def _pool_store(buf: Any, version: tuple, key: tuple, store: Any) -> None:
    """Keep the new read-only handle ``store`` for reuse (see :func:`_idle_store`)."""
    extras = _maps.attached(version, buf) if _POOLING else None
    if extras is None:
        return
    with _POOL_LOCK:
        pools = extras.setdefault(_POOL_KEY, {})
        if sum(map(len, pools.values())) < _POOL_MAX:
            pools.setdefault(key, []).append(store)


def _new_pool_lock_in_child() -> None:
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pool_lock_in_child)


def _store_in(
    buf: Any, dparams: dict, info: Any = None, version: tuple | None = None
) -> blosc2.NDArray:
    """A read-only handle decoding straight from the shared mapping ``buf`` of its file.

    Opening the file again (``blosc2.open``) would map it anew, and every page a read
    touches would be faulted into that mapping again: for a data loader that opens a
    file per patch, that is most of the cost of a warm read after the open. Making
    the handle reads every chunk's header, so a file that is not in the page cache
    (:meth:`~mlarray._prefetch.Prefetcher.headers_resident`) is opened lazily with
    ``blosc2.open`` instead, as is a file version ``blosc2.open`` has not accepted in
    this process yet (what it refuses is then refused whether the file is in the page
    cache or not). The
    frame is the one :func:`open_store` checked; the handle keeps the mapping alive
    (and, through a buffer export, open). Only read-only handles are made this way:
    c-blosc2 cannot write into a frame it does not own, and ``MLArray`` refuses
    writes through them before they reach it. Given the frame's ``info``, the handle
    also decodes chosen blocks of a chunk in one call, through the C library
    (:func:`mlarray._cstore.block_decoder`: the block layers of plane reads; given the
    file's ``version`` too, it shares the mapping's record of chunks whose block starts
    were checked).
    """
    view = memoryview(buf)
    store = blosc2.ndarray_from_cframe(view, copy=False)
    # Its contexts start with python-blosc2's global thread count (blosc2.set_nthreads);
    # they get the asked-for one (1 in a forked child, see mlarray._fork) before any use.
    schunk = store.schunk
    if schunk.dparams.nthreads != dparams.get("nthreads", 1):
        schunk.dparams = blosc2.DParams(**dparams)
    if schunk.cparams.nthreads != 1:  # never compresses: one thread, no pool
        schunk.cparams = dataclasses.replace(schunk.cparams, nthreads=1)
    _maps.lend(store, view)
    if info is not None:
        from mlarray import _cstore, _read

        decoder = _cstore.block_decoder(buf, info, version)
        if decoder is not None:
            setattr(store, _read.BLOCKS_ATTR, decoder)
    return store


def _may_write(p: Path) -> bool:
    """Whether to write into ``p`` in place: the user may, and its owner did not make it
    read-only (no write permission bits; root would pass the access check)."""
    try:
        return bool(os.stat(p).st_mode & 0o222) and os.access(p, os.W_OK)
    except OSError:
        return False


# Frames already validated in this process, by file version: (device, inode, size,
# mtime, ctime). Any write to the file changes its ctime (which no tool can set back),
# so a changed file is always validated again; an unchanged one opens at the cost of a
# stat, which matters for data loaders that open the same files millions of times.
_CHECKED_FRAMES: collections.OrderedDict[tuple, list] = collections.OrderedDict()
_CHECKED_FRAMES_MAX = 4096


def _check_mappable(p: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise InvalidPathError(p, "is a directory, not an .mla file")
        raise InvalidPathError(p, "is not a regular file (a FIFO, device or socket?)")
    if st.st_size < len(FRAME_MAGIC):
        raise MLArrayFormatError(p, f"not an .mla file (only {st.st_size} bytes)")


def _map_versioned(p: Path) -> tuple[Any, tuple]:
    """The shared read-only mapping of ``p`` (see :mod:`mlarray._maps`) and its version;
    what this process remembered about the version of ``p`` it replaces is dropped."""
    with os_errors(p, "cannot read"):
        try:
            buf, version, replaced = _maps.map_file(p, _check_mappable)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # as Path.exists() sees them
                raise MLArrayFileNotFoundError(p) from None
            raise
    if replaced is not None:
        _forget_version(replaced)
    return buf, version


def _forget_version(version: tuple) -> None:
    _CHECKED_FRAMES.pop(version, None)


def forget_file(p: Path) -> None:
    """Forget the mapping and checks of ``p`` (this process just replaced the file)."""
    version = _maps.forget(p)
    if version is not None:
        _forget_version(version)


def map_regular_file(p: Path) -> Any:
    """A private read-only mapping of an existing regular file (the caller may close
    it); FIFOs, devices and sockets are refused.

    The file is opened non-blocking, so a FIFO named like an ``.mla`` file
    cannot hang the caller, and checked with ``fstat`` on the open descriptor.
    """
    with os_errors(p, "cannot read"):
        return _maps.map_private(p, _check_mappable)


def load_frame(path: str | os.PathLike, dparams: Any = None) -> blosc2.NDArray:
    """The array of an ``.mla`` file copied whole into memory (Blosc2's own buffer).

    The frame's structure is checked and every chunk verified against its checksum on
    a read-only mapping of the file first; Blosc2 then copies the frame from that
    mapping (one copy of the compressed bytes, no intermediate ``bytes``). Used by
    :meth:`MLArray.load`. ``dparams`` (a :class:`blosc2.DParams`) is given to the
    in-memory array.
    """
    p = Path(os.fspath(path))
    buf, version = _map_versioned(p)
    info, checked = _verified_frame(p, buf, version)
    _maps.Watch(p, buf, version).check()  # not cut short since it was mapped: copy it
    with memoryview(buf) as view:
        # copy=True: a view over the mapping would abort the process on write
        arr = blosc2.ndarray_from_cframe(view, copy=True)
    if checked:
        integrity.mark_verified(arr)
    if dparams is not None:
        arr.schunk.dparams = dparams
    return _direct.guard(arr, info)


class _FrameBytes:
    """A stand-in store for verifying a frame held in memory."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def _verified_frame(p: Path, buf: Any, version: tuple | None = None) -> tuple[Any, bool]:
    """Check the structure of the frame mapped as ``buf`` and every chunk against its
    stored digest: ``(frame info, whether it has digests)``.

    Raises the frame's and the chunks' errors (:class:`MLArrayFormatError`,
    :class:`CorruptChunkError`). Without digests, or with verification switched
    off, only the structure is checked.
    """
    with _maps.reader(p, version) as read_at:
        info = _frame.inspect_frame(buf, p, read_at)
    store_like = _FrameBytes(tuple(info.shape))
    if version is not None:  # hashing a big file takes a while: checked as it goes
        _maps.watch(store_like, p, buf, version)
    checked = integrity.attach(store_like, p, buf, info, version) is not None
    if checked:
        integrity.verify_all(store_like)
    return info, checked


def clamp_dparams(dparams: dict | None) -> dict:
    """Decompression parameters a file may ask for: threads between 1 and the CPU count.

    In a process forked from one that imported mlarray, always one thread
    (c-blosc2's thread pools do not survive ``fork()``: see :mod:`mlarray._fork`).
    """
    out = dict(dparams or {})
    n = out.get("nthreads", 1)
    out["nthreads"] = _fork.threads(n) if isinstance(n, (int, np.integer)) else 1
    return out


def _store_threads(store: Any, compresses: bool) -> int:
    """Threads ``store``'s contexts may run; a writable store opened in a forked child
    is made to compress with one thread (its codec and filters are kept)."""
    n = int(store.schunk.dparams.nthreads)
    if compresses:
        cparams = store.schunk.cparams
        if cparams.nthreads != 1 and _fork.forked():
            store.schunk.cparams = dataclasses.replace(cparams, nthreads=1)  # never ran: no pool
        n = max(n, int(store.schunk.cparams.nthreads))
    return n


def flush_meta(
    store: blosc2.NDArray,
    path: Any,
    meta: Meta,
    reopen: Callable[[], Any] | None = None,
    checksums: bool = False,
) -> None:
    """Write ``meta`` into an open file, validated as :func:`save_mla` validates it.

    One all-or-nothing write (:func:`write_in_place`). A file written through
    this handle that had no chunk checksums (written by another tool) gets
    them now, as does any file with ``checksums=True`` (a new file); files
    with checksums have them kept current by every write.
    """
    has_array = bool(meta._has_array.has_array)
    shape = tuple(int(n) for n in store.shape) if has_array else None
    record = encode_record(record_from_meta(_prepare_meta(meta, shape, None, Path(path))))
    refresh = checksums or (integrity.was_written(store) and integrity.is_stale(store))
    if not refresh and record == _stored_record(store):
        return  # nothing to write (closing a handle that changed nothing writes nothing)
    write_in_place(
        store, path, [], None, vlmeta={VLMETA_KEY: record}, refresh=refresh, reopen=reopen
    )


def _stored_record(store: Any) -> bytes | None:
    """The record bytes ``store``'s frame holds as this handle knows it (None if unknown)."""
    try:
        value = store.schunk.vlmeta[VLMETA_KEY]
    except Exception:  # no such entry, or a store without Blosc2 metadata
        return None
    return value if isinstance(value, bytes) else None


def read_meta(path: str | os.PathLike) -> Meta:
    """Read only the metadata of an ``.mla`` file (no array data is decompressed)."""
    return open_store(path, mmap_mode="r")[1]


def iter_chunk_slices(
    shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Iterator[tuple[slice, ...]]:
    """Yield the slices of a regular chunk grid over ``shape``, in C order."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape, strict=True))


def _save_target(target: Path) -> Path:
    """The regular file a save replaces: symlinks are followed; anything else is refused.

    A symlink is written through (the file it points to is replaced, as numpy
    and nibabel do), but only when it points to a regular file or nothing: a
    save must never replace a device node, FIFO or socket. A file its owner
    made read-only is not replaced either.
    """
    if target.is_symlink():
        target = Path(os.path.realpath(target))
        if target.suffix.lower() != SUFFIX:
            raise InvalidPathError(target, f"a symlink to a file not ending with '{SUFFIX}'")
    if not target.parent.is_dir():
        raise MLArrayFileNotFoundError(target.parent, "the folder to save into does not exist")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise MLArrayIOError(target, f"cannot save: {exc.strerror or exc}", exc.errno) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidPathError(target, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidPathError(
            target, "is not a regular file (a device, FIFO or socket); not replacing it"
        )
    if not st.st_mode & 0o222:
        raise MLArrayIOError(
            target, "is read-only (no write permission bits); not replacing it", errno.EACCES
        )
    return target


# Temporary files do not end in ".mla": a dataset listing (``endswith(".mla")``, nnU-Net's
# ``subfiles(folder, suffix=".mla")``) must not take a killed save's for a case. Earlier
# versions named them ``.tmp.mla``: those are cleaned up too.
_TEMP_SUFFIX = ".partial"
_TEMP_SUFFIXES = (_TEMP_SUFFIX, ".tmp.mla")


def _temp_path(target: Path, clean: bool = True) -> Path:
    """A new, short, hidden temporary file next to ``target`` (names near NAME_MAX still work).

    The name holds a hash of the target's name and this process id, so a later
    save of the same path can remove what a killed save left behind. The file
    is created with mode 0o666 filtered by the umask, by the kernel (the umask
    is never changed).
    """
    if clean:
        _remove_stale_temps(target)
    prefix = f"{_temp_prefix(target)}{os.getpid()}-"
    for _ in range(100):
        p = target.parent / f"{prefix}{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            fd = os.open(
                p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
            )
        except FileExistsError:
            continue
        os.close(fd)
        return p
    raise FileExistsError(errno.EEXIST, "no free temporary file name")


def _remove_stale_temps(target: Path) -> None:
    """Remove temporary files of earlier saves of ``target`` whose process is gone."""
    prefix = _temp_prefix(target)
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIXES)):
                continue
            pid_text = name[len(prefix) :].split("-", 1)[0]
            if not pid_text.isdigit() or _process_alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is another user's
        return True
    return True


#: fsync errors saying only that the file system does not sync this kind of file
_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EROFS})


def _fsync_path(p: Path, directory: bool = False, strict: bool = False) -> None:
    """fsync ``p`` (best effort). ``strict``: an fsync that reports the data did not reach
    the disk (ENOSPC, EDQUOT, EIO: NFS and quota file systems report a failed writeback
    only here) raises it, so a save never replaces a file with one the OS lost."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(p, flags)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if strict and exc.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _path_of(data: Any) -> Any:
    """The file an MLArray ``data`` was opened or loaded from (None for anything else;
    the instance's own attribute: an array-like's ``__getattr__`` is not asked)."""
    path = getattr(data, "__dict__", {}).get("_path")
    return path if isinstance(path, (str, os.PathLike)) else None


def _source_array(data: Any) -> Any:
    """Unwrap an MLArray to a store to stream from; leave other array-likes alone."""
    store = getattr(data, "_store", None)
    return data if store is None else streaming_store(data)


def open_streaming(path: str | os.PathLike) -> tuple[blosc2.NDArray, Meta]:
    """Open an ``.mla`` file read-only to read its data once, front to back (save,
    recompress, statistics); return its store and :class:`Meta` as :func:`open_store`.

    Its chunks are read through plain file I/O, not a memory map: their pages stay in
    the page cache instead of adding the whole compressed file to the process's
    resident memory (a 2 GB volume would otherwise show a 1 GB peak RSS).
    """
    return open_store(path, mmap_mode=None)


def streaming_store(arr: Any) -> Any:
    """The store to read an MLArray's data from once, front to back (save, recompress,
    statistics).

    A file opened read-only and memory-mapped is read again as :func:`open_streaming`
    opens it. Anything else (in-memory data, writable or copy-on-write maps, whose changes
    may live only in the map) is read as it is.
    """
    store = arr._store
    path = getattr(arr, "_path", None)
    if (
        path is None
        or store is None
        or store is not getattr(arr, "_file_store", None)
        or getattr(arr, "_mmap_mode", None) != "r"
        or getattr(arr, "_writable", True)
    ):
        return store
    try:
        plain, _ = open_streaming(path)
    except MLArrayError:  # the file changed or went away: read what we have
        return store
    if not _maps.same_file(plain, store):
        # replaced since the handle was opened (its own file is read: the data the handle
        # shows), or changed in place (the handle's reads report it)
        return store
    return plain


def is_label_map(meta: Meta) -> bool:
    """Whether ``meta`` marks a label map (``is_seg`` true), which picks the codec defaults."""
    value = meta.is_seg
    return bool(getattr(value, "is_seg", value))


def _prepare_meta(
    meta: Any, shape: tuple[int, ...] | None, dtype: np.dtype | None, path: Path
) -> Meta:
    meta = Meta.ensure(meta).copy()
    try:
        with _meta_internal_write():
            meta._has_array.has_array = shape is not None
            meta.spatial.shape = None if shape is None else list(shape)
    except MetaValidationError as exc:
        raise MetaValidationError(exc.field, f"{exc} (saving {path})") from None
    # Boxes are [min, max] per array axis or per spatial axis (MetaBbox.axes_problem, as
    # the read path accepts them); the reference package would write any other count,
    # but a viewer or a training pipeline would index the wrong axes.
    problem = meta.bbox.axes_problem(meta.spatial) if shape is not None else None
    if problem is not None:
        raise MetaValidationError("bbox.bboxes", f"{problem} (saving {path})")
    return meta


def save_mla(
    path: str | os.PathLike,
    data: Any,
    meta: Meta | dict | None = None,
    *,
    patch_size: Any = "default",
    chunk_size: Any = None,
    block_size: Any = None,
    cparams: Any = None,
    dparams: Any = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``data`` and ``meta`` to an ``.mla`` file, streaming and atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination; must end with ``.mla``. It may be the very file ``data``
        was opened from.
    data : array-like or None
        ``None`` writes a metadata-only file. Otherwise anything with
        ``shape``, ``dtype`` and ``__getitem__`` (numpy array, Blosc2
        NDArray, :class:`~mlarray.mlarray.MLArray`, a lazy view). It is read
        one chunk at a time; the whole volume is never held in memory unless
        it already is.
    meta : Meta or mapping, optional
        Metadata; ``spatial.shape``, ``_has_array`` and ``blosc2`` are filled
        in from ``data`` and the storage options.
    patch_size, chunk_size, block_size, cparams, dparams
        Storage options, resolved by :func:`mlarray.layout.resolve_storage`.
        ``cparams=None`` keeps the codec recorded in ``meta`` (a re-save of
        an opened file keeps its codec, and can copy its chunks verbatim),
        else takes the defaults of the content (``meta.is_seg``).
    progress : callable, optional
        Called as ``progress(done, total)`` after each chunk.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    target = _save_target(check_path(path, must_exist=False))
    src = None if data is None else _source_array(data)
    shape = None if src is None else tuple(int(n) for n in src.shape)
    dtype = None if src is None else check_dtype(src.dtype, target)
    meta = _prepare_meta(meta, shape, dtype, target)

    if src is None:
        opts = None
        blosc2_part = MetaBlosc2()
    else:
        if cparams is None and meta.blosc2.cparams:
            cparams = meta.blosc2.cparams  # the codec the source was stored with
        opts = resolve_storage(
            shape,
            dtype,
            meta.spatial.spatial_axis_mask,
            patch_size=patch_size,
            chunk_size=chunk_size,
            block_size=block_size,
            cparams=cparams,
            dparams=dparams,
            is_seg=is_label_map(meta),
        )
        patch = None if opts.patch_size is None else list(opts.patch_size)
        kept = meta.blosc2
        if (
            patch is None
            and kept.patch_size is not None
            and (
                opts.chunk_size is not None
                and kept.chunk_size == list(opts.chunk_size)
                and kept.block_size == list(opts.block_size or ())
            )
        ):
            patch = kept.patch_size  # the layout that patch size produced is kept as it was
        blosc2_part = MetaBlosc2(
            chunk_size=None if opts.chunk_size is None else list(opts.chunk_size),
            block_size=None if opts.block_size is None else list(opts.block_size),
            patch_size=patch,
            cparams=opts.cparams,
            dparams=opts.dparams,
        )
    with _meta_internal_write():
        meta.blosc2 = blosc2_part
    record = encode_record(record_from_meta(meta))

    with os_errors(target, "cannot create a temporary file next to it"):
        tmp = _temp_path(target)
    try:
        with os_errors(target, "cannot write"):
            try:
                _write_frame(tmp, src, shape, dtype, opts, record, progress, _path_of(data), target)
            except RuntimeError as exc:
                if isinstance(exc, MLArrayError) or not _raised_by_blosc2(exc):
                    raise
                raise _write_failure(target, tmp, _write_room(opts, dtype, record), exc) from exc
        with os_errors(target, "cannot write (the file system reports the data not written)"):
            _fsync_path(tmp, strict=True)
        if target.exists():
            with contextlib.suppress(OSError):
                os.chmod(tmp, target.stat().st_mode & 0o7777)
        with os_errors(target, "cannot replace"):
            os.replace(tmp, target)
        forget_file(target)  # the replaced file's space is freed once its handles go
        _fsync_path(target.parent, directory=True)
        recover(target, wait=False)  # drops a journal left for the file replaced
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def _raised_by_blosc2(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside python-blosc2 (its innermost frame is there)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return "/blosc2/" in name or "blosc2_ext" in name


def _write_room(opts: StorageOptions | None, dtype: Any, record: bytes) -> int:
    """Bytes a single write of a save may need at once: a compressed chunk at most, the
    metadata, and some room for the frame's index and trailer."""
    chunk = 0
    if opts is not None and opts.chunk_size is not None and dtype is not None:
        chunk = int(np.prod(opts.chunk_size, dtype=np.int64)) * np.dtype(dtype).itemsize
    return chunk + _BLOSC2_MAX_OVERHEAD + len(record) + (1 << 20)


def _write_failure(target: Path, tmp: Path, room: int, exc: BaseException) -> MLArrayError:
    """Our error for c-blosc2 failing to write the temporary file ``tmp`` of a save of
    ``target``: c-blosc2 reports a failed write as a bare ``RuntimeError``, without its
    ``errno``. Whether the disk is full (or the process's file-size limit reached) is
    found out by reserving ``room`` more bytes at the end of ``tmp`` (removed after);
    whether memory ran out, by reserving ``room`` bytes of memory."""
    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    err = None
    try:
        fd = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        err = e.errno
    else:
        try:
            size = os.fstat(fd).st_size
            try:
                os.posix_fallocate(fd, size, room)
            except OSError as e:
                err = e.errno
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)
    if err in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return _errno_failure(target, err)
    from mlarray._read import short_of_memory  # error path: not loaded at import

    if short_of_memory(room):  # compressing a chunk needs about that much
        return MLArrayMemoryError(
            f"{target}: not enough memory to write a chunk of up to {room} bytes "
            "compressed (a file that was there is unchanged); a smaller chunk size needs less"
        )
    return MLArrayIOError(
        target,
        f"cannot write: c-blosc2 failed ({why}); a file that was there is unchanged",
    )


#: errnos of a write that failed for want of room (a full disk, a quota, the size limit)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})


def _errno_failure(target: Path, err: int | None, exc: OSError | None = None) -> MLArrayError:
    """Our error for a write of a save of ``target`` that failed with ``err``: a full
    disk is a :class:`DiskFullError`, a file over the process's size limit says the
    limit, anything else is an :class:`MLArrayIOError`."""
    why = os.strerror(err) if err else str(exc or "write failed")
    if err in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DiskFullError(
            target, f"cannot write: {why} (a file that was there is unchanged)", err
        )
    limit = ""
    if err == errno.EFBIG:
        with contextlib.suppress(ImportError, OSError, ValueError):
            import resource

            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if soft != resource.RLIM_INFINITY:
                limit = f"; this process may write {soft} bytes per file"
    return MLArrayIOError(
        target, f"cannot write: {why}{limit} (a file that was there is unchanged)", err
    )


_ENCODING_FIELDS = (
    "codec",
    "codec_meta",
    "clevel",
    "use_dict",
    "typesize",
    "filters",
    "filters_meta",
)


def _same_encoding(src: Any, dtype: np.dtype, opts: StorageOptions, cparams: Any) -> bool:
    """Whether ``src`` is a Blosc2 array whose chunks can be copied verbatim."""
    if not isinstance(src, blosc2.NDArray) or src.dtype != dtype or not src.size:
        return False
    if opts.chunk_size is None or opts.block_size is None:
        return False
    if tuple(src.chunks) != tuple(opts.chunk_size) or tuple(src.blocks) != tuple(opts.block_size):
        return False
    have = src.schunk.cparams
    return all(
        _encoding_value(getattr(have, f)) == _encoding_value(getattr(cparams, f))
        for f in _ENCODING_FIELDS
    )


_MAX_FILTERS = 6  # Blosc2's filter pipeline; shorter lists are padded with NOFILTER / 0


def _encoding_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        values = [_encoding_value(x) for x in v]
        return values + [0] * (_MAX_FILTERS - len(values))
    return getattr(v, "value", v)


def _write_frame(
    tmp: Path,
    src: Any,
    shape: tuple[int, ...] | None,
    dtype: np.dtype | None,
    opts: StorageOptions | None,
    record: bytes,
    progress: Progress | None,
    src_path: Any = None,
    target: Path | None = None,
) -> bool:
    """Write the frame of a save into ``tmp``; False if its checksums were left out
    (the entries of other tools it keeps leave no room for them, see :data:`_MAX_VLMETA`).

    An array of a chunk and block shape is written by :func:`_stream_frame`, in one
    pass: a numpy array compressed in memory a run of chunk rows at a time, a Blosc2
    array of the same layout and codec copied chunk by chunk as it is stored, anything
    else read and compressed a chunk at a time. c-blosc2 writes the frame of a
    metadata-only file, of an empty array, of a layout left to Blosc2, and of a source
    whose chunks the writer does not take (:class:`mlarray._framewrite.Unsuitable`).
    """
    urlpath = os.fspath(tmp)
    if src is None:
        dst = blosc2.empty((0,), dtype=np.float64, urlpath=urlpath, contiguous=True, mode="w")
        dst.schunk.vlmeta[VLMETA_KEY] = record
        if progress is not None:
            progress(1, 1)
        del dst
        return True
    others = _other_vlmeta(src)
    if 1 + len(others) > _MAX_VLMETA:
        raise MLArrayFormatError(
            target or tmp,
            f"cannot save: the source holds {len(others)} variable-length metadata entries of "
            f"other tools, and a Blosc2 frame holds at most {_MAX_VLMETA} with mlarray's own",
        )
    kwargs = opts.blosc2_kwargs(dtype)
    if math.prod(shape) and opts.chunk_size is not None and opts.block_size is not None:
        if isinstance(src, np.ndarray):
            chunks = _compressed_chunks(src, shape, kwargs)
        elif _same_encoding(src, dtype, opts, kwargs["cparams"]):
            chunks = _verified_chunks(src, shape, src_path)
        else:
            chunks = _recompressed_chunks(src, shape, dtype, kwargs, src_path)
        try:
            stored = _stream_frame(tmp, chunks, shape, dtype, kwargs, record, others, progress)
        except _framewrite.Unsuitable:
            pass  # a chunk the writer does not take as it is: c-blosc2 writes them all
        except OSError as exc:
            if isinstance(exc, MLArrayError) or exc.errno not in _WRITE_ERRNOS:
                raise
            raise _errno_failure(target or tmp, exc.errno, exc) from exc
        else:
            if not stored:
                _warn_no_checksums(target or tmp, len(others))
            return stored
    kwargs.update(urlpath=urlpath, contiguous=True, mode="w")
    if isinstance(src, np.ndarray):
        dst = blosc2.asarray(np.asarray(src, order="C"), **kwargs)
        if progress is not None:
            progress(1, 1)
    elif _same_encoding(src, dtype, opts, kwargs["cparams"]):
        # Same layout and codec: copy the compressed chunks as they are (no recompression).
        dst = blosc2.empty(shape, dtype=dtype, **kwargs)
        n = src.schunk.nchunks
        for i, chunk in enumerate(_verified_chunks(src, shape, src_path)):
            dst.schunk.update_chunk(i, chunk)
            if progress is not None:
                progress(i + 1, n)
    else:
        dst = blosc2.empty(shape, dtype=dtype, **kwargs)
        copy_by_chunks(dst, src, progress, src_path=src_path)
    dst.schunk.vlmeta[VLMETA_KEY] = record
    for key, value in others.items():
        dst.schunk.vlmeta[key] = value
    if 1 + len(others) + len(_CHECKSUM_KEYS) > _MAX_VLMETA:
        del dst
        _warn_no_checksums(target or tmp, len(others))
        return False
    for key, value in integrity.digest_file(tmp).items():
        dst.schunk.vlmeta[key] = value
    del dst
    return True


def _stream_frame(
    tmp: Path,
    chunks: Iterator[Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    kwargs: dict[str, Any],
    record: bytes,
    others: dict[str, Any],
    progress: Progress | None,
) -> bool:
    """Write the frame of a save into ``tmp`` ourselves (:mod:`mlarray._framewrite`):
    the compressed ``chunks`` (in chunk order) as they come, then the index and the
    trailer with the record, the entries of other tools ``others`` and the checksums.
    The file is the one c-blosc2 writes for them, byte for byte, in one pass.

    Returns as :func:`_write_frame`; raises :class:`mlarray._framewrite.Unsuitable` for a
    chunk it does not store as it is (the caller lets c-blosc2 write the frame)."""
    header = _framewrite.frame_template(shape, dtype, kwargs)
    nchunks = math.prod(-(-n // c) for n, c in zip(shape, kwargs["chunks"], strict=True))
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0))
    try:
        writer = _framewrite.FrameWriter(fd, header, nchunks)
        for i, chunk in enumerate(chunks, 1):
            writer.add(chunk)
            del chunk
            if progress is not None:
                progress(i, nchunks)
        entries = [(VLMETA_KEY, record), *others.items()]
        stored = 1 + len(others) + len(_CHECKSUM_KEYS) <= _MAX_VLMETA
        if stored:
            entries += integrity.encode_written(writer, record).items()
        writer.finish(entries)
    finally:
        os.close(fd)
    return stored


def _compressed_chunks(src: np.ndarray, shape: tuple[int, ...], kwargs: dict) -> Iterator[Any]:
    """The compressed chunks, in chunk order, of a save of the numpy array ``src`` with
    the Blosc2 arguments ``kwargs``.

    Runs of whole rows of chunks (along the first axis; one row, or as many as fit in
    :data:`_COMPRESS_BATCH_BYTES` of data) are compressed by Blosc2 in memory at a time:
    such a run is an array whose chunks are those of the whole array (the same boxes,
    edge chunks padded alike), and only its compressed bytes are held (a save of a 75 MB
    CT in rows of 19 MB raises the peak memory by 12 MB; by 8.6 MB when c-blosc2
    compressed into the file)."""
    if not shape:  # a 0-d array is one chunk
        yield from _schunk_chunks(blosc2.asarray(np.asarray(src, order="C"), **kwargs))
        return
    c0 = int(kwargs["chunks"][0])
    row = c0 * math.prod(shape[1:]) * src.dtype.itemsize
    step = c0 * max(1, _COMPRESS_BATCH_BYTES // max(1, row))
    for lo in range(0, shape[0], step):
        part = np.asarray(src[lo : lo + step], order="C")
        store = blosc2.asarray(part, **kwargs)
        del part
        yield from _schunk_chunks(store)
        del store


#: Bytes of a numpy array compressed by one ``blosc2.asarray`` in a save (see
#: :func:`_compressed_chunks`).
_COMPRESS_BATCH_BYTES = 8 * 2**20


def _schunk_chunks(store: blosc2.NDArray) -> Iterator[bytes]:
    schunk = store.schunk  # keep it alive while its chunks are read
    for i in range(schunk.nchunks):
        yield schunk.get_chunk(i)


def _verified_chunks(src: Any, shape: tuple[int, ...], src_path: Any) -> Iterator[bytes]:
    """The compressed chunks of the Blosc2 array ``src``, in order, each verified first,
    for a save of the same layout and codec that copies them as they are (no
    recompression): the new file's checksums vouch for them.

    Each chunk read from a file is verified against its checksums, or, without any
    (other tools' files), decompressed once (chunks this process compressed need
    neither): the new file's checksums then vouch for them."""
    n = src.schunk.nchunks
    boxes = iter_chunk_slices(shape, tuple(src.chunks))  # chunk i, in C order
    decoder = None
    src_path = _source_path(src, src_path)
    if src_path is not None and not integrity.verifies(src):
        decoder = integrity.ChunkDecodeCheck(src.schunk.chunksize, src_path)
    for i in range(n):
        integrity.verify_region(src, [(s.start, s.stop) for s in next(boxes)])
        chunk = src.schunk.get_chunk(i)
        why = None if decoder is None else decoder.problem(chunk)
        if why is not None:
            raise integrity.damage_error(
                src,
                src_path,
                f"chunk {i} cannot be decompressed ({why}), the file is damaged; not saved",
                chunk=i,
            )
        yield chunk


def _source_path(src: Any, given: Any = None) -> Any:
    """The file a Blosc2 source ``src`` reads from (``given``, else its own path or that of
    the mapping it decodes from), for errors about its data; None for data in memory."""
    if given is not None:
        return given
    watch = _maps.watch_of(src)  # a store opened by mlarray: the path it was opened as
    return getattr(watch, "path", None) or getattr(src, "urlpath", None)


def copy_by_chunks(
    dst: blosc2.NDArray, src: Any, progress: Progress | None = None, *, src_path: Any = None
) -> None:
    """Fill ``dst`` from the array-like ``src`` one chunk of ``dst`` at a time.

    Only a chunk of decoded data is held at once, whatever ``src`` is (a file
    opened lazily, a lazy view, a numpy array). A store opened from a file with
    checksums has the chunks under each piece verified before they are read; data of
    a Blosc2 source that cannot be decompressed is a
    :class:`~mlarray.errors.CorruptChunkError` naming its file (``src_path``, else the
    store's own). A chunk of a Blosc2 source of the same chunk grid stored as a special
    value is written as that value, without decoding it (see :func:`_special_of`).
    """
    shape = tuple(dst.shape)
    total = math.prod(-(-n // c) for n, c in zip(shape, dst.chunks, strict=True)) if dst.size else 0
    pieces = _source_pieces(src, shape, tuple(dst.chunks), np.dtype(dst.dtype), src_path)
    for i, (slc, block) in enumerate(pieces, 1):
        if isinstance(block, _Special):
            block.write(dst.schunk, i - 1)
        else:
            dst[slc] = block
        if progress is not None:
            progress(i, total)


class _Special(NamedTuple):
    """A chunk to be written as a special value (a ``blosc2.SpecialValue`` and, for a
    repeated value, its bytes)."""

    kind: Any
    value: bytes | None

    def write(self, schunk: Any, n: int) -> None:
        """Make chunk ``n`` of ``schunk`` this special value."""
        if self.value is None:
            schunk.update_special(n, self.kind)
        else:
            schunk.update_special(n, self.kind, self.value)


def _source_pieces(
    src: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype, src_path: Any
) -> Iterator[tuple[tuple[slice, ...], Any]]:
    """``(slices, data)`` of each chunk box of a new array of ``shape`` in ``chunks``, in
    chunk order: the data of ``src`` there, C-ordered, of ``dtype`` (see
    :func:`copy_by_chunks`), or a :class:`_Special` for a chunk of a Blosc2 source of the
    same chunk grid stored as a special value (not decoded)."""
    slices = list(iter_chunk_slices(shape, chunks)) if math.prod(shape) else []
    computed = _dask_pieces(src, slices, dtype) if _is_dask(src) else None
    same_chunks = _same_chunk_grid(src, shape, chunks, dtype)
    for i, slc in enumerate(slices):
        integrity.verify_region(src, [(s.start, s.stop) for s in slc])
        special = _special_of(src, i) if same_chunks else None
        if special is not None:
            yield slc, special
            continue
        box = tuple((s.start, s.stop) for s in slc)
        try:
            data = src[slc] if computed is None else next(computed)
            # C order and the stored dtype: lazy views (transposes, casts) may return
            # strided blocks, which Blosc2 refuses.
            block = np.asarray(data).astype(dtype, order="C", copy=False)
        except MemoryError as exc:
            if isinstance(exc, MLArrayMemoryError):
                raise
            raise _copy_memory_error(src, src_path, box, dtype) from None
        except (RuntimeError, ValueError) as exc:
            if isinstance(exc, MLArrayError) or not isinstance(src, blosc2.NDArray):
                raise
            from mlarray._read import short_of_memory  # error path: not loaded at import

            if short_of_memory(_read_room(src, box)):  # c-blosc2 says only that it failed
                raise _copy_memory_error(src, src_path, box, dtype) from None
            raise integrity.damage_error(
                src,
                _source_path(src, src_path),
                f"cannot decompress the data in {box}, the file may be corrupt ({exc})",
            ) from None
        del data
        if block.shape != tuple(s.stop - s.start for s in slc):
            raise MLArrayFormatError(
                None, f"source returned shape {block.shape} for slice {slc}; cannot save"
            )
        yield slc, block
        del block


def _recompressed_chunks(
    src: Any, shape: tuple[int, ...], dtype: np.dtype, kwargs: dict, src_path: Any
) -> Iterator[bytes]:
    """The compressed chunks, in chunk order, of a save of the array-like ``src`` with
    the Blosc2 arguments ``kwargs``, one chunk of data read and compressed at a time.

    Each chunk's data is compressed by Blosc2 as an array of its own in the same chunk
    and block shapes: its one chunk is the chunk of the whole array (an edge chunk is
    padded alike). A chunk the source stores as a special value is made by Blosc2 as
    that special value (once per value), as ``update_special`` makes it."""
    chunks = tuple(kwargs["chunks"])
    made: dict[_Special, bytes] = {}
    for _slc, block in _source_pieces(src, shape, chunks, dtype, src_path):
        if isinstance(block, _Special):
            if block not in made:
                one = blosc2.empty(chunks, dtype=dtype, **kwargs)
                block.write(one.schunk, 0)
                made[block] = one.schunk.get_chunk(0)
            yield made[block]
            continue
        one = blosc2.asarray(block, **kwargs)
        del block
        yield one.schunk.get_chunk(0)
        del one


def _same_chunk_grid(
    src: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype
) -> bool:
    """Whether chunk ``i`` of the Blosc2 array ``src`` holds the elements of chunk ``i`` of
    a new array of ``shape`` in ``chunks``, of the same ``dtype`` (a plain Blosc2 array,
    not a guarded one)."""
    return (
        isinstance(src, blosc2.NDArray)
        and not _direct.is_guarded(src)
        and tuple(src.shape) == tuple(shape)
        and tuple(src.chunks) == tuple(chunks)
        and np.dtype(src.dtype) == np.dtype(dtype)
    )


def _special_of(src: blosc2.NDArray, n: int) -> _Special | None:
    """Chunk ``n`` of ``src`` as the special value it is stored as (zeros, NaN, a repeated
    value; an uninitialised chunk reads as zeros), without decoding it; None for stored
    data. A chunk of a file claiming gigabytes of one value costs nothing to recompress,
    instead of its decoded size."""
    kind, value = _frame.chunk_special(src.schunk.get_lazychunk(n), np.dtype(src.dtype).itemsize)
    if kind == 0 or (kind == 2 and np.dtype(src.dtype).kind != "f"):
        return None
    if kind == 3:
        return _Special(blosc2.SpecialValue.VALUE, value)
    special = {1: blosc2.SpecialValue.ZERO, 2: blosc2.SpecialValue.NAN, 4: blosc2.SpecialValue.ZERO}
    return _Special(special[kind], None)


#: Bytes of new chunks a dask source computes in one ``dask.compute`` (see :func:`_dask_pieces`).
_DASK_BATCH_BYTES = 64 * 2**20


def _is_dask(src: Any) -> bool:
    """Whether ``src`` is a dask array (without importing dask)."""
    return type(src).__module__.startswith("dask.") and hasattr(src, "__dask_graph__")


def _dask_pieces(src: Any, slices: list, dtype: np.dtype) -> Iterator[Any]:
    """The pieces ``src[slc]`` of a dask array, computed a run of chunks at a time.

    Each piece computed alone would compute again every dask block it overlaps, once
    per new chunk that overlaps it (a save 17x slower than ``compute()`` for blocks
    unlike the file's chunks); one ``dask.compute`` of a run of neighbouring chunks (up
    to :data:`_DASK_BATCH_BYTES`) computes their blocks once, on dask's scheduler.
    """
    import dask

    if not slices:
        return
    first = slices[0]
    chunk_bytes = math.prod(s.stop - s.start for s in first) * dtype.itemsize
    per = max(1, _DASK_BATCH_BYTES // max(1, chunk_bytes))
    for k in range(0, len(slices), per):
        yield from dask.compute(*(src[slc] for slc in slices[k : k + per]))


def _read_room(src: Any, box: tuple) -> int:
    """Bytes a read of ``box`` of the Blosc2 array ``src`` may need: the output and a
    decoded chunk of c-blosc2's own."""
    itemsize = np.dtype(src.dtype).itemsize
    out = int(np.prod([b - a for a, b in box], dtype=np.int64)) * itemsize
    return out + int(np.prod(src.ext_chunks, dtype=np.int64)) * itemsize


def _copy_memory_error(src: Any, src_path: Any, box: tuple, dtype: np.dtype) -> MLArrayMemoryError:
    """The error for a save whose piece ``box`` of ``src`` does not fit in memory."""
    nbytes = int(np.prod([b - a for a, b in box], dtype=np.int64)) * dtype.itemsize
    path = _source_path(src, src_path)
    return MLArrayMemoryError(
        f"{path or 'MLArray'}: not enough memory to save: the data in {box} ({nbytes} bytes, "
        "a chunk of the new file) do not fit; a smaller chunk size needs less"
    )


def _other_vlmeta(src: Any) -> dict[str, Any]:
    """vlmeta entries of a Blosc2 source other than ours (FORMAT.md: keep them)."""
    if not isinstance(src, blosc2.NDArray):
        return {}
    try:
        schunk = src.schunk  # keep it alive: vlmeta refers to it weakly
        entries = schunk.vlmeta.getall()
        return {n: v for n, v in entries.items() if n not in _OWN_VLMETA}
    except Exception:  # unreadable foreign entries are not ours to keep
        return {}


_OWN_VLMETA = (VLMETA_KEY, integrity.CHECKSUM_KEY, integrity.FRAME_KEY, integrity.RECORD_KEY)
_CHECKSUM_KEYS = (integrity.CHECKSUM_KEY, integrity.FRAME_KEY, integrity.RECORD_KEY)
# c-blosc2 stores at most this many variable-length metadata entries in a frame on disk
# (BLOSC2_MAX_VLMETALAYERS); one more fails with a RuntimeError without a message.
_MAX_VLMETA = 16


class ChecksumsNotStoredWarning(UserWarning):
    """A file was written without its chunk checksums: the variable-length metadata
    entries of other tools it holds leave no room for them in its Blosc2 frame. It is
    read unverified, as files of other tools are."""


def _warn_no_checksums(path: Path, others: int) -> None:
    warnings.warn(
        f"{os.fspath(path)}: written without chunk checksums: it holds {others} "
        "variable-length metadata entries of other tools, and a Blosc2 frame holds at "
        f"most {_MAX_VLMETA} (with mlarray's record and its {len(_CHECKSUM_KEYS)} checksum "
        "entries); it is read unverified, like files of other tools",
        ChecksumsNotStoredWarning,
        stacklevel=4,
    )


# ------------------------------------------------------------------ in-place writes
#
# c-blosc2 updates a chunk of a contiguous frame in place: it writes the new chunk where
# the old one was, moves every later chunk (the "tail") to close the gap, rewrites the
# chunk offsets, the trailer and the header, and truncates the file. Everything from the
# first rewritten chunk to the end of the file, and the header, may change; the bytes in
# between are never touched. Memory-mapped handles grow the file with ftruncate (a
# sparse extension) and write through the map: on a full disk that is a SIGBUS, not an
# error. So each in-place write is one transaction:
#
# 1. reserve the space the write may need (fallocate with KEEP_SIZE): a full disk is a
#    DiskFullError before anything changes, and mapped writes land on reserved blocks;
# 2. save the header and the bytes from the first chunk the write may touch to the end of
#    the file in the undo journal next to the file (written as a nameless file, synced,
#    then linked to its name, so a journal under its name is always complete, and a
#    writer killed before that leaves nothing behind);
# 3. let c-blosc2 write, store the digests of the rewritten chunks, sync the file;
# 4. delete the journal (commit) -- or, on any failure, copy the saved bytes back,
#    truncate to the old length and reopen the store (rollback).
#
# The journal is locked (flock) while its writer lives. A journal nobody holds belongs to
# a writer that died: :func:`recover`, run by every open and save, rolls the file back
# (unless the file was replaced, or other content written into it: the journal's guard).
# The file and the journal are synced (fdatasync) before the journal goes, so a write
# that returned survives a power loss too; that costs most of the overhead measured in
# benchmarks/bench_inplace.py.

_JOURNAL_MAGIC = b"MLAJRNL\x02"
# magic, device, inode, old file length, header length, tail start, writer pid,
# guard length, guard digest, checksum-entry digest (0: the file had none),
# digest (of the fields before it and of the saved bytes)
_JOURNAL_HEAD = struct.Struct("<8sQQQQQQQQQQ")
# After the saved bytes: the state the write has left the file in so far (see
# :func:`_note_state`): magic, digest of the file's state, digest of the checksum entry
# the write is storing next (0: none), check (ties it to the journal).
_STATE_MAGIC = b"MLAJSTA\x02"
_JOURNAL_STATE = struct.Struct("<8sQQQ")
_GUARD_MAX = 1 << 20
_BLOSC2_MAX_OVERHEAD = 32  # a compressed chunk is at most its data plus this
_RECOVER_WAIT = 10.0  # seconds an open waits for another process's write to finish

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - not on Windows
    _fcntl = None  # type: ignore[assignment]


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _lock(fd: int, wait: bool) -> bool:
    if _fcntl is None:  # pragma: no cover
        return True
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | (0 if wait else _fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _copy_range(src: int, dst: int, count: int, src_pos: int, dst_pos: int) -> None:
    """Copy ``count`` bytes between files in the kernel (no user-space buffer if possible)."""
    done = 0
    while done < count:
        n = 0
        if hasattr(os, "copy_file_range"):
            try:
                n = os.copy_file_range(src, dst, count - done, src_pos + done, dst_pos + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        if n <= 0:
            block = os.pread(src, min(count - done, 1 << 24), src_pos + done)
            if not block:
                raise OSError(errno.EIO, "the file ended while copying")
            n = os.pwrite(dst, block, dst_pos + done)
        done += n


def _hash_range(fd: int, start: int, stop: int, h: Any) -> None:
    pos = start
    while pos < stop:
        block = os.pread(fd, min(stop - pos, 1 << 24), pos)
        if not block:
            raise OSError(errno.EIO, "the file ended while hashing")
        h.update(block)
        pos += len(block)


_libc_fallocate: Any = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Linux ``fallocate(2)``; False where the call or the mode is not supported."""
    global _libc_fallocate
    if not sys.platform.startswith("linux") or length <= 0:
        return False
    if _libc_fallocate is None:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = getattr(libc, "fallocate64", None) or libc.fallocate
        except (OSError, AttributeError):
            _libc_fallocate = False
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        _libc_fallocate = (fn, ctypes)
    if _libc_fallocate is False:
        return False
    fn, ctypes = _libc_fallocate
    if fn(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
        return False
    raise OSError(err, os.strerror(err))


_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2


def _reserve(fd: int, size: int, length: int) -> None:
    """Make sure writes to the first ``length`` bytes of the file cannot run out of space.

    Blocks are allocated without changing the file's size (``FALLOC_FL_KEEP_SIZE``);
    where the file system cannot do that, its free space is checked instead. The
    process's file-size limit (``RLIMIT_FSIZE``) is checked too: c-blosc2 would hit
    it with ``EFBIG`` (or the process with ``SIGXFSZ``) in the middle of the write.
    """
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit == resource.RLIM_INFINITY:
            limit = -1
    except (ImportError, OSError, ValueError):  # no such limit here
        limit = -1
    if 0 <= limit < length:
        raise OSError(
            errno.EFBIG,
            f"{os.strerror(errno.EFBIG)} (this process may write {limit} bytes per file)",
        )
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, length):
        return
    try:
        vfs = os.fstatvfs(fd)
    except OSError:
        return
    if vfs.f_bavail * vfs.f_frsize < length - size:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _release(fd: int, length: int) -> None:
    """Give back the reserved blocks beyond the end of the file."""
    with contextlib.suppress(OSError):
        size = os.fstat(fd).st_size
        start = -(-size // 4096) * 4096
        if length > start:
            _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, length - start)


def _journal_file(p: Path) -> tuple[int, Path | None]:
    """A new file for a journal: nameless (``O_TMPFILE``) where possible, else a temp name.

    A nameless file vanishes with a writer killed before it was complete; a
    named temporary file is removed by the next save of ``p``.
    """
    flag = getattr(os, "O_TMPFILE", 0)
    if flag and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(p.parent, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    tmp = _temp_path(p, clean=False)
    try:
        return os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0)), tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _link(jfd: int, tmp: Path | None, jpath: Path) -> None:
    """Give the journal its name (``FileExistsError`` if it has one already)."""
    if tmp is not None:
        os.link(tmp, jpath)
        return
    # A nameless file is linked through its /proc entry, followed (linkat with
    # AT_SYMLINK_FOLLOW: Python passes the flag only with a directory descriptor).
    proc = os.open("/proc/self/fd", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.link(str(jfd), jpath, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _write_journal(
    p: Path, fd: int, buf: Any, st: os.stat_result, info: Any, low: int
) -> tuple[int, Path]:
    """Save the header and ``[low, end)`` of the file open as ``fd`` (mapped as ``buf``).

    Returns the journal's descriptor (locked) and path. The journal is
    written without its name (see :func:`_journal_file`), synced, and then
    linked to :func:`journal_path`, so a journal under that name is always
    complete.
    """
    import xxhash

    jpath = journal_path(p)
    head_len = info.header_len
    entry = _entry_digest(buf, info, p)
    jfd, tmp = _journal_file(p)
    _WRITER_FDS.add(jfd)  # a child forked meanwhile closes its copy (and its lock)
    try:
        _lock(jfd, wait=True)
        size = st.st_size
        start = _JOURNAL_HEAD.size
        _copy_range(fd, jfd, head_len, 0, start)
        _copy_range(fd, jfd, size - low, low, start + head_len)
        mv = memoryview(buf).cast("B")
        # The guard: a digest of chunk bytes the write never changes (up to 1 MiB after
        # the header), so a journal is never applied to other content put in the file.
        guard_len = min(low - head_len, _GUARD_MAX)
        guard = xxhash.xxh3_64_intdigest(mv[head_len : head_len + guard_len])
        fields = (_JOURNAL_MAGIC, st.st_dev, st.st_ino, size, head_len, low, os.getpid())
        fields += (guard_len, guard, entry)
        h = xxhash.xxh3_64(_JOURNAL_HEAD.pack(*fields, 0)[:-8])
        h.update(mv[:head_len])  # the saved bytes, read through the file's map (page cache)
        for pos in range(low, size, 1 << 24):
            h.update(mv[pos : min(pos + (1 << 24), size)])
        del mv
        head = _JOURNAL_HEAD.pack(*fields, h.intdigest())
        os.pwrite(jfd, head, 0)
        _datasync(jfd)
        for attempt in range(2):
            try:
                _link(jfd, tmp, jpath)
                break
            except FileExistsError:
                if attempt:
                    raise MLArrayIOError(
                        p, "another process is writing to it in place; not writing", errno.EBUSY
                    ) from None
                if recover(p, wait=False):  # a writer that died left it; this handle is stale
                    raise MLArrayIOError(
                        p,
                        "another process was killed while writing to it in place; its write "
                        "was rolled back. Reopen the file to write to it.",
                        errno.ESTALE,
                    ) from None
            except OSError as exc:  # no hard links on this file system
                if tmp is None or exc.errno not in (
                    errno.EPERM,
                    errno.EOPNOTSUPP,
                    errno.EMLINK,
                    errno.ENOSYS,
                ):
                    raise
                if jpath.exists():
                    raise MLArrayIOError(
                        p, "another process is writing to it in place; not writing", errno.EBUSY
                    ) from None
                os.replace(tmp, jpath)
                break
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        _fsync_path(p.parent, directory=True)
    except BaseException:
        _close_locked(jfd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    return jfd, jpath


def _read_journal(jfd: int) -> tuple | None:
    """The journal's head fields, or None if it is incomplete or damaged."""
    import xxhash

    try:
        head = os.pread(jfd, _JOURNAL_HEAD.size, 0)
        if len(head) != _JOURNAL_HEAD.size:
            return None
        magic, dev, ino, size, head_len, low, _pid, guard_len, guard, entry, digest = (
            _JOURNAL_HEAD.unpack(head)
        )
        length = os.fstat(jfd).st_size - _JOURNAL_HEAD.size
        saved = head_len + size - low
        if (
            magic != _JOURNAL_MAGIC
            or low > size
            # a state record, or one of 24 bytes (no pending entry: an earlier layout)
            or length not in (saved, saved + _JOURNAL_STATE.size, saved + 24)
        ):
            return None
        h = xxhash.xxh3_64(head[:-8])
        _hash_range(jfd, _JOURNAL_HEAD.size, _JOURNAL_HEAD.size + saved, h)
    except OSError:
        return None
    if h.intdigest() != digest or guard_len > low - head_len:
        return None
    return dev, ino, size, head_len, low, guard_len, guard, entry, digest


def _entry_digest(buf: Any, info: Any, p: Path) -> int:
    """A digest of the frame's checksum entry (:data:`integrity.CHECKSUM_KEY`), 0 if it
    has none (or an unreadable one)."""
    try:
        raw = _frame.read_vlmeta_bytes(buf, info, integrity.CHECKSUM_KEY, p)
    except Exception:
        return 0
    if not isinstance(raw, bytes | bytearray):
        return 0
    return _value_digest(bytes(raw))


def _value_digest(raw: bytes) -> int:
    """:func:`_entry_digest` of a checksum entry holding ``raw``."""
    import xxhash

    return xxhash.xxh3_64_intdigest(raw) or 1


def _state_digest(fd: int, size: int, head_len: int, low: int) -> int:
    """A digest of the parts of a file of ``size`` bytes an in-place write may change:
    its length, its header and everything from ``low`` on."""
    import xxhash

    h = xxhash.xxh3_64(size.to_bytes(8, "little"))
    _hash_range(fd, 0, head_len, h)
    _hash_range(fd, low, size, h)
    return h.intdigest()


def _state_check(state: int, pending: int, jdigest: int) -> int:
    import xxhash

    return xxhash.xxh3_64_intdigest(_STATE_MAGIC + struct.pack("<QQQ", state, pending, jdigest))


def _note_state(fd: int, jfd: int, pending: int = 0, state: int | None = None) -> int:
    """Store in the journal ``jfd`` the state the write has left the file ``fd`` in
    (``state``: its digest, when known), and returns that digest.

    Called after each step of a write (c-blosc2's chunk writes, the vlmeta entries),
    so that a writer killed between steps leaves a journal that knows the file's exact
    bytes, and :func:`recover` restores that file and no other content put into it.
    ``pending``: the digest (:func:`_value_digest`) of the checksum entry the write
    stores next, so that a writer killed after storing it is still recognised.
    Not synced: after a power loss the journal falls back on its other checks.
    """
    head = os.pread(jfd, _JOURNAL_HEAD.size, 0)
    fields = _JOURNAL_HEAD.unpack(head)
    size, head_len, low, jdigest = fields[3], fields[4], fields[5], fields[10]
    if state is None:
        state = _state_digest(fd, os.fstat(fd).st_size, head_len, low)
    check = _state_check(state, pending, jdigest)
    record = _JOURNAL_STATE.pack(_STATE_MAGIC, state, pending, check)
    os.pwrite(jfd, record, _JOURNAL_HEAD.size + head_len + size - low)
    return state


def _noted_state(jfd: int, fields: tuple) -> tuple[int, int] | None:
    """The file state last noted in the journal (:func:`_note_state`) and the digest of
    the checksum entry the write was about to store (0: none), or None."""
    size, head_len, low, jdigest = fields[2], fields[3], fields[4], fields[8]
    try:
        raw = os.pread(jfd, _JOURNAL_STATE.size, _JOURNAL_HEAD.size + head_len + size - low)
    except OSError:
        return None
    if len(raw) != _JOURNAL_STATE.size:
        return None
    magic, state, pending, check = _JOURNAL_STATE.unpack(raw)
    if magic != _STATE_MAGIC or check != _state_check(state, pending, jdigest):
        return None
    return state, pending


def _saved_state(jfd: int, fields: tuple) -> int:
    """The digest :func:`_state_digest` gave the file before the write (from the
    journal's saved bytes)."""
    import xxhash

    size, head_len, low = fields[2], fields[3], fields[4]
    h = xxhash.xxh3_64(size.to_bytes(8, "little"))
    _hash_range(jfd, _JOURNAL_HEAD.size, _JOURNAL_HEAD.size + head_len + size - low, h)
    return h.intdigest()


def _guard_holds(fd: int, fields: tuple) -> bool:
    """Whether the file still holds the chunk bytes the journal's write never changed."""
    import xxhash

    head_len, guard_len, guard = fields[3], fields[5], fields[6]
    try:
        data = os.pread(fd, guard_len, head_len)
    except OSError:
        return False
    return len(data) == guard_len and xxhash.xxh3_64_intdigest(data) == guard


def _whole(p: Path) -> bool:
    """Whether ``p`` is a consistent file: frame, metadata and every chunk digest valid.

    False for a file without digests (nothing tells a finished write from a
    partial one there) and whenever verification is switched off.
    """
    try:
        buf = map_regular_file(p)
    except Exception:
        return False
    try:
        with warnings.catch_warnings():  # stale digests (an interrupted write): not whole
            warnings.simplefilter("ignore", integrity.StaleChecksumsWarning)
            info, checked = _verified_frame(p, buf)
        _meta_from_raw(_frame.read_vlmeta_bytes(buf, info, VLMETA_KEY, p), info.shape, p)
        return checked
    except Exception:  # any damage: not whole (the journal decides)
        return False
    finally:
        with contextlib.suppress(BufferError):
            buf.close()


def _left_by_the_write(p: Path, fd: int, jfd: int, fields: tuple) -> bool:
    """Whether the file open as ``fd`` holds what the journal's interrupted write can
    have left in it (so the journal applies), rather than other content put into it
    since (``cp`` onto it, another tool's write).

    The file's state (its length, header and the bytes from the first one the write
    may change on) must be the one before the write or the one its writer last noted
    (:func:`_note_state`, after each step). A writer killed within a step leaves a
    part-written state nobody noted: then the bytes the write never changes must be
    there (the guard), and, for a file that had checksums, either the checksum entry
    it had (the write's digests were not stored yet), the one the write was storing,
    or no readable frame. A file without checksums is rolled back whenever the guard
    holds: c-blosc2 leaves a readable frame after each chunk it rewrites, so nothing
    tells a write killed between two chunks from another such file put in its place
    (the limit: ``cp`` of another version without checksums that keeps the old bytes
    before the written chunks, while the killed write's journal waits, is rolled back).
    """
    head_len, low, entry = fields[3], fields[4], fields[7]
    noted = _noted_state(jfd, fields)
    try:
        cur_size = os.fstat(fd).st_size
        if cur_size >= low:
            state = _state_digest(fd, cur_size, head_len, low)
            if state == _saved_state(jfd, fields) or (noted and state == noted[0]):
                return True
    except OSError:
        return False
    if not _guard_holds(fd, fields):
        return False
    if not entry:
        return True
    current = _current_entry(p)
    return current is None or current == entry or (noted is not None and current == noted[1] != 0)


def _current_entry(p: Path) -> int | None:
    """:func:`_entry_digest` of the file ``p``, None if it is no readable frame."""
    try:
        buf = map_regular_file(p)
    except Exception:
        return None
    try:
        info = _frame.inspect_frame(buf, p)
        return _entry_digest(buf, info, p)
    except Exception:
        return None
    finally:
        with contextlib.suppress(BufferError):
            buf.close()


class JournalNotAppliedWarning(UserWarning):
    """An interrupted in-place write's undo journal was not applied: its file holds
    other content now. The file was left as it is; the journal was kept aside."""


def _set_aside(p: Path, jpath: Path, jfd: int) -> None:
    """Keep a journal that does not apply under another name, and warn naming both."""
    aside = jpath.with_name(f"{jpath.name}-unapplied-{time.time_ns()}")
    try:
        if os.path.samestat(os.fstat(jfd), os.stat(jpath)):
            os.rename(jpath, aside)
        else:
            aside = None
    except OSError:
        aside = None
    finally:
        _close_locked(jfd)
    if aside is None:
        return
    warnings.warn(
        f"{os.fspath(p)}: an in-place write to this file was interrupted, and the file "
        "now holds content that write cannot have left (another file was copied onto "
        "it, or another program wrote it): the file was left as it is, and the write's "
        f"undo journal was not applied but kept as {os.fspath(aside)}",
        JournalNotAppliedWarning,
        stacklevel=3,
    )


def _roll_back(p: Path, fd: int, jfd: int, fields: tuple) -> None:
    """Put the saved bytes of the journal ``jfd`` back into the file open as ``fd``."""
    size, head_len, low = fields[2:5]
    os.ftruncate(fd, size)  # first: a file that grew gives its space back
    start = _JOURNAL_HEAD.size
    _copy_range(jfd, fd, head_len, start, 0)
    _copy_range(jfd, fd, size - low, start + head_len, low)
    _datasync(fd)


def _drop_journal(jpath: Path, jfd: int) -> None:
    """Remove the journal (commit). Its directory is not synced: should a power loss
    bring the name back, the next open rolls back to the state before that write,
    which is consistent too."""
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(jfd), os.stat(jpath)):
            os.unlink(jpath)
    _close_locked(jfd)


def recover(path: str | os.PathLike, wait: bool = True) -> bool:
    """Roll back an in-place write to ``path`` that a crash interrupted; True if one was.

    Costs one failed ``open`` when there is no journal (the normal case). A
    journal held by a live writer (another process in the middle of a write)
    is left alone, after waiting up to 10 s for that write to end (``wait``).
    A journal of a file that was replaced or deleted since, or an incomplete
    one, is removed. A journal whose file (the same one) now holds content the
    interrupted write cannot have left (another file copied onto it) is not
    applied: it is kept aside (renamed ``<journal>-unapplied-<time>``) with a
    :class:`JournalNotAppliedWarning` naming both.

    Raises
    ------
    MLArrayIOError
        If the file cannot be restored (no write permission; the journal is kept).
    DiskFullError
        If there is no space to restore it (the journal is kept for the next try).
    """
    return bool(_recover(path, wait))


def _recover(path: str | os.PathLike, wait: bool = True) -> bool | None:
    """:func:`recover`, returning None when ``path`` has no journal at all."""
    name = os.fspath(journal_path(path))
    try:
        jfd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MLArrayIOError(
            path, f"cannot read the journal of an interrupted write ({name}): {exc.strerror}"
        ) from None
    _WRITER_FDS.add(jfd)  # locked while it is rolled back: not held by forked children
    p = Path(os.fspath(path))
    jpath = Path(name)
    try:
        deadline = time.monotonic() + (_RECOVER_WAIT if wait else 0.0)
        while not _lock(jfd, wait=False):
            if time.monotonic() > deadline:
                return False  # still being written by a live process: its write, not ours
            time.sleep(0.01)
        try:
            if not os.path.samestat(os.fstat(jfd), os.stat(jpath)):
                return False  # committed (or rolled back) and removed meanwhile
        except FileNotFoundError:
            return False
        fields = _read_journal(jfd)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            st = None
        if fields is None or st is None or (st.st_dev, st.st_ino) != fields[:2]:
            _drop_journal(jpath, jfd)  # incomplete, or its file is gone or was replaced
            jfd = -1
            return False
        if _whole(p):
            # Valid frame and metadata, every chunk matching its stored digest: the
            # write completed before the crash, or other content was put into the file
            # since. Either way it is left as it is.
            _drop_journal(jpath, jfd)
            jfd = -1
            return False
        with os_errors(p, "cannot restore it after an interrupted in-place write"):
            try:
                fd = os.open(p, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except PermissionError:
                raise MLArrayIOError(
                    p,
                    "an in-place write to it was interrupted; restoring it needs write "
                    f"permission (journal {jpath.name})",
                    errno.EACCES,
                ) from None
            try:
                applies = _left_by_the_write(p, fd, jfd, fields)
                if applies:
                    _roll_back(p, fd, jfd, fields)
            finally:
                os.close(fd)
        jfd, held = -1, jfd  # closed by either (a warning turned into an error too)
        if not applies:
            _set_aside(p, jpath, held)
        else:
            _drop_journal(jpath, held)
        return applies
    finally:
        if jfd >= 0:
            _close_locked(jfd)


def _growth_bound(info: Any, ids: np.ndarray, vlmeta_bytes: int) -> int:
    """Bytes an in-place write of chunks ``ids`` may add to a frame, at most.

    Each rewritten chunk takes the place of the old one (at most its data plus
    Blosc2's overhead, less what the old one held); the chunk offsets and the
    trailer may grow to their largest size.
    """
    old = np.where(info.chunk_pos[ids] >= 0, info.chunk_cbytes[ids], 0) if len(ids) else []
    chunk = info.chunksize + _BLOSC2_MAX_OVERHEAD
    grow = int(np.maximum(chunk - np.asarray(old, dtype=np.int64), 0).sum())
    offsets = 8 * info.nchunks + _BLOSC2_MAX_OVERHEAD
    digests = 8 * info.nchunks + 16 + _BLOSC2_MAX_OVERHEAD
    # the entry naming the frame (integrity.FRAME_KEY): tag, digest, every chunk's offset
    digests += 16 + 8 * info.nchunks + _BLOSC2_MAX_OVERHEAD
    # the entry naming the record (integrity.RECORD_KEY): tag, digest
    digests += 16 + _BLOSC2_MAX_OVERHEAD
    return grow + offsets + 2 * (vlmeta_bytes + digests) + 4096


def write_in_place(
    store: Any,
    path: str | os.PathLike,
    bounds: Any,
    write: Callable[[Any], None] | None,
    *,
    vlmeta: dict[str, bytes] | None = None,
    refresh: bool = False,
    reopen: Callable[[], Any] | None = None,
) -> None:
    """Run ``write`` (which writes into ``store``'s file) as one all-or-nothing write.

    Writers of one file take turns: each holds the file's writer lock (``flock`` on
    the file) from before it reads the frame until its write is committed, and waits
    up to 10 s for another's. A handle whose view of the file is stale then (another
    process or handle wrote it in place since) writes through a fresh one (``reopen``).

    Parameters
    ----------
    store : blosc2.NDArray
        A writable handle of the file (plain file I/O or ``mmap_mode="r+"``).
    path : str or PathLike
        Its file.
    bounds : list of (start, stop) or None
        The box ``write`` writes into, one pair per axis (``[]`` for a 0-d array,
        whose one chunk it covers); None: anywhere (every chunk is journaled and
        its checksum refreshed). Ignored without ``write``.
    write : callable or None
        Writes through the store it is given (``store``, or the fresh one).
    vlmeta : dict, optional
        vlmeta entries to store in the same transaction.
    refresh : bool
        Recompute every chunk digest (a file written without keeping them).
    reopen : callable, optional
        Makes and returns a fresh store of the file, replacing ``store`` in its
        owner: called when ``store``'s view of the file is stale, and after a rollback.

    Raises
    ------
    DiskFullError
        If the space the write may need is not free; nothing was written.
    FileChangedError
        If the file changed in place since ``store`` was opened and no fresh view
        can be had (no ``reopen``, or the file now holds another array).
    MLArrayIOError
        If the write failed (the file was restored to its state before it), or
        another process's write did not end within 10 s (errno ``EBUSY``).
    """
    _maps.refuse_write(store, path)
    p = Path(os.fspath(path))
    integrity.check_identity(store)
    vlmeta = dict(vlmeta or {})
    with os_errors(p, "cannot write in place"):
        fd = os.open(p, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    _WRITER_FDS.add(fd)
    try:  # closing the descriptor releases the writer lock
        _lock_writer(p, fd)
        store, buf, info = _current_view(store, p, fd, reopen)
        with _maps.writing(store):  # its readers on other threads see the file change
            try:
                _transaction(store, p, fd, buf, info, bounds, write, vlmeta, refresh, reopen)
            finally:
                with contextlib.suppress(OSError):
                    _maps.resync(store, os.fstat(fd))  # this handle's own change of its file
    finally:
        _WRITER_FDS.discard(fd)
        os.close(fd)


# Descriptors of the writes under way in this process, which hold their files' writer
# locks, and of their undo journals (locked while a write or a roll-back runs). A child
# forked meanwhile closes its copies: a lock is held until every copy of its descriptor
# is closed, and the child would hold it, and stall every writer (and every open waiting
# for the journal) of the file, for as long as it lives, and keep a removed journal's
# space in use (the parent's copy keeps the lock for its write).
_WRITER_FDS: set[int] = set()


def _close_locked(fd: int) -> None:
    """Close ``fd``, a descriptor of :data:`_WRITER_FDS` (its lock goes with it)."""
    _WRITER_FDS.discard(fd)
    os.close(fd)


def _close_writer_fds_in_child() -> None:
    for fd in list(_WRITER_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _WRITER_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_writer_fds_in_child)


def _map_of(fd: int) -> mmap.mmap:
    """A read-only mapping of the file open as ``fd`` (a write's, holding the writer
    lock), made on a descriptor of its own: ``mmap`` keeps a duplicate of the
    descriptor it maps, which would share ``fd``'s lock (see :data:`_WRITER_FDS`)."""
    try:
        own = os.open(f"{_FD_DIR}/{fd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # no /proc
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    try:
        return mmap.mmap(own, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(own)


_WRITER_WAIT = 10.0  # seconds a write waits for another process's write to the file
_FRAME_PRINT = "_mlarray_frame_print"  # (size, digest) of the frame a store's last write left


def _lock_writer(p: Path, fd: int) -> None:
    """Take the writer lock of the file open as ``fd``, waiting up to
    :data:`_WRITER_WAIT` for another writer's write to end."""
    deadline = time.monotonic() + _WRITER_WAIT
    pause = 0.0005
    while not _lock(fd, wait=False):
        if time.monotonic() > deadline:
            raise MLArrayIOError(
                p,
                f"another process is writing to it in place and did not finish within "
                f"{_WRITER_WAIT:g} s; not writing",
                errno.EBUSY,
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def _frame_print(buf: Any, info: Any, size: int) -> int:
    """The digest of the frame's header and trailer that :class:`mlarray._maps.Watch`
    takes of the file it opened (:func:`mlarray._maps.frame_print`)."""
    return _maps.frame_print(buf, _maps.frame_spans(info, size))


def _view_is_current(store: Any, st: os.stat_result, buf: Any, info: Any) -> bool:
    """Whether ``store``'s view of its file (open as ``st``, mapped as ``buf``, its frame
    ``info``) is the file as it is: as the store opened it or its own last write left it."""
    w = _maps.watch_of(store)
    if w is None:
        return True
    if (st.st_dev, st.st_ino) != (w.dev, w.ino):
        return False
    known = getattr(store, _FRAME_PRINT, None)
    if known is not None:  # the frame its last write left (within one clock tick too)
        return known == (st.st_size, _frame_print(buf, info, st.st_size))
    if (st.st_size, st.st_mtime_ns) != (w.size, w.mtime):
        return False
    # as it opened it: the same header and trailer (a write within one clock tick)
    return w._print is None or w._print == _frame_print(buf, info, st.st_size)


def _current_view(store: Any, p: Path, fd: int, reopen: Callable[[], Any] | None) -> tuple:
    """With the writer lock held: the store to write through (``store``, or a fresh one
    if the file changed since ``store`` looked at it), the file's mapping and frame."""
    integrity.check_identity(store)  # replaced while this writer waited
    st = os.fstat(fd)
    with contextlib.suppress(OSError):
        if not os.path.samestat(st, os.stat(p)):  # this descriptor: a file since replaced
            raise MLArrayIOError(
                p,
                "was replaced by another file since it was opened (saved by another "
                "process?); not writing to it. Reopen it to modify the new version.",
            )
    if _recover(p, wait=True):  # a killed writer's write was rolled back
        st = os.fstat(fd)
    for attempt in range(2):
        buf = _map_of(fd)
        try:
            info = _frame.inspect_frame(buf, p, _maps.pread_at(fd))
        except MLArrayFormatError:
            # no writer of mlarray holds the file: damage, or another program's change
            _maps.check(store)  # changed since the handle looked: FileChangedError
            if _maps.changed_since(p, _maps.version_of(st)):
                raise FileChangedError(
                    p, "changed on disk while it was being written (by another program)"
                ) from None
            raise
        if _view_is_current(store, st, buf, info):
            w = _maps.watch_of(store)
            if w is not None and (w.size, w.mtime) != (st.st_size, st.st_mtime_ns):
                # the frame it knows (a touch, or another writer's write that changed no
                # byte): its reads expect the file as it is
                w.resync(st)
            return store, buf, info
        del buf
        if reopen is None or attempt:
            raise FileChangedError(
                p,
                "changed on disk since this handle last looked at it (written in place by "
                "another program or handle); reopen it to write to the new version",
            )
        old = store
        store = reopen()
        if (
            tuple(store.shape) != tuple(old.shape)
            or store.dtype != old.dtype
            or tuple(store.chunks) != tuple(old.chunks)
        ):
            raise FileChangedError(
                p,
                "holds another array since this handle opened it (written in place by "
                "another program); reopen it to write to the new version",
            )
        st = os.fstat(fd)
    raise AssertionError("unreachable")


def reopen_store(store: Any, path: str | os.PathLike, mmap_mode: str | None, writable: bool) -> Any:
    """A fresh handle of ``path`` replacing ``store`` (after a rolled-back write, or in a
    forked child, where the old handle's thread pools are gone).

    What the old handle knew carries over: the file it opened (a replaced file is
    still refused), that it wrote (verification stays off), that the digests are stale.
    A handle made by ``create`` (``mmap_mode="w+"``) is reopened with ``"r+"``.
    """
    mode = "r+" if mmap_mode == "w+" else mmap_mode
    new, _ = open_store(path, mmap_mode=mode, writable=writable)
    if hasattr(store, "_mlarray_identity"):
        new._mlarray_identity = store._mlarray_identity
    if integrity.was_written(store):
        integrity.note_write(new)
    if integrity.is_stale(store):
        integrity.mark_stale(new)
    return new


def reopen_in_child(
    store: Any, path: str | os.PathLike, mmap_mode: str | None, writable: bool
) -> Any:
    """In a forked child: a one-thread handle of the very file version the parent's
    handle ``store`` (whose thread pools are gone) reads, or
    :class:`~mlarray.errors.FileChangedError`.

    The parent's handle keeps reading the version it opened after a save replaced the
    file (by a rename) or deleted it; reopening ``path`` would read the new file with
    the old handle's shape and metadata. A read-only handle is rebuilt on the mapping
    of its version, which the child inherited (its checks carry over); a writable one
    reopens ``path``, which must still be that version (written in place by this
    process at most), or its use raises.
    """
    w = _maps.watch_of(store)
    if w is None:
        return reopen_store(store, path, mmap_mode, writable)
    read_only = not writable and mmap_mode in ("r", "c", None) and w.buf is not None
    # a writable handle reopens a file another handle of the parent wrote, as it would there
    own = not read_only and w.changed_by_this_process()
    if not own:
        w.check()  # changed in place since the parent opened it: as the parent would see
    if read_only:
        from mlarray._read import BLOCKS_ATTR  # (its decoder reads this same mapping)

        new = _store_in(w.buf, {"nthreads": 1})
        for attr in (
            _maps._WATCH,
            integrity._VERIFIER_ATTR,
            _prefetch._ATTR,
            "_mlarray_pin",
            BLOCKS_ATTR,
        ):
            found = getattr(store, attr, None)
            if found is not None:
                setattr(new, attr, found)
        new._mlarray_threads = 1
        return _direct.guard_like(new, store)
    p = Path(os.fspath(path))
    changed = FileChangedError(
        p,
        "replaced, deleted or written since this handle was opened in the parent "
        "process; a forked process cannot reach the version it opened for writing: "
        "reopen the file",
    )
    try:
        st = os.stat(p)
    except OSError:
        raise changed from None
    if (st.st_dev, st.st_ino) != (w.dev, w.ino):
        raise changed
    new = reopen_store(store, p, mmap_mode, writable)
    nw = _maps.watch_of(new)
    if not own and (
        nw is None or (nw.dev, nw.ino, nw.size, nw.mtime) != (w.dev, w.ino, w.size, w.mtime)
    ):
        raise changed
    return new


def store_may_run_threads(store: Any) -> bool:
    """Whether ``store`` (any store) is a Blosc2 array whose contexts may run threads."""
    if not isinstance(store, blosc2.NDArray):
        return False  # numpy arrays and None have no Blosc2 contexts
    n = getattr(store, "_mlarray_threads", None)
    if n is None:
        n = max(int(store.schunk.dparams.nthreads), int(store.schunk.cparams.nthreads))
    return n > 1


def memory_copy(store: blosc2.NDArray, nthreads: int | None = None) -> blosc2.NDArray:
    """An in-memory copy of ``store``'s frame (its compressed chunks and metalayers) with
    the same codec, filters, layout and guard, and ``store``'s thread counts (or
    ``nthreads``).

    Only ``store``'s compressed chunks are read: ``to_cframe`` copies them into a new
    frame using none of ``store``'s compression or decompression contexts, so
    ``nthreads=1`` makes the copy a forked child needs (``store``'s contexts may be
    attached to thread pools that are gone; it is left alone, see :mod:`mlarray._fork`).
    """
    cparams, dparams = store.schunk.cparams, store.schunk.dparams
    new = blosc2.ndarray_from_cframe(store.to_cframe(), copy=True)
    if nthreads is not None:  # its own contexts never ran: freeing them attaches to no pool
        cparams = dataclasses.replace(cparams, nthreads=nthreads)
        dparams = dataclasses.replace(dparams, nthreads=nthreads)
    new.schunk.cparams = cparams
    new.schunk.dparams = dparams
    new._mlarray_threads = _store_threads(new, True)
    return _direct.guard_like(new, store)


def _transaction(
    store: Any,
    p: Path,
    fd: int,
    buf: Any,
    info: Any,
    bounds: Any,
    write: Callable[[Any], None] | None,
    vlmeta: dict[str, bytes],
    refresh: bool,
    reopen: Callable[[], Any] | None,
) -> None:
    st = os.fstat(fd)
    ids = (
        np.zeros(0, dtype=np.int64)
        if write is None  # metadata only: no chunk changes
        else integrity.chunks_in_box(info, bounds)
    )
    data_end = info.header_len + info.cbytes
    pos = info.chunk_pos[ids] if len(ids) else np.zeros(0, dtype=np.int64)
    pos = pos[pos >= 0]
    low = min(int(pos.min()) if pos.size else data_end, data_end)
    digests = None
    if not refresh and not integrity.is_stale(store):
        try:
            digests = integrity.stored_digests(buf, info, p)
        except MLArrayError:  # a damaged entry: recompute all of them
            refresh = True
    names = set(info.vlmeta) | set(vlmeta)
    if len(names) > _MAX_VLMETA:
        raise MLArrayFormatError(
            p,
            f"cannot store its metadata in place: it holds {len(info.vlmeta)} variable-length "
            f"metadata entries (of other tools), and a Blosc2 frame holds at most "
            f"{_MAX_VLMETA}; nothing was written",
        )
    if refresh and len(names | set(_CHECKSUM_KEYS)) > _MAX_VLMETA:
        refresh = False  # no room for the checksums: the file stays without them
        if write is not None:
            integrity.mark_stale(store)
        _warn_no_checksums(p, len(names - {VLMETA_KEY, *_CHECKSUM_KEYS}))
    # a file checksummed before the record entry existed, full of other tools' entries, keeps
    # its checksums without one (verified as before)
    record_fits = integrity.RECORD_KEY in names or len(names) < _MAX_VLMETA
    reserve = st.st_size + _growth_bound(info, ids, sum(map(len, vlmeta.values())))
    with os_errors(p, "cannot write in place"):
        _reserve(fd, st.st_size, reserve)
    try:
        with os_errors(p, "cannot write in place: cannot create its undo journal in its folder"):
            jfd, jpath = _write_journal(p, fd, buf, st, info, low)
    except BaseException:
        _release(fd, reserve)
        raise
    del buf
    try:
        noted = False
        state = None  # the digest of the state noted last, while it is the file's
        if write is not None:
            write(store)
            state = _note_state(fd, jfd)
            noted = True
        schunk = store.schunk
        for key, value in vlmeta.items():
            schunk.vlmeta[key] = value
            noted, state = False, None
        if refresh:
            noted = False
            integrity.refresh_file(store, p)
        elif digests is None and len(ids):
            integrity.mark_stale(store)  # a file without checksums: all of them on close()
        elif len(ids):
            new = _map_of(fd)
            info_new = _frame.inspect_frame(new, p, _maps.pread_at(fd))  # c-blosc2: valid?
            entries = integrity.updated_entry(new, info_new, digests, ids)
            del new, info_new
            # the entry it stores next: a writer killed after storing it is recognised
            pending = _value_digest(entries[integrity.CHECKSUM_KEY])
            _note_state(fd, jfd, pending, state)
            for key, value in entries.items():
                if key != integrity.RECORD_KEY or record_fits:
                    schunk.vlmeta[key] = value
            noted = False
        elif digests is not None and VLMETA_KEY in vlmeta and record_fits:
            # metadata only: name the record the checksums now go with
            schunk.vlmeta[integrity.RECORD_KEY] = integrity.record_binding(vlmeta[VLMETA_KEY])
            noted = False
        if not noted:
            _note_state(fd, jfd)
        _datasync(fd)  # the write is on disk before its journal goes
    except BaseException as exc:
        _fail(p, fd, jfd, jpath, exc, reopen, data=write is not None)
        raise AssertionError("unreachable") from None  # _fail always raises
    _drop_journal(jpath, jfd)
    _release(fd, reserve)
    with contextlib.suppress(Exception):  # the frame this write left, as the next one checks
        size = os.fstat(fd).st_size
        new = _map_of(fd)
        info = _frame.inspect_frame(new, p, _maps.pread_at(fd))
        setattr(store, _FRAME_PRINT, (size, _frame_print(new, info, size)))


def _fail(
    p: Path,
    fd: int,
    jfd: int,
    jpath: Path,
    exc: BaseException,
    reopen: Callable | None,
    data: bool = True,
) -> None:
    """Roll a failed transaction back, reopen the store, and raise what went wrong
    (``data``: the transaction wrote array data, not only metadata and checksums)."""
    try:
        _roll_back(p, fd, jfd, _read_journal_fields(jfd))
    except OSError as err:
        _close_locked(jfd)
        raise MLArrayIOError(
            p,
            f"an in-place write failed ({exc}) and the file could not be restored yet "
            f"({err.strerror}); it will be restored from {jpath.name} when it is next opened",
            err.errno,
        ) from exc
    _drop_journal(jpath, jfd)
    if reopen is not None:
        reopen()
    if isinstance(exc, MLArrayError) or not isinstance(exc, Exception):
        raise exc
    err_no = getattr(exc, "errno", None)
    if err_no is None and _nearly_full(fd):
        err_no = errno.ENOSPC
    if err_no in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        raise DiskFullError(
            p,
            "cannot write in place: No space left on device (the file was restored to "
            "its state before this write)",
            err_no,
        ) from exc
    why = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} without a message"
    if data:
        what = "in-place write failed ({}); the file was restored to its state before this write"
    else:  # closing or flushing a handle: its metadata and checksums, not its array writes
        what = (
            "storing its metadata and checksums in place failed ({}); they were not stored "
            "and the file is as it was before (array data written earlier stays in it)"
        )
    raise MLArrayIOError(p, what.format(why), err_no) from exc


def _read_journal_fields(jfd: int) -> tuple:
    head = os.pread(jfd, _JOURNAL_HEAD.size, 0)
    return _JOURNAL_HEAD.unpack(head)[1:6]


def _nearly_full(fd: int) -> bool:
    try:
        vfs = os.fstatvfs(fd)
    except OSError:
        return False
    return vfs.f_bavail * vfs.f_frsize < (1 << 20)
