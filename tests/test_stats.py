"""Streaming statistics of :mod:`mlarray.stats` against numpy."""

from __future__ import annotations

import math
import os

import blosc2
import numpy as np
import pytest

import mlarray.stats
from mlarray.errors import MetaValidationError
from mlarray.stats import STAT_KEYS, compute_stats

RTOL = 1e-6


class RecordingArray:
    """A numpy array behind ``__getitem__`` that records every read."""

    def __init__(self, data: np.ndarray, chunks=None):
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        if chunks is not None:
            self.chunks = chunks
        self.largest_read = 0
        self.elements_read = 0
        self.reads = 0

    def __getitem__(self, index):
        out = np.array(self._data[index])  # a copy, as a decompressing reader returns
        self.largest_read = max(self.largest_read, out.size)
        self.elements_read += out.size
        self.reads += 1
        return out


def numpy_stats(data: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> dict:
    """The same statistics computed in memory by numpy, NaNs ignored."""
    values = data.astype(np.float64).ravel()
    values = values[~np.isnan(values)]
    pmin = np.percentile(values, lo)
    pmax = np.percentile(values, hi)
    sub = values[(values >= pmin) & (values <= pmax)]
    return {
        "min": values.min(),
        "max": values.max(),
        "mean": values.mean(),
        "median": np.median(values),
        "std": values.std(),
        "percentile_min": pmin,
        "percentile_max": pmax,
        "percentile_mean": sub.mean(),
        "percentile_median": np.median(sub),
        "percentile_std": sub.std(),
        "percentile_min_key": lo,
        "percentile_max_key": hi,
    }


def assert_stats_close(got: dict, expected: dict, rtol: float = RTOL) -> None:
    assert set(got) == set(STAT_KEYS)
    for key in STAT_KEYS:
        assert type(got[key]) is float, key
        scale = max(abs(expected["max"]), abs(expected["min"]), 1e-30)
        assert math.isclose(got[key], expected[key], rel_tol=rtol, abs_tol=rtol * scale * 1e-3), (
            key,
            got[key],
            expected[key],
        )


def random_volume(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 300 + 40).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.3
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -3000), min(info.max, 3000)
    return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)


# ----------------------------------------------------------------------------- against numpy


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_numpy_on_random_volumes(dtype, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 40, 3))
    data = random_volume(rng, dtype, shape)
    chunk = tuple(int(rng.integers(1, n + 1)) for n in shape)
    got = compute_stats(data, chunk_shape=chunk)
    assert_stats_close(got, numpy_stats(data))


@pytest.mark.parametrize(
    "dtype",
    [
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "uint64",
    ],
)
def test_matches_numpy_for_every_dtype(dtype):
    rng = np.random.default_rng(1)
    data = random_volume(rng, dtype, (17, 23, 29))
    got = compute_stats(data, chunk_shape=(5, 8, 13))
    assert_stats_close(got, numpy_stats(data))


@pytest.mark.parametrize("dtype", ["int16", "uint8", "int32", "int64"])
def test_integer_order_statistics_are_exact(dtype):
    rng = np.random.default_rng(2)
    data = random_volume(rng, dtype, (31, 37))
    got = compute_stats(data, chunk_shape=(4, 5), percentiles=(2.5, 97.5))
    values = data.astype(np.float64)
    assert got["median"] == np.median(values)
    assert got["percentile_min"] == np.percentile(values, 2.5)
    assert got["percentile_max"] == np.percentile(values, 97.5)
    assert got["min"] == values.min() and got["max"] == values.max()


def test_wide_integer_ranges_are_refined_exactly():
    rng = np.random.default_rng(3)
    wide32 = rng.integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 5000, dtype=np.int32)
    got = compute_stats(wide32, chunk_shape=(700,))
    assert got["median"] == np.median(wide32.astype(np.float64))
    assert got["percentile_max"] == np.percentile(wide32.astype(np.float64), 99.5)
    wide64 = rng.integers(-(2**62), 2**62, 5000, dtype=np.int64)
    got = compute_stats(wide64, chunk_shape=(999,))
    assert got["min"] == float(wide64.min())
    assert got["median"] == np.median(wide64.astype(np.float64))
    # beyond 2**53 neighbouring int64 values share a float64: no crash, close results
    huge = 2**60 + rng.integers(0, 5000, 3000, dtype=np.int64)
    got = compute_stats(huge, chunk_shape=(256,))
    assert_stats_close(got, numpy_stats(huge), rtol=1e-12)


def test_floats_across_many_magnitudes():
    rng = np.random.default_rng(4)
    data = rng.standard_normal(20000) * 10.0 ** rng.integers(-30, 30, 20000)
    got = compute_stats(data, chunk_shape=(1500,))
    expected = numpy_stats(data)
    for key in ("min", "max", "median", "percentile_min", "percentile_max", "percentile_median"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "uint64"])
def test_histogram_refinement_without_collecting(dtype, monkeypatch):
    """Narrow by histograms down to single keys, never collecting candidates."""
    rng = np.random.default_rng(13)
    data = random_volume(rng, dtype, (21, 22, 23))
    if dtype == "float64":
        data = data * 10.0 ** rng.integers(-20, 20, data.shape)
    collected = compute_stats(data, chunk_shape=(8, 8, 8))
    monkeypatch.setattr(mlarray.stats, "_COLLECT_LIMIT", 0)
    wrapped = RecordingArray(data)
    refined = compute_stats(wrapped, chunk_shape=(8, 8, 8))
    assert refined == collected
    assert_stats_close(refined, numpy_stats(data))
    assert wrapped.elements_read >= 3 * data.size


def test_float32_order_statistics_within_one_ulp_of_numpy():
    data = np.random.default_rng(5).random((64, 64)).astype(np.float32)
    got = compute_stats(data, chunk_shape=(7, 64), percentiles=(1, 99))
    for key, q in (("percentile_min", 1), ("percentile_max", 99), ("median", 50)):
        assert abs(got[key] - float(np.percentile(data, q))) <= np.spacing(np.float32(got[key]))


def test_percentile_bounds_and_custom_keys():
    data = np.arange(101, dtype=np.int16)
    got = compute_stats(data, percentiles=(0, 100))
    assert got["percentile_min"] == 0 and got["percentile_max"] == 100
    assert got["percentile_mean"] == got["mean"] == 50
    assert got["percentile_min_key"] == 0.0 and got["percentile_max_key"] == 100.0
    got = compute_stats(data, percentiles=(10, 10))
    assert got["percentile_min"] == got["percentile_max"] == got["percentile_median"] == 10


# ----------------------------------------------------------------------------- special inputs


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nans_are_ignored(dtype):
    rng = np.random.default_rng(6)
    data = random_volume(rng, dtype, (20, 30))
    data[rng.random(data.shape) < 0.2] = np.nan
    got = compute_stats(data, chunk_shape=(3, 7))
    assert_stats_close(got, numpy_stats(data))
    assert got["median"] == pytest.approx(float(np.nanmedian(data.astype(np.float64))), rel=RTOL)


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8", "bool"])
def test_constant_volume(dtype):
    data = np.full((9, 10, 11), 1 if dtype == "bool" else 7, dtype=dtype)
    got = compute_stats(data, chunk_shape=(4, 4, 4))
    value = 1.0 if dtype == "bool" else 7.0
    for key in ("min", "max", "mean", "median", "percentile_min", "percentile_max"):
        assert got[key] == value, key
    assert got["percentile_mean"] == got["percentile_median"] == value
    assert got["std"] == got["percentile_std"] == 0.0


@pytest.mark.parametrize("shape", [(0,), (3, 0, 4), (0, 0)])
def test_empty_array_gives_all_none(shape):
    got = compute_stats(np.zeros(shape, dtype=np.float32))
    assert got == dict.fromkeys(STAT_KEYS)


def test_all_nan_gives_all_none():
    got = compute_stats(np.full((4, 5), np.nan))
    assert got == dict.fromkeys(STAT_KEYS)


def test_bool_counts_as_uint8():
    data = np.random.default_rng(7).random((40, 40)) < 0.25
    got = compute_stats(data, chunk_shape=(8, 8))
    assert_stats_close(got, numpy_stats(data.astype(np.uint8)))


def test_zero_dimensional_array():
    got = compute_stats(np.array(3.5, dtype=np.float32))
    assert got["min"] == got["max"] == got["median"] == got["percentile_median"] == 3.5
    assert got["std"] == 0.0


def test_non_native_byte_order():
    data = np.random.default_rng(8).integers(-500, 500, (30, 30)).astype(">i4")
    assert_stats_close(compute_stats(data, chunk_shape=(7, 7)), numpy_stats(data))


def test_infinities_are_values():
    data = np.array([1.0, 2.0, np.inf, -np.inf, 3.0, np.nan])
    got = compute_stats(data, chunk_shape=(2,))
    assert got["min"] == -np.inf and got["max"] == np.inf
    assert got["median"] == 2.0


def test_blosc2_ndarray_uses_its_chunks():
    data = random_volume(np.random.default_rng(9), "int16", (40, 50, 60))
    arr = blosc2.asarray(data, chunks=(16, 20, 30), blocks=(8, 10, 10))
    assert_stats_close(compute_stats(arr), numpy_stats(data))


@pytest.mark.parametrize(
    "percentiles", [(99.5, 0.5), (-1, 50), (50, 101), (1,), (1, 2, 3), "ab", None]
)
def test_bad_percentiles(percentiles):
    with pytest.raises(MetaValidationError) as info:
        compute_stats(np.arange(10), percentiles=percentiles)
    assert info.value.field == "percentiles"


@pytest.mark.parametrize("chunk_shape", [(2,), (2, 0), (2, "x")])
def test_bad_chunk_shape(chunk_shape):
    with pytest.raises(MetaValidationError) as info:
        compute_stats(np.zeros((4, 4)), chunk_shape=chunk_shape)
    assert info.value.field == "chunk_shape"


@pytest.mark.parametrize("dtype", ["complex64", "U3", "O"])
def test_unordered_dtypes_are_rejected(dtype):
    with pytest.raises(MetaValidationError):
        compute_stats(np.zeros(4, dtype=dtype))


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "int64"])
def test_never_reads_more_than_one_chunk(dtype):
    data = random_volume(np.random.default_rng(10), dtype, (30, 40, 50))
    wrapped = RecordingArray(data)
    chunk = (7, 9, 50)
    got = compute_stats(wrapped, chunk_shape=chunk)
    assert 0 < wrapped.largest_read <= math.prod(chunk)
    if np.dtype(dtype).itemsize > 2:
        assert wrapped.elements_read >= 2 * data.size  # several streaming passes
    assert_stats_close(got, numpy_stats(data))


def test_uses_the_array_chunks_attribute():
    data = random_volume(np.random.default_rng(11), "float32", (20, 30, 40))
    wrapped = RecordingArray(data, chunks=(5, 6, 7))
    compute_stats(wrapped)
    assert wrapped.largest_read <= 5 * 6 * 7


def test_default_slabs_along_axis_0():
    data = np.zeros((40, 256, 512), dtype=np.uint8)  # 5 MiB: 16 rows per 2**21 elements
    wrapped = RecordingArray(data)
    compute_stats(wrapped)
    assert wrapped.largest_read == 16 * 256 * 512
    assert wrapped.reads == 3


def test_small_types_need_a_single_pass():
    data = random_volume(np.random.default_rng(12), "int16", (25, 35, 45))
    wrapped = RecordingArray(data)
    compute_stats(wrapped, chunk_shape=(10, 10, 10))
    assert wrapped.elements_read == data.size


# ----------------------------------------------------------------------------- big chunks


@pytest.mark.parametrize(
    ("shape", "chunks", "blocks", "dtype"),
    [
        ((37, 41, 23), (37, 41, 23), (8, 16, 8), "int16"),  # one chunk, ragged blocks
        ((37, 41, 23), (20, 30, 23), (8, 16, 8), "float64"),  # chunks ragged too: 4 passes
        ((50, 60), (50, 60), (7, 60), "uint8"),  # blocks of whole rows, ragged
        ((30, 40, 50), (16, 40, 50), (4, 40, 50), "float32"),  # whole rows of blocks
        ((1000,), (999,), (100,), "int64"),
        ((64, 30, 8), (8, 30, 8), (4, 30, 8), "int16"),  # pieces spanning chunks
        ((66, 30, 8), (8, 30, 8), (4, 30, 8), "float32"),  # ... then a ragged one
    ],
)
def test_blosc2_arrays_in_pieces_smaller_than_their_chunks(
    shape, chunks, blocks, dtype, monkeypatch
):
    """A Blosc2 array is read a few blocks at a time, whatever its chunks: with pieces
    much smaller than a chunk (and blocks whose padding must be left out), the
    statistics are numpy's."""
    monkeypatch.setattr(mlarray.stats, "_SLAB_ELEMENTS", 3 * math.prod(blocks) + 5)
    data = random_volume(np.random.default_rng(21), dtype, shape)
    if dtype.startswith("float"):
        data[data > 600] = np.nan
    arr = blosc2.asarray(data, chunks=chunks, blocks=blocks)
    assert_stats_close(compute_stats(arr), numpy_stats(data), rtol=1e-12)


def test_arrays_with_big_chunks_are_read_in_slabs():
    """Another array with a ``chunks`` attribute bigger than a slab is read in slabs of
    at most ``_SLAB_ELEMENTS`` elements inside each chunk."""
    data = random_volume(np.random.default_rng(22), "int16", (40, 256, 512))
    wrapped = RecordingArray(data, chunks=(40, 256, 512))  # 5 Mi elements, one chunk
    got = compute_stats(wrapped)
    assert wrapped.largest_read <= mlarray.stats._SLAB_ELEMENTS
    assert wrapped.elements_read == data.size
    assert_stats_close(got, numpy_stats(data))


STATS_OF_FILE = """
import resource, sys, numpy as np
from mlarray import MLArray
m = MLArray.open(sys.argv[1])
vm = status("VmSize") << 10  # a regression fails here instead of taking gigabytes
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
before = status("VmRSS")
st = m.compute_stats()
print(st.min, st.max, st.mean, st.median, st.std)
"""


def test_a_file_stored_as_one_chunk_needs_no_chunk_sized_memory(tmp_path):
    """A 128 MiB int16 volume stored as one chunk (``chunk_size`` = the shape: one chunk
    per case) is summarised with less extra memory than half the volume (a few slabs of
    2**21 values); it used to take ~13 times the volume (a 1 GiB chunk of a 259-byte
    file: 24 GB)."""
    from mlarray import MLArray
    from tests._children import peak_rss_growth

    shape = (128, 512, 1024)
    data = np.resize(np.arange(-1000, 2001, dtype=np.int16), shape)
    path = tmp_path / "onechunk.mla"
    MLArray(data, patch_size=None, chunk_size=shape, block_size=(8, 128, 128)).save(path)
    assert MLArray.open(path).meta.blosc2.chunk_size == list(shape)
    growth = peak_rss_growth(STATS_OF_FILE.replace("print(", 'print("stats", '), path)
    assert growth < data.nbytes // 2, growth
    got = MLArray.open(path).compute_stats()
    values = data.reshape(-1)
    assert (got.min, got.max) == (values.min(), values.max())
    assert got.mean == pytest.approx(values.mean(dtype=np.float64), rel=1e-12)
    assert got.median == np.median(values)
    assert got.percentile_min == np.percentile(values, 0.5)
    assert got.percentile_max == np.percentile(values, 99.5)


UNDER_LIMIT = """
import os
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import resource, sys, numpy as np
np.ones((2, 2)) @ np.ones((2, 2))
from mlarray import MLArray
from mlarray.errors import CorruptChunkError, MLArrayMemoryError
from napari_mlarray import _console
path = sys.argv[1]
m = MLArray.open(path)
vm = next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[2]), vm + int(sys.argv[2])))
try:
    m.compute_stats()
    print("ok")
except MLArrayMemoryError as exc:
    print("memory", path in str(exc), str(exc))
except Exception as exc:
    print("other", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("headroom", [64 << 20, 320 << 20])
def test_a_block_too_big_for_memory_is_our_error_naming_the_file(tmp_path, headroom):
    """A valid file whose one block (256 MiB) cannot be decoded in the memory left: an
    MLArrayMemoryError naming the file, whether our buffer or c-blosc2's own cannot be
    had, never a CorruptChunkError calling the file corrupt."""
    from tests._children import run_python

    path = os.fspath(tmp_path / "bigblock.mla")
    shape = (256, 1024, 1024)
    # stored data (not one repeated value, which is summed up without decoding)
    pattern = np.arange(1024, dtype=np.uint8)[None, :, None] ^ np.arange(1024, dtype=np.uint8)
    data = np.ascontiguousarray(np.broadcast_to(pattern, shape))
    blosc2.asarray(data, chunks=shape, blocks=shape, urlpath=path, mode="w")
    del data
    assert os.path.getsize(path) < 64 << 20
    out = run_python(UNDER_LIMIT, path, headroom).strip()
    assert out.startswith("memory True"), out


CONSTANT_CLAIM = """
import sys
from mlarray import MLArray
s = MLArray.open(sys.argv[1]).compute_stats()
keys = "min max mean std median percentile_min percentile_max percentile_median".split()
# this process's peak RSS in kB (ru_maxrss would carry the parent's over exec)
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(*(getattr(s, k) for k in keys), peak)
"""


def test_chunks_stored_as_one_value_are_summed_up_not_decoded(tmp_path):
    """A 4 KB file claiming 64 GiB of 7s (Blosc2 stores each chunk as the value): its
    statistics come from the chunk count, in a child that would otherwise run for about
    14 minutes (13 s per GiB claimed, every value decoded) and is stopped after 120 s."""
    from tests._children import run_python

    path = tmp_path / "claim.mla"
    shape, chunks = (4096, 4096, 4096), (256, 1024, 1024)
    blosc2.full(
        shape,
        7,
        dtype=np.uint8,
        chunks=chunks,
        blocks=(16, 256, 256),
        urlpath=os.fspath(path),
        mode="w",
    )
    assert path.stat().st_size < 64 << 10
    *stats, peak_kb = run_python(CONSTANT_CLAIM, path, timeout=120).split()
    assert [float(v) for v in stats] == [7, 7, 7, 0, 7, 7, 7, 7]
    assert int(peak_kb) < 400 << 10  # nothing the size of a chunk (256 MiB) was held


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_zero_nan_and_value_chunks_mixed_with_data_give_numpys_statistics(tmp_path, dtype):
    """Chunks stored as zeros, NaN or a repeated value among chunks of data: every
    statistic as numpy's on the decoded array (each such chunk counted as its elements
    inside the array, edge chunks included)."""
    rng = np.random.default_rng(3)
    shape = (45, 37, 29)
    path = os.fspath(tmp_path / "mixed.mla")
    # every chunk the value 9 (stored as such), then zeros and data written over some
    arr = blosc2.full(shape, 9, dtype=dtype, chunks=(16, 16, 16), blocks=(8, 8, 8), urlpath=path)
    arr[:16] = 0
    arr[32:] = rng.integers(-50, 200, size=(13, 37, 29)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        arr[16:32, 16:32] = np.nan
        arr[32:, :3, :3] = np.nan
    specials = {(arr.schunk.get_lazychunk(i)[31] >> 4) & 7 for i in range(arr.schunk.nchunks)}
    assert {0, 1, 3} <= specials  # data, zeros and a value
    a = arr[...]
    del arr
    from mlarray import MLArray

    got = MLArray.open(path).compute_stats().to_mapping()
    v = a[~np.isnan(a)] if np.dtype(dtype).kind == "f" else a.ravel()
    v = v.astype(np.float64)
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 99.5)
    inside = v[(v >= lo) & (v <= hi)]
    assert (got["min"], got["max"], got["median"]) == (v.min(), v.max(), np.median(v))
    assert (got["percentile_min"], got["percentile_max"]) == (lo, hi)
    assert got["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert got["std"] == pytest.approx(v.std(), rel=1e-9)
    assert got["percentile_median"] == np.median(inside)
    assert got["percentile_mean"] == pytest.approx(inside.mean(), rel=1e-12)
    assert got["percentile_std"] == pytest.approx(inside.std(), rel=1e-9)


def test_blosc2_arrays_whose_blocks_do_not_decode_alone(monkeypatch):
    """With the DELTA filter a block decoded alone comes out wrong, and a chunk marked
    uninitialised decodes to nothing: such arrays are still numpy's statistics (the
    never-written chunks count as zeros, as mlarray reads them)."""
    monkeypatch.setattr(mlarray.stats, "_SLAB_ELEMENTS", 5000)
    data = random_volume(np.random.default_rng(23), "int32", (40, 50, 60))
    cparams = {"filters": [blosc2.Filter.DELTA, blosc2.Filter.SHUFFLE], "filters_meta": [0, 0]}
    delta = blosc2.asarray(data, chunks=(20, 50, 60), blocks=(5, 25, 30), cparams=cparams)
    assert_stats_close(compute_stats(delta), numpy_stats(data), rtol=1e-12)
    fresh = blosc2.uninit(data.shape, dtype=np.int32, chunks=(10, 50, 60), blocks=(5, 25, 30))
    fresh[0:10] = data[0:10]
    want = np.zeros_like(data)
    want[0:10] = data[0:10]
    assert_stats_close(compute_stats(fresh), numpy_stats(want), rtol=1e-12)
