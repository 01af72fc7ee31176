"""Compression settings and presets for recompressing ``.mla`` files.

Everything here is pure Python (no Qt, no napari at import time): a
:class:`CompressionSettings` value says how to compress, :data:`PRESETS` names
a few good ones, and :func:`storage_for` turns settings plus an array shape into
the ``storage`` keyword dict that ``mlarray.io.save_mla`` and
``napari_mlarray._writer.save_layers`` take::

    storage = storage_for(PRESETS["training"].settings, shape, dtype)
    save_mla(path, data, meta, **storage)

The plugin's user defaults live in napari's plugin settings (the
``configurations`` contribution of ``napari.yaml``);
:func:`load_default_settings` reads them and falls back to the library
defaults (LZ4HC level 8, shuffle, patch size 192) when napari or the settings
are unavailable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CODECS",
    "DEFAULT_SETTINGS",
    "FILTERS",
    "LAYOUTS",
    "PLUGIN_NAME",
    "PRESETS",
    "CompressionSettings",
    "Preset",
    "large_chunk_layout",
    "load_default_settings",
    "parse_size",
    "settings_from_mapping",
    "storage_for",
    "storage_in_stored_order",
]

PLUGIN_NAME = "napari-mlarray"

#: Blosc2 codec names and their integer ids (as stored in the ``.mla`` record).
CODECS: dict[str, int] = {"BLOSCLZ": 0, "LZ4": 1, "LZ4HC": 2, "ZLIB": 4, "ZSTD": 5}
#: Blosc2 filter names and their integer ids.
FILTERS: dict[str, int] = {"NOFILTER": 0, "SHUFFLE": 1, "BITSHUFFLE": 2}
#: How chunks and blocks are chosen.
#: ``patch``: the library sizes chunks/blocks for reading patches of ``patch_size``;
#: ``explicit``: ``chunk_size`` and ``block_size`` as given;
#: ``large``: big chunks and blocks for the best ratio (archiving), see
#: :func:`large_chunk_layout`.
LAYOUTS: tuple[str, ...] = ("patch", "explicit", "large")

_MAX_CLEVEL = 9
_LARGE_CHUNK_BYTES = 16 * 2**20
_LARGE_BLOCK_BYTES = 2**20

Size = int | tuple[int, ...]


def _parse_positive(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{field}: expected a positive integer, got {value!r}")
    return int(value)


def parse_size(value: Any, field: str = "size") -> Size | None:
    """Parse a chunk, block or patch size.

    Parameters
    ----------
    value : int, sequence of int, str or None
        ``None``, ``""`` or ``"auto"`` mean unset. A string is a comma or ``x``
        separated list (``"64, 128, 128"``, ``"64x128x128"``) or one integer.
    field : str
        Name used in error messages.

    Returns
    -------
    int, tuple of int or None
        One integer (the same for every spatial axis) or one per axis.

    Raises
    ------
    ValueError
        For non-integers, zeros or negative values; the message names ``field``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().strip("()[]").replace("x", ",").replace("X", ",")
        if text.lower() in ("", "auto", "none"):
            return None
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{field}: {value!r} is not an integer or a comma-separated list of integers"
            ) from None
        value = numbers[0] if len(numbers) == 1 else numbers
    if isinstance(value, Sequence | np.ndarray):
        sizes = tuple(_parse_positive(field, v) for v in value)
        if not sizes:
            raise ValueError(f"{field}: an empty list is not a size; leave it unset instead")
        return sizes
    return _parse_positive(field, value)


@dataclass(frozen=True)
class CompressionSettings:
    """How to compress an ``.mla`` file.

    Parameters
    ----------
    codec : str
        One of :data:`CODECS` (``"LZ4HC"``, ``"ZSTD"``, ...).
    clevel : int
        Compression level, 0 (none) to 9 (most).
    filter : str
        One of :data:`FILTERS`: ``"SHUFFLE"`` (byte shuffle), ``"BITSHUFFLE"``
        or ``"NOFILTER"``.
    layout : str
        One of :data:`LAYOUTS`: ``"patch"``, ``"explicit"`` or ``"large"``.
    patch_size : int or tuple of int or None
        Patch size the chunks are tuned for (``layout="patch"``), one value for
        every spatial axis or one per spatial axis.
    chunk_size, block_size : tuple of int or None
        Explicit layout (``layout="explicit"``), one value per array axis.
    nthreads : int
        Decompression threads stored in ``dparams``.
    """

    codec: str = "LZ4HC"
    clevel: int = 8
    filter: str = "SHUFFLE"
    layout: str = "patch"
    patch_size: Size | None = 192
    chunk_size: Size | None = None
    block_size: Size | None = None
    nthreads: int = 1

    def __post_init__(self):
        codec = str(self.codec).upper()
        if codec not in CODECS:
            raise ValueError(f"codec: {self.codec!r} is not one of {', '.join(CODECS)}")
        filt = str(self.filter).upper()
        if filt not in FILTERS:
            raise ValueError(f"filter: {self.filter!r} is not one of {', '.join(FILTERS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if (
            isinstance(self.clevel, bool)
            or not isinstance(self.clevel, int | np.integer)
            or not 0 <= self.clevel <= _MAX_CLEVEL
        ):
            raise ValueError(f"clevel: expected an integer from 0 to 9, got {self.clevel!r}")
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "filter", filt)
        object.__setattr__(self, "clevel", int(self.clevel))
        object.__setattr__(self, "nthreads", _parse_positive("nthreads", self.nthreads))
        for name in ("patch_size", "chunk_size", "block_size"):
            object.__setattr__(self, name, parse_size(getattr(self, name), name))
        if self.layout == "patch" and self.patch_size is None:
            raise ValueError("patch_size: the 'patch' layout needs a patch size")
        if self.layout == "explicit" and (self.chunk_size is None or self.block_size is None):
            raise ValueError(
                "chunk_size, block_size: the 'explicit' layout needs both; "
                "use the 'patch' layout to derive them from a patch size"
            )

    def replace(self, **changes: Any) -> CompressionSettings:
        """Return a copy with ``changes`` applied (and validated).

        Parameters
        ----------
        **changes
            Field values to change.

        Returns
        -------
        CompressionSettings
        """
        return dataclasses.replace(self, **changes)

    @property
    def cparams(self) -> dict[str, Any]:
        """Blosc2 compression parameters as a plain dict of ints."""
        return {
            "codec": CODECS[self.codec],
            "clevel": self.clevel,
            "filters": [FILTERS[self.filter]],
            "filters_meta": [0],
        }

    @property
    def dparams(self) -> dict[str, Any]:
        """Blosc2 decompression parameters as a plain dict."""
        return {"nthreads": self.nthreads}

    def describe(self) -> str:
        """One line for humans, e.g. ``"LZ4 level 5 + SHUFFLE, patch 192"``.

        Returns
        -------
        str
        """
        if self.layout == "patch":
            layout = f"patch {_fmt_size(self.patch_size)}"
        elif self.layout == "explicit":
            layout = f"chunks {_fmt_size(self.chunk_size)}, blocks {_fmt_size(self.block_size)}"
        else:
            layout = "large chunks"
        return f"{self.codec} level {self.clevel} + {self.filter}, {layout}"


def _fmt_size(size: Size | None) -> str:
    if size is None:
        return "auto"
    if isinstance(size, int):
        return str(size)
    return "x".join(str(s) for s in size)


@dataclass(frozen=True)
class Preset:
    """A named, documented :class:`CompressionSettings`.

    Parameters
    ----------
    label : str
        Short name for menus.
    description : str
        When to use it.
    settings : CompressionSettings
        What it does.
    """

    label: str
    description: str
    settings: CompressionSettings


#: The library defaults (reference ``mlarray``: LZ4HC level 8, shuffle, patch 192).
DEFAULT_SETTINGS = CompressionSettings()

#: Named presets. ``"custom"`` is not here: it means "the values as set".
PRESETS: dict[str, Preset] = {
    "training": Preset(
        "Fast patch reads (training)",
        "LZ4 level 5 with byte shuffle, chunks and blocks sized for random 192^3 "
        "patches: decompression is the bottleneck when a data loader reads millions "
        "of patches, and LZ4 decompresses fastest.",
        CompressionSettings(codec="LZ4", clevel=5, filter="SHUFFLE", layout="patch"),
    ),
    "archive": Preset(
        "Smallest file (archiving)",
        "ZSTD level 9 with bit shuffle and large chunks (~16 MiB) and blocks (~1 MiB): "
        "the best ratio; random patch reads get slower.",
        CompressionSettings(codec="ZSTD", clevel=9, filter="BITSHUFFLE", layout="large"),
    ),
    "labels": Preset(
        "Label maps (segmentations)",
        "ZSTD level 5 with bit shuffle, patch layout: label maps are mostly long runs of "
        "few values, which bit shuffle + ZSTD compress to a fraction of LZ4's size while "
        "staying fast to read.",
        CompressionSettings(codec="ZSTD", clevel=5, filter="BITSHUFFLE", layout="patch"),
    ),
}


def _fit_shape(shape: Sequence[int], itemsize: int, target_bytes: int) -> tuple[int, ...]:
    """Halve the longest axis of ``shape`` until it holds at most ``target_bytes``."""
    out = [max(1, int(s)) for s in shape]
    while math.prod(out) * itemsize > target_bytes and max(out) > 1:
        axis = out.index(max(out))
        out[axis] = (out[axis] + 1) // 2
    return tuple(out)


def large_chunk_layout(
    shape: Sequence[int],
    itemsize: int,
    chunk_bytes: int = _LARGE_CHUNK_BYTES,
    block_bytes: int = _LARGE_BLOCK_BYTES,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunk and block shapes for the best compression ratio.

    Starting from the whole array, the longest axis is halved until a chunk
    holds at most ``chunk_bytes``; blocks are cut from the chunk the same way
    down to ``block_bytes``.

    Parameters
    ----------
    shape : sequence of int
        Array shape.
    itemsize : int
        Bytes per element.
    chunk_bytes, block_bytes : int
        Upper bounds for one chunk and one block.

    Returns
    -------
    chunks, blocks : tuple of int
        One value per axis; ``blocks`` fits inside ``chunks``.
    """
    chunks = _fit_shape(shape, itemsize, chunk_bytes)
    blocks = _fit_shape(chunks, itemsize, block_bytes)
    return chunks, blocks


def _per_axis(field: str, size: Size, ndim: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * ndim
    if len(size) != ndim:
        raise ValueError(f"{field}: {size} has {len(size)} values, the array has {ndim} axes")
    return tuple(size)


def storage_for(
    settings: CompressionSettings,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
) -> dict[str, Any]:
    """Build the ``storage`` keyword dict for ``save_mla`` / ``save_layers``.

    Parameters
    ----------
    settings : CompressionSettings
        What to do.
    shape : sequence of int, optional
        Shape of the array to save. Needed for ``layout="large"``; checked
        against explicit sizes.
    dtype : numpy dtype-like, optional
        Dtype of the array to save. Needed for ``layout="large"``.

    Returns
    -------
    dict
        Keys ``patch_size``, ``chunk_size``, ``block_size``, ``cparams``,
        ``dparams``, ready for ``save_mla(path, data, meta, **storage)``.
        ``patch_size`` is ``None`` whenever chunks and blocks are given (the
        library ignores them otherwise).

    Raises
    ------
    ValueError
        If the layout needs a shape that is not given, or explicit sizes do
        not match the array's number of axes or do not fit (block > chunk).
    """
    storage: dict[str, Any] = {
        "patch_size": None,
        "chunk_size": None,
        "block_size": None,
        "cparams": settings.cparams,
        "dparams": settings.dparams,
    }
    if settings.layout == "patch":
        patch = settings.patch_size
        storage["patch_size"] = list(patch) if isinstance(patch, tuple) else patch
        return storage
    if shape is None:
        raise ValueError(f"shape: the {settings.layout!r} layout needs the array shape")
    shape = tuple(int(s) for s in shape)
    if settings.layout == "large":
        if dtype is None:
            raise ValueError("dtype: the 'large' layout needs the array dtype")
        chunks, blocks = large_chunk_layout(shape, np.dtype(dtype).itemsize)
    else:
        chunks = _per_axis("chunk_size", settings.chunk_size, len(shape))
        blocks = _per_axis("block_size", settings.block_size, len(shape))
        if any(b > c for b, c in zip(blocks, chunks, strict=True)):
            raise ValueError(f"block_size: blocks {blocks} must fit inside chunks {chunks}")
    storage["chunk_size"] = list(chunks)
    storage["block_size"] = list(blocks)
    return storage


def storage_in_stored_order(storage: dict[str, Any], axes: Sequence[int | None]) -> dict[str, Any]:
    """Reorder the chunk and block sizes of ``storage`` from layer order to stored order.

    Parameters
    ----------
    storage : dict
        From :func:`storage_for`, built for the layer's shape.
    axes : sequence of int or None
        Layer axis of each stored axis (``None``: a length-1 axis the layer
        lacks, e.g. a split channel), from
        :func:`napari_mlarray._writer.stored_axes`.

    Returns
    -------
    dict
        A new dict; ``patch_size`` and the codec settings are unchanged.
    """
    out = dict(storage)
    for key in ("chunk_size", "block_size"):
        if out.get(key) is not None:
            out[key] = [1 if k is None else out[key][k] for k in axes]
    return out


def settings_from_mapping(values: Mapping[str, Any] | Any) -> CompressionSettings:
    """Build settings from the plugin-settings category (or any mapping).

    Parameters
    ----------
    values : mapping or object
        A mapping or an object with attributes ``preset``, ``codec``,
        ``clevel``, ``filter``, ``patch_size``, ``nthreads`` (missing ones
        take the library defaults). A ``preset`` other than ``"custom"``
        wins over the individual values.

    Returns
    -------
    CompressionSettings
    """
    if not isinstance(values, Mapping):
        values = {
            name: getattr(values, name)
            for name in ("preset", "codec", "clevel", "filter", "patch_size", "nthreads")
            if hasattr(values, name)
        }
    preset = values.get("preset", "custom")
    if preset in PRESETS:
        return PRESETS[preset].settings
    if preset != "custom":
        raise ValueError(f"preset: {preset!r} is not one of custom, {', '.join(PRESETS)}")
    known = {"codec", "clevel", "filter", "patch_size", "nthreads"}
    return DEFAULT_SETTINGS.replace(**{k: v for k, v in values.items() if k in known})


def load_default_settings() -> tuple[str, CompressionSettings]:
    """Read the user's default compression settings from napari.

    Returns
    -------
    preset : str
        ``"custom"`` or a key of :data:`PRESETS`.
    settings : CompressionSettings
        The settings to start with; :data:`DEFAULT_SETTINGS` when napari is
        not installed, this plugin's settings are not registered, or they hold
        invalid values.
    """
    try:
        from napari.settings import get_plugin_settings
    except ImportError:
        return "custom", DEFAULT_SETTINGS
    try:
        section = get_plugin_settings(PLUGIN_NAME).compression
    except (KeyError, AttributeError):
        return "custom", DEFAULT_SETTINGS
    try:
        settings = settings_from_mapping(section)
    except ValueError:
        return "custom", DEFAULT_SETTINGS
    preset = getattr(section, "preset", "custom")
    return (preset if preset in PRESETS else "custom"), settings
