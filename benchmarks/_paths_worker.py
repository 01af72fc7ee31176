"""Worker of bench_paths.py: one fresh process per job, under our venv or the reference's.

``mla`` means the ``mlarray`` of the interpreter running this worker (ours, or the
reference package 0.0.54 used as a black box through its public API). The other kinds
are floors measured with bare Blosc2 / numpy on the same file. Every timed loop runs its
kinds interleaved (kind A, kind B, ..., then again), so that a burst of load from other
processes hits every kind alike; results are lists of seconds, the caller takes medians.

Usage: ``python _paths_worker.py JOB.json``; prints one JSON list of results last.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
from _worker import (
    _AnonSampler,
    _cpu,
    _proc_status,
    _reset_peak_rss,
    evict,
    run_tasks,
    warm,
)

# ----------------------------------------------------------------------------- floors


class CBlocks:
    """Decode only the blocks a box touches, at C speed: per touched chunk one
    ``blosc2_set_maskout`` (the untouched blocks skipped) and one ``blosc2_decompress_ctx``
    on the chunk's bytes in the memory-mapped file, into a scratch buffer; the masks and
    chunk addresses are worked out before the clock starts (:meth:`plan`). Nothing is
    copied out: the codec's own floor for this layout, with no Python per block."""

    def __init__(self, path: str) -> None:
        import mmap

        from mlarray import _clib
        from mlarray.frame import inspect_frame

        self.lib = _clib.get()  # the library's own binding of the wheel's libblosc2
        if self.lib is None:
            raise RuntimeError("libblosc2 is not shipped with this blosc2")
        with open(path, "rb") as f:
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        info = inspect_frame(self.buf, path)
        self.base = np.frombuffer(self.buf, dtype=np.uint8).ctypes.data
        self.shape, self.ch, self.bl = (np.array(x) for x in (info.shape, info.chunks, info.blocks))
        self.grid = tuple(info.grid)
        self.bpc = tuple(int(n) for n in -(-self.ch // self.bl))
        self.nblocks = int(np.prod(self.bpc))
        self.scratch = np.empty(int(np.prod(np.array(self.bpc) * self.bl)), dtype=info.dtype)
        self.pos, self.cb, self.raw = info.chunk_pos, info.chunk_cbytes, info.raw_offsets
        self.chunk_nbytes = self.scratch.nbytes
        self.nchunks = info.nchunks

    def plan(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        out = []
        c0, c1 = lo // self.ch, (hi - 1) // self.ch
        for c in np.ndindex(*(c1 - c0 + 1)):
            c = c0 + np.array(c)
            org = c * self.ch
            b0 = (np.maximum(lo, org) - org) // self.bl
            b1 = (np.minimum(hi, org + self.ch) - org - 1) // self.bl
            mask = np.ones(self.bpc, dtype=np.bool_)
            mask[tuple(slice(int(a), int(b) + 1) for a, b in zip(b0, b1, strict=True))] = False
            n = int(np.ravel_multi_index(tuple(int(x) for x in c), self.grid))
            if self.pos[n] >= 0:  # not a special chunk (all zeros, ...: no bytes to decode)
                out.append((mask, self.base + int(self.pos[n]), int(self.cb[n])))
        return out

    def run(self, plan: list[tuple[np.ndarray, int, int]]) -> None:
        masked, dst, nb, nblocks = (
            self.lib.decompress_masked,
            self.scratch.ctypes.data,
            self.chunk_nbytes,
            self.nblocks,
        )
        for mask, src, cbytes in plan:
            if masked(mask.ctypes.data, nblocks, src, cbytes, dst, nb) < 0:
                raise RuntimeError("decompression failed")

    def plan_place(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple[Any, ...]]:
        """What :meth:`run_place` does for the box ``lo:hi``, worked out before the clock:
        per touched chunk its mask and bytes (as :meth:`plan`) and the copies that put the
        box's part of it in place. The chunk's decoded blocks are viewed as (blocks along
        each axis, block shape) and transposed to (blocks, block)-pairs per axis (C order
        of the chunk, blocks still apart); along each axis the box covers a partial first
        block, whole blocks and a partial last block, so one strided numpy copy per
        combination of those pieces (1 for a chunk inside the box, at most 3^ndim) writes
        the box's part into the output, viewed with each axis split the same way. The
        rows of a piece (its extent along the last axis) are copied as single items of
        that many bytes (a ``V`` dtype): numpy's copy loop then moves a row per item
        instead of item by item (7-30 % faster than int16 items)."""
        import itertools

        nd = len(self.bl)
        s6 = self.scratch.reshape(tuple(self.bpc) + tuple(int(b) for b in self.bl))
        t6 = s6.transpose([ax for i in range(nd) for ax in (i, nd + i)])
        out = []
        c0, c1 = lo // self.ch, (hi - 1) // self.ch
        for c in np.ndindex(*(c1 - c0 + 1)):
            c = c0 + np.array(c)
            org = c * self.ch
            clo = np.maximum(lo, org) - org
            chi = np.minimum(hi, org + self.ch) - org
            pieces = []  # per axis: (first block, end block, start in block, end in block)
            for a in range(nd):
                b, x0, x1 = int(self.bl[a]), int(clo[a]), int(chi[a])
                k0, k1 = x0 // b, (x1 - 1) // b
                if k0 == k1:
                    pieces.append([(k0, k0 + 1, x0 - k0 * b, x1 - k0 * b)])
                    continue
                ax = []
                m0, m1 = k0, k1 + 1
                if x0 % b:
                    ax.append((k0, k0 + 1, x0 % b, b))
                    m0 = k0 + 1
                if x1 % b:
                    m1 = k1
                if m1 > m0:
                    ax.append((m0, m1, 0, b))
                if x1 % b:
                    ax.append((k1, k1 + 1, 0, x1 - k1 * b))
                pieces.append(ax)
            copies = []
            for combo in itertools.product(*pieces):
                dst, shape, src = [], [], []
                for a, (kb, ke, w0, w1) in enumerate(combo):
                    start = int(org[a]) + kb * int(self.bl[a]) + w0 - int(lo[a])
                    n = (ke - kb) * (w1 - w0)
                    dst.append(slice(start, start + n))
                    shape += [ke - kb, w1 - w0]
                    src += [slice(kb, ke), slice(w0, w1)]
                view = t6[tuple(src)]
                rows = np.dtype(f"V{shape[-1] * view.itemsize}")  # a block row as one item
                copies.append((tuple(dst), tuple(shape), rows, view.view(rows)))
            n = int(np.ravel_multi_index(tuple(int(x) for x in c), self.grid))
            region = tuple(
                slice(int(org[a] + clo[a] - lo[a]), int(org[a] + chi[a] - lo[a])) for a in range(nd)
            )
            if self.pos[n] >= 0:
                mask = np.ones(self.bpc, dtype=np.bool_)
                b0, b1 = clo // self.bl, (chi - 1) // self.bl
                mask[tuple(slice(int(a), int(b) + 1) for a, b in zip(b0, b1, strict=True))] = False
                out.append((mask, self.base + int(self.pos[n]), int(self.cb[n]), copies, None))
            else:  # a special chunk: zeros, NaN or uninitialized, written as such
                kind = int((int(self.raw[n]) >> 56) & 0x7F)
                out.append((None, 0, 0, region, {1: 0, 2: np.nan}.get(kind)))
        return out

    def run_place(self, plan: list[tuple[Any, ...]], shape: tuple[int, ...]) -> np.ndarray:
        """Decode the touched blocks (as :meth:`run`) and copy them into place in a new
        C-order array of ``shape`` (the box), with the copies :meth:`plan_place` listed."""
        masked, dst, nb, nblocks = (
            self.lib.decompress_masked,
            self.scratch.ctypes.data,
            self.chunk_nbytes,
            self.nblocks,
        )
        out = np.empty(shape, dtype=self.scratch.dtype)
        for mask, src, cbytes, copies, fill in plan:
            if mask is None:
                if fill is not None:
                    out[copies] = fill
                continue
            if masked(mask.ctypes.data, nblocks, src, cbytes, dst, nb) < 0:
                raise RuntimeError("decompression failed")
            for sl, sh, rows, view in copies:
                out[sl].reshape(sh).view(rows)[...] = view
        return out

    def decode_rate(self, reps: int = 3) -> float:
        """Decoded bytes per second of whole chunks (best of ``reps`` passes over all the
        stored chunks; chunks stored as a special value have no bytes to decode)."""
        decompress, dst, nb = self.lib.decompress, self.scratch.ctypes.data, self.chunk_nbytes
        best = float("inf")
        for _ in range(reps):
            s = time.perf_counter()
            for n in range(self.nchunks):
                if self.pos[n] < 0:
                    continue
                src = self.base + int(self.pos[n])
                decompress(src, int(self.cb[n]), dst, nb)
            best = min(best, time.perf_counter() - s)
        return int((np.asarray(self.pos) >= 0).sum()) * self.chunk_nbytes / best


class Blocks:
    """Decode only the Blosc2 blocks a box touches (``SChunk.get_slice`` per run of blocks
    along the last axis of each chunk), into a scratch buffer: no assembly, no output."""

    def __init__(self, path: str, nthreads: int = 1) -> None:
        self.nd = blosc2.open(
            path, mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=nthreads)
        )
        nd = self.nd
        self.shape = np.array(nd.shape)
        self.ch = np.array(nd.chunks)
        self.bl = np.array(nd.blocks)
        ext = np.array(nd.ext_chunks)
        self.grid = -(-self.shape // self.ch)
        self.bpc = ext // self.bl
        self.bitems = int(np.prod(self.bl))
        self.citems = int(np.prod(ext))
        self.buf = np.empty(self.citems, dtype=nd.dtype)

    def chunks_of(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        out = []
        c0, c1 = lo // self.ch, (hi - 1) // self.ch
        for c in np.ndindex(*(c1 - c0 + 1)):
            c = c0 + np.array(c)
            org = c * self.ch
            lo_c = np.maximum(lo, org) - org
            hi_c = np.minimum(hi, org + self.ch) - org
            n = int(np.ravel_multi_index(tuple(c), tuple(self.grid)))
            out.append((n, lo_c // self.bl, (hi_c - 1) // self.bl))
        return out

    def decode_blocks(self, lo: np.ndarray, hi: np.ndarray) -> None:
        sch, bpc, bitems = self.nd.schunk, self.bpc, self.bitems
        for n, b0, b1 in self.chunks_of(lo, hi):
            for b in np.ndindex(*(b1[:-1] - b0[:-1] + 1)):
                first = np.array((*(b0[:-1] + np.array(b)), b0[-1]))
                i0 = int(np.ravel_multi_index(tuple(first), tuple(bpc)))
                count = int(b1[-1] - b0[-1] + 1)
                start = n * self.citems + i0 * bitems
                sch.get_slice(start, start + count * bitems, out=self.buf[: count * bitems])

    def decode_chunks(self, lo: np.ndarray, hi: np.ndarray) -> None:
        for n, _, _ in self.chunks_of(lo, hi):
            self.nd.schunk.decompress_chunk(n, self.buf)

    def decode_all(self) -> None:
        sch = self.nd.schunk
        for n in range(sch.nchunks):
            sch.decompress_chunk(n, self.buf)

    def decode_all_threads(self, threads: int) -> None:
        """Decode every chunk once on ``threads`` Python threads (``blosc2.decompress2``
        without the GIL, one scratch buffer per thread, chunks taken in turn): the best
        decoding alone can do with that many threads."""
        blosc2.set_releasegil(True)
        sch, todo = self.nd.schunk, iter(range(self.nd.schunk.nchunks))
        lock = threading.Lock()

        def work() -> None:
            buf = np.empty_like(self.buf)
            while True:
                with lock:
                    n = next(todo, None)
                    if n is None:
                        return
                    chunk = sch.get_chunk(n)
                blosc2.decompress2(chunk, dst=buf, nthreads=1)

        _on_threads(work, threads)

    def decode_assemble(self) -> np.ndarray:
        """Decode every chunk once and copy its blocks into place in a new C-order array
        with one numpy copy per chunk (a view of the output split into block grid and
        block shape, the scratch buffer transposed to it): the plain way to read a whole
        volume of this layout. Edge chunks copy their valid part through a C-order
        rearrangement of the chunk."""
        shape, ch, bl, bpc = self.shape, self.ch, self.bl, self.bpc
        out = np.empty(tuple(shape), dtype=self.nd.dtype)
        nd = len(shape)
        blocks = self.buf.reshape(tuple(bpc) + tuple(bl))
        order = [ax for i in range(nd) for ax in (i, nd + i)]
        split = tuple(v for b, g in zip(bl, bpc, strict=True) for v in (int(g), int(b)))
        for n, idx in enumerate(np.ndindex(*self.grid)):
            org = np.array(idx) * ch
            ext = np.minimum(shape - org, ch)
            self.nd.schunk.decompress_chunk(n, self.buf)
            region = out[tuple(slice(int(o), int(o + e)) for o, e in zip(org, ext, strict=True))]
            if tuple(ext) == tuple(bpc * bl):
                np.copyto(region.reshape(split), blocks.transpose(order))
            else:
                full = blocks.transpose(order).reshape(tuple(bpc * bl))
                region[...] = full[tuple(slice(0, int(e)) for e in ext)]
        return out

    def decode_and_write(self, threads: int = 1) -> np.ndarray:
        """Decode every chunk once into the scratch buffer, then write a new output array
        of the volume's size once (allocate + fill): the work any full load does at the
        least (decoding, and writing every output byte to fresh memory), without the
        rearranging. With threads, both halves run on ``threads`` threads."""
        if threads == 1:
            self.decode_all()
        else:
            self.decode_all_threads(threads)
        return alloc_fill(tuple(self.shape), self.nd.dtype, threads)


def _on_threads(work: Any, threads: int) -> None:
    pool = [threading.Thread(target=work) for _ in range(threads - 1)]
    for t in pool:
        t.start()
    work()
    for t in pool:
        t.join()


def alloc_fill(shape: tuple, dtype: Any, threads: int = 1) -> np.ndarray:
    """A new array of ``shape`` written once (page faults + one write of every byte),
    by ``threads`` threads each filling its share."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    bounds = iter(range(threads))
    lock = threading.Lock()

    def work() -> None:
        with lock:
            i = next(bounds)
        flat[i * flat.size // threads : (i + 1) * flat.size // threads].fill(0)

    _on_threads(work, threads)
    return out


def _copy_overhead(cfloor: CBlocks, reps: int = 300) -> float:
    """Seconds one copy of :meth:`CBlocks.run_place` costs beyond moving its bytes: the
    same view, reshape and strided assignment on a single item (median of ``reps``)."""
    nd = len(cfloor.bl)
    out = np.empty((2,) * nd, dtype=cfloor.scratch.dtype)
    s6 = cfloor.scratch.reshape(tuple(cfloor.bpc) + tuple(int(b) for b in cfloor.bl))
    view = s6.transpose([ax for i in range(nd) for ax in (i, nd + i)])[(slice(0, 1),) * 2 * nd]
    sl, sh = (slice(0, 1),) * nd, (1,) * 2 * nd
    rows = np.dtype(f"V{view.itemsize}")
    view = view.view(rows)
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        out[sl].reshape(sh).view(rows)[...] = view
        times.append(time.perf_counter() - s)
    return float(np.median(times))


def _mla(nthreads: int = 1) -> Any:
    from mlarray import MLArray

    return MLArray


def _open_mla(path: str, nthreads: int = 1, *, cache: bool = False) -> Any:
    MLArray = _mla()
    a = MLArray.open(path, dparams={"nthreads": nthreads})
    _ = a.meta, a.shape, a.dtype, a.spacing
    if cache:
        a.set_chunk_cache()
    return a


def _open_napari_source(path: str) -> Any:
    """The array the napari reader gives its layer (``napari_mlarray._reader._open``): the
    file through the C library on every usable core, with its block-layer cache."""
    from mlarray._fork import usable_cores
    from napari_mlarray._source import open_source

    opened = open_source(path, usable_cores())
    if opened is None or opened[0] is None:
        raise RuntimeError(f"{path}: the napari reader's source cannot open it")
    return opened[0]


def _open_unverified(path: str) -> Any:
    """Ours with checksum verification of reads switched off (to price the checks)."""
    from mlarray import integrity

    previous = integrity.set_verify_on_read(False)
    try:
        return _open_mla(path)
    finally:
        integrity.set_verify_on_read(previous)


# ----------------------------------------------------------------------------- tasks


def _rotated(kinds: list[str], i: int) -> list[str]:
    """``kinds`` starting at ``i``: no kind always runs first (after another's reads)."""
    i %= max(1, len(kinds))
    return kinds[i:] + kinds[:i]


def task_patches(t: dict) -> dict:
    """Warm random patch reads, kinds interleaved patch by patch."""
    path, npy = t["path"], t["npy"]
    size = np.array(t["patch_size"])
    starts = [np.array(s) for s in t["starts"]]
    for p in (path, npy):
        warm(p)
    fns: dict[str, Any] = {}
    kinds = t["kinds"]
    handle = _open_mla(path) if "mla_handle" in kinds else None
    floor = Blocks(path) if any(k.startswith("limit") for k in kinds) else None
    cfloor, plans, places, extra = None, [], [], {}
    if "limit_blocks_c" in kinds:
        try:
            cfloor = CBlocks(path)
        except (RuntimeError, OSError) as exc:
            kinds = [k for k in kinds if not k.startswith(("limit_blocks_c", "limit_place"))]
            extra["c_floor_error"] = str(exc)
        else:
            plans = [cfloor.plan(lo, lo + size) for lo in starts]
            if "limit_place_c" in kinds:
                places = [cfloor.plan_place(lo, lo + size) for lo in starts]
                ncopies = [sum(len(c[3]) for c in p if c[0] is not None) for p in places]
                extra["place_copies"] = float(np.median(ncopies))
                extra["copy_overhead"] = _copy_overhead(cfloor)
            # the zero-over-read limit: this codec's decode rate applied to the patch's bytes
            rate = cfloor.decode_rate()
            patch_bytes = int(np.prod(size)) * cfloor.scratch.itemsize
            src = np.ones(patch_bytes, dtype=np.uint8)
            copy = []
            for _ in range(20):  # into a new array each time, as a read returns one
                s = time.perf_counter()
                out = np.empty(patch_bytes, dtype=np.uint8)
                np.copyto(out, src)
                copy.append(time.perf_counter() - s)
                del out
            zero = []
            out = np.empty(patch_bytes, dtype=np.uint8)
            out.fill(1)
            for _ in range(20):  # what a slicer that zeroes its output first adds
                s = time.perf_counter()
                out.fill(0)
                zero.append(time.perf_counter() - s)
            extra["zero_overread_decode"] = patch_bytes / rate
            extra["patch_zero"] = float(np.median(zero))
            extra["patch_copy"] = float(np.median(copy))
            extra["decode_rate"] = rate
    mm = np.load(npy, mmap_mode="r")
    b2 = blosc2.open(path, mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=1))

    def sl(lo: np.ndarray) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(a + n)) for a, n in zip(lo, size, strict=True))

    fns["mla_handle"] = lambda lo: handle[sl(lo)]
    fns["mla_open"] = lambda lo: _open_mla(path)[sl(lo)]
    fns["mla_open_noverify"] = lambda lo: _open_unverified(path)[sl(lo)]
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if t.get("checksums"):  # ours: price the checksum verification of reads
        from mlarray import integrity

        plain = _open_unverified(path)
        fns["mla_handle_noverify"] = lambda lo: plain[sl(lo)]
        # Steady state (a training run after its first epoch): every chunk verified once.
        # The "_first" kinds forget that before their read (each chunk it touches is
        # hashed: its first touch in the process) and bring it back after, untimed.
        integrity.verify_all(handle._store)
        restore: list[Any] = []
        for k in ("mla_handle_first", "mla_open_first"):
            before[k] = lambda: restore.append(integrity.forget_verified(handle._store))
            after[k] = lambda: restore.pop()()
        fns["mla_handle_first"] = fns["mla_handle"]
        fns["mla_open_first"] = fns["mla_open"]
    fns["b2_handle"] = lambda lo: b2[sl(lo)]
    fns["limit_blocks"] = lambda lo: floor.decode_blocks(lo, lo + size)
    fns["limit_chunks"] = lambda lo: floor.decode_chunks(lo, lo + size)
    plan_of = {id(lo): p for lo, p in zip(starts, plans, strict=False)}
    fns["limit_blocks_c"] = lambda lo: cfloor.run(plan_of[id(lo)])
    place_of = {id(lo): p for lo, p in zip(starts, places, strict=False)}
    fns["limit_place_c"] = lambda lo: cfloor.run_place(place_of[id(lo)], tuple(size))
    # the same reader as it would run: its masks and copies worked out per read, in Python
    fns["limit_place_planned"] = lambda lo: cfloor.run_place(
        cfloor.plan_place(lo, lo + size), tuple(size)
    )
    fns["npy_handle"] = lambda lo: np.array(mm[sl(lo)])
    fns["npy_open"] = lambda lo: np.array(np.load(npy, mmap_mode="r")[sl(lo)])

    ok = True
    if t.get("check"):
        ref = np.load(npy, mmap_mode="r")
        for k in ("mla_handle", "mla_open", "limit_place_c", "limit_place_planned"):
            if k in kinds:
                ok = ok and bool(np.array_equal(fns[k](starts[0]), ref[sl(starts[0])]))
    times: dict[str, list[float]] = {k: [] for k in kinds}
    c0, w0 = _cpu(), time.perf_counter()
    shuffle = random.Random(len(starts)).shuffle
    for lo in starts:
        order = list(kinds)
        shuffle(order)  # no kind always reads right after the same other kind
        for k in order:
            f = fns[k]
            if k in before:
                before[k]()
            s = time.perf_counter()
            f(lo)
            times[k].append(time.perf_counter() - s)
            if k in after:
                after[k]()
    cpu = (_cpu() - c0) / max(1e-9, time.perf_counter() - w0)
    return {"times": times, "ok": ok, "cpu": cpu, **extra}


def _touched_chunk_ranges(path: str, size: np.ndarray) -> Any:
    """``ranges(lo)``: the (offset, length) in the file of every chunk a box at ``lo`` touches."""
    import mmap

    from mlarray.frame import inspect_frame

    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    info = inspect_frame(buf, path)
    buf.close()
    ch, grid = np.array(info.chunks), tuple(info.grid)

    def ranges(lo: list[int]) -> list[tuple[int, int]]:
        lo_ = np.array(lo)
        c0, c1 = lo_ // ch, (lo_ + size - 1) // ch
        out = []
        for c in np.ndindex(*(c1 - c0 + 1)):
            n = int(np.ravel_multi_index(tuple(int(x) for x in c0 + np.array(c)), grid))
            if info.chunk_pos[n] >= 0:
                out.append((int(info.chunk_pos[n]), int(info.chunk_cbytes[n])))
        return out

    return ranges


def task_cold(t: dict) -> dict:
    """Patch reads after the file's pages were dropped from the page cache, interleaved.

    Storage floors on our file: ``pread_chunks`` reads the compressed bytes of every
    chunk the patch touches, one ``pread`` each, one after the other; ``pread_parallel``
    first asks for all of them (``posix_fadvise(WILLNEED)``) and then reads them: what
    the storage delivers when the requests overlap.
    """
    size = np.array(t["patch_size"])
    times: dict[str, list[float]] = {k: [] for k in t["kinds"]}
    paths = {"mla_open": t["path"], "npy_open": t["npy"]}
    paths["pread_chunks"] = paths["pread_parallel"] = t["path"]
    ranges = None
    if {"pread_chunks", "pread_parallel"} & set(t["kinds"]):
        ranges = _touched_chunk_ranges(t["path"], size)
    nbytes = []

    def sl(lo: list[int]) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(a + n)) for a, n in zip(lo, size, strict=True))

    for i, lo in enumerate(t["starts"]):
        for k in _rotated(t["kinds"], i):
            gc.collect()  # unmap the previous handle: mapped pages cannot be evicted
            evict(paths[k])
            s = time.perf_counter()
            if k == "mla_open":
                x = _open_mla(paths[k])[sl(lo)]
            elif k in ("pread_chunks", "pread_parallel"):
                fd = os.open(paths[k], os.O_RDONLY)
                try:
                    todo = ranges(lo)
                    if k == "pread_parallel":
                        for pos, n in todo:
                            os.posix_fadvise(fd, pos, n, os.POSIX_FADV_WILLNEED)
                    x = [os.pread(fd, n, pos) for pos, n in todo]
                finally:
                    os.close(fd)
                if k == "pread_chunks":
                    nbytes.append(sum(n for _, n in todo))
            else:
                x = np.array(np.load(paths[k], mmap_mode="r")[sl(lo)])
            times[k].append(time.perf_counter() - s)
            del x
    out: dict[str, Any] = {"times": times}
    if nbytes:
        out["touched_mb"] = float(np.median(nbytes)) / 1e6
    return out


def _b2_open(path: str, nthreads: int) -> Any:
    return blosc2.open(path, mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=nthreads))


def task_load(t: dict) -> dict:
    """Whole-volume reads, kinds interleaved; the file stays in the page cache."""
    path, npy = t["path"], t["npy"]
    warm(path)
    warm(npy)
    shape = tuple(np.load(npy, mmap_mode="r").shape)
    dtype = np.load(npy, mmap_mode="r").dtype
    MLArray = _mla()
    cores = len(os.sched_getaffinity(0))
    floor1 = Blocks(path, 1)

    fns = {
        "mla_open_all": lambda: MLArray.open(path, dparams={"nthreads": 1})[...],
        "mla_open_all_threads": lambda: MLArray.open(path, dparams={"nthreads": cores})[...],
        "mla_load": lambda: MLArray.load(path, dparams={"nthreads": 1}).to_numpy(),
        "mla_load_only": lambda: MLArray.load(path, dparams={"nthreads": 1}),
        "limit_decode_all": floor1.decode_all,
        "limit_decode_all_threads": lambda: floor1.decode_all_threads(cores),
        "limit_decode_assemble": floor1.decode_assemble,
        "limit_decode_write": floor1.decode_and_write,
        "limit_decode_write_threads": lambda: floor1.decode_and_write(cores),
        "alloc_fill": lambda: alloc_fill(shape, dtype),
        "alloc_fill_threads": lambda: alloc_fill(shape, dtype, cores),
        "npy_load": lambda: np.load(npy),
        # Blosc2's own C reader of our file (decodes every chunk, places its blocks in C)
        "b2_all": lambda: _b2_open(path, 1)[:],
        "b2_all_threads": lambda: _b2_open(path, cores)[:],
    }
    kinds = [k for k in t["kinds"] if k in fns]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {}
    ok = True
    ref = np.load(npy, mmap_mode="r")
    # One untimed read per kind first: the first read of a file in a process also
    # verifies every chunk's checksum (timed here as "first_<kind>", priced in the
    # patch section), and the first use of a code path imports and warms it.
    for k in kinds:
        gc.collect()
        s = time.perf_counter()
        x = fns[k]()
        times.setdefault(f"first_{k}", []).append(time.perf_counter() - s)
        if k.startswith(("mla", "b2")) and k != "mla_load_only":
            ok = ok and bool(np.array_equal(x, ref))
        del x
    for rep in range(t["reps"]):
        for k in _rotated(kinds, rep):
            gc.collect()
            c, s = _cpu(), time.perf_counter()
            x = fns[k]()
            times[k].append(time.perf_counter() - s)
            cpu.setdefault(f"cpu_{k}", []).append(_cpu() - c)
            del x
    times.update(cpu)  # CPU seconds of each read (all threads), as "cpu_<kind>"
    return {"times": times, "ok": ok, "cores": cores}


def task_save(t: dict) -> dict:
    """``MLArray(array).save(path)`` with default settings, reps interleaved by the caller."""
    MLArray = _mla()
    arr = np.load(t["src"])
    kw: dict[str, Any] = {}
    if t.get("is_seg"):
        from mlarray.meta import Meta

        kw["meta"] = Meta.from_mapping({"is_seg": True})
    times, cpus = [], []
    for _ in range(t["reps"]):
        Path(t["path"]).unlink(missing_ok=True)
        c0, s = _cpu(), time.perf_counter()
        MLArray(arr, **kw).save(t["path"])
        times.append(time.perf_counter() - s)
        cpus.append(_cpu() - c0)
    stored = blosc2.open(t["path"], mode="r")  # (its schunk is a view: kept alive)
    cp = stored.schunk.cparams
    ok = bool(np.array_equal(stored[...], arr))
    return {
        "times": {"save": times},
        "cpu": cpus,
        "size": os.path.getsize(t["path"]),
        "codec": f"{cp.codec.name}-{cp.clevel}",
        "ok": ok,
    }


def task_codecs(t: dict) -> dict:
    """Compress / decompress the volume with several codecs (our default layout), and read
    random patches of each (interleaved codec by codec)."""
    from mlarray import layout

    arr = np.load(t["src"])
    opts = layout.resolve_storage(arr.shape, arr.dtype, patch_size="default")
    cores = len(os.sched_getaffinity(0))
    out: dict[str, dict] = {}
    stores = {}
    for name, cp in t["codecs"].items():
        res: dict[str, list] = {"comp1": [], "compn": [], "decomp1": []}
        a = None
        for _ in range(t["reps"]):
            for key, nt in (("comp1", 1), ("compn", cores)):
                a = None
                s = time.perf_counter()
                a = blosc2.asarray(
                    arr,
                    chunks=opts.chunk_size,
                    blocks=opts.block_size,
                    cparams=blosc2.CParams(typesize=arr.itemsize, nthreads=nt, **_cparams(cp)),
                    dparams=blosc2.DParams(nthreads=1),
                )
                res[key].append(time.perf_counter() - s)
            s = time.perf_counter()
            a[...]
            res["decomp1"].append(time.perf_counter() - s)
        out[name] = {**res, "size": a.schunk.cbytes, "patch": []}
        stores[name] = a
    size = np.array(t["patch_size"])
    rng = np.random.default_rng(0)
    names = list(stores)
    for i in range(t["patches"]):
        lo = [int(rng.integers(0, n - p + 1)) for n, p in zip(arr.shape, size, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, size, strict=True))
        for name in _rotated(names, i):
            s = time.perf_counter()
            stores[name][sl]
            out[name]["patch"].append(time.perf_counter() - s)
    return {"codecs": out, "raw": arr.nbytes}


def _cparams(cp: dict) -> dict:
    out = dict(cp)
    out["codec"] = blosc2.Codec(out["codec"])
    if "filters" in out:
        out["filters"] = [blosc2.Filter(f) for f in out["filters"]]
        out["filters_meta"] = [0] * len(out["filters"])
    return out


def decode_layers(nd: Any, axis: int, start: int, n: int, keep: bool = False) -> list:
    """Decode, with bare Blosc2 (``nd`` freshly opened), the blocks under planes ``start ..
    start + n - 1`` along ``axis``: every block layer (one block thickness) those planes
    cross, in every chunk (``SChunk.get_slice`` per run of blocks that lie one after the
    other in a chunk), into a scratch buffer; no output. The decoding a plane cache that
    decodes only the needed blocks cannot avoid. With ``keep`` each layer goes into new
    memory of its own instead, returned (as a cache that keeps what it decoded must:
    the first scroll of a process writes its layers to fresh memory); the caller then
    copies each plane's bytes into a new array, contiguous (a block layer holds them
    in pieces: a reader's strided copy costs more)."""
    shape, chunks, blocks = nd.shape, nd.chunks, nd.blocks
    bgrid = [e // b for e, b in zip(nd.ext_chunks, blocks, strict=True)]
    grid = [-(-a // c) for a, c in zip(shape, chunks, strict=True)]
    bitems, citems = int(np.prod(blocks)), int(np.prod(nd.ext_chunks))
    outer, run = int(np.prod(bgrid[:axis])), int(np.prod(bgrid[axis + 1 :]))
    buf = np.empty(run * bitems, dtype=nd.dtype)
    layers = sorted({divmod(i, chunks[axis]) for i in range(start, start + n)})
    layers = sorted({(j, local // blocks[axis]) for j, local in layers})
    others = [a for a in range(len(shape)) if a != axis]
    row = int(np.prod([grid[a] for a in others]))
    kept = []
    for j, g in layers:
        if keep:  # the layer's blocks, chunk after chunk
            kept.append(np.empty(row * outer * run * bitems, dtype=nd.dtype))
        at = 0
        for idx in np.ndindex(*(grid[a] for a in others)):
            cidx = list(idx)
            cidx.insert(axis, j)
            base = int(np.ravel_multi_index(tuple(cidx), tuple(grid))) * citems
            for r in range(outer):
                first = base + (r * bgrid[axis] + g) * run * bitems
                out = kept[-1][at : at + run * bitems] if keep else buf
                nd.schunk.get_slice(first, first + run * bitems, out=out)
                at += run * bitems
    return kept


def task_scroll(t: dict) -> dict:
    """``n`` consecutive planes along each axis, from a fresh open (cold chunk cache)."""
    path, npy = t["path"], t["npy"]
    warm(path)
    ref = np.load(npy, mmap_mode="r")
    times: dict[str, list[float]] = {k: [] for k in t["kinds"]}
    ok = True
    for axis, start in t["starts"]:
        for k in _rotated(t["kinds"], axis):
            kept = None
            if k in ("limit_layers", "limit_layers_kept"):
                nd = blosc2.open(path, mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=1))
                c, s = _cpu(), time.perf_counter()
                kept = decode_layers(nd, axis, start, t["n"], keep=k == "limit_layers_kept")
                if kept:  # and each plane as a new array: one contiguous copy of its bytes
                    items = int(np.prod(nd.shape)) // nd.shape[axis]
                    for i in range(t["n"]):
                        src = kept[i * len(kept) // t["n"]][:items]
                        x = np.empty(items, dtype=nd.dtype)
                        np.copyto(x, src)
            else:
                if k == "napari_source":  # as the napari reader opens a file
                    a = _open_napari_source(path)
                else:
                    threads = len(os.sched_getaffinity(0)) if k == "mla_cache_threads" else 1
                    a = _open_mla(path, threads, cache=k.startswith("mla_cache"))
                c, s = _cpu(), time.perf_counter()
                for i in range(start, start + t["n"]):
                    x = a[(slice(None),) * axis + (i,)]
                last = ref[(slice(None),) * axis + (start + t["n"] - 1,)]
                ok = ok and bool(np.array_equal(x, last))
            times[k].append((time.perf_counter() - s) / t["n"])
            times.setdefault(f"cpu_{k}", []).append((_cpu() - c) / t["n"])
            del kept  # (a kept layer is fresh memory for every round, never recycled)
    return {"times": times, "ok": ok}


def task_memory(t: dict) -> dict:
    """One streaming operation on a big file; peak RSS and peak anonymous memory growth."""
    from mlarray import MLArray
    from mlarray.io import save_mla

    src, dst, op = t["src"], t.get("dst"), t["op"]
    if op.startswith("cli_"):
        from mlarray import _dataset, stats  # noqa: F401  (imported before measuring)
        from mlarray.cli import main as cli
    gc.collect()
    hwm_reset = _reset_peak_rss()
    base_rss, base_anon = _proc_status("VmRSS"), _proc_status("RssAnon")
    base_hwm = _proc_status("VmHWM")
    s = time.perf_counter()
    with _AnonSampler() as sampler:
        if op == "cli_recompress":  # the command rewrites src itself
            a = cli(["recompress", src, "--codec", "zstd", "--clevel", "1"])
        elif op == "cli_stats":
            a = cli(["stats", src, "--overwrite"])
        else:
            a = MLArray.open(src, mmap_mode=t.get("mmap_mode", "r"))
        if op.startswith("cli_"):
            if a != 0:
                raise RuntimeError(f"mlarray {op[4:]} exited with {a}")
        elif op == "resave_rechunk":
            save_mla(dst, a, a.meta, patch_size=t["patch_size"])
        elif op == "recompress_codec":
            save_mla(dst, a, a.meta, cparams={"codec": "zstd", "clevel": 1})
        elif op == "stats":
            a.compute_stats()
        elif op == "resave_same":
            save_mla(dst, a, a.meta)
        else:
            raise ValueError(op)
        del a
    wall = time.perf_counter() - s
    hwm = _proc_status("VmHWM")
    return {
        "wall": wall,
        "peak_rss": hwm - (base_rss if hwm_reset else base_hwm),
        "peak_anon": sampler.peak - base_anon,
        "exact": hwm_reset,
    }


def task_dataset(t: dict) -> dict:
    """Open per read over a set of files (a training set): each read opens a random
    file of the set, reads its metadata and one patch; the same reads on one file of
    the set for comparison. Every file is warm and was opened once before (an epoch)."""
    paths, size = t["paths"], np.array(t["patch_size"])
    for p in paths:
        warm(p)
    for p in paths:
        _open_mla(p)[tuple(slice(0, int(n)) for n in size)]
    picks = [(int(i), np.array(lo)) for i, lo in t["picks"]]

    def sl(lo: np.ndarray) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(a + n)) for a, n in zip(lo, size, strict=True))

    fns = {
        "mla_open_many": lambda i, lo: _open_mla(paths[i])[sl(lo)],
        "mla_open_one": lambda i, lo: _open_mla(paths[0])[sl(lo)],
    }
    times: dict[str, list[float]] = {k: [] for k in t["kinds"]}
    times["mla_open_many_early"] = []
    shuffle = random.Random(len(picks)).shuffle
    early = len(picks) // 3
    for j, (i, lo) in enumerate(picks):
        if j == early:  # the steady state: every file read many times (an epoch or so)
            rng = np.random.default_rng(len(picks))
            hi = np.array(t["shape"]) - size + 1
            for _ in range(t["warm_reads"]):
                fns["mla_open_many"](int(rng.integers(len(paths))), rng.integers(0, hi))
        if j < early:  # right after each file was opened and read once
            order = ["mla_open_many_early"]
            fns["mla_open_many_early"] = fns["mla_open_many"]
        else:
            order = list(t["kinds"])
            shuffle(order)
        for k in order:
            s = time.perf_counter()
            fns[k](i, lo)
            times[k].append(time.perf_counter() - s)
    return {"times": times, "ok": True}


TASKS = {
    "dataset": task_dataset,
    "patches": task_patches,
    "cold": task_cold,
    "load": task_load,
    "save": task_save,
    "codecs": task_codecs,
    "scroll": task_scroll,
    "memory": task_memory,
}


def main(argv: list[str]) -> int:
    return run_tasks(TASKS, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
