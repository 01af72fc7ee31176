"""Run every benchmark and write benchmarks/RESULTS.md and the patch-read plot.

    python benchmarks/run_all.py                 # 256x384x384, ~15 min on 2 cores
    python benchmarks/run_all.py --smoke --out /tmp/x --no-reference   # seconds

Runs, each in its own process (and its workers in fresh processes):

1. ``bench_paths.py``: every read/write path against its floor (decode-only limits),
   the reference package, npy; cold reads, full load, default saves, codec defaults,
   viewer scrolling with the chunk cache, memory on a 2 GB volume, MNI152.
2. ``bench_patch_reads.py``: nnU-Net patch reads across formats (zarr v3, HDF5, npy,
   nii.gz, the reference), with open / cold-open latencies.
3. ``bench_io.py``: save / load / re-save throughput across formats (not with --smoke).
4. ``bench_napari.py``: napari open -> first frame, slider steps, first 3D frame, in fresh
   processes under xvfb-run (not with --smoke).
5. ``bench_presets.py``: the napari plugin's recompression presets on real volumes (not
   with --smoke).
6. ``bench_convert.py``: ``mlarray convert`` against the reference converter (not with
   --smoke).
7. ``bench_inplace.py``: all-or-nothing in-place writes (journal, reservation, checksums)
   against c-blosc2 alone and the former unjournaled path (not with --smoke).

The report gets the machine, the date, the versions, the commands and every table, and
``patch_reads.png``: median patch-read time against file size, one marker per format.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_script(script: str, args: list[str], env: dict) -> tuple[str, float, int]:
    cmd = [sys.executable, str(HERE / script), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - t0
    out = proc.stdout
    if proc.returncode != 0:
        out += (
            f"\n\n**{script} failed (exit {proc.returncode})**\n\n```\n{proc.stderr[-3000:]}\n```\n"
        )
    return out, took, proc.returncode


def precompile(no_reference: bool) -> str:
    """Compile the bytecode of both interpreters' packages, as a pip install does.

    Without it (uv installs, or ``PYTHONDONTWRITEBYTECODE`` set as on the machine of
    these runs), every fresh worker process compiles numpy, blosc2, napari... from
    source, and the first-open / napari rows measure the compiler.
    """
    sys.path.insert(0, str(HERE))
    from _common import reference_python

    pythons = [sys.executable]
    ref, _ = (None, "") if no_reference else reference_python()
    if ref:
        pythons.append(ref)
    done = []
    for py in pythons:
        purelib = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if purelib:
            subprocess.run(
                [py, "-m", "compileall", "-q", "-j", "0", purelib, str(REPO / "src")],
                capture_output=True,
                check=False,
            )
            done.append(purelib)
    return "bytecode compiled first (python -m compileall) in " + ", ".join(done)


def plot(rows: list[dict], path: Path) -> None:
    """Median patch-read time against file size, one panel per table, one marker per
    format (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables: dict[str, list[dict]] = {}
    for r in rows:
        tables.setdefault(r["table"], []).append(r)
    n = max(1, len(tables))
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.6 * nrows), squeeze=False)
    markers = "osD^v<>pPhX*"
    names = sorted({r["name"] for r in rows})
    style = {name: markers[i % len(markers)] for i, name in enumerate(names)}
    for ax, (title, trs) in zip(axes.flat, tables.items(), strict=False):
        for r in trs:
            ax.scatter(r["mb"], r["median_ms"], marker=style[r["name"]], s=55, label=r["name"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel("median patch read (ms)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(tables) :]:
        ax.axis("off")
    fig.suptitle("Patch-read time vs file size per format (lower left is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _goal_table(goals: list[dict]) -> str:
    sys.path.insert(0, str(HERE))
    from _common import table

    def status(g: dict) -> str:
        if g["met"]:
            return "met"
        return f"NOT met: {g['why']}" if g.get("why") else "NOT met"

    def value(g: dict) -> tuple[str, str]:
        # a difference in seconds ("unit": "s", as napari's open -> first frame), else a ratio
        if g.get("unit") == "s":
            return f"{g['ratio']:+.3f} s", f"<= +{g['limit']} s"
        return f"{g['ratio']:.2f}x", f"<= {g['limit']}x"

    rows = [[g["goal"], *value(g), status(g)] for g in goals]
    headers = ["goal", "ratio or difference", "target", "status (and the limit behind it)"]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny volume, bench_paths only")
    size.add_argument("--quick", action="store_true", help="128x192x192")
    size.add_argument("--full", action="store_true", help="512^3")
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and the PNG go")
    p.add_argument("--no-reference", action="store_true", help="skip the reference package")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--smoke"] if args.smoke else ["--quick"] if args.quick else []
    common += ["--full"] if args.full else []
    common += ["--no-reference"] if args.no_reference else []
    env = dict(os.environ)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    compiled = "" if args.smoke else precompile(args.no_reference)

    paths_json = args.out / "paths_rows.json"
    patch_json = args.out / "patch_rows.json"
    napari_goals = args.out / "napari_goals.json"
    runs = [("bench_paths.py", [*common, "--json", str(paths_json)])]
    if not args.smoke:
        runs.append(("bench_patch_reads.py", [*common, "--json", str(patch_json)]))
        runs.append(("bench_io.py", common))
        runs.append(("bench_napari.py", [*common, "--goals", str(napari_goals)]))
        wheels = sorted((HERE / "_data").glob("nilearn-*.whl"))  # bench_paths fetched it
        runs.append(("bench_presets.py", ["--wheel", str(wheels[-1])] if wheels else []))
        runs.append(("bench_convert.py", [a for a in common if a != "--no-reference"]))
        runs.append(("bench_inplace.py", [a for a in common if a != "--no-reference"]))
    outputs = []
    failed = 0
    for script, extra in runs:
        print(f"running {script} {' '.join(extra)} ...", flush=True)
        out, took, rc = run_script(script, extra, env)
        failed += rc != 0
        outputs.append((script, extra, out, took))

    goals_json = paths_json.with_suffix(".goals.json")
    goals = []
    for j in (goals_json, napari_goals):
        if j.exists():
            goals += json.loads(j.read_text())
            j.unlink()
    rows = []
    for j in (patch_json, paths_json):
        if j.exists():
            rows += json.loads(j.read_text())
            j.unlink()
    png = args.out / "patch_reads.png"
    if rows:
        plot(rows, png)

    cmd = "python benchmarks/run_all.py" + (" " + " ".join(sys.argv[1:]) if argv is None else "")
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{cmd.strip()}` (every figure below comes from that one run).",
        "",
        f"- started {started:%Y-%m-%d %H:%M} UTC, took {time.perf_counter() - t0:.0f} s; "
        f"load average at start {load_start}, at end "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
        "(2 cores shared with other sessions: read ratios, not absolute times)",
        f"- commit `{_git('rev-parse', '--short', 'HEAD')}` on branch "
        f"`{_git('rev-parse', '--abbrev-ref', 'HEAD')}`",
        "- each script's header lists the machine, the versions and the reference package",
        *([f"- {compiled}"] if compiled else []),
        f"- plot: [{png.name}]({png.name}) (median patch-read time against file size per format)",
        "",
    ]
    if goals:
        lines += [
            "## Goals of issue 10 in this run",
            "",
            "Each ratio divides our figure by the figure it is measured against, in this run "
            "(napari's open -> first frame is a difference in seconds instead; see the "
            "sections below, and benchmarks/README.md for the limits behind the goals that "
            "are not met).",
            "",
            _goal_table(goals),
            "",
        ]
    for script, extra, out, took in outputs:
        if not out.lstrip().startswith("#"):
            out = f"# {script}\n\n{out}"
        lines += [
            f"<!-- {script} {' '.join(extra)} ({took:.0f} s) -->",
            "",
            re.sub(r"^(#+) ", r"#\1 ", out.strip(), flags=re.MULTILINE),
            "",
        ]
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'RESULTS.md'}" + (f" and {png}" if rows else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
