"""What a numpy key reads: per-axis bounds, cheaply (used to find the chunks a read touches).

Keys are assumed valid for the shape (an invalid key gives meaningless bounds;
the read itself reports it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["key_bounds"]


def key_bounds(key: Any, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Per-axis (start, stop) bounds of what ``key`` reads; None if it reads nothing."""
    items = key if isinstance(key, tuple) else (key,)
    n_real = sum(1 for k in items if k is not None and k is not Ellipsis)
    out: list[tuple[int, int]] = []
    axis = 0
    for k in items:
        if k is None:
            continue
        if k is Ellipsis:
            for _ in range(len(shape) - n_real):
                out.append((0, shape[axis]))
                axis += 1
            continue
        if axis >= len(shape):
            break
        n = shape[axis]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if (step > 0 and start >= stop) or (step < 0 and start <= stop):
                return None
            last = start + ((stop - start - (1 if step > 0 else -1)) // step) * step
            out.append((min(start, last), max(start, last) + 1))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            i = int(k) + n if int(k) < 0 else int(k)
            out.append((i, i + 1))
        else:
            arr = np.asarray(k)
            if arr.dtype == bool:
                # a boolean mask covers as many axes as it has dimensions
                for _ in range(max(arr.ndim, 1)):
                    if axis < len(shape):
                        out.append((0, shape[axis]))
                        axis += 1
                continue
            if arr.size == 0:
                return None
            # negative indices count from the end: normalize before taking the extremes
            # ([0, -1] reads the first and the last element, not 0..n-1 exclusive)
            norm = np.where(arr < 0, arr + n, arr)
            lo, hi = int(norm.min()), int(norm.max())
            out.append((max(lo, 0), min(hi, n - 1) + 1))
        axis += 1
    while axis < len(shape):
        out.append((0, shape[axis]))
        axis += 1
    return out
