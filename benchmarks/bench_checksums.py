"""Cost of integrity checks on nnU-Net-style patch reads: per-chunk checksums and frame validation.

Every read opens the file afresh, slices one random patch and copies it out (one
Blosc thread), as a data-loader worker does. The same patches are read with
checksum verification off (``mlarray.integrity.set_verify_on_read``), on with
nothing verified yet in the process ("first touch": every chunk a read touches is
hashed whole), and on in the steady state (chunks are hashed once per process and
file version, as in a training run's later epochs), rotating the order per round
so drift hits all alike; "one handle" rows open once per round and only read.
Frame validation (``mlarray.frame.inspect_frame``, done by the first open of each
file version in a process, with or without checksums) is timed on its own, and
``MLArray.open`` on a first and on a repeated open.

    python benchmarks/bench_checksums.py            # 256x384x384 int16, ~1 min
    python benchmarks/bench_checksums.py --quick    # 128x192x192, ~15 s
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np

from mlarray import MLArray, integrity
from mlarray.frame import inspect_frame
from mlarray.io import map_regular_file


def ct_volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = ((y - shape[1] / 2) / (shape[1] / 2.2)) ** 2 + ((x - shape[2] / 2) / (shape[2] / 2.5)) ** 2
    body = np.where(r < 1, 40, -1000).astype(np.float32) + 0 * z
    body += rng.normal(0, 20, size=shape).astype(np.float32)
    return body.astype(np.int16)


def time_reads(path: Path, starts, patch, verify: bool, reuse: bool, cold: bool) -> list[float]:
    """Seconds per read; ``cold``: no chunk verified yet in this process (first touch)."""
    integrity.set_verify_on_read(verify)
    if verify and not cold:  # steady state: every chunk of this file version verified once
        integrity.verify_all(MLArray.open(path)._store)
    out = []
    handle = MLArray.open(path) if reuse else None
    for s in starts:
        if cold:
            integrity.forget_verified(None if handle is None else handle._store)
        t = time.perf_counter()
        a = handle if reuse else MLArray.open(path)
        np.asarray(a[tuple(slice(b, b + p) for b, p in zip(s, patch, strict=True))])
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shape = (128, 192, 192) if args.quick else (256, 384, 384)
    rounds = args.rounds or (3 if args.quick else 6)
    per_round = 25 if args.quick else 50
    blosc2.set_nthreads(1)
    folder = Path(tempfile.mkdtemp(prefix="mla-bench-ck-"))
    path = folder / "ct.mla"
    MLArray(ct_volume(shape, args.seed)).save(path)
    info = inspect_frame(path.read_bytes())
    print(f"# Checksum overhead on patch reads — {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, numpy {np.__version__}, blosc2 {blosc2.__version__}"
    )
    print(
        f"volume {shape} int16, chunks {info.chunks}, blocks {info.blocks}, "
        f"{info.nchunks} chunks, file {path.stat().st_size / 2**20:.1f} MiB\n"
    )
    rng = np.random.default_rng(args.seed + 1)
    print(
        "| patch | reads | mode | verify off (ms) | verify on, first touch (ms) | overhead "
        "| verify on, steady state (ms) | overhead |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for patch in ((128, 128, 128), (64, 160, 160)):
        patch = tuple(min(p, s) for p, s in zip(patch, shape, strict=True))
        for reuse in (False, True):
            times: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
            for r in range(rounds):
                starts = [
                    tuple(
                        int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)
                    )
                    for _ in range(per_round)
                ]
                order = ["off", "cold", "warm"]
                order = order[r % 3 :] + order[: r % 3]
                for kind in order:
                    times[kind] += time_reads(
                        path, starts, patch, kind != "off", reuse, cold=kind == "cold"
                    )
            m = {k: statistics.median(v) for k, v in times.items()}
            mode = "one handle" if reuse else "open + read"
            print(
                f"| {patch} | {len(times['off'])} | {mode} | {m['off'] * 1e3:.2f} | "
                f"{m['cold'] * 1e3:.2f} | {(m['cold'] / m['off'] - 1) * 100:+.1f}% | "
                f"{m['warm'] * 1e3:.2f} | {(m['warm'] / m['off'] - 1) * 100:+.1f}% |"
            )
    integrity.set_verify_on_read(True)
    buf = map_regular_file(path)
    t = []
    for _ in range(200):
        s = time.perf_counter()
        inspect_frame(buf, path)
        t.append(time.perf_counter() - s)
    opens, firsts = [], []
    import mlarray.io

    for _ in range(200):
        mlarray.io._CHECKED_FRAMES.clear()
        integrity._EXPECTED.clear()
        s = time.perf_counter()
        MLArray.open(path)
        firsts.append(time.perf_counter() - s)
        s = time.perf_counter()
        MLArray.open(path)
        opens.append(time.perf_counter() - s)
    print(
        f"\nframe validation (inspect_frame, {info.nchunks} chunk headers): "
        f"{statistics.median(t) * 1e3:.3f} ms median; MLArray.open: "
        f"{statistics.median(firsts) * 1e3:.3f} ms the first time a file version is "
        f"opened, {statistics.median(opens) * 1e3:.3f} ms after (median)"
    )


if __name__ == "__main__":
    main()
