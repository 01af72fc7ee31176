"""npe2 reader for ``.mla`` files: thin glue over the pure mapping modules.

Image/labels layers: :mod:`napari_mlarray._mapping`; boxes (Shapes layers):
:mod:`napari_mlarray._boxes`.

Images stay lazy (a :class:`~napari_mlarray._lazy.LazyView` transpose of the
memory-mapped file: a :class:`~napari_mlarray._source.FileSource`, which reads
without importing python-blosc2, or an ``MLArray``). Label maps are read once
into numpy, chunk by chunk, because napari paints only into writable numpy
arrays; label maps compress well and are small next to the images they annotate.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mlarray.meta import Meta
from napari_mlarray import _lazy, _mapping
from napari_mlarray._boxes import redrawn_in_plane, shapes_layer_data
from napari_mlarray._layer_common import KEY
from napari_mlarray._lazy import LazyView
from napari_mlarray._orientation import (
    as_meta,
    frame_by_geometry,
    geometry_key,
    napari_transforms,
    orientation_for,
)

__all__ = ["get_reader", "read_mla"]


def _paths(path) -> list[str] | None:
    items = [path] if isinstance(path, str | os.PathLike) else path
    if not isinstance(items, list | tuple) or not items:
        return None
    try:
        out = [os.fspath(p) for p in items]
    except TypeError:
        return None
    if not all(p.lower().endswith(".mla") and not os.path.isdir(p) for p in out):
        return None
    return out


def get_reader(path):
    """Return :func:`read_mla` for a ``.mla`` path (or list of them), else ``None``.

    Parameters
    ----------
    path : str, os.PathLike or list of them

    Returns
    -------
    callable or None
    """
    return read_mla if _paths(path) is not None else None


def read_mla(path) -> list[tuple]:
    """Read ``.mla`` files into napari layer data tuples.

    Parameters
    ----------
    path : str, os.PathLike or list of them

    Returns
    -------
    list of (data, kwargs, layer_type)

    Raises
    ------
    mlarray.MLArrayError
        For a file that is not a valid ``.mla`` file (the message names it).
    """
    paths = _paths(path) or []
    opened = [_open(p) for p in paths]
    # files opened together, and layers already in the viewer, with an anatomical world:
    # a file without one on the same grid (a mask saved with its image's geometry) is
    # shown in that world
    framed = [*_viewer_frames()]
    for p, (arr, record) in zip(paths, opened, strict=True):
        frame = _framed(record, None if arr is None else arr.ndim)
        if frame is not None:
            framed.append((Path(p).stem, *frame))
    return [layer for p, o in zip(paths, opened, strict=True) for layer in _read_one(p, o, framed)]


def _framed(record, ndim: int | None, frame: str | None = None):
    """``(frame, geometry_key)`` of a record in a RAS or LPS world, else ``None``."""
    from mlarray.errors import MetaValidationError

    try:
        frame = frame or record.spatial.world_frame
        if frame not in ("RAS", "LPS") or ndim is None:
            return None
        return frame, geometry_key(record, ndim)
    except MetaValidationError:  # reported when the file itself is read
        return None


def _viewer_layers() -> list[tuple]:
    """``(layer, block)`` of the current napari viewer's layers that carry our metadata
    block (layers read from or saved as ``.mla`` files); none when napari was not
    imported or has no viewer."""
    napari = sys.modules.get("napari")  # no napari imported: no viewer to look at
    viewer = None if napari is None else napari.current_viewer()
    out = []
    for layer in [] if viewer is None else list(viewer.layers):
        block = layer.metadata.get(KEY) if isinstance(layer.metadata, dict) else None
        if isinstance(block, dict):
            out.append((layer, block))
    return out


def _live_viewers() -> list:
    """The napari viewers a read may serve: every live ``napari.Viewer`` and napari's
    current viewer; none when napari was not imported.

    The reader is not told which viewer it reads for (a script may open into one that
    is not the current viewer), but that viewer exists when it reads."""
    napari = sys.modules.get("napari")
    module = sys.modules.get("napari.viewer")  # not imported: no viewer exists
    viewers = list(getattr(getattr(module, "Viewer", None), "_instances", None) or ())
    current = None if napari is None else napari.current_viewer()
    if current is not None and current not in viewers:
        viewers.append(current)
    return viewers


def _widen_contrast_when_added() -> None:
    """Have every live napari viewer (:func:`_live_viewers`) widen the contrast slider of
    the layers it adds that carry a ``contrast_range`` (see
    :func:`_mapping.contrast_range`).

    napari's ``add_image`` takes no ``contrast_limits_range``: it is set once the layer
    is in the viewer, the initial window (``contrast_limits``) kept. Connecting again is
    a no-op (napari ignores a callback already connected)."""
    for viewer in _live_viewers():
        viewer.layers.events.inserted.connect(_widen_contrast_range)


def _widen_contrast_range(event: Any) -> None:
    """``layers.events.inserted``: the added layer's slider spans its ``contrast_range``."""
    layer = event.value
    block = layer.metadata.get(KEY) if isinstance(layer.metadata, dict) else None
    span = block.get("contrast_range") if isinstance(block, dict) else None
    if span is None or getattr(layer, "rgb", True):  # an image layer of ours only
        return
    window = list(layer.contrast_limits)
    lo, hi = min(float(span[0]), window[0]), max(float(span[1]), window[1])
    if [lo, hi] != list(layer.contrast_limits_range):
        layer.contrast_limits_range = (lo, hi)  # holds the window: the window is kept


def _viewer_frames() -> list[tuple]:
    """``(name, frame, geometry_key)`` of the layers of the current napari viewer that
    were read from ``.mla`` files in a RAS or LPS world."""
    out = []
    for layer, block in _viewer_layers():
        if block.get("layer") not in ("image", "labels"):
            continue
        found = _framed(as_meta(block["record"]), len(block["perm"]), block.get("world_frame"))
        if found is not None:
            out.append((layer.name, *found))
    return out


def _unit_ok(unit: str) -> bool:
    import pint

    try:
        pint.get_application_registry().parse_units(unit)
    except Exception:  # pint raises several unrelated types for unparsable text
        return False
    return True


def _open(path: str):
    from mlarray._fork import usable_cores
    from mlarray.errors import MLArrayError, MLArrayFormatError
    from napari_mlarray._source import open_source

    # the viewer decodes on every core, and keeps the decoded chunks under the
    # displayed planes so that scrolling copies planes instead of decoding them again
    nthreads = usable_cores()
    try:
        # planes and volumes through the C library, without importing python-blosc2
        # (its import alone costs more than the reader's work); see napari_mlarray._source
        opened = open_source(path, nthreads)
        if opened is not None:
            return opened  # (None, meta) for a file without an array
        from mlarray import MLArray

        arr = MLArray.open(path, dparams={"nthreads": nthreads})
        arr.set_chunk_cache()
        return arr, arr.meta
    except MLArrayError:
        raise
    except Exception as exc:  # blosc2/IO errors: report them as a bad .mla file
        raise MLArrayFormatError(path, f"cannot be read as an .mla file: {exc}") from exc


def _read_one(path: str, opened: tuple, framed: list[tuple]) -> list[tuple]:
    from mlarray.errors import MetaValidationError, MLArrayFormatError

    try:
        return _layers(path, opened, framed)
    except MetaValidationError as exc:  # geometry napari cannot show (zero spacing...)
        raise MLArrayFormatError(path, f"cannot be displayed: {exc}") from None


def _layers(path: str, opened: tuple, framed: list[tuple]) -> list[tuple]:
    arr, stored = opened
    name = Path(path).stem
    layers, skip, rgb = [], (), False
    has_array = bool(stored._has_array) and arr is not None and arr.shape is not None
    ndim = arr.ndim if has_array else None
    if has_array and np.dtype(arr.dtype).kind == "c":
        from mlarray.errors import MLArrayFormatError

        raise MLArrayFormatError(
            path,
            f"cannot be displayed: it holds complex data ({np.dtype(arr.dtype).name}) and napari "
            "shows real-valued images only; read it with mlarray and add the part you want as "
            "an image, e.g. viewer.add_image(np.abs(MLArray.open(path)[...])) for the magnitude",
        )
    record = stored
    adopted = None
    if has_array and stored.spatial.world_frame is None:
        adopted = frame_by_geometry(stored, ndim, framed)
    if adopted is not None:  # shown in that world; the record itself stays as stored
        record = Meta.from_mapping(stored.to_mapping())
        record.spatial.coord_system = adopted[0]
    if has_array:
        orient = orientation_for(record, ndim, name=name)
        found = _framed(stored, ndim)
        if found is not None:
            _reorient_open_layers(name, *found)
        if adopted is not None:
            _notify(
                [
                    f"{name}: no coord_system, but the grid of {adopted[1]} (spacing, origin, "
                    f"direction): shown in its {adopted[0]} world, overlaying it"
                ]
            )
        _notify(orient.notes)
        # flips go into the data, napari gets positive scales (napari_transforms)
        flip = napari_transforms(orient, ndim, [arr.shape[a] for a in orient.perm])["flip"]
        view = LazyView(arr, perm=orient.perm, flip=flip, path=path)
        args = {"name": name, "path": path, "dtype": np.dtype(arr.dtype).str, "unit_ok": _unit_ok}
        labels = _labels_data(view) if record.is_seg else None
        if labels is not None:
            kw = _mapping.labels_layer_kwargs(record, ndim, **args)
            layers.append((labels, kw, "labels"))
        else:
            kw = _mapping.image_layer_kwargs(record, ndim, **args)
            channel = kw.get("channel_axis")
            labels = record.spatial.axis_labels or ()
            rgb = bool(kw.get("rgb"))
            if rgb:  # the colour axis last, as napari's RGB layers hold it
                block = kw["metadata"][KEY]
                view = LazyView(arr, perm=block["perm"], flip=block.get("flip"), path=path)
                skip = (view.perm[-1],)  # boxes over the layer's spatial axes only
            if channel is None and not rgb and "channel" in labels:
                n = arr.shape[list(labels).index("channel")]
                _notify(
                    [
                        f"{name}: {n} channels, more than "
                        f"{_mapping.MAX_CHANNEL_LAYERS} layers napari handles well: "
                        "shown as one layer with a channel slider"
                    ]
                )
            if channel is None and not rgb:  # stats span every channel: no use for one
                kw["contrast_limits"] = _mapping.contrast_limits_from_stats(record)
            whole = False  # whether the window is the min/max of every value
            if kw["contrast_limits"] is None and not rgb:  # RGB: napari's 8-bit range
                # from the plane napari shows first (its decoded block layer is then
                # cached for the first frame)
                planes = [view] if channel is None else _channels(view, channel)
                scale = kw.get("scale") if channel is None else (kw.get("scale") or [None])[0]
                limits = [_mapping.contrast_limits_from_sample(p, scale=scale) for p in planes]
                kw["contrast_limits"] = limits[0] if channel is None else limits
                whole = all(_mapping.sample_is_whole(p.shape) for p in planes)
            if not rgb:  # the slider spans the data, not only the initial window
                spans = _mapping.contrast_range(
                    record, arr.dtype, kw["contrast_limits"], whole=whole
                )
                metadata = kw["metadata"]  # one per channel layer, or the layer's
                metadata = metadata if isinstance(metadata, list) else [metadata]
                spans = spans if isinstance(spans, list) else [spans] * len(metadata)
                for one, span in zip(metadata, spans, strict=True):
                    if span is not None:
                        one[KEY]["contrast_range"] = list(span)
                if any(span is not None for span in spans):
                    _widen_contrast_when_added()
            if channel is not None:
                skip = (view.perm[channel],)
            layers.append((view, kw, "image"))
        n = orient.n_spatial
        names = orient.view_labels(record.spatial.axis_labels)
        shown = view.shape[:-1] if rgb else view.shape  # an RGB layer's axes
        _notify(
            _edge_on_notes(
                shown[len(shown) - n :],
                None if names is None else names[ndim - n :],
                ndim - n - (1 if skip else 0),  # non-spatial dims of the layer
                name,
            )
        )
    shapes = shapes_layer_data(
        record,
        ndim,
        name=f"{name} boxes",
        path=path,
        skip_axes=skip,
        unit_ok=_unit_ok,
        shape=arr.shape if has_array else None,
    )
    if shapes is not None:
        layers.append((*shapes, "shapes"))
        _notify(_box_view_notes(*shapes))
        _follow_view()
    if adopted is not None:
        for _, kw, _ in layers:
            metas = kw["metadata"] if isinstance(kw["metadata"], list) else [kw["metadata"]]
            for m in metas:
                m[KEY]["record"] = stored.to_mapping()
    return layers


def _reorient_open_layers(name: str, frame: str, key) -> None:
    """Show the viewer's layers of files without a world on this file's grid in its world.

    The counterpart of :func:`frame_by_geometry` at open time, for a prediction opened
    before its image: a layer read as stored, not moved since, of a file without boxes, is
    re-oriented in place (its data is transposed as a view: what was painted stays).
    """
    ours = _viewer_layers()
    with_boxes = {block.get("path") for _, block in ours if block.get("layer") == "shapes"}
    for layer, block in ours:
        if block.get("layer") not in ("image", "labels"):
            continue
        if (
            block.get("world_frame") is not None
            or "channel" in block
            or block.get("path") in with_boxes
        ):
            continue
        ndim = len(block["perm"])
        meta = layer.as_layer_data_tuple()[1]
        if not all(_mapping._unchanged(meta, block["as_read"], ndim)):
            continue  # moved or relabelled by the user: left as it is
        stored = as_meta(block["record"])
        if frame_by_geometry(stored, ndim, [(name, frame, key)]) is None:
            continue
        shown = Meta.from_mapping(stored.to_mapping())
        shown.spatial.coord_system = frame
        make = _mapping.labels_layer_kwargs if block["layer"] == "labels" else None
        make = make or _mapping.image_layer_kwargs
        kw = make(
            shown,
            ndim,
            name=layer.name,
            path=block.get("path"),
            dtype=block.get("dtype"),
            unit_ok=_unit_ok,
        )
        new = kw["metadata"][KEY]
        new["record"] = stored.to_mapping()
        axes = [block["perm"].index(a) for a in new["perm"]]
        was = list(block.get("flip") or [False] * ndim)
        # reverse the axes shown reversed before or now, not both
        flip = [f != was[a] for a, f in zip(axes, new["flip"], strict=True)]
        data = layer.data
        if isinstance(data, np.ndarray):
            data = data.transpose(axes)
            if any(flip):  # a view: what was painted stays, and stays paintable
                data = np.flip(data, [k for k, f in enumerate(flip) if f])
        elif isinstance(data, LazyView) and data._is_reordering():
            data = LazyView(
                data.source,
                perm=[data.perm[a] for a in axes],
                flip=[data.flip[a] != f for a, f in zip(axes, flip, strict=True)],
                path=data.path,
            )
        else:
            data = LazyView(data, perm=axes, flip=flip)
        layer.data = data
        for attr in ("scale", "translate", "rotate", "shear", "axis_labels", "units"):
            if kw.get(attr) is not None:
                setattr(layer, attr, kw[attr])
        layer.metadata = {**layer.metadata, KEY: new}
        _notify(
            [
                f"{layer.name}: no coord_system, but the grid of {name} (spacing, origin, "
                f"direction): now shown in its {frame} world, overlaying it"
            ]
        )


def _notify(notes) -> None:
    """Show each note once, as a napari notification (the reader runs inside napari)."""
    if notes:
        from napari.utils.notifications import show_info

        for note in notes:
            show_info(note)


_PLANES = {"R-L": "sagittal ", "A-P": "coronal ", "S-I": "axial "}


def _follow_view() -> None:
    """Have every live napari viewer (:func:`_live_viewers`) redraw the boxes of its
    ``.mla`` boxes layers in the plane shown whenever the view is rolled
    (``viewer.dims.order``), switched to 2D, or a layer is added (a file opened in a
    rolled view). Connecting again is a no-op (napari ignores a callback already
    connected)."""
    for viewer in _live_viewers():
        viewer.dims.events.order.connect(_redraw_boxes_of_source)
        viewer.dims.events.ndisplay.connect(_redraw_boxes_of_source)
        viewer.layers.events.inserted.connect(_redraw_boxes_of_source)


def _redraw_boxes_of_source(event: Any) -> None:
    """A view or layer-list event of a viewer: redraw that viewer's boxes."""
    for viewer in _live_viewers():
        if event.source is viewer.dims or event.source is viewer.layers:
            redraw_boxes_in_view(viewer)
            return


def redraw_boxes_in_view(viewer) -> None:
    """Draw the stored boxes of ``viewer``'s ``.mla`` boxes layers in the plane it shows.

    See :func:`napari_mlarray._boxes.redrawn_in_plane`; in a 3D view nothing changes.
    """
    import pandas as pd

    if viewer.dims.ndisplay != 2:
        return
    for layer in list(viewer.layers):
        block = layer.metadata.get(KEY) if isinstance(layer.metadata, dict) else None
        if not isinstance(block, dict) or block.get("layer") != "shapes" or layer.ndim < 3:
            continue
        offset = viewer.dims.ndim - layer.ndim
        plane = [d - offset for d in viewer.dims.displayed if d >= offset]
        if len(plane) != 2:
            continue
        with warnings.catch_warnings(record=True) as heard:
            warnings.simplefilter("always")
            redrawn = redrawn_in_plane(
                list(layer.data), layer.features, block, tuple(plane), layer.name
            )
        _notify([str(w.message) for w in heard])
        if redrawn is None:
            continue
        remove, added, features, update = redrawn
        defaults = {k: layer.feature_defaults[k][0] for k in layer.feature_defaults}
        layer.selected_data = set()
        if remove:
            layer.selected_data = set(remove)
            layer.remove_selected()
        if added:
            layer.add(added, shape_type="rectangle")
        layer.features = pd.DataFrame(features)
        layer.feature_defaults = defaults  # a new rectangle: no box, no label, no score
        layer.refresh_colors(update_color_mapping=False)  # each label keeps its colour
        layer.refresh_text()
        layer.refresh()
        block.update(update)


def _box_view_notes(data: list, kw: dict) -> list[str]:
    """A note on how a volume's boxes are drawn: as rectangles in the plane shown, redrawn
    when the view is rolled (napari shows a shape only in the plane it lies in)."""
    if not data or int(kw.get("ndim") or 0) < 3:
        return []
    return [
        f"{kw.get('name')}: each box is drawn as one rectangle per slice in the view shown "
        "(axial, sagittal or coronal: rolling the view redraws them); an edit of the "
        "rectangle on the slice shown applies to the whole box, and a rectangle drawn in "
        "any view is saved as a box one slice thick. In the 3D view they stay as last drawn."
    ]


def _edge_on_notes(shape, labels, m: int, name: str) -> list[str]:
    """A note for a single slice that napari's default view shows edge-on.

    napari displays the last two dims; a volume whose one slice lies across
    them (a sagittal or coronal localizer, ``shape`` ``(16, 16, 1)`` in the
    S-I, A-P, R-L view) shows as a line one voxel wide. napari's Roll button
    skips one-step dims, so the note gives the dims order that shows the slice
    in its plane (a reader cannot set it: it has no viewer).

    Parameters
    ----------
    shape : sequence of int
        The shown spatial axes' lengths, in view order.
    labels : list of str or None
        Their axis labels.
    m : int
        Number of non-spatial dims before them in the layer.
    name : str
        Layer name.
    """
    if len(shape) != 3 or shape[0] <= 1 or [shape[1], shape[2]].count(1) != 1:
        return []
    flat = 1 if shape[1] == 1 else 2
    rest = [k for k in range(3) if k != flat]
    lab = list(labels) if labels is not None else [f"axis {m + k}" for k in range(3)]
    order = (*range(m), m + flat, *(m + k for k in rest))
    plane = _PLANES.get(lab[flat], "")
    return [
        f"{name}: a single {plane}slice ({lab[rest[0]]} x {lab[rest[1]]}, one voxel along "
        f"{lab[flat]}): the default view shows it edge-on, as a line one voxel wide. To see "
        f"it in its plane, right-click the Roll dimensions button and drag {lab[flat]} to the "
        f"top of the list (viewer.dims.order = {order}), or switch to the 3D view."
    ]


def _channels(view: LazyView, axis: int) -> list:
    return [view[(slice(None),) * axis + (c,)] for c in range(view.shape[axis])]


def _slabs(view):
    step = (view.chunks or (1,))[0] if view.ndim else 1
    for start in range(0, view.shape[0] if view.ndim else 1, max(1, step)):
        yield slice(start, start + step), np.asarray(view[start : start + step])


def _labels_data(view: LazyView) -> np.ndarray | None:
    """The label map as a writable integer numpy array, or ``None`` if not integral.

    Float masks with integral values are cast to the smallest integer dtype
    holding them, slab by slab (peak memory: the result plus one chunk slab).
    Integer maps above :data:`napari_mlarray._lazy.MAX_EAGER_LABELS_BYTES` are returned lazily
    (napari reads the slices it shows); float ones that large open as images.
    """
    if int(np.prod(view.shape)) * max(view.dtype.itemsize, 1) > _lazy.MAX_EAGER_LABELS_BYTES:
        if view.dtype.kind in "iu":
            warnings.warn(
                f"label map of shape {tuple(view.shape)} is large: opened read-only on demand",
                UserWarning,
                stacklevel=2,
            )
            return view
        return None
    if view.dtype.kind in "iu":
        out = np.empty(view.shape, view.dtype)
    elif view.dtype.kind == "b":
        out = np.empty(view.shape, np.uint8)
    elif view.dtype.kind == "f" and view.ndim:
        lo, hi = np.inf, -np.inf
        for _, slab in _slabs(view):
            if slab.size and not np.array_equal(slab, np.round(slab)):  # NaN fails too
                return None
            if slab.size:
                lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
        out = np.empty(view.shape, _mapping.label_dtype(lo, hi) if hi >= lo else np.uint8)
    else:
        return None
    if not view.ndim:
        return np.asarray(view).astype(out.dtype)
    for sl, slab in _slabs(view):
        out[sl] = slab
    return out
