"""Frames whose header claims more than they hold are refused before anything is
allocated for the claim, and special chunks must fit the dtype."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import MLArrayFormatError
from mlarray.frame import MAX_CHUNKS


def _with_offsets(raw: bytes, offsets: np.ndarray) -> bytes:
    """``raw`` (a frame) with its chunk-offsets chunk replaced by ``offsets``."""
    import blosc2

    b = bytearray(raw)
    header_len = struct.unpack_from(">i", b, 11)[0]
    data_end = header_len + struct.unpack_from(">q", b, 39)[0]
    old = struct.unpack_from("<i", b, data_end + 12)[0]
    new = blosc2.compress2(np.asarray(offsets, dtype="<i8").tobytes(), typesize=8)
    out = bytearray(bytes(b[:data_end]) + new + bytes(b[data_end + old :]))
    struct.pack_into(">Q", out, 16, len(out))
    return bytes(out)


def test_a_tiny_file_claiming_billions_of_chunks_is_refused(tmp_path):
    import blosc2

    p = tmp_path / "claims.mla"
    blosc2.zeros((64, 64), dtype=np.uint8, chunks=(1, 1), blocks=(1, 1)).save(str(p))
    b = bytearray(p.read_bytes())
    shape = b"\x92\xd3" + struct.pack(">q", 64) + b"\xd3" + struct.pack(">q", 64)
    i = b.find(shape)
    assert i > 0
    n1, n2 = 16383, 16384  # 2^28 chunks: 2 GiB of chunk offsets
    struct.pack_into(">q", b, i + 2, n1)
    struct.pack_into(">q", b, i + 11, n2)
    struct.pack_into(">q", b, 30, n1 * n2)  # the frame's uncompressed size
    p.write_bytes(bytes(b))
    assert n1 * n2 > MAX_CHUNKS
    with pytest.raises(MLArrayFormatError, match=r"claims\.mla.*chunks"):
        MLArray.open(p)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex64])
def test_nan_chunks_are_refused_outside_float_arrays(tmp_path, dtype):
    p = tmp_path / "nan.mla"
    MLArray(
        np.arange(4 * 6 * 5, dtype=dtype).reshape(4, 6, 5),
        patch_size=None,
        chunk_size=(2, 6, 5),
        block_size=(1, 6, 5),
    ).save(p)
    raw = p.read_bytes()
    from mlarray.frame import inspect_frame

    offsets = inspect_frame(raw, p).raw_offsets.copy()
    offsets[1] = np.int64(np.uint64(0x82 << 56).astype(np.int64))  # special value: NaN
    p.write_bytes(_with_offsets(raw, offsets))
    with pytest.raises(MLArrayFormatError, match=r"nan\.mla.*NaN chunks"):
        MLArray.open(p)


def _reader_of(buf: bytes, reads: list) -> object:
    def read_at(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return buf[offset : offset + size]

    return read_at


def test_chunk_headers_are_read_from_the_file_in_bounded_runs(tmp_path):
    """MLArray.open reads the chunk headers with pread (``read_at``), not through the
    mapping: runs of nearby headers in one read of at most about 1 MiB, distant ones
    alone, and the frame it finds is the one the bytes hold (special chunks, small
    chunks, large ones)."""
    from mlarray.frame import inspect_frame

    rng = np.random.default_rng(3)
    small = rng.integers(0, 50, (64, 64, 32), dtype=np.uint8)  # 4096 chunks of 32 bytes
    small[:8] = 0  # chunks of zeros: special values, no header in the data
    big = rng.integers(0, 2**16, (8, 256, 256), dtype=np.uint16)  # 8 chunks of 128 KiB
    for name, data, chunks in (("small", small, (2, 2, 8)), ("big", big, (1, 256, 256))):
        p = tmp_path / f"{name}.mla"
        MLArray(data, patch_size=None, chunk_size=chunks, block_size=chunks).save(p)
        buf = p.read_bytes()
        reads: list = []
        info = inspect_frame(buf, p, _reader_of(buf, reads))
        plain = inspect_frame(buf, p)
        for field in ("raw_offsets", "chunk_pos", "chunk_cbytes"):
            np.testing.assert_array_equal(getattr(info, field), getattr(plain, field))
        assert (info.uninit, info.delta) == (plain.uninit, plain.delta)
        stored = int(np.count_nonzero(info.chunk_pos >= 0))
        assert all(size <= (1 << 20) + 64 for _, size in reads)
        if name == "small":
            assert stored < info.nchunks  # the zero chunks are special
            assert len(reads) <= -(-stored // 256) + 1 < stored / 100
        else:
            assert len(reads) == stored == 8  # 128 KiB apart: one read per header
            assert all(size == 32 for _, size in reads)
        np.testing.assert_array_equal(MLArray.open(p)[...], data)


def test_a_failing_or_short_read_of_the_chunk_headers_is_an_error_naming_the_file(tmp_path):
    import errno

    from mlarray.errors import MLArrayIOError
    from mlarray.frame import inspect_frame

    p = tmp_path / "a.mla"
    MLArray(np.arange(4096, dtype=np.int32).reshape(16, 16, 16), patch_size=None).save(p)
    buf = p.read_bytes()

    def failing(offset: int, size: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(MLArrayIOError, match=r"a\.mla.*could not be read") as exc:
        inspect_frame(buf, p, failing)
    assert exc.value.errno == errno.EIO
    with pytest.raises(MLArrayFormatError, match=r"a\.mla.*ends within the chunk header"):
        inspect_frame(buf, p, lambda offset, size: buf[offset : offset + size - 1])
