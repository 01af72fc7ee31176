"""Long fuzz run: mutate a real .mla file many times; every operation must end in our error or
correct data, never a crash, hang, memory blow-up, foreign exception or silently wrong values.

    .venv/bin/python scripts/fuzz_frames.py [N_FILES] [SEED]

Each batch of mutated files runs in a child process capped at 1 GiB of address
space (tests/reliability_harness.py). Prints the outcome counts and any bad case.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlarray import MLArray
from mlarray.frame import inspect_frame

HARNESS = Path(__file__).resolve().parents[1] / "tests" / "reliability_harness.py"
OPS = "open,load,slice,stats,reader,sha"


def main() -> None:
    n_files = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    work = Path(tempfile.mkdtemp(prefix="mla-fuzz-"))
    base = work / "base.mla"
    data = (np.random.default_rng(0).normal(size=(24, 30, 36)) * 50).astype(np.int16)
    data[:12] = 0
    MLArray(data, patch_size=None, chunk_size=(12, 15, 18), block_size=(6, 15, 9)).save(base)
    truth = "sha:" + hashlib.sha256(data.tobytes()).hexdigest()
    buf = base.read_bytes()
    info = inspect_frame(buf)
    hot = list(range(info.header_len)) + list(range(info.header_len + info.cbytes, len(buf)))
    for pos in info.chunk_pos[info.chunk_pos >= 0]:
        hot += range(int(pos), int(pos) + 48)
    counts: collections.Counter = collections.Counter()
    bad = []
    t0 = time.time()
    for start in range(0, n_files, 100):
        paths = []
        for n in range(start, min(start + 100, n_files)):
            b = bytearray(buf)
            for _ in range(rng.randint(1, 4)):
                pos = rng.choice(hot) if rng.random() < 0.6 else rng.randrange(len(b))
                b[pos] = rng.randrange(256)
            p = work / f"m{n}.mla"
            p.write_bytes(bytes(b))
            paths.append(os.fspath(p))
        try:
            proc = subprocess.run(
                [sys.executable, os.fspath(HARNESS), str(1 << 30), OPS, *paths],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            bad.append(("HANG", paths[0], paths[-1]))
            continue
        if proc.returncode != 0:
            bad.append(("CRASH", proc.returncode, paths[0], proc.stderr[-500:]))
        for line in proc.stdout.splitlines():
            row = json.loads(line)
            for op, res in zip(OPS.split(","), row["results"], strict=True):
                if res.startswith("sha:"):
                    res = "ok" if res == truth else "WRONG DATA"
                counts[(op, res.split(":")[0])] += 1
                if res.startswith(("FOREIGN", "WRONG")):
                    bad.append((res, row["path"], op))
        for p in paths:
            if not bad or p not in {x[1] for x in bad}:
                os.unlink(p)
    if not bad:
        shutil.rmtree(work, ignore_errors=True)
    kept = f"; bad files kept in {work}" if bad else ""
    print(f"{n_files} mutated files in {time.time() - t0:.0f} s{kept}")
    for (op, res), n in sorted(counts.items()):
        print(f"  {op:7s} {res:22s} {n}")
    print(f"bad cases: {len(bad)}")
    for row in bad[:50]:
        print("  ", row)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
