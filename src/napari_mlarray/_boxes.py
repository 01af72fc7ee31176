"""Pure mapping between a record's ``bbox`` section and napari Shapes layers.

Reading: :func:`shapes_layer_data` draws each box as rectangles (one per slice
it overlaps), with ``box``/``label``/``score`` features, in the image's data
coordinates (a reversed axis mirrored); :func:`redrawn_in_plane` redraws them in
the plane a rolled view shows. A shape's plane is found from its vertices
(:func:`_plane`), so rectangles drawn in any view are boxes one slice thick. Writing:
:func:`boxes_from_shapes` groups the rectangles back into boxes, keeps a box
exactly as stored when its rectangles did not change, and applies an edit of
some of its rectangles (napari edits the one on the shown slice) to the whole
box. No napari or Qt import.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from typing import Any

import numpy as np

from mlarray.meta import Meta
from napari_mlarray._layer_common import KEY, common_layer_kwargs, drop_axes, with_metadata
from napari_mlarray._orientation import as_meta, layer_matrix, spatial_mask

__all__ = [
    "BOX_COLORS",
    "MAX_RECTANGLES",
    "boxes_from_shapes",
    "redrawn_in_plane",
    "shapes_layer_data",
]

#: Most rectangles the reader draws for a file's boxes (one per box and slice);
#: beyond it the remaining boxes are left out with a warning (a notification in napari).
MAX_RECTANGLES = 20_000

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


# --------------------------------------------------------------------------- reading


def _box_axes(record: Meta | dict, ndim: int, n_box_axes: int) -> list[int]:
    """Stored axes a box's entries refer to: all axes, or the spatial ones."""
    if n_box_axes == ndim:
        return list(range(ndim))
    mask = spatial_mask(record, ndim)
    if n_box_axes == sum(mask):
        return [a for a in range(ndim) if mask[a]]
    raise ValueError(f"bbox has {n_box_axes} axes but the array has {ndim} ({sum(mask)} spatial)")


def _boxes_reach(boxes: list, axes: list[int], axis: int) -> int:
    """Voxels along stored ``axis`` up to the farthest (finite) box end; at least 1."""
    if axis not in axes:
        return 1
    k = axes.index(axis)
    ends = [float(b[k][1]) for b in boxes if len(b) > k and math.isfinite(float(b[k][1]))]
    return max([1, *(math.ceil(e) for e in ends)])


def _label_text(label: Any) -> str:
    return "" if label is None else str(label)


def _clip_box(
    box: list[tuple[float, float]], extent: list[int] | None
) -> list[tuple[float, float]]:
    """Clip a ``[min, max)`` box (view order) to the array; non-finite ends become the array's."""
    out = []
    for k, (lo, hi) in enumerate(box):
        n = None if extent is None else float(extent[k])
        lo = lo if math.isfinite(lo) else (0.0 if n is None or lo < 0 else n)
        hi = hi if math.isfinite(hi) else (0.0 if n is None or hi < 0 else n)
        if n is not None:
            lo, hi = min(max(lo, 0.0), n), min(max(hi, 0.0), n)
        out.append((lo, hi))
    return out


def _geometry_ndim(meta: Meta) -> int:
    """Number of axes of a boxes-only record without boxes: from its geometry (else 2)."""
    sp = meta.spatial
    for values in (sp.axis_labels, sp.axis_units, sp.spacing, sp.origin, sp.direction):
        if values:
            return max(2, len(values))
    return max(2, len(sp.affine) - 1) if sp.affine else 2


def _slice_dims(m: int, plane: tuple[int, int] | None) -> tuple[list[int], tuple[int, int]]:
    """The slice dims and the plane (default: the last two dims) of an ``m``-d Shapes layer."""
    plane = (m - 2, m - 1) if plane is None else (int(plane[0]), int(plane[1]))
    return [d for d in range(m) if d not in plane], plane


def _slice_range(lo: float, hi: float) -> range:
    return range(math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1))


def _rectangle_count(box_view: list[tuple[float, float]], plane=None) -> int:
    lead, _ = _slice_dims(len(box_view), plane)
    return math.prod(len(_slice_range(*box_view[d])) for d in lead)


def _rectangles(box_view: list[tuple[float, float]], plane=None) -> list[np.ndarray]:
    """Rectangles (4 x m vertices, data coordinates) drawing one box in view order.

    Voxel ``i`` spans ``[i - 0.5, i + 0.5]`` in napari data coordinates, so a box
    ``[min, max)`` has edges at ``min - 0.5`` and ``max - 0.5`` in the ``plane``
    dims (default: the last two), and a rectangle on every slice it overlaps in
    the other dims.
    """
    m = len(box_view)
    lead, (pr, pc) = _slice_dims(m, plane)
    (r0, r1), (c0, c1) = box_view[pr], box_view[pc]
    ranges = [_slice_range(*box_view[d]) for d in lead]
    corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
    out = []
    for pos in itertools.product(*ranges):
        rect = np.empty((4, m), dtype=float)
        for d, v in zip(lead, pos, strict=True):
            rect[:, d] = v
        for k, (r, c) in enumerate(corners):
            rect[k, pr], rect[k, pc] = r - 0.5, c - 0.5
        out.append(rect)
    return out


def shapes_layer_data(
    record: Meta | dict,
    ndim: int | None,
    *,
    name: str,
    path: str | None = None,
    skip_axes=(),
    unit_ok=None,
    shape: tuple[int, ...] | None = None,
) -> tuple[list[np.ndarray], dict] | None:
    """Shapes data and ``viewer.add_shapes`` keywords for the record's boxes.

    Parameters
    ----------
    record, name, unit_ok
        As in :func:`napari_mlarray._mapping.image_layer_kwargs`.
    ndim : int or None
        Number of stored axes (``None`` for a boxes-only file: taken from the boxes).
    path : str, optional
        File the boxes came from.
    skip_axes : sequence of int
        Stored axes left out of the Shapes layer (a ``channel`` axis split into
        image layers); the writer restores them from the stored boxes.
    shape : tuple of int, optional
        Stored array shape: boxes are clipped to it. At most
        :data:`MAX_RECTANGLES` rectangles are drawn (a warning says how many
        boxes were left out; the layer's metadata lists them, and a save
        writes them back as stored).

    Returns
    -------
    (list of numpy.ndarray, dict) or None
        ``None`` when the record holds no boxes (or they have fewer than 2 axes),
        except for a boxes-only file: an empty layer with the file's geometry.
    """
    meta = as_meta(record)
    bbox = meta.bbox
    boxes = bbox.bboxes or []
    if not boxes and ndim is not None:
        return None
    n_box = len(boxes[0]) if boxes else _geometry_ndim(meta)
    ndim = n_box if ndim is None else ndim
    axes = _box_axes(meta, ndim, n_box)
    sub = meta.to_mapping()
    if meta.spatial.shape is None:
        # a boxes-only file: the boxes give the axes, and the extent a reversed axis is
        # mirrored over (as an image reaching their ends would be)
        sub["spatial"]["shape"] = [_boxes_reach(boxes, axes, a) for a in range(ndim)]
    if len(axes) != ndim:  # geometry is over the spatial axes only: show those
        sp = sub["spatial"]
        sp["axis_labels"] = None
        sp["shape"] = [sp["shape"][a] for a in axes]
        sp["_num_spatial_axes"] = sp["_num_non_spatial_axes"] = None
        units = meta.spatial.units_per_axis()
        sp["axis_units"] = None if units is None else [units[a] for a in axes]
    kw, orient, block = common_layer_kwargs(
        sub, len(axes), name=name, path=path, layer="shapes", unit_ok=unit_ok
    )
    block["record"] = meta.to_mapping()
    shown = [k for k, p in enumerate(orient.perm) if axes[p] not in set(skip_axes)]
    # a reversed axis (positive scale, as for the file's image): vertex i drawn at N - 1 - i
    view_shape = sub["spatial"]["shape"]
    flip_last = [float(view_shape[orient.perm[k]] - 1) if block["flip"][k] else None for k in shown]
    if len(shown) < 2:
        return None
    if len(shown) != len(orient.perm):
        kw = drop_axes(kw, [k for k in range(len(orient.perm)) if k not in shown])
    data, box_id, labels, scores = [], [], [], []
    extent = None if shape is None else [shape[axes[orient.perm[k]]] for k in shown]
    left_out = []
    for i, box in enumerate(boxes):
        if len(box) != n_box:
            raise ValueError(f"bbox {i} has {len(box)} axes, expected {n_box}")
        view = _clip_box([tuple(float(v) for v in box[orient.perm[k]]) for k in shown], extent)
        if len(data) + _rectangle_count(view) > MAX_RECTANGLES:
            left_out.append(i)
            continue
        rects = [_flipped(r, flip_last) for r in _rectangles(view)]
        data += rects
        box_id += [i] * len(rects)
        lab = None if bbox.labels is None else bbox.labels[i]
        labels += [_label_text(lab)] * len(rects)
        sc = None if bbox.scores is None else bbox.scores[i]
        scores += [math.nan if sc is None else float(sc)] * len(rects)
    if left_out:
        warnings.warn(
            f"{path or name}: {len(left_out)} of {len(boxes)} boxes not shown "
            f"(more than {MAX_RECTANGLES} rectangles, one per box and slice); "
            "a save keeps them as stored",
            UserWarning,
            stacklevel=2,
        )
    block["box_axes"] = axes
    block["shown_axes"] = [axes[orient.perm[k]] for k in shown]  # stored axis per Shapes dim
    block["extent"] = extent  # what the boxes were clipped to (per Shapes dim)
    block["left_out"] = left_out  # boxes not drawn: the writer adds them back
    block["flip_last"] = flip_last  # per Shapes dim: N - 1 of a reversed axis, else None
    with_metadata(kw, block)
    kw.update(
        shape_type="rectangle",
        features={"box": box_id, "label": labels, "score": scores}
        if data  # typed when empty, so that napari takes the defaults below
        else {
            "box": np.zeros(0, np.int64),
            "label": np.zeros(0, object),
            "score": np.zeros(0, float),
        },
        feature_defaults={"box": -1, "label": "", "score": math.nan},
        edge_color="label",
        edge_color_cycle=BOX_COLORS,
        face_color="transparent",
        edge_width=1.0,
        text={
            "string": "{label} {score:.2f}" if bbox.scores is not None else "{label}",
            "color": "white",
            "anchor": "upper_left",
            "size": 10,
        },
        ndim=len(shown),
    )
    return data, kw


# --------------------------------------------------------------------------- writing


#: A Shapes dim whose vertex coordinates differ by less than this (voxels) is constant.
_FLAT = 1e-3


def _plane(vertices: np.ndarray) -> tuple[int, int]:
    """The two Shapes dims a shape was drawn in.

    napari's shape tools draw in the two displayed dims, whichever
    ``viewer.dims.order`` shows (axial, sagittal or coronal), and give every
    other dim the slider's position: a shape varying in exactly two dims lies
    in them. Any other shape (a box's spanning vertices, a degenerate
    rectangle) counts as drawn in the last two dims, the reader's plane.
    """
    v = np.asarray(vertices, dtype=float)
    m = v.shape[1]
    varying = [d for d in range(m) if float(np.ptp(v[:, d])) > _FLAT] if len(v) else []
    return (varying[0], varying[1]) if len(varying) == 2 else (m - 2, m - 1)


def _slice_position(vertices: np.ndarray) -> tuple:
    """The drawn plane of a shape and the slice it is on (index along each other dim)."""
    plane = _plane(vertices)
    v = np.asarray(vertices, dtype=float)
    return plane, tuple(
        math.floor(float(v[0, d]) + 0.5) for d in range(v.shape[1]) if d not in plane
    )


def _shape_bounds(vertices: np.ndarray) -> list[tuple[float, float]]:
    """Box ``[min, max)`` (index coordinates) of one shape.

    The dims it was drawn in (:func:`_plane`) keep the drawn extent; along
    every other dim it covers the slices its vertices are on (one slice for a
    shape drawn with napari's tools).
    """
    v = np.asarray(vertices, dtype=float)
    out = []
    plane = _plane(v)
    for d in range(v.shape[1]):
        lo, hi = float(v[:, d].min()), float(v[:, d].max())
        if d not in plane:
            s = math.floor(lo + 0.5)
            out.append((float(s), float(math.floor(hi + 0.5) + 1)))
        else:
            out.append((lo + 0.5, hi + 0.5))
    return out


def _flipped(vertices: np.ndarray, flip_last: list[float | None] | None) -> np.ndarray:
    """Vertices with each reversed Shapes dim ``d`` mirrored (``x -> flip_last[d] - x``; its
    own inverse): between the reader's drawing and stored index order."""
    if not flip_last or all(last is None for last in flip_last):
        return vertices
    out = np.array(vertices, dtype=float)
    for d, last in enumerate(flip_last):
        if last is not None:
            out[:, d] = last - out[:, d]
    return out


def _flip_matrix(flip_last: list[float | None]) -> np.ndarray:
    """:func:`_flipped` as a homogeneous matrix."""
    m = len(flip_last)
    out = np.eye(m + 1)
    for d, last in enumerate(flip_last):
        if last is not None:
            out[d, d], out[d, m] = -1.0, last
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
    exactly as stored (float extents, axes not shown); an edit of some of them
    applies to the whole box (:func:`_edited_box`). Other shapes become one
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
        matrix = layer_matrix(meta, m)  # data to world
        flip_last = None if block is None else block.get("flip_last")
        if flip_last is not None and len(flip_last) == m:  # back to stored index order
            data = [_flipped(d, flip_last) for d in data]
            matrix = matrix @ _flip_matrix(flip_last)
        stored = None
        if block is not None:
            file_meta = as_meta(block["record"])
            if base_record is None:
                base_record = file_meta.to_mapping()
            if full_shape is None and file_meta.spatial.shape is not None:
                full_shape = list(file_meta.spatial.shape)
            rb = file_meta.bbox
            stored = (rb.bboxes or [], rb.scores, rb.labels)
        same_file = block is not None and (
            target is None
            or (block.get("path") is not None and block["path"] == target.get("path"))
        )
        col = _feature_columns(meta.get("features"), len(data))
        extent = None if block is None else block.get("extent")
        left_out = [] if block is None else list(block.get("left_out") or [])
        if left_out and not same_file:  # boxed into another array: map them like shapes
            for bid in left_out:
                data.append(_box_vertices(_stored_view(stored[0][bid], block, extent)))
                col["box"].append(bid)
                col["label"].append(_label_text(None if stored[2] is None else stored[2][bid]))
                col["score"].append(_score_value(None if stored[1] is None else stored[1][bid]))
            left_out = []
        if stored is not None:
            _copies_are_new_boxes(data, col, stored[0], block, extent)
        if stored is not None and not same_file:  # each stored box as one shape, edits applied
            data, col = _one_shape_per_box(data, col, stored, block, extent, meta.get("name"))
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
            data = _to_target(data, matrix, m, np.asarray(target["matrix"], dtype=float))
        layer_entries = []  # (order, entry): a file's boxes in file order, then new ones
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
            same = False  # the stored box, unchanged
            if kind == "file":
                sboxes, sscores, slabels = stored
                original = sboxes[bid]
                label, score = _edited_features(
                    col, idx, stored, bid, _box_name(meta.get("name"), bid, slabels)
                )
                view = _drawn_view(original, block, extent, bid)
                plane = block.get("plane")
                rects = _rectangles(view, plane)  # as the reader (or a redraw) drew it
                unchanged = len(rects) == len(idx) and all(
                    np.allclose(np.sort(r, axis=0), np.sort(data[i], axis=0), atol=1e-6)
                    for r, i in zip(rects, idx, strict=True)
                )
                who = _box_name(meta.get("name"), bid, slabels)
                stored_view = _stored_view(original, block, extent)
                merged = _box_state(view, stored_view, [] if unchanged else bounds, who, plane)
                same = all(e is None for e in merged)
                box = copy.deepcopy(list(original)) if same else [list(p) for p in original]
            else:
                box = [_full_extent(full_shape, a) for a in box_axes]
            if not same:
                for d, a in enumerate(dims):
                    if merged[d] is not None:  # None: that extent was not edited
                        box[box_axes.index(a)] = [_clean_number(v) for v in merged[d]]
            if isinstance(label, str) and label == "":
                label = None
            if isinstance(score, float) and math.isnan(score):
                score = None
            order = (0, bid) if kind == "file" else (1, len(layer_entries))
            layer_entries.append((order, (box, box_axes, label, score)))
        for bid in (b for b in left_out if ("file", b) not in groups):  # not drawn: as stored
            sboxes, sscores, slabels = stored
            label = None if slabels is None else slabels[bid]
            score = None if sscores is None else sscores[bid]
            if isinstance(score, float) and math.isnan(score):
                score = None
            layer_entries.append(
                ((0, bid), (copy.deepcopy(list(sboxes[bid])), box_axes, label, score))
            )
        entries += [entry for _, entry in sorted(layer_entries, key=lambda e: e[0])]
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
        # a box without a score next to scored ones: NaN (the format's scores are numbers)
        "scores": [math.nan if s is None else s for s in scores]
        if any(s is not None for s in scores)
        else None,
        # a box without a label next to labelled ones (drawn with napari's rectangle tool):
        # the empty label it was shown with (the format's labels are strings or numbers)
        "labels": ["" if x is None else x for x in labels]
        if any(x is not None for x in labels)
        else None,
    }, base_record


def _box_name(layer: str | None, bid: int, labels) -> str:
    """A stored box, as the warnings name it."""
    who = f"{layer or 'boxes'}: box {bid}"
    if labels is not None and labels[bid] not in (None, ""):
        who += f" ({labels[bid]!r})"
    return who


def _edited_features(col: dict[str, list], idx: list[int], stored, bid: int, who: str):
    """Label and score of stored box ``bid`` from its rectangles ``idx`` (rows of ``col``).

    napari's features table edits the row of the rectangle selected (on the slice shown),
    so the rectangle whose label (score) differs from the stored one gives the box's; when
    edited rectangles disagree, the first of them wins, with a warning. Unchanged values
    are returned as stored (their type kept: a number label stays a number).
    """
    _, sscores, slabels = stored
    stored_label = None if slabels is None else slabels[bid]
    stored_score = None if sscores is None else sscores[bid]
    labels = [col["label"][i] for i in idx if col["label"][i] != _label_text(stored_label)]
    scores = [col["score"][i] for i in idx if not _same_score(col["score"][i], stored_score)]
    for what, values, same in (
        ("label", labels, lambda a, b: a == b),
        ("score", scores, lambda a, b: _same_score(a, None if math.isnan(b) else b)),
    ):
        if any(not same(v, values[0]) for v in values[1:]):
            shown = ", ".join(repr(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
            warnings.warn(
                f"{who}: its rectangles were given different {what}s ({shown}); a box has one "
                f"{what}, so it is saved with {values[0]!r}",
                UserWarning,
                stacklevel=4,
            )
    label = labels[0] if labels else stored_label
    score = scores[0] if scores else stored_score
    if label is None:
        label = col["label"][idx[0]]
    if score is None:
        score = col["score"][idx[0]]
    return label, score


def _copies_are_new_boxes(data, col: dict[str, list], sboxes, block: dict, extent) -> None:
    """A second rectangle of a stored box on one slice (a copy pasted there: napari copies the
    ``box`` feature too) is a new box: its ``box`` entry is set to ``None``, in place. The
    rectangle the reader drew there, if still there, stays the box's."""
    at: dict[tuple, list[int]] = {}
    for i, bid in enumerate(col["box"]):
        if bid is not None and 0 <= bid < len(sboxes):
            at.setdefault((bid, _slice_position(data[i])), []).append(i)
    for (bid, pos), idx in at.items():
        if len(idx) < 2:
            continue
        view = _drawn_view(sboxes[bid], block, extent, bid)
        drawn = {_slice_position(r): r for r in _rectangles(view, block.get("plane"))}.get(pos)
        keep = next(
            (
                i
                for i in idx
                if drawn is not None
                and np.allclose(np.sort(drawn, axis=0), np.sort(data[i], axis=0), atol=1e-6)
            ),
            idx[0],
        )
        for i in idx:
            if i != keep:
                col["box"][i] = None


def _one_shape_per_box(
    data: list[np.ndarray], col: dict[str, list], stored, block: dict, extent, layer: str | None
) -> tuple[list[np.ndarray], dict[str, list]]:
    """The rectangles of each stored box replaced by one shape spanning the box as edited
    (:func:`_edited_box`), for boxes saved into another file's array (mapped like shapes)."""
    sboxes, _, slabels = stored
    members: dict[int, list[int]] = {}
    for i, bid in enumerate(col["box"]):
        if bid is not None and 0 <= bid < len(sboxes):
            members.setdefault(bid, []).append(i)
    out: list[np.ndarray] = []
    out_col: dict[str, list] = {k: [] for k in col}
    for i, shape in enumerate(data):
        bid = col["box"][i]
        row = {k: col[k][i] for k in col}
        if bid in members:
            idx = members[bid]
            if i != idx[0]:
                continue
            view = _drawn_view(sboxes[bid], block, extent, bid)
            stored_view = _stored_view(sboxes[bid], block, extent)
            bounds = [_shape_bounds(data[j]) for j in idx]
            who = _box_name(layer, bid, slabels)
            edit = _box_state(view, stored_view, bounds, who, block.get("plane"))
            shape = _box_vertices(
                [v if e is None else e for e, v in zip(edit, stored_view, strict=True)]
            )
            label, score = _edited_features(col, idx, stored, bid, who)
            row["label"], row["score"] = _label_text(label), _score_value(score)
        out.append(shape)
        for k in col:
            out_col[k].append(row[k])
    return out, out_col


def _edited_box(
    view: list[tuple[float, float]],
    bounds: list[list[tuple[float, float]]],
    who: str,
    plane: tuple[int, int] | None = None,
) -> list[tuple[float, float] | None]:
    """A stored box after the user edited some of its rectangles (one per slice).

    napari edits the rectangle on the slice shown, so the edit applies to the
    whole box: its in-plane extent is the edited rectangles' (a box whose
    rectangles were edited differently gets the extent around all edited
    ones, with a warning), its slice range the rectangles present (deleting
    the end slices' rectangles shortens the box). An extent the user did not
    change is ``None`` (the stored value stays, float or outside the array).

    Parameters
    ----------
    view : list of (float, float)
        The box as its rectangles were drawn (Shapes dims, clipped).
    bounds : list of list of (float, float)
        :func:`_shape_bounds` of each rectangle of the box in the layer.
    who : str
        The box, for the warnings.
    plane : (int, int), optional
        The Shapes dims the rectangles were drawn in (default: the last two).

    Returns
    -------
    list of (float, float) or None
        Per Shapes dim.
    """
    m = len(view)
    lead, plane = _slice_dims(m, plane)
    out: list[tuple[float, float] | None] = [None] * m
    span = []  # slices covered per slice axis, after the edit
    for d in lead:  # slice axes: the range of the rectangles present
        r = _slice_range(*view[d])
        drawn = (float(r.start), float(r.stop))
        present = (min(b[d][0] for b in bounds), max(b[d][1] for b in bounds))
        out[d] = None if present == drawn else present
        span.append(range(int(present[0]), int(present[1])))
    have = {tuple(int(b[d][0]) for d in lead) for b in bounds}
    holes = [p for p in itertools.product(*span) if p not in have] if span else []
    if holes:
        where = ", ".join(str(p[0] if len(p) == 1 else p) for p in holes[:8])
        more = f" and {len(holes) - 8} more" if len(holes) > 8 else ""
        warnings.warn(
            f"{who}: its rectangles on slice(s) {where}{more} were deleted inside its "
            "slice range; a box spans every slice between its ends, so it is saved "
            "over them (delete the end slices' rectangles to shorten it, or all of "
            "them to delete it)",
            UserWarning,
            stacklevel=3,
        )
    edited = [
        b
        for b in bounds
        if not all(math.isclose(b[d][e], view[d][e], abs_tol=1e-6) for d in plane for e in (0, 1))
    ]
    if not edited:
        return out
    union = [(min(b[d][0] for b in edited), max(b[d][1] for b in edited)) for d in plane]
    differ = any(
        not math.isclose(b[d][e], edited[0][d][e], abs_tol=1e-6)
        for b in edited
        for d in plane
        for e in (0, 1)
    )
    if differ:
        slices = sorted({b[lead[0]][0] for b in edited}) if lead else []
        on = ", ".join(str(int(s)) for s in slices[:8]) + (" ..." if len(slices) > 8 else "")
        warnings.warn(
            f"{who}: its rectangles were edited differently on slices {on}; a box has one "
            "in-plane extent, so it is saved as the box around all its edited rectangles "
            f"({', '.join(f'[{_clean_number(lo)}, {_clean_number(hi)})' for lo, hi in union)}"
            " in the shown axes)",
            UserWarning,
            stacklevel=3,
        )
    for d, extent in zip(plane, union, strict=True):
        out[d] = extent
    return out


def _drawn_view(stored_box, block: dict, extent, bid: int) -> list[tuple[float, float]]:
    """Stored box ``bid`` as its rectangles are drawn now: as stored, or as edited before
    they were redrawn in another view (``block["drawn"]``)."""
    drawn = (block.get("drawn") or {}).get(bid)
    if drawn is not None:
        return [tuple(float(v) for v in p) for p in drawn]
    return _stored_view(stored_box, block, extent)


def _box_state(view, stored_view, bounds, who, plane) -> list[tuple[float, float] | None]:
    """A box's extents after the edit of its rectangles (drawn from ``view``): ``None`` where
    they are still the stored box's (``stored_view``)."""
    edit = _edited_box(view, bounds, who, plane) if bounds else [None] * len(view)
    out = []
    for e, v, sv in zip(edit, view, stored_view, strict=True):
        if e is None:  # as drawn: the stored extent, or one edited before a redraw
            same = all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(v, sv, strict=True))
            e = None if same else v
        out.append(e)
    return out


def _stored_view(box, block: dict, extent) -> list[tuple[float, float]]:
    """A stored box in the Shapes layer's dims (``block``), clipped as the reader drew it."""
    axes = list(block["box_axes"])
    view = [tuple(float(v) for v in box[axes.index(a)]) for a in block["shown_axes"]]
    return _clip_box(view, extent)


def _box_vertices(box_view: list[tuple[float, float]]) -> np.ndarray:
    """One vertex array whose bounds (:func:`_shape_bounds`) are the box: the corners of its
    first and last rectangle."""
    *lead, (r0, r1), (c0, c1) = box_view
    ends = [(math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1) - 1) for lo, hi in lead]
    corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
    points = [[*pos, r - 0.5, c - 0.5] for pos in itertools.product(*ends) for r, c in corners]
    return np.array(points, dtype=float)


def _score_value(score) -> float:
    return math.nan if score is None else float(score)


def _full_extent(shape, axis: int) -> list[int]:
    return [0, int(shape[axis])] if shape is not None and axis < len(shape) else [0, 1]


def _to_target(data: list[np.ndarray], matrix: np.ndarray, m: int, T_img: np.ndarray) -> list:
    """Map Shapes data coordinates (``matrix``: to world) into the target layer's data
    coordinates (trailing dims)."""
    nd = T_img.shape[0] - 1
    sub = list(range(nd - m, nd))
    T_sub = np.eye(m + 1)
    T_sub[:m, :m] = T_img[np.ix_(sub, sub)]
    T_sub[:m, m] = T_img[sub, -1]
    to_img = np.linalg.solve(T_sub, matrix)
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


def redrawn_in_plane(
    data: list[np.ndarray], features, block: dict, plane: tuple[int, int], name: str | None = None
) -> tuple[list[int], list[np.ndarray], dict[str, list], dict] | None:
    """A file's boxes redrawn as rectangles in another ``plane`` of their Shapes layer.

    napari shows a shape only in the view whose displayed dims it lies in, so
    the plugin redraws the stored boxes in the plane shown when the view is
    rolled (sagittal, coronal). Each box is redrawn as edited so far (its
    rectangles' edits and label/score applied as a save would); shapes that are
    not a stored box's (drawn by the user, pasted copies) stay as they are.

    Parameters
    ----------
    data : list of numpy.ndarray
        The layer's vertices (data coordinates).
    features : DataFrame or dict
        The layer's ``box``/``label``/``score`` features.
    block : dict
        The layer's ``metadata["mlarray"]`` block.
    plane : (int, int)
        The two Shapes dims shown.
    name : str, optional
        The layer's name, for warnings.

    Returns
    -------
    (list of int, list of numpy.ndarray, dict, dict) or None
        The rows to remove, the rectangles to add, the features of the whole
        layer afterwards (remaining rows first, then the added ones), and the
        block's new ``plane``/``drawn`` entries; ``None`` when nothing is to be
        redrawn (the plane is already drawn, or more than
        :data:`MAX_RECTANGLES` rectangles would be needed).
    """
    m = len(block["shown_axes"])
    old_plane = _slice_dims(m, block.get("plane"))[1]
    plane = _slice_dims(m, tuple(sorted(plane)))[1]
    if plane == old_plane:
        return None
    flip_last = block.get("flip_last")
    if flip_last is None or len(flip_last) != m:
        flip_last = [None] * m
    udata = [_flipped(np.asarray(d, dtype=float), flip_last) for d in data]
    col = _feature_columns(features, len(udata))
    rb = as_meta(block["record"]).bbox
    stored = (rb.bboxes or [], rb.scores, rb.labels)
    sboxes = stored[0]
    extent = block.get("extent")
    box_col = list(col["box"])
    _copies_are_new_boxes(udata, col, sboxes, block, extent)
    members: dict[int, list[int]] = {}
    for i, bid in enumerate(col["box"]):
        if bid is not None and 0 <= bid < len(sboxes):
            members.setdefault(bid, []).append(i)
    remove = sorted(i for idx in members.values() for i in idx)
    removed = set(remove)
    keep = [i for i in range(len(udata)) if i not in removed]
    added: list[np.ndarray] = []
    out_col: dict[str, list] = {
        "box": [
            -1 if col["box"][i] is None and box_col[i] is not None else box_col[i] for i in keep
        ],
        "label": [col["label"][i] for i in keep],
        "score": [col["score"][i] for i in keep],
    }
    drawn: dict[int, list[list[float]]] = {}
    for bid in sorted(members):
        idx = members[bid]
        who = _box_name(name, bid, stored[2])
        view = _drawn_view(sboxes[bid], block, extent, bid)
        stored_view = _stored_view(sboxes[bid], block, extent)
        bounds = [_shape_bounds(udata[i]) for i in idx]
        state = _box_state(view, stored_view, bounds, who, old_plane)
        new_view = [sv if e is None else e for e, sv in zip(state, stored_view, strict=True)]
        label, score = _edited_features(col, idx, stored, bid, who)
        rects = [_flipped(r, flip_last) for r in _rectangles(new_view, plane)]
        added += rects
        out_col["box"] += [bid] * len(rects)
        out_col["label"] += [_label_text(label)] * len(rects)
        out_col["score"] += [_score_value(score)] * len(rects)
        if any(e is not None for e in state):
            drawn[bid] = [[float(lo), float(hi)] for lo, hi in new_view]
    if len(keep) + len(added) > MAX_RECTANGLES:
        warnings.warn(
            f"{name or 'boxes'}: drawing the boxes in the view shown takes more than "
            f"{MAX_RECTANGLES} rectangles; they stay drawn in the view they were in",
            UserWarning,
            stacklevel=2,
        )
        return None
    out_col["box"] = [-1 if b is None else int(b) for b in out_col["box"]]
    return remove, added, out_col, {"plane": list(plane), "drawn": drawn}
