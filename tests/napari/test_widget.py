"""The "Recompress .mla" dock widget, driven in a real napari viewer (Xvfb)."""

from __future__ import annotations

from pathlib import Path

import blosc2
import numpy as np
import pytest

pytestmark = pytest.mark.qt

WIDGET = ("napari-mlarray", "Recompress .mla")


@pytest.fixture
def qt_available():
    try:
        import qtpy.QtWidgets  # noqa: F401
    except ImportError as exc:  # qtpy's QtBindingsNotFoundError is an ImportError
        pytest.skip(f"no Qt binding: {exc}")


@pytest.fixture
def isolated_settings(tmp_path, monkeypatch):
    """Plugin settings in tmp_path, never the user's config folder."""
    from napari import settings as napari_settings

    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(tmp_path / "cfg" / "settings.yaml"))
    napari_settings._clear_plugin_settings_cache()
    yield napari_settings
    napari_settings._clear_plugin_settings_cache()


@pytest.fixture
def viewer(qt_available, isolated_settings, make_napari_viewer):
    return make_napari_viewer()


def _add_widget(viewer):
    from napari_mlarray._widget import RecompressWidget

    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert isinstance(widget, RecompressWidget)
    return widget


def _run(widget, qtbot):
    import time

    from qtpy.QtWidgets import QApplication

    widget.run_button.native.click()
    assert widget.worker is not None, widget.status.value
    # Qt events processed by hand with a wall-clock deadline: in two clean-clone CI runs
    # qtbot.waitUntil's own timers never fired (the main thread sat in glib's poll for
    # minutes after the worker had finished), so a failure hung the suite
    deadline = time.monotonic() + 60
    while not widget.run_button.enabled:
        assert time.monotonic() < deadline, f"the run did not finish: {widget.status.value}"
        QApplication.processEvents()
        time.sleep(0.01)


def _ct(shape=(24, 64, 48)):
    rng = np.random.default_rng(0)
    return (rng.normal(0, 30, shape) // 4 * 4).astype(np.int16)


def _save(path, data, record):
    from mlarray import Meta
    from mlarray.io import save_mla

    return save_mla(path, data, Meta.from_mapping(record))


def test_widget_starts_from_library_defaults_and_plugin_settings(viewer, isolated_settings):
    from napari_mlarray._widget import Codec, Filter, RecompressWidget

    widget = _add_widget(viewer)
    assert widget.preset.value == "custom"
    assert (widget.codec.value, widget.clevel.value, widget.filter.value) == (
        Codec.LZ4HC,
        8,
        Filter.SHUFFLE,
    )
    assert (widget.layout_mode.value, widget.patch_size.value) == ("patch", 192)
    assert widget.storage() == {
        "patch_size": 192,
        "cparams": {"codec": "LZ4HC", "clevel": 8, "filters": ["SHUFFLE"]},
    }

    section = isolated_settings.get_plugin_settings("napari-mlarray").compression
    section.codec, section.clevel, section.patch_size = "ZSTD", 3, 96
    other = RecompressWidget(viewer)
    assert (other.codec.value, other.clevel.value, other.patch_size.value) == (Codec.ZSTD, 3, 96)
    section.preset = "archive"
    third = RecompressWidget(viewer)
    assert third.preset.value == "archive" and third.layout_mode.value == "chunks"


def test_presets_fill_the_typed_fields_and_edits_switch_to_custom(viewer):
    from napari_mlarray._recompress import PRESETS
    from napari_mlarray._widget import Codec, Filter

    widget = _add_widget(viewer)
    widget.preset.value = "training"
    assert (widget.codec.value, widget.clevel.value, widget.filter.value) == (
        Codec.LZ4,
        5,
        Filter.SHUFFLE,
    )
    assert widget.storage() == PRESETS["training"]
    widget.preset.value = "archive"
    assert widget.layout_mode.value == "chunks"
    assert widget.chunk_size.value == (256, 256, 256) and widget.block_size.value == (64, 64, 64)
    # the dock is not shown in tests: ask Qt whether the rows are hidden, not visible
    assert widget.patch_size.native.isHidden() and not widget.chunk_size.native.isHidden()
    widget.clevel.value = 2
    assert widget.preset.value == "custom"
    assert widget.storage()["cparams"] == {"codec": "ZSTD", "clevel": 2, "filters": ["SHUFFLE"]}
    widget.preset.value = "archive"
    widget.block_size.value = (32, 16, 16)
    assert widget.preset.value == "custom"
    assert widget.storage()["block_size"] == [32, 16, 16]


def test_layer_choices_follow_the_viewer(viewer):
    widget = _add_widget(viewer)
    assert widget.layer.value is None
    image = viewer.add_image(_ct(), name="ct")
    viewer.add_points([[0, 0, 0]], name="pts")
    labels = viewer.add_labels(np.zeros((24, 64, 48), np.uint8), name="seg")
    names = [layer.name for layer in widget.layer.choices if layer is not None]
    assert names == ["ct", "seg"]
    widget.layer.value = labels
    viewer.layers.remove(labels)
    assert [c for c in widget.layer.choices if c is not None] == [image]


def test_recompress_image_layer_progress_in_the_activity_dock(viewer, qtbot, tmp_path):
    data = _ct()
    layer = viewer.add_image(data, name="ct", scale=(2.5, 0.8, 0.8))
    widget = _add_widget(viewer)
    widget.layer.value = layer
    widget.preset.value = "training"
    widget.output.value = tmp_path / "ct_fast.mla"

    _run(widget, qtbot)

    out = tmp_path / "ct_fast.mla"
    result = widget.result
    assert result is not None, widget.status.value
    assert result.path == out and result.after_bytes == out.stat().st_size
    assert not result.before_on_disk and result.before_bytes == data.nbytes
    assert widget.status.value == result.summary()
    store = blosc2.open(str(out))
    assert store.schunk.cparams.codec == blosc2.Codec.LZ4
    assert store[...].tobytes() == data.tobytes()
    # napari's progress bar (activity dock) went to the end and was closed
    pbar = widget.pbar
    assert pbar.total == store.schunk.nchunks and pbar.n == pbar.total and pbar.disable


def test_recompress_channel_of_a_ras_file_with_chunks_in_stored_order(viewer, qtbot, tmp_path):
    from mlarray import MLArray

    data = np.arange(2 * 6 * 8 * 10, dtype=np.float32).reshape(2, 6, 8, 10)
    labels = ["channel", "spatial_x", "spatial_y", "spatial_z"]
    src = _save(
        tmp_path / "c.mla", data, {"spatial": {"axis_labels": labels, "coord_system": "RAS"}}
    )
    layers = viewer.open(str(src), plugin=None)
    assert [layer.data.shape for layer in layers] == [(10, 8, 6)] * 2  # z, y, x
    widget = _add_widget(viewer)
    widget.layer.value = layers[1]
    widget.layout_mode.value = "chunks"
    widget.chunk_size.value = (5, 4, 3)  # layer order: z, y, x
    widget.block_size.value = (5, 2, 3)
    widget.output.value = tmp_path / "c1.mla"

    _run(widget, qtbot)

    assert widget.result is not None, widget.status.value
    back = MLArray.open(tmp_path / "c1.mla")
    assert back.shape == (1, 6, 8, 10) and np.array_equal(back[...], data[1:2])
    assert back.chunks == (1, 3, 4, 5) and back.blocks == (1, 3, 2, 5)


def test_recompress_file_in_place(viewer, qtbot, tmp_path):
    from mlarray import MLArray

    data = _ct()
    src = _save(tmp_path / "ct.mla", data, {"spatial": {"spacing": [2.5, 0.8, 0.8]}})
    old_size = src.stat().st_size
    widget = _add_widget(viewer)
    widget.source.value = "file"
    widget.source_file.value = src
    assert widget.output.value == tmp_path / "ct_recompressed.mla"
    assert widget.in_place.enabled
    widget.in_place.value = True
    widget.preset.value = "archive"

    _run(widget, qtbot)

    assert widget.result.path == src and widget.result.before_bytes == old_size
    store = blosc2.open(str(src))
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store[...].tobytes() == data.tobytes()
    assert list(MLArray.open(src).meta.spatial.spacing) == [2.5, 0.8, 0.8]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mla") == ["ct.mla"]


def test_settings_the_library_refuses_are_reported_without_running(viewer, tmp_path):
    widget = _add_widget(viewer)
    widget.layer.value = viewer.add_image(_ct(), name="ct")
    widget.layout_mode.value = "chunks"
    widget.chunk_size.value = (12, 8, 8)
    widget.block_size.value = (4, 16, 4)  # a block larger than its chunk
    widget.output.value = tmp_path / "x.mla"
    widget.run_button.native.click()
    assert widget.worker is None
    assert widget.status.value.startswith("Error: block_size"), widget.status.value
    assert not (tmp_path / "x.mla").exists()


def test_failing_job_is_reported_and_keeps_the_source(viewer, qtbot, tmp_path):
    src = _save(tmp_path / "ct.mla", _ct(), {})
    before = src.read_bytes()
    widget = _add_widget(viewer)
    widget.source.value = "file"
    widget.source_file.value = src
    widget.output.value = tmp_path / "no" / "such" / "folder" / "out.mla"

    _run(widget, qtbot)

    assert widget.status.value.startswith("Error:"), widget.status.value
    assert "does not exist" in widget.status.value
    assert widget.result is None and src.read_bytes() == before


def test_recompress_opened_labels_layer_in_place(viewer, qtbot, tmp_path):
    from napari_mlarray._sample_data import make_ct_sample, write_sample

    sample = make_ct_sample((16, 48, 48))
    seg_path = write_sample(tmp_path, sample)["seg"]
    [layer] = viewer.open(str(seg_path), plugin=None)
    widget = _add_widget(viewer)
    widget.layer.value = layer
    assert widget.output.value.name == "ct_seg_recompressed.mla"
    assert widget.in_place.enabled
    widget.in_place.value = True
    widget.preset.value = "labels"

    _run(widget, qtbot)

    assert widget.result is not None and widget.result.path == seg_path, widget.status.value
    assert widget.result.before_on_disk
    store = blosc2.open(str(seg_path))
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store[...].tobytes() == sample.seg.tobytes()
    assert not (tmp_path / "ct_seg_recompressed.mla").exists()


def test_in_memory_layers_get_an_output_next_to_their_source(viewer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # not where outputs go
    ct = _save(tmp_path / "ct.mla", _ct(), {"spatial": {"spacing": [2.5, 0.8, 0.8]}})
    npy = tmp_path / "scan.npy"
    np.save(npy, _ct((4, 5, 6)))
    (image,) = viewer.open(str(ct), plugin=None)
    viewer.layers.selection.active = image
    from napari._app_model import get_app_model

    get_app_model().commands.execute_command("napari-mlarray.new_labels_for_image").result()
    labels = viewer.layers[-1]
    (from_npy,) = viewer.open(str(npy))
    widget = _add_widget(viewer)
    widget.layer.value = labels  # made for ct.mla, in memory
    assert widget.output.value == tmp_path / "ct_labels.mla"
    assert not widget.in_place.enabled
    widget.layer.value = from_npy  # read by another plugin
    assert widget.output.value == tmp_path / "scan_recompressed.mla"
    from napari.utils.history import get_open_history

    widget.layer.value = viewer.add_image(_ct((4, 5, 6)), name="made here")  # no source at all
    assert widget.output.value == Path(get_open_history()[0]) / "made_here.mla"
    assert widget.output.value.parent != Path.cwd()


def test_chunk_and_block_fields_follow_the_layer_dimensions(viewer):
    widget = _add_widget(viewer)
    widget.layer.value = viewer.add_image(np.zeros((1200, 30), np.uint8), name="xray")
    widget.layout_mode.value = "chunks"
    assert len(widget.chunk_size.value) == len(widget.block_size.value) == 2
    widget.chunk_size.value = (1200, 30)
    widget.block_size.value = (600, 30)
    assert widget.storage()["chunk_size"] == [1200, 30]
    assert not widget.chunk_size.native.isHidden()


@pytest.mark.parametrize(
    ("shape", "labels"),
    [((300, 40), None), ((2, 10, 16, 12), ["channel", "spatial_z", "spatial_y", "spatial_x"])],
)
def test_chunk_and_block_fields_follow_the_chosen_file(viewer, qtbot, tmp_path, shape, labels):
    from mlarray import MLArray

    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    spatial = {"spacing": [1.0] * (len(shape) - (labels is not None)), "axis_labels": labels}
    src = _save(tmp_path / "f.mla", data, {"spatial": spatial})
    widget = _add_widget(viewer)
    widget.layer.value = viewer.add_image(np.zeros((4, 5, 6), np.uint8), name="other")
    widget.source.value = "file"
    widget.source_file.value = src
    widget.layout_mode.value = "chunks"
    assert len(widget.chunk_size.value) == len(widget.block_size.value) == len(shape)
    assert not widget.chunk_size.native.isHidden()
    chunks = tuple(min(n, 8) for n in shape)  # stored axis order
    widget.chunk_size.value = chunks
    widget.block_size.value = tuple(min(n, 4) for n in shape)
    widget.output.value = tmp_path / "out.mla"

    _run(widget, qtbot)

    assert widget.result is not None, widget.status.value
    back = MLArray.open(tmp_path / "out.mla")
    assert back.chunks == chunks and np.array_equal(back[...], data)


def test_sample_data_output_is_proposed_where_it_outlives_napari(
    viewer, qtbot, tmp_path, isolated_settings
):
    from mlarray import MLArray
    from napari_mlarray._layer_common import KEY
    from napari_mlarray._sample_data import in_sample_folder

    isolated_settings.get_settings().application.open_history = [str(tmp_path)]
    viewer.open_sample("napari-mlarray", "ct_sample")
    seg = viewer.layers["ct_seg"]
    seg_file = seg.metadata[KEY]["path"]
    assert in_sample_folder(seg_file)  # removed when napari exits
    widget = _add_widget(viewer)
    widget.layer.value = seg
    assert widget.output.value == tmp_path / "ct_seg_recompressed.mla"
    assert not widget.in_place.enabled  # the sample file itself goes at exit
    widget.source.value = "file"
    widget.source_file.value = seg_file
    assert widget.output.value == tmp_path / "ct_seg_recompressed.mla"
    assert not widget.in_place.enabled
    widget.source.value = "layer"

    _run(widget, qtbot)

    assert widget.result is not None, widget.status.value
    assert widget.result.path == tmp_path / "ct_seg_recompressed.mla"
    # the layer's label map, stored as its file stores it
    np.testing.assert_array_equal(
        MLArray.open(widget.result.path)[...], MLArray.open(seg_file)[...]
    )
    assert np.array_equal(np.unique(seg.data), np.unique(MLArray.open(seg_file)[...]))


def test_recompress_rgb_layer_with_chunks_per_shown_axis(viewer, qtbot, tmp_path):
    from mlarray import MLArray

    picture = np.random.default_rng(0).integers(0, 255, (40, 60, 3)).astype(np.uint8)
    layer = viewer.add_image(picture, rgb=True, name="photo")
    widget = _add_widget(viewer)
    widget.layer.value = layer
    widget.layout_mode.value = "chunks"
    assert len(widget.chunk_size.value) == 2  # the picture's axes; the colours stay whole
    widget.chunk_size.value = (16, 32)
    widget.block_size.value = (8, 16)
    widget.output.value = tmp_path / "photo.mla"

    _run(widget, qtbot)

    assert widget.result is not None, widget.status.value
    back = MLArray.open(tmp_path / "photo.mla")
    assert np.array_equal(back[...], picture)
    assert back.chunks == (16, 32, 3) and back.blocks == (8, 16, 3)
