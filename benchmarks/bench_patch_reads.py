"""nnU-Net-style random patch reads: ours vs the reference package vs zarr, HDF5, npy, NIfTI.

Every read opens the file afresh, reads its metadata, slices one patch and copies it into
a numpy array, on one core (Blosc/numcodecs/zarr threads = 1), the way a data-loader
worker does. All candidates read the same random patches of the same CT-like int16
volume, in fresh worker processes (one per interpreter and table, see _worker.py); the
reference package runs in its own venv (``MLARRAY_REFERENCE_PYTHON``). The file is in
the page cache during the patch loop (the usual training steady state); cold numbers
(page cache dropped with posix_fadvise) are reported separately for the open.

    python benchmarks/bench_patch_reads.py            # 256x384x384, ~1.5 min
    python benchmarks/bench_patch_reads.py --quick    # 128x192x192, ~25 s
    python benchmarks/bench_patch_reads.py --full     # 512^3, more patches
"""

from __future__ import annotations

import json
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
    fmt,
    machine_info,
    make_volumes,
    median,
    our_python,
    pct,
    random_starts,
    ratio,
    reference_python,
    run_size,
    run_worker,
    table,
)

PATCH_SIZES = [(128, 128, 128), (64, 160, 160)]
N_PATCHES = {"smoke": 3, "quick": 30, "default": 200, "full": 500}
BUDGET_S = {"smoke": 0.05, "quick": 0.3, "default": 3.0, "full": 10.0}
COLD_REPS = {"smoke": 1, "quick": 2, "default": 5, "full": 8}  # per candidate and patch size
NII_READS = {"smoke": 1, "quick": 2, "default": 3, "full": 5}
ROUNDS = {"smoke": 1, "quick": 2, "default": 3, "full": 3}


@dataclass
class Candidate:
    name: str
    python: str | None
    kind: str
    path: Path
    n_max: int | None = None  # None: the run's N_PATCHES
    reuse_handle: bool = False  # open once, then only read (not what a loader does)
    result: dict[str, Any] = field(default_factory=dict)


def write_files(
    d: Path,
    shape: tuple[int, ...],
    patches: list[tuple[int, ...]],
    ref_py: str | None,
    threads: int,
) -> dict[str, Any]:
    """Write every candidate's files; return paths and layouts keyed by name."""
    ours, other, ref = [], [], []
    files: dict[str, Any] = {}
    for i, ps in enumerate(patches):
        files[f"ours{i}"] = d / f"ct_ours_{i}.mla"
        ours.append(
            {"kind": "mla_save_mla", "path": str(files[f"ours{i}"]), "opts": {"patch_size": ps}}
        )
        files[f"ref{i}"] = d / f"ct_ref_{i}.mla"
        ref.append({"kind": "mla", "path": str(files[f"ref{i}"]), "opts": {"patch_size": ps}})
    files["ours_default"] = d / "ct_ours_default.mla"
    ours.append(
        {
            "kind": "mla_save_mla",
            "path": str(files["ours_default"]),
            "opts": {"patch_size": "default"},
        }
    )
    files["seg_ours"] = d / "seg_ours_0.mla"
    ours.append(
        {
            "kind": "mla_save_mla",
            "path": str(files["seg_ours"]),
            "opts": {"patch_size": patches[0], "is_seg": True},
            "src": "seg",
        }
    )
    files["seg_ref"] = d / "seg_ref_0.mla"
    ref.append(
        {
            "kind": "mla",
            "path": str(files["seg_ref"]),
            "opts": {"patch_size": patches[0]},
            "src": "seg",
        }
    )

    def src(t: dict) -> dict:
        return {"task": "save", **t, "src": str(d / f"{t.get('src', 'ct')}.npy")}

    t0 = time.perf_counter()
    for t, r in zip(
        ours, run_worker(our_python(), [src(t) for t in ours], d, threads), strict=True
    ):
        if "error" in r:
            raise SystemExit(f"writing {t['path']} with our library failed: {r['error']}")
    if ref_py is not None:
        for t, r in zip(ref, run_worker(ref_py, [src(t) for t in ref], d, threads), strict=True):
            if "error" in r:  # its rows then say "file not written"
                print(f"reference could not write {t['path']}: {r['error']}")

    # the alternatives use our chunks (and our blocks as zarr shard inner chunks)
    for i in range(len(patches)):
        arr = blosc2.open(str(files[f"ours{i}"]), mode="r")
        chunks, blocks = tuple(arr.chunks), tuple(arr.blocks)
        files[f"layout{i}"] = (chunks, blocks)
        shards = tuple(-(-c // b) * b for c, b in zip(chunks, blocks, strict=True))
        for key, kind, opts in (
            (f"zarr{i}", "zarr", {"chunks": chunks}),
            (f"zarrshard{i}", "zarr", {"chunks": blocks, "shards": shards}),
            (f"h5gzip{i}", "h5", {"chunks": chunks, "compression": "gzip", "level": 4}),
            (f"h5lzf{i}", "h5", {"chunks": chunks, "compression": "lzf"}),
        ):
            suffix = ".zarr" if kind == "zarr" else ".h5"
            files[key] = d / f"ct_{key}{suffix}"
            other.append({"kind": kind, "path": str(files[key]), "opts": opts})
    chunks0 = files["layout0"][0]
    files["seg_zarr"] = d / "seg_zarr.zarr"
    other.append(
        {"kind": "zarr", "path": str(files["seg_zarr"]), "opts": {"chunks": chunks0}, "src": "seg"}
    )
    files["seg_h5lzf"] = d / "seg_h5lzf.h5"
    other.append(
        {
            "kind": "h5",
            "path": str(files["seg_h5lzf"]),
            "opts": {"chunks": chunks0, "compression": "lzf"},
            "src": "seg",
        }
    )
    files["nii"] = d / "ct.nii.gz"
    other.append({"kind": "nii", "path": str(files["nii"])})
    for t, r in zip(
        other, run_worker(our_python(), [src(t) for t in other], d, threads), strict=True
    ):
        if "error" in r:
            print(f"writing {t['path']} failed: {r['error']}")
    files["npy"] = d / "ct.npy"
    files["seg_npy"] = d / "seg.npy"
    print(f"wrote all files in {time.perf_counter() - t0:.1f} s")
    return files


def run_candidates(
    cands: list[Candidate],
    d: Path,
    src: Path,
    ps: tuple[int, ...],
    starts: list,
    n: int,
    budget: float,
    threads: int,
    cold_reps: int,
    rounds: int = 1,
) -> None:
    """Run the patch task of every candidate: one worker process per interpreter and
    round, the candidates in order inside a worker; ``rounds`` interleaves the candidates
    (round r reads patches r, r + rounds, ...), so that load from other processes on the
    machine hits every candidate alike. Times of all rounds are merged (medians)."""
    groups: dict[str, list[tuple[Candidate, dict]]] = {}
    for c in cands:
        c.result = {}
        if c.python is None or not c.path.exists():
            why = "skipped (no reference interpreter)" if c.python is None else "file not written"
            c.result = {"error": why}
            continue
        task = {
            "task": "patches",
            "kind": c.kind,
            "path": str(c.path),
            "patch_size": list(ps),
            "n_min": min(3, c.n_max or n),
            "cold_reps": cold_reps,
            "warm_open_reps": 3 * cold_reps,
            "src": str(src),
            "reuse_handle": c.reuse_handle,
        }
        groups.setdefault(c.python, []).append((c, task))
    for r in range(rounds):
        for python, items in groups.items():
            tasks = []
            for c, task in items:
                n_c = c.n_max or n
                tasks.append(
                    {
                        **task,
                        "starts": starts[r::rounds],
                        "n_max": max(1, -(-n_c // rounds)),
                        "n_min": max(1, task["n_min"] // rounds),
                        "budget": budget / rounds,
                    }
                )
            results = run_worker(python, tasks, d, threads)
            for (c, _), res in zip(items, results, strict=True):
                if "error" in c.result:
                    continue
                if "error" in res or not c.result:
                    c.result = res
                    continue
                c.result["times"] += res["times"]
                c.result["cpu"] += res["cpu"]
                c.result["total"] += res["total"]
                c.result["ok"] = c.result["ok"] and res["ok"]


def fmt_mb(nbytes: int) -> str:
    mb = nbytes / MB
    return f"{mb:.3f}" if mb < 1 else fmt(mb)


def file_size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def patch_table(cands: list[Candidate], raw_bytes: int) -> str:
    ours = cands[0].result
    ours_med = median(ours["times"]) if "times" in ours else None
    rows = []
    for c in cands:
        r = c.result
        if "error" in r:
            rows.append([c.name, "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        t = np.asarray(r["times"]) * 1e3
        size = file_size(c.path)
        rows.append(
            [
                c.name,
                fmt_mb(size),
                fmt(raw_bytes / size, 2),
                len(t),
                fmt(median(t), 2),
                fmt(pct(t, 90), 2),
                fmt(len(t) / (t.sum() / 1e3)),
                ratio(median(t), None if ours_med is None else ours_med * 1e3),
                fmt(100 * r["cpu"] / r["total"], 0),
                "ok" if r["ok"] else "WRONG DATA",
            ]
        )
    headers = [
        "candidate",
        "file MB",
        "compr.",
        "n",
        "median ms",
        "p90 ms",
        "patches/s",
        "time vs ours",
        "cpu %",
        "check",
    ]
    return table(headers, rows)


def open_table(rows_in: list[tuple[str, list[dict]]]) -> str:
    """Open latencies, median over the patch-size runs of each candidate."""

    def m(results: list[dict], key: str) -> float | None:
        vals = []
        for r in results:
            if "error" in r:
                continue
            v = r[key]
            vals.append(median(v) if isinstance(v, list) else v)
        return median(vals) * 1e3 if vals else None

    ours = {
        k: m(rows_in[0][1], k)
        for k in ("cold_open_first", "cold_opens", "warm_opens", "cold_patch")
    }
    rows = []
    for name, results in rows_in:
        vals = {k: m(results, k) for k in ours}
        if vals["warm_opens"] is None:
            rows.append([name, "-", "-", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                name,
                fmt(vals["cold_open_first"], 2),
                fmt(vals["cold_opens"], 2),
                fmt(vals["warm_opens"], 3),
                ratio(vals["warm_opens"], ours["warm_opens"]),
                fmt(vals["cold_patch"], 1),
                ratio(vals["cold_patch"], ours["cold_patch"]),
            ]
        )
    headers = [
        "candidate",
        "1st open ms (new process, cold)",
        "cold open ms",
        "warm open ms",
        "warm open vs ours",
        "1st patch cold ms",
        "vs ours",
    ]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=None, help="max patches per candidate and patch size")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds per candidate and patch size"
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    size = run_size(args)
    shape = tuple(args.shape) if args.shape else SIZES[size]
    n = args.n or N_PATCHES[size]
    budget = args.budget if args.budget is not None else BUDGET_S[size]
    patches = [tuple(min(p_, s) for p_, s in zip(ps, shape, strict=True)) for ps in PATCH_SIZES]
    ref_py, ref_note = (None, "--no-reference") if args.no_reference else reference_python()
    ours_py = our_python()
    cold_reps = COLD_REPS[size]
    rounds = args.rounds or ROUNDS[size]
    json_rows: list[dict] = []
    t_start = time.perf_counter()

    with data_dir(args) as d:
        print("# Patch reads (bench_patch_reads.py)\n")
        for line in machine_info(ref_py, ref_note, d):
            print(f"- {line}")
        print(
            f"- run: {size}, volume {shape} int16 CT-like + uint8 labels, threads={args.threads}, "
            f"up to {n} patches or {budget:g} s per candidate and patch size, seed {args.seed}\n"
        )
        ct, seg = make_volumes(shape, args.seed)
        raw_ct, raw_seg = ct.nbytes, seg.nbytes
        np.save(d / "ct.npy", ct)
        np.save(d / "seg.npy", seg)
        del ct, seg
        files = write_files(d, shape, patches, ref_py, args.threads)
        nii_n = NII_READS[size]
        open_rows: dict[str, list[dict]] = {}

        for i, ps in enumerate(patches):
            starts = random_starts(shape, ps, n, args.seed + 1 + i)
            ref_file = files.get(f"ref{i}", d / "missing.mla")
            cands = [
                Candidate("ours", ours_py, "mla", files[f"ours{i}"]),
                Candidate("reference 0.0.54", ref_py, "mla", ref_file),
                Candidate("reference reading our file", ref_py, "mla", files[f"ours{i}"]),
                Candidate("ours reading the reference file", ours_py, "mla", ref_file),
                Candidate(
                    "bare blosc2.open(mmap)[slices] on our file (no metadata)",
                    ours_py,
                    "b2",
                    files[f"ours{i}"],
                ),
                Candidate(
                    "ours, one handle for all reads (no per-read open)",
                    ours_py,
                    "mla",
                    files[f"ours{i}"],
                    reuse_handle=True,
                ),
                Candidate(
                    "bare blosc2, one handle for all reads",
                    ours_py,
                    "b2",
                    files[f"ours{i}"],
                    reuse_handle=True,
                ),
                Candidate(
                    "ours, file saved with default patch_size 192",
                    ours_py,
                    "mla",
                    files["ours_default"],
                ),
                Candidate(
                    "zarr v3, blosc lz4hc-8, chunks = ours", ours_py, "zarr", files[f"zarr{i}"]
                ),
                Candidate(
                    "zarr v3 sharded, shard = our chunk, inner chunk = our block",
                    ours_py,
                    "zarr",
                    files[f"zarrshard{i}"],
                ),
                Candidate(
                    "HDF5 gzip-4 + shuffle, chunks = ours", ours_py, "h5", files[f"h5gzip{i}"]
                ),
                Candidate("HDF5 lzf + shuffle, chunks = ours", ours_py, "h5", files[f"h5lzf{i}"]),
                Candidate("npy, np.load(mmap_mode='r')", ours_py, "npy", files["npy"]),
                Candidate(
                    "nii.gz, nibabel proxy slicing", ours_py, "nii", files["nii"], n_max=nii_n
                ),
            ]
            run_candidates(
                cands, d, d / "ct.npy", ps, starts, n, budget, args.threads, cold_reps, rounds
            )
            chunks, blocks = files[f"layout{i}"]
            ref_layout = ""
            if files.get(f"ref{i}") and files[f"ref{i}"].exists():
                ra = blosc2.open(str(files[f"ref{i}"]), mode="r")
                ref_layout = (
                    f"; reference file: chunks {tuple(ra.chunks)}, blocks {tuple(ra.blocks)}"
                )
            da = blosc2.open(str(files["ours_default"]), mode="r")
            print(f"\n## CT int16 {shape}, patch {ps}\n")
            print(
                f"ours (patch_size={ps}): chunks {chunks}, blocks {blocks}{ref_layout}; "
                f"ours default (192): chunks {tuple(da.chunks)}, blocks {tuple(da.blocks)}\n"
            )
            print(patch_table(cands, raw_ct))
            json_rows += _json_rows(f"CT int16 {shape}, patch {ps}", cands)
            for c in cands:
                open_rows.setdefault(c.name, []).append(c.result)

        # segmentation, first patch size
        ps = patches[0]
        starts = random_starts(shape, ps, n, args.seed + 1)
        seg_cands = [
            Candidate("ours", ours_py, "mla", files["seg_ours"]),
            Candidate("reference 0.0.54", ref_py, "mla", files.get("seg_ref", d / "missing.mla")),
            Candidate("zarr v3, blosc lz4hc-8, chunks = ours", ours_py, "zarr", files["seg_zarr"]),
            Candidate("HDF5 lzf + shuffle, chunks = ours", ours_py, "h5", files["seg_h5lzf"]),
            Candidate("npy, np.load(mmap_mode='r')", ours_py, "npy", files["seg_npy"]),
        ]
        run_candidates(
            seg_cands, d, d / "seg.npy", ps, starts, n, budget, args.threads, cold_reps, rounds
        )
        print(f"\n## Segmentation uint8 {shape}, patch {ps}\n")
        print(patch_table(seg_cands, raw_seg))
        json_rows += _json_rows(f"Segmentation uint8 {shape}, patch {ps}", seg_cands)

        print("\n## Open + read metadata (CT files; median over both patch sizes)\n")
        print(open_table(list(open_rows.items())))
        print(
            "\ncold = the file's pages dropped from the page cache (posix_fadvise DONTNEED) "
            "before the open; '1st open' is the first open in a fresh process (imports done); "
            "'1st patch cold' = open + metadata + one patch with a cold page cache."
        )
    print(f"\ntotal time {time.perf_counter() - t_start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(json_rows, indent=1))
    return 0


def _json_rows(title: str, cands: list[Candidate]) -> list[dict]:
    rows = []
    for c in cands:
        r = c.result
        if "error" in r or not r.get("times"):
            continue
        rows.append(
            {
                "table": title,
                "name": c.name,
                "mb": file_size(c.path) / MB,
                "median_ms": median(r["times"]) * 1e3,
                "reuse_handle": c.reuse_handle,
                "ok": r["ok"],
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
