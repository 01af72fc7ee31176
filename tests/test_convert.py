"""mlarray.convert: NIfTI/NRRD/MetaImage/DICOM to .mla and back, geometry voxel by voxel."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mlarray import MLArray
from mlarray.cli import (
    _header_to_source_meta,
    convert_from_mlarray,
    convert_image,
    convert_to_mlarray,
)
from mlarray.convert import ConversionError, convert_file, from_file, guess_seg, to_file
from mlarray.meta import Meta, MetaIsSeg, MetaSpatial
from tests._worldcheck import (
    LPS_TO_RAS,
    NIB_DATA,
    assert_same_world,
    make_dicom_series,
    oblique_sitk,
    ours,
    ras_affine_of,
    run_cli,
    sitk_world,
)

# ----------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize(
    ("order", "frame"), [("zyx", None), ("xyz", None), ("zyx", "LPS")], ids=str
)
def test_nibabel_anatomical_every_voxel_in_place(order, frame):
    """A real (big-endian, L-A-S) brain from nibabel's test data keeps every voxel's world point."""
    src = nib.load(NIB_DATA / "anatomical.nii")
    img = from_file(NIB_DATA / "anatomical.nii", axis_order=order, coord_system=frame)
    assert img.meta.spatial.coord_system == (frame or "RAS")
    labels = ["spatial_z", "spatial_y", "spatial_x"]
    assert img.meta.spatial.axis_labels == (labels if order == "zyx" else labels[::-1])
    assert img.dtype.isnative and img.dtype == np.int16
    data, aff = ours(img)
    assert_same_world(np.asarray(src.dataobj), src.affine, data, aff, atol=1e-6)
    assert img.meta._image_meta_format.image_meta_format == "nifti"
    assert img.meta.source.data["dim"][:4] == [3, 33, 41, 25]


def test_sheared_nifti_keeps_its_affine_in_nrrd_and_metaimage(tmp_path):
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[1.5, 0.3, 0, -10], [0, 2.0, 0.2, 5], [0.1, 0, 3.0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(a, affine), tmp_path / "shear.nii.gz")
    img = from_file(tmp_path / "shear.nii.gz")
    stored = nib.load(tmp_path / "shear.nii.gz").affine  # float32 in the header
    data, aff = ours(img)
    np.testing.assert_allclose(aff[:3, :3], stored[:3, :3][:, ::-1], rtol=0, atol=0)
    assert_same_world(a, stored, data, aff, atol=1e-6)
    img.save(tmp_path / "shear.mla")
    to_file(tmp_path / "shear.mla", tmp_path / "back.nii")
    back = nib.load(tmp_path / "back.nii")
    np.testing.assert_allclose(back.affine, stored, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.dataobj), a)
    for suffix in (".nrrd", ".mha"):  # both store any direction, as SimpleITK reads it
        to_file(tmp_path / "shear.mla", tmp_path / f"back{suffix}")
        theirs = sitk.ReadImage(str(tmp_path / f"back{suffix}"))
        assert_same_world(a, stored, *sitk_world(theirs), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_4d_nifti_time_axis_labelled_and_round_tripped(tmp_path):
    src = nib.load(NIB_DATA / "example4d.nii.gz")
    img = from_file(NIB_DATA / "example4d.nii.gz")
    assert img.meta.spatial.axis_labels == ["temporal", "spatial_z", "spatial_y", "spatial_x"]
    assert img.shape == (src.shape[3], src.shape[2], src.shape[1], src.shape[0])
    raw = np.asarray(src.dataobj)
    np.testing.assert_array_equal(img[...], raw.transpose(3, 2, 1, 0))
    img.save(tmp_path / "f.mla")
    to_file(tmp_path / "f.mla", tmp_path / "f.nii.gz")
    back = nib.load(tmp_path / "f.nii.gz")
    np.testing.assert_array_equal(np.asarray(back.dataobj), raw)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)
    assert back.header["pixdim"][4] == pytest.approx(src.header["pixdim"][4])
    as_channels = from_file(NIB_DATA / "example4d.nii.gz", fourth_axis="channel")
    assert as_channels.meta.spatial.axis_labels[0] == "channel"


def test_source_header_kept_and_restored(tmp_path):
    a = np.zeros((3, 4, 5), np.int16)
    im = nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0]))
    im.header["descrip"] = b"scanner X protocol Y"
    im.header.set_xyzt_units("mm", "sec")
    nib.save(im, tmp_path / "h.nii.gz")
    img = from_file(tmp_path / "h.nii.gz")
    assert img.meta.source.data["descrip"] == "scanner X protocol Y"
    img.save(tmp_path / "h.mla")
    convert_file(tmp_path / "h.mla", tmp_path / "h2.nii.gz")
    back = nib.load(tmp_path / "h2.nii.gz").header
    assert back["descrip"].item() == b"scanner X protocol Y"
    assert back.get_xyzt_units() == ("mm", "sec")


# ----------------------------------------------------------------------------- NRRD / MetaImage


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_every_voxel_in_place_and_back(tmp_path, suffix):
    path = oblique_sitk(tmp_path, suffix)
    src = sitk.ReadImage(str(path))
    img = from_file(path)
    sp = img.meta.spatial
    assert sp.coord_system == "LPS"
    assert sp.affine is None
    assert sp.spacing == list(src.GetSpacing())[::-1]  # z, y, x: exactly SimpleITK's
    assert sp.origin == list(src.GetOrigin())
    assert np.allclose(sp.spacing, [2.0, 0.8, 0.7])
    src_data, src_aff = sitk_world(src)
    data, aff = ours(img)
    assert_same_world(src_data, src_aff, data, aff, atol=1e-9)
    img.save(tmp_path / "o.mla")
    for out in ("back.nrrd", "back.mha", "back.nii.gz"):
        to_file(tmp_path / "o.mla", tmp_path / out)
        b = sitk.ReadImage(str(tmp_path / out))
        b_data, b_aff = sitk_world(b)
        assert_same_world(src_data, src_aff, b_data, b_aff, atol=1e-4)


def test_ras_frame_requested_for_nrrd_flips_only_signs(tmp_path):
    path = oblique_sitk(tmp_path, ".nrrd")
    lps = from_file(path)
    ras = from_file(path, coord_system="RAS")
    assert ras.meta.spatial.coord_system == "RAS"
    np.testing.assert_allclose(
        np.asarray(ras.affine), np.diag([-1, -1, 1, 1]) @ np.asarray(lps.affine)
    )
    d1, a1 = ours(lps)
    d2, a2 = ours(ras)
    assert_same_world(d1, a1, d2, a2, atol=1e-9)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("fields", ["RGB", "RGBA"])
def test_rgb_nifti_becomes_a_last_colour_axis_and_goes_back_as_rgb(tmp_path, fields, suffix):
    """An RGB24/RGBA32 NIfTI (ITK-SNAP's and FSL's colour overlays) converts as SimpleITK
    reads it, a vector image: one channel axis of the colour components, after the spatial
    axes (as ITK, PIL and napari hold a colour picture: napari shows one RGB layer), each
    at its world point; it was refused with an error naming neither the file nor a way
    out, then stored channel-first (three channel layers in napari). Written back to NIfTI
    it is RGB24/RGBA32 again, not a 5-D vector image."""
    rng = np.random.default_rng(5)
    rgb = np.zeros((6, 5, 4), dtype=[(c, "u1") for c in fields])
    for c in fields:
        rgb[c] = rng.integers(0, 256, rgb.shape)
    affine = np.array([[0, -0.8, 0, 20], [0.7, 0, 0, -3], [0, 0, 2.5, 9], [0, 0, 0, 1]])
    path = tmp_path / f"overlay{suffix}"
    nib.save(nib.Nifti1Image(rgb, affine), path)
    assert int(nib.load(path).header["datatype"]) == (128 if fields == "RGB" else 2304)
    img = from_file(path, is_seg=False)
    assert img.meta.spatial.axis_labels == ["spatial_z", "spatial_y", "spatial_x", "channel"]
    assert img.dtype == np.uint8 and img.shape == (4, 5, 6, len(fields))
    theirs = sitk.ReadImage(str(path))
    assert theirs.GetNumberOfComponentsPerPixel() == len(fields)
    np.testing.assert_array_equal(img.to_numpy(), sitk.GetArrayFromImage(theirs))
    ras, spatial = ras_affine_of(img)
    assert spatial == [0, 1, 2]
    for k, c in enumerate(fields):
        assert_same_world(rgb[c], affine, img.to_numpy()[..., k], ras, atol=1e-5)
    xyz = from_file(path, is_seg=False, axis_order="xyz")  # NIfTI's order: colours still last
    assert xyz.meta.spatial.axis_labels == ["spatial_x", "spatial_y", "spatial_z", "channel"]
    assert xyz.shape == (6, 5, 4, len(fields))
    img.save(tmp_path / "overlay.mla")
    out = convert_file(tmp_path / "overlay.mla", tmp_path / "back.nii.gz").output
    back = nib.load(out)
    assert int(back.header["datatype"]) == (128 if fields == "RGB" else 2304)
    assert back.shape == rgb.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), rgb)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 4, 2)], ids=["2-D", "4-D"])
def test_rgb_nifti_of_2_or_4_dimensions_goes_back_with_its_dimensions(tmp_path, shape):
    """A 2-D RGB NIfTI (a picture) and a 4-D one (colour over time) keep their colours last
    in .mla and go back as RGB24 NIfTI of their own dimensions (not 3-D, not 5-D vectors)."""
    rng = np.random.default_rng(9)
    rgb = np.zeros(shape, dtype=[(c, "u1") for c in "RGB"])
    for c in "RGB":
        rgb[c] = rng.integers(0, 256, shape)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(rgb, affine), tmp_path / "in.nii.gz")
    convert_file(tmp_path / "in.nii.gz", tmp_path / "in.mla")
    img = MLArray.open(tmp_path / "in.mla")
    assert img.meta.spatial.axis_labels[-1] == "channel" and img.shape[-1] == 3
    if len(shape) == 4:
        assert img.meta.spatial.axis_labels[0] == "temporal"
    convert_file(tmp_path / "in.mla", tmp_path / "out.nii.gz")
    back = nib.load(tmp_path / "out.nii.gz")
    assert int(back.header["datatype"]) == 128 and back.shape == shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), rgb)


# ----------------------------------------------------------------------------- DICOM


def test_dicom_series_from_pydicom_ct_small(tmp_path):
    affine_lps, expected = make_dicom_series(tmp_path / "ct", n_slices=4)
    img = from_file(tmp_path / "ct")
    assert img.meta._image_meta_format.image_meta_format == "dicom"
    assert img.meta.spatial.coord_system == "LPS"
    assert img.meta.source.data["0008|0060"].strip() == "CT"
    data, aff = ours(img)
    assert_same_world(expected, LPS_TO_RAS @ affine_lps, data, aff, atol=1e-3)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    make_dicom_series(tmp_path / "gap", n_slices=5, skip=2)
    with pytest.raises(ConversionError, match="not evenly spaced") as err:
        from_file(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(err.value)


def test_dicom_series_with_an_unreadable_slice_names_it(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    make_dicom_series(tmp_path / "ct", n_slices=5)
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "ct" / "plan.dcm")  # not a slice
    assert from_file(tmp_path / "ct").shape == (5, 128, 128)
    end = tmp_path / "ct" / "IM0001.dcm"  # the last slice: no gap shows it missing
    end.write_bytes(end.read_bytes()[:-40])
    with pytest.raises(ConversionError, match="cannot be read") as err:
        from_file(tmp_path / "ct")
    assert str(err.value).startswith(str(end))
    end.write_bytes(b"DICM but not really")  # not even a DICOM header: named too
    with pytest.raises(ConversionError, match="cannot be read") as err:
        from_file(tmp_path / "ct")
    assert str(err.value).startswith(str(end))


def test_dicom_folder_without_an_image_series_says_what_its_files_are(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    folder = tmp_path / "rt"
    folder.mkdir()
    shutil.copy(get_testdata_file("rtplan.dcm"), folder / "plan.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "structures.dcm")
    with pytest.raises(ConversionError, match="RT Plan Storage, RT Structure Set Storage, not"):
        from_file(folder)
    cut = folder / "ct.dcm"
    cut.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:5000])
    with pytest.raises(ConversionError, match="CT Image Storage file that cannot be read") as err:
        from_file(folder)
    assert str(err.value).startswith(str(cut))


def test_dicom_folder_with_two_series_asks_which(tmp_path):
    make_dicom_series(tmp_path / "two" / "a", n_slices=3)
    make_dicom_series(tmp_path / "two" / "b", n_slices=3)
    for p in (tmp_path / "two" / "b").iterdir():
        p.rename(tmp_path / "two" / "a" / f"b_{p.name}")
    with pytest.raises(ConversionError, match="2 DICOM series"):
        from_file(tmp_path / "two" / "a")


def _ct_small_with(path: Path, **tags):
    """pydicom's CT_small.dcm (128 x 128 int16) with ``tags`` changed, saved at ``path``."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path)
    return path


def test_dicom_file_whose_pixel_data_are_short_is_refused_not_filled_with_air(tmp_path):
    """GDCM fills the voxels a cut-short slice lacks with zeros (-1024 after the rescale)."""
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).PixelData
    half = _ct_small_with(tmp_path / "half.dcm", PixelData=pixels[: len(pixels) // 2])
    with pytest.raises(ConversionError, match=r"hold 16384 bytes .* need 32768") as err:
        from_file(half)
    assert str(err.value).startswith(str(half)) and "cut short" in str(err.value)
    # the element's length says 32768 bytes but the file ends before them
    whole = _ct_small_with(tmp_path / "whole.dcm")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-1000])
    with pytest.raises(ConversionError, match="claims 32768 bytes but the file ends after") as err:
        from_file(cut)
    assert str(err.value).startswith(str(cut))
    assert from_file(whole).shape == (1, 128, 128)  # the intact file still converts


_DICOM_CLAIM = r"""
import resource, sys
from pathlib import Path
import pydicom
from pydicom.data import get_testdata_file
from mlarray.convert import ConversionError, from_file

resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a claim honoured fails
folder = Path(sys.argv[1])
ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
ds.Rows = ds.Columns = 40000  # 3.2 GB claimed by a 39 kB file
ds.save_as(folder / "huge.dcm")
try:
    from_file(folder / "huge.dcm")
except ConversionError as exc:
    print(exc)
"""


def test_small_dicom_file_claiming_gigabytes_is_refused_before_allocating(tmp_path):
    """Read under a 3 GiB address-space limit: GDCM allocating the 3.2 GB claimed would fail."""
    from tests._children import run_python

    line = run_python(_DICOM_CLAIM, tmp_path).strip()
    assert line.startswith(str(tmp_path / "huge.dcm")), line
    assert "hold 32768 bytes" in line and "need 3200000000" in line, line


def test_dicom_series_with_a_slice_cut_short_names_the_slice(tmp_path):
    import pydicom

    make_dicom_series(tmp_path / "ct", n_slices=4)
    assert from_file(tmp_path / "ct").shape == (4, 128, 128)
    third = tmp_path / "ct" / "IM0002.dcm"
    ds = pydicom.dcmread(third)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 4]
    ds.save_as(third)
    with pytest.raises(ConversionError, match=r"hold 8192 bytes .* need 32768") as err:
        from_file(tmp_path / "ct")
    assert str(err.value).startswith(str(third))


def test_compressed_dicom_with_fewer_frames_than_it_claims_is_refused(tmp_path):
    """Encapsulated (RLE) pixel data: each frame needs a fragment of its own, and the
    fragments must be in the file."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(src)
    ds.NumberOfFrames = 5
    ds.save_as(tmp_path / "frames.dcm")
    with pytest.raises(ConversionError, match="claims 5 compressed frames but holds 2") as err:
        from_file(tmp_path / "frames.dcm")
    assert str(err.value).startswith(str(tmp_path / "frames.dcm"))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(Path(src).read_bytes()[:-500])
    with pytest.raises(ConversionError, match=r"ends inside .* compressed pixel data") as err:
        from_file(cut)
    assert str(err.value).startswith(str(cut))
    assert from_file(src).shape == (2, 100, 100, 3)  # the intact file still converts


def test_pydicoms_test_files_pass_the_pixel_data_check():
    """Every file of pydicom's test data whose pixels pydicom decodes passes the check
    (only MR_truncated.dcm, which pydicom refuses too, is refused)."""
    import os
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    from mlarray.convert import _dicom_pixel_bytes

    folder = Path(get_testdata_file("CT_small.dcm")).parent
    refused = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            _dicom_pixel_bytes(os.fspath(path))
        except ConversionError:
            refused.append(path.name)
            with warnings.catch_warnings(), pytest.raises(ValueError):
                warnings.simplefilter("ignore")
                _ = pydicom.dcmread(path).pixel_array
    assert refused == ["MR_truncated.dcm"]


_SERIES_PEAK = r"""
import sys
from pathlib import Path
import pydicom, SimpleITK  # imported before the baseline is taken
from mlarray import MLArray
from mlarray.convert import convert_file


def high_water():  # this process's peak RSS (ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as fh:
        return next(int(x.split()[1]) * 1024 for x in fh if x.startswith("VmHWM"))


folder = Path(sys.argv[1])
before = high_water()
convert_file(folder / "ct", folder / "ct.mla")
peak = high_water() - before
print(peak, *MLArray.open(folder / "ct.mla").shape)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc")
def test_dicom_series_import_holds_about_one_volume(tmp_path):
    """A 128 MiB series imported in a child process: its peak RSS grows by about one
    volume (SimpleITK's), not four (GDCM's folder scan kept in the heap, a copy of the
    image as an array, another one while copying)."""
    from mlarray.convert import to_file
    from tests._children import run_python

    shape = (64, 1024, 1024)  # 128 MiB of int16
    a = np.broadcast_to(np.arange(1024, dtype=np.int16), shape)
    a = a + np.arange(64, dtype=np.int16)[:, None, None]
    MLArray(a).save(tmp_path / "v.mla")
    to_file(tmp_path / "v.mla", tmp_path / "ct", format="dicom")
    grown, *stored = (int(v) for v in run_python(_SERIES_PEAK, tmp_path).split())
    assert tuple(stored) == shape
    assert grown < 1.6 * a.nbytes, f"the peak grew by {grown / a.nbytes:.2f} volumes"


def test_dicom_series_import_where_ctypes_cannot_load_the_c_library(tmp_path, monkeypatch):
    """Where ``ctypes.CDLL(None)`` is a TypeError (Windows) a series still imports (was:
    a bare TypeError from the memory release after GDCM's folder scan, every series)."""
    import ctypes

    real = ctypes.CDLL

    class WindowsCDLL(real):  # ctypes on Windows: no handle for the process itself
        def __init__(self, name, *args, **kwargs):
            if name is None:
                raise TypeError("LoadLibrary() argument 1 must be str, not None")
            super().__init__(name, *args, **kwargs)

    affine_lps, expected = make_dicom_series(tmp_path / "ct", n_slices=4)
    monkeypatch.setattr(ctypes, "CDLL", WindowsCDLL)
    assert_same_world(expected, LPS_TO_RAS @ affine_lps, *ours(from_file(tmp_path / "ct")))


def test_single_dicom_file():
    from pydicom.data import get_testdata_file

    img = from_file(get_testdata_file("CT_small.dcm"))
    assert img.shape[-2:] == (128, 128)
    assert img.meta.spatial.coord_system == "LPS"


def test_dicom_with_pydicom_2_is_refused_not_converted_unchecked(tmp_path, monkeypatch):
    """pydicom 2 gives a deferred pixel data element no length: the pixel-data checks
    passed every file unchecked (a file missing 124 kB of pixels converted with heap
    garbage in their place). A DICOM conversion with pydicom older than 3 is refused,
    naming the file and the version, instead."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    with pytest.raises(ConversionError, match=r"CT_small\.dcm.*pydicom 3\.0 or newer.*2\.4\.4"):
        from_file(src)
    with pytest.raises(ConversionError, match=r"pydicom 3\.0 or newer"):
        convert_file(src, tmp_path / "ct.mla")
    assert not (tmp_path / "ct.mla").exists()
    monkeypatch.setattr(pydicom, "__version__", "3.0.2")
    assert from_file(src).shape[-2:] == (128, 128)


_GDCM_WRONG = (
    "rtdose_expb.dcm",  # 32-bit Explicit VR Big Endian: GDCM swapped the 16-bit halves
    "SC_rgb_rle_16bit.dcm",  # RLE colour of more than 8 bits: GDCM mixed the planes
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "liver_1frame.dcm",  # 1-bit DICOM SEG: GDCM gave 255 for segment 1
    "liver_expb_1frame.dcm",
)


@pytest.mark.parametrize(
    "name",
    # and files GDCM decodes right, decoded by it as before
    [*_GDCM_WRONG, "rtdose.dcm", "SC_rgb_rle.dcm", "MR_small_bigendian.dcm"],
)
def test_dicom_values_equal_pydicoms_pixel_array(name):
    """Every voxel of pydicom's own test files equals pydicom's pixel_array, in the layouts
    SimpleITK's GDCM decodes wrongly too."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    expected = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        expected = expected[np.newaxis]  # the single plane is a z axis of one slice
    notes: list[str] = []
    img = from_file(get_testdata_file(name), is_seg=False, notes=notes)
    assert any("decoded with pydicom" in n for n in notes) == (name in _GDCM_WRONG)
    got = img.to_numpy()
    if int(ds.SamplesPerPixel) == 3:  # colours last, as pydicom gives them
        assert img.meta.spatial.axis_labels[-1] == "channel"
    assert got.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_rgb_small_odd.dcm"])
def test_a_colour_image_with_few_colours_is_not_guessed_a_label_map(name):
    """A colour secondary capture with a handful of colours (pydicom's test files: 5 and
    7 distinct values) was guessed a segmentation ("integer data with only 5 distinct
    values"), so napari showed a 3-channel label map: several components per voxel make
    a colour image. A name saying seg still makes one."""
    from pydicom.data import get_testdata_file

    notes: list[str] = []
    img = from_file(get_testdata_file(name), notes=notes)
    assert img.meta.spatial.axis_labels[-1] == "channel"
    assert img.meta.is_seg.is_seg is not True
    assert not any("segmentation" in n for n in notes)
    assert guess_seg("case_seg.dcm", img.to_numpy(), components=True)[0] is True


@pytest.mark.parametrize(
    "name",
    [
        "examples_rgb_color.dcm",  # RGB, uncompressed
        "SC_rgb_rle_2frame.dcm",  # RLE, two frames
        "examples_ybr_color.dcm",  # YBR_FULL_422 JPEG of 30 frames (ultrasound)
        "SC_rgb_rle_16bit.dcm",  # 16-bit colour (decoded with pydicom)
    ],
)
def test_colour_dicom_is_stored_colours_last(tmp_path, name):
    """A colour DICOM (secondary capture, photo, endoscopy, ultrasound) converts to
    (z, y, x, colour) with its colours on a last ``channel`` axis, as pydicom, ITK and
    napari hold a colour picture: napari shows one RGB layer. It was stored
    (colour, z, y, x), which napari showed as three channel layers in false colours.
    Every value equals pydicom's pixel_array in RGB, the geometry is SimpleITK's, it is
    not guessed a label map; the reference-named converter keeps the reference layout."""
    import pydicom
    from pydicom.data import get_testdata_file

    from mlarray.meta import is_colour_axis

    src = get_testdata_file(name)
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array  # RGB: pydicom converts YBR itself
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        expected = expected[np.newaxis]
    notes = convert_file(src, tmp_path / "c.mla").notes
    img = MLArray.open(tmp_path / "c.mla")
    assert img.meta.spatial.axis_labels == ["spatial_z", "spatial_y", "spatial_x", "channel"]
    assert img.meta.is_seg.is_seg is not True
    assert not any("segmentation" in n for n in notes)
    np.testing.assert_array_equal(img.to_numpy(), expected)
    # the 8-bit ones are what the napari plugin shows as one RGB layer; 16-bit stays channels
    assert is_colour_axis(img.shape, 3, img.dtype) == (expected.dtype == np.uint8)
    theirs = sitk.ReadImage(src)
    np.testing.assert_allclose(img.meta.spatial.spacing, theirs.GetSpacing()[::-1])
    np.testing.assert_allclose(img.meta.spatial.origin, theirs.GetOrigin())
    direction = np.array(theirs.GetDirection()).reshape(3, 3)[:, ::-1]
    np.testing.assert_allclose(img.meta.spatial.direction, direction)
    z, y, x = expected.shape[:3]
    convert_to_mlarray(src, tmp_path / "ref.mla")  # the reference's layout: colours first
    assert MLArray.open(tmp_path / "ref.mla").shape == (3, x, y, z)


def test_palette_colour_dicom_is_an_rgb_picture():
    """A PALETTE COLOR DICOM is read as its colours (the 16-bit lookup table's high bytes,
    as GDCM expands it), colours last: one RGB picture in napari, not three channels."""
    import pydicom
    from pydicom.data import get_testdata_file

    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_color_lut

    src = get_testdata_file("examples_palette.dcm")
    ds = pydicom.dcmread(src)
    img = from_file(src)
    assert img.meta.spatial.axis_labels[-1] == "channel" and img.dtype == np.uint8
    expected = apply_color_lut(ds.pixel_array, ds) >> 8
    np.testing.assert_array_equal(img.to_numpy(), expected[np.newaxis])


def test_colour_picture_goes_back_to_dicom_nrrd_and_metaimage_as_colour(tmp_path):
    """A colour picture converted to .mla (an oblique RGB NRRD, as ITK writes one) goes back
    to NRRD and MetaImage as SimpleITK vector pixels and to DICOM as RGB slices (3 samples
    per pixel; DICOM output refused any channel axis before), every value and the geometry
    unchanged; RGBA, which DICOM cannot hold, is refused naming the output."""
    import pydicom

    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (3, 7, 8, 3), dtype=np.uint8)
    picture = sitk.GetImageFromArray(rgb, isVector=True)
    picture.SetSpacing((0.7, 0.8, 2.0))
    picture.SetOrigin((10.0, -20.0, 5.0))
    th = 0.3
    r = np.array([[np.cos(th), 0, -np.sin(th)], [0, 1, 0], [np.sin(th), 0, np.cos(th)]])
    picture.SetDirection(r.ravel().tolist())
    sitk.WriteImage(picture, str(tmp_path / "photo.nrrd"))
    convert_file(tmp_path / "photo.nrrd", tmp_path / "photo.mla")
    img = MLArray.open(tmp_path / "photo.mla")
    assert img.meta.spatial.axis_labels == ["spatial_z", "spatial_y", "spatial_x", "channel"]
    np.testing.assert_array_equal(img.to_numpy(), rgb)
    for out in ("back.nrrd", "back.mha"):
        convert_file(tmp_path / "photo.mla", tmp_path / out)
        back = sitk.ReadImage(str(tmp_path / out))
        assert back.GetNumberOfComponentsPerPixel() == 3
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), rgb)
        np.testing.assert_allclose(back.GetSpacing(), picture.GetSpacing())
        np.testing.assert_allclose(back.GetOrigin(), picture.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(back.GetDirection(), picture.GetDirection(), atol=1e-9)
    convert_file(tmp_path / "photo.mla", tmp_path / "dicom", to="dicom")
    slices = sorted((tmp_path / "dicom").iterdir())
    assert len(slices) == 3
    for k, path in enumerate(slices):
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == "RGB" and int(ds.SamplesPerPixel) == 3
        np.testing.assert_array_equal(ds.pixel_array, rgb[k])
    again = from_file(tmp_path / "dicom")
    assert again.meta.spatial.axis_labels[-1] == "channel"
    np.testing.assert_array_equal(again.to_numpy(), rgb)
    np.testing.assert_allclose(again.meta.spatial.spacing, img.meta.spatial.spacing)
    np.testing.assert_allclose(again.meta.spatial.origin, img.meta.spatial.origin, atol=1e-6)
    np.testing.assert_allclose(again.meta.spatial.direction, img.meta.spatial.direction, atol=1e-6)

    rgba = sitk.GetImageFromArray(rng.integers(0, 256, (3, 7, 8, 4), dtype=np.uint8), True)
    sitk.WriteImage(rgba, str(tmp_path / "rgba.nrrd"))
    convert_file(tmp_path / "rgba.nrrd", tmp_path / "rgba.mla")
    assert MLArray.open(tmp_path / "rgba.mla").shape == (3, 7, 8, 4)
    with pytest.raises(ConversionError, match="not 4 colour components") as err:
        convert_file(tmp_path / "rgba.mla", tmp_path / "rgba_dicom", to="dicom")
    assert str(err.value).startswith(str(tmp_path / "rgba_dicom"))
    assert not (tmp_path / "rgba_dicom").exists()


def test_rgb_picture_simpleitk_wrote_to_nifti_is_colours_last(tmp_path):
    """SimpleITK writes an 8-bit RGB picture to NIfTI as 3 vector components (dim 5, intent
    vector): it converts colours last like the same picture in NRRD; float vectors in
    NIfTI (a displacement field) keep their channel axis first."""
    rgb = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.nii.gz"))
    assert nib.load(tmp_path / "rgb.nii.gz").shape == (4, 3, 2, 1, 3)
    img = from_file(tmp_path / "rgb.nii.gz")
    assert img.meta.spatial.axis_labels == ["spatial_z", "spatial_y", "spatial_x", "channel"]
    np.testing.assert_array_equal(img.to_numpy(), rgb)
    field_ = sitk.GetImageFromArray(rgb.astype(np.float32), isVector=True)
    sitk.WriteImage(field_, str(tmp_path / "field.nii.gz"))
    assert from_file(tmp_path / "field.nii.gz").meta.spatial.axis_labels[0] == "channel"


@pytest.mark.parametrize("n_colours", [3, 4])
def test_rgb_picture_simpleitk_wrote_to_nifti_goes_back_readable_by_simpleitk(tmp_path, n_colours):
    """An RGB(A) picture SimpleITK wrote to NIfTI (vector intent, components in dim 5)
    goes back to NIfTI as RGB24/RGBA32 voxels without the source's vector intent: ITK
    believed both and overran its buffer (the process ended with SIGSEGV/SIGABRT). Read
    in a child process, which such a crash ends instead of the test run."""
    rgb = np.random.default_rng(3).integers(0, 256, (4, 5, 6, n_colours), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.nii.gz"))
    assert int(nib.load(tmp_path / "rgb.nii.gz").header["intent_code"]) == 1007
    convert_file(tmp_path / "rgb.nii.gz", tmp_path / "rgb.mla")
    convert_file(tmp_path / "rgb.mla", tmp_path / "back.nii.gz")
    hdr = nib.load(tmp_path / "back.nii.gz").header
    assert int(hdr["datatype"]) == (128 if n_colours == 3 else 2304)
    assert int(hdr["intent_code"]) == 0
    code = (
        "import sys, numpy, SimpleITK as s; "
        "i = s.ReadImage(sys.argv[1]); "
        "numpy.save(sys.argv[2], s.GetArrayFromImage(i))"
    )
    out = tmp_path / "read.npy"
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "back.nii.gz"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-500:]
    np.testing.assert_array_equal(np.load(out), rgb)


def test_vectors_and_modalities_keep_their_channels_first(tmp_path):
    """Only colour pictures move their channel axis last: three float components (a
    displacement field), 16-bit vectors of a NRRD, and a 4-D NIfTI of three 8-bit
    modalities (``--fourth-axis channel``) keep it first, as nnU-Net stores channels."""
    field_ = sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.float32), isVector=True)
    sitk.WriteImage(field_, str(tmp_path / "field.nrrd"))
    vectors = sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.uint16), isVector=True)
    sitk.WriteImage(vectors, str(tmp_path / "vectors.nrrd"))
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 3), np.uint8), np.eye(4)), tmp_path / "m.nii")
    for img in (
        from_file(tmp_path / "field.nrrd"),
        from_file(tmp_path / "vectors.nrrd"),
        from_file(tmp_path / "m.nii", fourth_axis="channel"),
    ):
        assert img.meta.spatial.axis_labels[0] == "channel"
        assert img.shape == (3, 2, 3, 4)


def test_dicom_seg_keeps_its_segment_number(tmp_path):
    """A one-segment BINARY DICOM SEG becomes a label map holding the segment's number;
    one of several segments (a mask per frame, not one volume) is refused naming the file."""
    import copy

    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("liver_1frame.dcm"))
    mask = ds.pixel_array.astype(bool)
    img = from_file(get_testdata_file("liver_1frame.dcm"))
    assert img.meta.is_seg.is_seg is True
    np.testing.assert_array_equal(img.to_numpy()[0], mask.astype(np.uint8))
    ds.SegmentSequence[0].SegmentNumber = 3
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber = 3
    ds.save_as(tmp_path / "seg3.dcm")
    got = from_file(tmp_path / "seg3.dcm").to_numpy()[0]
    np.testing.assert_array_equal(got, np.where(mask, 3, 0))
    second = copy.deepcopy(ds.SegmentSequence[0])
    second.SegmentNumber = 4
    ds.SegmentSequence.append(second)
    ds.save_as(tmp_path / "two_segments.dcm")
    with pytest.raises(ConversionError, match="DICOM SEG of 2 segments") as err:
        from_file(tmp_path / "two_segments.dcm")
    assert str(err.value).startswith(str(tmp_path / "two_segments.dcm"))


def test_dicom_series_with_a_32_bit_big_endian_slice_equals_pydicom(tmp_path):
    """A series one of whose files GDCM decodes wrongly (a 32-bit big-endian slice among
    little-endian ones, not the first) is decoded by pydicom slice by slice, in the slice
    order SimpleITK sorted the files into."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    series = generate_uid()
    folder = tmp_path / "dose"
    folder.mkdir()
    expected = []
    for k, name in enumerate(["rtdose.dcm", "rtdose_expb.dcm", "rtdose.dcm"]):
        ds = pydicom.dcmread(get_testdata_file(name))
        plane = ds.pixel_array[k].astype(np.uint32) + np.uint32(1_000_003 * k)
        del ds.NumberOfFrames, ds.GridFrameOffsetVector, ds.FrameIncrementPointer
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.PixelData = plane.astype(">u4" if "expb" in name else "<u4").tobytes()
        ds.save_as(folder / f"IM{3 - k}.dcm")  # file order is not slice order
        expected.append(plane)
    got = from_file(folder, is_seg=False).to_numpy()
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, np.stack(expected))


# ----------------------------------------------------------------------------- seg, errors


def test_segmentation_guessed_from_name_and_dtype(tmp_path):
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    assert guess_seg(tmp_path / "case_001_seg.nii.gz", seg)[0]
    assert guess_seg(tmp_path / "labelsTr" / "case_001.nii.gz", seg)[0]
    assert not guess_seg(tmp_path / "case_seg.nii.gz", seg.astype(np.float32))[0]
    ct = np.arange(-500, 500, dtype=np.int16).reshape(10, 10, 10)
    assert not guess_seg(tmp_path / "ct.nii.gz", ct)[0]
    assert guess_seg(tmp_path / "x.nii.gz", seg)[0]  # few non-negative integer values
    nib.save(nib.Nifti1Image(seg, np.eye(4)), tmp_path / "liver_mask.nii.gz")
    notes: list[str] = []
    img = from_file(tmp_path / "liver_mask.nii.gz", notes=notes)
    assert img.meta.is_seg.is_seg is True
    assert any("mask" in n for n in notes)
    assert from_file(tmp_path / "liver_mask.nii.gz", is_seg=False).meta.is_seg.is_seg is False


def _slicer_seg_nrrd(path: Path) -> np.ndarray:
    """A 3D Slicer segmentation of 3 overlapping segment layers (4-D uint8 NRRD, kinds
    ``list domain domain domain``, as Slicer writes one); returns its (layer, z, y, x)."""
    layers = np.zeros((3, 6, 7, 8), np.uint8)
    layers[0, 1:4, 1:4, 1:4] = 1
    layers[1, 2:5, 2:6, 2:6] = 2
    layers[2, 0:2, 0:3, 5:8] = 1
    header = (
        "NRRD0004\ntype: unsigned char\ndimension: 4\nspace: left-posterior-superior\n"
        "sizes: 3 8 7 6\nspace directions: none (0.8,0,0) (0,0.8,0) (0,0,1.5)\n"
        "kinds: list domain domain domain\nencoding: raw\nspace origin: (-10,-20,30)\n"
        "Segment0_Name:=liver\nSegment1_Name:=tumour\nSegment2_Name:=vessel\n\n"
    )
    path.write_bytes(header.encode() + layers.transpose(1, 2, 3, 0).tobytes())
    return layers


def test_segmentation_of_3_layers_is_channels_first_never_a_colour_picture(tmp_path):
    """A label map with 3 uint8 components (a Slicer .seg.nrrd of overlapping layers,
    guessed from its name; an RGB-like vector image given ``is_seg=True``) keeps its
    channel axis first, as every multi-channel segmentation, and goes to NIfTI as uint8
    vectors (not RGB24 colour voxels, which label tools read as a picture)."""
    layers = _slicer_seg_nrrd(tmp_path / "Segmentation.seg.nrrd")
    convert_file(tmp_path / "Segmentation.seg.nrrd", tmp_path / "seg.mla")
    seg = MLArray.open(tmp_path / "seg.mla")
    assert seg.meta.is_seg.is_seg is True
    assert seg.meta.spatial.axis_labels[0] == "channel"
    np.testing.assert_array_equal(seg.to_numpy(), layers)
    convert_file(tmp_path / "seg.mla", tmp_path / "seg.nii.gz")
    back = nib.load(tmp_path / "seg.nii.gz")
    assert back.get_data_dtype() == np.uint8
    assert back.shape == (8, 7, 6, 1, 3)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz"))),
        layers.transpose(1, 2, 3, 0),
    )
    rgb_like = sitk.GetImageFromArray(layers.transpose(1, 2, 3, 0), isVector=True)
    sitk.WriteImage(rgb_like, str(tmp_path / "case.nrrd"))
    given = from_file(tmp_path / "case.nrrd", is_seg=True)
    assert given.meta.spatial.axis_labels[0] == "channel"
    np.testing.assert_array_equal(given.to_numpy(), layers)
    assert from_file(tmp_path / "case.nrrd").meta.spatial.axis_labels[-1] == "channel"


def test_nrrd_of_listed_components_is_not_a_colour_picture(tmp_path):
    """3 uint8 components a NRRD's kinds call a ``list`` (3D Slicer's segment layers, in a
    file whose name does not say seg) are channels, stored first; the same components
    of kind ``vector`` (as SimpleITK writes an RGB picture) are colours, stored last."""
    layers = _slicer_seg_nrrd(tmp_path / "case_0001.nrrd")
    img = from_file(tmp_path / "case_0001.nrrd", is_seg=False)
    assert img.meta.spatial.axis_labels == ["channel", "spatial_z", "spatial_y", "spatial_x"]
    np.testing.assert_array_equal(img.to_numpy(), layers)
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "case_0001.nrrd")), str(tmp_path / "v.nrrd"))
    assert b"kinds: vector" in (tmp_path / "v.nrrd").read_bytes()[:400]
    assert from_file(tmp_path / "v.nrrd").meta.spatial.axis_labels[-1] == "channel"


def test_segmentation_stored_channels_last_goes_to_nifti_as_vectors_not_colours(tmp_path):
    """A label map whose 3 uint8 channels are stored last (as ``mlarray convert`` stored a
    .seg.nrrd of 3 layers for a while, or a user saves one) goes to NIfTI as uint8 vectors,
    not RGB24 colour voxels, and is refused by DICOM output like any channel image."""
    layers = np.random.default_rng(4).integers(0, 3, (6, 7, 8, 3), dtype=np.uint8)
    labels = ["spatial_z", "spatial_y", "spatial_x", "channel"]
    meta = Meta(is_seg=MetaIsSeg(is_seg=True), spatial=MetaSpatial(axis_labels=labels))
    MLArray(layers, meta=meta).save(tmp_path / "seg.mla")
    assert MLArray.open(tmp_path / "seg.mla").meta.is_seg.is_seg is True
    convert_file(tmp_path / "seg.mla", tmp_path / "seg.nii.gz")
    back = nib.load(tmp_path / "seg.nii.gz")
    assert back.get_data_dtype() == np.uint8
    assert back.shape == (8, 7, 6, 1, 3)
    np.testing.assert_array_equal(
        np.asarray(back.dataobj)[:, :, :, 0].transpose(2, 1, 0, 3), layers
    )
    with pytest.raises(ConversionError, match="without channels"):
        convert_file(tmp_path / "seg.mla", tmp_path / "seg_dicom", to="dicom")


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ConversionError, match=r"broken\.nii\.gz"):
        from_file(tmp_path / "broken.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConversionError, match="unsupported input"):
        from_file(tmp_path / "notes.txt")
    with pytest.raises(ConversionError, match="no such file"):
        from_file(tmp_path / "missing.nrrd")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "a.nii")
    with pytest.raises(ConversionError, match="does not exist"):
        convert_file(tmp_path / "a.nii", tmp_path / "nope" / "a.mla")
    convert_file(tmp_path / "a.nii", tmp_path / "a.mla")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_file(tmp_path / "a.nii", tmp_path / "a.mla")


def test_simpleitk_read_errors_say_what_is_wrong(tmp_path, capfd):
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut_ct.dcm").write_bytes(ct[:5000])
    (tmp_path / "empty.mha").write_bytes(b"")
    (tmp_path / "text.mha").write_text("not a MetaImage header\n")
    a = np.random.default_rng(0).integers(0, 1000, (16, 17, 18)).astype(np.int16)
    for suffix in (".mha", ".nrrd", ".mhd"):
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / f"full{suffix}"), True)
        whole = (tmp_path / f"full{suffix}").read_bytes()
        (tmp_path / f"cut{suffix}").write_bytes(whole[:-300])
    (tmp_path / "cut.mhd").write_bytes((tmp_path / "full.mhd").read_bytes())
    (tmp_path / "full.zraw").unlink()
    cases = [
        (tmp_path / "cut_ct.dcm", "CT Image Storage file without its pixel data: it is cut short"),
        (Path(get_testdata_file("rtstruct.dcm")), "not an image: a DICOM RT Structure Set"),
        (tmp_path / "empty.mha", "the file is empty"),
        (tmp_path / "text.mha", "NDims required and not defined"),
        (tmp_path / "cut.mha", "end early: the file is cut short"),
        (tmp_path / "cut.nrrd", r"expected 9792 bytes but received \d+"),
        (tmp_path / "cut.mhd", r"its data file .*full\.zraw does not exist"),
    ]
    for path, words in cases:
        with pytest.raises(ConversionError, match=words) as err:
            from_file(path)
        message = str(err.value)
        assert message.startswith(str(path)), message
        assert ".cxx" not in message and "No such file" not in message, message
    printed = capfd.readouterr()
    assert "MetaImage" not in printed.out + printed.err  # the reason is in the error instead


def test_write_errors_name_the_output_not_its_temporary_file(tmp_path):
    affine = np.eye(4)
    affine[0, 1] = 0.3  # sheared: DICOM cannot hold it
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), tmp_path / "shear.nii.gz")
    from_file(tmp_path / "shear.nii.gz").save(tmp_path / "shear.mla")
    with pytest.raises(ConversionError, match="sheared; DICOM slices cannot") as err:
        to_file(tmp_path / "shear.mla", tmp_path / "out", format="dicom")
    assert str(err.value).startswith(f"{tmp_path / 'out'}: the geometry"), str(err.value)
    long = tmp_path / ("x" * 240 + ".nii.gz")  # a valid name; its temporary name is too long
    with pytest.raises(ConversionError, match="cannot write: File name too long") as err:
        to_file(tmp_path / "shear.mla", long)
    assert str(err.value).startswith(str(long)) and ".tmp" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shear.mla", "shear.nii.gz"]


# ----------------------------------------------------------------------------- reference names


def test_reference_python_functions(tmp_path):
    with pytest.raises(RuntimeError):
        convert_image("input.nii.gz", "output.nrrd")
    header = {"sizes": np.array([2, 3, 4], dtype=np.int64), "spacing": np.float32(1.5)}
    assert _header_to_source_meta(header) == {"sizes": [2, 3, 4], "spacing": 1.5}
    path = oblique_sitk(tmp_path, ".nrrd")
    convert_to_mlarray(path, tmp_path / "a.mla")
    convert_to_mlarray(path, tmp_path / "a.mla")  # replaces, as the reference does
    convert_from_mlarray(tmp_path / "a.mla", tmp_path / "b.nrrd")
    convert_image(tmp_path / "b.nrrd", tmp_path / "c.mla")
    a, b = MLArray.open(tmp_path / "a.mla"), MLArray.open(tmp_path / "c.mla")
    np.testing.assert_array_equal(a[...], b[...])
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-9)


# ----------------------------------------------------------------------------- to_dask


def test_to_dask_chunks_aligned_lazy_and_pickled_to_processes(tmp_path):
    import dask

    a = np.arange(40 * 30 * 20, dtype=np.float32).reshape(40, 30, 20)
    MLArray(a, chunk_size=(16, 16, 8), block_size=(8, 8, 4), patch_size=None).save(
        tmp_path / "d.mla"
    )
    img = MLArray.open(tmp_path / "d.mla")
    d = img.to_dask()
    assert d.chunksize == (16, 16, 8)
    assert d.chunks[0] == (16, 16, 8)
    assert len(pickle.dumps(d)) < 20_000  # the graph carries a path, not the data
    total = d.sum(dtype=np.float64)
    with dask.config.set({"multiprocessing.context": "fork"}):  # real worker processes
        got = total.compute(scheduler="processes", num_workers=2)
    assert float(got) == float(a.sum(dtype=np.float64))
    np.testing.assert_array_equal(
        d[5:37, 3:29:2, 7].compute(scheduler="threads"), a[5:37, 3:29:2, 7]
    )
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(MLArray(a).to_dask().compute(), a)


def test_saving_a_dask_array_computes_each_of_its_blocks_once(tmp_path):
    """``save_mla(path, dask_array)`` with blocks unlike the file's chunks computes each
    dask block once per run of chunks, not once per chunk that overlaps it (a 1 GiB
    random array: 63 s -> 7.7 s here), and writes the right values."""
    import threading

    import dask.array as da

    from mlarray.io import save_mla

    calls, lock = [], threading.Lock()

    def block(x, block_info=None):
        with lock:
            calls.append(tuple(block_info[None]["chunk-location"]))
        loc = block_info[None]["array-location"]
        idx = np.ix_(*(np.arange(a, b) for a, b in loc))
        return (idx[0] * 10000 + idx[1] * 100 + idx[2]).astype(np.int32)

    src = da.map_blocks(
        block, da.zeros((40, 60, 50), np.int32, chunks=(15, 25, 20)), dtype=np.int32
    )
    expected = np.fromfunction(lambda z, y, x: z * 10000 + y * 100 + x, (40, 60, 50), dtype=int)
    save_mla(tmp_path / "d.mla", src, chunk_size=(8, 16, 16), block_size=(4, 8, 8))
    np.testing.assert_array_equal(MLArray.open(tmp_path / "d.mla")[...], expected)
    assert MLArray.open(tmp_path / "d.mla").chunks == (8, 16, 16)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 3 * 3 * 3, calls


def test_headers_claiming_more_data_than_there_is_are_refused_before_allocating(tmp_path):
    import gzip

    im = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    im.header.set_data_shape((4000, 4000, 4000))  # 128 GB claimed, 128 bytes present
    block = im.header.binaryblock + b"\0" * 4 + b"\0" * 128
    (tmp_path / "huge.nii").write_bytes(block)
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(block))
    im.header.set_data_shape((40, 40, 40))  # 128 kB claimed: truncated, within 4 GiB
    (tmp_path / "short.nii.gz").write_bytes(
        gzip.compress(im.header.binaryblock + b"\0" * 4 + b"\0" * 128)
    )
    (tmp_path / "huge.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 40000 40000 4000\n"
        b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + b"\0" * 64
    )
    for name, words in [
        ("huge.nii", "truncated"),
        ("huge.nii.gz", "truncated"),
        ("short.nii.gz", "truncated"),
        ("huge.mha", "truncated"),
    ]:
        with pytest.raises(ConversionError, match=words) as err:
            from_file(tmp_path / name)
        assert name in str(err.value)


_LIARS = r"""
import gzip, resource, sys
from pathlib import Path
import nibabel as nib, numpy as np
from mlarray.convert import ConversionError, from_file

resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a claim honoured fails as MemoryError
folder = Path(sys.argv[1])
hdr = nib.Nifti1Image(np.zeros((2, 2, 2), np.int32), np.eye(4)).header.copy()
hdr.set_data_shape((2048, 2048, 320))  # 5 GiB of int32, past the 4 GiB gzip size field
(folder / "liar.nii.gz").write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\1" * 1000))
(folder / "liar.nrrd").write_bytes(
    b"NRRD0004\ntype: int\ndimension: 3\nsizes: 2048 2048 320\nendian: little\n"
    b"encoding: gzip\n\n" + gzip.compress(b"\1" * 1000)
)
(folder / "liar.mha").write_bytes(
    b"ObjectType = Image\nNDims = 3\nDimSize = 2048 2048 320\nElementType = MET_INT\n"
    b"CompressedData = True\nElementDataFile = LOCAL\n" + gzip.compress(b"\1" * 1000)
)
for name in ("liar.nii.gz", "liar.nrrd", "liar.mha"):
    try:
        from_file(folder / name)
    except ConversionError as exc:
        print(exc)
"""


def test_small_compressed_files_claiming_gigabytes_are_refused_as_truncated(tmp_path):
    """Read under a 3 GiB address-space limit: allocating the 5 GiB claimed would fail."""
    from tests._children import run_python

    lines = run_python(_LIARS, tmp_path).splitlines()
    assert len(lines) == 3, lines
    for name, line in zip(("liar.nii.gz", "liar.nrrd", "liar.mha"), lines, strict=True):
        assert name in line and "truncated" in line, line


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "compressed"])
def test_honest_nrrd_and_metaimage_files_pass_the_size_bound(tmp_path, compress):
    a = np.random.default_rng(0).integers(0, 3, (40, 50, 60)).astype(np.int16)  # compresses well
    for suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / f"a{suffix}"), compress)
        np.testing.assert_array_equal(from_file(tmp_path / f"a{suffix}").to_numpy(), a)
    (tmp_path / "text.nrrd").write_text(
        "NRRD0004\ntype: double\ndimension: 3\nsizes: 2 1 1\nencoding: ascii\n\n1 2"
    )
    np.testing.assert_array_equal(from_file(tmp_path / "text.nrrd").to_numpy(), [[[1.0, 2.0]]])


def test_damaged_compressed_metaimage_is_refused_not_decoded_into_wrong_voxels(tmp_path):
    mni = sitk.ReadImage(str(Path(__file__).parent / "data" / "mni152_t1_2mm.nii.gz"))
    for name in ("mni.mha", "mni.mhd"):
        sitk.WriteImage(mni, str(tmp_path / name), True)
        np.testing.assert_array_equal(
            from_file(tmp_path / name).to_numpy(), sitk.GetArrayFromImage(mni)
        )
    for data in ("mni.mha", "mni.zraw"):
        good = (tmp_path / data).read_bytes()
        rotted = bytearray(good)
        rotted[len(good) * 2 // 3] ^= 0xFF  # MetaIO decodes this into wrong voxels silently
        (tmp_path / data).write_bytes(bytes(rotted))
        header = tmp_path / data.replace(".zraw", ".mhd")
        with pytest.raises(ConversionError, match="compressed voxel data are damaged") as err:
            from_file(header)
        assert str(err.value).startswith(str(header))
        (tmp_path / data).write_bytes(good[:-10])
        with pytest.raises(ConversionError, match="cut short"):
            from_file(header)


def _nib_payload(name: str) -> bytes:
    import gzip

    return gzip.decompress((NIB_DATA / name).read_bytes())


def test_damaged_gzip_nifti_is_refused_not_decoded_into_wrong_voxels(tmp_path):
    good = (Path(__file__).parent / "data" / "mni152_t1_2mm.nii.gz").read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # one bit-rotted byte: the CRC check fails
    (tmp_path / "rotted.nii.gz").write_bytes(bytes(flipped))
    (tmp_path / "cut.nii.gz").write_bytes(good[:-6])  # the trailer cut off
    for name in ("rotted.nii.gz", "cut.nii.gz"):
        with pytest.raises(ConversionError, match="damaged or cut short") as err:
            from_file(tmp_path / name)
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz"])
def test_gzip_nifti_in_several_members_reads_like_nibabel(tmp_path, name):
    """bgzip, pgzip or ``cat a.gz b.gz`` write several gzip members; each is checked."""
    import gzip

    raw = _nib_payload(name)
    cut = [0, 500, len(raw) // 2, len(raw)]
    path = tmp_path / name
    path.write_bytes(b"".join(gzip.compress(raw[a:b]) for a, b in itertools.pairwise(cut)))
    expected = np.asanyarray(nib.load(NIB_DATA / name).dataobj)
    img = from_file(path, axis_order="xyz", is_seg=False)
    got = img.to_numpy()
    if expected.ndim == 4:
        got = np.moveaxis(got, 0, -1)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["anatomical.nii", "pir.nii.gz", "oblique.nrrd", "dicom"])
def test_converted_files_open_in_the_plugin_in_the_radiological_frame(tmp_path, kind):
    """The napari reader puts every voxel at its world point in the plugin's napari frame.

    That frame (axes toward inferior, posterior and left) is what makes napari show the
    radiological view (anterior up, patient right on the left), for RAS (NIfTI) and LPS
    (NRRD, DICOM) files alike.
    """
    from napari_mlarray._orientation import layer_matrix
    from napari_mlarray._reader import read_mla

    if kind == "anatomical.nii":
        src = NIB_DATA / kind
    elif kind == "pir.nii.gz":
        a = np.random.default_rng(2).integers(0, 500, (5, 6, 7)).astype(np.int16)
        aff = np.array([[0, 0, 1.2, -30], [-0.9, 0, 0, 40], [0, -2.5, 0, 12], [0, 0, 0, 1.0]])
        src = tmp_path / kind
        nib.save(nib.Nifti1Image(a, aff), src)
    elif kind == "oblique.nrrd":
        src = oblique_sitk(tmp_path, ".nrrd")
    else:
        src = tmp_path / "ct"
        make_dicom_series(src, n_slices=3)
    convert_file(src, tmp_path / "c.mla")
    data, ras = ours(MLArray.open(tmp_path / "c.mla"))
    # napari's world axes run toward inferior, posterior, left: (-z, y, x) of LPS, from RAS
    napari_world = np.zeros((4, 4))
    napari_world[0, 2], napari_world[1, 1], napari_world[2, 0], napari_world[3, 3] = -1, -1, -1, 1
    layer_data, kwargs, layer_type = read_mla(str(tmp_path / "c.mla"))[0]
    assert layer_type == "image"
    view = np.asarray(layer_data)
    assert_same_world(data, napari_world @ ras, view, layer_matrix(kwargs, view.ndim), atol=1e-6)


def test_mismatched_headers_are_reported(tmp_path):
    # NIfTI whose qform and sform disagree: converted with the sform, and said
    im = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    im.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    im.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    nib.save(im, tmp_path / "q.nii.gz")
    notes: list[str] = []
    img = from_file(tmp_path / "q.nii.gz", notes=notes)
    assert any("sform and qform disagree" in n for n in notes)
    assert img.spacing == [2.0, 2.0, 2.0]
    # a DICOM series whose slices do not have the same size is refused, naming the folder
    import pydicom

    make_dicom_series(tmp_path / "mixed", n_slices=3)
    first = sorted((tmp_path / "mixed").iterdir())[0]
    ds = pydicom.dcmread(first)
    smaller = ds.pixel_array[:64, :64].copy()
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = smaller.tobytes()
    ds.save_as(first)
    with pytest.raises(ConversionError) as err:
        from_file(tmp_path / "mixed")
    assert "mixed" in str(err.value)


def test_dicom_series_written_and_read_back(tmp_path):
    import pydicom

    # an oblique LPS image: every voxel back at its world point after DICOM and back
    src = from_file(oblique_sitk(tmp_path, ".nrrd"))
    to_file(src, tmp_path / "series", format="dicom")
    files = sorted((tmp_path / "series").iterdir())
    assert len(files) == src.shape[0]
    headers = [pydicom.dcmread(f) for f in files]
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == len(files)
    back = from_file(tmp_path / "series")
    d1, a1 = ours(src)
    d2, a2 = ours(back)
    assert_same_world(d1, a1, d2, a2, atol=1e-4)
    # a DICOM source keeps its patient and study, gets a new series
    make_dicom_series(tmp_path / "ct", n_slices=3)
    ct = from_file(tmp_path / "ct")
    ct.save(tmp_path / "ct.mla")
    convert_file(tmp_path / "ct.mla", tmp_path / "ct_again", to="dicom")
    again = from_file(tmp_path / "ct_again")
    for tag in ("0010|0010", "0020|000d", "0008|0060"):
        assert again.meta.source.data[tag] == ct.meta.source.data[tag]
    assert again.meta.source.data["0020|000e"] != ct.meta.source.data["0020|000e"]
    np.testing.assert_array_equal(again[...], ct[...])
    # floats and existing outputs are refused, naming the target
    with pytest.raises(ConversionError, match="integers"):
        to_file(MLArray(np.zeros((2, 3, 4), np.float32)), tmp_path / "f", format="dicom")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_file(tmp_path / "ct.mla", tmp_path / "ct_again", to="dicom")


@pytest.mark.parametrize("stem", ["RAS", "LAS", "LPS", "PIR", "ASL", "ALS", "nrrd"])
def test_reference_converted_files_go_out_to_the_right_world(tmp_path, stem):
    """The reference converter's files (array codes such as ``LPS+`` over a RAS affine) are
    written out by ``to_file`` with every voxel at the phantom's own world point."""
    from tests.data.make_converted import phantom, ras_affine

    src = Path(__file__).parent / "data" / "converted" / f"phantom_{stem}.mla"
    notes: list[str] = []
    to_file(src, tmp_path / "out.nii.gz", notes=notes)
    out = nib.load(tmp_path / "out.nii.gz")
    assert_same_world(phantom(), ras_affine(), np.asarray(out.dataobj), out.affine, atol=1e-4)
    assert notes == []  # the frame was recognised, not assumed
    to_file(src, tmp_path / "out.nrrd")
    data, ras = sitk_world(sitk.ReadImage(str(tmp_path / "out.nrrd")))
    assert_same_world(phantom(), ras_affine(), data, ras, atol=1e-4)


def test_lps_plus_over_simpleitk_geometry_is_lps(tmp_path):
    """``coord_system`` ``LPS+`` (``MetaSpatial.CoordSystem.LPS_PLUS``) with spacing, origin and
    direction names the LPS world, also for an array stored R,A,S (x, y, z) whose axis codes read
    in RAS happen to be ``LPS``: the MNI152 template read by SimpleITK and saved x, y, z is
    exported with every voxel at nibabel's world point (it was mirrored left-right and front-back
    as a RAS world before)."""
    from mlarray import Meta, MetaSpatial

    path = Path(__file__).parent / "data" / "mni152_t1_2mm.nii.gz"
    src, itk = nib.load(path), sitk.ReadImage(str(path))
    xyz = sitk.GetArrayFromImage(itk).transpose(2, 1, 0)
    geo = {
        "spacing": list(itk.GetSpacing()),
        "origin": list(itk.GetOrigin()),
        "direction": np.asarray(itk.GetDirection()).reshape(3, 3).tolist(),
        "axis_labels": ["spatial_x", "spatial_y", "spatial_z"],
    }
    assert np.allclose(geo["direction"], np.diag([-1.0, -1.0, 1.0]))  # R,A,S array in LPS
    for cs in (MetaSpatial.CoordSystem.LPS_PLUS, "lps+", "LPS"):
        meta = Meta(spatial={"coord_system": cs})
        MLArray(np.ascontiguousarray(xyz), meta=meta, **geo).save(tmp_path / "mni.mla")
        img = MLArray.open(tmp_path / "mni.mla")
        assert img.meta.spatial.world_frame == "LPS", cs
        notes: list[str] = []
        to_file(img, tmp_path / "out.nii.gz", notes=notes, overwrite=True)
        out = nib.load(tmp_path / "out.nii.gz")
        assert_same_world(np.asarray(src.dataobj), src.affine, np.asarray(out.dataobj), out.affine)
        assert notes == []


@pytest.mark.parametrize("order", ["xyz", "zyx"])
def test_a_2d_image_goes_back_in_its_own_index_order_whatever_the_stored_order(tmp_path, order):
    """A 2-D MetaImage converted with ``--order xyz`` came back transposed (ITK size (6, 9)
    for (9, 6), spacing and direction columns swapped, det -1: the x, y order was not
    recorded, both axes labelled ``spatial``); now the axes are ``spatial_x``/``spatial_y``
    as for 3-D, and both orders round-trip exactly."""
    a2 = np.random.default_rng(5).integers(0, 1000, (6, 9)).astype(np.int16)
    src = sitk.GetImageFromArray(a2)
    th = 0.3
    src.SetSpacing((0.5, 1.7))
    src.SetOrigin((7.0, -2.0))
    src.SetDirection([np.cos(th), -np.sin(th), np.sin(th), np.cos(th)])
    sitk.WriteImage(src, str(tmp_path / "two.mha"))
    run_cli("convert", tmp_path / "two.mha", tmp_path / "two.mla", "--order", order, check_rc=0)
    labels = MLArray.open(tmp_path / "two.mla").meta.spatial.axis_labels
    assert labels == (["spatial_x", "spatial_y"] if order == "xyz" else ["spatial_y", "spatial_x"])
    run_cli("convert", tmp_path / "two.mla", tmp_path / "back.mha", check_rc=0)
    back = sitk.ReadImage(str(tmp_path / "back.mha"))
    assert back.GetSize() == (9, 6) and back.GetSpacing() == pytest.approx((0.5, 1.7))
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), a2)
