"""Chunks Blosc2 marks uninitialised read as zeros, on every read path.

``blosc2.uninit`` (and c-blosc2's ``b2nd_uninit``) store never-written chunks as
"uninitialised": decoding one writes nothing and reports success, so a reader that
trusts it returns whatever memory its output or c-blosc2's scratch buffer held
before (old data of the process). mlarray's own files store unwritten chunks as zero
chunks; files from other Blosc2 tools may hold uninitialised ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.frame import inspect_frame

SHAPE = (40, 50, 60)


@pytest.fixture
def uninit_file(tmp_path):
    import blosc2

    p = tmp_path / "uninit.mla"
    # leave a recognisable pattern in freed memory, as earlier work of a process would
    junk = [np.full(250_000, 0x41414141, np.int32) for _ in range(16)]
    del junk
    b = blosc2.uninit(
        SHAPE, dtype=np.int32, urlpath=str(p), mode="w", chunks=(10, 50, 60), blocks=(5, 25, 30)
    )
    b[0:10] = 5
    del b
    want = np.zeros(SHAPE, np.int32)
    want[0:10] = 5
    assert inspect_frame(p.read_bytes(), p).uninit == (1, 2, 3)
    return p, want


KEYS = [
    (slice(20, 40),),
    (Ellipsis,),
    (30,),
    (slice(8, 12), slice(0, 3), slice(0, 3)),
    (slice(None, None, 3), 4),
    (np.array([1, 35, 12]),),
    (slice(None), np.array([0, 49]), slice(10, 20)),
]


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
def test_reads_of_an_opened_file(uninit_file, key):
    p, want = uninit_file
    np.testing.assert_array_equal(MLArray.open(p)[key], want[key])
    np.testing.assert_array_equal(MLArray.open(p, mmap_mode=None)[key], want[key])
    np.testing.assert_array_equal(MLArray.load(p)[key], want[key])


def test_mask_reads_viewer_cache_and_whole_reads(uninit_file):
    p, want = uninit_file
    a = MLArray.open(p)
    mask = np.indices(SHAPE).sum(axis=0) % 3 == 0
    np.testing.assert_array_equal(a[mask], want[mask])
    a.set_chunk_cache(1 << 26)  # as the napari reader opens files
    for axis in range(3):
        for i in (0, 9, 10, 33):
            key = (slice(None),) * axis + (i,)
            np.testing.assert_array_equal(a[key], want[key])
    np.testing.assert_array_equal(a.to_numpy(), want)
    np.testing.assert_array_equal(MLArray.open(p, dparams={"nthreads": 2})[...], want)
    np.testing.assert_array_equal(MLArray.load(p).to_numpy(), want)


def test_copies_statistics_and_dask_see_zeros(uninit_file, tmp_path):
    p, want = uninit_file
    out = tmp_path / "copy.mla"
    MLArray.open(p).save(out)
    np.testing.assert_array_equal(MLArray.open(out)[...], want)
    c = MLArray.open(p)
    c.compress(patch_size=None, chunk_size=(20, 25, 30), block_size=(10, 25, 30))
    np.testing.assert_array_equal(c[...], want)
    st = MLArray.open(p).compute_stats()
    assert (st.min, st.max) == (0.0, 5.0)
    np.testing.assert_array_equal(MLArray.open(p).to_dask().compute(scheduler="sync"), want)


def test_written_uninitialised_chunks_read_what_was_written(uninit_file):
    p, want = uninit_file
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a[22:28, 3:9] = 7
    want[22:28, 3:9] = 7
    np.testing.assert_array_equal(a[...], want)
    np.testing.assert_array_equal(a[20:30], want[20:30])
    a.close()
    np.testing.assert_array_equal(MLArray.open(p)[15:35], want[15:35])


@pytest.mark.parametrize("threads", [1, 2])
def test_delta_filtered_files_read_right_on_every_path(tmp_path, threads):
    """c-blosc2 rebuilds a DELTA-filtered block decoded alone against the wrong
    reference (python-blosc2's own slicing returns wrong planes, silently); mlarray
    decodes such files' chunks whole."""
    import blosc2

    rng = np.random.default_rng(1)
    data = (np.cumsum(rng.normal(size=(24, 20, 18)), axis=2) * 10).astype(np.int16)
    p = tmp_path / "delta.mla"
    cparams = {
        "codec": blosc2.Codec.BLOSCLZ,
        "filters": [blosc2.Filter.DELTA, blosc2.Filter.SHUFFLE],
    }
    blosc2.asarray(data, chunks=(8, 10, 18), blocks=(4, 5, 9), cparams=cparams).save(str(p))
    assert inspect_frame(p.read_bytes(), p).delta
    a = MLArray.open(p, dparams={"nthreads": threads})
    for key in [
        (12,),
        (slice(None), slice(None), 17),
        (slice(3, 19), slice(2, 13), slice(5, 16)),
        (slice(None, None, 2),),
        (np.array([0, 13, 23]),),
        (Ellipsis,),
    ]:
        np.testing.assert_array_equal(a[key], data[key])
    a.set_chunk_cache(1 << 24)
    for i in range(24):
        np.testing.assert_array_equal(a[i], data[i])
    for k in range(18):
        np.testing.assert_array_equal(a[:, :, k], data[:, :, k])
    np.testing.assert_array_equal(MLArray.load(p)[5:9, 1], data[5:9, 1])
    out = tmp_path / "copy.mla"
    MLArray.open(p).save(out)
    np.testing.assert_array_equal(MLArray.open(out)[...], data)


def _delta_data():
    rng = np.random.default_rng(1)
    return (np.cumsum(rng.normal(size=(24, 20, 18)), axis=2) * 10).astype(np.int16)


def _delta_cparams():
    import blosc2

    return {"codec": blosc2.Codec.BLOSCLZ, "filters": [blosc2.Filter.DELTA, blosc2.Filter.SHUFFLE]}


def test_arrays_mlarray_makes_with_delta_read_right(tmp_path):
    """Arrays compressed here with the DELTA filter (in memory, created, recompressed)
    are read by whole chunks too, not only files opened with it."""
    data = _delta_data()
    layout = {"patch_size": None, "chunk_size": (8, 10, 18), "block_size": (4, 5, 9)}
    a = MLArray(data, cparams=_delta_cparams(), **layout)
    c = MLArray.create(
        tmp_path / "created.mla",
        shape=data.shape,
        dtype=data.dtype,
        cparams=_delta_cparams(),
        **layout,
    )
    c[...] = data
    b = MLArray(data, **layout)
    b.compress(cparams=_delta_cparams(), **layout)
    for arr in (a, c, b):
        np.testing.assert_array_equal(arr[12], data[12])
        np.testing.assert_array_equal(arr[:, :, 17], data[:, :, 17])
        arr.set_chunk_cache()
        np.testing.assert_array_equal(arr[:, 3], data[:, 3])


@pytest.mark.parametrize("how", ["load", "cow"])
@pytest.mark.parametrize("kind", ["uninit", "delta"])
def test_guarded_arrays_stay_guarded_when_pickled_forked_and_sent_to_dask(
    uninit_file, tmp_path, how, kind
):
    import multiprocessing
    import pickle

    import blosc2

    if kind == "uninit":
        p, want = uninit_file
    else:
        want = _delta_data()
        p = tmp_path / "delta.mla"
        blosc2.asarray(want, chunks=(8, 10, 18), blocks=(4, 5, 9), cparams=_delta_cparams()).save(
            str(p)
        )
    a = MLArray.load(p) if how == "load" else MLArray.open(p, mmap_mode="c")
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(b[...], want)
    np.testing.assert_array_equal(b[12], want[12])
    np.testing.assert_array_equal(a.to_dask().compute(scheduler="sync"), want)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_planes, (a,)).get(timeout=60)
    np.testing.assert_array_equal(got, want[::5])


def _planes(a):
    return np.stack([a[i] for i in range(0, a.shape[0], 5)])
