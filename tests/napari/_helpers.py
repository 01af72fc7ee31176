"""Helpers for the napari plugin tests (no Qt import here)."""

from __future__ import annotations

from pathlib import Path


def write_mla(path, data, *, meta: dict | None = None, **spatial) -> Path:
    """Write ``data`` with a record built from ``spatial`` fields via the library's ``MLArray``.

    ``meta`` is a mapping of record fields (``{"is_seg": True, "stats": {...}}``).
    """
    from mlarray import Meta, MLArray

    arr = MLArray(
        data,
        spacing=spatial.pop("spacing", None),
        origin=spatial.pop("origin", None),
        direction=spatial.pop("direction", None),
        affine=spatial.pop("affine", None),
        axis_labels=spatial.pop("axis_labels", None),
        meta=None if meta is None else Meta.from_mapping(meta),
    )
    for key, value in spatial.items():
        setattr(arr.meta.spatial, key, value)
    arr.save(path)
    return Path(path)


class ReadCounter:
    """Counts the elements decompressed through ``MLArray.__getitem__`` and through the
    reader's C-library path (``mlarray._cstore.read``), a spy on both, not a mock."""

    def __init__(self, monkeypatch):
        from mlarray import MLArray, _cstore

        self.total = 0
        self.largest = 0
        original = MLArray.__getitem__
        original_read = _cstore.read

        def count(out):
            if out is not None:  # None: not served there (MLArray reads it, counted there)
                self.total += out.size
                self.largest = max(self.largest, out.size)
            return out

        def counting(arr, key):
            return count(original(arr, key))

        def counting_read(store, key, cache=None):
            return count(original_read(store, key, cache))

        monkeypatch.setattr(MLArray, "__getitem__", counting)
        monkeypatch.setattr(_cstore, "read", counting_read)


def view_index(block: dict, stored, shape):
    """Layer data index of the stored index ``stored`` (a point, possibly fractional) of an
    array of ``shape``, for a layer whose ``.mla`` metadata block is ``block``: its axes
    in ``perm`` order, those in ``flip`` reversed (``N - 1 - i``)."""
    import numpy as np

    perm = block["perm"]
    flip = block.get("flip") or [False] * len(perm)
    stored = np.asarray(stored, dtype=float)
    out = stored[list(perm)]
    for k, f in enumerate(flip):
        if f:
            out[k] = shape[perm[k]] - 1 - out[k]
    return out


def view_index_inverse(block: dict, view, shape) -> tuple[int, ...]:
    """Stored index of the layer data index ``view`` (see :func:`view_index`); ``shape``
    is the stored shape."""
    perm = block["perm"]
    flip = block.get("flip") or [False] * len(perm)
    out = [0] * len(perm)
    for k, (a, f) in enumerate(zip(perm, flip, strict=True)):
        out[a] = shape[a] - 1 - int(view[k]) if f else int(view[k])
    return tuple(out)
