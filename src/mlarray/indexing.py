"""What a numpy key selects: its bounding box per axis, cheaply (no selection is built).

Used to find the chunks a read touches (to verify and prefetch them) and the
chunks a write changes (to journal them and refresh their checksums). The rules
are numpy's: integers, slices (any step), one Ellipsis, None (a new axis),
integer arrays and lists (broadcast together), boolean masks of any number of
dimensions (a mask covers as many axes as it has dimensions) and 0-d booleans
(``True``/``np.True_``: a new axis, no axis consumed).
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Box", "box_of_key", "key_bounds", "numpy_accepts", "selection_box"]


class Box(NamedTuple):
    """What a box key reads: ``start``/``stop`` per axis and the result's shape."""

    start: list[int]
    stop: list[int]
    shape: tuple[int, ...]

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]``, one pair per axis."""
        return list(zip(self.start, self.stop, strict=True))


def box_of_key(key: Any, shape: tuple[int, ...]) -> Box | None:
    """The box a patch key (ints, unit-step slices, one ``...``) selects, cheaply.

    The fast path of reads (and of their checksum and prefetch hooks): pure
    Python on ints, no numpy. None for any other key (booleans, arrays,
    ``None``, other steps, non-integer bounds), for an out-of-range int and for
    an empty selection; :func:`key_bounds` handles those.
    """
    items = key if type(key) is tuple else (key,)
    ndim = len(shape)
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
    stop = [int(n) for n in shape]
    out_shape = []
    for ax, k in enumerate(items):
        n = stop[ax]
        if type(k) is slice:
            if k.step is not None and k.step != 1:
                return None
            try:
                a, b, _ = k.indices(n)
            except (TypeError, ValueError):  # a non-integer bound: the slicing reports it
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
    out_shape.extend(stop[len(items) :])
    if 0 in out_shape:
        return None
    return Box(start, stop, tuple(out_shape))


def _axis_range(mask: np.ndarray, dim: int) -> tuple[int, int] | None:
    """(first, last + 1) of the positions along ``dim`` where ``mask`` has a True."""
    others = tuple(d for d in range(mask.ndim) if d != dim)
    hit = np.flatnonzero(mask.any(axis=others) if others else mask)
    if not hit.size:
        return None
    return int(hit[0]), int(hit[-1]) + 1


def _item(k: Any) -> tuple[str, Any]:
    """Classify one item of a key as numpy does: (kind, value)."""
    if k is None:
        return "new", None
    if k is Ellipsis:
        return "ellipsis", None
    if isinstance(k, slice):
        return "slice", k
    if isinstance(k, (bool, np.bool_)):
        return "bool0", bool(k)
    if isinstance(k, (int, np.integer)):
        return "int", int(k)
    if not isinstance(k, (np.ndarray, list, tuple)) and hasattr(type(k), "__index__"):
        return "int", operator.index(k)
    arr = np.asarray(k)
    if arr.dtype == np.bool_:
        return ("bool0", bool(arr)) if arr.ndim == 0 else ("mask", arr)
    if arr.dtype.kind in "iu":
        return "ints", arr
    if arr.size == 0 and not isinstance(k, np.ndarray):
        return "ints", arr.astype(np.intp)  # numpy reads an empty list as no index
    raise IndexError(
        "only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and "
        "integer or boolean arrays are valid indices"
    )


def key_bounds(key: Any, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Bounding box ``[(start, stop), ...]`` (one pair per axis of ``shape``) of what
    ``array[key]`` selects, following numpy's indexing rules; None if it selects nothing.

    The box is exact: per axis, from the lowest to the highest index selected.

    Raises
    ------
    IndexError
        For a key numpy refuses (or one this does not understand): a caller then
        has to assume the key touches every chunk, or let numpy report it.
    """
    shape = tuple(int(n) for n in shape)
    try:
        items = [_item(k) for k in (key if isinstance(key, tuple) else (key,))]
    except (TypeError, ValueError) as exc:  # e.g. a ragged list
        raise IndexError(f"not a valid index: {exc}") from exc
    kinds = [kind for kind, _ in items]
    if kinds.count("ellipsis") > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(
        v.ndim if kind == "mask" else 1
        for kind, v in items
        if kind in ("slice", "int", "ints", "mask")
    )
    if used > len(shape):
        raise IndexError(
            f"too many indices for array: array is {len(shape)}-dimensional, "
            f"but {used} were indexed"
        )
    out: list[tuple[int, int]] = []
    advanced: list[tuple[int, ...]] = []  # the shapes numpy broadcasts together
    empty = False
    for kind, v in items:
        if kind == "new":
            continue
        if kind == "ellipsis":
            out += [(0, shape[len(out) + j]) for j in range(len(shape) - used)]
            continue
        if kind == "bool0":
            advanced.append((1 if v else 0,))
            continue
        axis = len(out)
        if kind == "mask":
            if v.shape != shape[axis : axis + v.ndim]:
                raise IndexError(
                    f"boolean index of shape {v.shape} does not match the indexed axes "
                    f"{shape[axis : axis + v.ndim]}"
                )
            count = int(np.count_nonzero(v))
            advanced.append((count,))
            for dim in range(v.ndim):
                span = _axis_range(v, dim) if count else None
                out.append(span if span is not None else (0, 0))
            continue
        n = shape[axis]
        if kind == "slice":
            start, stop, step = v.indices(n)
            if (step > 0 and start >= stop) or (step < 0 and start <= stop):
                empty = True
                out.append((0, 0))
                continue
            last = start + ((stop - start - (1 if step > 0 else -1)) // step) * step
            out.append((min(start, last), max(start, last) + 1))
        elif kind == "int":
            if not -n <= v < n:
                raise IndexError(f"index {v} is out of bounds for axis {axis} with size {n}")
            i = v + n if v < 0 else v
            out.append((i, i + 1))
        else:  # an integer array
            advanced.append(v.shape)
            if not v.size:
                out.append((0, 0))
                continue
            lo, hi = int(v.min()), int(v.max())
            if lo < -n or hi >= n:
                bad = hi if hi >= n else lo
                raise IndexError(f"index {bad} is out of bounds for axis {axis} with size {n}")
            # negative indices count from the end: normalize before taking the extremes
            # ([0, -1] reads the first and the last element, not 0..n-1 exclusive)
            norm = np.where(v < 0, v + n, v) if lo < 0 else v
            out.append((int(norm.min()), int(norm.max()) + 1))
    out += [(0, n) for n in shape[len(out) :]]
    if advanced:
        try:
            selected = np.broadcast_shapes(*advanced)
        except ValueError as exc:
            raise IndexError(
                "shape mismatch: indexing arrays could not be broadcast together"
            ) from exc
        if 0 in selected:
            return None
    if empty or any(hi <= lo for lo, hi in out):
        return None
    return out


def numpy_accepts(key: Any, shape: tuple[int, ...]) -> bool:
    """Whether numpy indexes an array of ``shape`` with ``key`` (at most a bool per element)."""
    try:
        np.broadcast_to(np.empty((), dtype=np.bool_), tuple(shape))[key]
    except Exception:
        return False
    return True


def selection_box(
    shape: tuple[int, ...], key: Any
) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]] | None:
    """Bounding box of what ``key`` selects and the selection's key inside it.

    None for an empty selection. Any key numpy accepts works (numpy's IndexError otherwise).
    A boolean mask over the whole array (``a[mask]``, the common case) needs no
    coordinates: its box comes from one ``any`` per axis and its key inside the box is
    the mask's own view. Other keys are resolved to the coordinates they select, one
    array per axis in the smallest integer type that holds that axis (not int64).
    """
    ndim = len(shape)
    mask = key[0] if isinstance(key, tuple) and len(key) == 1 else key
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == shape:
        spans = []
        for i in range(ndim):
            hit = np.flatnonzero(mask.any(axis=tuple(j for j in range(ndim) if j != i)))
            if not hit.size:
                return None
            spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
        box = tuple(spans)
        return box, (mask[box],)
    coords = [
        np.broadcast_to(
            np.arange(n, dtype=np.min_scalar_type(max(n - 1, 0))).reshape(
                [-1 if j == i else 1 for j in range(ndim)]
            ),
            shape,
        )[key]
        for i, n in enumerate(shape)
    ]
    if coords[0].size == 0:
        return None
    lo = [int(c.min()) for c in coords]
    box = tuple(slice(low, int(c.max()) + 1) for low, c in zip(lo, coords, strict=True))
    return box, tuple(c - c.dtype.type(low) for c, low in zip(coords, lo, strict=True))
