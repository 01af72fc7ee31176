"""The "Recompress .mla" dock widget, driven in a real napari viewer (Xvfb)."""

from __future__ import annotations

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
    widget.run_button.native.click()
    assert widget.worker is not None, widget.status.value
    qtbot.waitUntil(lambda: not widget.worker.is_running, timeout=30_000)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5_000)


def _ct(shape=(24, 64, 48)):
    rng = np.random.default_rng(0)
    return (rng.normal(0, 30, shape) // 4 * 4).astype(np.int16)


def test_widget_starts_from_library_defaults(viewer):
    widget = _add_widget(viewer)
    assert widget.preset.value == "custom"
    assert (widget.codec.value, widget.clevel.value, widget.filter.value) == ("LZ4HC", 8, "SHUFFLE")
    assert widget.patch_size.value == "192"
    assert widget.layout_mode.value == "patch"


def test_widget_starts_from_plugin_settings(viewer, isolated_settings):
    section = isolated_settings.get_plugin_settings("napari-mlarray").compression
    section.codec = "ZSTD"
    section.clevel = 3
    section.patch_size = 96
    widget = _add_widget(viewer)
    assert (widget.codec.value, widget.clevel.value, widget.patch_size.value) == ("ZSTD", 3, "96")

    section.preset = "archive"
    from napari_mlarray._widget import RecompressWidget

    other = RecompressWidget(viewer)
    viewer.window.add_dock_widget(other, name="second")
    assert other.preset.value == "archive"
    assert other.layout_mode.value == "large"


def test_presets_fill_the_fields_and_edits_switch_to_custom(viewer):
    widget = _add_widget(viewer)
    widget.preset.value = "training"
    assert (widget.codec.value, widget.filter.value) == ("LZ4", "SHUFFLE")
    assert 1 <= widget.clevel.value <= 5
    widget.preset.value = "labels"
    assert widget.filter.value == "BITSHUFFLE"
    widget.clevel.value = 2
    assert widget.preset.value == "custom"
    widget.layout_mode.value = "explicit"
    # the dock is not shown in tests: ask Qt whether the rows are hidden, not visible
    assert not widget.chunk_size.native.isHidden()
    assert widget.patch_size.native.isHidden()


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


def test_recompress_image_layer_with_training_preset(viewer, qtbot, tmp_path):
    data = _ct()
    layer = viewer.add_image(data, name="ct", scale=(2.5, 0.8, 0.8))
    widget = _add_widget(viewer)
    widget.layer.value = layer
    from napari_mlarray._recompress import format_bytes

    assert "in memory" in widget.current.value
    widget.preset.value = "training"
    widget.output.value = tmp_path / "ct_fast.mla"
    seen = []
    widget.progress.changed.connect(seen.append)

    _run(widget, qtbot)

    assert widget.status.value.startswith("Wrote"), widget.status.value
    out = tmp_path / "ct_fast.mla"
    store = blosc2.open(str(out))
    assert store.schunk.cparams.codec == blosc2.Codec.LZ4
    assert store[...].tobytes() == data.tobytes()
    result = widget.result
    assert result.path == out and result.after_bytes == out.stat().st_size
    assert f"{result.ratio_after:.2f}x" in widget.resulting.value
    assert widget.current.value == f"{format_bytes(data.nbytes)} in memory, 1.00x"
    assert widget.elapsed.value.endswith(" s")
    assert widget.progress.value == widget.progress.max
    assert seen  # the bar moved


def test_recompress_labels_layer_with_explicit_layout(viewer, qtbot, tmp_path):
    seg = np.zeros((24, 64, 48), np.uint8)
    seg[4:20, 10:50, 8:40] = 1
    seg[8:12, 20:30, 15:25] = 2
    layer = viewer.add_labels(seg, name="seg")
    widget = _add_widget(viewer)
    widget.layer.value = layer
    widget.preset.value = "labels"
    widget.layout_mode.value = "explicit"
    widget.chunk_size.value = "12, 32, 48"
    widget.block_size.value = "6x16x16"
    widget.output.value = tmp_path / "seg.mla"

    _run(widget, qtbot)

    store = blosc2.open(str(tmp_path / "seg.mla"))
    assert store.chunks == (12, 32, 48)
    assert store.blocks == (6, 16, 16)
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert blosc2.Filter.BITSHUFFLE in store.schunk.cparams.filters
    assert store[...].tobytes() == seg.tobytes()


def test_recompress_file_in_place(viewer, qtbot, tmp_path):
    from mlarray import MLArray
    from mlarray.io import save_mla

    data = _ct()
    src = save_mla(tmp_path / "ct.mla", data, {"spatial": {"spacing": [2.5, 0.8, 0.8]}})
    old_size = src.stat().st_size
    widget = _add_widget(viewer)
    widget.source.value = "file"
    widget.source_file.value = src
    assert "on disk" in widget.current.value
    assert widget.in_place.enabled
    widget.in_place.value = True
    widget.preset.value = "archive"

    _run(widget, qtbot)

    assert widget.result.path == src
    assert widget.result.before_bytes == old_size
    store = blosc2.open(str(src))
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store[...].tobytes() == data.tobytes()
    assert list(MLArray.open(src).meta.spatial.spacing) == [2.5, 0.8, 0.8]
    assert "on disk" in widget.current.value
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mla") == ["ct.mla"]


def test_invalid_input_is_reported_without_running(viewer, tmp_path):
    widget = _add_widget(viewer)
    widget.layer.value = viewer.add_image(_ct(), name="ct")
    widget.layout_mode.value = "explicit"
    widget.chunk_size.value = "12, zero"
    widget.block_size.value = "4"
    widget.output.value = tmp_path / "x.mla"
    widget.run_button.native.click()
    assert widget.worker is None
    assert widget.status.value.startswith("Error: chunk_size")
    assert not (tmp_path / "x.mla").exists()


def test_failing_job_is_reported_and_keeps_the_source(viewer, qtbot, tmp_path):
    from mlarray.io import save_mla

    src = save_mla(tmp_path / "ct.mla", _ct(), {})
    before = src.read_bytes()
    widget = _add_widget(viewer)
    widget.source.value = "file"
    widget.source_file.value = src
    widget.output.value = tmp_path / "no" / "such" / "folder" / "out.mla"

    _run(widget, qtbot)

    assert widget.status.value.startswith("Error:"), widget.status.value
    assert widget.result is None
    assert src.read_bytes() == before


def test_recompress_opened_labels_layer_in_place(viewer, qtbot, tmp_path):
    """A layer read lazily from an .mla file, rewritten over that very file."""
    from napari_mlarray._sample_data import make_ct_sample, write_sample

    sample = make_ct_sample((16, 48, 48))
    paths = write_sample(tmp_path, sample)
    seg_path = paths["seg"]
    old_size = seg_path.stat().st_size
    [layer] = viewer.open(str(seg_path), plugin=None)
    assert layer.source.reader_plugin == "napari-mlarray"
    widget = _add_widget(viewer)
    widget.layer.value = layer
    assert "on disk" in widget.current.value
    assert widget.output.value.name == "ct_seg_recompressed.mla"
    assert widget.in_place.enabled
    widget.in_place.value = True
    widget.preset.value = "labels"

    _run(widget, qtbot)

    result = widget.result
    assert result is not None, widget.status.value
    assert result.path == seg_path
    assert result.before_on_disk and result.before_bytes == old_size
    store = blosc2.open(str(seg_path))
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store[...].tobytes() == sample.seg.tobytes()
    assert not (tmp_path / "ct_seg_recompressed.mla").exists()
    assert "on disk" in widget.current.value


def test_library_runtime_error_is_reported_and_unlocks_the_button(viewer, qtbot, tmp_path):
    # the library's LayoutError is a RuntimeError, which superqt's generator workers
    # take for a deleted worker: no errored/finished signal unless the widget catches it
    widget = _add_widget(viewer)
    widget.layer.value = viewer.add_image(_ct(), name="ct")
    widget.patch_size.value = "64, 64"  # two entries for three spatial axes
    widget.output.value = tmp_path / "x.mla"

    _run(widget, qtbot)

    assert widget.status.value.startswith("Error: patch_size"), widget.status.value
    assert widget.result is None and not (tmp_path / "x.mla").exists()


@pytest.mark.parametrize("layout", ["large", "explicit"])
def test_recompress_channel_and_ras_layers_in_stored_order(viewer, qtbot, tmp_path, layout):
    from mlarray import MLArray
    from mlarray.io import save_mla

    data = np.arange(2 * 6 * 8 * 10, dtype=np.float32).reshape(2, 6, 8, 10)
    labels = ["channel", "spatial_x", "spatial_y", "spatial_z"]
    record = {"spatial": {"axis_labels": labels, "coord_system": "RAS"}}
    src = save_mla(tmp_path / "c.mla", data, record)
    layers = viewer.open(str(src), plugin=None)
    assert [layer.data.shape for layer in layers] == [(10, 8, 6)] * 2  # z, y, x
    widget = _add_widget(viewer)
    widget.layer.value = layers[1]
    widget.layout_mode.value = layout
    widget.chunk_size.value = "5, 4, 3"  # layer order: z, y, x
    widget.block_size.value = "5, 2, 3"
    widget.output.value = tmp_path / "c1.mla"

    _run(widget, qtbot)

    assert widget.result is not None, widget.status.value
    back = MLArray.open(tmp_path / "c1.mla")
    assert back.shape == (1, 6, 8, 10) and np.array_equal(back[...], data[1:2])
    if layout == "explicit":
        assert back.chunks == (1, 3, 4, 5) and back.blocks == (1, 3, 2, 5)
