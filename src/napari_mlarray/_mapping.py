"""Pure mapping between ``.mla`` records and napari Image/Labels layer keyword dicts.

No napari or Qt import: everything here takes and returns plain dicts, lists
and numpy arrays, so it is tested without a viewer. Boxes (Shapes layers) are
in :mod:`napari_mlarray._boxes`, the orientation in
:mod:`napari_mlarray._orientation`.

Reading: :func:`image_layer_kwargs` and :func:`labels_layer_kwargs` build the
``viewer.add_*`` keywords. Each layer's ``metadata["mlarray"]`` keeps the full
record plus what the reader did (see :mod:`napari_mlarray._layer_common`), so
:func:`record_from_layer` can undo it exactly.

Writing: :func:`record_from_layer` turns a layer's ``(data shape, meta)`` into a
record and an :class:`Undo` (how to lazily put the data back into stored
order and dtype).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlarray.meta import Meta, MetaStatistics, is_colour_axis, is_spatial_label
from napari_mlarray._layer_common import KEY, as_read, common_layer_kwargs, drop_axes, with_metadata
from napari_mlarray._orientation import (
    ANATOMY_LABELS,
    Orientation,
    as_meta,
    display_frame,
    layer_matrix,
    spatial_mask,
)

__all__ = [
    "Undo",
    "channel_layers_axis",
    "contrast_limits_from_sample",
    "contrast_limits_from_stats",
    "image_layer_kwargs",
    "label_dtype",
    "labels_layer_kwargs",
    "read_layer_axes",
    "record_from_layer",
    "rgb_kwargs",
    "rgb_view_axis",
    "short_unit",
]

_GEOM_TOL = 1e-9
_LABEL_ALIASES = {
    "x": "spatial_x",
    "y": "spatial_y",
    "z": "spatial_z",
    # the reader's anatomy labels: spatial, and a stored label stays as it is
    **{label.lower(): None for label in ANATOMY_LABELS},
    "c": "channel",
    "t": "temporal",
    "time": "temporal",
}


# --------------------------------------------------------------------------- reading


def _finite(v: Any) -> bool:
    """Whether ``v`` is a finite number (a statistic that was computed)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def contrast_limits_from_stats(record: Meta | dict) -> tuple[float, float] | None:
    """Initial contrast limits from ``stats`` (percentile window first, then min/max).

    Parameters
    ----------
    record : Meta or dict

    Returns
    -------
    tuple of float or None
    """
    stats = as_meta(record).stats
    for lo_key, hi_key in (("percentile_min", "percentile_max"), ("min", "max")):
        lo, hi = getattr(stats, lo_key), getattr(stats, hi_key)
        if _finite(lo) and _finite(hi) and hi > lo:
            return float(lo), float(hi)
    return None


def contrast_range(record: Meta | dict, dtype, window, *, whole: bool = False):
    """The span the layer controls' contrast slider offers, around the initial window.

    napari makes a layer's ``contrast_limits_range`` (the slider's ends) the
    ``contrast_limits`` it was given, so a percentile window, or the range of the one
    plane sampled, would also be the widest window one can drag to. The slider spans:

    - the ``stats`` min/max when the file holds them (every channel alike);
    - else, for 8-bit integers, the type's range (256 grey values);
    - else nothing wider when ``whole`` (the window is the min/max of every value:
      napari's own range);
    - else the window widened by its own width on each side (not below 0 when the
      window's low end is not negative, never past an integer type's range): the data
      sampled fill at least a third of the slider, and values up to twice as far from
      the window as its width can be reached by dragging. A 16-bit type's whole range
      would leave a CT or MR a few slider pixels (hundreds of grey values per pixel).

    Always at least the window. None: no wider span (the window's, as napari does).

    Parameters
    ----------
    record : Meta or dict
    dtype : numpy dtype
        The stored data's dtype.
    window : tuple of float, or a list of them (one per channel layer)
        The initial contrast limits.
    whole : bool
        Whether the window is the min/max of every value of the data (a plane read
        whole, not subsampled, and the layer has no slider axes).

    Returns
    -------
    tuple of float or None, or a list of them (one per window given as a list)
    """
    if not window:
        return None
    several = isinstance(window[0], tuple | list)
    windows = [(float(w[0]), float(w[1])) for w in (window if several else [window])]
    stats = as_meta(record).stats
    dtype = np.dtype(dtype)
    if _finite(stats.min) and _finite(stats.max) and stats.max > stats.min:
        span = (float(stats.min), float(stats.max))
        spans = [span] * len(windows)
    elif dtype.kind in "iu" and dtype.itemsize == 1:
        info = np.iinfo(dtype)
        spans = [(float(info.min), float(info.max))] * len(windows)
    elif whole or dtype.kind not in "iuf":
        spans = [None] * len(windows)
    else:
        spans = [_widened(w, dtype) for w in windows]
    out = [
        None if s is None else (min(s[0], w[0]), max(s[1], w[1]))
        for s, w in zip(spans, windows, strict=True)
    ]
    return out if several else out[0]


def _widened(window: tuple[float, float], dtype: np.dtype) -> tuple[float, float]:
    """``window`` widened by its width on each side, within the dtype (see
    :func:`contrast_range`)."""
    lo, hi = window
    width = hi - lo
    low = lo - width if lo < 0 else max(0.0, lo - width)
    high = hi + width
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = max(low, float(info.min)), min(high, float(info.max))
    return low, high


def sample_is_whole(shape, max_elements: int = 1_000_000) -> bool:
    """Whether :func:`contrast_limits_from_sample` of data of ``shape`` reads every value
    (one plane: every slider axis 1 long; not subsampled)."""
    shape = [int(n) for n in shape]
    return math.prod(shape[:-2]) == 1 and math.prod(shape[-2:]) <= max_elements


def first_plane(shape, scale=None) -> tuple[int, ...]:
    """Index, along each slider axis (all but the last two), of the plane napari shows
    first in a new viewer: the middle step ``int((n - 1) / 2)`` of each slider, counted
    from the start of the world range, which is the last index along an axis with a
    negative scale (a flipped axis). With an oblique ``rotate`` it is a plane near the
    middle.

    Parameters
    ----------
    shape : sequence of int
        Shape in view order.
    scale : sequence of float, optional
        The layer's ``scale`` (view order); None for all positive.

    Returns
    -------
    tuple of int
    """
    lead = [int(n) for n in shape[:-2]]
    signs = [1.0] * len(lead) if scale is None else [float(s) for s in scale[: len(lead)]]
    return tuple(
        (n - 1) // 2 if s >= 0 else n - 1 - (n - 1) // 2 for n, s in zip(lead, signs, strict=True)
    )


def contrast_limits_from_sample(
    data, max_elements: int = 1_000_000, scale=None
) -> tuple[float, float]:
    """Contrast limits from one plane of ``data``: the plane napari shows first
    (:func:`first_plane`), so that the reader decodes no plane napari does not show.

    Reads a single 2-D plane (napari's first displayed plane), then a strided
    subsample of it, never the volume.

    Parameters
    ----------
    data : array-like
        Lazy data in view order.
    max_elements : int
        Cap on the elements the statistics are computed over.
    scale : sequence of float, optional
        The layer's ``scale`` in view order (see :func:`first_plane`).

    Returns
    -------
    tuple of float
    """
    key = first_plane(data.shape, scale) + (slice(None),) * min(2, data.ndim)
    plane = np.asarray(data[key])
    step = max(1, math.ceil(math.sqrt(plane.size / max_elements)))
    sample = plane[(slice(None, None, step),) * plane.ndim].astype(float, copy=False)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


#: Files with more channels than this open as one layer with a channel slider, not one
#: layer per channel (napari slows down with every layer added: 800 took 135 s).
MAX_CHANNEL_LAYERS = 16


def image_layer_kwargs(
    record: Meta | dict,
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
    With more than :data:`MAX_CHANNEL_LAYERS` channels the axis stays a slider of one
    layer instead.

    Parameters
    ----------
    record : Meta or dict
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
    kw, orient, block = common_layer_kwargs(
        record, ndim, name=name, path=path, layer="image", unit_ok=unit_ok
    )
    block["dtype"] = dtype
    if orient.n_spatial >= 3:  # a CT/MR volume in 3D: surfaces, not a saturated MIP blob
        kw["rendering"] = "attenuated_mip"
    colour = rgb_view_axis(record, orient, dtype)
    if colour is not None:
        return rgb_kwargs(kw, block, colour)
    channel = channel_layers_axis(record, orient)  # None also without a known shape
    if channel is None:
        with_metadata(kw, block)
        kw["contrast_limits"] = contrast_limits
        return kw
    n_ch = int(as_meta(record).spatial.shape[orient.perm[channel]])
    per = drop_axes(kw, [channel])
    out: dict[str, Any] = {"channel_axis": channel}
    for key in ("scale", "translate", "axis_labels", "units"):
        out[key] = [per[key]] * n_ch if per.get(key) is not None else None
    out["rotate"], out["shear"] = per["rotate"], per["shear"]  # napari repeats these itself
    if "rendering" in kw:
        out["rendering"] = kw["rendering"]
    if out["axis_labels"] is None:
        del out["axis_labels"]
    if out["units"] is None:
        del out["units"]
    out["name"] = [f"{name} [{c}]" for c in range(n_ch)]
    metas = []
    for c in range(n_ch):
        b = copy.deepcopy(block)
        b["channel"] = {"axis": orient.perm[channel], "view_axis": channel, "index": c}
        b["as_read"] = as_read(per)
        metas.append({KEY: b})
    out["metadata"] = metas
    if contrast_limits is not None and np.ndim(contrast_limits) == 1:
        contrast_limits = [tuple(contrast_limits)] * n_ch
    if contrast_limits is not None:
        contrast_limits = [tuple(c) for c in contrast_limits]
    out["contrast_limits"] = contrast_limits
    return out


def _channel_view_axis(record: Meta | dict, orient: Orientation) -> int | None:
    """The view axis of the record's ``channel`` axis (None without one)."""
    labels = as_meta(record).spatial.axis_labels
    if labels is None:
        return None
    return next((k for k, a in enumerate(orient.perm) if labels[a] == "channel"), None)


def channel_layers_axis(record: Meta | dict, orient: Orientation) -> int | None:
    """The view axis the reader splits into one image layer per channel (the boxes then
    open over the other axes); None when there is none (no ``channel`` axis, or more
    than :data:`MAX_CHANNEL_LAYERS` channels: napari's cost per added layer grows with
    the layers there are, thousands of one-channel layers freeze it for minutes, so
    those channels stay a slider axis). Not for an RGB(A) picture (:func:`rgb_view_axis`)."""
    channel = _channel_view_axis(record, orient)
    shape = as_meta(record).spatial.shape
    if channel is None or shape is None:
        return None
    if int(shape[orient.perm[channel]]) > MAX_CHANNEL_LAYERS:
        return None
    return channel


def rgb_view_axis(record: Meta | dict, orient: Orientation, dtype: str | None) -> int | None:
    """The view axis holding the colours of an RGB(A) picture, which napari shows as one
    RGB layer; None for any other array.

    The colours are a ``channel`` axis that :func:`mlarray.meta.is_colour_axis` accepts
    (as the plugin's writer and ``mlarray convert`` store colour pictures: the last
    axis, 3 or 4 long, of 8-bit data).
    """
    channel = _channel_view_axis(record, orient)
    shape = as_meta(record).spatial.shape
    if channel is None or shape is None or not is_colour_axis(shape, orient.perm[channel], dtype):
        return None
    return channel


def rgb_kwargs(kw: dict, block: dict, channel: int) -> dict:
    """``viewer.add_image`` keywords of an RGB(A) layer: the ``channel`` view axis moved last,
    as napari's colour axis (the layer's transforms then cover the other axes).

    The block records the full keywords with the colour axis last (``as_read``, ``perm``),
    which is what the writer turns an RGB layer back into
    (:func:`napari_mlarray._writer.save_layers`).
    """
    ndim = len(block["perm"])
    order = [k for k in range(ndim) if k != channel] + [channel]
    full = dict(kw)
    for key in ("scale", "translate"):
        full[key] = np.asarray(kw[key])[order]
    for key in ("rotate", "shear"):
        full[key] = np.asarray(kw[key])[np.ix_(order, order)]
    for key in ("axis_labels", "units"):
        if kw.get(key) is not None:
            full[key] = [kw[key][k] for k in order]
    for key in ("perm", "flip"):  # per view axis
        if block.get(key) is not None:
            block[key] = [block[key][k] for k in order]
    block["rgb"] = True
    block["as_read"] = as_read(full)
    out = drop_axes(full, [ndim - 1])
    out.pop("rendering", None)
    out.update(rgb=True, contrast_limits=None, metadata={KEY: block})
    return out


def labels_layer_kwargs(
    record: Meta | dict,
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
    record, ndim, name, path, unit_ok
        As in :func:`image_layer_kwargs`.
    dtype : str, optional
        Stored dtype (the reader may cast float masks to integers; a save casts back).

    Returns
    -------
    dict
    """
    kw, _, block = common_layer_kwargs(
        record, ndim, name=name, path=path, layer="labels", unit_ok=unit_ok
    )
    block["dtype"] = dtype
    return with_metadata(kw, block)


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
    flip: tuple[bool, ...] = ()

    @property
    def identity(self) -> bool:
        """True when the data can be saved as it is."""
        return (
            self.perm == tuple(range(len(self.perm)))
            and not self.insert
            and self.dtype is None
            and not any(self.flip)
        )

    @property
    def view_kwargs(self) -> dict:
        """Keyword arguments of :class:`napari_mlarray._lazy.LazyView`."""
        flip = self.flip or (False,) * len(self.perm)
        return {"perm": self.perm, "insert": self.insert, "dtype": self.dtype, "flip": flip}

    def stored_matrix(self, T: np.ndarray, shape) -> np.ndarray:
        """The layer's data-to-world matrix ``T`` for its data with the reversed axes
        put back (as stored): index ``v`` of a reversed layer axis of length ``N`` is
        layer index ``N - 1 - v``.

        Parameters
        ----------
        T : numpy.ndarray
            ``(ndim + 1, ndim + 1)`` data-to-world matrix of the layer.
        shape : sequence of int
            The layer data's shape.
        """
        return T @ _unflip_matrix(_layer_flips(self.perm, self.flip), shape)


def _layer_flips(perm, flip) -> list[bool]:
    """Per layer axis: reversed (``flip`` is given per stored axis of ``perm``)."""
    out = [False] * len(perm)
    for j, f in enumerate(flip or ()):
        out[perm[j]] = bool(f)
    return out


def _unflip_matrix(flips, shape) -> np.ndarray:
    """Index ``v`` -> ``N - 1 - v`` along the reversed axes, as a homogeneous matrix."""
    n = len(flips)
    G = np.eye(n + 1)
    for k, f in enumerate(flips):
        if f:
            G[k, k], G[k, n] = -1.0, float(shape[k]) - 1.0
    return G


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


def _or_none(values: list) -> list | None:
    """``values``, or ``None`` when every entry is ``None``."""
    return None if all(v is None for v in values) else values


def _norm_labels(labels, ndim: int) -> list | None:
    if labels is None:
        return None
    return _or_none(
        [None if _is_default_label(x, k, ndim) else str(x) for k, x in enumerate(labels)]
    )


def _norm_units(units) -> list | None:
    if units is None:
        return None
    return _or_none([short_unit(u) for u in units])


#: What an axis without a physical unit (napari's "pixel") is stored as in a list of units
#: whose other axes have one: the format's ``axis_units`` entries are strings.
_NO_UNIT = "pixel"


def _stored_units(units: list | None) -> list[str] | None:
    """``spatial.axis_units`` for per-axis short units (``None``: no unit), or ``None`` for none."""
    units = _or_none(list(units)) if units is not None else None
    return None if units is None else [_NO_UNIT if u is None else u for u in units]


def _unchanged(meta: dict, read: dict, ndim: int) -> tuple[bool, bool, bool]:
    """(geometry, axis_labels, units) of the layer equal what the reader handed napari."""
    geom = np.allclose(
        layer_matrix(meta, ndim), layer_matrix(read, ndim), rtol=_GEOM_TOL, atol=_GEOM_TOL
    )
    labels = _norm_labels(meta.get("axis_labels"), ndim) == _norm_labels(read["axis_labels"], ndim)
    units = _norm_units(meta.get("units")) == _norm_units(read["units"])
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
    frame and axis order. A layer made in napari is stored as napari holds it:
    data in layer order, and the file world is the napari world (the layer's
    data-to-world matrix becomes the file's affine, no ``coord_system``). When
    the layer's spatial axis labels are the reader's anatomy labels (``S-I``,
    ``A-P``, ``R-L``: napari's "new labels" over an opened image copies them),
    its world is the display frame: the geometry is stored in the anatomical
    frame it shows (:func:`napari_mlarray._orientation.display_frame`, LPS for
    a volume) with that ``coord_system``, so the voxels keep their anatomy.

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
    T = layer_matrix(meta, ndim)
    if not np.all(np.isfinite(T)) or abs(np.linalg.det(np.asarray(T, dtype=float))) < 1e-300:
        raise ValueError(
            "the layer's scale/affine is zero or singular; an .mla file needs a nonzero spacing"
        )
    block = (meta.get("metadata") or {}).get(KEY)
    if block is not None and block.get("layer") in ("image", "labels"):
        return _record_from_read_layer(shape, meta, layer_type, block, T)
    rec = Meta().to_mapping()
    labels = _norm_labels(meta.get("axis_labels"), ndim)
    mla_labels = None if labels is None else [_mla_label(x) or "spatial" for x in labels]
    if mla_labels is not None and all(x == "spatial" for x in mla_labels):
        mla_labels = None
    sp = rec["spatial"]
    sp["axis_labels"] = mla_labels
    sp["axis_units"] = _stored_units(_norm_units(meta.get("units")))
    mask = [True] * ndim if mla_labels is None else [is_spatial_label(x) for x in mla_labels]
    spatial_view = [k for k in range(ndim) if mask[k]]
    n = len(spatial_view)
    if n:
        # what you set is what you get: the file world is the layer's world, axis for axis;
        # a world labelled with the reader's anatomy labels is the display frame: stored
        # as the anatomical frame it shows
        display = display_frame(None if labels is None else [labels[k] for k in spatial_view])
        code, frame = (None, np.eye(n)) if display is None else display
        linear = T[np.ix_(spatial_view, spatial_view)]
        gram = linear.T @ linear
        orthogonal = np.allclose(gram, np.diag(np.diag(gram)), rtol=0, atol=1e-9 * gram.max())
        form = "spacing" if orthogonal else "affine"
        sp.update(_spatial_from_matrix(T, spatial_view, frame, list(range(n)), form))
        sp["coord_system"] = code
    rec["is_seg"]["is_seg"] = True if layer_type == "labels" else None
    return rec, Undo(tuple(range(ndim)))


def adopt_template(meta: dict, template: dict, layer_type: str, dtype: Any) -> dict:
    """``meta`` of a layer made in napari, given the ``.mla`` block of the layer it was made over.

    A Labels layer created over an opened image (napari's "new labels" copies
    the image's shape and transforms) then saves like that image: same stored
    axis order, world frame, ``coord_system`` and geometry form, so the saved
    mask lines up voxel for voxel with the image's array in Python too. The
    image's statistics, boxes and layout are not inherited; made over one
    channel of a split image, the layer is stored without the channel axis.

    Parameters
    ----------
    meta : dict
        The new layer's ``as_layer_data_tuple()[1]``.
    template : dict
        The ``metadata[KEY]`` block of the opened layer with the same shape and transforms.
    layer_type : str
        ``"image"`` or ``"labels"``.
    dtype : dtype-like
        Dtype of the new layer's data (what is stored).

    Returns
    -------
    dict
        A copy of ``meta`` whose metadata carries the adopted block.
    """
    block = copy.deepcopy(template)
    rec = as_meta(block["record"]).to_mapping()
    channel = block.pop("channel", None)
    if channel is not None:
        _drop_stored_axis(block, rec, channel["axis"], channel["view_axis"])
    if block.pop("rgb", False):  # made over an RGB(A) picture: its grid, not its colours
        view_axis = len(block["perm"]) - 1
        _drop_stored_axis(block, rec, block["perm"][view_axis], view_axis)
        _drop_last_layer_axis(block.get("as_read"))
    fresh = Meta().to_mapping()
    for key in ("stats", "bbox", "blosc2", "is_seg"):
        rec[key] = fresh[key]
    rec["is_seg"]["is_seg"] = True if layer_type == "labels" else None
    block.update(record=rec, layer=layer_type, dtype=np.dtype(dtype).str, path=None)
    out = dict(meta)
    out["metadata"] = {**(meta.get("metadata") or {}), KEY: block}
    return out


def _drop_last_layer_axis(as_read: dict | None) -> None:
    """Remove the last layer axis (an RGB picture's colours) from the transforms a block
    recorded as the layer was read."""
    if not as_read:
        return
    for key in ("scale", "translate", "axis_labels", "units"):
        if as_read.get(key) is not None:
            as_read[key] = list(as_read[key])[:-1]
    for key in ("rotate", "shear"):
        if as_read.get(key) is not None:
            as_read[key] = [list(row)[:-1] for row in list(as_read[key])[:-1]]


def _drop_stored_axis(block: dict, rec: dict, axis: int, view_axis: int) -> None:
    """Remove stored axis ``axis`` (view position ``view_axis``) from ``block`` and ``rec``."""
    block["perm"] = [a - (a > axis) for k, a in enumerate(block["perm"]) if k != view_axis]
    if block.get("flip") is not None:
        block["flip"] = [f for k, f in enumerate(block["flip"]) if k != view_axis]
    if block.get("spatial") is not None:
        block["spatial"] = [s for a, s in enumerate(block["spatial"]) if a != axis]
    sp = rec["spatial"]
    sp["axis_units"] = as_meta(rec).spatial.units_per_axis()  # per spatial axis: per array axis
    for key in ("shape", "axis_labels", "axis_units"):
        if sp.get(key) is not None:
            sp[key] = [v for a, v in enumerate(sp[key]) if a != axis]
    sp["_num_spatial_axes"] = sp["_num_non_spatial_axes"] = None


def read_layer_axes(block: dict) -> int:
    """Number of axes of the layer the reader made from ``block`` (an image/labels block).

    A layer napari derives from it (a projection, Split Stack, Merge to Stack) copies
    the block but has another number of axes: it is no longer that file's array.

    Parameters
    ----------
    block : dict
        The layer's ``metadata["mlarray"]``.

    Returns
    -------
    int
    """
    return len(block["perm"]) - (block.get("channel") is not None)


def _record_from_read_layer(shape, meta, layer_type, block, T) -> tuple[dict, Undo]:
    rec = as_meta(block["record"]).to_mapping()
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
    shown_flip = list(block.get("flip") or [False] * stored_ndim)  # per view position
    flips = [shown_flip[k] for k in view_axes]  # per layer axis
    T = T @ _unflip_matrix(flips, shape)  # the layer's world of the data as stored
    sp = rec["spatial"]
    spatial_stored = spatial_mask(rec, stored_ndim)
    if not geom_same and list(block.get("spatial", spatial_stored)) != spatial_stored:
        raise ValueError(
            "this layer was moved in napari, but its file has spatial axes shown as "
            "non-spatial (no axis labels); label the axes in the file, or reset the "
            "layer's transform, before saving"
        )
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
        stored = as_meta(rec).spatial.units_per_axis(stored_ndim) or [None] * stored_ndim
        for i, k in enumerate(view_axes):
            stored[perm[k]] = None if new is None else new[i]
        sp["axis_units"] = _stored_units(stored)
    if layer_type == "labels":
        rec["is_seg"]["is_seg"] = True
        rec["stats"] = MetaStatistics().to_mapping()  # painted data: stored stats may be stale
    # stored axis a <- layer axis: view position of a, minus the split channel
    stored_to_view = {perm[k]: k for k in range(stored_ndim)}
    undo_perm, insert, undo_flip = [], [], []
    for a in range(stored_ndim):
        k = stored_to_view[a]
        if channel is not None and k == channel["view_axis"]:
            insert.append(a)
            continue
        undo_perm.append(view_axes.index(k))
        undo_flip.append(shown_flip[k])
    dtype = block.get("dtype")
    return rec, Undo(tuple(undo_perm), tuple(insert), dtype, tuple(undo_flip))
