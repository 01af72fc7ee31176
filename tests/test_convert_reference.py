"""Our converter against the reference ``mlarray_convert`` (0.0.54 + medvol, its own venv).

Both convert the same NIfTI/NRRD; every voxel must hold the same value at the
same world point, in the files and in our napari plugin. The reference stores a
RAS-world affine over a reoriented array with the array's axis codes in
``coord_system`` (FORMAT.md section 4); ours stores the file's own voxel order and
world frame.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.convert import to_file
from tests._worldcheck import NIB_DATA, assert_same_world, oblique_sitk, ours, run_cli

REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")


def _reference_converter() -> Path:
    if not REFERENCE_PYTHON:
        pytest.skip("set MLARRAY_REFERENCE_PYTHON to the reference venv's python (.ci/run does)")
    exe = Path(REFERENCE_PYTHON).parent / "mlarray_convert"
    probe = subprocess.run([REFERENCE_PYTHON, "-c", "import medvol"], capture_output=True)
    if probe.returncode != 0 or not exe.exists():
        pytest.skip("the reference venv has no medvol (.ci/run installs it)")
    return exe


def reference_world(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data, RAS affine) of a file the reference converter wrote."""
    img = MLArray.open(path)
    cs = img.meta.spatial.coord_system
    # its coord_system holds the array's own axis codes; the affine is RAS world
    assert cs is not None and cs.rstrip("+") == "".join(nib.aff2axcodes(img.affine))
    return img.to_numpy(), np.asarray(img.affine, dtype=np.float64)


def _pir_nifti(tmp_path: Path) -> Path:
    """A P, I, R ordered NIfTI (not RAS), so both converters must reorient or keep it right."""
    rng = np.random.default_rng(11)
    a = rng.integers(0, 500, (5, 6, 7)).astype(np.int16)
    aff = np.array([[0, 0, 1.2, -30], [-0.9, 0, 0, 40], [0, -2.5, 0, 12], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(a, aff), tmp_path / "pir.nii.gz")
    return tmp_path / "pir.nii.gz"


@pytest.mark.parametrize("kind", ["anatomical.nii", "pir.nii.gz", "oblique.nrrd"])
def test_same_voxels_at_the_same_world_points_as_the_reference(tmp_path, kind):
    ref_convert = _reference_converter()
    if kind == "anatomical.nii":
        src = NIB_DATA / kind
    elif kind == "pir.nii.gz":
        src = _pir_nifti(tmp_path)
    else:
        src = oblique_sitk(tmp_path, ".nrrd")
    proc = subprocess.run(
        [str(ref_convert), str(src), str(tmp_path / "ref.mla")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    run_cli("convert", src, tmp_path / "ours.mla", check_rc=0)

    ref_data, ref_aff = reference_world(tmp_path / "ref.mla")
    our_data, our_aff = ours(MLArray.open(tmp_path / "ours.mla"))
    # the reference rounds its affine to 6 decimals: a tolerance in index units
    assert_same_world(our_data, our_aff, ref_data, ref_aff, atol=1e-3)

    # both open in our napari plugin with every voxel at the same napari world point (and
    # ours at its point in the plugin's radiological frame: test_convert.py checks that)
    def in_napari(path: Path) -> tuple[np.ndarray, np.ndarray]:
        from napari_mlarray._orientation import layer_matrix
        from napari_mlarray._reader import read_mla

        layer_data, kwargs, _ = read_mla(str(path))[0]
        view = np.asarray(layer_data)
        return view, layer_matrix(kwargs, view.ndim)

    assert_same_world(*in_napari(tmp_path / "ours.mla"), *in_napari(tmp_path / "ref.mla"))

    # a reference file goes out through our converter to the same world too
    to_file(tmp_path / "ref.mla", tmp_path / "from_ref.nii.gz")
    back = nib.load(tmp_path / "from_ref.nii.gz")
    assert_same_world(our_data, our_aff, np.asarray(back.dataobj), back.affine, atol=1e-3)
