"""Streaming summary statistics of an array, a bounded piece at a time.

:func:`compute_stats` never holds the whole volume: it reads the array in
pieces of at most ``_SLAB_ELEMENTS`` elements, several times, whatever the
array's chunk size (a Blosc2 array is decoded a run of whole blocks at a time,
so a file stored as one big chunk costs no more than one in small chunks).
Order statistics (median, percentiles) are exact. Every value is mapped to
an unsigned integer *key* that sorts like the value (floats through their
bit pattern), and the keys holding the wanted ranks are found by histogram
refinement: a streaming pass splits the candidate key range into 65536 bins
and keeps the bin holding the rank; once that bin holds at most 2**20
values, the next pass collects them and sorts them.
Types of at most 16 bits (bool, int8/uint8, int16/uint16, float16) are
resolved by the first pass alone, so everything costs a single pass; wider
types typically need four passes (statistics, percentiles, values between
the percentiles, their median). Mean and standard deviation are accumulated
in float64 with the pairwise update of Chan, Golub and LeVeque.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlarray import _direct, _maps
from mlarray._read import DecodeMemoryError, _empty, short_of_memory
from mlarray.errors import MetaValidationError, MLArrayError, MLArrayMemoryError

__all__ = ["STAT_KEYS", "compute_stats"]

#: The keys of the returned dict, exactly the fields of ``MetaStatistics``.
STAT_KEYS = (
    "min",
    "max",
    "mean",
    "median",
    "std",
    "percentile_min",
    "percentile_max",
    "percentile_mean",
    "percentile_median",
    "percentile_std",
    "percentile_min_key",
    "percentile_max_key",
)

_BIN_BITS = 16  # 65536 bins per histogram
#: Key ranges holding at most this many keys are collected and sorted (8 MiB).
_COLLECT_LIMIT = 2**20
#: Elements per default slab: 16 MiB of float64 working copy.
_SLAB_ELEMENTS = 2**21
#: Buffers of a block's size c-blosc2 may need to decode a block (see :func:`_decode`).
_DECODER_BUFFERS = 4


#: A piece of a streaming pass: values (or their keys), each counted ``repeat`` times (1,
#: or the elements of a chunk stored as one repeated value).
_Piece = tuple[np.ndarray, int]


@dataclass(frozen=True)
class _Run:
    """A chunk stored as one value repeated (Blosc2's zeros, NaN, value and uninitialised
    chunks): ``count`` elements of the array equal to ``value`` (a one-element array)."""

    value: np.ndarray
    count: int


# ----------------------------------------------------------------------------- keys


class _KeyCodec:
    """Map values of one dtype to ``uint64`` keys with the same order, and back."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype  # the working dtype values are read as
        kind, bits = dtype.kind, dtype.itemsize * 8
        self.kind, self.bits = kind, bits
        if kind == "u":
            self.lo, self.hi = 0, 2**bits - 1
        elif kind == "i":
            self.lo, self.hi = 2**63 - 2 ** (bits - 1), 2**63 + 2 ** (bits - 1) - 1
        else:  # float16/32/64 through their bit patterns
            self.lo, self.hi = 0, 2**bits - 1
            self._uint = np.dtype(f"u{dtype.itemsize}")
            self._sign = self._uint.type(1 << (bits - 1))

    def encode(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "u":
            return values.astype(np.uint64)
        if self.kind == "i":
            keys = values.astype(np.int64).view(np.uint64)
            keys ^= np.uint64(1 << 63)
            return keys
        raw = values.view(self._uint)
        negative = (raw & self._sign) != 0
        return np.where(negative, ~raw, raw | self._sign).astype(np.uint64)

    def decode_many(self, keys: np.ndarray) -> np.ndarray:
        """Keys back to their values, as float64."""
        keys = np.asarray(keys, dtype=np.uint64)
        if self.kind == "u":
            return keys.astype(np.float64)
        if self.kind == "i":
            return (keys ^ np.uint64(1 << 63)).view(np.int64).astype(np.float64)
        raw = keys.astype(self._uint)
        negative = (raw & self._sign) == 0
        bits = np.where(negative, ~raw, raw ^ self._sign).astype(self._uint)
        return bits.view(self.dtype).astype(np.float64)

    def decode(self, key: int) -> float:
        return float(self.decode_many(np.array([key], dtype=np.uint64))[0])


@dataclass
class _Hist:
    """Counts of the keys in ``[lo, hi]``, in bins of ``2**shift`` keys."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        self.shift = max(0, (self.hi - self.lo).bit_length() - _BIN_BITS)
        self.counts = np.zeros(((self.hi - self.lo) >> self.shift) + 1, dtype=np.int64)

    def add(self, keys: np.ndarray, *, inside: bool = False, repeat: int = 1) -> None:
        """Count ``keys``, each ``repeat`` times; ``inside=True`` promises they all lie in
        ``[lo, hi]``."""
        if not inside:
            keys = keys[(keys >= np.uint64(self.lo)) & (keys <= np.uint64(self.hi))]
        if keys.size:
            bins = keys - np.uint64(self.lo)
            if self.shift:
                bins >>= np.uint64(self.shift)
            # at most 2**16 + 1 bins: the same numbers as int64
            counts = np.bincount(bins.view(np.int64), minlength=self.counts.size)
            self.counts += counts * repeat if repeat != 1 else counts


@dataclass
class _Target:
    """One wanted order statistic: the key of rank ``rank`` (0-based).

    The key is known to lie in ``[lo, hi]`` and ``below`` keys are smaller
    than ``lo``.
    """

    rank: int
    lo: int
    hi: int
    below: int = 0
    key: int | None = None
    count: int | None = None  # keys in [lo, hi], when known

    def narrow(self, hist: _Hist) -> None:
        """Keep the bin of ``hist`` (which covers ``[lo, hi]``) holding the rank."""
        cum = np.cumsum(hist.counts)
        b = int(np.searchsorted(cum, self.rank - self.below, side="right"))
        self.count = int(hist.counts[b])
        self.below += int(cum[b - 1]) if b else 0
        self.lo = hist.lo + (b << hist.shift)
        self.hi = min(hist.hi, self.lo + (1 << hist.shift) - 1)
        if self.lo == self.hi:
            self.key = self.lo

    def clamp(self, lo: int, hi: int) -> None:
        """Intersect with ``[lo, hi]``, known to contain every key (``below`` is unchanged)."""
        self.lo, self.hi = max(self.lo, lo), min(self.hi, hi)
        if self.lo == self.hi:
            self.key = self.lo


def _resolve(targets: Sequence[_Target], stream: Callable[[], Iterator[_Piece]]) -> None:
    """Refine every unresolved target, one streaming pass over ``stream()`` per round
    (pieces of keys, each key counted ``repeat`` times).

    A target whose key range holds at most ``_COLLECT_LIMIT`` keys is finished
    in one pass by collecting those keys (a repeated key as often as it counts:
    at most that many); the others are narrowed by a histogram.
    """
    while pending := [t for t in targets if t.key is None]:
        hists: dict[tuple[int, int], _Hist] = {}
        pools: dict[tuple[int, int], list[np.ndarray]] = {}
        for t in pending:
            if t.count is not None and t.count <= _COLLECT_LIMIT:
                pools.setdefault((t.lo, t.hi), [])
            else:
                hists.setdefault((t.lo, t.hi), _Hist(t.lo, t.hi))
        for keys, repeat in stream():
            for (lo, hi), pool in pools.items():
                got = keys[(keys >= np.uint64(lo)) & (keys <= np.uint64(hi))]
                pool.append(np.repeat(got, repeat) if repeat != 1 and got.size else got)
            for hist in hists.values():
                hist.add(keys, repeat=repeat)
        collected = {interval: np.sort(np.concatenate(pool)) for interval, pool in pools.items()}
        for t in pending:
            if (t.lo, t.hi) in collected:
                t.key = int(collected[(t.lo, t.hi)][t.rank - t.below])
            else:
                t.narrow(hists[(t.lo, t.hi)])


# ----------------------------------------------------------------------------- moments


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations, merged pairwise (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray, repeat: int = 1) -> None:
        """Merge ``values``, each counted ``repeat`` times."""
        nb = int(values.size)
        if nb == 0:
            return
        v = values.astype(np.float64, copy=False)
        mean_b = float(v.mean())
        d = v - mean_b
        np.square(d, out=d)
        m2_b = float(d.sum())
        self.add_summary(nb * repeat, mean_b, m2_b * repeat)

    def add_summary(self, nb: int, mean_b: float, m2_b: float) -> None:
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
            return
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean += delta * nb / n
        self.m2 += m2_b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n)


# ----------------------------------------------------------------------------- chunking


def _default_chunk(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Slabs of about ``_SLAB_ELEMENTS`` elements: along axis 0 when one row fits."""
    chunk = list(shape)
    for axis in range(len(shape)):
        rest = math.prod(shape[axis + 1 :])
        if rest <= _SLAB_ELEMENTS:
            chunk[axis] = max(1, min(shape[axis], _SLAB_ELEMENTS // rest))
            break
        chunk[axis] = 1
    return tuple(chunk)


def _chunk_shape(shape: tuple[int, ...], chunk_shape: Any) -> tuple[int, ...] | None:
    """The checked ``chunk_shape`` a caller asked for, clipped to ``shape``; None if none."""
    if chunk_shape is None:
        return None
    try:
        chunk = tuple(int(c) for c in chunk_shape)
    except (TypeError, ValueError) as exc:
        raise MetaValidationError("chunk_shape", f"expected integers, got {chunk_shape!r}") from exc
    if len(chunk) != len(shape) or any(c < 1 for c in chunk):
        raise MetaValidationError(
            "chunk_shape",
            f"expected {len(shape)} integers >= 1 (one per array axis), got {chunk_shape!r}",
        )
    return tuple(min(c, n) for c, n in zip(chunk, shape, strict=True))


def _native_chunks(shape: tuple[int, ...], array: Any) -> tuple[int, ...] | None:
    """``array.chunks`` clipped to ``shape``, if it has usable ones."""
    native = getattr(array, "chunks", None)
    try:
        chunk = tuple(int(c) for c in native) if native is not None else None
    except (TypeError, ValueError):
        return None
    if chunk is None or len(chunk) != len(shape) or any(c < 1 for c in chunk):
        return None
    return tuple(min(c, n) for c, n in zip(chunk, shape, strict=True))


def _regions(
    shape: tuple[int, ...], chunk: tuple[int, ...], sub: tuple[int, ...]
) -> Iterator[tuple[slice, ...]]:
    """The pieces of ``shape`` in chunks of ``chunk``, each chunk in pieces of ``sub``."""
    for starts in itertools.product(*(range(0, n, c) for n, c in zip(shape, chunk, strict=True))):
        ends = [min(s + c, n) for s, c, n in zip(starts, chunk, shape, strict=True)]
        inner = (range(s, e, b) for s, e, b in zip(starts, ends, sub, strict=True))
        for firsts in itertools.product(*inner):
            yield tuple(slice(f, min(f + b, e)) for f, b, e in zip(firsts, sub, ends, strict=True))


def _array_reads(
    array: Any, shape: tuple[int, ...], chunk_shape: tuple[int, ...] | None
) -> Iterator[np.ndarray]:
    """One pass over any array-like, as numpy arrays read with ``array[slices]``.

    The pieces are ``chunk_shape`` if given, else the array's own chunks cut into
    slabs of at most ``_SLAB_ELEMENTS`` elements (a piece never spans two chunks),
    else slabs of ``_SLAB_ELEMENTS`` along axis 0.
    """
    chunk = chunk_shape
    sub = chunk
    if chunk is None:
        chunk = _native_chunks(shape, array)
        if chunk is None:
            chunk = sub = _default_chunk(shape)
        elif math.prod(chunk) <= _SLAB_ELEMENTS or _whole_chunks(array):
            sub = chunk
        else:
            sub = _default_chunk(chunk)
    for index in _regions(shape, chunk, sub):
        _maps.check(array)  # an opened file cut short by another program: an error
        yield np.asarray(array[index])


def _whole_chunks(array: Any) -> bool:
    """Whether ``array`` is a Blosc2 NDArray whose chunks decode right only whole (the
    DELTA filter, chunks marked uninitialised: see :mod:`mlarray._direct`): every read
    decodes its chunks whole, so reading less than a chunk at a time only costs time."""
    import blosc2

    return isinstance(array, blosc2.NDArray) and (
        _direct.is_guarded(array) or _direct._writes_delta(array)
    )


def _is_blocked(array: Any, shape: tuple[int, ...]) -> bool:
    """Whether ``array`` is a Blosc2 NDArray whose chunks can be decoded block by block."""
    import blosc2

    if not isinstance(array, blosc2.NDArray) or not shape or _whole_chunks(array):
        return False
    try:
        chunks = tuple(int(c) for c in array.chunks)
        blocks = tuple(int(b) for b in array.blocks)
        ext = tuple(int(e) for e in array.ext_chunks)
        schunk = array.schunk
        itemsize = np.dtype(array.dtype).itemsize
        fits = int(schunk.typesize) == itemsize and int(schunk.chunksize) == math.prod(ext) * (
            itemsize
        )
    except (AttributeError, TypeError, ValueError):
        return False
    return (
        fits
        and len(chunks) == len(blocks) == len(ext) == len(shape)
        and all(
            b >= 1 and e % b == 0 and e >= c >= 1
            for c, b, e in zip(chunks, blocks, ext, strict=True)
        )
    )


def _block_reads(array: Any, shape: tuple[int, ...]) -> Iterator[np.ndarray | _Run]:
    """One pass over a Blosc2 NDArray, in whatever order its data are stored.

    Each chunk holds its blocks one after the other (C order over the block grid of
    the padded chunk), each block in C order. Runs of the blocks that hold array
    elements are decoded (``SChunk.get_slice``) into one reused buffer of about
    ``_SLAB_ELEMENTS`` items (at least one block), and the padding of edge blocks is
    left out. Memory: that buffer and c-blosc2's own block buffers, whatever the
    chunk size. Not for arrays whose chunks decode right only whole
    (:func:`_whole_chunks`); a chunk marked uninitialised reads as zeros, as
    mlarray reads it everywhere. A chunk stored as one repeated value (zeros, NaN, a
    value, uninitialised) is a :class:`_Run`, not decoded: a tiny file claiming
    gigabytes of such chunks costs its chunk count, not the values it claims (it cost
    about 13 s per GiB claimed), and so do the empty chunks of a label map.
    """
    chunks = tuple(int(c) for c in array.chunks)
    blocks = tuple(int(b) for b in array.blocks)
    ext = tuple(int(e) for e in array.ext_chunks)
    nb = tuple(e // b for e, b in zip(ext, blocks, strict=True))  # blocks per chunk axis
    bitems, citems = math.prod(blocks), math.prod(ext)
    dtype = np.dtype(array.dtype)
    group = max(1, _SLAB_ELEMENTS // bitems)  # blocks per read
    buf = _empty((group * bitems,), dtype, "a decode buffer")
    get_slice = array.schunk.get_slice
    grid = [range(-(-n // c)) for n, c in zip(shape, chunks, strict=True)]
    for nchunk, cidx in enumerate(itertools.product(*grid)):
        valid = [min(c, n - i * c) for i, c, n in zip(cidx, chunks, shape, strict=True)]
        _maps.check(array)
        run_of = _special_run(array.schunk.get_lazychunk(nchunk), dtype, math.prod(valid))
        if run_of is not None:
            yield run_of
            continue
        used = [-(-v // b) for v, b in zip(valid, blocks, strict=True)]  # blocks holding data
        ragged = [v % b != 0 for v, b in zip(valid, blocks, strict=True)]
        # the blocks holding data are runs in C order: along the axes after ``k``
        # every block is used, so a run is ``used[k]`` rows of those axes
        k = max((a for a in range(len(nb)) if used[a] < nb[a]), default=-1)
        run = math.prod(nb[k + 1 :]) * (used[k] if k >= 0 else 1)
        leads = itertools.product(*(range(u) for u in used[: max(k, 0)]))
        firsts = (
            int(np.ravel_multi_index(lead + (0,) * (len(nb) - len(lead)), nb)) for lead in leads
        )
        filled: list[tuple[int, int]] = []  # (first block, blocks) in the buffer
        n = 0
        for first in firsts:
            for offset in range(0, run, group):
                count = min(group, run - offset)
                if n + count > group:
                    yield _without_padding(buf[: n * bitems], filled, nb, blocks, valid, ragged)
                    filled, n = [], 0
                base = nchunk * citems + (first + offset) * bitems
                _maps.check(array)
                _decode(get_slice, base, count * bitems, buf[n * bitems :], blocks, dtype)
                filled.append((first + offset, count))
                n += count
        if n:
            yield _without_padding(buf[: n * bitems], filled, nb, blocks, valid, ragged)


def _special_run(header: bytes, dtype: np.dtype, count: int) -> _Run | None:
    """The :class:`_Run` of a chunk (its ``count`` elements in the array) whose header
    (``get_lazychunk``) says it is stored as a special value; None for stored data."""
    from mlarray.frame import chunk_special

    kind, value = chunk_special(header, dtype.itemsize)
    if kind in (1, 4):  # zeros; uninitialised, which mlarray reads as zeros
        return _Run(np.zeros(1, dtype), count)
    if kind == 2:  # NaNs (c-blosc2 decodes them for float types only)
        return _Run(np.full(1, np.nan, dtype), count) if dtype.kind == "f" else None
    if kind == 3:
        return _Run(np.frombuffer(value, dtype, count=1).copy(), count)
    return None


def _without_padding(
    flat: np.ndarray,
    filled: list[tuple[int, int]],
    nb: tuple[int, ...],
    blocks: tuple[int, ...],
    valid: list[int],
    ragged: list[bool],
) -> np.ndarray:
    """The decoded blocks ``filled`` in ``flat`` without the elements outside the array."""
    if not any(ragged):
        return flat
    ids = np.concatenate([np.arange(f, f + c) for f, c in filled])
    idx = np.unravel_index(ids, nb)
    mask = None
    for a, (j, b, v) in enumerate(zip(idx, blocks, valid, strict=True)):
        if not ragged[a]:
            continue
        inside = np.minimum(v - j * b, b)  # elements of each block along axis ``a``
        if (inside >= b).all():
            continue
        shape = [1] * (len(blocks) + 1)
        shape[a + 1] = b
        keep = np.arange(b).reshape(shape) < inside.reshape((-1,) + (1,) * len(blocks))
        mask = keep if mask is None else mask & keep
    if mask is None:
        return flat
    full = (len(ids), *blocks)
    return flat.reshape(full)[np.broadcast_to(mask, full)]


def _decode(
    get_slice: Any, start: int, items: int, out: np.ndarray, blocks: tuple, dtype: np.dtype
) -> None:
    """``get_slice`` of ``items`` items from ``start`` into ``out``; a failure for want of
    memory (c-blosc2 says only that it failed) is a :class:`DecodeMemoryError`."""
    try:
        get_slice(start, start + items, out=out[:items])
    except RuntimeError:
        # c-blosc2 needs a few buffers of a block per decoding thread: if that much
        # memory cannot be had now, that is what failed; else the data are bad
        need = _DECODER_BUFFERS * math.prod(blocks) * dtype.itemsize
        if short_of_memory(need):
            raise DecodeMemoryError(need, "decoding the blocks") from None
        raise


def _working_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind in "iu":
        return dtype.newbyteorder("=")
    if dtype.kind == "f":
        return dtype.newbyteorder("=") if dtype.itemsize in (2, 4, 8) else np.dtype(np.float64)
    raise MetaValidationError(
        "stats", f"cannot compute statistics of dtype {dtype}; only bool, integer and float arrays"
    )


# ----------------------------------------------------------------------------- quantiles


def _quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """Ranks and weight of ``numpy.percentile(..., method="linear")``."""
    virtual = (n - 1) * (q / 100.0)
    lo = min(math.floor(virtual), n - 1)
    return lo, min(lo + 1, n - 1), virtual - lo


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation formula (exact at both ends)."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def _median_ranks(n: int) -> tuple[int, int]:
    return (n - 1) // 2, n // 2


def _check_percentiles(percentiles: Any) -> tuple[float, float]:
    try:
        p_lo, p_hi = (float(p) for p in percentiles)
    except (TypeError, ValueError) as exc:
        raise MetaValidationError(
            "percentiles", f"expected two numbers in [0, 100], got {percentiles!r}"
        ) from exc
    if not (0.0 <= p_lo <= p_hi <= 100.0):
        raise MetaValidationError(
            "percentiles", f"expected 0 <= low <= high <= 100, got {percentiles!r}"
        )
    return p_lo, p_hi


# ----------------------------------------------------------------------------- main


def file_stats(
    store: Any,
    path: Any,
    percentiles: Sequence[float] = (0.5, 99.5),
    read: Callable[[], Any] | None = None,
) -> dict[str, float | None]:
    """:func:`compute_stats` of an opened file: its chunks are checked against their
    checksums first, and a chunk Blosc2 cannot decode is a
    :class:`~mlarray.errors.CorruptChunkError` naming ``path`` (or a
    :class:`~mlarray.errors.FileChangedError` if the file was written meanwhile).
    Running out of memory (a file made of huge blocks) is an
    :class:`~mlarray.errors.MLArrayMemoryError` naming ``path``.

    ``read`` gives the store to stream the values from, once the checks passed
    (default: ``store``).
    """
    from mlarray import integrity

    integrity.verify_all(store)
    source = store if read is None else read()
    try:
        return compute_stats(source, percentiles=percentiles)
    except MLArrayError:  # ours (also RuntimeErrors): as they are
        raise
    except MemoryError as exc:
        raise _memory_error(path, source, exc) from None
    except RuntimeError as exc:
        raise integrity.damage_error(
            store, path, f"cannot decompress the data, the file may be corrupt ({exc})"
        ) from None


def _memory_error(path: Any, array: Any, exc: MemoryError) -> MLArrayMemoryError:
    """The error for statistics of the file ``path`` that ran out of memory."""
    message = f"{path or 'MLArray'}: not enough memory to compute statistics"
    if isinstance(exc, DecodeMemoryError):
        message += f" ({exc.what}: {exc.nbytes} bytes)"
    blocks = getattr(array, "blocks", None)
    if blocks is not None:
        with contextlib.suppress(TypeError, ValueError):
            size = math.prod(int(b) for b in blocks) * np.dtype(array.dtype).itemsize
            message += f"; its data are stored in blocks of {size} bytes"
    return MLArrayMemoryError(message)


def compute_stats(
    array: Any,
    *,
    percentiles: Sequence[float] = (0.5, 99.5),
    chunk_shape: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """Summary statistics of an array, streamed chunk by chunk.

    Parameters
    ----------
    array : array-like
        Anything with ``shape``, ``dtype`` and a ``__getitem__`` that takes a
        tuple of slices and returns a numpy array: a numpy array, a
        ``blosc2.NDArray`` or a lazy :class:`~mlarray.MLArray`. Bool arrays
        count as uint8.
    percentiles : (float, float), optional
        The low and high percentile, in ``[0, 100]``.
    chunk_shape : sequence of int, optional
        Shape of the pieces read at a time. By default a Blosc2 NDArray is
        decoded whole blocks at a time, about 2**21 elements per read
        whatever its chunk size; another array with a ``chunks`` attribute is
        read chunk by chunk, a chunk of more than 2**21 elements in slabs of
        about that many; anything else in slabs of about 2**21 elements along
        axis 0. Values are processed at most 2**21 at a time, so the working
        memory does not grow with the chunk size.

    Returns
    -------
    dict
        Keyed like ``MetaStatistics``: ``min``, ``max``, ``mean``, ``median``,
        ``std`` (population, ``ddof=0``), ``percentile_min``/``percentile_max``
        (the values at the two percentiles), ``percentile_mean``,
        ``percentile_median``, ``percentile_std`` (of the values ``v`` with
        ``percentile_min <= v <= percentile_max``) and
        ``percentile_min_key``/``percentile_max_key`` (the two percentiles).
        Values are Python floats. Every value is None for an empty array or
        one holding only NaNs.

    Notes
    -----
    NaNs are ignored, like ``numpy.nanpercentile``. Medians and percentiles
    follow ``numpy.median`` and ``numpy.percentile(..., method="linear")``;
    the order statistics they interpolate are exact, interpolation is in
    float64. The array is read in several passes, a piece at a time: one
    pass for types of at most 16 bits, typically four for wider types.

    Raises
    ------
    MetaValidationError
        For bad ``percentiles`` or ``chunk_shape``, or a dtype without an
        order (complex, strings, objects).
    MemoryError
        If a piece cannot be decoded for want of memory (a Blosc2 array made of
        huge blocks); :meth:`MLArray.compute_stats` and ``mlarray stats`` say
        so with an :class:`~mlarray.errors.MLArrayMemoryError` naming the file.
    """
    p_lo, p_hi = _check_percentiles(percentiles)
    shape = tuple(int(n) for n in array.shape)
    work = _working_dtype(np.dtype(array.dtype))
    empty: dict[str, float | None] = dict.fromkeys(STAT_KEYS)
    if math.prod(shape) == 0:
        return empty
    chunk = _chunk_shape(shape, chunk_shape)
    codec = _KeyCodec(work)

    def reads() -> Iterator[np.ndarray | _Run]:
        if chunk is None and _is_blocked(array, shape):
            return _block_reads(array, shape)
        return _array_reads(array, shape, chunk)

    def pieces() -> Iterator[_Piece]:
        """One streaming pass: the non-NaN values, flat, in ``work`` dtype, at most
        ``_SLAB_ELEMENTS`` at a time (views of a buffer the next piece reuses), each
        counted once; a chunk stored as one value is that value, counted ``count`` times."""
        for data in reads():
            if isinstance(data, _Run):
                values = data.value.astype(work)
                if not (work.kind == "f" and np.isnan(values[0])):
                    yield values, data.count
                continue
            flat = data.reshape(-1)
            for start in range(0, flat.size, _SLAB_ELEMENTS):
                values = flat[start : start + _SLAB_ELEMENTS].astype(work, copy=False)
                if work.kind == "f":
                    values = values[~np.isnan(values)]
                yield values, 1

    # pass 1: moments, extremes and a first histogram over the whole key range
    moments = _Moments()
    top = _Hist(codec.lo, codec.hi)
    kmin = kmax = None
    for values, repeat in pieces():
        if not values.size:
            continue
        moments.add(values, repeat)
        keys = codec.encode(values)
        top.add(keys, inside=True, repeat=repeat)
        lo, hi = int(keys.min()), int(keys.max())
        kmin = lo if kmin is None else min(kmin, lo)
        kmax = hi if kmax is None else max(kmax, hi)
    n = moments.n
    if n == 0:
        return empty

    def keys_all() -> Iterator[_Piece]:
        for values, repeat in pieces():
            yield codec.encode(values), repeat

    lo_a, lo_b, lo_t = _quantile_ranks(n, p_lo)
    hi_a, hi_b, hi_t = _quantile_ranks(n, p_hi)
    med_a, med_b = _median_ranks(n)
    targets = {r: _Target(r, codec.lo, codec.hi) for r in {lo_a, lo_b, hi_a, hi_b, med_a, med_b}}
    for t in targets.values():
        t.narrow(top)
        if t.key is None:
            t.clamp(kmin, kmax)
    _resolve(list(targets.values()), keys_all)

    def value(rank: int) -> float:
        return codec.decode(targets[rank].key)

    pmin = _lerp(value(lo_a), value(lo_b), lo_t)
    pmax = _lerp(value(hi_a), value(hi_b), hi_t)
    out = {
        "min": codec.decode(kmin),
        "max": codec.decode(kmax),
        "mean": moments.mean,
        "median": (value(med_a) + value(med_b)) / 2.0,
        "std": moments.std,
        "percentile_min": pmin,
        "percentile_max": pmax,
        "percentile_min_key": p_lo,
        "percentile_max_key": p_hi,
    }

    # the values between the two percentiles: a contiguous range of ranks
    sub_lo, sub_hi = targets[lo_a].key, targets[hi_b].key
    if top.shift == 0:  # the first histogram is exact: no more passes
        sub = _subset_from_histogram(top, codec, pmin, pmax)
    else:
        sub = _subset_streamed(pieces, codec, pmin, pmax, sub_lo, sub_hi)
    out.update(sub)
    return {k: (None if out[k] is None else float(out[k])) for k in STAT_KEYS}


def _subset_from_histogram(
    hist: _Hist, codec: _KeyCodec, pmin: float, pmax: float
) -> dict[str, float | None]:
    """Statistics of the values in ``[pmin, pmax]`` from an exact (one key per bin) histogram."""
    nonzero = np.flatnonzero(hist.counts)
    counts = hist.counts[nonzero]
    values = codec.decode_many(nonzero.astype(np.uint64) + np.uint64(hist.lo))
    inside = (values >= pmin) & (values <= pmax)
    counts, values = counts[inside], values[inside]
    m = int(counts.sum())
    if m == 0:
        return {"percentile_mean": None, "percentile_median": None, "percentile_std": None}
    mean = float((counts * values).sum() / m)
    std = math.sqrt(float((counts * np.square(values - mean)).sum()) / m)
    cum = np.cumsum(counts)
    a, b = _median_ranks(m)
    va = values[int(np.searchsorted(cum, a, side="right"))]
    vb = values[int(np.searchsorted(cum, b, side="right"))]
    return {"percentile_mean": mean, "percentile_median": (va + vb) / 2.0, "percentile_std": std}


def _subset_streamed(
    pieces: Callable[[], Iterator[_Piece]],
    codec: _KeyCodec,
    pmin: float,
    pmax: float,
    key_lo: int,
    key_hi: int,
) -> dict[str, float | None]:
    """Statistics of the values in ``[pmin, pmax]``, whose keys lie in ``[key_lo, key_hi]``."""

    def subset() -> Iterator[_Piece]:
        for values, repeat in pieces():
            as_float = values.astype(np.float64, copy=False)
            yield values[(as_float >= pmin) & (as_float <= pmax)], repeat

    moments = _Moments()
    first = _Hist(key_lo, key_hi)
    seen_lo, seen_hi = key_hi, key_lo
    for values, repeat in subset():
        if not values.size:
            continue
        moments.add(values, repeat)
        keys = codec.encode(values)
        first.add(keys, repeat=repeat)
        seen_lo, seen_hi = min(seen_lo, int(keys.min())), max(seen_hi, int(keys.max()))
    m = moments.n
    if m == 0:
        return {"percentile_mean": None, "percentile_median": None, "percentile_std": None}
    a, b = _median_ranks(m)
    targets = {r: _Target(r, seen_lo, seen_hi) for r in {a, b}}
    if key_lo <= seen_lo and seen_hi <= key_hi:
        for t in targets.values():
            t.lo, t.hi = key_lo, key_hi
            t.narrow(first)
            if t.key is None:
                t.clamp(seen_lo, seen_hi)
    # else: int64 values beyond 2**53 compared as float64 fell outside the
    # expected key range; refine from the observed range instead

    def keys_subset() -> Iterator[_Piece]:
        for values, repeat in subset():
            yield codec.encode(values), repeat

    _resolve(list(targets.values()), keys_subset)
    median = (codec.decode(targets[a].key) + codec.decode(targets[b].key)) / 2.0
    return {
        "percentile_mean": moments.mean,
        "percentile_median": median,
        "percentile_std": moments.std,
    }
