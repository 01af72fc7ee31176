"""The reader and writer on hostile metadata: huge or 4-d boxes, huge label maps, zero spacing."""

from __future__ import annotations

import gzip
import os
import pickle

import blosc2
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import MLArrayFormatError, ReadOnlyError
from mlarray.integrity import RECORD_KEY, record_binding
from napari_mlarray import _boxes, _lazy, _mapping
from napari_mlarray._lazy import LazyView
from napari_mlarray._reader import read_mla


def _forge(path, **parts):
    rec = MLArray.open(path).meta.to_mapping(include_none=True)
    rec["_mlarray_version"] = "v0"
    for key, value in parts.items():
        rec[key] = value
    s = blosc2.open(os.fspath(path), mode="a")
    schunk = s.schunk
    schunk.vlmeta["mlarray"] = forged = gzip.compress(pickle.dumps(rec, 4), mtime=0)
    schunk.vlmeta[RECORD_KEY] = record_binding(forged)  # as mlarray names its record
    del s, schunk


def test_boxes_are_clipped_to_the_array(tmp_path):
    p = tmp_path / "b.mla"
    MLArray(np.zeros((5, 6, 7), np.int16)).save(p)
    _forge(
        p,
        bbox={"bboxes": [[[-1e8, 1e8], [1, 3], [2, 1e12]]], "scores": None, "labels": None},
    )
    shapes = [layer for layer in read_mla(str(p)) if layer[2] == "shapes"]
    data = shapes[0][0]
    assert len(data) == 5  # one rectangle per slice of the array, not 2e8
    assert all(np.all(np.isfinite(r)) for r in data)


def test_boxes_with_the_wrong_number_of_axes_leave_the_image_shown(tmp_path):
    from napari_mlarray._writer import save_layers

    p = tmp_path / "bx7.mla"
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    MLArray(data, spacing=[1, 1, 1]).save(p)
    _forge(p, bbox={"bboxes": [[[0, 1]] * 7], "scores": None, "labels": None})
    with pytest.warns(UserWarning, match=r"bx7\.mla: ignoring metadata .*bbox .*7 axes"):
        layers = read_mla(str(p))
    assert [kind for *_, kind in layers] == ["image"]  # the image, without the boxes
    out = tmp_path / "copy.mla"
    save_layers(out, layers)  # save-as of what napari shows
    assert np.array_equal(MLArray.open(out)[...], data)


def test_rectangles_are_capped_with_a_warning(tmp_path):
    p = tmp_path / "only.mla"
    MLArray(None).save(p)
    # a boxes-only file: nothing to clip to; one 4-d box spanning 1e4 x 1e4 slices
    _forge(
        p,
        bbox={
            "bboxes": [[[0, 10], [0, 10], [0, 3], [0, 3]], [[0, 1e4], [0, 1e4], [0, 3], [0, 3]]],
            "scores": None,
            "labels": None,
        },
    )
    with pytest.warns(UserWarning, match="1 of 2 boxes not shown"):
        layers = read_mla(str(p))
    data = layers[0][0]
    assert len(data) == 100 <= _boxes.MAX_RECTANGLES


def test_large_label_maps_stay_lazy(tmp_path, monkeypatch):
    p = tmp_path / "seg.mla"
    MLArray(np.ones((4, 5, 6), np.uint8)).save(p)
    _forge(p, is_seg={"is_seg": True})
    assert isinstance(read_mla(str(p))[0][0], np.ndarray)
    monkeypatch.setattr(_lazy, "MAX_EAGER_LABELS_BYTES", 64)
    with pytest.warns(UserWarning, match="opened read-only on demand"):
        layers = read_mla(str(p))
    data, _kw, kind = layers[0]
    assert kind == "labels" and isinstance(data, LazyView)
    assert np.asarray(data[1]).sum() == 30
    # beyond the budget a write is refused with our error naming the file and the way out
    with pytest.raises(ReadOnlyError, match=r"seg\.mla: .*on demand.*mmap_mode='r\+'"):
        data[(np.array([1]), np.array([2]), np.array([3]))] = 5
    assert not data.writable and np.asarray(MLArray.open(p)[...]).sum() == 120


def test_zero_spacing_and_singular_affine_are_refused_at_open(tmp_path):
    p = tmp_path / "z.mla"
    MLArray(np.zeros((4, 5, 6), np.float32)).save(p)
    spatial = MLArray.open(p).meta.to_mapping(include_none=True)["spatial"]
    _forge(p, spatial={**spatial, "spacing": [0.0, 1.0, 1.0]})
    with pytest.raises(MLArrayFormatError, match=r"z\.mla: cannot be displayed.*spacing"):
        read_mla(str(p))
    singular = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    _forge(p, spatial={**spatial, "affine": singular})
    with pytest.raises(MLArrayFormatError, match=r"z\.mla: .*singular"):
        read_mla(str(p))


def _complex_file(path, dtype):
    MLArray((np.ones((3, 4, 5)) + 1j).astype(dtype), spacing=[1, 1, 1]).save(path)
    return path


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_data_is_refused_naming_the_file_and_dtype(tmp_path, dtype):
    p = _complex_file(tmp_path / "phase.mla", dtype)
    name = np.dtype(dtype).name
    with pytest.raises(MLArrayFormatError, match=rf"phase\.mla: cannot be displayed.*{name}"):
        read_mla(str(p))


@pytest.mark.qt
def test_viewer_complex_file_gives_our_message(make_napari_viewer, tmp_path):
    p = _complex_file(tmp_path / "phase.mla", np.complex64)
    viewer = make_napari_viewer()
    # what napari shows on drag-and-drop: our message, not napari's bare NotImplementedError
    with pytest.raises(Exception, match=r"phase\.mla: cannot be displayed.*complex data"):
        viewer.open(str(p), plugin=None)
    assert len(viewer.layers) == 0


def test_writer_refuses_a_zero_scale():
    with pytest.raises(ValueError, match="nonzero spacing"):
        _mapping.record_from_layer((4, 5), np.uint8, {"scale": [0.0, 1.0]}, "image")
