"""Pure mapping between ``.mla`` records and napari layer keyword dicts.

No napari or Qt import: everything here takes and returns plain dicts, lists
and numpy arrays, so it is tested without a viewer.

Reading: :func:`orientation_for` decides how the stored axes are shown
(a transpose into *view order*, see :mod:`napari_mlarray._orientation`), and
:func:`image_layer_kwargs`, :func:`labels_layer_kwargs`, :func:`shapes_layer_data`
build the ``viewer.add_*`` keywords. Each layer's ``metadata["mlarray"]`` keeps
the full record plus what the reader did (``perm``, ``dtype``, the transforms
it handed napari), so :func:`record_from_layer` can undo it exactly.

Writing: :func:`record_from_layer` turns a layer's ``(data shape, meta)`` into a
record and an :class:`Undo` (how to lazily put the data back into stored
order and dtype); :func:`boxes_from_shapes` turns Shapes layers into ``bbox``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_mlarray._orientation import (
    affine_from_layer,
    affine_from_record_spatial,
    axis_world_map,
    decompose_linear,
    display_frame,
    is_spatial_label,
)

__all__ = [
    "KEY",
    "Orientation",
    "Undo",
    "boxes_from_shapes",
    "contrast_limits_from_sample",
    "contrast_limits_from_stats",
    "default_record",
    "image_layer_kwargs",
    "label_dtype",
    "labels_layer_kwargs",
    "orientation_for",
    "record_from_layer",
    "shapes_layer_data",
    "short_unit",
]

KEY = "mlarray"  # key of our block inside layer.metadata
_GEOM_TOL = 1e-9
_XYZ_RANK = {"spatial_z": 0, "spatial_y": 1, "spatial_x": 2}
_LABEL_ALIASES = {
    "x": "spatial_x",
    "y": "spatial_y",
    "z": "spatial_z",
    "c": "channel",
    "t": "temporal",
    "time": "temporal",
}
BOX_COLORS = [
    "#ff4040",
    "#40c0ff",
    "#ffd700",
    "#40ff80",
    "#ff80ff",
    "#ff9930",
    "#a080ff",
    "#ffffff",
]


# --------------------------------------------------------------------------- records


def default_record() -> dict:
    """Return a record with the full FORMAT.md §3 key set and default values.

    Returns
    -------
    dict
    """
    stats_keys = [
        "min",
        "max",
        "mean",
        "median",
        "std",
        "percentile_min",
        "percentile_max",
        "percentile_mean",
        "percentile_median",
        "percentile_std",
        "percentile_min_key",
        "percentile_max_key",
    ]
    return {
        "source": {"data": {}},
        "extra": {"data": {}},
        "spatial": {
            "spacing": None,
            "origin": None,
            "direction": None,
            "affine": None,
            "shape": None,
            "axis_labels": None,
            "coord_system": None,
            "axis_units": None,
            "_num_spatial_axes": None,
            "_num_non_spatial_axes": None,
        },
        "stats": dict.fromkeys(stats_keys),
        "bbox": {"bboxes": None, "scores": None, "labels": None},
        "is_seg": {"is_seg": None},
        "blosc2": {
            "chunk_size": None,
            "block_size": None,
            "patch_size": None,
            "cparams": None,
            "dparams": None,
        },
        "_has_array": {"has_array": True},
        "_image_meta_format": {"image_meta_format": None},
        "_mlarray_version": "v0",
    }


def _normalized(record: dict | None) -> dict:
    """Deep copy of ``record`` over the default key set; bare single-key wrappers wrapped."""
    out = default_record()
    for key, value in (record or {}).items():
        default = out.get(key)
        if isinstance(default, dict) and len(default) == 1 and not isinstance(value, dict):
            value = {next(iter(default)): value}
        if isinstance(default, dict) and isinstance(value, dict):
            out[key] = {**default, **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _geometry_length(spatial: dict) -> int | None:
    for key in ("spacing", "origin"):
        if spatial.get(key) is not None:
            return len(spatial[key])
    if spatial.get("direction") is not None:
        return len(spatial["direction"])
    if spatial.get("affine") is not None:
        return len(spatial["affine"]) - 1
    return None


def spatial_mask(record: dict, ndim: int) -> list[bool]:
    """Which of the ``ndim`` stored axes are spatial (FORMAT.md §4).

    Parameters
    ----------
    record : dict
        The ``.mla`` record.
    ndim : int
        Number of stored axes.

    Returns
    -------
    list of bool
    """
    spatial = _normalized(record)["spatial"]
    labels = spatial["axis_labels"]
    if labels is not None:
        if len(labels) != ndim:
            raise ValueError(f"spatial.axis_labels has {len(labels)} entries for {ndim} axes")
        return [is_spatial_label(label) for label in labels]
    n = _geometry_length(spatial)
    if n is not None and n < ndim:  # geometry for the trailing axes only
        return [a >= ndim - n for a in range(ndim)]
    return [True] * ndim


# --------------------------------------------------------------------------- orientation


@dataclass(frozen=True)
class Orientation:
    """How stored axes are shown in napari.

    Attributes
    ----------
    perm : tuple of int
        View axis ``k`` is stored axis ``perm[k]`` (non-spatial axes first).
    spatial : tuple of bool
        Per stored axis.
    frame : numpy.ndarray
        ``D``: napari world (spatial part) ``= D @ file world``.
    frame_source : str
        ``"coord_system"``, ``"axis_labels"`` or ``"stored"`` (what decided it).
    affine : numpy.ndarray
        The record's ``(n+1, n+1)`` spatial affine in the file world.
    """

    perm: tuple[int, ...]
    spatial: tuple[bool, ...]
    frame: np.ndarray
    frame_source: str
    affine: np.ndarray

    @property
    def n_spatial(self) -> int:
        """Number of spatial axes."""
        return int(sum(self.spatial))

    @property
    def spatial_order(self) -> list[int]:
        """Stored spatial-axis indices (0..n-1 among spatial axes) in napari order."""
        sp = [a for a, s in enumerate(self.spatial) if s]
        return [sp.index(a) for a in self.perm if self.spatial[a]]


def orientation_for(record: dict, ndim: int) -> Orientation:
    """Decide the view order and napari world frame for a record with ``ndim`` axes.

    With an anatomical ``coord_system`` the napari world is LPS reversed
    (``z, y, x``), and each data axis goes to the world axis it runs along most.
    Without one, ``spatial_x/y/z`` labels order the axes ``z, y, x``; with
    neither the stored order is kept (FORMAT.md §4). Non-spatial axes lead.

    Parameters
    ----------
    record : dict
        The ``.mla`` record.
    ndim : int
        Number of stored axes.

    Returns
    -------
    Orientation
    """
    rec = _normalized(record)
    spatial = rec["spatial"]
    mask = spatial_mask(rec, ndim)
    sp_axes = [a for a in range(ndim) if mask[a]]
    n = len(sp_axes)
    affine = affine_from_record_spatial(spatial, n)
    linear = affine[:n, :n]
    D = display_frame(spatial["coord_system"], n) if n else np.eye(0)
    if D is not None:
        world = axis_world_map(D @ linear) if n else []
        order = sorted(range(n), key=lambda j: world[j])
        source = "coord_system"
    else:
        world = axis_world_map(linear) if n else []
        labels = spatial["axis_labels"]
        names = [labels[a] for a in sp_axes] if labels is not None else []
        if names and all(x in _XYZ_RANK for x in names) and len(set(names)) == n:
            order = sorted(range(n), key=lambda j: _XYZ_RANK[names[j]])
            source = "axis_labels"
        else:
            order = list(range(n))
            source = "stored"
        D = np.zeros((n, n))
        for k, j in enumerate(order):
            D[k, world[j]] = 1.0
    perm = tuple([a for a in range(ndim) if not mask[a]] + [sp_axes[j] for j in order])
    return Orientation(perm, tuple(mask), D, source, affine)


def _napari_transforms(orient: Orientation, ndim: int) -> dict:
    """scale/translate/rotate/shear (view order, all ``ndim`` axes) of an orientation."""
    n = orient.n_spatial
    k0 = ndim - n
    scale, translate = np.ones(ndim), np.zeros(ndim)
    rotate, shear = np.eye(ndim), np.eye(ndim)
    if n:
        M = orient.frame @ orient.affine[:n, :n]
        rot, sh, sc = decompose_linear(M[:, orient.spatial_order])
        scale[k0:] = sc
        translate[k0:] = orient.frame @ orient.affine[:n, n]
        rotate[k0:, k0:] = rot
        shear[k0:, k0:] = sh
    return {"scale": scale, "translate": translate, "rotate": rotate, "shear": shear}


def short_unit(unit: Any) -> str | None:
    """Short unit string (``'mm'``) of a pint unit or string; ``None`` for pixels/unset.

    Parameters
    ----------
    unit : pint.Unit, str or None

    Returns
    -------
    str or None
    """
    if unit is None:
        return None
    text = format(unit, "~") if hasattr(unit, "dimensionality") else str(unit)
    text = text.strip()
    if text in ("", "px", "pixel", "pixels", "dimensionless"):
        return None
    return {"millimeter": "mm", "micrometer": "µm", "second": "s"}.get(text, text)


def _is_default_label(label: Any, k: int, ndim: int) -> bool:
    return label is None or str(label) == str(k - ndim) or re.fullmatch(r"-\d+", str(label))


def _layer_common(
    record: dict, ndim: int, *, name: str, path: str | None, layer: str, unit_ok=None
):
    """Transforms, labels, units and metadata shared by every layer of a record."""
    rec = _normalized(record)
    spatial = rec["spatial"]
    orient = orientation_for(rec, ndim)
    kw: dict[str, Any] = dict(_napari_transforms(orient, ndim))
    labels = spatial["axis_labels"]
    kw["axis_labels"] = None if labels is None else [str(labels[a]) for a in orient.perm]
    units = spatial["axis_units"]
    if units is not None and len(units) == ndim:
        kw["units"] = [("pixel" if units[a] in (None, "") else str(units[a])) for a in orient.perm]
    elif orient.frame_source == "coord_system" and orient.n_spatial:
        kw["units"] = ["mm" if orient.spatial[a] else "pixel" for a in orient.perm]
    else:
        kw["units"] = None
    if kw["units"] is not None and unit_ok is not None:
        kw["units"] = [u if unit_ok(u) else "pixel" for u in kw["units"]]
    kw["name"] = name
    block = {
        "record": rec,
        "path": path,
        "layer": layer,
        "perm": list(orient.perm),
        "frame": orient.frame.tolist(),
        "frame_source": orient.frame_source,
    }
    return kw, orient, block


def _as_read(kw: dict) -> dict:
    """Plain-list copy of the keywords the reader handed napari (kept in metadata)."""
    out = {}
    for key in ("scale", "translate", "rotate", "shear", "axis_labels", "units"):
        v = kw.get(key)
        out[key] = np.asarray(v, dtype=float).tolist() if key not in ("axis_labels", "units") else v
        if key in ("axis_labels", "units") and v is not None:
            out[key] = list(v)
    return out


def _drop_axis(kw: dict, k: int) -> dict:
    """Remove view axis ``k`` from per-axis keywords (for ``channel_axis`` layers)."""
    out = dict(kw)
    for key in ("scale", "translate"):
        out[key] = np.delete(np.asarray(kw[key]), k)
    for key in ("rotate", "shear"):
        out[key] = np.delete(np.delete(np.asarray(kw[key]), k, axis=0), k, axis=1)
    for key in ("axis_labels", "units"):
        if kw.get(key) is not None:
            out[key] = [v for i, v in enumerate(kw[key]) if i != k]
    return out


def contrast_limits_from_stats(record: dict) -> tuple[float, float] | None:
    """Initial contrast limits from ``stats`` (percentile window first, then min/max).

    Parameters
    ----------
    record : dict

    Returns
    -------
    tuple of float or None
    """
    stats = _normalized(record)["stats"]

    def num(v):
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    for lo_key, hi_key in (("percentile_min", "percentile_max"), ("min", "max")):
        lo, hi = stats.get(lo_key), stats.get(hi_key)
        if num(lo) and num(hi) and hi > lo:
            return float(lo), float(hi)
    return None


def contrast_limits_from_sample(data, max_elements: int = 1_000_000) -> tuple[float, float]:
    """Contrast limits from one plane of ``data`` (the middle of every slider axis).

    Reads a single 2-D plane (napari's first displayed plane is of this size),
    then a strided subsample of it, never the volume.

    Parameters
    ----------
    data : array-like
        Lazy data in view order.
    max_elements : int
        Cap on the elements the statistics are computed over.

    Returns
    -------
    tuple of float
    """
    key = tuple(s // 2 for s in data.shape[:-2]) + (slice(None),) * min(2, data.ndim)
    plane = np.asarray(data[key])
    step = max(1, math.ceil(math.sqrt(plane.size / max_elements)))
    sample = plane[(slice(None, None, step),) * plane.ndim].astype(float, copy=False)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def image_layer_kwargs(
    record: dict,
    ndim: int,
    *,
    name: str,
    path: str | None = None,
    contrast_limits=None,
    dtype: str | None = None,
    unit_ok=None,
) -> dict:
    """``viewer.add_image`` keywords (data excluded) for a record with ``ndim`` stored axes.

    A ``channel`` axis becomes ``channel_axis`` (index in view order); the
    per-layer keywords are then given as one entry per channel, except
    ``rotate`` and ``shear``, which napari's channel split repeats itself.

    Parameters
    ----------
    record : dict
        The ``.mla`` record.
    ndim : int
        Number of stored axes.
    name : str
        Layer name.
    path : str, optional
        File the layer came from (kept in metadata).
    contrast_limits : pair or list of pairs, optional
        One pair, or one per channel.
    dtype : str, optional
        Stored dtype, kept in metadata so a save restores it.
    unit_ok : callable, optional
        ``unit_ok(str) -> bool``; units napari cannot parse are shown as pixels
        (the record keeps them).

    Returns
    -------
    dict
    """
    kw, orient, block = _layer_common(
        record, ndim, name=name, path=path, layer="image", unit_ok=unit_ok
    )
    block["dtype"] = dtype
    labels = _normalized(record)["spatial"]["axis_labels"]
    channel = None
    if labels is not None:
        channel = next((k for k, a in enumerate(orient.perm) if labels[a] == "channel"), None)
    shape = _normalized(record)["spatial"]["shape"]
    if channel is None or shape is None:
        block["as_read"] = _as_read(kw)
        kw["metadata"] = {KEY: block}
        kw["contrast_limits"] = contrast_limits
        return kw
    n_ch = int(shape[orient.perm[channel]])
    per = _drop_axis(kw, channel)
    out: dict[str, Any] = {"channel_axis": channel}
    for key in ("scale", "translate", "axis_labels", "units"):
        out[key] = [per[key]] * n_ch if per.get(key) is not None else None
    out["rotate"], out["shear"] = per["rotate"], per["shear"]  # napari repeats these itself
    if out["axis_labels"] is None:
        del out["axis_labels"]
    if out["units"] is None:
        del out["units"]
    out["name"] = [f"{name} [{c}]" for c in range(n_ch)]
    metas = []
    for c in range(n_ch):
        b = copy.deepcopy(block)
        b["channel"] = {"axis": orient.perm[channel], "view_axis": channel, "index": c}
        b["as_read"] = _as_read(per)
        metas.append({KEY: b})
    out["metadata"] = metas
    if contrast_limits is not None and np.ndim(contrast_limits) == 1:
        contrast_limits = [tuple(contrast_limits)] * n_ch
    if contrast_limits is not None:
        contrast_limits = [tuple(c) for c in contrast_limits]
    out["contrast_limits"] = contrast_limits
    return out


def labels_layer_kwargs(
    record: dict,
    ndim: int,
    *,
    name: str,
    path: str | None = None,
    dtype: str | None = None,
    unit_ok=None,
) -> dict:
    """``viewer.add_labels`` keywords (data excluded); every axis stays a slider axis.

    Parameters
    ----------
    record : dict
        The ``.mla`` record.
    ndim : int
        Number of stored axes.
    name : str
        Layer name.
    path : str, optional
        File the layer came from.
    dtype : str, optional
        Stored dtype (the reader may cast float masks to integers; a save casts back).
    unit_ok : callable, optional
        As in :func:`image_layer_kwargs`.

    Returns
    -------
    dict
    """
    kw, _, block = _layer_common(
        record, ndim, name=name, path=path, layer="labels", unit_ok=unit_ok
    )
    block["dtype"] = dtype
    block["as_read"] = _as_read(kw)
    kw["metadata"] = {KEY: block}
    return kw


def label_dtype(lo: float, hi: float) -> np.dtype:
    """Smallest integer dtype holding every value in ``[lo, hi]``.

    Parameters
    ----------
    lo, hi : float

    Returns
    -------
    numpy.dtype
    """
    candidates = ("uint8", "uint16", "uint32", "uint64") if lo >= 0 else ("int8", "int16", "int32")
    for name in (*candidates, "int64"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return np.dtype(name)
    raise ValueError(f"label values [{lo}, {hi}] do not fit any integer dtype")


# --------------------------------------------------------------------------- boxes


def _box_axes(record: dict, ndim: int, n_box_axes: int) -> list[int]:
    """Stored axes a box's entries refer to: all axes, or the spatial ones."""
    if n_box_axes == ndim:
        return list(range(ndim))
    mask = spatial_mask(record, ndim)
    if n_box_axes == sum(mask):
        return [a for a in range(ndim) if mask[a]]
    raise ValueError(f"bbox has {n_box_axes} axes but the array has {ndim} ({sum(mask)} spatial)")


def _label_text(label: Any) -> str:
    return "" if label is None else str(label)


def _rectangles(box_view: list[tuple[float, float]]) -> list[np.ndarray]:
    """Rectangles (4 x m vertices, data coordinates) drawing one box in view order.

    Voxel ``i`` spans ``[i - 0.5, i + 0.5]`` in napari data coordinates, so a box
    ``[min, max)`` has edges at ``min - 0.5`` and ``max - 0.5`` in the displayed
    axes, and a rectangle on every slice it overlaps in the leading axes.
    """
    *lead, (r0, r1), (c0, c1) = box_view
    ranges = [range(math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)) for lo, hi in lead]
    corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
    out = []
    for idx in np.ndindex(*[len(r) for r in ranges]) if ranges else [()]:
        lead_pos = [ranges[i][j] for i, j in enumerate(idx)]
        out.append(np.array([[*lead_pos, r - 0.5, c - 0.5] for r, c in corners], dtype=float))
    return out


def shapes_layer_data(
    record: dict,
    ndim: int | None,
    *,
    name: str,
    path: str | None = None,
    skip_axes=(),
    unit_ok=None,
) -> tuple[list[np.ndarray], dict] | None:
    """Shapes data and ``viewer.add_shapes`` keywords for the record's boxes.

    Parameters
    ----------
    record : dict
        The ``.mla`` record.
    ndim : int or None
        Number of stored axes (``None`` for a boxes-only file: taken from the boxes).
    name : str
        Layer name.
    path : str, optional
        File the boxes came from.
    skip_axes : sequence of int
        Stored axes left out of the Shapes layer (a ``channel`` axis split into
        image layers); the writer restores them from the stored boxes.
    unit_ok : callable, optional
        As in :func:`image_layer_kwargs`.

    Returns
    -------
    (list of numpy.ndarray, dict) or None
        ``None`` when the record holds no boxes (or they have fewer than 2 axes).
    """
    rec = _normalized(record)
    bbox = rec["bbox"]
    boxes = bbox["bboxes"]
    if not boxes:
        return None
    n_box = len(boxes[0])
    ndim = n_box if ndim is None else ndim
    axes = _box_axes(rec, ndim, n_box)
    sub = _normalized(rec)
    if len(axes) != ndim:  # geometry is over the spatial axes only: show those
        sub["spatial"]["axis_labels"] = None
        if rec["spatial"]["axis_units"] is not None:
            sub["spatial"]["axis_units"] = [rec["spatial"]["axis_units"][a] for a in axes]
    kw, orient, block = _layer_common(
        sub, len(axes), name=name, path=path, layer="shapes", unit_ok=unit_ok
    )
    block["record"] = rec
    shown = [k for k, p in enumerate(orient.perm) if axes[p] not in set(skip_axes)]
    if len(shown) < 2:
        return None
    if len(shown) != len(orient.perm):
        kw = _drop_axes(kw, [k for k in range(len(orient.perm)) if k not in shown])
    data, box_id, labels, scores = [], [], [], []
    for i, box in enumerate(boxes):
        if len(box) != n_box:
            raise ValueError(f"bbox {i} has {len(box)} axes, expected {n_box}")
        view = [tuple(float(v) for v in box[orient.perm[k]]) for k in shown]
        rects = _rectangles(view)
        data += rects
        box_id += [i] * len(rects)
        lab = None if bbox["labels"] is None else bbox["labels"][i]
        labels += [_label_text(lab)] * len(rects)
        sc = None if bbox["scores"] is None else bbox["scores"][i]
        scores += [math.nan if sc is None else float(sc)] * len(rects)
    block["box_axes"] = axes
    block["shown_axes"] = [axes[orient.perm[k]] for k in shown]  # stored axis per Shapes dim
    block["as_read"] = _as_read(kw)
    kw["metadata"] = {KEY: block}
    kw.update(
        shape_type="rectangle",
        features={"box": box_id, "label": labels, "score": scores},
        feature_defaults={"box": -1, "label": "", "score": math.nan},
        edge_color="label",
        edge_color_cycle=BOX_COLORS,
        face_color="transparent",
        edge_width=1.0,
        text={
            "string": "{label} {score:.2f}" if bbox["scores"] is not None else "{label}",
            "color": "white",
            "anchor": "upper_left",
            "size": 10,
        },
        ndim=len(shown),
    )
    return data, kw


def _drop_axes(kw: dict, ks: list[int]) -> dict:
    for k in sorted(ks, reverse=True):
        kw = _drop_axis(kw, k)
    return kw


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Undo:
    """How to put layer data back into stored order: ``LazyView(data, **undo.view_kwargs)``.

    Attributes
    ----------
    perm : tuple of int
        Stored axis ``a`` is layer axis ``perm[a]``.
    insert : tuple of int
        Stored positions of length-1 axes the layer does not have (a split channel).
    dtype : str or None
        Stored dtype to cast back to (``None``: keep).
    """

    perm: tuple[int, ...]
    insert: tuple[int, ...] = ()
    dtype: str | None = None

    @property
    def identity(self) -> bool:
        """True when the data can be saved as it is."""
        return self.perm == tuple(range(len(self.perm))) and not self.insert and self.dtype is None

    @property
    def view_kwargs(self) -> dict:
        """Keyword arguments of :class:`napari_mlarray._lazy.LazyView`."""
        return {"perm": self.perm, "insert": self.insert, "dtype": self.dtype}


def _layer_matrix(meta: dict, ndim: int) -> np.ndarray:
    return affine_from_layer(
        ndim,
        scale=meta.get("scale"),
        translate=meta.get("translate"),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        affine=meta.get("affine"),
    )


def _norm_labels(labels, ndim: int) -> list | None:
    if labels is None:
        return None
    out = [None if _is_default_label(x, k, ndim) else str(x) for k, x in enumerate(labels)]
    return None if all(x is None for x in out) else out


def _norm_units(units) -> list | None:
    if units is None:
        return None
    out = [short_unit(u) for u in units]
    return None if all(u is None for u in out) else out


def _unchanged(meta: dict, as_read: dict, ndim: int) -> tuple[bool, bool, bool]:
    """(geometry, axis_labels, units) of the layer equal what the reader handed napari."""
    read_m = affine_from_layer(
        ndim,
        scale=as_read["scale"],
        translate=as_read["translate"],
        rotate=as_read["rotate"],
        shear=as_read["shear"],
    )
    geom = np.allclose(_layer_matrix(meta, ndim), read_m, rtol=_GEOM_TOL, atol=_GEOM_TOL)
    labels = _norm_labels(meta.get("axis_labels"), ndim) == _norm_labels(
        as_read["axis_labels"], ndim
    )
    units = _norm_units(meta.get("units")) == _norm_units(as_read["units"])
    return geom, labels, units


def _mla_label(label: str | None) -> str | None:
    if label is None:
        return None
    return _LABEL_ALIASES.get(label.lower(), label)


def _spatial_from_matrix(
    T: np.ndarray, spatial_view: list[int], frame: np.ndarray, order: list[int], form: str
) -> dict:
    """Record geometry (file world) from a layer matrix over its view axes.

    ``spatial_view``: layer axes that are spatial (napari order); ``order[k]``:
    stored spatial index shown at napari spatial position ``k``.
    """
    n = len(spatial_view)
    M_view = T[np.ix_(spatial_view, spatial_view)]
    t = T[spatial_view, -1]
    M_store = np.empty_like(M_view)
    for k, j in enumerate(order):
        M_store[:, j] = M_view[:, k]
    A = np.eye(n + 1)
    A[:n, :n] = frame.T @ M_store
    A[:n, n] = frame.T @ t
    if form == "affine":
        return {"affine": A.tolist(), "spacing": None, "origin": None, "direction": None}
    spacing = np.linalg.norm(A[:n, :n], axis=0)
    direction = A[:n, :n] / np.where(spacing == 0, 1.0, spacing)[None, :]
    return {
        "spacing": spacing.tolist(),
        "origin": A[:n, n].tolist(),
        "direction": direction.tolist(),
        "affine": None,
    }


def record_from_layer(
    shape: tuple[int, ...], dtype: Any, meta: dict, layer_type: str
) -> tuple[dict, Undo]:
    """Record and data undo for one image/labels layer (``meta`` of ``as_layer_data_tuple``).

    A layer opened by this plugin keeps its stored record; the geometry, axis
    labels and units are kept verbatim unless the layer's transforms, labels or
    units changed, and then re-derived from the layer in the file's own world
    frame and axis order. A layer made in napari gets its geometry from its
    transforms, stored in view order with no ``coord_system``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the layer data.
    dtype : dtype-like
        Dtype of the layer data.
    meta : dict
        The layer's ``as_layer_data_tuple()[1]``.
    layer_type : str
        ``"image"`` or ``"labels"``.

    Returns
    -------
    (dict, Undo)
    """
    ndim = len(shape)
    T = _layer_matrix(meta, ndim)
    block = (meta.get("metadata") or {}).get(KEY)
    if block is not None and block.get("layer") in ("image", "labels"):
        return _record_from_read_layer(shape, meta, layer_type, block, T)
    rec = default_record()
    labels = _norm_labels(meta.get("axis_labels"), ndim)
    mla_labels = None if labels is None else [_mla_label(x) or "spatial" for x in labels]
    if mla_labels is not None and all(x == "spatial" for x in mla_labels):
        mla_labels = None
    sp = rec["spatial"]
    sp["axis_labels"] = mla_labels
    sp["axis_units"] = _norm_units(meta.get("units"))
    mask = [True] * ndim if mla_labels is None else [is_spatial_label(x) for x in mla_labels]
    spatial_view = [k for k in range(ndim) if mask[k]]
    n = len(spatial_view)
    if n:
        rev = np.eye(n)[::-1]  # file world = napari world reversed (ITK x, y, z order)
        linear = T[np.ix_(spatial_view, spatial_view)]
        gram = linear.T @ linear
        orthogonal = np.allclose(gram, np.diag(np.diag(gram)), rtol=0, atol=1e-9 * gram.max())
        form = "spacing" if orthogonal else "affine"
        sp.update(_spatial_from_matrix(T, spatial_view, rev, list(range(n)), form))
    rec["is_seg"]["is_seg"] = True if layer_type == "labels" else None
    return rec, Undo(tuple(range(ndim)))


def _record_from_read_layer(shape, meta, layer_type, block, T) -> tuple[dict, Undo]:
    rec = _normalized(block["record"])
    perm = list(block["perm"])
    stored_ndim = len(perm)
    ndim = len(shape)
    channel = block.get("channel")
    view_axes = list(range(stored_ndim))  # stored view positions present in the layer
    if channel is not None:
        view_axes.remove(channel["view_axis"])
    if len(view_axes) != ndim:
        raise ValueError(f"layer has {ndim} axes, its .mla record {stored_ndim}")
    geom_same, labels_same, units_same = _unchanged(meta, block["as_read"], ndim)
    sp = rec["spatial"]
    spatial_stored = spatial_mask(rec, stored_ndim)
    if not geom_same:
        spatial_view = [i for i, k in enumerate(view_axes) if spatial_stored[perm[k]]]
        sp_axes = [a for a in range(stored_ndim) if spatial_stored[a]]
        order = [sp_axes.index(perm[view_axes[i]]) for i in spatial_view]
        form = "affine" if sp.get("affine") is not None else "spacing"
        sp.update(
            _spatial_from_matrix(
                T, spatial_view, np.asarray(block["frame"], dtype=float), order, form
            )
        )
    if not labels_same:
        new = _norm_labels(meta.get("axis_labels"), ndim)
        if new is not None:
            stored = list(sp["axis_labels"] or ["spatial"] * stored_ndim)
            for i, k in enumerate(view_axes):
                stored[perm[k]] = _mla_label(new[i]) or stored[perm[k]]
            sp["axis_labels"] = stored
    if not units_same:
        new = _norm_units(meta.get("units"))
        stored = list(sp["axis_units"] or [None] * stored_ndim)
        for i, k in enumerate(view_axes):
            stored[perm[k]] = None if new is None else new[i]
        sp["axis_units"] = None if all(u is None for u in stored) else stored
    if layer_type == "labels":
        rec["is_seg"]["is_seg"] = True
        rec["stats"] = default_record()["stats"]  # painted data: stored stats may be stale
    # stored axis a <- layer axis: view position of a, minus the split channel
    stored_to_view = {perm[k]: k for k in range(stored_ndim)}
    undo_perm, insert = [], []
    for a in range(stored_ndim):
        k = stored_to_view[a]
        if channel is not None and k == channel["view_axis"]:
            insert.append(a)
            continue
        undo_perm.append(view_axes.index(k))
    dtype = block.get("dtype")
    return rec, Undo(tuple(undo_perm), tuple(insert), dtype)


def _shape_bounds(vertices: np.ndarray) -> list[tuple[float, float]]:
    """Box ``[min, max)`` (index coordinates) of one shape; leading axes are slices."""
    v = np.asarray(vertices, dtype=float)
    out = []
    m = v.shape[1]
    for d in range(m):
        lo, hi = float(v[:, d].min()), float(v[:, d].max())
        if d < m - 2:
            s = math.floor(lo + 0.5)
            out.append((float(s), float(math.floor(hi + 0.5) + 1)))
        else:
            out.append((lo + 0.5, hi + 0.5))
    return out


def _clean_number(x: float) -> float | int:
    r = round(x)
    return int(r) if abs(x - r) < 1e-6 else float(x)


def boxes_from_shapes(
    shapes: list[tuple[Any, dict]], *, target: dict | None = None
) -> tuple[dict, dict | None]:
    """``bbox`` section from Shapes layers (``(data, meta)`` pairs).

    Rectangles read from a file are grouped back into their box by the
    ``box`` feature, and a box whose rectangles are unchanged is written
    exactly as stored (float extents, axes not shown). Other shapes become one
    box each from their bounds (a rectangle on slice ``s`` spans ``[s, s+1)``).

    Parameters
    ----------
    shapes : list of (data, meta)
        Shapes layer data (list of vertex arrays) and ``as_layer_data_tuple`` meta.
    target : dict, optional
        The image/labels layer saved alongside: ``{"axes": stored axis of each
        layer dim, "shape": stored shape, "matrix": layer data-to-world matrix}``.
        Boxes are then in its stored index order; shapes are mapped into its
        data coordinates through world coordinates.

    Returns
    -------
    (dict, dict or None)
        The ``bbox`` section, and the record of the first Shapes layer opened
        from a file (used for a boxes-only save), if any.
    """
    entries = []  # (box, box_axes, label, score)
    base_record = None
    full_shape = None if target is None else list(target["shape"])
    for data, meta in shapes:
        block = (meta.get("metadata") or {}).get(KEY)
        if block is not None and block.get("layer") != "shapes":
            block = None
        data = [np.asarray(d, dtype=float) for d in data]
        m = int(meta.get("ndim") or (data[0].shape[1] if data else 0))
        stored = None
        if block is not None:
            rec = _normalized(block["record"])
            if base_record is None:
                base_record = rec
            if full_shape is None and rec["spatial"]["shape"] is not None:
                full_shape = list(rec["spatial"]["shape"])
            rb = rec["bbox"]
            stored = (rb["bboxes"] or [], rb["scores"], rb["labels"])
        same_file = block is not None and (
            target is None
            or (block.get("path") is not None and block["path"] == target.get("path"))
        )
        if same_file:
            box_axes, dims = list(block["box_axes"]), list(block["shown_axes"])
        elif target is not None:
            if m > len(target["axes"]):
                raise ValueError(f"a {m}-d Shapes layer cannot box a {len(target['axes'])}-d layer")
            box_axes = sorted(target["axes"])
            dims = list(target["axes"])[len(target["axes"]) - m :]
        else:
            box_axes, dims = list(range(m)), list(range(m))
        if target is not None:
            data = _to_target(data, meta, m, np.asarray(target["matrix"], dtype=float))
        col = _feature_columns(meta.get("features"), len(data))
        groups: dict[tuple, list[int]] = {}
        for i in range(len(data)):
            bid = col["box"][i]
            known = stored is not None and bid is not None and 0 <= bid < len(stored[0])
            groups.setdefault(("file", bid) if known else ("new", i), []).append(i)
        if not same_file:  # grouped by box id, but no stored box to compare with
            groups = {("new", k[1] if k[0] == "file" else -1 - k[1]): v for k, v in groups.items()}
        for (kind, bid), idx in groups.items():
            bounds = [_shape_bounds(data[i]) for i in idx]
            merged = [
                (min(b[d][0] for b in bounds), max(b[d][1] for b in bounds)) for d in range(m)
            ]
            label, score = col["label"][idx[0]], col["score"][idx[0]]
            box = None
            if kind == "file":
                sboxes, sscores, slabels = stored
                original = sboxes[bid]
                if slabels is not None and label == _label_text(slabels[bid]):
                    label = slabels[bid]
                if sscores is not None and _same_score(score, sscores[bid]):
                    score = sscores[bid]
                expected = [tuple(float(v) for v in original[box_axes.index(a)]) for a in dims]
                rects = _rectangles(expected)
                same = len(rects) == len(idx) and all(
                    np.allclose(np.sort(r, axis=0), np.sort(data[i], axis=0), atol=1e-6)
                    for r, i in zip(rects, idx, strict=True)
                )
                box = copy.deepcopy(list(original)) if same else [list(p) for p in original]
                if not same:
                    for d, a in enumerate(dims):
                        box[box_axes.index(a)] = [_clean_number(v) for v in merged[d]]
            else:
                box = [_full_extent(full_shape, a) for a in box_axes]
                for d, a in enumerate(dims):
                    box[box_axes.index(a)] = [_clean_number(v) for v in merged[d]]
            if isinstance(label, str) and label == "":
                label = None
            if isinstance(score, float) and math.isnan(score):
                score = None
            entries.append((box, box_axes, label, score))
    if not entries:
        return {"bboxes": None, "scores": None, "labels": None}, base_record
    axes_sets = {tuple(e[1]) for e in entries}
    if len(axes_sets) > 1:  # mixed spatial-only and full boxes: write full boxes
        n_full = len(full_shape) if full_shape is not None else max(max(a) for a in axes_sets) + 1
        widened = []
        for box, axes, label, score in entries:
            full = [_full_extent(full_shape, a) for a in range(n_full)]
            for i, a in enumerate(axes):
                full[a] = box[i]
            widened.append((full, list(range(n_full)), label, score))
        entries = widened
    boxes = [e[0] for e in entries]
    labels = [e[2] for e in entries]
    scores = [e[3] for e in entries]
    return {
        "bboxes": boxes,
        "scores": scores if any(s is not None for s in scores) else None,
        "labels": labels if any(x is not None for x in labels) else None,
    }, base_record


def _full_extent(shape, axis: int) -> list[int]:
    return [0, int(shape[axis])] if shape is not None and axis < len(shape) else [0, 1]


def _to_target(data: list[np.ndarray], meta: dict, m: int, T_img: np.ndarray) -> list:
    """Map Shapes data coordinates into the target layer's data coordinates (trailing dims)."""
    nd = T_img.shape[0] - 1
    sub = list(range(nd - m, nd))
    T_sub = np.eye(m + 1)
    T_sub[:m, :m] = T_img[np.ix_(sub, sub)]
    T_sub[:m, m] = T_img[sub, -1]
    to_img = np.linalg.solve(T_sub, _layer_matrix(meta, m))
    if np.allclose(to_img, np.eye(m + 1), atol=1e-9):
        return data
    return [(to_img @ np.c_[d, np.ones(len(d))].T).T[:, :m] for d in data]


def _same_score(a, b) -> bool:
    if b is None:
        return a is None or (isinstance(a, float) and math.isnan(a))
    return a is not None and math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)


def _feature_columns(features, n: int) -> dict[str, list]:
    """``box``/``label``/``score`` per shape from a features table (DataFrame or dict)."""
    out: dict[str, list] = {"box": [None] * n, "label": [""] * n, "score": [math.nan] * n}
    if features is None:
        return out
    for key in out:
        try:
            values = list(features[key])
        except (KeyError, TypeError):
            continue
        if len(values) != n:
            continue
        if key == "box":
            out[key] = [
                None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                for v in values
            ]
        elif key == "label":
            out[key] = ["" if v is None else str(v) for v in values]
        else:
            out[key] = [math.nan if v is None else float(v) for v in values]
    return out
