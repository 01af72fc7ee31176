"""Bounded fuzzing (hypothesis): the record decoder, and mutated frames through every operation.

The frame fuzz writes a batch of mutated files per example and runs them in one
capped child process (``reliability_harness.py``), so a crash fails the test
instead of killing pytest. A longer run: ``python scripts/fuzz_frames.py``.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlarray import MLArray
from mlarray.errors import MLArrayError
from mlarray.frame import inspect_frame
from mlarray.record import decode_record
from tests.test_reliability import run_hostile

_GOOD_RECORD = pickle.dumps(
    {
        "source": {"data": {"a": [1, 2.5, "x", None, True]}},
        "spatial": {"spacing": [1.0, 2.0], "axis_labels": ["spatial_y", "spatial_x"]},
        "bbox": {"bboxes": [[[0, 1], [2, 3]]], "scores": [0.5], "labels": ["t"]},
        "_has_array": {"has_array": True},
    },
    protocol=4,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_on_random_bytes_raises_only_ours(data):
    for raw in (data, gzip.compress(data, mtime=0)):
        with contextlib.suppress(MLArrayError):
            decode_record(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_GOOD_RECORD) - 1), st.integers(0, 255)), max_size=6))
def test_decoder_on_mutated_records_raises_only_ours(edits):
    b = bytearray(_GOOD_RECORD)
    for pos, val in edits:
        b[pos] = val
    try:
        out = decode_record(gzip.compress(bytes(b), mtime=0))
    except MLArrayError:
        return
    assert type(out) is dict


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids),
        max_leaves=20,
    )
)
def test_decoder_roundtrips_plain_records(value):
    raw = gzip.compress(pickle.dumps({"k": value}, protocol=4), mtime=0)
    out = decode_record(raw)
    assert repr(out) == repr({"k": value})  # repr: NaN equals NaN, float bits exact


def test_decoder_refuses_a_zlib_stream_that_is_not_gzip():
    with pytest.raises(MLArrayError):
        decode_record(zlib.compress(_GOOD_RECORD))


@pytest.fixture(scope="module")
def base_frame(tmp_path_factory):
    p = tmp_path_factory.mktemp("fuzz") / "base.mla"
    rng = np.random.default_rng(1)
    a = (rng.normal(size=(24, 30, 36)) * 50).astype(np.int16)
    a[:12] = 0
    meta_boxes = MLArray(a, patch_size=None, chunk_size=(12, 15, 18), block_size=(6, 15, 9))
    meta_boxes.meta.bbox.bboxes = [[[1, 5], [2, 9], [3, 7]]]
    meta_boxes.save(p)
    buf = p.read_bytes()
    info = inspect_frame(buf)
    # structural bytes (header, chunk headers, offsets, trailer) are mutated more often
    hot = list(range(info.header_len))
    for pos in info.chunk_pos[info.chunk_pos >= 0]:
        hot += range(int(pos), int(pos) + 48)
    hot += range(info.header_len + info.cbytes, len(buf))
    return buf, sorted(set(hot))


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_frames_through_open_load_slice_stats_reader(tmp_path, base_frame, data):
    buf, hot = base_frame
    paths = []
    for n in range(30):
        edits = data.draw(
            st.lists(
                st.tuples(
                    st.one_of(st.sampled_from(hot), st.integers(0, len(buf) - 1)),
                    st.integers(0, 255),
                ),
                min_size=1,
                max_size=4,
            )
        )
        b = bytearray(buf)
        for pos, val in edits:
            b[pos] = val
        p = tmp_path / f"m{n}.mla"
        p.write_bytes(bytes(b))
        paths.append(p)
    run_hostile(paths, ops="open,load,read,slice,stats,reader")


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    """A file with a 4x4x4 chunk grid (uneven edge chunks) and its chunk-number map."""
    path = tmp_path_factory.mktemp("grid") / "grid.mla"
    shape, chunks = (13, 17, 11), (4, 5, 3)
    MLArray(
        np.zeros(shape, np.int16), patch_size=None, chunk_size=chunks, block_size=(2, 5, 3)
    ).save(path)
    idx = np.indices(shape)
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))
    ids = np.ravel_multi_index(tuple(i // c for i, c in zip(idx, chunks, strict=True)), grid)
    return path, ids


_AXIS_KEY = st.one_of(
    st.integers(-20, 20),
    st.builds(
        slice,
        st.none() | st.integers(-20, 20),
        st.none() | st.integers(-20, 20),
        st.none() | st.sampled_from([1, 1, 2, 3, -1, -2]),
    ),
    st.lists(st.integers(-13, 12), min_size=1, max_size=4).map(np.array),
)


@st.composite
def numpy_keys(draw, shape):
    """Keys numpy accepts (mostly) for ``shape``: ints, slices with any step, lists, integer
    arrays, boolean masks of any number of dimensions in any position, 0-d booleans
    (``True``, ``np.False_``: a new axis, no axis consumed), None and one Ellipsis."""
    kinds = draw(
        st.lists(
            st.sampled_from(["int", "slice", "ints", "list", "mask", "bool0", "none", "ellipsis"]),
            max_size=5,
        )
    )
    if kinds.count("ellipsis") > 1:
        first = kinds.index("ellipsis")
        kinds = [k for i, k in enumerate(kinds) if k != "ellipsis" or i == first]
    # how many axes each item consumes (a mask: 1 to all that are left)
    ndims = []
    for kind in kinds:
        if kind in ("none", "ellipsis", "bool0"):
            ndims.append(0)
        elif kind == "mask":
            left = len(shape) - sum(ndims)
            ndims.append(draw(st.integers(1, max(left, 1))))
        else:
            ndims.append(1)
    fill = max(len(shape) - sum(ndims), 0)
    length = draw(st.integers(1, 4))  # of every index list: so that they broadcast together
    key, axis = [], 0
    for kind, nd in zip(kinds, ndims, strict=True):
        n = shape[axis] if axis < len(shape) else 1
        if kind == "none":
            key.append(None)
        elif kind == "ellipsis":
            key.append(Ellipsis)
            axis += fill
        elif kind == "bool0":
            key.append(draw(st.sampled_from([True, False, np.True_, np.False_])))
        elif kind == "int":
            key.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-n - 2, n + 2)
            step = st.none() | st.sampled_from([1, 2, 3, -1, -2, -5])
            key.append(slice(draw(bound), draw(bound), draw(step)))
        elif kind in ("ints", "list"):
            idx = draw(st.lists(st.integers(-n, n - 1), min_size=length, max_size=length))
            key.append(np.array(idx) if kind == "ints" else idx)
        else:
            mshape = tuple(shape[axis : axis + nd])
            rng = np.random.default_rng(draw(st.integers(0, 2**16)))
            density = draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
            key.append(rng.random(mshape) < density)
        axis += nd
    return tuple(key) if draw(st.booleans()) or len(key) != 1 else key[0]


_KEYS = (
    st.lists(st.one_of(_AXIS_KEY, st.just(None), st.just(Ellipsis)), max_size=4).map(tuple)
    | _AXIS_KEY
    | numpy_keys((13, 17, 11))
)


@settings(max_examples=600, deadline=None)
@given(_KEYS)
def test_key_bounds_is_the_bounding_box_of_numpys_selection(key):
    """For every key numpy accepts, key_bounds works it out (no fallback needed) and it is
    exactly the box from the lowest to the highest index numpy selects on each axis."""
    from mlarray.indexing import key_bounds, numpy_accepts

    shape = (13, 17, 11)
    coords = np.indices(shape)
    try:
        picked = [c[key] for c in coords]
    except (IndexError, TypeError, ValueError):  # numpy refuses the key
        assert not numpy_accepts(key, shape)
        with pytest.raises(IndexError):
            key_bounds(key, shape)
        return
    assert numpy_accepts(key, shape)
    got = key_bounds(key, shape)
    if not picked[0].size:
        assert got is None
    else:
        assert got == [(int(c.min()), int(c.max()) + 1) for c in picked]


def test_key_bounds_of_a_0d_array():
    from mlarray.indexing import key_bounds

    zero_d = np.zeros(())
    for key in [(), Ellipsis, None, True, np.True_, False, np.False_, (None, ...), (True, True)]:
        assert key_bounds(key, ()) == (None if zero_d[key].size == 0 else [])
    for key in [0, (slice(None),), (..., ...)]:
        with pytest.raises(IndexError):
            zero_d[key]
        with pytest.raises(IndexError):
            key_bounds(key, ())


@settings(max_examples=400, deadline=None)
@given(_KEYS)
def test_reads_verify_every_chunk_they_touch(grid_file, key):
    """The read hook's chunk set (fast path for patch keys, general path otherwise)
    covers every chunk numpy's indexing touches, and for patch keys nothing more."""
    from mlarray import integrity

    path, ids = grid_file
    try:
        want = {int(i) for i in np.unique(ids[key])}
    except (IndexError, TypeError, ValueError):  # numpy refuses the key: so does the read
        return
    arr = MLArray.open(path)
    store = arr._store
    integrity.forget_verified(store)
    integrity.verify_read(store, key)
    checked = store._mlarray_verifier.checked
    got = {i for i in range(len(checked)) if checked[i]}
    assert want <= got
    items = key if isinstance(key, tuple) else (key,)
    if ids[key].size and all(
        type(k) is int or (type(k) is slice and k.step in (None, 1)) for k in items
    ):
        assert got == want  # a patch key hashes exactly the chunks it reads


@pytest.fixture(scope="module")
def counted_file(tmp_path_factory):
    """A file whose every element differs (its flat index), on a 4x4x4 chunk grid."""
    path = tmp_path_factory.mktemp("counted") / "counted.mla"
    shape = (13, 17, 11)
    data = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    MLArray(data, patch_size=None, chunk_size=(4, 5, 3), block_size=(2, 5, 3)).save(path)
    return path, data


@settings(max_examples=300, deadline=None)
@given(numpy_keys((13, 17, 11)))
def test_reads_of_any_numpy_key_give_numpys_result(counted_file, key):
    """Masks of any ndim, 0-d booleans (``a[np.array([0]), True]`` once reached Blosc2 and
    failed in ndindex) and negative steps next to arrays read as numpy reads them."""
    path, data = counted_file
    try:
        want = data[key]
    except (IndexError, TypeError, ValueError):
        return
    for cache in (False, True):
        arr = MLArray.open(path)
        if cache:
            arr.set_chunk_cache()
        got = arr[key]
        assert got.shape == want.shape and np.array_equal(got, want)


def _inspection(buf: bytes, read_at: Any = None) -> Any:
    """What inspect_frame says of ``buf``: its findings, or the error's message."""
    try:
        info = inspect_frame(buf, "f.mla", read_at)
    except MLArrayError as exc:
        return type(exc).__name__, str(exc)
    arrays = (info.raw_offsets, info.chunk_pos, info.chunk_cbytes)
    plain = {k: v for k, v in vars(info).items() if not isinstance(v, np.ndarray)}
    return plain, [a.tolist() for a in arrays]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_chunk_headers_read_from_the_file_say_what_the_mapping_says(base_frame, data):
    """inspect_frame reading the chunk headers through ``read_at`` (pread on the file, as
    MLArray.open does) finds in a mutated frame exactly what it finds reading them
    from the bytes: the same frame, or the same error."""
    buf, hot = base_frame
    edits = data.draw(
        st.lists(st.tuples(st.sampled_from(hot), st.integers(0, 255)), min_size=1, max_size=3)
    )
    b = bytearray(buf)
    for pos, val in edits:
        b[pos] = val
    b = bytes(b)
    reads = []

    def read_at(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return b[offset : offset + size]

    assert _inspection(b, read_at) == _inspection(b)
    assert all(size <= (1 << 20) + 64 for _, size in reads)
