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
        view[None]
    with pytest.raises(TypeError):
        view[0.5]
    with pytest.raises(IndexError):
        view[np.array([4]), 0]


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


FANCY = [  # for a view of shape (6, 4, 3, 5)
    (np.array([0, 2, 5]), np.array([1, 0, 3]), np.array([2, 2, 0]), np.array([4, 1, 2])),
    (np.array([-1, 0]), slice(1, 3), 2, np.array([0, -1])),
    (1, slice(None), np.array([2, 1]), slice(None, None, -2)),
    (np.array([True, False, False, False, False, True]), Ellipsis, np.array([0, 4])),
    (np.array([], int), np.array([], int), np.array([], int), np.array([], int)),
    ([2, 0], 1),
]


@pytest.mark.parametrize("key", FANCY, ids=range(len(FANCY)))
def test_integer_array_indexing_matches_numpy(arr, key):
    """napari's Labels reads ``data[tuple of index arrays]`` before each brush stroke."""
    perm, flip = (3, 1, 0, 2), (True, False, False, True)
    view = LazyView(arr, perm=perm, flip=flip)
    ref = reference(arr, perm, flip, arr.dtype)
    np.testing.assert_array_equal(view[key], ref[key])


def test_integer_array_indexing_reads_the_box_of_the_indices(arr):
    src = CountingArray(arr)
    view = LazyView(src, perm=(3, 1, 0, 2))
    key = (np.array([1, 2]), np.array([1, 1]), np.array([0, 1]), np.array([2, 3]))
    np.testing.assert_array_equal(view[key], np.transpose(arr, (3, 1, 0, 2))[key])
    assert src.reads == [2 * 1 * 2 * 2]


def test_a_write_copies_the_view_and_leaves_the_source(arr):
    source = arr.copy()
    perm, flip = (3, 1, 0, 2), (True, False, False, True)
    view = LazyView(source, perm=perm, flip=flip, path="/data/seg.mla")
    ref = reference(arr, perm, flip, arr.dtype)
    plane = view[2]  # a lazy view of the view (napari's channel split, slicing)
    assert not view.writable
    key = (np.array([2, 2, 5]), np.array([0, 3, 3]), np.array([1, 1, 2]), np.array([0, 2, 1]))
    view[key] = 7  # how napari's brush writes: Labels.data_setitem
    view[0, :, 1] = -3
    ref[key] = 7
    ref[0, :, 1] = -3
    assert view.writable
    np.testing.assert_array_equal(source, arr)  # the file's array is never written
    np.testing.assert_array_equal(np.asarray(view), ref)
    np.testing.assert_array_equal(view[key], ref[key])
    np.testing.assert_array_equal(view[1:4, ::-1], ref[1:4, ::-1])
    np.testing.assert_array_equal(np.asarray(plane), ref[2])
    # what the writer saves: the copy, also through the transpose back to stored order
    assert view.simplified() is view._written
    back = LazyView(view, perm=np.argsort(perm)).simplified()
    np.testing.assert_array_equal(np.asarray(back), np.transpose(ref, np.argsort(perm)))


def test_a_view_larger_than_the_budget_refuses_writes_naming_the_file(arr, monkeypatch):
    from mlarray.errors import ReadOnlyError
    from napari_mlarray import _lazy

    view = LazyView(LazyView(arr, path="/data/seg.mla"), perm=(1, 0, 2, 3))
    monkeypatch.setattr(_lazy, "MAX_EAGER_LABELS_BYTES", arr.nbytes - 1)
    with pytest.raises(ReadOnlyError, match=r"^/data/seg\.mla: .*on demand.*mmap_mode='r\+'"):
        view[0, 0, 0, 0] = 1
    assert not view.writable
    monkeypatch.setattr(_lazy, "MAX_EAGER_LABELS_BYTES", arr.nbytes)
    view[0, 0, 0, 0] = 5000
    assert view[0, 0, 0, 0] == 5000 and arr.max() < 1000


def test_astype_casts_each_read_as_numpy_and_reads_nothing():
    data = np.array([[-2.7, -0.5, 0.0], [0.5, 2.9, 300.2]], np.float32)
    source = CountingArray(data[None].repeat(4, axis=0))
    view = LazyView(source, perm=(2, 0, 1), flip=(True, False, False), path="/data/seg.mla")
    ref = np.flip(np.transpose(source.data, (2, 0, 1)), axis=0)
    cast = view.astype(int)  # napari's Convert to Labels of a float image
    assert source.reads == [] and cast.shape == view.shape and cast.dtype == np.dtype(int)
    assert cast.path == "/data/seg.mla"
    np.testing.assert_array_equal(cast[1:, 2], ref[1:, 2].astype(int))
    np.testing.assert_array_equal(np.asarray(cast.astype(np.uint16)), ref.astype(int).astype("u2"))
    assert view.astype(np.float32, copy=False) is view
    with pytest.raises(TypeError, match="according to the rule 'safe'"):
        view.astype(np.int16, casting="safe")
    cast[0, 0, 0] = 9  # painting the cast copies it; the view it came from is untouched
    assert cast[0, 0, 0] == 9 and view[0, 0, 0] == ref[0, 0, 0]
    widened = cast.astype(np.int64)  # a written view casts its copy, as numpy
    assert isinstance(widened, np.ndarray) and widened[0, 0, 0] == 9


def test_simplified_undoes_reversed_axes_too(arr):
    """The reader shows axes reversed in the data; saving puts them back: the two views
    merge to the file's own array (whose chunks a save copies as they are)."""
    perm, flip = (2, 0, 3, 1), (True, False, True, False)
    shown = LazyView(arr, perm=perm, flip=flip)
    back = LazyView(shown, perm=np.argsort(perm), flip=[flip[k] for k in np.argsort(perm)])
    assert back.simplified() is arr
    partly = LazyView(shown, perm=np.argsort(perm)).simplified()  # reversals left: one view
    assert isinstance(partly, LazyView) and partly.source is arr
    np.testing.assert_array_equal(np.asarray(partly), arr[:, :, ::-1, ::-1])
