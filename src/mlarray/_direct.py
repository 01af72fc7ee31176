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

from mlarray.indexing import Box, box_of_key

__all__ = ["Box", "box_of", "read_box"]

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
    return out.reshape(box.shape) if len(box.shape) != len(full) else out
