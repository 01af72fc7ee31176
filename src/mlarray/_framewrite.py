"""Writing the Blosc2 contiguous frame of a b2nd array ourselves, streaming.

c-blosc2 writes a chunk into a frame on disk by rewriting the frame around it:
for every ``update_chunk`` it reads the header again, opens and closes the file
several times, recompresses the whole chunk-offsets index (with a new compression
context of four threads) and truncates the file. A save of a 256x384x384 CT in 96
chunks spends 40-70 ms there to write 40 MB that ``os.write`` puts down in 13 ms,
and far longer when other processes load the disk.

:class:`FrameWriter` writes the same frame in one pass instead: the header (taken
from a frame c-blosc2 made for the same array and parameters, so every field and
the ``b2nd`` metalayer are c-blosc2's own), then each compressed chunk as it
comes, in chunk order (none is held after it is written), then the chunk-offsets
chunk (compressed once, with the parameters c-blosc2 uses for it), then the
trailer with the variable-length metalayers, and finally the header's sizes. The
file is byte-for-byte the one ``blosc2.empty(..., urlpath=..., contiguous=True)``,
an ``update_chunk`` of every chunk in order and the same ``vlmeta`` entries set in
the same order would leave (``tests/test_framewrite.py`` checks that). Layout
references: c-blosc2's ``README_CFRAME_FORMAT.rst``, :mod:`mlarray.frame`.

The writer also takes each chunk's XXH3 digest as it goes (the bytes are in
memory then), so the checksum entries of :mod:`mlarray.integrity` need no second
pass over the file.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import blosc2
import numpy as np
import xxhash

from mlarray import frame as _frame

__all__ = ["FrameWriter", "Unsuitable", "frame_template"]

# Header fields (positions of the values, after their msgpack markers; frame.py checks
# the markers): header length, frame length, uncompressed size, compressed size, and
# the has-vlmetalayers boolean.
_HEADER_LEN_AT = 11
_FRAME_LEN_AT = 16
_NBYTES_AT = 30
_CBYTES_AT = 39
_HAS_VLMETA_AT = 68
_FRAME_HEADER_MINLEN = _frame._HEADER_MINLEN
_CHUNK_HEADER = _frame._CHUNK_HEADER
# Special values of whole chunks that c-blosc2 keeps in the chunk offsets instead of
# storing the chunk (zeros, NaN, uninitialised); other chunks (a repeated value among
# them) are stored as they are.
_OFFSET_SPECIALS = _frame._SPECIAL_IN_OFFSETS
_TRAILER_VERSION = 1
_WRITE_MIN = 1 << 20  # chunks are gathered into writes of at least this much...
_WRITE_MAX_PARTS = 256  # ...or of this many chunks (IOV_MAX is 1024 on Linux)

# The parameters c-blosc2 compresses the chunk offsets with (frame.c, in every chunk
# update: BLOSC2_CPARAMS_DEFAULTS with these changes). It uses four threads, which put
# the 16 KiB blocks of an index of more than 2048 chunks in the order they finish (any
# order is valid, so its bytes vary from run to run); one thread puts them in order:
# the bytes c-blosc2 writes whenever its blocks finish in order, always for 2048 chunks
# or fewer.
_OFFSETS_CPARAMS = {
    "codec": blosc2.Codec.BLOSCLZ,
    "clevel": 5,
    "typesize": 8,
    "nthreads": 1,
    "blocksize": 16 * 1024,
    "splitmode": blosc2.SplitMode.NEVER_SPLIT,
    "filters": [blosc2.Filter.NOFILTER] * 5 + [blosc2.Filter.SHUFFLE],
    "filters_meta": [0] * 6,
}


class Unsuitable(ValueError):
    """A chunk the frame cannot hold as it is (another size or type size than the
    frame's chunks, not a whole Blosc2 chunk): the caller lets c-blosc2 write the frame."""


def frame_template(shape: tuple[int, ...], dtype: np.dtype, kwargs: dict[str, Any]) -> bytes:
    """The header of a contiguous frame c-blosc2 makes for an array of ``shape`` and
    ``dtype`` with the constructor arguments ``kwargs`` (``chunks``, ``blocks``,
    ``cparams``, ``dparams``; no ``urlpath``): an empty array, in memory, whose header
    holds every field and metalayer the written frame's has."""
    kw = {k: v for k, v in kwargs.items() if k not in ("urlpath", "mode", "contiguous")}
    store = blosc2.empty(shape, dtype=dtype, contiguous=True, **kw)
    cframe = store.schunk.to_cframe()
    header_len = struct.unpack_from(">i", cframe, _HEADER_LEN_AT)[0]
    return bytes(cframe[:header_len])


class FrameWriter:
    """Writes a contiguous Blosc2 frame of ``nchunks`` fixed-size chunks to the file
    open as ``fd``, from its start.

    Parameters
    ----------
    fd : int
        A file descriptor open for writing, positioned at 0 of an empty file.
    header : bytes
        The frame header, from :func:`frame_template` (sizes are filled in by
        :meth:`finish`).
    nchunks : int
        Number of chunks the array has; :meth:`add` must be called that many times.

    Notes
    -----
    Use :meth:`add` for each compressed chunk in chunk order, then :meth:`finish`
    with the ``vlmeta`` entries. Errors of the file system (a full disk) are the
    ``OSError`` of the failed write.
    """

    def __init__(self, fd: int, header: bytes, nchunks: int) -> None:
        mv = memoryview(header)
        if bytes(mv[: len(_frame.FRAME_MAGIC)]) != _frame.FRAME_MAGIC:
            raise ValueError("not the header of a Blosc2 frame")
        self._header_len = struct.unpack_from(">i", mv, _HEADER_LEN_AT)[0]
        if self._header_len != len(header) or self._header_len < _FRAME_HEADER_MINLEN:
            raise ValueError("the frame header's length field disagrees with its size")
        self._header = bytearray(header)
        self._typesize = struct.unpack_from(">i", mv, 48)[0]
        self._chunksize = struct.unpack_from(">i", mv, 58)[0]
        lo, hi = _frame._b2nd_meta(mv, self._header_len)[4]
        self.layout_digest = xxhash.xxh3_64_intdigest(mv[lo:hi])
        self._fd = fd
        self.nchunks = int(nchunks)
        #: Each chunk's offset in the data section, or its special value (as c-blosc2
        #: stores them), its stored size (0 for a special value) and its XXH3 digest.
        self.raw_offsets = np.zeros(self.nchunks, dtype=np.int64)
        self.chunk_cbytes = np.zeros(self.nchunks, dtype=np.int64)
        self.digests = np.zeros(self.nchunks, dtype=np.uint64)
        self._n = 0
        self._cbytes = 0  # bytes of the data section written so far
        self._pending: list[Any] = []  # small chunks gathered for one write
        self._pending_bytes = 0
        _write_all(fd, self._header)  # placeholder: the sizes are filled in by finish

    def add(self, chunk: Any) -> None:
        """Append the next chunk (a whole Blosc2 chunk, bytes-like) of the frame.

        A chunk of zeros, NaNs or uninitialised values is stored in the chunk offsets,
        as c-blosc2 stores it; any other is written as it is.
        """
        i = self._n
        if i >= self.nchunks:
            raise ValueError(f"the frame has {self.nchunks} chunks; one more was added")
        mv = memoryview(chunk).cast("B")
        n = len(mv)
        if n < _CHUNK_HEADER or struct.unpack_from("<i", mv, 12)[0] != n:
            raise Unsuitable(f"chunk {i} is not a whole Blosc2 chunk")
        if struct.unpack_from("<i", mv, 4)[0] != self._chunksize or mv[3] != min(
            self._typesize, 255
        ):
            raise Unsuitable(f"chunk {i} has another size or type size than the frame")
        special = _frame.chunk_special(mv, self._typesize)[0]
        if special in _OFFSET_SPECIALS:
            raw = (1 << 63) | (special << 56)
            self.raw_offsets[i] = raw - (1 << 64)  # as a signed int64
            self.digests[i] = xxhash.xxh3_64_intdigest(raw.to_bytes(8, "little"))
        else:
            self.raw_offsets[i] = self._cbytes
            self.chunk_cbytes[i] = n
            self.digests[i] = xxhash.xxh3_64_intdigest(mv)
            self._cbytes += n
            # kept (not copied) until written: small chunks go down in one writev
            self._pending.append(chunk if isinstance(chunk, bytes) else bytes(mv))
            self._pending_bytes += n
            if self._pending_bytes >= _WRITE_MIN or len(self._pending) >= _WRITE_MAX_PARTS:
                self._flush()
        self._n = i + 1

    def _flush(self) -> None:
        if self._pending:
            _writev_all(self._fd, self._pending)
            self._pending, self._pending_bytes = [], 0

    @property
    def chunks_written(self) -> int:
        """Number of chunks added so far."""
        return self._n

    def finish(self, vlmeta: list[tuple[str, Any]]) -> int:
        """Write the chunk offsets, the trailer holding the ``vlmeta`` entries (name,
        value: stored as ``schunk.vlmeta[name] = value`` stores it, in this order) and
        the header's sizes; return the frame's length."""
        if self._n != self.nchunks:
            raise ValueError(f"{self._n} of the frame's {self.nchunks} chunks were added")
        self._flush()
        offsets = blosc2.compress2(self.raw_offsets.astype("<i8").tobytes(), **_OFFSETS_CPARAMS)
        trailer = _trailer(vlmeta)
        _write_all(self._fd, offsets + trailer)
        frame_len = self._header_len + self._cbytes + len(offsets) + len(trailer)
        h = self._header
        struct.pack_into(">Q", h, _FRAME_LEN_AT, frame_len)
        struct.pack_into(">q", h, _NBYTES_AT, self.nchunks * self._chunksize)
        struct.pack_into(">q", h, _CBYTES_AT, self._cbytes)
        h[_HAS_VLMETA_AT] = 0xC3 if vlmeta else 0xC2
        _pwrite_all(self._fd, h, 0)
        return frame_len


def vlmeta_chunk(value: Any) -> bytes:
    """The stored content of a ``vlmeta`` entry: ``value`` packed with Blosc2's msgpack
    and compressed as python-blosc2's ``vlmeta.__setitem__`` compresses it (its default
    parameters, type size 1)."""
    from blosc2.msgpack_utils import msgpack_packb

    return blosc2.compress2(msgpack_packb(value), typesize=1)


def _trailer(vlmeta: list[tuple[str, Any]]) -> bytes:
    """The frame trailer (README_CFRAME_FORMAT.rst) holding the ``vlmeta`` entries."""
    if len(vlmeta) > _frame._MAX_VLMETALAYERS:
        raise ValueError(f"{len(vlmeta)} variable-length metalayers")
    names = [name.encode("utf-8") for name, _ in vlmeta]
    if any(len(n) >= 32 for n in names):
        raise ValueError("a variable-length metalayer name is longer than 31 bytes")
    contents = [vlmeta_chunk(value) for _, value in vlmeta]
    # fixarray(4) and the trailer version; fixarray(3); the index: its size (uint16,
    # counted from its own marker), a map16 of name: int32 position of the content; an
    # array16 of the contents (bin32 each)
    index_len = 1 + 2 + 1 + 2 + sum(1 + len(n) + 1 + 4 for n in names)
    pos = 2 + 1 + index_len + 3  # where the first content starts in the trailer
    index = [b"\x93\xcd", struct.pack(">H", index_len), b"\xde", struct.pack(">H", len(names))]
    values = [b"\xdc", struct.pack(">H", len(names))]
    for name, content in zip(names, contents, strict=True):
        index += [bytes([0xA0 + len(name)]), name, b"\xd2", struct.pack(">i", pos)]
        values += [b"\xc6", struct.pack(">i", len(content)), content]
        pos += 5 + len(content)
    body = b"".join([bytes([0x94, _TRAILER_VERSION]), *index, *values])
    trailer_len = len(body) + 23
    # uint32 trailer length, then a fixext16 fingerprint of type 0 (none): 16 zero bytes
    return body + b"\xce" + struct.pack(">I", trailer_len) + b"\xd8\x00" + bytes(16)


def _write_all(fd: int, data: Any) -> None:
    mv = memoryview(data).cast("B")
    while len(mv):
        n = os.write(fd, mv)
        mv = mv[n:]


def _writev_all(fd: int, parts: list[bytes]) -> None:
    n = os.writev(fd, parts)
    total = sum(len(x) for x in parts)
    if n == total:
        return
    for part in parts:  # a short write (a signal, a nearly full disk): the rest one by one
        if n >= len(part):
            n -= len(part)
            continue
        _write_all(fd, memoryview(part)[n:])
        n = 0


def _pwrite_all(fd: int, data: Any, pos: int) -> None:
    mv = memoryview(data).cast("B")
    while len(mv):
        n = os.pwrite(fd, mv, pos)
        mv, pos = mv[n:], pos + n
