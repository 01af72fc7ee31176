"""npe2 writers for ``.mla`` files: thin glue over the pure mapping modules.

Image/labels layers: :mod:`napari_mlarray._mapping`; boxes (Shapes layers):
:mod:`napari_mlarray._boxes`.

Every writer is a pure function of (path, layer data, layer metadata): it looks
at no viewer. A layer read from an ``.mla`` file (or made for one with the
"New labels for this image" command, :mod:`napari_mlarray._new_labels`) carries
its ``.mla`` block in ``metadata`` and is stored like that file; any other layer
is stored as napari holds it (see :func:`napari_mlarray._mapping.record_from_layer`).

The layer data goes to :func:`mlarray.io.save_mla` as it is, or as a lazy
transpose back into the stored axis order: a lazily opened image streams
chunk by chunk, also when it is saved over the file it came from (``save_mla``
writes a temporary file and replaces the old one atomically).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlarray.errors import MLArrayError
from mlarray.meta import Meta, MetaStatistics
from napari_mlarray import _mapping
from napari_mlarray._boxes import boxes_from_shapes, shapes_layer_data
from napari_mlarray._layer_common import KEY, common_layer_kwargs, with_metadata
from napari_mlarray._lazy import LazyView
from napari_mlarray._orientation import as_meta, layer_matrix

__all__ = [
    "LayerSaveError",
    "save_layers",
    "stored_axes",
    "write_layers",
    "write_single_image",
    "write_single_labels",
]

_STORAGE_KEYS = ("patch_size", "chunk_size", "block_size", "cparams", "dparams")


class LayerSaveError(MLArrayError, RuntimeError):
    """The selected layers cannot be saved as one ``.mla`` file.

    Raised by the npe2 writers instead of a ``ValueError``: napari takes a
    ``ValueError`` from a writer for "this writer does not apply" and shows
    its generic "not a valid writer" warning, hiding the reason.
    """


def _npe2_writer(func: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """Re-raise ``ValueError`` from ``func`` as :class:`LayerSaveError` (same message)."""

    @functools.wraps(func)
    def wrapper(path, *args):
        try:
            return func(path, *args)
        except ValueError as exc:
            raise LayerSaveError(f"{os.fspath(path)}: {exc}") from exc

    return wrapper


@_npe2_writer
def write_single_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for an Image layer; see :func:`save_layers`."""
    return save_layers(path, [(data, meta, "image")])


@_npe2_writer
def write_single_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for a Labels layer; see :func:`save_layers`."""
    return save_layers(path, [(data, meta, "labels")])


@_npe2_writer
def write_layers(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 multi-layer writer (one image or labels layer + Shapes); see :func:`save_layers`."""
    return save_layers(path, layer_data)


def save_layers(
    path: str | os.PathLike,
    layer_data: list[tuple],
    *,
    storage: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Save at most one image/labels layer and any Shapes layers as one ``.mla`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Target ``.mla`` file (may be the file the image was opened from).
    layer_data : list of (data, meta, layer_type)
        As napari's ``layer.as_layer_data_tuple()``. Shapes layers become the
        file's boxes; Shapes alone give a boxes-only file, except over an
        ``.mla`` file holding an array: that array is kept as it is and the
        Shapes become its boxes (see :func:`_file_array_layer`). Without Shapes, an
        opened layer keeps the boxes its file had. A multiscale layer is saved
        at full resolution; an RGB(A) layer with its colours as a trailing
        ``channel`` axis. An opened layer is stored in its file's dtype unless
        one of its values does not survive that cast; then in its own dtype.
    storage : dict, optional
        Keyword arguments for :func:`mlarray.io.save_mla` (``patch_size``,
        ``chunk_size``, ``block_size``, ``cparams``, ``dparams``).
    progress : callable, optional
        ``progress(done, total)``, forwarded to ``save_mla``.

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    LayerSaveError
        For a selection an ``.mla`` file cannot hold (two images, an image and
        a labels layer, points...), or one channel of a multi-channel file
        saved over that file; the message says what to do instead.
    """
    from mlarray.io import save_mla

    storage = dict(storage or {})
    unknown = set(storage) - set(_STORAGE_KEYS)
    if unknown:
        raise TypeError(f"storage: unknown option(s) {sorted(unknown)}; use {_STORAGE_KEYS}")
    mains = [t for t in layer_data if t[2] in ("image", "labels")]
    shapes = [(d, m) for d, m, kind in layer_data if kind == "shapes"]
    other = [kind for _, _, kind in layer_data if kind not in ("image", "labels", "shapes")]
    if other or len(mains) > 1 or not layer_data:
        kinds = ", ".join(kind for _, _, kind in layer_data) or "no layers"
        raise LayerSaveError(
            f"{os.fspath(path)}: an .mla file holds one image or labels layer (plus Shapes "
            f"layers for its boxes), but the selection has {kinds}. Select one image or one "
            "labels layer (and its Shapes layers) and save each to its own .mla file."
        )
    if mains:
        data, meta, kind = mains[0]
        if meta.get("multiscale"):  # an .mla holds one resolution: the full one
            data = data[0]
        rgb = bool(meta.get("rgb"))
        if rgb:
            meta = _rgb_as_channel_axis(meta, len(data.shape))
        meta = _without_record_if_derived(path, len(data.shape), meta)
        _refuse_channel_over_its_file(path, meta)
        _refuse_new_labels_over_their_image(path, meta)
        record, undo = _mapping.record_from_layer(data.shape, data.dtype, meta, kind)
        _follow_own_file(path, meta, record, keep_boxes=not shapes)
        if undo.dtype is not None and not _casts_losslessly(data, undo.dtype):
            undo = dataclasses.replace(undo, dtype=None)  # values the file's dtype cannot hold
        out = data if undo.identity else LazyView(data, **undo.view_kwargs)
        if isinstance(out, LazyView):
            out = out.simplified()  # an unchanged opened image: its own chunks are copied
        if shapes:
            block = (meta.get("metadata") or {}).get(KEY) or {}
            target = {
                "axes": _layer_axes(undo),
                "shape": out.shape,
                # the boxes are in stored index order: the data's reversed axes put back
                "matrix": undo.stored_matrix(layer_matrix(meta, data.ndim), data.shape),
                "path": block.get("path"),
            }
            if rgb:  # the boxes are on the picture's spatial axes, not its colours
                target = _without_layer_dim(target, data.ndim - 1)
            elif block.get("boxes_without_dim") is not None:  # nor on its channels
                target = _without_layer_dim(target, int(block["boxes_without_dim"]))
            record["bbox"], _ = boxes_from_shapes(shapes, target=target)
    else:
        kept = _file_array_layer(path, shapes)
        if kept is not None:  # the file holds an array: keep it, replace only its boxes
            return save_layers(path, kept, storage=storage, progress=progress)
        bbox, record = boxes_from_shapes(shapes)
        if record is None:  # Shapes made in napari: geometry from the layer itself
            _, m = shapes[0]
            ndim = int(m.get("ndim") or 2)
            record, _ = _mapping.record_from_layer((1,) * ndim, np.float64, m, "image")
        record["bbox"] = bbox
        record["_has_array"] = {"has_array": False}
        record["spatial"]["shape"] = None
        record["is_seg"] = {"is_seg": None}
        record["stats"] = MetaStatistics().to_mapping()
        out = None
    if out is not None and not storage:
        storage = _stored_layout(record, out.shape)
    save_mla(path, out, record, progress=progress, **storage)
    return [os.fspath(path)]


def _file_array_layer(path: str | os.PathLike, shapes: list[tuple]) -> list[tuple] | None:
    """The layers to save for Shapes saved alone over ``path``, when it holds an array.

    An annotator saving only a boxes layer over the file it came from (or new
    boxes over the image they were drawn on) means "update the boxes in this
    file": the file's array, metadata and layout stay, and its boxes become the
    Shapes' (mapped into its voxels as the reader shows the file). When none of
    the Shapes layers was read from that file, the boxes it has are kept too and
    the new ones added after them. ``None`` when ``path`` does not exist or holds
    no array (a boxes-only file, replaced as napari asked).

    Parameters
    ----------
    path : str or os.PathLike
        The save target.
    shapes : list of (data, meta)
        The Shapes layers saved.

    Returns
    -------
    list of (data, meta, layer_type) or None
        The file's array as an image layer the way the reader opens it, then the
        Shapes layers.

    Raises
    ------
    LayerSaveError
        When ``path`` exists but cannot be read as an ``.mla`` file: saving the
        boxes there would replace a file whose content cannot be kept.
    """
    from mlarray import MLArray
    from mlarray.io import read_meta

    target = os.fspath(path)
    if not os.path.isfile(target):
        return None
    try:
        stored = read_meta(target)
        if not stored._has_array.has_array or stored.spatial.shape is None:
            return None
        arr = MLArray.open(target)
    except (MLArrayError, OSError) as exc:
        raise LayerSaveError(
            f"{target}: saving only boxes over this file would replace it, but it cannot be "
            f"read to keep its image ({exc}); save the boxes to a new .mla file"
        ) from exc
    own = [(d, m) for d, m in shapes if _shapes_block_path(m, target) is not None]
    shown = Meta.from_mapping(stored.to_mapping())
    if own:
        block = ((own[0][1].get("metadata") or {}).get(KEY)) or {}
        source = block["path"]  # the file as the Shapes name it: their boxes are its own
        if stored.spatial.world_frame is None and block.get("world_frame") in ("RAS", "LPS"):
            shown.spatial.coord_system = block["world_frame"]  # the reader showed it so
    else:
        source = target
    kw, orient, block = common_layer_kwargs(
        shown, arr.ndim, name=Path(target).stem, path=source, layer="image"
    )
    block["record"] = stored.to_mapping()
    # as the reader shows the file: a label map as one Labels layer over every axis; an
    # image's colours or channels (one layer each) without its boxes
    as_labels = bool(stored.is_seg.is_seg)
    colour = None if as_labels else _mapping.rgb_view_axis(shown, orient, np.dtype(arr.dtype).str)
    skip: tuple[int, ...] = ()
    if colour is None:
        split = None if as_labels else _mapping.channel_layers_axis(shown, orient)
        if split is not None:  # read as one layer per channel, the boxes over the others
            skip = (orient.perm[split],)
            block["boxes_without_dim"] = split
        with_metadata(kw, block)
    else:  # an RGB(A) picture: one RGB layer, its boxes over the spatial axes (as read)
        skip = (orient.perm[colour],)
        kw = _mapping.rgb_kwargs(kw, block, colour)
    view = LazyView(arr, perm=block["perm"], flip=block.get("flip"), path=target)  # as read
    layers: list[tuple] = [(view, kw, "image")]
    if not own and stored.bbox.bboxes:  # keep the file's boxes, as the reader draws them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # boxes not drawn are kept as stored anyway
            drawn = shapes_layer_data(
                shown, arr.ndim, name="", path=source, skip_axes=skip, shape=arr.shape
            )
        if drawn is not None:
            data, skw = drawn
            skw["metadata"][KEY]["record"] = stored.to_mapping()
            layers.append((data, skw, "shapes"))
    return layers + [(d, m, "shapes") for d, m in shapes]


def _shapes_block_path(meta: dict, path: str) -> str | None:
    """The path of the file a Shapes layer was read from, when that is ``path`` (samefile)."""
    block = (meta.get("metadata") or {}).get(KEY) or {}
    source = block.get("path") if block.get("layer") == "shapes" else None
    return source if source is not None and _same_file(source, path) else None


#: Elements compared at a time when checking that a cast back to the stored dtype is exact.
_CAST_CHECK_ELEMENTS = 1 << 24


def _casts_losslessly(data: Any, dtype: str) -> bool:
    """True when every value of ``data`` survives a cast to ``dtype`` unchanged.

    The reader widens some stored dtypes (a bool mask opens as uint8 labels, a
    float mask as integers) and napari can convert a layer's dtype; the save
    casts back to the stored dtype only when no painted value changes.
    Checked a slab at a time along the first axis.
    """
    src, dst = np.dtype(data.dtype), np.dtype(dtype)
    if src == dst or np.can_cast(src, dst, casting="safe"):
        return True
    n = len(data.shape)
    if n == 0:
        value = np.asarray(data)
        return bool(np.array_equal(value.astype(dst).astype(src), value, equal_nan=src.kind == "f"))
    row = max(1, math.prod(data.shape[1:]))
    step = max(1, _CAST_CHECK_ELEMENTS // row)
    for start in range(0, data.shape[0], step):
        slab = np.asarray(data[start : start + step])
        with np.errstate(invalid="ignore", over="ignore"):
            back = slab.astype(dst).astype(src)
        if not np.array_equal(back, slab, equal_nan=src.kind == "f"):
            return False
    return True


def _follow_own_file(path: str | os.PathLike, meta: dict, record: dict, keep_boxes: bool) -> None:
    """Take the storage (and, with ``keep_boxes``, the boxes) ``path`` holds now into ``record``
    when ``path`` is the file the layer was read from and still holds an array of its shape.

    The layer's ``.mla`` block keeps the record as first read; since then the file may have
    been recompressed in place (Recompress .mla, "Overwrite the source file") or got new
    boxes (its boxes layer saved over it alone). Saving the layer over that file keeps
    what the file is now instead of putting the read record's codec, layout and boxes back.
    A file that cannot be read now leaves ``record`` as it is (the layer still saves).
    """
    from mlarray.io import read_meta

    block = (meta.get("metadata") or {}).get(KEY) or {}
    source = block.get("path")
    if source is None:
        return
    try:
        if not os.path.samefile(path, source):
            return
        now = read_meta(path)
    except (OSError, MLArrayError):  # gone, or unreadable: the layer's record stays
        return
    shape = record["spatial"].get("shape")
    stored = now.spatial.shape
    if not now._has_array.has_array or shape is None or stored is None:
        return
    if [int(n) for n in stored] != [int(n) for n in shape]:
        return  # another array there now: nothing of it applies to this layer
    current = now.to_mapping()
    record["blosc2"] = current["blosc2"]
    if keep_boxes:
        record["bbox"] = current["bbox"]


def _without_record_if_derived(path: str | os.PathLike | None, ndim: int, meta: dict) -> dict:
    """``meta`` without its ``.mla`` block when the layer was derived in napari from an opened
    layer (Make Projection, Split Stack, Merge to Stack copy the block but change the axes).

    Such a layer is saved as a layer made in napari (its own transforms; the reader's anatomy
    labels keep its anatomy, see :func:`napari_mlarray._mapping.record_from_layer`). Saving
    it over the file it was derived from would replace that file's array: refused.
    """
    metadata = meta.get("metadata") or {}
    block = metadata.get(KEY)
    if not isinstance(block, dict) or block.get("layer") not in ("image", "labels"):
        return meta
    n = _mapping.read_layer_axes(block)
    if n == ndim:
        return meta
    source = block.get("path")
    if path is not None and source is not None and _same_file(path, source):
        raise LayerSaveError(
            f"{os.fspath(path)}: layer {meta.get('name')!r} has {ndim} axes, but it was "
            f"made in napari from this file's {n}-axis layer (a projection, a split or a "
            "merged stack); saving it over the file would replace the file's array. "
            "Save it to a new .mla file."
        )
    return {**meta, "metadata": {k: v for k, v in metadata.items() if k != KEY}}


def _refuse_channel_over_its_file(path: str | os.PathLike, meta: dict) -> None:
    """Raise when ``meta`` is one channel of a multi-channel file and ``path`` is that file.

    The layer holds one channel; written there it would replace the file and
    delete the other channels.
    """
    block = (meta.get("metadata") or {}).get(KEY) or {}
    channel, source = block.get("channel"), block.get("path")
    if channel is None or source is None:
        return
    shape = as_meta(block["record"]).spatial.shape
    n = None if shape is None else int(shape[channel["axis"]])
    if _same_file(path, source) and n != 1:
        count = "" if n is None else f"{n} "
        raise LayerSaveError(
            f"{os.fspath(path)}: layer {meta.get('name')!r} is channel {channel['index']} of "
            f"the {count}channels in this file; saving it over the file would delete the "
            "other channels. Save it to a new .mla file."
        )


def _refuse_new_labels_over_their_image(path: str | os.PathLike, meta: dict) -> None:
    """Raise when ``meta`` is a labels layer made in napari for an opened file's layer
    (the plugin's "New labels layer") and ``path`` is that file: written there it would
    replace the file's image with the label map."""
    block = (meta.get("metadata") or {}).get(KEY) or {}
    made_for = block.get("made_for")
    if made_for is None or not _same_file(path, made_for):
        return
    raise LayerSaveError(
        f"{os.fspath(path)}: layer {meta.get('name')!r} was made in napari for this file's "
        "layer; saving it over the file would replace the file's array with the label map. "
        "Save it to a new .mla file."
    )


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one existing file."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: not the same file
        return False


def _rgb_as_channel_axis(meta: dict, ndim: int) -> dict:
    """``meta`` of an RGB(A) layer with its colour axis as a trailing ``channel`` axis.

    napari's transforms of an RGB layer cover the ``ndim - 1`` leading axes only.
    """
    n = ndim - 1
    inner = layer_matrix(meta, n)
    full = np.eye(ndim + 1)
    full[:n, :n] = inner[:n, :n]
    full[:n, ndim] = inner[:n, n]
    labels = meta.get("axis_labels") or [str(k - n) for k in range(n)]
    units = meta.get("units") or [None] * n
    geometry = dict.fromkeys(("scale", "translate", "rotate", "shear"))
    return {
        **meta,
        **geometry,
        "affine": full,
        "axis_labels": [*labels, "channel"],
        "units": [*units, None],
        "rgb": False,
    }


def _without_layer_dim(target: dict, dim: int) -> dict:
    """The boxes' ``target`` without the layer's ``dim``, whose Shapes never had it: the
    colours of an RGB(A) layer saved as a last ``channel`` axis
    (:func:`_rgb_as_channel_axis`), or the channels the reader shows as one layer each
    (the boxes align with the spatial dims)."""
    axes = list(target["axes"])
    gone = axes.pop(dim)  # the stored axis of the layer's dim
    matrix = np.delete(np.delete(target["matrix"], dim, axis=0), dim, axis=1)
    return {
        **target,
        "axes": [a - (a > gone) for a in axes],
        "shape": tuple(n for a, n in enumerate(target["shape"]) if a != gone),
        "matrix": matrix,
    }


def stored_axes(layer_data: tuple) -> list[int | None]:
    """Layer axis each stored axis of the saved array comes from.

    Parameters
    ----------
    layer_data : (data, meta, layer_type)
        An image or labels layer's ``as_layer_data_tuple()``.

    Returns
    -------
    list of int or None
        One entry per stored axis; ``None`` for a length-1 axis the layer does
        not have (a channel split into layers).
    """
    data, meta, kind = layer_data
    if meta.get("rgb"):
        meta = _rgb_as_channel_axis(meta, len(data.shape))
    meta = _without_record_if_derived(None, len(data.shape), meta)
    _, undo = _mapping.record_from_layer(data.shape, data.dtype, meta, kind)
    layer_axes = iter(undo.perm)
    n = len(undo.perm) + len(undo.insert)
    return [None if a in undo.insert else next(layer_axes) for a in range(n)]


def _layer_axes(undo: _mapping.Undo) -> list[int]:
    """Stored axis of each layer axis."""
    stored = [a for a in range(len(undo.perm) + len(undo.insert)) if a not in undo.insert]
    axes = [0] * len(undo.perm)
    for j, a in enumerate(stored):
        axes[undo.perm[j]] = a
    return axes


def _stored_layout(record: dict, shape: tuple[int, ...]) -> dict:
    """Keep the file's chunk/block layout and codec when the shape did not change."""
    b = record.get("blosc2") or {}
    out = {k: b[k] for k in ("cparams", "dparams") if b.get(k)}
    chunks, blocks = b.get("chunk_size"), b.get("block_size")
    if chunks and blocks and list(record["spatial"].get("shape") or []) == list(shape):
        out.update(patch_size=None, chunk_size=list(chunks), block_size=list(blocks))
    return out
