"""mlarray.convert, the writing side: outputs as the other tools write and read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mlarray import MLArray
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
    assert_same_world(*ours(src), *ours(from_file(tmp_path / name)), atol=1e-6)
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


def test_dicom_written_from_nrrd_places_voxels_by_its_own_tags(tmp_path):
    """A DICOM series written from a non-DICOM image (a Secondary Capture) holds the
    in-plane voxel size in PixelSpacing: the world of every voxel computed from the
    tags alone (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), as
    pydicom-based readers do, is the source's, and nibabel's DICOM reader sees it."""
    import pydicom
    from nibabel.nicom import dicomwrappers

    src = from_file(oblique_sitk(tmp_path, ".nrrd"))  # spacing 0.7 (x), 0.8 (y), 2 (z)
    to_file(src, tmp_path / "series", format="dicom")
    headers = sorted(
        (pydicom.dcmread(f) for f in (tmp_path / "series").iterdir()),
        key=lambda h: int(h.InstanceNumber),
    )
    first = headers[0]
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([0.8, 0.7])
    iop = np.array(first.ImageOrientationPatient, dtype=np.float64)
    ipp = np.array([h.ImagePositionPatient for h in headers], dtype=np.float64)
    affine = np.eye(4)  # (column i, row j, slice k) -> LPS, from the tags only
    affine[:3, 0] = iop[:3] * float(first.PixelSpacing[1])
    affine[:3, 1] = iop[3:] * float(first.PixelSpacing[0])
    affine[:3, 2] = ipp[1] - ipp[0]
    affine[:3, 3] = ipp[0]
    values = np.stack([h.pixel_array.T for h in headers], axis=2)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert_same_world(*ours(src), values, lps_to_ras @ affine, atol=1e-4)
    wrapper = dicomwrappers.wrapper_from_data(first)  # (row j, column i) -> LPS
    np.testing.assert_allclose(wrapper.voxel_sizes[:2], [0.8, 0.7])
    np.testing.assert_allclose(wrapper.affine[:3, [0, 1, 3]], affine[:3, [1, 0, 3]], atol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sheared_nrrd_goes_back_to_nrrd_and_metaimage(tmp_path, suffix):
    """A NRRD with non-orthogonal space directions (a tilted CT kept unresampled, as Slicer
    writes it) converts to .mla and back to NRRD and MetaImage with SimpleITK's own
    geometry and every voxel; writing it back was refused ("cannot store shear")."""
    (tmp_path / "tilt.nrrd").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        "sizes: 4 3 2\nspace directions: (0.5,0,0) (0,1.5,0) (0,0.3,2)\n"
        "kinds: domain domain domain\nendian: little\nencoding: ascii\n"
        "space origin: (10,20,30)\n\n" + " ".join(str(v) for v in range(24)) + "\n"
    )
    source = sitk.ReadImage(str(tmp_path / "tilt.nrrd"))
    convert_file(tmp_path / "tilt.nrrd", tmp_path / "tilt.mla")
    convert_file(tmp_path / "tilt.mla", tmp_path / f"back{suffix}")
    back = sitk.ReadImage(str(tmp_path / f"back{suffix}"))
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, get)(), getattr(source, get)(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(source))
    assert_same_world(*sitk_world(source), *ours(MLArray.open(tmp_path / "tilt.mla")), atol=1e-9)


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
    assert img.dtype == np.float64  # as SimpleITK reads a series with a fractional slope
    got = img.to_numpy()
    for k, values in want.items():
        np.testing.assert_array_equal(got[k], values)
    assert np.any(got[1] != np.round(got[1]))


def test_gantry_tilted_dicom_series_is_refused(tmp_path):
    """Each slice shifted 1.5 mm in-plane per 3 mm step (a 26.6 degree tilt): SimpleITK
    would place every slice on the normal through the first, up to 16.5 mm off."""
    import pydicom

    for name, n, mm in (("ct", 4, 0.01), ("tilted", 12, 1.5)):  # per slice, in-plane
        make_dicom_series(tmp_path / name, n_slices=n, step=3.0)
        for f in (tmp_path / name).iterdir():
            ds = pydicom.dcmread(f)
            col_cos = np.array(ds.ImageOrientationPatient[3:], dtype=np.float64)
            shift = mm * (int(ds.InstanceNumber) - 1) * col_cos
            ds.ImagePositionPatient = [f"{v:.4f}" for v in np.add(ds.ImagePositionPatient, shift)]
            ds.save_as(f)
    with pytest.raises(ConversionError, match="gantry tilt") as err:
        from_file(tmp_path / "tilted")
    assert "tilted" in str(err.value) and "slice 12 is 16.5 mm" in str(err.value)
    proc = run_cli("convert", tmp_path / "tilted", tmp_path / "tilted.mla", "--no-seg")
    assert proc.returncode != 0 and "gantry tilt" in proc.stderr
    assert not (tmp_path / "tilted.mla").exists()
    # 0.03 mm in all (rounded header values, not a tilt): well under a tenth of a pixel
    assert from_file(tmp_path / "ct").shape[0] == 4


def test_reference_4d_file_goes_back_to_a_4d_nifti_and_nrrd(tmp_path):
    """The reference converter stores a 4-D NIfTI's time as a fourth "spatial" axis, 2000
    (ms) apart: written back, time is the fourth NIfTI dimension again with pixdim[4] 2000
    ms, every frame's voxels at their world points, and 2 s apart in SimpleITK's NRRD."""
    from tests.data.make_converted import ras_affine, time_series

    src = Path(__file__).parent / "data" / "converted" / "series_4d.mla"
    to_file(src, tmp_path / "back.nii.gz")
    back = nib.load(tmp_path / "back.nii.gz")
    assert back.shape == (10, 12, 14, 3)  # the layout the reference writes
    np.testing.assert_allclose(back.affine, ras_affine())
    assert back.header.get_zooms()[3] == 2000 and back.header.get_xyzt_units()[1] == "msec"
    assert int(back.header["qform_code"]) > 0 and int(back.header["sform_code"]) > 0
    data = np.asarray(back.dataobj)
    for t in range(3):
        assert_same_world(time_series()[..., t], ras_affine(), data[..., t], back.affine, 1e-5)
    assert sitk.ReadImage(str(tmp_path / "back.nii.gz")).GetSpacing()[3] == pytest.approx(2.0)
    run_cli("convert", src, tmp_path / "back.nrrd", check_rc=0)
    nrrd = sitk.ReadImage(str(tmp_path / "back.nrrd"))
    assert nrrd.GetSize()[3] == 3 and nrrd.GetSpacing()[3] == pytest.approx(2.0)
    for t in range(3):
        assert_same_world(
            time_series()[..., t], ras_affine(), *sitk_world(nrrd[:, :, :, t]), atol=1e-5
        )


def test_time_step_survives_a_change_of_format(tmp_path):
    """fMRI NIfTI (TR 2.5 s) -> .mla -> NRRD, and a 4-D NRRD (1.5 s) -> .mla -> NIfTI keep
    the time step and origin SimpleITK reads from the source."""
    bold = nib.Nifti1Image(
        np.random.default_rng(0).random((6, 7, 8, 5), np.float32), np.diag([2.0, 2, 3, 1])
    )
    bold.header.set_zooms((2, 2, 3, 2500))
    bold.header.set_xyzt_units("mm", "msec")
    bold.header["toffset"] = 500
    nib.save(bold, tmp_path / "bold.nii.gz")
    frames = [sitk.GetImageFromArray(np.full((4, 5, 6), t, np.float32)) for t in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames, 7.0, 1.5), str(tmp_path / "dyn.nrrd"))
    for stem, out in (("bold", "bold.nrrd"), ("bold", "bold.mha"), ("dyn", "dyn.nii.gz")):
        src = next(tmp_path.glob(f"{stem}.n*"))
        convert_file(src, tmp_path / f"{stem}.mla", overwrite=True)
        convert_file(tmp_path / f"{stem}.mla", tmp_path / out)
        theirs, ours_ = sitk.ReadImage(str(src)), sitk.ReadImage(str(tmp_path / out))
        assert ours_.GetDimension() == 4
        np.testing.assert_allclose(ours_.GetSpacing(), theirs.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(ours_.GetOrigin(), theirs.GetOrigin(), atol=1e-6)
    dyn = nib.load(tmp_path / "dyn.nii.gz").header
    assert dyn.get_zooms()[3] == pytest.approx(1.5) and dyn.get_xyzt_units()[1] == "sec"
    assert float(dyn["toffset"]) == pytest.approx(7.0)


def test_channels_go_back_to_the_nifti_layout_they_came_from(tmp_path):
    """A 4-modality NIfTI (x, y, z, 4) read with fourth_axis='channel' comes back 4-D; a
    vector NRRD (displacement field) goes to NIfTI as SimpleITK writes it (5-D, intent
    vector), which SimpleITK reads back as a vector image."""
    a = np.random.default_rng(1).random((12, 10, 8, 4), np.float32)
    nib.save(nib.Nifti1Image(a, np.diag([1.0, 1.2, 2.0, 1.0])), tmp_path / "brats.nii.gz")
    img = from_file(tmp_path / "brats.nii.gz", fourth_axis="channel")
    to_file(img, tmp_path / "back.nii.gz")
    back = nib.load(tmp_path / "back.nii.gz")
    assert back.shape == a.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), a)
    np.testing.assert_allclose(back.affine, nib.load(tmp_path / "brats.nii.gz").affine)
    field = np.random.default_rng(2).random((6, 7, 8, 3), np.float32)
    vec = sitk.GetImageFromArray(field, isVector=True)
    vec.SetSpacing((0.5, 0.6, 0.7))
    sitk.WriteImage(vec, str(tmp_path / "field.nrrd"))
    to_file(from_file(tmp_path / "field.nrrd"), tmp_path / "field.nii.gz")
    sitk.WriteImage(vec, str(tmp_path / "theirs.nii.gz"))
    ours_, theirs = (nib.load(tmp_path / n) for n in ("field.nii.gz", "theirs.nii.gz"))
    assert ours_.shape == theirs.shape == (8, 7, 6, 1, 3)
    assert int(ours_.header["intent_code"]) == int(theirs.header["intent_code"]) == 1007
    again = sitk.ReadImage(str(tmp_path / "field.nii.gz"))
    assert again.GetSize() == (8, 7, 6) and again.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), field)
    np.testing.assert_allclose(again.GetSpacing(), (0.5, 0.6, 0.7), rtol=1e-6)


def test_dicom_series_folder_gets_the_umask_permissions(tmp_path):
    src = from_file(oblique_sitk(tmp_path, ".nrrd"))
    old = os.umask(0o022)
    try:
        to_file(src, tmp_path / "series", format="dicom")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "series").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "series").iterdir()} == {0o644}


def test_singleton_dimensions_go_out_as_the_source_had_them(tmp_path):
    """A NIfTI (x, y, z, 1), which SimpleITK reads as 3-D, becomes a 3-D NRRD/MHA (and a
    4-D NIfTI again); a 2-D NIfTI comes back 2-D."""
    vol = np.random.default_rng(4).random((5, 6, 7, 1), np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.6, 0.7, 1.0])), tmp_path / "vol1.nii.gz")
    src = from_file(tmp_path / "vol1.nii.gz")
    for name in ("vol1.nrrd", "vol1.mha"):
        to_file(src, tmp_path / name)
        ours_, theirs = (sitk.ReadImage(str(tmp_path / n)) for n in (name, "vol1.nii.gz"))
        assert ours_.GetSize() == theirs.GetSize() == (5, 6, 7)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours_), sitk.GetArrayFromImage(theirs))
        assert_same_world(*sitk_world(theirs), *sitk_world(ours_), atol=1e-5)
    to_file(src, tmp_path / "vol1_back.nii.gz")
    assert nib.load(tmp_path / "vol1_back.nii.gz").shape == (5, 6, 7, 1)
    flat = np.random.default_rng(5).random((5, 6), np.float32)
    nib.save(nib.Nifti1Image(flat, np.diag([0.5, 0.6, 1.0, 1.0])), tmp_path / "slice.nii.gz")
    to_file(from_file(tmp_path / "slice.nii.gz"), tmp_path / "slice_back.nii.gz")
    back = nib.load(tmp_path / "slice_back.nii.gz")
    assert back.shape == (5, 6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), flat)
    np.testing.assert_allclose(back.affine, nib.load(tmp_path / "slice.nii.gz").affine)
    to_file(from_file(tmp_path / "slice.nii.gz"), tmp_path / "slice.nrrd")
    ours_, theirs = (sitk.ReadImage(str(tmp_path / n)) for n in ("slice.nrrd", "slice.nii.gz"))
    assert ours_.GetSize() == theirs.GetSize() == (5, 6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours_), sitk.GetArrayFromImage(theirs))
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(ours_, get)(), getattr(theirs, get)(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_bool_masks_and_float16_images_convert_to_every_format(tmp_path, suffix):
    # a bool mask (MLArray(mask.astype(bool))) and a float16 image died with nibabel's /
    # SimpleITK's traceback: stored as uint8 / float32, values kept
    from mlarray import MLArray

    rng = np.random.default_rng(0)
    mask = rng.random((4, 5, 6)) > 0.5
    image = rng.normal(size=(4, 5, 6)).astype(np.float16)
    for name, data, dtype in (("mask", mask, np.uint8), ("image", image, np.float32)):
        src = tmp_path / f"{name}.mla"
        MLArray(data, spacing=[2.0, 1.0, 1.0]).save(src)
        out = tmp_path / f"{name}{suffix}"
        convert_file(src, out)
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, data.astype(dtype))


def test_oblique_dicom_series_with_positions_written_to_one_decimal_converts(tmp_path):
    """An oblique series (20 degrees about two axes) whose ImagePositionPatient is written
    to one decimal, as some scanners and anonymisers do: rounding alone moves each slice up
    to ~0.09 mm off the slice normal and its gaps up to ~0.17 mm, which was refused as
    "gantry tilt" (more than a tenth of the 0.66 mm pixel); a real tilt still is."""
    import pydicom

    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array(
        [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    )
    for name, mm in (("rounded", 0.0), ("tilted", 0.5)):
        make_dicom_series(tmp_path / name, n_slices=12, step=1.0)
        for f in (tmp_path / name).iterdir():
            ds = pydicom.dcmread(f)
            k = int(ds.InstanceNumber) - 1
            row, col = rot @ [1.0, 0, 0], rot @ [0, 1.0, 0]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
            pos = np.array([-80.0, -90.0, 30.0]) + k * rot @ [0, 0, 1.0] + mm * k * col
            ds.ImagePositionPatient = [f"{v:.1f}" for v in pos]
            ds.save_as(f)
    img = from_file(tmp_path / "rounded")
    assert img.shape[0] == 12
    np.testing.assert_allclose(img.spacing[0], 1.0, atol=0.1)
    with pytest.raises(ConversionError, match="gantry tilt"):
        from_file(tmp_path / "tilted")


@pytest.mark.parametrize("dtype", [">i2", ">u2", ">i4", ">f4", ">f8"])
def test_big_endian_arrays_export_to_every_format(tmp_path, dtype):
    """An MLArray saved from a big-endian array (``>i2``, as the reference converts a
    big-endian NIfTI) exported to NRRD, MetaImage and DICOM failed with SimpleITK's "dtype:
    >i2 is not supported", the file not named: written in native byte order, same values."""
    data = (np.arange(4 * 5 * 6) * 7 + 3).reshape(4, 5, 6).astype(dtype)
    src = tmp_path / "be.mla"
    MLArray(data, spacing=[2.0, 1.5, 0.5], origin=[1.0, 2.0, 3.0]).save(src)
    assert MLArray.open(src).dtype == np.dtype(dtype)
    outs = ["o.nii.gz", "o.nii", "o.nrrd", "o.nhdr", "o.mha", "o.mhd"]
    if np.dtype(dtype).kind in "iu":
        outs.append("dcm")
    expected = None
    for name in outs:
        out = tmp_path / name
        convert_file(src, out, to="dicom" if name == "dcm" else None)
        if out.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
            back = reader.Execute()
        else:
            back = sitk.ReadImage(str(out))
        if name == "dcm":  # GDCM may sort the slices either way: compare world points
            assert expected is not None
            assert_same_world(*expected, *sitk_world(back))
            continue
        values = sitk.GetArrayFromImage(back)
        np.testing.assert_array_equal(values, data, err_msg=name)
        assert values.dtype == np.dtype(dtype).newbyteorder("="), name
        np.testing.assert_allclose(back.GetSpacing(), [0.5, 1.5, 2.0], err_msg=name)
        expected = sitk_world(back)


def test_a_simpleitk_type_error_is_a_conversion_error_naming_the_output(tmp_path):
    """An array SimpleITK refuses with a TypeError (not a RuntimeError) is our
    ConversionError naming the output, not a bare TypeError without a file."""
    from mlarray.convert import _write_sitk

    meta = MLArray(np.zeros((2, 2, 2), np.uint8)).meta
    out = tmp_path / "x.nrrd"
    with pytest.raises(ConversionError, match=r"x\.nrrd: cannot write NRRD"):
        _write_sitk(
            np.zeros((2, 2, 2), dtype=np.longdouble), np.eye(4), None, False, meta, "nrrd", out
        )


_PEAK_RSS = """
import sys
import nibabel, SimpleITK, numpy as np
from mlarray import MLArray, convert

def peak():  # this process's peak RSS in bytes (ru_maxrss would count the parent's: exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

convert._SLAB_BYTES = 4 * 2**20  # slabs well below the volume, so streaming shows
img = MLArray.open(sys.argv[1])
img.meta  # metadata read: the baseline holds everything but voxels
before = peak()
convert.to_file(img, sys.argv[2], format=sys.argv[3] or None)
print(peak() - before)
"""


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", "_dicom"])
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS from /proc")
def test_export_holds_a_few_slabs_never_the_volume(tmp_path, suffix):
    """Exporting a 48 MiB volume (24 MiB of integers for DICOM) writes it a slab at a
    time: NIfTI after nibabel's header, NRRD/MetaImage after the header SimpleITK writes,
    DICOM a slice at a time from slabs (it was read whole, transposed, copied, copied by
    SimpleITK and compressed in one buffer: 2-4.8x the volume). Peak RSS (VmHWM) of a
    fresh process."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(96, 256, 512)).astype(np.float32)  # 48 MiB, barely compressible
    if suffix == "_dicom":
        vol = (vol * 1000).astype(np.int16)
    volume = vol.nbytes
    src = tmp_path / "vol.mla"
    MLArray(vol, spacing=[1.5, 0.7, 0.7]).save(src)
    del vol
    out = tmp_path / f"out{suffix}"
    fmt = "dicom" if suffix == "_dicom" else ""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(src), str(out), fmt],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    grown = int(proc.stdout.split()[-1])
    # a few slabs, never the volume (it was 2x for NIfTI, 3x NRRD and DICOM, 4.8x MetaImage)
    assert grown < volume, f"peak RSS grew {grown / 2**20:.0f} MiB for {volume / 2**20} MiB"
    if fmt:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
        back = reader.Execute()
    else:
        back = sitk.ReadImage(str(out))
    assert back.GetSize() == (512, 256, 96)
    np.testing.assert_allclose(back.GetSpacing(), [0.7, 0.7, 1.5])


@pytest.mark.parametrize("step", [0.625, 1.0])
@pytest.mark.parametrize("fault", ["missing", "repeated"])
def test_series_with_whole_mm_positions_and_a_missing_or_repeated_slice_is_refused(
    tmp_path, step, fault
):
    """x and y written as whole millimetres (``-250\\-250\\-100.625``, as many scanners and
    our own DICOM export of a 1 mm grid write them) must not widen the rounding tolerance:
    a slice missing or repeated (a whole step) converted silently with a wrong z spacing."""
    import pydicom

    make_dicom_series(tmp_path / "ct", n_slices=12, step=step)
    for f in sorted((tmp_path / "ct").iterdir()):
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        if fault == "missing" and k == 6:
            f.unlink()
            continue
        z = -100 - (6 if fault == "repeated" and k == 7 else k) * step
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-250", "-250", f"{z:g}"]
        ds.save_as(f)
    with pytest.raises(ConversionError, match="not evenly spaced"):
        from_file(tmp_path / "ct")
