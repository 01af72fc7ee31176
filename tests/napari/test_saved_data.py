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
    # an edited box is written from what the user sees (inside the array)
    moved = [
        d + np.array([0.0, 0.0, 1.0]) if b == 0 else d
        for d, b in zip(data, kw["features"]["box"], strict=True)
    ]
    bbox, _ = boxes_from_shapes([(moved, _shapes_meta(kw))])
    assert bbox["bboxes"][0] == [[0, 5], [2, 30], [4, 8]] and bbox["bboxes"][1:] == boxes[1:]


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
