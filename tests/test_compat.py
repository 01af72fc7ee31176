"""Drop-in compatibility with the reference package (``mlarray`` 0.0.54), point by point.

The reference's own test suite runs against this package in
``tests/test_reference_suite.py``; these tests pin each behaviour scripts
written for the reference rely on, with real files in ``tmp_path``.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import mlarray
from mlarray import (
    MLARRAY_DEFAULT_PATCH_SIZE,
    Meta,
    MetaBbox,
    MetaBlosc2,
    MetaExtra,
    MetaHasArray,
    MetaImageFormat,
    MetaIsSeg,
    MetaSource,
    MetaSpatial,
    MetaStatistics,
    MetaVersion,
    MLArray,
)
from mlarray.errors import MetaTypeError, MLArrayError, MLArrayFileNotFoundError
from mlarray.meta import _meta_internal_write

SHAPE = (6, 8, 10)


def _constructors(tmp_path):
    """Every constructor taking ``meta``, each called with the same free-form dict."""
    src = {"patient_id": "p-1", "nested": {"a": [1, 2]}}
    base = MLArray(np.zeros(SHAPE, np.float32))
    return src, {
        "MLArray": lambda: MLArray(np.zeros(SHAPE, np.float32), meta=src),
        "asarray": lambda: MLArray.asarray(np.zeros(SHAPE), meta=src),
        "zeros": lambda: MLArray.zeros(SHAPE, np.uint8, meta=src),
        "ones": lambda: MLArray.ones(SHAPE, meta=src),
        "full": lambda: MLArray.full(SHAPE, 3, meta=src),
        "empty": lambda: MLArray.empty(SHAPE, np.int16, meta=src),
        "arange": lambda: MLArray.arange(0, 480, shape=SHAPE, meta=src),
        "linspace": lambda: MLArray.linspace(0, 1, shape=SHAPE, meta=src),
        "zeros_like": lambda: MLArray.zeros_like(base, meta=src),
        "ones_like": lambda: MLArray.ones_like(base, meta=src),
        "full_like": lambda: MLArray.full_like(base, 2, meta=src),
        "empty_like": lambda: MLArray.empty_like(base, meta=src),
        "create": lambda: MLArray.create(tmp_path / "created.mla", SHAPE, np.float32, meta=src),
    }


def test_meta_dict_is_source_metadata_in_every_constructor(tmp_path):
    src, constructors = _constructors(tmp_path)
    for name, make in constructors.items():
        a = make()
        assert a.meta.source.to_plain() == src, name
        assert a.meta.is_seg.is_seg is None and a.meta.extra.to_plain() == {}, name
        path = tmp_path / f"{name}.mla"
        a.save(path)
        assert MLArray(path).meta.source == src, name
    # building a Meta from its fields stays Meta.from_mapping
    m = Meta.from_mapping({"is_seg": True, "source": {"k": 1}})
    assert m.is_seg and m.source == {"k": 1}
    with pytest.raises(TypeError, match="meta must be"):
        MLArray(np.zeros(3), meta=[("k", 1)])


def test_source_and_extra_behave_as_dicts_and_changes_are_saved(tmp_path):
    a = MLArray(np.zeros(SHAPE), meta={"a": 1})
    s = a.meta.source
    assert s["a"] == 1 and "a" in s and "b" not in s and len(s) == 1 and list(s) == ["a"]
    assert s.get("b") is None and s.get("b", 7) == 7 and dict(s.items()) == {"a": 1}
    s["b"] = np.float32(2.5)  # numpy values are stored as plain numbers
    s.update({"c": [1, 2]}, d="x")
    del s["a"]
    assert s == {"b": 2.5, "c": [1, 2], "d": "x"} and type(s["b"]) is float
    assert s.pop("d") == "x" and s.setdefault("e", 5) == 5
    with pytest.raises(KeyError):
        del s["missing"]
    with pytest.raises(MetaTypeError):
        s["bad"] = object()
    with pytest.raises(MetaTypeError):
        s[(1, 2)] = "tuple key"
    a.meta.extra["stage"] = "train"
    a.meta.extra.update(fold=2)
    p = tmp_path / "d.mla"
    a.save(p)
    b = MLArray(p)
    assert b.meta.source == {"b": 2.5, "c": [1, 2], "e": 5}
    assert b.meta.extra == {"stage": "train", "fold": 2}
    assert str(b.meta.source) == str({"b": 2.5, "c": [1, 2], "e": 5})
    # in place through an opened file: persisted by close() for writable modes only
    for mmap_mode, expected in (("r", "train"), ("c", "train"), ("r+", "edited")):
        o = MLArray.open(p, mmap_mode=mmap_mode)
        o.meta.extra["stage"] = "edited"
        o.close()
        assert MLArray(p).meta.extra["stage"] == expected, mmap_mode
    o = MLArray.open(p, mode="a", mmap_mode=None)
    del o.meta.extra["fold"]
    o.close()
    assert MLArray(p).meta.extra == {"stage": "edited"}


def test_names_scripts_import():
    for name in [
        "Meta",
        "MetaSource",
        "MetaExtra",
        "MetaSpatial",
        "MetaStatistics",
        "MetaBbox",
        "MetaIsSeg",
        "MetaBlosc2",
        "MetaHasArray",
        "MetaImageFormat",
        "MetaVersion",
        "AxisLabel",
        "CoordSystem",
    ]:
        assert getattr(mlarray, name) is getattr(mlarray.meta, name)
    assert MLARRAY_DEFAULT_PATCH_SIZE == 192
    assert MLArray(np.zeros((4, 4, 4))).meta.blosc2.patch_size == [MLARRAY_DEFAULT_PATCH_SIZE] * 3
    assert MetaSpatial.AxisLabel.channel == "channel"
    assert [c.value for c in MetaSpatial.CoordSystem] == [
        "RAS",
        "LPS",
        "RAS+",
        "LPS+",
        "unknown",
        "other",
    ]
    assert MetaSpatial(coord_system=MetaSpatial.CoordSystem.RAS_PLUS).coord_system == "RAS+"
    for value, frame in (("RAS", "RAS"), ("RAS+", "RAS"), ("lps+", "LPS"), ("LPS", "LPS")):
        assert MetaSpatial(coord_system=value).world_frame == frame
    for value in (None, "unknown", "other", "my_frame"):
        assert MetaSpatial(coord_system=value).world_frame is None
    # the reference converter's array axis codes over a RAS-world affine mean RAS
    lps_array_in_ras = [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert MetaSpatial(coord_system="LPS+", affine=lps_array_in_ras).world_frame == "RAS"
    assert MetaSpatial(coord_system="LPS", affine=lps_array_in_ras).world_frame == "LPS"
    # with spacing/origin/direction (SimpleITK's geometry of an R,A,S array) LPS+ is LPS
    sitk_geometry = {"spacing": [1, 1, 1], "direction": np.diag([-1.0, -1, 1]).tolist()}
    assert MetaSpatial(coord_system="LPS+", **sitk_geometry).world_frame == "LPS"
    # submodules export only public names
    import importlib

    for name in ("meta", "errors", "layout", "geometry", "io", "record", "stats", "mlarray"):
        module = importlib.import_module(f"mlarray.{name}")
        assert module.__all__ and all(not n.startswith("_") for n in module.__all__), name
        assert all(hasattr(module, n) for n in module.__all__), name


def test_like_constructors_copy_metadata_unless_overridden(tmp_path):
    base = MLArray(
        np.zeros((3, 6, 8, 10), np.int16),
        spacing=[2.5, 0.8, 0.8],
        origin=[1, 2, 3],
        axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"],
        meta=Meta(
            source={"case": 7}, extra={"fold": 1}, is_seg=True, spatial={"coord_system": "LPS"}
        ),
    )
    base.meta.bbox.bboxes = [[[0, 1], [0, 2], [0, 3], [0, 4]]]
    base.compute_stats()
    for like in (
        MLArray.zeros_like(base),
        MLArray.ones_like(base, dtype=np.float32),
        MLArray.empty_like(base),
        MLArray.full_like(base, 5),
    ):
        assert like.shape == base.shape
        assert like.spacing == [2.5, 0.8, 0.8] and like.origin == [1.0, 2.0, 3.0]
        assert like.meta.spatial.axis_labels == base.meta.spatial.axis_labels
        assert like.meta.spatial.coord_system == "LPS"
        assert like.meta.source == {"case": 7} and like.meta.extra == {"fold": 1}
        assert like.meta.is_seg
        # statistics and boxes describe the model's values, not the new array's
        assert like.meta.stats.is_default() and like.meta.bbox.bboxes is None
        assert like.spacing is not base.spacing  # a copy, not shared lists
    assert MLArray.ones_like(base, dtype=np.float32).dtype == np.float32
    over = MLArray.zeros_like(base, meta=Meta(is_seg=False, spatial={"spacing": [1, 1, 1]}))
    assert over.meta.is_seg == False  # noqa: E712 - the flag compares as a bool
    assert over.spacing == [1.0, 1.0, 1.0] and over.origin == [1.0, 2.0, 3.0]
    # an explicit meta replaces the model's case metadata (its grid stays)
    assert over.meta.source == {} and over.meta.extra == {}
    assert MLArray.zeros_like(base, meta={"new": 1}).meta.source == {"new": 1}
    plain = MLArray.zeros_like(np.ones((2, 3), np.uint8))
    assert plain.dtype == np.uint8 and plain.spacing is None
    with pytest.raises(TypeError):
        MLArray.zeros_like(123)
    like = MLArray.zeros_like(base)
    like.save(tmp_path / "like.mla")
    assert MLArray(tmp_path / "like.mla").spacing == [2.5, 0.8, 0.8]


def test_like_with_explicit_meta_does_not_inherit_the_label_map_flag(tmp_path):
    """A probability map allocated next to a label map is not a label map.

    Reference 0.0.54 (recorded): ``zeros_like(seg, float32, meta={...})`` has
    ``is_seg`` None, ``source`` the given dict and ``extra`` {}; without
    ``meta`` it keeps the model's is_seg/source/extra. Here the model's grid
    (spacing, origin, axis labels) stays in both cases (the reference drops it
    with an explicit meta).
    """
    seg = MLArray(
        np.zeros((2, 8, 8, 8), np.uint8),
        spacing=[1, 1, 3],
        origin=[1, 2, 3],
        axis_labels=["channel", "spatial", "spatial", "spatial"],
        meta=Meta(source={"labels": {"1": "liver"}}, extra={"e": 2}, is_seg=True),
    )
    for make in (MLArray.zeros_like, MLArray.ones_like, MLArray.empty_like):
        prob = make(seg, dtype=np.float32, meta={"model": "unet", "kind": "probability"})
        prob.save(tmp_path / "prob.mla")
        back = MLArray.open(tmp_path / "prob.mla")
        assert back.meta.is_seg.is_seg is None
        assert back.meta.source == {"model": "unet", "kind": "probability"}
        assert back.meta.extra == {}
        assert back.spacing == [1.0, 1.0, 3.0] and back.origin == [1.0, 2.0, 3.0]
        assert back.meta.spatial.axis_labels == ["channel", "spatial", "spatial", "spatial"]
    given = MLArray.full_like(seg, 0.5, dtype=np.float32, meta=Meta(extra={"z": 1}))
    assert given.meta.is_seg.is_seg is None and given.meta.source == {}
    assert given.meta.extra == {"z": 1}
    kept = MLArray.zeros_like(seg, dtype=np.float32)
    assert kept.meta.is_seg and kept.meta.source == {"labels": {"1": "liver"}}


def test_copy_argument_copies_what_is_not_given_explicitly(tmp_path):
    base = MLArray(
        np.zeros(SHAPE),
        spacing=(1, 1, 1),
        origin=(1, 2, 3),
        direction=np.eye(3)[::-1],
        meta=Meta(source={"source": "base"}, extra={"x": 1}, is_seg=True),
    )
    base.save(tmp_path / "base.mla")
    loaded = MLArray(tmp_path / "base.mla")
    img = MLArray(np.ones(SHAPE), spacing=(0.8, 0.8, 1.0), meta={"mine": 1}, copy=loaded)
    assert img.spacing == [0.8, 0.8, 1.0]
    assert img.origin == loaded.origin and img.direction == loaded.direction
    assert img.meta.source == {"mine": 1} and img.meta.extra == {"x": 1} and img.meta.is_seg
    # an explicit affine replaces a copied spacing/origin/direction ...
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    img = MLArray(np.ones(SHAPE), affine=aff, copy=loaded)
    assert img.affine == aff.tolist() and img.spacing is None
    # ... and an explicit spacing over a copied affine keeps the affine's origin and direction
    img2 = MLArray(np.ones(SHAPE), spacing=(5, 5, 5), copy=img)
    assert img2.spacing == [5.0, 5.0, 5.0] and img2.origin == [0.0, 0.0, 0.0]
    assert img2.meta.spatial.affine is None
    with pytest.raises(TypeError, match="copy must be an MLArray"):
        MLArray(np.ones(SHAPE), copy="base.mla")


def test_geometry_reads_as_lists_and_in_place_edits_stick(tmp_path):
    img = MLArray(np.zeros(SHAPE), spacing=(1.0, 1.0, 1.5), origin=(10, 10, 30))
    assert img.spacing == [1.0, 1.0, 1.5] and type(img.spacing) is list
    assert type(img.affine) is list and type(img.affine[0]) is list
    img.spacing[1] = 5.3
    img.origin[2] = -4
    assert img.affine[1][1] == 5.3 and img.affine[2][3] == -4
    img.save(tmp_path / "g.mla")
    back = MLArray(tmp_path / "g.mla")
    assert back.spacing == [1.0, 5.3, 1.5] and back.origin == [10.0, 10.0, -4.0]
    aff = [[0, 0, 2.0, 1], [0, 3.0, 0, 2], [4.0, 0, 0, 3], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="exclusive"):
        img.affine = aff  # spacing/origin are set: the forms are exclusive
    img.spacing = img.origin = None
    img.affine = aff
    img.affine[0][3] = 7.0  # the stored affine itself
    assert img.translation == [7.0, 2.0, 3.0] and img.scale == [4.0, 3.0, 2.0]
    assert img.spacing is None and img.origin is None and img.direction is None
    with pytest.raises(ValueError, match="exclusive"):
        img.origin = [0, 0, 0]


def test_meta_attribute_and_internal_fields_are_read_only():
    img = MLArray(np.zeros(SHAPE, np.float32))
    with pytest.raises(AttributeError):
        img.meta = Meta()
    for attempt in (
        lambda m: setattr(m._has_array, "has_array", False),
        lambda m: setattr(m, "_has_array", True),
        lambda m: setattr(m, "_image_meta_format", "nifti"),
        lambda m: setattr(m, "_mlarray_version", "v9"),
        lambda m: setattr(m, "blosc2", MetaBlosc2()),
        lambda m: setattr(m.blosc2, "chunk_size", [1, 1, 1]),
        lambda m: m.blosc2.chunk_size.__setitem__(0, 1),
        lambda m: m.blosc2.block_size.append(1),
        lambda m: setattr(m.spatial, "shape", [1, 1, 1]),
        lambda m: m.spatial.shape.__setitem__(0, 1),
        lambda m: setattr(m.spatial, "_num_spatial_axes", 2),
    ):
        with pytest.raises(AttributeError, match="read-only"):
            attempt(img.meta)
    assert img.meta.spatial.shape == list(SHAPE) and img.meta._has_array.has_array
    assert img.meta.blosc2.chunk_size == list(img.chunks)
    # user fields are assigned with coercion and validation
    img.meta.source = {"a": 1}
    img.meta.is_seg = True
    img.meta.bbox = {"bboxes": [[[0, 1], [2, 3], [4, 5]]]}
    assert isinstance(img.meta.source, MetaSource) and isinstance(img.meta.bbox, MetaBbox)
    with pytest.raises(ValueError):
        img.meta.spatial.spacing = [0.1, 0.2]  # the array has three spatial axes


@pytest.mark.parametrize("how", ["opened", "loaded", "r+", "deepcopy", "pickled"])
def test_internal_lists_are_read_only_on_files_and_copies(tmp_path, how):
    # the metadata handed to each handle of a file (and a copied or unpickled meta) kept
    # spatial.shape / blosc2.*_size as plain lists: a stray edit changed the handle's
    # metadata, or was written into the file (r+), or made close() fail
    p = tmp_path / "a.mla"
    MLArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=[1, 2, 3]).save(p)
    before = p.read_bytes()
    if how in ("opened", "loaded", "r+"):
        mmap_mode = "r+" if how == "r+" else "r"
        h = MLArray.load(p) if how == "loaded" else MLArray.open(p, mmap_mode=mmap_mode)
        meta = h.meta
    else:
        h = MLArray.open(p)
        copy_ = copy.deepcopy if how == "deepcopy" else (lambda m: pickle.loads(pickle.dumps(m)))
        meta = copy_(h.meta)
    for attempt in (
        lambda m: m.spatial.shape.__setitem__(0, 99),
        lambda m: m.spatial.shape.clear(),
        lambda m: m.blosc2.chunk_size.append(1),
        lambda m: m.blosc2.block_size.__setitem__(0, 1),
    ):
        with pytest.raises(AttributeError, match="read-only"):
            attempt(meta)
    assert meta.spatial.shape == [2, 3, 4] == list(h.shape)
    assert meta.blosc2.chunk_size == list(h.chunks)
    h.close()
    assert p.read_bytes() == before


def test_copy_from_skips_internal_fields_for_users():
    src = Meta(source={"a": 1}, spatial={"spacing": [1, 2, 3]})
    with _meta_internal_write():
        src._has_array.has_array = True
        src.blosc2 = MetaBlosc2(chunk_size=[1, 2, 3], block_size=[1, 1, 1])
        src.spatial.shape = [4, 5, 6]
    dst = Meta()
    dst.copy_from(src, overwrite=True)
    assert dst.source == {"a": 1} and dst.spatial.spacing == [1.0, 2.0, 3.0]
    assert not dst._has_array and dst.blosc2.chunk_size is None and dst.spatial.shape is None
    with _meta_internal_write():
        dst.copy_from(src, overwrite=True)
    assert dst._has_array and dst.blosc2.chunk_size == [1, 2, 3] and dst.spatial.shape == [4, 5, 6]
    # a merge that does not validate leaves the destination unchanged
    two_d = Meta(spatial={"spacing": [1, 2]})
    with _meta_internal_write():
        two_d.spatial.shape = [3, 3]
    with pytest.raises(ValueError):
        dst.copy_from(two_d, overwrite=True)
    assert dst.spatial.spacing == [1.0, 2.0, 3.0]


def test_meta_setters_as_in_the_reference():
    meta = Meta()
    assert meta.set_source({"patient_id": "p-001"}) is meta
    meta.set_extra({"pipeline": "v1"}).update_extra({"stage": "train"})
    meta.set_is_seg(True)
    meta.set_bbox([[[0, 1], [2, 3], [4, 5]]])
    meta.add_bbox([[1, 2], [3, 4], [5, 6]])
    meta.set_stats({"min": 0.0, "max": 1.0})
    meta.set_spatial({"spacing": [1.0, 2.0, 3.0], "coord_system": "RAS"})
    assert meta.source == {"patient_id": "p-001"}
    assert meta.extra == {"pipeline": "v1", "stage": "train"}
    assert meta.is_seg and len(meta.bbox.bboxes) == 2 and meta.bbox.scores is None
    assert meta.stats.max == 1.0 and meta.spatial.spacing == [1.0, 2.0, 3.0]
    scored = Meta().add_bbox([[0, 1]], score=0.9, label="lesion").add_bbox([[2, 3]], 0.5, "cyst")
    assert scored.bbox.scores == [0.9, 0.5] and scored.bbox.labels == ["lesion", "cyst"]
    with pytest.raises(ValueError, match="every box or for none"):
        scored.add_bbox([[4, 5]])
    img = MLArray(np.zeros(SHAPE), meta=Meta(source={"x": 1}, is_seg=True))
    img.meta.reset()
    assert img.meta.source == {} and img.meta.is_seg.is_seg is None
    assert img.meta.spatial.shape == list(SHAPE) and img.meta.blosc2.chunk_size is not None
    img.meta.set_spatial({"spacing": [2, 2, 2]})
    assert img.meta.spatial.shape == list(SHAPE) and img.spacing == [2.0, 2.0, 2.0]


def test_errors_are_ours_and_what_the_reference_raises(tmp_path):
    missing = tmp_path / "missing.mla"
    for call in (
        lambda: MLArray.open(missing),
        lambda: MLArray(missing),
        lambda: MLArray.load(missing),
    ):
        with pytest.raises(MLArrayFileNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, RuntimeError)
        assert str(missing) in str(info.value)
    for bad in (
        lambda: MetaBbox(bboxes=[[[0, 1], [2, 3]]], labels=[True]),
        lambda: MetaSpatial(coord_system=123),
        lambda: MetaStatistics(min="low"),
        lambda: Meta(is_seg="yes"),
    ):
        with pytest.raises(MetaTypeError) as info:
            bad()
        assert isinstance(info.value, (ValueError)) and isinstance(info.value, TypeError)
        assert isinstance(info.value, MLArrayError)
    with pytest.raises(ValueError) as info:
        MetaBbox(bboxes=[[[0, 1]]], scores=[0.1, 0.2])  # a wrong length is a value error only
    assert not isinstance(info.value, TypeError)
    assert issubclass(mlarray.LayoutError, RuntimeError) and mlarray.LayoutError.__module__ == (
        "mlarray.errors"
    )


def test_mode_mmap_mode_and_filepath_are_read_only_properties(tmp_path):
    p = tmp_path / "m.mla"
    mem = MLArray(np.zeros(SHAPE))
    assert (mem.mode, mem.mmap_mode, mem.filepath) == (None, None, None)
    assert mem.support_metadata is True
    mem.save(p)
    cases = {
        "load": (MLArray.load(p), (None, None, str(p))),
        "init": (MLArray(p), (None, None, str(p))),
        "open": (MLArray.open(p), ("r", "r", str(p))),
        "open a": (MLArray.open(p, mode="a", mmap_mode="r+"), ("a", "r+", str(p))),
        "open a no mmap": (MLArray.open(p, mode="a", mmap_mode=None), ("a", None, str(p))),
        "create": (
            MLArray.create(tmp_path / "c.mla", SHAPE, "f4"),
            ("w", "w+", str(tmp_path / "c.mla")),
        ),
    }
    for name, (a, expected) in cases.items():
        assert (a.mode, a.mmap_mode, a.filepath) == expected, name
        assert a.support_metadata is True, name  # the reference's attribute, always True
        for attr in ("mode", "mmap_mode", "filepath"):
            with pytest.raises(AttributeError):
                setattr(a, attr, "x")
        a.close()
    opened = MLArray.open(p, mode="a", mmap_mode="r+")
    opened.decompress()
    assert (opened.mode, opened.mmap_mode, opened.filepath) == (None, None, None)


def test_is_seg_behaves_as_a_bool_everywhere(tmp_path):
    assert bool(Meta(is_seg=False).is_seg) is False
    assert bool(Meta(is_seg=True).is_seg) is True
    assert bool(Meta().is_seg) is False  # unknown
    assert Meta(is_seg=True).is_seg == True  # noqa: E712
    assert Meta(is_seg=False).is_seg == False  # noqa: E712
    assert Meta().is_seg != False  # noqa: E712 - unknown is neither
    assert Meta(is_seg=True).is_seg == MetaIsSeg(True)
    assert str(Meta(is_seg=True).is_seg) == "True"
    img = MLArray(np.zeros(SHAPE, np.uint8), meta=Meta(is_seg=False))
    img.save(tmp_path / "s.mla")
    loaded = MLArray.open(tmp_path / "s.mla")
    assert not loaded.meta.is_seg
    if loaded.meta.is_seg:  # the way scripts test it
        pytest.fail("is_seg=False tested as true")
    assert bool(MetaHasArray(True)) and not MetaHasArray(False)
    assert MetaImageFormat().value is None and MetaVersion("v0").value == "v0"
    assert isinstance(Meta().extra, MetaExtra)
