"""Measurement worker, run in a fresh process per job by the benchmark scripts.

It runs under two interpreters: this project's venv (``mla`` means *our* ``mlarray``)
and the reference venv (``mla`` means the reference package ``mlarray`` 0.0.54). The
``mla`` code path uses only the API both share (``MLArray(array, patch_size=...)``,
``.save``, ``MLArray.open``, slicing, ``MLArray.load(...).to_numpy()``), so the same
lines measure both. Keep the top-level imports to numpy, blosc2 and the standard library:
the reference venv has nothing else.

Usage: ``python _worker.py JOB.json`` where the file holds a list of tasks; one JSON
document with a list of results is printed on the last line of stdout.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

NTHREADS = int(os.environ.get("BENCH_NTHREADS", "1"))
blosc2.set_nthreads(NTHREADS)


# ----------------------------------------------------------------------------- helpers


def _cpu() -> float:
    """CPU seconds of this process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _proc_status(key: str) -> int:
    """A ``kB`` value of /proc/self/status, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class _AnonSampler:
    """Sample RssAnon (heap, not page cache or file mmaps) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = _proc_status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _proc_status("RssAnon"))
            time.sleep(self.interval)

    def __enter__(self) -> _AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _proc_status("RssAnon"))


def _files_of(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file())
    return [str(p)]


def evict(path: str) -> None:
    """Drop the file(s) from the page cache (posix_fadvise DONTNEED, no root needed).

    DONTNEED skips pages a process maps. mlarray keeps each file's read-only mapping
    across opens, so in a process that imported it the pages of those mappings are
    first unmapped (``mlarray._maps.drop_resident``: what the kernel's reclaim does
    to a mapped file under memory pressure); the mappings themselves stay.
    """
    maps = sys.modules.get("mlarray._maps")
    if maps is not None:
        maps.drop_resident()
    for f in _files_of(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _fsync(path: str) -> None:
    for f in _files_of(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def warm(path: str) -> None:
    """Read the file(s) once so that they sit in the page cache."""
    for f in _files_of(path):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def _rm(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        import shutil

        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def _configure_zarr() -> Any:
    import numcodecs.blosc
    import zarr

    zarr.config.set({"threading.max_workers": NTHREADS, "async.concurrency": NTHREADS})
    numcodecs.blosc.set_nthreads(NTHREADS)
    numcodecs.blosc.use_threads = NTHREADS > 1
    return zarr


# ----------------------------------------------------------------------------- candidates
#
# Every candidate provides: save(path, arr, opts), open_meta(path) -> handle (open + read
# the metadata), read(handle, slices) -> numpy, load(path) -> numpy (whole volume).


class MLA:
    """``mlarray`` of whichever interpreter runs this worker."""

    def __init__(self) -> None:
        from mlarray import MLArray

        self.MLArray = MLArray

    def save(self, path: str, arr: np.ndarray, opts: dict) -> None:
        self.MLArray(arr, patch_size=opts["patch_size"]).save(path)

    def open_meta(self, path: str) -> Any:
        a = self.MLArray.open(path, dparams={"nthreads": NTHREADS})
        _ = a.meta, a.shape, a.dtype, a.spacing
        return a

    def read(self, handle: Any, slices: tuple[slice, ...]) -> np.ndarray:
        return handle[slices]

    def load(self, path: str) -> np.ndarray:
        return self.MLArray.open(path, dparams={"nthreads": NTHREADS})[...]


class MLALoad(MLA):
    """``MLArray.load(path).to_numpy()`` instead of ``MLArray.open(path)[...]``."""

    def load(self, path: str) -> np.ndarray:
        return self.MLArray.load(path, dparams={"nthreads": NTHREADS}).to_numpy()


class MLASaveMla(MLA):
    """Ours only: ``mlarray.io.save_mla(path, numpy_array, None, patch_size=...)``."""

    def save(self, path: str, arr: np.ndarray, opts: dict) -> None:
        from mlarray.io import save_mla
        from mlarray.meta import Meta

        meta = Meta.from_mapping({"is_seg": True}) if opts.get("is_seg") else None
        save_mla(path, arr, meta, patch_size=opts["patch_size"])


class B2:
    """Bare ``blosc2.open`` + slicing: the floor under any .mla reader (no metadata)."""

    def open_meta(self, path: str) -> Any:
        return blosc2.open(path, mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=NTHREADS))

    def read(self, handle: Any, slices: tuple[slice, ...]) -> np.ndarray:
        return handle[slices]

    def load(self, path: str) -> np.ndarray:
        return self.open_meta(path)[...]


class Zarr:
    def __init__(self) -> None:
        self.zarr = _configure_zarr()

    def save(self, path: str, arr: np.ndarray, opts: dict) -> None:
        from zarr.codecs import BloscCodec

        codec = BloscCodec(cname="lz4hc", clevel=8, shuffle="shuffle", typesize=arr.dtype.itemsize)
        kwargs: dict[str, Any] = {"chunks": tuple(opts["chunks"])}
        if opts.get("shards"):
            kwargs["shards"] = tuple(opts["shards"])
        z = self.zarr.create_array(
            store=path,
            shape=arr.shape,
            dtype=arr.dtype,
            compressors=codec,
            zarr_format=3,
            overwrite=True,
            **kwargs,
        )
        z[...] = arr

    def open_meta(self, path: str) -> Any:
        z = self.zarr.open_array(store=path, mode="r")
        _ = z.attrs.asdict(), z.shape, z.dtype
        return z

    def read(self, handle: Any, slices: tuple[slice, ...]) -> np.ndarray:
        return handle[slices]

    def load(self, path: str) -> np.ndarray:
        return self.zarr.open_array(store=path, mode="r")[...]


class Npy:
    def save(self, path: str, arr: np.ndarray, opts: dict) -> None:
        np.save(path, arr)

    def open_meta(self, path: str) -> Any:
        m = np.load(path, mmap_mode="r")
        _ = m.shape, m.dtype
        return m

    def read(self, handle: Any, slices: tuple[slice, ...]) -> np.ndarray:
        return np.array(handle[slices])  # copy out of the memory map, as a loader does

    def load(self, path: str) -> np.ndarray:
        return np.load(path)


class H5:
    def __init__(self) -> None:
        import h5py

        self.h5py = h5py

    def save(self, path: str, arr: np.ndarray, opts: dict) -> None:
        comp = opts["compression"]
        kwargs: dict[str, Any] = {"compression": comp, "shuffle": True}
        if comp == "gzip":
            kwargs["compression_opts"] = opts.get("level", 4)
        chunks = tuple(min(c, s) for c, s in zip(opts["chunks"], arr.shape, strict=True))
        with self.h5py.File(path, "w") as f:
            f.create_dataset("data", data=arr, chunks=chunks, **kwargs)

    def open_meta(self, path: str) -> Any:
        f = self.h5py.File(path, "r")
        d = f["data"]
        _ = dict(d.attrs), d.shape, d.dtype
        return f

    def read(self, handle: Any, slices: tuple[slice, ...]) -> np.ndarray:
        return handle["data"][slices]

    def close(self, handle: Any) -> None:
        handle.close()

    def load(self, path: str) -> np.ndarray:
        with self.h5py.File(path, "r") as f:
            return f["data"][...]


class Nii:
    def __init__(self) -> None:
        import nibabel

        self.nib = nibabel

    def save(self, path: str, arr: np.ndarray, opts: dict) -> None:
        self.nib.save(self.nib.Nifti1Image(arr, np.eye(4)), path)

    def open_meta(self, path: str) -> Any:
        img = self.nib.load(path)
        _ = img.affine, img.header.get_zooms(), img.shape
        return img

    def read(self, handle: Any, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(handle.dataobj[slices])

    def load(self, path: str) -> np.ndarray:
        return np.asarray(self.nib.load(path).dataobj)


KINDS = {
    "mla": MLA,
    "mla_load": MLALoad,
    "mla_save_mla": MLASaveMla,
    "b2": B2,
    "zarr": Zarr,
    "npy": Npy,
    "h5": H5,
    "nii": Nii,
}


def _candidate(kind: str) -> Any:
    return KINDS[kind]()


def _close(cand: Any, handle: Any) -> None:
    close = getattr(cand, "close", None)
    if close is not None:
        close(handle)


# ----------------------------------------------------------------------------- tasks


def task_info(_: dict) -> dict:
    import importlib.metadata as md
    import platform

    try:
        mla_version = md.version("mlarray")
    except md.PackageNotFoundError:
        mla_version = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blosc2": blosc2.__version__,
        "mlarray": mla_version,
    }


def task_save(t: dict) -> dict:
    """Save the volume in ``t["src"]`` (.npy) ``t["reps"]`` times; wall and CPU seconds."""
    cand = _candidate(t["kind"])
    arr = np.load(t["src"])
    walls, cpus, syncs = [], [], []
    for _ in range(t.get("reps", 1)):
        _rm(t["path"])
        c0, w0 = _cpu(), time.perf_counter()
        cand.save(t["path"], arr, t.get("opts", {}))
        walls.append(time.perf_counter() - w0)
        cpus.append(_cpu() - c0)
        # what it would cost to make the file durable (ours already fsyncs inside save)
        w0 = time.perf_counter()
        _fsync(t["path"])
        syncs.append(time.perf_counter() - w0)
    size = sum(os.path.getsize(f) for f in _files_of(t["path"]))
    return {"wall": walls, "cpu": cpus, "fsync": syncs, "size": size}


def task_load(t: dict) -> dict:
    """Read the whole volume ``t["reps"]`` times (page cache warm); check it once."""
    cand = _candidate(t["kind"])
    warm(t["path"])
    walls, cpus = [], []
    out = None
    for _ in range(t.get("reps", 1)):
        out = None
        c0, w0 = _cpu(), time.perf_counter()
        out = cand.load(t["path"])
        walls.append(time.perf_counter() - w0)
        cpus.append(_cpu() - c0)
    ref = np.load(t["src"], mmap_mode="r")
    ok = out is not None and out.shape == ref.shape and bool(np.array_equal(out, ref))
    return {"wall": walls, "cpu": cpus, "ok": ok}


def task_patches(t: dict) -> dict:
    """nnU-Net-style reads: for each patch, open the file, read metadata, slice, copy.

    First the cold measurements (page cache of the file dropped): the first open of this
    process, then ``cold_reps`` more cold opens and the first patch read cold. Then the file
    is read once into the page cache and the patch loop runs until ``n_max`` patches or
    ``budget`` seconds (at least ``n_min`` patches). ``reuse_handle`` opens the file once
    before the loop instead (to separate the cost of the open from the read).
    """
    cand = _candidate(t["kind"])
    path = t["path"]
    size = tuple(t["patch_size"])
    starts = t["starts"]

    def slices_of(start: list[int]) -> tuple[slice, ...]:
        return tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))

    # cold: first open in this process, then more cold opens, then a cold patch read
    cold_opens = []
    for _ in range(1 + t.get("cold_reps", 4)):
        h = None
        gc.collect()  # unmap the previous handle: mapped pages cannot be evicted
        evict(path)
        w0 = time.perf_counter()
        h = cand.open_meta(path)
        cold_opens.append(time.perf_counter() - w0)
        _close(cand, h)
    h = None
    gc.collect()
    evict(path)
    w0 = time.perf_counter()
    h = cand.open_meta(path)
    x = np.ascontiguousarray(cand.read(h, slices_of(starts[0])))
    cold_patch = time.perf_counter() - w0
    _close(cand, h)

    # warm open + metadata
    warm(path)
    warm_opens = []
    for _ in range(t.get("warm_open_reps", 20)):
        w0 = time.perf_counter()
        h = cand.open_meta(path)
        warm_opens.append(time.perf_counter() - w0)
        _close(cand, h)

    # the patch loop, file in the page cache
    times = []
    c0 = _cpu()
    t_start = time.perf_counter()
    checksum = 0
    reuse = cand.open_meta(path) if t.get("reuse_handle") else None
    for i, start in enumerate(starts[: t["n_max"]]):
        if i >= t.get("n_min", 3) and time.perf_counter() - t_start > t["budget"]:
            break
        w0 = time.perf_counter()
        if reuse is None:
            h = cand.open_meta(path)
            x = np.ascontiguousarray(cand.read(h, slices_of(start)))
            _close(cand, h)
        else:  # one handle for all reads: the read alone, without the per-read open
            x = np.ascontiguousarray(cand.read(reuse, slices_of(start)))
        times.append(time.perf_counter() - w0)
        checksum += int(x.flat[0])
    if reuse is not None:
        _close(cand, reuse)
    cpu = _cpu() - c0
    total = time.perf_counter() - t_start

    # correctness of the first patches, outside the timing
    ok = True
    if t.get("src"):
        ref = np.load(t["src"], mmap_mode="r")
        h = cand.open_meta(path)
        for start in starts[: min(3, len(times))]:
            sl = slices_of(start)
            ok = ok and bool(np.array_equal(np.asarray(cand.read(h, sl)), ref[sl]))
        _close(cand, h)
    return {
        "times": times,
        "cpu": cpu,
        "total": total,
        "cold_open_first": cold_opens[0],
        "cold_opens": cold_opens[1:],
        "cold_patch": cold_patch,
        "warm_opens": warm_opens,
        "ok": ok,
        "checksum": checksum,
    }


def task_stream_save(t: dict) -> dict:
    """Re-save an existing .mla file; wall time and memory growth while saving.

    ``how``: ``ours_stream`` (save_mla from MLArray.open), ``ours_load`` (MLArray.load ->
    numpy -> save_mla), ``ref_open_save`` (reference: MLArray.open(mmap_mode="c").save),
    ``ref_load_save`` (reference: MLArray.load(...).save).
    """
    from mlarray import MLArray

    how, src, dst = t["how"], t["src"], t["dst"]
    ps = t.get("patch_size", "default")
    _rm(dst)
    warm(src)
    hwm_reset = _reset_peak_rss()
    base_rss = _proc_status("VmRSS")
    base_hwm = _proc_status("VmHWM")
    base_anon = _proc_status("RssAnon")
    c0, w0 = _cpu(), time.perf_counter()
    with _AnonSampler() as sampler:
        if how == "ours_stream":
            from mlarray.io import save_mla

            a = MLArray.open(src)
            save_mla(dst, a, a.meta, patch_size=ps)
        elif how == "ours_load":
            from mlarray.io import save_mla

            a = MLArray.load(src)
            save_mla(dst, a.to_numpy(), a.meta, patch_size=ps)
        elif how == "ref_open_save":
            MLArray.open(src, mmap_mode="c").save(dst)
        elif how == "ref_load_save":
            MLArray.load(src).save(dst)
        else:
            raise ValueError(how)
    wall = time.perf_counter() - w0
    cpu = _cpu() - c0
    hwm = _proc_status("VmHWM")
    w0 = time.perf_counter()
    _fsync(dst)
    fsync = time.perf_counter() - w0
    ok = bool(np.array_equal(blosc2.open(dst, mode="r")[...], blosc2.open(src, mode="r")[...]))
    return {
        "wall": wall,
        "cpu": cpu,
        "fsync": fsync,
        "peak_rss_increase": hwm - (base_rss if hwm_reset else base_hwm),
        "peak_rss_exact": hwm_reset,
        "peak_anon_increase": sampler.peak - base_anon,
        "size": os.path.getsize(dst),
        "chunks": list(blosc2.open(dst, mode="r").chunks),
        "ok": ok,
    }


TASKS = {
    "info": task_info,
    "save": task_save,
    "load": task_load,
    "patches": task_patches,
    "stream_save": task_stream_save,
}


def run_tasks(table: dict[str, Any], argv: list[str]) -> int:
    """Run the JSON task list in ``argv[1]`` with ``table``; print the results as JSON."""
    tasks = json.loads(Path(argv[1]).read_text())
    results = []
    for t in tasks:
        try:
            results.append(table[t["task"]](t))
        except Exception as exc:  # reported per task, so one failure does not hide the rest
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    sys.stdout.write("\n" + json.dumps(results) + "\n")
    return 0


def main(argv: list[str]) -> int:
    return run_tasks(TASKS, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
