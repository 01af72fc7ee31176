"""The benchmark runs end to end: a tiny smoke run of benchmarks/run_all.py.

No timings are asserted; the run must finish, check every result against the source
data and write the report and the plot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
