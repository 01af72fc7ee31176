"""Frames of millions of chunks (a tiny file of zero or uninitialised chunks: 4-byte
chunks, all special values): opening one keeps a few bytes of numpy bookkeeping per
chunk, no Python object per chunk, and running out of memory while opening it is
mlarray's own error naming the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import blosc2
import numpy as np
import pytest

from mlarray import MLArray

N = 1 << 22  # chunks


def _tiny_file(path, make) -> None:
    make((4 * N,), dtype=np.uint8, chunks=(4,), blocks=(4,), urlpath=str(path), mode="w")


@pytest.mark.parametrize("make", [blosc2.zeros, blosc2.uninit], ids=["zeros", "uninit"])
def test_open_of_millions_of_special_chunks_keeps_little_per_chunk(tmp_path, make):
    p = tmp_path / "many.mla"
    _tiny_file(p, make)
    assert p.stat().st_size < 1000
    tracemalloc.start()
    try:
        m = MLArray.open(p)
        np.testing.assert_array_equal(m[4 * N - 8 :], np.zeros(8, np.uint8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the chunk index (offsets, positions, sizes: 24 bytes a chunk; the uninitialised
    # chunks' numbers: 8 more) and a few bytes of
    # temporaries; a Python int or list entry per chunk costs 8-40 bytes more
    assert peak / N < 40
    m.close()


def test_running_out_of_memory_while_opening_names_the_file(tmp_path):
    p = tmp_path / "many.mla"
    _tiny_file(p, blosc2.zeros)
    code = textwrap.dedent(
        """
        import resource, sys
        from mlarray import MLArray
        from mlarray.errors import MLArrayMemoryError
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
        # some room, not enough for the 4 Mi chunks' index (32 MiB an array)
        resource.setrlimit(resource.RLIMIT_AS, (size + (48 << 20),) * 2)
        try:
            MLArray.open(sys.argv[1])
        except MLArrayMemoryError as exc:
            print("MLArrayMemoryError", exc)
        except MemoryError as exc:
            print("foreign", type(exc).__module__, exc)
        else:
            print("opened")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.startswith("MLArrayMemoryError"), (out.stdout, out.stderr[-2000:])
    assert str(p) in out.stdout and "not enough memory" in out.stdout
