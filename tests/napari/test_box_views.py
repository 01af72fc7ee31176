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
from tests.napari._helpers import view_index_inverse

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


def _rectangle_shown(viewer, shapes, slice_index: int) -> int:
    """Go to the Shapes layer's axial slice ``slice_index``; the box's rectangle shown there."""
    [slider] = viewer.dims.not_displayed
    point = list(viewer.dims.point)
    point[slider] = shapes.data_to_world([slice_index] * 3)[slider]
    viewer.dims.point = point
    [shown] = np.flatnonzero(shapes._data_view._displayed)
    return int(shown)


def _edit_features(shapes, row: int, **values) -> None:
    """Type new values into napari's features table (the row of the rectangle selected)."""
    features = shapes.features.copy()
    for key, value in values.items():
        features.loc[row, key] = value
    shapes.features = features
    shapes.refresh_text()


@pytest.mark.parametrize("into", ["its file", "another file"])
def test_box_relabelled_on_any_of_its_slices_saves_the_new_label_and_score(
    make_napari_viewer, tmp_path, into
):
    path, _ = _ct_with_a_box(tmp_path / "ct.mla", scores=[0.9])
    viewer = make_napari_viewer()
    image, shapes = _open(viewer, path)
    assert len(shapes.data) > 3  # one rectangle per slice of the box
    first_slice = min(round(float(d[0, 0])) for d in shapes.data)
    row = _rectangle_shown(viewer, shapes, first_slice + 3)  # a middle slice
    _edit_features(shapes, row, label="metastasis", score=0.4)
    assert shapes.text.values[row] == "metastasis 0.40"  # what the annotator sees
    if into == "its file":
        back = _save_and_read(viewer, [image, shapes], path)
        box = BOX
    else:  # the boxes saved with a new label map over the image (stored as napari shows it)
        other = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="mask")
        other.scale, other.translate = image.scale, image.translate
        back = _save_and_read(viewer, [other, shapes], tmp_path / "mask.mla")
        stored = np.unravel_index(np.asarray(image.data), SHAPE)  # per voxel shown
        inside = np.all(
            [(lo <= i) & (i < hi) for i, (lo, hi) in zip(stored, BOX, strict=True)], axis=0
        )
        where = np.argwhere(inside)
        box = np.c_[where.min(0), where.max(0) + 1]
    assert back.meta.bbox.labels == ["metastasis"]
    assert back.meta.bbox.scores == [pytest.approx(0.4)]
    np.testing.assert_allclose(np.asarray(back.meta.bbox.bboxes[0], float), box, atol=1e-4)


def test_box_given_different_labels_on_two_slices_warns_and_keeps_the_first(
    make_napari_viewer, tmp_path
):
    path, _ = _ct_with_a_box(tmp_path / "ct.mla")
    viewer = make_napari_viewer()
    image, shapes = _open(viewer, path)
    first_slice = min(round(float(d[0, 0])) for d in shapes.data)
    rows = [_rectangle_shown(viewer, shapes, first_slice + k) for k in (1, 2)]
    _edit_features(shapes, rows[0], label="metastasis")
    _edit_features(shapes, rows[1], label="cyst")
    first = "metastasis" if rows[0] < rows[1] else "cyst"
    with pytest.warns(UserWarning, match="different labels"):
        back = _save_and_read(viewer, [image, shapes], path)
    assert back.meta.bbox.labels == [first]
    assert back.meta.bbox.bboxes == [BOX]


def test_convert_to_labels_of_a_boxes_layer_masks_the_boxes_voxels(make_napari_viewer, tmp_path):
    from napari._app_model import get_app_model

    record = Meta().to_mapping()
    # (napari sizes the mask from the world's extent counted from 0: a world containing 0)
    record["spatial"].update(
        spacing=[5.0, 0.7, 0.7], origin=[-30.0, -5.0, -5.0], coord_system="LPS"
    )
    record["is_seg"] = {"is_seg": True}
    record["bbox"] = {"bboxes": [BOX], "labels": ["lesion"], "scores": None}
    seg = np.zeros(SHAPE, np.uint8)
    seg[tuple(slice(lo, hi) for lo, hi in BOX)] = 1  # the box is the lesion
    path = save_mla(tmp_path / "seg.mla", seg, Meta.from_mapping(record))
    viewer = make_napari_viewer()
    labels, shapes = viewer.open(str(path), plugin=None)
    assert (labels._type_string, shapes._type_string) == ("labels", "shapes")
    viewer.layers.selection = {shapes}
    get_app_model().commands.execute_command("napari.layer.convert_to_labels").result()
    [mask] = [lay for lay in viewer.layers if lay not in (labels, shapes)]
    assert mask._type_string == "labels"

    def world(layer, where):
        return np.array([layer.data_to_world(p) for p in np.argwhere(where)])

    filled, lesion = world(mask, np.asarray(mask.data) > 0), world(labels, np.asarray(labels.data))
    assert len(filled) == len(lesion) == math.prod(hi - lo for lo, hi in BOX)
    np.testing.assert_allclose(np.sort(filled, axis=0), np.sort(lesion, axis=0), atol=1e-6)
    # the boxes still save as stored, and an edit still lands on the stored axes
    back = _save_and_read(viewer, [labels, shapes], tmp_path / "out.mla")
    assert back.meta.bbox.bboxes == [BOX] and np.array_equal(back[...], seg)
    # moved one voxel towards the feet (napari's S-I runs head to feet): stored S-I index - 1
    step = np.zeros(3)
    step[list(shapes.axis_labels).index("S-I")] = 1.0
    shapes.data = [d + step for d in shapes.data]
    back = _save_and_read(viewer, [labels, shapes], tmp_path / "out2.mla")
    assert back.meta.bbox.bboxes == [[BOX[0], BOX[1], [BOX[2][0] - 1, BOX[2][1] - 1]]]


def test_opening_boxes_says_how_they_are_drawn(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    path, _ = _ct_with_a_box(tmp_path / "ct.mla")
    heard = []
    notification_manager.notification_ready.connect(heard.append)
    try:
        viewer = make_napari_viewer()
        _image, shapes = _open(viewer, path)
    finally:
        notification_manager.notification_ready.disconnect(heard.append)
    notes = [str(n.message) for n in heard if str(n.message).startswith(shapes.name)]
    assert len(notes) == 1
    assert "rolling the view redraws them" in notes[0]


@pytest.mark.parametrize(("view", "order"), [("sagittal", (2, 0, 1)), ("coronal", (1, 0, 2))])
def test_boxes_follow_the_view_and_an_edit_there_is_saved(
    make_napari_viewer, tmp_path, view, order
):
    path, data = _ct_with_a_box(tmp_path / "ct.mla", scores=[0.9])
    viewer = make_napari_viewer()
    image, shapes = _open(viewer, path)
    viewer.dims.order = order
    rows, cols = viewer.dims.displayed
    [slider] = viewer.dims.not_displayed
    # the slider on an image slice through the middle of the box: its rectangle is shown
    inside = np.unravel_index(np.asarray(image.data), SHAPE)
    in_box = np.all([(lo <= i) & (i < hi) for i, (lo, hi) in zip(inside, BOX, strict=True)], 0)
    where = np.argwhere(in_box)
    middle = (where.min(0) + where.max(0)) // 2
    point = list(viewer.dims.point)
    point[slider] = image.data_to_world(middle)[slider]
    viewer.dims.point = point
    [shown] = np.flatnonzero(shapes._data_view._displayed)
    rect = np.array([image.world_to_data(shapes.data_to_world(p)) for p in shapes.data[shown]])
    for d in (rows, cols):  # its edges are the box's voxel edges in the image's data
        assert rect[:, d].min() == pytest.approx(where[:, d].min() - 0.5)
        assert rect[:, d].max() == pytest.approx(where[:, d].max() + 0.5)
    assert shapes.text.values[shown] == "lesion 0.90"
    # unchanged: saved as stored, after a roll back too
    back = _save_and_read(viewer, [image, shapes], tmp_path / "same.mla")
    assert back.meta.bbox.bboxes == [BOX] and back.meta.bbox.labels == ["lesion"]
    # moved by 2 voxels along the shown rows there, relabelled, then rolled back to axial
    shapes._data_view.shift(shown, np.array([2.0, 0.0]))
    shapes.refresh()
    _edit_features(shapes, shown, label="metastasis")
    viewer.dims.order = (0, 1, 2)
    index = [slice(int(lo), int(hi) + 1) for lo, hi in zip(where.min(0), where.max(0), strict=True)]
    index[rows] = slice(index[rows].start + 2, index[rows].stop + 2)
    back = _save_and_read(viewer, [image, shapes], tmp_path / "moved.mla")
    assert back.meta.bbox.bboxes == [_stored_extent(image, data, tuple(index))]
    assert back.meta.bbox.labels == ["metastasis"]
    assert back.meta.bbox.scores == [pytest.approx(0.9)]


def test_boxes_opened_in_a_rolled_view_are_drawn_there(make_napari_viewer, tmp_path):
    path, _ = _ct_with_a_box(tmp_path / "ct.mla")
    other, _ = _ct_with_a_box(tmp_path / "other.mla")
    viewer = make_napari_viewer()
    _open(viewer, other)
    viewer.dims.order = (2, 0, 1)  # sagittal, before the file is opened
    _image, shapes = _open(viewer, path)
    shown = set(viewer.dims.displayed)
    for rect in shapes.data:  # every rectangle lies in the plane shown
        assert {d for d in range(3) if np.ptp(rect[:, d]) > 0} == shown
    back = _save_and_read(viewer, [_image, shapes], tmp_path / "out.mla")
    assert back.meta.bbox.bboxes == [BOX]


def test_box_edited_then_rolled_keeps_its_edited_extents(make_napari_viewer, tmp_path):
    path, data = _ct_with_a_box(tmp_path / "ct.mla")
    viewer = make_napari_viewer()
    image, shapes = _open(viewer, path)
    a_p = list(shapes.axis_labels).index("A-P")
    [first] = [i for i, b in enumerate(shapes.features["box"]) if b == 0][:1]
    step = np.zeros(2)
    step[viewer.dims.displayed.index(a_p)] = 0.25  # a quarter voxel along A-P
    shapes._data_view.shift(first, step)
    shapes.refresh()
    for order in [(1, 0, 2), (2, 0, 1), (0, 1, 2)]:  # coronal (A-P on the slider), sagittal
        viewer.dims.order = order
    back = _save_and_read(viewer, [image, shapes], tmp_path / "out.mla")
    expected = [list(map(float, p)) for p in BOX]
    stored_a_p = 1  # stored axis 1 is A-P (LPS, identity direction)
    expected[stored_a_p] = [v + 0.25 for v in expected[stored_a_p]]
    np.testing.assert_allclose(np.asarray(back.meta.bbox.bboxes[0], float), expected, atol=1e-6)
    assert np.array_equal(back[...], data)


def test_convert_to_labels_of_the_sample_boxes_only_file_masks_every_box(make_napari_viewer):
    from napari._app_model import get_app_model

    from napari_mlarray._sample_data import make_ct_sample

    viewer = make_napari_viewer()
    viewer.open_sample("napari-mlarray", "ct_sample")
    [shapes] = [lay for lay in viewer.layers if lay._type_string == "shapes"]
    [seg] = [lay for lay in viewer.layers if lay._type_string == "labels"]
    viewer.layers.selection = {shapes}
    get_app_model().commands.execute_command("napari.layer.convert_to_labels").result()
    [mask] = [lay for lay in viewer.layers if lay._type_string == "labels" and lay is not seg]
    sample = make_ct_sample()
    union = np.zeros(sample.seg.shape, bool)
    for box in sample.boxes["bboxes"]:
        union[tuple(slice(lo, hi) for lo, hi in box)] = True
    filled = np.argwhere(np.asarray(mask.data) > 0)
    assert len(filled) == int(union.sum())  # every box's voxels, none cut off
    # each masked voxel lies over a voxel of the segmentation's file inside a box
    block = seg.metadata["mlarray"]
    for p in filled[:: max(1, len(filled) // 200)]:
        at = np.round(seg.world_to_data(mask.data_to_world(p))).astype(int)
        assert union[view_index_inverse(block, at, sample.seg.shape)]


def test_boxes_follow_the_view_of_a_viewer_that_is_not_the_current_one(
    make_napari_viewer, tmp_path
):
    """A script with two viewers: the boxes of a file opened into the one napari does not
    call current are redrawn when that viewer's view is rolled, and the other viewer's
    boxes stay as they were."""
    import napari

    path, _ = _ct_with_a_box(tmp_path / "ct.mla")
    first = make_napari_viewer()
    second = make_napari_viewer()
    assert napari.current_viewer() is second
    _image, shapes = _open(first, path)
    _image2, shapes2 = _open(second, path)
    before = [np.array(r) for r in shapes2.data]
    first.dims.order = (2, 0, 1)  # sagittal in the first viewer only
    shown = set(first.dims.displayed)
    for rect in shapes.data:  # every rectangle lies in the plane the first viewer shows
        assert {d for d in range(3) if np.ptp(rect[:, d]) > 0} == shown
    assert all(np.array_equal(a, b) for a, b in zip(before, shapes2.data, strict=True))
    back = _save_and_read(first, [_image, shapes], tmp_path / "out.mla")
    assert back.meta.bbox.bboxes == [BOX]
