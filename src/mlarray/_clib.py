"""The C library of the installed blosc2 wheel (``blosc2/lib/libblosc2.so*``) through ctypes.

Importing python-blosc2 costs about 0.18 s (it pulls in its whole API, numexpr, an
HTTP client...); decoding the chunks a viewer's first frame shows costs a few
milliseconds. This module binds the few c-blosc2 functions a reader of an already
validated frame needs, from the shared library the wheel ships, *without* importing
the ``blosc2`` package: the package's directory is located with
:func:`importlib.util.find_spec` (which does not execute a top-level package).

:func:`get` returns the binding, or None whenever anything is in doubt (no such
library, a c-blosc2 version whose ``blosc2_dparams`` layout was not checked against
this binding, a missing symbol); callers then use python-blosc2 as before.

Every decompression goes through a context of one thread (``blosc2_*_ctx``
functions, which need no global lock; ``blosc2_init`` runs once when the library is
loaded, for its table of filters), one context per
Python thread: ctypes releases the GIL during each call, so Python threads decode
in parallel (napari reads planes from several threads). The caller validates
what it hands over (:func:`mlarray.frame.inspect_frame`, chunk checksums): these
functions only bound the source and destination sizes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["CLib", "get"]

#: c-blosc2 versions (prefix of ``blosc2_get_version_string()``) whose
#: ``blosc2_dparams`` (int16 nthreads, schunk, postfilter, postparams, int32 typesize)
#: and function signatures were checked against this binding (the header
#: ``blosc2/include/blosc2.h`` of python-blosc2 4.14 ships c-blosc2 3.3.5).
BOUND_VERSIONS = ("3.3.",)

_LIB_NAMES = ("libblosc2.so", "libblosc2.so.9", "libblosc2.dylib")


class _DParams(ctypes.Structure):
    _fields_ = [
        ("nthreads", ctypes.c_int16),
        ("schunk", ctypes.c_void_p),
        ("postfilter", ctypes.c_void_p),
        ("postparams", ctypes.c_void_p),
        ("typesize", ctypes.c_int32),
    ]


class _Context:
    """One decompression context of one thread (freed with the thread's locals)."""

    def __init__(self, lib: Any) -> None:
        self._free = lib.blosc2_free_ctx
        self.ptr = lib.blosc2_create_dctx(_DParams(1, None, None, None, 8))
        if not self.ptr:
            raise MemoryError("c-blosc2 could not create a decompression context")

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            self._free(ptr)


class CLib:
    """The bound functions of one loaded ``libblosc2``; see :func:`get`."""

    def __init__(self, lib: Any, path: Path, version: str) -> None:
        self.path = path
        self.version = version
        self._lib = lib
        self._local = threading.local()

    def _ctx(self) -> int:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = _Context(self._lib)
        return ctx.ptr

    def decompress(self, src: Any, srcsize: int, dst: int, dstsize: int) -> int:
        """Decompress the chunk at address (or bytes) ``src`` (``srcsize`` bytes) into
        ``dstsize`` bytes at address ``dst``; the decompressed size, negative on error."""
        return self._lib.blosc2_decompress_ctx(self._ctx(), src, srcsize, dst, dstsize)

    def decompress_masked(
        self, mask: int, nblocks: int, src: Any, srcsize: int, dst: int, dstsize: int
    ) -> int:
        """As :meth:`decompress`, skipping the blocks whose entry in the ``nblocks`` bools at
        address ``mask`` is true (``blosc2_set_maskout``: for this one call); the bytes
        decompressed, negative on error."""
        ctx = self._ctx()
        if self._lib.blosc2_set_maskout(ctx, mask, nblocks) < 0:
            return -1
        return self._lib.blosc2_decompress_ctx(ctx, src, srcsize, dst, dstsize)

    def getitem(
        self, src: Any, srcsize: int, start: int, nitems: int, dst: int, dstsize: int
    ) -> int:
        """Decompress items ``start .. start + nitems - 1`` (of the chunk's type size) of
        the chunk at ``src`` into ``dst``, decoding only the blocks holding them; the
        bytes written, negative on error."""
        return self._lib.blosc2_getitem_ctx(self._ctx(), src, srcsize, start, nitems, dst, dstsize)

    def getitem_runs(
        self, src: Any, srcsize: int, offset: int, runs: Any, dst: int, itemsize: int
    ) -> int | None:
        """:meth:`getitem` for each ``(first item, first item at dst, items)`` of ``runs``
        (the first shifted by ``offset`` items), into ``dst`` at the second: one context
        and no Python between the calls but the loop. None, or what the first call that
        did not write its run returned."""
        ctx, getitem = self._ctx(), self._lib.blosc2_getitem_ctx
        for c, o, n in runs:
            nbytes = n * itemsize
            got = getitem(ctx, src, srcsize, offset + c, n, dst + o * itemsize, nbytes)
            if got != nbytes:
                return got
        return None

    def decompress_bytes(self, chunk: bytes) -> bytes:
        """A whole Blosc2 chunk held in ``chunk`` (header already checked), decompressed.

        Raises
        ------
        ValueError
            If the chunk does not decompress to the size its header gives.
        """
        if len(chunk) < 16:
            raise ValueError(f"a Blosc2 chunk of {len(chunk)} bytes")
        nbytes = int.from_bytes(chunk[4:8], "little", signed=True)
        if nbytes < 0:
            raise ValueError(f"a Blosc2 chunk of {nbytes} bytes")
        out = ctypes.create_string_buffer(max(nbytes, 1))
        got = self.decompress(chunk, len(chunk), ctypes.addressof(out), nbytes)
        if got != nbytes:
            raise ValueError(f"the chunk decompressed to {got} bytes, its header says {nbytes}")
        return out.raw[:nbytes]


def _package_dir() -> Path | None:
    """The directory of the installed ``blosc2`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("blosc2")
    except (ImportError, ValueError):
        return None
    locations = None if spec is None else spec.submodule_search_locations
    return Path(next(iter(locations))) if locations else None


def _load() -> CLib | None:
    if os.environ.get("MLARRAY_CLIB", "1").strip().lower() in ("0", "false", "no"):
        return None
    pkg = _package_dir()
    if pkg is None:
        return None
    for name in _LIB_NAMES:
        path = pkg / "lib" / name
        if not path.is_file():
            continue
        try:
            lib = ctypes.CDLL(os.fspath(path))
            lib.blosc2_get_version_string.restype = ctypes.c_char_p
            lib.blosc2_get_version_string.argtypes = []
            version = lib.blosc2_get_version_string().decode("ascii", "replace")
            if not version.startswith(BOUND_VERSIONS):
                return None
            # Registers the filters c-blosc2 keeps in a table (BYTEDELTA, INT_TRUNC...):
            # without it a valid chunk using one fails to decode (error -18).
            lib.blosc2_init.restype = None
            lib.blosc2_init.argtypes = []
            lib.blosc2_init()
            lib.blosc2_create_dctx.restype = ctypes.c_void_p
            lib.blosc2_create_dctx.argtypes = [_DParams]
            lib.blosc2_free_ctx.restype = None
            lib.blosc2_free_ctx.argtypes = [ctypes.c_void_p]
            lib.blosc2_decompress_ctx.restype = ctypes.c_int
            lib.blosc2_decompress_ctx.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int32,
                ctypes.c_void_p,
                ctypes.c_int32,
            ]
            lib.blosc2_set_maskout.restype = ctypes.c_int
            lib.blosc2_set_maskout.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
            lib.blosc2_getitem_ctx.restype = ctypes.c_int
            lib.blosc2_getitem_ctx.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int32,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_void_p,
                ctypes.c_int32,
            ]
        except (OSError, AttributeError):  # not loadable, or a symbol is missing
            continue
        return CLib(lib, path, version)
    return None


_lock = threading.Lock()
_loaded = False
_clib: CLib | None = None


def get() -> CLib | None:
    """The binding of the wheel's ``libblosc2`` (loaded once per process), or None if
    it cannot be used here (not shipped, another c-blosc2 version, ``MLARRAY_CLIB=0``)."""
    global _loaded, _clib
    if not _loaded:
        with _lock:
            if not _loaded:
                _clib = _load()
                _loaded = True
    return _clib


def reset() -> None:
    """Forget the loaded binding (tests: the next :func:`get` looks again)."""
    global _loaded, _clib
    with _lock:
        _loaded, _clib = False, None
