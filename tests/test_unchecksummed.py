"""Files without chunk checksums (every file the reference package and other Blosc2 tools
write): what stands in for the checksums is decompressing each chunk.

``verify()`` decompresses every chunk, one at a time, and reports those that cannot be;
a save-as that copies chunks verbatim (same layout and codec) decompresses each one first,
so the new file's checksums never vouch for a chunk nobody can read, and a failed save
leaves the file it would have replaced as it was.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import blosc2
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import CorruptChunkError
from mlarray.frame import inspect_frame
from mlarray.integrity import CHECKSUM_KEY, FRAME_KEY, set_verify_on_read, verify_file


def _without_checksums(path: Path, data: np.ndarray, chunks, blocks) -> None:
    """An ``.mla`` file of ``data`` as other tools write it: our record, no checksums."""
    MLArray(data, patch_size=None, chunk_size=chunks, block_size=blocks).save(path)
    store = blosc2.open(os.fspath(path), mode="a")
    del store.schunk.vlmeta[CHECKSUM_KEY]
    del store.schunk.vlmeta[FRAME_KEY]
    del store


def _break_chunk(path: Path, i: int) -> None:
    """Damage the length field of chunk ``i``'s header (one byte less: the frame still
    opens, the chunk's last block is cut short) so that c-blosc2 cannot decompress it."""
    buf = bytearray(path.read_bytes())
    at = int(inspect_frame(bytes(buf)).chunk_pos[i]) + 12
    buf[at : at + 4] = (int.from_bytes(buf[at : at + 4], "little") - 1).to_bytes(4, "little")
    path.write_bytes(bytes(buf))


@pytest.fixture
def plain(tmp_path):
    """(path, data) of an intact file without checksums, 8 stored chunks."""
    rng = np.random.default_rng(3)
    data = (rng.normal(size=(40, 50, 60)) * 100).astype(np.int16)
    p = tmp_path / "plain.mla"
    _without_checksums(p, data, (20, 25, 30), (10, 25, 15))
    info = inspect_frame(p.read_bytes())
    assert info.nchunks == 8 and bool((info.chunk_pos >= 0).all())
    return p, data


def test_verify_of_a_file_without_checksums_decompresses_every_chunk(plain):
    p, data = plain
    report = MLArray.open(p).verify()
    assert report.ok and not report.has_checksums and report.decode_checked
    assert report.damaged == []
    _break_chunk(p, 2)
    _break_chunk(p, 5)
    with pytest.raises(CorruptChunkError, match=r"plain\.mla: chunk 2 .*cannot be decompressed"):
        MLArray.open(p).verify()
    report = verify_file(p, raise_on_error=False)
    assert not report.ok and report.damaged == [2, 5] and not report.has_checksums
    with pytest.raises(CorruptChunkError, match=r"plain\.mla"):
        MLArray.open(p)[...]  # what verify() reports is what reads meet
    assert np.array_equal(MLArray.open(p)[:20, :25, :30], data[:20, :25, :30])  # chunk 0


def test_save_as_of_a_damaged_file_without_checksums_refuses_and_keeps_the_target(plain, tmp_path):
    p, data = plain
    _break_chunk(p, 3)
    target = tmp_path / "copy.mla"
    MLArray(np.ones((4, 5), np.uint8)).save(target)  # the user's existing file
    before = target.read_bytes()
    source = p.read_bytes()
    a = MLArray.open(p)
    with pytest.raises(CorruptChunkError, match=r"plain\.mla: chunk 3 cannot be decompressed") as e:
        a.save(target)  # same layout and codec: the chunks would be copied verbatim
    assert "copy.mla" not in str(e.value) and e.value.chunk == 3
    assert target.read_bytes() == before and p.read_bytes() == source
    assert sorted(q.name for q in tmp_path.iterdir()) == ["copy.mla", "plain.mla"]
    # loaded into memory (compressed, nothing decoded), then saved: the same
    with pytest.raises(CorruptChunkError, match=r"plain\.mla: chunk 3 cannot be decompressed"):
        MLArray.load(p).save(target)
    assert target.read_bytes() == before
    # verification switched off: chunks are not vouched for by checksums either
    q = tmp_path / "checked.mla"
    MLArray(data, patch_size=None, chunk_size=(20, 25, 30), block_size=(10, 25, 15)).save(q)
    _break_chunk(q, 6)
    was = set_verify_on_read(False)
    try:
        with pytest.raises(CorruptChunkError, match=r"checked\.mla: chunk 6 "):
            MLArray.open(q).save(target)
    finally:
        set_verify_on_read(was)
    assert target.read_bytes() == before


def test_save_as_of_an_intact_file_without_checksums_copies_it_with_checksums(plain, tmp_path):
    p, data = plain
    out = tmp_path / "out.mla"
    MLArray.open(p).save(out)
    src, dst = inspect_frame(p.read_bytes()), inspect_frame(out.read_bytes())
    assert dst.chunk_cbytes.tolist() == src.chunk_cbytes.tolist()  # copied verbatim
    report = verify_file(out)
    assert report.ok and report.has_checksums and not report.decode_checked
    assert np.array_equal(MLArray.open(out)[...], data)


def test_verify_without_checksums_holds_one_chunk_at_a_time(tmp_path):
    """32 MiB in 32 chunks of 1 MiB: checking them decodes into one chunk's buffer."""
    data = (np.arange(32 * 256 * 4096, dtype=np.uint32) % 251).astype(np.uint8)
    data = data.reshape(32, 256, 4096)
    p = tmp_path / "big.mla"
    _without_checksums(p, data, (1, 256, 4096), (1, 16, 4096))
    tracemalloc.start()
    try:
        report = verify_file(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.decode_checked and report.nchunks == 32
    assert peak < 3 * (1 << 20), peak


def test_a_re_layout_of_a_damaged_file_without_checksums_names_the_source(plain, tmp_path):
    """Saved with another layout (chunks decoded and compressed anew) or recompressed in
    memory: the chunk that cannot be decompressed is our error naming the source file, not
    Blosc2's bare RuntimeError ("Error while getting the buffer")."""
    from mlarray.io import save_mla

    p, _ = plain
    _break_chunk(p, 7)
    target = tmp_path / "relaid.mla"
    MLArray(np.ones((4, 5), np.uint8)).save(target)
    before = target.read_bytes()
    a = MLArray.open(p)
    layout = {"patch_size": None, "chunk_size": (10, 10, 10), "block_size": (5, 5, 5)}
    with pytest.raises(CorruptChunkError, match=r"plain\.mla: cannot decompress the data in"):
        save_mla(target, a, a.meta, **layout)
    assert target.read_bytes() == before
    with pytest.raises(CorruptChunkError, match=r"plain\.mla: cannot decompress the data in"):
        MLArray.open(p).compress(**layout)


@pytest.mark.skipif(
    not os.environ.get("MLARRAY_REFERENCE_PYTHON"),
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_a_damaged_file_the_reference_wrote_is_reported_and_not_saved(tmp_path):
    from tests._children import run_reference

    run_reference(
        """
        import numpy as np
        from mlarray import MLArray
        a = (np.arange(24 * 40 * 50) % 997).astype(np.int16).reshape(24, 40, 50)
        MLArray(a, spacing=[1.5, 1.0, 2.0], patch_size=None, chunk_size=(12, 20, 25),
                block_size=(6, 10, 25)).save("ref.mla")
        """,
        tmp_path,
    )
    p = tmp_path / "ref.mla"
    assert not verify_file(p).has_checksums and verify_file(p).ok
    _break_chunk(p, 5)
    report = verify_file(p, raise_on_error=False)
    assert report.damaged == [5] and report.decode_checked
    with pytest.raises(CorruptChunkError, match=r"ref\.mla: chunk 5 cannot be decompressed"):
        MLArray.open(p).save(tmp_path / "copy.mla")
    assert not (tmp_path / "copy.mla").exists()


VERIFY_CLAIM = """
import sys
from mlarray import MLArray
r = MLArray.open(sys.argv[1]).verify()
print(r.ok, r.has_checksums, r.decode_checked, len(r.damaged), r.nchunks)
"""


def test_verify_of_a_file_claiming_a_terabyte_of_one_value_checks_its_chunks_quickly(tmp_path):
    """Chunks stored as one repeated value (a 60 KB file claiming 1 TiB of 7s, no
    checksums, as Blosc2 writes ``blosc2.full``): ``verify()`` has c-blosc2 decode the
    first and last item of each, not every byte (about 55 s per TiB claimed; the child
    is stopped after 30 s)."""
    from tests._children import run_python

    p = tmp_path / "claim.mla"
    shape, chunks = (16384, 8192, 8192), (256, 1024, 1024)
    blosc2.full(shape, 7, dtype=np.uint8, chunks=chunks, blocks=(16, 256, 256), urlpath=str(p))
    assert p.stat().st_size < 1 << 20
    out = run_python(VERIFY_CLAIM, p, timeout=30).split()
    assert out == ["True", "False", "True", "0", str(64 * 8 * 8)]
