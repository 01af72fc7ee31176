"""Reading and writing ``.mla`` containers on disk.

* :func:`open_store` checks a path and opens its Blosc2 frame safely.
* :func:`read_meta` reads only the metadata record.
* :func:`save_mla` streams any array-like into a new file chunk by chunk and
  atomically replaces the destination, so a failed save never destroys the
  file that was there, and saving over the file the data came from works.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from mlarray.errors import (
    InvalidModeError,
    InvalidPathError,
    MetaValidationError,
    MLArrayError,
    MLArrayFileNotFoundError,
    MLArrayFormatError,
    MLArrayIOError,
)
from mlarray.layout import StorageOptions, normalize_dparams, resolve_storage
from mlarray.meta import Meta, MetaBlosc2, _meta_internal_write
from mlarray.record import decode_record, encode_record, meta_from_record, record_from_meta

__all__ = [
    "FRAME_MAGIC",
    "check_dtype",
    "check_path",
    "iter_chunk_slices",
    "open_store",
    "os_errors",
    "read_meta",
    "save_mla",
]

FRAME_MAGIC = b"\x9e\xa8b2frame\x00"
SUFFIX = ".mla"
VLMETA_KEY = "mlarray"

Progress = Callable[[int, int], Any]


def check_path(path: str | os.PathLike, *, must_exist: bool) -> Path:
    """Return ``path`` as a Path after checking its suffix (and existence when asked)."""
    try:
        p = Path(os.fspath(path))
    except TypeError:
        raise InvalidPathError(None, f"expected a file path, got {type(path).__name__}") from None
    if p.suffix.lower() != SUFFIX:
        raise InvalidPathError(p, f"an MLArray file must end with '{SUFFIX}'")
    if must_exist:
        if p.is_dir():
            raise InvalidPathError(p, "is a directory, not an .mla file")
        if not p.exists():
            raise MLArrayFileNotFoundError(p)
    return p


@contextlib.contextmanager
def os_errors(path: Path, doing: str) -> Iterator[None]:
    """Turn an OSError inside the block into our error type, naming ``path``.

    A missing file becomes :class:`MLArrayFileNotFoundError` (it may vanish
    between a check and its use), anything else :class:`MLArrayIOError`.
    """
    try:
        yield
    except MLArrayError:
        raise
    except FileNotFoundError:
        raise MLArrayFileNotFoundError(path) from None
    except OSError as exc:
        raise MLArrayIOError(path, f"{doing}: {exc.strerror or exc}", exc.errno) from exc


def check_dtype(dtype: Any, where: Any = None) -> np.dtype:
    """Return ``np.dtype(dtype)``; refuse dtypes an ``.mla`` file cannot hold."""
    dt = np.dtype(dtype)
    if dt.hasobject or dt.kind in "OUSVMm" or dt.fields is not None:
        raise MetaValidationError(
            "dtype",
            f"{dt} cannot be stored in an .mla file (use a numeric or bool dtype)"
            + (f" [{where}]" if where else ""),
        )
    return dt


_OPEN_MMAP_MODES = {"r", "r+", "c", None}


def open_store(
    path: str | os.PathLike,
    *,
    mmap_mode: str | None = "r",
    writable: bool = False,
    dparams: dict | None = None,
) -> tuple[blosc2.NDArray, Meta]:
    """Open an existing ``.mla`` file; return its Blosc2 NDArray and its :class:`Meta`.

    Parameters
    ----------
    path : str or PathLike
        An existing ``.mla`` file.
    mmap_mode : {"r", "r+", "c", None}
        Memory-map the file (``None`` uses plain file I/O).
    writable : bool
        With ``mmap_mode=None``, open for appending/modifying (mode ``"a"``).
    dparams : dict, optional
        Blosc2 decompression parameters.
    """
    if mmap_mode not in _OPEN_MMAP_MODES:  # arguments first, then the file system
        raise InvalidModeError(
            f"{path}: mmap_mode must be 'r', 'r+', 'c' or None to open a file, got {mmap_mode!r}"
        )
    p = check_path(path, must_exist=True)
    with os_errors(p, "cannot read"), open(p, "rb") as fh:
        head = fh.read(64)
    if not head.startswith(FRAME_MAGIC):
        raise MLArrayFormatError(
            p, "not an .mla file (it does not start with a Blosc2 frame header)"
        )
    kwargs: dict[str, Any] = {"deserialize": "safe"}
    if mmap_mode is not None:
        kwargs["mmap_mode"] = mmap_mode
    else:
        kwargs["mode"] = "a" if writable else "r"
    if dparams:
        kwargs["dparams"] = dparams
    try:
        store = blosc2.open(os.fspath(p), **kwargs)
    except MLArrayError:
        raise
    except Exception as exc:
        raise MLArrayFormatError(
            p, f"cannot open the Blosc2 frame ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(store, blosc2.NDArray):
        raise MLArrayFormatError(p, f"holds a {type(store).__name__}, not a b2nd NDArray")
    meta = _meta_of(store, p)
    if not dparams and meta.blosc2.dparams:
        # Decompress as the writer asked (the default is one thread: the nnU-Net case of
        # one reading process per core). Unusable stored values are simply not applied.
        with contextlib.suppress(MLArrayError, TypeError, ValueError):
            store.schunk.dparams = blosc2.DParams(**normalize_dparams(meta.blosc2.dparams))
    return store, meta


def _meta_of(store: blosc2.NDArray, path: Any) -> Meta:
    try:
        vlmeta = store.schunk.vlmeta
        raw = vlmeta.get(VLMETA_KEY, None)
    except Exception as exc:
        raise MLArrayFormatError(path, f"cannot read the metadata layers ({exc})") from None
    meta = Meta() if raw is None else meta_from_record(decode_record(raw, path), path)
    empty_store = store.shape == (0,)
    has_array = (not empty_store) if raw is None else meta._has_array.has_array
    if has_array and empty_store and raw is not None and meta.spatial.shape not in (None, [0]):
        raise MLArrayFormatError(
            path, "record says the file holds an array, but the array is empty"
        )
    try:
        with _meta_internal_write():
            meta._has_array.has_array = bool(has_array)
            meta.spatial.shape = list(store.shape) if has_array else None
    except MetaValidationError as exc:
        raise MLArrayFormatError(path, f"metadata does not fit the stored array: {exc}") from None
    return meta


def read_meta(path: str | os.PathLike) -> Meta:
    """Read only the metadata of an ``.mla`` file (no array data is decompressed)."""
    return open_store(path, mmap_mode="r")[1]


def iter_chunk_slices(
    shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Iterator[tuple[slice, ...]]:
    """Yield the slices of a regular chunk grid over ``shape``, in C order."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape, strict=True))


def _temp_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.mla", dir=target.parent)
    os.close(fd)
    return Path(name)


def _fsync_path(p: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(p, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _source_array(data: Any) -> Any:
    """Unwrap an MLArray to its store; leave other array-likes alone."""
    store = getattr(data, "_store", None)
    return data if store is None else store


def _prepare_meta(
    meta: Any, shape: tuple[int, ...] | None, dtype: np.dtype | None, path: Path
) -> Meta:
    meta = Meta.ensure(meta).copy()
    try:
        with _meta_internal_write():
            meta._has_array.has_array = shape is not None
            meta.spatial.shape = None if shape is None else list(shape)
    except MetaValidationError as exc:
        raise MetaValidationError(exc.field, f"{exc} (saving {path})") from None
    boxes = meta.bbox.bboxes
    if shape is not None and boxes and len(boxes[0]) != len(shape):
        # Boxes are [min, max] per array axis; the reference package would read them
        # back, but a viewer or a training pipeline would index the wrong axes.
        raise MetaValidationError(
            "bbox.bboxes",
            f"boxes have {len(boxes[0])} axes but the array has {len(shape)} (saving {path})",
        )
    return meta


def save_mla(
    path: str | os.PathLike,
    data: Any,
    meta: Meta | dict | None = None,
    *,
    patch_size: Any = "default",
    chunk_size: Any = None,
    block_size: Any = None,
    cparams: Any = None,
    dparams: Any = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``data`` and ``meta`` to an ``.mla`` file, streaming and atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination; must end with ``.mla``. It may be the very file ``data``
        was opened from.
    data : array-like or None
        ``None`` writes a metadata-only file. Otherwise anything with
        ``shape``, ``dtype`` and ``__getitem__`` (numpy array, Blosc2
        NDArray, :class:`~mlarray.mlarray.MLArray`, a lazy view). It is read
        one chunk at a time; the whole volume is never held in memory unless
        it already is.
    meta : Meta or mapping, optional
        Metadata; ``spatial.shape``, ``_has_array`` and ``blosc2`` are filled
        in from ``data`` and the storage options.
    patch_size, chunk_size, block_size, cparams, dparams
        Storage options, resolved by :func:`mlarray.layout.resolve_storage`.
    progress : callable, optional
        Called as ``progress(done, total)`` after each chunk.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    target = check_path(path, must_exist=False)
    if target.is_symlink():  # write through the link, as numpy and nibabel do
        target = Path(os.path.realpath(target))
    if not target.parent.is_dir():
        raise MLArrayFileNotFoundError(target.parent, "the folder to save into does not exist")
    if target.is_dir():
        raise InvalidPathError(target, "is a directory")
    src = None if data is None else _source_array(data)
    shape = None if src is None else tuple(int(n) for n in src.shape)
    dtype = None if src is None else check_dtype(src.dtype, target)
    meta = _prepare_meta(meta, shape, dtype, target)

    if src is None:
        opts = None
        blosc2_part = MetaBlosc2()
    else:
        opts = resolve_storage(
            shape,
            dtype,
            meta.spatial.spatial_axis_mask,
            patch_size=patch_size,
            chunk_size=chunk_size,
            block_size=block_size,
            cparams=cparams,
            dparams=dparams,
        )
        patch = None if opts.patch_size is None else list(opts.patch_size)
        kept = meta.blosc2
        if (
            patch is None
            and kept.patch_size is not None
            and (
                opts.chunk_size is not None
                and kept.chunk_size == list(opts.chunk_size)
                and kept.block_size == list(opts.block_size or ())
            )
        ):
            patch = kept.patch_size  # the layout that patch size produced is kept as it was
        blosc2_part = MetaBlosc2(
            chunk_size=None if opts.chunk_size is None else list(opts.chunk_size),
            block_size=None if opts.block_size is None else list(opts.block_size),
            patch_size=patch,
            cparams=opts.cparams,
            dparams=opts.dparams,
        )
    with _meta_internal_write():
        meta.blosc2 = blosc2_part
    record = encode_record(record_from_meta(meta))

    with os_errors(target, "cannot create a temporary file next to it"):
        tmp = _temp_path(target)
    try:
        with os_errors(target, "cannot write"):
            _write_frame(tmp, src, shape, dtype, opts, record, progress)
        _fsync_path(tmp)
        if target.exists():
            with contextlib.suppress(OSError):
                os.chmod(tmp, target.stat().st_mode & 0o7777)
        else:
            with contextlib.suppress(OSError):
                os.chmod(tmp, 0o666 & ~_umask())
        with os_errors(target, "cannot replace"):
            os.replace(tmp, target)
        _fsync_path(target.parent, directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


_ENCODING_FIELDS = (
    "codec",
    "codec_meta",
    "clevel",
    "use_dict",
    "typesize",
    "filters",
    "filters_meta",
)


def _same_encoding(src: Any, dtype: np.dtype, opts: StorageOptions, cparams: Any) -> bool:
    """Whether ``src`` is a Blosc2 array whose chunks can be copied verbatim."""
    if not isinstance(src, blosc2.NDArray) or src.dtype != dtype or not src.size:
        return False
    if opts.chunk_size is None or opts.block_size is None:
        return False
    if tuple(src.chunks) != tuple(opts.chunk_size) or tuple(src.blocks) != tuple(opts.block_size):
        return False
    have = src.schunk.cparams
    return all(
        _encoding_value(getattr(have, f)) == _encoding_value(getattr(cparams, f))
        for f in _ENCODING_FIELDS
    )


_MAX_FILTERS = 6  # Blosc2's filter pipeline; shorter lists are padded with NOFILTER / 0


def _encoding_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        values = [_encoding_value(x) for x in v]
        return values + [0] * (_MAX_FILTERS - len(values))
    return getattr(v, "value", v)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_frame(
    tmp: Path,
    src: Any,
    shape: tuple[int, ...] | None,
    dtype: np.dtype | None,
    opts: StorageOptions | None,
    record: bytes,
    progress: Progress | None,
) -> None:
    urlpath = os.fspath(tmp)
    if src is None:
        dst = blosc2.empty((0,), dtype=np.float64, urlpath=urlpath, contiguous=True, mode="w")
        dst.schunk.vlmeta[VLMETA_KEY] = record
        if progress is not None:
            progress(1, 1)
        del dst
        return
    kwargs = opts.blosc2_kwargs(dtype)
    kwargs.update(urlpath=urlpath, contiguous=True, mode="w")
    if isinstance(src, np.ndarray):
        dst = blosc2.asarray(np.asarray(src, order="C"), **kwargs)
        if progress is not None:
            progress(1, 1)
    elif _same_encoding(src, dtype, opts, kwargs["cparams"]):
        # Same layout and codec: copy the compressed chunks as they are (no recompression).
        dst = blosc2.empty(shape, dtype=dtype, **kwargs)
        n = src.schunk.nchunks
        for i in range(n):
            dst.schunk.update_chunk(i, src.schunk.get_chunk(i))
            if progress is not None:
                progress(i + 1, n)
    else:
        dst = blosc2.empty(shape, dtype=dtype, **kwargs)
        slices = list(iter_chunk_slices(shape, dst.chunks)) if dst.size else []
        for i, slc in enumerate(slices, 1):
            # C order and the stored dtype: lazy views (transposes, casts) may return
            # strided blocks, which Blosc2 refuses.
            block = np.asarray(src[slc]).astype(dtype, order="C", copy=False)
            if block.shape != tuple(s.stop - s.start for s in slc):
                raise MLArrayFormatError(
                    None, f"source returned shape {block.shape} for slice {slc}; cannot save"
                )
            dst[slc] = block
            if progress is not None:
                progress(i, len(slices))
    dst.schunk.vlmeta[VLMETA_KEY] = record
    del dst
