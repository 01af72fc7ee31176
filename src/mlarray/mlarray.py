"""The :class:`MLArray` class: an N-d medical image with its ``.mla`` metadata."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from mlarray import geometry, io, layout
from mlarray.errors import (
    InvalidModeError,
    InvalidPathError,
    MetaValidationError,
    MLArrayFormatError,
    NoArrayError,
    ReadOnlyError,
)
from mlarray.meta import Meta, MetaBlosc2, MetaStatistics
from mlarray.record import encode_record, record_from_meta

__all__ = ["MLArray"]

_OPEN_MODES = {"r", "a"}
_CREATE_MODES = {"w"}
_CREATE_MMAP_MODES = {"w+"}


def _as_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(n) for n in np.asarray(shape, dtype=np.int64).reshape(-1))


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
        Homogeneous affine; an alternative to spacing/origin/direction.
    meta : Meta or dict, optional
        Metadata (a dict is converted with :meth:`Meta.ensure`).
    axis_labels : list of str or AxisLabelEnum, optional
        One label per array axis; ``None`` means every axis is spatial.
    copy : MLArray, optional
        Another MLArray whose metadata overrides the metadata given here.
    patch_size : int, sequence or "default" or None
        Patch size hint per spatial axis for the chunk/block layout
        ("default" is 192). When not None, ``chunk_size``/``block_size`` are ignored.
    chunk_size, block_size : int or sequence, optional
        Explicit layout, used when ``patch_size`` is None.
    cparams, dparams : dict or blosc2.CParams / blosc2.DParams, optional
        Compression (default LZ4HC level 8) and decompression (default one
        thread) parameters.
    compressed : bool
        Keep the data Blosc2-compressed in memory (True) or as numpy (False).

    Notes
    -----
    The storage keywords (``patch_size``, ``chunk_size``, ``block_size``,
    ``cparams``, ``dparams``, ``compressed``) mean the same for every
    constructor (:meth:`asarray`, :meth:`zeros`, :meth:`ones`, :meth:`full`,
    :meth:`empty`, :meth:`arange`, :meth:`linspace`, the ``*_like`` variants,
    :meth:`create` and :meth:`compress`); they are resolved in one place,
    :func:`mlarray.layout.resolve_storage`.
    """

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
        self._store: Any = None
        self._file_store: Any = None
        self._path: Path | None = None
        self._writable = False
        self._mmap_mode: str | None = None
        self.meta = Meta.ensure(meta).copy() if meta is not None else Meta()
        if isinstance(array, (str, os.PathLike)):
            loaded = type(self).load(array, dparams=dparams, compressed=compressed)
            self._adopt(loaded)
        self._apply_geometry(spacing, origin, direction, affine, axis_labels)
        if copy is not None:
            if not isinstance(copy, MLArray):
                raise TypeError(f"copy must be an MLArray, got {type(copy).__name__}")
            self._copy_meta_from(copy.meta)
        if array is not None and not isinstance(array, (str, os.PathLike)):
            self._attach_data(
                array,
                layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
                compressed,
            )
        elif array is None:
            self.meta._has_array.has_array = False

    # ------------------------------------------------------------------ internals
    @property
    def meta(self) -> Meta:
        """The metadata; assigning a :class:`Meta` or a dict validates it against the array.

        Raises
        ------
        MetaValidationError
            On assignment, if the metadata does not fit the array (for
            example a spacing with the wrong number of entries).
        """
        return self._meta

    @meta.setter
    def meta(self, value: Meta | dict) -> None:
        meta = Meta.ensure(value)
        if self._store is not None:
            meta.spatial.shape = list(self._store.shape)
        self._meta = meta

    @classmethod
    def _bare(cls, meta: Meta) -> MLArray:
        """An instance holding ``meta`` and no array, without building default metadata."""
        out = cls.__new__(cls)
        out._store, out._path, out._writable, out._mmap_mode = None, None, False, None
        out._file_store = None
        out.meta = meta
        return out

    def _adopt(self, other: MLArray) -> None:
        self._store, self._path = other._store, other._path
        self._writable, self._mmap_mode = other._writable, other._mmap_mode
        self.meta = other.meta

    def _apply_geometry(self, spacing, origin, direction, affine, axis_labels) -> None:
        sp = self.meta.spatial
        if axis_labels is not None:
            sp.axis_labels = axis_labels
        if affine is not None:
            if spacing is not None or origin is not None or direction is not None:
                raise MetaValidationError(
                    "affine", "give either affine or spacing/origin/direction, not both"
                )
            self.affine = affine
        for name, value in (("spacing", spacing), ("origin", origin), ("direction", direction)):
            if value is not None:
                setattr(self, name, value)

    def _copy_meta_from(self, other: Meta) -> None:
        keep_blosc2, keep_has = self.meta.blosc2, self.meta._has_array
        self.meta.copy_from(other, overwrite=True)
        self.meta.blosc2, self.meta._has_array = keep_blosc2, keep_has
        self.meta.spatial.shape = None if self._store is None else list(self.shape)

    def _set_shape_meta(self, shape: tuple[int, ...] | None) -> None:
        self.meta._has_array.has_array = shape is not None
        self.meta.spatial.shape = None if shape is None else list(shape)

    def _attach_data(self, array: Any, request: layout.StorageRequest, compressed: bool) -> None:
        if isinstance(array, MLArray):
            array = array._require()
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):
            array = np.asarray(array)
        dtype = io.check_dtype(array.dtype)
        shape = tuple(int(n) for n in array.shape)
        self._set_shape_meta(shape)
        if compressed:
            opts = self._resolve(shape, dtype, request)
            self._store = blosc2.asarray(np.asarray(array, order="C"), **opts.blosc2_kwargs(dtype))
            self._record_storage(opts)
        else:
            self._store = np.asarray(array)
            self.meta.blosc2 = MetaBlosc2()
        self._path, self._writable, self._mmap_mode = None, True, None

    def _resolve(
        self, shape: tuple[int, ...], dtype: np.dtype, request: layout.StorageRequest
    ) -> layout.StorageOptions:
        return layout.resolve_storage(
            shape, dtype, self.meta.spatial.spatial_axis_mask, **request.as_kwargs()
        )

    def _record_storage(self, opts: layout.StorageOptions) -> None:
        store = self._store
        self.meta.blosc2 = MetaBlosc2(
            chunk_size=list(store.chunks),
            block_size=list(store.blocks),
            patch_size=None if opts.patch_size is None else list(opts.patch_size),
            cparams=opts.cparams,
            dparams=opts.dparams,
        )

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
        return layout.StorageRequest("default", None, None, b.cparams, b.dparams)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def _build(
        cls,
        shape: Any,
        dtype: Any,
        meta: Meta | dict | None,
        make: Callable[[tuple[int, ...], np.dtype, dict[str, Any] | None], Any],
        request: layout.StorageRequest,
        compressed: bool,
    ) -> MLArray:
        """The one funnel of every in-memory constructor.

        ``make(shape, dtype, b2kwargs)`` returns a Blosc2 NDArray when
        ``b2kwargs`` is a dict of Blosc2 storage keywords, else a numpy array.
        """
        out = cls(meta=meta)
        shape = _as_shape(shape)
        dtype = io.check_dtype(dtype)
        out._set_shape_meta(shape)
        if compressed:
            opts = out._resolve(shape, dtype, request)
            out._store = make(shape, dtype, opts.blosc2_kwargs(dtype))
            out._record_storage(opts)
        else:
            out._store = np.asarray(make(shape, dtype, None))
            out.meta.blosc2 = MetaBlosc2()
        out._writable = True
        return out

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
        """Convert a NumPy array into an in-memory Blosc2-backed MLArray.

        See :class:`MLArray` for the storage keywords.

        Raises
        ------
        TypeError
            If ``array`` is not array-like.
        MetaValidationError
            If ``meta`` does not fit the array, or its dtype cannot be stored.
        """
        if isinstance(array, MLArray):
            array = array.to_numpy()
        if not isinstance(array, np.ndarray):
            if isinstance(array, (str, bytes, os.PathLike)) or array is None:
                raise TypeError(f"asarray expects an array, got {type(array).__name__}")
            array = np.asarray(array)
        return cls(
            array,
            meta=meta,
            patch_size=patch_size,
            chunk_size=chunk_size,
            block_size=block_size,
            cparams=cparams,
            dparams=dparams,
            compressed=compressed,
        )

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
        """Create an in-memory MLArray filled with zeros (storage keywords as :class:`MLArray`)."""
        return cls.full(
            shape, 0, dtype, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
        )

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
        return cls.full(
            shape,
            1,
            np.float64 if dtype is None else dtype,
            meta,
            patch_size,
            chunk_size,
            block_size,
            cparams,
            dparams,
            compressed,
        )

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
        """Create an in-memory MLArray with uninitialized values."""

        def make(shape, dtype, kw):
            return np.empty(shape, dtype) if kw is None else blosc2.empty(shape, dtype, **kw)

        return cls._build(
            shape,
            dtype,
            meta,
            make,
            layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
            compressed,
        )

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
        dtype = np.asarray(fill_value).dtype if dtype is None else dtype

        def make(shape, dtype, kw):
            if kw is None:
                return np.full(shape, fill_value, dtype)
            return blosc2.full(shape, fill_value, dtype=dtype, **kw)

        return cls._build(
            shape,
            dtype,
            meta,
            make,
            layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
            compressed,
        )

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

        ``shape`` reshapes the 1-d sequence (its size must match);
        ``patch_size`` defaults to None here.

        Raises
        ------
        ValueError
            If ``shape`` does not hold as many elements as the sequence.
        """
        values = np.arange(start, stop, step) if stop is not None else np.arange(start)
        values = values.astype(dtype) if dtype is not None else values
        return cls._sequence(
            values,
            shape,
            c_order,
            meta,
            layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
            compressed,
        )

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

        ``num`` defaults to the size of ``shape``.

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
        return cls._sequence(
            values,
            shape,
            c_order,
            meta,
            layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
            compressed,
        )

    @classmethod
    def _sequence(cls, values, shape, c_order, meta, request, compressed) -> MLArray:
        shape = values.shape if shape is None else _as_shape(shape)
        if int(np.prod(shape)) != values.size:
            raise ValueError(f"shape {shape} does not hold the {values.size} generated values")
        values = values.reshape(shape, order="C" if c_order else "F")

        def make(shape, dtype, kw):
            return values if kw is None else blosc2.asarray(np.asarray(values, order="C"), **kw)

        return cls._build(shape, values.dtype, meta, make, request, compressed)

    @classmethod
    def _like_args(cls, x: Any, dtype: Any) -> tuple[tuple[int, ...], np.dtype]:
        if isinstance(x, MLArray):
            src = x._require()
        elif hasattr(x, "shape") and hasattr(x, "dtype"):
            src = x
        elif isinstance(x, (list, tuple)):
            src = np.asarray(x)
        else:
            raise TypeError(f"expected an MLArray or an array-like, got {type(x).__name__}")
        return tuple(src.shape), np.dtype(src.dtype if dtype is None else dtype)

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
        """Create an in-memory MLArray of zeros with the shape (and dtype) of ``x``."""
        shape, dt = cls._like_args(x, dtype)
        return cls.zeros(
            shape, dt, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
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
        """Create an in-memory MLArray of ones with the shape (and dtype) of ``x``."""
        shape, dt = cls._like_args(x, dtype)
        return cls.ones(
            shape, dt, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
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
        """Create an uninitialized in-memory MLArray with the shape (and dtype) of ``x``."""
        shape, dt = cls._like_args(x, dtype)
        return cls.empty(
            shape, dt, meta, patch_size, chunk_size, block_size, cparams, dparams, compressed
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
        """Create an in-memory MLArray filled with ``fill_value`` with the shape of ``x``."""
        shape, dt = cls._like_args(x, dtype)
        return cls.full(
            shape,
            fill_value,
            dt,
            meta,
            patch_size,
            chunk_size,
            block_size,
            cparams,
            dparams,
            compressed,
        )

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
            Blosc2 decompression parameters.
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
        store, meta = io.open_store(filepath, mmap_mode="r", dparams=dp)
        out = cls._bare(meta)
        if meta._has_array.has_array:
            if compressed:
                with io.os_errors(Path(filepath), "cannot read"), open(filepath, "rb") as fh:
                    frame = fh.read()
                # copy=True: a view over the immutable bytes aborts the process on write
                out._store = blosc2.ndarray_from_cframe(frame, copy=True)
            else:
                out._store = store[...]
        out._path = Path(filepath)
        out._writable = True
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
            Read-only, or read/write.
        mmap_mode : {"r", "r+", "c"} or None
            Memory-mapping mode; it overrides ``mode``: ``"r"`` read-only,
            ``"r+"`` writes go to the file, ``"c"`` copy-on-write (writes stay
            in memory). ``None`` uses plain file I/O in ``mode``.
        dparams : dict, optional
            Blosc2 decompression parameters.

        Raises
        ------
        InvalidPathError
            If the suffix is not ``.mla``.
        InvalidModeError
            (a RuntimeError) for an invalid ``mode`` or ``mmap_mode``.
        """
        if mode not in _OPEN_MODES:
            raise InvalidModeError(f"{filepath}: mode must be 'r' or 'a' to open, got {mode!r}")
        if mode == "a" and mmap_mode == "r":
            mmap_mode = "r+"
        dp = layout.normalize_dparams(dparams) if dparams is not None else None
        store, meta = io.open_store(filepath, mmap_mode=mmap_mode, writable=mode == "a", dparams=dp)
        out = cls._bare(meta)
        out._store = store if meta._has_array.has_array else None
        out._path = Path(filepath)
        out._mmap_mode = mmap_mode
        out._writable = mmap_mode in ("r+", "c") or (mmap_mode is None and mode == "a")
        out._file_store = store
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
        path = io.check_path(filepath, must_exist=False)
        if not path.parent.is_dir():
            raise InvalidPathError(path, f"folder {path.parent} does not exist")
        if path.is_dir():  # Blosc2's mode "w" would delete the folder and all it holds
            raise InvalidPathError(path, "is a directory, not an .mla file")
        out = cls(meta=meta)
        shape, dtype = _as_shape(shape), io.check_dtype(dtype)
        out._set_shape_meta(shape)
        opts = out._resolve(
            shape,
            dtype,
            layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
        )
        kw = opts.blosc2_kwargs(dtype)
        kw.update(urlpath=os.fspath(path), contiguous=True)
        if mmap_mode is not None:
            kw["mmap_mode"] = mmap_mode
        else:
            kw["mode"] = "w"
        with io.os_errors(path, "cannot create"):
            out._store = blosc2.zeros(shape, dtype, **kw)
        out._record_storage(opts)
        out._path, out._writable, out._mmap_mode = path, True, mmap_mode
        out._file_store = out._store
        out._flush_meta()
        return out

    def _flush_meta(self) -> None:
        fs = self._file_store
        if fs is not None and self._writable and self._mmap_mode != "c":
            fs.schunk.vlmeta[io.VLMETA_KEY] = encode_record(record_from_meta(self.meta))

    def save(self, filepath: str | os.PathLike) -> None:
        """Save to an ``.mla`` file, atomically (temporary file, then replace).

        The array keeps its chunk/block layout and codec. Saving to the file
        this array was opened from is safe.

        Raises
        ------
        InvalidPathError
            (a RuntimeError) if the path does not end with ``.mla``.
        """
        path = io.check_path(filepath, must_exist=False)
        req = self._storage_request()
        io.save_mla(path, self._store, self.meta, **req.as_kwargs())
        if self._path is not None and _same_file(path, self._path):
            self._reopen(path)
        else:
            self.meta = io.read_meta(path)

    def _reopen(self, path: Path) -> None:
        """After replacing our own file, point the store at the new file."""
        fs = self._file_store
        if (
            fs is None
            or self._store is None
            or not isinstance(self._store, blosc2.NDArray)
            or (self._store is not fs)
        ):
            self.meta = io.read_meta(path)
            return
        store, meta = io.open_store(path, mmap_mode=self._mmap_mode, writable=self._writable)
        self._store = self._file_store = store
        self.meta = meta

    def close(self) -> None:
        """Flush metadata (for writable files) and release the array.

        After closing, the instance holds no array.
        """
        self._flush_meta()
        self._store = None
        self._file_store = None

    def __reduce__(self) -> tuple:
        """Pickle support, e.g. for data-loader worker processes.

        An array opened from a file (modes ``r``, ``r+``, ``a``) pickles as its
        path and modes and is reopened lazily on unpickling, so sending it to a
        worker costs a few hundred bytes; in-memory data (and copy-on-write
        views, whose edits live only in memory) travel compressed.
        """
        record = self.meta.to_mapping()
        if (
            self._path is not None
            and self._store is not None
            and self._store is self._file_store
            and self._mmap_mode != "c"
        ):
            mode = "a" if self._writable and self._mmap_mode is None else "r"
            return (_unpickle_file, (str(self._path), mode, self._mmap_mode, record))
        store = self._store
        if isinstance(store, blosc2.NDArray):
            return (_unpickle_cframe, (store.to_cframe(), record))
        return (_unpickle_memory, (store, record))

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
        data = self.to_numpy()
        self._detach()
        self._attach_data(
            data,
            layout.StorageRequest(patch_size, chunk_size, block_size, cparams, dparams),
            compressed=True,
        )

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
        self.meta.blosc2 = MetaBlosc2()

    def _detach(self) -> None:
        self._file_store = None
        self._path, self._writable, self._mmap_mode = None, True, None

    def to_numpy(self) -> np.ndarray:
        """Return the data as a NumPy array (decompressing everything).

        Raises
        ------
        NoArrayError
            (a TypeError) if no array is loaded.
        """
        store = self._require()
        return store if isinstance(store, np.ndarray) else self[...]

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
        from mlarray.stats import compute_stats

        store = self._require()
        values = compute_stats(
            store, percentiles=percentiles, chunk_shape=getattr(store, "chunks", None)
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
    def __getitem__(self, key: Any) -> np.ndarray:
        """Read ``key`` as numpy would; only the chunks it touches are decompressed."""
        store = self._require()
        try:
            return np.asarray(store[key])
        except IndexError:
            _probe(tuple(store.shape))[key]  # raise numpy's own message
            raise
        except RuntimeError as exc:  # blosc2 reports corrupt chunks as RuntimeError
            raise MLArrayFormatError(
                self._path, f"cannot decompress the requested data, the file may be corrupt ({exc})"
            ) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        """Write ``value`` into ``key`` with numpy's indexing, broadcasting and casting.

        Basic keys (ints, slices, ``...``, ``None``) write straight into the
        touched chunks; integer-array and boolean keys read, update and write
        back the bounding box of the selection.

        Raises
        ------
        ReadOnlyError
            (a PermissionError) if the array was opened read-only.
        """
        store = self._require()
        if not self._writable:
            raise ReadOnlyError(
                f"{self._path}: opened read-only; use MLArray.open(path, mmap_mode='r+') to write"
            )
        if isinstance(store, np.ndarray):
            store[key] = value
            return
        shape = tuple(store.shape)
        selected = _probe(shape)[key].shape  # numpy's IndexError for a bad key
        values = np.empty(selected, dtype=store.dtype)
        values[...] = value  # numpy's broadcasting and casting rules (and errors)
        if _is_basic_key(key):
            store[key] = values
        elif values.size:
            _write_advanced(store, shape, key, values)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self.to_numpy()
        return data if dtype is None else data.astype(dtype, copy=False)

    def __len__(self) -> int:
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
        """The file this instance was opened from, loaded from or created at."""
        return self._path

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

    @property
    def spacing(self) -> list[float] | None:
        """Spacing per spatial axis (from the affine when stored in affine form)."""
        sp = self.meta.spatial
        if sp.affine is not None:
            return geometry.scale(np.asarray(sp.affine)).tolist()
        return None if sp.spacing is None else list(sp.spacing)

    @spacing.setter
    def spacing(self, value: Any) -> None:
        self._to_sod_form()
        self.meta.spatial.spacing = value

    @property
    def origin(self) -> list[float] | None:
        """Origin per spatial axis (from the affine when stored in affine form)."""
        sp = self.meta.spatial
        if sp.affine is not None:
            return geometry.translation(np.asarray(sp.affine)).tolist()
        return None if sp.origin is None else list(sp.origin)

    @origin.setter
    def origin(self, value: Any) -> None:
        self._to_sod_form()
        self.meta.spatial.origin = value

    @property
    def direction(self) -> list[list[float]] | None:
        """Direction cosines (n x n, column j = world direction of spatial axis j)."""
        sp = self.meta.spatial
        if sp.affine is not None:
            return geometry.rotation(np.asarray(sp.affine)).tolist()
        return None if sp.direction is None else [list(r) for r in sp.direction]

    @direction.setter
    def direction(self, value: Any) -> None:
        self._to_sod_form()
        self.meta.spatial.direction = value

    def _to_sod_form(self) -> None:
        """Convert a stored affine to spacing/origin/direction before editing one of them."""
        sp = self.meta.spatial
        if sp.affine is None:
            return
        spacing, origin, direction = geometry.spacing_origin_direction(np.asarray(sp.affine))
        sp.affine = None
        sp.spacing, sp.origin, sp.direction = spacing.tolist(), origin.tolist(), direction.tolist()

    @property
    def affine(self) -> np.ndarray | None:
        """Homogeneous affine ((n+1) x (n+1) over the spatial axes), or None without an array."""
        if self._store is None:
            return None
        sp = self.meta.spatial
        if sp.affine is not None:
            return np.asarray(sp.affine, dtype=np.float64)
        return geometry.compose_affine(
            sp.spacing, sp.origin, sp.direction, ndim=self._geometry_ndim()
        )

    @affine.setter
    def affine(self, value: Any) -> None:
        sp = self.meta.spatial
        if value is None:
            sp.affine = None
            return
        a = np.asarray(value, dtype=np.float64)
        geometry.decompose_affine(a)  # validates: square, finite, invertible
        sp.spacing = sp.origin = sp.direction = None
        sp.affine = a.tolist()

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


def _probe(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-memory numpy array of ``shape``: index it to learn what a key selects."""
    return np.broadcast_to(np.empty((), dtype=np.bool_), shape)


def _is_basic_key(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(
        k is None
        or k is Ellipsis
        or isinstance(k, slice)
        or (isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)))
        for k in items
    )


def _write_advanced(store: Any, shape: tuple[int, ...], key: Any, values: np.ndarray) -> None:
    """Write an integer-array/boolean selection through its bounding box."""
    if not shape:
        region = np.array(store[()])
        region[key] = values
        store[()] = region
        return
    ndim = len(shape)
    coords = [
        np.broadcast_to(np.arange(n).reshape([-1 if j == i else 1 for j in range(ndim)]), shape)[
            key
        ]
        for i, n in enumerate(shape)
    ]
    lo = [int(c.min()) for c in coords]
    box = tuple(slice(low, int(c.max()) + 1) for low, c in zip(lo, coords, strict=True))
    region = np.array(store[box])
    region[tuple(c - low for c, low in zip(coords, lo, strict=True))] = values
    store[box] = region


def _unpickle_file(path: str, mode: str, mmap_mode: str | None, record: dict) -> MLArray:
    out = MLArray.open(path, mode=mode, mmap_mode=mmap_mode)
    out.meta = Meta.from_mapping(record)
    return out


def _unpickle_cframe(cframe: bytes, record: dict) -> MLArray:
    out = MLArray._bare(Meta.from_mapping(record))
    out._store = blosc2.ndarray_from_cframe(cframe, copy=True)
    out._writable = True
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
        return os.path.abspath(a) == os.path.abspath(b)
