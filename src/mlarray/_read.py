"""Read paths that decode Blosc2 chunks themselves: a bounded LRU cache of decoded data.

A viewer scrolling through planes asks for one plane at a time; Blosc2's own slicing
decodes the blocks under each plane again and again (a block is 20-30 planes thick). With
:class:`ChunkCache` those blocks are decoded once and kept in a bounded
least-recently-used cache:

* a plane (one int, full slices elsewhere) comes from a *block layer*: the blocks of one
  block thickness along the plane's axis, in every chunk the plane crosses, decoded
  (only those blocks: a chunk's runs of blocks through c-blosc2 on the mapped file,
  :meth:`mlarray._cstore._CSchunk.decode_runs`, else ``SChunk.get_slice`` per run;
  blocks wholly outside the array are skipped)
  and kept as decoded (:func:`decode_layer`); each plane read copies its own items out
  of the layer (:func:`layer_plane`: one strided copy per piece of the chunk row, rows
  moved as single items), so scrolling pays for the planes it shows, not for
  rearranging every plane of the layers it crosses. Along the last axis a plane's items
  are single items spread over the whole layer: there each chunk's blocks are put
  planes first once, in groups of 8 bytes, while still in the CPU cache; scrolling on
  decodes the next layer. A layer's size is the file's choice (blocks 512 planes deep
  make a 16 MiB plane's layer 8 GiB): only a layer the cache can keep, and at most
  :data:`_LAYER_PLANES` planes' worth, is decoded (:func:`layer_fits`); other planes are
  read one chunk's block layer at a time (:func:`read_plane_direct`);
* any other basic key is assembled chunk by chunk from whole decoded chunks, each chunk
  copying out only the selected elements (:func:`take`).

Layer memory is recycled (:class:`_Recycler`): a layer's buffer goes back to a bounded
process-wide pool when nothing uses it any more (evicted, cache dropped), because fresh
memory costs a page fault per page on its first write, more than decoding into it on
this kind of (virtual) machine.

Only basic keys (ints, slices with any step, ``...``) are served here; the caller falls
back to Blosc2's slicing for anything else (``None``, arrays, booleans, 0-d or empty
arrays). Decoding goes through ``SChunk.decompress_chunk`` / ``get_slice``, so a damaged
chunk raises the same ``RuntimeError`` as Blosc2's slicing does; the caller verifies the
chunks a read touches against their checksums first (a plane of a cached layer needs no
new check: :func:`cached_plane`).
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from mlarray._fullread import _pieces
from mlarray.errors import MLArrayMemoryError

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ChunkCache",
    "DecodeMemoryError",
    "cached_plane",
    "decode_chunk",
    "decode_layer",
    "layer_fits",
    "layer_hit",
    "layer_plane",
    "plane_in_key",
    "plane_of",
    "read_cached",
    "read_memory_error",
    "read_plane_direct",
    "short_of_memory",
    "take",
]

#: Default bound of a chunk cache: enough for every chunk under a plane of a 512^3 int16
#: volume stored with the default layout, along any axis (and many block layers).
DEFAULT_CACHE_BYTES = 256 * 2**20

#: Reads that use more than 1/_DIRECT_FRACTION of the chunks they touch bypass the cache.
_DIRECT_FRACTION = 4

#: A block layer is decoded for a plane only if it is at most this many times the plane,
#: or at most :data:`_LAYER_FLOOR` bytes, and fits in the cache (see :func:`layer_fits`).
_LAYER_PLANES = 64
_LAYER_FLOOR = 64 * 2**20


class DecodeMemoryError(MemoryError):
    """Not enough memory for the ``nbytes`` bytes a read decodes into (a block layer, a
    chunk, the output): callers report the file and this size."""

    def __init__(self, nbytes: int, what: str) -> None:
        super().__init__(f"not enough memory for {what} of {nbytes} bytes")
        self.nbytes = int(nbytes)
        self.what = what


def read_memory_error(path: Any, nbytes: int, exc: MemoryError) -> MLArrayMemoryError:
    """The error for a read of ``nbytes`` bytes of the file ``path`` that ran out of
    memory: the file, the bytes read and, if decoding needed another amount
    (:class:`DecodeMemoryError`), what it needed."""
    message = f"{path or 'MLArray'}: not enough memory to read {nbytes} bytes"
    if isinstance(exc, DecodeMemoryError) and exc.nbytes != nbytes:
        message += f" ({exc.what}: {exc.nbytes} bytes)"
    return MLArrayMemoryError(message)


def _empty(shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    """``np.empty``, a MemoryError naming what and how much (:class:`DecodeMemoryError`)."""
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError:
        raise DecodeMemoryError(int(np.prod(shape)) * np.dtype(dtype).itemsize, what) from None


def short_of_memory(nbytes: int) -> bool:
    """Whether ``nbytes`` of memory cannot be had now (reserved, never touched): how a
    failure c-blosc2 reports only as "failed" is told apart from bad data."""
    try:
        np.empty(max(int(nbytes), 1), dtype=np.uint8)
    except MemoryError:
        return True
    return False


#: Memory of decoded block layers that nothing references any more, kept for the next
#: layers (process-wide, at most this many bytes): fresh memory costs a page fault per
#: page on its first write, which on a virtual machine costs more than decoding it.
RECYCLE_BYTES = 64 * 2**20


class _Recycler:
    """Buffers of decoded block layers, recycled once no array uses them.

    :meth:`array` hands out arrays whose memory comes back here when the last array
    (or view) using it is gone (the array's base is an :class:`_Lease`, which returns
    the memory when it is freed), so memory is never reused while anything can still
    read it. At most ``max_bytes`` are kept, the oldest dropped first.

    Memory comes back whenever an array is freed, in any thread and at any point (a
    garbage collection inside :meth:`array`): it is queued, and filed by whichever
    thread holds the lock next, never waiting for it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._free: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._returned: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()

    def array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A new uninitialized C-order array, on recycled memory when there is some."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = None
        with self._lock:
            self._file()
            # the same size, else the smallest free buffer at most twice as big (layers
            # along another axis, of another file; caches count the whole buffer)
            fits = [n for n in self._free if nbytes <= n <= 2 * nbytes]
            if fits:
                size = nbytes if nbytes in self._free else min(fits)
                free = self._free[size]
                raw = free.pop()
                self.nbytes -= size
                if not free:
                    del self._free[size]
        self._settle()
        if raw is None:
            raw = _empty((nbytes,), np.uint8, "decoded blocks")
        return np.asarray(_Lease(self, raw, shape, dtype))

    def give(self, raw: np.ndarray) -> None:
        """Take back a buffer nothing uses any more."""
        self._returned.append(raw)
        self._settle()

    def _settle(self) -> None:
        while self._returned and self._lock.acquire(blocking=False):
            try:
                self._file()
            finally:
                self._lock.release()

    def _file(self) -> None:  # with the lock held
        while self._returned:
            raw = self._returned.popleft()
            if raw.nbytes > self.max_bytes:
                continue
            self._free.setdefault(raw.nbytes, []).append(raw)
            self._free.move_to_end(raw.nbytes)
            self.nbytes += raw.nbytes
            while self.nbytes > self.max_bytes:
                size, free = next(iter(self._free.items()))
                free.pop(0)
                self.nbytes -= size
                if not free:
                    del self._free[size]

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # it may have been held by a thread of the parent


class _Lease:
    """The base of an array on recycled memory: gives the memory back when freed."""

    def __init__(self, owner: _Recycler, raw: np.ndarray, shape: tuple, dtype: np.dtype):
        self._owner, self._raw = owner, raw
        # (the buffer may be bigger than the array: its head is used)
        self.__array_interface__ = {
            "shape": tuple(shape),
            "typestr": dtype.str,
            "descr": dtype.descr,
            "data": (raw.ctypes.data, False),
            "version": 3,
        }

    def __del__(self) -> None:
        self._owner.give(self._raw)


def _footprint(arr: np.ndarray) -> int:
    """Bytes of memory ``arr`` keeps alive (a recycled buffer may be bigger than it)."""
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    return base._raw.nbytes if isinstance(base, _Lease) else arr.nbytes


_recycler = _Recycler(RECYCLE_BYTES)
os.register_at_fork(after_in_child=_recycler._after_fork)

# Every chunk cache of the process, for the fork hook (handles that run one thread are not
# tracked by mlarray._fork, but their caches' locks must be replaced in a child too).
_CACHES: weakref.WeakSet = weakref.WeakSet()


def _caches_after_fork() -> None:
    for cache in list(_CACHES):
        cache._after_fork()


os.register_at_fork(after_in_child=_caches_after_fork)


class ChunkCache:
    """A bounded least-recently-used cache of decoded chunks and block layers of one
    Blosc2 array.

    Parameters
    ----------
    max_bytes : int
        Upper bound of the memory held by decoded data (an entry larger than the
        bound is decoded but not kept). A block layer may sit in a recycled buffer a
        little bigger than itself: the whole buffer counts.

    Notes
    -----
    The cache belongs to one array (``store``); it empties itself when it is used
    with another one, and the owner calls :meth:`clear` after writing.

    Decoding runs outside the lock, so a read may race with a write and its
    :meth:`clear`: each clear (and each switch to another array) starts a new
    *generation*, and a miss keeps what it decoded only if no clear happened
    since it looked the key up. The reader that raced gets the data it decoded
    (as any read racing a write may), but nothing decoded before a clear stays
    cached after it.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(max_bytes, int | np.integer) or isinstance(max_bytes, bool):
            raise TypeError(f"max_bytes must be an int, got {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._store: Any = None
        self._geometries: dict[int, _LayerGeometry] = {}  # of ``_store``
        self._generation = 0  # bumped by every clear: older decodes are not kept
        self._lock = threading.Lock()  # napari reads planes from worker threads
        _CACHES.add(self)

    def _after_fork(self) -> None:
        # A thread of the parent may have held the lock when it forked: a new lock, and
        # nothing a parent thread may have been halfway through putting in.
        self._lock = threading.Lock()
        self._forget()

    def __len__(self) -> int:
        return len(self._chunks)

    def clear(self) -> None:
        """Forget every decoded chunk (after the array was written to)."""
        with self._lock:
            self._forget()

    def _forget(self) -> None:  # with the lock held
        self._chunks.clear()
        self.nbytes = 0
        self._generation += 1

    def _bind(self, store: Any) -> None:
        if self._store is not store:
            self._forget()
            self._geometries = {}
            self._store = store

    def chunk(self, store: Any, nchunk: int) -> np.ndarray:
        """Chunk ``nchunk`` of ``store``, decoded block by block (see :func:`decode_chunk`)."""
        return self._get(store, ("chunk", nchunk), lambda: decode_chunk(store, nchunk))

    def layer(self, store: Any, axis: int, j: int, g: int) -> np.ndarray:
        """Block layer ``g`` of chunk row ``j`` along ``axis``, plane by plane (see
        :func:`decode_layer`)."""
        return self._get(
            store,
            ("layer", axis, j, g),
            lambda: decode_layer(store, axis, j, g),
        )

    def geometries(self, store: Any) -> dict[int, _LayerGeometry]:
        """The layer geometries of ``store`` laid out so far, by axis."""
        return self._geometries if self._store is store else {}

    def geometry(self, store: Any, axis: int) -> _LayerGeometry:
        """How block layers of ``store`` along ``axis`` are laid out (kept per axis)."""
        geo = self._geometries.get(axis) if self._store is store else None
        if geo is None:
            geo = _geometry(store, axis)
            with self._lock:
                self._bind(store)
                self._geometries[axis] = geo
        return geo

    def peek(self, store: Any, key: tuple) -> np.ndarray | None:
        """The entry ``key`` of ``store`` if it is cached (a hit), else None (no miss is
        counted: the caller reads it through :meth:`layer` or :meth:`chunk`)."""
        with self._lock:
            arr = self._chunks.get(key) if self._store is store else None
            if arr is not None:
                self._chunks.move_to_end(key)
                self.hits += 1
            return arr

    def _get(self, store: Any, key: tuple, decode: Any) -> np.ndarray:
        with self._lock:
            self._bind(store)
            arr = self._chunks.get(key)
            if arr is not None:
                self._chunks.move_to_end(key)
                self.hits += 1
                return arr
            generation = self._generation
        arr = decode()
        if _footprint(arr) > self.max_bytes >= arr.nbytes:
            # a recycled buffer bigger than this cache may hold: keep an exact copy (else
            # no layer would be kept, and every plane would decode its layer again)
            arr = arr.copy()
        with self._lock:
            self.misses += 1
            # A clear (a write) since the lookup: ``arr`` may hold data from before the
            # write, so it is returned to this caller but not kept.
            size = _footprint(arr)
            if self._generation == generation and self._store is store and size <= self.max_bytes:
                old = self._chunks.pop(key, None)
                if old is not None:
                    self.nbytes -= _footprint(old)
                self._chunks[key] = arr
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, dropped = self._chunks.popitem(last=False)
                    self.nbytes -= _footprint(dropped)
        return arr


def decode_chunk(store: Any, nchunk: int) -> np.ndarray:
    """Decode chunk ``nchunk`` of a Blosc2 NDArray, as it is laid out: block by block.

    A chunk holds its blocks one after the other (C order over the block grid of the
    padded chunk, ``store.ext_chunks``), each block in C order. The result is a view of
    the decoded buffer with shape ``block_grid + blocks``: element ``(g..., i...)`` is
    element ``g * blocks + i`` of the chunk. Nothing is rearranged here; :func:`take`
    copies out only what a read needs.
    """
    ext = tuple(int(n) for n in store.ext_chunks)
    blocks = tuple(int(n) for n in store.blocks)
    grid = tuple(e // b for e, b in zip(ext, blocks, strict=True))
    flat = _empty((int(np.prod(ext)),), store.dtype, "a decoded chunk")
    store.schunk.decompress_chunk(nchunk, flat)
    return flat.reshape(grid + blocks)


#: A plane's run inside a block shorter than this (bytes) is gathered once per block layer
#: (planes first, see :func:`decode_layer`) instead of from every plane of a block.
_PLANE_RUN_BYTES = 16


@functools.lru_cache(maxsize=64)
def _layer_geometry(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    blocks: tuple[int, ...],
    ext: tuple[int, ...],
    itemsize: int,
    axis: int,
) -> _LayerGeometry:
    return _LayerGeometry(shape, chunks, blocks, ext, itemsize, axis)


class _LayerGeometry:
    """How block layers along ``axis`` of an array are decoded and held, and how a plane
    is copied out of one (see :func:`decode_layer` and :func:`layer_plane`)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        blocks: tuple[int, ...],
        ext: tuple[int, ...],
        itemsize: int,
        axis: int,
    ) -> None:
        nd = len(shape)
        self.axis = axis
        self.shape, self.chunks, self.blocks, self.ext = shape, chunks, blocks, ext
        self.grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))
        self.bgrid = tuple(e // b for e, b in zip(ext, blocks, strict=True))
        self.others = tuple(a for a in range(nd) if a != axis)
        m = len(self.others)
        self.ogrid = tuple(self.grid[a] for a in self.others)  # chunks of a chunk row
        self.bg_o = tuple(self.bgrid[a] for a in self.others)
        self.b_o = tuple(blocks[a] for a in self.others)
        self.bitems = int(np.prod(blocks))
        self.citems = int(np.prod(ext))
        # The chunks of a row: (chunk number without the row's own term, slot in the
        # layer, runs of blocks to decode). Blocks wholly outside the array (in edge
        # chunks) are not decoded: no plane reads them.
        strides = [int(np.prod(self.grid[a + 1 :])) for a in range(nd)]
        self.row_stride = strides[axis]
        self.row = []
        self.valid: list[tuple[int, ...]] = []  # per chunk of the row, as ``row``
        runs: dict[tuple[int, ...], tuple] = {}  # a few kinds of edge chunks
        for k, idx in enumerate(np.ndindex(*self.ogrid)):
            valid = tuple(
                -(-min(chunks[a], shape[a] - i * chunks[a]) // blocks[a])
                for a, i in zip(self.others, idx, strict=True)
            )
            part = sum(i * strides[a] for a, i in zip(self.others, idx, strict=True))
            if valid not in runs:
                runs[valid] = self._runs(valid)
            self.row.append((part, k, runs[valid]))
            self.valid.append(valid)
        self._skips: dict[tuple, np.ndarray] = {}
        self._plans: dict[tuple, _PlanePlan] = {}
        # A plane inside a block is a run of prod(blocks[axis+1:]) items, every
        # blocks[axis] * that items: long runs are copied out of the blocks as decoded;
        # short ones (the last axis: single items) would make every plane read the whole
        # layer, so each chunk's blocks are put planes first once, while still in cache.
        run = int(np.prod(blocks[axis + 1 :]))
        self.planes_first = run == 1 or run * itemsize < _PLANE_RUN_BYTES
        # Along the last axis, planes are moved in groups of ``lanes`` (as one 8-byte
        # item): 4x fewer items to move for int16 (the move costs per item), and a plane
        # read then takes every ``lanes``-th item of its group.
        self.lanes = 1
        if self.planes_first and axis == nd - 1 and itemsize < 8:
            self.lanes = 8 // itemsize
            while blocks[axis] % self.lanes:
                self.lanes //= 2
        # (an unsigned int: numpy moves those 2x faster than 8-byte void items)
        self.unit = np.dtype(f"u{self.lanes * itemsize}") if self.lanes > 1 else None
        # decoded blocks of one chunk's layer: (blocks along the others, block shape)
        self.decoded = (*self.bg_o, *blocks)
        # planes first: the in-block axis moved in front of the chunk's blocks
        self.to_planes = (m + axis, *range(m), *(m + a for a in self.others))
        self.order = [ax for i in range(m) for ax in (i, m + i, 2 * m + i)]
        pieces = [_row_pieces(shape[a], chunks[a], ext[a], blocks[a]) for a in self.others]
        # One copy per combination of pieces of the other axes: (source key, output
        # region, output split, row dtype). A row (the piece's extent along the last axis,
        # contiguous on both sides) is copied as one item of that many bytes: numpy's
        # copy loop then moves a row per item instead of item by item (1.5x faster).
        self.copies = []
        for combo in itertools.product(*pieces):
            key = tuple(p[k] for k in range(3) for p in combo)
            region = tuple(slice(p[3], p[3] + int(np.prod(p[4]))) for p in combo)
            split = tuple(v for p in combo for v in p[4])
            if self.lanes > 1 or not split:  # rows not contiguous in the layer: by item
                self.copies.append((key, region, split, None))
                continue
            row = np.dtype((np.void, split[-1] * itemsize))
            self.copies.append((key, region, (*split[:-1], 1), row))

    def _runs(self, valid: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
        """Runs of blocks of block layer 0 of a chunk with ``valid`` blocks inside the
        array along the other axes: ``(first item in the chunk, first item in the slot,
        items)``; block layer ``g`` starts ``g`` block rows further in the chunk."""
        bg = self.bgrid
        ranges = [range(1)] * len(bg)
        for a, v in zip(self.others, valid, strict=True):
            ranges[a] = range(v)
        runs: list[list[int]] = []
        for bidx in itertools.product(*ranges):
            c = int(np.ravel_multi_index(bidx, bg))
            o = int(np.ravel_multi_index(tuple(bidx[a] for a in self.others), self.bg_o))
            if runs and runs[-1][0] + runs[-1][2] == c and runs[-1][1] + runs[-1][2] == o:
                runs[-1][2] += 1
            else:
                runs.append([c, o, 1])
        b = self.bitems
        return tuple((c * b, o * b, n * b) for c, o, n in runs)

    def skip(self, valid: tuple[int, ...], g: int) -> np.ndarray:
        """The blocks of a chunk not in its block layer ``g`` (or wholly outside the array,
        ``valid`` blocks inside it along the others): one bool per block, C order."""
        key = (valid, g)
        out = self._skips.get(key)
        if out is None:
            keep = np.zeros(self.bgrid, dtype=np.bool_)
            inside = [slice(0, v) for v in valid]
            inside.insert(self.axis, slice(g, g + 1))
            keep[tuple(inside)] = True
            out = self._skips[key] = np.ascontiguousarray(~keep).reshape(-1)
        return out

    def layer_shape(self, planes: int) -> tuple[int, ...]:
        """Shape of a decoded layer holding ``planes`` planes."""
        if self.lanes > 1:
            return (*self.ogrid, -(-planes // self.lanes), *self.bg_o, *self.b_o, self.lanes)
        if self.planes_first:
            return (*self.ogrid, planes, *self.bg_o, *self.b_o)
        return (*self.ogrid, *self.decoded)

    def plan(self, shape: tuple[int, ...], dtype: np.dtype) -> _PlanePlan:
        """How a plane of a C-order layer of ``shape`` is copied (see :func:`_plane`),
        worked out once per layer shape on views of no memory."""
        plan = self._plans.get((shape, dtype))
        if plan is None:
            plan = self._plans[(shape, dtype)] = self._make_plan(shape, np.dtype(dtype))
        return plan

    def _make_plan(self, shape: tuple[int, ...], dtype: np.dtype) -> _PlanePlan:
        # views only, of no memory for the layer (a layer-sized reservation could fail)
        # and of an untouched plane: no page is written or read
        strides = np.cumprod((1, *shape[:0:-1]))[::-1] * dtype.itemsize
        layer = np.lib.stride_tricks.as_strided(np.empty(1, dtype), shape, tuple(strides))
        out = np.empty(tuple(self.shape[a] for a in self.others), dtype)

        def raw(view: np.ndarray, base: np.ndarray) -> tuple:
            if not np.may_share_memory(view, base):  # a copy: not a plan
                raise AssertionError("a plane's copy is not a view")
            start = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            return start, view.shape, view.strides

        src, copies = self.plane_view(layer, 0), []
        for key, region, split, row in self.copies:
            part = src[key].transpose(self.order)
            dst = out[region]
            if row is not None:
                part, dst = part.view(row), dst.view(row)
            dst = dst.reshape(split)
            copies.append(((dst.dtype, *raw(dst, out)), raw(part, layer)))
        m = len(self.others)
        flat = self.lanes > 1 or self.planes_first  # planes (or groups) right after chunks
        group = layer.strides[m if flat else 2 * m + self.axis]
        return _PlanePlan(tuple(copies), group, dtype.itemsize if self.lanes > 1 else 0)

    def plane_view(self, layer: np.ndarray, i: int) -> np.ndarray:
        """Plane ``i`` of ``layer``: (chunks, blocks per chunk, block shape) of the others."""
        m = len(self.others)
        if self.lanes > 1:
            return layer[(slice(None),) * m + (i // self.lanes, Ellipsis, i % self.lanes)]
        if self.planes_first:
            return layer[(slice(None),) * m + (i,)]
        return layer[(slice(None),) * (2 * m + self.axis) + (i,)]


def _row_pieces(n: int, c: int, e: int, b: int) -> list[tuple[slice, slice, slice, int, tuple]]:
    """How a chunk row's decoded blocks along one axis (``n`` elements in chunks of ``c``,
    padded to ``e`` = whole blocks of ``b``) go into the output: ``(chunk slice, block
    slice, in-block slice, output start, (chunks, blocks, block length))`` per copy; the
    chunks holding no padding go in one piece."""
    grid = -(-n // c)
    out = []
    first = 0
    if e == c and n // c:
        first = n // c
        out.append((slice(0, first), slice(None), slice(None), 0, (first, e // b, b)))
    for j in range(first, grid):
        o = j * c
        for bsl, isl, start, nb, bl in _pieces(min(c, n - o), b):
            out.append((slice(j, j + 1), bsl, isl, o + start, (1, nb, bl)))
    return out


def _geometry(store: Any, axis: int) -> _LayerGeometry:
    return _layer_geometry(
        tuple(int(n) for n in store.shape),
        tuple(int(c) for c in store.chunks),
        tuple(int(b) for b in store.blocks),
        tuple(int(e) for e in store.ext_chunks),
        int(np.dtype(store.dtype).itemsize),
        axis,
    )


def _decode_runs(
    store: Any, decoder: Any, nchunk: int, offset: int, runs: Any, out: np.ndarray
) -> None:
    """Decode ``runs`` (``(first item in the chunk, first item in out, items)``, each
    shifted by ``offset`` items in the chunk) of chunk ``nchunk`` into the flat ``out``:
    through ``decoder``, the C library's decoder of the store's mapped file
    (:func:`blocks_of`), when it has one (its checks and addresses worked out once per
    chunk: a block layer along the first axes decoded 10-25 % faster than by
    ``SChunk.get_slice`` per run), else run by run."""
    if decoder is not None:
        decoder.decode_runs(nchunk, offset, runs, out)
        return
    base = nchunk * int(np.prod(store.ext_chunks)) + offset
    get_slice = store.schunk.get_slice
    for c, o, n in runs:
        get_slice(base + c, base + c + n, out=out[o : o + n])


def decode_layer(store: Any, axis: int, j: int, g: int) -> np.ndarray:
    """Block layer ``g`` of chunk row ``j`` along ``axis``, decoded.

    The layer is the blocks of one block thickness along ``axis`` in every chunk of the
    row (the chunks that plane ``j * chunks[axis] + g * blocks[axis]`` crosses); only
    those blocks are decoded (each run of blocks that lie one after the other in a chunk:
    a chunk's runs in one Python call where the C library decodes the file,
    :func:`_decode_runs`), and nothing is put in output order here: a plane is copied
    out of the layer when it is read (:func:`layer_plane`), so scrolling pays for the
    planes it shows, not for every plane of the layers it crosses. Each chunk's blocks
    are kept as decoded, or planes first (the plane's in-block axis moved in front of
    the chunk's blocks) when a plane's run inside a block is short, so that no plane
    read gathers single items from the whole layer.

    One thread, whatever the store's ``nthreads``: a layer is a few MB of fresh
    memory written once, and splitting its chunks between two threads measured slower
    end to end (the benchmark's scrolling, napari reader's source: 0.23-0.24 ms per
    plane on two threads, 0.19-0.20 on one, at two thirds of the CPU time).
    """
    geo = _geometry(store, axis)
    first = j * geo.chunks[axis] + g * geo.blocks[axis]
    planes = min(geo.blocks[axis], (j + 1) * geo.chunks[axis] - first, geo.shape[axis] - first)
    layer = _recycler.array(geo.layer_shape(planes), store.dtype)
    row = layer.reshape(-1, *layer.shape[len(geo.ogrid) :])  # one entry per chunk of the row
    decoder = blocks_of(store)
    if (
        decoder is not None
        and geo.citems * np.dtype(store.dtype).itemsize <= _MASKED_CHUNK_BYTES
        and geo.planes_first
    ):
        # (a layer of long runs decodes straight into its slots, below)
        _decode_layer_masked(decoder, geo, j, g, row)
        return layer
    offset = g * geo.bitems * int(np.prod(geo.bgrid[axis + 1 :]))  # block layer g
    scratch = _recycler.array(geo.decoded, store.dtype) if geo.planes_first else None
    for other, k, runs in geo.row:
        nchunk = j * geo.row_stride + other
        if scratch is None:
            _decode_runs(store, decoder, nchunk, offset, runs, row[k].reshape(-1))
            continue
        _decode_runs(store, decoder, nchunk, offset, runs, scratch.reshape(-1))
        _put(geo, scratch, row[k])
    return layer


def _put(geo: _LayerGeometry, decoded: np.ndarray, slot: np.ndarray) -> None:
    """One chunk's decoded blocks of a block layer (``geo.decoded``: blocks along the
    others, block shape) into its slot of the layer, planes first (see
    :func:`decode_layer`)."""
    if geo.lanes > 1:  # ``lanes`` planes per item along the last axis
        src, dst = decoded.view(geo.unit), slot.view(geo.unit)[..., 0]
    else:
        src, dst = decoded, slot
    np.copyto(dst, src.transpose(geo.to_planes)[: len(dst)])


#: Chunks up to this size have their planes-first block layers decoded a chunk per call
#: (into a whole chunk's scratch); bigger ones a run of blocks at a time
_MASKED_CHUNK_BYTES = 8 * 2**20

#: the attribute of a python-blosc2 handle holding its decoder of chosen blocks
#: (:func:`mlarray._cstore.block_decoder`, set by :mod:`mlarray.io` on read-only handles)
BLOCKS_ATTR = "_mlarray_blocks"


def blocks_of(store: Any) -> Any:
    """What decodes chosen blocks of ``store``'s chunks in one call, or None."""
    if getattr(store.schunk, "decode_blocks", None) is not None:  # mlarray._cstore
        return store.schunk
    return getattr(store, BLOCKS_ATTR, None)


def _decode_layer_masked(
    decoder: Any, geo: _LayerGeometry, j: int, g: int, row: np.ndarray
) -> None:
    """Fill ``row`` (one slot per chunk of chunk row ``j``) with block layer ``g`` through
    ``decoder``, which decodes chosen blocks of a chunk in one call
    (:meth:`mlarray._cstore._CSchunk.decode_blocks`): one call per chunk instead of one
    per run of blocks (along the last axis every block is its own run), each chunk's
    blocks then put planes first while still in cache. A layer of the benchmark's CT
    (3-D int16) along axis 2: 1.3 -> 0.95 ms."""
    pick = (slice(None),) * geo.axis + (g,)  # the layer's blocks in a decoded chunk
    chunk = _recycler.array((*geo.bgrid, *geo.blocks), row.dtype)
    flat = chunk.reshape(-1)
    for i, (other, k, _) in enumerate(geo.row):
        decoder.decode_blocks(j * geo.row_stride + other, geo.skip(geo.valid[i], g), flat)
        _put(geo, chunk[pick], row[k])


def layer_plane(store: Any, axis: int, layer: np.ndarray, i: int) -> np.ndarray:
    """Plane ``i`` of a block layer decoded by :func:`decode_layer`, as a new C-order array
    (the array's other axes, in order): one strided copy for the chunks of the row that
    hold no padding, a few more for the edge chunk's whole and partial blocks."""
    return _plane(_geometry(store, axis), layer, i)


def _plane(geo: _LayerGeometry, layer: np.ndarray, i: int) -> np.ndarray:
    if not geo.others:  # a 1-d array: its planes are single items
        return np.array(geo.plane_view(layer, i), dtype=layer.dtype)
    out = np.empty(tuple(geo.shape[a] for a in geo.others), dtype=layer.dtype)
    plan = geo.plan(layer.shape, layer.dtype)  # (a layer is a C-order array)
    first = (i // geo.lanes) * plan.group + (i % geo.lanes) * plan.lane
    new = np.ndarray
    for (dtype, off, shape, strides), (s_off, s_shape, s_strides) in plan.copies:
        src = new(s_shape, dtype, layer, first + s_off, s_strides)
        np.copyto(new(shape, dtype, out, off, strides), src)
    return out


class _PlanePlan(NamedTuple):
    """:func:`_plane`'s copies for layers of one shape, as raw views (offset in bytes,
    shape, strides) of the output and of the layer: building a view that way costs a
    third of slicing, transposing and viewing it (a plane is a few copies of short
    rows, and scrolling reads one per frame). Plane ``i`` starts ``(i // lanes) *
    group + (i % lanes) * lane`` bytes into the layer."""

    copies: tuple
    group: int
    lane: int


def _plane_key(
    store: Any, norm: tuple, shape: tuple[int, ...], always: bool = False
) -> tuple[int, int] | None:
    """``(axis, index)`` if the normalized key ``norm`` (see :func:`_basic_key`) is one
    whole plane that block layers serve (one int, full slices elsewhere, a plane using
    at most a quarter of its chunks unless ``always``), else None. Raises IndexError for
    an out-of-range int, ValueError for a zero step."""
    ints = [a for a, k in enumerate(norm) if not isinstance(k, slice)]
    if len(ints) != 1 or len(shape) < 2:
        return None
    axis = ints[0]
    if not (always or int(store.chunks[axis]) > _DIRECT_FRACTION):
        return None
    for k, n in zip(norm, shape, strict=True):
        if isinstance(k, slice) and k.indices(n) != (0, n, 1):
            return None
    index = norm[axis]
    if not -shape[axis] <= index < shape[axis]:
        raise IndexError(f"index {index} is out of bounds for axis with size {shape[axis]}")
    return axis, index % shape[axis]


def cached_plane(store: Any, key: Any, cache: ChunkCache) -> tuple | None:
    """A plane ``store[key]`` whose block layer ``cache`` holds already, as the arguments
    of :func:`plane_of` (no decoding: nothing of the file is read); None for any other
    key, or if the layer is not cached (the key is then read as usual, which also
    reports a bad key)."""
    plane = plane_in_key(key, cache, store)
    if plane is None:
        shape = tuple(store.shape)
        if not shape or 0 in shape:
            return None
        norm = _basic_key(key, len(shape))
        if norm is None:
            return None
        try:
            plane = _plane_key(store, norm, shape)
        except (IndexError, ValueError):
            return None
        if plane is None:
            return None
    return layer_hit(store, cache, *plane)


def layer_hit(store: Any, cache: ChunkCache, axis: int, index: int) -> tuple | None:
    """Plane ``index`` along ``axis`` as the arguments of :func:`plane_of`, if its block
    layer is in ``cache``; else None."""
    geo = cache.geometry(store, axis)
    j, local = divmod(index, geo.chunks[axis])
    g, i = divmod(local, geo.blocks[axis])
    layer = cache.peek(store, ("layer", axis, j, g))
    return None if layer is None else (geo, layer, i)


def plane_in_key(
    key: Any, cache: ChunkCache, store: Any, thin: bool = False
) -> tuple[int, int] | None:
    """``(axis, index)`` for the ways viewers and loops ask for a plane of ``store``: a
    tuple of full slices and one in-range int (``a[:, 5]``, ``a[5, :, :]``; with ``thin``
    also a slice ``5:6``), along an axis whose block layers ``cache`` has laid out
    already; None for anything else (:func:`cached_plane` then looks closer). One pass
    over the key: a cached plane is a few copies, its lookup should cost next to nothing."""
    if type(key) is not tuple:
        return None
    axis = -1
    for a, k in enumerate(key):
        if type(k) is slice:
            if k == _ALL:
                continue
            if not (thin and type(k.start) is int and type(k.stop) is int):
                return None
            step = k.step
            if k.stop != k.start + 1 or not (step is None or (type(step) is int and step == 1)):
                return None
            k = k.start
        elif type(k) is not int:
            return None
        if axis >= 0:
            return None
        axis, index = a, k
    geo = cache.geometries(store).get(axis) if axis >= 0 else None
    if geo is None or len(key) > len(geo.shape) or not 0 <= index < geo.shape[axis]:
        return None
    return axis, index


_ALL = slice(None)


def plane_of(geo: _LayerGeometry, layer: np.ndarray, i: int) -> np.ndarray:
    """The plane :func:`cached_plane` found, as a new C-order array."""
    return _plane(geo, layer, i)


def _read_plane(store: Any, axis: int, index: int, cache: ChunkCache) -> np.ndarray:
    """Plane ``index`` along ``axis``, copied out of the cached block layer holding it."""
    geo = cache.geometry(store, axis)
    j, local = divmod(index, geo.chunks[axis])
    g, i = divmod(local, geo.blocks[axis])
    return _plane(geo, cache.layer(store, axis, j, g), i)


def layer_fits(store: Any, axis: int, cache: ChunkCache) -> bool:
    """Whether planes along ``axis`` are read through block layers kept in ``cache``.

    A layer is a block's thickness of planes over the chunks a plane crosses: its size is
    the file's choice (blocks 512 planes deep make a 16 MiB plane's layer 8 GiB). Only a
    layer the cache can keep, and at most :data:`_LAYER_PLANES` times the plane (or
    :data:`_LAYER_FLOOR` bytes), is decoded; other planes are read chunk by chunk
    (:func:`read_plane_direct`).
    """
    geo = cache.geometry(store, axis)
    itemsize = np.dtype(store.dtype).itemsize
    layer = math.prod(geo.layer_shape(geo.blocks[axis])) * itemsize
    plane = math.prod(geo.shape[a] for a in geo.others) * itemsize
    return layer <= cache.max_bytes and layer <= max(_LAYER_PLANES * plane, _LAYER_FLOOR)


def read_plane_direct(store: Any, axis: int, index: int) -> np.ndarray:
    """Plane ``index`` along ``axis`` as a new C-order array, decoded one chunk at a time:
    in each chunk the plane crosses, only the blocks holding it (one block layer of that
    chunk) go to a buffer of that size, reused, and the plane's items are copied out.

    Memory: the plane and one chunk's block layer, whatever the block shape. Used for
    planes whose whole block layer would be too big to decode at once
    (:func:`layer_fits`).
    """
    geo = _geometry(store, axis)
    j, local = divmod(index, geo.chunks[axis])
    g, i = divmod(local, geo.blocks[axis])
    m = len(geo.others)
    shape_o = tuple(geo.shape[a] for a in geo.others)
    chunks_o = tuple(geo.chunks[a] for a in geo.others)
    ext_o = tuple(geo.ext[a] for a in geo.others)
    out = _empty(shape_o, store.dtype, "a plane")
    scratch = _empty(geo.decoded, store.dtype, "a chunk's block layer")
    flat = scratch.reshape(-1)
    # the plane inside the decoded blocks: (blocks along the others, block shape of the
    # others), interleaved into the chunk's extent along the others
    view = scratch[(slice(None),) * (m + axis) + (i,)]
    order = [ax for k in range(m) for ax in (k, m + k)]
    offset = g * geo.bitems * int(np.prod(geo.bgrid[axis + 1 :]))  # block layer g
    decoder = blocks_of(store)
    for other, k, runs in geo.row:
        _decode_runs(store, decoder, j * geo.row_stride + other, offset, runs, flat)
        idx = np.unravel_index(k, geo.ogrid)
        region = tuple(
            slice(int(x) * c, min(int(x) * c + c, n))
            for x, c, n in zip(idx, chunks_o, shape_o, strict=True)
        )
        part = view.transpose(order).reshape(ext_o)
        out[region] = part[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def _plan(s: slice, block: int) -> tuple[slice, slice, slice, int]:
    """How :func:`take` reads the positive-step slice ``s`` of one chunk axis.

    Returns ``(blocks, in_block, rest, merged)``: the block range the slice spans, the
    slice of the in-block axis, the slice left to apply once the spanned blocks are
    merged, and the merged length. A slice inside one block goes straight to the
    in-block axis.
    """
    b0, b1 = s.start // block, (s.stop - 1) // block + 1
    if b1 - b0 == 1:
        inner = slice(s.start - b0 * block, s.stop - b0 * block, s.step)
        return slice(b0, b1), inner, slice(None), len(range(*inner.indices(block)))
    rest = slice(s.start - b0 * block, s.stop - b0 * block, s.step)
    return slice(b0, b1), slice(None), rest, (b1 - b0) * block


def _interleaved(nd: int) -> list[int]:
    return [ax for i in range(nd) for ax in (i, nd + i)]


def take(chunk: np.ndarray, local: tuple[slice, ...]) -> np.ndarray:
    """The elements ``local`` (positive-step slices inside the chunk, ``stop`` = last
    index + 1) of a chunk decoded by :func:`decode_chunk`, shaped like the selection.

    Along each axis the selection is cut to the blocks it spans; within a single block
    the slice goes straight to the in-block axis, so a plane copies only its own
    elements instead of rearranging the whole chunk.
    """
    nd = len(local)
    plans = [_plan(s, b) for s, b in zip(local, chunk.shape[nd:], strict=True)]
    return _take(chunk, plans, _interleaved(nd))


def _take(chunk: np.ndarray, plans: Any, order: list[int]) -> np.ndarray:
    sub = chunk[tuple(p[0] for p in plans) + tuple(p[1] for p in plans)]
    merged = sub.transpose(order).reshape(tuple(p[3] for p in plans))
    return merged[tuple(p[2] for p in plans)]


def _axis_pieces(n: int, chunk: int, key: Any) -> tuple[list[tuple[int, slice, slice]], int, bool]:
    """How one axis of a basic key maps onto chunks.

    Returns ``(pieces, length, drop)``: pieces ``(chunk index, slice inside the chunk,
    slice of the output)`` in increasing order of the source index, the output length,
    and whether the axis is dropped (an int key). Negative steps are read forwards; the
    caller flips the axis afterwards.
    """
    if isinstance(key, slice):
        r = range(n)[key]
        drop = False
    else:
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis with size {n}")
        r = range(i % n, i % n + 1)
        drop = True
    if r.step < 0:
        r = r[::-1]
    length = len(r)
    if length == 0:
        return [], 0, drop
    start, step = r.start, r.step
    last = r[-1]
    pieces = []
    for j in range(start // chunk, last // chunk + 1):
        lo, hi = j * chunk, (j + 1) * chunk
        k0 = max(0, -(-(lo - start) // step))
        k1 = min(length, -(-(hi - start) // step))
        if k1 <= k0:
            continue
        first = start + k0 * step - lo
        pieces.append((j, slice(first, first + (k1 - k0 - 1) * step + 1, step), slice(k0, k1)))
    return pieces, length, drop


def _basic_key(key: Any, ndim: int) -> tuple | None:
    """``key`` as one int or slice per axis, or None if it is not a plain basic key."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        if sum(k is Ellipsis for k in key) > 1:
            return None
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        return None
    out = []
    for k in key:
        if isinstance(k, slice):
            if not all(
                v is None or isinstance(v, int | np.integer) for v in (k.start, k.stop, k.step)
            ):
                return None
            out.append(k)
        elif isinstance(k, int | np.integer) and not isinstance(k, bool | np.bool_):
            out.append(int(k))
        else:
            return None
    return tuple(out) + (slice(None),) * (ndim - len(out))


def read_cached(
    store: Any, key: Any, cache: ChunkCache, *, always: bool = False
) -> np.ndarray | None:
    """``store[key]`` assembled from decoded chunks held in ``cache``.

    Returns None when the key or the array is not handled here (the caller then uses
    Blosc2's own slicing): keys other than ints, slices and ``...``; 0-d or empty
    arrays; reads that use more than a quarter of the chunks they touch (a whole
    volume: caching would not save decoding, and Blosc2 assembles it faster) unless
    ``always``. Raises IndexError for an out-of-range int, ValueError for a zero step, as
    numpy does.
    """
    shape = tuple(int(n) for n in store.shape)
    ndim = len(shape)
    if ndim == 0 or 0 in shape:
        return None
    norm = _basic_key(key, ndim)
    if norm is None:
        return None
    plane = _plane_key(store, norm, shape, always)
    if plane is not None:
        if layer_fits(store, plane[0], cache):
            return _read_plane(store, *plane, cache)
        return read_plane_direct(store, *plane)
    chunks = tuple(int(c) for c in store.chunks)
    axes = [_axis_pieces(n, c, k) for n, c, k in zip(shape, chunks, norm, strict=True)]
    wanted = touched = 1
    for (pieces, length, _), c in zip(axes, chunks, strict=True):
        wanted *= length
        touched *= len(pieces) * c
    if not always and (
        wanted * _DIRECT_FRACTION >= touched
        or int(np.prod(store.ext_chunks)) * np.dtype(store.dtype).itemsize > cache.max_bytes
    ):
        # The read uses most of every chunk it touches (a volume, a big patch): nothing to
        # gain from keeping the chunks, and Blosc2 assembles them faster. A chunk bigger
        # than the cache could not be kept: Blosc2 decodes only the blocks read.
        return None
    out = _empty(tuple(length for _, length, _ in axes), store.dtype, "the data read")
    if out.size:
        blocks = tuple(int(b) for b in store.blocks)
        grid = [-(-n // c) for n, c in zip(shape, chunks, strict=True)]
        order = _interleaved(ndim)
        per_axis = []  # (chunk index contribution, take plan, output slice) per piece
        mult = 1
        for ax in reversed(range(ndim)):
            per_axis.append(
                [(j * mult, _plan(src, blocks[ax]), dst) for j, src, dst in axes[ax][0]]
            )
            mult *= grid[ax]
        per_axis.reverse()
        for combo in itertools.product(*per_axis):
            nchunk = sum(c[0] for c in combo)
            part = _take(cache.chunk(store, nchunk), [c[1] for c in combo], order)
            out[tuple(c[2] for c in combo)] = part
    flips = [
        ax
        for ax, k in enumerate(norm)
        if isinstance(k, slice) and k.step is not None and k.step < 0
    ]
    if flips:
        out = np.ascontiguousarray(np.flip(out, axis=flips))  # C order, as every read
    drop = tuple(ax for ax, (_, _, d) in enumerate(axes) if d)
    if drop:
        out = out.reshape(tuple(n for ax, n in enumerate(out.shape) if ax not in drop))
    return out
