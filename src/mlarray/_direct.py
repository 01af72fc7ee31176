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

__all__ = ["Box", "box_of", "read_box"]

_ext = getattr(blosc2, "blosc2_ext", None)
_GET_SLICE = getattr(getattr(_ext, "NDArray", None), "get_slice_numpy", None)


class Box(NamedTuple):
    """What a box key reads: ``start``/``stop`` per axis and the result's shape."""

    start: list[int]
    stop: list[int]
    shape: tuple[int, ...]


def box_of(store: Any, key: Any) -> Box | None:
    """The box ``key`` selects in ``store``, or None if this module does not read it.

    None (the caller falls back to Blosc2's slicing, which also raises numpy's errors)
    for: stores that are not Blosc2 arrays; keys with ``None``, arrays, booleans,
    non-integer bounds, steps other than 1, out-of-range ints; empty selections; 0-d
    arrays; structured dtypes.
    """
    if _GET_SLICE is None or not isinstance(store, _ext.NDArray):
        return None
    items = key if isinstance(key, tuple) else (key,)
    shape = store.shape
    ndim = len(shape)
    if ndim == 0:
        return None
    if any(k is Ellipsis for k in items):
        if sum(k is Ellipsis for k in items) > 1:
            return None
        i = next(j for j, k in enumerate(items) if k is Ellipsis)
        fill = ndim - len(items) + 1
        if fill < 0:
            return None
        items = items[:i] + (slice(None),) * fill + items[i + 1 :]
    if len(items) > ndim:
        return None
    start = [0] * ndim
    stop = list(shape)
    out_shape = []
    for ax, k in enumerate(items):
        n = shape[ax]
        if type(k) is slice:
            if k.step is not None and k.step != 1:
                return None
            try:
                a, b, _ = k.indices(n)
            except TypeError:  # a non-integer bound: Blosc2's slicing reports it
                return None
            if b <= a:
                return None
            start[ax], stop[ax] = a, b
            out_shape.append(b - a)
        elif isinstance(k, int | np.integer) and not isinstance(k, bool | np.bool_):
            i = int(k)
            if not -n <= i < n:
                return None
            i %= n
            start[ax], stop[ax] = i, i + 1
        else:
            return None
    out_shape.extend(shape[len(items) :])
    if 0 in out_shape or store.dtype.fields is not None:
        return None
    return Box(start, stop, tuple(out_shape))


def read_box(store: Any, box: Box) -> np.ndarray:
    """Read ``box`` (from :func:`box_of`) of ``store`` into a new C-contiguous array.

    A chunk that cannot be decompressed raises Blosc2's RuntimeError.
    """
    full = tuple(b - a for a, b in zip(box.start, box.stop, strict=True))
    out = np.empty(full, dtype=store.dtype)
    _GET_SLICE(store, out, (box.start, box.stop))
    return out.reshape(box.shape) if len(box.shape) != len(full) else out
