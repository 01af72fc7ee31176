"""The anatomy phantom, and the reference converter's ``.mla`` files made from it.

``phantom()`` (numpy only) is imported by the tests. Run this file with a
Python that has the reference package and its NIfTI/NRRD backend installed
(``uv venv .refvenv && uv pip install -p .refvenv/bin/python mlarray==0.0.54
medvol nibabel``; medvol brings pynrrd) to regenerate ``tests/data/converted/``::

    .refvenv/bin/python tests/data/make_converted.py [output folder [stems...]]

It writes the phantom as NIfTI in several storage orders (nibabel) and as an
LPS-space NRRD, converts
each with the reference ``mlarray_convert`` command and keeps the ``.mla``
files (a few KB each). The tests open them as a user would.
"""

from __future__ import annotations

import numpy as np

#: storage orders of the NIfTI files converted (nibabel axis codes)
ORDERS = ("RAS", "LAS", "LPS", "PIR", "ASL", "ALS")
#: ``coord_system`` the reference converter writes for a NIfTI in each of the 48 storage
#: orders (``python make_converted.py --survey``; mlarray 0.0.54, medvol 0.0.22): the
#: array's axis codes after its reordering, with an affine into RAS world
CONVERTER_CODES = (
    "RAS+", "LPS+", "RPI+", "LAI+", "SLP+", "SRA+", "ILA+", "IRP+", "ASR+", "AIL+", "PSL+", "PIR+",
)  # fmt: skip
#: phantom voxel size (mm) along RAS x, y, z and the world position of voxel 0
SPACING = (1.0, 1.5, 2.0)
ORIGIN = (-10.0, -18.0, -28.0)
#: marker values: at the patient's right, anterior and superior side
RIGHT, ANTERIOR, SUPERIOR = 100, 200, 300


def phantom() -> np.ndarray:
    """A (20, 24, 28) int16 body (10) with three markers, in RAS array order (x, y, z).

    Index ``x`` grows toward the patient's right, ``y`` toward anterior, ``z``
    toward superior (the NIfTI RAS+ convention with a diagonal affine).
    """
    d = np.zeros((20, 24, 28), np.int16)
    d[2:18, 2:22, 2:26] = 10
    d[15:18, 10:14, 12:16] = RIGHT
    d[9:12, 19:22, 12:16] = ANTERIOR
    d[9:12, 10:14, 22:26] = SUPERIOR
    return d


def ras_affine() -> np.ndarray:
    """NIfTI affine of :func:`phantom` (RAS world)."""
    a = np.diag([*SPACING, 1.0])
    a[:3, 3] = ORIGIN
    return a


def time_series() -> np.ndarray:
    """A (10, 12, 14, 3) int16 RAS time series (3 frames, 2000 ms apart)."""
    d = np.zeros((10, 12, 14, 3), np.int16)
    for t in range(3):
        d[2:8, 2:10, 2:12, t] = 10 * (t + 1)
    return d


def main() -> None:
    """Write the inputs, convert each with ``mlarray_convert`` (``argv``: [folder [names...]])."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import nibabel as nib
    import nrrd
    from nibabel.orientations import axcodes2ornt, ornt_transform

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("converted")
    only = set(sys.argv[2:])  # output stems to make (default: all)
    out.mkdir(exist_ok=True)
    convert = Path(sys.executable).with_name("mlarray_convert")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {}
        for code in ORDERS:
            turn = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(code)))
            nii = nib.Nifti1Image(phantom(), ras_affine()).as_reoriented(turn)
            assert "".join(nib.aff2axcodes(nii.affine)) == code
            inputs[f"phantom_{code}"] = (nii, ".nii.gz")
        series = nib.Nifti1Image(time_series(), ras_affine())
        series.header.set_zooms((*SPACING, 2000.0))
        series.header.set_xyzt_units("mm", "msec")
        inputs["series_4d"] = (series, ".nii.gz")
        inputs["phantom_nrrd"] = (None, ".nrrd")  # LPS space: the same anatomy
        for stem, (image, suffix) in inputs.items():
            if only and stem not in only:
                continue
            src = Path(tmp) / f"{stem}{suffix}"
            if image is None:
                lps = np.diag([-1.0, -1.0, 1.0])
                header = {
                    "space": "left-posterior-superior",
                    "space directions": lps @ ras_affine()[:3, :3],
                    "space origin": lps @ ras_affine()[:3, 3],
                }
                nrrd.write(str(src), phantom(), header)
            else:
                nib.save(image, src)
            subprocess.run([str(convert), str(src), str(out / f"{stem}.mla")], check=True)
            print(out / f"{stem}.mla")


def survey() -> None:
    """Print the ``coord_system`` the converter writes for each of the 48 NIfTI storage orders."""
    import itertools
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from mlarray import MLArray

    convert = Path(sys.executable).with_name("mlarray_convert")
    names = ("RL", "AP", "SI")
    with tempfile.TemporaryDirectory() as tmp:
        for perm in itertools.permutations(range(3)):
            for ends in itertools.product((0, 1), repeat=3):
                code = "".join(names[perm[j]][ends[j]] for j in range(3))
                turn = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(code)))
                nii = nib.Nifti1Image(phantom(), ras_affine()).as_reoriented(turn)
                src, dst = Path(tmp) / f"{code}.nii.gz", Path(tmp) / f"{code}.mla"
                nib.save(nii, src)
                subprocess.run([str(convert), str(src), str(dst)], check=True)
                arr = MLArray.open(dst)
                own = "".join(nib.aff2axcodes(arr.affine))
                print(code, arr.meta.spatial.coord_system, own, flush=True)


if __name__ == "__main__":
    import sys

    survey() if sys.argv[1:] == ["--survey"] else main()
