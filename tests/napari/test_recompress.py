"""Qt-free tests of the compression presets and the recompress job."""

from __future__ import annotations

import os
from pathlib import Path

import blosc2
import numpy as np
import pytest

from napari_mlarray._recompress import (
    PRESET_LABELS,
    PRESETS,
    RecompressResult,
    format_bytes,
    recompress,
    suggest_output,
)

MANIFEST = Path(__file__).parents[2] / "src" / "napari_mlarray" / "napari.yaml"


def _meta(record: dict):
    from mlarray import Meta

    return Meta.from_mapping(record)


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize(
    ("shape", "dtype"), [((512, 512), "int16"), ((64, 96, 80), "uint8"), ((2, 30, 40, 50), "f4")]
)
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_storage_keywords_the_library_accepts(name, shape, dtype):
    from mlarray.layout import resolve_storage

    opts = resolve_storage(shape, dtype, **PRESETS[name])
    assert opts.cparams["codec"] == blosc2.Codec[PRESETS[name]["cparams"]["codec"]].value
    assert name in PRESET_LABELS


@pytest.mark.parametrize(
    ("storage", "error"),
    [
        ({"cparams": {"codec": "SNAPPY"}}, "codec"),
        ({"cparams": {"clevel": 12}}, "clevel"),
        ({"patch_size": [64, 64]}, "patch_size"),
        ({"patch_size": None, "chunk_size": [8, 8, 8], "block_size": [16, 4, 4]}, "block_size"),
    ],
)
def test_the_library_checks_storage_dicts(storage, error):
    """What the widget relies on to refuse settings before it writes anything."""
    from mlarray.layout import resolve_storage

    with pytest.raises((ValueError, RuntimeError), match=error):
        resolve_storage((20, 30, 40), "int16", **storage)
    with pytest.raises(TypeError):
        resolve_storage((20, 30, 40), "int16", codec="LZ4")


def _real_volumes() -> dict[str, np.ndarray]:
    """Real MR volumes that nibabel ships (a T1 and one volume of a 4-D series)."""
    nib = pytest.importorskip("nibabel")
    folder = Path(nib.__file__).parent / "tests" / "data"
    anat = np.asarray(nib.load(folder / "anatomical.nii").dataobj).astype(np.int16)
    series = np.asarray(nib.load(folder / "example4d.nii.gz").dataobj)
    return {
        "anatomical.nii": anat,
        "example4d.nii.gz[..., 0]": np.ascontiguousarray(series[..., 0]),
    }


def test_smallest_file_preset_is_the_smallest_on_real_volumes(tmp_path):
    from mlarray.io import save_mla

    bitshuffle = {  # what the preset used to be: bit shuffle made real MR/CT files larger
        "patch_size": None,
        "cparams": {"codec": "ZSTD", "clevel": 9, "filters": ["BITSHUFFLE"]},
    }
    for name, data in _real_volumes().items():
        sizes = {}
        for key, storage in {**PRESETS, "bitshuffle": bitshuffle}.items():
            path = save_mla(tmp_path / f"{key}.mla", data, **storage)
            sizes[key] = path.stat().st_size
        assert sizes["archive"] == min(sizes.values()), (name, sizes)
        assert sizes["archive"] < 0.92 * sizes["default"], (name, sizes)


def test_manifest_configuration_matches_the_presets():
    npe2 = pytest.importorskip("npe2")
    props = npe2.PluginManifest.from_file(MANIFEST).contributions.configurations
    props = props["compression"].properties
    assert props["preset"].enum == ["custom", *PRESETS]
    default = PRESETS["default"]
    assert props["codec"].default == default["cparams"]["codec"]
    assert props["clevel"].default == default["cparams"]["clevel"]
    assert [props["filter"].default] == default["cparams"]["filters"]
    assert props["patch_size"].default == default["patch_size"]


# ----------------------------------------------------------------- the job
def test_format_bytes_and_summary(tmp_path):
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    result = RecompressResult(tmp_path / "a.mla", 1000, 500, True, 250, 0.5)
    assert result.ratio_after == 4.0
    text = result.summary()
    assert "500 B on disk (2.00x)" in text and "250 B (4.00x)" in text and "0.50 s" in text


def test_suggested_output_is_next_to_the_source(tmp_path):
    folder = tmp_path / "last"
    assert suggest_output(tmp_path / "ct.mla", "x", folder) == tmp_path / "ct_recompressed.mla"
    assert suggest_output(tmp_path / "t1.nii.gz", "x", folder) == tmp_path / "t1_recompressed.mla"
    assert suggest_output(None, "ct labels/1", folder) == folder / "ct_labels_1.mla"


@pytest.fixture
def ct_file(tmp_path):
    """A real .mla file (LZ4HC 8, patch layout) and its array."""
    from mlarray.io import save_mla

    rng = np.random.default_rng(1)
    data = (rng.normal(0, 40, (40, 96, 80)).astype(np.int16) // 8) * 8
    record = {
        "spatial": {"spacing": [2.5, 0.8, 0.8], "coord_system": "LPS"},
        "extra": {"data": {"note": "kept"}},
    }
    path = save_mla(tmp_path / "ct.mla", data, _meta(record), patch_size=192)
    return Path(path), data


def _no_temp_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if "tmp" in p.name]


def test_recompress_file_to_new_path(ct_file, tmp_path):
    from mlarray import MLArray

    src, data = ct_file
    before = src.read_bytes()
    calls = []
    storage = {
        "patch_size": None,
        "chunk_size": [8, 32, 32],
        "block_size": [4, 16, 16],
        "cparams": {"codec": "LZ4", "clevel": 5, "filters": ["SHUFFLE"]},
    }
    dst = tmp_path / "ct_fast.mla"
    result = recompress(src, dst, storage=storage, progress=lambda d, t: calls.append((d, t)))

    assert result.path == dst and result.before_on_disk
    assert result.before_bytes == len(before) and result.after_bytes == dst.stat().st_size
    assert result.nbytes == data.nbytes
    assert calls and calls[-1][0] == calls[-1][1] > 1
    assert src.read_bytes() == before  # the source is untouched
    store = blosc2.open(str(dst))
    assert (store.chunks, store.blocks) == ((8, 32, 32), (4, 16, 16))
    assert store.schunk.cparams.codec == blosc2.Codec.LZ4
    assert store[...].tobytes() == data.tobytes()
    back = MLArray.open(dst)
    assert back.meta.extra.data == {"note": "kept"}
    assert list(back.meta.spatial.spacing) == [2.5, 0.8, 0.8]


def test_recompress_file_in_place_with_the_archive_preset(ct_file):
    src, data = ct_file
    old_size = src.stat().st_size
    result = recompress(src, None, storage=PRESETS["archive"])
    assert result.path == src and result.before_bytes == old_size
    store = blosc2.open(str(src))
    assert store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store.chunks == (40, 96, 80) and store.blocks == (40, 64, 64)
    assert store[...].tobytes() == data.tobytes()
    assert _no_temp_files(src.parent)


def test_failed_recompression_keeps_the_original(ct_file, tmp_path):
    src, _ = ct_file
    before = src.read_bytes()

    def cancel(done, total):
        if done > 0:
            raise KeyboardInterrupt

    storage = {"patch_size": None, "chunk_size": 8, "block_size": 4}
    with pytest.raises(KeyboardInterrupt):
        recompress(src, None, storage=storage, progress=cancel)
    with pytest.raises(FileNotFoundError):
        recompress(src, tmp_path / "missing" / "x.mla", storage={})
    assert src.read_bytes() == before
    assert _no_temp_files(src.parent) and not (tmp_path / "missing").exists()


def test_recompress_metadata_only_file(tmp_path):
    from mlarray import MLArray
    from mlarray.io import save_mla

    src = save_mla(tmp_path / "boxes.mla", None, _meta({"bbox": {"bboxes": [[[1, 2], [3, 4]]]}}))
    result = recompress(src, None, storage=PRESETS["archive"])
    assert result.nbytes == 0
    assert MLArray.open(src).meta.bbox.bboxes == [[[1, 2], [3, 4]]]


def test_recompress_layer_data_tuple(tmp_path):
    data = np.zeros((20, 40, 40), np.uint8)
    data[5:15, 10:30, 10:30] = 1
    meta = {"name": "seg", "scale": (2.5, 0.8, 0.8), "translate": (0.0, 0.0, 0.0)}
    storage = dict(PRESETS["labels"], patch_size=None, chunk_size=[10, 20, 20], block_size=5)
    out = tmp_path / "seg.mla"
    result = recompress((data, meta, "labels"), out, storage=storage)
    assert not result.before_on_disk and result.before_bytes == data.nbytes
    assert result.after_bytes == out.stat().st_size
    store = blosc2.open(str(out))
    assert store.chunks == (10, 20, 20) and store.schunk.cparams.codec == blosc2.Codec.ZSTD
    assert store[...].tobytes() == data.tobytes()
    with pytest.raises(ValueError, match="shapes"):
        recompress(([], {}, "shapes"), out, storage={})
    assert os.path.getsize(out) == result.after_bytes
