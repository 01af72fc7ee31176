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


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(_AXIS_KEY, st.just(None), st.just(Ellipsis)), max_size=4).map(tuple)
    | _AXIS_KEY
)
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
