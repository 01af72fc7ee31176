"""Viewer tier: open, show, paint and save ``.mla`` files in a real napari viewer."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception as exc:  # qtpy raises its own error types for a missing binding
    pytest.skip(f"no usable Qt binding: {exc}", allow_module_level=True)

from tests.conftest import FIXTURES, fixture_names
from tests.napari._helpers import view_index, write_mla

pytestmark = pytest.mark.qt

PLUGIN = "napari-mlarray"


def sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()


def physical_affine(record: dict, n: int) -> np.ndarray:
    from napari_mlarray._orientation import record_affine

    return record_affine(record, n)


def assert_world_is_physical(layer, record: dict):
    """Distances between voxel corners in napari world == physical distances."""
    n = layer.ndim
    A = physical_affine(record, n)
    perm = layer.metadata["mlarray"]["perm"]
    corners = [np.array(c, float) for c in itertools.product(*[(-0.5, 3.5)] * n)]
    for a, b in [(0, -1), (1, 2), (0, 5)]:
        wa = np.asarray(layer.data_to_world(corners[a]))
        wb = np.asarray(layer.data_to_world(corners[b]))
        inv = np.argsort(perm)  # view index -> stored index
        sa, sb = corners[a][inv], corners[b][inv]
        phys = np.linalg.norm(A[:n, :n] @ (sa - sb))
        assert np.isclose(np.linalg.norm(wa - wb), phys, rtol=1e-9)


@pytest.mark.parametrize("name", fixture_names())
def test_open_and_save_fixture_like_drag_and_drop(make_napari_viewer, tmp_path, name):
    from mlarray import MLArray

    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    viewer = make_napari_viewer()
    layers = viewer.open(str(FIXTURES / f"{name}.mla"), plugin=None)
    kinds = [layer._type_string for layer in layers]
    if expected["has_array"]:
        assert kinds[0] == ("labels" if expected["is_seg"] else "image")
    assert ("shapes" in kinds) == bool(expected["bboxes"])
    for layer in layers:
        assert layer.source.reader_plugin == PLUGIN
        assert layer.metadata["mlarray"]["record"]["_mlarray_version"] == "v0"
    if expected["has_array"]:
        assert_world_is_physical(layers[0], expected["meta_to_mapping"])
    out = tmp_path / f"{name}.mla"
    viewer.layers.selection = set(layers)
    written = viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert written == [str(out)]
    back = MLArray.open(out)
    record = back.meta.to_mapping()
    for key, value in expected["meta_to_mapping"].items():
        if key != "blosc2":
            assert record[key] == value, key
    if expected["has_array"]:
        assert sha(back[...]) == expected["sha256_c_order"]
    again = viewer.open(str(out), plugin=None)
    assert [layer._type_string for layer in again] == kinds


def test_oblique_ct_matches_its_affine_in_world(make_napari_viewer):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(FIXTURES / "a_ct3d_int16.mla"), plugin=None)
    expected = json.loads((FIXTURES / "a_ct3d_int16.json").read_text())
    A = np.asarray(expected["affine_property"])
    # napari world axes point inferior, posterior, left: (-z, y, x) of LPS
    lps_rev = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])
    for idx in ([0, 0, 0], [63, 0, 0], [10, 20, 30]):
        view = view_index(
            layer.metadata["mlarray"], idx, expected["meta_to_mapping"]["spatial"]["shape"]
        )
        world = np.asarray(layer.data_to_world(view))
        assert np.allclose(world, lps_rev @ (A @ np.r_[idx, 1])[:3], atol=1e-9)
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2  # an oblique residual rotation must not break 2-D slicing


def test_boxes_drawn_in_napari_save_with_the_image(make_napari_viewer, tmp_path, ct_volume):
    from mlarray import MLArray

    path = write_mla(tmp_path / "ct.mla", ct_volume, spacing=[2.0, 1.0, 1.0])
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=None)
    shapes = viewer.add_shapes(
        [np.array([[4, 2.5, 3.5], [4, 2.5, 7.5], [4, 5.5, 7.5], [4, 5.5, 3.5]])],
        shape_type="rectangle",
        scale=image.scale,
        translate=image.translate,
    )
    viewer.layers.selection = {image, shapes}
    out = tmp_path / "boxed.mla"
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    assert MLArray.open(out).meta.bbox.bboxes == [[[4, 5], [3, 6], [4, 8]]]


def test_screenshot_is_not_blank(make_napari_viewer, tmp_path, ct_volume):
    path = write_mla(tmp_path / "ct.mla", ct_volume, spacing=[2.0, 1.0, 1.0])
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin=None)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 1


def test_opening_a_big_volume_reads_one_plane(make_napari_viewer, tmp_path, read_counter):
    from mlarray.io import save_mla

    data = np.zeros((256, 256, 256), np.int16)
    data[:, ::5, ::3] = 1000
    path = tmp_path / "big.mla"
    save_mla(path, data, {"spatial": {"spacing": [1, 1, 1]}})
    viewer = make_napari_viewer()
    read_counter.total = 0
    (layer,) = viewer.open(str(path), plugin=None)
    assert layer.contrast_limits == [0.0, 1000.0]
    assert read_counter.total <= 4 * 256 * 256  # a few planes, not 256 of them
    assert read_counter.total < data.size / 50


@pytest.mark.parametrize("flipped", [False, True])
def test_contrast_comes_from_the_plane_napari_shows_first(make_napari_viewer, tmp_path, flipped):
    """The reader's contrast sample is the plane of the first frame (no other block layer
    is decoded for it), also along a flipped slider axis (a negative scale)."""
    from mlarray import MLArray
    from mlarray.io import save_mla
    from napari_mlarray._mapping import first_plane

    # every plane along the slider axis holds its own index; block layers 16 planes deep,
    # so the middle planes 31 and 32 of 64 lie in different block layers
    if flipped:  # LPS: stored axis 2 becomes the slider axis, flipped
        data = np.broadcast_to(np.arange(64, dtype=np.int16), (32, 32, 64)).copy()
        meta, chunks, blocks, axis = (
            {"spatial": {"coord_system": "LPS"}},
            (32, 32, 64),
            (32, 32, 16),
            2,
        )
    else:
        data = np.broadcast_to(np.arange(64, dtype=np.int16)[:, None, None], (64, 32, 32)).copy()
        meta, chunks, blocks, axis = {}, (64, 32, 32), (16, 32, 32), 0
    path = save_mla(
        tmp_path / "ct.mla", data, meta, patch_size=None, chunk_size=chunks, block_size=blocks
    )
    assert MLArray.open(path).blocks == blocks
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=None)
    # a flipped axis is reversed in the data: napari gets a positive scale
    assert layer.data.perm[0] == axis and layer.data.flip[0] == flipped and layer.scale[0] > 0
    shown = round(float(layer.world_to_data(viewer.dims.point)[0]))  # napari's first plane
    assert shown == first_plane(layer.data.shape, layer.scale)[0] == 31
    stored = 63 - shown if flipped else shown
    assert list(layer.contrast_limits) == [stored, stored + 1]  # a constant plane: (v, v + 1)
    decoded = {key for key in layer.data.source._chunk_cache._chunks if key[:2] == ("layer", axis)}
    assert ("layer", axis, 0, stored // 16) in decoded
    other = 63 - stored  # the middle plane in the other block layer
    assert ("layer", axis, 0, other // 16) not in decoded


@pytest.mark.parametrize("stored", ["stats", "int16", "float32", "uint8", "int16 2-D"])
def test_contrast_slider_spans_the_data_not_only_the_initial_window(
    make_napari_viewer, tmp_path, stored
):
    """The initial window stays the reader's (stats percentiles, else the first plane's
    range) while the layer controls' slider reaches the data's min/max from ``stats``
    (a CT's bone window above the 99.5 % percentile); without stats an 8-bit type's range,
    else the window widened by its width (never a 16-bit type's 65536 grey values: the
    data would take a few slider pixels), and the window itself when it was read from
    every value (a 2-D image)."""
    from mlarray.io import save_mla

    dtype = {"float32": np.float32, "uint8": np.uint8}.get(stored, np.int16)
    data = np.zeros((8, 32, 32), dtype)
    data[:, 8:24, 8:24] = 40
    data[4, 12:16, 12:16] = 1500 if stored != "uint8" else 200  # bone
    if stored != "uint8":
        data[0, 0, 0] = -1000  # air
    if stored == "int16 2-D":
        data = data[3]
    meta = {}
    if stored == "stats":
        meta = {"stats": {"min": -1000, "max": 1500, "percentile_min": 0, "percentile_max": 40}}
    path = save_mla(tmp_path / "ct.mla", data, meta)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=None)
    expected = {  # window: the first plane's range (plane 3), without stats
        "stats": ([0.0, 40.0], [-1000.0, 1500.0]),
        "int16": ([0.0, 40.0], [0.0, 80.0]),
        "float32": ([0.0, 40.0], [0.0, 80.0]),
        "uint8": ([0.0, 40.0], [0.0, 255.0]),
        "int16 2-D": ([0.0, 40.0], [0.0, 40.0]),
    }[stored]
    assert list(layer.contrast_limits) == expected[0]
    assert list(layer.contrast_limits_range) == expected[1]
    slider = viewer.window._qt_viewer.controls.widgets[layer]._contrast_limits_control
    slider = slider.contrast_limits_slider
    assert (slider.minimum(), slider.maximum()) == tuple(expected[1])
    slider.setValue((0.0, 1500.0))  # the top handle dragged towards a bone window's top
    assert list(layer.contrast_limits) == [0.0, min(1500.0, expected[1][1])]


def test_contrast_slider_widened_in_a_viewer_that_is_not_the_current_one(
    make_napari_viewer, tmp_path
):
    """A script with two viewers opening a file into the one napari does not call
    current gets the same slider as in the current one."""
    from mlarray.io import save_mla

    data = np.zeros((5, 40, 40), np.int16)
    data[2, 20:] = 1000
    data[4, 5, 5] = 3000
    stats = {"min": 0, "max": 3000, "percentile_min": 0, "percentile_max": 1000}
    path = save_mla(tmp_path / "ct.mla", data, {"stats": stats})
    first = make_napari_viewer()
    second = make_napari_viewer()
    import napari

    assert napari.current_viewer() is second
    (layer,) = first.open(str(path), plugin=None)
    assert list(layer.contrast_limits) == [0.0, 1000.0]  # the percentile window
    assert list(layer.contrast_limits_range) == [0.0, 3000.0]
    (other,) = second.open(str(path), plugin=None)
    assert list(other.contrast_limits_range) == [0.0, 3000.0]


def test_contrast_slider_of_each_channel_layer_spans_the_data(make_napari_viewer, tmp_path):
    from mlarray import MLArray

    data = np.zeros((2, 6, 16, 16), np.int16)
    data[0, :, 4:8] = 100
    data[1, :, 4:8] = 7
    data[1, 0, 0, 0] = 3000  # outside the first plane shown
    a = MLArray(data, axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"])
    a.meta.stats.min, a.meta.stats.max = 0, 3000
    path = tmp_path / "two.mla"
    a.save(path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=None)
    assert [list(layer.contrast_limits) for layer in layers] == [[0.0, 100.0], [0.0, 7.0]]
    assert [list(layer.contrast_limits_range) for layer in layers] == [[0.0, 3000.0]] * 2
