"""Viewer tier: boxes drawn, edited and converted in every view (axial, sagittal, coronal).

Files are LPS volumes stored (R-L, A-P, S-I) with an S-I axis napari shows reversed, as a
CT exported from ITK is; every save goes through the plugin's writer and is read back with
mlarray.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception as exc:  # qtpy raises its own error types for a missing binding
    pytest.skip(f"no usable Qt binding: {exc}", allow_module_level=True)

from mlarray import Meta, MLArray
from mlarray.io import save_mla

pytestmark = pytest.mark.qt

SHAPE = (12, 16, 20)  # stored R-L (5 mm), A-P, S-I (0.7 mm)
BOX = [[3, 7], [4, 10], [5, 13]]


def _ct_with_a_box(path, *, labels=("lesion",), scores=None):
    """An int32 volume of unique values (a voxel's value is its stored index) with one box."""
    record = Meta().to_mapping()
    record["spatial"].update(
        spacing=[5.0, 0.7, 0.7],
        origin=[-100.0, -20.0, -20.0],
        direction=np.eye(3).tolist(),
        coord_system="LPS",
    )
    record["bbox"] = {
        "bboxes": [BOX],
        "labels": None if labels is None else list(labels),
        "scores": scores,
    }
    data = np.arange(math.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    return save_mla(path, data, Meta.from_mapping(record)), data


def _open(viewer, path):
    layers = viewer.open(str(path), plugin=None)
    image = next(lay for lay in layers if lay._type_string == "image")
    shapes = next(lay for lay in layers if lay._type_string == "shapes")
    return image, shapes


def _save_and_read(viewer, layers, path):
    viewer.layers.selection = set(layers)
    assert viewer.layers.save(str(path), selected=True, plugin="napari-mlarray") == [str(path)]
    return MLArray.open(path)


def _stored_extent(image, data, index) -> list[list[int]]:
    """``[min, max)`` stored index per axis of the image layer's voxels ``index``."""
    under = np.asarray(image.data[index]).ravel()
    where = np.unravel_index(under, data.shape)  # a voxel's value is its flat stored index
    return [[int(w.min()), int(w.max()) + 1] for w in where]


@pytest.mark.parametrize(
    ("view", "order"), [("sagittal", (2, 0, 1)), ("coronal", (1, 0, 2)), ("axial", (0, 1, 2))]
)
def test_rectangle_drawn_in_any_view_saves_a_one_slice_thick_box(
    make_napari_viewer, tmp_path, view, order
):
    path, data = _ct_with_a_box(tmp_path / "ct.mla")
    viewer = make_napari_viewer()
    image, shapes = _open(viewer, path)
    viewer.dims.order = order
    rows, cols = viewer.dims.displayed
    [slider] = viewer.dims.not_displayed
    # the slider on image slice 6 of that axis; the rectangle around image voxels 2..5 x 3..8
    point = list(viewer.dims.point)
    point[slider] = image.data_to_world([6 if d == slider else 0 for d in range(3)])[slider]
    viewer.dims.point = point
    index = [slice(None)] * 3
    index[slider], index[rows], index[cols] = slice(6, 7), slice(2, 6), slice(3, 9)
    corners = []
    for r, c in [(1.5, 2.5), (1.5, 8.5), (5.5, 8.5), (5.5, 2.5)]:
        corner = [6.0, 6.0, 6.0]
        corner[rows], corner[cols] = r, c
        corners.append(image.data_to_world(corner))
    # napari's rectangle tool: the displayed dims as drawn, the slider's position elsewhere
    vertices = np.array([shapes.world_to_data(c) for c in corners])
    vertices[:, slider] = shapes.world_to_data(viewer.dims.point)[slider]
    shapes.add(vertices, shape_type="rectangle")

    back = _save_and_read(viewer, [image, shapes], tmp_path / "out.mla")
    assert np.array_equal(back[...], data)
    stored, drawn = back.meta.bbox.bboxes
    assert stored == BOX
    expected = _stored_extent(image, data, tuple(index))
    assert max(hi - lo for lo, hi in expected) > 1  # (the drawn extent is not one slice)
    np.testing.assert_allclose(np.asarray(drawn, float), expected, atol=1e-4)
    assert back.meta.bbox.labels == ["lesion", ""]
