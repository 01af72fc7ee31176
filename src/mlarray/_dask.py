"""``MLArray.to_dask()``: a lazy dask array over an MLArray, one dask chunk per file chunk."""

from __future__ import annotations

import pickle
import threading
import uuid
from typing import Any

import numpy as np

from mlarray.errors import NoArrayError

__all__ = ["to_dask"]


class _Reader:
    """Picklable, thread-safe ``__getitem__`` over an MLArray for dask.

    It carries the MLArray's own pickle (for an opened file: its path and
    modes, a few hundred bytes) and unpickles one copy per thread, so every
    worker thread reads through its own Blosc2 handle and nothing is read
    before dask asks for a block.
    """

    def __init__(
        self,
        payload: bytes,
        shape: tuple[int, ...],
        dtype: np.dtype,
    ):
        self._payload = payload
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)
        self._local = threading.local()

    def _array(self) -> Any:
        arr = getattr(self._local, "array", None)
        if arr is None:
            from mlarray.errors import FileChangedError

            try:  # a file changed since to_dask(): the unpickling refuses it
                arr = pickle.loads(self._payload)
            except FileChangedError as exc:
                raise FileChangedError(
                    exc.path,
                    "changed on disk since to_dask() was called (replaced or rewritten): "
                    "its blocks would mix two versions; call to_dask() again",
                ) from None
            self._local.array = arr
        return arr

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array()[key])

    def __reduce__(self) -> tuple:
        return (_Reader, (self._payload, self.shape, self.dtype))


def to_dask(mlarray: Any, chunks: Any = None) -> Any:
    """Return a lazy ``dask.array.Array`` reading ``mlarray`` block by block.

    Parameters
    ----------
    mlarray : MLArray
        An opened (memory-mapped) or in-memory MLArray.
    chunks : optional
        Dask chunks; by default the file's Blosc2 chunk shape, so every dask
        block decompresses exactly one stored chunk.

    Returns
    -------
    dask.array.Array
    """
    try:
        import dask.array as da
    except ImportError:
        raise ImportError(
            "MLArray.to_dask needs dask; install the dask extra "
            '(pip install "napari-mlarray[dask]")'
        ) from None
    store = mlarray._store
    if store is None:
        raise NoArrayError("the MLArray holds no array (metadata only)")
    shape = tuple(int(n) for n in store.shape)
    dtype = np.dtype(store.dtype)
    if chunks is None:
        chunks = tuple(getattr(store, "chunks", None) or shape)
    payload = pickle.dumps(mlarray, protocol=pickle.HIGHEST_PROTOCOL)
    reader = _Reader(payload, shape, dtype)
    name = f"mlarray-{uuid.uuid4().hex}"
    return da.from_array(
        reader,
        chunks=chunks,
        name=name,
        lock=False,
        asarray=True,
        fancy=False,
        meta=np.empty((0,) * len(shape), dtype=dtype),
    )
