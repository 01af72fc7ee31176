"""Qt-free tests of the compression presets, settings and the recompress job."""

from __future__ import annotations

import math
from pathlib import Path

import blosc2
import numpy as np
import pytest

from napari_mlarray import _settings
from napari_mlarray._recompress import (
    RecompressResult,
    format_bytes,
    iter_progress,
    recompress_file,
)
from napari_mlarray._settings import (
    CODECS,
    DEFAULT_SETTINGS,
    FILTERS,
    PRESETS,
    CompressionSettings,
    large_chunk_layout,
    load_default_settings,
    parse_size,
    settings_from_mapping,
    storage_for,
)

MANIFEST = Path(_settings.__file__).with_name("napari.yaml")


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("auto", None),
        ("192", 192),
        (" 64, 128,128 ", (64, 128, 128)),
        ("64x128x128", (64, 128, 128)),
        ("(32, 64)", (32, 64)),
        (96, 96),
        ([8, 16], (8, 16)),
        (np.int64(5), 5),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "abc", [4, 0], True, 2.0, []])
def test_parse_size_rejects_and_names_the_field(bad):
    with pytest.raises(ValueError, match="chunk_size"):
        parse_size(bad, "chunk_size")


def test_default_settings_are_the_library_defaults():
    assert DEFAULT_SETTINGS.codec == "LZ4HC"
    assert DEFAULT_SETTINGS.clevel == 8
    assert DEFAULT_SETTINGS.patch_size == 192
    storage = storage_for(DEFAULT_SETTINGS)
    assert storage == {
        "patch_size": 192,
        "chunk_size": None,
        "block_size": None,
        "cparams": {"codec": 2, "clevel": 8, "filters": [1], "filters_meta": [0]},
        "dparams": {"nthreads": 1},
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"codec": "SNAPPY"}, "codec"),
        ({"filter": "DELTA"}, "filter"),
        ({"clevel": 10}, "clevel"),
        ({"clevel": -1}, "clevel"),
        ({"clevel": True}, "clevel"),
        ({"layout": "tiles"}, "layout"),
        ({"patch_size": None}, "patch_size"),
        ({"layout": "explicit", "chunk_size": (8, 8)}, "block_size"),
        ({"nthreads": 0}, "nthreads"),
    ],
)
def test_invalid_settings_raise_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        DEFAULT_SETTINGS.replace(**changes)


def test_settings_normalise_case_and_strings():
    s = CompressionSettings(codec="zstd", filter="bitshuffle", patch_size="128, 128, 64")
    assert (s.codec, s.filter, s.patch_size) == ("ZSTD", "BITSHUFFLE", (128, 128, 64))
    assert storage_for(s)["patch_size"] == [128, 128, 64]
    assert s.describe() == "ZSTD level 8 + BITSHUFFLE, patch 128x128x64"


def test_training_preset_is_fast_lz4_with_patch_layout():
    storage = storage_for(PRESETS["training"].settings, (64, 128, 128), "int16")
    assert storage["cparams"]["codec"] == CODECS["LZ4"]
    assert 1 <= storage["cparams"]["clevel"] <= 5
    assert storage["cparams"]["filters"] == [FILTERS["SHUFFLE"]]
    assert storage["patch_size"] == 192
    assert storage["chunk_size"] is None and storage["block_size"] is None


def test_archive_preset_is_zstd_bitshuffle_with_large_chunks():
    shape = (512, 512, 512)
    storage = storage_for(PRESETS["archive"].settings, shape, "float32")
    assert storage["cparams"]["codec"] == CODECS["ZSTD"]
    assert storage["cparams"]["clevel"] == 9
    assert storage["cparams"]["filters"] == [FILTERS["BITSHUFFLE"]]
    assert storage["patch_size"] is None
    chunk_bytes = math.prod(storage["chunk_size"]) * 4
    # far bigger than the library's ~1.1 MiB patch-read chunks, still bounded
    assert 8 * 2**20 <= chunk_bytes <= 16 * 2**20
    assert all(b <= c for b, c in zip(storage["block_size"], storage["chunk_size"], strict=True))


def test_labels_preset_uses_bitshuffle():
    storage = storage_for(PRESETS["labels"].settings, (64, 128, 128), "uint8")
    assert storage["cparams"]["filters"] == [FILTERS["BITSHUFFLE"]]
    assert storage["cparams"]["codec"] in (CODECS["ZSTD"], CODECS["LZ4HC"])


@pytest.mark.parametrize("shape", [(1,), (7, 3), (64, 128, 128), (3, 700, 900, 5), (2048, 2048)])
@pytest.mark.parametrize("itemsize", [1, 2, 8])
def test_large_chunk_layout_invariants(shape, itemsize):
    chunks, blocks = large_chunk_layout(shape, itemsize)
    assert len(chunks) == len(blocks) == len(shape)
    assert all(1 <= b <= c <= s for b, c, s in zip(blocks, chunks, shape, strict=True))
    assert math.prod(chunks) * itemsize <= 16 * 2**20 or max(chunks) == 1
    assert math.prod(blocks) * itemsize <= 2**20 or max(blocks) == 1


def test_small_arrays_are_one_chunk_in_the_large_layout():
    chunks, _ = large_chunk_layout((64, 128, 128), 2)
    assert chunks == (64, 128, 128)


def test_explicit_layout_checks_axes_and_fit():
    s = DEFAULT_SETTINGS.replace(layout="explicit", chunk_size=(16, 64, 64), block_size=8)
    storage = storage_for(s, (64, 128, 128))
    assert storage["chunk_size"] == [16, 64, 64]
    assert storage["block_size"] == [8, 8, 8]
    assert storage["patch_size"] is None
    with pytest.raises(ValueError, match=r"chunk_size.*3 values.*2 axes"):
        storage_for(s, (64, 64))
    with pytest.raises(ValueError, match="block_size"):
        storage_for(s.replace(block_size=32), (64, 128, 128))
    with pytest.raises(ValueError, match="shape"):
        storage_for(s)


def test_settings_from_mapping():
    assert settings_from_mapping({}) == DEFAULT_SETTINGS
    assert settings_from_mapping({"preset": "archive", "codec": "LZ4"}) is (
        PRESETS["archive"].settings
    )
    custom = settings_from_mapping({"preset": "custom", "codec": "ZSTD", "clevel": 3, "x": 1})
    assert (custom.codec, custom.clevel, custom.filter) == ("ZSTD", 3, "SHUFFLE")
    with pytest.raises(ValueError, match="preset"):
        settings_from_mapping({"preset": "tiny"})


def test_load_default_settings_reads_napari_plugin_settings(monkeypatch):
    napari_settings = pytest.importorskip("napari.settings")

    class Section:
        preset = "custom"
        codec = "ZLIB"
        clevel = 4
        filter = "NOFILTER"
        patch_size = 96
        nthreads = 2

    class Plugin:
        compression = Section()

    monkeypatch.setattr(napari_settings, "get_plugin_settings", lambda name: Plugin())
    preset, settings = load_default_settings()
    assert preset == "custom"
    assert settings == CompressionSettings(
        codec="ZLIB", clevel=4, filter="NOFILTER", patch_size=96, nthreads=2
    )

    Section.preset = "labels"
    assert load_default_settings() == ("labels", PRESETS["labels"].settings)


def test_load_default_settings_falls_back_to_library_defaults(monkeypatch):
    napari_settings = pytest.importorskip("napari.settings")

    def missing(name):
        raise KeyError(name)

    monkeypatch.setattr(napari_settings, "get_plugin_settings", missing)
    assert load_default_settings() == ("custom", DEFAULT_SETTINGS)
    monkeypatch.setitem(__import__("sys").modules, "napari.settings", None)
    assert load_default_settings() == ("custom", DEFAULT_SETTINGS)


def test_manifest_configuration_matches_the_code():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    props = manifest.contributions.configurations["compression"].properties
    defaults = {key: prop.default for key, prop in props.items()}
    assert settings_from_mapping(defaults) == DEFAULT_SETTINGS
    assert props["codec"].enum == list(CODECS)
    assert props["filter"].enum == list(FILTERS)
    assert props["preset"].enum == ["custom", *PRESETS]
    assert (props["clevel"].minimum, props["clevel"].maximum) == (0, 9)


# ----------------------------------------------------------------- the job
def test_format_bytes():
    assert format_bytes(None) == "?"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"


def test_result_ratios_and_summary(tmp_path):
    result = RecompressResult(tmp_path / "a.mla", 1000, 500, True, 250, 0.5)
    assert result.ratio_before == 2.0
    assert result.ratio_after == 4.0
    text = result.summary()
    assert "500 B on disk" in text and "4.00x" in text and "0.50 s" in text


def test_iter_progress_yields_and_returns():
    def job(n, *, progress, scale=1):
        for i in range(1, n + 1):
            progress(i, n)
        return n * scale

    gen = iter_progress(job, 3, scale=10)
    seen = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.append(next(gen))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert stop.value.value == 30


def test_iter_progress_reraises_the_job_error():
    def job(*, progress):
        progress(1, 2)
        raise ValueError("broken")

    gen = iter_progress(job)
    assert next(gen) == (1, 2)
    with pytest.raises(ValueError, match="broken"):
        next(gen)


@pytest.fixture
def ct_file(tmp_path):
    """A real .mla file (LZ4HC 8, patch layout) and its array."""
    from mlarray.io import save_mla

    rng = np.random.default_rng(1)
    data = (rng.normal(0, 40, (40, 96, 80)).astype(np.int16) // 8) * 8
    meta = {
        "spatial": {"spacing": [2.5, 0.8, 0.8], "coord_system": "LPS"},
        "extra": {"data": {"note": "kept"}},
    }
    path = save_mla(tmp_path / "ct.mla", data, meta, chunk_size=None, patch_size=192)
    return Path(path), data


def _no_temp_files(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir() if "tmp" in p.name) == []


def _explicit(settings_name="training", chunks=(8, 32, 32), blocks=(4, 16, 16)):
    base = PRESETS[settings_name].settings
    return base.replace(layout="explicit", chunk_size=chunks, block_size=blocks)


def test_recompress_file_to_new_path(ct_file, tmp_path):
    from mlarray import MLArray

    src, data = ct_file
    before = src.read_bytes()
    calls = []
    storage = storage_for(_explicit(), data.shape, data.dtype)
    dst = tmp_path / "out" / "ct_fast.mla"
    dst.parent.mkdir()
    result = recompress_file(src, dst, storage=storage, progress=lambda d, t: calls.append((d, t)))

    assert result.path == dst
    assert result.before_bytes == len(before) and result.before_on_disk
    assert result.after_bytes == dst.stat().st_size
    assert result.nbytes == data.nbytes
    assert result.ratio_after == pytest.approx(data.nbytes / dst.stat().st_size)
    assert result.seconds >= 0
    assert calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert src.read_bytes() == before  # the source is untouched

    store = blosc2.open(str(dst))
    assert store.chunks == (8, 32, 32)
    assert store.blocks == (4, 16, 16)
    assert store.schunk.cparams.codec == blosc2.Codec.LZ4
    assert store.schunk.cparams.clevel == 5
    assert blosc2.Filter.SHUFFLE in store.schunk.cparams.filters
    np.testing.assert_array_equal(store[...], data)
    assert store[...].tobytes() == data.tobytes()

    back = MLArray.open(dst)
    assert back.meta.extra.data == {"note": "kept"}
    assert list(back.meta.spatial.spacing) == [2.5, 0.8, 0.8]
    assert back.meta.blosc2.chunk_size == [8, 32, 32]
    assert back.meta.blosc2.cparams["codec"] == CODECS["LZ4"]


def test_recompress_file_in_place(ct_file):
    src, data = ct_file
    old_size = src.stat().st_size
    storage = storage_for(PRESETS["archive"].settings, data.shape, data.dtype)
    result = recompress_file(src, storage=storage)
    assert result.path == src
    assert result.before_bytes == old_size
    store = blosc2.open(str(src))
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert blosc2.Filter.BITSHUFFLE in store.schunk.cparams.filters
    assert store.chunks == tuple(storage["chunk_size"])
    assert store[...].tobytes() == data.tobytes()
    assert _no_temp_files(src.parent)


def test_recompress_in_place_with_same_path_given(ct_file):
    src, data = ct_file
    storage = storage_for(_explicit("labels"), data.shape, data.dtype)
    recompress_file(src, src, storage=storage)
    store = blosc2.open(str(src))
    assert store.chunks == (8, 32, 32)
    assert store[...].tobytes() == data.tobytes()


def test_recompress_with_unchanged_settings_keeps_the_data(ct_file, tmp_path):
    src, data = ct_file
    dst = tmp_path / "same.mla"
    storage = storage_for(DEFAULT_SETTINGS, data.shape, data.dtype)
    result = recompress_file(src, dst, storage=storage)
    store = blosc2.open(str(dst))
    assert store.schunk.cparams.codec == blosc2.Codec.LZ4HC
    assert store.chunks == blosc2.open(str(src)).chunks
    assert store[...].tobytes() == data.tobytes()
    assert result.after_bytes == dst.stat().st_size


def test_failed_recompression_keeps_the_original(ct_file):
    src, data = ct_file
    before = src.read_bytes()
    bad = storage_for(DEFAULT_SETTINGS, data.shape, data.dtype)
    bad["cparams"] = dict(bad["cparams"], clevel=12)  # past our validation: the library fails
    with pytest.raises((ValueError, RuntimeError)):
        recompress_file(src, storage=bad)
    assert src.read_bytes() == before
    assert _no_temp_files(src.parent)


def test_failed_progress_callback_keeps_the_original(ct_file):
    src, data = ct_file
    before = src.read_bytes()
    storage = storage_for(_explicit(), data.shape, data.dtype)

    def cancel(done, total):
        if done > 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recompress_file(src, storage=storage, progress=cancel)
    assert src.read_bytes() == before
    assert _no_temp_files(src.parent)


def test_destination_in_missing_folder_fails_cleanly(ct_file, tmp_path):
    src, data = ct_file
    before = src.read_bytes()
    storage = storage_for(DEFAULT_SETTINGS, data.shape, data.dtype)
    with pytest.raises(FileNotFoundError):
        recompress_file(src, tmp_path / "missing" / "x.mla", storage=storage)
    assert src.read_bytes() == before
    assert not (tmp_path / "missing").exists()


def test_recompress_metadata_only_file(tmp_path):
    from mlarray import MLArray
    from mlarray.io import save_mla

    src = save_mla(tmp_path / "boxes.mla", None, {"bbox": {"bboxes": [[[1, 2], [3, 4]]]}})
    result = recompress_file(src, storage=storage_for(DEFAULT_SETTINGS))
    assert result.nbytes == 0
    assert MLArray.open(src).meta.bbox.bboxes == [[[1, 2], [3, 4]]]


def test_recompress_layer_data_tuple(tmp_path):
    writer = pytest.importorskip("napari_mlarray._writer")
    if not hasattr(writer, "save_layers"):
        pytest.fail("napari_mlarray._writer.save_layers is missing")
    from napari_mlarray._recompress import recompress_layer

    data = np.zeros((20, 40, 40), np.uint8)
    data[5:15, 10:30, 10:30] = 1
    meta = {"name": "seg", "scale": (2.5, 0.8, 0.8), "translate": (0.0, 0.0, 0.0)}
    calls = []
    storage = storage_for(_explicit("labels", (10, 20, 20), (5, 10, 10)), data.shape, data.dtype)
    result = recompress_layer(
        (data, meta, "labels"),
        tmp_path / "seg.mla",
        storage=storage,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert not result.before_on_disk
    assert result.before_bytes == data.nbytes
    assert result.after_bytes == (tmp_path / "seg.mla").stat().st_size
    assert calls
    store = blosc2.open(str(tmp_path / "seg.mla"))
    assert store.chunks == (10, 20, 20)
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store[...].tobytes() == data.tobytes()


def test_recompress_layer_rejects_other_layer_types(tmp_path):
    from napari_mlarray._recompress import recompress_layer

    with pytest.raises(ValueError, match="shapes"):
        recompress_layer(([], {}, "shapes"), tmp_path / "x.mla", storage={})
