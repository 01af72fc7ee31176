"""Whole-array reads (mlarray._fullread): every entry point against numpy, on real files."""

from __future__ import annotations

import blosc2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlarray import MLArray
from mlarray._fullread import read_all, selects_all
from mlarray.errors import CorruptChunkError
from mlarray.frame import inspect_frame
from mlarray.io import save_mla
from mlarray.meta import Meta
from tests.conftest import plain_blosc2_file

DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
]

LAYOUTS = [
    ((1000,), (300,), (64,)),  # 1-D: decoded straight into the output, padded edge chunk
    ((37, 50), (10, 50), (3, 50)),  # row blocks: straight into the output, chunk padded
    ((40, 50), (8, 50), (4, 50)),  # row blocks, no padding
    ((30, 41, 52), (10, 20, 26), (5, 10, 13)),  # edge chunks on two axes
    ((30, 41, 52), (10, 21, 26), (5, 10, 13)),  # chunks not a multiple of their blocks
    ((17, 23), (8, 8), (4, 2)),
    ((6, 7, 8, 9), (3, 4, 4, 5), (3, 2, 2, 5)),  # 4-D, padded last axis
    ((5, 9, 11), (5, 9, 11), (2, 4, 4)),  # one chunk
]


def _values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-100, 200, size=shape)
    if np.dtype(dtype).kind == "c":
        return (x + 1j * x[::-1]).astype(dtype)
    if np.dtype(dtype) == np.bool_:
        return x % 3 == 0
    return x.astype(dtype)


def _check(got, ref):
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert got.flags.c_contiguous and got.flags.writeable


@pytest.mark.parametrize(("shape", "chunks", "blocks"), LAYOUTS)
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.float32, np.float64])
def test_every_whole_read_equals_numpy(tmp_path, shape, chunks, blocks, dtype):
    ref = _values(shape, dtype, seed=len(shape))
    p = tmp_path / "a.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=chunks, block_size=blocks)
    for nthreads in (1, 2):
        a = MLArray.open(p, dparams={"nthreads": nthreads})
        _check(a[...], ref)
        _check(a[:], ref)
        _check(a[()], ref)
        _check(a[(slice(None),) * len(shape)], ref)
        _check(a.to_numpy(), ref)
        _check(np.asarray(a), ref)
        _check(read_all(a._store, nthreads=nthreads), ref)
        _check(read_all(a._store, nthreads=nthreads, group_bytes=1), ref)  # a chunk per group
        _check(MLArray.load(p, dparams={"nthreads": nthreads}).to_numpy(), ref)
        _check(MLArray.load(p, compressed=False).to_numpy(), ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_dtypes_with_threads(tmp_path, dtype):
    shape, chunks, blocks = (30, 41, 52), (10, 20, 26), (5, 10, 13)
    ref = _values(shape, dtype, seed=3)
    p = tmp_path / "d.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=chunks, block_size=blocks)
    a = MLArray.open(p)
    for nthreads in (1, 2):
        _check(read_all(a._store, nthreads=nthreads, group_bytes=2 * 10 * 20 * 26), ref)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    ndim=st.integers(1, 4),
    dtype=st.sampled_from([np.bool_, np.uint8, np.int16, np.float64]),
    nthreads=st.sampled_from([1, 2]),
    group_bytes=st.sampled_from([0, 1, 300]),
)
def test_read_all_equals_numpy_for_any_layout(data, ndim, dtype, nthreads, group_bytes):
    shape = tuple(data.draw(st.integers(1, 13)) for _ in range(ndim))
    chunks = tuple(data.draw(st.integers(1, n)) for n in shape)
    blocks = tuple(data.draw(st.integers(1, c)) for c in chunks)
    ref = _values(shape, dtype, seed=ndim)
    nd = blosc2.asarray(ref, chunks=chunks, blocks=blocks)  # in memory: chunks via get_chunk
    _check(read_all(nd, nthreads=nthreads, group_bytes=group_bytes), ref)


def test_special_chunks_of_files_from_other_tools(tmp_path):
    p = tmp_path / "z.mla"
    z = blosc2.zeros((40, 30, 20), dtype=np.float32, chunks=(10, 30, 20), blocks=(5, 6, 20))
    z[10:20] = 1.5  # one chunk with data, the others stay special (zeros) chunks
    z.save(str(p))
    ref = np.zeros((40, 30, 20), np.float32)
    ref[10:20] = 1.5
    for nthreads in (1, 2):
        _check(read_all(MLArray.open(p)._store, nthreads=nthreads), ref)
    _check(MLArray.open(p)[...], ref)


def test_a_damaged_chunk_raises_ours_on_every_whole_read(tmp_path):
    ref = _values((30, 40, 50), np.int16, seed=7)
    p = tmp_path / "damaged.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    bad = int(np.flatnonzero(info.chunk_pos >= 0)[-1])
    buf[int(info.chunk_pos[bad]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    for nthreads in (1, 2):
        a = MLArray.open(p, dparams={"nthreads": nthreads})
        with pytest.raises(CorruptChunkError, match=rf"chunk {bad} "):
            a[...]
        with pytest.raises(CorruptChunkError):
            read_all(a._store, nthreads=nthreads)
        with pytest.raises(CorruptChunkError):
            np.asarray(a)
    for compressed in (True, False):
        with pytest.raises(CorruptChunkError):
            MLArray.load(p, compressed=compressed)


def test_an_undecodable_chunk_raises_ours_without_checksums(tmp_path):
    # A file from another tool (no checksums): a chunk whose compressed stream is cut
    # short cannot be decoded: the serial and the threaded path both report it.
    p = tmp_path / "plain.mla"
    ref = _values((20, 30, 40), np.int32, seed=2)
    buf, info = plain_blosc2_file(p, ref, clevel=1)
    pos, cb = int(info.chunk_pos[1]), int(info.chunk_cbytes[1])
    buf[pos + 40 : pos + cb] = bytes(cb - 40)  # the block offsets and data zeroed
    p.write_bytes(bytes(buf))
    a = MLArray.open(p)
    for nthreads in (1, 2):
        with pytest.raises(
            CorruptChunkError, match=r"plain\.mla: cannot decompress chunk 1"
        ) as err:
            read_all(a._store, nthreads=nthreads, path=p)
        assert err.value.chunk == 1
    with pytest.raises(CorruptChunkError):
        a[...]


def test_selects_all():
    for key in (Ellipsis, (), slice(None), (slice(None), Ellipsis), (slice(None, None, 1),)):
        assert selects_all(key, 2)
    for key in (
        0,
        (slice(None), 0),
        slice(0, None),
        slice(None, 5),
        slice(None, None, 2),
        slice(None, None, -1),
        None,
        (Ellipsis, None),
        (Ellipsis, Ellipsis),
        (slice(None),) * 3,
        np.array([0]),
        [0, 1],
    ):
        assert not selects_all(key, 2), key


def test_threaded_reads_leave_blosc2s_gil_switch_as_they_found_it(tmp_path):
    # python-blosc2's GIL switch is process-wide: a user's own Blosc2 objects shared
    # between threads must keep the serialisation they had after our threaded reads.
    p = tmp_path / "g.mla"
    ref = np.arange(40 * 50 * 60, dtype=np.int16).reshape(40, 50, 60)
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    a = MLArray.open(p, dparams={"nthreads": 2})
    for before in (False, True):
        blosc2.set_releasegil(before)
        assert np.array_equal(a[...], ref)
        assert blosc2.set_releasegil(False) is before
