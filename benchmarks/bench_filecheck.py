"""What the check of a mapped file before each read costs (``mlarray._maps.Watch``).

Every read of a handle that decodes from a memory mapping first checks that no other
program cut the file short or rewrote it in place (one ``stat``): a page past a new end
of file would kill the process with SIGBUS. This compares, in one process and
interleaved round by round, warm random patch reads with the check as shipped against
the same reads with the check replaced by a no-op, plus an A/A pair (both with the
check) that shows the noise floor of the comparison. Figures are thread CPU time
(``time.thread_time``), medians over rounds; the ratio is the median of the paired
per-round ratios.

    python benchmarks/bench_filecheck.py            # 256x384x384, 64^3 and 128^3, ~1 min
    python benchmarks/bench_filecheck.py --quick    # 128x192x192, 64^3
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import (
    base_parser,
    data_dir,
    loadavg,
    machine_info,
    make_volumes,
    median,
    random_starts,
    run_size,
    table,
)

from mlarray import MLArray, _maps

SHAPES = {"smoke": (48, 64, 64), "quick": (128, 192, 192), "default": (256, 384, 384)}
PLAN = {  # patch sizes, rounds, reads per round
    "smoke": ((32,), 3, 10),
    "quick": ((64,), 15, 100),
    "default": ((64, 128), 25, 150),
    "full": ((64, 128), 25, 150),
}


def _off(store: object) -> None:
    return None


def _reads(open_each: bool, a: MLArray, p: Path, starts: list, size: int) -> float:
    """Thread CPU seconds per read of ``size``^3 patches at ``starts``."""
    t = time.thread_time()
    for z, y, x in starts:
        h = MLArray.open(p) if open_each else a
        h[z : z + size, y : y + size, x : x + size]
    return (time.thread_time() - t) / len(starts)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    run = run_size(args)
    shape = tuple(args.shape) if args.shape else SHAPES.get(run, (256, 384, 384))
    sizes, rounds, n = PLAN[run]
    check = _maps.check
    with data_dir(args) as d:
        print("\n".join(f"- {line}" for line in machine_info(None, "not used", d)))
        p = d / "ct.mla"
        MLArray(make_volumes(shape, args.seed)[0]).save(p)
        a = MLArray.open(p)
        rows = []
        for size in sizes:
            starts = [tuple(s) for s in random_starts(shape, (size,) * 3, n, args.seed + size)]
            for open_each in (False, True):
                _reads(open_each, a, p, starts, size)  # warm: page cache, verification
                times: dict[str, list[float]] = {"check": [], "no check": [], "A/A": []}
                for r in range(rounds):
                    order = ("check", "no check", "A/A")
                    for kind in order if r % 2 else order[::-1]:
                        _maps.check = _off if kind == "no check" else check
                        times[kind].append(_reads(open_each, a, p, starts, size))
                _maps.check = check
                paired = [c / o for c, o in zip(times["check"], times["no check"], strict=True)]
                noise = [c / o for c, o in zip(times["check"], times["A/A"], strict=True)]
                rows.append(
                    [
                        f"{size}^3, {'open per read' if open_each else 'one handle'}",
                        f"{median(times['check']) * 1e6:.1f}",
                        f"{median(times['no check']) * 1e6:.1f}",
                        f"{median(paired):.4f}",
                        f"{median(noise):.4f}",
                    ]
                )
        print()
        print(
            table(
                [
                    "warm patch read",
                    "with the check us",
                    "no check us",
                    "check / no check",
                    "A/A (noise)",
                ],
                rows,
            )
        )
        print(f"\nvolume {shape} int16, {rounds} rounds of {n} reads; load average {loadavg()}")


if __name__ == "__main__":
    main()
