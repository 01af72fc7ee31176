"""Reads through the wheel's libblosc2 bound with ctypes (mlarray._clib, mlarray._cstore):
the same values as python-blosc2 / MLArray give, the same errors, and no python-blosc2
import on the way (checked in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import blosc2
import numpy as np
import pytest

from mlarray import MLArray, _clib, _cstore
from mlarray._read import ChunkCache
from mlarray.errors import CorruptChunkError, IndexingError, MLArrayFormatError
from mlarray.frame import decompress_chunk_bytes, inspect_frame
from mlarray.io import save_mla
from mlarray.meta import Meta
from tests._children import reference_env, run_python
from tests.conftest import FIXTURES, fixture_names, plain_blosc2_file, undecodable_blosc2_file


def _lib_or_skip() -> _clib.CLib:
    lib = _clib.get()
    assert lib is not None, "the blosc2 wheel of this environment ships a usable libblosc2"
    return lib


def _values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.3
    if dt.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dt)
    if dt.kind == "f":
        return rng.normal(0, 100, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -5000), min(info.max, 5000), shape, endpoint=True).astype(dt)


def _keys(shape, rng):
    """Planes along every axis (first, last, middle, as ints and as 1-thick slices), the
    whole array (``...`` and explicit slices), boxes with edges inside chunks, steps."""
    nd = len(shape)
    keys = [(...,), tuple(slice(0, n) for n in shape)]
    for a, n in enumerate(shape):
        for i in sorted({0, n // 2, n - 1}):
            keys.append((slice(None),) * a + (i,))
            keys.append((slice(None),) * a + (slice(i, i + 1),))
        keys.append((slice(None),) * a + (-1,))
    for _ in range(6):
        box = []
        for n in shape:
            lo = int(rng.integers(0, n))
            hi = int(rng.integers(lo + 1, n + 1))
            box.append(slice(lo, hi, int(rng.choice([1, 1, 2, 3]))))
        keys.append(tuple(box))
    keys.append(tuple(slice(None, None, -1) for _ in range(nd)))
    keys.append(tuple(int(rng.integers(0, n)) for n in shape))
    return keys


LAYOUTS = [
    # shape, chunks, blocks: edge chunks and edge blocks on every axis
    ((37, 41, 23), (16, 20, 23), (5, 7, 8)),
    ((40, 48, 56), (20, 24, 28), (5, 8, 7)),
    ((9, 130), (4, 64), (4, 16)),
    ((5, 6, 7, 8), (2, 6, 4, 8), (1, 3, 4, 8)),
    ((1, 64, 64), (1, 32, 64), (1, 8, 64)),
]
DTYPES = ["bool", "uint8", "int16", "uint16", "int32", "float32", "float64", "int64", "complex64"]


@pytest.mark.parametrize(("shape", "chunks", "blocks"), LAYOUTS)
def test_every_dtype_and_key_matches_mlarray(tmp_path, shape, chunks, blocks):
    _lib_or_skip()
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    for k, dtype in enumerate(DTYPES):
        data = _values(shape, dtype, seed=k)
        p = tmp_path / f"{dtype}.mla"
        save_mla(p, data, Meta(), patch_size=None, chunk_size=chunks, block_size=blocks)
        opened = _cstore.open_cstore(p, nthreads=1 + k % 2)
        assert opened is not None
        store, meta = opened
        ref = MLArray.open(p)
        assert store.shape == tuple(ref.shape) and store.dtype == ref.dtype
        assert meta.to_mapping() == ref.meta.to_mapping()
        cache = ChunkCache()
        for key in _keys(shape, rng):
            got = _cstore.read(store, key, cache)
            want = ref[key]
            assert got.dtype == want.dtype and got.shape == want.shape, (dtype, key)
            np.testing.assert_array_equal(got, want, err_msg=f"{dtype} {key}")
            np.testing.assert_array_equal(got, data[key])
        np.testing.assert_array_equal(_cstore.read(store, ..., None), data)


def test_special_chunks_zeros_and_nans(tmp_path):
    _lib_or_skip()
    p = tmp_path / "special.mla"
    z = blosc2.zeros((40, 30, 20), dtype=np.float32, chunks=(10, 30, 20), blocks=(5, 6, 20))
    z[10:20] = 1.5  # chunk 1 holds data, the others stay special (zero) chunks
    z.save(str(p))
    n = tmp_path / "nans.mla"
    nans = blosc2.nans((20, 30), dtype=np.float64, chunks=(10, 30), blocks=(5, 30))
    nans[0:10] = 2.0
    nans.save(str(n))
    for path in (p, n):
        store, _ = _cstore.open_cstore(path)
        info = inspect_frame(path.read_bytes())
        assert (info.chunk_pos < 0).any()  # the file really has special chunks
        ref = MLArray.open(path)
        cache = ChunkCache()
        for key in _keys(store.shape, np.random.default_rng(3)):
            np.testing.assert_array_equal(_cstore.read(store, key, cache), ref[key])


@pytest.mark.parametrize(
    "cparams",
    [
        {"codec": blosc2.Codec.ZSTD, "filters": [blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA]},
        {"codec": blosc2.Codec.ZSTD, "filters": [blosc2.Filter.INT_TRUNC], "filters_meta": [2]},
    ],
    ids=["bytedelta", "int_trunc"],
)
def test_filters_registered_at_init_decode(tmp_path, cparams):
    """Filters c-blosc2 keeps in a table filled by ``blosc2_init`` (BYTEDELTA,
    INT_TRUNC): valid files using them read as through python-blosc2 (without the
    init, their chunks failed to decode and the viewer called the file corrupt)."""
    _lib_or_skip()
    p = tmp_path / "filters.mla"
    data = (np.arange(24 * 20 * 18) % 300).astype(np.int16).reshape(24, 20, 18)
    blosc2.asarray(data, chunks=(8, 10, 18), blocks=(4, 5, 9), cparams=cparams).save(str(p))
    store, _ = _cstore.open_cstore(p)
    ref = MLArray.open(p)
    cache = ChunkCache()
    for key in _keys(store.shape, np.random.default_rng(4)):
        np.testing.assert_array_equal(_cstore.read(store, key, cache), ref[key])


def test_reference_fixtures_read_the_same(tmp_path):
    _lib_or_skip()
    for name in fixture_names():
        p = FIXTURES / f"{name}.mla"
        ref = MLArray.open(p)
        opened = _cstore.open_cstore(p)
        assert opened is not None
        store, meta = opened
        assert meta.to_mapping() == ref.meta.to_mapping()
        if ref.shape is None:  # metadata-only file: an empty frame
            assert 0 in store.shape or store.shape == (0,)
            continue
        cache = ChunkCache()
        for key in _keys(store.shape, np.random.default_rng(5)):
            np.testing.assert_array_equal(_cstore.read(store, key, cache), ref[key])


def test_threads_share_the_store(tmp_path):
    _lib_or_skip()
    data = _values((48, 64, 40), np.int16, seed=4)
    p = tmp_path / "threads.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(16, 32, 40), block_size=(4, 8, 10))
    store, _ = _cstore.open_cstore(p, nthreads=2)
    cache = ChunkCache(64 * 1024)  # small: layers are evicted and decoded again
    errors = []

    def scroll(axis: int) -> None:
        try:
            for _ in range(3):
                for i in range(data.shape[axis]):
                    key = (slice(None),) * axis + (i,)
                    np.testing.assert_array_equal(_cstore.read(store, key, cache), data[key])
        except Exception as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=scroll, args=(a,)) for a in (0, 1, 2, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_planes_of_a_cached_layer_read_nothing_of_the_file(tmp_path):
    """Scrolling through a decoded block layer (the napari reader's store) copies planes
    out of the layer, as MLArray's cache does: no check of the file, no verification.
    Seen from outside: once a layer is decoded, its planes still read (as ints and as
    napari's length-1 slices) after the file was cut short in place, while a plane of
    another layer raises FileChangedError."""
    from mlarray.errors import FileChangedError

    _lib_or_skip()
    data = _values((32, 40, 48), np.int16, seed=5)
    p = tmp_path / "scroll.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(16, 20, 24), block_size=(8, 10, 12))
    store, _ = _cstore.open_cstore(p)
    cache = ChunkCache()
    np.testing.assert_array_equal(_cstore.read(store, (slice(3, 4),), cache), data[3:4])
    os.truncate(p, 100)
    for i in range(8):  # block layer 0 along axis 0: planes 0..7
        np.testing.assert_array_equal(_cstore.read(store, (i,), cache), data[i])
        got = _cstore.read(store, (slice(i, i + 1), slice(None), slice(None)), cache)
        np.testing.assert_array_equal(got, data[i : i + 1])
    with pytest.raises(FileChangedError, match=r"scroll\.mla"):
        _cstore.read(store, (8,), cache)


def test_every_way_of_asking_for_a_cached_plane_reads_the_layer(tmp_path):
    """A plane of a decoded block layer is served from the layer however it is asked for
    (ints, numpy ints, negative ints, napari's length-1 slices, ``...``, shorter keys):
    after the file is cut short in place each form still reads the array's plane, and
    its shape is numpy's. Keys that are not one plane are not taken for one (two rows,
    a strided slice, a part of a plane) and go on to read the file (FileChangedError
    now); a bool is left to ``MLArray``."""
    from mlarray.errors import FileChangedError

    _lib_or_skip()
    data = _values((30, 41, 52), np.int16, seed=8)
    p = tmp_path / "forms.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 20, 26), block_size=(5, 10, 13))
    store, _ = _cstore.open_cstore(p, nthreads=2)
    cache = ChunkCache()
    for axis in range(3):  # the block layer holding planes 10..12 along each axis
        _cstore.read(store, (slice(None),) * axis + (10,), cache)
        with pytest.raises(IndexingError):  # out of range: not a plane of any layer
            _cstore.read(store, (slice(None),) * axis + (data.shape[axis],), cache)
    os.truncate(p, 100)
    full = slice(None, None, None)
    for axis in range(3):
        n = data.shape[axis]
        for i in range(10, 13):
            pre = (full,) * axis
            for key in (
                (*pre, i),
                (*pre, i, Ellipsis),
                (*pre, np.int64(i)),
                (*pre, i - n),
                (*pre, slice(i, i + 1)),
                (*pre, slice(i, i + 1, 1)),
                (*pre, slice(i, i + 1), *(full,) * (2 - axis)),
                (Ellipsis, i) if axis == 2 else (*pre, i),
            ):
                got = _cstore.read(store, key, cache)
                want = data[key]
                assert got.shape == want.shape, key
                np.testing.assert_array_equal(got, want)
        for key in (
            (*pre, slice(10, 12)),
            (*pre, slice(10, 11, 2)),
            (*(full,) * axis, slice(10, 11), slice(0, 4)) if axis < 2 else (slice(0, 4), 1, 10),
        ):
            with pytest.raises(FileChangedError):
                _cstore.read(store, key, cache)
        assert _cstore.read(store, (*pre, True), cache) is None  # a mask: MLArray reads it
        for key in ((*pre, slice(10, 11.0)), (*pre, slice(10, 11, 1.0))):  # numpy refuses
            assert _cstore.read(store, key, cache) is None  # left to MLArray, which raises


def test_a_plane_copied_out_of_any_layer_layout_is_the_same():
    """The copies of a plane out of a block layer are worked out once per layer shape
    (raw views of the layer and the output): they give what slicing the layer gives,
    for a C-order layer of every layout (planes first, in lanes, as decoded; the last,
    thinner layer of an axis)."""
    from mlarray._read import decode_layer, layer_plane

    for shape, chunks, blocks, dtype in (
        ((30, 41, 52), (10, 20, 26), (5, 10, 13), np.int16),
        ((23, 17, 9), (9, 8, 8), (4, 4, 8), np.uint8),
        ((13, 21), (13, 8), (5, 8), np.float64),
    ):
        ref = _values(shape, dtype, seed=3)
        nd = blosc2.asarray(ref, chunks=chunks, blocks=blocks)
        for axis in range(len(shape)):
            last = (shape[axis] - 1) // chunks[axis]
            for j, g in ((0, 0), (last, ((shape[axis] - 1) % chunks[axis]) // blocks[axis])):
                layer = decode_layer(nd, axis, j, g)
                first = j * chunks[axis] + g * blocks[axis]
                for i in range(min(blocks[axis], shape[axis] - first)):
                    want = np.take(ref, first + i, axis=axis)
                    np.testing.assert_array_equal(layer_plane(nd, axis, layer, i), want)


def test_in_memory_chunks_decompress_as_blosc2_does():
    _lib_or_skip()
    raw = np.arange(10_000, dtype=np.int32).tobytes()
    for codec in (blosc2.Codec.LZ4, blosc2.Codec.ZSTD, blosc2.Codec.BLOSCLZ, blosc2.Codec.ZLIB):
        chunk = blosc2.compress2(raw, typesize=4, codec=codec)
        assert decompress_chunk_bytes(chunk) == blosc2.decompress(chunk) == raw
    lib = _clib.get()
    with pytest.raises(ValueError):
        lib.decompress_bytes(chunk[:20])


def _damaged(tmp_path, verify: bool = True):
    data = _values((30, 40, 50), np.int16, seed=7)
    p = tmp_path / "damaged.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    bad = int(np.flatnonzero(info.chunk_pos >= 0)[-1])  # the last chunk: (2, 1, 1)
    buf[int(info.chunk_pos[bad]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    return p, data, bad


def test_a_damaged_chunk_raises_ours_naming_the_file(tmp_path):
    _lib_or_skip()
    p, data, bad = _damaged(tmp_path)
    store, _ = _cstore.open_cstore(p)
    cache = ChunkCache()
    # chunks the damage is not in still read
    np.testing.assert_array_equal(_cstore.read(store, (0,), cache), data[0])
    for key in ((29,), (slice(None), 39), (...,), (slice(25, 30), slice(30, 40), slice(40, 50))):
        with pytest.raises(CorruptChunkError, match=rf"damaged\.mla.*chunk {bad} ") as err:
            _cstore.read(store, key, cache)
        assert err.value.chunk == bad


def test_an_undecodable_chunk_raises_ours_without_checksums(tmp_path):
    # A file from another tool (no checksums): c-blosc2 refuses the chunk, we name it.
    _lib_or_skip()
    p = tmp_path / "plain.mla"
    ref = _values((20, 30, 40), np.int32, seed=2)
    buf, info = plain_blosc2_file(p, ref, clevel=1)
    pos, cb = int(info.chunk_pos[1]), int(info.chunk_cbytes[1])
    data_start = 32 + 4 * 2 * 3  # header, then the block starts (2 x 3 blocks) stay intact
    # the compressed streams inverted (zeroed streams would read as zeros: a stream of
    # size 0 is a run of zeros to c-blosc2; only checksums catch that)
    buf[pos + data_start : pos + cb] = bytes(b ^ 0xFF for b in buf[pos + data_start : pos + cb])
    p.write_bytes(bytes(buf))
    store, _ = _cstore.open_cstore(p, nthreads=2)
    np.testing.assert_array_equal(_cstore.read(store, (3,), ChunkCache()), ref[3])
    for key in ((15,), (slice(None), 3), (...,)):
        with pytest.raises(CorruptChunkError, match=r"plain\.mla: cannot decompress") as err:
            _cstore.read(store, key, ChunkCache())
        assert "chunk 1" in str(err.value)


def test_a_forged_frame_is_refused_before_c_sees_it(tmp_path):
    _lib_or_skip()
    data = _values((20, 30), np.uint8)
    p = tmp_path / "forged.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 30), block_size=(5, 30))
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    pos = int(info.chunk_pos[0])
    buf[pos + 12 : pos + 16] = (10**8).to_bytes(4, "little")  # a chunk claims 100 MB
    p.write_bytes(bytes(buf))
    with pytest.raises(MLArrayFormatError, match=r"forged\.mla"):
        _cstore.open_cstore(p)
    q = tmp_path / "notaframe.mla"
    q.write_bytes(b"\x00" * 200)
    with pytest.raises(MLArrayFormatError, match=r"notaframe\.mla"):
        _cstore.open_cstore(q)


def test_keys_it_does_not_serve_and_bad_indices(tmp_path):
    _lib_or_skip()
    data = _values((10, 12), np.int16)
    p = tmp_path / "keys.mla"
    save_mla(p, data, Meta())
    store, _ = _cstore.open_cstore(p)
    for key in ((None,), (np.array([1, 2]),), (data > 0,), (slice(None), [0, 1])):
        assert _cstore.read(store, key, ChunkCache()) is None  # MLArray reads those
    with pytest.raises(IndexingError, match=r"keys\.mla"):
        _cstore.read(store, (10,), ChunkCache())


def test_unusable_library_means_no_cstore(tmp_path, monkeypatch):
    data = _values((10, 12), np.int16)
    p = tmp_path / "fallback.mla"
    save_mla(p, data, Meta())
    monkeypatch.setattr(_clib, "_package_dir", lambda: None)
    _clib.reset()
    try:
        assert _clib.get() is None
        assert _cstore.open_cstore(p) is None
        # metadata still decodes (through python-blosc2 then)
        assert MLArray.open(p).meta.to_mapping()["spatial"]["shape"] == [10, 12]
    finally:
        monkeypatch.undo()
        _clib.reset()
    assert _clib.get() is not None
    monkeypatch.setattr(_clib, "BOUND_VERSIONS", ("0.1.",))  # another c-blosc2 version
    _clib.reset()
    try:
        assert _clib.get() is None
    finally:
        monkeypatch.undo()
        _clib.reset()


def test_an_interrupted_write_is_left_to_the_full_open(tmp_path):
    from mlarray.io import journal_path

    data = _values((10, 12), np.int16)
    p = tmp_path / "journaled.mla"
    save_mla(p, data, Meta())
    journal_path(p).write_bytes(b"")  # an (empty) journal: MLArray.open recovers it
    assert _cstore.open_cstore(p) is None
    np.testing.assert_array_equal(MLArray.open(p)[...], data)
    assert not journal_path(p).exists()


def _run(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_mlarray_and_planes_without_blosc2(tmp_path):
    _lib_or_skip()
    data = _values((30, 40, 50), np.int16, seed=9)
    p = tmp_path / "fresh.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    code = f"""
import json, sys
import numpy as np
import mlarray
after_import = "blosc2" in sys.modules
from mlarray import _cstore
from mlarray._read import ChunkCache
store, meta = _cstore.open_cstore({str(p)!r})
plane = _cstore.read(store, (slice(None), 17), ChunkCache())
whole = _cstore.read(store, ..., None)
gui = sorted(m for m in sys.modules if m.split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2",
                                                          "PySide6", "napari", "vispy"))
out = {{"after_import": after_import, "after_read": "blosc2" in sys.modules, "gui": gui,
        "plane": plane.tolist(), "sum": int(whole.astype(np.int64).sum())}}
from mlarray import MLArray, MLARRAY_DEFAULT_PATCH_SIZE
out["after_mlarray"] = "blosc2" in sys.modules
out["patch"] = MLARRAY_DEFAULT_PATCH_SIZE
print(json.dumps(out))
"""
    out = _run(code)
    assert out["after_import"] is False and out["after_read"] is False
    assert out["gui"] == []  # no Qt, no napari
    assert out["after_mlarray"] is True  # the array class needs python-blosc2
    np.testing.assert_array_equal(np.array(out["plane"], np.int16), MLArray.open(p)[:, 17])
    assert out["sum"] == int(data.astype(np.int64).sum())
    assert out["patch"] == 192


def test_public_names_resolve_as_before():
    import mlarray
    import mlarray.errors
    import mlarray.layout
    import mlarray.meta
    import mlarray.mlarray

    for name in mlarray.__all__:
        value = getattr(mlarray, name)
        for module in (mlarray.errors, mlarray.meta, mlarray.mlarray):
            if hasattr(module, name):
                assert getattr(module, name) is value, name
    assert mlarray.MLARRAY_DEFAULT_PATCH_SIZE == mlarray.layout.DEFAULT_PATCH_SIZE
    assert set(mlarray.__all__) <= set(dir(mlarray))
    assert mlarray.io.save_mla is save_mla  # submodules as attributes, as before
    with pytest.raises(AttributeError):
        mlarray.no_such_name  # noqa: B018
    # names that are no identifiers are no attributes (hasattr answers, never raises)
    assert not hasattr(mlarray, "a.b") and not hasattr(mlarray, "io.save_mla")


REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_files_written_by_the_reference_read_the_same(tmp_path):
    _lib_or_skip()
    code = f"""
import numpy as np
from mlarray.mlarray import MLArray
from mlarray.meta import Meta
d = {str(tmp_path)!r}
rng = np.random.default_rng(11)
for dt in ("uint8", "int16", "float32", "float64", "int32"):
    x = (rng.normal(0, 300, (37, 45, 29))).astype(dt)
    MLArray(x, spacing=[1.0, 0.5, 2.0]).save(d + f"/{{dt}}.mla")
    MLArray(x[:20], meta=Meta(is_seg=True)).save(d + f"/{{dt}}_seg.mla")
    MLArray(x, patch_size=(16, 16, 16)).save(d + f"/{{dt}}_p16.mla")
MLArray(rng.normal(size=(3, 33, 40)).astype("float32"), axis_labels=["channel", "spatial_z",
        "spatial_y"]).save(d + "/chan.mla")
"""
    res = subprocess.run(
        [REFERENCE_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=reference_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted(tmp_path.glob("*.mla"))
    assert len(files) == 16
    for p in files:
        ref = MLArray.open(p)
        store, meta = _cstore.open_cstore(p)
        assert meta.to_mapping() == ref.meta.to_mapping(), p.name
        cache = ChunkCache()
        for key in _keys(store.shape, np.random.default_rng(len(p.name))):
            got, want = _cstore.read(store, key, cache), ref[key]
            assert got.dtype == want.dtype, p.name
            np.testing.assert_array_equal(got, want, err_msg=f"{p.name} {key}")


def test_damaged_chunk_bytes_through_the_reader(tmp_path):
    """Bit flips in chunk data, read by the napari reader (the C path) in a capped child:
    every one is caught by the checksums; with verification off, c-blosc2 sees the
    damaged bytes and the child neither crashes nor raises anything but our errors."""
    _lib_or_skip()
    from tests.test_reliability import good_file, run_hostile

    p = tmp_path / "data.mla"
    good_file(p)
    buf = p.read_bytes()
    info = inspect_frame(buf)
    rng = np.random.default_rng(8)
    regular = np.flatnonzero(info.chunk_pos >= 0)
    cases = []
    for n in range(24):
        i = int(rng.choice(regular))
        b = bytearray(buf)
        for _ in range(1 + n % 3):
            k = int(info.chunk_pos[i] + rng.integers(32, info.chunk_cbytes[i]))
            b[k] ^= 1 << int(rng.integers(8))
        q = tmp_path / f"bit{n}.mla"
        q.write_bytes(bytes(b))
        cases.append(q)
    out = run_hostile(cases, ops="reader")
    assert all(v == ["CorruptChunkError"] for v in out.values()), out
    unverified = run_hostile(cases, ops="reader", env={"MLARRAY_VERIFY": "0"})
    assert all(v[0] in ("ok", "CorruptChunkError") for v in unverified.values()), unverified


def test_a_damaged_block_start_is_refused_before_c_reads_it(tmp_path):
    """A file without checksums whose chunk 1 has a block start pointing far outside the
    chunk: c-blosc2 would read (and crash) there; the C path refuses that chunk only."""
    _lib_or_skip()
    from tests.test_reliability import run_hostile

    p = tmp_path / "bstart.mla"
    ref = _values((20, 30, 40), np.int32, seed=6)
    buf, info = plain_blosc2_file(p, ref, clevel=5)
    pos = int(info.chunk_pos[1])
    buf[pos + 32 + 4 * 2 : pos + 32 + 4 * 3] = (2**31 - 16).to_bytes(4, "little")
    p.write_bytes(bytes(buf))
    assert run_hostile([p], ops="reader") == {str(p): ["CorruptChunkError"]}
    store, _ = _cstore.open_cstore(p)
    np.testing.assert_array_equal(_cstore.read(store, (3,), ChunkCache()), ref[3])
    for key in ((15,), (slice(None), 3), (...,)):
        with pytest.raises(CorruptChunkError, match=r"bstart\.mla.*chunk 1 is damaged"):
            _cstore.read(store, key, ChunkCache())


def test_uninitialised_and_delta_files_are_left_to_mlarray(tmp_path):
    """Files with chunks c-blosc2 leaves unwritten (``blosc2.uninit``) or decodes block
    by block wrongly (DELTA filter) are not opened by the C path; the reader shows them
    through MLArray's guarded reads, right."""
    from napari_mlarray._reader import read_mla

    u = tmp_path / "uninit.mla"
    b = blosc2.uninit((20, 30, 40), dtype=np.int32, urlpath=str(u), mode="w", chunks=(10, 30, 40))
    b[0:10] = 5
    del b
    d = tmp_path / "delta.mla"
    data = (np.cumsum(np.random.default_rng(1).normal(size=(24, 20, 18)), axis=2) * 10).astype(
        np.int16
    )
    cparams = {
        "codec": blosc2.Codec.BLOSCLZ,
        "filters": [blosc2.Filter.DELTA, blosc2.Filter.SHUFFLE],
    }
    blosc2.asarray(data, chunks=(8, 10, 18), blocks=(4, 5, 9), cparams=cparams).save(str(d))
    want_u = np.zeros((20, 30, 40), np.int32)
    want_u[0:10] = 5
    for p, want in ((u, want_u), (d, data)):
        assert _cstore.open_cstore(p) is None
        ((view, _, _),) = read_mla(str(p))
        assert type(view.source).__name__ == "MLArray"
        np.testing.assert_array_equal(np.asarray(view), np.transpose(want, view.perm))
        for i in (0, 5, 15):
            np.testing.assert_array_equal(np.asarray(view[i]), np.transpose(want, view.perm)[i])


def test_decode_blocks_decodes_only_the_blocks_asked_for(tmp_path):
    """``decode_blocks`` (one c-blosc2 call per chunk for a block layer) writes exactly
    the blocks not skipped, each at its place in the chunk, as the whole chunk decodes;
    the skipped blocks' bytes stay as they were. A mask that is not bools, a chunk out of
    range are refused; with a mask of another length than the chunk's blocks the chunk is
    decoded whole; a special (all-zero) chunk fills the buffer."""
    _lib_or_skip()
    data = _values((30, 40, 50), np.int16, seed=11)
    p = tmp_path / "blocks.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    schunk = _cstore.open_cstore(p)[0].schunk
    nblocks, size = 2 * 2 * 5, schunk.chunksize
    whole = np.empty(size, np.uint8)
    schunk.decompress_chunk(3, whole)
    skip = np.ones(nblocks, np.bool_)
    skip[[0, 7, 19]] = False
    dst = np.full(size, 0xAB, np.uint8)
    schunk.decode_blocks(3, skip, dst)
    got, want = dst.reshape(nblocks, -1), whole.reshape(nblocks, -1)
    np.testing.assert_array_equal(got[~skip], want[~skip])
    assert (got[skip] == 0xAB).all()
    dst[:] = 0xAB  # a mask c-blosc2 refuses (not one entry per block): the chunk decodes whole
    schunk.decode_blocks(3, np.zeros(nblocks - 1, np.bool_), dst)
    np.testing.assert_array_equal(dst, whole)
    with pytest.raises(ValueError, match="bool"):
        schunk.decode_blocks(3, np.zeros(nblocks, np.uint8), dst)
    with pytest.raises(IndexError):
        schunk.decode_blocks(schunk.nchunks, skip, dst)
    z = tmp_path / "zeros.mla"
    blosc2.zeros((20, 30), dtype=np.float32, chunks=(10, 30), blocks=(5, 30)).save(str(z))
    zs = _cstore.open_cstore(z)[0].schunk
    out = np.full(zs.chunksize, 0xFF, np.uint8)
    zs.decode_blocks(0, np.zeros(2, np.bool_), out)
    assert not out.any()


def test_block_start_checks_are_shared_by_the_handles_of_one_file_version(tmp_path, monkeypatch):
    """Opening a file again (the napari reader, ``MLArray``'s read-only handles, a data
    loader) does not check its chunks' block starts again: the handles decoding from one
    mapping share which chunks were checked. A new version of the file at the same path
    (another program's save, here with a damaged block start) is checked anew: its bad
    chunk is refused."""
    _lib_or_skip()
    p = tmp_path / "shared.mla"
    ref = _values((20, 30, 40), np.int32, seed=6)
    buf, info = plain_blosc2_file(p, ref, clevel=5)
    first, _ = _cstore.open_cstore(p)
    np.testing.assert_array_equal(_cstore.read(first, (...,), ChunkCache()), ref)
    checks: list[str] = []
    real = _cstore.check_chunk_blocks
    monkeypatch.setattr(
        _cstore, "check_chunk_blocks", lambda *a, **k: checks.append(a[1]) or real(*a, **k)
    )
    second, _ = _cstore.open_cstore(p)
    np.testing.assert_array_equal(_cstore.read(second, (...,), ChunkCache()), ref)
    a = MLArray.open(p)
    a.set_chunk_cache()
    for key in ((5,), (slice(None), 3), (slice(None), slice(None), 7)):
        np.testing.assert_array_equal(a[key], ref[key])
    assert checks == []  # every chunk was checked by the first handle
    pos = int(info.chunk_pos[1])
    buf[pos + 32 + 4 * 2 : pos + 32 + 4 * 3] = (2**31 - 16).to_bytes(4, "little")
    (tmp_path / "new.mla").write_bytes(bytes(buf))
    os.replace(tmp_path / "new.mla", p)
    third, _ = _cstore.open_cstore(p)
    np.testing.assert_array_equal(_cstore.read(third, (3,), ChunkCache()), ref[3])
    with pytest.raises(CorruptChunkError, match=r"shared\.mla.*chunk 1 is damaged"):
        _cstore.read(third, (15,), ChunkCache())
    assert "chunk 1" in checks
    np.testing.assert_array_equal(_cstore.read(second, (15,), ChunkCache()), ref[15])


def test_decode_runs_writes_the_runs_python_blosc2_decodes(tmp_path):
    """``decode_runs`` (a block layer's runs of one chunk, one call) puts each run where
    python-blosc2's whole decode of the chunk has those items, leaves the rest of
    the buffer alone, fills a special (all-zero) chunk's runs with zeros, and refuses a
    chunk out of range, runs past the chunk or the buffer, and a buffer of another item
    size, not contiguous or read-only (nothing decoded then), whichever run is out of
    bounds."""
    _lib_or_skip()
    data = _values((30, 40, 50), np.int16, seed=12)
    data[:10, :20, :25] = 0  # chunk 0: stored as a special zero chunk
    p = tmp_path / "runs.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    schunk = _cstore.open_cstore(p)[0].schunk
    nd = blosc2.open(os.fspath(p), mode="r")  # (kept: its schunk lives only as long)
    theirs = nd.schunk
    assert int(schunk._pos[0]) < 0  # (the zero chunk has no bytes in the file)
    citems, bitems = schunk.chunksize // 2, 5 * 10 * 5
    runs = ((0, 0, bitems), (3 * bitems, bitems, 2 * bitems), (9 * bitems, 4 * bitems, bitems))
    for nchunk in (0, 3, schunk.nchunks - 1):
        for offset in (0, 10 * bitems):
            got = np.full(6 * bitems, -7, np.int16)
            schunk.decode_runs(nchunk, offset, runs, got)
            want = np.full(6 * bitems, -7, np.int16)
            whole = np.frombuffer(theirs.decompress_chunk(nchunk), np.int16)
            for c, o, n in runs:
                want[o : o + n] = whole[offset + c : offset + c + n]
            np.testing.assert_array_equal(got, want)
            assert (got[3 * bitems : 4 * bitems] == -7).all()  # no run there
    out = np.full(6 * bitems, -7, np.int16)
    for bad, exc in (
        ((schunk.nchunks, 0, runs, out), IndexError),
        ((3, citems - bitems, runs, out), IndexError),  # the last run ends past the chunk
        ((3, 0, runs, out[: 5 * bitems - 1]), IndexError),  # past the buffer
        # any run, not only the last: past the chunk, past the buffer, negative
        ((3, 0, ((citems - bitems + 1, 0, bitems), (0, bitems, bitems)), out), IndexError),
        ((3, 0, ((0, 5 * bitems + 1, bitems), (0, 0, 1)), out), IndexError),
        ((3, 0, ((-1, 0, 2), (5, 2, 1)), out), IndexError),
        ((3, 0, ((0, 0, -1), (5, 2, 1)), out), IndexError),
        ((3, 0, runs, out.view(np.uint8)), ValueError),
        ((3, 0, runs, np.full(12 * bitems, -7, np.int16)[::2]), ValueError),
        ((3, 0, runs, np.frombuffer(bytes(out.nbytes), np.int16)), ValueError),
    ):
        with pytest.raises(exc):
            schunk.decode_runs(*bad)
    assert (out == -7).all()
    z = np.full(2 * bitems, 5, np.int16)
    schunk.decode_runs(0, 0, ((0, 0, bitems), (bitems, bitems, bitems)), z)
    assert not z.any()  # the special zero chunk


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize(("shape", "chunks", "blocks"), LAYOUTS)
def test_every_plane_of_every_axis_reads_right_on_one_and_two_threads(
    tmp_path, shape, chunks, blocks, nthreads
):
    """Scrolling through every plane along every axis, as the napari reader does (its
    block layers decoded on the reading thread, whatever the store's threads): the planes
    are the array's, edge chunks and blocks included, and special (all-zero) chunks too."""
    _lib_or_skip()
    data = _values(shape, np.int16, seed=len(shape))
    data[tuple(slice(0, c) for c in chunks)] = 0  # the first chunk: written as zeros
    p = tmp_path / "planes.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=chunks, block_size=blocks)
    store, _ = _cstore.open_cstore(p, nthreads=nthreads)
    for axis in range(len(shape)):
        cache = ChunkCache()
        for i in range(shape[axis]):
            key = (slice(None),) * axis + (i,)
            np.testing.assert_array_equal(_cstore.read(store, key, cache), data[key])
            napari_key = (slice(None),) * axis + (slice(i, i + 1),)
            np.testing.assert_array_equal(_cstore.read(store, napari_key, cache), data[napari_key])


def test_undecodable_chunks_raise_ours_from_either_thread(tmp_path):
    """Every chunk of a file without checksums made undecodable, the store opened for two
    threads: a plane along each axis raises CorruptChunkError naming the file (nothing
    is returned, nothing hangs)."""
    _lib_or_skip()
    p = tmp_path / "undecodable.mla"
    ref = _values((20, 30, 40), np.int32, seed=4)
    undecodable_blosc2_file(p, ref)
    store, _ = _cstore.open_cstore(p, nthreads=2)
    for key in ((3,), (slice(None), 12), (slice(None), slice(None), 25)):
        with pytest.raises(CorruptChunkError, match=r"undecodable\.mla: cannot decompress"):
            _cstore.read(store, key, ChunkCache())


def test_a_special_chunk_with_its_own_block_size_reads_in_planes(tmp_path):
    """A chunk whose own header says it is all zeros (or one value) with another block
    size than the array's (the frame check lets such chunks through, as c-blosc2 writes
    them): its planes read as the whole read gives them, on one and two threads, through
    the C store and MLArray (review r22b F1: the block mask, one entry per block of the
    array, was refused for it and the planes raised CorruptChunkError)."""
    import struct

    _lib_or_skip()
    data = (np.arange(20 * 30 * 40) % 1000 + 1).astype(np.int16).reshape(20, 30, 40)
    for kind, value in ((1, 0), (3, 4242)):  # chunk-header specials: zeros, a value
        p = tmp_path / f"special{kind}.mla"
        blosc2.asarray(data, urlpath=str(p), mode="w", chunks=(10, 15, 20), blocks=(5, 5, 10))
        buf = bytearray(p.read_bytes())
        pos = int(inspect_frame(bytes(buf)).chunk_pos[1])
        nbytes = struct.unpack_from("<i", buf, pos + 4)[0]
        buf[pos + 31] = (buf[pos + 31] & 0x8F) | (kind << 4)
        struct.pack_into("<i", buf, pos + 8, nbytes)  # one block: the whole chunk
        struct.pack_into("<i", buf, pos + 12, 32 + (2 if kind == 3 else 0))
        if kind == 3:
            struct.pack_into("<h", buf, pos + 32, value)
        p.write_bytes(bytes(buf))
        want = data.copy()
        want[:10, :15, 20:40] = value  # chunk 1
        for nthreads in (1, 2):
            store, _ = _cstore.open_cstore(p, nthreads=nthreads)
            a = MLArray.open(p, dparams={"nthreads": nthreads})
            a.set_chunk_cache()
            np.testing.assert_array_equal(_cstore.read(store, ..., None), want)
            for axis in range(3):
                cache = ChunkCache()
                for i in range(data.shape[axis]):
                    key = (slice(None),) * axis + (i,)
                    np.testing.assert_array_equal(_cstore.read(store, key, cache), want[key])
                    np.testing.assert_array_equal(a[key], want[key])


_LATE_AND_FORKED = """
import atexit, os, signal, sys, threading
import numpy as np
from mlarray import MLArray, _cstore, _fullread
from mlarray._read import ChunkCache
from mlarray.io import save_mla
from mlarray.meta import Meta

p = os.path.join(sys.argv[1], "late.mla")
data = (np.arange(37 * 41 * 23) % 999).astype(np.int16).reshape(37, 41, 23)
save_mla(p, data, Meta(), patch_size=None, chunk_size=(16, 20, 23), block_size=(5, 7, 8))
store, _ = _cstore.open_cstore(p, nthreads=2)
np.testing.assert_array_equal(_cstore.read(store, (slice(None), 3), ChunkCache()), data[:, 3])

# a fork while another thread holds the read pool's lock: the child reads planes
held, release = threading.Event(), threading.Event()
def holder():
    with _fullread._pool_lock:
        held.set()
        release.wait()
t = threading.Thread(target=holder)
t.start()
held.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a hang ends the child
    ok = np.array_equal(_cstore.read(store, (slice(None), 5), ChunkCache()), data[:, 5])
    os._exit(0 if ok else 3)
release.set()
t.join()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))

# planes read at interpreter shutdown (no new pool work then)
def at_exit():
    a = MLArray.open(p, dparams={"nthreads": 2})
    a.set_chunk_cache()
    ok = np.array_equal(_cstore.read(store, (slice(None), 7), ChunkCache()), data[:, 7])
    ok = ok and np.array_equal(a[:, 9], data[:, 9])
    print("at exit", ok, flush=True)
atexit.register(at_exit)
"""


def test_planes_read_in_a_forked_child_and_at_shutdown(tmp_path):
    """Planes of a store decoding on two threads read in a child forked while another
    thread held the read pool's lock (review r22b F3: the child hung on it), and at
    interpreter shutdown, when the pool takes no new work (F2: a healthy file was called
    corrupt)."""
    _lib_or_skip()
    out = run_python(_LATE_AND_FORKED, tmp_path).split("\n")
    assert "child 0" in out and "at exit True" in out
