"""Regenerate ``mni152_t1_2mm.nii.gz``: the MNI152 T1 template at half resolution.

The template ships inside the ``nilearn`` wheel
(``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``,
1 mm, 197 x 233 x 189). This script downloads the wheel without installing
it, averages 2 x 2 x 2 voxel blocks and writes the result (RAS storage order,
uint8, affine scaled accordingly) next to itself::

    python tests/data/make_mni.py     # needs pip, numpy and nibabel
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def main() -> None:
    import nibabel as nib

    out = Path(__file__).with_name("mni152_t1_2mm.nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, "nilearn"],
            check=True,
        )
        wheel = next(Path(tmp).glob("nilearn-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            (Path(tmp) / "t1.nii.gz").write_bytes(zf.read(MEMBER))
        img = nib.load(Path(tmp) / "t1.nii.gz")
        data = np.asarray(img.dataobj, dtype=np.float64)
    shape = [s // 2 * 2 for s in data.shape]
    data = data[: shape[0], : shape[1], : shape[2]]
    small = data.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(1, 3, 5))
    small = np.clip(np.round(small / small.max() * 255), 0, 255).astype(np.uint8)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * 2
    affine[:3, 3] = img.affine[:3, :3] @ np.full(3, 0.5) + img.affine[:3, 3]  # block centres
    nib.save(nib.Nifti1Image(small, affine), out)
    print(out, small.shape, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
