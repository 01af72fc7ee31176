"""MLArray: constructors, properties, lazy opening, modes and errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import (
    InvalidModeError,
    InvalidPathError,
    MetaValidationError,
    MLArrayError,
    NoArrayError,
    ReadOnlyError,
)
from mlarray.meta import Meta


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1500, size=(40, 50, 60), dtype=np.int16)


def test_constructor_with_geometry_and_save_open_roundtrip(tmp_path, volume):
    a = MLArray(volume, spacing=(2.5, 0.8, 0.8), origin=(1, 2, 3), direction=np.eye(3)[::-1])
    assert a.shape == volume.shape and a.dtype == np.int16 and a.ndim == 3
    assert a.meta.blosc2.patch_size == [192, 192, 192]
    assert a.meta.blosc2.cparams == {"codec": 1, "clevel": 9}
    assert a.meta.blosc2.dparams == {"nthreads": 1}
    p = tmp_path / "v.mla"
    a.save(p)
    b = MLArray.open(p)
    np.testing.assert_array_equal(b.to_numpy(), volume)
    assert b.spacing == [2.5, 0.8, 0.8] and b.origin == [1.0, 2.0, 3.0]
    assert b.direction == np.eye(3)[::-1].tolist()
    assert isinstance(b.affine, list)
    np.testing.assert_allclose(
        np.asarray(b.affine)[:3, :3], np.eye(3)[::-1] @ np.diag([2.5, 0.8, 0.8])
    )
    assert list(b.chunks) == b.meta.blosc2.chunk_size


def test_affine_form_and_setters(volume):
    aff = np.array([[0, 0, 2.0, 10], [0, 1.5, 0, 20], [-1.0, 0, 0, 30], [0, 0, 0, 1]])
    a = MLArray(volume, affine=aff)
    assert a.meta.spatial.affine == aff.tolist() and a.meta.spatial.spacing is None
    np.testing.assert_allclose(a.scale, [1.0, 1.5, 2.0])
    np.testing.assert_allclose(a.translation, [10, 20, 30])
    # the two geometry forms are exclusive, as in the reference package
    assert a.spacing is None and a.origin is None and a.direction is None
    with pytest.raises(ValueError, match="exclusive"):
        a.spacing = [3.0, 3.0, 3.0]
    assert a.meta.spatial.affine == aff.tolist()
    a.affine = None
    a.spacing, a.origin = [3.0, 3.0, 3.0], [10.0, 20.0, 30.0]
    np.testing.assert_allclose(np.asarray(a.affine)[:3, 2], [0, 0, 3.0])
    with pytest.raises(ValueError, match="exclusive"):
        a.affine = aff
    with pytest.raises(MetaValidationError):
        MLArray(volume, affine=aff, spacing=[1, 1, 1])


def test_sheared_affine_scale_is_exact(volume):
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    shear = np.array([[1, 0.2, 0.1], [0, 1, 0.3], [0, 0, 1.0]])
    scale = np.array([0.7, 1.1, 3.0])
    aff = np.eye(4)
    aff[:3, :3] = rot @ shear @ np.diag(scale)
    a = MLArray(volume, affine=aff)
    np.testing.assert_allclose(a.scale, scale, atol=1e-12)
    np.testing.assert_allclose(a.shear, shear, atol=1e-12)
    np.testing.assert_allclose(a.rotation, rot, atol=1e-12)
    with pytest.raises(MetaValidationError, match="exclusive"):
        a.spacing = [1, 1, 1]


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda kw: MLArray.zeros((5, 6, 7), np.float32, **kw), np.zeros((5, 6, 7), np.float32)),
        (lambda kw: MLArray.ones((5, 6), **kw), np.ones((5, 6))),
        (lambda kw: MLArray.full((4, 4), 7, np.uint8, **kw), np.full((4, 4), 7, np.uint8)),
        (
            lambda kw: MLArray.arange(0, 24, 2, shape=(3, 4), **kw),
            np.arange(0, 24, 2).reshape(3, 4),
        ),
        (
            lambda kw: MLArray.linspace(0, 1, 12, shape=(3, 4), **kw),
            np.linspace(0, 1, 12).reshape(3, 4),
        ),
        (lambda kw: MLArray.asarray(np.eye(5), **kw), np.eye(5)),
        (
            lambda kw: MLArray.zeros_like(np.ones((3, 5), np.int32), **kw),
            np.zeros((3, 5), np.int32),
        ),
        (lambda kw: MLArray.ones_like(MLArray.asarray(np.zeros((2, 3))), **kw), np.ones((2, 3))),
        (
            lambda kw: MLArray.full_like(np.zeros((2, 2), np.int8), 3, **kw),
            np.full((2, 2), 3, np.int8),
        ),
    ],
)
@pytest.mark.parametrize("compressed", [True, False])
def test_constructors(factory, expected, compressed):
    a = factory({"compressed": compressed})
    np.testing.assert_array_equal(a.to_numpy(), expected)
    assert a.dtype == expected.dtype
    assert a.meta.spatial.shape == list(expected.shape)
    assert a.meta._has_array.has_array
    if compressed:
        assert a.chunks is not None and a.meta.blosc2.chunk_size == list(a.chunks)
    else:  # a numpy store; meta.blosc2 holds the layout save() will write (as the reference)
        assert a.chunks is None and a.meta.blosc2.cparams is not None


def test_empty_like_and_explicit_layout():
    a = MLArray.empty_like(np.zeros((30, 40)), patch_size=None, chunk_size=(10, 20), block_size=5)
    assert a.shape == (30, 40) and a.chunks == (10, 20) and a.blocks == (5, 5)
    assert a.meta.blosc2.patch_size is None


def test_linspace_and_arange_errors():
    with pytest.raises(ValueError):
        MLArray.linspace(0, 1)
    with pytest.raises(ValueError):
        MLArray.arange(0, 10, shape=(3, 3))


def test_axis_labels_and_non_spatial_axes_get_chunk_one(tmp_path):
    data = np.zeros((3, 20, 30, 40), np.float32)
    a = MLArray(
        data,
        axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"],
        spacing=[2.0, 1.0, 1.0],
    )
    assert a.spatial_ndim == 3 and a.ndim == 4
    assert a.chunks[0] == 1 and a.blocks[0] == 1
    assert a.meta.blosc2.patch_size == [192, 192, 192]
    assert np.asarray(a.affine).shape == (4, 4)
    with pytest.raises(MetaValidationError, match="spacing"):
        MLArray(
            data, axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"], spacing=[1.0, 1.0]
        )


def test_meta_dict_and_copy_argument():
    fields = Meta.from_mapping({"is_seg": True, "extra": {"k": "v"}})
    src = MLArray(np.zeros((4, 4)), spacing=[2, 3], origin=[1, 1], meta=fields)
    assert src.meta.is_seg.is_seg is True and src.meta.extra.data == {"k": "v"}
    b = MLArray(np.ones((4, 4)), spacing=[9, 9], copy=src)  # explicit arguments win
    assert b.spacing == [9.0, 9.0] and b.origin == [1.0, 1.0] and b.meta.is_seg.is_seg is True
    with pytest.raises(KeyError, match="nope"):
        Meta.from_mapping({"nope": 1})


def test_open_is_lazy_and_partial(tmp_path, volume):
    p = tmp_path / "v.mla"
    MLArray(volume, patch_size=None, chunk_size=(10, 50, 60), block_size=(5, 25, 30)).save(p)
    a = MLArray.open(p)
    np.testing.assert_array_equal(a[12:14, :, 5], volume[12:14, :, 5])
    assert a.chunks == (10, 50, 60)
    assert np.asarray(a).shape == volume.shape


def test_modes_write_and_copy_on_write(tmp_path, volume):
    p = tmp_path / "v.mla"
    MLArray(volume).save(p)
    ro = MLArray.open(p)
    with pytest.raises(ReadOnlyError):
        ro[0, 0, 0] = 1
    with pytest.raises(PermissionError):
        ro[0, 0, 0] = 1
    cow = MLArray.open(p, mmap_mode="c")
    cow[0] = 5
    assert (cow[0] == 5).all()
    assert (MLArray.open(p)[0] == volume[0]).all(), "copy-on-write must not touch the file"
    rw = MLArray.open(p, mmap_mode="r+")
    rw[1] = 7
    rw.meta.is_seg = False
    rw.close()
    again = MLArray.open(p)
    assert (again[1] == 7).all() and again.meta.is_seg.is_seg is False
    ap = MLArray.open(p, mode="a", mmap_mode=None)
    ap[2] = 9
    ap.close()
    assert (MLArray.open(p)[2] == 9).all()


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"mode": "w"}, InvalidModeError),
        ({"mmap_mode": "w+"}, InvalidModeError),
        ({"mode": "x"}, RuntimeError),
    ],
)
def test_invalid_open_modes(tmp_path, kwargs, err):
    p = tmp_path / "v.mla"
    MLArray(np.zeros(3)).save(p)
    with pytest.raises(err):
        MLArray.open(p, **kwargs)


def test_create_writes_through_and_flushes_meta(tmp_path):
    p = tmp_path / "new.mla"
    with MLArray.create(p, (20, 30), np.float32, meta=Meta(extra={"who": "me"})) as a:
        a[5:10] = 1.5
    b = MLArray.open(p)
    assert b.shape == (20, 30) and b[5:10].min() == 1.5 and b[0].max() == 0
    assert b.meta.extra.data == {"who": "me"}
    with pytest.raises(InvalidModeError):
        MLArray.create(tmp_path / "x.mla", (2, 2), np.uint8, mode="r")
    with pytest.raises(RuntimeError):
        MLArray.create(tmp_path / "x.mla", (2, 2), np.uint8, mmap_mode="r")


def test_path_suffix_is_checked(tmp_path):
    for call in (
        lambda: MLArray(np.zeros(3)).save(tmp_path / "x.npy"),
        lambda: MLArray.open(tmp_path / "x.nii"),
        lambda: MLArray.open(str(tmp_path / "x.nii")),
        lambda: MLArray.load(tmp_path / "x"),
        lambda: MLArray.create(tmp_path / "x.b2nd", (2,), np.uint8),
    ):
        for _ in range(2):  # a path seen before is checked again
            with pytest.raises(InvalidPathError) as info:
                call()
            assert isinstance(info.value, RuntimeError) and "x" in str(info.value)


def test_no_array_errors_are_type_errors():
    a = MLArray()
    for call in (a.to_numpy, a.compress, a.decompress, lambda: a[0]):
        with pytest.raises(NoArrayError):
            call()
    assert len(a) == 0  # empty, as in the reference (test_dropin)
    with pytest.raises(TypeError):
        a.to_numpy()
    assert a.shape is None and a.dtype is None and a.affine is None and a.scale is None


def test_object_and_string_dtypes_are_refused():
    with pytest.raises(MetaValidationError, match="dtype"):
        MLArray(np.array([{"a": 1}], dtype=object))
    with pytest.raises(MLArrayError):
        MLArray.zeros((2,), "U4")


def test_compress_and_decompress(tmp_path, volume):
    p = tmp_path / "v.mla"
    MLArray(volume).save(p)
    a = MLArray.open(p)
    a.compress(
        patch_size=None,
        chunk_size=(20, 25, 30),
        block_size=(10, 10, 10),
        cparams={"codec": 5, "clevel": 3},
    )
    assert a.chunks == (20, 25, 30) and a.path is None
    assert a.meta.blosc2.cparams["codec"] == 5
    a.decompress()
    assert isinstance(a.to_numpy(), np.ndarray) and a.meta.blosc2.chunk_size is None
    out = tmp_path / "d.mla"
    a.save(out)
    np.testing.assert_array_equal(MLArray.open(out).to_numpy(), volume)


def test_compress_of_an_opened_file_streams_chunk_by_chunk(tmp_path):
    # measured in a fresh interpreter: tracemalloc counts every thread's allocations, and
    # threads left by earlier tests (napari's, Qt's) allocate while it runs
    from tests._children import run_python

    data = np.random.default_rng(5).integers(-1000, 1000, (64, 128, 128), dtype=np.int16)
    p = tmp_path / "big.mla"
    MLArray(data, patch_size=None, chunk_size=(16, 64, 64), block_size=(8, 16, 16)).save(p)
    out = run_python(
        """
import gc, sys, tracemalloc
import numpy as np
from mlarray import MLArray
p = sys.argv[1]
layout = dict(patch_size=None, chunk_size=(8, 32, 128), block_size=(4, 16, 32))
# once first: process-wide tables that grow by themselves (interned strings, Blosc2's
# caches) would otherwise count against this one operation
MLArray.open(p).compress(**layout)
a = MLArray.open(p)
gc.collect()
tracemalloc.start()
a.compress(**layout)
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
assert a.chunks == (8, 32, 128) and a.blocks == (4, 16, 32) and a.path is None
assert a.meta.blosc2.chunk_size == [8, 32, 128]
np.save(sys.argv[2], a.to_numpy())
print(peak)
""",
        p,
        tmp_path / "back.npy",
    )
    # numpy buffers of a few chunks (64 KiB each), never the 2 MiB volume
    assert int(out.split()[-1]) < data.nbytes / 4
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), data)
    np.testing.assert_array_equal(MLArray.open(p).to_numpy(), data)  # the file is untouched


def test_compute_stats_fills_meta(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(40, 300, size=(30, 40, 50)).astype(np.float32)
    a = MLArray(data, patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 10))
    st = a.compute_stats()
    assert st is a.meta.stats
    assert st.min == pytest.approx(float(data.min()))
    assert st.max == pytest.approx(float(data.max()))
    assert st.mean == pytest.approx(float(data.astype(np.float64).mean()), rel=1e-9)
    assert st.median == pytest.approx(float(np.median(data)), rel=1e-6)
    assert st.percentile_min == pytest.approx(float(np.percentile(data, 0.5)), rel=1e-5)
    assert st.percentile_max_key == 99.5
    p = tmp_path / "s.mla"
    a.save(p)
    assert MLArray.open(p).meta.stats == st


def test_meta_is_validated_against_the_array():
    with pytest.raises(MetaValidationError, match="spatial"):
        MLArray(np.zeros((4, 4, 4)), spacing=[1, 1])
    m = Meta(spatial={"axis_labels": ["spatial", "spatial"]})
    with pytest.raises(MetaValidationError, match="axis_labels"):
        MLArray(np.zeros((2, 2, 2)), meta=m)


def test_import_mlarray_pulls_in_neither_napari_nor_qt():
    import subprocess
    import sys

    code = (
        "import sys, mlarray, mlarray.meta, mlarray.mlarray\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy')]\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- edge cases


def test_zero_d_array_keeps_its_shape(tmp_path):
    a = MLArray(np.array(5.5))
    assert a.shape == () and a.to_numpy().shape == () and a[()] == 5.5
    a.save(tmp_path / "s.mla")
    for b in (MLArray.open(tmp_path / "s.mla"), MLArray.load(tmp_path / "s.mla")):
        assert b.shape == () and b.to_numpy() == 5.5
    with pytest.raises(TypeError, match="0-d"):
        len(a)
    assert MLArray.arange(1, shape=()).shape == ()


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 2)])
def test_zero_size_arrays_save_and_reopen(tmp_path, shape):
    a = MLArray(np.zeros(shape, np.uint8))
    a.save(tmp_path / "e.mla")
    b = MLArray.open(tmp_path / "e.mla")
    assert b.shape == shape and b.meta._has_array.has_array and b.to_numpy().size == 0
    b.save(tmp_path / "e2.mla")  # the kept (0-size) layout saves again
    assert MLArray.load(tmp_path / "e2.mla").shape == shape


def test_loaded_array_is_writable_without_crashing(tmp_path):
    # A frame wrapped around the bytes read from disk aborted the interpreter on the
    # first write (realloc(): invalid pointer); run in a child so a regression fails cleanly.
    p = tmp_path / "w.mla"
    MLArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5)).save(p)
    code = textwrap.dedent(
        f"""
        from mlarray import MLArray
        for a in (MLArray.load({str(p)!r}), MLArray({str(p)!r})):
            a[0, 0, 0] = 77
            a[1] = 5
            assert a[0, 0, 0] == 77 and (a[1] == 5).all()
        assert MLArray.open({str(p)!r})[0, 0, 0] == 0  # the file is untouched
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


_BASE = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
_KEYS = [
    (0,),
    (slice(None, None, -1), 1),
    (Ellipsis, 2),
    (None, 0),
    ([0, 2],),
    (np.array([2, 0, 2]), slice(1, 3)),
    (1, [0, 3], [4, 1]),
    (np.array([True, False, True]),),
    (_BASE > 40,),
    _BASE % 7 == 0,
    (slice(None), [-1, 0]),
]


@pytest.mark.parametrize("key", _KEYS, ids=range(len(_KEYS)))
@pytest.mark.parametrize("where", ["memory", "file"])
def test_getitem_and_setitem_match_numpy(tmp_path, key, where):
    if where == "memory":
        a = MLArray(_BASE.copy(), patch_size=None, chunk_size=2, block_size=1)
    else:
        MLArray(_BASE, patch_size=None, chunk_size=2, block_size=1).save(tmp_path / "k.mla")
        a = MLArray.open(tmp_path / "k.mla", mmap_mode="r+")
    expected = _BASE.copy()
    np.testing.assert_array_equal(a[key], expected[key])
    values = -np.arange(expected[key].size).reshape(expected[key].shape) - 1
    expected[key] = values
    a[key] = values
    np.testing.assert_array_equal(a.to_numpy(), expected)
    expected[key] = 9  # scalars broadcast
    a[key] = 9
    np.testing.assert_array_equal(a.to_numpy(), expected)


def test_setitem_broadcasting_and_errors_follow_numpy():
    a, expected = MLArray(_BASE.copy()), _BASE.copy()
    for key, value in [(0, np.arange(5)), (0, [[1], [2], [3], [4]]), ((slice(None), 1), 3.7)]:
        a[key] = value
        expected[key] = value
    np.testing.assert_array_equal(a.to_numpy(), expected)
    with pytest.raises(ValueError, match="broadcast"):
        a[0] = np.ones((2, 5))
    with pytest.raises(OverflowError):
        a[0, 0, 0] = 10**9
    with pytest.raises(IndexError, match="index -4 is out of bounds for axis 0 with size 3"):
        a[-4]
    with pytest.raises(IndexError, match="index 3 is out of bounds"):
        a[3] = 1
    np.testing.assert_array_equal(a.to_numpy(), expected)


def test_meta_parts_assigned_in_place_are_coerced_and_validated(tmp_path):
    a = MLArray(np.zeros((3, 4, 5)))
    with pytest.raises(AttributeError):
        a.meta = Meta()
    a.meta.is_seg = True
    a.meta.spatial = {"spacing": [1, 2, 3]}
    assert isinstance(a.meta, Meta) and a.meta.spatial.shape == [3, 4, 5]
    a.save(tmp_path / "m.mla")
    assert MLArray.open(tmp_path / "m.mla").meta.is_seg.is_seg is True
    with pytest.raises(MetaValidationError, match=r"spatial\.spacing"):
        a.meta.spatial = {"spacing": [1, 2]}
    assert a.spacing == [1.0, 2.0, 3.0]


def test_create_refuses_a_directory_and_keeps_its_contents(tmp_path):
    d = tmp_path / "folder.mla"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidPathError, match="is a directory"):
        MLArray.create(d, (3,), "f4")
    assert (d / "precious.txt").read_text() == "keep me"


def test_loading_a_volume_bigger_than_memory_raises_our_error_naming_the_file(tmp_path):
    # an honest 8 GiB volume of zeros, a few kB on disk, loaded under a 3 GiB address space
    import blosc2

    from tests._children import run_python

    path = tmp_path / "big.mla"
    blosc2.zeros(
        (512, 4096, 4096),
        dtype=np.uint8,
        chunks=(512, 64, 64),
        blocks=(64, 64, 64),
        urlpath=str(path),
        mode="w",
    )
    out = run_python(
        """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from mlarray import MLArray
from mlarray.errors import MLArrayMemoryError
for read in (lambda p: MLArray.load(p, compressed=False),
             lambda p: MLArray(p, compressed=False),
             lambda p: MLArray.open(p)[...]):
    try:
        read(sys.argv[1])
    except MLArrayMemoryError as exc:
        print(sys.argv[1] in str(exc), str(8 << 30) in str(exc))
""",
        path,
    )
    assert out.split() == ["True", "True"] * 3
