"""Plane reads through the decoded-layer cache never allocate what the file's block shape
claims: a block layer (a block's thickness of planes over the chunks a plane crosses) is
decoded only when it is small enough to keep; other planes are read chunk by chunk.

An honest file of zeros, a few hundred bytes on disk, with 32 KiB blocks 256 planes deep,
made a 4 MiB plane read allocate a 1 GiB layer (8 GiB for a 16 MiB plane): the napari
reader's contrast sample, every slider step, and ``MLArray.set_chunk_cache()`` reads.
"""

from __future__ import annotations

import itertools
import os

import blosc2
import numpy as np
import pytest

from mlarray import MLArray, _cstore, _read
from tests._children import run_python


def _layer_keys(cache: _read.ChunkCache) -> list[tuple]:
    return [k for k in cache._chunks if k[0] == "layer"]


LAYOUTS = [
    # shape, chunks, blocks: whole and edge chunks, blocks not dividing chunks, deep blocks
    ((37, 50, 23), (16, 20, 10), (8, 8, 4)),
    ((20, 33, 40), (20, 16, 16), (20, 4, 8)),
    ((5, 64, 48, 9), (2, 32, 16, 9), (1, 16, 16, 3)),
    ((64, 30), (64, 7), (32, 7)),
]


@pytest.mark.parametrize(("shape", "chunks", "blocks"), LAYOUTS)
@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
def test_direct_plane_reads_equal_numpy_on_every_axis(tmp_path, shape, chunks, blocks, dtype):
    rng = np.random.default_rng(7)
    data = (rng.normal(size=shape) * 1000).astype(dtype)
    p = tmp_path / "x.mla"
    MLArray(data, patch_size=None, chunk_size=chunks, block_size=blocks).save(p)
    stores = [blosc2.open(os.fspath(p)), _cstore.open_cstore(p)[0]]
    for store, axis in itertools.product(stores, range(len(shape))):
        for index in sorted({0, 1, blocks[axis], chunks[axis], shape[axis] - 1}):
            if index < shape[axis]:
                got = _read.read_plane_direct(store, axis, index)
                want = np.take(data, index, axis=axis)
                assert got.flags.c_contiguous and np.array_equal(got, want), (axis, index)


def test_planes_whose_layer_the_cache_cannot_keep_are_read_chunk_by_chunk(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, (64, 96, 80)).astype(np.int16)
    p = tmp_path / "deep.mla"
    MLArray(data, patch_size=None, chunk_size=(64, 32, 40), block_size=(64, 8, 8)).save(p)
    a = MLArray.open(p)
    # a layer along axis 0 is 64 planes of 15 KiB: 960 KiB, more than this cache holds
    a.set_chunk_cache(512 * 1024)
    cache = a._chunk_cache
    assert not _read.layer_fits(a._store, 0, cache) and _read.layer_fits(a._store, 1, cache)
    for i in (0, 17, 63):
        assert np.array_equal(a[i], data[i])
    assert _layer_keys(cache) == []  # no layer decoded for axis 0
    assert np.array_equal(a[:, 5], data[:, 5])
    assert _layer_keys(cache) == [("layer", 1, 0, 0)]  # 64 x 8 x 80 planes: kept
    store, _ = _cstore.open_cstore(p)
    small = _read.ChunkCache(512 * 1024)
    assert np.array_equal(_cstore.read(store, 3, small), data[3])
    assert np.array_equal(_cstore.read(store, (slice(40, 41),), small), data[40:41])
    assert _layer_keys(small) == []
    assert np.array_equal(_cstore.read(store, 3), data[3])  # no cache at all


CHILD = """
import os
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # its buffers are allocated on the first use:
import resource, sys, numpy as np
np.ones((2, 2)) @ np.ones((2, 2))  # before the limit
from mlarray import MLArray, _cstore, _read
from mlarray.errors import MLArrayMemoryError
from napari_mlarray._reader import get_reader
import napari.utils  # what the reader imports for its notes: before the limit
path = sys.argv[1]
vm = next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[2]), vm + int(sys.argv[2])))
m = MLArray.open(path)
m.set_chunk_cache()
store, _ = _cstore.open_cstore(path)
reads = {
    "cached m[0]": lambda: m[0],
    "cached m[:, 0]": lambda: m[:, 0],
    "viewer plane": lambda: _cstore.read(store, (slice(0, 1),), _read.ChunkCache()),
    "viewer int": lambda: _cstore.read(store, 9, _read.ChunkCache()),
    "napari reader": lambda: get_reader(path)(path)[0][0].source[5],
}
if sys.argv[3:]:  # the napari reader alone is not ours to keep under a tight limit
    del reads["napari reader"]
for what, read in reads.items():
    try:
        x = np.asarray(read())
        print(what, "ok", int(x.size), bool((x == 0).all()))
    except MLArrayMemoryError as exc:
        print(what, "memory", path in str(exc), str(exc).replace(" ", "_"))
    except MemoryError as exc:
        print(what, "bare", type(exc).__name__)
"""


def _deep_zeros(path, shape, chunks, blocks):
    blosc2.zeros(shape, dtype=np.uint8, chunks=chunks, blocks=blocks, urlpath=path, mode="w")


def test_a_deep_block_file_reads_its_planes_in_bounded_memory(tmp_path):
    """A 4 MiB plane of an honest (256, 2048, 2048) uint8 file whose blocks are 256 planes
    deep (a 1 GiB block layer), read under an address space of 400 MiB more than the
    reading process holds: every plane path reads it."""
    path = os.fspath(tmp_path / "deep.mla")
    _deep_zeros(path, (256, 2048, 2048), (256, 64, 64), (256, 8, 8))
    assert os.path.getsize(path) < 4096
    out = run_python(CHILD, path, 400 << 20).splitlines()
    assert len(out) == 5, out
    sizes = [2048 * 2048, 256 * 2048, 2048 * 2048, 2048 * 2048, 2048 * 2048]
    for line, size in zip(out, sizes, strict=True):
        assert line.endswith(f"ok {size} True"), out


def test_a_plane_bigger_than_memory_is_our_error_naming_the_file_and_the_size(tmp_path):
    """The same reads of a 64 MiB plane with 40 MiB to spare: MLArrayMemoryError naming
    the file and the size, never numpy's bare MemoryError (the napari reader is left out:
    OpenBLAS, which napari's import loads, aborts the process when it finds no memory)."""
    path = os.fspath(tmp_path / "wide.mla")
    _deep_zeros(path, (64, 8192, 8192), (64, 128, 128), (64, 16, 16))
    out = run_python(CHILD, path, 40 << 20, "tight").splitlines()
    assert len(out) == 4, out
    for line in (out[0], out[2], out[3]):
        assert " memory True " in line and f"read_{8192 * 8192}_bytes" in line, out
    assert out[1].endswith(f"ok {64 * 8192} True"), out  # a plane along axis 1 fits
