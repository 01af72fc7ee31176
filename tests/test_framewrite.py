"""The frame writer of saves (mlarray._framewrite) against c-blosc2's own writer.

A save writes its Blosc2 frame itself, in one pass, instead of through c-blosc2's
per-chunk frame updates. The file must be the one c-blosc2 writes: for the same
compressed chunks and ``vlmeta`` entries, byte for byte the file that
``blosc2.empty(urlpath=..., contiguous=True)``, an ``update_chunk`` of every chunk in
order and the entries set in order leave (the save path before this writer).
"""

from __future__ import annotations

import os
import warnings

import blosc2
import numpy as np
import pytest

from mlarray import MLArray, _framewrite, integrity
from mlarray import io as mio
from mlarray.frame import inspect_frame
from mlarray.io import save_mla

# (array, chunks, blocks, cparams or None)
_RNG = np.random.default_rng(7)


def _cases():
    cases = {}
    cases["int16-3d-ragged"] = (
        _RNG.integers(-1000, 1000, (37, 41, 29)).astype(np.int16),
        (16, 16, 16),
        (8, 8, 8),
        None,
    )
    cases["uint8-2d-one-chunk"] = (
        _RNG.integers(0, 255, (30, 20)).astype(np.uint8),
        (30, 20),
        (10, 10),
        None,
    )
    cases["uint8-1d-many-chunks"] = (
        (np.arange(10_007) % 251).astype(np.uint8),
        (97,),
        (13,),
        None,
    )
    f32 = _RNG.random((50, 60)).astype(np.float32)
    f32[10:40] = 0  # whole chunks of zeros: c-blosc2 keeps them in the chunk offsets
    f32[40:, 30:] = np.nan  # a chunk of NaNs, the same
    f32[:10, 30:] = 2.5  # a chunk of one repeated value: stored as a (tiny) chunk
    cases["float32-2d-special-chunks"] = (f32, (10, 30), (5, 10), None)
    cases["float64-4d-ragged"] = (
        _RNG.normal(size=(3, 9, 10, 11)),
        (2, 4, 5, 6),
        (1, 2, 5, 3),
        {"codec": blosc2.Codec.ZSTD, "clevel": 3, "filters": [blosc2.Filter.BITSHUFFLE]},
    )
    cases["bool-3d"] = (_RNG.random((20, 21, 22)) > 0.7, (8, 8, 8), (4, 4, 4), None)
    cases["int16-incompressible-memcpyed"] = (
        _RNG.integers(-32768, 32767, (64, 64)).astype(np.int16),
        (32, 64),
        (32, 64),
        {"codec": blosc2.Codec.LZ4, "clevel": 1, "filters": []},
    )
    return cases


_CASES = _cases()
_OTHERS = [
    ("other_tool", {"a": [1, 2, 3], "b": "text"}),
    ("x", [1.5, None, True]),
    ("name_of_31_bytes_exactly_xxxxxx", 12345),
]


def _kwargs(chunks, blocks, cparams):
    kw = {"chunks": chunks, "blocks": blocks}
    if cparams is not None:
        kw["cparams"] = cparams
    return kw


def _by_cblosc2(p, src, kwargs, entries, checksums=True):
    """The file as c-blosc2 writes it: the save path before the frame writer."""
    dst = blosc2.empty(
        src.shape, dtype=src.dtype, urlpath=os.fspath(p), contiguous=True, mode="w", **kwargs
    )
    for i in range(src.schunk.nchunks):
        dst.schunk.update_chunk(i, src.schunk.get_chunk(i))
    for k, v in entries:
        dst.schunk.vlmeta[k] = v
    if checksums:
        for k, v in integrity.digest_file(p).items():
            dst.schunk.vlmeta[k] = v
    del dst


def _by_writer(p, src, kwargs, entries, checksums=True):
    header = _framewrite.frame_template(src.shape, src.dtype, kwargs)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = _framewrite.FrameWriter(fd, header, src.schunk.nchunks)
        for i in range(src.schunk.nchunks):
            w.add(src.schunk.get_chunk(i))
        record = dict(entries).get("mlarray")
        extra = list(integrity.encode_written(w, record).items()) if checksums else []
        w.finish(list(entries) + extra)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", sorted(_CASES))
@pytest.mark.parametrize("entries", ["record", "record+others", "none"])
def test_written_frame_is_byte_identical_to_cblosc2s(tmp_path, name, entries):
    data, chunks, blocks, cparams = _CASES[name]
    kwargs = _kwargs(chunks, blocks, cparams)
    src = blosc2.asarray(data, **kwargs)
    vl = {
        "record": [("mlarray", b"record bytes " * 7)],
        "record+others": [("mlarray", b"\x00\x01record" * 50), *_OTHERS],
        "none": [],
    }[entries]
    checksums = entries != "none"
    ref, new = tmp_path / "ref.b2nd", tmp_path / "new.b2nd"
    _by_cblosc2(ref, src, kwargs, vl, checksums)
    _by_writer(new, src, kwargs, vl, checksums)
    assert new.read_bytes() == ref.read_bytes()
    info = inspect_frame(new.read_bytes(), new)
    assert info.nchunks == src.schunk.nchunks
    np.testing.assert_array_equal(blosc2.open(os.fspath(new))[...], data)


def test_an_index_of_many_chunks_holds_the_offsets_cblosc2s_does(tmp_path):
    """More than 2048 chunks: the chunk offsets span several blocks, which c-blosc2's
    four threads store in the order they finish (its bytes vary from run to run); the
    frame is the same but for that order: header, chunks, decoded offsets, trailer."""
    data = (np.arange(3000 * 4) % 200).astype(np.uint8)
    kwargs = {"chunks": (4,), "blocks": (4,)}
    src = blosc2.asarray(data, **kwargs)
    ref, new = tmp_path / "ref.b2nd", tmp_path / "new.b2nd"
    _by_cblosc2(ref, src, kwargs, [("mlarray", b"r")])
    _by_writer(new, src, kwargs, [("mlarray", b"r")])
    r, n = ref.read_bytes(), new.read_bytes()
    ri, ni = inspect_frame(r, ref), inspect_frame(n, new)
    assert len(r) == len(n) and ri.header_len == ni.header_len and ri.cbytes == ni.cbytes
    data_end = ri.header_len + ri.cbytes
    assert n[:data_end] == r[:data_end]
    np.testing.assert_array_equal(ni.raw_offsets, ri.raw_offsets)
    trailer = data_end + _offsets_len(r, data_end)
    assert n[trailer:] == r[trailer:]  # vlmeta and checksums (of the same index)
    np.testing.assert_array_equal(blosc2.open(os.fspath(new))[...], data)
    assert integrity.verify_file(new).has_checksums


def _offsets_len(buf, pos):
    return int.from_bytes(buf[pos + 12 : pos + 16], "little")


def test_special_chunks_are_kept_in_the_chunk_offsets(tmp_path):
    """Zeros, NaN and uninitialised chunks of a source (as other tools' files hold them)
    stay special values of the chunk offsets, as c-blosc2 stores them."""
    kwargs = {"chunks": (4, 8), "blocks": (2, 4)}
    for src in (
        blosc2.zeros((10, 16), dtype=np.float32, **kwargs),
        blosc2.full((10, 16), np.nan, dtype=np.float64, **kwargs),
        blosc2.uninit((10, 16), dtype=np.int16, **kwargs),
        blosc2.full((10, 16), 3, dtype=np.int16, **kwargs),
    ):
        ref, new = tmp_path / "ref.b2nd", tmp_path / "new.b2nd"
        _by_cblosc2(ref, src, kwargs, [("mlarray", b"r")])
        _by_writer(new, src, kwargs, [("mlarray", b"r")])
        assert new.read_bytes() == ref.read_bytes(), src.dtype


def test_a_chunk_of_another_size_is_refused_before_anything_is_stored(tmp_path):
    kwargs = {"chunks": (4, 8), "blocks": (2, 4)}
    src = blosc2.asarray(np.arange(80, dtype=np.int16).reshape(10, 8), **kwargs)
    other = blosc2.asarray(np.arange(80, dtype=np.int32).reshape(10, 8), **kwargs)
    header = _framewrite.frame_template(src.shape, src.dtype, kwargs)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        w = _framewrite.FrameWriter(fd, header, src.schunk.nchunks)
        with pytest.raises(_framewrite.Unsuitable):
            w.add(other.schunk.get_chunk(0))
        with pytest.raises(_framewrite.Unsuitable):
            w.add(src.schunk.get_chunk(0)[:-1])
        with pytest.raises(ValueError, match="chunks were added"):
            w.finish([])
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("shape", "chunks", "blocks"),
    [((37, 41, 29), (16, 16, 16), (8, 8, 8)), ((1000,), (64,), (16,)), ((5, 6), (5, 6), (5, 6))],
)
def test_numpy_chunks_compressed_by_runs_of_rows_are_the_whole_arrays(
    monkeypatch, shape, chunks, blocks
):
    """A numpy source is compressed a run of chunk rows at a time: its chunks are the
    chunks Blosc2 makes of the whole array (one thread: the bytes are then fixed)."""
    data = np.random.default_rng(1).integers(0, 300, shape).astype(np.int16)
    data[: chunks[0]] = 0  # a row of zero chunks
    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=1, nthreads=1, typesize=2)
    kwargs = {"chunks": chunks, "blocks": blocks, "cparams": cparams}
    whole = blosc2.asarray(data, **kwargs)
    expected = [whole.schunk.get_chunk(i) for i in range(whole.schunk.nchunks)]
    row = chunks[0] * int(np.prod(shape[1:])) * 2
    for batch in (1, row, 2 * row + 1, 1 << 30):  # one row, rows in pairs, all at once
        monkeypatch.setattr(mio, "_COMPRESS_BATCH_BYTES", batch)
        got = list(mio._compressed_chunks(data, shape, kwargs))
        assert got == expected, batch


def _reference_file(p, q):
    """Write ``q`` as c-blosc2 writes the chunks and entries of ``p`` (with the Blosc2
    arguments of a save of ``p``'s storage options)."""
    from mlarray.layout import resolve_storage

    src = blosc2.open(os.fspath(p))
    meta = MLArray.open(p).meta
    opts = resolve_storage(
        src.shape,
        src.dtype,
        meta.spatial.spatial_axis_mask,
        patch_size=None,
        chunk_size=src.chunks,
        block_size=src.blocks,
        cparams=meta.blosc2.cparams,
        dparams=meta.blosc2.dparams,
    )
    kwargs = opts.blosc2_kwargs(src.dtype)
    vl = src.schunk.vlmeta
    entries = [(k, vl[k]) for k in vl.getall() if not k.startswith("mlarray_checksums")]
    _by_cblosc2(q, src, kwargs, entries)


@pytest.mark.parametrize("source", ["numpy", "copy", "recompress", "lazy"])
def test_saved_file_is_the_one_cblosc2_writes(tmp_path, source):
    data = np.random.default_rng(3).integers(0, 2000, (40, 50, 60)).astype(np.int16)
    data[:8] = 0
    p, q = tmp_path / "a.mla", tmp_path / "b.mla"
    kw = {"patch_size": None, "chunk_size": (8, 24, 32), "block_size": (4, 12, 16)}
    save_mla(p, data, None, **kw)
    if source == "copy":  # the same layout and codec: chunks copied verbatim
        a = MLArray.open(p)
        p = tmp_path / "c.mla"
        save_mla(p, a, a.meta, **kw, cparams=a.meta.blosc2.cparams)
    elif source == "recompress":  # another codec: read and compressed a chunk at a time
        a = MLArray.open(p)
        p = tmp_path / "c.mla"
        save_mla(p, a, a.meta, **kw, cparams={"codec": "zstd", "clevel": 2})
    elif source == "lazy":  # an array-like of another kind, read a chunk box at a time
        p = tmp_path / "c.mla"
        save_mla(p, _ArrayLike(data), None, **kw)
    _reference_file(p, q)
    assert p.read_bytes() == q.read_bytes()
    assert MLArray.open(p).verify().has_checksums
    np.testing.assert_array_equal(MLArray.open(p)[...], data)


class _ArrayLike:
    """An array-like (shape, dtype, indexing) that is not a numpy or Blosc2 array."""

    def __init__(self, data):
        self._data, self.shape, self.dtype = data, data.shape, data.dtype

    def __getitem__(self, key):
        return self._data[key]


def test_recompressed_chunks_are_those_blosc2_makes_of_the_whole_array():
    data = np.random.default_rng(2).integers(0, 300, (19, 23, 9)).astype(np.int16)
    cparams = blosc2.CParams(codec=blosc2.Codec.LZ4, clevel=5, nthreads=1, typesize=2)
    kwargs = {"chunks": (8, 8, 4), "blocks": (4, 4, 2), "cparams": cparams}
    whole = blosc2.asarray(data, **kwargs)
    expected = [whole.schunk.get_chunk(i) for i in range(whole.schunk.nchunks)]
    got = list(mio._recompressed_chunks(_ArrayLike(data), data.shape, data.dtype, kwargs, None))
    assert got == expected


def test_recompressed_special_chunks_are_the_ones_cblosc2_writes(tmp_path):
    """Chunks a source stores as special values (zeros, NaN, a repeated value,
    uninitialised) are recompressed without decoding them: the streamed chunks are the
    ones ``copy_by_chunks`` (``update_special``) leaves in a file c-blosc2 writes."""
    shape, chunks, blocks = (12, 10, 9), (4, 5, 9), (2, 5, 3)
    src = blosc2.uninit(shape, dtype=np.float32, chunks=chunks, blocks=blocks)
    src.schunk.update_special(0, blosc2.SpecialValue.ZERO)  # chunks 0-3: rows 0-8
    src[0:4, 5:] = 0.0  # zeros written as data: c-blosc2 stores a zero chunk
    src.schunk.update_special(2, blosc2.SpecialValue.NAN)
    src.schunk.update_special(3, blosc2.SpecialValue.VALUE, np.float32(2.5).tobytes())
    src[8:12, :5] = np.arange(4 * 5 * 9, dtype=np.float32).reshape(4, 5, 9)  # data
    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=2, nthreads=1, typesize=4)
    kwargs = {"chunks": chunks, "blocks": blocks, "cparams": cparams}
    got = list(mio._recompressed_chunks(src, shape, np.dtype(np.float32), kwargs, None))
    ref = blosc2.empty(
        shape, dtype=np.float32, urlpath=os.fspath(tmp_path / "r.b2nd"), mode="w", **kwargs
    )
    mio.copy_by_chunks(ref, src)
    specials = [(c[31] >> 4) & 7 for c in got]
    assert specials == [1, 1, 2, 3, 0, 1]  # the uninitialised chunk reads as zeros
    for i, chunk in enumerate(got):  # zeros and NaN live in the offsets: only their kind
        stored = ref.schunk.get_chunk(i)
        assert (stored[31] >> 4) & 7 == specials[i] and (specials[i] in (1, 2) or chunk == stored)
    new = tmp_path / "n.b2nd"
    _by_writer(new, _Chunks(shape, np.float32, got), kwargs, [("mlarray", b"r")])
    ref2 = tmp_path / "r2.b2nd"
    del ref
    _by_cblosc2(ref2, blosc2.open(os.fspath(tmp_path / "r.b2nd")), kwargs, [("mlarray", b"r")])
    assert new.read_bytes() == ref2.read_bytes()


class _Chunks:
    """Compressed chunks in the guise of a Blosc2 array (shape, dtype, schunk)."""

    def __init__(self, shape, dtype, chunks):
        self.shape, self.dtype, self._chunks = shape, np.dtype(dtype), chunks
        self.schunk = self

    @property
    def nchunks(self):
        return len(self._chunks)

    def get_chunk(self, i):
        return self._chunks[i]


def test_a_numpy_save_reports_progress_per_chunk(tmp_path):
    data = np.zeros((20, 20, 20), np.uint8)
    calls = []
    save_mla(
        tmp_path / "a.mla",
        data,
        None,
        patch_size=None,
        chunk_size=(8, 8, 8),
        block_size=(4, 4, 4),
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(i, 27) for i in range(1, 28)]


def test_other_tools_entries_are_kept_and_too_many_leave_out_the_checksums(tmp_path):
    p, q = tmp_path / "a.mla", tmp_path / "b.mla"
    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    MLArray(data).save(p)
    store = blosc2.open(os.fspath(p), mode="a")
    for k in ("mlarray_checksums", "mlarray_checksums_frame", "mlarray_checksums_record"):
        del store.schunk.vlmeta[k]
    for i in range(14):
        store.schunk.vlmeta[f"tool_{i}"] = {"i": i}
    del store
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        MLArray.open(p).save(q)
    assert any(issubclass(w.category, mio.ChecksumsNotStoredWarning) for w in seen)
    copy = blosc2.open(os.fspath(q))
    kept = copy.schunk.vlmeta
    assert [kept[f"tool_{i}"] for i in range(14)] == [{"i": i} for i in range(14)]
    assert "mlarray_checksums" not in kept.getall()
    np.testing.assert_array_equal(MLArray.open(q)[...], data)


def test_reference_package_reads_a_saved_file(tmp_path):
    if not os.environ.get("MLARRAY_REFERENCE_PYTHON"):
        pytest.skip("set MLARRAY_REFERENCE_PYTHON to the reference venv's python")
    from tests._children import run_reference

    data = np.random.default_rng(5).normal(size=(30, 40, 50)).astype(np.float32)
    data[:10] = 0
    MLArray(data, spacing=[1.0, 2.0, 3.0]).save(tmp_path / "a.mla")
    np.save(tmp_path / "a.npy", data)
    out = run_reference(
        """
        import numpy as np
        from mlarray import MLArray
        m = MLArray.open("a.mla")
        print(np.array_equal(m[...], np.load("a.npy")), list(m.meta.spatial.spacing))
        """,
        tmp_path,
    )
    assert out.split() == ["True", "[1.0,", "2.0,", "3.0]"]
