"""Run library operations on possibly hostile files, in a child process with a memory cap.

Used by ``tests/test_reliability.py`` and ``scripts/fuzz_frames.py``:

    python reliability_harness.py MEMORY_BYTES OPS FILE [FILE ...]

For each file, runs each operation of the comma-separated ``OPS`` and prints
one JSON line per file: the outcome of each operation, either ``"ok"``, the
name of an mlarray error class, or ``"FOREIGN:<type>:<message>"`` for any
other exception. A crash shows as a signal in the return code; a hang as a
timeout in the parent.
"""

from __future__ import annotations

import json
import os
import resource
import sys

# Run as a script, this folder is sys.path[0]; its "napari" test package would shadow napari.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)


def _run(path: str, op: str) -> str:
    import numpy as np

    from mlarray import MLArray
    from mlarray.errors import MLArrayError
    from mlarray.io import read_meta

    try:
        if op == "open":
            MLArray.open(path)
        elif op == "meta":
            read_meta(path)
        elif op == "load":
            a = MLArray.load(path)
            if a.shape is not None:
                a[...]
        elif op == "read":
            a = MLArray.open(path)
            if a.shape is not None:
                a[...]
        elif op == "slice":
            a = MLArray.open(path)
            if a.shape:
                a[tuple(slice(n // 3, n // 3 + 5) for n in a.shape)]
                a[tuple(-1 for _ in a.shape)]
        elif op == "stats":
            a = MLArray.open(path)
            if a.shape is not None:
                a.compute_stats()
        elif op == "verify":
            MLArray.open(path).verify()
        elif op == "nomap":
            a = MLArray.open(path, mmap_mode=None)
            if a.shape is not None:
                np.asarray(a[...])
        elif op == "sha":
            import hashlib

            a = MLArray.open(path)
            return "sha:" + hashlib.sha256(np.ascontiguousarray(a[...]).tobytes()).hexdigest()
        elif op == "reader":
            from napari_mlarray._reader import read_mla

            for data, _kw, _kind in read_mla(path):
                if hasattr(data, "shape") and len(data.shape):
                    np.asarray(data[(0,) * (len(data.shape) - 2)])  # a plane
                    np.asarray(data)  # the volume (napari's 3D view)
        else:
            raise SystemExit(f"unknown op {op}")
    except MLArrayError as exc:
        return type(exc).__name__
    except Exception as exc:
        return f"FOREIGN:{type(exc).__name__}:{str(exc)[:300]}"
    return "ok"


def main() -> None:
    limit = int(sys.argv[1])
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    ops = sys.argv[2].split(",")
    for path in sys.argv[3:]:
        print(json.dumps({"path": path, "results": [_run(path, op) for op in ops]}), flush=True)


if __name__ == "__main__":
    main()
