"""Patch reads: box keys through Blosc2's C slicer (mlarray._direct) and the page-cache
prefetch of the touched chunks (mlarray._prefetch), against numpy on real files."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlarray import MLArray, integrity
from mlarray._direct import box_of
from mlarray._prefetch import _resident
from mlarray.errors import CorruptChunkError
from mlarray.frame import inspect_frame
from mlarray.io import save_mla
from mlarray.meta import Meta

# shape, chunks, blocks: every one leaves partial chunks at the far edges
LAYOUTS = [
    ((103,), (20,), (7,)),
    ((37, 45), (10, 16), (5, 8)),
    ((23, 31, 29), (10, 12, 9), (5, 6, 3)),
    ((3, 13, 17, 11), (2, 5, 6, 4), (1, 5, 3, 2)),
]


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(-1000, 1000, size=shape) + np.arange(shape[-1])).astype(np.int16)


def _keys(shape, rng, n=40):
    """Box keys (ints, slices, ``...``, negative indices) and a few non-box keys."""
    keys = []
    for _ in range(n):
        key = []
        for d in shape:
            kind = rng.integers(0, 4)
            if kind == 0:
                key.append(int(rng.integers(-d, d)))
            elif kind == 1:
                a = int(rng.integers(0, d))
                key.append(slice(a, int(rng.integers(a + 1, d + 1))))
            elif kind == 2:
                key.append(slice(int(rng.integers(-d, 0)), None))
            else:
                key.append(slice(None, int(rng.integers(1, d + 1))))
        keys.append(tuple(key))
    keys += [
        (Ellipsis,),
        (0, Ellipsis),
        (Ellipsis, -1),
        tuple(slice(None) for _ in shape),
        (np.int64(1),) + (slice(None),) * (len(shape) - 1),
        # not boxes: Blosc2's own slicing (or ours for advanced keys) must still be right
        (slice(None, None, 2),),
        (slice(None, None, -3),),
        (None, 0),
        (np.array([0, 2, 1]),),
        (slice(5, 2),),
    ]
    return keys


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape,chunks,blocks", LAYOUTS)
def test_box_reads_match_numpy(tmp_path, shape, chunks, blocks, nthreads):
    ref = _volume(shape)
    p = tmp_path / "v.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=chunks, block_size=blocks)
    a = MLArray.open(p, dparams={"nthreads": nthreads})
    rng = np.random.default_rng(len(shape))
    for key in _keys(shape, rng):
        got = a[key]
        want = ref[key]
        assert got.shape == want.shape, key
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=str(key))
        if box_of(a._require(), key) is not None:
            assert got.flags.c_contiguous and got.flags.writeable


def test_box_reads_from_threads_sharing_a_handle(tmp_path):
    ref = _volume((40, 50, 60))
    p = tmp_path / "t.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(16, 16, 32), block_size=(8, 8, 8))
    a = MLArray.open(p, dparams={"nthreads": 2})
    rng = np.random.default_rng(3)
    boxes = []
    for _ in range(64):
        lo = [int(rng.integers(0, n - 8)) for n in ref.shape]
        hi = [int(rng.integers(x + 1, n + 1)) for x, n in zip(lo, ref.shape, strict=True)]
        boxes.append(tuple(slice(x, y) for x, y in zip(lo, hi, strict=True)))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: a[k], boxes))
    for key, g in zip(boxes, got, strict=True):
        np.testing.assert_array_equal(g, ref[key])


def test_box_keys_left_to_blosc2(tmp_path):
    p = tmp_path / "v.mla"
    save_mla(p, _volume((8, 9, 10)), Meta(), patch_size=None, chunk_size=(4, 4, 4))
    store = MLArray.open(p)._require()
    for key in [
        (slice(None, None, 2),),
        (None,),
        (np.array([1, 2]),),
        (True,),
        (slice(0, 0),),
        (slice(1.5, 3),),
        (20,),
        (0, 0, 0, 0),
        (Ellipsis, 0, Ellipsis),
    ]:
        assert box_of(store, key) is None, key
    box = box_of(store, (-1, slice(2, None), Ellipsis))
    assert box is not None and list(box.start) == [7, 2, 0] and box.shape == (7, 10)


def test_out_of_range_box_keys_raise_numpy_errors(tmp_path):
    p = tmp_path / "v.mla"
    save_mla(p, _volume((8, 9, 10)), Meta(), patch_size=None, chunk_size=(4, 4, 4))
    a = MLArray.open(p)
    with pytest.raises(IndexError, match="out of bounds"):
        a[8]
    with pytest.raises(IndexError):
        a[0, 0, 0, 0]


def test_writes_through_a_handle_are_read_back(tmp_path):
    ref = _volume((20, 21, 22))
    p = tmp_path / "w.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(8, 8, 8), block_size=(4, 4, 4))
    a = MLArray.open(p, mmap_mode="r+")
    a[3:15, 2:19, 5:9] = 7
    ref[3:15, 2:19, 5:9] = 7
    np.testing.assert_array_equal(a[1:20, 0:21, 4:12], ref[1:20, 0:21, 4:12])
    a.close()
    np.testing.assert_array_equal(MLArray.open(p)[...], ref)


def _damage_header(p, chunk):
    """Make chunk ``chunk`` undecodable: its first block starts past the chunk's end."""
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    pos = int(info.chunk_pos[chunk])
    buf[pos + 32 : pos + 36] = (2**30).to_bytes(4, "little")  # bstarts[0]
    p.write_bytes(bytes(buf))


@pytest.mark.parametrize("verify", [True, False])
def test_damaged_chunk_in_a_box_read_raises_corrupt_chunk_error(tmp_path, verify):
    # smooth values: every chunk is compressed (random ones could be stored verbatim)
    ref = (np.indices((30, 40, 50)).sum(axis=0) % 7).astype(np.int16)
    p = tmp_path / "damaged.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    _damage_header(p, 0)  # planes 0-9, rows 0-19, columns 0-24
    previous = integrity.set_verify_on_read(verify)
    try:
        a = MLArray.open(p)
        with pytest.raises(CorruptChunkError):
            a[2:12, 5:9, 3:30]  # a box over chunk 0 and its neighbours
        np.testing.assert_array_equal(a[15:30, 20:40], ref[15:30, 20:40])  # undamaged chunks
    finally:
        integrity.set_verify_on_read(previous)


def _evict(p) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_prefetch_asks_for_evicted_chunks_only(tmp_path):
    ref = _volume((64, 192, 192))  # 4.5 MB: the chunks asked for lie far from the header
    p = tmp_path / "cold.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(16, 48, 96), block_size=(8, 16, 16))
    a = MLArray.open(p)
    pre = a._require()._mlarray_prefetch
    box = ([20, 60, 10], [50, 150, 180])
    grid = tuple(-(-n // c) for n, c in zip(ref.shape, (16, 48, 96), strict=True))
    first = int(np.ravel_multi_index((1, 1, 0), grid))  # the box's first chunk
    mid = int(pre.pos[first]) + int(pre.cbytes[first]) // 2
    mid -= mid % 4096
    _evict(p)
    if not _resident(pre.addr, mid):  # evicted (a file system kept in RAM keeps it)
        assert pre.region(*box) >= 1
    np.testing.assert_array_equal(a[20:50, 60:150, 10:180], ref[20:50, 60:150, 10:180])
    assert _resident(pre.addr, mid)
    assert pre.region(*box) == 0  # cached: no hint
    assert pre.region([0, 0, 0], [0, 48, 50]) == 0  # empty box
    np.testing.assert_array_equal(a[...], ref)


def test_writable_handles_have_no_prefetcher(tmp_path):
    p = tmp_path / "w.mla"
    save_mla(p, _volume((8, 9, 10)), Meta(), patch_size=None, chunk_size=(4, 4, 4))
    assert hasattr(MLArray.open(p)._require(), "_mlarray_prefetch")
    assert not hasattr(MLArray.open(p, mmap_mode="r+")._require(), "_mlarray_prefetch")
    assert not hasattr(MLArray.open(p, mmap_mode="c")._require(), "_mlarray_prefetch")
    assert not hasattr(MLArray.open(p, mode="a", mmap_mode=None)._require(), "_mlarray_prefetch")


def test_opens_of_a_file_get_their_own_metadata(tmp_path):
    p = tmp_path / "m.mla"
    save_mla(p, _volume((8, 9, 10)), Meta.from_mapping({"spatial": {"spacing": [1.0, 2.0, 3.0]}}))
    first = MLArray.open(p)
    first.meta.extra.data["note"] = [1, 2]  # changes this handle's Meta only
    first.meta.spatial.spacing = [4.0, 5.0, 6.0]
    second = MLArray.open(p)  # the decoded record is reused for this version of the file
    assert "note" not in second.meta.extra.data
    assert list(second.meta.spatial.spacing) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.int32, np.uint64, np.float16, np.float64, np.complex64]
)
def test_box_reads_of_every_dtype(tmp_path, dtype):
    ref = (_volume((12, 13, 14)) % 50).astype(dtype)
    p = tmp_path / "d.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(5, 6, 7), block_size=(5, 3, 7))
    a = MLArray.open(p)
    for key in [(slice(1, 11), slice(2, 13), slice(0, 9)), (3, slice(None), 2), (Ellipsis, 13)]:
        got = a[key]
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref[key])
