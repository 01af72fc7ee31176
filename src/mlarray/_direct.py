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

from typing import Any

import blosc2
import numpy as np

from mlarray.indexing import Box, box_of_key, selection_box

__all__ = ["Box", "box_of", "guard_uninit", "has_uninit", "read_box", "zero_uninit"]

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
    _GET_SLICE(store, out, (box.start, box.stop))
    zero_uninit(store, out, box.start, box.stop)
    return out.reshape(box.shape) if len(box.shape) != len(full) else out


# --------------------------------------------------------------- uninitialised chunks
# A chunk Blosc2 marks uninitialised (``blosc2.uninit`` and never written) decodes to
# nothing: c-blosc2 reports it decoded and leaves the destination as it was, so a read
# would return whatever memory the output (or c-blosc2's scratch buffer) held before.
# mlarray reads such chunks as zeros. Files mlarray writes have none (unwritten chunks
# are stored as zero chunks); the rare file that has them gets a guarded store.
_UNINIT_ATTR = "_mlarray_uninit"


def zero_uninit(store: Any, out: np.ndarray, start: Any, stop: Any) -> None:
    """Zero the parts of ``out`` (the box ``start:stop`` of ``store``, full rank) that lie
    in uninitialised chunks of ``store`` (nothing to do for other stores)."""
    found = getattr(store, _UNINIT_ATTR, None)
    if found is None:
        return
    ids, geometry = found
    bounds = list(zip(start, stop, strict=True))
    for n in geometry.chunks_in_box(bounds):
        if n not in ids:
            continue
        rest, local = n, []
        for (lo, hi), c, st in zip(bounds, geometry.chunks, geometry.strides, strict=True):
            k, rest = divmod(rest, st)
            a, b = max(lo, k * c), min(hi, (k + 1) * c)
            local.append(slice(a - lo, b - lo))
        out[tuple(local)] = 0


class _ZeroingNDArray(blosc2.NDArray):
    """A Blosc2 array with uninitialised chunks whose reads return zeros there."""

    def __getitem__(self, key: Any) -> np.ndarray:
        shape = tuple(self.shape)
        box = box_of(self, key)
        if box is not None:
            return read_box(self, box)
        if not shape:
            return np.zeros((), dtype=self.dtype)[key]  # its one chunk is uninitialised
        found = selection_box(shape, key)  # numpy's IndexError for a bad key
        if found is None:
            return np.zeros(np.empty(shape, dtype=np.bool_)[key].shape, dtype=self.dtype)
        slices, local = found
        region = read_box(self, box_of_key(slices, shape))
        return region[local]


def guard_uninit(store: Any, info: Any) -> Any:
    """Make ``store`` (a Blosc2 array of the frame ``info`` describes) read its
    uninitialised chunks as zeros, if it has any; returns ``store``."""
    if info.uninit and isinstance(store, blosc2.NDArray) and _GET_SLICE is not None:
        setattr(store, _UNINIT_ATTR, (frozenset(info.uninit), info.geometry()))
        store.__class__ = _ZeroingNDArray
    return store


def has_uninit(store: Any) -> bool:
    """Whether ``store`` reads uninitialised chunks (and must not be read around
    :func:`read_box` and Blosc2's ``__getitem__``, e.g. by a cache of decoded blocks)."""
    return getattr(store, _UNINIT_ATTR, None) is not None
