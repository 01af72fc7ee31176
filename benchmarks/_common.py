"""Shared helpers for the benchmarks: synthetic data, machine facts, workers, tables."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_worker.py")
MB = 1e6

# Volume shapes of the three run sizes (z, y, x); int16 CT and uint8 segmentation.
SIZES = {
    "smoke": (48, 64, 64),
    "quick": (128, 192, 192),
    "default": (256, 384, 384),
    "full": (512, 512, 512),
}


# ----------------------------------------------------------------------------- CLI


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny volume, for the test suite")
    size.add_argument("--quick", action="store_true", help="small volume, ~20 s")
    size.add_argument("--full", action="store_true", help="big volume (512^3), several minutes")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="volume shape")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the patches")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the data (default: a temporary directory; "
        "benchmarks/_data is git-ignored)",
    )
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--no-reference", action="store_true", help="skip the reference package")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compression/decompression threads for every Blosc-based candidate (default 1)",
    )
    return p


def run_size(args: argparse.Namespace) -> str:
    if getattr(args, "smoke", False):
        return "smoke"
    return "quick" if args.quick else "full" if args.full else "default"


@contextmanager
def data_dir(args: argparse.Namespace) -> Iterator[Path]:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="run-", dir=args.dir))
    else:
        path = Path(tempfile.mkdtemp(prefix="mla-bench-"))
    try:
        yield path
    finally:
        if args.keep:
            print(f"\nkept the data in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- data


def make_volumes(shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (HU) and its uint8 label map, deterministic in ``seed``.

    Air outside an elliptic body, fat rim, soft tissue with smooth low-frequency texture,
    a spine, two lungs and a few organs (ellipsoids, labels 1..7), then Gaussian noise
    (sigma 12 HU) everywhere, clipped at -1024: it compresses like a real CT (about 2x with
    LZ4HC + shuffle), not like a toy array.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = (int(n) for n in shape)
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]

    r2 = (y / 0.72) ** 2 + (x / 0.92) ** 2 * (1.0 + 0.08 * np.cos(np.pi * z))
    body = r2 < 1.0
    ct = np.full(shape, -1000.0, dtype=np.float32)
    texture = np.zeros(shape, dtype=np.float32)
    for _ in range(6):
        fz, fy, fx = rng.uniform(1.0, 5.0, 3)
        pz, py, px = rng.uniform(0, 2 * np.pi, 3)
        amp = np.float32(rng.uniform(4, 10))
        texture += (amp * np.cos(fz * np.pi * z + pz) * np.cos(fy * np.pi * y + py)) * np.cos(
            fx * np.pi * x + px
        )
    ct = np.where(body, 40.0 + texture, ct)
    ct = np.where(body & (r2 > 0.8), -100.0 + 0.5 * texture, ct)
    seg = np.zeros(shape, dtype=np.uint8)

    def ellipsoid(center: Sequence[float], radii: Sequence[float]) -> tuple:
        """Mask of an ellipsoid in normalised coordinates, on its bounding box only."""
        box = []
        for c, r, n in zip(center, radii, shape, strict=True):
            lo = max(0, int((c - r + 1) / 2 * (n - 1)))
            hi = min(n, int(np.ceil((c + r + 1) / 2 * (n - 1))) + 1)
            box.append(slice(lo, hi))
        zz, yy, xx = z[box[0], :, :], y[:, box[1], :], x[:, :, box[2]]
        m = (
            ((zz - center[0]) / radii[0]) ** 2
            + ((yy - center[1]) / radii[1]) ** 2
            + ((xx - center[2]) / radii[2]) ** 2
        ) < 1.0
        return tuple(box), m

    # (label, HU, center z/y/x, radii z/y/x)
    organs = [
        (1, -850.0, (0.45, -0.05, -0.42), (0.5, 0.45, 0.32)),  # right lung
        (2, -850.0, (0.45, -0.05, 0.42), (0.5, 0.45, 0.3)),  # left lung
        (3, 60.0, (-0.1, 0.0, -0.4), (0.3, 0.35, 0.3)),  # liver
        (4, 50.0, (-0.05, 0.1, 0.45), (0.15, 0.15, 0.15)),  # spleen
        (5, 30.0, (-0.35, 0.3, -0.25), (0.12, 0.1, 0.08)),  # right kidney
        (6, 30.0, (-0.35, 0.3, 0.25), (0.12, 0.1, 0.08)),  # left kidney
    ]
    for label, hu, center, radii in organs:
        box, m = ellipsoid(center, radii)
        sub = ct[box]
        sub[m] = hu + (0.5 if hu < -500 else 1.0) * texture[box][m]
        seg[box][m] = label
    # spine: a column of bone along z, posterior
    spine = ((y - 0.45) / 0.09) ** 2 + (x / 0.07) ** 2 < 1.0
    spine = np.broadcast_to(spine, shape) & (np.cos(12 * np.pi * z) > -0.7)
    ct[spine] = 700.0
    seg[spine] = 7

    noise = rng.standard_normal(size=shape, dtype=np.float32)
    noise *= 12.0
    ct += noise
    del noise
    np.rint(ct, out=ct)
    np.clip(ct, -1024, 3071, out=ct)
    return ct.astype(np.int16), seg


def random_starts(shape: Sequence[int], patch: Sequence[int], n: int, seed: int) -> list[list[int]]:
    """``n`` uniformly random patch corners, as nnU-Net draws them (without oversampling)."""
    rng = np.random.default_rng(seed)
    return [
        [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
        for _ in range(n)
    ]


# ----------------------------------------------------------------------------- interpreters


def reference_python() -> tuple[str | None, str]:
    """The reference package's interpreter and how it was found (or why it is missing).

    ``MLARRAY_REFERENCE_PYTHON`` wins (empty or ``none`` disables the column); else
    /work/refvenv/bin/python, else .refvenv/bin/python in the repository.
    """
    env = os.environ.get("MLARRAY_REFERENCE_PYTHON")
    if env is not None:
        if env.strip().lower() in ("", "none", "0"):
            return None, "disabled by MLARRAY_REFERENCE_PYTHON"
        if Path(env).exists():
            return env, "MLARRAY_REFERENCE_PYTHON"
        return None, f"MLARRAY_REFERENCE_PYTHON={env} does not exist"
    for cand in (Path("/work/refvenv/bin/python"), REPO / ".refvenv" / "bin" / "python"):
        if cand.exists():
            return str(cand), "default location"
    return None, "no reference interpreter (set MLARRAY_REFERENCE_PYTHON)"


def worker_env(threads: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env.update(
        BENCH_NTHREADS=str(threads),
        BLOSC_NTHREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        PYTHONHASHSEED="0",
    )
    return env


def run_worker(
    python: str, tasks: list[dict], workdir: Path, threads: int, script: Path = WORKER
) -> list[dict]:
    """Run ``tasks`` in a fresh ``python`` process (see _worker.py); one result per task."""
    job = Path(tempfile.mkstemp(prefix="job-", suffix=".json", dir=workdir)[1])
    job.write_text(json.dumps(tasks))
    try:
        proc = subprocess.run(
            [python, str(script), str(job)],
            capture_output=True,
            text=True,
            env=worker_env(threads),
            cwd=workdir,
            check=False,
        )
    finally:
        job.unlink(missing_ok=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        msg = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"error": f"worker exited {proc.returncode}: {msg}"} for _ in tasks]
    return json.loads(lines[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(mod: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(mod)
    except md.PackageNotFoundError:
        return "not installed"


def machine_info(ref_python: str | None, ref_note: str, workdir: Path) -> list[str]:
    """Lines describing the machine, the software and the date, for the report header."""
    import blosc2

    lines = [
        f"date (UTC): {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{_cpu_model()}, RAM {_mem_total()}, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, numpy {np.__version__}, blosc2 {blosc2.__version__}, "
        f"zarr {_version('zarr')}, numcodecs {_version('numcodecs')}, h5py {_version('h5py')}, "
        f"nibabel {_version('nibabel')}",
    ]
    if ref_python is None:
        lines.append(f"reference: SKIPPED ({ref_note})")
    else:
        info = run_worker(ref_python, [{"task": "info"}], workdir, 1)[0]
        if "error" in info:
            lines.append(f"reference: {ref_python} FAILED: {info['error']}")
        else:
            lines.append(
                f"reference: mlarray {info['mlarray']} ({ref_python}, {ref_note}; python "
                f"{info['python']}, numpy {info['numpy']}, blosc2 {info['blosc2']})"
            )
    lines.append(f"data dir: {workdir}")
    lines.append(f"load average at start: {loadavg()} (other processes share these cores)")
    return lines


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def our_python() -> str:
    return sys.executable


# ----------------------------------------------------------------------------- numbers


def dir_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def median(xs: Sequence[float]) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if not np.isfinite(x):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ratio(x: float | None, ours: float | None) -> str:
    """``x`` relative to ours, as ``2.3x``; ``-`` when either is missing."""
    if x is None or ours is None or not np.isfinite(x) or not np.isfinite(ours) or ours == 0:
        return "-"
    r = x / ours
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table (readable in a terminal, pasteable into RESULTS.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])
