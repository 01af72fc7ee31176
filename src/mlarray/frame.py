"""Validation of a Blosc2 contiguous frame before c-blosc2 reads it.

c-blosc2 trusts much of what a frame says about itself: a chunk offset that
points into another chunk, a chunk header whose sizes disagree with the
frame, a declared metalayer size of gigabytes. :func:`inspect_frame` reads
the frame's structure with plain Python (header, ``b2nd`` metalayer, chunk
offsets, every chunk header, the trailer and its variable-length metalayers)
and refuses anything inconsistent, so only a well-formed frame reaches the C
library. Layout references: c-blosc2's ``README_CFRAME_FORMAT.rst`` and
``README_CHUNK_FORMAT.rst``.

The checks, in order:

* header: msgpack markers at their fixed places, ``frame_len`` equal to the
  file size, a contiguous frame with 64-bit offsets and fixed-size chunks;
* ``b2nd`` metalayer: ndim, shape, chunk and block shapes, and a plain numeric
  dtype (never object, void or structured), all consistent with the frame's
  typesize, chunksize, blocksize and uncompressed size (another dtype, such as a
  string or record array the reference package writes, is reported as not
  supported, naming it, rather than as damage);
* chunk offsets: one per chunk, special values (zeros, NaN, uninitialized)
  only of the known kinds, regular offsets inside the data section, regular
  chunks not overlapping each other;
* every chunk header: the frame's typesize and chunk size, a builtin codec
  and builtin filters, no lazy or variable-block chunks, a compressed size
  inside the data section;
* trailer: its length field, the variable-length metalayer index, and each
  entry's declared uncompressed size below :data:`MAX_VLMETA_BYTES`.

Everything is vectorized over chunks with numpy, so a frame of thousands of
chunks is checked in well under a millisecond.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from mlarray.errors import MLArrayFormatError, MLArrayIOError, MLArrayMemoryError

__all__ = [
    "MAX_ARRAY_BYTES",
    "MAX_VLMETA_BYTES",
    "FrameInfo",
    "chunk_special",
    "decode_offsets",
    "inspect_frame",
]

FRAME_MAGIC = b"\x9e\xa8b2frame\x00"
_HEADER_MINLEN = 87
_CHUNK_HEADER = 32  # Blosc2 extended chunk header
_TRAILER_MINLEN = 25
_TRAILER_LEN_OFFSET = 22
_MAX_NDIM = 16  # B2ND_MAX_DIM of recent c-blosc2 releases
#: Largest uncompressed array a frame may declare (2**50 bytes, a petabyte).
MAX_ARRAY_BYTES = 1 << 50
#: Most chunks a frame may have (its chunk offsets, 8 bytes each, are decoded whole):
#: a 2048^3 volume in 8^3 chunks has 2^24.
MAX_CHUNKS = 1 << 24
#: Largest uncompressed value of a variable-length metalayer (``vlmeta``) entry.
MAX_VLMETA_BYTES = 64 * 1024 * 1024
#: Most variable-length metalayers a frame may hold (c-blosc2's own limit).
_MAX_VLMETALAYERS = 8 * 1024

# Codec enumeration in chunk flags (bits 5-7): blosclz, lz4/lz4hc, zlib, zstd.
_BUILTIN_CODECS = frozenset({0, 1, 3, 4})
# Filter ids c-blosc2 implements itself (no plugin loading): none, shuffle,
# bitshuffle, delta, trunc_prec, bytedelta, int_trunc.
_BUILTIN_FILTERS = np.array([0, 1, 2, 3, 4, 35, 36], dtype=np.uint8)
# Special values of whole chunks: zeros, NaN, a repeated value, uninitialized.
_SPECIAL_IN_OFFSETS = frozenset({1, 2, 4})
_UNINIT = 4  # Blosc2's special value of an uninitialised chunk
_DELTA = 3  # Blosc2's DELTA filter
_SPECIAL_IN_CHUNKS = np.array([0, 1, 2, 3, 4], dtype=np.uint8)

# A dtype as blosc2's b2nd metalayer stores it: byte order, kind, item size.
_DTYPE_RE = re.compile(r"^[<>|=]?[biufc][0-9]{1,2}$")


class ChunkSet:
    """An immutable set of chunk numbers kept as a sorted numpy array (8 bytes a chunk,
    no Python object per chunk: a frame may mark millions of chunks)."""

    __slots__ = ("_ids",)

    def __init__(self, ids: Any = ()) -> None:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) > 1 and bool(np.any(ids[1:] < ids[:-1])):
            ids = np.sort(ids)
        self._ids = ids

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, (int, np.integer)):
            return False
        i = int(np.searchsorted(self._ids, n))
        return i < len(self._ids) and int(self._ids[i]) == n

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Any:
        return iter(self._ids.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkSet):
            return np.array_equal(self._ids, other._ids)
        if isinstance(other, (tuple, list, set, frozenset)):
            return sorted(other) == self._ids.tolist()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChunkSet({self._ids.tolist() if len(self._ids) <= 8 else len(self._ids)})"


@dataclass
class FrameInfo:
    """What :func:`inspect_frame` learned about a valid frame.

    Offsets are positions in the file. ``chunk_pos[i]`` is ``-1`` for a
    chunk stored as a special value (its raw offset is in ``raw_offsets``).
    """

    frame_len: int
    header_len: int
    nbytes: int
    cbytes: int
    typesize: int
    blocksize: int
    chunksize: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    blocks: tuple[int, ...]
    dtype: np.dtype
    nchunks: int
    raw_offsets: np.ndarray = field(repr=False)
    chunk_pos: np.ndarray = field(repr=False)
    chunk_cbytes: np.ndarray = field(repr=False)
    vlmeta: dict[str, tuple[int, int]] = field(default_factory=dict)
    b2nd_span: tuple[int, int] = (0, 0)
    #: Chunks Blosc2 marks uninitialised (``blosc2.uninit`` and never written): decoding
    #: them writes nothing, so a reader must zero them itself (mlarray reads them as 0).
    uninit: ChunkSet = field(default_factory=lambda: ChunkSet())
    #: Whether a chunk's filters include DELTA: c-blosc2 decodes a block of such a chunk
    #: alone against the wrong reference, so readers must decode whole chunks.
    delta: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(-(-s // c) if c else 0 for s, c in zip(self.shape, self.chunks, strict=True))

    def geometry(self) -> ChunkGeometry:
        """Shape, chunk shape and C-order chunk-grid strides, as Python ints."""
        return ChunkGeometry.of(self.shape, self.chunks)


class ChunkGeometry(NamedTuple):
    """Where chunks sit in an array: its shape, the chunk shape, the flat-number
    strides of the chunk grid (C order)."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    strides: tuple[int, ...]

    @classmethod
    def of(cls, shape: Sequence[int], chunks: Sequence[int]) -> ChunkGeometry:
        """The geometry of an array of ``shape`` in chunks of ``chunks``."""
        grid = [-(-int(n) // int(c)) if c else 0 for n, c in zip(shape, chunks, strict=True)]
        return cls(
            tuple(int(n) for n in shape),
            tuple(int(c) for c in chunks),
            tuple(math.prod(grid[k + 1 :]) for k in range(len(grid))),
        )

    def chunks_in_box(self, bounds: Sequence[tuple[int, int]]) -> list[int]:
        """Flat numbers (ascending) of the chunks overlapping the box ``[(start, stop),
        ...]`` (one pair per axis, clipped to the shape); ``[]`` for an empty box, chunk 0
        for a 0-d array."""
        ids = [0]
        for (lo, hi), c, n, st in zip(bounds, self.chunks, self.shape, self.strides, strict=True):
            lo, hi = max(int(lo), 0), min(int(hi), n)
            if hi <= lo:
                return []
            step = range((lo // c) * st, ((hi - 1) // c + 1) * st, st)
            ids = [i + j for i in ids for j in step]
        return ids


class _Bad(Exception):
    """Internal: a structural problem, turned into MLArrayFormatError with the path."""


class _UnsupportedDtype(_Bad):
    """Internal: a frame of a dtype this version does not read (strings, dates, records):
    a file another program (the reference package) may well have written intact."""


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise _Bad(message)


def inspect_frame(buf: Any, path: Any = None, read_at: Any = None) -> FrameInfo:
    """Check the structure of the Blosc2 frame in ``buf``; return what it holds.

    Parameters
    ----------
    buf : bytes-like
        The whole file (``bytes`` or an ``mmap``).
    path : str or PathLike, optional
        Named in error messages.
    read_at : callable, optional
        ``read_at(offset, size) -> bytes`` reading the same file as ``buf`` (an
        ``os.pread`` on a descriptor of it): the chunk headers, one per chunk spread
        over the whole file, are read through it instead of through ``buf``. A
        mapping touched once per chunk would map a page-cache folio per chunk into
        the process (a kernel caches a freshly written file in folios of up to
        megabytes): hundreds of megabytes of resident memory for a header check.

    Raises
    ------
    MLArrayFormatError
        If anything in the frame's structure is inconsistent or outside what
        an ``.mla`` file may hold; the message says what.
    """
    try:
        return _inspect(memoryview(buf).cast("B"), path, read_at)
    except _UnsupportedDtype as exc:
        raise MLArrayFormatError(path, str(exc)) from None
    except _Bad as exc:
        raise MLArrayFormatError(path, f"damaged or forged Blosc2 frame: {exc}") from None
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise MLArrayFormatError(
            path, f"damaged or forged Blosc2 frame ({type(exc).__name__}: {exc})"
        ) from None
    except MemoryError as exc:  # the bookkeeping of a frame of very many chunks
        raise open_memory_error(path, exc, "to check its chunk index") from None
    except OSError as exc:  # read_at: an I/O error of the disk
        raise MLArrayIOError(path, f"could not be read ({exc})", exc.errno) from None


def open_memory_error(path: Any, exc: MemoryError, doing: str = "") -> MLArrayMemoryError:
    """The error for opening the file ``path`` when memory ran out (``exc``) while
    ``doing`` something."""
    if isinstance(exc, MLArrayMemoryError):
        return exc
    where = f" {doing}" if doing else " to open it"
    return MLArrayMemoryError(
        f"{path if path is not None else 'a Blosc2 frame'}: not enough memory"
        f"{where} ({exc or 'MemoryError'})"
    )


def _be(mv: memoryview, pos: int, fmt: str) -> int:
    return struct.unpack_from(">" + fmt, mv, pos)[0]


def _inspect(mv: memoryview, path: Any, read_at: Any = None) -> FrameInfo:
    size = len(mv)
    _need(size >= _HEADER_MINLEN + _TRAILER_MINLEN, f"file of {size} bytes is too short")
    _need(bytes(mv[: len(FRAME_MAGIC)]) == FRAME_MAGIC, "no Blosc2 frame magic")
    for pos, marker in ((10, 0xD2), (15, 0xCF), (24, 0xA4), (29, 0xD3), (38, 0xD3), (47, 0xD2)):
        _need(mv[pos] == marker, f"header byte {pos} is {mv[pos]:#x}, expected {marker:#x}")
    for pos, marker in ((52, 0xD2), (57, 0xD2), (62, 0xD1), (65, 0xD1)):
        _need(mv[pos] == marker, f"header byte {pos} is {mv[pos]:#x}, expected {marker:#x}")
    header_len = _be(mv, 11, "i")
    frame_len = _be(mv, 16, "Q")
    _need(frame_len == size, f"frame says it is {frame_len} bytes long, the file has {size}")
    _need(_HEADER_MINLEN <= header_len <= size - _TRAILER_MINLEN, f"header length {header_len}")
    general, ftype = mv[25], mv[26]
    _need((general >> 4) & 3 == 1, "chunk offsets are not 64-bit")
    _need(not general & 0x80, "variable-size blocks are not supported")
    _need(ftype & 0x0F == 0, "not a contiguous frame")
    nbytes, cbytes = _be(mv, 30, "q"), _be(mv, 39, "q")
    typesize, blocksize, chunksize = _be(mv, 48, "i"), _be(mv, 53, "i"), _be(mv, 58, "i")
    _need(0 <= nbytes <= MAX_ARRAY_BYTES, f"uncompressed size {nbytes}")
    _need(0 <= cbytes <= size - header_len, f"compressed size {cbytes}")
    _need(blocksize >= 0 and chunksize >= 0, "negative block or chunk size")

    # the dtype first: a string or record array's type size is beyond what is checked next
    shape, chunks, blocks, dtype, b2nd_span = _b2nd_meta(mv, header_len)
    _need(1 <= typesize <= 16, f"type size {typesize}")
    _need(dtype.itemsize == typesize, f"dtype {dtype} does not match type size {typesize}")
    ndim = len(shape)
    _need(len(chunks) == ndim and len(blocks) == ndim, "shape, chunks and blocks differ in ndim")
    array_bytes = math.prod(shape) * typesize
    _need(array_bytes <= MAX_ARRAY_BYTES, f"array of {array_bytes} bytes is beyond any real image")
    if math.prod(shape) == 0:  # an empty array has no chunks (and may store 0 shapes)
        nchunks = 0
        chunks = tuple(max(c, 1) for c in chunks)
        blocks = tuple(max(b, 1) for b in blocks)
    else:
        _need(all(c >= 1 for c in chunks) and all(b >= 1 for b in blocks), "empty chunk or block")
        nchunks = math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True))
        # the chunk offsets are decoded whole (8 bytes per chunk): a tiny file claiming
        # billions of chunks must not make the reader allocate gigabytes for them
        _need(nchunks <= MAX_CHUNKS, f"{nchunks} chunks (at most {MAX_CHUNKS} are read)")
    _need(all(b <= c for b, c in zip(blocks, chunks, strict=True)), "block larger than chunk")
    # Blosc2 pads each chunk to a whole number of blocks.
    padded = [-(-c // b) * b for c, b in zip(chunks, blocks, strict=True)]
    expect_chunk = math.prod(padded) * typesize
    expect_block = math.prod(blocks) * typesize
    _need(nbytes == nchunks * chunksize, f"uncompressed size {nbytes} for {nchunks} chunks")
    if nchunks:
        _need(not general & 0x40, "variable-size chunks are not supported")
        _need(chunksize == expect_chunk, f"chunk size {chunksize}, not {expect_chunk}")
        _need(blocksize == expect_block, f"block size {blocksize}, not {expect_block}")

    trailer_len = _trailer_len(mv)
    trailer_start = size - trailer_len
    data_end = header_len + cbytes
    _need(data_end <= trailer_start, "data section overlaps the trailer")

    if nchunks:
        raw = _offsets(mv, data_end, trailer_start, nchunks)
        pos, cb, uninit, delta = _chunks(
            mv, raw, header_len, cbytes, dtype, chunksize, blocksize, read_at
        )
    else:
        _need(cbytes == 0, "an empty array with compressed data")
        raw = np.zeros(0, dtype=np.int64)
        pos = np.zeros(0, dtype=np.int64)
        cb = np.zeros(0, dtype=np.int64)
        uninit, delta = ChunkSet(), False
    vlmeta = _vlmeta_index(mv, trailer_start, trailer_len)
    return FrameInfo(
        frame_len=frame_len,
        header_len=header_len,
        nbytes=nbytes,
        cbytes=cbytes,
        typesize=typesize,
        blocksize=blocksize,
        chunksize=chunksize,
        shape=shape,
        chunks=chunks,
        blocks=blocks,
        dtype=dtype,
        nchunks=nchunks,
        raw_offsets=raw,
        chunk_pos=pos,
        chunk_cbytes=cb,
        vlmeta=vlmeta,
        b2nd_span=b2nd_span,
        uninit=uninit,
        delta=delta,
    )


# ---------------------------------------------------------------- msgpack subset
class _Reader:
    """A bounded reader for the msgpack subset Blosc2 metalayers use."""

    def __init__(self, mv: memoryview, pos: int, end: int):
        self.mv, self.pos, self.end = mv, pos, end

    def _take(self, n: int) -> memoryview:
        _need(n >= 0 and self.pos + n <= self.end, "metalayer runs past its end")
        out = self.mv[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self._take(1)[0]

    def int(self) -> int:
        b = self.byte()
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        fmt = {0xCC: "B", 0xCD: "H", 0xCE: "I", 0xCF: "Q", 0xD0: "b", 0xD1: "h", 0xD2: "i"}
        fmt[0xD3] = "q"
        _need(b in fmt, f"expected an integer, found msgpack type {b:#x}")
        f = fmt[b]
        return struct.unpack(">" + f, self._take(struct.calcsize(f)))[0]

    def array(self) -> int:
        b = self.byte()
        if 0x90 <= b <= 0x9F:
            return b & 0x0F
        _need(b == 0xDC, f"expected an array, found msgpack type {b:#x}")
        return struct.unpack(">H", self._take(2))[0]

    def str(self, limit: int = 256) -> str:
        b = self.byte()
        if 0xA0 <= b <= 0xBF:
            n = b & 0x1F
        elif b == 0xD9:
            n = self.byte()
        elif b in (0xDA, 0xDB):
            n = struct.unpack(">H" if b == 0xDA else ">I", self._take(2 if b == 0xDA else 4))[0]
        else:
            raise _Bad(f"expected a string, found msgpack type {b:#x}")
        _need(n <= limit, f"string of {n} bytes in a metalayer")
        return bytes(self._take(n)).decode("utf-8", "strict")


def _b2nd_meta(
    mv: memoryview, header_len: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], np.dtype, tuple[int, int]]:
    r = _Reader(mv, _HEADER_MINLEN, header_len)
    _need(r.byte() == 0x93, "no metalayer section")
    _need(r.byte() == 0xCD, "metalayer index size marker")
    r._take(2)
    _need(r.byte() == 0xDE, "metalayer map marker")
    n = struct.unpack(">H", r._take(2))[0]
    _need(n <= 64, f"{n} metalayers")
    where = None
    for _ in range(n):
        name = r.str()
        _need(r.byte() == 0xD2, "metalayer offset marker")
        off = struct.unpack(">i", r._take(4))[0]
        if name == "b2nd":
            where = off
    _need(where is not None, "no b2nd metalayer (not an N-d array)")
    _need(0 < where <= header_len - 5, "b2nd metalayer outside the header")
    _need(mv[where] == 0xC6, "b2nd metalayer content marker")
    length = _be(mv, where + 1, "I")
    _need(where + 5 + length <= header_len, "b2nd metalayer runs past the header")
    m = _Reader(mv, where + 5, where + 5 + length)
    _need(m.array() == 7, "b2nd metalayer is not a 7-element array")
    _need(m.int() in (0, 1), "b2nd metalayer version")
    ndim = m.int()
    _need(0 <= ndim <= _MAX_NDIM, f"{ndim} dimensions")
    parts = []
    for _ in range(3):
        _need(m.array() == ndim, "shape, chunks or blocks with the wrong length")
        parts.append(tuple(m.int() for _ in range(ndim)))
    shape, chunks, blocks = parts
    _need(all(0 <= s < 1 << 48 for s in shape), f"shape {shape}")
    _need(all(0 <= c < 1 << 31 for c in chunks + blocks), "chunk or block shape out of range")
    _need(m.int() == 0, "dtype is not in NumPy format")
    text = m.str(limit=length)  # a record dtype is spelt out, field by field
    if not _DTYPE_RE.match(text):
        _unsupported(text, _dtype_kind(text))
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise _Bad(f"dtype {text!r} is not a numpy dtype") from None
    _need(dtype.kind in "biufc" and not dtype.hasobject, f"dtype {dtype} cannot be an image")
    if dtype.itemsize > 16:  # complex256: Blosc2 writes it, the readers here stop at 16 bytes
        _unsupported(text, f"{dtype.itemsize}-byte {dtype.name}")
    return shape, chunks, blocks, dtype, (where + 5, where + 5 + length)


def _unsupported(text: str, kind: str) -> None:
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise _UnsupportedDtype(
        f"dtype {shown!r} ({kind}) is not supported by this version of mlarray, which reads "
        "numeric and bool arrays (up to 16 bytes per value) only"
    )


def _dtype_kind(text: str) -> str:
    """What kind of array a dtype string of the b2nd metalayer stands for, in words."""
    if text.startswith("["):
        return "a structured (record) dtype"
    kinds = {"U": "strings", "S": "byte strings", "O": "Python objects", "V": "raw bytes"}
    kinds |= {"M": "dates and times", "m": "time intervals"}
    kind = text.lstrip("<>|=")[:1]
    return kinds.get(kind, "not a numeric dtype")


# ---------------------------------------------------------------- chunks
def chunk_special(header: bytes, itemsize: int) -> tuple[int, bytes | None]:
    """The special value of a chunk from its header (``SChunk.get_lazychunk``): ``(kind,
    value)`` with kind 0 for stored data, 1 zeros, 2 NaN, 3 a repeated value (its
    ``itemsize`` bytes, which follow the header), 4 uninitialised; kind 0 for a header
    too short to tell (the chunk is then decoded, and checked, as any other)."""
    if len(header) < _CHUNK_HEADER:
        return 0, None
    kind = (header[31] >> 4) & 0x07
    if kind == 3:
        if len(header) < _CHUNK_HEADER + itemsize:
            return 0, None
        return 3, bytes(header[_CHUNK_HEADER : _CHUNK_HEADER + itemsize])
    return (kind, None) if kind in (1, 2, 4) else (0, None)


def _chunk_header_sizes(mv: memoryview, pos: int) -> tuple[int, int, int, int]:
    """(typesize, nbytes, blocksize, cbytes) of the chunk header at ``pos``."""
    ts = mv[pos + 3]
    nb, bs, cb = struct.unpack_from("<iii", mv, pos + 4)
    return ts, nb, bs, cb


def decompress_chunk_bytes(chunk: bytes) -> bytes:
    """Decompress a (header-checked) Blosc2 chunk held in memory: through the wheel's
    C library when it can be used (:mod:`mlarray._clib`, no python-blosc2 import),
    else python-blosc2."""
    from mlarray import _clib

    lib = _clib.get()
    if lib is not None:
        return lib.decompress_bytes(chunk)
    import blosc2

    return blosc2.decompress(chunk)


def _decompress_chunk_array(chunk: bytes) -> np.ndarray:
    """:func:`decompress_chunk_bytes` into a new uint8 array (of up to 128 MiB for the
    chunk offsets): no zero-filled buffer first, no copy of it after."""
    from mlarray import _clib

    lib = _clib.get()
    if lib is None:
        return np.frombuffer(decompress_chunk_bytes(chunk), dtype=np.uint8)
    nbytes = int.from_bytes(chunk[4:8], "little", signed=True)  # checked: 0 <= nbytes
    out = np.empty(max(nbytes, 1), dtype=np.uint8)
    got = lib.decompress(chunk, len(chunk), out.ctypes.data, nbytes)
    if got != nbytes:
        raise ValueError(f"the chunk decompressed to {got} bytes, its header says {nbytes}")
    return out[:nbytes]


def decode_offsets(chunk: bytes, nchunks: int) -> np.ndarray:
    """Decompress the (already header-checked) chunk of chunk offsets."""
    check_chunk_blocks(chunk, "the chunk offsets", 8 * nchunks)
    out = _decompress_chunk_array(chunk).view("<i8")
    _need(out.size == nchunks, f"{out.size} chunk offsets for {nchunks} chunks")
    return out.astype(np.int64, copy=False)


def _offsets(mv: memoryview, start: int, trailer_start: int, nchunks: int) -> np.ndarray:
    _need(start + _CHUNK_HEADER <= trailer_start, "no room for the chunk offsets")
    _check_chunk_flags(mv, start, "the chunk offsets")
    ts, nb, _bs, cb = _chunk_header_sizes(mv, start)
    _need(ts == 8, f"chunk offsets have type size {ts}")
    _need(nb == 8 * nchunks, f"{nb // 8} chunk offsets for {nchunks} chunks")
    _need(_CHUNK_HEADER <= cb <= trailer_start - start, "chunk offsets run past their room")
    try:
        return decode_offsets(bytes(mv[start : start + cb]), nchunks)
    except (_Bad, MemoryError):  # out of memory is not damage
        raise
    except Exception as exc:
        raise _Bad(f"chunk offsets cannot be decompressed ({exc})") from None


def _check_chunk_flags(mv: memoryview, pos: int, what: str) -> None:
    flags, b2flags, b2flags2 = mv[pos + 2], mv[pos + 31], mv[pos + 30]
    _need(flags & 0x05 == 0x05, f"{what} lack the Blosc2 extended header")
    _need((flags >> 5) in _BUILTIN_CODECS, f"{what} use codec {flags >> 5}, not a builtin one")
    _need(not b2flags & 0x08, f"{what} are marked lazy")
    _need(not b2flags2 & 0x01, f"{what} use variable-size blocks")


def check_chunk_blocks(chunk: Any, what: str, max_nbytes: int) -> None:
    """Check what c-blosc2 trusts in one chunk before it decompresses it whole.

    The sizes in its header against the chunk's own length, and the start of every
    block: c-blosc2 reads a block from wherever its start says, so a damaged start
    reads (and crashes) outside the chunk. ``max_nbytes`` bounds the size the header
    claims (what a caller allocates for the result). Raises ``_Bad``.
    """
    mv = memoryview(chunk).cast("B")
    n = len(mv)
    _need(n >= _CHUNK_HEADER, f"{what} is shorter than a chunk header")
    _check_chunk_flags(mv, 0, what)
    _ts, nb, bs, cb = _chunk_header_sizes(mv, 0)
    _need(cb == n, f"{what} says it is {cb} bytes long, not {n}")
    _need(0 <= nb <= max_nbytes, f"{what} claims {nb} bytes")
    special = (mv[31] >> 4) & 0x07
    if special:  # no blocks stored: a value repeated (zeros, NaNs, ...)
        _need(special in _SPECIAL_IN_CHUNKS, f"{what} has a bad special value")
        return
    if mv[2] & 0x02:  # memcpyed: the data follows the header
        _need(cb >= _CHUNK_HEADER + nb, f"{what} is shorter than its data")
        return
    if nb == 0:
        return
    _need(bs > 0, f"{what} has block size {bs}")
    nblocks = -(-nb // bs)
    table = _CHUNK_HEADER + 4 * nblocks
    _need(table <= cb, f"{what} has no room for its {nblocks} block starts")
    starts = np.frombuffer(mv, dtype="<i4", count=nblocks, offset=_CHUNK_HEADER)
    _need(bool(np.all((starts >= table) & (starts < cb))), f"{what}: a block starts outside it")


def _chunks(
    mv: memoryview,
    raw: np.ndarray,
    header_len: int,
    cbytes: int,
    dtype: np.dtype,
    chunksize: int,
    blocksize: int,
    read_at: Any = None,
) -> tuple[np.ndarray, np.ndarray, ChunkSet, bool]:
    typesize = dtype.itemsize
    # Few temporaries, none of Python objects: a frame may have up to MAX_CHUNKS chunks
    # (a tiny file of special-value chunks, too), each of which costs its bookkeeping.
    # The special value of each chunk (0: data; a regular offset is far below 2**56).
    kind = raw.view(np.uint64) >> np.uint64(56)
    kind &= np.uint64(0x7F)
    kind = kind.astype(np.uint8)
    special = raw < 0
    seen = np.flatnonzero(np.bincount(kind, minlength=1)).tolist()  # not np.unique: numpy.ma
    for k in seen:
        _need(k == 0 or k in _SPECIAL_IN_OFFSETS, f"chunk offset with special value {k}")
    _need(not np.any(special & (kind == 0)), "chunk offset with special value 0")
    if 2 in seen:
        _need(dtype.kind == "f" and typesize in (4, 8), "NaN chunks in a non-float array")
    regular = ~special
    del special
    offs = raw[regular]
    _need(
        bool(np.all((offs >= 0) & (offs <= cbytes - _CHUNK_HEADER))),
        "a chunk offset points outside the data section",
    )
    pos = np.full(raw.shape, -1, dtype=np.int64)
    cb = np.zeros(raw.shape, dtype=np.int64)
    delta = False
    if offs.size:
        starts = offs + header_len
        hdr = _chunk_headers(mv, starts, read_at)
        f = hdr[:, 2]
        _need(bool(np.all(f & 0x05 == 0x05)), "a chunk lacks the Blosc2 extended header")
        codecs = f >> 5
        _need(bool(np.all(np.isin(codecs, list(_BUILTIN_CODECS)))), "a chunk uses a foreign codec")
        _need(bool(np.all(hdr[:, 31] & 0x08 == 0)), "a chunk is marked lazy")
        _need(bool(np.all(hdr[:, 30] & 0x01 == 0)), "a chunk uses variable-size blocks")
        _need(
            bool(np.all(np.isin(hdr[:, 16:22], _BUILTIN_FILTERS))), "a chunk has a foreign filter"
        )
        _need(bool(np.all(hdr[:, 3] == min(typesize, 255))), "a chunk header has another type size")
        sizes = hdr[:, 4:16].copy().view("<i4").reshape(-1, 3).astype(np.int64)
        nb, bs, ccb = sizes[:, 0], sizes[:, 1], sizes[:, 2]
        _need(bool(np.all(nb == chunksize)), "a chunk header has another uncompressed size")
        spec = (hdr[:, 31] >> 4) & 0x07
        _need(bool(np.all((bs >= 0) & (bs <= chunksize))), "a chunk header has a bad block size")
        _need(bool(np.all((spec != 0) | (bs == blocksize))), "a chunk has another block size")
        _need(bool(np.all(np.isin(spec, _SPECIAL_IN_CHUNKS))), "a chunk has a bad special value")
        _need(bool(np.all(ccb >= _CHUNK_HEADER)), "a chunk header has a bad compressed size")
        _need(bool(np.all(offs + ccb <= cbytes)), "a chunk runs past the data section")
        memcpyed = (f & 0x02) != 0
        _need(
            bool(np.all(~memcpyed | (spec != 0) | (ccb >= nb + _CHUNK_HEADER))),
            "a memcpyed chunk is shorter than its data",
        )
        order = np.argsort(offs, kind="stable")
        so, sc = offs[order], ccb[order]
        _need(bool(np.all(so[:-1] + sc[:-1] <= so[1:])), "two chunks overlap")
        pos[regular] = starts
        cb[regular] = ccb
        kind[regular] = spec
        delta = bool(np.any(hdr[:, 16:22] == _DELTA))
    return pos, cb, ChunkSet(np.flatnonzero(kind == _UNINIT)), delta


# Chunk headers closer than this to the previous one are read with it in one read
# (runs of small chunks); at most _RUN headers per read (a read stays near 1 MiB).
_NEAR = 4096
_RUN = 256


def _chunk_headers(mv: memoryview, starts: np.ndarray, read_at: Any) -> np.ndarray:
    """The :data:`_CHUNK_HEADER` bytes at each of ``starts`` (in bounds: checked), as
    rows of a ``uint8`` array; through ``read_at`` when given (see inspect_frame)."""
    span = np.arange(_CHUNK_HEADER)
    if read_at is None:
        return np.frombuffer(mv, dtype=np.uint8)[starts[:, None] + span]
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    n = len(s)
    first = np.ones(n, dtype=bool)
    first[1:] = s[1:] - s[:-1] > _NEAR
    run = np.cumsum(first) - 1
    first |= (np.arange(n) - np.flatnonzero(first)[run]) % _RUN == 0
    bounds = np.append(np.flatnonzero(first), n).tolist()
    out = np.empty((n, _CHUNK_HEADER), dtype=np.uint8)
    for i, j in itertools.pairwise(bounds):
        lo = int(s[i])
        size = int(s[j - 1]) + _CHUNK_HEADER - lo
        got = read_at(lo, size)
        _need(len(got) == size, f"the file ends within the chunk header at {lo + len(got)}")
        if j == i + 1:  # one header (chunks far apart: the usual case): one row
            out[int(order[i])] = np.frombuffer(got, dtype=np.uint8)
            continue
        out[order[i:j]] = np.frombuffer(got, dtype=np.uint8)[(s[i:j] - lo)[:, None] + span]
    return out


# ---------------------------------------------------------------- trailer
def _trailer_len(mv: memoryview) -> int:
    size = len(mv)
    _need(mv[size - _TRAILER_LEN_OFFSET - 1] == 0xCE, "trailer length marker")
    n = _be(mv, size - _TRAILER_LEN_OFFSET, "I")
    _need(_TRAILER_MINLEN <= n <= size - _HEADER_MINLEN, f"trailer length {n}")
    return n


def _vlmeta_index(mv: memoryview, start: int, length: int) -> dict[str, tuple[int, int]]:
    """Name -> (position, length) of each variable-length metalayer's compressed content."""
    end = start + length
    r = _Reader(mv, start, end)
    _need(r.array() == 4, "trailer is not a 4-element array")
    r.int()  # trailer version
    _need(r.byte() == 0x93, "vlmetalayer section marker")
    _need(r.byte() == 0xCD, "vlmetalayer index size marker")
    r._take(2)
    _need(r.byte() == 0xDE, "vlmetalayer map marker")
    n = struct.unpack(">H", r._take(2))[0]
    _need(n <= _MAX_VLMETALAYERS, f"{n} variable-length metalayers")
    out: dict[str, tuple[int, int]] = {}
    for _ in range(n):
        b = r.byte()
        _need(0xA0 <= b <= 0xBF, "vlmetalayer name marker")
        name = bytes(r._take(b & 0x1F)).decode("utf-8", "replace")
        _need(r.byte() == 0xD2, "vlmetalayer offset marker")
        off = struct.unpack(">i", r._take(4))[0]
        _need(off >= 0 and off + 5 <= length, f"vlmetalayer {name!r} outside the trailer")
        _need(mv[start + off] == 0xC6, f"vlmetalayer {name!r} content marker")
        clen = _be(mv, start + off + 1, "i")
        cpos = start + off + 5
        _need(_CHUNK_HEADER <= clen <= end - cpos, f"vlmetalayer {name!r} length {clen}")
        _check_chunk_flags(mv, cpos, f"vlmetalayer {name!r}")
        _ts, nb, _bs, cb = _chunk_header_sizes(mv, cpos)
        _need(cb == clen, f"vlmetalayer {name!r} sizes disagree")
        _need(
            0 <= nb <= MAX_VLMETA_BYTES,
            f"vlmetalayer {name!r} expands to {nb} bytes (limit {MAX_VLMETA_BYTES})",
        )
        out[name] = (cpos, clen)
    for expected in _OWN_VLMETA:
        if expected in out:
            continue
        for name in out:
            if (
                len(name) == len(expected)
                and sum(a != b for a, b in zip(name, expected, strict=True)) <= 2
            ):
                raise _Bad(f"vlmetalayer name {name!r} is a damaged {expected!r}")
    return out


# Names of the vlmeta entries mlarray writes; a damaged name would silently drop the
# record or the checksums, so a near miss (1-2 changed characters) is damage.
_OWN_VLMETA = ("mlarray", "mlarray_checksums")


def read_vlmeta_bytes(mv: Any, info: FrameInfo, name: str, path: Any = None) -> Any:
    """The value of vlmeta entry ``name`` (None if absent), decoded with size checks.

    Blosc2 stores each value msgpack-packed inside a Blosc2 chunk; the chunk's
    declared size was checked by :func:`inspect_frame`. Only ``bytes``
    values (msgpack ``bin``) are returned as such; other values are decoded
    by msgpack with its own limits.
    """
    where = info.vlmeta.get(name)
    if where is None:
        return None
    pos, n = where
    chunk = bytes(memoryview(mv)[pos : pos + n])
    try:
        check_chunk_blocks(chunk, f"vlmeta entry {name!r}", MAX_VLMETA_BYTES)
    except _Bad as exc:
        raise MLArrayFormatError(path, str(exc)) from None
    try:
        packed = decompress_chunk_bytes(chunk)
    except Exception as exc:
        raise MLArrayFormatError(
            path, f"vlmeta entry {name!r} cannot be decompressed ({exc})"
        ) from None
    if packed[:1] in (b"\xc4", b"\xc5", b"\xc6"):
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}[packed[0]]
        size = int.from_bytes(packed[1 : 1 + width], "big")
        body = packed[1 + width : 1 + width + size]
        if len(body) != size:
            raise MLArrayFormatError(path, f"vlmeta entry {name!r} is truncated")
        return bytes(body)
    import msgpack

    try:
        return msgpack.unpackb(
            packed,
            raw=False,
            strict_map_key=True,
            max_buffer_size=len(packed),
            max_array_len=100_000,
            max_map_len=100_000,
        )
    except Exception as exc:
        raise MLArrayFormatError(
            path, f"vlmeta entry {name!r} is not valid msgpack ({exc})"
        ) from None
