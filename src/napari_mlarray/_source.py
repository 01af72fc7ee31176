"""The array behind an opened image layer: planes without python-blosc2, the rest through
``MLArray``.

napari's first frame needs the file's metadata and the chunks under one plane;
importing python-blosc2 alone takes several times as long as reading those.
:class:`FileSource` reads through :mod:`mlarray._cstore` (the wheel's C library
via ctypes, the chunks verified against their checksums first), which serves
every basic key: planes from the block-layer cache while scrolling, sub-volumes
and the whole volume for the 3D view. Only what needs more than reading (other
kinds of keys, any attribute of :class:`mlarray.MLArray` this class does not
have) opens the file as an ``MLArray`` (:meth:`FileSource.full`), once, and hands
it over; so does saving the layer, whose compressed chunks are then copied as
they are.

Once the path names another file (replaced by a rename, as mlarray and Blosc2
save, or deleted), the version on screen stays readable through its mapping, but
no ``MLArray`` of it can be opened by path any more: attributes of ``MLArray``
then raise :class:`~mlarray.errors.FileChangedError` (nothing silently switches
to the new file), while saving the layer still works, streaming the version on
screen through :meth:`FileSource.__getitem__` (the user's only copy of it may be
the one in the viewer). A file rewritten in place cannot be read any more, except
the planes of block layers decoded before (the version that was opened), as
``MLArray``'s chunk cache serves them.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

__all__ = ["FileSource", "open_source"]


class FileSource:
    """A read-only ``.mla`` array for a viewer layer; see the module docstring.

    Parameters
    ----------
    path : str
        The file.
    store : mlarray._cstore.CStore
        Its array, opened by :func:`mlarray._cstore.open_cstore`.
    meta : mlarray.Meta
        Its metadata.
    nthreads : int
        Threads for decoding (also given to the ``MLArray`` opened later).
    """

    def __init__(self, path: str, store: Any, meta: Any, nthreads: int) -> None:
        from mlarray._read import ChunkCache

        self.path = path
        self.meta = meta
        self.shape = store.shape
        self.dtype = store.dtype
        self.ndim = store.ndim
        self.chunks = store.chunks
        self.blocks = store.blocks
        self._cstore = store
        self._nthreads = nthreads
        #: decoded block layers under the planes shown (as ``MLArray.set_chunk_cache``)
        self._chunk_cache = ChunkCache()
        self._full: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileSource({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __len__(self) -> int:
        return self.shape[0]

    def __copy__(self) -> FileSource:
        return self

    def __deepcopy__(self, memo: dict) -> FileSource:
        # read-only: a copy shares it, mapping and decoded planes included (napari's
        # Duplicate Layer deep-copies the layer's data; a LazyView copies its own edits)
        return self

    def __reduce__(self) -> tuple:
        """Pickle support: the path, reopened on unpickling (its ctypes handles into the
        C library cannot travel); :class:`~mlarray.errors.FileChangedError` there if the
        file is no longer the version this source reads."""
        from mlarray import _maps

        where = _maps.absolute(self.path)
        return (_unpickle_source, (where, self._nthreads, _maps.identity(self._cstore)))

    def _replaced(self) -> bool:
        """Whether the path names another file than the one this source maps (or none)."""
        from mlarray import _maps

        try:
            now = _maps.version_of(os.stat(self.path))
        except OSError:
            return True
        return now[:2] != self._cstore.version[:2]  # a chmod or a touch is no change

    def full(self) -> Any:
        """The file opened as an :class:`mlarray.MLArray` (imports python-blosc2 once)."""
        with self._lock:
            if self._full is None:
                from mlarray import MLArray, _maps
                from mlarray.errors import FileChangedError, MLArrayFormatError

                if self._replaced():  # MLArray.open would show another file
                    raise FileChangedError(
                        self.path, "changed on disk since it was opened in the viewer; reopen it"
                    )
                _maps.check(self._cstore)  # rewritten in place (FileChangedError)
                arr = MLArray.open(self.path, dparams={"nthreads": self._nthreads})
                if tuple(arr.shape) != self.shape or np.dtype(arr.dtype) != self.dtype:
                    raise MLArrayFormatError(self.path, "the file changed since it was opened")
                self._full = arr
            return self._full

    def __getitem__(self, key: Any) -> np.ndarray:
        from mlarray import _cstore

        out = _cstore.read(self._cstore, key, self._chunk_cache)
        return self.full()[key] if out is None else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getattr__(self, name: str) -> Any:
        # only called for names this class lacks: those of MLArray (affine, _store...)
        if name.startswith("__") or name in ("_full", "_lock", "_cstore"):
            raise AttributeError(name)
        if name.startswith("_mlarray_"):
            # mlarray's hooks of a store (file watch, checksums, prefetch): those of the
            # file version this source decodes
            return getattr(self._cstore, name)
        if name == "_store" and self._full is None and self._replaced():
            # mlarray.io.save_mla copies an MLArray's chunks through its store; without
            # one it reads this array-like chunk by chunk: the version on screen
            from mlarray import _maps

            _maps.check(self._cstore)  # unless it was rewritten in place
            raise AttributeError(name)
        return getattr(self.full(), name)


def _unpickle_source(path: str, nthreads: int, version: tuple | None) -> Any:
    """The pickled :class:`FileSource` of ``path`` reopened: another ``FileSource``, or an
    ``MLArray`` where the C library cannot read it."""
    from mlarray import MLArray, _maps
    from mlarray.errors import FileChangedError

    opened = open_source(path, nthreads)
    if opened is not None and opened[0] is not None:
        out, store = opened[0], opened[0]._cstore
    else:
        out = MLArray.open(path, dparams={"nthreads": nthreads})
        store = out._store
    now = _maps.identity(store)
    if version is not None and now is not None and tuple(now) != tuple(version):
        raise FileChangedError(
            path,
            "changed on disk since this layer's data was pickled (replaced or rewritten); "
            "open the file again",
        )
    return out


def open_source(path: str, nthreads: int) -> tuple[FileSource | None, Any] | None:
    """``path`` opened for the reader without python-blosc2: ``(source, meta)``, with
    ``source`` None for a file without an array (boxes only); None when
    :func:`mlarray._cstore.open_cstore` cannot open it (the caller uses ``MLArray.open``)."""
    from mlarray import _cstore

    opened = _cstore.open_cstore(path, nthreads)
    if opened is None:
        return None
    store, meta = opened
    if not meta._has_array.has_array:
        return None, meta
    return FileSource(path, store, meta, nthreads), meta
