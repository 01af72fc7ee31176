"""Encoding and safe decoding of the metadata record stored in ``vlmeta["mlarray"]``.

The record is ``gzip(pickle(dict))`` (FORMAT.md section 2). This module is the
only place that touches pickle: writing uses plain builtins only; reading uses
a restricted unpickler that never imports or calls anything it finds in the file,
with caps on the decompressed size, the nesting depth and the number of pickle
operations, so a crafted file can neither run code nor exhaust memory.

The reference package pickles metadata values as its users wrote them, so its
files also name a few classes: its own frozen containers, ``OrderedDict`` /
``defaultdict``, numpy scalars (``arr.mean()`` is an ``np.float64``, a ``float``)
and user classes whose values are JSON data (``str``/``int`` Enum members,
namedtuples, dict and list subclasses). Each decodes to the plain value it
stands for, rebuilt by this module's own code from inert stand-ins: numpy
scalars from their bytes (numeric and string dtypes only), the others from the
arguments and items stored with them.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from mlarray.errors import MetaValidationError, MLArrayFormatError, UnsafeRecordError
from mlarray.meta import (
    FORMAT_VERSION,
    MAX_FLOAT_KEYS,
    MAX_RECORD_BYTES,
    MAX_RECORD_DEPTH,
    MAX_RECORD_NODES,
    META_PARTS,
    Meta,
    MetaBbox,
    SingleKeyBaseMeta,
    _meta_internal_write,
    _to_json_like,
    parse_bboxes,
    record_key_ok,
)

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_RECORD_DEPTH",
    "MAX_RECORD_NODES",
    "VLMETA_KEY",
    "decode_record",
    "encode_record",
    "meta_from_record",
    "meta_of_frame",
    "read_frame",
    "record_from_meta",
]

#: Name of the variable-length metalayer (``vlmeta``) entry holding the record.
VLMETA_KEY = "mlarray"

PICKLE_PROTOCOL = 4

_ALLOWED_GLOBALS = {
    ("mlarray.meta", "_FrozenList"): list,
    ("mlarray.meta", "_FrozenDict"): dict,
}
_SCALARS = (str, int, float, bool, type(None))


class _Token:
    """An inert stand-in for a global named in a record; only this module's code uses it."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name


#: Globals the reference's records name for plain data, by kind of stand-in.
_KNOWN_GLOBALS = {
    ("collections", "OrderedDict"): "dict",
    ("collections", "defaultdict"): "defaultdict",
    ("numpy._core.multiarray", "scalar"): "npscalar",
    ("numpy.core.multiarray", "scalar"): "npscalar",
    ("numpy", "dtype"): "npdtype",
}
#: Modules whose globals are code, never data types: naming one refuses the record.
_CODE_MODULES = frozenset(
    {
        "builtins",
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "importlib",
        "pickle",
        "_pickle",
        "copyreg",
        "shutil",
        "socket",
        "io",
        "_io",
        "codecs",
        "types",
        "functools",
        "operator",
        "runpy",
        "ctypes",
        "pty",
        "code",
        "codeop",
        "webbrowser",
        "marshal",
        "posixpath",
        "ntpath",
        "pathlib",
        "tempfile",
        "glob",
        "platform",
        "signal",
        "threading",
        "multiprocessing",
        "asyncio",
        "select",
        "mmap",
        "gc",
        "inspect",
        "pdb",
        "timeit",
        "trace",
    }
)
#: ``builtins`` types a ``defaultdict`` may name as its factory.
_FACTORIES = frozenset({"list", "dict", "set", "int", "float", "str", "tuple", "bool", "object"})
#: numpy scalar dtypes decoded (numeric and unicode; a record holds nothing else).
_NUMPY_CODES = frozenset(["b1", "f2", "f4", "f8"] + [f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8)])


class _DType:
    """Stand-in for ``numpy.dtype(code)``: the code and byte order, never a real dtype."""

    __slots__ = ("code", "order")

    def __init__(self, code: str) -> None:
        self.code, self.order = code, "<"

    def __setstate__(self, state: Any) -> None:
        if type(state) is not tuple or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("invalid numpy dtype state")
        self.order = state[1]


def _numpy_scalar(dtype: Any, data: Any) -> Any:
    """The Python value of the numpy scalar of ``dtype`` stored as ``data``."""
    import numpy as np

    if type(dtype) is not _DType or type(data) is not bytes:
        raise pickle.UnpicklingError("invalid numpy scalar")
    code, order = dtype.code, dtype.order if dtype.order in "<>" else "|"
    if code.startswith("U") and code[1:].isdigit() and len(data) == 4 * int(code[1:]):
        text = data.decode("utf-32-le" if order != ">" else "utf-32-be", errors="strict")
        return text.rstrip("\x00")
    if code not in _NUMPY_CODES or len(data) != int(code[1:]):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {code!r} is not allowed")
    return np.frombuffer(data, dtype=np.dtype((order if order != "|" else "=") + code))[0].item()


class _Bag:
    """Stand-in for an instance of a class named in a record (a dict or list subclass,
    a plain object): collects the items and state pickle gives it; its plain value
    replaces it once the record is decoded (:func:`_plain_of_bag`)."""

    __slots__ = ("items", "mapping", "state")

    def __init__(self) -> None:  # containers made when used: a bag costs what a list does
        self.items: list | None = None
        self.mapping: dict | None = None
        self.state: Any = None

    def append(self, value: Any) -> None:
        self.extend((value,))

    def extend(self, values: Any) -> None:
        if self.items is None:
            self.items = []
        self.items.extend(values)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.mapping is None:
            self.mapping = {}
        self.mapping[key] = value

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _plain_of_bag(bag: _Bag) -> Any:
    if bag.mapping is not None:
        return bag.mapping
    if bag.items is not None:
        return bag.items
    return bag.state if type(bag.state) is dict else {}  # an object's attributes


class _RestrictedUnpickler(pickle._Unpickler):
    """Pickle's pure-Python unpickler, restricted to builtin containers and scalars.

    The pure-Python implementation keeps its memo in a dict; the C one sizes
    an array by the largest memo index in the stream, so a ten-byte record
    (``LONG_BINPUT 2**31``) would allocate tens of gigabytes. Records are a
    few kilobytes, so speed does not matter here.
    """

    def find_class(self, module: str, name: str) -> Any:
        """A stand-in for the global: nothing is ever imported."""
        key = (module, name)
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        if key in _KNOWN_GLOBALS:
            return _Token(_KNOWN_GLOBALS[key], f"{module}.{name}")
        if module == "builtins" and name in _FACTORIES:
            return _Token("factory", name)
        root = module.split(".", 1)[0]
        if module.startswith("mlarray.") or (
            root not in _CODE_MODULES and name.lstrip("_")[:1].isupper() and name.isidentifier()
        ):
            # a user's class (Enum, namedtuple, dict subclass): decoded as its plain value
            if not module.startswith("mlarray."):
                self.foreign.add(f"{module}.{name}")
            return _Token("foreign", f"{module}.{name}")
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")

    def _refuse_binary(self) -> None:
        # BYTEARRAY8 would allocate its declared length (up to 2**64) before reading;
        # records hold bytes only inside numpy scalars (a few bytes, BINBYTES and
        # SHORT_BINBYTES, which read what the stream holds), every other binary opcode
        # is refused up front.
        raise pickle.UnpicklingError("binary data (bytearray, buffers) is not allowed")

    def __init__(self, file: Any):
        super().__init__(file)
        self._float_keys = 0
        self.foreign: set[str] = set()

    def load(self) -> Any:
        """pickle's own loop, with every opcode counted against the budget before it runs."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        try:
            for _ in range(MAX_RECORD_NODES):
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            return stop.value
        raise _Budget(f"more than {MAX_RECORD_NODES} pickle operations")

    def _setitems_checked(self, items: list) -> None:
        # Keys are checked before any dict sees them: int or float keys can be made to
        # collide in one hash bucket (100k of them take minutes to insert). Ints below
        # 2**61 hash to themselves (no collisions); floats are few (meta.record_key_ok).
        for k in items[0::2]:
            if not record_key_ok(k):
                raise pickle.UnpicklingError(
                    f"non-string key {k!r:.40} (only ints below 2**61, floats, bools and None)"
                )
            if type(k) is float:
                self._float_keys += 1
                if self._float_keys > MAX_FLOAT_KEYS:
                    raise pickle.UnpicklingError(f"more than {MAX_FLOAT_KEYS} float dict keys")

    def load_setitem(self) -> None:
        self._setitems_checked([self.stack[-2]])
        super().load_setitem()

    def load_setitems(self) -> None:
        # The items sit above the last mark; check them before pickle builds anything.
        self._setitems_checked(self.stack)
        super().load_setitems()

    def load_dict(self) -> None:
        self._setitems_checked(self.stack)
        super().load_dict()

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        if type(func) is _Token and type(args) is tuple:
            value = self._rebuild(func, args)
            del self.stack[-1]
            self.stack[-1] = value
            return
        ok = func in (list, dict) and (
            args == () or (type(args) is tuple and len(args) == 1 and type(args[0]) is func)
        )
        if not ok:
            raise pickle.UnpicklingError("only plain lists and dicts may be rebuilt")
        super().load_reduce()

    def load_newobj(self) -> None:
        cls, args = self.stack[-2], self.stack[-1]
        if type(cls) is _Token and cls.kind == "foreign" and type(args) is tuple:
            value = self._rebuild(cls, args)
            del self.stack[-1]
            self.stack[-1] = value
            return
        if args != () or cls not in (list, dict):
            raise pickle.UnpicklingError("only empty plain lists and dicts may be created")
        super().load_newobj()

    def load_build(self) -> None:
        inst = self.stack[-2]
        if type(inst) not in (_DType, _Bag):
            raise pickle.UnpicklingError("object state is only allowed for known classes")
        state = self.stack.pop()
        inst.__setstate__(state)

    @staticmethod
    def _rebuild(token: _Token, args: tuple) -> Any:
        """The plain value for ``token(*args)``, built here (nothing named is called)."""
        kind = token.kind
        if kind == "dict" and args == ():
            return {}
        if kind == "defaultdict" and (
            args == () or (len(args) == 1 and (args[0] is None or type(args[0]) is _Token))
        ):
            return {}
        if kind == "npdtype" and len(args) == 3 and type(args[0]) is str and len(args[0]) < 16:
            return _DType(args[0])
        if kind == "npscalar" and len(args) == 2:
            return _numpy_scalar(*args)
        if kind == "foreign":
            if not args:
                return _Bag()  # items and state follow
            return args[0] if len(args) == 1 else list(args)  # Enum member / namedtuple
        raise pickle.UnpicklingError(f"cannot rebuild {token.name} from these arguments")

    def _refuse(self) -> None:
        raise pickle.UnpicklingError(
            "pickle opcode for a set, object, extension or huge integer is not allowed"
        )

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    for _op in (
        pickle.LONG4,
        pickle.LONG,
        pickle.NEWOBJ_EX,
        pickle.INST,
        pickle.OBJ,
        pickle.EXT1,
        pickle.EXT2,
        pickle.EXT4,
        pickle.EMPTY_SET,
        pickle.ADDITEMS,
        pickle.FROZENSET,
    ):
        dispatch[_op[0]] = _refuse
    for _op in (
        pickle.BINBYTES8,
        pickle.BYTEARRAY8,
        pickle.NEXT_BUFFER,
        pickle.READONLY_BUFFER,
    ):
        dispatch[_op[0]] = _refuse_binary
    del _op


class _Budget(Exception):
    """Internal: the decoder's operation budget ran out."""


def _gunzip_capped(raw: bytes, path: Any) -> bytes:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, MAX_RECORD_BYTES + 1)
    except zlib.error as exc:
        raise MLArrayFormatError(path, f"metadata record is not valid gzip data ({exc})") from None
    if len(out) > MAX_RECORD_BYTES or d.unconsumed_tail:
        raise UnsafeRecordError(
            path, f"metadata record expands beyond {MAX_RECORD_BYTES} bytes; refusing to read it"
        )
    if not d.eof:
        raise MLArrayFormatError(path, "metadata record is truncated (incomplete gzip stream)")
    return out


#: On read, values replaced by the plain value they stand for.
_READ_AS = {tuple: list, _Bag: _plain_of_bag}


def _check_plain(obj: Any, path: Any, *, read: bool = False) -> int:
    """Walk ``obj`` iteratively; refuse anything but plain containers and scalars.

    Keys of the top-level dict (the record's parts) are strings; deeper keys follow
    :func:`mlarray.meta.record_key_ok`. With ``read``, tuples (which the reference
    package stores as its users wrote them, e.g. ``sitk_image.GetSpacing()``) are
    replaced by lists in place: a record is made of lists, as our own metadata is;
    instances of classes named in the record by their plain value.

    Returns an upper bound of the number of pickle opcodes the record takes (each
    value or key two: the value and its memo entry; each container two per batch of
    1000 items more), for the writer to refuse what the reader would.
    """
    stack = [(obj, 0)]
    nodes = 0
    ops = 0
    float_keys = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_RECORD_NODES:
            raise UnsafeRecordError(path, f"metadata record has more than {MAX_RECORD_NODES} nodes")
        if depth > MAX_RECORD_DEPTH:
            raise UnsafeRecordError(
                path, f"metadata record is nested deeper than {MAX_RECORD_DEPTH} levels"
            )
        ops += 2
        if type(value) is dict:
            ops += 4 * (len(value) // 1000 + 1) + 2 * len(value)
            for k, v in value.items():
                if type(k) is not str and (depth == 0 or not record_key_ok(k)):
                    raise MLArrayFormatError(path, f"metadata record has a non-string key {k!r}")
                float_keys += type(k) is float
                if read and type(v) in _READ_AS:
                    value[k] = v = _READ_AS[type(v)](v)
                stack.append((v, depth + 1))
            if float_keys > MAX_FLOAT_KEYS:
                raise MLArrayFormatError(
                    path, f"metadata record has more than {MAX_FLOAT_KEYS} float dict keys"
                )
        elif type(value) is list:
            ops += 4 * (len(value) // 1000 + 1)
            if read:
                for i, v in enumerate(value):
                    if type(v) in _READ_AS:
                        value[i] = _READ_AS[type(v)](v)
            stack.extend((v, depth + 1) for v in value)
        elif type(value) not in _SCALARS:
            raise MLArrayFormatError(
                path, f"metadata record holds a {type(value).__name__}, which the format forbids"
            )
    return ops


def decode_record(raw: Any, path: Any = None) -> dict[str, Any]:
    """Decode the bytes of ``vlmeta["mlarray"]`` into a plain dict, safely.

    Parameters
    ----------
    raw : bytes
        The stored value.
    path : str or PathLike, optional
        The file it came from, named in error messages.

    Raises
    ------
    UnsafeRecordError
        For forbidden pickle globals and records beyond the size, depth or
        node caps.
    MLArrayFormatError
        For anything else that is not a valid record.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MLArrayFormatError(path, f"metadata record must be bytes, found {type(raw).__name__}")
    data = _gunzip_capped(bytes(raw), path)
    unpickler = _RestrictedUnpickler(io.BytesIO(data))
    try:
        record = unpickler.load()
    except pickle.UnpicklingError as exc:
        if "forbidden global" in str(exc) or "persistent" in str(exc):
            raise UnsafeRecordError(path, f"metadata record refused: {exc}") from None
        raise MLArrayFormatError(path, f"metadata record is not a valid pickle ({exc})") from None
    except _Budget as exc:
        raise UnsafeRecordError(path, f"metadata record refused: {exc}") from None
    except RecursionError:
        raise UnsafeRecordError(path, "metadata record is nested too deeply") from None
    except Exception as exc:  # any other unpickling failure is a malformed record
        raise MLArrayFormatError(
            path, f"metadata record is not a valid pickle ({type(exc).__name__}: {exc})"
        ) from None
    if type(record) is not dict:
        raise MLArrayFormatError(
            path, f"metadata record must be a dict, found {type(record).__name__}"
        )
    _check_plain(record, path, read=True)
    if unpickler.foreign:
        _warn(
            path,
            "metadata values of classes unknown here read as their plain values: "
            f"{sorted(unpickler.foreign)}",
        )
    return record


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Encode a plain record as ``gzip(pickle(record))`` (protocol 4, gzip mtime 0).

    The same record always gives the same bytes. The record must be one this
    version reads back: refused with :class:`~mlarray.errors.UnsafeRecordError`
    beyond the caps on nesting depth, pickle operations and decompressed size.
    """
    plain = dict(record)
    try:
        ops = _check_plain(plain, None)
    except UnsafeRecordError:
        raise
    except MLArrayFormatError as exc:
        # a value put into ``meta.source.data`` (the dict itself) directly, unchecked:
        # numpy scalars, Enum members, ... are stored as the plain values they stand for
        try:
            plain = {k: _to_json_like(str(k), v) for k, v in plain.items()}
        except MetaValidationError:
            raise exc from None
        ops = _check_plain(plain, None)
    # + PROTO, STOP and one FRAME opcode per 64 KB of at most MAX_RECORD_BYTES
    if ops + 2 + MAX_RECORD_BYTES // 65536 > MAX_RECORD_NODES:
        raise UnsafeRecordError(
            None,
            f"metadata record refused: about {ops} pickle operations, more than the "
            f"{MAX_RECORD_NODES} a reader decodes (too many values in source/extra)",
        )
    payload = pickle.dumps(plain, protocol=PICKLE_PROTOCOL)
    if len(payload) > MAX_RECORD_BYTES:
        raise UnsafeRecordError(
            None,
            f"metadata record refused: {len(payload)} bytes, more than the "
            f"{MAX_RECORD_BYTES} a reader decodes (too much data in source/extra)",
        )
    return gzip.compress(payload, compresslevel=9, mtime=0)


def record_from_meta(meta: Meta) -> dict[str, Any]:
    """The record to store for ``meta``: the full key set of FORMAT.md section 3, nothing more."""
    record = meta.to_mapping(include_none=True)
    record["_mlarray_version"] = meta._mlarray_version.value or FORMAT_VERSION
    return record


_FIELD_NAMES = {key: frozenset(f.name for f in fields(cls)) for key, cls in META_PARTS.items()}


_GEOMETRY = ("spacing", "origin", "direction", "affine")


def _fields_named(exc: MetaValidationError, key: str) -> tuple[str, ...]:
    """The fields of part ``key`` a validation error is about (all geometry for ``spatial``)."""
    name = exc.field.split("[", 1)[0]
    if name == key:
        return _GEOMETRY if key == "spatial" else ()
    head, _, rest = name.partition(".")
    if head != key or not rest:
        return ()
    return (rest.split(".", 1)[0],)


def _warn(path: Any, message: str) -> None:
    where = f"{os.fspath(path)}: " if path is not None else ""
    warnings.warn(f"{where}{message}", UserWarning, stacklevel=4)


def _bbox_from_record(value: Mapping[str, Any], ignored: list[str]) -> dict[str, Any]:
    """The bbox part with each box this version refuses dropped (with its score and
    label) and named in ``ignored``; the other boxes are kept. A box whose min exceeds
    its max on an axis (the reference writes such boxes, e.g. converted to world
    coordinates along a flipped axis) is read with that axis's bounds in order: the
    same interval."""
    boxes = value.get("bboxes")
    if not isinstance(boxes, list):
        return dict(value)
    keep: list[int] = []
    fixed: list[Any] = []
    for i, box in enumerate(boxes):
        if isinstance(box, list):
            box = [
                [pair[1], pair[0]]
                if isinstance(pair, list)
                and len(pair) == 2
                and all(_is_real(x) for x in pair)
                and pair[0] > pair[1]
                else pair
                for pair in box
            ]
        try:
            parse_bboxes("bbox.bboxes", [*fixed[:1], box])
        except (MetaValidationError, TypeError, ValueError) as exc:
            ignored.append(f"bbox.bboxes[{i}] ({exc})")
            continue
        if box != boxes[i]:
            ignored.append(
                f"bbox.bboxes[{i}] (min > max on an axis: read with min and max in order)"
            )
        keep.append(i)
        fixed.append(box)
    out = dict(value)
    out["bboxes"] = fixed
    for name in ("scores", "labels"):
        v = value.get(name)
        if isinstance(v, list) and len(v) == len(boxes):
            out[name] = [v[i] for i in keep]
    return out


def _is_real(x: Any) -> bool:
    return type(x) in (int, float)


def _part_from_record(key: str, value: Any, ignored: list[str]) -> Any:
    """Part ``key`` of a record; a field whose value this version refuses (NaN spacing,
    an affine whose last row is not [0, ..., 0, 1], ...) is left unset and named in
    ``ignored``, a part that cannot be read at all takes its default."""
    cls = META_PARTS[key]
    if key == "bbox" and isinstance(value, Mapping):
        value = _bbox_from_record(value, ignored)
    for _ in range(len(_FIELD_NAMES[key]) + 1):
        try:
            return cls.ensure(value)
        except (MetaValidationError, KeyError, TypeError, ValueError, OverflowError) as exc:
            drop = _fields_named(exc, key) if isinstance(exc, MetaValidationError) else ()
            drop = tuple(f for f in drop if isinstance(value, Mapping) and value.get(f) is not None)
            if not drop or issubclass(cls, SingleKeyBaseMeta):
                ignored.append(f"{key} ({exc})")
                return cls()
            ignored += [f"{key}.{f} ({exc})" for f in drop]
            value = {k: v for k, v in value.items() if k not in drop}
    ignored.append(key)
    return cls()


def meta_from_record(record: Mapping[str, Any], path: Any = None) -> Meta:
    """Build a :class:`Meta` from a decoded record, following FORMAT.md's reading rules.

    Missing keys take their defaults; single-key parts may be wrapped or
    bare; keys this version does not know are dropped with a warning (the
    file stays readable). Values this version refuses to hold (non-finite
    spacing or origin, an affine that is not homogeneous, wrong types, ...)
    are left unset, with a warning naming the file and the fields: the image
    stays readable, as it is in the reference package.
    """
    parts: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in record.items():
        cls = META_PARTS.get(key)
        if cls is None:
            unknown.append(str(key))
            continue
        if not issubclass(cls, SingleKeyBaseMeta) and isinstance(value, Mapping):
            extra = [k for k in value if k not in _FIELD_NAMES[key]]
            unknown += sorted(f"{key}.{k}" for k in extra)
            value = {k: v for k, v in value.items() if k not in extra}
        parts[key] = value
    if unknown:
        _warn(path, f"ignoring metadata keys unknown to this version of mlarray: {unknown}")
    ignored: list[str] = []
    built = {k: _part_from_record(k, v, ignored) for k, v in parts.items()}
    if ignored:
        _warn(path, f"ignoring metadata values this version of mlarray refuses: {ignored}")
    try:
        meta = Meta(**built)
    except (MetaValidationError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise MLArrayFormatError(path, f"invalid metadata record: {exc}") from None
    meta._stamp_version(None)  # a file's: its version as the reference's arrays show it
    return meta


def meta_of_frame(raw: Any, shape: tuple[int, ...], path: Any, record: dict | None = None) -> Meta:
    """The file's :class:`Meta`; the frame's shape, not the record, says whether it holds an array.

    A metadata-only file stores an empty ``(0,)`` array; any other shape is an
    array, whatever the record's ``_has_array`` says (a record without the
    flag must not hide an array, or a later metadata save would drop it).
    ``raw`` is the file's ``mlarray`` vlmeta value (None without one), ``shape``
    the frame's array shape; ``record``, if given, is ``raw`` already decoded (it is
    not modified). Spatial fields that do not fit the stored array (spacing for
    another number of axes, ...), and boxes with another number of axes
    (:meth:`MetaBbox.axes_problem`), are left unset with a warning.
    """
    if raw is None:
        meta = Meta()
    elif record is None:
        meta = meta_from_record(decode_record(raw, path), path)
    else:
        meta = meta_from_record(record, path)  # it copies what it keeps
    empty_store = shape == (0,)
    has_array = True if not empty_store else (raw is not None and meta._has_array.has_array)
    if has_array and empty_store and meta.spatial.shape not in (None, [0]):
        raise MLArrayFormatError(
            path, "record says the file holds an array, but the array is empty"
        )
    ignored: list[str] = []
    with _meta_internal_write():
        meta._has_array.has_array = bool(has_array)
        for _ in range(len(_FIELD_NAMES["spatial"]) + 1):
            try:
                meta.spatial.shape = list(shape) if has_array else None
                break
            except MetaValidationError as exc:
                drop = [f for f in _fields_named(exc, "spatial") if getattr(meta.spatial, f)]
                if not drop:
                    raise MLArrayFormatError(
                        path, f"metadata does not fit the stored array: {exc}"
                    ) from None
                for f in drop:
                    setattr(meta.spatial, f, None)
                ignored += [f"spatial.{f} ({exc})" for f in drop]
        else:
            raise MLArrayFormatError(path, "metadata does not fit the stored array")
        problem = meta.bbox.axes_problem(meta.spatial) if has_array else None
        if problem is not None:  # a viewer or a training pipeline would index the wrong axes
            meta.bbox = MetaBbox()
            ignored.append(f"bbox ({problem})")
    if ignored:
        _warn(path, f"ignoring metadata that does not fit the stored array: {ignored}")
    return meta


def read_frame(buf: Any, path: Any, read_at: Any = None) -> tuple[Any, Meta]:
    """Check the frame mapped as ``buf`` before c-blosc2 sees it and read its metadata:
    ``(FrameInfo, Meta)`` (the errors of :func:`mlarray.frame.inspect_frame` and of the
    record). The chunk headers are read through ``read_at`` when given (see
    inspect_frame); otherwise the pages the inspection touched (one per chunk) are
    unmapped from this process afterwards: mappings are kept, and mapped pages cannot
    be evicted."""
    import contextlib
    import mmap

    from mlarray.frame import FRAME_MAGIC, inspect_frame, read_vlmeta_bytes

    if bytes(buf[: len(FRAME_MAGIC)]) != FRAME_MAGIC:
        raise MLArrayFormatError(
            path, "not an .mla file (it does not start with a Blosc2 frame header)"
        )
    info = inspect_frame(buf, path, read_at)
    meta = meta_of_frame(read_vlmeta_bytes(buf, info, VLMETA_KEY, path), info.shape, path)
    if read_at is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            buf.madvise(mmap.MADV_DONTNEED)
    return info, meta
