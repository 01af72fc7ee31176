"""The metadata record: exact writing rules and a reader that a crafted file cannot abuse."""

from __future__ import annotations

import gzip
import pickle
import pickletools

import pytest

from mlarray.errors import MLArrayFormatError, UnsafeRecordError
from mlarray.meta import Meta
from mlarray.record import (
    MAX_RECORD_BYTES,
    MAX_RECORD_DEPTH,
    decode_record,
    encode_record,
    meta_from_record,
    record_from_meta,
)


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def _gz(obj, protocol=4):
    return gzip.compress(pickle.dumps(obj, protocol=protocol), mtime=0)


def test_encode_is_deterministic_gzip_pickle_of_builtins():
    rec = record_from_meta(Meta(is_seg=True, extra={"a": [1, 2.5, None]}))
    raw = encode_record(rec)
    assert raw == encode_record(rec)
    payload = gzip.decompress(raw)
    ops = {op.name for op, _arg, _pos in pickletools.genops(payload)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "BUILD"}
    assert pickle.loads(payload) == rec
    assert raw[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0"


def test_decode_maps_reference_frozen_containers():
    class _FrozenList(list):
        pass

    class _FrozenDict(dict):
        pass

    _FrozenList.__module__ = _FrozenDict.__module__ = "mlarray.meta"
    _FrozenList.__qualname__, _FrozenDict.__qualname__ = "_FrozenList", "_FrozenDict"
    import mlarray.meta as mm

    mm._FrozenList, mm._FrozenDict = _FrozenList, _FrozenDict
    try:
        raw = _gz(
            {"spatial": {"shape": _FrozenList([1, 2])}, "blosc2": {"cparams": _FrozenDict(a=1)}}
        )
    finally:
        del mm._FrozenList, mm._FrozenDict
    rec = decode_record(raw, "x.mla")
    assert rec == {"spatial": {"shape": [1, 2]}, "blosc2": {"cparams": {"a": 1}}}
    assert type(rec["spatial"]["shape"]) is list


def test_forbidden_global_never_runs(capsys):
    raw = _gz({"source": Boom()})
    with pytest.raises(UnsafeRecordError, match=r"evil\.mla.*forbidden global builtins\.print"):
        decode_record(raw, "evil.mla")
    assert "pwned" not in capsys.readouterr().out


def test_zip_bomb_is_refused_without_expanding():
    bomb = gzip.compress(b"\x80\x04" + b"N" * (MAX_RECORD_BYTES + 10) + b".", compresslevel=9)
    assert len(bomb) < 200_000
    with pytest.raises(UnsafeRecordError, match="expands beyond"):
        decode_record(bomb, "bomb.mla")


def test_deep_nesting_is_refused():
    deep: list = []
    cur = deep
    for _ in range(MAX_RECORD_DEPTH + 5):
        nxt: list = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(UnsafeRecordError, match="nested deeper"):
        decode_record(_gz({"extra": deep}), "deep.mla")


def test_shared_reference_explosion_is_refused():
    layer: list = ["x"]
    for _ in range(24):  # 2**24 leaves, well within the depth cap
        layer = [layer, layer]
    with pytest.raises(UnsafeRecordError, match="nodes"):
        decode_record(_gz({"extra": {"data": layer}}), "laughs.mla")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not gzip", "not valid gzip"),
        (gzip.compress(b"garbage", mtime=0), "not a valid pickle"),
        (_gz([1, 2, 3]), "must be a dict"),
        (_gz({"a": {1, 2}}), "set"),
        (_gz({1: "a"}), "non-string key"),
        (gzip.compress(pickle.dumps({"a": 1}))[:-12], "truncated"),
        ("a string", "must be bytes"),
    ],
)
def test_malformed_records_raise_format_errors_naming_the_file(raw, match):
    with pytest.raises(MLArrayFormatError, match=match) as info:
        decode_record(raw, "bad.mla")
    assert "bad.mla" in str(info.value)


def test_meta_from_record_defaults_missing_keys_and_accepts_bare_single_keys():
    m = meta_from_record({"is_seg": True, "_mlarray_version": "v0"})
    assert m.is_seg.is_seg is True and m.spatial.spacing is None
    m = meta_from_record({"is_seg": {"is_seg": False}, "_has_array": {"has_array": True}})
    assert m.is_seg.is_seg is False and m._has_array.has_array is True


def test_meta_from_record_warns_and_drops_unknown_keys():
    with pytest.warns(UserWarning, match=r"f\.mla.*\['future', 'spatial\.newfield'\]"):
        m = meta_from_record({"future": 1, "spatial": {"spacing": [1.0], "newfield": 2}}, "f.mla")
    assert m.spatial.spacing == [1.0]


def test_meta_from_record_invalid_values_name_the_file():
    with pytest.raises(MLArrayFormatError, match=r"v\.mla.*spatial\.spacing"):
        meta_from_record({"spatial": {"spacing": ["a"]}}, "v.mla")
