"""Our converter against the reference ``mlarray_convert`` (0.0.54 + medvol, its own venv).

Both convert the same NIfTI/NRRD; every voxel must hold the same value at the
same world point, in the files and in our napari plugin. The reference stores a
RAS-world affine over a reoriented array with the array's axis codes in
``coord_system`` (FORMAT.md section 4); ours stores the file's own voxel order and
world frame.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mlarray import MLArray
from mlarray.convert import to_file
from tests._children import reference_env
from tests._worldcheck import NIB_DATA, assert_same_world, oblique_sitk, ours, run_cli

REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")


def _reference_converter() -> Path:
    if not REFERENCE_PYTHON:
        pytest.skip("set MLARRAY_REFERENCE_PYTHON to the reference venv's python (.ci/run does)")
    exe = Path(REFERENCE_PYTHON).parent / "mlarray_convert"
    probe = subprocess.run(
        [REFERENCE_PYTHON, "-c", "import medvol"], capture_output=True, env=_reference_env()
    )
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
        [str(ref_convert), str(src), str(tmp_path / "ref.mla")],
        capture_output=True,
        text=True,
        env=_reference_env(),
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


def _reference_env() -> dict[str, str]:
    """The environment for the reference venv's python: without a PYTHONPATH that would
    import this package in its place."""
    return reference_env()


def test_reference_named_converters_store_the_reference_s_array(tmp_path):
    """``mlarray.cli.convert_to_mlarray`` and ``mlarray_convert`` (the reference's names) store
    the array the reference's ``mlarray_convert`` stores: same shape and axis order, the same
    value at every index (code written for reference-converted files, ``a[x, y, z]``, reads the
    same voxel), the same affine and ``coord_system``; for NIfTI in all 48 storage orders, a 4-D
    and a 2-D NIfTI, the MNI152 template and NRRDs with and without an anatomical space. It used to
    write z, y, x (``a[5, 3, 1]`` read another voxel). ``mlarray convert`` stays z, y, x."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from mlarray.cli import convert_to_mlarray
    from tests.data.make_converted import phantom, ras_affine

    _reference_converter()
    srcs = []
    names = ("RL", "AP", "SI")
    for perm in itertools.permutations(range(3)):
        for ends in itertools.product((0, 1), repeat=3):
            code = "".join(names[perm[j]][ends[j]] for j in range(3))
            turn = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(code)))
            nii = nib.Nifti1Image(phantom()[::2, ::2, ::2], ras_affine()).as_reoriented(turn)
            nib.save(nii, tmp_path / f"{code}.nii.gz")
            srcs.append(tmp_path / f"{code}.nii.gz")
    flat = np.arange(6 * 5, dtype=np.int16).reshape(6, 5)
    nib.save(nib.Nifti1Image(flat, np.diag([0.8, -0.9, 1.0, 1.0])), tmp_path / "flat.nii.gz")
    series = nib.Nifti1Image(
        np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 3),
        np.array([[0, -0.9, 0, 1], [0.8, 0, 0, 2], [0, 0, 2.5, 3], [0, 0, 0, 1.0]]),  # A,L,S
    )
    series.header.set_xyzt_units("mm", "sec")
    series.header["pixdim"][4], series.header["toffset"] = 1.5, 7.0
    nib.save(series, tmp_path / "series.nii.gz")
    srcs += [tmp_path / "series.nii.gz", tmp_path / "flat.nii.gz"]
    srcs += [Path(__file__).parent / "data" / "mni152_t1_2mm.nii.gz"]
    import SimpleITK as sitk

    vol = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    vol.SetSpacing((0.8, 0.9, 2.5))
    vol.SetOrigin((3.0, -4.0, 5.0))
    vol.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))  # rows A,L: an LPS-space NRRD
    sitk.WriteImage(vol, str(tmp_path / "lps.nrrd"))
    (tmp_path / "nospace.raw").write_bytes(np.arange(24, dtype="<i2").tobytes())
    (tmp_path / "nospace.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace dimension: 3\nsizes: 4 3 2\n"
        "space directions: (0,-0.8,0) (0.9,0,0) (0,0,2)\nkinds: domain domain domain\n"
        "endian: little\nencoding: raw\nspace origin: (1,2,3)\ndata file: nospace.raw\n"
    )
    srcs += [tmp_path / "lps.nrrd", tmp_path / "nospace.nhdr"]
    (tmp_path / "out").mkdir()
    code = (
        "import sys\nfrom mlarray.cli import convert_to_mlarray\n"
        "out = sys.argv[1]\nfor s in sys.argv[2:]:\n"
        "    convert_to_mlarray(s, out + '/' + s.rsplit('/', 1)[-1] + '.ref.mla')\n"
    )
    proc = subprocess.run(
        [REFERENCE_PYTHON, "-c", code, str(tmp_path / "out"), *map(str, srcs)],
        capture_output=True,
        text=True,
        env=_reference_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for src in srcs:
        out = tmp_path / "out"  # none beside the sources (the MNI template is test data)
        convert_to_mlarray(src, out / f"{src.name}.ours.mla")
        ref = MLArray.open(out / f"{src.name}.ref.mla")
        ours_ = MLArray.open(out / f"{src.name}.ours.mla")
        assert ours_.shape == ref.shape, src.name
        np.testing.assert_array_equal(ours_[...], ref[...], err_msg=src.name)
        np.testing.assert_allclose(ours_.affine, ref.affine, atol=1e-5, err_msg=src.name)
        if src.name == "nospace.nhdr":  # the reference keeps the raw (ITK: LPS) geometry
            assert ref.meta.spatial.coord_system is None
            assert ours_.meta.spatial.coord_system == "LPS"
        else:
            assert ours_.meta.spatial.coord_system == ref.meta.spatial.coord_system, src.name
    # the command too; our own `mlarray convert` keeps its z, y, x layout
    mni = Path(__file__).parent / "data" / "mni152_t1_2mm.nii.gz"
    run_cli("convert", mni, tmp_path / "zyx.mla", check_rc=0)
    run_cli(
        mni, tmp_path / "xyz.mla", exe=Path(sys.executable).parent / "mlarray_convert", check_rc=0
    )
    xyz, zyx = MLArray.open(tmp_path / "xyz.mla"), MLArray.open(tmp_path / "zyx.mla")
    assert xyz.shape == nib.load(mni).shape == zyx.shape[::-1]
    ref_mni = MLArray.open(tmp_path / "out" / f"{mni.name}.ref.mla")
    np.testing.assert_array_equal(xyz[...], ref_mni[...])
    np.testing.assert_array_equal(xyz[...], np.asarray(nib.load(mni).dataobj))


def _world_2d(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World points (2, n) of every index of a 2-D grid, C order."""
    idx = np.indices(shape).reshape(2, -1).astype(np.float64)
    return affine[:2, :2] @ idx + affine[:2, 2:3]


def _sitk_affine_2d(img) -> np.ndarray:
    a = np.eye(3)
    a[:2, :2] = np.asarray(img.GetDirection()).reshape(2, 2) * np.asarray(img.GetSpacing())
    a[:2, 2] = img.GetOrigin()
    return a


def _same_world_2d(data_a, affine_a, data_b, affine_b) -> None:
    """Every voxel of A is the voxel of B at the same world point (index order i, j)."""
    world = _world_2d(affine_a, data_a.shape)
    inv = np.linalg.inv(affine_b)
    idx = inv[:2, :2] @ world + inv[:2, 2:3]
    assert np.abs(idx - np.rint(idx)).max() < 1e-4
    r = np.rint(idx).astype(int)
    np.testing.assert_array_equal(data_a.reshape(-1), data_b[r[0], r[1]])


def test_reference_converted_2d_files_keep_their_world(tmp_path):
    """2-D files converted by the reference: a NRRD (stored with its own LPS geometry and no
    coord_system) is exported to the source's world, not mirrored as if RAS; a NIfTI
    (coord_system ``RA+``/``LP+``, the 2-D array's codes over a RAS affine) is recognised as
    RAS, by the exporter and in napari (it was "not an anatomical frame")."""
    import SimpleITK as sitk

    from mlarray import geometry
    from napari_mlarray._orientation import orientation_for

    ref_convert = _reference_converter()
    im = sitk.GetImageFromArray(np.arange(99, dtype=np.float32).reshape(9, 11))
    im.SetSpacing((0.5, 2.0))
    im.SetOrigin((3.0, -4.0))
    im.SetDirection((0, -1, 1, 0))
    sitk.WriteImage(im, str(tmp_path / "xray.nrrd"))
    flat = np.arange(6 * 5, dtype=np.int16).reshape(6, 5)
    aff = np.array([[0, -0.9, 0, 3], [0.8, 0, 0, -4], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(flat, aff), tmp_path / "flat.nii.gz")
    for name in ("xray.nrrd", "flat.nii.gz"):
        proc = subprocess.run(
            [str(ref_convert), str(tmp_path / name), str(tmp_path / f"{name}.mla")],
            capture_output=True,
            text=True,
            env=_reference_env(),
        )
        assert proc.returncode == 0, proc.stderr

    xray = MLArray.open(tmp_path / "xray.nrrd.mla")
    assert xray.meta.spatial.coord_system is None  # as the reference writes a 2-D NRRD
    assert orientation_for(xray.meta, 2).world_frame == "LPS"
    for out in ("back.nrrd", "back.mha"):
        notes: list[str] = []
        to_file(xray, tmp_path / out, notes=notes)
        assert any("taken as LPS" in n for n in notes), notes
        back = sitk.ReadImage(str(tmp_path / out))
        _same_world_2d(
            sitk.GetArrayFromImage(im).T,
            _sitk_affine_2d(im),
            sitk.GetArrayFromImage(back).T,
            _sitk_affine_2d(back),
        )

    flat_ref = MLArray.open(tmp_path / "flat.nii.gz.mla")
    assert flat_ref.meta.spatial.coord_system == "LP+"  # the 2-D array's own axis codes
    assert flat_ref.meta.spatial.world_frame == "RAS"
    assert geometry.anatomical_frame("RA+", np.eye(3)) == "RAS"
    orient = orientation_for(flat_ref.meta, 2)
    assert orient.world_frame == "RAS" and not orient.notes
    notes = []
    to_file(flat_ref, tmp_path / "flat_back.nii.gz", notes=notes)
    assert notes == []  # recognised, not assumed
    back = nib.load(tmp_path / "flat_back.nii.gz")
    assert back.shape[:2] in (flat.shape, flat.shape[::-1])
    back_aff = back.affine[np.ix_([0, 1, 3], [0, 1, 3])]
    back_data = np.asarray(back.dataobj).reshape(back.shape[:2])
    _same_world_2d(flat, aff[np.ix_([0, 1, 3], [0, 1, 3])], back_data, back_aff)


def _exported_world(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data in index order i, j, k, RAS affine) of a written file or DICOM series folder,
    as SimpleITK reads it."""
    import SimpleITK as sitk

    from tests._worldcheck import sitk_world

    if out.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
        return sitk_world(reader.Execute())
    return sitk_world(sitk.ReadImage(str(out)))


def test_big_endian_file_of_the_reference_exports_to_every_format(tmp_path):
    """The reference's conversion of a big-endian NIfTI (nibabel's anatomical.nii) keeps its
    ``>i2`` dtype; exporting it to NRRD, MetaImage or DICOM died with SimpleITK's "dtype: >i2
    is not supported" (the file not named; a traceback from ``mlarray_convert``). Every
    format now holds the same voxel values at the same world points."""
    ref_convert = _reference_converter()
    proc = subprocess.run(
        [str(ref_convert), str(NIB_DATA / "anatomical.nii"), str(tmp_path / "ref.mla")],
        capture_output=True,
        text=True,
        env=_reference_env(),
    )
    assert proc.returncode == 0, proc.stderr
    ref = tmp_path / "ref.mla"
    assert MLArray.open(ref).dtype == np.dtype(">i2")
    ref_data, ref_aff = reference_world(ref)
    ours_exe = Path(sys.executable).parent / "mlarray_convert"
    for name in ("out.nii.gz", "out.nii", "out.nrrd", "out.mha", "out.mhd", "dcm"):
        out = tmp_path / name
        if name == "dcm":
            run_cli("convert", ref, out, "--to", "dicom", check_rc=0)
        else:
            run_cli("convert", ref, out, check_rc=0)
        assert_same_world(ref_data, ref_aff, *_exported_world(out), atol=1e-3)
    # the reference's own entry point, as the reference converts this file
    if ours_exe.exists():
        proc = subprocess.run(
            [str(ours_exe), str(ref), str(tmp_path / "entry.nrrd")], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert_same_world(ref_data, ref_aff, *_exported_world(tmp_path / "entry.nrrd"), atol=1e-3)
