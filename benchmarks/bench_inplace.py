"""Cost of all-or-nothing in-place writes (reservation + undo journal + per-write checksums).

One nnU-Net-sized CT volume (default mlarray layout) is copied afresh before every trial;
each trial opens it for writing, writes one 64^3 patch at a random place and closes it.
Compared, interleaved in rotating order so drift hits all alike:

* ``c-blosc2 alone``: ``blosc2.open(mode="a")`` and ``store[patch] = x`` (the floor: no
  metadata, no checksums, not atomic);
* ``unjournaled (before)``: what mlarray did before this change: the same raw write, then
  on close the metadata record and every chunk digest recomputed (the whole file hashed);
* ``mlarray mode="a"`` / ``mlarray mmap r+``: ``MLArray.open``, ``a[patch] = x``, ``close()``
  -- reservation, journal of the header and of the bytes from the first rewritten chunk to
  the end of the file, digests of the rewritten chunks, fsync, commit.

Also: the journal's size per write, and what ``MLArray.open`` pays for looking for a
journal (one failed ``open`` of the journal's name).

    python benchmarks/bench_inplace.py            # 256x384x384 int16, ~1 min
    python benchmarks/bench_inplace.py --quick    # 128x192x192
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
from bench_checksums import ct_volume  # the same synthetic CT (this folder is on sys.path)

from mlarray import MLArray, integrity, io
from mlarray.frame import inspect_frame


def _raw(p: Path, key: tuple, x: np.ndarray) -> tuple[float, float]:
    t = time.perf_counter()
    store = blosc2.open(str(p), mode="a")
    store[key] = x
    t1 = time.perf_counter()
    del store
    return t1 - t, time.perf_counter() - t1


def _before(p: Path, key: tuple, x: np.ndarray) -> tuple[float, float]:
    t = time.perf_counter()
    a = MLArray.open(p, mode="a", mmap_mode=None)
    store = a._store
    store[key] = x
    t1 = time.perf_counter()
    record = store.schunk.vlmeta[io.VLMETA_KEY]
    store.schunk.vlmeta[io.VLMETA_KEY] = record
    integrity.refresh_file(store, p)
    return t1 - t, time.perf_counter() - t1


def _ours(mmap_mode: str | None):
    def run(p: Path, key: tuple, x: np.ndarray) -> tuple[float, float]:
        t = time.perf_counter()
        a = MLArray.open(p, mode="a", mmap_mode=mmap_mode)
        a[key] = x
        t1 = time.perf_counter()
        a.close()
        return t1 - t, time.perf_counter() - t1

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128x192x192")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    shape = (128, 192, 192) if args.quick else (256, 384, 384)
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench_inplace_"))
    try:
        src = work / "src.mla"
        MLArray(ct_volume(shape, 0)).save(src)
        info = inspect_frame(src.read_bytes())
        size = src.stat().st_size
        rng = np.random.default_rng(1)
        methods = {
            "c-blosc2 alone": _raw,
            "unjournaled (before)": _before,
            'mlarray mode="a"': _ours(None),
            "mlarray mmap r+": _ours("r+"),
        }
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
        journal = []
        wrong: list[str] = []
        names = list(methods)
        for r in range(args.rounds):
            start = [int(rng.integers(0, n - 64 + 1)) for n in shape]
            key = tuple(slice(s, s + 64) for s in start)
            x = rng.integers(-1000, 1000, (64, 64, 64)).astype(np.int16)
            ids = integrity.chunks_in_box(info, [(s, s + 64) for s in start])
            low = int(info.chunk_pos[ids][info.chunk_pos[ids] >= 0].min())
            journal.append(info.header_len + size - low)
            for m in names[r % len(names) :] + names[: r % len(names)]:
                p = work / "w.mla"
                shutil.copyfile(src, p)
                times[m].append(methods[m](p, key, x))
                # c-blosc2 alone leaves the checksums stale: the others must verify
                ok = np.array_equal(blosc2.open(str(p))[key], x)
                if not ok or (m != "c-blosc2 alone" and not integrity.verify_file(p).ok):
                    wrong.append(m)
                p.unlink()
        print(
            f"## In-place write of one 64^3 patch, {shape} int16 ({size / 1e6:.1f} MB file, "
            f"chunks {info.chunks}, {info.nchunks} chunks), median of {args.rounds}\n"
        )
        base = statistics.median(w + c for w, c in times["c-blosc2 alone"])
        print("| method | open + write (ms) | close (ms) | total (ms) | total / c-blosc2 |")
        print("|---|---|---|---|---|")
        for m in names:
            w = statistics.median(t[0] for t in times[m]) * 1e3
            c = statistics.median(t[1] for t in times[m]) * 1e3
            tot = statistics.median(a + b for a, b in times[m]) * 1e3
            print(f"| {m} | {w:.1f} | {c:.1f} | {tot:.1f} | {tot / 1e3 / base:.2f} |")
        bad = ", ".join(sorted(set(wrong)))
        print(f"\ncheck: {'WRONG DATA from ' + bad if wrong else 'ok'}")
        print(
            f"\nJournal per write: median {statistics.median(journal) / 1e6:.1f} MB "
            f"(header + bytes from the first rewritten chunk to the end of the file)\n"
        )
        # open(): the journal lookup, and a whole open of an unchanged file
        p = work / "w.mla"
        shutil.copyfile(src, p)
        MLArray.open(p)
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            io.recover(p)
        look = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for _ in range(n):
            MLArray.open(p)
        whole = (time.perf_counter() - t) / n
        print("| open | us |")
        print("|---|---|")
        print(f"| journal lookup (`io.recover`, no journal) | {look * 1e6:.1f} |")
        print(f"| `MLArray.open` of a validated file (includes the lookup) | {whole * 1e6:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
