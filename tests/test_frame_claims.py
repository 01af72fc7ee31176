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
