"""A valid file stored as one big chunk, saved under a memory limit: what does not fit is
an MLArrayMemoryError naming the file, never a "corrupt" file or a bare c-blosc2 failure.

A save re-encoding such a file (another codec: ``save`` of another tool's file,
``mlarray recompress``) holds a chunk of the new file decoded, and c-blosc2 a chunk of
its own to decode and to compress it: that memory is the file's layout's.
"""

from __future__ import annotations

import os

import blosc2
import numpy as np
import pytest

from tests._children import run_python

SAVE_UNDER_LIMIT = """
import os
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import resource, sys, numpy as np
np.ones((2, 2)) @ np.ones((2, 2))
from mlarray import MLArray
from mlarray.errors import MLArrayMemoryError
path, out, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = MLArray.open(path)
vm = next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
try:
    m.save(out)
    print("ok")
except MLArrayMemoryError as exc:
    print("memory", path in str(exc), out in str(exc))
except Exception as exc:
    print("other", type(exc).__name__, exc)
"""


@pytest.mark.parametrize(
    ("headroom_mib", "names_source"),
    [
        (128, True),  # the decoded chunk itself does not fit
        (400, True),  # c-blosc2's own buffer to decode it does not
        (600, None),  # (on 2 cores) compressing it does not: the new file is named
    ],
)
def test_saving_a_chunk_bigger_than_memory_is_our_error_naming_the_file(
    tmp_path, headroom_mib, names_source
):
    path = os.fspath(tmp_path / "onechunk.mla")
    out = os.fspath(tmp_path / "copy.mla")
    shape = (256, 1024, 1024)  # 256 MiB in one chunk; another tool's codec settings
    # stored data (a chunk stored as one value is copied as such, never decoded)
    pattern = np.arange(1024, dtype=np.uint8)[None, :, None] ^ np.arange(1024, dtype=np.uint8)
    data = np.ascontiguousarray(np.broadcast_to(pattern, shape))
    blosc2.asarray(data, chunks=shape, blocks=(8, 256, 256), urlpath=path, mode="w")
    del data
    assert os.path.getsize(path) < 64 << 20
    result = run_python(SAVE_UNDER_LIMIT, path, out, headroom_mib << 20).split()
    assert result[0] == "memory", result
    named_source, named_target = result[1] == "True", result[2] == "True"
    assert named_source or named_target, result
    if names_source is not None:
        assert named_source, result
    assert sorted(os.listdir(tmp_path)) == ["onechunk.mla"]  # nothing half-written left


def test_stats_command_keeps_another_tools_chunks_as_they_are(tmp_path, capsys):
    """``mlarray stats`` rewrites a file with its chunks copied as they are: a file of
    another Blosc2 tool (no record of its codec) was compressed again with mlarray's
    defaults, which for a file stored as one big chunk holds that chunk decoded and
    compressed at once."""
    from mlarray import MLArray
    from mlarray.cli import main

    path = tmp_path / "other.mla"
    data = np.random.default_rng(1).integers(-1000, 3000, (30, 40, 50)).astype(np.int16)
    cparams = blosc2.CParams(codec=blosc2.Codec.ZLIB, clevel=3)
    blosc2.asarray(
        data, chunks=(30, 40, 50), blocks=(10, 20, 50), cparams=cparams, urlpath=os.fspath(path)
    )
    before = blosc2.open(os.fspath(path))
    chunks = [before.schunk.get_chunk(i) for i in range(before.schunk.nchunks)]
    assert main(["stats", os.fspath(path)]) == 0
    assert "1 done" in capsys.readouterr().out
    after = blosc2.open(os.fspath(path))
    assert after.schunk.cparams.codec == blosc2.Codec.ZLIB and after.schunk.cparams.clevel == 3
    assert [after.schunk.get_chunk(i) for i in range(after.schunk.nchunks)] == chunks
    m = MLArray.open(path)
    np.testing.assert_array_equal(m[...], data)
    assert m.meta.stats.median == np.median(data) and m.meta.stats.max == data.max()
