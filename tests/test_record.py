"""The metadata record: exact writing rules and a reader that a crafted file cannot abuse."""

from __future__ import annotations

import gzip
import pickle
import pickletools
import subprocess
import sys
import textwrap
import warnings

import blosc2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlarray.errors import MLArrayError, MLArrayFormatError, UnsafeRecordError
from mlarray.meta import Meta
from mlarray.record import (
    MAX_RECORD_BYTES,
    MAX_RECORD_DEPTH,
    decode_record,
    encode_record,
    meta_from_record,
    record_from_meta,
)
from tests.conftest import FIXTURES, fixture_names


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


def test_meta_from_record_invalid_values_are_ignored_naming_the_file():
    # the image stays readable (as in the reference package); the field is left unset
    with pytest.warns(UserWarning, match=r"v\.mla.*spatial\.spacing"):
        m = meta_from_record({"spatial": {"spacing": ["a"], "origin": [1.0]}}, "v.mla")
    assert m.spatial.spacing is None and m.spatial.origin == [1.0]


# ----------------------------------------------------------------------------- hostile bytes


def test_huge_memo_index_does_not_allocate(tmp_path):
    # ``{}`` memoised at index 2**31 - 1: the C unpickler sizes its memo array by the
    # index (tens of GB); run under a 1 GiB address-space cap so a regression fails cleanly.
    raw = gzip.compress(b"\x80\x04}r\xff\xff\xff\x7f.", mtime=0)
    code = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from mlarray.record import decode_record
        assert decode_record({raw!r}, "x.mla") == {{}}
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bytearray_with_huge_declared_length_is_refused():
    raw = gzip.compress(b"\x80\x05\x96" + (1 << 62).to_bytes(8, "little") + b".", mtime=0)
    with pytest.raises(MLArrayFormatError, match=r"x\.mla.*binary data"):
        decode_record(raw, "x.mla")


def _fixture_records() -> list[bytes]:
    records = []
    for name in fixture_names():
        store = blosc2.open(str(FIXTURES / f"{name}.mla"))
        records.append(bytes(store.schunk.vlmeta["mlarray"]))
    return records


_RECORDS = _fixture_records()


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, pos, value in edits:
        i = pos % (len(out) + 1)
        if kind == 0 and out:
            out[i % len(out)] = value
        elif kind == 1:
            del out[i : i + 1 + value % 8]
        else:
            out[i:i] = bytes([value])
    return bytes(out)


_EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 100), edits=_EDITS, in_payload=st.booleans())
def test_mutated_records_only_raise_mlarray_errors(which, edits, in_payload):
    raw = _RECORDS[which % len(_RECORDS)]
    if in_payload:  # mutate the pickle inside a valid gzip stream
        raw = gzip.compress(_mutate(gzip.decompress(raw), edits), mtime=0)
    else:
        raw = _mutate(raw, edits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            meta_from_record(decode_record(raw, "f.mla"), "f.mla")
        except MLArrayError as exc:
            assert "f.mla" in str(exc)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=256))
def test_random_bytes_only_raise_mlarray_errors(raw):
    for data in (raw, gzip.compress(raw, mtime=0)):
        with pytest.raises(MLArrayError):
            record = decode_record(data, "f.mla")
            meta_from_record(record, "f.mla")
            raise MLArrayError("decoded")  # a valid record by chance is fine too
