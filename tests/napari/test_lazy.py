"""Qt-free: the lazy transpose/flip/cast view reads only what is indexed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mlarray._lazy import LazyView


class CountingArray:
    """A numpy-backed array-like that records every read."""

    def __init__(self, data, chunks=None):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.chunks = chunks
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(np.asarray(out).size)
        return out


@pytest.fixture
def arr():
    return np.random.default_rng(0).integers(0, 1000, (3, 4, 5, 6)).astype(np.int16)


def reference(a, perm, flip, dtype):
    out = np.transpose(a, perm)
    out = np.flip(out, axis=[k for k, f in enumerate(flip) if f]) if any(flip) else out
    return out.astype(dtype)


KEYS = [
    (1,),
    (slice(1, 3), 2),
    (slice(None, None, -2), slice(1, 3), 0, slice(None, None, 3)),
    (Ellipsis, -1),
    (slice(3, 0, -1),),
    (0, 0, 0, 0),
    (slice(5, 9),),
]


@pytest.mark.parametrize("perm", [(0, 1, 2, 3), (3, 1, 0, 2), (2, 0, 3, 1)])
@pytest.mark.parametrize("flip", [(False,) * 4, (True, False, True, False), (True,) * 4])
def test_matches_numpy(arr, perm, flip):
    view = LazyView(arr, perm=perm, flip=flip, dtype=np.float32)
    ref = reference(arr, perm, flip, np.float32)
    assert view.shape == ref.shape and view.dtype == np.float32 and view.ndim == 4
    assert np.array_equal(np.asarray(view), ref)
    for key in KEYS:
        out = view[key]
        assert np.array_equal(np.asarray(out), ref[key]), key
        assert not isinstance(out, np.ndarray) or out.flags.c_contiguous, key


def test_reads_only_the_indexed_region(arr):
    src = CountingArray(arr, chunks=(1, 2, 5, 6))
    view = LazyView(src, perm=(3, 2, 1, 0))
    assert src.reads == []  # building reads nothing
    assert view.chunks == (6, 5, 2, 1)
    plane = view[2, 1]
    assert isinstance(plane, LazyView) and src.reads == []  # fixing axes stays lazy
    assert np.array_equal(np.asarray(plane), np.transpose(arr, (3, 2, 1, 0))[2, 1])
    assert src.reads == [4 * 3]
    view[:, :, 0:1, 0:1]
    assert src.reads[-1] == 6 * 5


def test_fixed_axes_and_inserted_axes(arr):
    view = LazyView(arr, fixed={1: 2}, perm=(2, 0, 1), insert=(1,))
    ref = np.expand_dims(np.transpose(arr[:, 2], (2, 0, 1)), 1)
    assert view.shape == ref.shape
    assert np.array_equal(np.asarray(view), ref)
    assert np.array_equal(view[:, 0, 1:], ref[:, 0, 1:])
    assert np.array_equal(view[1:3, :, ::2, 1], ref[1:3, :, ::2, 1])


def test_errors(arr):
    with pytest.raises(ValueError, match="permutation"):
        LazyView(arr, perm=(0, 0, 1, 2))
    view = LazyView(arr)
    with pytest.raises(IndexError):
        view[3]
    with pytest.raises(IndexError):
        view[0, 0, 0, 0, 0]
    with pytest.raises(TypeError):
        view[[0, 1]]


def test_simplified_merges_transposes_and_drops_identities(arr):
    back = LazyView(LazyView(arr, perm=(3, 1, 0, 2)), perm=(2, 1, 3, 0))
    assert back.simplified() is arr
    twice = LazyView(LazyView(arr, perm=(1, 0, 2, 3)), perm=(0, 1, 3, 2)).simplified()
    assert isinstance(twice, LazyView) and twice.source is arr
    np.testing.assert_array_equal(np.asarray(twice), arr.transpose(1, 0, 3, 2))
    flipped = LazyView(arr, flip=(True, False, False, False))
    assert flipped.simplified() is flipped
    cast = LazyView(arr, dtype=np.float32)
    assert cast.simplified() is cast
