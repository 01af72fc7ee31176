"""Reading planes and boxes of an ``.mla`` file without importing python-blosc2.

A viewer's first frame needs the metadata and the chunks under one plane. This
module opens a file the way :func:`mlarray.io.open_store` does up to the point where
c-blosc2 would see it (read-only mapping, :func:`mlarray.frame.inspect_frame`, the
record, the chunk checksums) and then decodes through the wheel's C library bound
with ctypes (:mod:`mlarray._clib`) instead of python-blosc2, whose import alone
(~0.18 s) costs several times what the reader does for the first frame otherwise
(~0.05 s: our imports, the open, one block layer decoded).

:class:`CStore` offers the part of ``blosc2.NDArray`` that the library's own read
paths use (``shape``, ``dtype``, ``chunks``, ``blocks``, ``ext_chunks`` and a
``schunk`` with ``nchunks``, ``dparams.nthreads``, ``decompress_chunk``, and
``decode_blocks`` / ``decode_runs`` for chosen blocks of a chunk in one call), so
:mod:`mlarray._read` (block layers for planes, the chunk cache) and
:mod:`mlarray._fullread` (whole volumes) serve it unchanged; :func:`read` adds what
:meth:`mlarray.MLArray.__getitem__` adds around them: cold-read prefetch, checksum
verification of every chunk a read touches before any of it is decoded, and errors
of mlarray's own types naming the file. Each chunk's block starts are
checked (:func:`mlarray.frame.check_chunk_blocks`) before c-blosc2 first decodes it,
also in files without checksums: c-blosc2 reads a block wherever its start says.

:func:`open_cstore` returns None whenever this path is not sure to give what
``MLArray.open`` gives: no usable C library, a path that is not a plain readable
file, an interrupted in-place write waiting to be rolled back (the journal), a
file with chunks marked uninitialised or DELTA-filtered (other tools' files, which
``MLArray`` reads through :mod:`mlarray._direct`'s guarded path). The caller then
opens the file with :class:`mlarray.MLArray`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mlarray import _clib, _maps, _prefetch, integrity
from mlarray._fullread import read_all, selects_all
from mlarray._read import (
    ChunkCache,
    _basic_key,
    cached_plane,
    layer_hit,
    plane_in_key,
    plane_of,
    read_cached,
    read_memory_error,
)
from mlarray._sidefiles import SUFFIX, journal_path
from mlarray.errors import IndexingError, MLArrayError
from mlarray.frame import (
    FRAME_MAGIC,
    FrameInfo,
    check_chunk_blocks,
)
from mlarray.meta import Meta
from mlarray.record import read_frame

__all__ = ["CStore", "open_cstore", "read"]


class _CSchunk:
    """The chunks of a validated frame, decoded by c-blosc2 through ctypes."""

    #: each call releases the GIL (ctypes), so Python threads decode side by side
    releases_gil = True

    def __init__(
        self,
        lib: _clib.CLib,
        base: int,
        info: FrameInfo,
        nthreads: int,
        checked: bytearray | None = None,
    ) -> None:
        self._lib = lib
        self._base = base
        self.nchunks = int(info.nchunks)
        self.dparams = SimpleNamespace(nthreads=max(1, int(nthreads)))
        self.typesize = int(info.typesize)
        self.chunksize = int(info.chunksize)
        self._citems = self.chunksize // self.typesize if self.typesize else 0
        # the frame's arrays, read one chunk at a time (no Python int per chunk)
        self._pos = info.chunk_pos
        self._cbytes = info.chunk_cbytes
        self._raw = info.raw_offsets
        self._frame: np.ndarray | None = None  # set by CStore: the mapped file's bytes
        # chunks whose block starts were checked (shared by the handles of one mapping)
        self._checked = bytearray(self.nchunks) if checked is None else checked

    def _src(self, n: int) -> int:
        """The address of regular chunk ``n``, after checking (once) what c-blosc2 trusts
        in it: its block starts (a damaged one makes it read outside the chunk)."""
        pos = int(self._pos[n])
        if not self._checked[n]:
            chunk = self._frame[pos : pos + int(self._cbytes[n])]
            try:
                check_chunk_blocks(chunk, f"chunk {n}", self.chunksize)
            except Exception as exc:  # frame._Bad: a damaged chunk
                raise RuntimeError(f"chunk {n} is damaged: {exc}") from None
            self._checked[n] = 1
        return self._base + pos

    def _special(self, n: int, out: np.ndarray) -> None:
        """Fill ``out`` as the special-value chunk ``n`` (no bytes stored) decodes."""
        kind = (int(self._raw[n]) >> 56) & 0x7F
        if kind == 2:  # NaN (only in float arrays: checked by inspect_frame)
            out.view(f"<f{self.typesize}").fill(np.nan)
        else:  # zeros; an uninitialized chunk reads as zeros too
            out.view(np.uint8).fill(0)

    def decompress_chunk(self, nchunk: int, dst: np.ndarray) -> None:
        """Decode chunk ``nchunk`` whole into the C-contiguous ``dst`` (one chunk's bytes)."""
        n = int(nchunk)
        if not 0 <= n < self.nchunks:
            raise IndexError(f"chunk {n} of {self.nchunks}")
        if dst.nbytes != self.chunksize or not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError(f"a chunk needs a writable contiguous {self.chunksize}-byte buffer")
        pos = int(self._pos[n])
        if pos < 0:
            self._special(n, dst)
            return
        got = self._lib.decompress(
            self._src(n), int(self._cbytes[n]), dst.ctypes.data, self.chunksize
        )
        if got != self.chunksize:
            raise RuntimeError(f"c-blosc2 could not decompress chunk {n} (code {got})")

    def decode_blocks(self, nchunk: int, skip: np.ndarray, dst: np.ndarray) -> None:
        """Decode the blocks of chunk ``nchunk`` whose entry of the bool array ``skip`` (one
        per block of the chunk) is false into the C-contiguous ``dst`` (one chunk's bytes),
        each at its place in the chunk; the skipped blocks' bytes are left as they were.
        One call into c-blosc2 per chunk (``blosc2_set_maskout``), without the GIL."""
        n = int(nchunk)
        if not 0 <= n < self.nchunks:
            raise IndexError(f"chunk {n} of {self.nchunks}")
        if dst.nbytes != self.chunksize or not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError(f"a chunk needs a writable contiguous {self.chunksize}-byte buffer")
        if skip.dtype != np.bool_ or not skip.flags.c_contiguous:
            raise ValueError("skip must be a contiguous bool array")
        pos = int(self._pos[n])
        if pos < 0:
            self._special(n, dst)
            return
        src, cbytes = self._src(n), int(self._cbytes[n])
        got = self._lib.decompress_masked(
            skip.ctypes.data, skip.size, src, cbytes, dst.ctypes.data, self.chunksize
        )
        if got != self.chunksize:
            # a chunk whose own header has other blocks than the array's (a special
            # chunk of zeros or of one value, which the frame check lets through) is
            # not masked by c-blosc2: decoded whole; a damaged one fails again
            got = self._lib.decompress(src, cbytes, dst.ctypes.data, self.chunksize)
        if got != self.chunksize:
            raise RuntimeError(f"c-blosc2 could not decompress chunk {n} (code {got})")

    def decode_runs(self, nchunk: int, offset: int, runs: Any, out: np.ndarray) -> None:
        """Decode runs of items of chunk ``nchunk`` into the flat C-contiguous ``out``: for
        each ``(first item in the chunk, first item in out, items)`` of ``runs``, shifted
        by ``offset`` items in the chunk; only the blocks holding them are decoded. Every
        run is checked to lie inside the chunk and ``out`` before c-blosc2 writes any.

        What ``SChunk.get_slice`` does run by run, with the chunk's checks and addresses
        worked out once: a block layer is one or a few runs in each of its chunks, and
        per call Python costs about as much as decoding a small run."""
        n = int(nchunk)
        if not 0 <= n < self.nchunks:
            raise IndexError(f"chunk {n} of {self.nchunks}")
        for c, o, k in runs:
            if min(c, o, k) < 0 or offset + c < 0 or offset + c + k > self._citems:
                raise IndexError(f"items {offset + c}:{offset + c + k} of chunk {n}")
            if o + k > out.size:
                raise IndexError(f"items {o}:{o + k} of a buffer of {out.size}")
        if out.itemsize != self.typesize or not out.flags.c_contiguous:
            raise ValueError("decode_runs needs a contiguous buffer of the chunk's items")
        if not out.flags.writeable:
            raise ValueError("decode_runs needs a writable buffer")
        pos = int(self._pos[n])
        if pos < 0:
            flat = out.view(np.uint8)
            for _, o, k in runs:
                self._special(n, flat[o * self.typesize : (o + k) * self.typesize])
            return
        src, cbytes = self._src(n), int(self._cbytes[n])
        got = self._lib.getitem_runs(src, cbytes, offset, runs, out.ctypes.data, self.typesize)
        if got is not None:
            raise RuntimeError(f"c-blosc2 could not decompress chunk {n} (code {got})")


class CStore:
    """A read-only array over the mapping of a validated ``.mla`` frame, decoded through
    :mod:`mlarray._clib`; see the module docstring."""

    #: its chunks are decoded from the file's shared mapping (see mlarray._maps)
    decodes_from_mapping = True

    def __init__(
        self,
        path: Path,
        buf: Any,
        info: FrameInfo,
        lib: _clib.CLib,
        nthreads: int = 1,
        version: tuple | None = None,
    ) -> None:
        self.path = path
        #: the file version (device, inode, size, mtime, ctime) this store decodes
        self.version = version
        self.info = info
        self.shape = tuple(int(n) for n in info.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(info.dtype)
        self.chunks = tuple(int(c) for c in info.chunks)
        self.blocks = tuple(int(b) for b in info.blocks)
        self.ext_chunks = tuple(
            -(-c // b) * b for c, b in zip(self.chunks, self.blocks, strict=True)
        )
        # a numpy view of the mapping: its address, and a buffer export that keeps the
        # mapping from being closed while this store decodes from it
        self._frame = np.frombuffer(buf, dtype=np.uint8)
        checked = checked_chunks(buf, info, version)
        self.schunk = _CSchunk(lib, self._frame.ctypes.data, info, nthreads, checked)
        self.schunk._frame = self._frame

    def __repr__(self) -> str:
        return f"CStore({os.fspath(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def block_decoder(buf: Any, info: FrameInfo, version: tuple | None = None) -> _CSchunk | None:
    """A decoder of chosen blocks of the chunks (:meth:`_CSchunk.decode_blocks`) of the
    validated frame ``info`` mapped as ``buf`` (the file's ``version``), or None without
    the C library: what ``MLArray``'s read-only handles on the shared mapping decode
    their block layers with (:func:`mlarray._read.decode_layer`; python-blosc2 decodes a
    run of blocks per call)."""
    lib = _clib.get()
    if lib is None:
        return None
    frame = np.frombuffer(buf, dtype=np.uint8)  # its address; the export keeps it mapped
    out = _CSchunk(lib, frame.ctypes.data, info, 1, checked_chunks(buf, info, version))
    out._frame = frame
    return out


def checked_chunks(buf: Any, info: FrameInfo, version: tuple | None) -> bytearray:
    """Which chunks of the mapping ``buf`` of the file ``version`` had their block starts
    checked, one byte per chunk: shared by every handle decoding from that mapping (kept
    with it, :func:`mlarray._maps.attached`), so a file opened again, as a viewer and a
    data loader do, is not checked again (8 us a chunk: 0.8 ms for the benchmark's CT, a
    tenth of a scroll through 32 planes). A new one for a mapping no longer cached."""
    extras = _maps.attached(version, buf) if version is not None else None
    fresh = bytearray(int(info.nchunks))
    if extras is None:
        return fresh
    checked = extras.setdefault(_CHECKED_KEY, fresh)  # (one step: no lock needed)
    return checked if len(checked) == len(fresh) else fresh


_CHECKED_KEY = "_cstore_checked_chunks"


class _NotMappable(Exception):
    """Internal: not a file this path maps (``MLArray.open`` reports what it is)."""


def _mappable(p: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode) or st.st_size < len(FRAME_MAGIC):
        raise _NotMappable(p)


def _map(p: Path) -> tuple[Any, tuple] | None:
    """The shared read-only mapping of the regular file ``p`` (:mod:`mlarray._maps`, the
    one ``MLArray.open`` uses too) and its version, or None."""
    try:
        buf, version, _ = _maps.map_file(p, _mappable)
    except (OSError, ValueError, _NotMappable):
        return None
    return buf, version


def open_cstore(path: str | os.PathLike, nthreads: int = 1) -> tuple[CStore, Meta] | None:
    """Open an ``.mla`` file for reading through the C library; ``(store, meta)``.

    Returns None when this path cannot be used (see the module docstring); the
    caller then opens the file with :class:`mlarray.MLArray`, which reports any
    problem with the path itself.

    Raises
    ------
    MLArrayFormatError
        For a damaged or forged frame or record (as ``MLArray.open``).
    CorruptChunkError
        For a damaged checksum entry.
    """
    lib = _clib.get()
    if lib is None:
        return None
    try:
        p = Path(os.fspath(path))
    except TypeError:
        return None
    if p.suffix.lower() != SUFFIX or journal_path(p).exists():
        return None
    mapped = _map(p)
    if mapped is None:
        return None
    buf, version = mapped
    with _maps.reader(p, version) as read_at:
        info, meta = read_frame(buf, p, read_at)  # before c-blosc2 sees the frame
    if info.uninit or info.delta:
        # chunks c-blosc2 leaves unwritten or decodes block by block against the wrong
        # reference: MLArray reads those files through its guarded path (mlarray._direct)
        return None
    store = CStore(p, buf, info, lib, nthreads, version)
    _maps.watch(store, p, buf, version, info)  # reads check the file was not cut short
    integrity.attach(store, p, buf, info, version)
    _prefetch.attach(store, _prefetch.for_frame(buf, info, version))
    return store, meta


def _one_plane(norm: tuple, shape: tuple[int, ...]) -> int | None:
    """The axis of a key that is one length-1 slice (step 1) along an axis and full
    slices (step 1) along the others: a plane kept as a 1-thick slab; else None."""
    axis = None
    for a, (k, n) in enumerate(zip(norm, shape, strict=True)):
        if not isinstance(k, slice):
            return None
        start, stop, step = k.indices(n)
        if step != 1:
            return None
        if (start, stop) == (0, n) and n != 1:
            continue
        if stop - start != 1 or axis is not None:
            return None
        axis = a
    if axis is None or len(shape) < 2:
        return None
    return axis


def _nbytes(store: CStore, norm: tuple) -> int:
    """Bytes of ``store[norm]`` (a normalized basic key)."""
    n = 1
    for k, size in zip(norm, store.shape, strict=True):
        if isinstance(k, slice):
            n *= len(range(*k.indices(size)))
    return n * store.dtype.itemsize


def read(store: CStore, key: Any, cache: ChunkCache | None = None) -> np.ndarray | None:
    """``store[key]`` for a basic key (ints, slices, ``...``), as ``MLArray`` reads it:
    the touched chunks verified against their checksums first, planes from the block
    layers kept in ``cache``, whole volumes decoded chunk by chunk on the handle's
    threads. None for anything else (other keys, 0-d or empty arrays): the caller
    reads those through ``MLArray``.

    Raises
    ------
    CorruptChunkError
        If a touched chunk does not match its checksum or cannot be decoded.
    IndexingError
        For an index out of range (numpy's message).
    """
    plane = None if cache is None else plane_in_key(key, cache, store, thin=True)
    if plane is not None:  # napari scrolling: a plane, maybe of a decoded block layer
        hit = layer_hit(store, cache, *plane)
        if hit is not None:
            try:
                out = plane_of(*hit)
            except MemoryError as exc:  # the plane's own array
                norm = _basic_key(key, store.ndim)
                raise read_memory_error(store.path, _nbytes(store, norm), exc) from None
            axis = plane[0]
            return np.expand_dims(out, axis) if type(key[axis]) is slice else out
    norm = None if not store.ndim or 0 in store.shape else _basic_key(key, store.ndim)
    if norm is None:
        return None
    if cache is not None and plane is None:  # (a plane found above is not cached)
        try:
            out = _cached(store, norm, cache)
        except MemoryError as exc:  # the plane's own array
            raise read_memory_error(store.path, _nbytes(store, norm), exc) from None
        if out is not None:
            return out
    _prefetch.prefetch_read(store, key)
    integrity.verify_read(store, key)
    touched = _maps.touched_count(store)
    try:
        out = _decode(store, key, norm, cache)
    except IndexError as err:
        raise IndexingError(f"{store.path}: {err}") from None
    except MemoryError as exc:
        raise read_memory_error(store.path, _nbytes(store, norm), exc) from None
    except MLArrayError:  # ours (also RuntimeErrors, as the reference raises): as they are
        raise
    except RuntimeError as exc:  # c-blosc2 refused a chunk its checksum did not catch
        raise integrity.damage_error(  # or the file was written meanwhile
            store,
            store.path,
            f"cannot decompress the requested data, the file may be corrupt ({exc})",
        ) from None
    _maps.check_read(store, touched, cache)  # the file did not change meanwhile
    return out


def _cached(store: CStore, norm: tuple, cache: ChunkCache) -> np.ndarray | None:
    """The plane ``store[norm]`` (an int, or a length-1 slice as napari asks) when its
    block layer is in ``cache`` already, else None. The layer's chunks were verified
    and the file checked when it was decoded; a plane of it reads nothing of the file
    (as :meth:`mlarray.MLArray.__getitem__` serves it), so it stays readable, as the
    version that was opened, after the file was rewritten in place."""
    axis = _one_plane(norm, store.shape)
    if axis is None:
        hit = cached_plane(store, norm, cache)
        return None if hit is None else plane_of(*hit)
    index = norm[axis].indices(store.shape[axis])[0]
    hit = cached_plane(store, (*norm[:axis], index, *norm[axis + 1 :]), cache)
    return None if hit is None else np.expand_dims(plane_of(*hit), axis)


def _decode(store: CStore, key: Any, norm: tuple, cache: ChunkCache | None) -> np.ndarray:
    """``store[key]`` decoded (``norm``: the key normalized), the read of :func:`read`."""
    if selects_all(key, store.ndim) or all(
        isinstance(k, slice) and k.indices(n) == (0, n, 1)
        for k, n in zip(norm, store.shape, strict=True)
    ):  # the whole volume (napari's 3D view asks for it as explicit slices)
        return read_all(store, path=store.path)
    axis = _one_plane(norm, store.shape)
    if axis is not None and cache is not None:
        # napari asks for a plane as a length-1 slice: read it as the plane it is
        index = norm[axis].indices(store.shape[axis])[0]
        plane = (*norm[:axis], index, *norm[axis + 1 :])
        return np.expand_dims(read_cached(store, plane, cache, always=True), axis)
    out = None if cache is None else read_cached(store, key, cache)
    if out is None:  # most of every touched chunk: decoded once each, not kept
        out = read_cached(store, key, ChunkCache(0), always=True)
    return out
