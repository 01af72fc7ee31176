"""Metadata of an ``.mla`` file as small validated dataclasses.

The record stored in a file (FORMAT.md section 3) maps one to one onto
:class:`Meta` and its parts. Every field is parsed by a ``parse_*`` helper
when the object is created *and* whenever a field is assigned later, so a
``Meta`` never holds a value that could not be written. Errors are
:class:`~mlarray.errors.MetaValidationError` naming the field.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeVar

import numpy as np

from mlarray.errors import MetaTypeError, MetaValidationError
from mlarray.utils import is_serializable  # the reference exports it here too

__all__ = [
    "AxisLabel",
    "AxisLabelEnum",
    "BaseMeta",
    "CoordSystem",
    "CoordSystemEnum",
    "Meta",
    "MetaBbox",
    "MetaBlosc2",
    "MetaExtra",
    "MetaHasArray",
    "MetaImageFormat",
    "MetaIsSeg",
    "MetaSource",
    "MetaSpatial",
    "MetaStatistics",
    "MetaVersion",
    "SingleKeyBaseMeta",
    "is_colour_axis",
    "is_serializable",
    "is_spatial_label",
    "validate_and_cast_axis_labels",
]

FORMAT_VERSION = "v0"


class AxisLabelEnum(StrEnum):
    """Axis label/role identifiers used for spatial metadata.

    ``spatial``, ``spatial_x``, ``spatial_y`` and ``spatial_z`` are spatial;
    every other label (these enum members or any custom string) is not.
    """

    spatial = "spatial"
    spatial_x = "spatial_x"
    spatial_y = "spatial_y"
    spatial_z = "spatial_z"
    non_spatial = "non_spatial"
    channel = "channel"
    temporal = "temporal"
    continuous = "continuous"
    components = "components"


#: The axis-label vocabulary (also ``MetaSpatial.AxisLabel`` and ``mlarray.AxisLabel``).
AxisLabel = AxisLabelEnum


class CoordSystemEnum(StrEnum):
    """Names of world coordinate systems for ``MetaSpatial.coord_system``.

    ``RAS`` (+x toward the patient's right, +y anterior, +z superior, the
    NIfTI world) and ``RAS+`` name the same frame; so do ``LPS`` (+x left,
    +y posterior, +z superior, the DICOM/ITK world) and ``LPS+``. Any other
    string is accepted as a custom frame name.
    """

    RAS = "RAS"
    LPS = "LPS"
    RAS_PLUS = "RAS+"
    LPS_PLUS = "LPS+"
    unknown = "unknown"
    other = "other"


#: The coordinate-system vocabulary (also ``MetaSpatial.CoordSystem`` and ``mlarray.CoordSystem``).
CoordSystem = CoordSystemEnum

_SPATIAL_LABELS = frozenset({"spatial", "spatial_x", "spatial_y", "spatial_z"})


def is_spatial_label(label: str | AxisLabelEnum) -> bool:
    """Return whether an axis label names a spatial axis."""
    return str(label) in _SPATIAL_LABELS


def validate_and_cast_axis_labels(
    value: Any, label: str, ndims: int | None = None
) -> tuple[list[str] | None, int, int]:
    """Validate axis labels and count the spatial and non-spatial axes.

    Parameters
    ----------
    value : list, tuple, numpy array or None
        Axis labels (strings or :class:`AxisLabelEnum` members).
    label : str
        The name used in error messages.
    ndims : int, optional
        The number of labels required.

    Returns
    -------
    tuple
        ``(labels, n_spatial, n_non_spatial)``: the labels as a list of str (None for
        None) and how many of them are spatial (:func:`is_spatial_label`) and not.

    Raises
    ------
    TypeError
        If ``value`` is not a list, tuple or array, or a label is not a str.
    ValueError
        If ``ndims`` is given and the number of labels differs.
    """
    if value is None:
        return None, 0, 0
    if not isinstance(value, list | tuple | np.ndarray):
        raise TypeError(f"{label} must be a list, tuple, or numpy array")
    labels = []
    for i, v in enumerate(list(value)):
        if not isinstance(v, str):  # AxisLabelEnum members are str too
            raise TypeError(f"{label}[{i}] must be a str or AxisLabelEnum (got {type(v).__name__})")
        labels.append(str(v))
    if ndims is not None and len(labels) != ndims:
        raise ValueError(f"{label} must have length {ndims}")
    n_spatial = sum(is_spatial_label(v) for v in labels)
    return labels, n_spatial, len(labels) - n_spatial


def is_colour_axis(shape: Sequence[int], axis: int, dtype: Any) -> bool:
    """Whether ``channel`` axis ``axis`` of an array of ``shape`` holds the colours of an
    RGB(A) picture.

    The layout of colour pictures in ``.mla`` files (as ITK, PIL and napari hold
    them): the last axis, 3 or 4 long, of 8-bit unsigned data, after at least two
    other axes. ``mlarray convert`` stores colour images so, the napari plugin
    shows such a file as one RGB(A) layer and saves an RGB(A) layer so; a channel
    axis anywhere else (a one-hot map of three classes first) stays channels.
    """
    return (
        len(shape) >= 3
        and axis in (len(shape) - 1, -1)
        and int(shape[-1]) in (3, 4)
        and dtype is not None
        and np.dtype(dtype) == np.uint8
    )


# --------------------------------------------------------------------------- internal fields
# Fields mlarray maintains itself (the array shape, the storage layout, the
# payload flag, the format version) are read-only for users. Library code
# writes them inside ``with _meta_internal_write():``.

_INTERNAL_WRITE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mlarray_meta_internal_write", default=False
)


@contextlib.contextmanager
def _meta_internal_write() -> Iterator[None]:
    """Allow writing the fields mlarray maintains (library use), in this context only."""
    token = _INTERNAL_WRITE.set(True)
    try:
        yield
    finally:
        _INTERNAL_WRITE.reset(token)


def _refuse_internal(name: str) -> None:
    raise AttributeError(f"meta.{name} is maintained by mlarray and is read-only")


class _ReadOnlyList(list):
    """A list mlarray maintains: it reads as a list; changing it raises AttributeError."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise AttributeError("this list is maintained by mlarray and is read-only")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self) -> tuple:
        # rebuilt from a plain list in one call (the default would extend() it), and
        # read-only again in a copy or an unpickled meta
        return (_ReadOnlyList, (list(self),))


# --------------------------------------------------------------------------- parsers
# Each parser takes (name, value) and returns the narrowed value or raises
# MetaValidationError naming the field.


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


_EXACT_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain_scalar(value: Any) -> Any:
    """``value`` as an exact builtin when it is a scalar of another type that stands for one.

    numpy scalars (``arr.mean()``, ``affine[0, 0]``, ``np.str_``) become Python
    numbers/strings, Enum members their value, and subclasses of bool/int/float/str
    (``np.float64`` is a ``float``, an ``IntEnum`` member an ``int``) the exact builtin,
    so what a record holds pickles as plain data (FORMAT.md section 2). Anything else is
    returned unchanged (for the caller to accept or refuse).
    """
    for _ in range(3):  # an Enum whose value is a numpy scalar, ...
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, np.generic):
            value = value.item()
        else:
            break
    t = type(value)
    if t is bool or t is int or t is float or t is str or value is None:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return value


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise MetaTypeError(name, f"expected a list, got {type(value).__name__}")
    return list(value)


def parse_optional_float(name: str, value: Any) -> float | int | None:
    """A real number: an int stays an int (``spacing=[1, 2, 3]`` reads back as given and
    is saved so, as the reference package keeps it), anything else becomes a float."""
    if value is None:
        return None
    value = _plain_scalar(value)
    if not _is_number(value):
        raise MetaTypeError(name, f"expected a number or None, got {value!r}")
    try:
        as_float = float(value)
    except OverflowError:
        raise MetaValidationError(name, f"{value!r} is too large for a number") from None
    return value if type(value) is int else as_float


def parse_optional_bool(name: str, value: Any) -> bool | None:
    if value is None:
        return None
    value = _plain_scalar(value)
    if not isinstance(value, bool):
        raise MetaTypeError(name, f"expected True, False or None, got {value!r}")
    return value


def parse_bool(name: str, value: Any) -> bool:
    parsed = parse_optional_bool(name, value)
    if parsed is None:
        raise MetaValidationError(name, "expected True or False, got None")
    return parsed


def parse_optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    value = _plain_scalar(value)
    if type(value) is not str:
        raise MetaTypeError(name, f"expected a string or None, got {value!r}")
    return value


def parse_optional_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    value = _plain_scalar(value)
    if type(value) is not int:
        raise MetaTypeError(name, f"expected an integer or None, got {value!r}")
    return value


def parse_float_list(name: str, value: Any) -> list[float] | None:
    if value is None:
        return None
    out = []
    for i, v in enumerate(_as_list(name, value)):
        f = parse_optional_float(f"{name}[{i}]", v)
        if f is None:
            raise MetaTypeError(name, f"entry {i} must be a number, got None")
        if not math.isfinite(f):
            raise MetaValidationError(name, f"entry {i} must be a finite number, got {v!r}")
        out.append(f)
    return out


def parse_int_list(name: str, value: Any, minimum: int = 0) -> list[int] | None:
    if value is None:
        return None
    out = []
    for i, v in enumerate(_as_list(name, value)):
        n = parse_optional_int(f"{name}[{i}]", v)
        if n is None:
            raise MetaTypeError(name, f"entry {i} must be an integer, got None")
        if n < minimum:
            raise MetaValidationError(name, f"entry {i} must be an integer >= {minimum}, got {v!r}")
        out.append(n)
    return out


def parse_matrix(name: str, value: Any) -> list[list[float]] | None:
    if value is None:
        return None
    rows = [parse_float_list(f"{name}[{i}]", r) for i, r in enumerate(_as_list(name, value))]
    if not rows or any(r is None or len(r) != len(rows[0]) for r in rows):
        raise MetaValidationError(name, "expected a non-empty rectangular matrix")
    return rows


def parse_str_list(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    out = []
    for i, v in enumerate(_as_list(name, value)):
        s = parse_optional_str(f"{name}[{i}]", v)
        if s is None:
            raise MetaValidationError(name, f"entry {i} must be a string, got None")
        out.append(s)
    return out


#: Cap on the decompressed size of a record (a 3 KB gzip can expand to GBs).
MAX_RECORD_BYTES = 64 * 1024 * 1024
#: Cap on the nesting depth of a record (checked iteratively).
MAX_RECORD_DEPTH = 200
#: Cap on the number of containers and scalars visited in a record (shared
#: references are counted each time, which defeats "billion laughs" records),
#: and on the number of pickle opcodes run while decoding. Each opcode makes at
#: most one object (about 100 bytes at worst, with its memo entry), so decoding
#: never holds more than about 800 MB; an ordinary record costs as much per
#: opcode (a DICOM-like header of short strings: 54 MB of pickle, 6 M opcodes),
#: so records up to :data:`MAX_RECORD_BYTES` of such data are read.
MAX_RECORD_NODES = 8_000_000
#: Nesting depth allowed in free-form metadata (``source``, ``extra``): far beyond what
#: JSON-like metadata holds (the reference package's own limit is Python's recursion
#: limit, about 330 levels), below :data:`MAX_RECORD_DEPTH` by the two levels a record
#: adds, so what a Meta accepts a record can hold.
_JSON_MAX_DEPTH = MAX_RECORD_DEPTH - 2

#: Integer dict keys in free-form metadata stay below this magnitude: every such int
#: hashes to itself, so a record's keys can never be made to collide in one hash bucket
#: (inserting colliding keys is quadratic: a crafted record would take minutes to read).
_KEY_INT_LIMIT = 2**61 - 1
#: Float keys (whose hashes can be made to collide) are capped per record.
MAX_FLOAT_KEYS = 1000


def record_key_ok(key: Any) -> bool:
    """Whether ``key`` may be a dict key inside free-form metadata (``source``/``extra``).

    Strings, booleans, None, integers of magnitude below 2**61 - 1 and floats are
    kept as the user wrote them (a label map ``{0: "background", 1: "liver"}``);
    records hold at most :data:`MAX_FLOAT_KEYS` float keys.
    """
    t = type(key)
    if t is str or t is bool or key is None or t is float:
        return True
    return t is int and -_KEY_INT_LIMIT < key < _KEY_INT_LIMIT


def _record_key(name: str, key: Any) -> Any:
    """``key`` as stored: plain str/int/float/bool/None, or MetaTypeError."""
    if type(key) is str:
        return key
    key = _plain_scalar(key)
    if isinstance(key, (str, bool)) or key is None:
        pass
    elif isinstance(key, numbers.Integral):
        key = int(key)
    elif isinstance(key, numbers.Real):
        key = float(key)
    if not record_key_ok(key):
        raise MetaTypeError(
            name,
            "keys must be strings, integers (below 2**61 in magnitude), floats, booleans "
            f"or None, got {key!r}",
        )
    return key


def _to_json_like(name: str, value: Any) -> Any:
    """Return a copy of ``value`` made of dict/list/str/int/float/bool/None only.

    A value no record could hold is refused here, when it is assigned, not when the
    file is saved (or an ``r+`` handle closed): beyond the nesting depth, more float
    keys than a record holds, more values or characters than a reader decodes.
    """
    tally = [0, 0, 0]  # values and keys, float keys, characters
    out = _json_like(name, value, 0, tally)
    values, float_keys, chars = tally
    if float_keys > MAX_FLOAT_KEYS:
        raise MetaValidationError(name, f"has {float_keys} float keys, at most {MAX_FLOAT_KEYS}")
    if 2 * values > MAX_RECORD_NODES or chars > MAX_RECORD_BYTES:
        raise MetaValidationError(
            name,
            f"holds {values} values and keys and {chars} characters: more than a metadata "
            f"record holds (about {MAX_RECORD_NODES // 2} and {MAX_RECORD_BYTES})",
        )
    return out


def _json_like(name: str, value: Any, depth: int, tally: list[int]) -> Any:
    if depth > _JSON_MAX_DEPTH:
        raise MetaValidationError(name, f"nested deeper than {_JSON_MAX_DEPTH} levels")
    tally[0] += 1
    t = type(value)
    if t not in _EXACT_SCALARS:  # most values are plain: no conversion to try
        value = _plain_scalar(value)
        t = type(value)
    if t is str:
        tally[2] += len(value)
        return value
    if t is int and value.bit_length() > 2000:
        # pickled as LONG4, which readers refuse (a crafted one would be gigabytes)
        raise MetaValidationError(name, "integers in metadata stay below 2**2000 in magnitude")
    if value is None or t is bool or t is int or t is float:
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            k = _record_key(name, k)
            tally[0] += 1
            if type(k) is str:
                tally[2] += len(k)
            elif type(k) is float:
                tally[1] += 1
            out[k] = _json_like(f"{name}.{k}", v, depth + 1, tally)
        return out
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _json_like(name, value.item(), depth, tally)
    if isinstance(value, (list, tuple, np.ndarray)):
        items = value.tolist() if isinstance(value, np.ndarray) else value
        return [_json_like(name, v, depth + 1, tally) for v in items]
    raise MetaTypeError(
        name, f"value {value!r} of type {type(value).__name__} is not JSON-compatible"
    )


def parse_json_dict(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MetaTypeError(name, f"expected a dict, got {type(value).__name__}")
    return _to_json_like(name, value)


def parse_optional_json_dict(name: str, value: Any) -> dict[str, Any] | None:
    return None if value is None else parse_json_dict(name, value)


def parse_bboxes(name: str, value: Any) -> list[list[list[float | int]]] | None:
    if value is None:
        return None
    boxes = []
    for b, box in enumerate(_as_list(name, value)):
        axes = []
        for a, pair in enumerate(_as_list(f"{name}[{b}]", box)):
            pair = _as_list(f"{name}[{b}][{a}]", pair)
            if len(pair) != 2:
                raise MetaValidationError(
                    name, f"box {b} axis {a}: expected [min, max], got {pair!r}"
                )
            lo, hi = (_plain_scalar(v) for v in pair)
            if not (_is_number(lo) and _is_number(hi)):
                raise MetaTypeError(name, f"box {b} axis {a}: bounds must be numbers")
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise MetaValidationError(name, f"box {b} axis {a}: bounds must be finite")
            if lo > hi:
                raise MetaValidationError(name, f"box {b} axis {a}: min {lo} > max {hi}")
            axes.append([lo, hi])
        if boxes and len(axes) != len(boxes[0]):
            raise MetaValidationError(
                name, f"box {b} has {len(axes)} axes, box 0 has {len(boxes[0])}"
            )
        boxes.append(axes)
    return boxes


def parse_scores(name: str, value: Any) -> list[float | int] | None:
    if value is None:
        return None
    out = []
    for i, v in enumerate(_as_list(name, value)):
        v = _plain_scalar(v)
        if not _is_number(v):
            raise MetaTypeError(name, f"entry {i} must be a number, got {v!r}")
        out.append(v)
    return out


def parse_box_labels(name: str, value: Any) -> list[str | int | float] | None:
    if value is None:
        return None
    out = []
    for i, v in enumerate(_as_list(name, value)):
        v = _plain_scalar(v)
        if not (isinstance(v, str) or _is_number(v)):
            raise MetaTypeError(name, f"entry {i} must be a string or number, got {v!r}")
        out.append(v)
    return out


def _parse_internal_sizes(name: str, value: Any) -> list[int] | None:
    sizes = parse_int_list(name, value, minimum=0)
    return None if sizes is None else _ReadOnlyList(sizes)


# --------------------------------------------------------------------------- base classes

T = TypeVar("T", bound="BaseMeta")


def _parsed(
    parse: Callable[[str, Any], Any],
    default: Any = None,
    factory: Any = None,
    *,
    internal: bool = False,
) -> Any:
    meta = {"parse": parse, "internal": internal}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _is_unset(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (dict, list, tuple)) and len(value) == 0:
        return True
    return isinstance(value, BaseMeta) and value.is_default()


@dataclass
class BaseMeta:
    """Base class for metadata containers.

    Fields are parsed on creation and on every assignment; subclasses add
    cross-field checks in ``_validate_and_cast``.
    """

    _prefix: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        spec = self.__dataclass_fields__.get(name)
        if spec is None:
            object.__setattr__(self, name, value)
            return
        initialised = getattr(self, "_initialised", False)
        if initialised and spec.metadata.get("internal") and not _INTERNAL_WRITE.get():
            _refuse_internal(self._field_name(name))
        parse = spec.metadata.get("parse")
        if parse is not None:
            value = parse(self._field_name(name), value)
        if not initialised:
            object.__setattr__(self, name, value)
            return
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            self._validate_and_cast()
        except MetaValidationError:
            object.__setattr__(self, name, old)
            raise

    def __post_init__(self) -> None:
        self._validate_and_cast()
        object.__setattr__(self, "_initialised", True)

    def _field_name(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def _validate_and_cast(self) -> None:
        """Cross-field validation; fields are already parsed one by one."""

    # -- construction -----------------------------------------------------
    @classmethod
    def from_mapping(cls: type[T], d: Mapping[str, Any]) -> T:
        """Construct an instance from a mapping.

        Parameters
        ----------
        d : Mapping[str, Any]
            Input mapping matching the dataclass field names.

        Returns
        -------
        BaseMeta
            A new instance of ``cls``.

        Raises
        ------
        TypeError
            If ``d`` is not a mapping.
        KeyError
            If unknown keys are present (all of them are named).
        """
        if not isinstance(d, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_mapping expects a mapping, got {type(d).__name__}"
            )
        names = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            raise KeyError(f"{cls.__name__}: unknown key(s) {sorted(map(str, unknown))}")
        return cls(**dict(d))

    @classmethod
    def ensure(cls: type[T], x: Any) -> T:
        """Coerce ``x`` (None, an instance of ``cls`` or a mapping) into an instance of ``cls``."""
        if x is None:
            return cls()
        if isinstance(x, cls):
            return x
        if isinstance(x, Mapping):
            return cls.from_mapping(x)
        raise TypeError(
            f"{cls.__name__}.ensure: expected None, {cls.__name__} or a mapping, got "
            f"{type(x).__name__}"
        )

    def copy_from(self: T, other: T, *, overwrite: bool = False) -> None:
        """Copy fields from another instance of the same class.

        Parameters
        ----------
        other : BaseMeta
            Source instance, of exactly this class.
        overwrite : bool
            When True, overwrite every field. When False, only fill fields
            that are unset (None or empty); nested metas are merged
            recursively unless the destination sub-meta is entirely default,
            in which case it is replaced.

        Fields mlarray maintains (array shape, storage layout, payload flag,
        format version) are not copied, except by library code inside
        ``_meta_internal_write()``. The merged result is validated as a
        whole; on error ``self`` is left unchanged.
        """
        if type(other) is not type(self):
            raise TypeError(
                f"copy_from: expected {type(self).__name__}, got {type(other).__name__}"
            )
        merged = type(self).from_mapping(self._merged(other, overwrite, _INTERNAL_WRITE.get()))
        for f in fields(self):
            object.__setattr__(self, f.name, getattr(merged, f.name))
        self._validate_and_cast()

    def _merged(self, other: BaseMeta, overwrite: bool, internal: bool) -> dict[str, Any]:
        """``self.to_mapping()`` with ``other``'s fields copied in by the copy_from rules."""
        out = BaseMeta.to_mapping(self)
        for f in fields(self):
            if f.metadata.get("internal") and not internal:
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, BaseMeta):
                out[f.name] = mine._merged(theirs, overwrite, internal)
            elif overwrite or _is_unset(mine):
                out[f.name] = _deepcopy_plain(theirs)
        return out

    def copy(self: T) -> T:
        """Return a deep copy."""
        return type(self).from_mapping(self.to_mapping())

    def _clone(self: T) -> T:
        """A deep copy of this valid instance without parsing or validating it again
        (what :meth:`copy` does): for handing out copies of a meta decoded once, such
        as a file's metadata to each of its handles."""
        out = object.__new__(type(self))
        d = self.__dict__.copy()
        for k, v in d.items():
            if type(v) not in _PLAIN_TYPES:
                d[k] = _clone_value(v)
        object.__setattr__(out, "__dict__", d)
        return out

    def is_default(self) -> bool:
        """Return whether every field equals its default."""
        return self == type(self)()

    def reset(self) -> None:
        """Reset every user field to its default, in place.

        Fields mlarray maintains (``spatial.shape``, the storage layout, ...) are
        kept, as :meth:`Meta.reset` keeps them; fields derived from the user
        fields follow them.

        Raises
        ------
        AttributeError
            If every field of this part is maintained by mlarray (``blosc2``,
            ``_has_array``, ...): there is nothing a user may reset.
        """
        every = fields(self)
        if all(f.metadata.get("internal") for f in every):
            _refuse_internal(self._field_name(every[0].name))
        # kept: what mlarray maintains; reset: the user fields and the counts derived
        # from them (spatial's _num_spatial_axes follows axis_labels)
        names = [f.name for f in every if not f.metadata.get("internal") or f.name[0] == "_"]
        fresh = type(self)()
        old = {n: getattr(self, n) for n in names}
        for n in names:
            object.__setattr__(self, n, getattr(fresh, n))
        try:
            self._validate_and_cast()
        except MetaValidationError:
            for n, v in old.items():
                object.__setattr__(self, n, v)
            raise

    # -- serialisation ----------------------------------------------------
    def to_mapping(self, *, include_none: bool = True) -> dict[str, Any]:
        """Serialize to a mapping, recursively expanding nested metas.

        Parameters
        ----------
        include_none : bool
            Include fields whose value is None.
        """
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, BaseMeta):
                v = v.to_mapping(include_none=include_none)
            elif v is None and not include_none:
                continue
            else:
                v = _deepcopy_plain(v)
            out[f.name] = v
        return out

    def to_plain(self, *, include_none: bool = False) -> Any:
        """Convert to plain Python objects recursively (nested metas expanded)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            v = v.to_plain(include_none=include_none) if isinstance(v, BaseMeta) else v
            if v is None and not include_none:
                continue
            out[f.name] = _deepcopy_plain(v)
        return out

    def __str__(self) -> str:
        """Its plain values (:meth:`to_plain`), as the reference package prints metadata:
        ``print(meta)`` shows ``{'spatial': {'spacing': [1.0, 2.0]}, 'is_seg': True}``."""
        plain = self.to_plain()
        return str({} if plain is None else plain)


_IMMUTABLE = (str, int, float, complex, bool, bytes, type(None), Enum)


_PLAIN_TYPES = frozenset({str, int, float, complex, bool, bytes, type(None)})


def _clone_value(v: Any) -> Any:
    if type(v) in _PLAIN_TYPES:  # most values: no isinstance chain
        return v
    if isinstance(v, BaseMeta):
        return v._clone()
    if type(v) is _ReadOnlyList:  # of ints, immutable: shared, and stays read-only
        return v
    if isinstance(v, dict):
        return {k: _clone_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clone_value(x) for x in v]
    if isinstance(v, _IMMUTABLE) or (
        isinstance(v, tuple) and all(isinstance(x, _IMMUTABLE) for x in v)
    ):
        return v
    return copy.deepcopy(v)


def _deepcopy_plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deepcopy_plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deepcopy_plain(x) for x in v]
    return v


SK = TypeVar("SK", bound="SingleKeyBaseMeta")


@dataclass
class SingleKeyBaseMeta(BaseMeta):
    """A meta wrapping one field, accepted wrapped (``{"is_seg": True}``) or bare (``True``)."""

    @classmethod
    def _key(cls) -> str:
        return fields(cls)[0].name

    @classmethod
    def from_mapping(cls: type[SK], d: Any) -> SK:
        """Construct from a schema-shaped mapping (``{key: value}``) or from the raw value."""
        if d is None:
            return cls()
        if (
            isinstance(d, Mapping)
            and set(d) <= {cls._key()}
            and (len(d) == 1 or not cls._wraps_mapping())
        ):
            return cls(**dict(d))
        if isinstance(d, Mapping) and not cls._wraps_mapping():
            unknown = sorted(map(str, set(d) - {cls._key()}))
            raise KeyError(f"{cls.__name__}: unknown key(s) {unknown}")
        return cls(d)

    @classmethod
    def _wraps_mapping(cls) -> bool:
        return cls in (MetaSource, MetaExtra)

    @classmethod
    def ensure(cls: type[SK], x: Any) -> SK:
        """Coerce None, an instance, a mapping or a raw value into an instance of ``cls``."""
        if isinstance(x, cls):
            return x
        return cls.from_mapping(x)

    @property
    def value(self) -> Any:
        """The wrapped value."""
        return getattr(self, self._key())

    def set(self, value: Any) -> None:
        """Replace the wrapped value (``meta.is_seg.set(True)``), parsed and validated as
        an assignment to the field is.

        Raises
        ------
        MetaValidationError
            If ``value`` is not a valid value of the field (:class:`MetaTypeError`
            for a value of the wrong type).
        AttributeError
            If mlarray maintains the field (``_has_array``, ``_mlarray_version``, ...).
        """
        setattr(self, self._key(), value)

    def to_mapping(self, *, include_none: bool = True) -> dict[str, Any]:
        """Serialize to ``{key: value}`` (an empty dict for None unless ``include_none``)."""
        v = self.value
        if v is None and not include_none:
            return {}
        return {self._key(): _deepcopy_plain(v)}

    def to_plain(self, *, include_none: bool = False) -> Any:
        """Return the wrapped value (None when unset)."""
        return _deepcopy_plain(self.value)

    # As the reference package: a part behaves as its value (None as an empty one) in
    # ``if``, ``len``, ``for`` and ``print`` (``len(meta._mlarray_version)``, a flag's
    # ``len`` raises as ``len(True)`` does).
    def __bool__(self) -> bool:
        return bool(self.value)

    def __len__(self) -> int:
        value = self.value
        return 0 if value is None else len(value)

    def __iter__(self) -> Iterator[Any]:
        value = self.value
        return iter(() if value is None else value)

    def __str__(self) -> str:
        return str(self.value)


# --------------------------------------------------------------------------- the parts


class _DictMeta(SingleKeyBaseMeta, MutableMapping):
    """A free-form dict part that behaves as a dict: ``meta.source["key"] = value``.

    Item assignment validates the value (JSON-compatible: dict, list, str,
    int, float, bool, None; numpy scalars and arrays are converted) and
    changes the record, so the change is saved with the file. Compares equal
    to a plain dict with the same items.
    """

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        key = _record_key(self._prefix, key)
        self.data[key] = _to_json_like(f"{self._prefix}.{key}", value)

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __str__(self) -> str:
        return str(self.data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _DictMeta):
            return type(self) is type(other) and self.data == other.data
        if isinstance(other, Mapping):
            return self.data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class MetaSource(_DictMeta):
    """Free-form, JSON-compatible metadata from the original image source.

    Behaves as a dict (``meta.source["patient_id"]``, ``in``, ``len``,
    ``update``, ``get``, ``del`` ...); ``meta.source.data`` is the dict itself.
    """

    _prefix: ClassVar[str] = "source"
    data: dict[str, Any] = _parsed(parse_json_dict, factory=dict)


@dataclass(eq=False)
class MetaExtra(_DictMeta):
    """Free-form, JSON-compatible extra metadata (project-specific values go here).

    Behaves as a dict, like :class:`MetaSource`.
    """

    _prefix: ClassVar[str] = "extra"
    data: dict[str, Any] = _parsed(parse_json_dict, factory=dict)


@dataclass
class MetaSpatial(BaseMeta):
    """Spatial metadata: geometry, axis labels and units.

    Geometry is either ``spacing``/``origin``/``direction`` (one value per
    spatial axis; ``direction`` is n x n with column j the world direction of
    spatial axis j) or a homogeneous ``affine`` of shape (n+1, n+1), never
    both. ``axis_labels`` and ``axis_units`` have one entry per array axis;
    ``coord_system`` names the world frame (``"LPS"``, ``"RAS"``, ...).
    ``axis_units`` may instead have one entry per spatial axis, as
    ``spacing`` (the reference package writes either):
    :meth:`units_per_axis` gives them per array axis.
    """

    _prefix: ClassVar[str] = "spatial"
    #: The axis-label vocabulary (:class:`AxisLabelEnum`).
    AxisLabel: ClassVar[type[AxisLabelEnum]] = AxisLabelEnum
    #: The coordinate-system vocabulary (:class:`CoordSystemEnum`).
    CoordSystem: ClassVar[type[CoordSystemEnum]] = CoordSystemEnum

    spacing: list[float] | None = _parsed(parse_float_list)
    origin: list[float] | None = _parsed(parse_float_list)
    direction: list[list[float]] | None = _parsed(parse_matrix)
    affine: list[list[float]] | None = _parsed(parse_matrix)
    shape: list[int] | None = _parsed(_parse_internal_sizes, internal=True)
    axis_labels: list[str] | None = _parsed(parse_str_list)
    coord_system: str | None = _parsed(parse_optional_str)
    axis_units: list[str] | None = _parsed(parse_str_list)
    _num_spatial_axes: int | None = _parsed(parse_optional_int, internal=True)
    _num_non_spatial_axes: int | None = _parsed(parse_optional_int, internal=True)

    @property
    def world_frame(self) -> str | None:
        """The anatomical frame the geometry maps into (``"RAS"``, ``"LPS"``, ...), or None.

        ``RAS``/``RAS+`` read as RAS and ``LPS``/``LPS+`` as LPS, except that the
        reference converter's array axis codes (``"SLP+"``, and ``"LPS+"`` over
        a RAS-world affine) read as RAS in a record whose geometry is an
        ``affine`` (the form that converter writes; with ``spacing``/``origin``/
        ``direction`` the code names the frame):
        :func:`mlarray.geometry.anatomical_frame`.
        """
        from mlarray import geometry

        affine, sod = self.affine, (self.spacing, self.origin, self.direction)
        if affine is None and any(v is not None for v in sod):
            n = self.spatial_ndim or len(next(v for v in sod if v is not None))
            affine = geometry.compose_affine(*sod, ndim=n)
        return geometry.anatomical_frame(
            self.coord_system, affine, geometry_as_affine=self.affine is not None
        )

    def _validate_and_cast(self) -> None:
        if self.axis_labels is not None:
            n_sp = sum(is_spatial_label(a) for a in self.axis_labels)
            object.__setattr__(self, "_num_spatial_axes", n_sp)
            object.__setattr__(self, "_num_non_spatial_axes", len(self.axis_labels) - n_sp)
        ndim = self.ndim
        if self.axis_labels is not None and ndim is not None and len(self.axis_labels) != ndim:
            raise MetaValidationError(
                "spatial.axis_labels",
                f"has {len(self.axis_labels)} entries but the array has {ndim} axes",
            )
        units, n_sp = self.axis_units, self.spatial_ndim
        if units is not None and ndim is not None and len(units) not in (ndim, n_sp):
            raise MetaValidationError(
                "spatial.axis_units",
                f"has {len(units)} entries but the array has {ndim} axes ({n_sp} spatial): "
                "give one unit per array axis or one per spatial axis",
            )
        n = self.spatial_ndim
        lengths = {}
        for name in ("spacing", "origin"):
            v = getattr(self, name)
            if v is not None:
                lengths[name] = len(v)
        if self.direction is not None:
            if len(self.direction) != len(self.direction[0]):
                raise MetaValidationError("spatial.direction", "must be a square matrix")
            lengths["direction"] = len(self.direction)
        if self.affine is not None:
            both = [k for k in ("spacing", "origin", "direction") if getattr(self, k) is not None]
            if both:
                raise MetaValidationError(
                    "spatial.affine",
                    f"cannot be set together with {', '.join(both)}: spacing/origin/direction and "
                    "affine are exclusive; set one form to None before setting the other "
                    "(the reference package refuses files holding both)",
                )
            a = self.affine
            if len(a) != len(a[0]) or len(a) < 1:
                raise MetaValidationError("spatial.affine", "must be a square (n+1) x (n+1) matrix")
            if any(abs(x) > 1e-8 for x in a[-1][:-1]) or abs(a[-1][-1] - 1) > 1e-8:
                raise MetaValidationError("spatial.affine", "last row must be [0, ..., 0, 1]")
            lengths["affine"] = len(a) - 1
        if len(set(lengths.values())) > 1:
            raise MetaValidationError(
                "spatial", f"geometry fields disagree on the number of spatial axes: {lengths}"
            )
        if n is not None and lengths and next(iter(lengths.values())) != n:
            name, got = next(iter(lengths.items()))
            raise MetaValidationError(
                f"spatial.{name}", f"describes {got} spatial axes, but the array has {n}"
            )

    @property
    def ndim(self) -> int | None:
        """Number of array axes, from ``shape`` or ``axis_labels`` (None when unknown)."""
        if self.shape is not None:
            return len(self.shape)
        if self.axis_labels is not None:
            return len(self.axis_labels)
        return None

    @property
    def spatial_axis_mask(self) -> list[bool] | None:
        """Per array axis, whether it is spatial (None when the number of axes is unknown)."""
        if self.axis_labels is not None:
            return [is_spatial_label(a) for a in self.axis_labels]
        if self.shape is not None:
            return [True] * len(self.shape)
        return None

    @property
    def spatial_ndim(self) -> int | None:
        """Number of spatial axes (None when unknown)."""
        mask = self.spatial_axis_mask
        return None if mask is None else sum(mask)

    def units_per_axis(self, ndim: int | None = None) -> list[str | None] | None:
        """``axis_units`` with one entry per array axis (None: no units recorded).

        Units given per spatial axis (as ``spacing``) are placed on the
        spatial axes, the others get None. ``ndim``: the number of array
        axes when the record does not say (None is returned when the units
        fit neither it nor the spatial axes).
        """
        units = self.axis_units
        ndim = self.ndim if ndim is None else ndim
        if units is None or ndim is None:
            return None
        if len(units) == ndim:
            return list(units)
        mask = self.spatial_axis_mask if self.ndim == ndim else None
        mask = [True] * ndim if mask is None else mask
        if len(units) != sum(mask):
            return None
        it = iter(units)
        return [next(it) if spatial else None for spatial in mask]


@dataclass
class MetaStatistics(BaseMeta):
    """Summary statistics of an array (see :meth:`MLArray.compute_stats`)."""

    _prefix: ClassVar[str] = "stats"
    min: float | None = _parsed(parse_optional_float)
    max: float | None = _parsed(parse_optional_float)
    mean: float | None = _parsed(parse_optional_float)
    median: float | None = _parsed(parse_optional_float)
    std: float | None = _parsed(parse_optional_float)
    percentile_min: float | None = _parsed(parse_optional_float)
    percentile_max: float | None = _parsed(parse_optional_float)
    percentile_mean: float | None = _parsed(parse_optional_float)
    percentile_median: float | None = _parsed(parse_optional_float)
    percentile_std: float | None = _parsed(parse_optional_float)
    percentile_min_key: float | None = _parsed(parse_optional_float)
    percentile_max_key: float | None = _parsed(parse_optional_float)


@dataclass
class MetaBbox(BaseMeta):
    """Bounding boxes ``[n_boxes][n_axes][min, max]`` in array index coordinates."""

    _prefix: ClassVar[str] = "bbox"
    bboxes: list[list[list[float | int]]] | None = _parsed(parse_bboxes)
    scores: list[float | int] | None = _parsed(parse_scores)
    labels: list[str | int | float] | None = _parsed(parse_box_labels)

    def _validate_and_cast(self) -> None:
        n = None if self.bboxes is None else len(self.bboxes)
        for name in ("scores", "labels"):
            v = getattr(self, name)
            if v is not None and n is not None and len(v) != n:
                raise MetaValidationError(f"bbox.{name}", f"has {len(v)} entries for {n} boxes")

    def axes_problem(self, spatial: MetaSpatial) -> str | None:
        """Why the boxes do not fit the array ``spatial`` describes, or ``None``.

        A box has one ``[min, max]`` per array axis, or per spatial axis (boxes
        over the image axes of a multi-channel or time series array).

        Parameters
        ----------
        spatial : MetaSpatial
            The array's spatial metadata (its ``shape`` set).

        Returns
        -------
        str or None
        """
        mask = spatial.spatial_axis_mask
        if not self.bboxes or mask is None:
            return None
        n = len(self.bboxes[0])  # every box has as many (parse_bboxes)
        if n in (len(mask), sum(mask)):
            return None
        return (
            f"{len(self.bboxes)} box(es) with {n} axes for an array with {len(mask)} axes "
            f"({sum(mask)} spatial)"
        )


class _FlagMeta(SingleKeyBaseMeta):
    """A wrapped flag that behaves as its value: ``if meta.is_seg:`` tests the flag."""

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.value == other.value  # type: ignore[attr-defined]
        if isinstance(other, (bool, np.bool_)):
            return self.value is not None and self.value == bool(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class MetaIsSeg(_FlagMeta):
    """Whether the array is a segmentation (label map); None when unknown.

    Behaves as a bool (``bool(meta.is_seg)`` is False when unknown) and
    compares equal to ``True``/``False``.
    """

    is_seg: bool | None = _parsed(parse_optional_bool)


@dataclass
class MetaBlosc2(BaseMeta):
    """Blosc2 layout and codec settings the writer used (maintained by mlarray, read-only)."""

    _prefix: ClassVar[str] = "blosc2"
    chunk_size: list[int] | None = _parsed(_parse_internal_sizes, internal=True)
    block_size: list[int] | None = _parsed(_parse_internal_sizes, internal=True)
    patch_size: list[int] | None = _parsed(_parse_internal_sizes, internal=True)
    cparams: dict[str, Any] | None = _parsed(parse_optional_json_dict, internal=True)
    dparams: dict[str, Any] | None = _parsed(parse_optional_json_dict, internal=True)


@dataclass(eq=False)
class MetaHasArray(_FlagMeta):
    """Whether the file holds array data (False for metadata-only files); read-only."""

    has_array: bool = _parsed(parse_bool, default=False, internal=True)


@dataclass
class MetaImageFormat(SingleKeyBaseMeta):
    """Identifier of the image metadata format, or None; read-only."""

    image_meta_format: str | None = _parsed(parse_optional_str, internal=True)


@dataclass(eq=False)
class MetaVersion(SingleKeyBaseMeta):
    """Format version string (``"v0"``); read-only.

    Compares equal to that string and prints as it: the reference package holds a plain
    ``str`` there on an MLArray's meta (``meta._mlarray_version == "v0"``).
    """

    mlarray_version: str | None = _parsed(parse_optional_str, internal=True)

    #: Stamped on the Meta of an array or a file (``Meta._stamp_version``):
    #: ``Meta.to_mapping`` then gives the version bare, as the reference's arrays hold a
    #: plain ``str``; a Meta of its own (``Meta()``, ``Meta.from_mapping``) gives it
    #: wrapped, as there.
    _stamped = False

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.value == other.value  # type: ignore[attr-defined]
        if isinstance(other, str):
            return self.value == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass
class Meta(BaseMeta):
    """Top-level metadata of an ``.mla`` file.

    Attributes
    ----------
    source, extra : MetaSource, MetaExtra
        Free-form JSON-compatible dicts (``meta.source.data``).
    spatial : MetaSpatial
        Geometry, axis labels and units.
    stats : MetaStatistics
        Summary statistics.
    bbox : MetaBbox
        Bounding boxes with scores and labels.
    is_seg : MetaIsSeg
        Segmentation flag.
    blosc2 : MetaBlosc2
        Chunk/block/patch sizes and codec settings.
    _has_array, _image_meta_format, _mlarray_version
        Payload flag, image-format identifier and format version.
    """

    source: MetaSource = field(default_factory=MetaSource)
    extra: MetaExtra = field(default_factory=MetaExtra)
    spatial: MetaSpatial = field(default_factory=MetaSpatial)
    stats: MetaStatistics = field(default_factory=MetaStatistics)
    bbox: MetaBbox = field(default_factory=MetaBbox)
    is_seg: MetaIsSeg = field(default_factory=MetaIsSeg)
    blosc2: MetaBlosc2 = field(default_factory=MetaBlosc2, metadata={"internal": True})
    _has_array: MetaHasArray = field(default_factory=MetaHasArray, metadata={"internal": True})
    _image_meta_format: MetaImageFormat = field(
        default_factory=MetaImageFormat, metadata={"internal": True}
    )
    #: None for a Meta of its own; the format version once an MLArray holds it (or read
    #: from a file), as in the reference package
    _mlarray_version: MetaVersion = field(default_factory=MetaVersion, metadata={"internal": True})

    def __setattr__(self, name: str, value: Any) -> None:
        sub = META_PARTS.get(name)
        if sub is None:
            object.__setattr__(self, name, value)
            return
        initialised = getattr(self, "_initialised", False)
        if initialised and name in _INTERNAL_PARTS and not _INTERNAL_WRITE.get():
            _refuse_internal(name)
        value = sub.ensure(value)
        if initialised and name == "spatial" and value is not self.spatial:
            # a new spatial part describes the same array: keep the shape mlarray maintains
            value = value.copy()
            with _meta_internal_write():
                value.shape = self.spatial.shape
        object.__setattr__(self, name, value)

    # -- setters, as the reference package has them ------------------------
    def set_source(self, value: MetaSource | Mapping[str, Any]) -> Meta:
        """Replace ``source`` (a dict or :class:`MetaSource`); returns ``self``."""
        self.source = value
        return self

    def set_extra(self, value: MetaExtra | Mapping[str, Any]) -> Meta:
        """Replace ``extra`` (a dict or :class:`MetaExtra`); returns ``self``."""
        self.extra = value
        return self

    def update_source(self, value: Mapping[str, Any]) -> Meta:
        """Add or replace entries of ``source``; returns ``self``.

        Raises
        ------
        MetaTypeError
            If ``value`` is not a mapping, or holds a value metadata cannot hold.
        """
        return self._update("source", value)

    def update_extra(self, value: Mapping[str, Any]) -> Meta:
        """Add or replace entries of ``extra``; returns ``self``.

        Raises
        ------
        MetaTypeError
            If ``value`` is not a mapping, or holds a value metadata cannot hold.
        """
        return self._update("extra", value)

    def _update(self, name: str, value: Mapping[str, Any]) -> Meta:
        if not isinstance(value, Mapping):
            raise MetaTypeError(name, f"update value must be a mapping, got {type(value).__name__}")
        getattr(self, name).data.update(parse_json_dict(name, value))  # all checked first
        return self

    def set_is_seg(self, value: MetaIsSeg | bool | None) -> Meta:
        """Set the segmentation flag; returns ``self``."""
        self.is_seg = value
        return self

    def set_bbox(self, value: MetaBbox | Mapping[str, Any] | Sequence) -> Meta:
        """Replace the boxes: a :class:`MetaBbox`, a mapping of its fields, or a list of
        boxes ``[n_boxes][n_axes][min, max]``; returns ``self``."""
        if not isinstance(value, (MetaBbox, Mapping)) and value is not None:
            value = MetaBbox(bboxes=value)
        self.bbox = value
        return self

    def add_bbox(
        self,
        bbox: Sequence[Sequence[float]],
        score: float | None = None,
        label: str | int | float | None = None,
    ) -> Meta:
        """Append one box ``[n_axes][min, max]`` (with its score and label); returns ``self``.

        Raises
        ------
        MetaValidationError
            If the box does not fit the others, or a score/label is given for
            some boxes and not for others.
        """
        old = self.bbox
        n = len(old.bboxes or ())
        parts: dict[str, Any] = {"bboxes": [*(old.bboxes or []), bbox]}
        for name, new in (("scores", score), ("labels", label)):
            have = getattr(old, name)
            if new is None and have is None:
                continue
            if (have is None and n) or (new is None and have is not None):
                raise MetaValidationError(
                    f"bbox.{name}", f"give a {name[:-1]} for every box or for none"
                )
            parts[name] = [*(have or []), new]
        self.bbox = MetaBbox(**parts)
        return self

    def set_stats(self, value: MetaStatistics | Mapping[str, Any]) -> Meta:
        """Replace ``stats``; returns ``self``."""
        self.stats = value
        return self

    def set_spatial(self, value: MetaSpatial | Mapping[str, Any]) -> Meta:
        """Replace the spatial part (the array shape is kept); returns ``self``."""
        self.spatial = value
        return self

    def reset(self) -> None:
        """Reset every user field to its default.

        Fields mlarray maintains (array shape, storage layout, payload flag,
        format version) are kept.
        """
        for name in ("source", "extra", "spatial", "stats", "bbox", "is_seg"):
            setattr(self, name, META_PARTS[name]())

    def _stamp_version(self, version: str | None) -> None:
        """Mark this Meta as an array's (one held by an MLArray or read from a file): its
        format version, ``version`` when it has none, is then given bare by
        :meth:`to_mapping`, as the reference's arrays hold a plain ``str``."""
        if self._mlarray_version.value is None and version is not None:
            with _meta_internal_write():
                self._mlarray_version = MetaVersion(version)
        self._mlarray_version._stamped = True

    def to_mapping(self, *, include_none: bool = True) -> dict[str, Any]:
        """Serialize to the record layout of FORMAT.md (``_mlarray_version`` stored bare).

        As in the reference package, the version is bare for an array's Meta and
        wrapped for a Meta of its own (``{"mlarray_version": None}`` for ``Meta()``,
        ``{}`` without ``include_none``); ``Meta.from_mapping`` takes either form.
        """
        out = super().to_mapping(include_none=include_none)
        if self._mlarray_version._stamped and self._mlarray_version.value is not None:
            out["_mlarray_version"] = self._mlarray_version.value
        return out

    def to_plain(self, *, include_none: bool = False) -> Any:
        """Convert to plain values; sub-metas that are entirely default are None.

        Parameters
        ----------
        include_none : bool
            Keep the None values: every part is then a key (None for a default
            part), so rows of different files have the same keys. Otherwise
            None values and default parts are left out.
        """
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v.is_default():
                if include_none:
                    out[f.name] = None
                continue
            plain = v.to_plain(include_none=include_none)
            if plain is None and not include_none:
                continue
            out[f.name] = plain
        return out

    def is_default(self) -> bool:
        return self == Meta()


_INTERNAL_PARTS = frozenset({"blosc2", "_has_array", "_image_meta_format", "_mlarray_version"})

#: The parts of a :class:`Meta`, by record key.
META_PARTS: dict[str, type[BaseMeta]] = {
    "source": MetaSource,
    "extra": MetaExtra,
    "spatial": MetaSpatial,
    "stats": MetaStatistics,
    "bbox": MetaBbox,
    "is_seg": MetaIsSeg,
    "blosc2": MetaBlosc2,
    "_has_array": MetaHasArray,
    "_image_meta_format": MetaImageFormat,
    "_mlarray_version": MetaVersion,
}
