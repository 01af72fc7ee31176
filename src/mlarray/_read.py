"""Read paths that decode Blosc2 chunks themselves: a bounded LRU cache of decoded data.

A viewer scrolling through planes asks for one plane at a time; Blosc2's own slicing
decodes the blocks under each plane again and again (a block is 20-30 planes thick). With
:class:`ChunkCache` those blocks are decoded once and kept in a bounded
least-recently-used cache:

* a plane (one int, full slices elsewhere) comes from a *block layer*: the blocks of one
  block thickness along the plane's axis, in every chunk the plane crosses, decoded
  (only those blocks, ``SChunk.get_slice``) and laid out plane by plane, so each of its
  planes is one contiguous copy (:func:`decode_layer`); scrolling on decodes the next
  layer;
* any other basic key is assembled chunk by chunk from whole decoded chunks, each chunk
  copying out only the selected elements (:func:`take`).

Only basic keys (ints, slices with any step, ``...``) are served here; the caller falls
back to Blosc2's slicing for anything else (``None``, arrays, booleans, 0-d or empty
arrays). Decoding goes through ``SChunk.decompress_chunk`` / ``get_slice``, so a damaged
chunk raises the same ``RuntimeError`` as Blosc2's slicing does; the caller verifies the
chunks a read touches against their checksums first.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from mlarray._fullread import _executor, _Plan, read_threads

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ChunkCache",
    "decode_chunk",
    "decode_layer",
    "read_cached",
    "take",
]

#: Default bound of a chunk cache: enough for every chunk under a plane of a 512^3 int16
#: volume stored with the default layout, along any axis (and many block layers).
DEFAULT_CACHE_BYTES = 256 * 2**20

#: Reads that use more than 1/_DIRECT_FRACTION of the chunks they touch bypass the cache.
_DIRECT_FRACTION = 4


class ChunkCache:
    """A bounded least-recently-used cache of decoded chunks and block layers of one
    Blosc2 array.

    Parameters
    ----------
    max_bytes : int
        Upper bound of the decoded bytes held (an entry larger than the bound is
        decoded but not kept).

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
        self._generation = 0  # bumped by every clear: older decodes are not kept
        self._lock = threading.Lock()  # napari reads planes from worker threads

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
            lambda: decode_layer(store, axis, j, g, read_threads(store)),
        )

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
        with self._lock:
            self.misses += 1
            # A clear (a write) since the lookup: ``arr`` may hold data from before the
            # write, so it is returned to this caller but not kept.
            if (
                self._generation == generation
                and self._store is store
                and arr.nbytes <= self.max_bytes
            ):
                old = self._chunks.pop(key, None)
                if old is not None:
                    self.nbytes -= old.nbytes
                self._chunks[key] = arr
                self.nbytes += arr.nbytes
                while self.nbytes > self.max_bytes:
                    _, dropped = self._chunks.popitem(last=False)
                    self.nbytes -= dropped.nbytes
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
    flat = np.empty(int(np.prod(ext)), dtype=store.dtype)
    store.schunk.decompress_chunk(nchunk, flat)
    return flat.reshape(grid + blocks)


def decode_layer(store: Any, axis: int, j: int, g: int, nthreads: int = 1) -> np.ndarray:
    """The planes of block layer ``g`` of chunk row ``j`` along ``axis``, as one array.

    Only the blocks of that layer are decoded (``SChunk.get_slice`` per run of blocks
    that lie one after the other in a chunk), in every chunk of the row; they are laid
    out plane by plane: shape ``(planes, other axes...)``, C order, so a plane is one
    contiguous copy. ``planes`` is the block length, less at the end of the array.
    ``nthreads`` threads share the chunks. Chunks side by side along the last axis are
    copied into place together (see :class:`mlarray._fullread._Plan`).
    """
    shape = tuple(int(n) for n in store.shape)
    chunks = tuple(int(c) for c in store.chunks)
    blocks = tuple(int(b) for b in store.blocks)
    ext = tuple(int(e) for e in store.ext_chunks)
    nd = len(shape)
    grid = [-(-n // c) for n, c in zip(shape, chunks, strict=True)]
    bgrid = [e // b for e, b in zip(ext, blocks, strict=True)]
    first = j * chunks[axis] + g * blocks[axis]
    planes = min(blocks[axis], (j + 1) * chunks[axis] - first, shape[axis] - first)
    others = [a for a in range(nd) if a != axis]
    out = np.empty((planes, *(shape[a] for a in others)), dtype=store.dtype)
    # The layer as an array of its own (``planes`` thick along ``axis``, chunks of one
    # block there), written through a view in the array's axis order.
    view = np.moveaxis(out, 0, axis)

    def along(v: tuple[int, ...], x: int) -> tuple[int, ...]:
        return tuple(x if a == axis else v[a] for a in range(nd))

    plan = _Plan(
        view,
        along(shape, planes),
        along(chunks, planes),
        blocks,
        along(ext, blocks[axis]),
        direct=False,
    )
    bitems = int(np.prod(blocks))
    citems = int(np.prod(ext))
    outer = int(np.prod(bgrid[:axis]))  # runs of blocks of the layer per chunk
    run = int(np.prod(bgrid[axis + 1 :]))  # blocks per run
    step = bgrid[axis] * run * bitems  # items between runs
    schunk = store.schunk

    def work(groups: list[tuple[int, int]]) -> None:
        slab = np.empty((plan.group, outer, run * bitems), dtype=store.dtype)
        for n0, k in groups:
            for i in range(k):
                cidx = list(np.unravel_index(n0 + i, plan.grid))
                cidx[axis] = j
                nchunk = int(np.ravel_multi_index(tuple(cidx), tuple(grid)))
                base = nchunk * citems + g * run * bitems
                for r in range(outer):
                    start = base + r * step
                    schunk.get_slice(start, start + run * bitems, out=slab[i, r])
            plan.place(n0, k, slab[:k].reshape((k, *plan.bgrid, *plan.blocks)))

    nthreads = max(1, min(nthreads, len(plan.groups)))
    # Threads overlap one chunk's decoding (which holds the GIL) with another's copy
    # into place (which does not); each writes its own part of ``out``.
    parts = [plan.groups[k::nthreads] for k in range(nthreads)]
    futures = [_executor(nthreads - 1).submit(work, part) for part in parts[1:]]
    work(parts[0])
    for f in futures:
        f.result()
    return out


def _read_plane(store: Any, axis: int, index: int, cache: ChunkCache) -> np.ndarray:
    """Plane ``index`` along ``axis``, copied from the cached block layer holding it."""
    chunk, block = int(store.chunks[axis]), int(store.blocks[axis])
    j, local = divmod(index, chunk)
    g, i = divmod(local, block)
    return cache.layer(store, axis, j, g)[i].copy()


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
    ints = [a for a, k in enumerate(norm) if not isinstance(k, slice)]
    if (
        len(ints) == 1
        and ndim > 1
        and (always or int(store.chunks[ints[0]]) > _DIRECT_FRACTION)
        and all(
            isinstance(k, slice) and k.indices(n) == (0, n, 1)
            for k, n in zip(norm, shape, strict=True)
            if not isinstance(k, int)
        )
    ):
        axis = ints[0]
        index = norm[axis]
        if not -shape[axis] <= index < shape[axis]:
            raise IndexError(f"index {index} is out of bounds for axis with size {shape[axis]}")
        return _read_plane(store, axis, index % shape[axis], cache)
    chunks = tuple(int(c) for c in store.chunks)
    axes = [_axis_pieces(n, c, k) for n, c, k in zip(shape, chunks, norm, strict=True)]
    wanted = touched = 1
    for (pieces, length, _), c in zip(axes, chunks, strict=True):
        wanted *= length
        touched *= len(pieces) * c
    if not always and wanted * _DIRECT_FRACTION >= touched:
        # The read uses most of every chunk it touches (a volume, a big patch): nothing to
        # gain from keeping the chunks, and Blosc2 assembles them faster.
        return None
    out = np.empty(tuple(length for _, length, _ in axes), dtype=store.dtype)
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
        out = np.flip(out, axis=flips)
    drop = tuple(ax for ax, (_, _, d) in enumerate(axes) if d)
    if drop:
        out = out.reshape(tuple(n for ax, n in enumerate(out.shape) if ax not in drop))
    return out
