"""Qt-free tier: reader and writer on real ``.mla`` files, and npe2's reader/writer selection."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from napari_mlarray._layer_common import KEY
from napari_mlarray._lazy import LazyView
from napari_mlarray._reader import get_reader, read_mla
from napari_mlarray._writer import save_layers
from tests.conftest import FIXTURES, fixture_names
from tests.napari._helpers import view_index_inverse, write_mla


def as_layer_meta(kw: dict) -> dict:
    """The meta napari's ``as_layer_data_tuple`` would give back for reader keywords."""
    meta = dict(kw)
    ndim = len(np.atleast_1d(kw["scale"]))
    meta["affine"] = np.eye(ndim + 1)
    meta["axis_labels"] = kw.get("axis_labels") or tuple(str(k - ndim) for k in range(ndim))
    meta["units"] = kw.get("units") or ("pixel",) * ndim
    return meta


def resave(path, out):
    layers = [(d, as_layer_meta(kw), t) for d, kw, t in read_mla(str(path))]
    return save_layers(out, layers)


def sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()


def test_reader_writer_and_npe2_do_not_import_qt(tmp_path):
    # pytest-qt imports Qt into this process, so check in a fresh interpreter
    code = f"""
import sys, numpy as np, npe2
from npe2 import io_utils
from mlarray.io import save_mla
npe2.PluginManager.instance().discover()
seg = {{"is_seg": {{"is_seg": True}}}}
save_mla({str(tmp_path / "q.mla")!r}, np.zeros((3, 4, 5), np.uint8), seg)
layers = io_utils.read([{str(tmp_path / "q.mla")!r}], stack=False, plugin_name="napari-mlarray")
import napari_mlarray._writer
qt = [m for m in sys.modules if m.startswith(("PyQt", "qtpy", "PySide", "napari._qt"))]
assert not qt, qt
assert [t for _, _, t in layers] == ["labels"]
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "path", ["a.tif", "a.mla.zip", "", 42, None, [], ["a.mla", "b.nii"], ("x.MLA", 3)]
)
def test_get_reader_declines_what_is_not_ours(path):
    assert get_reader(path) is None


def test_get_reader_accepts_mla_paths(tmp_path):
    assert get_reader(str(tmp_path / "a.mla")) is read_mla
    assert get_reader([tmp_path / "a.mla", str(tmp_path / "b.MLA")]) is read_mla
    (tmp_path / "d.mla").mkdir()
    assert get_reader(str(tmp_path / "d.mla")) is None


def test_broken_file_gives_a_clear_error(tmp_path):
    from mlarray.errors import MLArrayError

    bad = tmp_path / "broken.mla"
    bad.write_bytes(b"this is not a blosc2 frame" * 10)
    with pytest.raises(MLArrayError, match=r"broken\.mla"):
        read_mla(str(bad))


@pytest.mark.parametrize("name", fixture_names())
def test_upstream_fixture_roundtrip(tmp_path, name):
    from mlarray import MLArray

    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    layers = read_mla(str(FIXTURES / f"{name}.mla"))
    kinds = [t for _, _, t in layers]
    if expected["has_array"]:
        assert kinds[0] == ("labels" if expected["is_seg"] else "image")
    assert ("shapes" in kinds) == bool(expected["bboxes"])
    out = tmp_path / f"{name}.mla"
    assert resave(FIXTURES / f"{name}.mla", out) == [str(out)]
    back = MLArray.open(out)
    record = back.meta.to_mapping()
    if expected["has_array"]:
        assert back.shape == tuple(expected["shape"]) and back.dtype == expected["dtype"]
        assert sha(back[...]) == expected["sha256_c_order"]
    for key, value in expected["meta_to_mapping"].items():
        if key != "blosc2":
            assert record[key] == value, key


def test_image_is_lazy_with_contrast_from_one_plane(tmp_path, read_counter):
    from mlarray.io import save_mla

    data = np.random.default_rng(0).integers(-1000, 1000, (128, 128, 128)).astype(np.int16)
    path = tmp_path / "big.mla"
    save_mla(path, data, {"spatial": {"spacing": [1, 1, 1]}})
    read_counter.total = 0
    ((view, kw, kind),) = read_mla(str(path))
    assert kind == "image" and isinstance(view, LazyView)
    assert kw["contrast_limits"] is not None
    assert read_counter.total <= 128 * 128  # one plane, never the volume
    lo, hi = kw["contrast_limits"]
    assert data[64].min() == lo and data[64].max() == hi


def test_stats_give_the_window_without_reading(tmp_path, read_counter, ct_volume):
    meta = {"stats": {"percentile_min": -100.0, "percentile_max": 300.0, "min": -1000, "max": 2000}}
    path = write_mla(tmp_path / "ct.mla", ct_volume, meta=meta, spacing=[2.5, 0.7, 0.7])
    read_counter.total = 0
    ((_, kw, _),) = read_mla(str(path))
    assert kw["contrast_limits"] == (-100.0, 300.0)
    assert read_counter.total == 0


def test_float_mask_opens_as_small_int_labels_and_saves_back(tmp_path):
    from mlarray import MLArray

    mask = np.zeros((6, 7, 8), np.float32)
    mask[1:3, 2:5, 3:6] = 2
    path = write_mla(tmp_path / "m.mla", mask, meta={"is_seg": {"is_seg": True}})
    ((labels, kw, kind),) = read_mla(str(path))
    assert kind == "labels" and labels.dtype == np.uint8 and isinstance(labels, np.ndarray)
    assert labels.flags.writeable
    labels[0, 0, 0] = 1  # paint
    out = tmp_path / "m2.mla"
    save_layers(out, [(labels, as_layer_meta(kw), "labels")])
    back = MLArray.open(out)
    assert back.dtype == np.float32
    expected = mask.copy()
    expected[0, 0, 0] = 1
    assert np.array_equal(back[...], expected)
    assert back.meta.is_seg.is_seg is True


def test_non_integral_float_seg_opens_as_image(tmp_path):
    path = write_mla(
        tmp_path / "p.mla", np.full((3, 4, 5), 0.5, np.float32), meta={"is_seg": {"is_seg": True}}
    )
    assert [t for _, _, t in read_mla(str(path))] == ["image"]


def test_ras_xyz_file_is_transposed_lazily_and_saved_back_in_its_order(tmp_path, ct_volume):
    from mlarray import MLArray

    xyz = np.ascontiguousarray(ct_volume.transpose(2, 1, 0))
    path = write_mla(
        tmp_path / "ras.mla",
        xyz,
        spacing=[0.7, 0.8, 2.5],
        origin=[10.0, -20.0, 30.0],
        direction=np.diag([-1.0, -1.0, 1.0]).tolist(),
        axis_labels=["spatial_x", "spatial_y", "spatial_z"],
        coord_system="RAS",
        axis_units=["mm", "mm", "mm"],
    )
    ((view, kw, _),) = read_mla(str(path))
    assert view.shape == ct_volume.shape
    # RAS with x, y negated is plain LPS; napari's first axis runs toward inferior: the
    # z axis is shown reversed, in the data (napari gets positive scales)
    assert np.array_equal(np.asarray(view), ct_volume[::-1])
    assert np.allclose(kw["scale"], [2.5, 0.8, 0.7])
    assert kw["metadata"][KEY]["flip"] == [True, False, False]
    assert kw["axis_labels"] == ["S-I", "A-P", "R-L"]
    assert kw["units"] == ["mm", "mm", "mm"]
    meta = kw["metadata"][KEY]
    assert meta["perm"] == [2, 1, 0] and meta["record"]["spatial"]["coord_system"] == "RAS"
    out = tmp_path / "ras2.mla"
    save_layers(out, [(view, as_layer_meta(kw), "image")])
    back = MLArray.open(out)
    assert np.array_equal(back[...], xyz)
    assert back.meta.to_mapping()["spatial"] == MLArray.open(path).meta.to_mapping()["spatial"]


def test_channel_axis_and_time_axis(tmp_path):
    from napari.layers.utils.stack_utils import split_channels

    data = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.uint16).reshape(2, 3, 4, 5, 6)
    labels = ["temporal", "channel", "spatial_z", "spatial_y", "spatial_x"]
    path = write_mla(tmp_path / "tc.mla", data, axis_labels=labels, spacing=[3, 2, 1])
    ((view, kw, _),) = read_mla(str(path))
    assert view.shape == (2, 3, 4, 5, 6)  # time stays a slider axis, channel splits
    assert kw["channel_axis"] == 1
    layers = split_channels(view, kw.pop("channel_axis"), **kw)
    assert len(layers) == 3 and all(isinstance(d, LazyView) for d, _, _ in layers)
    d1, m1, _ = layers[1]
    assert d1.shape == (2, 4, 5, 6) and np.array_equal(np.asarray(d1), data[:, 1])
    assert m1["axis_labels"] == ["temporal", "spatial_z", "spatial_y", "spatial_x"]
    out = tmp_path / "c1.mla"
    save_layers(out, [(d1, as_layer_meta(m1), "image")])
    from mlarray import MLArray

    back = MLArray.open(out)
    assert back.shape == (2, 1, 4, 5, 6) and np.array_equal(back[...], data[:, 1:2])
    assert back.meta.spatial.axis_labels == labels


def test_boxes_only_and_boxes_with_image(tmp_path, ct_volume):
    from mlarray import MLArray

    bbox = {"bboxes": [[[1, 4], [2, 9], [3, 7.5]]], "scores": [0.8], "labels": ["nodule"]}
    path = write_mla(tmp_path / "b.mla", ct_volume, meta={"bbox": bbox}, spacing=[2, 1, 1])
    layers = read_mla(str(path))
    assert [t for _, _, t in layers] == ["image", "shapes"]
    shapes_data, shapes_kw, _ = layers[1]
    assert len(shapes_data) == 3  # slices 1, 2, 3
    smeta = as_layer_meta(shapes_kw)
    # image + boxes in one file
    out = tmp_path / "b2.mla"
    save_layers(
        out, [(layers[0][0], as_layer_meta(layers[0][1]), "image"), (shapes_data, smeta, "shapes")]
    )
    assert MLArray.open(out).meta.bbox.bboxes == bbox["bboxes"]
    # the boxes alone: a metadata-only file
    only = tmp_path / "only.mla"
    save_layers(only, [(shapes_data, smeta, "shapes")])
    again = read_mla(str(only))
    assert [t for _, _, t in again] == ["shapes"]
    rec = MLArray.open(only).meta.to_mapping()
    assert rec["_has_array"]["has_array"] is False
    assert rec["bbox"] == bbox and rec["spatial"]["spacing"] == [2.0, 1.0, 1.0]


def test_save_streams_over_its_own_file(tmp_path, read_counter):
    from mlarray import MLArray
    from mlarray.io import save_mla

    data = np.random.default_rng(1).integers(0, 4000, (96, 96, 96)).astype(np.int16)
    path = tmp_path / "self.mla"
    save_mla(
        path,
        data,
        {"spatial": {"spacing": [1, 1, 1]}},
        chunk_size=[32, 32, 32],
        patch_size=None,
        block_size=[16, 16, 16],
    )
    ((view, kw, _),) = read_mla(str(path))
    read_counter.total = read_counter.largest = 0
    calls = []
    save_layers(
        path, [(view, as_layer_meta(kw), "image")], progress=lambda d, t: calls.append((d, t))
    )
    assert read_counter.largest <= 32**3  # chunk by chunk, never the volume at once
    assert calls and calls[-1][0] == calls[-1][1]
    assert np.array_equal(MLArray.open(path)[...], data)


def test_storage_options_are_passed_through(tmp_path, ct_volume):
    from mlarray import MLArray

    path = write_mla(tmp_path / "s.mla", ct_volume, spacing=[1, 1, 1])
    ((view, kw, _),) = read_mla(str(path))
    out = tmp_path / "s2.mla"
    storage = {
        "patch_size": None,
        "chunk_size": [8, 20, 24],
        "block_size": [4, 10, 12],
        "cparams": {"codec": 5, "clevel": 3},
    }
    save_layers(out, [(view, as_layer_meta(kw), "image")], storage=storage)
    back = MLArray.open(out)
    assert back.chunks == (8, 20, 24) and back.blocks == (4, 10, 12)
    assert back.meta.blosc2.cparams["codec"] == 5
    with pytest.raises(TypeError, match="unknown"):
        save_layers(out, [(view, as_layer_meta(kw), "image")], storage={"codec": 1})


def test_npe2_selects_our_reader_and_writers(tmp_path):
    import npe2
    from npe2 import io_utils

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-mlarray" in pm._manifests
    layers, reader = io_utils.read_get_reader(str(FIXTURES / "d_seg_uint8_bboxes.mla"))
    assert reader.plugin_name == "napari-mlarray"
    assert [t for _, _, t in layers] == ["labels", "shapes"]
    full = [(d, as_layer_meta(kw), t) for d, kw, t in layers]
    out = tmp_path / "seg.mla"
    assert io_utils.write(str(out), full, plugin_name="napari-mlarray") == [str(out)]
    single = tmp_path / "seg_only.mla"
    assert io_utils.write(str(single), full[:1], plugin_name="napari-mlarray") == [str(single)]
    again = io_utils.read([str(out)], stack=False, plugin_name="napari-mlarray")
    assert np.array_equal(again[0][0], layers[0][0])


def test_ras_file_with_several_chunks_saves_back(tmp_path, ct_volume):
    # a transposed read of a partial chunk is not contiguous; Blosc2 refuses such blocks
    from mlarray import MLArray
    from mlarray.io import save_mla

    xyz = np.ascontiguousarray((ct_volume > 500).astype(np.uint8).transpose(2, 1, 0))
    record = {
        "spatial": {"spacing": [0.7, 0.8, 2.5], "coord_system": "RAS"},
        "is_seg": {"is_seg": True},
    }
    path = tmp_path / "ras_seg.mla"
    save_mla(path, xyz, record, patch_size=None, chunk_size=[16, 16, 8], block_size=[8, 8, 8])
    layers = read_mla(str(path))
    assert [t for _, _, t in layers] == ["labels"]
    (data, kw, kind) = layers[0]
    data[12, 20, 30] = 7  # paint
    out = tmp_path / "ras_seg2.mla"
    assert save_layers(out, [(data, as_layer_meta(kw), kind)]) == [str(out)]
    expected = xyz.copy()
    stored = view_index_inverse(kw["metadata"][KEY], (12, 20, 30), xyz.shape)
    expected[stored] = 7
    back = MLArray.open(out)
    assert back.chunks == (16, 16, 8)
    assert np.array_equal(back[...], expected)


def test_channels_get_their_own_contrast_even_with_stored_stats(tmp_path):
    # the stored statistics are over all channels: T1 and T2 ranges differ
    from mlarray import MLArray

    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(0, 1, (4, 10, 12)), rng.normal(1000, 10, (4, 10, 12))])
    arr = MLArray(
        data.astype(np.float32), axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"]
    )
    arr.compute_stats()
    arr.save(tmp_path / "ch.mla")
    ((_, kw, _),) = read_mla(str(tmp_path / "ch.mla"))
    first, second = kw["contrast_limits"]
    assert first[1] < 10 and second[0] > 900


def test_unchanged_ras_image_saves_back_by_copying_its_compressed_chunks(tmp_path, ct_volume):
    import blosc2

    from mlarray.io import save_mla

    xyz = np.ascontiguousarray(ct_volume.transpose(2, 1, 0))
    src = tmp_path / "ras.mla"
    save_mla(
        src,
        xyz,
        {"spatial": {"spacing": [0.7, 0.8, 2.5], "coord_system": "RAS"}},
        patch_size=None,
        chunk_size=[16, 16, 8],
        block_size=[8, 8, 8],
    )
    ((data, kw, kind),) = read_mla(str(src))
    out = tmp_path / "ras_again.mla"
    assert save_layers(out, [(data, as_layer_meta(kw), kind)]) == [str(out)]
    a, b = blosc2.open(str(src)), blosc2.open(str(out))
    assert a.schunk.nchunks == b.schunk.nchunks > 1
    assert all(a.schunk.get_chunk(i) == b.schunk.get_chunk(i) for i in range(a.schunk.nchunks))


def test_new_layer_adopting_an_opened_image_saves_in_its_stored_order(tmp_path):
    from mlarray import MLArray
    from mlarray.io import save_mla
    from napari_mlarray._mapping import adopt_template

    xyz = np.random.default_rng(1).integers(0, 100, (12, 14, 10)).astype(np.int16)
    geometry = {
        "spacing": [0.7, 0.8, 2.5],
        "origin": [10.0, 20.0, 30.0],
        "coord_system": "RAS",
        "axis_labels": ["spatial_x", "spatial_y", "spatial_z"],
    }
    src = tmp_path / "ras.mla"
    save_mla(src, xyz, {"spatial": geometry, "bbox": {"bboxes": [[[0, 1], [0, 1], [0, 1]]]}})
    (img, kw, _), *_ = read_mla(str(src))
    # what napari's "new labels" makes: same shape and transforms, no .mla metadata
    new_meta = {k: v for k, v in as_layer_meta(kw).items() if k != "metadata"}
    labels = np.zeros(img.shape, np.uint8)
    labels[3, 5, 7] = 2  # view order (z, y, x)
    painted = view_index_inverse(kw["metadata"]["mlarray"], (3, 5, 7), xyz.shape)
    meta = adopt_template(new_meta, kw["metadata"]["mlarray"], "labels", labels.dtype)
    out = tmp_path / "seg.mla"
    assert save_layers(out, [(labels, meta, "labels")]) == [str(out)]
    seg, image = MLArray.open(out), MLArray.open(src)
    assert seg.shape == image.shape and seg.dtype == np.uint8
    assert seg.meta.spatial.coord_system == "RAS" and seg.meta.is_seg.is_seg is True
    assert seg.meta.spatial.axis_labels == geometry["axis_labels"]
    np.testing.assert_allclose(seg.affine, image.affine)
    assert seg.meta.bbox.bboxes is None and seg.meta.stats.min is None
    assert np.argwhere(seg.to_numpy() == 2).tolist() == [list(painted)]  # stored (x, y, z)
    assert painted == (12 - 1 - 7, 14 - 1 - 5, 10 - 1 - 3)  # RAS: every axis shown reversed


def test_reader_scrolls_planes_from_the_chunk_cache(tmp_path):
    from mlarray.io import save_mla
    from mlarray.meta import Meta

    data = np.random.default_rng(1).integers(-1000, 1000, (40, 48, 56)).astype(np.int16)
    path = tmp_path / "scroll.mla"
    save_mla(path, data, Meta(), patch_size=None, chunk_size=(20, 24, 28), block_size=(5, 8, 7))
    ((view, _, kind),) = read_mla(str(path))
    assert kind == "image"
    arr = view.simplified()
    cache = arr._chunk_cache
    assert cache is not None and arr._store.schunk.dparams.nthreads >= 1
    for axis in range(3):  # scrolling along every axis shows the right planes
        for i in range(data.shape[axis]):
            key = (slice(None),) * axis + (i,)
            np.testing.assert_array_equal(np.asarray(view.source[key]), data[key])
    assert cache.hits > 100 and cache.misses <= 3 * 8


def test_many_channels_open_as_one_layer_with_a_channel_slider(tmp_path, monkeypatch):
    # one layer per channel made napari slow down with every layer (800 channels: 135 s)
    from mlarray import MLArray
    from napari_mlarray import _mapping, _reader

    shown = []
    monkeypatch.setattr(_reader, "_notify", lambda notes: shown.extend(notes or []))
    labels = ["channel", "spatial_z", "spatial_y", "spatial_x"]
    few, many = tmp_path / "few.mla", tmp_path / "many.mla"
    n = _mapping.MAX_CHANNEL_LAYERS + 1
    data = np.arange(n * 8, dtype=np.uint8).reshape(n, 2, 2, 2)
    MLArray(data[:3], axis_labels=labels).save(few)
    MLArray(data, axis_labels=labels).save(many)
    [(view, kw, kind)] = read_mla(str(few))
    assert kw["channel_axis"] is not None and len(kw["name"]) == 3
    [(view, kw, kind)] = read_mla(str(many))
    assert kind == "image" and "channel_axis" not in kw and view.shape[0] == n
    np.testing.assert_array_equal(np.asarray(view[n - 1]), data[n - 1])
    assert any(f"{n} channels" in note for note in shown)
    # saved back as it is: every channel
    save_layers(tmp_path / "back.mla", [(view, kw, "image")])
    np.testing.assert_array_equal(MLArray.open(tmp_path / "back.mla")[...], data)
