"""Viewer tier: napari's own layer actions (Duplicate Layer, Convert to Labels, Convert
datatype, thick slices, opening a folder) on layers read from ``.mla`` files."""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception as exc:  # qtpy raises its own error types for a missing binding
    pytest.skip(f"no usable Qt binding: {exc}", allow_module_level=True)

from tests.napari._helpers import write_mla

pytestmark = pytest.mark.qt


def _select(viewer, layer) -> None:
    viewer.layers.selection = {layer}
    viewer.layers.selection.active = layer


def test_duplicate_layer_of_an_image_read_through_the_c_library(
    make_napari_viewer, tmp_path, ct_volume
):
    from napari.layers import _layer_actions

    from napari_mlarray._source import FileSource

    path = write_mla(tmp_path / "ct.mla", ct_volume, spacing=[2.0, 1.0, 1.0])
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=None)
    assert isinstance(image.data.source, FileSource)  # the default (C) read path
    _select(viewer, image)
    _layer_actions._duplicate_layer(viewer.layers)  # Layers > Duplicate Layer
    assert [layer.name for layer in viewer.layers] == ["ct", "ct copy"]
    dup = viewer.layers["ct copy"]
    np.testing.assert_array_equal(np.asarray(dup.data), np.asarray(image.data))
    assert dup.scale.tolist() == image.scale.tolist()


def test_a_duplicated_view_keeps_its_own_edits(tmp_path, ct_volume):
    from napari_mlarray._lazy import LazyView
    from napari_mlarray._source import open_source

    path = write_mla(tmp_path / "ct.mla", ct_volume)
    source, _ = open_source(str(path), 1)
    view = LazyView(source, perm=(2, 0, 1))
    view[0, 0, 0] = 7
    dup = copy.deepcopy(view)
    assert dup.source is source  # read-only: shared, not reopened
    dup[0, 0, 0] = 9
    assert view[0, 0, 0] == 7 and dup[0, 0, 0] == 9
    np.testing.assert_array_equal(np.asarray(dup)[1:], ct_volume.transpose(2, 0, 1)[1:])


def test_a_source_pickles_as_its_path_and_refuses_a_changed_file(tmp_path, ct_volume):
    from mlarray.errors import FileChangedError
    from napari_mlarray._source import open_source

    path = write_mla(tmp_path / "ct.mla", ct_volume)
    source, _ = open_source(str(path), 1)
    blob = pickle.dumps(source)
    assert len(blob) < 1000
    np.testing.assert_array_equal(pickle.loads(blob)[3:5, :, 2], ct_volume[3:5, :, 2])
    write_mla(tmp_path / "new.mla", ct_volume + 1)
    os.replace(tmp_path / "new.mla", path)
    with pytest.raises(FileChangedError, match=r"ct\.mla"):
        pickle.loads(blob)


def test_convert_to_labels_of_a_float_label_map_then_paint_and_save(
    make_napari_viewer, tmp_path, read_counter
):
    from napari.layers import Labels, _layer_actions

    from mlarray import MLArray

    seg = np.zeros((40, 30, 20), np.float32)  # as SPM/FSL write masks: float, no is_seg
    seg[10:30, 5:25, 4:16] = 1.0
    seg[15:20, 10:15, 6:9] = 2.0
    path = write_mla(tmp_path / "mask.mla", seg, spacing=[1.0, 1.0, 1.0])
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=None)
    assert image._type_string == "image"
    _select(viewer, image)
    read_counter.total = 0
    _layer_actions._convert(viewer.layers, "labels")  # right-click > Convert to Labels
    (labels,) = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert read_counter.total < seg.size  # a plane or two for the first frame, not the volume
    perm = labels.metadata["mlarray"]["perm"]
    np.testing.assert_array_equal(np.asarray(labels.data), seg.transpose(perm).astype(int))
    labels.data[(0, 0, 0)] = 5
    out = tmp_path / "painted.mla"
    _select(viewer, labels)
    viewer.layers.save(str(out), selected=True, plugin="napari-mlarray")
    back = MLArray.open(out)
    assert back.meta.is_seg and back.dtype == np.float32  # the file's dtype: the values fit
    np.testing.assert_array_equal(np.unique(back[...]), [0, 1, 2, 5])


def test_convert_datatype_of_a_converted_uint8_label_map(make_napari_viewer, tmp_path):
    from napari.layers import Labels, _layer_actions

    from mlarray import MLArray

    seg = np.zeros((20, 30, 40), np.uint8)  # converted by the reference tools: no is_seg
    seg[5:15, 10:20, 10:30] = 255
    path = write_mla(tmp_path / "seg.mla", seg, spacing=[1.0, 1.0, 1.0])
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=None)
    _select(viewer, image)
    _layer_actions._convert(viewer.layers, "labels")
    (labels,) = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    _select(viewer, labels)
    _layer_actions._convert_dtype(viewer.layers, "uint16")  # to paint a label above 255
    assert labels.data.dtype == np.uint16
    labels.data[(0, 0, 0)] = 300
    out = tmp_path / "u16.mla"
    viewer.layers.save(str(out), selected=True, plugin="napari-mlarray")
    back = MLArray.open(out)
    assert back.dtype == np.uint16 and back.meta.is_seg
    assert back[...].max() == 300 and int((back[...] == 255).sum()) == int((seg == 255).sum())


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_thick_slices_project_the_slab_around_the_slider(make_napari_viewer, tmp_path, mode):
    """napari's thick slices (slider margins, the layer's projection mode: a slab MIP) on a
    file whose S-I axis runs against napari's (every LPS or RAS file): the slab of planes
    within the margins of the slider position, in millimetres (black or an error before)."""
    from mlarray import MLArray

    # stored z, y, x; LPS z = 30 + 3 * i mm: napari's S-I (inferior) axis is -z, reversed
    affine = [[0, 0, 1, 0], [0, 1, 0, 0], [3, 0, 0, 30], [0, 0, 0, 1]]
    planes = 10 * np.arange(20, dtype=np.int16)
    data = np.broadcast_to(planes[:, None, None], (20, 16, 24)).copy()
    data[:, 4, 5] += 1  # a voxel brighter in every plane
    path = write_mla(tmp_path / "ct.mla", data, affine=affine, coord_system="LPS")
    assert np.allclose(MLArray.open(path).affine, affine)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin=None)
    assert viewer.dims.axis_labels[0] == "S-I"
    layer.projection_mode = mode
    layer.contrast_limits = (0, 200)
    i0 = 8
    viewer.dims.set_point(0, -(30 + 3 * i0))  # napari world: inferior = -z
    viewer.dims.margin_left = (6, 0, 0)  # 6 mm: two planes each side
    viewer.dims.margin_right = (6, 0, 0)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    slab = np.asarray(layer._slice.image.raw)
    slab_planes = data[i0 - 2 : i0 + 3]
    expected = slab_planes.max(0) if mode == "max" else slab_planes.mean(0)
    # in view order: y (A-P) down, x (R-L) across, as stored here
    np.testing.assert_allclose(slab, expected, rtol=1e-6)
    assert shot[..., :3].max() > 0
