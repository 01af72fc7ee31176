"""The "New labels for this image" command: an empty Labels layer on an image's grid.

:func:`labels_kwargs_for_image` is pure (layer metadata in, ``add_labels``
keywords out). The new layer has the image's shape and transforms, and, for an
image read from an ``.mla`` file, that file's ``.mla`` block (without its
statistics, boxes and layout, see
:func:`napari_mlarray._mapping.adopt_template`): saved, it is stored like the
image (same axis order, world frame, ``coord_system`` and geometry), so the
mask pairs voxel for voxel with the image's array in Python. Over one channel
of a split image, the mask has the image's spatial axes without the channel.

:func:`new_labels_for_image` is the npe2 command behind the menu items
(Layers ▸ Annotate and File ▸ New Layer): napari injects the viewer.
"""

from __future__ import annotations

from typing import Any

import napari
import numpy as np

from napari_mlarray._layer_common import KEY
from napari_mlarray._mapping import adopt_template

__all__ = ["labels_kwargs_for_image", "labels_shape_for_image", "new_labels_for_image"]

_COPIED = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")


def labels_shape_for_image(data: Any, meta: dict) -> tuple[int, ...]:
    """Shape of a Labels layer on the grid of an image layer.

    Parameters
    ----------
    data : array-like or list of array-like
        The image layer's data (a list for a multiscale image: its first level).
    meta : dict
        The image layer's ``as_layer_data_tuple()[1]``.

    Returns
    -------
    tuple of int
        The image's shape, without the colour axis of an RGB(A) image.
    """
    full = data[0] if meta.get("multiscale") else data
    shape = tuple(int(n) for n in full.shape)
    return shape[:-1] if meta.get("rgb") else shape


def labels_kwargs_for_image(meta: dict, dtype: Any = np.uint8) -> dict:
    """``viewer.add_labels`` keywords (data excluded) for a mask over an image layer.

    Parameters
    ----------
    meta : dict
        The image layer's ``as_layer_data_tuple()[1]``.
    dtype : dtype-like
        Dtype of the new labels data (what a save stores).

    Returns
    -------
    dict
        The image's transforms, units and axis labels, a name, and for an image
        read from an ``.mla`` file the adopted ``.mla`` block in ``metadata``.
    """
    kw = {key: meta[key] for key in _COPIED if meta.get(key) is not None}
    kw["name"] = f"{meta.get('name') or 'image'} labels"
    template = (meta.get("metadata") or {}).get(KEY)
    if template and template.get("layer") in ("image", "labels"):
        kw["metadata"] = adopt_template({}, template, "labels", dtype)["metadata"]
        kw["metadata"][KEY]["made_for"] = template.get("path")  # where to suggest outputs
    return kw


def _target_image(viewer: napari.viewer.Viewer) -> napari.layers.Image | None:
    """The active image layer, else the only selected one, else the only one in the viewer."""
    Image = napari.layers.Image
    active = viewer.layers.selection.active
    if isinstance(active, Image):
        return active
    for candidates in (list(viewer.layers.selection), list(viewer.layers)):
        images = [layer for layer in candidates if isinstance(layer, Image)]
        if len(images) == 1:
            return images[0]
    return None


def new_labels_for_image(viewer: napari.viewer.Viewer) -> None:
    """Add an empty Labels layer on the grid of the selected image (npe2 command).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari (the current viewer).
    """
    image = _target_image(viewer)
    if image is None:
        from napari.utils.notifications import show_warning

        show_warning("New labels for this image: select the image layer the labels are for.")
        return
    data, meta, _ = image.as_layer_data_tuple()
    shape = labels_shape_for_image(data, meta)
    labels = viewer.add_labels(np.zeros(shape, np.uint8), **labels_kwargs_for_image(meta))
    viewer.layers.selection.active = labels
