"""What a save from napari stores: the user's boxes, labels and units, and nothing the
user did not change rewritten (pure mapping tests first, then the viewer tier)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mlarray import Meta, MLArray
from mlarray.io import save_mla
from napari_mlarray import _boxes
from napari_mlarray._boxes import boxes_from_shapes, shapes_layer_data
from napari_mlarray._orientation import layer_matrix
from tests.napari._helpers import view_index_inverse


def _boxes_file(path, shape, boxes, *, labels=None, scores=None):
    """A zyx int16 image (stored z, y, x in LPS, 2 mm slices) with ``boxes``."""
    record = Meta().to_mapping()
    record["spatial"].update(
        spacing=[2.0, 1.0, 1.0],
        coord_system="LPS",
        direction=[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
    )
    record["bbox"] = {"bboxes": boxes, "labels": labels, "scores": scores}
    data = np.arange(math.prod(shape), dtype=np.int16).reshape(shape)
    return save_mla(path, data, Meta.from_mapping(record)), data


def _many_boxes(n=10, slices=5):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        z, y, x = (int(v) for v in rng.integers(0, 10, 3))
        out.append([[z, z + slices], [y, y + 6], [x, x + 6]])
    return out


def _shapes_meta(kw):
    meta = dict(kw)
    meta["features"] = {k: list(v) for k, v in kw["features"].items()}
    return meta


# --------------------------------------------------------------------------- pure


def test_boxes_left_out_of_the_drawing_are_kept_by_a_save(monkeypatch):
    monkeypatch.setattr(_boxes, "MAX_RECTANGLES", 30)
    boxes = _many_boxes()
    record = Meta().to_mapping()
    record["spatial"].update(spacing=[2.0, 1.0, 1.0], shape=[20, 20, 20])
    record["bbox"] = {"bboxes": boxes, "labels": [f"b{i}" for i in range(10)], "scores": None}
    with pytest.warns(UserWarning, match="4 of 10 boxes not shown.*a save keeps them"):
        data, kw = shapes_layer_data(record, 3, name="b", shape=(20, 20, 20))
    assert len(data) == 30 and sorted(set(kw["features"]["box"])) == list(range(6))
    bbox, _ = boxes_from_shapes([(data, _shapes_meta(kw))])
    assert bbox["bboxes"] == boxes and bbox["labels"] == record["bbox"]["labels"]
    # a rectangle carrying a left-out box's id (its features pasted) is that box, once
    meta = _shapes_meta(kw)
    meta["features"] = {k: [*v, v[0]] for k, v in meta["features"].items()}
    meta["features"]["box"][-1] = 9
    bbox, _ = boxes_from_shapes([([*data, data[0]], meta)])
    assert len(bbox["bboxes"]) == 10 and bbox["bboxes"][9] != boxes[9]
    # boxed into another array (a different file): mapped like the drawn boxes
    target = {"axes": [0, 1, 2], "shape": (20, 20, 20), "matrix": layer_matrix(kw, 3)}
    bbox, _ = boxes_from_shapes([(data, _shapes_meta(kw))], target={**target, "path": "other"})
    assert bbox["bboxes"] == boxes and bbox["labels"] == record["bbox"]["labels"]


def test_boxes_reaching_outside_the_array_are_saved_as_stored_when_unedited():
    boxes = [
        [[-3, 5], [2, 40], [3, 7]],  # partly outside
        [[25, 30], [0, 5], [0, 5]],  # wholly outside the 20 slices
        [[2.5, 6], [1, 9], [0, 30]],  # inside, float extent
    ]
    record = Meta().to_mapping()
    record["spatial"].update(spacing=[2.0, 1.0, 1.0], shape=[20, 30, 30])
    record["bbox"] = {"bboxes": boxes, "labels": None, "scores": None}
    data, kw = shapes_layer_data(record, 3, name="b", shape=(20, 30, 30))
    bbox, _ = boxes_from_shapes([(data, _shapes_meta(kw))])
    assert bbox["bboxes"] == boxes
    # an edited box is written from what the user sees (inside the array) in the edited
    # axes; its slice range, not edited, stays as stored
    moved = [
        d + np.array([0.0, 0.0, 1.0]) if b == 0 else d
        for d, b in zip(data, kw["features"]["box"], strict=True)
    ]
    bbox, _ = boxes_from_shapes([(moved, _shapes_meta(kw))])
    assert bbox["bboxes"][0] == [[-3, 5], [2, 30], [4, 8]] and bbox["bboxes"][1:] == boxes[1:]


def _edit_box_rectangles(data, kw, box, edit):
    """``data`` with ``edit(rectangle, slice)`` applied to box ``box``'s rectangles."""
    return [
        edit(d.copy(), round(d[0, 0])) if b == box else d
        for d, b in zip(data, kw["features"]["box"], strict=True)
    ]


def test_an_edit_of_one_rectangle_of_a_box_applies_to_the_whole_box():
    # view order = stored order (no geometry); box 0 has a rectangle on slices 2..7
    boxes = [[[2, 8], [4, 14], [6, 18]], [[0, 3], [0, 5], [0, 5]]]
    record = Meta().to_mapping()
    record["spatial"]["shape"] = [12, 20, 24]
    record["bbox"] = {"bboxes": boxes, "labels": ["lesion", "cyst"], "scores": None}
    data, kw = shapes_layer_data(record, 3, name="b", shape=(12, 20, 24))

    def save(edited):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a consistent edit says nothing
            return boxes_from_shapes([(edited, _shapes_meta(kw))])[0]["bboxes"]

    def on_slice(z, change):
        return lambda r, s: change(r) if s == z else r

    def shrink(r):  # to the middle half of the rectangle, as a corner drag does
        c = r[:, 1:].mean(0)
        r[:, 1:] = c + (r[:, 1:] - c) * 0.5
        return r

    def move(r):
        r[:, 2] += 3
        return r

    assert save(data) == boxes  # untouched
    assert save(_edit_box_rectangles(data, kw, 0, on_slice(5, shrink))) == [
        [[2, 8], [6.5, 11.5], [9, 15]],
        boxes[1],
    ]
    assert save(_edit_box_rectangles(data, kw, 0, on_slice(5, move))) == [
        [[2, 8], [4, 14], [9, 21]],
        boxes[1],
    ]
    # the same edit on every slice (all rectangles selected and dragged) is the same box
    assert save(_edit_box_rectangles(data, kw, 0, lambda r, s: move(r)))[0] == [
        [2, 8],
        [4, 14],
        [9, 21],
    ]
    # deleting the rectangles at the ends shortens the box; the other box is untouched
    kept = [
        (d, i)
        for i, (d, b) in enumerate(zip(data, kw["features"]["box"], strict=True))
        if not (b == 0 and int(d[0, 0]) in (2, 7))
    ]
    meta = _shapes_meta(kw)
    meta["features"] = {k: [v[i] for _, i in kept] for k, v in meta["features"].items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bbox, _ = boxes_from_shapes([([d for d, _ in kept], meta)])
    assert bbox["bboxes"] == [[[3, 7], [4, 14], [6, 18]], boxes[1]]
    assert bbox["labels"] == ["lesion", "cyst"]
    # the same when the boxes (a boxes-only file) are saved with another file's image
    target = {"axes": [0, 1, 2], "shape": (12, 20, 24), "matrix": layer_matrix(kw, 3)}
    target["path"] = "image.mla"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for edit, expected in [
            (on_slice(5, shrink), [[2, 8], [6.5, 11.5], [9, 15]]),
            (on_slice(5, move), [[2, 8], [4, 14], [9, 21]]),
            (lambda r, s: r, boxes[0]),
        ]:
            edited = _edit_box_rectangles(data, kw, 0, edit)
            bbox, _ = boxes_from_shapes([(edited, _shapes_meta(kw))], target=target)
            assert bbox["bboxes"] == [expected, boxes[1]]
        bbox, _ = boxes_from_shapes([([d for d, _ in kept], meta)], target=target)
        assert bbox["bboxes"] == [[[3, 7], [4, 14], [6, 18]], boxes[1]]


def test_a_pasted_copy_of_a_rectangle_is_a_new_box():
    # napari's copy/paste copies the features: the copy carries the stored box's id
    boxes = [[[2, 8], [4, 14], [6, 18]]]
    record = Meta().to_mapping()
    record["spatial"]["shape"] = [12, 20, 24]
    record["bbox"] = {"bboxes": boxes, "labels": ["lesion"], "scores": [0.5]}
    data, kw = shapes_layer_data(record, 3, name="b", shape=(12, 20, 24))
    [i] = [k for k, d in enumerate(data) if d[0, 0] == 5]
    copy = data[i].copy()
    copy[:, 2] += 10  # pasted on the same slice and dragged aside
    meta = _shapes_meta(kw)
    meta["features"] = {k: [*v, v[i]] for k, v in meta["features"].items()}
    target = {"axes": [0, 1, 2], "shape": (12, 20, 24), "matrix": layer_matrix(kw, 3)}
    for where in (None, {**target, "path": "image.mla"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bbox, _ = boxes_from_shapes([([*data, copy], meta)], target=where)
        assert bbox["bboxes"] == [boxes[0], [[5, 6], [4, 14], [16, 28]]]
        assert bbox["labels"] == ["lesion", "lesion"] and bbox["scores"] == [0.5, 0.5]
    # the copy dragged and the original rectangle dragged too: the one first in the layer
    # stays the box's
    moved = [d + np.array([0.0, 0.0, 1.0]) if k == i else d for k, d in enumerate(data)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bbox, _ = boxes_from_shapes([([*moved, copy], meta)])
    assert bbox["bboxes"] == [[[2, 8], [4, 14], [7, 19]], [[5, 6], [4, 14], [16, 28]]]


def test_contradicting_edits_of_a_box_are_saved_by_a_stated_rule():
    boxes = [[[2, 8], [4, 14], [6, 18]]]
    record = Meta().to_mapping()
    record["spatial"]["shape"] = [12, 20, 24]
    record["bbox"] = {"bboxes": boxes, "labels": ["lesion"], "scores": None}
    data, kw = shapes_layer_data(record, 3, name="det boxes", shape=(12, 20, 24))

    def two_moves(r, s):  # slice 3 moved right by 3, slice 6 down by 2
        if s == 3:
            r[:, 2] += 3
        elif s == 6:
            r[:, 1] += 2
        return r

    edited = _edit_box_rectangles(data, kw, 0, two_moves)
    with pytest.warns(
        UserWarning,
        match=r"det boxes: box 0 \('lesion'\).*edited differently on "
        r"slices 3, 6.*around all its edited rectangles",
    ):
        bbox, _ = boxes_from_shapes([(edited, _shapes_meta(kw))])
    assert bbox["bboxes"] == [[[2, 8], [4, 16], [6, 21]]]
    # a rectangle deleted inside the range: the box still spans it, and the user is told
    keep = [i for i, d in enumerate(data) if int(d[0, 0]) != 4]
    meta = _shapes_meta(kw)
    meta["features"] = {k: [v[i] for i in keep] for k, v in meta["features"].items()}
    with pytest.warns(
        UserWarning,
        match=r"box 0 \('lesion'\): its rectangles on slice\(s\) 4 "
        "were deleted inside its slice range",
    ):
        bbox, _ = boxes_from_shapes([([data[i] for i in keep], meta)])
    assert bbox["bboxes"] == boxes


# --------------------------------------------------------------------------- viewer


@pytest.mark.qt
def test_viewer_save_keeps_boxes_it_did_not_draw(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setattr(_boxes, "MAX_RECTANGLES", 30)
    boxes = _many_boxes()
    path, data = _boxes_file(tmp_path / "cells.mla", (20, 20, 20), boxes, scores=[0.5] * 10)
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "4 of 10 boxes not shown"
        image, shapes = viewer.open(str(path), plugin=None)
    assert len(set(shapes.features["box"])) == 6
    # the annotator moves box 0 by one voxel and saves image + boxes over the file
    moved = [
        d + np.array([0.0, 1.0, 0.0]) if b == 0 else d
        for d, b in zip(shapes.data, shapes.features["box"], strict=True)
    ]
    shapes.data = moved
    viewer.layers.selection = {image, shapes}
    viewer.layers.save(str(path), selected=True)
    back = MLArray.open(path)
    z, (y0, y1), x = boxes[0]
    assert back.meta.bbox.bboxes == [[z, [y0 + 1, y1 + 1], x], *boxes[1:]]
    assert back.meta.bbox.scores == [0.5] * 10
    assert np.array_equal(back[...], data)


@pytest.mark.qt
def test_viewer_plain_save_keeps_boxes_outside_the_array(make_napari_viewer, tmp_path):
    boxes = [[[-3, 5], [2, 40], [3, 7]], [[25, 30], [0, 5], [0, 5]], [[2, 6], [1, 9], [0, 30]]]
    path, _ = _boxes_file(tmp_path / "det.mla", (20, 30, 30), boxes, labels=["a", "b", "c"])
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=None)
    viewer.layers.selection = set(viewer.layers)
    viewer.layers.save(str(path), selected=True)
    assert MLArray.open(path).meta.bbox.bboxes == boxes


@pytest.mark.qt
def test_viewer_edit_of_a_box_on_the_shown_slice_is_saved(make_napari_viewer, tmp_path):
    from napari_mlarray._layer_common import KEY

    boxes = [[[2, 8], [4, 14], [6, 18]], [[0, 3], [0, 5], [0, 5]]]
    path, data = _boxes_file(tmp_path / "det.mla", (12, 20, 24), boxes, labels=["a", "b"])
    viewer = make_napari_viewer()

    def open_box0():
        image, shapes = viewer.open(str(path), plugin=None)
        shown = shapes.metadata[KEY]["shown_axes"]  # stored axis of each Shapes dim
        view = [boxes[0][a] for a in shown]  # (the stored box, as drawn)
        z = view[0][0] + 2
        viewer.dims.set_current_step(0, z)
        [i] = [
            k
            for k, (d, b) in enumerate(zip(shapes.data, shapes.features["box"], strict=True))
            if b == 0 and d[0, 0] == z
        ]
        return image, shapes, shown, i

    def save_and_reload(image, shapes):
        viewer.layers.selection = {image, shapes}
        viewer.layers.save(str(path), selected=True)
        viewer.layers.clear()
        back = MLArray.open(path)
        assert np.array_equal(back[...], data)
        return back.meta.bbox.bboxes

    # untouched: saved as stored
    image, shapes, shown, i = open_box0()
    assert save_and_reload(image, shapes) == boxes
    # dragged 3 voxels along the last shown axis (napari's move: a 2-D shift of the shape)
    image, shapes, shown, i = open_box0()
    shapes._data_view.shift(i, np.array([0.0, 3.0]))
    shapes.refresh()
    expected = [list(p) for p in boxes[0]]
    expected[shown[2]] = [v + 3 for v in expected[shown[2]]]
    assert save_and_reload(image, shapes) == [expected, boxes[1]]
    # shrunk to half about its centre (napari's corner drag: a scale of the shape)
    image, shapes, shown, i = open_box0()
    centre = shapes.data[i][:, 1:].mean(0)
    shapes._data_view.scale(i, [0.5, 0.5], center=centre)
    shapes.refresh()
    for k in (1, 2):
        lo, hi = expected[shown[k]]
        expected[shown[k]] = [lo + (hi - lo) / 4, hi - (hi - lo) / 4]
    saved = save_and_reload(image, shapes)
    assert saved[1] == boxes[1]
    np.testing.assert_allclose(np.array(saved[0], float), np.array(expected, float))
    # its first slice's rectangle deleted: the box starts one slice later
    image, shapes, shown, i = open_box0()
    last = shapes.metadata[KEY]["flip_last"][0]  # drawn as the image shows it (S-I reversed)

    def stored_slice(d):
        return d[0, 0] if last is None else last - d[0, 0]

    own = [k for k, b in enumerate(shapes.features["box"]) if b == 0]
    first = min(stored_slice(shapes.data[k]) for k in own)
    shapes.selected_data = {k for k in own if stored_slice(shapes.data[k]) == first}
    shapes.remove_selected()
    expected[shown[0]] = [expected[shown[0]][0] + 1, expected[shown[0]][1]]
    saved = save_and_reload(image, shapes)
    np.testing.assert_allclose(np.array(saved[0], float), np.array(expected, float))


@pytest.mark.qt
def test_viewer_edited_box_of_a_boxes_file_saved_with_the_image(make_napari_viewer, tmp_path):
    from napari_mlarray._layer_common import KEY
    from napari_mlarray._sample_data import make_ct_sample, write_sample

    sample = make_ct_sample((16, 48, 48))
    paths = write_sample(tmp_path, sample)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(paths["image"]), plugin=None)
    [shapes] = viewer.open(str(paths["boxes"]), plugin=None)
    stored = sample.boxes["bboxes"]
    shown = shapes.metadata[KEY]["shown_axes"]
    # the annotator drags the liver box's rectangle on a middle slice by 2 voxels (last axis)
    ids = list(shapes.features["box"])
    slices = sorted(shapes.data[k][0, 0] for k in range(len(ids)) if ids[k] == 0)
    z = slices[len(slices) // 2]
    [i] = [k for k in range(len(ids)) if ids[k] == 0 and shapes.data[k][0, 0] == z]
    viewer.dims.set_current_step(0, z)
    shapes._data_view.shift(i, np.array([0.0, 2.0]))  # napari's move of a dragged shape
    shapes.refresh()
    out = tmp_path / "reviewed.mla"
    viewer.layers.selection = {image, shapes}
    viewer.layers.save(str(out), selected=True)
    expected = [list(p) for p in stored[0]]
    expected[shown[2]] = [v + 2 for v in expected[shown[2]]]
    assert MLArray.open(out).meta.bbox.bboxes == [expected, stored[1]]


def _mask_file(path, data):
    record = Meta().to_mapping()
    record["spatial"].update(spacing=[1.0, 2.0, 3.0], coord_system="LPS")
    record["is_seg"]["is_seg"] = True
    return save_mla(path, data, Meta.from_mapping(record))


@pytest.mark.qt
def test_viewer_saves_painted_labels_the_file_dtype_cannot_hold_in_a_wider_dtype(
    make_napari_viewer, tmp_path
):
    viewer = make_napari_viewer()
    # a bool mask opens as uint8 labels: painting label 2 is allowed, and must stay 2
    path = _mask_file(tmp_path / "mask.mla", np.zeros((6, 7, 8), bool))
    [labels] = viewer.open(str(path), plugin=None)
    labels.paint((2, 3, 4), 2, refresh=False)
    expected = np.asarray(labels.data).copy()
    viewer.layers.save(str(path), selected=True)
    back = MLArray.open(path)
    assert back.dtype == np.uint8 and (back[...] == 2).sum() == (expected == 2).sum() > 0
    [again] = viewer.open(str(path), plugin=None)
    assert np.array_equal(again.data, expected)
    # a uint8 label map converted to uint16 in napari (its layer menu), labels 300 and 256
    path = _mask_file(tmp_path / "u8.mla", np.zeros((6, 7, 8), np.uint8))
    [labels] = viewer.open(str(path), plugin=None)
    labels.data = labels.data.astype(np.uint16)
    labels.data[1, 1, 1], labels.data[4, 4, 4] = 300, 256
    viewer.layers.selection = {labels}
    viewer.layers.save(str(path), selected=True)
    back = MLArray.open(path)
    block = labels.metadata["mlarray"]  # LPS: an axis shown reversed (napari's S-I)
    assert any(block["flip"])
    assert back.dtype == np.uint16 and back[view_index_inverse(block, (1, 1, 1), back.shape)] == 300
    assert back[view_index_inverse(block, (4, 4, 4), back.shape)] == 256
    # values that fit: the file keeps its dtype
    path = _mask_file(tmp_path / "fits.mla", np.zeros((6, 7, 8), bool))
    [labels] = viewer.open(str(path), plugin=None)
    labels.paint((2, 3, 4), 1, refresh=False)
    viewer.layers.selection = {labels}
    viewer.layers.save(str(path), selected=True)
    back = MLArray.open(path)
    assert back.dtype == bool and back[...].sum() == (np.asarray(labels.data) == 1).sum() > 0


def test_labels_cast_back_to_a_float_file_dtype_only_when_exact(tmp_path):
    from napari_mlarray._reader import read_mla
    from napari_mlarray._writer import save_layers

    path = _mask_file(tmp_path / "f.mla", np.zeros((4, 5, 6), np.float32))
    [(data, kw, kind)] = read_mla(str(path))
    assert kind == "labels" and data.dtype == np.uint8
    data = data.astype(np.int32)
    data[0, 0, 0] = 2**24 + 1  # not a float32
    save_layers(tmp_path / "out.mla", [(data, kw, "labels")])
    back = MLArray.open(tmp_path / "out.mla")
    corner = view_index_inverse(kw["metadata"]["mlarray"], (0, 0, 0), back.shape)
    assert back.dtype == np.int32 and back[corner] == 2**24 + 1
    data[0, 0, 0] = 7
    save_layers(tmp_path / "out.mla", [(data, kw, "labels")])
    back = MLArray.open(tmp_path / "out.mla")
    assert back.dtype == np.float32 and back[corner] == 7


@pytest.mark.qt
def test_viewer_boxes_file_without_boxes_reopens_as_an_empty_shapes_layer(
    make_napari_viewer, tmp_path
):
    from napari_mlarray._sample_data import make_ct_sample, write_sample

    paths = write_sample(tmp_path, make_ct_sample((16, 48, 48)))
    viewer = make_napari_viewer()
    [shapes] = viewer.open(str(paths["boxes"]), plugin=None)
    world = shapes.data_to_world([1, 2, 3])
    shapes.selected_data = set(range(len(shapes.data)))
    shapes.remove_selected()  # the predicted boxes were false positives
    out = tmp_path / "reviewed.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    assert MLArray.open(out).meta.bbox.bboxes is None

    [empty] = viewer.open(str(out), plugin=None)
    assert empty._type_string == "shapes" and len(empty.data) == 0 and empty.ndim == 3
    # the same voxel grid in the world (a reversed axis is mirrored over the boxes' reach,
    # so the data coordinates of a voxel may differ by whole voxels)
    voxels = np.array(empty.world_to_data(world)) - np.array([1, 2, 3])
    np.testing.assert_allclose(voxels, np.round(voxels), atol=1e-9)
    np.testing.assert_allclose(empty.scale, shapes.scale)

    def world_of(layer, rect):
        return np.sort([layer.data_to_world(p) for p in rect], axis=0)

    # a box drawn into it is saved where it was drawn
    empty.add_rectangles(np.array([[2, 3.5, 4.5], [2, 3.5, 9.5], [2, 7.5, 9.5], [2, 7.5, 4.5]]))
    drawn = world_of(empty, empty.data[0])
    viewer.layers.selection = {empty}
    viewer.layers.save(str(out), selected=True)
    [again] = viewer.open(str(out), plugin=None)
    assert len(again.data) == 1
    np.testing.assert_allclose(world_of(again, again.data[0]), drawn, atol=1e-6)


def test_layer_with_pixel_and_mm_axes_stores_a_unit_per_axis():
    from napari_mlarray._mapping import record_from_layer

    meta = {"scale": (1.0, 2.0, 2.0, 2.0), "units": ("pixel", "mm", "mm", "mm")}
    record, _ = record_from_layer((2, 3, 4, 5), np.uint8, meta, "labels")
    assert record["spatial"]["axis_units"] == ["pixel", "mm", "mm", "mm"]
    Meta.from_mapping(record)  # a valid record
    record, _ = record_from_layer((2, 3), np.uint8, {"units": ("pixel", "pixel")}, "labels")
    assert record["spatial"]["axis_units"] is None


@pytest.mark.qt
def test_viewer_saves_new_labels_over_a_time_series(make_napari_viewer, tmp_path):
    from tests.napari._helpers import write_mla

    path = write_mla(
        tmp_path / "series.mla",
        np.zeros((3, 4, 5, 6), np.int16),
        spacing=[2.0, 2.0, 2.0],
        coord_system="LPS",
        axis_labels=["temporal", "spatial_z", "spatial_y", "spatial_x"],
    )
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin=None)
    assert [str(u) for u in image.units] == ["pixel", *["millimeter"] * 3]
    viewer._new_labels()  # the layer list's "new labels" button
    labels = viewer.layers[-1]
    labels.data[1, 2, 3, 3] = 5
    viewer.layers.selection = {labels}
    out = tmp_path / "seg.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    [again] = viewer.open(str(out), plugin=None)
    assert again.data[1, 2, 3, 3] == 5
    assert [str(u) for u in again.units] == [str(u) for u in labels.units]
    np.testing.assert_allclose(
        again.data_to_world([1, 2, 3, 3]), labels.data_to_world([1, 2, 3, 3])
    )
    # a plain layer made in napari, and a Shapes layer with those units
    plain = viewer.add_labels(np.zeros((2, 3, 4, 5), np.uint8), units=("pixel", "mm", "mm", "mm"))
    viewer.layers.selection = {plain}
    viewer.layers.save(str(tmp_path / "plain.mla"), selected=True)
    assert MLArray.open(tmp_path / "plain.mla").meta.spatial.axis_units == [
        "pixel",
        "mm",
        "mm",
        "mm",
    ]
    rect = np.array([[0, 1, 1, 1], [0, 1, 1, 3], [0, 1, 3, 3], [0, 1, 3, 1]], float)
    shapes = viewer.add_shapes([rect], shape_type="rectangle", units=image.units)
    viewer.layers.selection = {shapes}
    viewer.layers.save(str(tmp_path / "boxes.mla"), selected=True)
    assert MLArray.open(tmp_path / "boxes.mla").meta.spatial.axis_units[0] == "pixel"


def test_opened_layer_given_pixel_and_mm_units_saves_them(tmp_path):
    from napari_mlarray._reader import read_mla
    from napari_mlarray._writer import save_layers

    path = save_mla(tmp_path / "plain.mla", np.zeros((3, 4, 5), np.int16), Meta())
    [(data, kw, kind)] = read_mla(str(path))
    save_layers(tmp_path / "out.mla", [(data, {**kw, "units": ("pixel", "mm", "mm")}, kind)])
    assert MLArray.open(tmp_path / "out.mla").meta.spatial.axis_units == ["pixel", "mm", "mm"]


@pytest.mark.qt
def test_viewer_a_box_drawn_beside_labelled_boxes_saves_with_an_empty_label(
    make_napari_viewer, tmp_path
):
    # napari's rectangle tool gives a new box the layer's default label "": the save wrote
    # None into the labels list and was refused; the other way round too
    from napari_mlarray._sample_data import make_ct_sample, write_sample

    paths = write_sample(tmp_path, make_ct_sample((16, 48, 48)))
    viewer = make_napari_viewer()
    opened = viewer.open(str(paths["boxes"]), plugin=None)
    [shapes] = [lay for lay in opened if lay._type_string == "shapes"]
    viewer.layers.selection = {shapes}
    before = MLArray.open(paths["boxes"]).meta.bbox
    assert before.labels and all(before.labels)
    shapes.add_rectangles(np.array([[8, 3.5, 4.5], [8, 3.5, 9.5], [8, 7.5, 9.5], [8, 7.5, 4.5]]))
    out = tmp_path / "more.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    after = MLArray.open(out).meta.bbox
    assert after.labels == [*before.labels, ""] and len(after.bboxes) == len(before.bboxes) + 1

    # a file whose boxes have no labels, one new box labelled by the annotator
    unlabelled = tmp_path / "unlabelled.mla"
    box = {"bboxes": [[[1, 5], [2, 9], [3, 9]]]}
    MLArray(np.zeros((16, 48, 48), np.uint8), meta=Meta(bbox=box)).save(unlabelled)
    opened = viewer.open(str(unlabelled), plugin=None)
    [boxes] = [lay for lay in opened if lay._type_string == "shapes"]
    boxes.add_rectangles(np.array([[4, 10, 10], [4, 10, 20], [4, 20, 20], [4, 20, 10]]))
    boxes.features.loc[len(boxes.data) - 1, "label"] = "lesion"
    viewer.layers.selection = {boxes}
    out2 = tmp_path / "labelled.mla"
    assert viewer.layers.save(str(out2), selected=True) == [str(out2)]
    assert MLArray.open(out2).meta.bbox.labels == ["", "lesion"]
