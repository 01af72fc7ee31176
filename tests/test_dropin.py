"""Drop-in compatibility with the reference package (``mlarray`` 0.0.54): files its users
write with ordinary metadata open here, handles behave as scripts written for it expect.

Where the point is compatibility, the reference is the judge: files it wrote are in
``tests/data/reference-odd-meta`` (each ``.json`` says how), and with
``MLARRAY_REFERENCE_PYTHON`` set (``.ci/run`` does) the reference runs beside us.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
import pytest

from mlarray import Meta, MLArray
from mlarray.errors import (
    ClosedError,
    LayoutError,
    MetaTypeError,
    MetaValidationError,
    MLArrayFormatError,
)
from mlarray.integrity import RECORD_KEY, record_binding
from mlarray.record import decode_record
from tests._children import run_python, run_reference

ODD = Path(__file__).parent / "data" / "reference-odd-meta"
REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")
needs_reference = pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)


def _reference(code: str, cwd: Path) -> str:
    """Run ``code`` under the reference package (a black box) in ``cwd``; its stdout."""
    return run_reference(code, cwd)


def _expected_data(name: str) -> str:
    return json.loads((ODD / f"{name}.json").read_text())["sha256_c_order"]


def _sha(a: MLArray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a[...]).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- finding 1


def test_reference_file_with_tuples_int_keys_and_nan_origin_opens(tmp_path):
    path = ODD / "tuple_intkeys_nan_origin.mla"
    with pytest.warns(UserWarning, match=r"tuple_intkeys_nan_origin\.mla.*spatial\.origin"):
        a = MLArray.open(path)
    assert _sha(a) == _expected_data("tuple_intkeys_nan_origin")
    # tuples read as lists (as our own metadata holds them); int keys kept as written
    assert a.meta.source.data == {
        "original_spacing": [0.7, 0.7, 2.5],
        "shape_before_crop": [3, 4, 5],
        "labels": {0: "background", 1: "liver"},
        "nested": [[1, [2, 3]]],
    }
    assert a.meta.source["labels"][1] == "liver"
    # the non-finite origin is left unset; the rest of the geometry is kept
    assert a.meta.spatial.origin is None and a.spacing == [1.0, 2.0, 3.0]


def test_reference_file_with_an_odd_affine_opens_without_it(tmp_path):
    with pytest.warns(UserWarning, match=r"affine_last_row\.mla.*spatial\.affine.*last row"):
        a = MLArray.open(ODD / "affine_last_row.mla")
    assert _sha(a) == _expected_data("affine_last_row")
    assert a.meta.spatial.affine is None and a.shape == (3, 4, 5)


def test_int_keys_are_kept_when_building_and_round_trip(tmp_path):
    labels = {0: "background", 1: "liver", np.int64(2): "spleen", 2.5: "half", None: "none"}
    a = MLArray(np.zeros((2, 3), np.uint8), meta={"labels": labels, "sp": (1.0, 2.0)})
    want = {0: "background", 1: "liver", 2: "spleen", 2.5: "half", None: "none"}
    assert a.meta.source["labels"] == want
    assert type(next(iter(a.meta.source["labels"]))) is int
    a.meta.extra[3] = "three"
    a.save(tmp_path / "k.mla")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = MLArray.open(tmp_path / "k.mla")
    assert b.meta.source.data == {"labels": a.meta.source["labels"], "sp": [1.0, 2.0]}
    assert b.meta.extra[3] == "three"
    with pytest.raises(MetaTypeError, match="keys"):
        MLArray(np.zeros(2), meta={"k": {(1, 2): "tuple key"}})
    with pytest.raises(MetaTypeError, match="keys"):
        MLArray(np.zeros(2), meta={"k": {2**70: "huge"}})


def _record_file(tmp_path: Path, record: dict) -> Path:
    p = tmp_path / "forged.mla"
    MLArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)).save(p)
    s = blosc2.open(os.fspath(p), mode="a")
    s.schunk.vlmeta["mlarray"] = forged = gzip.compress(pickle.dumps(record, 4), mtime=0)
    s.schunk.vlmeta[RECORD_KEY] = record_binding(forged)  # as mlarray names its record
    del s
    return p


@pytest.mark.parametrize(
    ("spatial", "ignored"),
    [
        ({"spacing": [float("inf"), 1.0, 1.0]}, "spatial.spacing"),
        ({"spacing": (1.0, 2.0, 3.0), "origin": [0.0, float("nan"), 0.0]}, "spatial.origin"),
        ({"affine": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 1]]}, "spatial.affine"),
        ({"spacing": [1.0, 2.0], "origin": [1.0, 2.0, 3.0]}, "spatial.spacing"),
        ({"spacing": [1.0, 2.0]}, "spatial.spacing"),  # two values for three axes
        ({"axis_labels": ["a", "b"]}, "spatial.axis_labels"),
    ],
)
def test_geometry_this_version_refuses_is_ignored_with_a_warning(tmp_path, spatial, ignored):
    p = _record_file(tmp_path, {"spatial": spatial, "is_seg": True, "_mlarray_version": "v0"})
    with pytest.warns(UserWarning, match=rf"forged\.mla.*{ignored}"):
        a = MLArray.open(p)
    assert a[1, 2, 3] == 23 and a.meta.is_seg.is_seg is True
    assert getattr(a.meta.spatial, ignored.split(".")[1]) is None


def test_a_value_too_big_for_a_float_is_ignored(tmp_path):
    p = _record_file(tmp_path, {"stats": {"min": 10**400, "max": 3.0}, "is_seg": False})
    with pytest.warns(UserWarning, match=r"forged\.mla.*stats"):
        a = MLArray.open(p)
    assert a.meta.stats.min is None and a[1, 2, 3] == 23


def test_record_safety_caps_still_hold_for_keys():
    colliding = {"source": {"data": {i * (2**61 - 1): 0 for i in range(3)}}}
    with pytest.raises(MLArrayFormatError, match="non-string key"):
        decode_record(gzip.compress(pickle.dumps(colliding, 4), mtime=0), "c.mla")
    floats = {"source": {"data": {i + 0.5: 0 for i in range(1001)}}}
    with pytest.raises(MLArrayFormatError, match="float dict keys"):
        decode_record(gzip.compress(pickle.dumps(floats, 4), mtime=0), "f.mla")
    with pytest.raises(MLArrayFormatError, match="non-string key"):
        decode_record(gzip.compress(pickle.dumps({1: {}}, 4), mtime=0), "top.mla")


@needs_reference
def test_reference_and_we_read_each_others_ordinary_metadata(tmp_path):
    out = _reference(
        """
        import numpy as np; from mlarray import MLArray
        a = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
        MLArray(a, meta={"sp": (0.7, 0.7, 2.5), "labels": {0: "bg", 1: "liver"}}).save("r.mla")
        MLArray(a, spacing=(1, 2, float("nan"))).save("n.mla")
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip().endswith("ok")
    r = MLArray.open(tmp_path / "r.mla")
    assert r.meta.source.data == {"sp": [0.7, 0.7, 2.5], "labels": {0: "bg", 1: "liver"}}
    with pytest.warns(UserWarning, match=r"n\.mla.*spatial\.spacing"):
        n = MLArray.open(tmp_path / "n.mla")
    assert n.spacing is None and _sha(n) == _sha(r)
    # what we save keeps the int keys, and the reference reads them back
    r.meta.extra[7] = "seven"
    r.save(tmp_path / "ours.mla")
    out = _reference(
        """
        from mlarray import MLArray
        m = MLArray.open("ours.mla").meta
        print(repr((m.source.data["labels"], m.extra.data)))
        """,
        tmp_path,
    )
    assert out.strip().splitlines()[-1] == "({0: 'bg', 1: 'liver'}, {7: 'seven'})"


def test_meta_from_mapping_accepts_int_keys():
    m = Meta.from_mapping({"source": {"labels": {0: "bg"}}})
    assert m.source["labels"] == {0: "bg"}


# ----------------------------------------------------------------------------- finding 3


@pytest.mark.parametrize("how", ["close", "with", "in_memory"])
def test_save_after_close_refuses_and_keeps_the_file(tmp_path, how):
    p = tmp_path / "case.mla"
    data = np.arange(40 * 50 * 6, dtype=np.int16).reshape(40, 50, 6)
    MLArray(data, spacing=(1.0, 0.8, 0.8)).save(p)
    before = p.read_bytes()
    if how == "with":
        with MLArray.open(p, mode="a", mmap_mode="r+") as h:
            h.meta.extra["reviewed"] = True
    else:
        h = MLArray.open(p) if how == "close" else MLArray(p)
        h.meta.extra["reviewed"] = True
        h.close()
    with pytest.raises(ClosedError, match=r"case\.mla.*closed"):
        h.save(p)
    with pytest.raises(ValueError):  # a ValueError, as for a closed Python file
        h.save(tmp_path / "other.mla")
    assert not (tmp_path / "other.mla").exists()
    if how != "with":
        assert p.read_bytes() == before
    a = MLArray.open(p)
    np.testing.assert_array_equal(a[...], data)
    assert a.meta.extra.get("reviewed") is (True if how == "with" else None)


# ----------------------------------------------------------------------------- finding 7


@pytest.mark.parametrize("how", ["r+", "a", "create", "load_save"])
def test_handles_opened_with_a_relative_path_keep_their_file_after_chdir(
    tmp_path, monkeypatch, how
):
    for d in "AB":
        (tmp_path / d).mkdir()
        MLArray(np.zeros((10, 10, 10), np.int16)).save(tmp_path / d / "case.mla")
    monkeypatch.chdir(tmp_path / "A")
    if how == "r+":
        h = MLArray.open("case.mla", mmap_mode="r+")
    elif how == "a":
        h = MLArray.open("case.mla", mode="a", mmap_mode=None)
    elif how == "create":
        (tmp_path / "A" / "case.mla").unlink()
        h = MLArray.create("case.mla", (10, 10, 10), np.int16)
    else:
        h = MLArray("case.mla")
    assert h.filepath == "case.mla"  # as given, as in the reference
    monkeypatch.chdir(tmp_path / "B")  # a pipeline step that changes the working directory
    if how == "load_save":
        h[0, 0, 0] = 5
        h.spacing = [2.0, 2.0, 2.0]
        h.save(h.path)  # the path it was loaded from, whatever the directory now
    else:
        h[0, 0, 0] = 5
        h.spacing = [2.0, 2.0, 2.0]
        h.close()
    a = MLArray.open(tmp_path / "A" / "case.mla")
    assert a[0, 0, 0] == 5 and a.spacing == [2.0, 2.0, 2.0]
    b = MLArray.open(tmp_path / "B" / "case.mla")
    assert b[0, 0, 0] == 0 and b.spacing is None


# ----------------------------------------------------------------------------- finding 5


@pytest.mark.parametrize("c_order", [True, False])
def test_arange_and_linspace_values_do_not_depend_on_c_order(c_order):
    # blosc2 (what the reference builds on) is the judge: c_order is how it fills the
    # container, never which value lands where
    a = MLArray.arange(0, 60, shape=(3, 4, 5), c_order=c_order)
    want = blosc2.arange(0, 60, shape=(3, 4, 5), c_order=c_order)[...]
    np.testing.assert_array_equal(a[...], want)
    np.testing.assert_array_equal(a[...], np.arange(60).reshape(3, 4, 5))
    b = MLArray.linspace(0, 59, 60, shape=(3, 4, 5), c_order=c_order)
    want = blosc2.linspace(0, 59, 60, shape=(3, 4, 5), c_order=c_order)[...]
    np.testing.assert_allclose(b[...], want)


@needs_reference
def test_arange_and_linspace_match_the_reference(tmp_path):
    _reference(
        """
        import numpy as np; from mlarray import MLArray
        np.save("a.npy", MLArray.arange(0, 60, shape=(3, 4, 5), c_order=False)[...])
        np.save("l.npy", MLArray.linspace(0, 1, 24, shape=(2, 3, 4), c_order=False)[...])
        """,
        tmp_path,
    )
    a = MLArray.arange(0, 60, shape=(3, 4, 5), c_order=False)
    np.testing.assert_array_equal(a[...], np.load(tmp_path / "a.npy"))
    b = MLArray.linspace(0, 1, 24, shape=(2, 3, 4), c_order=False)
    np.testing.assert_array_equal(b[...], np.load(tmp_path / "l.npy"))


# ----------------------------------------------------------------------------- finding 6

_SERIALIZABLE_CASES = {
    "plain": {"a": 1},
    "tuple": {"a": (1, 2)},
    "int_key": {0: "x"},
    "numpy_value": {"a": np.float32(1)},
    "nan": {"a": float("nan")},
    "tuple_key": {(1, 2): 1},
    "set": {"a": {1}},
    "none_key": {None: 1},
    "bytes": {"a": b"x"},
    "nested": {"a": {"b": [1, {"c": 2}]}},
    "numpy_key": {np.int64(1): 2},
    "ndarray": {"a": np.zeros(2)},
    "empty": {},
}
# what the reference's is_serializable answers (recorded from mlarray 0.0.54)
_REFERENCE_SERIALIZABLE = {
    "plain": True,
    "tuple": True,
    "int_key": True,
    "numpy_value": False,
    "nan": True,
    "tuple_key": False,
    "set": False,
    "none_key": True,
    "bytes": False,
    "nested": True,
    "numpy_key": False,
    "ndarray": False,
    "empty": True,
}


def test_reference_public_names_import():
    import mlarray
    import mlarray.blosc2_layout_strategies as strategies
    from mlarray import cli_convert_to_mlarray, cli_print_header, is_serializable
    from mlarray.cli import cli_convert_to_mlarray as convert_script
    from mlarray.cli import cli_print_header as header_script
    from mlarray.layout import comp_blosc2_params
    from mlarray.utils import is_serializable as same

    assert is_serializable is same
    assert cli_print_header is header_script and cli_convert_to_mlarray is convert_script
    assert {"is_serializable", "cli_print_header", "cli_convert_to_mlarray"} <= set(mlarray.__all__)
    got = {k: is_serializable(v) for k, v in _SERIALIZABLE_CASES.items()}
    assert got == _REFERENCE_SERIALIZABLE
    for name in strategies.__all__:
        args = ((512, 512, 512), (192, 192, 192))
        chunks, blocks = getattr(strategies, name)(*args, safety_factor=0.8)
        assert [chunks, blocks] == list(comp_blosc2_params(*args))
        assert all(b <= c for b, c in zip(blocks, chunks, strict=True))


@needs_reference
def test_is_serializable_answers_as_the_reference(tmp_path):
    out = _reference(
        """
        import numpy as np; from mlarray import is_serializable
        import mlarray.blosc2_layout_strategies as s
        cases = {
            "plain": {"a": 1}, "tuple": {"a": (1, 2)}, "int_key": {0: "x"},
            "numpy_value": {"a": np.float32(1)}, "nan": {"a": float("nan")},
            "tuple_key": {(1, 2): 1}, "set": {"a": {1}}, "none_key": {None: 1},
            "bytes": {"a": b"x"}, "nested": {"a": {"b": [1, {"c": 2}]}},
            "numpy_key": {np.int64(1): 2}, "ndarray": {"a": np.zeros(2)}, "empty": {},
        }
        print({k: is_serializable(v) for k, v in cases.items()})
        print(s.comp_blosc2_params_spatial_only_magnitude((512, 512, 512), (192, 192, 192)))
        """,
        tmp_path,
    )
    answers, layout = out.strip().splitlines()[-2:]
    assert answers == repr(_REFERENCE_SERIALIZABLE)
    import mlarray.blosc2_layout_strategies as strategies

    want = strategies.comp_blosc2_params_spatial_only_magnitude((512, 512, 512), (192, 192, 192))
    assert layout == repr(tuple(want)) or layout == repr(want)


# ----------------------------------------------------------------------------- finding 4


def test_chunk_and_block_size_are_honoured_with_the_default_patch_size(tmp_path):
    a = np.zeros((20, 60, 80), np.float32)
    chunks, blocks = (10, 30, 40), (5, 10, 10)
    made = {
        "MLArray": MLArray(a, chunk_size=chunks, block_size=blocks),
        "asarray": MLArray.asarray(a, chunk_size=chunks, block_size=blocks),
        "zeros": MLArray.zeros(a.shape, np.float32, chunk_size=chunks, block_size=blocks),
        "create": MLArray.create(
            tmp_path / "c.mla", a.shape, np.float32, chunk_size=chunks, block_size=blocks
        ),
    }
    made["create"].close()
    made["create"] = MLArray.open(tmp_path / "c.mla")
    for name, m in made.items():
        assert m.chunks == chunks and m.blocks == blocks, name
        assert m.meta.blosc2.chunk_size == list(chunks), name
        assert m.meta.blosc2.patch_size is None, name
    with pytest.raises(LayoutError, match="both chunk_size and block_size") as info:
        MLArray(a, chunk_size=chunks)
    assert isinstance(info.value, RuntimeError)  # what the reference raises
    with pytest.raises(LayoutError, match="both chunk_size and block_size"):
        MLArray.zeros(a.shape, np.float32, block_size=blocks)
    with pytest.raises(LayoutError, match="patch_size"):
        MLArray(a, patch_size=64, chunk_size=chunks, block_size=blocks)
    # patch_size=None: one of them alone, the other left to Blosc2 (ours, documented)
    assert MLArray(a, patch_size=None, chunk_size=chunks).chunks == chunks


@needs_reference
def test_chunk_and_block_size_as_the_reference(tmp_path):
    out = _reference(
        """
        import numpy as np; from mlarray import MLArray
        a = np.zeros((20, 60, 80), np.float32)
        def t(**kw):
            try:
                m = MLArray(a, **kw)
                return [m.meta.blosc2.chunk_size, m.meta.blosc2.block_size]
            except Exception as e:
                return type(e).__name__ if isinstance(e, RuntimeError) else repr(e)
        print(repr([t(chunk_size=(10, 30, 40), block_size=(5, 10, 10)),
                    t(chunk_size=(10, 30, 40)), t(block_size=(5, 10, 10)),
                    t(patch_size=64, chunk_size=(10, 30, 40), block_size=(5, 10, 10))]))
        """,
        tmp_path,
    )
    a = np.zeros((20, 60, 80), np.float32)

    def t(**kw):
        try:
            m = MLArray(a, **kw)
            return [m.meta.blosc2.chunk_size, m.meta.blosc2.block_size]
        except RuntimeError:
            return "RuntimeError"

    ours = [
        t(chunk_size=(10, 30, 40), block_size=(5, 10, 10)),
        t(chunk_size=(10, 30, 40)),
        t(block_size=(5, 10, 10)),
        t(patch_size=64, chunk_size=(10, 30, 40), block_size=(5, 10, 10)),
    ]
    assert repr(ours) == out.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- finding 9


@pytest.mark.parametrize("how", ["load", "constructor"])
def test_decompressed_load_saves_with_the_files_layout(tmp_path, how):
    p = tmp_path / "case.mla"
    a = np.random.default_rng(0).random((30, 40, 50)).astype(np.float32)
    MLArray(
        a, patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 25), cparams={"codec": 5}
    ).save(p)
    m = MLArray.load(p, compressed=False) if how == "load" else MLArray(p, compressed=False)
    assert isinstance(m._store, np.ndarray)
    m[0] = 0
    m.save(p)
    o = MLArray.open(p)
    assert o.chunks == (10, 20, 25) and o.blocks == (5, 10, 25)
    assert o.meta.blosc2.cparams["codec"] == 5
    a[0] = 0
    np.testing.assert_array_equal(o[...], a)


# ----------------------------------------------------------------------------- minor


def test_zeros_and_empty_default_to_float64_as_numpy():
    assert MLArray.zeros((2, 2), None).dtype == np.zeros((2, 2)).dtype == np.float64
    assert MLArray.empty((2, 2), None).dtype == np.float64
    assert MLArray.ones((2, 2)).dtype == np.float64


def test_storage_keywords_with_a_path_are_refused_not_ignored(tmp_path):
    p = tmp_path / "x.mla"
    MLArray(np.zeros((30, 40, 50), np.float32)).save(p)
    for kw in (
        {"patch_size": 64},
        {"chunk_size": (10, 10, 10), "block_size": (5, 5, 5)},
        {"cparams": {"codec": 5}},
    ):
        with pytest.raises(LayoutError, match=r"x\.mla.*cannot be given when loading") as info:
            MLArray(p, **kw)
        assert isinstance(info.value, RuntimeError)  # what the reference raises
    a = MLArray(p, dparams={"nthreads": 2}, compressed=False)  # load parameters apply
    assert a.shape == (30, 40, 50)


def test_int_keys_in_source_do_not_break_export(tmp_path):
    pytest.importorskip("SimpleITK")
    from mlarray.convert import to_file
    from mlarray.meta import _meta_internal_write

    a = MLArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(1.0, 2.0, 3.0))
    a.meta.source.update({0: "background", "NOTE": "kept"})
    with _meta_internal_write():
        a.meta._image_meta_format = "nrrd"
    out = to_file(a, tmp_path / "x.nrrd")
    import SimpleITK as sitk

    img = sitk.ReadImage(str(out))
    assert img.GetMetaData("NOTE") == "kept"
    assert sitk.GetArrayFromImage(img).sum() == np.arange(24).sum()


def test_the_reference_s_except_clauses_catch_our_errors(tmp_path):
    # loaders written for the reference skip unreadable cases with `except RuntimeError`
    # (Blosc2's error there) and catch writes to read-only handles with `except ValueError`
    good = tmp_path / "good.mla"
    MLArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5)).save(good)
    data = good.read_bytes()
    (tmp_path / "empty.mla").write_bytes(b"")
    (tmp_path / "trunc.mla").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mla").write_text("not an mla file\n" * 50)
    for name in ("empty.mla", "trunc.mla", "text.mla"):
        for read in (MLArray.open, MLArray.load, MLArray):
            with pytest.raises(RuntimeError, match=name) as info:
                read(tmp_path / name)
            assert isinstance(info.value, MLArrayFormatError)  # and still a ValueError
            assert isinstance(info.value, ValueError)
    handle = MLArray.open(good)
    with pytest.raises(ValueError) as info:
        handle[0, 0, 0] = 1
    assert isinstance(info.value, PermissionError)
    assert MLArray.open(good)[0, 0, 0] == 0


def test_a_metadata_only_mlarray_is_empty_and_falsy(tmp_path):
    # loaders skip sidecar files with `if not m:` / len(m) == 0, as with the reference
    MLArray(spacing=[1.0, 2.0, 3.0], meta={"case": "sidecar"}).save(tmp_path / "meta_only.mla")
    m = MLArray.open(tmp_path / "meta_only.mla")
    assert len(m) == 0 and not m
    assert len(MLArray()) == 0 and not MLArray()
    full = MLArray(np.zeros((2, 3, 4), np.uint8))
    assert len(full) == 2 and full


def test_axis_units_per_spatial_axis_are_accepted_and_kept(tmp_path):
    """One unit per spatial axis on a channel-first image (parallel to spacing): the
    reference writes and keeps it; here it was refused and dropped from its files."""
    labels = ["channel", "spatial", "spatial", "spatial"]
    m = MLArray(np.zeros((2, 4, 5, 6), np.float32), axis_labels=labels, spacing=[1, 1, 2])
    m.meta.spatial.axis_units = ["mm", "mm", "mm"]
    m.save(tmp_path / "units.mla")
    back = MLArray.load(tmp_path / "units.mla")
    assert back.meta.spatial.axis_units == ["mm", "mm", "mm"]
    assert back.meta.spatial.units_per_axis() == [None, "mm", "mm", "mm"]
    back.save(tmp_path / "resaved.mla")
    assert MLArray.open(tmp_path / "resaved.mla").meta.spatial.axis_units == ["mm", "mm", "mm"]
    given = Meta(spatial={"axis_units": ["mm", "mm", "mm"], "axis_labels": labels})
    assert MLArray(np.zeros((2, 4, 5, 6)), meta=given).meta.spatial.axis_units == ["mm"] * 3
    per_axis = ["", "mm", "mm", "mm"]
    m.meta.spatial.axis_units = per_axis  # one per array axis, as before
    assert m.meta.spatial.units_per_axis() == per_axis
    with pytest.raises(MetaValidationError, match="one per spatial axis"):
        m.meta.spatial.axis_units = ["mm", "mm"]


@needs_reference
def test_reference_files_with_units_per_spatial_axis_keep_them(tmp_path):
    _reference(
        """
        import numpy as np
        from mlarray import MLArray
        m = MLArray(np.zeros((2, 4, 5, 6), np.float32), spacing=[1, 1, 2],
                    axis_labels=["channel", "spatial", "spatial", "spatial"])
        m.meta.spatial.axis_units = ["mm", "mm", "mm"]
        m.save("units.mla")
        """,
        tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is ignored
        m = MLArray.load(tmp_path / "units.mla")
    assert m.meta.spatial.axis_units == ["mm", "mm", "mm"]
    m.save(tmp_path / "resaved.mla")
    assert MLArray.open(tmp_path / "resaved.mla").meta.spatial.axis_units == ["mm", "mm", "mm"]


def test_a_given_meta_lays_the_new_array_out_for_its_recorded_patch_size(tmp_path):
    """Reference 0.0.54 (recorded): ``MLArray(seg, meta=img.meta)`` (and asarray, zeros,
    ones, full, empty, create, ``*_like``) records patch [16, 16, 16] for an image saved
    with it, chunks (28, 30, 30); ``copy=img``, an explicit patch/chunk size and a Meta
    without a layout keep the default."""
    shape = (40, 50, 60)
    MLArray(np.zeros(shape, np.float32), spacing=[1, 1, 1], patch_size=[16] * 3).save(
        tmp_path / "img.mla"
    )
    img = MLArray.open(tmp_path / "img.mla")
    seg = np.zeros(shape, np.uint8)
    laid_out = [
        MLArray(seg, meta=img.meta),
        MLArray.asarray(seg, meta=img.meta),
        MLArray.zeros(shape, np.uint8, meta=img.meta),
        MLArray.ones(shape, np.uint8, meta=img.meta),
        MLArray.full(shape, 2, np.uint8, meta=img.meta),
        MLArray.empty(shape, np.uint8, meta=img.meta),
        MLArray.zeros_like(img, dtype=np.uint8),
        MLArray.zeros_like(img, dtype=np.uint8, meta=img.meta),
        MLArray.create(tmp_path / "c.mla", shape, np.uint8, meta=img.meta),
    ]
    for a in laid_out:
        assert a.meta.blosc2.patch_size == [16, 16, 16]
        assert a.chunks == (28, 30, 30)
    default = [192, 192, 192]
    assert MLArray(seg, copy=img).meta.blosc2.patch_size == default
    assert MLArray(seg, meta=Meta()).meta.blosc2.patch_size == default
    assert MLArray.zeros_like(img, dtype=np.uint8, meta={"k": 1}).meta.blosc2.patch_size == default
    assert MLArray(seg, meta=img.meta, patch_size=[8] * 3).meta.blosc2.patch_size == [8] * 3
    given = MLArray(seg, meta=img.meta, chunk_size=[10] * 3, block_size=[5] * 3)
    assert given.chunks == (10, 10, 10) and given.meta.blosc2.patch_size is None
    four_d = MLArray(
        np.zeros((2, *shape), np.uint8),
        meta=img.meta,
        axis_labels=["channel", "spatial", "spatial", "spatial"],
    )
    assert four_d.meta.blosc2.patch_size == [16, 16, 16]  # one per spatial axis
    # a recorded patch that does not fit the new array's spatial axes: the default
    # (the reference raises RuntimeError)
    plane = MLArray(np.zeros((40, 50), np.float32), patch_size=[16, 16])
    assert MLArray(seg, meta=plane.meta).meta.blosc2.patch_size == default
    saved = MLArray(seg, meta=img.meta)
    saved.save(tmp_path / "seg.mla")
    assert MLArray.open(tmp_path / "seg.mla").meta.blosc2.patch_size == [16, 16, 16]


_A = np.zeros((4, 5, 6), np.float32)


@pytest.mark.parametrize(
    ("make", "reference_class"),
    [  # the class reference 0.0.54 raises (recorded)
        (lambda: MLArray(_A, meta=[1, 2]), ValueError),
        (lambda: MLArray(_A, meta="CT"), ValueError),
        (lambda: MLArray.zeros_like(_A, meta="x"), ValueError),
        (lambda: MLArray(_A, cparams=[5]), TypeError),
        (lambda: MLArray(_A, cparams={"clevel": "x"}), TypeError),
        (lambda: MLArray(_A, dparams=[1]), TypeError),
        (lambda: MLArray(_A, dparams={"nthreads": "x"}), TypeError),
        (lambda: MLArray(_A, spacing=[None, 1, 1]), TypeError),
        (lambda: MLArray(_A, origin=[None, 1, 1]), TypeError),
        (lambda: MLArray(_A, direction=[[None] * 3] * 3), TypeError),
        (lambda: Meta(spatial={"spacing": [None, 1, 1]}), TypeError),
        (lambda: MLArray(_A, patch_size=[None] * 3), TypeError),
        (lambda: MLArray(_A, chunk_size="x", block_size="x"), TypeError),
    ],
)
def test_wrong_types_are_both_value_and_type_errors(make, reference_class):
    """README: wrong metadata types are a ValueError and a TypeError, so the reference's
    ``except`` clause catches them whichever it was."""
    with pytest.raises(reference_class) as info:
        make()
    assert isinstance(info.value, MetaTypeError)  # ours: ValueError and TypeError


# ------------------------------------------------------------------------ r16: compressed=False


def _file_storage(path: Path) -> tuple:
    s = blosc2.open(str(path), mode="r")
    return int(s.cparams.codec.value), s.cparams.clevel, s.chunks, s.blocks


_A16 = (np.arange(20 * 30 * 40) % 97).astype(np.int16).reshape(20, 30, 40)
_NUMPY_BUILT = {
    "MLArray+dict": lambda c: MLArray(_A16, cparams={"codec": "zstd", "clevel": 1}, compressed=c),
    "asarray+CParams": lambda c: MLArray.asarray(
        _A16, cparams=blosc2.CParams(codec=blosc2.Codec.ZLIB, clevel=3), compressed=c
    ),
    "zeros+CParams": lambda c: MLArray.zeros(
        _A16.shape,
        np.int16,
        cparams=blosc2.CParams(codec=blosc2.Codec.ZLIB, clevel=3),
        compressed=c,
    ),
    "full+dict": lambda c: MLArray.full(
        _A16.shape, 7, np.int16, cparams={"codec": blosc2.Codec.ZSTD, "clevel": 2}, compressed=c
    ),
    "MLArray+patch": lambda c: MLArray(_A16, patch_size=16, compressed=c),
    "empty+patch": lambda c: MLArray.empty(_A16.shape, np.int16, patch_size=8, compressed=c),
    "ones_like+patch": lambda c: MLArray.ones_like(_A16, patch_size=[8, 16, 8], compressed=c),
    "MLArray+chunk+block": lambda c: MLArray(
        _A16, chunk_size=[10, 15, 20], block_size=[5, 5, 10], compressed=c
    ),
    "zeros+chunk+block": lambda c: MLArray.zeros(
        _A16.shape,
        np.int16,
        patch_size=None,
        chunk_size=[10, 15, 20],
        block_size=[5, 5, 10],
        compressed=c,
    ),
    "arange+dict": lambda c: MLArray.arange(0, 5000, cparams={"clevel": 2}, compressed=c),
}


@pytest.mark.parametrize("name", list(_NUMPY_BUILT))
def test_compressed_false_saves_with_the_storage_keywords_given(tmp_path, name):
    # as the reference: a numpy-backed array built with storage keywords is saved with them,
    # the same file as when built compressed; meta.blosc2 says so before the save
    numpy_backed, compressed = _NUMPY_BUILT[name](False), _NUMPY_BUILT[name](True)
    assert isinstance(numpy_backed._store, np.ndarray)
    nb, cb = numpy_backed.meta.blosc2, compressed.meta.blosc2
    assert nb.cparams is not None
    assert (nb.patch_size, nb.cparams, nb.dparams) == (cb.patch_size, cb.cparams, cb.dparams)
    if name.startswith("arange"):  # patch_size None: Blosc2 chooses the layout when it compresses
        assert nb.chunk_size is nb.block_size is None
    else:
        assert (nb.chunk_size, nb.block_size) == (cb.chunk_size, cb.block_size)
    numpy_backed.save(tmp_path / "n.mla")
    compressed.save(tmp_path / "c.mla")
    assert _file_storage(tmp_path / "n.mla") == _file_storage(tmp_path / "c.mla")
    o = MLArray.open(tmp_path / "n.mla")
    np.testing.assert_array_equal(o[...], numpy_backed.to_numpy())
    assert o.meta.blosc2.cparams == numpy_backed.meta.blosc2.cparams


def test_compressed_false_storage_as_the_reference_wrote_it(tmp_path):
    # what mlarray 0.0.54 writes for these requests (codec, clevel, chunks, blocks; recorded)
    MLArray(_A16, compressed=False, cparams={"codec": blosc2.Codec.ZSTD, "clevel": 1}).save(
        tmp_path / "a.mla"
    )
    assert _file_storage(tmp_path / "a.mla") == (5, 1, (20, 30, 40), (20, 24, 26))
    MLArray.zeros(
        _A16.shape,
        np.int16,
        compressed=False,
        cparams=blosc2.CParams(codec=blosc2.Codec.ZLIB, clevel=3),
    ).save(tmp_path / "b.mla")
    assert _file_storage(tmp_path / "b.mla") == (4, 3, (20, 30, 40), (20, 24, 26))
    m = MLArray(_A16, compressed=False, patch_size=16)
    assert (m.meta.blosc2.patch_size, m.meta.blosc2.chunk_size) == ([16] * 3, [20, 30, 26])
    m.save(tmp_path / "c.mla")
    assert _file_storage(tmp_path / "c.mla")[2:] == ((20, 30, 26), (20, 24, 26))
    m = MLArray(
        _A16, compressed=False, patch_size=None, chunk_size=[10, 15, 20], block_size=[5, 5, 10]
    )
    assert (m.meta.blosc2.chunk_size, m.meta.blosc2.block_size) == ([10, 15, 20], [5, 5, 10])
    m.save(tmp_path / "d.mla")
    assert _file_storage(tmp_path / "d.mla")[2:] == ((10, 15, 20), (5, 5, 10))
    m = MLArray(_A16, compressed=False, dparams={"nthreads": 3})
    assert m.meta.blosc2.dparams == {"nthreads": 3}


@pytest.mark.parametrize("how", ["load", "constructor"])
def test_integer_index_of_a_numpy_backed_array_is_numpy_s_scalar(tmp_path, how):
    # as the reference (and numpy): m[z, y, x] is a hashable numpy scalar, label sets work
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    MLArray(seg).save(tmp_path / "seg.mla")
    if how == "load":
        m = MLArray.load(tmp_path / "seg.mla", compressed=False)
    else:
        m = MLArray(seg, compressed=False)
    v = m[1, 1, 1]
    assert type(v) is np.uint8 and v == 2
    assert {m[z, y, x] for z, y, x in [(0, 0, 0), (1, 1, 1), (2, 2, 2)]} == {0, 2}
    assert {0: "bg", 2: "liver"}[m[1, 1, 1]] == "liver"
    for key in [(1, 1, 1), (-1, 0, 2), 1, (slice(1, 3), 2), ..., seg > 0, ([0, 1], [1, 2], 1)]:
        got, want = m[key], seg[key]
        assert type(got) is type(want)
        np.testing.assert_array_equal(got, want)


def test_all_non_spatial_axes_have_the_reference_s_geometry(tmp_path):
    # mlarray 0.0.54 gives affine [[1.0]] and empty parts for an array without a spatial axis
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    labels = ["channel", "temporal", "channel"]
    MLArray(a, axis_labels=labels, patch_size=None).save(tmp_path / "c.mla")
    for m in (MLArray(a, axis_labels=labels), MLArray.open(tmp_path / "c.mla")):
        assert m.spatial_ndim == 0
        got = [m.affine, m.translation, m.scale, m.rotation, m.shear]
        assert got == [[[1.0]], [], [], [], []]
    m = MLArray(a, axis_labels=labels)
    m.affine = [[1.0]]  # accepted by the reference, and saved
    m.save(tmp_path / "d.mla")
    assert MLArray.open(tmp_path / "d.mla").meta.spatial.affine == [[1.0]]
    with pytest.raises(ValueError):
        m.affine = [[1.0, 0.0], [0.0, 1.0]]  # one spatial axis, the array has none


def test_mode_a_with_the_default_mmap_mode_stays_read_only(tmp_path):
    # mmap_mode overrides mode (the reference): open(p, mode="a") maps the file read-only;
    # voxel writes raise a ValueError, metadata edits stay in memory, close leaves the file
    p = tmp_path / "img.mla"
    MLArray(np.zeros((4, 5, 6), np.int16), spacing=[1, 1, 1]).save(p)
    before = p.read_bytes()
    h = MLArray.open(p, mode="a")
    assert (h.mode, h.mmap_mode) == ("a", "r")
    h.spacing = [2, 2, 2]
    h.meta.source["k"] = 1
    with pytest.raises(ValueError, match=r"img\.mla.*read-only"):
        h[0, 0, 0] = 7
    assert h.spacing == [2, 2, 2] and h.meta.source["k"] == 1  # kept in memory
    h2 = pickle.loads(pickle.dumps(h))
    with pytest.raises(ValueError):
        h2[0, 0, 0] = 7
    h.close()
    assert p.read_bytes() == before
    # the writable forms still write
    for kw in ({"mmap_mode": "r+"}, {"mode": "a", "mmap_mode": None}):
        w = MLArray.open(p, **kw)
        w[0, 0, 0] = 7
        w.close()
        assert MLArray.open(p)[0, 0, 0] == 7
        MLArray(np.zeros((4, 5, 6), np.int16)).save(p)


@pytest.mark.parametrize("given", [{"clevel": 9}, {"filters": [blosc2.Filter.BITSHUFFLE]}])
def test_a_partial_cparams_dict_writes_what_the_reference_writes(tmp_path, given):
    # mlarray 0.0.54 fills a dict's missing keys from Blosc2 (ZSTD, level 5, shuffle); the
    # dict and the blosc2.CParams object of one request write the same data
    a = (np.arange(20 * 30 * 40) % 251).astype(np.float32).reshape(20, 30, 40)
    MLArray(a, cparams=given).save(tmp_path / "d.mla")
    MLArray(a, cparams=blosc2.CParams(**given)).save(tmp_path / "o.mla")
    want = (5, given.get("clevel", 5))  # recorded from the reference: ZSTD 9 / ZSTD 5
    assert _file_storage(tmp_path / "d.mla")[:2] == want
    assert _file_storage(tmp_path / "o.mla") == _file_storage(tmp_path / "d.mla")
    d, o = (blosc2.open(str(tmp_path / n), mode="r") for n in ("d.mla", "o.mla"))
    assert d.cparams.filters == o.cparams.filters
    assert d.schunk.cbytes == o.schunk.cbytes


_STORAGE_REQUESTS = """
import blosc2, numpy as np
from mlarray import MLArray
a = (np.arange(20 * 30 * 40) % 97).astype(np.int16).reshape(20, 30, 40)
made = [
    MLArray(a, compressed=False, cparams={"codec": blosc2.Codec.ZSTD, "clevel": 1}),
    MLArray.zeros(a.shape, a.dtype, compressed=False,
                  cparams=blosc2.CParams(codec=blosc2.Codec.ZLIB, clevel=3)),
    MLArray(a, compressed=False, patch_size=16, cparams={"clevel": 2}),
    MLArray(a, compressed=False, patch_size=None, chunk_size=[10, 15, 20],
            block_size=[5, 5, 10], cparams={"codec": blosc2.Codec.LZ4}),
    MLArray(a, cparams={"clevel": 9}),
    MLArray(a, cparams={"filters": [blosc2.Filter.BITSHUFFLE]}),
    MLArray(a, compressed=False, cparams={"nthreads": 2}),
]
out = []
for i, m in enumerate(made):
    m.save(f"s{i}.mla")
    s = blosc2.open(f"s{i}.mla", mode="r")
    filters = [int(getattr(f, "value", f)) for f in s.cparams.filters]
    out.append([int(s.cparams.codec.value), s.cparams.clevel, filters,
                list(s.chunks), list(s.blocks)])
print(out)
"""


@needs_reference
def test_storage_requests_write_what_the_reference_writes(tmp_path):
    # compressed=False arrays and partial cparams dicts: the same codec, level, filters
    # and layout as mlarray 0.0.54 writes (requests that name a codec or a level)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ours").mkdir()
    want = _reference(_STORAGE_REQUESTS, tmp_path / "ref").strip().splitlines()[-1]
    ours = run_python(f"import os; os.chdir({str(tmp_path / 'ours')!r})\n{_STORAGE_REQUESTS}")
    assert ours.strip().splitlines()[-1] == want


# ----------------------------------------------------------------------------- r17 review


_CZYX = ["channel", "spatial_z", "spatial_y", "spatial_x"]
_SPATIAL_BOXES = [[[0, 4], [1, 5], [2, 6]]]  # [min, max] per spatial axis (z, y, x)


def test_boxes_per_spatial_axis_of_a_channel_image_are_saved(tmp_path):
    # a (C, Z, Y, X) image with one [min, max] per spatial axis: the setter, Meta(bbox=),
    # and create() accepted them, then save() refused them (the reference writes them)
    a = MLArray(np.zeros((2, 8, 8, 8), np.float32), spacing=[1, 1, 1], axis_labels=_CZYX)
    a.meta.bbox = {"bboxes": _SPATIAL_BOXES, "labels": ["tumor"]}
    a.save(tmp_path / "set.mla")
    b = MLArray(
        np.zeros((2, 8, 8, 8), np.float32),
        axis_labels=_CZYX,
        meta=Meta(bbox={"bboxes": _SPATIAL_BOXES}),
    )
    b.save(tmp_path / "ctor.mla")
    c = MLArray.create(
        tmp_path / "create.mla",
        (2, 8, 8, 8),
        np.float32,
        meta=Meta(spatial={"axis_labels": _CZYX}, bbox={"bboxes": _SPATIAL_BOXES}),
    )
    c[...] = 1
    c.close()
    for name in ("set", "ctor", "create"):
        assert MLArray.open(tmp_path / f"{name}.mla").meta.bbox.bboxes == _SPATIAL_BOXES
    assert MLArray.open(tmp_path / "set.mla").meta.bbox.labels == ["tumor"]
    # a count that is neither the array's nor its spatial axes' is still refused
    a.meta.bbox = {"bboxes": [[[0, 4], [1, 5]]]}
    with pytest.raises(MetaValidationError, match=r"bbox\.bboxes.*2 axes.*4 axes.*3 spatial"):
        a.save(tmp_path / "two.mla")
    assert not (tmp_path / "two.mla").exists()


@needs_reference
def test_reference_file_with_boxes_per_spatial_axis_is_resaved_and_edited(tmp_path):
    _reference(
        f"""
        import numpy as np; from mlarray import MLArray
        img = MLArray(np.zeros((2, 8, 8, 8), np.float32), axis_labels={_CZYX!r})
        img.meta.bbox = {{"bboxes": {_SPATIAL_BOXES!r}, "labels": ["tumor"]}}
        img.save("ref.mla")
        """,
        tmp_path,
    )
    ref = tmp_path / "ref.mla"
    MLArray.load(ref).save(tmp_path / "resaved.mla")
    assert MLArray.open(tmp_path / "resaved.mla").meta.bbox.bboxes == _SPATIAL_BOXES
    # an r+ session keeps both its voxel writes and its metadata edits
    h = MLArray.open(ref, mmap_mode="r+")
    h[0, 0, 0, 0] = 5
    h.meta.source["reviewed"] = True
    h.close()
    back = MLArray.open(ref)
    assert back[0, 0, 0, 0] == 5 and back.meta.source.data == {"reviewed": True}
    assert back.meta.bbox.bboxes == _SPATIAL_BOXES and back.meta.bbox.labels == ["tumor"]


_PUBLIC_NAMES = """
import json, numpy as np, mlarray.meta as mm
from mlarray import MLArray
img = MLArray(np.zeros((2, 3, 4), np.int16))
def methods(x):
    return sorted(n for n in dir(x) if not n.startswith("_") and callable(getattr(x, n)))
out = {"MLArray": methods(img)}
m = img.meta
for name in ("", "source", "extra", "spatial", "stats", "bbox", "is_seg", "blosc2",
             "_has_array", "_image_meta_format"):
    part = getattr(m, name) if name else m
    out[name or "meta"] = methods(part)
print(json.dumps(out))
"""


@needs_reference
def test_every_public_method_of_the_reference_s_classes_exists(tmp_path):
    # code written for mlarray 0.0.54 may call any of them (Meta.update_source,
    # meta.is_seg.set(...), meta.stats.reset() were missing)
    want = json.loads(_reference(_PUBLIC_NAMES, tmp_path).strip().splitlines()[-1])
    ours = json.loads(run_python(_PUBLIC_NAMES).strip().splitlines()[-1])
    missing = {c: sorted(set(names) - set(ours[c])) for c, names in want.items()}
    assert not any(missing.values()), missing


def test_update_source_set_and_reset_on_the_metadata_parts(tmp_path):
    p = tmp_path / "case.mla"
    img = MLArray(np.zeros((4, 4, 4), np.int16), spacing=[1, 1, 2])
    img.meta.source = {"PatientID": "p1"}
    img.meta.is_seg = True
    img.meta.stats = {"min": 0, "max": 1}
    img.meta.bbox = {"bboxes": [[[0, 1], [0, 1], [0, 1]]], "labels": ["a"]}
    # update_source merges, as update_extra; both refuse what is not a mapping, atomically
    assert img.meta.update_source({"Modality": "CT"}) is img.meta
    assert img.meta.source == {"PatientID": "p1", "Modality": "CT"}
    for update in (img.meta.update_source, img.meta.update_extra):
        with pytest.raises(TypeError, match="mapping"):
            update([("a", 1)])
        with pytest.raises(TypeError):
            update({"ok": 1, "bad": object()})
    assert img.meta.source == {"PatientID": "p1", "Modality": "CT"} and img.meta.extra == {}
    # set() on the one-value parts: validated as an assignment, returns None
    assert img.meta.is_seg.set(False) is None and img.meta.is_seg.is_seg is False
    with pytest.raises(TypeError):
        img.meta.is_seg.set("yes")
    img.meta.extra.set({"fold": 2})
    assert img.meta.extra == {"fold": 2}
    with pytest.raises(TypeError):
        img.meta.source.set(5)
    # reset() on a part: user fields to their defaults, what mlarray maintains kept
    for part in ("stats", "bbox", "is_seg", "extra"):
        assert getattr(img.meta, part).reset() is None
        assert getattr(img.meta, part).is_default(), part
    img.meta.spatial.reset()
    assert img.spacing is None and img.meta.spatial.shape == [4, 4, 4]
    for internal in (img.meta.blosc2, img.meta._has_array, img.meta._mlarray_version):
        with pytest.raises(AttributeError, match="read-only"):
            internal.reset()
    with pytest.raises(AttributeError, match="read-only"):
        img.meta._has_array.set(False)
    img.save(p)
    back = MLArray.open(p).meta
    assert back.source == {"PatientID": "p1", "Modality": "CT"}
    assert back.stats.is_default() and back.bbox.is_default() and back.is_seg.is_seg is None
    # on an r+ handle the edits are written at close()
    h = MLArray.open(p, mmap_mode="r+")
    h.meta.update_source({"reviewed": True})
    h.meta.source.reset()
    h.meta.update_source({"again": 1})
    h.meta.is_seg.set(True)
    h.close()
    back = MLArray.open(p).meta
    assert back.source == {"again": 1} and back.is_seg.is_seg is True


_LAYOUT_ERRORS = """
import numpy as np
from mlarray import MLArray
a = np.zeros((20, 30, 40), np.float32)
cases = [
    dict(patch_size=[8, 8]),
    dict(patch_size=[8, 8, 8, 8]),
    dict(chunk_size=(10, 10, 10)),
    dict(patch_size=None, chunk_size=(10, 10), block_size=(5, 5)),
    dict(patch_size=None, chunk_size=(5, 5, 5), block_size=(10, 10, 10)),
    dict(patch_size="big"),
]
out = []
for kw in cases:
    for make in (lambda: MLArray(a, **kw), lambda: MLArray.zeros(a.shape, a.dtype, **kw),
                 lambda: MLArray(a, compressed=False).compress(**kw)):
        try:
            make()
            out.append([])
        except Exception as e:
            out.append([c.__name__ for c in (RuntimeError, ValueError, TypeError)
                        if isinstance(e, c)])
print(out)
"""


@needs_reference
def test_layout_errors_are_caught_by_the_reference_s_except_clauses(tmp_path):
    # a patch size of the wrong length is a RuntimeError there, chunk/block shapes that do
    # not fit a ValueError (Blosc2's): ours raise LayoutError, both (and MLArrayError)
    (tmp_path / "ref").mkdir()
    want = eval(_reference(_LAYOUT_ERRORS, tmp_path / "ref").strip().splitlines()[-1])
    ours = eval(run_python(_LAYOUT_ERRORS).strip().splitlines()[-1])
    assert len(ours) == len(want) == 18
    for i, (o, w) in enumerate(zip(ours, want, strict=True)):
        assert w and set(w) <= set(o), (i, o, w)


@needs_reference
def test_to_plain_with_include_none_has_the_reference_s_keys(tmp_path):
    code = """
        import numpy as np; from mlarray import MLArray
        if not __import__("os").path.exists("ct.mla"):
            MLArray(np.zeros((4, 4, 4), np.int16), spacing=[1, 1, 2]).save("ct.mla")
        row = MLArray.open("ct.mla").meta.to_plain(include_none=True)
        print(sorted((k, v is None) for k, v in row.items()))
        """
    want = _reference(code, tmp_path).strip().splitlines()[-1]
    row = MLArray.open(tmp_path / "ct.mla").meta.to_plain(include_none=True)
    assert str(sorted((k, v is None) for k, v in row.items())) == want
    assert row["is_seg"] is None and row["bbox"] is None and row["source"] is None


_ODD_DTYPES = {
    "U": ("np.array(['liver', 'spleen'], 'U6')", "'<U6' (strings)"),
    "S": ("np.array([b'ab', b'cd'], 'S2')", "'|S2' (byte strings)"),
    "M8": ("np.array(['2020-01-01', '2021-06-30'], 'datetime64[D]')", "'<M8[D]' (dates and times)"),
    "rec": (
        "np.zeros(3, [('label', 'i4'), ('score', 'f4')])",
        "\"[('label', '<i4'), ('score', '<f4')]\" (a structured (record) dtype)",
    ),
    "c32": ("np.zeros(3, np.clongdouble)", "'<c32' (32-byte complex256)"),
}


def _check_unsupported_dtype_files(folder: Path) -> None:
    for name, (_, shown) in _ODD_DTYPES.items():
        p = folder / f"{name}.mla"
        for read in (MLArray.open, MLArray.load):
            with pytest.raises(MLArrayFormatError) as info:
                read(p)
            msg = str(info.value)
            assert f"dtype {shown} is not supported" in msg and str(p) in msg, msg
            assert "damaged" not in msg and "forged" not in msg, msg


def test_frames_of_dtypes_this_version_does_not_read_are_not_called_damaged(tmp_path):
    # such intact files (written by Blosc2 or the reference) were "damaged or forged
    # Blosc2 frame: type size 24", "string of 36 bytes in a metalayer"
    for name, (make, _) in _ODD_DTYPES.items():
        blosc2.asarray(eval(make), urlpath=str(tmp_path / f"{name}.mla"), mode="w")
    _check_unsupported_dtype_files(tmp_path)
    with pytest.raises(MetaValidationError, match="complex256 cannot be stored"):
        MLArray(np.zeros(3, np.clongdouble))  # not written, then refused on reading


@needs_reference
def test_reference_files_of_dtypes_this_version_does_not_read(tmp_path):
    lines = "\n".join(f"MLArray({make}).save('{n}.mla')" for n, (make, _) in _ODD_DTYPES.items())
    _reference(f"import numpy as np\nfrom mlarray import MLArray\n{lines}\n", tmp_path)
    _check_unsupported_dtype_files(tmp_path)


# ----------------------------------------------------------------------------- r18 review
# nthreads 0 or -1 (a loader's computed thread count, a joblib-style "all"): Blosc2 and
# the reference take them (c-blosc2 then runs one thread); the reference records them.

_X3 = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)


@pytest.mark.parametrize("n", [0, -1])
def test_nthreads_below_one_are_accepted_as_blosc2_and_the_reference_do(tmp_path, n):
    p = tmp_path / "d.mla"
    MLArray(_X3).save(p)
    for read in (MLArray.open, MLArray.load):
        a = read(p, dparams={"nthreads": n})
        assert np.array_equal(a[...], _X3)
    given = MLArray(_X3, dparams={"nthreads": n}, cparams={"clevel": 5, "nthreads": n})
    assert np.array_equal(given[...], _X3)
    assert given.meta.blosc2.dparams == {"nthreads": n}  # recorded as given, as the reference
    given.save(tmp_path / "g.mla")
    back = MLArray.open(tmp_path / "g.mla")
    assert np.array_equal(back[...], _X3) and back.meta.blosc2.dparams == {"nthreads": n}
    assert back.meta.blosc2.cparams["nthreads"] == n and back.meta.blosc2.cparams["clevel"] == 5
    # a numpy-backed array written with them
    MLArray(_X3, compressed=False, dparams={"nthreads": n}).save(tmp_path / "u.mla")
    assert np.array_equal(MLArray.load(tmp_path / "u.mla")[...], _X3)


def test_nthreads_beyond_the_cores_run_one_thread_per_core(tmp_path):
    """nthreads of 40000 in cparams or dparams (over c-blosc2's int16) saved and read as
    one thread per core, recorded as given (was: OverflowError 'value too large to
    convert to int16_t' from inside Blosc2)."""
    import os

    cores = len(os.sched_getaffinity(0))
    given = MLArray(_X3, dparams={"nthreads": 40000}, cparams={"nthreads": 40000})
    assert given._store.schunk.cparams.nthreads == cores
    given.save(tmp_path / "g.mla")
    back = MLArray.open(tmp_path / "g.mla")
    assert np.array_equal(back[...], _X3) and back.meta.blosc2.dparams == {"nthreads": 40000}
    assert back._store.schunk.dparams.nthreads <= cores
    big = MLArray.open(tmp_path / "g.mla", dparams={"nthreads": 40000})
    assert np.array_equal(big[...], _X3)
    assert np.array_equal(MLArray.load(tmp_path / "g.mla", dparams={"nthreads": 1 << 20})[...], _X3)


@needs_reference
def test_reference_files_recording_nthreads_below_one_resave_and_recompress(tmp_path):
    from mlarray.cli import main

    _reference(
        """
        import numpy as np; from mlarray import MLArray
        x = np.arange(512, dtype=np.float32).reshape(8, 8, 8)
        MLArray(x, dparams={"nthreads": 0}).save("d0.mla")
        MLArray(x, cparams={"clevel": 5, "nthreads": -1}).save("c1.mla")
        """,
        tmp_path,
    )
    x = np.arange(512, dtype=np.float32).reshape(8, 8, 8)
    assert MLArray.open(tmp_path / "d0.mla").meta.blosc2.dparams == {"nthreads": 0}
    assert MLArray.open(tmp_path / "c1.mla").meta.blosc2.cparams["nthreads"] == -1
    for name in ("d0", "c1"):
        MLArray.load(tmp_path / f"{name}.mla").save(tmp_path / f"re_{name}.mla")
        assert np.array_equal(MLArray.open(tmp_path / f"re_{name}.mla")[...], x)
        assert main(["recompress", str(tmp_path / f"{name}.mla"), "--codec", "lz4hc"]) == 0
        done = MLArray.open(tmp_path / f"{name}.mla")
        assert done.meta.blosc2.cparams["codec"] == blosc2.Codec.LZ4HC.value
        assert np.array_equal(done[...], x)
    # and the reference reads what we re-saved
    out = _reference(
        """
        from mlarray import MLArray
        print(float(MLArray.open("re_d0.mla")[...].sum()), float(MLArray.open("c1.mla")[...].sum()))
        """,
        tmp_path,
    )
    assert out.split() == [str(float(x.sum()))] * 2


def test_meta_module_helpers_the_reference_exports():
    """``mlarray.meta.is_serializable`` and ``validate_and_cast_axis_labels`` exist and
    give the reference 0.0.54's results (recorded from it)."""
    import numpy as np
    import pytest

    from mlarray.meta import AxisLabelEnum, is_serializable, validate_and_cast_axis_labels

    assert is_serializable({"a": [1, 2.5, "x"]}) and not is_serializable({"a": object()})
    v = validate_and_cast_axis_labels
    assert v(None, "axis_labels") == (None, 0, 0)
    assert v([], "axis_labels", 0) == ([], 0, 0)
    assert v(("channel", "spatial_y", "spatial_x"), "axis_labels") == (
        ["channel", "spatial_y", "spatial_x"],
        2,
        1,
    )
    assert v(["temporal", "channel", "spatial"], "axis_labels") == (
        ["temporal", "channel", "spatial"],
        1,
        2,
    )
    assert v(["foo", "spatial_x"], "axis_labels") == (["foo", "spatial_x"], 1, 1)
    labels, n_sp, n_other = v(np.array([AxisLabelEnum.spatial_z, "channel"]), "lab")
    assert (labels, n_sp, n_other) == (["spatial_z", "channel"], 1, 1)
    assert all(type(x) is str for x in labels)
    with pytest.raises(ValueError, match="axis_labels must have length 3"):
        v(["spatial_z", "spatial_y"], "axis_labels", 3)
    with pytest.raises(TypeError, match="must be a list, tuple, or numpy array"):
        v("spatial_x", "axis_labels")
    with pytest.raises(TypeError, match=r"axis_labels\[0\] must be a str or AxisLabelEnum"):
        v([1, 2], "axis_labels")


def _ours_and_reference(code: str, tmp_path: Path) -> tuple[Any, Any]:
    """The JSON ``code`` prints run here and under the reference, each given its own
    folder as ``sys.argv[1]``."""
    (tmp_path / "ours").mkdir()
    (tmp_path / "ref").mkdir()
    ours = json.loads(run_python(code, tmp_path / "ours"))
    ref = json.loads(_reference(code.replace("sys.argv[1]", repr(str(tmp_path / "ref"))), tmp_path))
    return ours, ref


_PLAIN_CASES = """
import json, os, sys
import numpy as np
from mlarray import Meta, MLArray

m = Meta()
m.bbox.bboxes = [[[0, 1], [0, 1]]]
boxes = MLArray(meta=m)
boxes.save(os.path.join(sys.argv[1], "boxes.mla"))
metas = {
    "Meta()": Meta(),
    "Meta(spatial)": Meta(spatial={"spacing": [1.5, 2.0]}),
    "Meta(is_seg, extra)": Meta(is_seg=True, extra={"a": 1}),
    "from_mapping": Meta.from_mapping({"source": {"k": "v"}}),
    "from_mapping with version": Meta.from_mapping({"_mlarray_version": "v0"}),
    "MLArray()": MLArray().meta,
    "MLArray(meta)": boxes.meta,
    "reopened": MLArray.open(os.path.join(sys.argv[1], "boxes.mla")).meta,
}
print(json.dumps({k: [str(v._mlarray_version), bool(v._mlarray_version), v.to_plain(), str(v),
                     str(v.spatial), str(v.bbox), v.to_mapping()["_mlarray_version"],
                     v.to_mapping(include_none=False)["_mlarray_version"]]
                  for k, v in metas.items()}))
"""


@needs_reference
def test_the_format_version_is_set_once_an_mlarray_holds_the_meta_as_in_the_reference(tmp_path):
    """A Meta of its own has no format version (``to_plain()`` of ``Meta()`` is ``{}``);
    the Meta an MLArray holds, or one read from a file, has "v0": what the reference
    gives for each (was: every Meta had "v0", so ``Meta().to_plain()`` was not empty).
    ``print(meta)`` shows its plain values, as the reference's (was: the dataclass repr).
    ``to_mapping()`` of a Meta without a version holds ``{"mlarray_version": None}`` there,
    as the reference's (was: None); of a Meta made from a mapping holding a version,
    ``{"mlarray_version": ...}`` (was: bare), of an array's Meta the bare string."""
    ours, ref = _ours_and_reference(_PLAIN_CASES, tmp_path)
    assert ours == ref
    assert ours["Meta()"][2] == {} and ours["reopened"][2]["_mlarray_version"] == "v0"


def test_the_format_version_on_a_meta_compares_and_prints_as_its_string(tmp_path):
    """The reference holds ``meta._mlarray_version`` of an MLArray as the str "v0":
    scripts compare it with a string and print it (was: never equal, printed as
    ``MetaVersion(mlarray_version='v0')``)."""
    from mlarray.meta import MetaVersion

    a = MLArray(_X3)
    a.save(tmp_path / "v.mla")
    for meta in (a.meta, MLArray.open(tmp_path / "v.mla").meta):
        assert meta._mlarray_version == "v0" and str(meta._mlarray_version) == "v0"
        assert f"{meta._mlarray_version}" == "v0" and meta._mlarray_version != "v1"
    assert MetaVersion("v0") == MetaVersion("v0") != MetaVersion("v1")


_HELD_CASES = """
import json, os, sys
import numpy as np
from mlarray import Meta, MLArray

d = sys.argv[1]
out = {}
x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
makers = {
    "MLArray": lambda m: MLArray(x, meta=m, spacing=(2.0, 3.0, 4.0)),
    "asarray": lambda m: MLArray.asarray(x, meta=m),
    "zeros": lambda m: MLArray.zeros((3, 4, 5), np.float32, meta=m),
    "full": lambda m: MLArray.full((3, 4, 5), 7, meta=m),
    "arange": lambda m: MLArray.arange(6, meta=m),
    "zeros_like": lambda m: MLArray.zeros_like(MLArray(x), meta=m),
    "no array": lambda m: MLArray(None, meta=m),
    "create": lambda m: MLArray.create(os.path.join(d, "c.mla"), (3, 4, 5), np.float32, meta=m),
}
for name, make in makers.items():
    m = Meta(extra={"n": 1})
    a = make(m)
    m.extra["after"] = name  # an edit of the caller's Meta after construction
    a.meta.source["via_array"] = 1
    row = [a.meta is m, m.to_plain().get("extra"), m.to_plain().get("source"),
           m.spatial.spacing, m.spatial.shape, str(m._mlarray_version)]
    row = json.loads(json.dumps(row))  # the reference's to_plain() hands out its own dicts
    if name != "no array":
        p = os.path.join(d, name + ".mla")
        a.save(p)
        m.extra["after save"] = True  # still the array's Meta after a save
        a.save(p)
        back = MLArray.open(p).meta
        row += [a.meta is m, back.to_plain().get("extra"), back.to_plain().get("source")]
    out[name] = row
print(json.dumps(out))
"""


@needs_reference
def test_an_mlarray_holds_the_callers_meta_itself_as_in_the_reference(tmp_path):
    """``MLArray(x, meta=m).meta is m`` for every constructor, as in the reference: an edit
    of ``m`` after construction (or after a save) is the array's and is saved; ``m`` shows
    the keyword geometry and the array's shape (was: the array held a new Meta composed
    from ``m``, so such an edit was lost without a word)."""
    ours, ref = _ours_and_reference(_HELD_CASES, tmp_path)
    assert ours == ref
    assert ours["MLArray"][:5] == [
        True,
        {"n": 1, "after": "MLArray"},
        {"via_array": 1},
        [2.0, 3.0, 4.0],
        [3, 4, 5],
    ]
    assert ours["MLArray"][-2]["after save"] is True


def test_a_meta_another_array_holds_is_copied_not_shared(tmp_path):
    """``MLArray(seg, meta=img.meta)`` and a template Meta reused for a second array give
    the new array its own metadata: flagging the label map leaves the image alone and each
    array keeps its own shape and layout (the reference shares one object between them:
    its ``img.meta.is_seg`` turns True and the first array's meta shows the second's
    shape). A part shared between Metas is never written into."""
    img = MLArray(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 2.0, 3.0))
    seg = MLArray(np.zeros((4, 5, 6), np.uint8), meta=img.meta)
    assert seg.meta is not img.meta and seg.spacing == [1.0, 2.0, 3.0]
    seg.meta.is_seg = True
    assert not img.meta.is_seg

    template = Meta(extra={"study": "s1"})
    first = MLArray(np.zeros((4, 5, 6), np.float32), meta=template)
    second = MLArray(np.zeros((8, 5, 6), np.uint8), meta=template)
    assert first.meta is template and second.meta is not template
    assert first.meta.spatial.shape == [4, 5, 6] and second.meta.spatial.shape == [8, 5, 6]
    assert first.meta.blosc2.chunk_size != second.meta.blosc2.chunk_size
    second.meta.extra["case"] = 2
    assert "case" not in template.extra

    shared = Meta(spatial=img.meta.spatial)  # one part object, two Metas
    other = MLArray(np.zeros((2, 3, 4), np.float32), meta=shared, spacing=(5.0, 5.0, 5.0))
    assert other.meta is shared and other.meta.spatial.shape == [2, 3, 4]
    assert img.meta.spatial.shape == [4, 5, 6] and img.spacing == [1.0, 2.0, 3.0]
    img.save(tmp_path / "img.mla")
    assert MLArray.open(tmp_path / "img.mla").meta.spatial.shape == [4, 5, 6]


def test_loading_with_a_meta_holds_it(tmp_path):
    """``MLArray(path, meta=m)`` (an extension: the reference refuses it) holds ``m`` as
    every other constructor does, with the file's layout."""
    MLArray(np.ones((4, 5), np.float32)).save(tmp_path / "a.mla")
    m = Meta(extra={"k": 1})
    a = MLArray(tmp_path / "a.mla", meta=m)
    m.extra["later"] = 2
    assert a.meta is m and m.spatial.shape == [4, 5] and m.blosc2.chunk_size is not None
    a.save(tmp_path / "b.mla")
    assert MLArray.open(tmp_path / "b.mla").meta.extra == {"k": 1, "later": 2}


def test_a_copy_of_a_held_meta_is_held_by_the_array_given_it(tmp_path):
    """A deep copy, a pickled copy, or the Meta of an array that is gone is no other
    array's: the array given it holds it and later edits are saved, as in the reference
    (review r22 F1: a first version marked the Meta object itself, and copies carried
    the mark, so the array took a copy and the edits were lost)."""
    import copy
    import gc

    img = MLArray(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 2.0, 3.0))
    for n, m in enumerate((copy.deepcopy(img.meta), pickle.loads(pickle.dumps(img.meta)))):
        seg = MLArray(np.zeros((4, 5, 6), np.uint8), meta=m)
        assert seg.meta is m
        m.is_seg = True
        m.source["label"] = "liver"
        seg.save(tmp_path / f"seg{n}.mla")
        back = MLArray.open(tmp_path / f"seg{n}.mla").meta
        assert back.is_seg and back.source == {"label": "liver"}
        assert not img.meta.is_seg and img.meta.source == {}
    m = Meta(extra={"k": 1})
    first = MLArray(np.zeros((2, 3), np.float32), meta=m)
    del first
    gc.collect()
    assert MLArray(np.zeros((3, 3), np.float32), meta=m).meta is m


def test_a_part_of_an_arrays_meta_stays_its_own_after_a_save(tmp_path):
    """``sp = a.meta.spatial`` taken before a save is still the array's after it: an edit
    through it is saved next time, as in the reference (review r22 F2: a save gave the
    Meta new part objects)."""
    m = Meta()
    a = MLArray(np.zeros((4, 5, 6), np.float32), meta=m)
    sp, src = a.meta.spatial, a.meta.source
    a.save(tmp_path / "a.mla")
    sp.spacing = [5.0, 5.0, 5.0]
    src["who"] = "me"
    assert a.meta is m and a.meta.spatial is sp and a.meta.source is src
    a.save(tmp_path / "b.mla")
    back = MLArray.open(tmp_path / "b.mla")
    assert back.spacing == [5.0, 5.0, 5.0] and back.meta.source == {"who": "me"}


def test_threads_given_one_fresh_meta_never_share_it():
    """Arrays built at once on several threads from one fresh Meta: exactly one holds it,
    every array's metadata has its own shape (review r22 F3: the check that no array
    held it and the taking were two steps, so two arrays could share it)."""
    import sys
    import threading

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(40):
            m = Meta(source={"t": trial})
            out: list = [None] * 6
            go = threading.Barrier(len(out))

            def build(i: int, out: list, go: threading.Barrier, m: Meta) -> None:
                go.wait()
                out[i] = MLArray(np.zeros((2 + i, 3), np.uint8), meta=m, compressed=False)

            threads = [
                threading.Thread(target=build, args=(i, out, go, m)) for i in range(len(out))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum(a.meta is m for a in out) == 1
            assert len({id(a.meta) for a in out}) == len(out)
            assert all(a.meta.spatial.shape == [2 + i, 3] for i, a in enumerate(out))
    finally:
        sys.setswitchinterval(before)


_CREATE_FAILS = """
import os, resource, signal, sys
import numpy as np
from mlarray import MLArray, Meta
from mlarray.errors import MLArrayError

d = sys.argv[1]
MLArray.create(os.path.join(d, "probe.mla"), (40, 50, 60), np.float32, meta=Meta())
size = os.path.getsize(os.path.join(d, "probe.mla"))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
m = Meta(source={"note": "x" * 200_000})  # its record does not fit under the limit
before = m.to_mapping()
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, hard))
try:
    MLArray.create(os.path.join(d, "c.mla"), (40, 50, 60), np.float32, meta=m)
    raise SystemExit("created beyond the file size limit")
except MLArrayError as exc:
    print(type(exc).__name__)
print(m.to_mapping() == before)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
print(MLArray(np.zeros((2, 3), np.float32), meta=m).meta is m)
"""


def test_a_create_that_fails_leaves_the_callers_meta_alone(tmp_path):
    """``MLArray.create(path, ..., meta=m)`` failing to write its file (here: beyond the
    process's file size limit) leaves ``m`` as it was and free for the next array
    (review r22 F4: ``m`` took the shape and layout of the array that was never made)."""
    assert run_python(_CREATE_FAILS, tmp_path).split() == ["MLArrayIOError", "True", "True"]


_PART_VALUES = """
import json, sys
import numpy as np
from mlarray import Meta, MLArray
from mlarray.meta import MetaBbox, MetaExtra, MetaHasArray, MetaImageFormat, MetaIsSeg, MetaVersion


def probe(part):
    out = []
    for f in (bool, len, lambda x: list(iter(x)), str):
        try:
            out.append(f(part))
        except TypeError:
            out.append("TypeError")
    return out


parts = {
    "format None": MetaImageFormat(None), "format nifti": MetaImageFormat("nifti"),
    "format empty": MetaImageFormat(""), "version None": MetaVersion(None),
    "version": MetaVersion("v0"), "is_seg None": MetaIsSeg(None), "is_seg": MetaIsSeg(True),
    "not seg": MetaIsSeg(False), "has_array": MetaHasArray(True),
    "no array": MetaHasArray(False), "boxes": MetaBbox(bboxes=[[[0, 1], [0, 1]]]),
    "no boxes": MetaBbox(), "extra": MetaExtra({"a": 1}), "no extra": MetaExtra(),
}
x = np.zeros((4, 5, 6), np.float32)
a = MLArray(x, spacing=[1, 2.5, 3], origin=np.array([0, 1, 2]),
            direction=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])
a.meta.stats.min = 1
a.save(sys.argv[1] + "/numbers.mla")
b = MLArray.open(sys.argv[1] + "/numbers.mla")
b.meta.spatial.spacing = [4, 5, 6]
numbers = [a.spacing, a.origin, a.direction, a.meta.stats.min, b.spacing, b.origin,
           b.direction, b.meta.stats.min, b.meta.spatial.spacing]
print(json.dumps({
    "parts": {k: probe(v) for k, v in parts.items()},
    "meta parts": {k: probe(getattr(Meta(), k)) for k in (
        "_image_meta_format", "_mlarray_version", "_has_array", "is_seg", "bbox", "extra")},
    "numbers": [repr(v) for v in numbers],
    "mapping": a.meta.spatial.to_mapping(),
}))
"""


@needs_reference
def test_parts_behave_as_their_values_and_numbers_keep_their_type_as_in_the_reference(tmp_path):
    """``bool``, ``len``, iteration and ``str`` of the metadata parts give what the
    reference's give (a part holding None is empty: was, ``bool(Meta()._image_meta_format)``
    True and ``str`` ``{}``; ``len`` and iteration refused; ``bool(Meta().bbox)`` False,
    the reference's True), and ints given as spacing, origin, direction or statistics
    stay ints, in memory, in ``to_mapping`` and in the saved file (were floats)."""
    ours, ref = _ours_and_reference(_PART_VALUES, tmp_path)
    assert ours == ref
    assert ours["numbers"][0] == "[1, 2.5, 3]" and ours["parts"]["no boxes"][0] is True
