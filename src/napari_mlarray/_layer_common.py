"""What every layer made from one record shares (image, labels and shapes alike).

The transforms, axis labels, units and name of a layer, and its
``metadata["mlarray"]`` block: the full record plus what the reader did
(``perm``, ``flip``, the napari ``frame``, the keywords it handed napari as
``as_read``), so a save can undo it exactly. Pure: no napari or Qt import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlarray.meta import Meta
from napari_mlarray._orientation import Orientation, as_meta, napari_transforms, orientation_for

__all__ = ["KEY", "as_read", "common_layer_kwargs", "drop_axes", "with_metadata"]

KEY = "mlarray"  # key of our block inside layer.metadata
_MATRIX_KEYS = ("scale", "translate", "rotate", "shear")
_NAME_KEYS = ("axis_labels", "units")


def common_layer_kwargs(
    record: Meta | dict, ndim: int, *, name: str, path: str | None, layer: str, unit_ok=None
) -> tuple[dict, Orientation, dict]:
    """Transforms, labels, units and metadata block shared by every layer of a record.

    Parameters
    ----------
    record, ndim, name, path, unit_ok
        As in :func:`napari_mlarray._mapping.image_layer_kwargs`.
    layer : str
        ``"image"``, ``"labels"`` or ``"shapes"`` (kept in the block).

    Returns
    -------
    (dict, Orientation, dict)
        The layer keywords, the orientation they follow, and the metadata block
        (without ``as_read``: see :func:`with_metadata`).
    """
    meta = as_meta(record)
    spatial = meta.spatial
    orient = orientation_for(meta, ndim, name=name)
    shape = spatial.shape
    # the flips go into the data (see napari_transforms): positive scales, for napari's
    # thick slices (images) and Convert to Labels (boxes) alike; without a shape they stay
    # negative scales
    shape = None if shape is None or len(shape) != ndim else [int(shape[a]) for a in orient.perm]
    kw: dict[str, Any] = napari_transforms(orient, ndim, shape)
    flip = kw.pop("flip")
    kw["axis_labels"] = orient.view_labels(spatial.axis_labels)
    units = spatial.units_per_axis(ndim)
    if units is not None:
        kw["units"] = [("pixel" if units[a] in (None, "") else str(units[a])) for a in orient.perm]
    elif orient.world_frame is not None and orient.n_spatial:
        kw["units"] = ["mm" if orient.spatial[a] else "pixel" for a in orient.perm]
    else:
        kw["units"] = None
    if kw["units"] is not None and unit_ok is not None:
        kw["units"] = [u if unit_ok(u) else "pixel" for u in kw["units"]]
    kw["name"] = name
    block = {
        "record": meta.to_mapping(),
        "path": path,
        "layer": layer,
        "perm": list(orient.perm),
        "flip": list(flip),  # per view axis: shown reversed (the data's LazyView flip)
        "spatial": list(orient.spatial),
        "frame": orient.frame.tolist(),
        "frame_source": orient.frame_source,
        "world_frame": orient.world_frame,
    }
    return kw, orient, block


def as_read(kw: dict) -> dict:
    """Plain-list copy of the keywords the reader handed napari (kept in metadata).

    Parameters
    ----------
    kw : dict
        Layer keywords with ``scale``, ``translate``, ``rotate``, ``shear``,
        ``axis_labels`` and ``units``.

    Returns
    -------
    dict
    """
    out = {key: np.asarray(kw.get(key), dtype=float).tolist() for key in _MATRIX_KEYS}
    for key in _NAME_KEYS:
        value = kw.get(key)
        out[key] = None if value is None else list(value)
    return out


def with_metadata(kw: dict, block: dict) -> dict:
    """Record ``kw`` as read in ``block`` and put the block in ``kw["metadata"]``.

    Parameters
    ----------
    kw : dict
        Layer keywords (changed in place).
    block : dict
        The metadata block from :func:`common_layer_kwargs` (changed in place).

    Returns
    -------
    dict
        ``kw``.
    """
    block["as_read"] = as_read(kw)
    kw["metadata"] = {KEY: block}
    return kw


def drop_axes(kw: dict, ks: list[int]) -> dict:
    """Remove view axes ``ks`` from the per-axis keywords.

    Parameters
    ----------
    kw : dict
        Layer keywords.
    ks : list of int
        View axes to remove (a ``channel_axis``, or axes a Shapes layer leaves out).

    Returns
    -------
    dict
        A new dict; ``kw`` is left as it is.
    """
    out = dict(kw)
    for k in sorted(ks, reverse=True):
        for key in ("scale", "translate"):
            out[key] = np.delete(np.asarray(out[key]), k)
        for key in ("rotate", "shear"):
            out[key] = np.delete(np.delete(np.asarray(out[key]), k, axis=0), k, axis=1)
        for key in _NAME_KEYS:
            if out.get(key) is not None:
                out[key] = [v for i, v in enumerate(out[key]) if i != k]
    return out
