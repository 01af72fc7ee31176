"""Box reads (ints and unit-step slices) straight into Blosc2's C slicer.

``NDArray.__getitem__`` of python-blosc2 spends 0.05-0.13 ms of Python per call before
its C code runs (re-syncing the shape, ``ndindex`` key processing, checks for lazy
expressions, boolean masks and fancy keys): up to a third of a 64^3 patch read. A key
that selects a box (ints, slices with step 1, ``...``) is read here with one call to the
C method that slicing ends in, ``blosc2_ext.NDArray.get_slice_numpy`` (it decodes the
blocks the box touches and copies them into the output array). Any other key, or a
Blosc2 without that method, gives None and the caller uses Blosc2's own slicing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import blosc2
import numpy as np

from mlarray.indexing import Box, box_of_key, selection_box

__all__ = [
    "Box",
    "box_of",
    "guard",
    "guard_like",
    "is_guarded",
    "read_box",
    "zero_uninit",
    "zero_uninit_chunks",
]

_ext = getattr(blosc2, "blosc2_ext", None)
_GET_SLICE = getattr(getattr(_ext, "NDArray", None), "get_slice_numpy", None)


def box_of(store: Any, key: Any) -> Box | None:
    """The box ``key`` selects in ``store`` (:func:`~mlarray.indexing.box_of_key`), or
    None if this module does not read it.

    None (the caller falls back to Blosc2's slicing, which also raises numpy's errors)
    for: stores that are not Blosc2 arrays; keys that are not boxes; empty selections;
    0-d arrays; structured dtypes.
    """
    if _GET_SLICE is None or not isinstance(store, _ext.NDArray):
        return None
    if not store.shape or store.dtype.fields is not None:
        return None
    return box_of_key(key, store.shape)


def read_box(store: Any, box: Box) -> np.ndarray:
    """Read ``box`` (from :func:`box_of`) of ``store`` into a new C-contiguous array.

    A chunk that cannot be decompressed raises Blosc2's RuntimeError.
    """
    full = tuple(b - a for a, b in zip(box.start, box.stop, strict=True))
    out = np.empty(full, dtype=store.dtype)
    guard = getattr(store, _GUARD_ATTR, None)
    if guard is not None and guard.whole_chunks:
        _read_by_chunks(store, out, box.start, box.stop, guard.geometry)
    else:
        _GET_SLICE(store, out, (box.start, box.stop))
    if guard is not None and guard.uninit:
        zero_uninit(store, out, box.start, box.stop)
    return out.reshape(box.shape) if len(box.shape) != len(full) else out


# ---------------------------------------------------------------- guarded stores
# Two kinds of valid Blosc2 files that c-blosc2's block-wise decoding reads wrong, with
# no error (files mlarray writes are neither; other Blosc2 tools can write both):
# * a chunk marked uninitialised (``blosc2.uninit``, never written) decodes to nothing:
#   c-blosc2 reports it decoded and leaves the destination as it was, so a read returns
#   whatever memory its output (or c-blosc2's scratch buffer) held before. mlarray reads
#   such chunks as zeros.
# * with the DELTA filter, a block decoded alone (slicing decodes only the blocks a read
#   touches) is rebuilt against the wrong reference block. mlarray decodes whole chunks.
# A store of such a file is guarded: every read goes through :func:`read_box` (any key
# through its bounding box), which handles both; caches of decoded blocks step aside.
_GUARD_ATTR = "_mlarray_guard"


class _Guard(NamedTuple):
    uninit: Any  # the frame's ChunkSet (or an empty frozenset): supports ``in``
    whole_chunks: bool
    geometry: Any


def _local(n: int, bounds: list, geometry: Any) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of chunk ``n`` inside the box ``bounds``: (in the chunk, in the box)."""
    rest, src, dst = n, [], []
    for (lo, hi), c, st in zip(bounds, geometry.chunks, geometry.strides, strict=True):
        k, rest = divmod(rest, st)
        a, b = max(lo, k * c), min(hi, (k + 1) * c)
        src.append(slice(a - k * c, b - k * c))
        dst.append(slice(a - lo, b - lo))
    return tuple(src), tuple(dst)


def _read_by_chunks(store: Any, out: np.ndarray, start: Any, stop: Any, geometry: Any) -> None:
    from mlarray._read import decode_chunk, take

    bounds = list(zip(start, stop, strict=True))
    for n in geometry.chunks_in_box(bounds):
        src, dst = _local(n, bounds, geometry)
        out[dst] = take(decode_chunk(store, n), src)


def zero_uninit(store: Any, out: np.ndarray, start: Any, stop: Any) -> None:
    """Zero the parts of ``out`` (the box ``start:stop`` of ``store``, full rank) that lie
    in uninitialised chunks of ``store`` (nothing to do for other stores)."""
    guard = getattr(store, _GUARD_ATTR, None)
    if guard is None or not guard.uninit:
        return
    bounds = list(zip(start, stop, strict=True))
    for n in guard.geometry.chunks_in_box(bounds):
        if n in guard.uninit and _still_uninit(store, n):
            out[_local(n, bounds, guard.geometry)[1]] = 0


def zero_uninit_chunks(store: Any, bounds: Any) -> None:
    """Write zeros into the uninitialised chunks of ``store`` a write into the box
    ``bounds`` (``[(start, stop), ...]``, None: anywhere) touches, before that write."""
    guard = getattr(store, _GUARD_ATTR, None)
    if guard is None or not guard.uninit:
        return
    geometry = guard.geometry
    if bounds is None or len(bounds) != len(geometry.shape):
        bounds = [(0, n) for n in geometry.shape]
    for n in geometry.chunks_in_box(bounds):
        if n in guard.uninit and _still_uninit(store, n):
            _, box = _local(n, [(0, size) for size in geometry.shape], geometry)  # the chunk
            store[box] = np.zeros(tuple(b.stop - b.start for b in box), dtype=store.dtype)


def _still_uninit(store: Any, n: int) -> bool:
    """Whether chunk ``n`` is (still: a write through a writable handle fills it)
    uninitialised: its header's special value."""
    from mlarray.frame import chunk_special

    return chunk_special(store.schunk.get_lazychunk(n), store.dtype.itemsize)[0] == 4


class _GuardedNDArray(blosc2.NDArray):
    """A Blosc2 array of a guarded file: every read goes through :func:`read_box`."""

    def __getitem__(self, key: Any) -> np.ndarray:
        shape = tuple(self.shape)
        box = box_of(self, key)
        if box is not None:
            return read_box(self, box)
        if not shape:
            value = np.zeros((), dtype=self.dtype) if getattr(self, _GUARD_ATTR).uninit else None
            return value[key] if value is not None else super().__getitem__(key)
        found = selection_box(shape, key)  # numpy's IndexError for a bad key
        if found is None:
            return np.zeros(np.empty(shape, dtype=np.bool_)[key].shape, dtype=self.dtype)
        slices, local = found
        region = read_box(self, box_of_key(slices, shape))
        return region[local]


def guard(store: Any, info: Any = None) -> Any:
    """Guard ``store`` (a Blosc2 array) if it needs it; returns ``store``.

    ``info`` (the :class:`~mlarray.frame.FrameInfo` of its frame, when it comes from
    one) tells about uninitialised and DELTA-filtered chunks already stored; the
    store's own compression parameters tell whether chunks it writes use DELTA.
    """
    if not isinstance(store, blosc2.NDArray) or _GET_SLICE is None:
        return store
    uninit = info.uninit if info is not None else frozenset()
    whole = bool(info is not None and info.delta) or _writes_delta(store)
    if uninit or whole:
        geometry = info.geometry() if info is not None else _chunk_geometry(store)
        setattr(store, _GUARD_ATTR, _Guard(uninit, whole, geometry))
        store.__class__ = _GuardedNDArray
    return store


def guard_like(new: Any, old: Any) -> Any:
    """Guard ``new`` (a copy of ``old``'s chunks: a rebuilt or unpickled array) as
    ``old`` is; returns ``new``."""
    found = getattr(old, _GUARD_ATTR, None)
    if found is not None and isinstance(new, blosc2.NDArray):
        setattr(new, _GUARD_ATTR, found)
        new.__class__ = _GuardedNDArray
    return guard(new) if found is None else new


def _writes_delta(store: Any) -> bool:
    try:
        return blosc2.Filter.DELTA in list(store.schunk.cparams.filters)
    except (AttributeError, TypeError, ValueError):
        return False


def is_guarded(store: Any) -> bool:
    """Whether ``store`` must be read through :func:`read_box` only (not by a cache of
    decoded blocks, not by Blosc2's own slicing)."""
    return getattr(store, _GUARD_ATTR, None) is not None


def _chunk_geometry(store: Any) -> Any:
    from mlarray.frame import ChunkGeometry

    return ChunkGeometry.of(store.shape, store.chunks)
