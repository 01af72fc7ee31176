"""Metadata values that stand for plain data (numpy scalars, Enum members, OrderedDict,
namedtuples): the reference package stores them as its users wrote them, so its files
name those classes; they read here as their plain values, and we store them as plain
values from the moment they are assigned (so a save or a close never fails on them)."""

from __future__ import annotations

import collections
import enum
import gzip
import hashlib
import json
import os
import pickle
import pickletools
import warnings
from pathlib import Path

import blosc2
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import (
    MetaTypeError,
    MetaValidationError,
    MLArrayFormatError,
    UnsafeRecordError,
)
from mlarray.record import MAX_RECORD_BYTES, decode_record
from tests._children import run_reference

ODD = Path(__file__).parent / "data" / "reference-odd-meta"
needs_reference = pytest.mark.skipif(
    not os.environ.get("MLARRAY_REFERENCE_PYTHON"),
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)


class Phase(str, enum.Enum):  # noqa: UP042 (the reference's users write this)
    arterial = "arterial"


class Grade(enum.IntEnum):
    high = 3


Landmark = collections.namedtuple("Landmark", "z y x")


def _record_of(path) -> bytes:
    store = blosc2.open(os.fspath(path))
    return gzip.decompress(bytes(store.schunk.vlmeta["mlarray"]))


def _globals_in(payload: bytes) -> list[str]:
    return [op.name for op, _a, _p in pickletools.genops(payload) if "GLOBAL" in op.name]


def _exact(value):
    """``value`` with every scalar's exact type, for comparing types as well as values."""
    if isinstance(value, dict):
        return {(type(k), k): _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return (type(value).__name__, value)


# ----------------------------------------------------------------------------- reading


def test_reference_file_with_numpy_scalars_enums_and_ordered_dicts_opens():
    path = ODD / "numpy_scalars_enums.mla"
    expected_sha = json.loads((ODD / "numpy_scalars_enums.json").read_text())["sha256_c_order"]
    with pytest.warns(UserWarning, match=r"numpy_scalars_enums\.mla.*__main__\.Grade") as rec:
        a = MLArray.open(path)
    assert len(rec) == 1 and "__main__.Landmark" in str(rec[0].message)
    assert hashlib.sha256(np.ascontiguousarray(a[...]).tobytes()).hexdigest() == expected_sha
    assert _exact(a.spacing) == [("float", 0.8), ("float", 0.7), ("float", 2.5)]
    assert _exact(a.meta.source.data) == _exact(
        {
            "mean_hu": 29.5,
            "p99": 58.41,
            "modality": "CT",
            "labels": {"background": 0, "liver": 1},
            "groups": {"a": [1, 2]},
            "landmark": [1, 2, 3],
            "phase": "arterial",
            "grade": 3,
            "axis": "channel",
        }
    )
    assert _exact(a.meta.extra.data) == _exact({"threshold": 0.25, "counts": [1.5, 2.5]})
    assert a.meta.stats.mean == 29.5 and a.meta.stats.std == pytest.approx(17.3181022824)


def test_numpy_scalars_of_every_stored_dtype_decode_to_python_values():
    values = {
        "f8": np.float64(0.1),
        "f4": np.float32(0.5),
        "f2": np.float16(1.5),
        "i8": np.int64(-(2**40)),
        "u1": np.uint8(200),
        "i2_be": np.array([7], ">i2")[0],
        "b": np.bool_(True),
        "s": np.str_("Kopf-Hals ä"),
        "empty": np.str_(""),
    }
    raw = gzip.compress(pickle.dumps({"source": values}, protocol=4), mtime=0)
    rec = decode_record(raw, "n.mla")["source"]
    assert _exact(rec) == _exact({k: v.item() for k, v in values.items()})


class _Touch:
    """A class whose construction leaves a mark: decoding must never construct it."""

    marker: Path | None = None

    def __init__(self, value):
        _Touch.marker.write_text("constructed")

    def __reduce__(self):
        return (_Touch, ("x",))


def test_classes_named_in_a_record_are_never_imported_or_called(tmp_path):
    _Touch.marker = tmp_path / "touched"
    raw = gzip.compress(pickle.dumps({"source": {"v": _Touch.__new__(_Touch)}}, 4), mtime=0)
    with pytest.warns(UserWarning, match=r"t\.mla.*_Touch"):
        rec = decode_record(raw, "t.mla")
    assert rec == {"source": {"v": "x"}}
    assert not _Touch.marker.exists()


class Header(dict):
    pass


class Series(list):
    pass


class Study:
    def __init__(self):
        self.uid, self.n = "1.2.3", 4


def test_instances_of_user_classes_read_as_their_items_or_attributes():
    header, series = Header(a=1, b=[2]), Series([1, "x"])
    header.note = "kept out"  # state of a dict subclass: its items are its value
    raw = gzip.compress(
        pickle.dumps({"source": {"h": header, "s": series, "o": Study(), "e": Header()}}, 4),
        mtime=0,
    )
    with pytest.warns(UserWarning, match=r"u\.mla.*Header.*Series.*Study"):
        rec = decode_record(raw, "u.mla")
    assert rec == {
        "source": {"h": {"a": 1, "b": [2]}, "s": [1, "x"], "o": {"uid": "1.2.3", "n": 4}, "e": {}}
    }
    assert all(type(v) in (dict, list) for v in rec["source"].values())


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        # code, not a data type: refused as before
        (b"\x80\x04cos\nsystem\n\x8c\x02ls\x85R.", "forbidden global os.system"),
        (b"\x80\x04cbuiltins\neval\n\x8c\x011\x85R.", "forbidden global builtins.eval"),
        (b"\x80\x04csubprocess\nPopen\n\x8c\x02ls\x85R.", "forbidden global subprocess.Popen"),
    ],
)
def test_code_globals_are_still_refused(payload, match):
    with pytest.raises(UnsafeRecordError, match=match):
        decode_record(gzip.compress(payload, mtime=0), "evil.mla")


@pytest.mark.parametrize(
    ("code", "data", "match"),
    [
        ("O8", b"\x00" * 8, "dtype 'O8'"),  # object scalars would be pointers
        ("V8", b"\x00" * 8, "dtype 'V8'"),
        ("f8", b"\x00" * 3, "dtype 'f8'"),  # wrong length for the dtype
        ("c16", b"\x00" * 16, "dtype 'c16'"),
    ],
)
def test_numpy_scalars_of_other_dtypes_are_refused(code, data, match):
    state = b"(K\x03\x8c\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    raw = (
        b"\x80\x04}\x8c\x06source}\x8c\x01v"
        b"cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\n"
        + b"\x8c" + bytes([len(code)]) + code.encode() + b"\x89\x88\x87R"
        + state + b"b" + b"C" + bytes([len(data)]) + data + b"\x86Rss."
    )  # fmt: skip
    with pytest.raises(MLArrayFormatError, match=match):
        decode_record(gzip.compress(raw, mtime=0), "n.mla")


def test_the_hand_made_numpy_scalar_pickle_is_numpy_s_own():
    # the bytes the refusal test above varies: numpy itself reads them as np.float64(2.0)
    state = b"(K\x03\x8c\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    raw = (
        b"\x80\x04}\x8c\x06source}\x8c\x01v"
        b"cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\n\x8c\x02f8\x89\x88\x87R"
        + state + b"bC\x08" + np.float64(2.0).tobytes() + b"\x86Rss."
    )  # fmt: skip
    real = pickle.loads(raw)["source"]["v"]
    assert type(real) is np.float64 and real == 2.0
    assert _exact(decode_record(gzip.compress(raw, mtime=0), "n.mla")) == _exact(
        {"source": {"v": 2.0}}
    )


# ----------------------------------------------------------------------------- writing


def test_numpy_scalars_and_enums_are_stored_as_plain_values(tmp_path):
    ct = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    m = MLArray(
        ct,
        spacing=[affine[0, 0], affine[1, 1], affine[2, 2]],
        meta={
            "mean_hu": ct.mean(),
            "modality": np.str_("CT"),
            "labels": collections.OrderedDict([("background", 0), ("liver", 1)]),
            "landmark": Landmark(1, 2, 3),
            "phase": Phase.arterial,
            "grade": Grade.high,
            "flag": np.bool_(True),
            np.str_("key"): np.int64(4),
            Grade.high: "int-enum key",
        },
    )
    m.meta.extra["thr"] = np.percentile(ct, 99)
    m.meta.extra["v"] = list(np.arange(3.0))
    m.meta.stats = {"mean": ct.mean(), "min": ct.min() * 1.0}
    m.meta.spatial.coord_system = np.str_("RAS")
    m.meta.spatial.axis_units = list(np.array(["mm", "mm", "mm"]))
    m.meta.spatial.axis_labels = [np.str_("spatial_z"), "spatial_y", "spatial_x"]
    m.meta.set_bbox({"bboxes": [[[np.int64(0), np.float64(1.5)]] * 3], "scores": [ct.mean()]})
    p = tmp_path / "np.mla"
    m.save(p)
    payload = _record_of(p)
    assert _globals_in(payload) == [], "the record holds plain builtins only"
    r = MLArray.open(p)
    assert _exact(r.spacing) == [("float", 0.8), ("float", 0.7), ("float", 2.5)]
    assert _exact(r.meta.source.data) == _exact(
        {
            "mean_hu": 29.5,
            "modality": "CT",
            "labels": {"background": 0, "liver": 1},
            "landmark": [1, 2, 3],
            "phase": "arterial",
            "grade": 3,
            "flag": True,
            "key": 4,
            3: "int-enum key",
        }
    )
    assert _exact(r.meta.extra.data) == _exact({"thr": 58.41, "v": [0.0, 1.0, 2.0]})
    assert _exact([r.meta.stats.mean, r.meta.stats.min]) == _exact([29.5, 0.0])
    assert type(r.meta.spatial.coord_system) is str and r.meta.spatial.coord_system == "RAS"
    assert _exact(r.meta.spatial.axis_units) == _exact(["mm"] * 3)
    assert _exact(r.meta.bbox.bboxes) == _exact([[[0, 1.5]] * 3])
    assert _exact(r.meta.bbox.scores) == _exact([29.5])


def test_r_plus_close_keeps_the_sessions_metadata_with_numpy_values(tmp_path):
    p = tmp_path / "a.mla"
    MLArray(np.zeros((4, 5, 6), np.int16)).save(p)
    h = MLArray.open(p, mmap_mode="r+")
    h[0, 0, 0] = 5
    h.spacing = [1, 1, 2]
    h.meta.extra["mean"] = np.zeros(3).mean()
    h.meta.source.update({"p": np.float32(0.5), "od": collections.OrderedDict(a=np.int8(1))})
    h.close()
    m = MLArray.open(p)
    assert int(np.asarray(m[0, 0, 0])) == 5 and m.spacing == [1.0, 1.0, 2.0]
    assert _exact(m.meta.extra.data) == _exact({"mean": 0.0})
    assert _exact(m.meta.source.data) == _exact({"p": 0.5, "od": {"a": 1}})


def test_numpy_values_put_into_the_dicts_directly_are_saved_as_plain_values(tmp_path):
    p = tmp_path / "a.mla"
    MLArray(np.zeros((4, 5, 6), np.int16)).save(p)
    h = MLArray.open(p, mmap_mode="r+")
    h.meta.source.data["mean"] = np.float64(2.5)  # ``data`` is the dict itself: unchecked
    h.meta.extra.data["phase"] = Phase.arterial
    h.close()
    m = MLArray.open(p)
    assert _exact(m.meta.source.data) == _exact({"mean": 2.5})
    assert _exact(m.meta.extra.data) == _exact({"phase": "arterial"})
    m.meta.source.data["bad"] = {1, 2}
    with pytest.raises(MetaTypeError, match=r"source\.data\.bad.*set"):
        m.save(tmp_path / "b.mla")


@pytest.mark.parametrize(
    "value", [{1, 2}, 1 + 2j, np.datetime64("2020-01-01"), b"bytes", object(), np.complex64(1)]
)
def test_values_a_record_cannot_hold_are_refused_when_assigned(tmp_path, value):
    p = tmp_path / "a.mla"
    MLArray(np.zeros((4, 5, 6), np.int16)).save(p)
    h = MLArray.open(p, mmap_mode="r+")
    h.meta.extra["ok"] = 1
    with pytest.raises(MetaTypeError, match="extra"):
        h.meta.extra["bad"] = value
    with pytest.raises(MetaTypeError):
        h.meta.source = {"bad": [value]}
    h.close()  # the session's other edits are saved
    assert MLArray.open(p).meta.extra.data == {"ok": 1}


# ----------------------------------------------------------------------------- both ways


@needs_reference
def test_reference_and_we_read_each_others_numpy_and_enum_metadata(tmp_path):
    ct = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    aff = np.diag([0.8, 0.7, 2.5, 1.0])
    m = MLArray(ct, spacing=[aff[0, 0], aff[1, 1], aff[2, 2]])
    m.meta.source = {"mean_hu": ct.mean(), "phase": Phase.arterial}
    m.meta.extra["thr"] = np.percentile(ct, 99)
    m.save(tmp_path / "ours.mla")
    out = run_reference(
        """
        import collections, enum, numpy as np
        from mlarray import MLArray
        class Phase(str, enum.Enum):  # noqa: UP042 (the reference's users write this)
            venous = "venous"
        ct = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
        spacing = [np.float64(0.5), np.float64(0.5), np.float64(3.0)]
        meta = {"mean": ct.mean(), "od": collections.OrderedDict(a=1), "ph": Phase.venous}
        m = MLArray(ct, spacing=spacing, meta=meta)
        m.meta.extra = {"thr": np.float64(0.25)}
        m.save("ref.mla")
        r = MLArray.open("ours.mla")
        print(r.spacing, r.meta.source, r.meta.extra)
        """,
        tmp_path,
    )
    assert out.strip() == (
        "[0.8, 0.7, 2.5] {'mean_hu': 29.5, 'phase': 'arterial'} {'thr': 58.41}"
    ), out
    with pytest.warns(UserWarning, match=r"ref\.mla.*__main__\.Phase"):
        r = MLArray.open(tmp_path / "ref.mla")
    assert _exact(r.spacing) == [("float", 0.5), ("float", 0.5), ("float", 3.0)]
    assert _exact(r.meta.source.data) == _exact({"mean": 11.5, "od": {"a": 1}, "ph": "venous"})
    assert _exact(r.meta.extra.data) == _exact({"thr": 0.25})


# ----------------------------------------------------------------------------- big records


def _dicom_like(slices: int, tags: int = 300) -> dict:
    """Per-slice DICOM headers of a series: ``slices`` x ``tags`` short strings."""
    return {
        "per_slice": [
            {f"({8 + j // 100:04X},{j % 100:04X})": f"slice {i} value {j}" for j in range(tags)}
            for i in range(slices)
        ]
    }


def _nest(n: int):
    v = 1
    for _ in range(n):
        v = {"k": v}
    return v


def test_a_large_ordinary_record_and_deep_nesting_round_trip(tmp_path):
    # 1100 x 300 tags: about 1.3 M pickle operations (beyond the former cap of 1 M)
    hdr = _dicom_like(1100)
    p = tmp_path / "ct.mla"
    m = MLArray(np.zeros((4, 8, 8), np.int16), meta={"dicom": hdr})
    m.meta.extra["deep"] = _nest(150)  # the former depth cap was 32
    m.save(p)  # each of the 330 000 entries takes 4 opcodes (key, value, their memo entries)
    r = MLArray.open(p)
    assert r.meta.source["dicom"] == hdr
    assert r.meta.extra["deep"] == _nest(150)


def test_nesting_beyond_the_cap_is_refused_when_assigned(tmp_path):
    p = tmp_path / "a.mla"
    MLArray(np.zeros((2, 2), np.uint8)).save(p)
    h = MLArray.open(p, mmap_mode="r+")
    h.meta.extra["ok"] = _nest(190)
    with pytest.raises(MetaValidationError, match="nested deeper"):
        h.meta.extra["too_deep"] = _nest(260)
    with pytest.raises(MetaValidationError, match="2\\*\\*2000"):
        h.meta.extra["huge"] = 1 << 3000  # would be pickled as LONG4, which readers refuse
    with pytest.raises(MetaValidationError, match="float keys"):
        h.meta.extra["thresholds"] = {i + 0.5: i for i in range(1001)}
    h.close()
    assert MLArray.open(p).meta.extra["ok"] == _nest(190)


def test_a_record_larger_than_readers_accept_is_refused_at_save_keeping_the_file(tmp_path):
    p = tmp_path / "a.mla"
    MLArray(np.zeros((2, 2), np.uint8), meta={"v": 1}).save(p)
    before = p.read_bytes()
    m = MLArray.open(p)
    with pytest.raises(MetaValidationError, match=r"extra\.blob.*characters"):
        m.meta.extra["blob"] = "x" * (MAX_RECORD_BYTES + 1)  # refused when assigned
    m.meta.extra["blob"] = "x" * (MAX_RECORD_BYTES // 2 + 1)  # each fits; both do not
    m.meta.source["blob"] = "y" * (MAX_RECORD_BYTES // 2 + 1)
    with pytest.raises(UnsafeRecordError, match="bytes, more than"):
        m.save(p)
    assert p.read_bytes() == before


@needs_reference
def test_we_read_the_reference_s_large_and_deep_records(tmp_path):
    run_reference(
        """
        import numpy as np
        from mlarray import MLArray
        hdr = {"per_slice": [{f"({8 + j // 100:04X},{j % 100:04X})": f"slice {i} value {j}"
                              for j in range(300)} for i in range(1100)]}
        deep = 1
        for _ in range(120):
            deep = {"k": deep}
        MLArray(np.zeros((4, 8, 8), np.int16), meta={"dicom": hdr, "deep": deep}).save("ct.mla")
        """,
        tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = MLArray.open(tmp_path / "ct.mla")
    assert r.meta.source["dicom"] == _dicom_like(1100)
    assert r.meta.source["deep"] == _nest(120)


# ----------------------------------------------------------------------------- boxes


def test_boxes_this_version_refuses_are_dropped_one_by_one():
    from mlarray.record import meta_from_record

    record = {
        "bbox": {
            "bboxes": [
                [[5, 1], [0, 1], [0.5, 2.5]],  # min > max on axis 0: the interval [1, 5]
                [[0, 2], [0, 2], [0, 2]],
                [[0, float("nan")], [0, 1], [0, 1]],  # not finite: dropped
                [[0, 1], [0, 1]],  # two axes among three-axis boxes: dropped
                [[1, 2], [3, 4], [5, 6]],
            ],
            "scores": [0.9, 0.8, 0.7, 0.6, 0.5],
            "labels": ["a", "b", "c", "d", "e"],
        }
    }
    with pytest.warns(UserWarning, match=r"b\.mla: .*bbox\.bboxes\[0\].*min > max") as rec:
        m = meta_from_record(record, "b.mla")
    message = str(rec[0].message)
    assert "bbox.bboxes[2]" in message and "bbox.bboxes[3]" in message
    assert m.bbox.bboxes == [
        [[1, 5], [0, 1], [0.5, 2.5]],
        [[0, 2], [0, 2], [0, 2]],
        [[1, 2], [3, 4], [5, 6]],
    ]
    assert m.bbox.scores == [0.9, 0.8, 0.5]
    assert m.bbox.labels == ["a", "b", "e"]


@needs_reference
def test_the_reference_s_boxes_with_min_above_max_are_kept(tmp_path):
    run_reference(
        """
        import numpy as np
        from mlarray import MLArray
        m = MLArray(np.zeros((4, 5, 6), np.uint8))
        m.meta.bbox = {"bboxes": [[[5, 1], [0, 1], [0, 1]], [[0, 2], [1, 3], [2, 4]]],
                       "scores": [0.9, 0.8], "labels": ["lesion", "cyst"]}
        m.save("boxes.mla")
        """,
        tmp_path,
    )
    with pytest.warns(UserWarning, match=r"boxes\.mla: .*bbox\.bboxes\[0\]"):
        m = MLArray.open(tmp_path / "boxes.mla")
    assert m.meta.bbox.bboxes == [[[1, 5], [0, 1], [0, 1]], [[0, 2], [1, 3], [2, 4]]]
    assert m.meta.bbox.scores == [0.9, 0.8] and m.meta.bbox.labels == ["lesion", "cyst"]
    m.save(tmp_path / "again.mla")  # a load and save keeps every box
    assert MLArray.open(tmp_path / "again.mla").meta.bbox.labels == ["lesion", "cyst"]
