"""The benchmark runs end to end: a tiny smoke run of benchmarks/run_all.py.

No timings are asserted; the run must finish, check every result against the source
data and write the report and the plot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_writes_results_and_plot(tmp_path):
    env = dict(os.environ)
    ref = env.get("MLARRAY_REFERENCE_PYTHON")
    args = [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--smoke"]
    args += ["--out", str(tmp_path)]
    if not ref:
        args.append("--no-reference")
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (tmp_path / "RESULTS.md").read_text()
    for heading in (
        "# Benchmark results",
        "Warm random patch reads",
        "Cold patch reads",
        "Full load",
        "Save with default settings",
        "Codec defaults per content",
        "Viewer scrolling",
        "Memory",
        "load average at start",
    ):
        assert heading in report, heading
    assert "WRONG DATA" not in report and "failed (exit" not in report
    assert report.count("check: ok") >= 2
    assert ("reference: mlarray 0.0.54" in report) == bool(ref)
    png = (tmp_path / "patch_reads.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.qt
@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed")
def test_napari_benchmark_smoke_run_writes_its_goal_rows(tmp_path):
    """bench_napari.py --smoke: every kind opens and draws in its fresh process (ours and
    napari's own .npy reader, by drag-and-drop and called directly), and the two napari
    goals come out as rows for run_all.py's goal table."""
    goals = tmp_path / "goals.json"
    args = [sys.executable, str(REPO / "benchmarks" / "bench_napari.py"), "--smoke"]
    args += ["--goals", str(goals)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "failed" not in out, out[-3000:]
    for name in (
        "ours: viewer.open(path.mla, plugin=None)",
        "ours: read_mla(path.mla)",
        "napari's own .npy reader: viewer.open(path.npy, plugin=None)",
        "napari's own .npy reader called directly",
        "npy memmap added by hand",
    ):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name}"))
        assert row.rstrip(" |").endswith("True"), row  # the frames were not blank
    rows = json.loads(goals.read_text())
    first_frame, frame3d = rows  # a difference in seconds, then a ratio
    assert first_frame["unit"] == "s" and first_frame["limit"] == 0.1
    assert first_frame["met"] == (first_frame["ratio"] <= 0.1)
    if not first_frame["met"]:
        assert "napari's own .npy via viewer.open" in first_frame["why"]
    assert "unit" not in frame3d and frame3d["limit"] == 1.2
    assert frame3d["met"] == (frame3d["ratio"] <= 1.2)


@pytest.mark.parametrize(
    ("script", "extra", "expect"),
    [
        ("bench_io.py", [], "peak RSS"),
        ("bench_convert.py", ["--repeat", "1", "--files", "2"], "--jobs 1"),
    ],
)
def test_the_other_benchmark_scripts_run_with_smoke(tmp_path, script, extra, expect):
    # benchmarks/README lists --smoke among every script's options
    args = [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--no-reference"]
    args += ["--dir", str(tmp_path / "data"), *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expect in proc.stdout
