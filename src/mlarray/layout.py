"""Chunk/block layout and the one funnel for the constructors' storage keywords.

Every constructor (``asarray``, ``zeros``, ``ones``, ``full``, ``empty``,
``arange``, ``linspace``, the ``*_like`` variants, ``create``) accepts the
same five keywords, documented once here:

patch_size : int, sequence of int, "default" or None
    Typical read size per spatial axis (for example a training patch). When
    not None the chunk and block shapes are computed from it by
    :func:`comp_blosc2_params`. ``"default"`` (what every constructor but
    ``arange``/``linspace`` defaults to) means :data:`DEFAULT_PATCH_SIZE` on
    every spatial axis, unless ``chunk_size`` and ``block_size`` are given,
    or the constructor's ``meta`` Meta (or a ``*_like`` model without
    ``meta``) records a patch size with one entry per spatial axis of the
    new array, which is then used (as in the reference);
    an int means that value on every spatial axis; a sequence has one entry
    per spatial axis (or one per array axis, the non-spatial entries then
    being ignored).
chunk_size, block_size : int, sequence of int or None
    Explicit Blosc2 chunk and block shapes. An int means that size on every
    axis; values are clipped to the array shape. As in the reference
    package, giving both (with ``patch_size`` left at ``"default"``) uses
    them, and giving only one of them, or either with an explicit
    ``patch_size``, raises :class:`~mlarray.errors.LayoutError` (a
    RuntimeError and a ValueError, as are the other layout errors: a
    ``patch_size``, ``chunk_size`` or ``block_size`` with the wrong number of
    entries, a block larger than its chunk). With ``patch_size=None``, one
    of them alone may be given and None leaves that choice to Blosc2.
cparams : dict, blosc2.CParams or None
    Compression parameters. A dict may use enum members, ints or enum names
    as values (``{"codec": "zstd", "filters": [blosc2.Filter.SHUFFLE]}``);
    its unset keys take Blosc2's defaults, as in ``blosc2.CParams`` and the
    reference package (``{"clevel": 9}`` is ZSTD level 9 + shuffle), so a
    dict and a ``CParams`` object of one request give the same file. With
    no cparams (None) the defaults of the content apply:
    :data:`DEFAULT_CPARAMS` (LZ4 level 9 + shuffle) for images,
    :data:`DEFAULT_SEG_CPARAMS` (LZ4HC level 9 + shuffle) for label maps
    (``meta.is_seg``), and no filter for one-byte dtypes
    (:data:`NO_FILTER`). Compression runs on every usable core unless
    ``nthreads`` is given (not recorded); any int is accepted, as by
    Blosc2: one below 1 (0, or -1) runs one thread, as c-blosc2 does, and
    one above the usable cores (up to any size) one thread per core.
    ``codec`` must be a :class:`blosc2.Codec` or a codec registered in this
    process with :func:`blosc2.register_codec`; another id raises
    :class:`~mlarray.errors.MetaValidationError` (a ValueError, as the
    reference) before any file is created.
dparams : dict, blosc2.DParams or None
    Decompression parameters; unset keys take :data:`DEFAULT_DPARAMS`
    (``{"nthreads": 1}``: right for data loaders, which run one process per
    core; ``nthreads`` below 1, e.g. 0 or -1, also means one thread, as in
    Blosc2, and one above the usable cores one per core). Whole-volume
    reads and viewers decode faster on every core:
    ``MLArray.open(path, dparams={"nthreads": usable_cores()})`` (the napari
    reader does this); see benchmarks/RESULTS.md, "Full load".
compressed : bool
    True (the default) builds a Blosc2 array in memory; False keeps a numpy
    array. The other keywords are resolved either way and recorded in
    ``meta.blosc2``: :meth:`MLArray.save` writes the numpy array with them,
    as the reference package does.

:func:`resolve_storage` turns them into one frozen :class:`StorageOptions`;
nothing else in the package interprets these keywords.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blosc2
import numpy as np

from mlarray import _fork
from mlarray._fork import usable_cores
from mlarray.errors import LayoutError, MetaTypeError, MetaValidationError

__all__ = [
    "DEFAULT_CPARAMS",
    "DEFAULT_DPARAMS",
    "DEFAULT_PATCH_SIZE",
    "DEFAULT_SEG_CPARAMS",
    "NO_FILTER",
    "StorageOptions",
    "StorageRequest",
    "comp_blosc2_params",
    "default_cparams",
    "normalize_cparams",
    "normalize_dparams",
    "resolve_storage",
    "usable_cores",
]

DEFAULT_PATCH_SIZE = 192
#: Images (CT, MR, ...): LZ4 level 9 + shuffle. Measured (benchmarks/RESULTS.md, "Codec
#: defaults per content") against LZ4HC level 8, the reference package's default: 3-4 %
#: larger (CT-like int16, MNI152 uint8), 4-8x faster to write, decoding as fast.
DEFAULT_CPARAMS = {"codec": 1, "clevel": 9}
#: Label maps (``is_seg``): LZ4HC level 9 (the reference package: level 8). Label maps
#: compress 100-1000x, so the slower encoder costs little (LZ4 files would be ~4x larger);
#: level 9 is 2 % smaller at the same speed, which pays for the per-chunk checksums.
DEFAULT_SEG_CPARAMS = {"codec": 2, "clevel": 9}
#: One-byte dtypes (uint8/int8/bool label maps and images) saved with default cparams get
#: no filter: byte shuffle cannot reorder anything in one-byte items, yet it makes Blosc2
#: patch reads 3-4x slower (same file size). Given cparams (a file's recorded ones on a
#: re-save) are kept as they are.
NO_FILTER = {"filters": [0], "filters_meta": [0]}
DEFAULT_DPARAMS = {"nthreads": 1}

#: A chunk axis stops growing once it exceeds this many patch sizes.
_CHUNK_PATCH_FACTOR = 1.5


# ----------------------------------------------------------------------------- layout


def _spatial_mask(ndim: int, spatial_axis_mask: Sequence[bool] | None) -> list[bool]:
    if spatial_axis_mask is None:
        return [True] * ndim
    mask = [bool(m) for m in spatial_axis_mask]
    if len(mask) != ndim:
        raise LayoutError(
            f"spatial_axis_mask has {len(mask)} entries but the array has {ndim} axes; "
            "give one bool per array axis"
        )
    return mask


def _positive_ints(field: str, values: Any) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise MetaTypeError(field, f"expected integers, got {values!r}") from exc
    if any(isinstance(v, bool) for v in values):
        raise MetaTypeError(field, f"expected integers, got {values!r}")
    if any(int(v) != v for v in values if isinstance(v, float | np.floating)):
        raise MetaValidationError(field, f"expected integers, got {values!r}")
    if any(v < 1 for v in out):
        raise MetaValidationError(field, f"every entry must be >= 1, got {out}")
    return out


def _fit_scale(patch: list[int], limit: list[int], budget: float) -> list[float]:
    """Scale ``patch`` by one factor so that the clipped volume just fits ``budget``.

    Each axis is ``clip(s * patch_i, 1, limit_i)``; the largest ``s`` whose
    product is at most ``budget`` is found by bisection on ``log s``.
    """

    def sizes(s: float) -> list[float]:
        return [min(max(s * p, 1.0), lim) for p, lim in zip(patch, limit, strict=True)]

    if math.prod(limit) <= budget:
        return [float(lim) for lim in limit]
    lo, hi = -60.0, 60.0  # s in [2**-60, 2**60]
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.prod(sizes(2.0**mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return sizes(2.0**lo)


def _spatial_block(patch: list[int], image: list[int], budget: float) -> list[int]:
    """Block shape for the spatial axes: proportional to ``patch``, even, within ``budget``."""
    target = _fit_scale(patch, image, budget)
    block = []
    for t, lim in zip(target, image, strict=True):
        if t >= lim:
            block.append(lim)
        elif t < 2:
            block.append(1)
        else:
            block.append(2 * int(t // 2))
    # Grow by 2 the axis furthest below its patch share (ties: the last axis),
    # until the next step would leave the budget.
    while True:
        open_axes = [i for i in range(len(block)) if block[i] < image[i]]
        if not open_axes:
            break
        axis = min(open_axes, key=lambda i: (block[i] / patch[i], -i))
        grown = block.copy()
        grown[axis] = min(image[axis], block[axis] + 2 - block[axis] % 2)
        if math.prod(grown) > budget:
            break
        block = grown
    return block


def _spatial_chunk(
    block: list[int], patch: list[int], image: list[int], budget: float
) -> list[int]:
    """Tile blocks into a chunk: fewest blocks first (ties: the last axis), within ``budget``."""
    chunk = block.copy()
    full: set[int] = set()  # axes whose next block would leave the budget
    while True:
        open_axes = [
            i
            for i in range(len(chunk))
            if i not in full and chunk[i] < image[i] and chunk[i] <= _CHUNK_PATCH_FACTOR * patch[i]
        ]
        if not open_axes:
            break
        axis = min(open_axes, key=lambda i: (chunk[i] / block[i], -i))
        grown = chunk.copy()
        grown[axis] = min(image[axis], chunk[axis] + block[axis])
        if math.prod(grown) > budget:
            full.add(axis)
        else:
            chunk = grown
    return chunk


def comp_blosc2_params(
    image_size: Sequence[int],
    patch_size: Sequence[int],
    spatial_axis_mask: Sequence[bool] | None = None,
    bytes_per_pixel: int = 4,
    l1_cache_size_per_core_in_bytes: int = 32768,
    l3_cache_size_per_core_in_bytes: int = 1441792,
    safety_factor: float = 0.8,
) -> tuple[list[int], list[int]]:
    """Recommend a Blosc2 chunk and block shape for reading patches.

    The uncompressed block fits ``l1 * safety_factor`` bytes and the chunk
    ``l3 * safety_factor`` bytes (defaults: 32 KiB L1 and 1.375 MiB L3 per
    core, 80 %), as the reference package does for single-core patch
    loading.

    Algorithm, for the spatial axes:

    1. Block: the patch scaled by one common factor so the block just fits
       the L1 budget (axes clipped to ``[1, image]``), each axis rounded down
       to an even size; then the axis furthest below its patch share grows by
       2 (ties: the last axis) until the next step would leave the budget.
    2. Chunk: starting from the block, the axis holding the fewest blocks
       (ties: the last axis) grows by one block, clipped to the image, until
       the next step would leave the L3 budget. An axis stops growing once
       it exceeds 1.5 patch sizes or reaches the image size.

    Non-spatial axes get chunk and block 1. Block and chunk never exceed the
    image; the chunk is a whole number of blocks except where clipped to the
    image. Any number of axes is supported.

    Compared with the reference package (``mlarray`` 0.0.54): the documented
    cases match exactly ((512, 512, 512) float32: chunks (54, 54, 80), blocks
    (18, 18, 20); (2048, 2048) float32: chunks (320, 320), blocks (80, 80);
    (64, 80, 96) int16 and (48, 64, 64) uint8: blocks (22, 24, 24) and
    (28, 30, 30), the whole image as chunk), and so do most isotropic
    patches on images larger than a block. Both honour the same budgets;
    the layouts differ

    - for anisotropic patches: the reference shapes the block after a
      rounded patch aspect ratio, here the block is proportional to the
      patch;
    - when an image axis is smaller than the block: the reference rounds
      that axis down to an even size and gives the room to the others, here
      the block takes the whole axis;
    - when chunk growth reaches the image border: the reference sometimes
      stops at the last whole block and grows another axis, here the chunk
      is clipped to the image.

    Parameters
    ----------
    image_size : sequence of int
        Array shape, any number of axes, every entry >= 1.
    patch_size : sequence of int
        Patch size per spatial axis, or one entry per array axis (the
        entries of non-spatial axes are then ignored).
    spatial_axis_mask : sequence of bool, optional
        True for spatial axes, one entry per array axis. Without it every
        axis is spatial and ``patch_size`` must have one entry per axis.
    bytes_per_pixel : int, optional
        Bytes per element (``dtype.itemsize``).
    l1_cache_size_per_core_in_bytes, l3_cache_size_per_core_in_bytes : int, optional
        Cache sizes the block and chunk are fitted to.
    safety_factor : float, optional
        Fraction of each cache to fill.

    Returns
    -------
    chunk_size, block_size : list of int
        One entry per array axis.

    Raises
    ------
    MetaValidationError
        For non-positive sizes or a non-positive ``bytes_per_pixel``.
    LayoutError
        When ``patch_size`` or ``spatial_axis_mask`` has the wrong length.
    """
    image = _positive_ints("image_size", image_size)
    mask = _spatial_mask(len(image), spatial_axis_mask)
    patch_all = _positive_ints("patch_size", patch_size)
    n_spatial = sum(mask)
    if len(patch_all) == len(image):
        patch = [p for p, m in zip(patch_all, mask, strict=True) if m]
    elif len(patch_all) == n_spatial:
        patch = patch_all
    else:
        raise LayoutError(
            f"patch_size has {len(patch_all)} entries, but the array has {len(image)} axes "
            f"of which {n_spatial} are spatial; give one entry per spatial axis"
        )
    if isinstance(bytes_per_pixel, bool) or int(bytes_per_pixel) < 1:
        raise MetaValidationError(
            "bytes_per_pixel", f"expected an int >= 1, got {bytes_per_pixel!r}"
        )
    if not 0 < safety_factor <= 1:
        raise MetaValidationError(
            "safety_factor", f"expected 0 < value <= 1, got {safety_factor!r}"
        )

    chunk = [1] * len(image)
    block = [1] * len(image)
    spatial_axes = [i for i, m in enumerate(mask) if m]
    if spatial_axes:
        image_s = [image[i] for i in spatial_axes]
        l1 = l1_cache_size_per_core_in_bytes * safety_factor / int(bytes_per_pixel)
        l3 = l3_cache_size_per_core_in_bytes * safety_factor / int(bytes_per_pixel)
        block_s = _spatial_block(patch, image_s, l1)
        chunk_s = _spatial_chunk(block_s, patch, image_s, max(l3, math.prod(block_s)))
        for k, i in enumerate(spatial_axes):
            block[i] = block_s[k]
            chunk[i] = chunk_s[k]
    return chunk, block


# ----------------------------------------------------------------------------- cparams
# blosc2.CParams/DParams normalise codec, filter, split-mode and tuner values
# (ints to enums, filters_meta to the filter count); only what they let through
# and a file could abuse (ranges, types) is checked here.

_CPARAMS_FIELDS = tuple(f.name for f in dataclasses.fields(blosc2.CParams))
_DPARAMS_FIELDS = tuple(f.name for f in dataclasses.fields(blosc2.DParams))
_ENUM_FIELDS: dict[str, type[enum.Enum]] = {
    "codec": blosc2.Codec,
    "splitmode": blosc2.SplitMode,
    "tuner": blosc2.Tuner,
    "filters": blosc2.Filter,
}
#: Integer fields and their allowed range (None: no bound on that side).
_INT_RANGES = {
    "codec": (0, 255),  # and a blosc2.Codec member or a registered user codec
    "codec_meta": (0, 255),
    "clevel": (0, 9),
    "typesize": (1, 255),
    # any int, as Blosc2 and the reference take it: below 1 (a loader's computed 0, a
    # joblib-style -1) runs one thread, as c-blosc2 does (StorageOptions, io.clamp_dparams)
    "nthreads": (None, None),
    "blocksize": (0, None),
    "splitmode": (0, 255),
    "tuner": (0, 255),
    "filters": (0, 255),
    "filters_meta": (-128, 255),
}


#: Fields whose ints must name a member (splitmode and tuner have no user-defined values).
_MEMBERS_ONLY = {key: {m.value for m in _ENUM_FIELDS[key]} for key in ("splitmode", "tuner")}
#: Blosc2's codecs; user-defined ids are accepted once registered (``blosc2.ucodecs_registry``).
_CODEC_IDS = frozenset(m.value for m in blosc2.Codec)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return int(value.value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _by_name(key: str, value: Any) -> Any:
    """Enum member names (case-insensitive) as members: ``{"codec": "zstd"}``."""
    enum_type = _ENUM_FIELDS.get(key)
    if enum_type is None or not isinstance(value, str):
        return value
    member = enum_type.__members__.get(value.upper())
    if member is None:
        names = ", ".join(enum_type.__members__)
        raise MetaValidationError("cparams", f"{key}: unknown name {value!r}; use one of {names}")
    return member


def _check_value(field: str, key: str, value: Any) -> None:
    """Refuse what Blosc2's parameter objects let through: wrong types, out-of-range ints."""
    if key == "use_dict":
        if not isinstance(value, bool):
            raise MetaTypeError(field, f"use_dict: expected a bool, got {value!r}")
        return
    for v in value if isinstance(value, list) else [value]:
        lo, hi = _INT_RANGES[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise MetaTypeError(field, f"{key}: expected an int, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise MetaValidationError(field, f"{key}: expected an int {bound}, got {v!r}")
        if key in _MEMBERS_ONLY and v not in _MEMBERS_ONLY[key]:
            allowed = ", ".join(f"{m.value} ({m.name})" for m in _ENUM_FIELDS[key])
            raise MetaValidationError(field, f"{key}: {v} is not one of {allowed}")
        if key == "codec" and v not in _CODEC_IDS and v not in blosc2.ucodecs_registry:
            known = ", ".join(f"{m.value} ({m.name})" for m in blosc2.Codec)
            raise MetaValidationError(
                field,
                f"codec: {v} is not a Blosc2 codec ({known}) nor one registered in this "
                "process with blosc2.register_codec",
            )


def _given_mapping(
    field: str, value: Any, object_name: str, allowed: tuple[str, ...]
) -> dict[str, Any]:
    """``value`` as a dict of parameters, refusing other types and keys not in ``allowed``."""
    if not isinstance(value, Mapping):
        raise MetaTypeError(
            field, f"expected a dict, a {object_name} or None, got {type(value).__name__}"
        )
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise MetaValidationError(
            field, f"unknown key {unknown[0]!r}; allowed keys are {', '.join(allowed)}"
        )
    return dict(value)


def _lists(key: str, value: Any) -> Any:
    if key in ("filters", "filters_meta"):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
            raise MetaTypeError("cparams", f"{key}: expected a list, got {value!r}")
        return [_by_name(key, v) for v in value]
    return value


def default_cparams(is_seg: bool = False) -> dict[str, Any]:
    """A copy of the default compression parameters for images or label maps."""
    return dict(DEFAULT_SEG_CPARAMS if is_seg else DEFAULT_CPARAMS)


def normalize_cparams(
    cparams: Mapping[str, Any] | blosc2.CParams | None, *, is_seg: bool = False
) -> dict[str, Any]:
    """Compression parameters as a plain JSON-able dict, defaults filled.

    Parameters
    ----------
    cparams : dict, blosc2.CParams or None
        A dict keyed by :class:`blosc2.CParams` field names, with enum
        members, ints or enum names as values, its missing keys taking
        Blosc2's defaults (as a ``CParams`` object does, and as in the
        reference package: ``{"clevel": 9}`` is ZSTD level 9); or a
        ``CParams`` object; or None for the defaults of the content
        (:data:`DEFAULT_CPARAMS`, or :data:`DEFAULT_SEG_CPARAMS` with
        ``is_seg``).

    Returns
    -------
    dict
        ``codec``, ``clevel``, the keys a dict named and the fields that
        differ from Blosc2's defaults; enums as ints and filters as lists of
        ints. This is what the ``.mla`` record stores: a dict and a
        ``CParams`` object of the same request give the same file.

    Raises
    ------
    MetaValidationError
        For an unknown key (named in the message) or a value of the wrong
        type or range.
    """
    if cparams is None:
        return default_cparams(is_seg)
    if isinstance(cparams, blosc2.CParams):
        obj, named = cparams, ()
    else:
        given = _given_mapping("cparams", cparams, "blosc2.CParams", _CPARAMS_FIELDS)
        given = {k: _lists(k, _by_name(k, v)) for k, v in given.items()}
        if "filters" in given and "filters_meta" not in given:
            given["filters_meta"] = [0] * len(given["filters"])
        try:
            obj = blosc2.CParams(**given)  # Blosc2's defaults for the rest; normalises enums
        except (TypeError, ValueError) as exc:
            raise MetaValidationError("cparams", f"filters, filters_meta: {exc}") from None
        named = tuple(cparams)
    defaults = blosc2.CParams()
    keys = [
        name
        for name in _CPARAMS_FIELDS
        if name in ("codec", "clevel")
        or name in named
        or _plain(getattr(obj, name)) != _plain(getattr(defaults, name))
    ]
    out = {name: _plain(getattr(obj, name)) for name in keys}
    if "filters_meta" not in named and out.get("filters_meta") == [0] * len(obj.filters):
        del out["filters_meta"]  # implied by the filters (StorageOptions.blosc2_cparams)
    for key, value in out.items():
        _check_value("cparams", key, value)
    return out


def normalize_dparams(dparams: Mapping[str, Any] | blosc2.DParams | None) -> dict[str, Any]:
    """Decompression parameters as a plain dict, defaults filled.

    Parameters
    ----------
    dparams : dict, blosc2.DParams or None
        A dict keyed by :class:`blosc2.DParams` field names (``nthreads``), a
        ``DParams`` object (all its fields are kept) or None.

    Returns
    -------
    dict
        :data:`DEFAULT_DPARAMS` updated with the requested values.

    Raises
    ------
    MetaValidationError
        For an unknown key (named in the message) or a bad value.
    """
    if dparams is None:
        return dict(DEFAULT_DPARAMS)
    key = None
    if type(dparams) is dict and all(type(v) is int for v in dparams.values()):
        key = tuple(dparams.items())  # a data loader's {"nthreads": 1}, on every open
        known = _NORMALIZED_DPARAMS.get(key)
        if known is not None:
            return dict(known)
    if not isinstance(dparams, blosc2.DParams):
        given = _given_mapping("dparams", dparams, "blosc2.DParams", _DPARAMS_FIELDS)
        dparams = blosc2.DParams(**{**DEFAULT_DPARAMS, **given})
    out = {name: _plain(getattr(dparams, name)) for name in _DPARAMS_FIELDS}
    for name, value in out.items():
        _check_value("dparams", name, value)
    if key is not None and len(_NORMALIZED_DPARAMS) < 64:
        _NORMALIZED_DPARAMS[key] = dict(out)
    return out


#: Results of :func:`normalize_dparams` for dicts of plain ints (bounded, never evicted).
_NORMALIZED_DPARAMS: dict[tuple, dict[str, Any]] = {}


# ----------------------------------------------------------------------------- funnel


@dataclass(frozen=True)
class StorageOptions:
    """Resolved storage keywords (see the module docstring), ready for Blosc2.

    Attributes
    ----------
    patch_size : tuple of int or None
        Patch size per spatial axis, None when the layout was not computed
        from a patch.
    chunk_size, block_size : tuple of int or None
        Per array axis; None lets Blosc2 decide.
    cparams, dparams : dict
        Plain JSON-able values (ints, bools, lists of ints), exactly what
        was asked for with the defaults filled; stored in the ``.mla`` record.
    """

    patch_size: tuple[int, ...] | None
    chunk_size: tuple[int, ...] | None
    block_size: tuple[int, ...] | None
    cparams: dict
    dparams: dict

    def blosc2_cparams(self, dtype: Any) -> blosc2.CParams:
        """``cparams`` as a :class:`blosc2.CParams`, ``typesize`` from ``dtype`` unless set."""
        kwargs = {k: list(v) if isinstance(v, list) else v for k, v in self.cparams.items()}
        kwargs.setdefault("typesize", max(1, min(255, np.dtype(dtype).itemsize)))
        # nthreads < 1 runs one thread, as in Blosc2, more than the cores runs one per core
        # (c-blosc2 holds it in an int16: 40000 was an OverflowError); 1 in a forked
        # child: c-blosc2's thread pools do not survive fork (mlarray._fork)
        kwargs["nthreads"] = _fork.threads(kwargs.get("nthreads", usable_cores()))
        if "filters" in kwargs:
            kwargs.setdefault("filters_meta", [0] * len(kwargs["filters"]))
        return blosc2.CParams(**kwargs)

    def blosc2_dparams(self) -> blosc2.DParams:
        """``dparams`` as a :class:`blosc2.DParams` (``nthreads`` clamped to 1..cores as
        for ``cparams``; one thread in a forked child)."""
        kwargs = dict(self.dparams)
        kwargs["nthreads"] = _fork.threads(kwargs.get("nthreads", 1))
        return blosc2.DParams(**kwargs)

    def blosc2_kwargs(self, dtype: Any) -> dict[str, Any]:
        """Keyword arguments for Blosc2 array constructors (``cparams``, ``dparams``,
        and ``chunks``/``blocks`` when set)."""
        kw: dict[str, Any] = {
            "cparams": self.blosc2_cparams(dtype),
            "dparams": self.blosc2_dparams(),
        }
        if self.chunk_size is not None:
            kw["chunks"] = tuple(self.chunk_size)
        if self.block_size is not None:
            kw["blocks"] = tuple(self.block_size)
        return kw


def _per_axis(field: str, value: Any, ndim: int) -> list[int]:
    """An int or a sequence with one entry per array axis, as a list of ints >= 1."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        values = [int(value)] * ndim
    elif isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes):
        values = list(value)
        if len(values) != ndim:
            raise LayoutError(
                f"{field} has {len(values)} entries but the array has {ndim} axes; "
                "give an int or one entry per array axis"
            )
    else:
        raise MetaTypeError(field, f"expected an int or a sequence of ints, got {value!r}")
    return _positive_ints(field, values)


def _patch_per_spatial_axis(patch_size: Any, mask: list[bool]) -> tuple[int, ...]:
    n_spatial = sum(mask)
    if isinstance(patch_size, str):
        if patch_size != "default":
            raise MetaValidationError(
                "patch_size", f"expected 'default', an int, a sequence or None, got {patch_size!r}"
            )
        return (DEFAULT_PATCH_SIZE,) * n_spatial
    if isinstance(patch_size, int | np.integer) and not isinstance(patch_size, bool):
        return tuple(_positive_ints("patch_size", [patch_size] * n_spatial))
    if not isinstance(patch_size, Sequence | np.ndarray):
        raise MetaTypeError(
            "patch_size", f"expected 'default', an int, a sequence or None, got {patch_size!r}"
        )
    values = _positive_ints("patch_size", list(patch_size))
    if len(values) == len(mask) and len(values) != n_spatial:
        values = [v for v, m in zip(values, mask, strict=True) if m]
    elif len(values) != n_spatial:
        raise LayoutError(
            f"patch_size: got {len(values)} entries for {n_spatial} spatial axes "
            f"({len(mask)} array axes); give one entry per spatial axis"
        )
    return tuple(values)


def resolve_storage(
    shape: Sequence[int],
    dtype: Any,
    spatial_axis_mask: Sequence[bool] | None = None,
    *,
    patch_size: Any = "default",
    chunk_size: Any = None,
    block_size: Any = None,
    cparams: Any = None,
    dparams: Any = None,
    is_seg: bool = False,
) -> StorageOptions:
    """Resolve the constructors' shared storage keywords into :class:`StorageOptions`.

    The keywords are documented once, in the :mod:`mlarray.layout` module
    docstring.

    Parameters
    ----------
    shape : sequence of int
        Array shape. A 0-d shape or one containing 0 gets no chunk/block
        (Blosc2 decides); ``chunk_size``/``block_size`` are then ignored.
    dtype : numpy dtype-like
        Element type; its ``itemsize`` sizes the layout.
    spatial_axis_mask : sequence of bool, optional
        True for spatial axes; every axis is spatial without it.
    patch_size, chunk_size, block_size, cparams, dparams
        See the module docstring.
    is_seg : bool
        The array is a label map: ``cparams=None`` means
        :data:`DEFAULT_SEG_CPARAMS` instead of :data:`DEFAULT_CPARAMS`.

    Returns
    -------
    StorageOptions

    Raises
    ------
    MetaValidationError
        (a ValueError) for a malformed value: a non-integer or non-positive
        size, a ``patch_size`` with the wrong number of entries, an unknown
        cparams/dparams key.
    LayoutError
        (a RuntimeError) for values that do not fit together: a
        ``chunk_size``/``block_size``/``spatial_axis_mask`` length that
        differs from the array's, a block larger than its chunk, only one of
        ``chunk_size``/``block_size`` with ``patch_size="default"``, or
        either with an explicit ``patch_size``.
    """
    shape_t = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape_t):
        raise MetaValidationError("shape", f"sizes must be >= 0, got {shape_t}")
    itemsize = np.dtype(dtype).itemsize
    mask = _spatial_mask(len(shape_t), spatial_axis_mask)
    cp = normalize_cparams(cparams, is_seg=is_seg)
    if cparams is None and itemsize == 1:
        cp = {**cp, **NO_FILTER}
    dp = normalize_dparams(dparams)
    degenerate = len(shape_t) == 0 or 0 in shape_t

    if patch_size is not None and (chunk_size is not None or block_size is not None):
        if not (isinstance(patch_size, str) and patch_size == "default"):
            raise LayoutError(
                f"patch_size {patch_size!r} and chunk_size/block_size cannot both be given: "
                "the layout is computed from the patch size, or set by chunk_size and "
                "block_size"
            )
        if chunk_size is None or block_size is None:
            raise LayoutError(
                "give both chunk_size and block_size (or patch_size=None to let Blosc2 "
                f"choose the other); got chunk_size={chunk_size!r}, block_size={block_size!r}"
            )
        patch_size = None  # the layout the caller asked for, as in the reference
    if patch_size is not None:
        patch = _patch_per_spatial_axis(patch_size, mask)
        if degenerate or not patch:
            return StorageOptions(patch if patch else None, None, None, cp, dp)
        chunk, block = comp_blosc2_params(
            shape_t, patch, spatial_axis_mask=mask, bytes_per_pixel=max(1, itemsize)
        )
        return StorageOptions(patch, tuple(chunk), tuple(block), cp, dp)

    chunk_t = block_t = None
    if degenerate:  # nothing to chunk; a kept layout such as (0, 3) is meaningless
        return StorageOptions(None, None, None, cp, dp)
    if chunk_size is not None:
        chunk_l = _per_axis("chunk_size", chunk_size, len(shape_t))
        chunk_t = tuple(min(c, n) for c, n in zip(chunk_l, shape_t, strict=True))
    if block_size is not None:
        block_l = _per_axis("block_size", block_size, len(shape_t))
        block_t = tuple(min(b, n) for b, n in zip(block_l, shape_t, strict=True))
    if chunk_t is not None and block_t is not None:
        too_big = [i for i, (b, c) in enumerate(zip(block_t, chunk_t, strict=True)) if b > c]
        if too_big:
            raise LayoutError(
                f"block_size {block_t} is larger than chunk_size {chunk_t} on axis {too_big[0]}; "
                "a block must fit inside its chunk"
            )
    return StorageOptions(None, chunk_t, block_t, cp, dp)


@dataclass(frozen=True)
class StorageRequest:
    """The five storage keywords as given to a constructor, before resolution.

    ``keep_layout=True`` asks to reuse ``chunk_size``/``block_size`` as they
    are (an existing array being re-saved): the patch size is then not used
    to recompute them.
    """

    patch_size: Any = "default"
    chunk_size: Any = None
    block_size: Any = None
    cparams: Any = None
    dparams: Any = None
    keep_layout: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`resolve_storage`."""
        return {
            "patch_size": None if self.keep_layout else self.patch_size,
            "chunk_size": self.chunk_size,
            "block_size": self.block_size,
            "cparams": self.cparams,
            "dparams": self.dparams,
        }
