"""MLArray pickles cheaply (data-loader workers): files as their path, memory compressed."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pytest

from mlarray import Meta, MLArray


@pytest.fixture
def saved(tmp_path):
    data = np.random.default_rng(0).integers(0, 500, (40, 50, 60), dtype=np.int16)
    p = tmp_path / "v.mla"
    MLArray(data, spacing=[2.0, 1.0, 1.0], meta={"extra": {"case": 7}}).save(p)
    return p, data


def test_opened_file_pickles_as_its_path_and_reopens_lazily(saved):
    p, data = saved
    a = MLArray.open(p)
    a.meta.extra.data = {"case": 8}  # unsaved metadata edits travel too
    blob = pickle.dumps(a)
    assert len(blob) < 5_000, "the pickled handle must not carry the array"
    b = pickle.loads(blob)
    assert b.path == p and b.chunks == a.chunks and b.spacing == [2.0, 1.0, 1.0]
    assert b.meta.extra.data == {"case": 8}
    np.testing.assert_array_equal(b[5:9, 10:20, -5:], data[5:9, 10:20, -5:])


def test_writable_file_reopens_writable(saved):
    p, _ = saved
    b = pickle.loads(pickle.dumps(MLArray.open(p, mmap_mode="r+")))
    b[0, 0, 0] = 123
    b.close()
    assert MLArray.open(p)[0, 0, 0] == 123


@pytest.mark.parametrize("compressed", [True, False])
def test_in_memory_arrays_roundtrip(compressed):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a = MLArray(data, spacing=[1, 2, 3], compressed=compressed)
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(b.to_numpy(), data)
    assert b.spacing == [1.0, 2.0, 3.0] and b.chunks == a.chunks
    b[0, 0, 0] = 99
    assert a[0, 0, 0] == 0, "the unpickled copy is independent"


def test_copy_on_write_edits_survive_pickling(saved):
    p, _ = saved
    a = MLArray.open(p, mmap_mode="c")
    a[0] = -1
    b = pickle.loads(pickle.dumps(a))
    assert (b[0] == -1).all() and (MLArray.open(p)[0] != -1).any()


def test_metadata_only_roundtrip():
    a = MLArray(meta=Meta.from_mapping({"bbox": {"bboxes": [[[0, 1], [2, 3]]]}}))
    b = pickle.loads(pickle.dumps(a))
    assert b.shape is None and b.meta.bbox.bboxes == [[[0, 1], [2, 3]]]


def _patch_sum(arr: MLArray) -> int:
    return int(arr[10:20, 10:20, 10:20].astype(np.int64).sum())


def test_worker_processes_read_patches(saved):
    p, data = saved
    a = MLArray.open(p)
    with mp.get_context("spawn").Pool(2) as pool:
        got = pool.map(_patch_sum, [a, a])
    assert got == [int(data[10:20, 10:20, 10:20].astype(np.int64).sum())] * 2


def test_a_file_replaced_after_pickling_is_refused_not_paired_with_the_old_metadata(tmp_path):
    # a worker unpickling a handle of a case re-saved meanwhile got the new voxels with the
    # old spacing / is_seg / boxes
    from mlarray.errors import FileChangedError

    p = tmp_path / "case.mla"
    MLArray(np.zeros((4, 5, 6), np.uint8), spacing=[1.0, 1.0, 1.0]).save(p)
    blob = pickle.dumps(MLArray.open(p))
    again = pickle.loads(blob)  # unchanged file: reopens
    assert again.spacing == [1.0, 1.0, 1.0] and again.shape == (4, 5, 6)
    MLArray(np.ones((5, 6, 7), np.uint8), spacing=[2.0, 2.0, 2.0], meta=Meta(is_seg=True)).save(p)
    with pytest.raises(FileChangedError, match=r"case\.mla"):
        pickle.loads(blob)
    fresh = pickle.loads(pickle.dumps(MLArray.open(p)))  # pickled anew: the new version
    assert fresh.shape == (5, 6, 7) and fresh.spacing == [2.0, 2.0, 2.0] and fresh.meta.is_seg


def _error_samples():
    """One instance of every error class a user can meet, with its attributes set."""
    import inspect

    from mlarray import errors
    from mlarray._dataset import SchedulerError
    from mlarray._preview import PreviewError
    from mlarray.convert import ConversionError

    samples = []
    classes = [getattr(errors, n) for n in errors.__all__]
    classes += [SchedulerError, PreviewError, ConversionError]
    for cls in classes:
        try:
            params = list(inspect.signature(cls).parameters)
        except ValueError:  # the builtin's __init__: one message
            params = []
        if params[:2] == ["path", "message"]:
            extra = {"errno": 28, "chunk": 3, "size": 10, "was": 20}
            kwargs = {k: extra[k] for k in params[2:] if k in extra}
            samples.append(cls("/data/case 1.mla", "what is wrong", **kwargs))
        elif params[:1] == ["path"]:
            samples.append(cls("/data/case 1.mla"))
        elif params[:2] == ["field", "message"]:
            samples.append(cls("spacing", "what is wrong"))
        else:
            samples.append(cls("/data/case 1.mla: what is wrong"))
    return samples


@pytest.mark.parametrize("err", _error_samples(), ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_message_and_attributes(err):
    """Worker processes send errors to the parent pickled: ours failed to unpickle
    (``__init__`` takes the path and the message apart), which hung Pool.map."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err) and back.args == err.args
    assert vars(back) == vars(err)
    if isinstance(err, OSError):
        assert back.errno == err.errno


def _sum_of(path):
    return float(MLArray.open(path)[...].sum())


def test_a_damaged_file_in_a_process_pool_raises_its_error_in_the_parent(saved, tmp_path):
    """One bad file among many in a multiprocessing.Pool / ProcessPoolExecutor: the
    parent gets our error naming the file (the pool hung or broke before)."""
    from concurrent.futures import ProcessPoolExecutor

    from mlarray.errors import MLArrayFormatError

    p, data = saved
    bad = tmp_path / "not really.mla"
    bad.write_bytes(b"hello")
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        result = pool.map_async(_sum_of, [p, bad])
        with pytest.raises(MLArrayFormatError, match=r"not really\.mla") as info:
            result.get(timeout=60)
    assert info.value.path == str(bad)
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = [ex.submit(_sum_of, q) for q in (p, bad)]
        assert futures[0].result(timeout=60) == float(data.sum())
        with pytest.raises(MLArrayFormatError, match=r"not really\.mla"):
            futures[1].result(timeout=60)
