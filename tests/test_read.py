"""The decoded-chunk cache read path (mlarray._read) against numpy, on real Blosc2 arrays."""

from __future__ import annotations

import functools
import os
import threading

import blosc2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlarray import MLArray, _read
from mlarray._read import (
    ChunkCache,
    decode_chunk,
    decode_layer,
    layer_plane,
    read_cached,
    take,
)
from mlarray.io import save_mla
from mlarray.meta import Meta
from tests.conftest import undecodable_blosc2_file

DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
]


def _values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 200, size=shape)
    if np.dtype(dtype).kind == "c":
        return (x + 1j * x[::-1]).astype(dtype)
    return x.astype(dtype)


@pytest.fixture(autouse=True)
def _own_recycler(monkeypatch):
    # layer memory is recycled process-wide: each test starts without buffers left by
    # others, so that cache sizes are those of its own layers
    monkeypatch.setattr(_read, "_recycler", _read._Recycler(_read.RECYCLE_BYTES))


@st.composite
def layouts(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 13)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    blocks = tuple(draw(st.integers(1, c)) for c in chunks)
    return shape, chunks, blocks


def _index(n):
    return st.integers(-n, n - 1)


def _slice(n):
    bound = st.one_of(st.none(), st.integers(-n - 3, n + 3))
    step = st.one_of(st.none(), st.integers(-5, 5).filter(lambda s: s != 0))
    return st.builds(slice, bound, bound, step)


@st.composite
def keys(draw, shape):
    parts = [draw(st.one_of(_index(n), _slice(n))) for n in shape]
    cut = draw(st.integers(0, len(parts)))
    form = draw(st.sampled_from(["full", "prefix", "ellipsis", "single"]))
    if form == "prefix":
        return tuple(parts[:cut])
    if form == "ellipsis":
        return (*parts[:cut], Ellipsis)
    if form == "single":
        return parts[0]
    return tuple(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), layout=layouts(), dtype=st.sampled_from(DTYPES))
def test_cached_reads_equal_numpy(data, layout, dtype):
    shape, chunks, blocks = layout
    ref = _values(shape, dtype)
    nd = blosc2.asarray(ref, chunks=chunks, blocks=blocks)
    # a small bound forces evictions; the same cache serves several reads
    cache = ChunkCache(max_bytes=data.draw(st.sampled_from([0, 64, 10**6])))
    for _ in range(3):
        key = data.draw(keys(shape))
        got = read_cached(nd, key, cache, always=True)
        want = ref[key]
        assert got is not None
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        assert cache.nbytes <= cache.max_bytes


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_chunk_and_take_put_every_element_in_place_including_edge_chunks(dtype):
    shape, chunks, blocks = (11, 17, 9), (5, 8, 9), (2, 3, 4)
    ref = _values(shape, dtype, seed=1)
    nd = blosc2.asarray(ref, chunks=chunks, blocks=blocks)
    grid = [-(-n // c) for n, c in zip(shape, chunks, strict=True)]
    for nchunk, idx in enumerate(np.ndindex(*grid)):
        got = decode_chunk(nd, nchunk)
        ext_grid = [e // b for e, b in zip(nd.ext_chunks, blocks, strict=True)]
        assert got.shape == (*ext_grid, *blocks)
        lo = [i * c for i, c in zip(idx, chunks, strict=True)]
        part = ref[tuple(slice(a, a + c) for a, c in zip(lo, chunks, strict=True))]
        whole = take(got, tuple(slice(0, n, 1) for n in part.shape))
        np.testing.assert_array_equal(whole, part)
        # a plane inside one block, and strided selections across blocks
        n0, n1, n2 = part.shape
        plane = take(got, (slice(n0 - 1, n0, 1), slice(0, n1, 1), slice(0, n2, 1)))
        np.testing.assert_array_equal(plane[0], part[-1])
        sel = (slice(0, n0, 2), slice(1 % n1, n1, 3), slice(0, n2, 4))
        np.testing.assert_array_equal(take(got, sel), part[sel])


def test_cache_is_bounded_lru_and_counts_hits():
    ref = _values((40, 30, 30), np.int16)
    nd = blosc2.asarray(ref, chunks=(10, 30, 30), blocks=(5, 10, 10))
    layer_bytes = 5 * 30 * 30 * 2  # one block layer of planes, decoded
    cache = ChunkCache(max_bytes=2 * layer_bytes)
    for z in range(10):  # ten planes of one chunk: its two block layers, each decoded once
        np.testing.assert_array_equal(read_cached(nd, z, cache), ref[z])
    assert (cache.misses, cache.hits, len(cache)) == (2, 8, 2)
    read_cached(nd, 15, cache)  # a third layer: the least recently used one (planes 0-4) goes
    assert len(cache) == 2 and cache.nbytes == 2 * layer_bytes
    read_cached(nd, 7, cache)
    assert cache.misses == 3
    read_cached(nd, 0, cache)
    assert cache.misses == 4
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_reads_using_most_of_their_chunks_bypass_the_cache():
    ref = _values((40, 30, 30), np.int16)
    nd = blosc2.asarray(ref, chunks=(10, 30, 30), blocks=(5, 10, 10))
    cache = ChunkCache()
    assert read_cached(nd, ..., cache) is None  # the whole volume: Blosc2 assembles it
    assert read_cached(nd, (slice(0, 10), slice(0, 20)), cache) is None
    np.testing.assert_array_equal(read_cached(nd, (slice(0, 2),), cache), ref[:2])
    assert len(cache) == 1


def test_unhandled_keys_fall_back():
    nd = blosc2.asarray(np.arange(24).reshape(2, 3, 4))
    cache = ChunkCache()
    for key in ([0, 1], np.array([True, False]), (None, 0), (0, 0, 0, 0), (..., 0, ...)):
        assert read_cached(nd, key, cache) is None
    assert read_cached(blosc2.asarray(np.zeros((0, 3))), 0, cache) is None
    with pytest.raises(IndexError):
        read_cached(nd, 2, cache)
    with pytest.raises(IndexError):
        read_cached(nd, (0, -4), cache)
    with pytest.raises(ValueError, match="zero"):
        read_cached(nd, slice(None, None, 0), cache)
    with pytest.raises(ValueError):
        ChunkCache(-1)
    with pytest.raises(TypeError):
        ChunkCache(1.5)


def test_mlarray_chunk_cache_on_an_opened_file(tmp_path):
    ref = _values((30, 40, 50), np.int16, seed=2)
    p = tmp_path / "a.mla"
    save_mla(p, ref, Meta(), chunk_size=(10, 20, 25), block_size=(5, 10, 5), patch_size=None)
    a = MLArray.open(p, mmap_mode="r+")
    a.set_chunk_cache(10**7)
    for z in range(30):
        np.testing.assert_array_equal(a[z], ref[z])
    for y in range(40):
        np.testing.assert_array_equal(a[:, y], ref[:, y])
    np.testing.assert_array_equal(a[::-3, 5:1:-1, ...], ref[::-3, 5:1:-1, ...])
    np.testing.assert_array_equal(a[[1, 2]], ref[[1, 2]])  # fancy keys: Blosc2's path
    assert a._chunk_cache.hits > 50
    # a write empties the cache: no stale planes afterwards
    a[3, 4, 5] = -7
    ref[3, 4, 5] = -7
    a[10:12] = 9
    ref[10:12] = 9
    np.testing.assert_array_equal(a[3], ref[3])
    np.testing.assert_array_equal(a[:, :, 5], ref[:, :, 5])
    a.set_chunk_cache(None)
    assert a._chunk_cache is None
    np.testing.assert_array_equal(a[11], ref[11])
    with pytest.raises(IndexError):
        a.set_chunk_cache()
        a[30]


def test_cache_from_threads(tmp_path):
    ref = _values((24, 32, 32), np.uint16, seed=3)
    p = tmp_path / "t.mla"
    save_mla(p, ref, Meta(), chunk_size=(8, 16, 16), block_size=(4, 8, 8), patch_size=None)
    a = MLArray.open(p)
    a.set_chunk_cache(3 * 8 * 16 * 16 * 2)  # fewer chunks than the threads touch: evictions
    errors = []

    def work(axis):
        try:
            for i in range(ref.shape[axis]):
                key = (slice(None),) * axis + (i,)
                np.testing.assert_array_equal(a[key], ref[key])
        except Exception as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ax,)) for ax in (0, 1, 2, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize(
    ("shape", "chunks", "blocks"),
    [
        ((30, 41, 52), (10, 20, 26), (5, 10, 13)),  # edge chunks on two axes
        ((30, 41, 52), (10, 21, 26), (5, 10, 13)),  # chunk not a multiple of its block
        ((17, 23), (8, 8), (4, 2)),
        ((6, 7, 8, 9), (3, 4, 4, 5), (3, 2, 2, 5)),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64])
def test_planes_along_every_axis_from_cached_layers(shape, chunks, blocks, dtype):
    ref = _values(shape, dtype, seed=6)
    nd = blosc2.asarray(ref, chunks=chunks, blocks=blocks)
    cache = ChunkCache()
    for axis in range(len(shape)):
        for i in [*range(shape[axis]), -1, -shape[axis]]:
            key = (slice(None),) * axis + (i,)
            got = read_cached(nd, key, cache, always=True)
            np.testing.assert_array_equal(got, ref[key])
            assert got.shape == ref[key].shape and got.dtype == ref.dtype
        with pytest.raises(IndexError):
            read_cached(nd, (slice(None),) * axis + (shape[axis],), cache, always=True)
    # planes come from block layers (padded chunks too), never from whole chunks
    assert {k[0] for k in cache._chunks} == {"layer"}


def test_fast_paths_keep_the_checksum_checks(tmp_path):
    from mlarray.errors import CorruptChunkError
    from mlarray.frame import inspect_frame

    ref = _values((30, 40, 50), np.int16, seed=7)
    p = tmp_path / "damaged.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    bad = int(np.flatnonzero(info.chunk_pos >= 0)[0])  # chunk 0: planes 0-9 of rows 0-19
    buf[int(info.chunk_pos[bad]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    a = MLArray.open(p)
    a.set_chunk_cache()
    np.testing.assert_array_equal(a[:, 30], ref[:, 30])  # its chunk row is intact
    with pytest.raises(CorruptChunkError):
        a[3]  # a plane from a block layer crossing the damaged chunk
    with pytest.raises(CorruptChunkError):
        a[4]  # nothing of it was cached
    np.testing.assert_array_equal(a[:, 31], ref[:, 31])  # a cached layer
    assert a._chunk_cache.hits >= 1
    with pytest.raises(CorruptChunkError):
        a[2:4, 5:9, ::3]  # chunk by chunk
    np.testing.assert_array_equal(a[15], ref[15])  # undamaged chunks still read
    with pytest.raises(CorruptChunkError):  # streaming re-chunk (plain file I/O source)
        save_mla(tmp_path / "out.mla", a, a.meta, patch_size=(8, 8, 8))
    with pytest.raises(CorruptChunkError):  # verbatim chunk copy
        save_mla(
            tmp_path / "same.mla",
            a,
            a.meta,
            patch_size=None,
            chunk_size=a.chunks,
            block_size=a.blocks,
        )
    with pytest.raises(CorruptChunkError):  # streaming recompression in memory
        MLArray.open(p).compress(patch_size=(8, 8, 8))
    with pytest.raises(CorruptChunkError):
        MLArray.open(p).compute_stats()


@pytest.mark.parametrize(
    ("shape", "chunks", "blocks"),
    [
        ((30, 41, 52), (10, 21, 26), (5, 10, 13)),  # edge chunks, chunks padded to blocks
        ((6, 7, 8, 9), (3, 4, 4, 5), (3, 2, 2, 5)),
        ((50,), (20,), (7,)),
        ((23, 9, 40), (23, 9, 40), (8, 9, 40)),  # one chunk; planes are whole block rows
        ((9, 13, 11), (4, 13, 5), (4, 13, 1)),  # one-item blocks along the last axis
    ],
)
def test_block_layers_hold_every_plane_they_cross(shape, chunks, blocks):
    ref = _values(shape, np.int16, seed=8)
    nd = blosc2.asarray(ref, chunks=chunks, blocks=blocks)
    for axis in range(len(shape)):
        seen = 0
        for j in range(-(-shape[axis] // chunks[axis])):
            for g in range(-(-chunks[axis] // blocks[axis])):
                first = j * chunks[axis] + g * blocks[axis]
                stop = min(shape[axis], (j + 1) * chunks[axis], first + blocks[axis])
                if first >= stop:
                    continue
                layer = decode_layer(nd, axis, j, g)
                for i in range(stop - first):
                    plane = layer_plane(nd, axis, layer, i)
                    assert plane.flags.c_contiguous and plane.dtype == ref.dtype
                    np.testing.assert_array_equal(plane, np.take(ref, first + i, axis=axis))
                seen += stop - first
        assert seen == shape[axis]  # the layers hold every plane once


@pytest.mark.parametrize("kind", ["layer", "chunk"])
def test_a_decode_racing_a_write_is_not_cached(tmp_path, kind):
    # napari slices planes in a worker thread while labels are painted: a read misses,
    # decodes, and the write and its cache clear() happen before the read keeps what it
    # decoded. That data predates the write and must not serve later reads.
    p = tmp_path / "race.mla"
    save_mla(
        p,
        np.zeros((16, 64, 64), np.int16),
        Meta(),
        chunk_size=(8, 32, 32),
        block_size=(4, 16, 16),
        patch_size=None,
    )
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a.set_chunk_cache()
    cache, store = a._chunk_cache, a._store
    if kind == "layer":  # plane 1: block layer 0 of chunk row 0 along axis 0
        key, where = ("layer", 0, 0, 0), (1,)
        decode = functools.partial(decode_layer, store, 0, 0, 0)
    else:  # a small patch of chunk 0, assembled from the whole decoded chunk
        key, where = ("chunk", 0), (slice(1, 3), slice(2, 5), slice(2, 5))
        decode = functools.partial(decode_chunk, store, 0)
    decoded, written = threading.Event(), threading.Event()
    raced = []

    def hooked():
        try:
            return decode()  # the data before the write
        finally:
            decoded.set()
            written.wait()

    reader = threading.Thread(
        target=lambda: raced.append(cache._get(store, key, hooked)), daemon=True
    )
    reader.start()
    try:
        assert decoded.wait(timeout=60), "the reader never decoded"
        a[where] = 5  # writes chunk 0, then clears the cache
    finally:
        written.set()
    reader.join()
    assert not raced[0].any()  # the racing read got what it decoded: the old data
    assert key not in cache._chunks  # but did not keep it
    np.testing.assert_array_equal(a[where], np.full(a[where].shape, 5, np.int16))
    assert key in cache._chunks  # decoded after the write: kept, and served from now on
    hits = cache.hits
    np.testing.assert_array_equal(a[where], 5)
    assert cache.hits == hits + 1


def test_planes_read_while_written_from_another_thread_are_never_stale(tmp_path):
    # A viewer thread scrolls between two planes (a cache of one block layer: every read
    # misses and decodes) while the main thread writes one of them, as napari's async
    # slicing does while labels are painted. Once the write and the reader finished, a
    # fresh read returns what was written.
    p = tmp_path / "paint.mla"
    save_mla(
        p,
        np.zeros((64, 256, 256), np.int16),
        Meta(),
        chunk_size=(64, 64, 128),
        block_size=(16, 32, 32),
        patch_size=None,
    )
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a.set_chunk_cache(64 * 256 * 32 * 2)  # one block layer along the last axis

    def scroll(done):
        while not done.is_set():
            a[:, :, 200]
            a[:, :, 100]

    stale = []
    for it in range(1, 31):
        done = threading.Event()
        reader = threading.Thread(target=scroll, args=(done,))
        reader.start()
        try:
            a[:, :, 100] = it  # written (and the cache cleared) while the reader decodes
        finally:
            done.set()
            reader.join()
        if not (a[:, :, 100] == it).all():
            stale.append(it)
    assert not stale


def test_mask_and_index_array_reads_and_writes_hold_no_int64_coordinates(tmp_path):
    """``a[mask]`` with a whole-array boolean mask and ``a[idx_arrays]`` read and write
    through the selection's bounding box without int64 coordinates of every selected
    element (24 bytes each for 3-d, twice): the mask is used as it is, other keys in
    the smallest integer type of each axis."""
    import tracemalloc

    from mlarray import MLArray

    x = np.random.default_rng(0).integers(0, 1000, (64, 96, 80)).astype(np.int16)
    p = tmp_path / "masked.mla"
    MLArray(x).save(p)
    mask = x > 100  # ~90 % of the voxels
    rng = np.random.default_rng(1)
    idx = tuple(rng.integers(0, n, 200_000) for n in x.shape)
    a = MLArray.open(p, mmap_mode="r+")
    a[0:1, 0:1, 0:1]  # first read (checksums, caches) outside the measurement
    n_mask, n_idx = int(mask.sum()), idx[0].size
    for key, n, want in ((mask, n_mask, x[mask]), (idx, n_idx, x[idx])):
        tracemalloc.start()
        got = a[key]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(got, want)
        # the box (the whole volume here) + the result + decoding buffers; int64
        # coordinates would add 2 * 3 * 8 bytes per selected element
        assert peak < x.nbytes + 2 * n * x.itemsize + 8 * n + (8 << 20), (key is mask, peak)
    y = x.copy()
    y[mask] = 7
    a[mask] = 7
    y[idx] = -3
    a[idx] = -3
    a.close()
    np.testing.assert_array_equal(MLArray.open(p)[...], y)


@pytest.mark.parametrize(
    "make_key",
    [
        lambda x: x > 100,  # a mask over the whole array
        lambda x: (x > 500).any(axis=2),  # a 2-d mask over the leading axes
        lambda x: (slice(None), (x > 500).any(axis=(0, 2))),  # a mask along one axis
        lambda x: (x[:, :, 0] > 300, slice(5, 90, 7)),
        lambda x: tuple(np.random.default_rng(2).integers(0, n, 5000) for n in x.shape),
        lambda x: (np.array([130, 2, 64, 65, 2]), slice(None), np.array([0, 100, 159, 7, 71])),
        lambda x: (slice(None, None, -3), np.array([[1, 150], [72, 71]])),
    ],
)
def test_advanced_keys_select_in_numpy_order_across_chunks(tmp_path, make_key):
    """Boolean masks and integer arrays over a file of many chunks select what numpy
    selects, in numpy's (C) order: Blosc2's own fancy indexing returned a whole-array
    mask's elements chunk by chunk (same values, wrong order, no error)."""
    from mlarray import MLArray

    x = np.random.default_rng(0).integers(0, 1000, (131, 192, 160)).astype(np.int16)
    p = tmp_path / "many_chunks.mla"
    MLArray(x, patch_size=(48, 48, 48)).save(p)
    a = MLArray.open(p)
    assert np.prod([-(-n // c) for n, c in zip(x.shape, a.chunks, strict=True)]) > 8
    key = make_key(x)
    np.testing.assert_array_equal(a[key], x[key])
    b = MLArray.open(p, mmap_mode="r+")
    y = x.copy()
    y[key] = -1
    b[key] = -1
    b.close()
    np.testing.assert_array_equal(MLArray.open(p)[...], y)


@pytest.mark.parametrize("dtype", [*DTYPES, np.complex128])
@pytest.mark.parametrize(
    ("shape", "chunks", "blocks"),
    [
        ((13, 17, 24), (6, 8, 16), (3, 4, 8)),  # edge chunks on every axis
        ((11, 10, 18), (11, 5, 18), (4, 5, 6)),  # one chunk row; odd last-axis blocks
        ((7, 9, 15), (4, 9, 15), (2, 3, 3)),  # three-item rows: every plane path
    ],
)
def test_scrolled_planes_equal_the_whole_read_before_and_after_writes(
    tmp_path, shape, chunks, blocks, dtype
):
    # every plane along every axis of a real file, as a viewer scrolls it (forwards, then
    # backwards from cached layers), equals the same plane of MLArray.open(p)[...]
    p = tmp_path / "v.mla"
    ref = _values(shape, dtype, seed=9)
    save_mla(p, ref, Meta(), chunk_size=chunks, block_size=blocks, patch_size=None)
    whole = MLArray.open(p)[...]
    np.testing.assert_array_equal(whole, ref)
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a.set_chunk_cache()

    def check(want):
        for axis in range(len(shape)):
            order = [*range(shape[axis]), *reversed(range(shape[axis]))]
            for i in order:
                key = (slice(None),) * axis + (i,)
                got = a[key]
                assert got.dtype == want.dtype and got.flags.c_contiguous
                np.testing.assert_array_equal(got, want[key])

    check(whole)
    assert a._chunk_cache.hits > 0 and {k[0] for k in a._chunk_cache._chunks} == {"layer"}
    a[1:3, 2:7, 5:9] = np.zeros((2, 5, 4), dtype)  # a write empties the cache
    a[-1, -1, -1] = not ref[-1, -1, -1] if dtype is np.bool_ else ref[-1, -1, -1] + 1
    a.close()
    after = MLArray.open(p)[...]
    assert not np.array_equal(after, whole)
    a = MLArray.open(p)
    a.set_chunk_cache()
    check(after)


def test_layer_memory_is_recycled_only_once_nothing_uses_it():
    recycler = _read._Recycler(max_bytes=3 * 4000)
    x = recycler.array((10, 200), np.int16)
    x[...] = 7
    view = x[3:5]
    address = x.ctypes.data
    del x
    y = recycler.array((10, 200), np.int16)  # the view still holds the first buffer
    assert y.ctypes.data != address
    y[...] = 1
    np.testing.assert_array_equal(view, 7)  # untouched by the new array's writes
    del view
    assert recycler.nbytes == 4000
    z = recycler.array((2000,), np.uint16)  # same size: the memory comes back
    assert z.ctypes.data == address and z.shape == (2000,) and z.dtype == np.uint16
    assert z.flags.writeable and z.flags.c_contiguous and recycler.nbytes == 0
    del y, z
    assert recycler.nbytes == 8000
    w = recycler.array((2000,), np.uint8)  # a buffer at most twice as big is used
    assert _read._footprint(w) == 4000 and _read._footprint(w[1:][::2]) == 4000
    assert recycler.array((1900,), np.uint8).ctypes.data != w.ctypes.data
    assert _read._footprint(recycler.array((1900,), np.uint8)) == 1900  # none fits
    for _ in range(3):  # at most max_bytes kept, the oldest dropped first
        recycler.array((5000,), np.uint8)
    assert recycler.nbytes <= recycler.max_bytes
    recycler.array((recycler.max_bytes + 1,), np.uint8)  # too big to keep
    assert recycler.nbytes <= recycler.max_bytes


def test_cache_counts_the_recycled_buffers_it_holds():
    ref = _values((40, 30, 30), np.int16)
    nd = blosc2.asarray(ref, chunks=(10, 30, 30), blocks=(5, 10, 10))
    layer_bytes = 5 * 30 * 30 * 2
    spare = _read._recycler.array((layer_bytes + layer_bytes // 5,), np.uint8)
    del spare  # a free buffer a fifth bigger than a layer: the next layer gets it
    cache = ChunkCache(max_bytes=2 * layer_bytes)
    np.testing.assert_array_equal(read_cached(nd, 0, cache), ref[0])
    assert cache.nbytes == layer_bytes + layer_bytes // 5
    np.testing.assert_array_equal(read_cached(nd, 5, cache), ref[5])
    assert len(cache) == 1 and cache.nbytes == layer_bytes  # both do not fit the bound


def test_memory_freed_while_the_recycler_is_busy_is_filed_later():
    # an array may be freed at any point, even while its thread (a garbage collection
    # inside array()) or another one holds the recycler: its memory is queued, not lost
    recycler = _read._Recycler(max_bytes=10**6)
    x = recycler.array((100, 10), np.float32)
    address = x.ctypes.data
    with recycler._lock:
        del x  # cannot file it now: queued
        assert len(recycler._returned) == 1 and recycler.nbytes == 0
    y = recycler.array((1000,), np.int32)  # files what was queued first, then reuses it
    assert y.ctypes.data == address and not recycler._returned
    held, done = threading.Event(), threading.Event()

    def hold():
        with recycler._lock:
            held.set()
            done.wait(timeout=60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(timeout=60)
    del y  # the other thread holds the lock: this one does not wait for it
    assert len(recycler._returned) == 1
    done.set()
    holder.join()
    z = recycler.array((4000,), np.uint8)
    assert z.ctypes.data == address and recycler.nbytes == 0


def test_a_small_cache_keeps_layers_on_recycled_memory(tmp_path):
    """A layer decoded into recycled memory bigger than the cache may hold (a layer of
    another axis, freed) is still kept: scrolling on after a plane of another axis
    hits the cache instead of decoding the layer again for every plane."""
    from mlarray import MLArray

    x = np.random.default_rng(3).integers(0, 500, (48, 64, 64)).astype(np.int16)
    p = tmp_path / "small_cache.mla"
    MLArray(x, patch_size=None, chunk_size=(24, 32, 32), block_size=(12, 16, 8)).save(p)
    a = MLArray.open(p)
    layer0, layer2 = 12 * 64 * 64 * 2, 8 * 48 * 64 * 2  # bytes of a layer along axis 0, 2
    a.set_chunk_cache((layer0 + layer2) // 2)  # room for an axis-2 layer only
    np.testing.assert_array_equal(a[5], x[5])  # its layer is too big to keep: recycled
    cache = a._chunk_cache
    for k in range(8):  # one axis-2 layer
        np.testing.assert_array_equal(a[:, :, k], x[:, :, k])
    assert cache.hits >= 6, (cache.hits, cache.misses)


def test_a_child_forked_while_a_cache_is_locked_reads_planes(tmp_path):
    """A one-thread handle's plane cache locked by another thread at fork time (a
    loader forking workers while its threads scroll) does not hang the child."""
    from mlarray import MLArray
    from tests._children import wait_status

    x = np.random.default_rng(4).integers(0, 500, (32, 48, 40)).astype(np.int16)
    p = tmp_path / "fork_cache.mla"
    MLArray(x).save(p)
    a = MLArray.open(p, dparams={"nthreads": 1})
    a.set_chunk_cache()
    a[3]
    with a._chunk_cache._lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = all(np.array_equal(a[i], x[i]) for i in range(0, 32, 5))
            os._exit(0 if ok else 3)
    assert wait_status(pid) == 0


def test_cached_reads_with_negative_steps_are_c_contiguous(tmp_path):
    from mlarray import MLArray

    x = np.random.default_rng(5).integers(0, 500, (30, 40, 50)).astype(np.int16)
    p = tmp_path / "flip.mla"
    MLArray(x, patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5)).save(p)
    a = MLArray.open(p)
    a.set_chunk_cache()
    for key in [(slice(None, None, -1), 3), (slice(25, 2, -2), slice(None), slice(None, None, -3))]:
        got = a[key]
        np.testing.assert_array_equal(got, x[key])
        assert got.flags.c_contiguous


@pytest.mark.parametrize(
    "key",
    [
        (np.array([0, 130]),),
        (np.array([0, 130]), np.array([191, 3]), np.array([159, 0])),
        (np.array([[0, -1], [64, 2]]), slice(None), np.array([[5, 150], [7, 7]])),
        (slice(None, None, 40), np.array([1, 190, 1])),
    ],
    ids=range(4),
)
def test_scattered_points_read_their_chunks_only(tmp_path, key):
    """A few far-apart indices (a[[0, -1]], corner voxels) read the chunks they fall in,
    not their whole bounding box (the volume)."""
    import tracemalloc

    from mlarray import MLArray

    x = np.random.default_rng(6).integers(0, 1000, (131, 192, 160)).astype(np.int16)
    p = tmp_path / "points.mla"
    MLArray(x, patch_size=(48, 48, 48)).save(p)
    a = MLArray.open(p)
    a[0, 0, 0]
    tracemalloc.start()
    got = a[key]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, x[key])
    assert peak < 0.6 * x.nbytes, peak  # the bounding box (the volume) would be all of it


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize(
    ("shape", "chunks", "blocks"),
    [
        ((30, 41, 52), (10, 21, 26), (5, 10, 13)),  # edge chunks, chunks padded to blocks
        ((6, 7, 8, 9), (3, 4, 4, 5), (3, 2, 2, 5)),
        ((9, 13, 11), (4, 13, 5), (4, 13, 1)),  # one-item blocks along the last axis
        ((17, 23), (8, 8), (4, 2)),
    ],
)
def test_planes_of_an_opened_file_decode_chosen_blocks_per_chunk(
    tmp_path, shape, chunks, blocks, nthreads
):
    """A read-only MLArray, opened for one or two threads, decodes its block layers on
    the reading thread (along the last axis one C-library call per chunk: the layer's
    blocks through a block mask, mlarray._cstore.block_decoder): every plane along every
    axis is the array's, edge chunks, padded blocks and an all-zero (special) chunk
    included."""
    ref = _values(shape, np.int16, seed=9)
    ref[tuple(slice(0, c) for c in chunks)] = 0
    p = tmp_path / "planes.mla"
    save_mla(p, ref, Meta(), patch_size=None, chunk_size=chunks, block_size=blocks)
    a = MLArray.open(p, dparams={"nthreads": nthreads})
    a.set_chunk_cache()
    if _clib_usable():
        assert _read.blocks_of(a._store) is not None
    for axis in range(len(shape)):
        for i in range(shape[axis]):
            key = (slice(None),) * axis + (i,)
            np.testing.assert_array_equal(a[key], ref[key])


def _clib_usable() -> bool:
    from mlarray import _clib

    return _clib.get() is not None


def test_an_undecodable_chunk_of_an_opened_file_raises_ours_from_a_plane(tmp_path):
    """A file without checksums whose chunks c-blosc2 cannot decode, opened for two
    threads: planes along every axis raise CorruptChunkError naming the file."""
    from mlarray.errors import CorruptChunkError

    p = tmp_path / "undecodable.mla"
    ref = _values((20, 30, 40), np.int32, seed=4)
    undecodable_blosc2_file(p, ref)
    for key in ((3,), (slice(None), 12), (slice(None), slice(None), 25)):
        a = MLArray.open(p, dparams={"nthreads": 2})
        a.set_chunk_cache()
        with pytest.raises(CorruptChunkError, match=r"undecodable\.mla"):
            a[key]
