"""Shared helpers of the converter tests: world coordinates voxel by voxel, test images, the CLI."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from mlarray import MLArray

MLARRAY_EXE = Path(sys.executable).parent / "mlarray"
_TO_RAS = {"RAS": np.diag([1.0, 1.0, 1.0, 1.0]), "LPS": np.diag([-1.0, -1.0, 1.0, 1.0])}


def run_cli(
    *args: object, cwd: Path | None = None, exe: Path = MLARRAY_EXE, check_rc=None, env=None
):
    """Run the installed command in a subprocess; return the CompletedProcess."""
    assert exe.exists(), f"{exe} is not installed (pip install -e .)"
    proc = subprocess.run(
        [str(exe), *(os.fspath(a) for a in args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        timeout=300,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def ras_affine_of(img: MLArray) -> tuple[np.ndarray, list[int]]:
    """(4x4 affine to RAS world, spatial array axes) of an MLArray with a RAS/LPS frame."""
    frame = img.meta.spatial.coord_system
    assert frame in _TO_RAS, frame
    spatial = [ax for ax, m in enumerate(img.spatial_axis_mask) if m]
    return _TO_RAS[frame] @ np.asarray(img.affine, dtype=np.float64), spatial


def assert_same_world(
    data_a: np.ndarray, affine_a: np.ndarray, data_b: np.ndarray, affine_b: np.ndarray, atol=1e-3
) -> None:
    """Every voxel of A lies on a voxel of B at the same world point, with the same value.

    Both arrays hold exactly three spatial axes in their own orders and
    ``affine_*`` map their indices to one common world frame.
    """
    assert data_a.size == data_b.size, (data_a.shape, data_b.shape)
    idx = np.indices(data_a.shape).reshape(3, -1).astype(np.float64)
    world = affine_a[:3, :3] @ idx + affine_a[:3, 3:4]
    inv = np.linalg.inv(affine_b)
    idx_b = inv[:3, :3] @ world + inv[:3, 3:4]
    rounded = np.rint(idx_b)
    assert np.max(np.abs(idx_b - rounded)) < atol, np.max(np.abs(idx_b - rounded))
    r = rounded.astype(np.int64)
    for d in range(3):
        assert r[d].min() >= 0 and r[d].max() < data_b.shape[d]
    np.testing.assert_array_equal(data_a.reshape(-1), data_b[r[0], r[1], r[2]])
    # and the map is one-to-one: every voxel of B is reached once
    flat = np.ravel_multi_index(r, data_b.shape)
    assert np.unique(flat).size == data_b.size


def make_dicom_series(folder: Path, n_slices: int = 4, step: float = 2.5, skip: int | None = None):
    """A CT series made from pydicom's CT_small.dcm: slices along the normal, values per slice.

    Returns the expected (LPS affine over (col, row, slice) indices, stored values in
    (col, row, slice) order) computed from the DICOM tags alone.
    """
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    iop = np.array(src.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    ipp0 = np.array(src.ImagePositionPatient, dtype=np.float64)
    base = src.pixel_array
    slope, inter = float(src.RescaleSlope), float(src.RescaleIntercept)
    values = []
    for k in range(n_slices):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp0 + step * k * normal]
        arr = np.roll(base, 7 * k, axis=1).astype(base.dtype)
        ds.PixelData = arr.tobytes()
        values.append(arr.astype(np.float64) * slope + inter)
        if k != skip:  # written in reverse order, so file order is not slice order
            ds.save_as(folder / f"IM{n_slices - k:04d}.dcm")
    ps = [float(v) for v in src.PixelSpacing]  # row spacing, column spacing
    affine = np.eye(4)
    affine[:3, 0] = row_cos * ps[1]  # along a row: column index i
    affine[:3, 1] = col_cos * ps[0]  # down a column: row index j
    affine[:3, 2] = normal * step
    affine[:3, 3] = [float(f"{v:.4f}") for v in ipp0]
    # pixel_array is (row, col); expected values in (col, row, slice) order
    expected = np.stack([v.T for v in values], axis=2)
    return affine, expected


NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ours(img: MLArray) -> tuple[np.ndarray, np.ndarray]:
    """(data with the spatial axes only, RAS affine) of an MLArray with 3 spatial axes."""
    aff, spatial = ras_affine_of(img)
    data = img.to_numpy()
    assert len(spatial) == data.ndim == 3
    return data, aff


def sitk_world(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(data in ITK index order i, j, k; RAS affine over it) of a 3-D SimpleITK image."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = d * np.array(img.GetSpacing())[np.newaxis, :]
    aff[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), LPS_TO_RAS @ aff


def oblique_sitk(tmp_path: Path, suffix: str, dtype=np.int16) -> Path:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1000, (6, 7, 8)).astype(dtype)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.7, 0.8, 2.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    th = 0.3
    r = np.array([[np.cos(th), 0, -np.sin(th)], [0, 1, 0], [np.sin(th), 0, np.cos(th)]])
    img.SetDirection(r.ravel().tolist())
    path = tmp_path / f"oblique{suffix}"
    sitk.WriteImage(img, str(path))
    return path
