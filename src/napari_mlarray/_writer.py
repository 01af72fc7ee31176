"""npe2 writers for ``.mla`` files: thin glue over the pure mapping modules.

Image/labels layers: :mod:`napari_mlarray._mapping`; boxes (Shapes layers):
:mod:`napari_mlarray._boxes`.

The layer data goes to :func:`mlarray.io.save_mla` as it is, or as a lazy
transpose back into the stored axis order: a lazily opened image streams
chunk by chunk, also when it is saved over the file it came from (``save_mla``
writes a temporary file and replaces the old one atomically).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from mlarray.meta import MetaStatistics
from napari_mlarray import _mapping
from napari_mlarray._boxes import boxes_from_shapes
from napari_mlarray._layer_common import KEY
from napari_mlarray._lazy import LazyView
from napari_mlarray._orientation import layer_matrix

__all__ = [
    "save_layers",
    "stored_axes",
    "write_layers",
    "write_single_image",
    "write_single_labels",
]

_STORAGE_KEYS = ("patch_size", "chunk_size", "block_size", "cparams", "dparams")


def write_single_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for an Image layer; see :func:`save_layers`."""
    return save_layers(path, [(data, meta, "image")])


def write_single_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for a Labels layer; see :func:`save_layers`."""
    return save_layers(path, [(data, meta, "labels")])


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
        file's boxes; Shapes alone give a boxes-only file. Without Shapes, an
        opened layer keeps the boxes its file had.
    storage : dict, optional
        Keyword arguments for :func:`mlarray.io.save_mla` (``patch_size``,
        ``chunk_size``, ``block_size``, ``cparams``, ``dparams``).
    progress : callable, optional
        ``progress(done, total)``, forwarded to ``save_mla``.

    Returns
    -------
    list of str
        The written path.
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
        raise ValueError(
            "an .mla file holds one image or labels layer plus Shapes layers (boxes); "
            f"got {[kind for _, _, kind in layer_data]}: save the layers one by one"
        )
    if mains:
        data, meta, kind = mains[0]
        template = _viewer_template(data, meta)
        if template is not None:
            meta = _mapping.adopt_template(meta, template, kind, data.dtype)
        record, undo = _mapping.record_from_layer(data.shape, data.dtype, meta, kind)
        out = data if undo.identity else LazyView(data, **undo.view_kwargs)
        if isinstance(out, LazyView):
            out = out.simplified()  # an unchanged opened image: its own chunks are copied
        if shapes:
            target = {
                "axes": _layer_axes(undo),
                "shape": out.shape,
                "matrix": layer_matrix(meta, data.ndim),
                "path": ((meta.get("metadata") or {}).get(KEY) or {}).get("path"),
            }
            record["bbox"], _ = boxes_from_shapes(shapes, target=target)
    else:
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


def _viewer_template(data: Any, meta: dict) -> dict | None:
    """The ``.mla`` block of an opened layer in the current viewer that ``data`` was made over.

    Only for layers made in napari (no block of their own): the first layer
    read by this plugin with the same shape and the same data-to-world
    transform (one channel of a split image counts). Outside a running
    napari, or without a match, ``None``.
    """
    if (meta.get("metadata") or {}).get(KEY) is not None:
        return None
    napari = sys.modules.get("napari")  # never import napari (or Qt) from here
    viewer = napari.current_viewer() if napari is not None else None
    if viewer is None:
        return None
    ndim = len(data.shape)
    matrix = layer_matrix(meta, ndim)
    for layer in viewer.layers:
        block = (getattr(layer, "metadata", None) or {}).get(KEY)
        if not block or block.get("layer") not in ("image", "labels"):
            continue
        if tuple(layer.data.shape) != tuple(data.shape):
            continue
        if np.allclose(layer_matrix(layer.as_layer_data_tuple()[1], ndim), matrix, atol=1e-9):
            return block
    return None


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
