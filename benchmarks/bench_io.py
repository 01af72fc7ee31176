"""Save / full-load throughput and file size: ours vs the reference package vs zarr, HDF5,
npy, NIfTI; plus our streaming re-save from a lazily opened file and its peak memory.

Throughput is uncompressed MB (1e6 bytes) per second, best of ``--reps``; saves and loads
run in fresh worker processes (one per interpreter and phase; each re-save in its own, see
_worker.py) with one compression thread (``--threads`` to change), on the same CT-like
int16 volume. Loads read a file that sits in the page cache.

    python benchmarks/bench_io.py            # 256x384x384, ~1 min
    python benchmarks/bench_io.py --quick    # 128x192x192, ~15 s
    python benchmarks/bench_io.py --full     # 512^3
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
from _common import (
    MB,
    SIZES,
    base_parser,
    data_dir,
    dir_size,
    fmt,
    loadavg,
    machine_info,
    make_volumes,
    median,
    our_python,
    ratio,
    reference_python,
    run_size,
    run_worker,
    table,
)

REPS = {"smoke": 1, "quick": 2, "default": 5, "full": 3}
RECHUNK_PATCH = (64, 160, 160)


@dataclass
class Row:
    name: str
    python: str | None
    save_kind: str | None  # None: load only (reads the file of `file_of`)
    load_kind: str
    path: Path
    opts: dict = field(default_factory=dict)
    file_of: str | None = None
    save: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)


def run_rows(rows: list[Row], d: Path, reps: int, threads: int) -> None:
    """All saves, then all loads; one worker process per interpreter and phase."""
    src = str(d / "ct.npy")
    saves: dict[str, list[tuple[Row, dict]]] = {}
    for r in rows:
        if r.python is None:
            r.save = r.load = {"error": "skipped (no reference interpreter)"}
        elif r.save_kind is not None:
            task = {
                "task": "save",
                "kind": r.save_kind,
                "path": str(r.path),
                "opts": r.opts,
                "reps": reps,
                "src": src,
            }
            saves.setdefault(r.python, []).append((r, task))
    for python, items in saves.items():
        for (r, _), res in zip(
            items, run_worker(python, [t for _, t in items], d, threads), strict=True
        ):
            r.save = res
    loads: dict[str, list[tuple[Row, dict]]] = {}
    for r in rows:
        if r.python is None:
            continue
        if not r.path.exists():
            r.load = {"error": "file missing"}
            continue
        task = {"task": "load", "kind": r.load_kind, "path": str(r.path), "reps": reps, "src": src}
        loads.setdefault(r.python, []).append((r, task))
    for python, items in loads.items():
        for (r, _), res in zip(
            items, run_worker(python, [t for _, t in items], d, threads), strict=True
        ):
            r.load = res


def io_table(rows: list[Row], raw: int) -> str:
    def best(res: dict) -> float | None:
        return min(res["wall"]) if "wall" in res else None

    ours_save, ours_load = best(rows[0].save), best(rows[0].load)
    out = []
    for r in rows:
        s, ld = r.save, r.load
        size = dir_size(r.path) if r.path.exists() else None
        err = s.get("error") or ld.get("error")
        ts, tl = best(s), best(ld)
        out.append(
            [
                r.name,
                "-" if size is None else fmt(size / MB),
                "-" if size is None else fmt(raw / size, 2),
                "-" if ts is None else fmt(raw / MB / ts),
                ratio(ts, ours_save),
                "-" if ts is None else fmt(100 * min(s["cpu"]) / ts, 0),
                "-" if ts is None else fmt(1e3 * median(s["fsync"]), 0),
                "-" if tl is None else fmt(raw / MB / tl),
                ratio(tl, ours_load),
                "-" if tl is None else fmt(100 * min(ld["cpu"]) / tl, 0),
                (err[:50] if err else "ok") if tl is None or ld.get("ok") else "WRONG DATA",
            ]
        )
    headers = [
        "candidate",
        "file MB",
        "compr.",
        "save MB/s",
        "save time vs ours",
        "save cpu %",
        "fsync after, ms",
        "load MB/s",
        "load time vs ours",
        "load cpu %",
        "check",
    ]
    return table(headers, out)


def stream_table(results: list[tuple[str, dict]], raw: int) -> str:
    ours = results[0][1]
    out = []
    for name, r in results:
        if "error" in r:
            out.append([name, "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        out.append(
            [
                name,
                fmt(1e3 * r["wall"]),
                fmt(raw / MB / r["wall"]),
                ratio(r["wall"], ours.get("wall")),
                fmt(1e3 * r["fsync"], 0),
                fmt(r["peak_rss_increase"] / MB),
                fmt(r["peak_anon_increase"] / MB),
                fmt(100 * r["peak_anon_increase"] / raw, 0),
                "x".join(str(c) for c in r["chunks"]),
                "ok" if r["ok"] else "WRONG DATA",
            ]
        )
    headers = [
        "re-save",
        "time ms",
        "MB/s",
        "time vs ours",
        "fsync after, ms",
        "peak RSS +MB",
        "peak anon +MB",
        "anon % of volume",
        "chunks written",
        "check",
    ]
    return table(headers, out)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="repetitions of each save and load")
    args = p.parse_args(argv)
    size = run_size(args)
    shape = tuple(args.shape) if args.shape else SIZES[size]
    reps = args.reps or REPS[size]
    ref_py, ref_note = (None, "--no-reference") if args.no_reference else reference_python()
    ours_py = our_python()
    t_start = time.perf_counter()

    with data_dir(args) as d:
        print("# Save / load / re-save (bench_io.py)\n")
        for line in machine_info(ref_py, ref_note, d):
            print(f"- {line}")
        print(
            f"- run: {size}, volume {shape} int16 CT-like, threads={args.threads}, "
            f"best of {reps} per save and load, seed {args.seed}\n"
        )
        ct, _ = make_volumes(shape, args.seed)
        raw = ct.nbytes
        np.save(d / "ct.npy", ct)

        # our default layout (patch_size 192): the alternatives get the same chunks
        ours_file = d / "ours.mla"
        first = run_worker(
            ours_py,
            [
                {
                    "task": "save",
                    "kind": "mla_save_mla",
                    "path": str(ours_file),
                    "opts": {"patch_size": "default"},
                    "src": str(d / "ct.npy"),
                }
            ],
            d,
            args.threads,
        )[0]
        if "error" in first:
            raise SystemExit(f"our save_mla failed: {first['error']}")
        chunks = tuple(blosc2.open(str(ours_file), mode="r").chunks)
        del ct

        rows = [
            Row(
                "ours save_mla(path, array)",
                ours_py,
                "mla_save_mla",
                "mla",
                ours_file,
                {"patch_size": "default"},
            ),
            Row(
                "ours MLArray(array).save(path)",
                ours_py,
                "mla",
                "mla",
                d / "ours_ctor.mla",
                {"patch_size": "default"},
            ),
            Row(
                "reference 0.0.54 MLArray(array).save(path)",
                ref_py,
                "mla",
                "mla",
                d / "ref.mla",
                {"patch_size": "default"},
            ),
            Row(
                "ours MLArray.load(path).to_numpy() (load only)",
                ours_py,
                None,
                "mla_load",
                ours_file,
            ),
            Row(
                "reference MLArray.load(path).to_numpy() (load only)",
                ref_py,
                None,
                "mla_load",
                d / "ref.mla",
            ),
            Row(
                "zarr v3, blosc lz4hc-8 + shuffle, chunks = ours",
                ours_py,
                "zarr",
                "zarr",
                d / "ct.zarr",
                {"chunks": chunks},
            ),
            Row(
                "HDF5 gzip-4 + shuffle, chunks = ours",
                ours_py,
                "h5",
                "h5",
                d / "gzip.h5",
                {"chunks": chunks, "compression": "gzip", "level": 4},
            ),
            Row(
                "HDF5 lzf + shuffle, chunks = ours",
                ours_py,
                "h5",
                "h5",
                d / "lzf.h5",
                {"chunks": chunks, "compression": "lzf"},
            ),
            Row("npy, np.save / np.load", ours_py, "npy", "npy", d / "copy.npy"),
            Row("nii.gz, nibabel (gzip level 1)", ours_py, "nii", "nii", d / "ct.nii.gz"),
        ]
        run_rows(rows, d, reps, args.threads)
        print(
            f"## Save (numpy -> file) and full load (file -> numpy), CT int16 {shape}, "
            f"{raw / MB:.0f} MB\n"
        )
        print(
            f"chunks of ours and of the alternatives: {chunks}; mla loads are "
            "MLArray.open(path)[...] unless the row says otherwise\n"
        )
        print(io_table(rows, raw))

        # streaming re-save of an opened file, peak memory
        stream = [
            (
                "ours save_mla(new, MLArray.open(old), meta), same layout",
                ours_py,
                {"how": "ours_stream", "src": str(ours_file), "patch_size": "default"},
            ),
            (
                f"ours save_mla(new, MLArray.open(old), meta, patch_size={RECHUNK_PATCH}) re-chunk",
                ours_py,
                {"how": "ours_stream", "src": str(ours_file), "patch_size": list(RECHUNK_PATCH)},
            ),
            (
                "ours MLArray.load(old) -> numpy -> save_mla (loads the volume)",
                ours_py,
                {"how": "ours_load", "src": str(ours_file), "patch_size": "default"},
            ),
            (
                "reference MLArray.open(old, mmap_mode='c').save(new)",
                ref_py,
                {"how": "ref_open_save", "src": str(d / "ref.mla")},
            ),
            (
                "reference MLArray.load(old).save(new)",
                ref_py,
                {"how": "ref_load_save", "src": str(d / "ref.mla")},
            ),
        ]
        results = []
        for i, (name, python, task) in enumerate(stream):
            if python is None:
                results.append((name, {"error": "skipped (no reference interpreter)"}))
                continue
            if not Path(task["src"]).exists():
                results.append((name, {"error": "source file missing"}))
                continue
            task = {"task": "stream_save", "dst": str(d / f"resave_{i}.mla"), **task}
            results.append((name, run_worker(python, [task], d, args.threads)[0]))
        print(
            f"\n## Re-save an existing .mla file (CT int16 {shape}, {raw / MB:.0f} MB "
            "uncompressed)\n"
        )
        print(stream_table(results, raw))
        print(
            "\npeak RSS = VmHWM growth during the save (reset through /proc/self/clear_refs); it "
            "includes the memory-mapped pages of the source file (page cache, up to the "
            "compressed size). peak anon = growth of RssAnon (heap), sampled every 2 ms: the "
            "memory the save itself allocates."
        )
    print(f"\nload average at end: {loadavg()}; total time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
