"""mlarray.convert, the writing side: outputs as the other tools write and read them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mlarray.convert import ConversionError, convert_file, from_file, to_file
from tests._worldcheck import (
    assert_same_world,
    make_dicom_series,
    oblique_sitk,
    ours,
    run_cli,
    sitk_world,
)


@pytest.mark.parametrize("name", ["X.MHA", "X.Mha", "X.MHD", "X.NRRD", "X.NHDR", "X.NII.GZ"])
def test_upper_case_suffix_written_as_that_file_and_nothing_else_replaced(tmp_path, name):
    src = from_file(oblique_sitk(tmp_path, ".nrrd"))
    own = tmp_path / "X.mhd"
    own.write_text("ObjectType = Image\n# the user's own header\n")
    to_file(src, tmp_path / name, overwrite=False)
    assert own.read_text().endswith("# the user's own header\n")
    assert (tmp_path / name).is_file()
    io = {"X.NII.GZ": "NiftiImageIO", "X.NRRD": "NrrdImageIO", "X.NHDR": "NrrdImageIO"}
    back = sitk.ReadImage(str(tmp_path / name), imageIO=io.get(name, "MetaImageIO"))
    assert_same_world(*ours(src), *sitk_world(back), atol=1e-4)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_data_file_beside_a_header_is_not_replaced_without_overwrite(tmp_path):
    src = from_file(oblique_sitk(tmp_path, ".nrrd"))
    src.save(tmp_path / "img.mla")
    (tmp_path / "X.zraw").write_bytes(b"the user's own data")
    proc = run_cli("convert", tmp_path / "img.mla", tmp_path / "X.mhd")
    assert proc.returncode != 0
    assert "X.zraw" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
    assert (tmp_path / "X.zraw").read_bytes() == b"the user's own data"
    assert not (tmp_path / "X.mhd").exists()
    with pytest.raises(ConversionError, match=r"X\.zraw"):
        convert_file(tmp_path / "img.mla", tmp_path / "X.mhd")
    convert_file(tmp_path / "img.mla", tmp_path / "X.mhd", overwrite=True)
    assert_same_world(*ours(src), *sitk_world(sitk.ReadImage(str(tmp_path / "X.mhd"))), atol=1e-4)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_slightly_sheared_nifti_keeps_a_qform_itk_reads(tmp_path):
    """A registration output (sform with 0.1 % shear, orthogonal qform) comes back as a NIfTI
    SimpleITK reads as it reads the source; nibabel's affine is the source's sform."""
    q = np.diag([0.9, 0.9, 1.2, 1.0])
    q[:3, 3] = [-50, -60, -30]
    s = q.copy()
    s[0, 1] = 1e-3
    a = np.random.default_rng(0).integers(0, 1000, (8, 9, 10)).astype(np.int16)
    img = nib.Nifti1Image(a, s)
    img.set_qform(q, code=1)
    img.set_sform(s, code=2)
    nib.save(img, tmp_path / "registered.nii.gz")
    convert_file(tmp_path / "registered.nii.gz", tmp_path / "registered.mla")
    convert_file(tmp_path / "registered.mla", tmp_path / "back.nii.gz")
    back = nib.load(tmp_path / "back.nii.gz")
    assert (int(back.header["sform_code"]), int(back.header["qform_code"])) == (2, 1)
    np.testing.assert_allclose(back.affine, nib.load(tmp_path / "registered.nii.gz").affine)
    theirs, ours_ = (
        sitk.ReadImage(str(tmp_path / n)) for n in ("registered.nii.gz", "back.nii.gz")
    )
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(ours_, get)(), getattr(theirs, get)(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours_), sitk.GetArrayFromImage(theirs))


def test_dicom_series_with_a_rescale_slope_per_slice_keeps_every_slice_value(tmp_path):
    """PET-like: slope 1 on the first slice, 0.37 on the others; SimpleITK would pick int16
    from the first slice and truncate the rest."""
    import pydicom

    make_dicom_series(tmp_path / "pet", n_slices=4)
    want = {}
    for f in (tmp_path / "pet").iterdir():
        ds = pydicom.dcmread(f)
        if int(ds.InstanceNumber) != 1:
            ds.RescaleSlope = "0.37"
            ds.save_as(f)
        rescaled = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        want[int(ds.InstanceNumber) - 1] = rescaled
    img = from_file(tmp_path / "pet")
    assert img.dtype == np.float32
    got = img.to_numpy()
    for k, values in want.items():
        np.testing.assert_allclose(got[k], values, rtol=1e-6)
    assert np.any(got[1] != np.round(got[1]))


def test_gantry_tilted_dicom_series_is_refused(tmp_path):
    """Each slice shifted 1.5 mm in-plane per 3 mm step (a 26.6 degree tilt): SimpleITK
    would place every slice on the normal through the first, up to 16.5 mm off."""
    import pydicom

    make_dicom_series(tmp_path / "ct", n_slices=4, step=3.0)
    make_dicom_series(tmp_path / "tilted", n_slices=12, step=3.0)
    for f in (tmp_path / "tilted").iterdir():
        ds = pydicom.dcmread(f)
        col_cos = np.array(ds.ImageOrientationPatient[3:], dtype=np.float64)
        shift = 1.5 * (int(ds.InstanceNumber) - 1) * col_cos
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.add(ds.ImagePositionPatient, shift)]
        ds.save_as(f)
    with pytest.raises(ConversionError, match="gantry tilt") as err:
        from_file(tmp_path / "tilted")
    assert "tilted" in str(err.value) and "slice 12 is 16.5 mm" in str(err.value)
    proc = run_cli("convert", tmp_path / "tilted", tmp_path / "tilted.mla", "--no-seg")
    assert proc.returncode != 0 and "gantry tilt" in proc.stderr
    assert not (tmp_path / "tilted.mla").exists()
    assert from_file(tmp_path / "ct").shape[0] == 4  # an untilted series (positions rounded)
