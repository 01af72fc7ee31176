"""The synthetic CT sample: arrays, files, napari sample-data contribution."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mlarray._sample_data import (
    FILE_NAMES,
    LABEL_NAMES,
    make_ct_sample,
    make_sample_data,
    write_sample,
)


@pytest.fixture(scope="module")
def sample():
    return make_ct_sample()


def test_sample_is_deterministic(sample):
    again = make_ct_sample()
    assert again.image.tobytes() == sample.image.tobytes()
    assert again.seg.tobytes() == sample.seg.tobytes()
    assert again.boxes == sample.boxes
    other = make_ct_sample(seed=1)
    assert other.image.tobytes() != sample.image.tobytes()
    assert other.seg.tobytes() == sample.seg.tobytes()  # anatomy does not depend on the seed


def test_sample_looks_like_ct(sample):
    image, seg = sample.image, sample.seg
    assert image.shape == seg.shape == (64, 128, 128)
    assert image.dtype == np.int16 and seg.dtype == np.uint8
    assert sample.spacing == (2.5, 0.8, 0.8)
    assert np.asarray(sample.direction).shape == (3, 3)
    # air around the body
    assert abs(np.median(image[:, :4, :4]) + 1000) < 30
    # soft tissue, bone, liver, lesion
    assert np.percentile(image, 99.9) >= 700
    liver = np.median(image[seg == 1])
    lesion = np.median(image[seg == 2])
    assert 40 <= liver <= 100
    assert lesion < liver - 30
    assert set(np.unique(seg)) == set(LABEL_NAMES)
    assert image.min() >= -1024


def test_boxes_enclose_the_structures(sample):
    boxes = sample.boxes
    assert boxes["labels"] == ["liver", "lesion"]
    assert len(boxes["scores"]) == len(boxes["bboxes"]) == 2
    for label_value, box in zip((1, 2), boxes["bboxes"], strict=True):
        idx = np.argwhere(sample.seg >= label_value)
        for axis, (lo, hi) in enumerate(box):
            assert lo == idx[:, axis].min()
            assert hi == idx[:, axis].max() + 1  # [min, max) index ranges
    # the lesion lies inside the liver box
    (liver, lesion) = boxes["bboxes"]
    assert all(a[0] <= b[0] and b[1] <= a[1] for a, b in zip(liver, lesion, strict=True))


def test_small_shapes_work():
    small = make_ct_sample((16, 32, 32))
    assert small.image.shape == (16, 32, 32)
    assert (small.seg == 2).any()


def test_write_sample_round_trips(tmp_path, sample):
    from mlarray import MLArray

    paths = write_sample(tmp_path / "case", sample)
    assert {k: p.name for k, p in paths.items()} == FILE_NAMES
    image = MLArray.open(paths["image"])
    assert image[...].tobytes() == sample.image.tobytes()
    sp = image.meta.spatial
    assert list(sp.spacing) == [2.5, 0.8, 0.8]
    assert sp.coord_system == "LPS"
    assert sp.axis_labels == ["spatial_z", "spatial_y", "spatial_x"]
    np.testing.assert_allclose(sp.direction, sample.direction)
    assert image.meta.stats.min == float(sample.image.min())
    assert image.meta.stats.percentile_max_key == 99.5

    seg = MLArray.open(paths["seg"])
    assert seg.meta.is_seg.is_seg is True
    assert seg[...].tobytes() == sample.seg.tobytes()

    boxes = MLArray.open(paths["boxes"])
    assert boxes.shape is None  # metadata-only
    assert boxes.meta.bbox.bboxes == sample.boxes["bboxes"]
    assert boxes.meta.bbox.labels == ["liver", "lesion"]
    assert list(boxes.meta.spatial.spacing) == [2.5, 0.8, 0.8]


def test_make_sample_data_uses_the_reader():
    pytest.importorskip("napari_mlarray._reader")
    layers = make_sample_data()
    types = [t[2] if len(t) > 2 else "image" for t in layers]
    assert types == ["image", "labels", "shapes"]
    image, labels = layers[0], layers[1]
    assert np.asarray(image[0][10]).dtype == np.int16
    assert np.asarray(labels[0][10]).dtype.kind in "ui"


# ------------------------------------------------------------------ viewer
@pytest.fixture
def qt_available():
    try:
        import qtpy.QtWidgets  # noqa: F401
    except ImportError as exc:  # qtpy's QtBindingsNotFoundError is an ImportError
        pytest.skip(f"no Qt binding: {exc}")


@pytest.mark.qt
def test_open_sample_in_viewer(qt_available, make_napari_viewer):
    from napari.layers import Image, Labels, Shapes

    viewer = make_napari_viewer()
    viewer.open_sample("napari-mlarray", "ct_sample")
    kinds = [type(layer) for layer in viewer.layers]
    assert kinds == [Image, Labels, Shapes]
    image, labels, shapes = viewer.layers
    assert image.data.shape == labels.data.shape == (64, 128, 128)
    assert len(shapes.data) >= 2  # at least one rectangle per box
    # everything overlays: same world extent for image and labels
    np.testing.assert_allclose(image.extent.world, labels.extent.world)
