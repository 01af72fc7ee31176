"""Damaged block starts inside a chunk never crash the process.

c-blosc2 reads each block of a chunk from the offset the chunk's block-start table
gives. For the chunks mlarray decompresses whole itself (the metadata record, the
checksums, the chunk offsets) it does not check that offset: one damaged byte there
crashed the process (SIGSEGV); those are refused before c-blosc2 sees them. Data
chunks are decoded by c-blosc2's slicer, which checks them: a damaged one fails the
reads that touch it, and the rest of the file stays readable. Each case runs in a
child process, so a crash fails the test instead of the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.frame import inspect_frame

_OPEN = (
    "import sys, numpy as np\n"
    "from mlarray import MLArray\n"
    "from mlarray.errors import MLArrayFormatError\n"
    "try:\n"
    "    MLArray.open(sys.argv[1])[...]\n"
    "except MLArrayFormatError as e:\n"
    "    print('refused:', e)\n"
    "else:\n"
    "    print('opened')\n"
)


def _file(tmp_path, name: str, planes: int = 24) -> tuple[bytes, object]:
    p = tmp_path / name
    x = np.zeros((planes, 40, 40), np.float32)
    x[8:16] = np.random.default_rng(2).random((8, 40, 40))  # chunks that store blocks
    x[16:] = 3.5
    MLArray(x, patch_size=None, chunk_size=(8, 20, 20), block_size=(4, 10, 10)).save(p)
    raw = p.read_bytes()
    return raw, inspect_frame(raw, p)


def _damaged(tmp_path, name: str, raw: bytes, at: int, value: int) -> str:
    b = bytearray(raw)
    b[at] = value
    p = tmp_path / name
    p.write_bytes(bytes(b))
    r = subprocess.run(
        [sys.executable, "-c", _OPEN, os.fspath(p)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"crashed ({r.returncode}): {r.stderr[-1500:]}"
    return r.stdout


@pytest.mark.parametrize("value", [0x40, 0x08, 0x7F])
def test_damaged_block_start_of_a_metadata_entry_is_refused(tmp_path, value):
    # Blosc2's compressed bytes of the random chunks vary between saves, and so do their
    # digests: with only a few constant chunks the checksums entry sometimes stayed
    # uncompressed (no block starts to damage). 40 more constant planes: 20 more equal
    # digests, an entry that always compresses.
    raw, info = _file(tmp_path, "vlmeta_ok.mla", planes=64)
    pos, _n = info.vlmeta["mlarray_checksums"]  # compressed (the record is stored as is)
    assert not raw[pos + 2] & 0x02
    out = _damaged(tmp_path, "vlmeta_bad.mla", raw, pos + 35, value)  # first start's top byte
    assert out.startswith("refused:") and "vlmeta_bad.mla" in out, out


_READ = (
    "import sys, numpy as np\n"
    "from mlarray import MLArray, integrity\n"
    "from mlarray.errors import CorruptChunkError\n"
    "integrity.set_verify_on_read(sys.argv[2] == 'on')\n"
    "a = MLArray.open(sys.argv[1])\n"
    "try:\n"
    "    a[...]\n"
    "except CorruptChunkError as e:\n"
    "    print('refused:', e)\n"
    "else:\n"
    "    print('read')\n"
    "print('rest', float(a[16:].sum()))\n"
)


@pytest.mark.parametrize("verify", ["on", "off"])
@pytest.mark.parametrize("value", [0x40, 0x08, 0x7F])
def test_damaged_block_start_of_a_data_chunk_fails_that_chunk_only(tmp_path, value, verify):
    """A data chunk's damaged block start fails reads of that chunk (checksums on or
    off: c-blosc2 checks data chunks' block starts itself), never the process, and
    the other chunks stay readable (salvage)."""
    raw, info = _file(tmp_path, "data_ok.mla")
    stored = [int(p) for p in info.chunk_pos if p >= 0]
    pos = next(p for p in stored if not raw[p + 2] & 0x02 and not (raw[p + 31] >> 4) & 7)
    b = bytearray(raw)
    b[pos + 35] = value  # the first block start's top byte
    p = tmp_path / "data_bad.mla"
    p.write_bytes(bytes(b))
    r = subprocess.run(
        [sys.executable, "-c", _READ, os.fspath(p), verify],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"crashed ({r.returncode}): {r.stderr[-1500:]}"
    lines = r.stdout.splitlines()
    assert lines[0].startswith("refused:") and "data_bad.mla" in lines[0], r.stdout
    assert lines[1] == f"rest {3.5 * 8 * 40 * 40}", r.stdout
