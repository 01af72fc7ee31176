"""The :class:`MLArray` class: an N-d medical image with its ``.mla`` metadata."""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from mlarray import (
    _direct,
    _fork,
    _fullread,
    _maps,
    _prefetch,
    _read,
    geometry,
    integrity,
    io,
    layout,
)
from mlarray.errors import (
    ClosedError,
    FileChangedError,
    IndexingError,
    InvalidModeError,
    InvalidPathError,
    LayoutError,
    MetaTypeError,
    MetaValidationError,
    MLArrayError,
    MLArrayMemoryError,
    NoArrayError,
    ReadOnlyError,
)
from mlarray.frame import ChunkGeometry
from mlarray.indexing import key_bounds, selection_box
from mlarray.meta import (
    FORMAT_VERSION,
    Meta,
    MetaBlosc2,
    MetaStatistics,
    _meta_internal_write,
)

__all__ = ["MLArray"]

_OPEN_MODES = {"r", "a"}
_CREATE_MODES = {"w"}
_CREATE_MMAP_MODES = {"w+"}

#: Metadata parts a user sets (the others are maintained by mlarray).
_USER_PARTS = ("source", "extra", "spatial", "stats", "bbox", "is_seg")
#: Metadata parts ``*_like`` constructors take over from their model: what
#: describes the grid and the case, not the values (stats, boxes).
_LIKE_PARTS = ("source", "extra", "spatial", "is_seg")
#: What ``*_like(x, meta=...)`` takes over from x: its grid (the given meta decides the rest).
_LIKE_GRID_PARTS = ("spatial",)
_SOD = ("spacing", "origin", "direction")

#: ``make(shape, dtype, blosc2_kwargs)`` builds a store: a Blosc2 NDArray when
#: ``blosc2_kwargs`` is a dict, a numpy array when it is None.
Maker = Callable[[tuple[int, ...], np.dtype, dict[str, Any] | None], Any]


def _as_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(n) for n in np.asarray(shape, dtype=np.int64).reshape(-1))


def _as_meta(meta: Meta | Mapping | None) -> Meta | None:
    """``meta`` as given to a constructor: a Meta, or a dict of free-form *source* metadata."""
    if meta is None or isinstance(meta, Meta):
        return meta
    if isinstance(meta, Mapping):
        return Meta(source=meta)
    raise MetaTypeError("meta", f"meta must be a Meta, a dict or None, got {type(meta).__name__}")


def _overlay_spatial(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Lay the spatial fields set in ``src`` over ``dst`` (both record-shaped dicts).

    Geometry comes either as an affine or as spacing/origin/direction: an
    affine in ``src`` replaces spacing/origin/direction in ``dst`` (giving
    both in ``src`` is an error); spacing, origin or direction in ``src``
    turn an affine in ``dst`` into spacing/origin/direction first, so the
    fields ``src`` does not give keep their meaning.
    """
    given = {k: v for k, v in src.items() if v is not None}
    if "affine" in given:
        both = [k for k in _SOD if k in given]
        if both:
            raise MetaValidationError(
                "affine",
                f"give either affine or spacing/origin/direction, not both (got {', '.join(both)})",
            )
        dst.update(dict.fromkeys(_SOD))
    elif any(k in given for k in _SOD) and dst.get("affine") is not None:
        spacing, origin, direction = geometry.spacing_origin_direction(np.asarray(dst["affine"]))
        dst.update(spacing=spacing.tolist(), origin=origin.tolist(), direction=direction.tolist())
        dst["affine"] = None
    dst.update(given)


def _compose_meta(
    shape: tuple[int, ...] | None,
    base: Meta | None,
    base_parts: tuple[str, ...],
    meta: Meta | Mapping | None,
    spatial_args: Mapping[str, Any],
) -> Meta:
    """The metadata of a new array: ``base``'s parts, then ``meta``, then the keyword arguments.

    Each layer wins over the one before it for what it sets; the fields
    mlarray maintains (shape, payload flag) are derived from ``shape``.
    """
    parts: dict[str, Any] = {}
    if base is not None:
        parts = {name: getattr(base, name).to_mapping() for name in base_parts}
    explicit = _as_meta(meta)
    if explicit is not None:
        for name in _USER_PARTS:
            part = getattr(explicit, name)
            if name == "spatial":
                _overlay_spatial(parts.setdefault("spatial", {}), part.to_mapping())
            elif not part.is_default():
                parts[name] = part.to_mapping()
    spatial = parts.setdefault("spatial", {})
    _overlay_spatial(spatial, spatial_args)
    for key in ("shape", "_num_spatial_axes", "_num_non_spatial_axes"):
        spatial.pop(key, None)
    with _meta_internal_write():
        out = Meta.from_mapping(parts)
        out._has_array.has_array = shape is not None
        out.spatial.shape = None if shape is None else list(shape)
    return out


#: The array holding each Meta an array holds (by the Meta's id; an entry goes with its
#: array, and counts only while that array still holds that very object)
_HOLDERS: weakref.WeakValueDictionary[int, MLArray] = weakref.WeakValueDictionary()
_HOLD_LOCK = threading.Lock()


def _held_elsewhere(meta: Meta, arr: MLArray) -> bool:
    holder = _HOLDERS.get(id(meta))
    return holder is not None and holder is not arr and holder.__dict__.get("_meta") is meta


def _transplant(dst: Meta, src: Meta) -> Meta:
    """``dst`` holding ``src``'s parts (``src`` is a private, valid Meta the caller drops)."""
    for f in dataclasses.fields(Meta):
        object.__setattr__(dst, f.name, getattr(src, f.name))
    return dst


def _recorded_patch(
    request: layout.StorageRequest, model: Meta | None, meta: Meta
) -> layout.StorageRequest:
    """``request`` with the patch size ``model`` records, when the caller left it at its default.

    As the reference: ``MLArray(seg, meta=img.meta)`` lays the new array out for
    the patch size recorded in ``img.meta.blosc2`` (so an image and its label map
    are laid out for the same patch reads), when it has one entry per spatial
    axis of the new array and no chunk/block size is given.
    """
    patch = None if model is None else model.blosc2.patch_size
    if (
        patch is None
        or not (isinstance(request.patch_size, str) and request.patch_size == "default")
        or request.chunk_size is not None
        or request.block_size is not None
        or len(patch) != meta.spatial.spatial_ndim
    ):
        return request
    return dataclasses.replace(request, patch_size=list(patch))


class MLArray:
    """An N-dimensional image in the ``.mla`` format: Blosc2-compressed data plus metadata.

    Parameters
    ----------
    array : numpy.ndarray, str or Path, optional
        The data, or the path of an ``.mla`` file to load (see :meth:`load`).
        ``None`` makes an instance without an array (metadata only).
    spacing, origin : sequence of float, optional
        One value per spatial axis, in array-axis order.
    direction : (n, n) array-like, optional
        Direction cosines; column ``j`` is the world direction of spatial axis ``j``.
    affine : (n+1, n+1) array-like, optional
        Homogeneous affine; an alternative to spacing/origin/direction (giving
        both raises ``ValueError``).
    meta : Meta or dict, optional
        A :class:`~mlarray.meta.Meta`, or a dict of free-form metadata that
        becomes ``meta.source`` (as in the reference package). Build a Meta
        from a mapping of its fields with :meth:`Meta.from_mapping`.
    axis_labels : list of str or AxisLabelEnum, optional
        One label per array axis; ``None`` means every axis is spatial.
    copy : MLArray, optional
        Another MLArray whose metadata is copied for everything not given
        explicitly here (explicit arguments win).
    patch_size, chunk_size, block_size, cparams, dparams, compressed
        The storage keywords, the same for every constructor; documented
        once in :mod:`mlarray.layout`. ``compressed=False`` keeps a numpy
        array in memory (saved with the storage keywords given).

    Notes
    -----
    Every constructor (this one, :meth:`asarray`, :meth:`zeros`,
    :meth:`ones`, :meth:`full`, :meth:`empty`, :meth:`arange`,
    :meth:`linspace`, the ``*_like`` variants and :meth:`create`) funnels
    into one private path, ``_setup``.
    """

    _closed = False  # set by close()
    _given: str | None = None  # the path as the user gave it (``filepath``)

    def __init__(
        self,
        array: np.ndarray | str | os.PathLike | None = None,
        spacing: Any = None,
        origin: Any = None,
        direction: Any = None,
        affine: Any = None,
        meta: Meta | dict | None = None,
        axis_labels: Any = None,
        copy: MLArray | None = None,
        patch_size: Any = "default",
        chunk_size: Any = None,
        block_size: Any = None,
        cparams: Any = None,
        dparams: Any = None,
        compressed: bool = True,
    ):
        if copy is not None and not isinstance(copy, MLArray):
            raise TypeError(f"copy must be an MLArray, got {type(copy).__name__}")
        spatial_args = {
            "spacing": spacing,
            "origin": origin,
            "direction": direction,
            "affine": affine,
            "axis_labels": axis_labels,
        }
        base = None if copy is None else copy.meta
        if isinstance(array, (str, os.PathLike)):
            default_patch = isinstance(patch_size, str) and patch_size == "default"
            given = {
                "patch_size": None if default_patch else patch_size,
                "chunk_size": chunk_size,
                "block_size": block_size,
                "cparams": cparams,
            }
            names = ", ".join(k for k, v in given.items() if v is not None)
            if names:
                raise LayoutError(
                    f"{os.fspath(array)}: {names} cannot be given when loading a file (the "
                    "array keeps the file's layout and codec; they apply when saving, e.g. "
                    "mlarray.io.save_mla, or when building an array from data)"
                )
            self._adopt(type(self).load(array, dparams=dparams, compressed=compressed))
            if base is None:
                base = self._meta
            self._remeta(base, _USER_PARTS, meta, spatial_args)
            return
        request = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        self._setup(_maker(array), base, _USER_PARTS, meta, spatial_args, request, compressed)

    # ------------------------------------------------------------------ the funnel
    def _setup(
        self,
        make: tuple[Maker, tuple[int, ...], Any] | None,
        base: Meta | None,
        base_parts: tuple[str, ...],
        meta: Meta | Mapping | None,
        spatial_args: Mapping[str, Any],
        request: layout.StorageRequest,
        compressed: bool,
        like: Meta | None = None,
        keep: bool = True,
    ) -> None:
        """The one path of every constructor.

        ``make`` is ``(maker, shape, dtype)`` (None for an instance without
        an array); the metadata is composed by :func:`_compose_meta`, the
        storage keywords resolved by :func:`mlarray.layout.resolve_storage`.
        A default patch size is replaced by the one recorded in ``meta`` when it
        is a :class:`Meta`, else in ``like`` (a ``*_like`` model's metadata).
        ``keep=False``: the caller holds a given Meta itself (:meth:`_keep`) once
        nothing else can fail (:meth:`create`, after creating the file).
        """
        self._reset_state()
        if make is None:
            self._keep(_compose_meta(None, base, base_parts, meta, spatial_args), meta)
            return
        maker, shape, dtype = make
        shape, dtype = _as_shape(shape), io.check_dtype(dtype)
        self._hold(_compose_meta(shape, base, base_parts, meta, spatial_args))
        model = meta if isinstance(meta, Meta) else like
        request = _recorded_patch(request, model, self._meta)
        self._fill((maker, shape, dtype), request, compressed)
        if keep:
            self._keep(self._meta, meta)

    def _fill(
        self,
        make: tuple[Maker, tuple[int, ...], np.dtype],
        request: layout.StorageRequest,
        compressed: bool,
    ) -> None:
        """Build the store with ``make`` and record its layout in ``meta.blosc2``.

        A numpy store (``compressed=False``) records the resolved request too,
        as the reference package does: :meth:`save` writes the file with it.
        """
        maker, shape, dtype = make
        opts = self._resolve(shape, dtype, request)
        if compressed:
            self._store = _direct.guard(maker(shape, dtype, opts.blosc2_kwargs(dtype)))
        else:
            self._store = np.asarray(maker(shape, dtype, None))
        self._record_storage(opts)
        self._writable = True
        self._track_threads()

    @classmethod
    def _make(
        cls,
        make: tuple[Maker, Any, Any],
        meta: Meta | Mapping | None,
        request: layout.StorageRequest,
        compressed: bool,
        like: Any = None,
    ) -> MLArray:
        """A new in-memory instance through :meth:`_setup` (``like``: a ``*_like`` model).

        An explicit ``meta`` replaces the model's ``source``, ``extra`` and
        ``is_seg`` (as in the reference: a float map made from a label map is
        not flagged a label map); the model's geometry and axis labels stay.
        """
        out = cls.__new__(cls)
        base = like.meta if isinstance(like, MLArray) else None
        parts = _LIKE_PARTS if meta is None else _LIKE_GRID_PARTS
        out._setup(make, base, parts, meta, {}, request, compressed, base if meta is None else None)
        return out

    def _reset_state(self, meta: Meta | None = None) -> None:
        self._store: Any = None
        self._file_store: Any = None
        self._path: Path | None = None  # absolute: the file, whatever the working directory
        self._given: str | None = None  # the path as the user gave it (``filepath``)
        self._writable = False
        self._mode: str | None = None
        self._mmap_mode: str | None = None
        self._chunk_cache: _read.ChunkCache | None = None
        self._hold(Meta() if meta is None else meta)

    def _hold(self, meta: Meta) -> None:
        """Hold ``meta`` as this array's metadata (every assignment of it goes here),
        with the format version (a Meta of its own has none, as in the reference)."""
        meta._stamp_version(FORMAT_VERSION)
        self._meta = meta
        _HOLDERS[id(meta)] = self

    def _keep(self, composed: Meta, given: Meta | Mapping | None) -> None:
        """Hold the caller's own Meta ``given`` when no other array holds it, else ``composed``.

        As in the reference package, ``MLArray(x, meta=m).meta is m``: ``m`` takes the
        composed metadata (the keyword geometry, the array's shape and layout) and
        later edits of ``m`` are the array's. A Meta another live array holds
        (``MLArray(seg, meta=img.meta)``, one template given to a second array while
        the first lives) is not shared: the new array holds ``composed``, a copy (in
        the reference the two arrays would share one metadata object, shape and
        layout included). ``composed`` is fully built and valid: its parts replace
        ``given``'s (never written into, as a part object may be shared with
        another Meta).
        """
        with _HOLD_LOCK:  # two threads given one fresh Meta: one holds it, one a copy
            if isinstance(given, Meta) and not _held_elsewhere(given, self):
                composed = _transplant(given, composed)
            self._hold(composed)

    def _remeta(
        self,
        base: Meta,
        base_parts: tuple[str, ...],
        meta: Meta | Mapping | None,
        spatial_args: Mapping[str, Any],
    ) -> None:
        """Lay explicit metadata over a loaded file's, keeping its storage record."""
        if (
            base is self._meta
            and meta is None
            and not any(v is not None for v in spatial_args.values())
        ):
            return
        composed = _compose_meta(self.shape, base, base_parts, meta, spatial_args)
        with _meta_internal_write():
            composed.blosc2 = self._meta.blosc2
        self._keep(composed, meta)

    # ------------------------------------------------------------------ internals
    @property
    def meta(self) -> Meta:
        """The metadata (read-only attribute: change its parts in place).

        ``a.meta.source["key"] = value``, ``a.meta.spatial.spacing = [...]``,
        ``a.meta.is_seg = True`` are validated on assignment; the fields
        mlarray maintains (shape, layout, payload flag) are read-only.
        """
        return self._meta

    def _set_meta(self, meta: Meta) -> None:
        """Replace the metadata (library use: ``meta`` is private to this call), fitting
        the shape to the array.

        The Meta the array holds stays, its parts too, and takes ``meta``'s values:
        the user's ``m`` of ``MLArray(x, meta=m)`` (and ``sp = m.spatial``) go on
        being the array's after a save, as in the reference package.
        """
        if self._store is not None:
            with _meta_internal_write():
                meta.spatial.shape = list(self._store.shape)
        held = self.__dict__.get("_meta")
        if held is None:
            self._hold(meta)
            return
        for f in dataclasses.fields(Meta):
            getattr(held, f.name).__dict__.update(getattr(meta, f.name).__dict__)
        self._hold(held)

    @classmethod
    def _bare(cls, meta: Meta) -> MLArray:
        """An instance holding ``meta`` and no array, without building default metadata."""
        out = cls.__new__(cls)
        out._reset_state(meta)
        return out

    def _adopt(self, other: MLArray) -> None:
        self.__dict__.update(other.__dict__)
        self._hold(self._meta)  # ``other`` goes: this array holds its Meta now
        self._track_threads()

    def _resolve(
        self, shape: tuple[int, ...], dtype: np.dtype, request: layout.StorageRequest
    ) -> layout.StorageOptions:
        return layout.resolve_storage(
            shape,
            dtype,
            self.meta.spatial.spatial_axis_mask,
            is_seg=io.is_label_map(self.meta),
            **request.as_kwargs(),
        )

    def _record_storage(self, opts: layout.StorageOptions | None) -> None:
        """Record the layout and codec of the store, or for a numpy store the
        ones it will be saved with (``opts`` None: cleared)."""
        store = self._store
        with _meta_internal_write():
            if opts is None:
                self.meta.blosc2 = MetaBlosc2()
                return
            if isinstance(store, blosc2.NDArray):
                chunks, blocks = list(store.chunks), list(store.blocks)
            else:
                chunks = None if opts.chunk_size is None else list(opts.chunk_size)
                blocks = None if opts.block_size is None else list(opts.block_size)
            self.meta.blosc2 = MetaBlosc2(
                chunk_size=chunks,
                block_size=blocks,
                patch_size=None if opts.patch_size is None else list(opts.patch_size),
                cparams=opts.cparams,
                dparams=opts.dparams,
            )

    def _track_threads(self) -> None:
        """Register this instance for fork handling (see mlarray._fork) if its Blosc2
        contexts may run threads: a file handle, or an in-memory Blosc2 array."""
        if io.store_may_run_threads(self._file_store) or io.store_may_run_threads(self._store):
            _fork.track(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: park the parent's Blosc2 objects (their thread pools are gone);
        on next use the file is reopened, an in-memory array rebuilt, with one thread
        (see :meth:`__getattr__`)."""
        d = self.__dict__
        fs, store = d.get("_file_store"), d.get("_store")
        if d.get("_chunk_cache") is not None:  # its lock may have been held by a parent thread
            d["_chunk_cache"] = _read.ChunkCache(d["_chunk_cache"].max_bytes)
        if fs is not None and store is fs:
            _fork.park(fs)
            d["_fork_reopen"] = fs  # (copy-on-write edits live in an in-memory copy)
            del d["_store"], d["_file_store"]
        elif store is not fs and io.store_may_run_threads(store):  # in memory
            _fork.park(store)
            d["_fork_rebuild"] = store
            del d["_store"]

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails: after a fork the store is replaced on use.
        d = self.__dict__
        if name not in ("_store", "_file_store") or not (
            "_fork_reopen" in d or "_fork_rebuild" in d
        ):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        with _fork.reopen_lock():
            if name in d:  # another thread replaced it
                return d[name]
            if "_fork_rebuild" in d:
                d["_store"] = io.memory_copy(d["_fork_rebuild"], nthreads=1)
                del d["_fork_rebuild"]
                return d[name]
            old = d["_fork_reopen"]
            writable = _file_writable(self._mode, self._mmap_mode)
            store = io.reopen_in_child(old, self._path, self._mmap_mode, writable)
            d.update(_store=store, _file_store=store)
            del d["_fork_reopen"]
            return store

    def _require(self) -> Any:
        if self._store is None:
            raise NoArrayError(
                f"this MLArray holds no array{f' ({self._path})' if self._path else ''}"
            )
        return self._store

    def _storage_request(self) -> layout.StorageRequest:
        """The storage options to save this array with unchanged layout and codec."""
        b = self.meta.blosc2
        store = self._store
        if isinstance(store, blosc2.NDArray):
            return layout.StorageRequest(
                b.patch_size if b.patch_size is not None else None,
                list(store.chunks),
                list(store.blocks),
                b.cparams,
                b.dparams,
                keep_layout=True,
            )
        ndim = getattr(store, "ndim", None)
        chunks, blocks = b.chunk_size, b.block_size
        if any(v is not None and len(v) != ndim for v in (chunks, blocks)):
            chunks = blocks = None
        if chunks is not None or blocks is not None:
            # decompressed from a file (load(compressed=False)), or built with compressed=False
            # and a layout: saved with that layout
            return layout.StorageRequest(
                b.patch_size, chunks, blocks, b.cparams, b.dparams, keep_layout=True
            )
        if b.cparams is not None:
            # built with compressed=False: its patch size (None: Blosc2 chooses the layout)
            return layout.StorageRequest(b.patch_size, None, None, b.cparams, b.dparams)
        return layout.StorageRequest("default", None, None, b.cparams, b.dparams)

    # ------------------------------------------------------------------ constructors
    # The storage keywords (patch_size ... compressed) are documented once, in
    # mlarray.layout; the signatures below spell them out as the API reference does.
    @classmethod
    def asarray(
        cls,
        array: np.ndarray,
        meta: Meta | dict | None = None,
        patch_size: Any = "default",
        chunk_size: Any = None,
        block_size: Any = None,
        cparams: Any = None,
        dparams: Any = None,
        compressed: bool = True,
    ) -> MLArray:
        """Convert an array into an in-memory (Blosc2-compressed) MLArray.

        Raises
        ------
        TypeError
            If ``array`` is not array-like.
        MetaValidationError
            If ``meta`` does not fit the array, or its dtype cannot be stored.
        """
        if isinstance(array, (str, bytes, os.PathLike)) or array is None:
            raise TypeError(f"asarray expects an array, got {type(array).__name__}")
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        return cls._make(_maker(array), meta, req, compressed)

    @classmethod
    def zeros(
        cls,
        shape,
        dtype,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an in-memory MLArray filled with zeros (float64 when ``dtype`` is None)."""
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        dtype = np.float64 if dtype is None else dtype
        return cls._make(_full_maker(shape, 0, dtype), meta, req, compressed)

    @classmethod
    def ones(
        cls,
        shape,
        dtype=None,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an in-memory MLArray filled with ones (float64 when ``dtype`` is None)."""
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        dtype = np.float64 if dtype is None else dtype
        return cls._make(_full_maker(shape, 1, dtype), meta, req, compressed)

    @classmethod
    def empty(
        cls,
        shape,
        dtype,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an in-memory MLArray with uninitialized values (float64 for ``dtype=None``)."""
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        dtype = np.float64 if dtype is None else dtype
        return cls._make(_empty_maker(shape, dtype), meta, req, compressed)

    @classmethod
    def full(
        cls,
        shape,
        fill_value,
        dtype=None,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an in-memory MLArray filled with ``fill_value``.

        ``dtype`` defaults to the dtype numpy infers for ``fill_value``.
        """
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        return cls._make(_full_maker(shape, fill_value, dtype), meta, req, compressed)

    @classmethod
    def arange(
        cls,
        start,
        stop=None,
        step=1,
        dtype=None,
        shape=None,
        c_order=True,
        meta=None,
        patch_size=None,
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an in-memory MLArray with evenly spaced values (as :func:`numpy.arange`).

        ``shape`` reshapes the 1-d sequence in C order (its size must match);
        ``patch_size`` defaults to None here. ``c_order`` is accepted for the
        reference's signature (there, as in :func:`blosc2.arange`, it only says
        how the container is filled): the values are the same either way.

        Raises
        ------
        ValueError
            If ``shape`` does not hold as many elements as the sequence.
        """
        values = np.arange(start, stop, step) if stop is not None else np.arange(start)
        values = values.astype(dtype) if dtype is not None else values
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        return cls._make(_sequence_maker(values, shape), meta, req, compressed)

    @classmethod
    def linspace(
        cls,
        start,
        stop,
        num=None,
        dtype=None,
        endpoint=True,
        shape=None,
        c_order=True,
        meta=None,
        patch_size=None,
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an in-memory MLArray with evenly spaced samples (as :func:`numpy.linspace`).

        ``num`` defaults to the size of ``shape``, which the samples fill in C
        order; ``c_order`` changes nothing about the values (see :meth:`arange`).

        Raises
        ------
        ValueError
            If neither ``num`` nor ``shape`` is given, or they disagree.
        """
        if num is None:
            if shape is None:
                raise ValueError("linspace needs num or shape")
            num = int(np.prod(_as_shape(shape)))
        values = np.linspace(start, stop, num, endpoint=endpoint, dtype=dtype)
        req = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        return cls._make(_sequence_maker(values, shape), meta, req, compressed)

    @classmethod
    def zeros_like(
        cls,
        x,
        dtype=None,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create zeros shaped like ``x``, with its dtype and metadata unless overridden.

        From an MLArray the geometry, axis labels, coordinate system,
        ``source``, ``extra`` and ``is_seg`` are copied (not its statistics or
        boxes, which describe its values); ``dtype`` and ``meta`` override.

        Raises
        ------
        TypeError
            If ``x`` is neither an MLArray nor array-like.
        """
        return cls._like(
            x, dtype, 0, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
        )

    @classmethod
    def ones_like(
        cls,
        x,
        dtype=None,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create ones shaped like ``x`` (metadata as :meth:`zeros_like`)."""
        return cls._like(
            x, dtype, 1, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
        )

    @classmethod
    def empty_like(
        cls,
        x,
        dtype=None,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create an uninitialized array shaped like ``x`` (metadata as :meth:`zeros_like`)."""
        return cls._like(
            x, dtype, None, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
        )

    @classmethod
    def full_like(
        cls,
        x,
        fill_value,
        dtype=None,
        meta=None,
        patch_size="default",
        chunk_size=None,
        block_size=None,
        cparams=None,
        dparams=None,
        compressed=True,
    ) -> MLArray:
        """Create ``fill_value`` everywhere, shaped like ``x`` (metadata as :meth:`zeros_like`)."""
        return cls._like(
            x,
            dtype,
            fill_value,
            meta,
            patch_size,
            chunk_size,
            block_size,
            cparams,
            dparams,
            compressed,
        )

    @classmethod
    def _like(cls, x, dtype, fill_value, meta, *storage) -> MLArray:
        """The ``*_like`` constructors: ``fill_value`` None leaves the values uninitialized."""
        if isinstance(x, MLArray):
            src = x._require()
        elif hasattr(x, "shape") and hasattr(x, "dtype"):
            src = x
        elif isinstance(x, (list, tuple)):
            src = np.asarray(x)
        else:
            raise TypeError(f"expected an MLArray or an array-like, got {type(x).__name__}")
        shape, dtype = tuple(src.shape), np.dtype(src.dtype if dtype is None else dtype)
        *sizes, compressed = storage
        make = (
            _empty_maker(shape, dtype)
            if fill_value is None
            else _full_maker(shape, fill_value, dtype)
        )
        return cls._make(make, meta, layout.StorageRequest(*sizes), compressed, like=x)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(
        cls, filepath: str | os.PathLike, dparams: Any = None, compressed: bool = True
    ) -> MLArray:
        """Load a whole ``.mla`` file into memory (no memory mapping).

        Parameters
        ----------
        filepath : str or Path
            An existing file ending with ``.mla``.
        dparams : dict, optional
            Blosc2 decompression parameters; ``nthreads`` (default 1) is also the
            number of threads whole-array reads (``to_numpy()``, ``[...]``) use.
        compressed : bool
            Keep the data compressed in memory (True) or decompress to numpy.

        Raises
        ------
        InvalidPathError
            (a RuntimeError) if the suffix is not ``.mla``.
        MLArrayFileNotFoundError, MLArrayFormatError
            If the file is missing or not a valid ``.mla`` file.
        """
        dp = layout.normalize_dparams(dparams) if dparams is not None else None
        given, filepath = filepath, _absolute(filepath)
        store, meta = io.open_store(filepath, mmap_mode="r", dparams=dp)
        out = cls._bare(meta)
        if meta._has_array.has_array:
            if compressed:  # structure checked, chunks verified, then copied into memory
                out._store = io.load_frame(filepath, store.schunk.dparams)
            else:
                out._store = _fullread.read_all(store, path=filepath)
        out._path, out._given = filepath, os.fspath(given)
        out._writable = True
        out._track_threads()
        del store
        return out

    @classmethod
    def open(
        cls,
        filepath: str | os.PathLike,
        mode: str = "r",
        mmap_mode: str | None = "r",
        dparams: Any = None,
    ) -> MLArray:
        """Open an existing ``.mla`` file lazily, memory-mapped.

        Nothing is decompressed until indexed: ``a[10:20]`` decompresses only
        the chunks it touches.

        Parameters
        ----------
        filepath : str or Path
            An existing file ending with ``.mla``.
        mode : {"r", "a"}
            Read-only, or read/write; applies with ``mmap_mode=None`` only.
        mmap_mode : {"r", "r+", "c"} or None
            Memory-mapping mode; it overrides ``mode``: ``"r"`` read-only
            (also with ``mode="a"``, as in the reference package: writes raise
            :class:`~mlarray.errors.ReadOnlyError`, metadata edits stay in
            memory), ``"r+"`` writes go to the file, ``"c"`` copy-on-write
            (writes stay in memory). ``None`` uses plain file I/O in ``mode``.
        dparams : dict, optional
            Blosc2 decompression parameters; ``nthreads`` (default 1, or what the
            file records) is also the number of threads whole-array reads
            (``a[...]``, ``a.to_numpy()``, ``np.asarray(a)``) decode on:
            ``{"nthreads": mlarray.layout.usable_cores()}`` uses every core.

        Notes
        -----
        Writes into the file (``mmap_mode="r+"``, ``mode="a", mmap_mode=None``) are each
        all-or-nothing: when ``a[...] = v`` returns, it is on disk with its
        chunk checksums; if it fails (a full disk, a crash), the file is as it
        was before it (:func:`mlarray.io.write_in_place`). Opening a file
        whose writer was killed in the middle of a write first restores it.
        Processes and handles writing one file take turns: a write waits up to
        10 s for another's to end, and goes through a fresh view of the file if
        another one wrote it since this handle looked.

        The file is read through a memory mapping. If another program cuts it
        short or rewrites it in place while it is open (``truncate``,
        ``open(path, "wb")``, ``cp`` over it), the next read or write raises
        :class:`~mlarray.errors.FileChangedError` instead of touching pages
        that are gone (which would kill the process with SIGBUS); reopen the
        file to read its new version. A file replaced by a rename (how
        mlarray and Blosc2 save) or deleted stays readable as it was. Each
        read checks the file once before it starts (a ``stat``), whole-volume
        reads once per few MiB: a truncation in the milliseconds a read is
        already decoding is not caught (see :class:`mlarray._maps.Watch`).

        Raises
        ------
        InvalidPathError
            If the suffix is not ``.mla``.
        MLArrayIOError
            (an OSError) if the file cannot be opened as asked, e.g. for
            writing a file that is write-protected.
        InvalidModeError
            (a RuntimeError) for an invalid ``mode`` or ``mmap_mode``.
        """
        if mode not in _OPEN_MODES:
            raise InvalidModeError(f"{filepath}: mode must be 'r' or 'a' to open, got {mode!r}")
        dp = layout.normalize_dparams(dparams) if dparams is not None else None
        given, filepath = filepath, _absolute(filepath)
        store, meta = io.open_store(
            filepath, mmap_mode=mmap_mode, writable=_file_writable(mode, mmap_mode), dparams=dp
        )
        out = cls._bare(meta)
        out._store = store if meta._has_array.has_array else None
        out._path, out._given = filepath, os.fspath(given)
        out._mode, out._mmap_mode = mode, mmap_mode
        out._writable = mmap_mode in ("r+", "c") or (mmap_mode is None and mode == "a")
        out._file_store = store
        out._track_threads()
        return out

    @classmethod
    def create(
        cls,
        filepath: str | os.PathLike,
        shape: Any,
        dtype: Any,
        meta: Any = None,
        mode: str = "w",
        mmap_mode: str | None = "w+",
        patch_size: Any = "default",
        chunk_size: Any = None,
        block_size: Any = None,
        cparams: Any = None,
        dparams: Any = None,
    ) -> MLArray:
        """Create a new ``.mla`` file (zero-filled) and keep it open for writing.

        Write into it with ``a[...] = values``; :meth:`close` (or leaving a
        ``with`` block) stores the metadata.

        Raises
        ------
        InvalidPathError
            If the suffix is not ``.mla``, or the path is a directory.
        InvalidModeError
            (a RuntimeError) if ``mode`` is not ``"w"`` or ``mmap_mode`` not ``"w+"``/None.
        MLArrayIOError
            (an OSError) if the operating system refuses to create the file.
        """
        if mode not in _CREATE_MODES:
            raise InvalidModeError(f"{filepath}: mode must be 'w' to create, got {mode!r}")
        if mmap_mode is not None and mmap_mode not in _CREATE_MMAP_MODES:
            raise InvalidModeError(
                f"{filepath}: mmap_mode must be 'w+' or None to create, got {mmap_mode!r}"
            )
        path = _absolute(filepath)  # writes after an os.chdir still find the file
        if not path.parent.is_dir():
            raise InvalidPathError(path, f"folder {path.parent} does not exist")
        if path.is_dir():  # Blosc2's mode "w" would delete the folder and all it holds
            raise InvalidPathError(path, "is a directory, not an .mla file")
        file_kw: dict[str, Any] = {"urlpath": os.fspath(path), "contiguous": True}
        file_kw.update({"mmap_mode": mmap_mode} if mmap_mode is not None else {"mode": "w"})

        def make(shape: tuple[int, ...], dtype: np.dtype, kw: dict[str, Any] | None) -> Any:
            with io.os_errors(path, "cannot create"):
                return blosc2.zeros(shape, dtype, **kw, **file_kw)

        request = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        out = cls.__new__(cls)
        out._setup((make, shape, dtype), None, (), meta, {}, request, True, keep=False)
        out._path, out._mode, out._mmap_mode = path, mode, mmap_mode
        out._given = os.fspath(filepath)
        out._file_store = out._store
        with io.os_errors(path, "cannot create"):  # writes check the file was not cut short
            _maps.watch(out._store, path, None, _maps.version_of(os.stat(path)))
        out._track_threads()
        out._flush_meta(checksums=True)  # then each write keeps them current
        out._keep(out._meta, meta)  # the caller's Meta is left alone if creating failed
        return out

    def _flush_meta(self, checksums: bool = False) -> None:
        fs = self._file_store
        if fs is not None and self._writable and self._mmap_mode != "c":
            if _maps.changed_by_this_process(fs):
                # another handle of this process wrote the file in place since: this one's
                # view of the frame is stale, its metadata goes in through a fresh one
                self._reopen_file()
                fs = self._file_store
            io.flush_meta(fs, self._path, self.meta, reopen=self._reopen_file, checksums=checksums)

    def _reopen_file(self) -> Any:
        """A fresh store of the file, which it returns (after a failed in-place write was
        rolled back, or when another handle or process wrote the file in place)."""
        keep = self._store is self._file_store
        self._file_store = io.reopen_store(self._file_store, self._path, self._mmap_mode, True)
        if keep:
            self._store = self._file_store
        if self._chunk_cache is not None:  # decoded from the old view of the file
            self._chunk_cache.clear()
        self._track_threads()
        return self._file_store

    def save(self, filepath: str | os.PathLike) -> None:
        """Save to an ``.mla`` file, atomically (temporary file, then replace).

        The array keeps its chunk/block layout and codec. Saving to the file
        this array was opened from is safe.

        Raises
        ------
        InvalidPathError
            (a RuntimeError) if the path does not end with ``.mla``.
        """
        if self._closed:
            where = f" (opened from {self._path})" if self._path is not None else ""
            raise ClosedError(
                f"cannot save to {os.fspath(filepath)}: this MLArray{where} was closed and no "
                "longer holds its array (saving it would write a file without the image); "
                "open the file again to save changes"
            )
        path = io.check_path(filepath, must_exist=False)
        req = self._storage_request()
        io.save_mla(path, self if self._store is not None else None, self.meta, **req.as_kwargs())
        if self._path is not None and _same_file(path, self._path):
            self._reopen(path)
        else:
            self._set_meta(io.read_meta(path))

    def _reopen(self, path: Path) -> None:
        """After replacing our own file, point the store at the new file."""
        fs = self._file_store
        if (
            fs is None
            or self._store is None
            or not isinstance(self._store, blosc2.NDArray)
            or (self._store is not fs)
        ):
            self._set_meta(io.read_meta(path))
            return
        store, meta = io.open_store(
            _absolute(path), mmap_mode=self._mmap_mode, writable=self._writable
        )
        self._store = self._file_store = store
        self._track_threads()
        self._set_meta(meta)

    def close(self) -> None:
        """Flush metadata (for writable files) and release the array.

        After closing, the instance holds no array; :meth:`save` raises
        :class:`~mlarray.errors.ClosedError` (it would write a file without
        the image). Closing twice does nothing more.
        """
        self._flush_meta()
        self._store = None
        self._file_store = None
        self._closed = True

    def __reduce__(self) -> tuple:
        """Pickle support, e.g. for data-loader worker processes.

        An array opened from a file (modes ``r``, ``r+``, ``a``) pickles as its
        path and modes and is reopened lazily on unpickling, so sending it to a
        worker costs a few hundred bytes; in-memory data (and copy-on-write
        views, whose edits live only in memory) travel compressed. A file replaced
        or rewritten between pickling and unpickling raises
        :class:`~mlarray.errors.FileChangedError` on unpickling (its metadata
        travelled with the pickle and belongs to the version that was open).
        """
        record = self.meta.to_mapping()
        if (
            self._path is not None
            and self._store is not None
            and self._store is self._file_store
            and self._mmap_mode != "c"
        ):
            mode = "a" if self._writable and self._mmap_mode is None else "r"
            where = _maps.absolute(self._path)  # a worker may run in another directory
            # the record belongs to the version open now (a writable handle's own writes
            # may change the file after pickling: not checked)
            version = None if self._writable else _maps.identity(self._store)
            return (_unpickle_file, (where, mode, self._mmap_mode, record, version))
        store = self._store
        if isinstance(store, blosc2.NDArray):
            _maps.check(store)  # a copy-on-write view reads its file's mapping whole
            return (_unpickle_cframe, (store.to_cframe(), record))
        return (_unpickle_memory, (store, record))

    def verify(self) -> integrity.VerifyReport:
        """Check the whole file: its Blosc2 structure and every chunk against its checksum.

        A file without checksums (written by another tool, e.g. the reference package)
        has every chunk decompressed instead, one at a time: a chunk that cannot be is
        damaged; damage that still decompresses cannot be told from data.

        Returns
        -------
        mlarray.integrity.VerifyReport
            ``has_checksums`` is False for files written without checksums
            (their structure is still checked, and ``decode_checked`` is True).

        Raises
        ------
        CorruptChunkError
            If a chunk does not match its checksum, or, without checksums, cannot be
            decompressed (names the file and chunk).
        MLArrayFormatError
            If the frame structure is damaged.
        NoArrayError
            If this instance was not opened or loaded from a file.
        """
        if self._path is None:
            raise NoArrayError("verify() needs an MLArray opened or loaded from a file")
        return integrity.verify_file(self._path)

    def __enter__(self) -> MLArray:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ conversions
    def compress(
        self,
        patch_size: Any = "default",
        chunk_size: Any = None,
        block_size: Any = None,
        cparams: Any = None,
        dparams: Any = None,
    ) -> None:
        """Recompress in place into an in-memory Blosc2 array with a new layout/codec.

        The instance is detached from any file; call :meth:`save` to persist.

        Raises
        ------
        NoArrayError
            (a TypeError) if no array is loaded.
        """
        request = layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams)
        self._require()
        store = io.streaming_store(self)
        if not isinstance(store, blosc2.NDArray) or not store.size:
            data = self.to_numpy()
            self._detach()
            self._fill(_maker(data), request, compressed=True)
            return

        def stream(shape: tuple[int, ...], dtype: np.dtype, kw: dict[str, Any] | None) -> Any:
            # chunk by chunk: a lazily opened file is never decoded whole
            new = blosc2.empty(shape, dtype=dtype, **kw)
            io.copy_by_chunks(new, store, src_path=self._path)
            return new

        shape, dtype = tuple(int(n) for n in store.shape), np.dtype(store.dtype)
        self._detach()
        self._fill((stream, shape, dtype), request, compressed=True)

    def decompress(self) -> None:
        """Decompress in place to a NumPy array; ``meta.blosc2`` is cleared.

        Raises
        ------
        NoArrayError
            (a TypeError) if no array is loaded.
        """
        data = self.to_numpy()
        self._detach()
        self._store = data
        self._record_storage(None)

    def _detach(self) -> None:
        self._file_store = None
        self._path, self._writable, self._mode, self._mmap_mode = None, True, None, None
        self._given = None

    def to_numpy(self) -> np.ndarray:
        """Return the data as a NumPy array (decompressing everything).

        Every chunk is decoded once and put in place in a new C-order array, on
        the threads the handle's ``dparams["nthreads"]`` allows.

        Raises
        ------
        NoArrayError
            (a TypeError) if no array is loaded.
        """
        store = self._require()
        return store if isinstance(store, np.ndarray) else self[...]

    def to_dask(self, chunks: Any = None) -> Any:
        """Return a lazy dask array, one block per stored chunk (see :func:`mlarray._dask.to_dask`).

        It pickles cheaply (an opened file travels as its path), so it works on
        process pools and Dask distributed workers. Needs the ``dask`` extra.
        """
        from mlarray._dask import to_dask

        return to_dask(self, chunks=chunks)

    def compute_stats(self, percentiles: tuple[float, float] = (0.5, 99.5)) -> MetaStatistics:
        """Fill ``meta.stats`` from the data, streaming chunk by chunk.

        Computes min, max, mean, median, std, the two percentiles and the
        statistics of the values between them, never holding the whole
        volume in memory. NaNs are ignored.

        Returns
        -------
        MetaStatistics
            The new ``meta.stats``.
        """
        from mlarray.stats import file_stats

        values = file_stats(
            self._require(), self._path, percentiles, read=lambda: io.streaming_store(self)
        )
        self.meta.stats = MetaStatistics(**values)
        return self.meta.stats

    @classmethod
    def comp_blosc2_params(
        cls,
        image_size,
        patch_size,
        spatial_axis_mask=None,
        bytes_per_pixel=4,
        l1_cache_size_per_core_in_bytes=32768,
        l3_cache_size_per_core_in_bytes=1441792,
        safety_factor=0.8,
    ):
        """Recommended (chunk_size, block_size); see :func:`mlarray.layout.comp_blosc2_params`."""
        return layout.comp_blosc2_params(
            image_size,
            patch_size,
            spatial_axis_mask=spatial_axis_mask,
            bytes_per_pixel=bytes_per_pixel,
            l1_cache_size_per_core_in_bytes=l1_cache_size_per_core_in_bytes,
            l3_cache_size_per_core_in_bytes=l3_cache_size_per_core_in_bytes,
            safety_factor=safety_factor,
        )

    # ------------------------------------------------------------------ array protocol
    def set_chunk_cache(self, max_bytes: int | None = _read.DEFAULT_CACHE_BYTES) -> None:
        """Keep decoded chunks in a bounded LRU cache for repeated nearby reads.

        Meant for viewers scrolling through planes: the blocks under a plane
        are decoded once, one block thickness at a time, and serve the next
        planes (each copied out of them), instead of Blosc2 decoding the blocks
        under every plane again. Random patch reads do not profit (each patch
        touches new chunks). Writes through this array empty the cache; writes
        through other handles or processes are not seen by it (reopen the
        file). Memory of decoded block layers that no cache holds any more is
        kept for the next layers (at most 64 MiB per process), as writing fresh
        memory costs a page fault per page.

        Parameters
        ----------
        max_bytes : int or None
            Bound of the decoded bytes held (default 256 MiB); None or 0
            switches the cache off.
        """
        self._chunk_cache = _read.ChunkCache(max_bytes) if max_bytes else None

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read ``key`` as numpy would; only the chunks it touches are decompressed."""
        store = self._require()
        try:
            return self._read(store, key)
        except FileChangedError:
            if not (
                store is self._file_store
                and self._writable
                and self._mmap_mode != "c"
                and _maps.changed_by_this_process(store)
            ):
                raise
        # another writable handle of this process wrote the file in place: this one reads
        # (as it writes, see __setitem__) through a fresh view of the file
        self._reopen_file()
        return self._read(self._require(), key)

    def _read(self, store: Any, key: Any) -> np.ndarray:
        cache = self._chunk_cache
        if cache is not None and _direct.is_guarded(store):
            cache = None  # a cache would decode its blocks unguarded (see _direct.guard)
        if cache is not None and isinstance(store, blosc2.NDArray):
            hit = _read.cached_plane(store, key, cache)
            if hit is not None:
                # A plane of a block layer decoded by an earlier read, which verified the
                # layer's chunks first (a handle's verification is never switched on
                # after its open, and writes empty the cache): no file access.
                try:
                    return _read.plane_of(*hit)
                except MemoryError as exc:
                    raise _memory_error(self._path, store, key, exc) from None
        box = _direct.box_of(store, key)  # a box of a Blosc2 array: read by its C slicer
        # the touched chunks' bytes, asked for at once (a file not in the page cache)
        _prefetch.prefetch_read(store, key, None if box is None else box[:2])
        integrity.verify_read(store, key, box)  # the chunks it touches match their checksums
        touched = _maps.touched_count(store)
        try:
            out = self._decode(store, key, box, cache)
        except IndexError:
            try:
                _probe(tuple(store.shape))[key]  # numpy's own message
            except IndexError as err:
                raise IndexingError(f"{self._path or 'MLArray'}: {err}") from None
            raise
        except MemoryError as exc:
            raise _memory_error(self._path, store, key, exc) from None
        except (NotImplementedError, MLArrayError):  # RuntimeErrors, not blosc2's
            raise
        except RuntimeError as exc:  # blosc2 reports corrupt chunks as RuntimeError
            raise integrity.damage_error(  # or the file was written meanwhile
                store,
                self._path,
                f"cannot decompress the requested data, the file may be corrupt ({exc})",
            ) from None
        _maps.check_read(store, touched, cache)  # the file did not change meanwhile
        return out

    def _decode(self, store: Any, key: Any, box: Any, cache: Any) -> Any:
        """``store[key]`` decoded (the read of :meth:`_read` after its checks)."""
        if isinstance(store, blosc2.NDArray) and _fullread.selects_all(key, store.ndim):
            return _fullread.read_all(store, path=self._path)
        if cache is not None and isinstance(store, blosc2.NDArray):
            out = _read.read_cached(store, key, cache)
            if out is not None:
                return out
        if box is not None:
            return _direct.read_box(store, box)
        if isinstance(store, np.ndarray):
            return store[key]  # numpy's own result: a numpy scalar for integer keys
        if _is_basic_key(key):
            return np.asarray(store[key])
        return _read_advanced(store, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Write ``value`` into ``key`` with numpy's indexing, broadcasting and casting.

        Basic keys (ints, slices, ``...``, ``None``) write straight into the
        touched chunks; integer-array and boolean keys read, update and write
        back the bounding box of the selection. Into a file, the write is
        all-or-nothing (see :meth:`open`).

        Raises
        ------
        ReadOnlyError
            (a PermissionError) if the array was opened read-only.
        DiskFullError
            (an OSError) if the disk has no room for the write; the file is
            unchanged.
        MLArrayIOError
            (an OSError) if writing the file failed; it was restored.
        """
        store = self._require()
        if not self._writable:
            why = " (mmap_mode='r' overrides mode='a')" if self._mode == "a" else ""
            raise ReadOnlyError(
                f"{self._path}: opened read-only{why}; use MLArray.open(path, mmap_mode='r+') "
                "to write"
            )
        if isinstance(store, np.ndarray):
            store[key] = value
            return
        if store is self._file_store:
            if self._mmap_mode != "c" and _maps.changed_by_this_process(store):
                self._reopen_file()  # another handle of this process wrote the file in place:
                store = self._file_store  # this one writes through a fresh view of it
            if self._mmap_mode == "c":  # (an in-place write checks under the writer lock)
                _maps.check(store)  # a file cut short by another program: an error, not SIGBUS
        if store is self._file_store and self._mmap_mode == "c":
            # Copy-on-write edits go into a copy of the frame in memory: c-blosc2 grows a
            # frame it rewrites past the end of the private mapping (SIGBUS, as in the
            # reference). The file's mapping stays as it was.
            store = self._store = io.memory_copy(store)
        in_place = store is self._file_store and self._mmap_mode != "c"
        if store is self._file_store:
            integrity.note_write(store)  # this handle stops verifying what it reads
        shape = tuple(store.shape)
        selected = _probe(shape)[key].shape  # numpy's IndexError for a bad key
        values = np.empty(selected, dtype=store.dtype)
        values[...] = value  # numpy's broadcasting and casting rules (and errors)
        if _is_basic_key(key):
            items = key if isinstance(key, tuple) else (key,)
            if any(k is None for k in items):  # Blosc2 refuses None with non-unit steps
                key = tuple(k for k in items if k is not None)
                values = values.reshape(_probe(shape)[key].shape)  # drops length-1 axes only

            def write(store: Any) -> None:
                store[key] = values

        elif values.size:

            def write(store: Any) -> None:
                _write_advanced(store, key, values)

        else:
            return
        bounds = _write_bounds(key, shape)
        write_values = write

        def write(store: Any) -> None:  # the handle's store, or a fresh one of its file
            if _direct.is_guarded(store):
                # c-blosc2 fills the rest of an uninitialised chunk it writes into with
                # whatever its scratch memory held: zero those chunks first
                _direct.zero_uninit_chunks(store, bounds)
            write_values(store)

        try:
            if in_place:
                # All or nothing: a full disk or a crash leaves the file as it was.
                if values.size:
                    io.write_in_place(store, self._path, bounds, write, reopen=self._reopen_file)
            else:
                write(store)
        finally:
            if self._chunk_cache is not None:
                self._chunk_cache.clear()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self.to_numpy()
        return data if dtype is None else data.astype(dtype, copy=False)

    def __len__(self) -> int:
        if self._store is None and not self._closed:
            return 0  # metadata only: empty (and falsy), as in the reference
        shape = self._require().shape
        if not shape:
            raise TypeError("len() of a 0-d MLArray")
        return shape[0]

    def __repr__(self) -> str:
        if self._store is None:
            return f"MLArray(no array{', ' + str(self._path) if self._path else ''})"
        where = f", path={str(self._path)!r}" if self._path else ""
        return f"MLArray(shape={self.shape}, dtype={self.dtype}{where})"

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the array, or None if no array is loaded."""
        return None if self._store is None else tuple(self._store.shape)

    @property
    def dtype(self) -> np.dtype | None:
        """Dtype of the array, or None if no array is loaded."""
        return None if self._store is None else np.dtype(self._store.dtype)

    @property
    def ndim(self) -> int | None:
        """Number of axes (spatial and non-spatial), or None if no array is loaded."""
        return None if self._store is None else len(self._store.shape)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Blosc2 chunk shape (None for numpy-backed or empty instances)."""
        return tuple(self._store.chunks) if isinstance(self._store, blosc2.NDArray) else None

    @property
    def blocks(self) -> tuple[int, ...] | None:
        """Blosc2 block shape (None for numpy-backed or empty instances)."""
        return tuple(self._store.blocks) if isinstance(self._store, blosc2.NDArray) else None

    @property
    def path(self) -> Path | None:
        """The file this instance was opened from, loaded from or created at (a Path)."""
        return self._path

    @property
    def filepath(self) -> str | None:
        """The file this instance was opened from, loaded from or created at; None in memory."""
        if self._path is None:
            return None
        return self._given if self._given is not None else str(self._path)

    @property
    def mode(self) -> str | None:
        """``"r"``/``"a"`` for :meth:`open`, ``"w"`` for :meth:`create`; None otherwise."""
        return self._mode

    @property
    def mmap_mode(self) -> str | None:
        """The memory-mapping mode of an opened or created file (None when not mapped)."""
        return self._mmap_mode

    @property
    def support_metadata(self) -> bool:
        """Always True: every MLArray (in memory or a ``.mla`` file) carries metadata.

        The reference package 0.0.54 sets this attribute on every instance; kept for
        scripts that test it.
        """
        return True

    @property
    def spatial_axis_mask(self) -> list[bool] | None:
        """Per array axis, whether it is spatial (None if no array is loaded)."""
        return None if self._store is None else self.meta.spatial.spatial_axis_mask

    @property
    def spatial_ndim(self) -> int | None:
        """Number of spatial axes, or None if no array is loaded."""
        return None if self._store is None else self.meta.spatial.spatial_ndim

    def _geometry_ndim(self) -> int | None:
        n = self.spatial_ndim
        if n is not None:
            return n
        sp = self.meta.spatial
        for v in (sp.spacing, sp.origin, sp.direction):
            if v is not None:
                return len(v)
        return None if sp.affine is None else len(sp.affine) - 1

    # Geometry reads as the reference package's: the stored lists themselves,
    # so ``a.spacing[1] = 5.3`` changes the spacing. Spacing/origin/direction
    # and the affine are two exclusive forms: in affine form spacing, origin
    # and direction read None (``scale``, ``translation`` and ``rotation``
    # derive them), and setting one form while the other is set is an error.
    @property
    def spacing(self) -> list[float] | None:
        """Spacing per spatial axis, in array-axis order (None when unset or in affine form)."""
        return self.meta.spatial.spacing

    @spacing.setter
    def spacing(self, value: Any) -> None:
        self.meta.spatial.spacing = value

    @property
    def origin(self) -> list[float] | None:
        """World position of voxel 0 (None when unset or in affine form)."""
        return self.meta.spatial.origin

    @origin.setter
    def origin(self, value: Any) -> None:
        self.meta.spatial.origin = value

    @property
    def direction(self) -> list[list[float]] | None:
        """Direction cosines (column j = world direction of spatial axis j), or None."""
        return self.meta.spatial.direction

    @direction.setter
    def direction(self, value: Any) -> None:
        self.meta.spatial.direction = value

    @property
    def affine(self) -> list[list[float]] | None:
        """Homogeneous affine ((n+1) x (n+1) over the spatial axes) as nested lists.

        The stored affine in affine form (in-place edits stick), else composed
        from spacing/origin/direction (identity parts where unset); None
        without an array.
        """
        sp = self.meta.spatial
        if sp.affine is not None:
            return sp.affine
        if self._store is None:
            return None
        return geometry.compose_affine(
            sp.spacing, sp.origin, sp.direction, ndim=self._geometry_ndim()
        ).tolist()

    @affine.setter
    def affine(self, value: Any) -> None:
        if value is not None:
            value = np.asarray(value, dtype=np.float64)
            geometry.decompose_affine(value)  # validates: square, finite, invertible
            value = value.tolist()
        # MetaSpatial refuses an affine beside spacing/origin/direction (exclusive forms)
        self.meta.spatial.affine = value

    @property
    def translation(self) -> list[float] | None:
        """Translation part of the affine, or None without an array."""
        a = self.affine
        return None if a is None else geometry.translation(a).tolist()

    @property
    def scale(self) -> list[float] | None:
        """Scale factors per spatial axis (``M = rotation @ shear @ diag(scale)``)."""
        a = self.affine
        return None if a is None else geometry.scale(a).tolist()

    @property
    def rotation(self) -> list[list[float]] | None:
        """Orthonormal rotation part of the affine, or None without an array."""
        a = self.affine
        return None if a is None else geometry.rotation(a).tolist()

    @property
    def shear(self) -> list[list[float]] | None:
        """Unit upper-triangular shear part of the affine, or None without an array."""
        a = self.affine
        return None if a is None else geometry.shear(a).tolist()


def _file_writable(mode: str | None, mmap_mode: str | None) -> bool:
    """Whether a handle opened with ``mode`` and ``mmap_mode`` may write its file (in
    place, or its metadata on close): ``mmap_mode`` overrides ``mode``."""
    if mmap_mode is None:
        return mode in ("a", "w")
    return mmap_mode in ("r+", "w+")


def _write_bounds(key: Any, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """The box a write of ``key`` (numpy selects something) changes; None: not known.

    None makes the write journal every chunk and refresh every checksum (slower,
    never wrong); a box that missed a written chunk would leave it outside the
    undo journal and with its old checksum.
    """
    try:
        return key_bounds(key, shape)  # None (selects nothing) cannot be right here
    except Exception:
        return None


def _probe(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-memory numpy array of ``shape``: index it to learn what a key selects."""
    return np.broadcast_to(np.empty((), dtype=np.bool_), shape)


def _memory_error(path: Any, store: Any, key: Any, exc: MemoryError) -> MLArrayMemoryError:
    """The error for a read of ``store[key]`` that ran out of memory."""
    return _read.read_memory_error(path, _nbytes(store, key), exc)


def _nbytes(store: Any, key: Any) -> int:
    try:
        return int(_probe(tuple(store.shape))[key].size) * np.dtype(store.dtype).itemsize
    except Exception:
        return int(np.prod(store.shape)) * np.dtype(store.dtype).itemsize


def _is_basic_key(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(
        k is None
        or k is Ellipsis
        or isinstance(k, slice)
        or (isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)))
        for k in items
    )


def _read_advanced(store: Any, key: Any) -> np.ndarray:
    """Read an integer-array/boolean selection through its bounding box."""
    shape = tuple(store.shape)
    if not shape:
        return np.asarray(store[()])[key]
    found = selection_box(shape, key)
    if found is None:
        return np.empty(_probe(shape)[key].shape, dtype=store.dtype)
    box, local = found
    chunks = tuple(int(c) for c in getattr(store, "chunks", shape))
    spans_chunks = any(s.start // c != (s.stop - 1) // c for s, c in zip(box, chunks, strict=True))
    points = len(local) == len(shape) and local[0].dtype != np.bool_  # coordinates, no mask
    if points and spans_chunks:
        return _read_points(store, box, local, chunks)
    return np.asarray(store[box])[local]


def _read_points(
    store: Any, box: tuple[slice, ...], local: tuple[np.ndarray, ...], chunks: tuple[int, ...]
) -> np.ndarray:
    """Points (integer-array keys) over several chunks: read chunk by chunk, each
    chunk's points through their own box, instead of the points' whole bounding box
    (``a[[0, 383]]`` or a few far-apart voxels would decode the volume)."""
    points = [(c.astype(np.int64) + b.start).ravel() for c, b in zip(local, box, strict=True)]
    geometry = ChunkGeometry.of(store.shape, chunks)
    chunk_id = sum(
        (p // c) * st for p, c, st in zip(points, geometry.chunks, geometry.strides, strict=True)
    )
    order = np.argsort(chunk_id, kind="stable")
    cuts = np.flatnonzero(np.diff(chunk_id[order])) + 1
    out = np.empty(points[0].size, dtype=store.dtype)
    for idx in np.split(order, cuts):
        lo = [int(p[idx].min()) for p in points]
        sub = tuple(slice(a, int(p[idx].max()) + 1) for a, p in zip(lo, points, strict=True))
        region = np.asarray(store[sub])
        out[idx] = region[tuple(p[idx] - a for p, a in zip(points, lo, strict=True))]
    return out.reshape(local[0].shape)


def _write_advanced(store: Any, key: Any, values: np.ndarray) -> None:
    """Write an integer-array/boolean selection through its bounding box."""
    shape = tuple(store.shape)
    if not shape:
        region = np.array(store[()])
        region[key] = values
        store[()] = region
        return
    found = selection_box(shape, key)
    if found is None:
        return
    box, local = found
    region = np.array(store[box])
    region[local] = values
    store[box] = region


def _unpickle_file(
    path: str, mode: str, mmap_mode: str | None, record: dict, version: tuple | None = None
) -> MLArray:
    out = MLArray.open(path, mode=mode, mmap_mode=mmap_mode)
    now = _maps.identity(out._store)
    if version is not None and now is not None and tuple(now) != tuple(version):
        out.close()
        raise FileChangedError(
            path,
            "changed on disk since this MLArray was pickled (replaced or rewritten): its "
            "metadata travelled with the pickle and belongs to the version that was open; "
            "open the file again (in the sending process)",
        )
    with _meta_internal_write():
        out._set_meta(Meta.from_mapping(record))
    return out


def _unpickle_cframe(cframe: bytes, record: dict) -> MLArray:
    out = MLArray._bare(Meta.from_mapping(record))
    from mlarray.frame import inspect_frame

    store = blosc2.ndarray_from_cframe(cframe, copy=True)
    out._store = _direct.guard(store, inspect_frame(cframe))  # its uninitialised/DELTA chunks
    out._writable = True
    out._track_threads()
    return out


def _unpickle_memory(data: np.ndarray | None, record: dict) -> MLArray:
    out = MLArray._bare(Meta.from_mapping(record))
    out._store = data
    out._writable = True
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _maps.absolute(a) == _maps.absolute(b)


def _absolute(filepath: str | os.PathLike) -> Path:
    """``filepath`` checked (suffix) and made absolute now: a handle keeps naming the
    same file after an ``os.chdir`` (``..`` is kept, see :func:`mlarray._maps.absolute`)."""
    p = io.check_path(filepath, must_exist=False)
    return p if p.is_absolute() else Path(_maps.absolute(p))


def _maker(array: Any) -> tuple[Maker, tuple[int, ...], Any] | None:
    """A maker storing ``array`` (an ndarray, an MLArray or any array-like); None for None."""
    if array is None:
        return None
    if isinstance(array, MLArray):
        array = array._require()
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)

    def make(shape: tuple[int, ...], dtype: np.dtype, kw: dict[str, Any] | None) -> Any:
        if kw is None:
            return np.asarray(array)
        return blosc2.asarray(np.asarray(array, order="C"), **kw)

    return make, tuple(array.shape), array.dtype


def _full_maker(shape: Any, fill_value: Any, dtype: Any) -> tuple[Maker, Any, Any]:
    dtype = np.asarray(fill_value).dtype if dtype is None else dtype

    def make(shape: tuple[int, ...], dtype: np.dtype, kw: dict[str, Any] | None) -> Any:
        if kw is None:
            return np.full(shape, fill_value, dtype)
        return blosc2.full(shape, fill_value, dtype=dtype, **kw)

    return make, shape, dtype


def _empty_maker(shape: Any, dtype: Any) -> tuple[Maker, Any, Any]:
    def make(shape: tuple[int, ...], dtype: np.dtype, kw: dict[str, Any] | None) -> Any:
        return np.empty(shape, dtype) if kw is None else blosc2.empty(shape, dtype, **kw)

    return make, shape, dtype


def _sequence_maker(values: np.ndarray, shape: Any) -> tuple[Maker, Any, Any]:
    shape = values.shape if shape is None else _as_shape(shape)
    if int(np.prod(shape)) != values.size:
        raise ValueError(f"shape {shape} does not hold the {values.size} generated values")
    values = values.reshape(shape)  # C order, as blosc2.arange/linspace whatever their c_order
    return _maker(values)
