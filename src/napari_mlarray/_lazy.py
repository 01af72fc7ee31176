"""A tiny lazy array view: fix some axes, transpose, flip, add unit axes, cast.

Nothing is read when a view is built. Indexing with slices/ints reads only the
needed region of the source and returns a C-contiguous numpy array; indexing that only fixes axes
(ints and full slices, as napari's ``channel_axis`` split does) returns another
lazy view, like dask. Integer-array (fancy) indexing reads the box the indices
span.

Writing is copy-on-write: the first assignment reads the view into one writable
numpy array (at most :data:`MAX_EAGER_LABELS_BYTES`), which every later read and
write uses; the source is never written. napari paints into a Labels layer's
data this way, e.g. after "Convert to Labels" on an integer image opened lazily.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["MAX_EAGER_LABELS_BYTES", "LazyView"]

#: Largest view (bytes) read into one writable numpy array: a label map opened by the
#: reader, or a lazy view on its first write. Larger ones stay read-only on demand.
MAX_EAGER_LABELS_BYTES = 1 << 30


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _is_array_index(k) -> bool:
    return isinstance(k, np.ndarray | list)


def _full_slice(k) -> bool:
    return isinstance(k, slice) and k.start is None and k.stop is None and k.step is None


def _normalize_key(key, ndim: int, arrays: bool = False) -> tuple:
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices: {len(key)} for a {ndim}-d view")
    key = key + (slice(None),) * (ndim - len(key))
    for k in key:
        if not (isinstance(k, slice | int | np.integer) or (arrays and _is_array_index(k))):
            raise TypeError(
                "LazyView supports ints, slices, Ellipsis and 1-d integer arrays, "
                f"not {type(k).__name__}"
            )
    return key


class LazyView:
    """Lazy ``cast(expand(flip(transpose(source[fixed]))))`` of an array-like.

    Parameters
    ----------
    source : array-like
        Anything with ``shape``, ``dtype``, ``ndim`` and ``__getitem__``
        (an ``MLArray``, ``blosc2.NDArray``, numpy array, another view).
    perm : sequence of int, optional
        View axis ``k`` is remaining source axis ``perm[k]`` (after ``fixed``).
    flip : sequence of bool, optional
        Per permuted axis: reverse it.
    dtype : dtype-like, optional
        Cast each read to this dtype.
    fixed : dict of int to int, optional
        Source axes fixed to one index (removed from the view).
    insert : sequence of int, optional
        Positions (in the final view) of new length-1 axes.
    path : str, optional
        File the data comes from (named in errors); a view of another view
        inherits it.
    """

    def __init__(
        self, source, *, perm=None, flip=None, dtype=None, fixed=None, insert=(), path=None
    ):
        self.source = source
        self.path = getattr(source, "path", None) if path is None else os.fspath(path)
        self._written: np.ndarray | None = None  # the copy, once written to
        self.fixed = {int(a) % source.ndim: int(i) for a, i in (fixed or {}).items()}
        for a, i in self.fixed.items():
            if not -source.shape[a] <= i < source.shape[a]:
                raise IndexError(f"index {i} out of range for axis {a} of size {source.shape[a]}")
            self.fixed[a] = i % source.shape[a]
        self._kept = [a for a in range(source.ndim) if a not in self.fixed]
        n = len(self._kept)
        self.perm = tuple(range(n)) if perm is None else tuple(int(p) for p in perm)
        if sorted(self.perm) != list(range(n)):
            raise ValueError(f"perm {self.perm} is not a permutation of {n} axes")
        self.flip = (False,) * n if flip is None else tuple(bool(f) for f in flip)
        if len(self.flip) != n:
            raise ValueError(f"flip needs {n} entries, got {len(self.flip)}")
        self.insert = tuple(sorted(int(i) for i in insert))
        self.dtype = np.dtype(source.dtype if dtype is None else dtype)
        inner = [source.shape[self._kept[p]] for p in self.perm]
        shape = list(inner)
        for i in self.insert:
            shape.insert(i, 1)
        self.shape = tuple(int(s) for s in shape)
        # view axis -> index into the permuted axes, or None for an inserted axis
        it = iter(range(n))
        self._axis_of = [None if k in self.insert else next(it) for k in range(len(shape))]

    @property
    def ndim(self) -> int:
        """Number of view axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the view once read."""
        return self.size * self.dtype.itemsize

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Chunk shape of the source in view order (``None`` if the source has none)."""
        src = getattr(self.source, "chunks", None)
        if src is None or len(src) != self.source.ndim or not all(isinstance(c, int) for c in src):
            return None
        out = []
        for k in range(self.ndim):
            j = self._axis_of[k]
            out.append(1 if j is None else int(src[self._kept[self.perm[j]]]))
        return tuple(out)

    def _is_plain_transpose(self) -> bool:
        return self._is_reordering() and not any(self.flip)

    def _is_reordering(self) -> bool:
        """Whether the view only transposes and reverses axes of its source."""
        return (
            self._written is None
            and not self.fixed
            and not self.insert
            and (self.dtype == np.dtype(self.source.dtype))
        )

    def simplified(self):
        """The same data with stacked transposes (and reversals) merged, or the source
        itself for an identity.

        Saving an unchanged layer then hands the writer the opened file's own
        array, whose compressed chunks can be copied as they are. A view that
        was written to is its numpy copy; a view of one reads that copy.
        """
        if self._written is not None:
            return self._written
        view = self
        if isinstance(view.source, LazyView) and view.source._written is not None:
            view = LazyView(
                view.source._written,
                perm=view.perm,
                flip=view.flip,
                dtype=view.dtype,
                fixed=view.fixed,
                insert=view.insert,
            )
        while (
            isinstance(view.source, LazyView)
            and view._is_reordering()
            and view.source._is_reordering()
        ):
            inner = view.source
            view = LazyView(
                inner.source,
                perm=[inner.perm[p] for p in view.perm],
                flip=[inner.flip[p] != f for p, f in zip(view.perm, view.flip, strict=True)],
            )
        if view._is_plain_transpose() and view.perm == tuple(range(len(view.perm))):
            return view.source
        return view

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        src = type(self.source).__name__
        return f"LazyView(shape={self.shape}, dtype={self.dtype}, source={src})"

    def __array__(self, dtype=None, copy=None):
        if self._written is not None:
            out = np.array(self._written, copy=True) if copy else self._written
        else:
            out = self[(slice(None),) * self.ndim] if self.ndim else self._read(())
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        """The view cast to ``dtype`` as numpy's ``astype`` casts, read lazily.

        napari's Convert to Labels (``data.astype(int)`` for a float image) and
        Convert datatype of a Labels layer call this. Nothing is read: the result is
        another view casting each read (a view already written to casts its numpy
        copy instead, as numpy does). ``order`` and ``subok`` are accepted for
        numpy's signature; reads are C-contiguous numpy arrays.

        Raises
        ------
        TypeError
            When ``casting`` does not allow the cast (as numpy).
        """
        dtype = np.dtype(dtype)
        if self._written is not None:
            return self._written.astype(dtype, order=order, casting=casting, copy=copy)
        if not np.can_cast(self.dtype, dtype, casting=casting):
            raise TypeError(
                f"Cannot cast array data from {self.dtype!r} to {dtype!r} "
                f"according to the rule {casting!r}"
            )
        if dtype == self.dtype and not copy:
            return self
        return LazyView(self, dtype=dtype)

    @property
    def writable(self) -> bool:
        """True once written to: the data is then a numpy copy (see :meth:`__setitem__`)."""
        return self._written is not None

    def __setitem__(self, key, value) -> None:
        """Write into the view's copy: the first write reads the whole view into a writable
        numpy array (copy-on-write); the source is left as it is.

        Raises
        ------
        mlarray.errors.ReadOnlyError
            When the view is larger than :data:`MAX_EAGER_LABELS_BYTES`.
        """
        self._copy()[key] = value

    def _copy(self) -> np.ndarray:
        """The writable copy, read slab by slab along the first axis on first use."""
        if self._written is not None:
            return self._written
        if self.nbytes > MAX_EAGER_LABELS_BYTES:
            from mlarray.errors import ReadOnlyError

            where = f"{self.path}: " if self.path else ""
            raise ReadOnlyError(
                f"{where}this layer ({_size(self.nbytes)}) reads its data from the file on "
                f"demand and cannot be painted: napari-mlarray copies at most "
                f"{_size(MAX_EAGER_LABELS_BYTES)} into memory for editing. Paint a crop of "
                "it, or edit the file in Python (MLArray.open(path, mmap_mode='r+'), then assign "
                "to it)"
            )
        out = np.empty(self.shape, self.dtype)
        if not self.ndim:
            out[()] = self._read(())
        else:
            full = (slice(None),) * (self.ndim - 1)
            step = max(1, (self.chunks or (1,))[0])
            for start in range(0, self.shape[0], step):
                sl = slice(start, start + step)
                out[sl] = self._read((sl, *full))
        self._written = out
        return out

    def __getitem__(self, key):
        if self._written is not None:
            return self._written[key]
        if any(_is_array_index(k) for k in (key if isinstance(key, tuple) else (key,))):
            return self._read_fancy(_normalize_key(key, self.ndim, arrays=True))
        key = _normalize_key(key, self.ndim)
        ints = [isinstance(k, int | np.integer) for k in key]
        lazy = any(ints) and not all(ints)  # fix some axes, keep the others whole
        if lazy and all(i or _full_slice(k) for i, k in zip(ints, key, strict=True)):
            return self._fix(key)
        return self._read(key)

    def _read_fancy(self, key) -> np.ndarray:
        """numpy's result for a key with integer (or 1-d boolean) arrays: the box the
        indices span is read, then indexed like numpy (same result axes)."""
        box, inner = [], []
        for k, (idx, size) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(idx, slice):
                box.append(idx)
                inner.append(slice(None))
                continue
            if isinstance(idx, int | np.integer):
                if not -size <= idx < size:
                    raise IndexError(f"index {idx} out of range for axis {k} of size {size}")
                i = int(idx) % size
                box.append(slice(i, i + 1))
                inner.append(np.intp(0))  # still an advanced index, as in numpy
                continue
            arr = np.asarray(idx)
            if arr.dtype == bool:
                if arr.shape != (size,):
                    raise IndexError(f"boolean index of shape {arr.shape} for axis {k} of {size}")
                arr = np.flatnonzero(arr)
            if arr.size and arr.dtype.kind not in "iu":
                raise IndexError(f"arrays used as indices must be integers, not {arr.dtype}")
            arr = arr.astype(np.intp, copy=False)
            if arr.size and (arr.min() < -size or arr.max() >= size):
                raise IndexError(f"index out of range for axis {k} of size {size}")
            arr = arr % size if size else arr
            lo = int(arr.min()) if arr.size else 0
            hi = int(arr.max()) + 1 if arr.size else 0
            box.append(slice(lo, hi))
            inner.append(arr - lo)
        return self._read(tuple(box))[tuple(inner)]

    def _fix(self, key) -> LazyView:
        """Lazy view with the integer-indexed axes removed."""
        for k, (size, idx) in enumerate(zip(self.shape, key, strict=True)):
            if isinstance(idx, int | np.integer) and not -size <= idx < size:
                raise IndexError(f"index {idx} out of range for axis {k} of size {size}")
        return LazyView(self, fixed={k: int(i) for k, i in enumerate(key) if not _full_slice(i)})

    def _read(self, key) -> np.ndarray:
        src_key: list = [None] * self.source.ndim
        for a, i in self.fixed.items():
            src_key[a] = i
        reverse_src: set[int] = set()  # source axes to reverse after reading
        out_axes: list[int] = []  # source axes of the result, in view order
        for k, idx in enumerate(key):
            j = self._axis_of[k]
            size = self.shape[k]
            if j is None:  # inserted unit axis
                if isinstance(idx, int | np.integer) and not -1 <= idx < 1:
                    raise IndexError(f"index {idx} out of range for axis {k} of size 1")
                continue
            a = self._kept[self.perm[j]]
            flip = self.flip[j]
            if isinstance(idx, int | np.integer):
                if not -size <= idx < size:
                    raise IndexError(f"index {idx} out of range for axis {k} of size {size}")
                i = int(idx) % size
                src_key[a] = size - 1 - i if flip else i
                continue
            pos = range(size)[idx]
            out_axes.append(a)
            if len(pos) == 0:
                src_key[a] = slice(0, 0)
                continue
            first, last = pos[0], pos[-1]
            if flip:
                first, last = size - 1 - first, size - 1 - last
            step = abs(pos.step)
            lo, hi = min(first, last), max(first, last)
            src_key[a] = slice(lo, hi + 1, step if step != 1 else None)
            if last < first:  # read forward, reverse afterwards
                reverse_src.add(a)
        data = np.asarray(self.source[tuple(src_key)])
        remaining = [a for a in range(self.source.ndim) if not isinstance(src_key[a], int)]
        if data.ndim != len(remaining):
            raise ValueError(f"source returned {data.ndim} axes, expected {len(remaining)}")
        if reverse_src:
            data = np.flip(data, axis=[remaining.index(a) for a in reverse_src])
        data = np.transpose(data, [remaining.index(a) for a in out_axes])
        kept_inserted = [
            k for k in self.insert if not isinstance(key[k], int | np.integer)
        ]  # positions among the result axes
        shape = list(data.shape)
        result_pos = [
            k for k in range(self.ndim) if not isinstance(key[k], int | np.integer)
        ]  # view axes present in the result
        for k in kept_inserted:
            shape.insert(result_pos.index(k), len(range(1)[key[k]]))
        # C order: consumers such as Blosc2's set_slice refuse strided arrays
        return data.reshape(shape).astype(self.dtype, order="C", copy=False)
