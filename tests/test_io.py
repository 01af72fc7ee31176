"""Files on disk: FORMAT.md writing rules, atomic saves, safe reading of bad files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import blosc2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlarray import MLArray
from mlarray.errors import (
    DiskFullError,
    InvalidPathError,
    MetaValidationError,
    MLArrayError,
    MLArrayFileNotFoundError,
    MLArrayFormatError,
    MLArrayIOError,
    UnsafeRecordError,
)
from mlarray.io import FRAME_MAGIC, read_meta, save_mla
from mlarray.meta import Meta
from tests._children import peak_rss_growth, reference_env

FORMAT_KEYS = {
    "source": {"data"},
    "extra": {"data"},
    "spatial": {
        "spacing",
        "origin",
        "direction",
        "affine",
        "shape",
        "axis_labels",
        "coord_system",
        "axis_units",
        "_num_spatial_axes",
        "_num_non_spatial_axes",
    },
    "stats": {
        "min",
        "max",
        "mean",
        "median",
        "std",
        "percentile_min",
        "percentile_max",
        "percentile_mean",
        "percentile_median",
        "percentile_std",
        "percentile_min_key",
        "percentile_max_key",
    },
    "bbox": {"bboxes", "scores", "labels"},
    "is_seg": {"is_seg"},
    "blosc2": {"chunk_size", "block_size", "patch_size", "cparams", "dparams"},
    "_has_array": {"has_array"},
    "_image_meta_format": {"image_meta_format"},
    "_mlarray_version": None,
}


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # our files must not need any global
        raise AssertionError(f"record uses a global: {module}.{name}")


def _stored_record(path: Path) -> dict:
    """Decode the record with blosc2, gzip and a no-globals unpickler only (not our code)."""
    arr = blosc2.open(str(path), mode="r")
    raw = arr.schunk.vlmeta["mlarray"]
    assert isinstance(raw, bytes)
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\x00\x00\x00\x00", "gzip with mtime=0"
    payload = gzip.decompress(raw)
    assert payload[0] == 0x80 and payload[1] in (4, 5), "pickle protocol 4 or 5"
    import io as _io

    return _NoGlobals(_io.BytesIO(payload)).load()


def _check_key_set(rec: dict) -> None:
    assert list(rec) == list(FORMAT_KEYS), "top-level keys, in the reference order"
    for k, sub in FORMAT_KEYS.items():
        if sub is None:
            assert rec[k] == "v0"
        else:
            assert set(rec[k]) == sub, k


def test_written_files_follow_the_writing_rules(tmp_path):
    p = tmp_path / "img.mla"
    data = np.arange(2 * 10 * 12, dtype=np.uint16).reshape(2, 10, 12)
    meta = Meta(
        source={"dicom": {"PatientID": "anon"}},
        extra={"note": "x"},
        spatial={
            "axis_labels": ["channel", "spatial_y", "spatial_x"],
            "spacing": [0.5, 0.5],
            "coord_system": "LPS",
            "axis_units": ["", "mm", "mm"],
        },
        bbox={"bboxes": [[[0, 1], [1, 5], [2, 6]]], "scores": [0.9], "labels": ["a"]},
        is_seg=False,
    )
    save_mla(p, data, meta)
    assert p.read_bytes()[: len(FRAME_MAGIC)] == FRAME_MAGIC
    rec = _stored_record(p)
    _check_key_set(rec)
    assert rec["_has_array"] == {"has_array": True}
    assert rec["spatial"]["shape"] == [2, 10, 12]
    assert rec["spatial"]["_num_spatial_axes"] == 2
    assert rec["source"] == {"data": {"dicom": {"PatientID": "anon"}}}
    assert rec["blosc2"]["cparams"] == {"codec": 1, "clevel": 9}
    stored = blosc2.open(str(p), mode="r")
    np.testing.assert_array_equal(stored[...], data)
    assert list(stored.chunks) == rec["blosc2"]["chunk_size"]
    assert stored.chunks[0] == 1


def test_metadata_only_file_layout(tmp_path):
    p = tmp_path / "boxes.mla"
    save_mla(p, None, Meta(bbox={"bboxes": [[[1, 2], [3, 4]]], "labels": ["x"]}))
    stored = blosc2.open(str(p), mode="r")
    assert stored.shape == (0,) and stored.dtype == np.float64
    rec = _stored_record(p)
    _check_key_set(rec)
    assert rec["_has_array"] == {"has_array": False}
    assert rec["spatial"]["shape"] is None and rec["blosc2"]["cparams"] is None
    a = MLArray.open(p)
    assert a.shape is None and a.meta.bbox.labels == ["x"]
    b = MLArray(meta=a.meta)
    b.save(tmp_path / "again.mla")
    assert MLArray.open(tmp_path / "again.mla").meta.bbox.bboxes == [[[1, 2], [3, 4]]]


def test_same_content_gives_same_record_bytes(tmp_path):
    for name in ("a.mla", "b.mla"):
        save_mla(tmp_path / name, np.ones((4, 4)), {"extra": {"k": 1}})
    a, b = (blosc2.open(str(tmp_path / n)) for n in ("a.mla", "b.mla"))
    assert a.schunk.vlmeta["mlarray"] == b.schunk.vlmeta["mlarray"]


class _FailingSource:
    """An array-like that fails after a few chunk reads (a crash mid-save)."""

    def __init__(self, data, fail_after):
        self.data, self.fail_after, self.reads = data, fail_after, 0
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        self.reads += 1
        if self.reads > self.fail_after:
            raise OSError("disk on fire")
        return self.data[key]


def test_failed_save_leaves_previous_file_and_no_temp_files(tmp_path):
    p = tmp_path / "v.mla"
    old = np.arange(64 * 64 * 64, dtype=np.int32).reshape(64, 64, 64)
    save_mla(p, old, None)
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    src = _FailingSource(np.zeros_like(old), fail_after=3)
    with pytest.raises(OSError, match="disk on fire"):
        save_mla(p, src, None, patch_size=None, chunk_size=(16, 64, 64), block_size=(8, 32, 32))
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["v.mla"]


def test_streaming_save_reads_one_chunk_at_a_time(tmp_path):
    data = np.random.default_rng(0).integers(0, 9, (32, 40, 48), dtype=np.uint8)

    class Recorder(_FailingSource):
        biggest = 0

        def __getitem__(self, key):
            out = super().__getitem__(key)
            Recorder.biggest = max(Recorder.biggest, out.size)
            return out

    save_mla(
        tmp_path / "s.mla",
        Recorder(data, 10**9),
        None,
        patch_size=None,
        chunk_size=(8, 40, 48),
        block_size=(4, 20, 24),
    )
    assert Recorder.biggest == 8 * 40 * 48
    np.testing.assert_array_equal(MLArray.open(tmp_path / "s.mla").to_numpy(), data)


@pytest.mark.parametrize(
    "how",
    [
        {"mmap_mode": "r"},
        {"mmap_mode": "r+"},
        {"mmap_mode": "c"},
        {"mode": "a", "mmap_mode": None},
        "load",
    ],
)
def test_save_back_to_the_file_it_was_opened_from(tmp_path, how):
    p = tmp_path / "v.mla"
    data = np.random.default_rng(2).normal(size=(30, 31, 32)).astype(np.float32)
    MLArray(data, spacing=[1, 2, 3]).save(p)
    a = MLArray.load(p) if how == "load" else MLArray.open(p, **how)
    a.meta.extra.data = {"edited": True}
    a.save(p)
    b = MLArray.open(p)
    np.testing.assert_array_equal(b.to_numpy(), data)
    assert b.meta.extra.data == {"edited": True} and b.spacing == [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(a.to_numpy(), data)  # still usable after the replace
    if how in ({"mmap_mode": "r+"}, {"mode": "a", "mmap_mode": None}):
        a[0, 0, 0] = 42.0
        a.close()
        assert MLArray.open(p)[0, 0, 0] == 42.0


def test_save_into_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MLArrayFileNotFoundError, match="nowhere: the folder to save into"):
        save_mla(tmp_path / "nowhere" / "x.mla", np.zeros(3), None)


def test_open_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.mla"):
        MLArray.open(tmp_path / "missing.mla")


def test_directory_named_mla_is_refused(tmp_path):
    d = tmp_path / "dir.mla"
    d.mkdir()
    with pytest.raises(InvalidPathError, match="directory"):
        MLArray.open(d)


@pytest.mark.parametrize("content", [b"", b"hello world" * 10, b"\x89HDF\r\n\x1a\n" + bytes(100)])
def test_non_mla_content_is_a_format_error_naming_the_file(tmp_path, content):
    p = tmp_path / "junk.mla"
    p.write_bytes(content)
    with pytest.raises(MLArrayFormatError, match=r"junk\.mla"):
        MLArray.open(p)


def _run_isolated(code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter, so a crash in a C library cannot take pytest down."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_truncated_and_corrupted_files_never_crash(tmp_path):
    src = tmp_path / "v.mla"
    data = np.random.default_rng(3).integers(0, 1000, (40, 40, 40), dtype=np.int16)
    MLArray(data, patch_size=None, chunk_size=(10, 40, 40), block_size=(5, 20, 20)).save(src)
    raw = src.read_bytes()
    cases = {}
    for cut in (16, 100, len(raw) // 3, len(raw) - 10):
        cases[f"trunc{cut}"] = raw[:cut]
    flipped = bytearray(raw)
    for i in range(200, len(raw) - 400, 389):
        flipped[i] ^= 0x5A
    cases["flipped"] = bytes(flipped)
    for name, content in cases.items():
        (tmp_path / f"{name}.mla").write_bytes(content)
    code = f"""
        import json, pathlib
        from mlarray import MLArray, MLArrayError
        out = {{}}
        for p in sorted(pathlib.Path({str(tmp_path)!r}).glob("*.mla")):
            if p.name == "v.mla":
                continue
            try:
                a = MLArray.open(p)
                a.to_numpy()
                out[p.name] = "ok"
            except MLArrayError as e:
                out[p.name] = "error:" + type(e).__name__ + ":" + str(e)
        print(json.dumps(out))
    """
    res = _run_isolated(code)
    assert res.returncode == 0, f"crashed: rc={res.returncode} {res.stderr[-2000:]}"
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(results) == {f"{n}.mla" for n in cases}
    for name, outcome in results.items():
        assert outcome.startswith("error:"), (name, outcome)
        assert name in outcome, "the error names the file"


def test_malicious_record_is_refused_and_never_runs(tmp_path):
    p = tmp_path / "evil.mla"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = blosc2.asarray(np.zeros(4), urlpath=str(p), mode="w", contiguous=True)
    arr.schunk.vlmeta["mlarray"] = gzip.compress(pickle.dumps({"source": Evil()}), mtime=0)
    del arr
    with pytest.raises(UnsafeRecordError, match=r"evil\.mla"):
        MLArray.open(p)
    with pytest.raises(UnsafeRecordError):
        read_meta(p)
    assert not marker.exists()


def test_plain_b2nd_frame_without_record_opens_with_default_meta(tmp_path):
    p = tmp_path / "plain.mla"
    blosc2.asarray(np.arange(12.0).reshape(3, 4), urlpath=str(p), mode="w", contiguous=True)
    a = MLArray.open(p)
    assert a.shape == (3, 4) and a.meta._has_array.has_array
    np.testing.assert_array_equal(a.to_numpy(), np.arange(12.0).reshape(3, 4))


REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_reference_package_reads_our_files(tmp_path):
    p = tmp_path / "ours.mla"
    data = np.random.default_rng(4).integers(-5, 5, (12, 14, 16), dtype=np.int16)
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    MLArray(
        data,
        spacing=[2.0, 1.0, 0.5],
        origin=[1, 2, 3],
        direction=direction,
        meta=Meta.from_mapping(
            {
                "is_seg": True,
                "extra": {"k": [1, 2]},
                "bbox": {
                    "bboxes": [[[0, 2], [1, 3], [2, 4]]],
                    "scores": [0.5],
                    "labels": ["lesion"],
                },
            }
        ),
    ).save(p)
    save_mla(tmp_path / "boxes.mla", None, {"bbox": {"bboxes": [[[0, 1], [0, 1]]]}})
    code = f"""
        import json, hashlib, numpy as np
        from mlarray.mlarray import MLArray
        a = MLArray.open({str(p)!r})
        b = MLArray.open({str(tmp_path / "boxes.mla")!r})
        print(json.dumps({{
            "sha": hashlib.sha256(np.ascontiguousarray(a[...]).tobytes()).hexdigest(),
            "spacing": list(a.spacing), "origin": list(a.origin),
            "direction": [list(r) for r in a.direction],
            "is_seg": a.meta.is_seg.is_seg, "extra": dict(a.meta.extra.data),
            "bboxes": a.meta.bbox.bboxes, "labels": a.meta.bbox.labels,
            "boxes_only": b.meta.bbox.bboxes,
        }}, default=lambda o: o.tolist() if hasattr(o, "tolist") else list(o)))
    """
    res = subprocess.run(
        [REFERENCE_PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=reference_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["sha"] == hashlib.sha256(data.tobytes()).hexdigest()
    assert got["spacing"] == [2.0, 1.0, 0.5] and got["origin"] == [1.0, 2.0, 3.0]
    assert got["direction"] == direction.tolist()
    assert got["is_seg"] is True and got["extra"] == {"k": [1, 2]}
    assert got["bboxes"] == [[[0, 2], [1, 3], [2, 4]]] and got["labels"] == ["lesion"]
    assert got["boxes_only"] == [[[0, 1], [0, 1]]]


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_files_written_by_the_reference_package_open_here(tmp_path):
    code = f"""
        import numpy as np
        from mlarray.mlarray import MLArray
        from mlarray.meta import Meta, MetaBbox
        d = {str(tmp_path)!r}
        rng = np.random.default_rng(5)
        x = rng.integers(0, 100, (2, 20, 24, 28)).astype(np.float32)
        labels = ["channel", "spatial_z", "spatial_y", "spatial_x"]
        MLArray(x, spacing=[1.0, 2.0, 3.0], origin=[4.0, 5.0, 6.0],
                axis_labels=labels).save(d + "/chan.mla")
        aff = np.array([[0, 0, 1.5, 1], [0, 2, 0, 2], [-1, 0, 0, 3], [0, 0, 0, 1.0]])
        MLArray(x[0], affine=aff).save(d + "/aff.mla")
        seg = (x[0] > 50).astype(np.uint8)
        MLArray(seg, meta=Meta(is_seg=True, bbox=MetaBbox(bboxes=[[[1, 2], [3, 4.5], [5, 6]]],
                scores=[1], labels=[7]))).save(d + "/seg.mla")
        np.save(d + "/x.npy", x)
    """
    res = subprocess.run(
        [REFERENCE_PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=reference_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    x = np.load(tmp_path / "x.npy")
    chan = MLArray.open(tmp_path / "chan.mla")
    np.testing.assert_array_equal(chan.to_numpy(), x)
    assert chan.meta.spatial.axis_labels == ["channel", "spatial_z", "spatial_y", "spatial_x"]
    assert chan.spatial_ndim == 3 and chan.spacing == [1.0, 2.0, 3.0] and chan.chunks[0] == 1
    aff = MLArray.open(tmp_path / "aff.mla")
    np.testing.assert_array_equal(
        np.asarray(aff.affine)[:3, :3], [[0, 0, 1.5], [0, 2, 0], [-1, 0, 0]]
    )
    np.testing.assert_allclose(aff.scale, [1.0, 2.0, 1.5])
    seg = MLArray.open(tmp_path / "seg.mla")
    assert seg.meta.is_seg.is_seg is True and seg.dtype == np.uint8
    assert seg.meta.bbox.bboxes == [[[1, 2], [3, 4.5], [5, 6]]] and seg.meta.bbox.labels == [7]
    # and back: what we re-save from their files still opens there
    chan.save(tmp_path / "chan2.mla")
    res = subprocess.run(
        [
            REFERENCE_PYTHON,
            "-c",
            "from mlarray.mlarray import MLArray; import sys; a = MLArray.open(sys.argv[1]);"
            "print(a.shape, a.meta.spatial.axis_labels)",
            str(tmp_path / "chan2.mla"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=reference_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2, 20, 24, 28)" in res.stdout and "channel" in res.stdout


def test_resave_with_same_layout_copies_compressed_chunks(tmp_path):
    data = np.random.default_rng(6).integers(0, 50, (40, 48, 56), dtype=np.int16)
    MLArray(data, cparams={"codec": 5, "clevel": 3, "filters": [2]}).save(tmp_path / "a.mla")
    a = MLArray.open(tmp_path / "a.mla")
    calls = []
    save_mla(
        tmp_path / "b.mla",
        a,
        a.meta,
        patch_size=None,
        chunk_size=a.chunks,
        block_size=a.blocks,
        cparams=a.meta.blosc2.cparams,
        progress=lambda d, t: calls.append((d, t)),
    )
    src, dst = (blosc2.open(str(tmp_path / n)) for n in ("a.mla", "b.mla"))
    assert calls[-1] == (src.schunk.nchunks, src.schunk.nchunks)
    for i in range(src.schunk.nchunks):
        assert src.schunk.get_chunk(i) == dst.schunk.get_chunk(i)
    np.testing.assert_array_equal(dst[...], data)
    # a different codec recompresses
    save_mla(
        tmp_path / "c.mla",
        a,
        a.meta,
        patch_size=None,
        chunk_size=a.chunks,
        block_size=a.blocks,
        cparams={"codec": 1, "clevel": 1},
    )
    c = blosc2.open(str(tmp_path / "c.mla"))
    assert int(c.schunk.cparams.codec.value) == 1
    np.testing.assert_array_equal(c[...], data)


def test_open_decompresses_with_the_stored_dparams_unless_given(tmp_path):
    p = tmp_path / "d.mla"
    MLArray(np.zeros((8, 8)), dparams={"nthreads": 1}).save(p)
    assert MLArray.open(p)._store.schunk.dparams.nthreads == 1
    assert MLArray.open(p, dparams={"nthreads": 2})._store.schunk.dparams.nthreads == 2


# ----------------------------------------------------------------------------- OS errors


def test_save_through_a_symlink_updates_its_target(tmp_path):
    real = tmp_path / "real.mla"
    MLArray(np.zeros((2, 3), np.int16)).save(real)
    link = tmp_path / "link.mla"
    link.symlink_to(real)
    MLArray(np.ones((2, 3), np.int16)).save(link)
    assert link.is_symlink()
    np.testing.assert_array_equal(MLArray.open(real).to_numpy(), np.ones((2, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.mla", "real.mla"]


class _DiskFull:
    """An array-like whose reads fail as a full disk would, after the first chunk."""

    shape, dtype = (8, 8, 8), np.dtype("f4")

    def __init__(self):
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        if self.reads > 1:
            raise OSError(28, "No space left on device")
        return np.zeros(tuple(s.stop - s.start for s in key), self.dtype)


def test_os_error_mid_save_is_ours_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "keep.mla"
    MLArray(np.arange(6.0)).save(target)
    before = target.read_bytes()
    with pytest.raises(MLArrayIOError, match=r"keep\.mla.*No space left") as info:
        save_mla(target, _DiskFull(), patch_size=None, chunk_size=4)
    assert isinstance(info.value, OSError) and info.value.errno == 28
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mla"]


def test_bboxes_with_the_wrong_number_of_axes_are_refused_before_writing(tmp_path):
    target = tmp_path / "seg.mla"
    MLArray(np.zeros((4, 5, 6), np.uint8)).save(target)
    before = target.read_bytes()
    a = MLArray(np.ones((4, 5, 6), np.uint8))
    a.meta.bbox.bboxes = [[[0, 1], [0, 2]]]  # 2 axes for a 3-d array
    with pytest.raises(MetaValidationError, match=r"bbox\.bboxes.*2 axes.*3"):
        a.save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["seg.mla"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_open_with_mutated_record_only_raises_mlarray_errors(tmp_path, edits):
    p = tmp_path / "fuzz.mla"
    MLArray(
        np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        spacing=[1, 2, 3],
        meta={"bbox": {"bboxes": [[[0, 1], [0, 2], [1, 3]]], "labels": ["a"]}},
    ).save(p)
    store = blosc2.open(str(p), mode="a")
    raw = bytearray(store.schunk.vlmeta["mlarray"])
    payload = bytearray(gzip.decompress(bytes(raw)))
    for pos, value in edits:
        payload[pos % len(payload)] = value
    store.schunk.vlmeta["mlarray"] = gzip.compress(bytes(payload), mtime=0)
    del store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            a = MLArray.open(p)
            a.to_numpy()
        except MLArrayError as exc:
            assert "fuzz.mla" in str(exc)


class _StridedSource:
    """An array-like whose blocks come back as strided (transposed) views."""

    def __init__(self, data):
        self._t = np.ascontiguousarray(data.T)
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        return self._t.T[key]


def test_strided_blocks_from_a_lazy_source_are_saved(tmp_path):
    data = np.arange(30 * 40 * 50, dtype=np.int32).reshape(30, 40, 50)
    save_mla(
        tmp_path / "s.mla",
        _StridedSource(data),
        None,
        patch_size=None,
        chunk_size=(10, 20, 25),
        block_size=(5, 10, 25),
    )
    np.testing.assert_array_equal(MLArray.open(tmp_path / "s.mla").to_numpy(), data)


def test_uppercase_suffix_is_accepted(tmp_path):
    p = tmp_path / "CASE.MLA"
    MLArray(np.ones((3, 3))).save(p)
    assert MLArray.open(p).to_numpy().sum() == 9


def test_codec_defaults_follow_the_content_and_resaves_keep_the_codec(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(-1000, 1000, size=(20, 30, 40), dtype=np.int16)
    labels = (image > 500).astype(np.uint8)
    save_mla(tmp_path / "img.mla", image, Meta())
    save_mla(tmp_path / "seg.mla", labels, Meta.from_mapping({"is_seg": True}))
    img = blosc2.open(str(tmp_path / "img.mla"), mode="r")
    seg = blosc2.open(str(tmp_path / "seg.mla"), mode="r")
    assert img.schunk.cparams.codec is blosc2.Codec.LZ4 and img.schunk.cparams.clevel == 9
    assert img.schunk.cparams.filters[-1] is blosc2.Filter.SHUFFLE
    assert seg.schunk.cparams.codec is blosc2.Codec.LZ4HC and seg.schunk.cparams.clevel == 9
    # one-byte items: no shuffle (it cannot reorder anything and slows reads down)
    assert set(seg.schunk.cparams.filters) == {blosc2.Filter.NOFILTER}
    no_filter = {"filters": [0], "filters_meta": [0]}
    assert _stored_record(tmp_path / "img.mla")["blosc2"]["cparams"] == {"codec": 1, "clevel": 9}
    seg_record = _stored_record(tmp_path / "seg.mla")["blosc2"]["cparams"]
    assert seg_record == {"codec": 2, "clevel": 9, **no_filter}
    # re-saving keeps a file's recorded codec (the reference's uint8 files: shuffle)
    save_mla(tmp_path / "ref_like.mla", labels, Meta(), cparams={"codec": 2, "clevel": 8})
    old = MLArray.open(tmp_path / "ref_like.mla")
    old.save(tmp_path / "ref_like2.mla")
    again = blosc2.open(str(tmp_path / "ref_like2.mla"), mode="r")
    assert again.schunk.cparams.filters[-1] is blosc2.Filter.SHUFFLE
    assert _stored_record(tmp_path / "ref_like2.mla")["blosc2"]["cparams"] == {
        "codec": 2,
        "clevel": 8,
    }
    # an explicit filter is kept, for one-byte items too
    save_mla(tmp_path / "sh.mla", labels, Meta(), cparams={"filters": [1]})
    sh = blosc2.open(str(tmp_path / "sh.mla"), mode="r")
    assert sh.schunk.cparams.filters[0] is blosc2.Filter.SHUFFLE
    # the constructor follows meta.is_seg too
    a = MLArray(labels, meta=Meta.from_mapping({"is_seg": True}))
    a.save(tmp_path / "seg2.mla")
    assert _stored_record(tmp_path / "seg2.mla")["blosc2"]["cparams"] == seg_record
    # a file written with another codec (the reference's LZ4HC-8) keeps it when re-saved,
    # and its compressed chunks are copied as they are
    save_mla(tmp_path / "old.mla", image, Meta(), cparams={"codec": 2, "clevel": 8})
    src = MLArray.open(tmp_path / "old.mla")
    save_mla(
        tmp_path / "new.mla",
        src,
        src.meta,
        patch_size=None,
        chunk_size=src.chunks,
        block_size=src.blocks,
    )
    old = blosc2.open(str(tmp_path / "old.mla"), mode="r")
    new = blosc2.open(str(tmp_path / "new.mla"), mode="r")
    assert new.schunk.cparams.codec is blosc2.Codec.LZ4HC
    assert new.schunk.get_chunk(0) == old.schunk.get_chunk(0)
    np.testing.assert_array_equal(new[...], image)


def test_streaming_reads_of_a_mapped_file_use_plain_file_io(tmp_path):
    from mlarray.io import streaming_store

    data = np.random.default_rng(4).integers(0, 1000, (30, 40, 50)).astype(np.uint16)
    p = tmp_path / "s.mla"
    save_mla(p, data, Meta())
    ro = MLArray.open(p)
    plain = streaming_store(ro)
    assert plain is not ro._store  # re-opened without the memory map
    np.testing.assert_array_equal(plain[...], data)
    # writable and copy-on-write maps may hold changes only in the map; loaded data is
    # in memory: those are read as they are
    for arr in (MLArray.open(p, mmap_mode="c"), MLArray.open(p, mmap_mode="r+"), MLArray.load(p)):
        assert streaming_store(arr) is arr._store
    cow = MLArray.open(p, mmap_mode="c")
    cow[0, 0, 0] = 7
    save_mla(tmp_path / "cow.mla", cow, cow.meta)
    assert MLArray.open(tmp_path / "cow.mla")[0, 0, 0] == 7
    # save, recompress and stats of the read-only map give the same results
    save_mla(tmp_path / "copy.mla", ro, ro.meta, patch_size=(8, 16, 16))
    np.testing.assert_array_equal(MLArray.open(tmp_path / "copy.mla")[...], data)
    st = ro.compute_stats()
    assert st.max == data.max() and st.min == data.min()
    ro.compress(patch_size=(8, 8, 8))
    np.testing.assert_array_equal(ro[...], data)


_RSS_SCRIPT = """
import sys
import numpy as np
from mlarray import MLArray

src, dst, what = sys.argv[1:4]
if what != "open":
    a = MLArray.open(src)
before = status("VmRSS")
if what == "open":
    a = MLArray.open(src)
elif what == "save":
    a.save(dst)
elif what == "stats":
    a.compute_stats()
else:
    a.verify()
"""


@pytest.mark.parametrize("what", ["save"])
def test_streaming_a_lazily_opened_file_keeps_it_out_of_resident_memory(tmp_path, what):
    """Saving an opened file holds a few chunks, not the file: neither the compressed source
    (read through plain file I/O) nor the written output (hashed for its checksums through a
    mapping whose pages are released chunk by chunk) stays resident in the process."""
    src = tmp_path / "big.mla"
    noise = np.random.default_rng(0).integers(-(2**15), 2**15, (128, 512, 512), dtype=np.int16)
    MLArray(noise, patch_size=None, chunk_size=(8, 512, 512)).save(src)
    size = src.stat().st_size
    assert size > 60e6  # noise does not compress
    grown = peak_rss_growth(_RSS_SCRIPT, src, tmp_path / "out.mla", what)
    assert grown < size / 3, (
        f"{what} grew the peak RSS by {grown / 1e6:.0f} MB ({size / 1e6:.0f} MB file)"
    )


@pytest.mark.parametrize("what", ["open", "save", "stats", "verify"])
def test_a_file_of_many_chunks_is_checked_without_mapping_them(tmp_path, what):
    """Opening a file checks every chunk's header, and saving, statistics and verify hash
    or decode every chunk: none of them leaves the file's pages mapped in the process.
    (Through the mapping, each header read mapped the page-cache pages around it: a
    whole folio of up to 2 MiB on kernels that cache a freshly written file in large
    folios, 64 KiB of fault-around otherwise; 1024 chunks of 64 KiB mapped the whole
    67 MB file at open, and a hash's release of its own range left the folio's pages
    before it mapped.)"""
    src = tmp_path / "many.mla"
    noise = np.random.default_rng(0).integers(-(2**15), 2**15, (128, 512, 512), dtype=np.int16)
    MLArray(noise, patch_size=None, chunk_size=(1, 128, 256), block_size=(1, 128, 256)).save(src)
    size = src.stat().st_size
    assert size > 60e6  # noise does not compress: 1024 chunks of 64 KiB
    grown = peak_rss_growth(_RSS_SCRIPT, src, tmp_path / "out.mla", what)
    assert grown < size / 8, (
        f"{what} grew the peak RSS by {grown / 1e6:.0f} MB ({size / 1e6:.0f} MB file)"
    )


_SAVE_OVER_A_LIMIT = r"""
import json, os, resource, sys, warnings
import numpy as np
warnings.simplefilter("ignore")
from mlarray import MLArray, cli
from mlarray.errors import MLArrayError
from mlarray.io import save_mla

d = sys.argv[1]
p, big = os.path.join(d, "case.mla"), os.path.join(d, "big.mla")
noise = np.random.default_rng(0).random((32, 128, 128)).astype(np.float32)  # 2 MB, incompressible
MLArray(np.zeros((8, 8, 8), np.int16)).save(p)
MLArray(noise, patch_size=None, chunk_size=(4, 128, 128), block_size=(1, 128, 128)).save(big)
src = os.path.join(d, "src.nii.gz")
import nibabel

nibabel.save(nibabel.Nifti1Image(noise, np.eye(4)), src)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
rows = {}


def attempt(name, fn):
    try:
        fn()
        rows[name] = ["saved"]
    except MLArrayError as exc:
        rows[name] = [type(exc).__name__, str(exc), exc.errno]
    except Exception as exc:
        rows[name] = ["foreign", f"{type(exc).__module__}.{type(exc).__name__}: {exc!r}"]


attempt("save", lambda: MLArray(noise).save(p))  # over an existing file
attempt("save-as", lambda: MLArray.open(big).save(os.path.join(d, "copy.mla")))  # chunks copied
attempt(  # another codec: recompressed chunk by chunk
    "save-as-codec",
    lambda: save_mla(d + "/zstd.mla", MLArray.open(big), None, cparams={"codec": "zstd"}),
)
rows["convert-rc"] = cli.main(["convert", src, os.path.join(d, "conv.mla")])
rows["recompress-rc"] = cli.main(["recompress", big, "--codec", "zstd", "--clevel", "5"])
print(json.dumps(rows))
"""


def test_a_save_over_the_file_size_limit_is_our_error_naming_the_file(tmp_path, capfd):
    """c-blosc2 reports a write that failed (disk full, ``RLIMIT_FSIZE``) as a bare
    ``RuntimeError('Could not update the desired chunk')``: every writer of a new file
    (save, save-as, convert, recompress) turns it into our error naming the file and
    saying why, and leaves the existing files as they were."""
    script = tmp_path / "limit.py"
    script.write_text(_SAVE_OVER_A_LIMIT)
    d = tmp_path / "d"
    d.mkdir()
    repo = os.fspath(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo + "/src", repo]))
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(d)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.splitlines()[-1])
    for name, target in [
        ("save", "case.mla"),
        ("save-as", "copy.mla"),
        ("save-as-codec", "zstd.mla"),
    ]:
        kind, text, err = rows[name]
        assert kind == "MLArrayIOError" and err == 27, rows[name]
        assert target in text and "File too large" in text and "300000 bytes" in text, text
    assert rows["convert-rc"] != 0 and rows["recompress-rc"] != 0
    out = proc.stdout + proc.stderr
    assert out.count("File too large") >= 2 and "conv.mla" in out, out[-3000:]
    assert "RuntimeError" not in out and "unexpected" not in out, out[-3000:]
    assert sorted(x.name for x in d.iterdir()) == ["big.mla", "case.mla", "src.nii.gz"]
    assert np.array_equal(MLArray.open(d / "case.mla")[...], np.zeros((8, 8, 8), np.int16))
    assert MLArray.open(d / "big.mla").shape == (32, 128, 128)


def _with_foreign_entries(p: Path, data: np.ndarray, n: int) -> None:
    """An ``.mla`` file without checksums (as other tools write it) holding ``n`` vlmeta
    entries of another tool: with ours, 15 of the 16 a Blosc2 frame holds for ``n=14``."""
    from mlarray.integrity import CHECKSUM_KEY, FRAME_KEY

    MLArray(data).save(p)
    store = blosc2.open(os.fspath(p), mode="a")
    del store.schunk.vlmeta[CHECKSUM_KEY]
    del store.schunk.vlmeta[FRAME_KEY]
    for i in range(n):
        store.schunk.vlmeta[f"tool_{i}"] = b"x" * i
    del store


def test_files_with_many_entries_of_other_tools_save_and_close_without_checksums(tmp_path):
    """A frame holds at most 16 vlmeta entries: a file with 14 of another tool's has no
    room for our two checksum entries. Saving it elsewhere, and closing an ``r+`` handle
    that wrote to it, store the data, the metadata and the other tool's entries, without
    checksums (a warning names the file), instead of c-blosc2's message-less
    RuntimeError and a close() claiming the file was restored."""
    from mlarray.io import ChecksumsNotStoredWarning

    p, q = tmp_path / "case.mla", tmp_path / "copy.mla"
    data = np.arange(12 * 16 * 20, dtype=np.int16).reshape(12, 16, 20)
    _with_foreign_entries(p, data, 14)
    with pytest.warns(ChecksumsNotStoredWarning, match="copy.mla"):
        MLArray.open(p).save(q)
    assert np.array_equal(MLArray.open(q)[...], data)
    store = blosc2.open(os.fspath(q))
    kept = store.schunk.vlmeta
    assert [kept[f"tool_{i}"] for i in range(14)] == [b"x" * i for i in range(14)]

    m = MLArray.open(p, mmap_mode="r+")
    m[0, 0, 0] = 1234
    m.meta.is_seg = True
    with pytest.warns(ChecksumsNotStoredWarning, match="case.mla"):
        m.close()
    again = MLArray.open(p)
    assert again[0, 0, 0] == 1234 and bool(again.meta.is_seg)
    assert np.array_equal(again[...].ravel()[1:], data.ravel()[1:])
    store = blosc2.open(os.fspath(p))
    assert store.schunk.vlmeta["tool_13"] == b"x" * 13


@pytest.mark.parametrize("code", ["ENOSPC", "EIO"])
def test_a_save_whose_fsync_fails_keeps_the_old_file(tmp_path, monkeypatch, code):
    """NFS and quota file systems report a failed writeback only at fsync: the save must
    not rename its temporary over the user's file then (it returned normally before). The
    OS's answer is simulated (fault injection at os.fsync; the save itself is real)."""
    import errno

    p = tmp_path / "case.mla"
    MLArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)).save(p)
    before = p.read_bytes()

    def failing_fsync(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(DiskFullError if code == "ENOSPC" else MLArrayIOError) as err:
        MLArray(np.zeros((2, 3, 4), dtype=np.int16)).save(p)
    assert str(p) in str(err.value)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["case.mla"]


def test_a_save_on_a_file_system_without_fsync_still_saves(tmp_path, monkeypatch):
    import errno

    def unsupported(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    p = tmp_path / "case.mla"
    MLArray(np.ones((2, 3, 4), dtype=np.int16)).save(p)
    np.testing.assert_array_equal(MLArray.open(p)[...], np.ones((2, 3, 4), dtype=np.int16))
