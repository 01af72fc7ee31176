"""Converting NIfTI/NRRD to .mla: our ``mlarray convert`` against the reference ``mlarray_convert``.

Both are run as whole commands (start-up included), as a user runs them, on the same
CT-like volume and label map: wall and CPU seconds, peak memory and output size. Then a
folder of copies is converted with ``--jobs 1`` and ``--jobs 2``.

    python benchmarks/bench_convert.py [--quick | --full | --shape Z Y X] [--repeat 3]

The reference column needs its venv with ``medvol`` (``.ci/run`` makes ``.refvenv``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    MB,
    base_parser,
    data_dir,
    fmt,
    machine_info,
    make_volumes,
    median,
    ratio,
    reference_python,
    run_size,
    table,
)

SIZES = {
    "smoke": (32, 48, 48),
    "quick": (96, 160, 160),
    "default": (160, 256, 256),
    "full": (320, 512, 512),
}
_WRAP = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "wall = time.perf_counter() - t\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': p.returncode, 'wall': wall, 'cpu': r.ru_utime + r.ru_stime,\n"
    "                  'peak_kb': r.ru_maxrss, 'err': p.stderr[-400:]}))\n"
)


def measure(cmd: list[str], out: Path, repeat: int) -> dict:
    """Median wall/CPU seconds and peak RSS of ``cmd`` over ``repeat`` runs (fresh output)."""
    runs = []
    for _ in range(repeat):
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        res = json.loads(
            subprocess.run(
                [sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True, check=True
            ).stdout
        )
        if res["rc"] != 0:
            return {"error": res["err"].strip().splitlines()[-1] if res["err"] else "failed"}
        runs.append(res)
    size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
    return {
        "wall": median([r["wall"] for r in runs]),
        "cpu": median([r["cpu"] for r in runs]),
        "peak": median([r["peak_kb"] / 1024 for r in runs]),
        "size": size / MB,
    }


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per command (median)")
    p.add_argument("--files", type=int, default=4, help="files in the folder part")
    args = p.parse_args()
    shape = tuple(args.shape) if args.shape else SIZES[run_size(args)]
    ours_bin = Path(sys.executable).parent
    ref_python, ref_note = (None, "--no-reference") if args.no_reference else reference_python()
    ref_bin = None if ref_python is None else Path(ref_python).parent / "mlarray_convert"
    if ref_bin is not None and not ref_bin.exists():
        ref_bin, ref_note = None, f"{ref_bin} missing (install medvol in the reference venv)"

    import nibabel as nib
    import SimpleITK as sitk

    with data_dir(args) as work:
        for line in machine_info(ref_python, ref_note, work):
            print(line)
        ct, seg = make_volumes(shape, args.seed)
        affine = np.diag([0.8, 0.8, 1.5, 1.0])
        affine[:3, 3] = [-150.0, -160.0, -200.0]
        inputs = {}
        for name, vol in (("ct", ct), ("seg", seg)):
            xyz = np.ascontiguousarray(vol.transpose(2, 1, 0))
            inputs[f"{name}.nii.gz"] = work / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(xyz, affine), inputs[f"{name}.nii.gz"])
            img = sitk.GetImageFromArray(vol)
            img.SetSpacing((0.8, 0.8, 1.5))
            inputs[f"{name}.nrrd"] = work / f"{name}.nrrd"
            sitk.WriteImage(img, str(inputs[f"{name}.nrrd"]), useCompression=True)
        print(f"\nvolume {shape} (z, y, x): CT int16 {ct.nbytes / MB:.1f} MB, labels uint8\n")

        rows = []
        for label, src in inputs.items():
            ours = measure(
                [str(ours_bin / "mlarray"), "convert", str(src), str(work / "o.mla")],
                work / "o.mla",
                args.repeat,
            )
            ref = (
                measure([str(ref_bin), str(src), str(work / "r.mla")], work / "r.mla", args.repeat)
                if ref_bin is not None
                else None
            )
            for who, r in (("ours", ours), ("reference", ref)):
                if r is None:
                    continue
                if "error" in r:
                    rows.append([label, who, r["error"][:60], "", "", "", ""])
                    continue
                rows.append(
                    [
                        label,
                        who,
                        fmt(r["wall"], 2),
                        fmt(r["cpu"], 2),
                        ratio(r["cpu"], ours.get("cpu")),
                        fmt(r["peak"], 0),
                        fmt(r["size"], 2),
                    ]
                )
        print("## One file, whole command (start-up included)\n")
        print(
            table(
                ["input", "converter", "wall s", "cpu s", "cpu vs ours", "peak MiB", "out MB"],
                rows,
            )
        )

        folder = work / "folder"
        folder.mkdir()
        for i in range(args.files):
            shutil.copy(inputs["ct.nii.gz"], folder / f"case_{i:03d}.nii.gz")
        rows = []
        base = None
        for jobs in (1, 2):
            out = work / f"out{jobs}"
            out.mkdir()
            t = time.perf_counter()
            subprocess.run(
                [str(ours_bin / "mlarray"), "convert", str(folder), str(out), "--jobs", str(jobs)],
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - t
            base = base or wall
            rows.append([f"--jobs {jobs}", fmt(wall, 2), ratio(wall, base)])
        print(f"\n## A folder of {args.files} CT files (mlarray convert DIR OUT)\n")
        print(table(["run", "wall s", "vs --jobs 1"], rows))


if __name__ == "__main__":
    main()
