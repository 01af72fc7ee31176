"""Hostile and damaged files, and faults: never a crash, hang, memory blow-up or wrong data.

Each hostile file is opened in a child process with a 1 GiB address-space cap
and a timeout (``tests/reliability_harness.py``): the child must exit
normally (no signal), within the timeout, raising only mlarray's own errors,
and the file must be byte-identical afterwards. RELIABILITY.md lists every
case.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import blosc2
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import (
    CorruptChunkError,
    FileChangedError,
    InvalidPathError,
    MetaValidationError,
    MLArrayError,
    MLArrayFileNotFoundError,
    MLArrayFormatError,
    MLArrayIOError,
    UnsafeRecordError,
)
from mlarray.frame import inspect_frame
from mlarray.integrity import (
    CHECKSUM_KEY,
    FRAME_KEY,
    RECORD_KEY,
    StaleChecksumsWarning,
    record_binding,
    verify_file,
)
from tests._children import run_python, run_reference

HARNESS = Path(__file__).with_name("reliability_harness.py")
MEMORY_CAP = 1 << 30
TIMEOUT = 60
ALL_OPS = "open,meta,load,read,slice,stats,verify,nomap"


def run_hostile(paths, ops=ALL_OPS, memory=MEMORY_CAP, env=None):
    """Run ``ops`` on each file in a capped child; return {path: [outcome per op]}."""
    paths = [os.fspath(p) for p in paths]
    before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    proc = subprocess.run(
        [sys.executable, os.fspath(HARNESS), str(memory), ops, *paths],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"child died (signal {-proc.returncode}): {proc.stderr[-2000:]}"
    out = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        out[row["path"]] = row["results"]
    assert set(out) == set(paths)
    for p in paths:
        assert not [r for r in out[p] if r.startswith("FOREIGN")], (p, out[p])
        assert hashlib.sha256(Path(p).read_bytes()).hexdigest() == before[p], f"{p} changed"
    return out


# ----------------------------------------------------------------------------- file surgery


def good_file(path: Path, dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(40, 50, 60)) * 100).astype(dtype)
    a[:20] = 0  # some chunks are all zeros
    MLArray(a, patch_size=None, chunk_size=(20, 25, 30), block_size=(10, 25, 15)).save(path)
    return a


def rebuild(buf: bytes, *, offsets: np.ndarray | None = None) -> bytes:
    """The frame with its chunk-offsets chunk replaced (trailer moved, frame length fixed)."""
    info = inspect_frame(buf)
    start = info.header_len + info.cbytes
    old_len = struct.unpack_from("<i", buf, start + 12)[0]
    new = blosc2.compress2(np.asarray(offsets, dtype="<i8").tobytes(), typesize=8)
    out = bytearray(buf[:start] + new + buf[start + old_len :])
    struct.pack_into(">Q", out, 16, len(out))
    return bytes(out)


def b2nd_pos(buf: bytes) -> int:
    """Position of the shape array (fixarray marker) in the b2nd metalayer."""
    info = inspect_frame(buf)
    return info.b2nd_span[0] + 3  # after the 7-array marker, the version and ndim


def set_record(path: Path, record_bytes) -> None:
    """Replace vlmeta['mlarray'] of a file in place (forging a record), naming it in the
    checksum entries as mlarray does (else the checksums read as stale: another tool's)."""
    s = blosc2.open(os.fspath(path), mode="a")
    s.schunk.vlmeta["mlarray"] = record_bytes
    if RECORD_KEY in s.schunk.vlmeta and isinstance(record_bytes, bytes):
        s.schunk.vlmeta[RECORD_KEY] = record_binding(record_bytes)
    del s


# ----------------------------------------------------------------------------- crashes


def test_object_and_void_dtypes_are_refused_on_open(tmp_path):
    paths = []
    for dt in ("|O8", "|V8", "<M8", "|S8"):
        p = tmp_path / f"{dt[1:]}.mla"
        good_file(p, np.int64)
        buf = p.read_bytes().replace(b"<i8", dt.encode(), 1)
        p.write_bytes(buf)
        paths.append(p)
    out = run_hostile(paths)
    for p in paths:
        assert out[os.fspath(p)] == ["MLArrayFormatError"] * 8, out[os.fspath(p)]
    for p, kind in zip(
        paths, ("Python objects", "raw bytes", "dates", "byte strings"), strict=True
    ):
        with pytest.raises(MLArrayFormatError, match=rf"dtype '.{p.stem}' \({kind}.*not supported"):
            MLArray.open(p)


def _offset_cases(tmp_path: Path) -> list[Path]:
    src = tmp_path / "src.mla"
    good_file(src)
    buf = src.read_bytes()
    info = inspect_frame(buf)
    regular = [i for i in range(info.nchunks) if info.chunk_pos[i] >= 0]
    raw = info.raw_offsets
    cases = []
    i, j = regular[0], regular[1]
    for name, value in [
        ("inside_other", raw[j] + 100),
        ("inside_other_header", raw[j] + 8),
        ("past_end", info.cbytes + 10),
        ("negative_special_kind", np.int64(-(1 << 62))),
        ("duplicate", raw[j]),
        ("in_offsets", info.cbytes - 8),
    ]:
        new = raw.copy()
        new[i] = value
        p = tmp_path / f"off_{name}.mla"
        p.write_bytes(rebuild(buf, offsets=new))
        cases.append(p)
    # chunk header bytes: flags, typesize, sizes, codec, filters, lazy bit, special kind
    pos = int(info.chunk_pos[i])
    for k, v in [(2, 0xC5), (2, 0x07), (2, 0xE5), (3, 4), (4, 0xFF), (8, 0x00), (12, 0xFF)]:
        b = bytearray(buf)
        b[pos + k] = v
        p = tmp_path / f"hdr_{k}_{v}.mla"
        p.write_bytes(bytes(b))
        cases.append(p)
    for k, v in [(16, 0xA0), (22, 0xFF), (30, 0x01), (31, 0x08), (31, 0x70), (31, 0x30)]:
        b = bytearray(buf)
        b[pos + k] = v
        p = tmp_path / f"ext_{k}_{v}.mla"
        p.write_bytes(bytes(b))
        cases.append(p)
    # frame header fields
    for name, off, fmt, value in [
        ("frame_len", 16, ">Q", len(buf) + 100),
        ("header_len", 11, ">i", 10**6),
        ("cbytes", 39, ">q", 10**9),
        ("nbytes", 30, ">q", 2**62),
        ("typesize", 48, ">i", 3),
        ("blocksize", 53, ">i", 7),
    ]:
        b = bytearray(buf)
        struct.pack_into(fmt, b, off, value)
        p = tmp_path / f"frame_{name}.mla"
        p.write_bytes(bytes(b))
        cases.append(p)
    return cases


def test_damaged_frame_structure_never_crashes(tmp_path):
    cases = _offset_cases(tmp_path)
    out = run_hostile(cases)
    for p in cases:
        res = out[os.fspath(p)]
        if p.name.startswith(("off_", "frame_")):  # refused on open, before c-blosc2
            assert res[0] == "MLArrayFormatError", (p.name, res)
        # never silently wrong: whole reads fail (on open or by a checksum)
        assert res[2] != "ok" and res[3] != "ok" and res[6] != "ok", (p.name, res)


def test_forged_header_shape_is_detected(tmp_path):
    p = tmp_path / "shape.mla"
    good_file(p)
    buf = bytearray(p.read_bytes())
    at = b2nd_pos(bytes(buf))
    # shape (40, 50, 60) -> (40, 50, 59): the same chunk grid, so only the checksum of
    # the layout can tell; (40, 50, 61) changes the number of chunks.
    struct.pack_into(">q", buf, at + 1 + 9 * 2 + 1, 59)
    p.write_bytes(bytes(buf))
    struct.pack_into(">q", buf, at + 1 + 9 * 2 + 1, 61)
    (tmp_path / "grid.mla").write_bytes(bytes(buf))
    out = run_hostile([p, tmp_path / "grid.mla"], ops="open,load")
    assert out[os.fspath(p)] == ["CorruptChunkError", "CorruptChunkError"]
    assert out[os.fspath(tmp_path / "grid.mla")] == ["MLArrayFormatError"] * 2
    with pytest.raises(CorruptChunkError, match="layout in the header"):
        MLArray.open(p)


def test_huge_shape_gives_our_memory_error(tmp_path):
    p = tmp_path / "huge.mla"
    a = MLArray.create(p, (2048, 2048, 2048), np.uint8, mmap_mode=None)
    a.close()
    assert p.stat().st_size < 100_000
    out = run_hostile([p], ops="open,slice,read,load")
    assert out[os.fspath(p)] == ["ok", "ok", "MLArrayMemoryError", "MLArrayMemoryError"]


# ----------------------------------------------------------------------------- checksums


def test_every_damaged_chunk_byte_is_detected_or_refused(tmp_path):
    p = tmp_path / "data.mla"
    truth = good_file(p)
    buf = p.read_bytes()
    info = inspect_frame(buf)
    rng = np.random.default_rng(3)
    cases = []
    regular = np.flatnonzero(info.chunk_pos >= 0)
    for n in range(40):
        i = int(rng.choice(regular))
        k = int(info.chunk_pos[i] + rng.integers(32, info.chunk_cbytes[i]))
        b = bytearray(buf)
        b[k] ^= 1 << int(rng.integers(8))
        q = tmp_path / f"bit{n}.mla"
        q.write_bytes(bytes(b))
        cases.append(q)
    out = run_hostile(cases, ops="read,load,slice,stats,verify")
    for q in cases:
        assert "ok" not in out[os.fspath(q)][:2] and out[os.fspath(q)][4] == "CorruptChunkError"
    # the intact file reads back exactly; skipping verification salvages the rest
    assert np.array_equal(MLArray.open(p)[...], truth)
    env = {"MLARRAY_VERIFY": "0"}
    salvage = run_hostile(cases[:5], ops="slice", env=env)
    assert all(len(v) == 1 for v in salvage.values())


def test_checksum_names_file_and_chunk_and_verify_reports(tmp_path):
    p = tmp_path / "c.mla"
    good_file(p)
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    i = int(np.flatnonzero(info.chunk_pos >= 0)[-1])
    buf[int(info.chunk_pos[i]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    a = MLArray.open(p)
    with pytest.raises(CorruptChunkError, match=rf"c\.mla: chunk {i} ") as err:
        a[...]
    assert err.value.chunk == i
    assert a[:20, :25, :30].shape == (20, 25, 30)  # other chunks still read
    with pytest.raises(CorruptChunkError):
        a.verify()
    for compressed in (True, False):
        with pytest.raises(CorruptChunkError, match=rf"chunk {i} "):
            MLArray.load(p, compressed=compressed)
    from mlarray.integrity import verify_file

    assert verify_file(p, raise_on_error=False).damaged == [i]


def test_negative_fancy_indices_verify_the_chunks_they_reach(tmp_path):
    """``a[[0, -2, -1]]`` reads the last element, alone in the last chunk row: that chunk
    is verified too (its bounds were once taken from the raw extremes 0 and -2)."""
    p = tmp_path / "edge.mla"
    data = (np.random.default_rng(1).normal(size=(41, 50, 60)) * 100).astype(np.int16)
    MLArray(data, patch_size=None, chunk_size=(20, 25, 30), block_size=(10, 25, 15)).save(p)
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    i = int(np.flatnonzero(info.chunk_pos >= 0)[-1])  # grid position (2, 1, 1): row 40 only
    buf[int(info.chunk_pos[i]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    a = MLArray.open(p)
    assert np.array_equal(a[[0, -3, -2]], data[[0, -3, -2]])  # not reaching row 40
    for key in ([0, -2, -1], (slice(None), [3, -2, -1]), (..., np.array([0, -2, -1]))):
        with pytest.raises(CorruptChunkError, match=rf"chunk {i} .* does not match"):
            a[key]


def test_files_without_checksums_open_and_in_place_writes_keep_them_current(tmp_path):
    p = tmp_path / "plain.mla"
    data = np.arange(1000, dtype=np.float32).reshape(10, 100)
    blosc2.asarray(data, urlpath=os.fspath(p), mode="w", chunks=(5, 50), blocks=(5, 10))
    a = MLArray.open(p)
    assert np.array_equal(a[...], data)
    assert not a.verify().has_checksums
    q = tmp_path / "ck.mla"
    MLArray(data, patch_size=None, chunk_size=(5, 50), block_size=(5, 10)).save(q)
    for mode, mmap_mode in (("r", "r+"), ("a", None)):
        b = MLArray.open(q, mode=mode, mmap_mode=mmap_mode)
        b[2:7, 10:80] = -1
        b.close()
        report = MLArray.open(q).verify()
        assert report.has_checksums and report.ok
        assert MLArray.open(q)[3, 50] == -1


def _other_tools_copy(src: Path, dst: Path, data: np.ndarray) -> None:
    """What another tool's save-as does: a new frame of ``data`` (same layout), with every
    vlmeta entry of ``src`` copied as it was (our checksum entry too)."""
    a = blosc2.open(os.fspath(src))
    new = blosc2.asarray(data, urlpath=os.fspath(dst), mode="w", chunks=a.chunks, blocks=a.blocks)
    for key in a.schunk.vlmeta.getall():
        new.schunk.vlmeta[key] = a.schunk.vlmeta[key]


def test_checksums_another_tool_left_stale_read_unverified_with_one_warning(tmp_path):
    """Another tool rewriting chunks of our file (in place, or a save-as copying our vlmeta)
    keeps our checksum entry: its digests no longer fit. That is not damage: the file reads
    (unverified, one warning naming it), and our next write stores current checksums."""
    p = tmp_path / "ours.mla"
    truth = good_file(p)
    edited = truth.copy()
    edited[30:, :5] = 7
    inplace, saved_as = tmp_path / "inplace.mla", tmp_path / "saved_as.mla"
    inplace.write_bytes(p.read_bytes())
    other = blosc2.open(os.fspath(inplace), mode="a")
    other[30:, :5] = 7
    del other
    _other_tools_copy(p, saved_as, edited)
    for q in (inplace, saved_as):
        with pytest.warns(StaleChecksumsWarning, match=rf"{q.name}: its chunk checksums") as got:
            a = MLArray.open(q)
            assert np.array_equal(a[...], edited)
            assert np.array_equal(MLArray.load(q).to_numpy(), edited)
        assert len(got) == 1  # one warning per file, not per open or read
        with pytest.warns(StaleChecksumsWarning):
            report = a.verify()
        assert report.ok and not report.has_checksums and report.stale_checksums
        b = MLArray.open(q, mmap_mode="r+")
        b[0, 0, 0] = 5
        b.close()
        edited_q = edited.copy()
        edited_q[0, 0, 0] = 5
        with warnings.catch_warnings():
            warnings.simplefilter("error", StaleChecksumsWarning)
            report = MLArray.open(q).verify()
            assert report.has_checksums and report.ok and not report.stale_checksums
            assert np.array_equal(MLArray.open(q)[...], edited_q)
    # a file of ours damaged on disk keeps its chunk index: still reported damaged
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    i = int(np.flatnonzero(info.chunk_pos >= 0)[-1])
    buf[int(info.chunk_pos[i]) + 40] ^= 0xFF
    (tmp_path / "damaged.mla").write_bytes(bytes(buf))
    with pytest.raises(CorruptChunkError, match=rf"chunk {i} .*the file is damaged"):
        MLArray.open(tmp_path / "damaged.mla")[...]


def test_a_chunk_index_pointing_at_another_chunk_is_damage_not_stale_checksums(tmp_path):
    """Swapped (or copied) chunk offsets change the chunk index like a rewrite by another
    tool does, but no writer puts a chunk where another one was: reading it would return
    the other chunk's voxels. It is reported as damage, never read unverified."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, (4, 64, 64)).astype(np.int16)
    a[0] = 7  # a chunk stored as a special value: shared offsets must not count
    p = tmp_path / "swapped.mla"
    MLArray(a, patch_size=None, chunk_size=(1, 64, 64), block_size=(1, 32, 32)).save(p)
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    raw = np.asarray(info.raw_offsets, dtype="<i8")
    at = bytes(buf).find(raw.tobytes())  # the frame's own index comes before the vlmeta
    assert 0 < at < int(info.header_len) + int(info.cbytes) + raw.nbytes + 64
    swapped = raw.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    buf[at : at + raw.nbytes] = swapped.tobytes()
    p.write_bytes(bytes(buf))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleChecksumsWarning)
        for read in (lambda: MLArray.open(p)[...], lambda: MLArray.load(p).to_numpy()):
            with pytest.raises(CorruptChunkError, match=r"chunk 2 .*chunk index is damaged"):
                read()
        with pytest.raises(CorruptChunkError, match="chunk index is damaged"):
            verify_file(p, raise_on_error=False)


def test_checksum_entries_from_before_the_frame_binding_still_verify(tmp_path):
    """Files written before the entry naming the frame existed (only
    ``mlarray_checksums``) are verified as they always were: intact files pass, a damaged
    chunk is reported; our next in-place write names the frame."""
    p = tmp_path / "old.mla"
    truth = good_file(p)
    s = blosc2.open(os.fspath(p), mode="a")
    assert s.schunk.vlmeta[FRAME_KEY][:8] == b"MLAFRM\x00\x02"
    assert s.schunk.vlmeta[CHECKSUM_KEY][:8] == b"MLAXXH3\x01"  # as older versions read it
    del s.schunk.vlmeta[FRAME_KEY]
    del s
    report = verify_file(p)
    assert report.ok and report.has_checksums
    assert np.array_equal(MLArray.open(p)[...], truth)
    q = tmp_path / "written.mla"
    q.write_bytes(p.read_bytes())
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    i = int(np.flatnonzero(info.chunk_pos >= 0)[0])
    buf[int(info.chunk_pos[i]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    with pytest.raises(CorruptChunkError, match=rf"chunk {i} "):
        MLArray.open(p)[...]
    assert verify_file(p, raise_on_error=False).damaged == [i]
    a = MLArray.open(q, mmap_mode="r+")
    a[0, 0, 0] = 9
    a.close()
    stored = blosc2.open(os.fspath(q))  # (its schunk is a view of it: kept alive)
    assert FRAME_KEY in stored.schunk.vlmeta
    assert verify_file(q).ok and verify_file(q).has_checksums


REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_our_files_edited_by_the_reference_package_read_here(tmp_path):
    """The reference package copies our checksum entry without updating it: its load ->
    edit -> save-as, copy-on-write save-as and in-place edits must not read as damaged."""
    data = np.random.default_rng(0).random((40, 50, 60)).astype(np.float32)
    MLArray(data, spacing=(1, 2, 3)).save(tmp_path / "case.mla")
    code = """
        import shutil
        from mlarray import MLArray
        m = MLArray.load("case.mla"); m[0] = 0; m.save("edited.mla")
        m = MLArray.open("case.mla", mmap_mode="c"); m[0] = 0; m.save("cow.mla")
        shutil.copy("case.mla", "inplace.mla")
        m = MLArray.open("inplace.mla", mmap_mode="r+"); m[0] = 0; m.close()
    """
    run_reference(code, tmp_path)
    data[0] = 0
    for name in ("edited.mla", "cow.mla", "inplace.mla"):
        with pytest.warns(StaleChecksumsWarning, match=name):
            assert np.array_equal(MLArray.open(tmp_path / name)[...], data)


# A label map of 8 chunks (2 x 2 x 2 of 16^3) and the regions a correction zeroes: the
# first, a middle and the last chunk, and the whole array. A chunk that becomes all zeros
# is stored as a special value: c-blosc2 frees its bytes and moves every later chunk
# down into them (the next chunk now starts where the zeroed one did).
_ZEROED = {
    "first": (slice(0, 16), slice(0, 16), slice(0, 16)),
    "middle": (slice(0, 16), slice(16, 32), slice(16, 32)),
    "last": (slice(16, 32), slice(16, 32), slice(16, 32)),
    "whole": (slice(None), slice(None), slice(None)),
}


def _label_map(path: Path) -> np.ndarray:
    seg = np.random.default_rng(3).integers(0, 4, (32, 32, 32)).astype(np.uint8)
    MLArray(seg, patch_size=None, chunk_size=(16, 16, 16), block_size=(8, 8, 8)).save(path)
    return seg


def _reads_unverified_with_one_warning(path: Path, expected: np.ndarray) -> None:
    with pytest.warns(StaleChecksumsWarning, match=rf"{path.name}: its chunk checksums") as got:
        assert np.array_equal(MLArray.open(path)[...], expected)
        assert np.array_equal(MLArray.load(path).to_numpy(), expected)
        assert np.array_equal(MLArray(path).to_numpy(), expected)
    assert len(got) == 1, [str(w.message) for w in got]
    with pytest.warns(StaleChecksumsWarning):
        report = verify_file(path)
    assert report.ok and report.stale_checksums


def test_chunks_zeroed_in_place_by_blosc2_read_unverified_not_damaged(tmp_path):
    """python-blosc2 writing zeros over chunks of our file in place compacts the frame:
    the chunks after a zeroed one move down, one of them to where the zeroed chunk's data
    were. That is a rewrite (each chunk's bytes are its own), not a damaged index."""
    for name, region in _ZEROED.items():
        p = tmp_path / f"{name}.mla"
        expected = _label_map(p)
        before = inspect_frame(p.read_bytes())
        b = blosc2.open(os.fspath(p), mode="a")
        b[region] = 0
        del b
        expected[region] = 0
        after = inspect_frame(p.read_bytes())
        if name == "first":  # the case that looked like a chunk pointing at another's data
            assert after.raw_offsets[0] < 0 and after.raw_offsets[1] == before.raw_offsets[0]
        _reads_unverified_with_one_warning(p, expected)


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_chunks_zeroed_in_place_by_the_reference_read_here(tmp_path):
    """The reference's in-place correction of our file (erasing a region: ``open`` r+,
    assign zeros, ``close``) reads here as it wrote it, unverified with one warning."""
    expected = {}
    for name, region in _ZEROED.items():
        expected[name] = _label_map(tmp_path / f"{name}.mla")
        expected[name][region] = 0
    run_reference(
        """
        from mlarray import MLArray
        for name, (z, y, x) in [("first", (0, 0, 0)), ("middle", (0, 16, 16)),
                                ("last", (16, 16, 16))]:
            a = MLArray.open(name + ".mla", mmap_mode="r+")
            a[z : z + 16, y : y + 16, x : x + 16] = 0
            a.close()
        a = MLArray.open("whole.mla", mmap_mode="r+")
        a[...] = 0
        a.close()
        """,
        tmp_path,
    )
    for name in _ZEROED:
        _reads_unverified_with_one_warning(tmp_path / f"{name}.mla", expected[name])


def test_a_rewrite_keeping_the_chunk_index_reads_stale_when_the_record_was_rewritten(tmp_path):
    """A chunk another tool rewrites in place at its offset with its compressed size (a
    memcpyed chunk stays the same size) leaves the chunk index as we wrote it. The
    reference rewrites the metadata record with every such write: a record that is not the
    one our checksums were stored with makes the file read unverified, with the warning.
    The same change of chunk bytes with the record as we wrote it is damage."""
    data = np.random.default_rng(5).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    edited = data.copy()  # random bytes do not compress: the chunks are stored memcpyed
    edited[1, 2, 3] = data[1, 2, 3] ^ 0xFF
    p = tmp_path / "base.mla"
    MLArray(data, patch_size=None, chunk_size=(4, 32, 32), block_size=(4, 16, 16)).save(p)
    for name in ("record_rewritten", "record_kept"):
        q = tmp_path / f"{name}.mla"
        q.write_bytes(p.read_bytes())
        b = blosc2.open(os.fspath(q), mode="a")
        b[1, 2, 3] = edited[1, 2, 3]
        if name == "record_rewritten":  # what the reference's close() and save() do
            record = b.schunk.vlmeta["mlarray"]
            b.schunk.vlmeta["mlarray"] = gzip.compress(gzip.decompress(record), mtime=1)
        del b
        before, after = inspect_frame(p.read_bytes()), inspect_frame(q.read_bytes())
        assert np.array_equal(before.raw_offsets, after.raw_offsets)
        assert np.array_equal(before.chunk_cbytes, after.chunk_cbytes)
    _reads_unverified_with_one_warning(tmp_path / "record_rewritten.mla", edited)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleChecksumsWarning)
        with pytest.raises(CorruptChunkError, match=r"chunk 0 .*the file is damaged"):
            MLArray.open(tmp_path / "record_kept.mla")[...]


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_small_corrections_by_the_reference_on_real_data_read_here(tmp_path):
    """The reference setting 2 voxels of real data (MNI T1, one 64^3 chunk) in our file,
    in place (``open`` r+ ... ``close``) or by ``load`` ... ``save``: LZ4 often keeps the
    chunk's compressed size, so c-blosc2 rewrites it at its offset and the chunk index is
    unchanged; the reference's record rewrite tells it apart from damage."""
    nib = pytest.importorskip("nibabel")
    img = nib.load(Path(__file__).parent / "data" / "mni152_t1_2mm.nii.gz")
    data = np.asarray(img.dataobj)[14:78, 20:84, 10:74].astype(np.int16)
    rng = np.random.default_rng(0)
    edits, expected, lines = {}, {}, []
    for t in range(8):
        z, y, x = (int(v) for v in rng.integers(0, 60, 3))
        v = int(rng.integers(0, 100))
        for how in ("rplus", "save"):
            name = f"{how}{t}.mla"
            MLArray(data, patch_size=(32, 32, 32)).save(tmp_path / name)
            edits[name] = inspect_frame((tmp_path / name).read_bytes())
            expected[name] = data.copy()
            expected[name][z : z + 2, y, x] = v
            if how == "rplus":
                lines.append(f"a = MLArray.open({name!r}, mmap_mode='r+')")
                lines.append(f"a[{z}:{z + 2}, {y}, {x}] = {v}; a.close()")
            else:
                lines.append(f"a = MLArray.load({name!r})")
                lines.append(f"a[{z}:{z + 2}, {y}, {x}] = {v}; a.save({name!r})")
    run_reference("from mlarray import MLArray\n" + "\n".join(lines), tmp_path)
    same_index = 0
    for name, want in expected.items():
        after = inspect_frame((tmp_path / name).read_bytes())
        same_index += bool(
            np.array_equal(after.raw_offsets, edits[name].raw_offsets)
            and np.array_equal(after.chunk_cbytes, edits[name].chunk_cbytes)
        )
        _reads_unverified_with_one_warning(tmp_path / name, want)
    assert same_index  # the case the record tells apart happened


def test_our_metadata_writes_keep_the_record_named_by_the_checksums(tmp_path):
    """Our own record rewrites (a metadata-only ``close()``, an in-place write) name the
    new record in the checksum entries: the file stays verified. A file whose entries name
    no record (written before that entry existed) is verified as before."""
    p = tmp_path / "ours.mla"
    truth = good_file(p)
    a = MLArray.open(p, mmap_mode="r+")
    a.meta.spatial.spacing = [2.0, 3.0, 4.0]
    a.close()
    s = blosc2.open(os.fspath(p))
    assert s.schunk.vlmeta[RECORD_KEY] == record_binding(s.schunk.vlmeta["mlarray"])
    del s
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleChecksumsWarning)
        report = verify_file(p)
        assert report.has_checksums and report.ok
        assert MLArray.open(p).meta.spatial.spacing == [2.0, 3.0, 4.0]
    s = blosc2.open(os.fspath(p), mode="a")
    del s.schunk.vlmeta[RECORD_KEY]
    del s
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    i = int(np.flatnonzero(info.chunk_pos >= 0)[0])
    buf[int(info.chunk_pos[i]) + 40] ^= 0xFF
    q = tmp_path / "damaged.mla"
    q.write_bytes(bytes(buf))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleChecksumsWarning)
        assert np.array_equal(MLArray.open(p)[...], truth)
        with pytest.raises(CorruptChunkError, match=rf"chunk {i} "):
            MLArray.open(q)[...]
        a = MLArray.open(p, mmap_mode="r+")
        a[0, 0, 0] = 3
        a.close()
        stored = blosc2.open(os.fspath(p))  # (its schunk is a view of it: kept alive)
        assert RECORD_KEY in stored.schunk.vlmeta
        assert verify_file(p).has_checksums and verify_file(p).ok


def test_compute_stats_on_a_damaged_chunk_raises_ours(tmp_path):
    p = tmp_path / "s.mla"
    good_file(p)
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    buf[int(info.chunk_pos[np.flatnonzero(info.chunk_pos >= 0)[0]]) + 50] ^= 4
    p.write_bytes(bytes(buf))
    with pytest.raises(CorruptChunkError):
        MLArray.open(p).compute_stats()


# ----------------------------------------------------------------------------- records


def _record_cases(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "base.mla"
    MLArray(np.zeros((8, 8), np.uint8)).save(base)
    cases = {}

    def make(name, value):
        p = tmp_path / f"rec_{name}.mla"
        p.write_bytes(base.read_bytes())
        set_record(p, value)
        cases[name] = p

    # 39 KB of gzip: tens of millions of one-byte "empty list" opcodes
    make("opcode_bomb", gzip.compress(b"\x80\x04" + b"]" * 40_000_000, mtime=0))
    # ints that all hash to 0; refused as keys (only ints below 2**61 - 1 in magnitude pass)
    colliding = {i * (2**61 - 1): 0 for i in range(2000)}
    make("colliding_keys", gzip.compress(pickle.dumps(colliding, 4), mtime=0))
    make("float_keys", gzip.compress(pickle.dumps({0.5: 1}, 4), mtime=0))
    make("gzip_bomb", gzip.compress(b"\x80\x04" + b"N" * 200_000_000, mtime=0))
    make("not_gzip", b"\x00" * 100)
    make("global", gzip.compress(b"\x80\x04cos\nsystem\n.", mtime=0))
    make("set", gzip.compress(pickle.dumps({"a": {1, 2}}, 4), mtime=0))
    make("deep", gzip.compress(b"\x80\x04}\x8c\x01a" + b"]" * 1001 + b"a" * 1000 + b"s.", mtime=0))
    make("not_bytes", {"a": 1})
    return cases


def test_record_bombs_are_refused_within_budgets(tmp_path):
    cases = _record_cases(tmp_path)
    out = run_hostile(list(cases.values()), ops="open,meta,load")
    for name, p in cases.items():
        res = out[os.fspath(p)]
        assert res[0] in ("MLArrayFormatError", "UnsafeRecordError"), (name, res)
        assert len(set(res)) == 1, (name, res)
    with pytest.raises(UnsafeRecordError, match="pickle operations"):
        MLArray.open(cases["opcode_bomb"])
    with pytest.raises(MLArrayFormatError, match="non-string key"):
        MLArray.open(cases["colliding_keys"])


def test_huge_blosc2_compressed_vlmeta_value_is_refused_before_expanding(tmp_path):
    p = tmp_path / "blob.mla"
    MLArray(np.zeros((8, 8), np.uint8)).save(p)
    s = blosc2.open(os.fspath(p), mode="a")
    s.schunk.vlmeta["mlarray"] = bytes(100 * 1024 * 1024)  # compresses to a few KB
    del s
    assert p.stat().st_size < 2_000_000
    out = run_hostile([p], ops="open,meta,load", memory=600 << 20)
    assert out[os.fspath(p)] == ["MLArrayFormatError"] * 3


def test_stored_thread_count_is_clamped(tmp_path):
    p = tmp_path / "threads.mla"
    MLArray(np.zeros((64, 64, 64), np.float32), dparams={"nthreads": 5000}).save(p)
    code = (
        "import sys, numpy as np; from mlarray import MLArray\n"
        "a = MLArray.open(sys.argv[1]); a[...]\n"
        "print(a._store.schunk.dparams.nthreads)\n"
        "print(open('/proc/self/status').read().split('Threads:')[1].split()[0])"
    )
    nthreads, threads = (int(x) for x in run_python(code, p, timeout=60).split())
    assert nthreads <= (os.cpu_count() or 1)
    assert threads < 64


def test_record_without_has_array_does_not_hide_the_array(tmp_path):
    p = tmp_path / "hidden.mla"
    data = np.arange(24, dtype=np.int32).reshape(4, 6)
    MLArray(data).save(p)
    rec = MLArray.open(p).meta.to_mapping(include_none=True)
    rec.pop("_has_array")
    rec["_mlarray_version"] = "v0"
    set_record(p, gzip.compress(pickle.dumps(rec, 4), mtime=0))
    a = MLArray.open(p)
    assert np.array_equal(a[...], data)
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a.meta.is_seg.is_seg = False
    a.close()
    assert np.array_equal(MLArray.open(p)[...], data)


def test_boxes_with_another_number_of_axes_are_ignored_naming_the_file(tmp_path):
    p = tmp_path / "bx7.mla"
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    MLArray(data, spacing=[1, 1, 1]).save(p)
    rec = MLArray.open(p).meta.to_mapping(include_none=True)
    rec["_mlarray_version"] = "v0"
    rec["bbox"] = {"bboxes": [[[0, 1]] * 7], "labels": ["x"], "scores": [0.5]}
    set_record(p, gzip.compress(pickle.dumps(rec, 4), mtime=0))
    with pytest.warns(UserWarning, match=r"bx7\.mla: ignoring metadata .*bbox .*7 axes"):
        a = MLArray.open(p)
    assert a.meta.bbox.bboxes is None and a.meta.bbox.labels is None
    assert a.meta.spatial.spacing == [1, 1, 1] and np.array_equal(a[...], data)
    a.save(tmp_path / "copy.mla")  # save-as works (the boxes are not carried over)
    assert np.array_equal(MLArray.open(tmp_path / "copy.mla")[...], data)
    # boxes over the spatial axes of a channel array fit, and are kept
    p = tmp_path / "ch.mla"
    arr = MLArray(
        np.zeros((2, 4, 5, 6), np.int16),
        axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"],
    )
    arr.save(p)
    rec = MLArray.open(p).meta.to_mapping(include_none=True)
    rec["_mlarray_version"] = "v0"
    rec["bbox"] = {"bboxes": [[[0, 1], [0, 2], [1, 3]]], "labels": None, "scores": None}
    set_record(p, gzip.compress(pickle.dumps(rec, 4), mtime=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MLArray.open(p).meta.bbox.bboxes == [[[0, 1], [0, 2], [1, 3]]]


# ----------------------------------------------------------------------------- paths


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_hanging(tmp_path):
    p = tmp_path / "x.mla"
    os.mkfifo(p)
    code = (
        "import sys\nfrom mlarray import MLArray\nfrom mlarray.errors import InvalidPathError\n"
        "from mlarray.integrity import verify_file\n"
        "for f in (MLArray.open, MLArray.load, verify_file):\n"
        "    try:\n        f(sys.argv[1])\n"
        "    except InvalidPathError as e:\n        print('refused')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, os.fspath(p)], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.split() == ["refused"] * 3, proc.stderr
    with pytest.raises(MLArrayFileNotFoundError, match=r"gone\.mla"):
        verify_file(tmp_path / "gone.mla")
    with pytest.raises(InvalidPathError, match="not a regular file"):
        MLArray(np.zeros(3)).save(p)
    assert stat.S_ISFIFO(os.stat(p).st_mode)


def test_save_through_symlinks(tmp_path):
    real = tmp_path / "real.mla"
    MLArray(np.zeros(3)).save(real)
    link = tmp_path / "link.mla"
    link.symlink_to(real)
    MLArray(np.ones(4)).save(link)
    assert link.is_symlink() and np.array_equal(MLArray.open(real)[...], np.ones(4))
    dev = tmp_path / "dev.mla"
    dev.symlink_to("/dev/null")
    with pytest.raises(InvalidPathError):
        MLArray(np.ones(4)).save(dev)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo_target.mla"
        os.mkfifo(fifo)
        via = tmp_path / "via.mla"
        via.symlink_to(fifo)
        with pytest.raises(InvalidPathError, match="not a regular file"):
            MLArray(np.ones(4)).save(via)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_read_only_file_is_not_replaced(tmp_path):
    p = tmp_path / "ro.mla"
    MLArray(np.zeros(3)).save(p)
    before = p.read_bytes()
    p.chmod(0o444)
    with pytest.raises(MLArrayIOError, match="read-only"):
        MLArray(np.ones(3)).save(p)
    assert p.read_bytes() == before


def test_names_near_the_file_system_limit_save(tmp_path):
    p = tmp_path / ("n" * 251 + ".mla")
    MLArray(np.arange(5)).save(p)
    assert np.array_equal(MLArray.open(p)[...], np.arange(5))
    assert [x.name for x in tmp_path.iterdir()] == [p.name]


def test_stale_temp_files_of_killed_saves_are_removed(tmp_path):
    p = tmp_path / "t.mla"
    MLArray(np.zeros(3)).save(p)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    from mlarray.io import _temp_prefix

    stale = tmp_path / f"{_temp_prefix(p)}{dead}-abcd1234.partial"
    stale.write_bytes(b"half a save")
    older = tmp_path / f"{_temp_prefix(p)}{dead}-abcd5678.tmp.mla"  # an earlier version's
    older.write_bytes(b"half a save")
    mine = tmp_path / f"{_temp_prefix(p)}{os.getpid()}-abcd1234.partial"
    mine.write_bytes(b"a save in progress")
    MLArray(np.ones(3)).save(p)
    assert not stale.exists() and not older.exists() and mine.exists()


def test_a_killed_saves_temp_file_is_not_listed_as_a_case(tmp_path):
    """A save killed mid-way (SIGKILL, the OOM killer) leaves its temporary file: its name
    does not end in ``.mla``, so a dataset listing (nnU-Net's ``endswith(".mla")``) does
    not take it for a case (training died on it: 'damaged or forged Blosc2 frame'), and
    the next save of that path removes it."""
    p = tmp_path / "case_000.mla"
    MLArray(np.zeros((4, 8, 8), np.float32)).save(p)
    code = (
        "import os, sys, numpy as np\nimport mlarray.io as io\nfrom mlarray import MLArray\n"
        "real = io._write_frame\n"
        "def killed(tmp, *args):\n"
        "    open(tmp, 'wb').write(b'b2frame half')\n"
        "    os.kill(os.getpid(), 9)\n"
        "io._write_frame = killed\n"
        "MLArray(np.ones((4, 8, 8), np.float32)).save(sys.argv[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, os.fspath(p)], timeout=120)
    assert out.returncode == -9
    left = [n for n in os.listdir(tmp_path) if n != p.name]
    assert len(left) == 1 and left[0].startswith(".mla-"), left  # the killed save's
    cases = [n for n in os.listdir(tmp_path) if n.endswith(".mla")]
    assert cases == [p.name]
    assert np.array_equal(MLArray.open(p)[...], np.zeros((4, 8, 8), np.float32))
    MLArray(np.ones((4, 8, 8), np.float32)).save(p)
    assert os.listdir(tmp_path) == [p.name]


def test_new_files_get_the_umask_mode_without_touching_the_umask(tmp_path):
    code = (
        "import os, sys, numpy as np\nos.umask(0o027)\nfrom mlarray import MLArray\n"
        "MLArray(np.zeros(3)).save(sys.argv[1])\nprint(oct(os.stat(sys.argv[1]).st_mode & 0o777))\n"
        "print(oct(os.umask(0)))"
    )
    p = tmp_path / "m.mla"
    out = subprocess.run([sys.executable, "-c", code, os.fspath(p)], capture_output=True, text=True)
    assert out.stdout.split() == ["0o640", "0o27"], out.stderr
    import mlarray.io

    assert "os.umask" not in Path(mlarray.io.__file__).read_text()


def test_writable_handle_refuses_a_file_replaced_meanwhile(tmp_path):
    p = tmp_path / "r.mla"
    MLArray(np.zeros((10, 10), np.float32)).save(p)
    a = MLArray.open(p, mode="a", mmap_mode=None)
    MLArray(np.ones((20, 20), np.float32)).save(p)  # another writer saves a new version
    with pytest.raises(MLArrayIOError, match="replaced"):
        a[0, 0] = 5
    with pytest.raises(MLArrayIOError, match="replaced"):
        a.close()
    assert np.array_equal(MLArray.open(p)[...], np.ones((20, 20), np.float32))


def test_writable_plain_file_handle_does_not_read_a_file_saved_over_it(tmp_path):
    """A writable handle without a mapping (mode="a", mmap_mode=None) reads through the
    path: after another process saved a new file there, its reads returned the new
    file's voxels (paired with the old metadata), silently. Now FileChangedError; its
    own in-place writes still read back."""
    p = tmp_path / "w.mla"
    MLArray(np.zeros((30, 40, 50), np.float32)).save(p)
    a = MLArray.open(p, mode="a", mmap_mode=None)
    a[1, 2, 3] = 7
    assert float(a[...].sum()) == 7.0
    MLArray(np.full((30, 40, 50), 3, np.float32)).save(p)  # another writer's new version
    with pytest.raises(FileChangedError, match=r"w\.mla"):
        a[0:10, 0:10, 0:10]


def test_close_validates_metadata_like_save(tmp_path):
    p = tmp_path / "v.mla"
    MLArray(np.zeros((4, 5, 6), np.float32), spacing=[1.0, 1.0, 1.0]).save(p)
    before = p.read_bytes()
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a.meta.spatial.spacing.append(2.0)
    with pytest.raises(MetaValidationError):
        a.close()
    assert MLArray.open(p).spacing == [1.0, 1.0, 1.0]
    assert p.read_bytes()[:64] == before[:64]


def test_save_keeps_other_vlmeta_entries(tmp_path):
    p = tmp_path / "o.mla"
    MLArray(np.zeros((4, 4), np.float32)).save(p)
    s = blosc2.open(os.fspath(p), mode="a")
    schunk = s.schunk
    schunk.vlmeta["other_tool"] = {"note": "keep me"}
    del s, schunk
    a = MLArray.open(p)
    a.save(tmp_path / "copy.mla")
    a.save(p)
    for q in (p, tmp_path / "copy.mla"):
        arr = blosc2.open(os.fspath(q))  # keep the array alive while its schunk is used
        schunk = arr.schunk
        assert schunk.vlmeta["other_tool"] == {"note": "keep me"}
        assert CHECKSUM_KEY in schunk.vlmeta
        del schunk, arr


def test_pickles_store_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    MLArray(np.zeros(3)).save(tmp_path / "a" / "x.mla")
    MLArray(np.ones(3)).save(tmp_path / "b" / "x.mla")
    monkeypatch.chdir(tmp_path / "a")
    blob = pickle.dumps(MLArray.open("x.mla"))
    monkeypatch.chdir(tmp_path / "b")
    assert np.array_equal(pickle.loads(blob)[...], np.zeros(3))


# ----------------------------------------------------------------------------- errors and indexes


def test_valid_numpy_indexes_work_and_invalid_ones_are_ours(tmp_path):
    p = tmp_path / "i.mla"
    data = np.arange(10 * 11 * 12, dtype=np.int32).reshape(10, 11, 12)
    MLArray(data, patch_size=None, chunk_size=(4, 5, 6), block_size=(2, 5, 3)).save(p)
    a = MLArray.open(p)
    for key in [
        (-7, slice(-1, 9), [-4, 2, -2]),
        (slice(None, None, -2), [1, -1], slice(None)),
        (Ellipsis, None, [3, 0]),
        ([1, 2], Ellipsis, [3, -3]),
    ]:
        assert np.array_equal(a[key], data[key])
    with pytest.raises(IndexError) as err:
        a[10]
    assert isinstance(err.value, MLArrayError)


def test_disk_full_is_told_apart(tmp_path):
    from mlarray.errors import DiskFullError

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    assert issubclass(DiskFullError, MLArrayIOError)
    from mlarray.io import os_errors

    with (
        pytest.raises(DiskFullError, match="No space left"),
        os_errors(tmp_path / "x.mla", "w"),
        open("/dev/full", "wb") as fh,
    ):
        fh.write(b"x" * 10)
        fh.flush()


def test_errors_subclass_both_ours_and_builtins():
    assert issubclass(CorruptChunkError, MLArrayFormatError)
    assert issubclass(CorruptChunkError, ValueError)


_FORK_LOADER = """
import hashlib, multiprocessing as mp, os, sys, time
import blosc2, numpy as np
from mlarray import MLArray

path, wpath = sys.argv[1], sys.argv[2]


def digest(x):
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


# The parent runs Blosc2 thread pools through every kind of handle before forking.
parent = MLArray.open(path, dparams={"nthreads": 2})
parent[...]
viewer = MLArray.open(path, dparams={"nthreads": 2})  # as the napari reader opens files
viewer.set_chunk_cache()
for z in range(0, 64, 5):
    viewer[z]
writable = MLArray.open(wpath, mode="a", mmap_mode="r+", dparams={"nthreads": 2})
writable[0:4] = 7.0  # compresses with threads; close() refreshes the checksums
writable.close()
writable = MLArray.open(wpath, mode="a", mmap_mode="r+", dparams={"nthreads": 2})
writable[...]
cow = MLArray.open(path, mmap_mode="c", dparams={"nthreads": 2})
cow[0] = 1.0  # copy-on-write edits live only in this process's memory
cow[...]
lazy = MLArray.open(wpath).to_dask()  # the file asks for 2 threads (stored dparams)
lazy[:16].compute(scheduler="sync")
blosc2.set_nthreads(2)
blosc2.asarray(np.random.rand(64, 128, 128))[...]


def load(i):  # a data-loader worker: patches through the parent's handles and its own
    own = MLArray.open(path, dparams={"nthreads": 2})
    return [
        digest(parent[i : i + 8, 10:90]),
        digest(viewer[i + 1]),
        digest(writable[i : i + 8]),
        digest(lazy[i : i + 8].compute(scheduler="sync")),
        digest(own[i : i + 8, 10:90]),
    ]


def expected(i):
    return [
        digest(parent[i : i + 8, 10:90]),
        digest(viewer[i + 1]),
        digest(writable[i : i + 8]),
        digest(writable[i : i + 8]),
        digest(parent[i : i + 8, 10:90]),
    ]


if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(load, range(0, 56, 8)).get(timeout=60)
    print("pool", "ok" if got == [expected(i) for i in range(0, 56, 8)] else "WRONG")

    pid = os.fork()  # a child that writes through the parent's handle and exits normally
    if pid == 0:
        # its copy-on-write edits (held in memory) follow it into the child
        code = 0 if bool((cow[0] == 1.0).all()) and cow.shape == (64, 128, 128) else 3
        writable[60:64] = 3.0
        writable.close()
        MLArray(np.ones((32, 64, 64), np.float32)).save(wpath + ".new.mla")  # compresses
        sys.exit(code)
    deadline, status = time.monotonic() + 60, None
    while status is None and time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else None
        time.sleep(0.02)
    if status is None:
        os.kill(pid, 9)
    back = MLArray.open(wpath)
    ok = status == 0 and bool((back[60:64] == 3.0).all() and back.verify().ok)
    ok = ok and bool((MLArray.open(wpath + ".new.mla")[...] == 1).all())
    print("child", "ok" if ok else "WRONG")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_loader_workers_do_not_deadlock(tmp_path):
    """Workers forked from a parent whose handles ran Blosc2 thread pools (2 threads; the
    chunk cache; a writable handle; dask) read correct patches, write, and exit."""
    data = np.random.default_rng(0).random((64, 128, 128)).astype(np.float32)
    p, w = tmp_path / "fork.mla", tmp_path / "fork_w.mla"
    MLArray(data).save(p)
    MLArray(data, dparams={"nthreads": 2}).save(w)
    script = tmp_path / "loader.py"
    script.write_text(_FORK_LOADER)
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p), os.fspath(w)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.stdout.split() == ["pool", "ok", "child", "ok"], proc.stdout + proc.stderr[-2000:]


_FORK_MEMORY = """
import multiprocessing as mp, os, sys, time
import numpy as np
from mlarray import MLArray

path = sys.argv[1]
data = np.random.default_rng(1).random((64, 128, 128)).astype(np.float32)

# In-memory arrays the parent compresses and reads with 2 threads before forking.
two = {"nthreads": 2}
mem = MLArray(data, cparams=two, dparams=two)
mem[0:32] = 5.0
mem[...]
loaded = MLArray.load(path, dparams=two)  # compressed in memory, 2 decompression threads
loaded[...]
plain = MLArray(data, compressed=False)  # numpy-backed: no Blosc2 contexts
before = {"mem": mem[...], "loaded": loaded[...], "plain": plain[...]}


def work(i):  # a data-loader worker reads and writes the parent's arrays
    out = []
    for name, a in (("mem", mem), ("loaded", loaded), ("plain", plain)):
        # tasks write disjoint rows: what a reused worker wrote before does not matter
        a[i : i + 2] = float(i)
        out.append(
            bool((a[i : i + 2] == i).all())
            and np.array_equal(a[i + 2 : i + 8, 10:90], before[name][i + 2 : i + 8, 10:90])
        )
    return out


def unchanged():
    arrays = (("mem", mem), ("loaded", loaded), ("plain", plain))
    return all(np.array_equal(a[...], before[n]) for n, a in arrays)


if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(work, range(0, 56, 8)).get(timeout=60)
    print("pool", "ok" if all(all(r) for r in got) and unchanged() else "WRONG")

    pid = os.fork()  # a plain forked child: whole-array reads and writes, then a normal exit
    if pid == 0:
        mem[40:64] = 3.0
        loaded[0:8] = 3.0
        ok = bool((mem[40:64] == 3.0).all()) and np.array_equal(mem[0:40], before["mem"][0:40])
        ok = ok and bool((loaded[0:8] == 3.0).all())
        ok = ok and np.array_equal(loaded[8:], before["loaded"][8:])
        MLArray(mem[...], cparams=two).save(path + ".child.mla")  # compresses in the child
        sys.exit(0 if ok else 3)
    deadline, status = time.monotonic() + 60, None
    while status is None and time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        status = st if done else None
        time.sleep(0.02)
    if status is None:
        os.kill(pid, 9)
    ok = status == 0 and unchanged()
    ok = ok and bool((MLArray.load(path + ".child.mla")[40:64] == 3.0).all())
    print("child", "ok" if ok else "WRONG")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_workers_use_in_memory_arrays_made_in_parent(tmp_path):
    """In-memory arrays the parent compressed or read with 2 threads (``MLArray(x)``,
    ``MLArray.load``) and a numpy-backed one: forked workers read and write them
    correctly and exit, and the parent's arrays are unchanged."""
    p = tmp_path / "mem.mla"
    MLArray(np.random.default_rng(2).random((64, 128, 128)).astype(np.float32)).save(p)
    script = tmp_path / "memory.py"
    script.write_text(_FORK_MEMORY)
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.stdout.split() == ["pool", "ok", "child", "ok"], proc.stdout + proc.stderr[-2000:]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_open_handles_hold_no_extra_file_descriptors(tmp_path):
    p = tmp_path / "fd.mla"
    MLArray(np.zeros((40, 50, 60), np.int16), patch_size=None, chunk_size=(20, 25, 30)).save(p)
    before = len(os.listdir("/proc/self/fd"))
    handles = [MLArray.open(p) for _ in range(60)]
    for h in handles:
        h[:3, :3, :3]  # verification maps the file once, shared by all handles
    assert len(os.listdir("/proc/self/fd")) - before <= 2  # one mapping for all of them
    # a dataset keeping one lazy handle per case: one descriptor per file (its mapping),
    # not a second one for Blosc2's own handle (the reference holds one per handle)
    cases = []
    for i in range(60):
        q = tmp_path / f"case_{i}.mla"
        MLArray(np.full((8, 8, 8), i, np.uint8), patch_size=None).save(q)
        cases.append(q)
    before = len(os.listdir("/proc/self/fd"))
    held = [MLArray.open(q) for q in cases]
    assert [int(h[0, 0, 0]) for h in held] == list(range(60))
    assert len(os.listdir("/proc/self/fd")) - before <= 60 + 2


def test_reads_with_multidimensional_masks_verify_their_chunks(tmp_path):
    """``a[mask2d, ...]`` on a damaged file raises (the mask's axes were once miscounted, the
    bounds failed and nothing was verified: the damaged data came back silently)."""
    p = tmp_path / "m.mla"
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 32), dtype=np.uint8)
    MLArray(x, patch_size=None, chunk_size=(16, 16, 16)).save(p)
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    buf[int(info.chunk_pos[0]) + int(info.chunk_cbytes[0]) // 2] ^= 0xFF
    p.write_bytes(bytes(buf))
    far = np.zeros((32, 32), bool)
    far[20:, 20:] = True  # outside chunk 0: reads
    a = MLArray.open(p)
    assert np.array_equal(a[far, ...], x[far, ...])
    mask = np.ones((32, 32), bool)
    for key in [(mask, Ellipsis), (np.True_, mask), (None, mask, slice(None, None, -1)), mask]:
        with pytest.raises(CorruptChunkError, match="chunk 0 "):
            MLArray.open(p)[key]


def test_copy_on_write_edits_that_grow_the_frame_do_not_crash(tmp_path):
    """A copy-on-write handle whose edits make the frame bigger (incompressible data
    over zeros) keeps them in memory: c-blosc2 grew the private mapping's frame past its
    end (SIGBUS, as in the reference). The file is untouched; a save writes the edits."""
    p = tmp_path / "cow_grow.mla"
    MLArray(
        np.zeros((40, 50, 60), np.int32),
        patch_size=None,
        chunk_size=(10, 50, 60),
        block_size=(5, 25, 30),
    ).save(p)
    before = p.read_bytes()
    code = (
        "import sys, numpy as np\n"
        "from mlarray import MLArray\n"
        "a = MLArray.open(sys.argv[1], mmap_mode='c')\n"
        "x = np.random.default_rng(0).integers(0, 1 << 30, (40, 50, 60), dtype=np.int32)\n"
        "a[...] = x\n"
        "a[x > (1 << 29)] = 7\n"
        "x[x > (1 << 29)] = 7\n"
        "assert np.array_equal(a[...], x) and np.array_equal(a[3:9, 5], x[3:9, 5])\n"
        "a.save(sys.argv[1] + '.saved.mla')\n"
        "assert np.array_equal(MLArray.open(sys.argv[1] + '.saved.mla')[...], x)\n"
        "print('ok')\n"
    )
    assert run_python(code, p).strip() == "ok"
    assert p.read_bytes() == before
