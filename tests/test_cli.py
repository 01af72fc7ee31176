"""The installed ``mlarray`` commands (and the reference names), run in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mlarray import MLArray
from mlarray.cli import header_info, main
from mlarray.convert import ConversionError, convert_file, from_file
from tests._children import peak_rss_growth
from tests._worldcheck import (
    MLARRAY_EXE,
    NIB_DATA,
    assert_same_world,
    make_dicom_series,
    oblique_sitk,
    ours,
    run_cli,
)

BIN = MLARRAY_EXE.parent


def one_line_error(proc: subprocess.CompletedProcess, name: str) -> str:
    """The error output is one line naming ``name``, without a traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1, proc.stderr
    assert name in errors[0], errors[0]
    return errors[0]


def test_help_everywhere(capsys):
    proc = run_cli("--help", check_rc=0)  # the installed executable
    assert proc.stdout.startswith("usage: mlarray")
    for command in ("info", "convert", "recompress", "stats", "preview"):  # in-process: faster
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: mlarray {command}") and "--help" in out


def test_reference_entry_points_help():
    for exe, words in (("mlarray_header", "filepath"), ("mlarray_convert", "save_filepath")):
        proc = run_cli("--help", exe=BIN / exe, check_rc=0)
        assert words in proc.stdout


def test_convert_nifti_info_and_back(tmp_path):
    src = NIB_DATA / "anatomical.nii"
    run_cli("convert", src, tmp_path / "anat.mla", check_rc=0)
    img = MLArray.open(tmp_path / "anat.mla")
    ref = nib.load(src)
    data, aff = ours(img)
    assert_same_world(np.asarray(ref.dataobj), ref.affine, data, aff, atol=1e-6)

    text = run_cli("info", tmp_path / "anat.mla", check_rc=0).stdout
    assert "(25, 41, 33) int16" in text and "coord_system RAS" in text
    assert "spatial_z, spatial_y, spatial_x" in text
    info = json.loads(run_cli("info", "--json", tmp_path / "anat.mla", check_rc=0).stdout)
    assert info["shape"] == [25, 41, 33] and info["chunks"] == list(img.chunks)
    assert info["meta"]["spatial"]["coord_system"] == "RAS"
    assert info["codec"] == "LZ4" and info["ratio"] > 1  # the image default (mlarray.layout)

    # existing output: usage error, one line naming it; --overwrite replaces
    proc = run_cli("convert", src, tmp_path / "anat.mla", check_rc=2)
    assert "--overwrite" in one_line_error(proc, "anat.mla")
    run_cli("convert", src, tmp_path / "anat.mla", "--overwrite", "--codec", "zstd", check_rc=0)
    assert MLArray.open(tmp_path / "anat.mla").meta.blosc2.cparams["codec"] == 5

    for out in ("back.nii.gz", "back.nrrd"):
        run_cli("convert", tmp_path / "anat.mla", tmp_path / out, check_rc=0)
        b = sitk.ReadImage(str(tmp_path / out))
        b_data = sitk.GetArrayFromImage(b).transpose(2, 1, 0)
        d = np.array(b.GetDirection()).reshape(3, 3) * np.array(b.GetSpacing())
        b_aff = np.eye(4)
        b_aff[:3, :3], b_aff[:3, 3] = d, b.GetOrigin()
        b_aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ b_aff  # ITK reads LPS
        assert_same_world(np.asarray(ref.dataobj), ref.affine, b_data, b_aff, atol=1e-4)

    run_cli("convert", tmp_path / "anat.mla", tmp_path / "anat_dicom", "--to", "dicom", check_rc=0)
    assert len(list((tmp_path / "anat_dicom").glob("*.dcm"))) == 25
    d_data, d_aff = ours(from_file(tmp_path / "anat_dicom"))
    assert_same_world(np.asarray(ref.dataobj), ref.affine, d_data, d_aff, atol=1e-4)


def test_bad_input_one_line_and_exit_codes(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    proc = run_cli("convert", tmp_path / "broken.nii.gz", tmp_path / "b.mla", check_rc=1)
    one_line_error(proc, "broken.nii.gz")
    assert not (tmp_path / "b.mla").exists()
    proc = run_cli("convert", tmp_path / "broken.nii.gz", tmp_path / "b.mla", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr

    proc = run_cli("convert", NIB_DATA / "anatomical.nii", tmp_path / "no" / "a.mla", check_rc=2)
    one_line_error(proc, str(tmp_path / "no"))
    proc = run_cli("convert", tmp_path / "nothing*.nii.gz", tmp_path, check_rc=2)
    one_line_error(proc, "nothing*.nii.gz")
    proc = run_cli("info", tmp_path / "missing.mla", check_rc=2)
    one_line_error(proc, "missing.mla")
    (tmp_path / "fake.mla").write_bytes(b"not a blosc2 frame at all")
    proc = run_cli("info", tmp_path / "fake.mla", check_rc=1)
    one_line_error(proc, "fake.mla")


def test_dataset_folder_jobs_failures_rerun_recompress_stats(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(3):
        a = rng.integers(-100, 1000, (5 + i, 6, 7)).astype(np.int16)
        aff = np.diag([1.0 + i, 2.0, 3.0, 1.0])
        aff[:3, 3] = [i, -i, 2 * i]
        nib.save(nib.Nifti1Image(a, aff), data / f"case_{i}.nii.gz")
        arrays[f"case_{i}"] = (a, aff)
    oblique_sitk(data / "sub", ".nrrd")
    make_dicom_series(data / "sub" / "ct_series", n_slices=3)
    (data / "sub" / "damaged.nii.gz").write_bytes(b"\x1f\x8b\x08 no")
    (data / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()

    proc = run_cli("convert", data, out, "--jobs", "2", check_rc=1)
    assert "damaged.nii.gz" in proc.stdout and "failed" in proc.stdout
    assert "6 files: 5 done, 0 skipped, 1 failed" in proc.stdout, proc.stdout
    for name, (a, aff) in arrays.items():
        data_o, aff_o = ours(MLArray.open(out / f"{name}.mla"))
        assert_same_world(a, aff, data_o, aff_o, atol=1e-6)
    assert (out / "sub" / "oblique.mla").is_file()
    assert (out / "sub" / "ct_series.mla").is_file()
    assert not (out / "sub" / "damaged.mla").exists()
    assert not list(out.rglob(".*"))  # no temporary files left

    proc = run_cli("convert", data, out, check_rc=1)  # rerun: finished files skipped
    assert "6 files: 0 done, 5 skipped, 1 failed" in proc.stdout, proc.stdout

    # recompress all of them in parallel with another codec; data unchanged; rerun skips
    before = {p: MLArray.open(p)[...] for p in out.rglob("*.mla")}
    run_cli("recompress", out, "--codec", "zstd", "--clevel", "3", "--jobs", "2", check_rc=0)
    for p, arr in before.items():
        img = MLArray.open(p)
        assert img.meta.blosc2.cparams["codec"] == 5 and img.meta.blosc2.cparams["clevel"] == 3
        np.testing.assert_array_equal(img[...], arr)
    proc = run_cli("recompress", out, "--codec", "zstd", "--clevel", "3", check_rc=0)
    assert "5 skipped" in proc.stdout
    proc = run_cli("recompress", str(out / "*.mla"), "--patch-size", "4", check_rc=0)
    assert "3 files: 3 done" in proc.stdout
    assert MLArray.open(out / "case_0.mla").meta.blosc2.patch_size == [4, 4, 4]

    # stats: streaming, into meta.stats; the data are untouched
    run_cli("stats", out / "case_1.mla", out / "sub", check_rc=0)
    img = MLArray.open(out / "case_1.mla")
    a = arrays["case_1"][0]
    assert img.meta.stats.min == a.min() and img.meta.stats.max == a.max()
    assert img.meta.stats.mean == pytest.approx(a.mean())
    np.testing.assert_array_equal(img[...], before[out / "case_1.mla"])
    proc = run_cli("stats", out / "case_1.mla", check_rc=0)
    assert "skipped" in proc.stdout

    # back to NIfTI, folder mode
    back = tmp_path / "back"
    back.mkdir()
    run_cli("convert", str(out / "case_*.mla"), back, "--to", "nii.gz", check_rc=0)
    for name, (a, aff) in arrays.items():
        b = nib.load(back / f"{name}.nii.gz")
        assert_same_world(a, aff, np.asarray(b.dataobj), b.affine, atol=1e-5)


def _marker_volume(tmp_path: Path, name: str, frame: str, order: str) -> Path:
    """A 3-D image with bright bars at the patient's right, anterior and superior sides.

    Each bar crosses one mid-plane: low x is right, low y anterior, high z superior.
    """
    n = (20, 24, 28)  # x, y, z voxels in LPS index order
    lps = np.ones(n, np.float32)
    lps[1:5, 1:5, 12:27] = 100.0  # axial mid-plane (z 14): right-anterior
    lps[1:5, 8:16, 21:27] = 100.0  # coronal mid-plane (y 12): right-superior
    lps[8:12, 1:5, 21:27] = 100.0  # sagittal mid-plane (x 10): anterior-superior
    if frame == "LPS":
        data, direction = lps, np.eye(3)
    else:  # the same anatomy stored in RAS index order with a RAS frame
        data, direction = lps[::-1, ::-1, :], np.eye(3)
    if order == "zyx":  # array axis 0 runs along world z: direction columns reversed
        data, direction = data.transpose(2, 1, 0), direction[:, ::-1]
    labels = ["spatial_x", "spatial_y", "spatial_z"]
    if order == "zyx":
        labels = labels[::-1]
    path = tmp_path / name
    from mlarray import Meta
    from mlarray.meta import MetaSpatial

    meta = Meta(spatial=MetaSpatial(axis_labels=labels, coord_system=frame))
    MLArray(np.ascontiguousarray(data), spacing=[1, 1, 1], direction=direction, meta=meta).save(
        path
    )
    return path


@pytest.mark.parametrize(("frame", "order"), [("LPS", "zyx"), ("RAS", "xyz")], ids=str)
def test_preview_radiological_orientation_and_overlays(tmp_path, frame, order):
    from PIL import Image

    path = _marker_volume(tmp_path, "m.mla", frame, order)
    img = MLArray.open(path)
    seg = (img[...] > 50).astype(np.uint8)
    MLArray(seg, meta=img.meta.copy()).save(tmp_path / "seg.mla")
    run_cli("preview", path, "-o", tmp_path / "p.png", "--size", "96", check_rc=0)
    png = np.asarray(Image.open(tmp_path / "p.png").convert("L"), dtype=np.float64)
    assert png.shape[0] == 96  # the tallest panel (z: 28 mm); one pixel scale for all
    px = 96 / 28
    w, h = round(20 * px), round(24 * px)  # axial: x 20 mm across, y 24 mm down
    assert png.shape[1] == w + 4 + w + 4 + h
    # axial panel: the marker (patient right, anterior) sits top-left, because radiology
    # shows the patient's right on the left
    axial = png[:h, :w]
    top_left = axial[10:25, 8:20].mean()
    top_right = axial[10:25, -20:-8].mean()
    bottom_left = axial[-25:-10, 8:20].mean()
    assert top_left > 3 * max(top_right, bottom_left, 1), (top_left, top_right, bottom_left)
    # coronal panel (x across, z up): marker top-left (right, superior)
    cor = png[:, w + 4 : 2 * w + 4]
    assert cor[8:20, 5:14].mean() > 3 * max(cor[-20:-8, 5:14].mean(), cor[8:20, -14:-5].mean(), 1)
    # sagittal panel (y across with anterior on the left, z up): marker top-left
    sag = png[:, 2 * w + 8 :]
    assert sag[8:20, 5:14].mean() > 3 * max(sag[-20:-8, 5:14].mean(), sag[8:20, -14:-5].mean(), 1)

    run_cli("preview", path, "-o", tmp_path / "o.png", "--mask", tmp_path / "seg.mla", check_rc=0)
    rgb = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"), dtype=np.int64)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 60).any()  # coloured overlay drawn
    proc = run_cli("preview", path, "-o", tmp_path / "o.png", check_rc=2)
    one_line_error(proc, "o.png")


def test_preview_of_a_colour_picture_draws_its_colours(tmp_path):
    """An RGB picture stored as ``mlarray convert`` stores colour DICOM/NIfTI (8-bit
    colours on the last axis) is previewed in its colours, not one component in grey."""
    from PIL import Image

    from mlarray import Meta
    from mlarray.meta import MetaSpatial

    rgb = np.zeros((10, 30, 30, 3), np.uint8)
    rgb[:, :, :15, 0] = 220  # the stored half x < 15 red, the other half green
    rgb[:, :, 15:, 1] = 200
    meta = Meta(
        spatial=MetaSpatial(
            axis_labels=["spatial_z", "spatial_y", "spatial_x", "channel"], coord_system="LPS"
        )
    )
    MLArray(rgb, spacing=[1, 1, 1], meta=meta).save(tmp_path / "c.mla")
    run_cli("preview", tmp_path / "c.mla", "-o", tmp_path / "c.png", "--size", "64", check_rc=0)
    png = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"), dtype=np.int64)
    axial = png[10:54, 5:59]  # the axial panel (30 x 30 mm at 64 px per 30 mm)
    red = (axial[..., 0] > 150) & (axial[..., 1] < 60) & (axial[..., 2] < 60)
    green = (axial[..., 1] > 150) & (axial[..., 0] < 60) & (axial[..., 2] < 60)
    assert red.sum() > 300 and green.sum() > 300, (red.sum(), green.sum())


def test_an_input_named_twice_is_processed_once_not_refused(tmp_path):
    """A folder and a file in it, a glob and a file it matches, one file twice: every
    file is processed once (was: the whole run refused, "no such .mla file")."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    for name in ("data/a.mla", "data/sub/b.mla"):
        MLArray(np.ones((4, 8, 8), np.int16)).save(tmp_path / name)
    a, b, data = tmp_path / "data" / "a.mla", tmp_path / "data" / "sub" / "b.mla", tmp_path / "data"
    out = run_cli("info", "--json", a, a, check_rc=0).stdout
    assert len(json.loads(out)) == 1
    out = run_cli("info", "--json", data, b, a, check_rc=0).stdout
    assert sorted(Path(x["path"]).name for x in json.loads(out)) == ["a.mla", "b.mla"]
    run_cli("stats", data, data / "sub", check_rc=0)
    assert MLArray.open(b).meta.stats.max == 1
    run_cli("recompress", str(data / "*.mla"), a, "--codec", "zstd", check_rc=0)
    (tmp_path / "out").mkdir()
    run_cli("convert", data, b, tmp_path / "out", check_rc=0)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "a.nii.gz",
        "b.nii.gz",
    ]


def test_convert_of_one_file_with_json_prints_its_row_as_json(tmp_path):
    """``mlarray convert IN OUT --json`` prints the JSON object of the row folder mode
    prints for that file (was: the text line ``IN -> OUT``), also for a failure."""
    src = tmp_path / "one.mla"
    MLArray(np.ones((4, 8, 8), np.int16)).save(src)
    proc = run_cli("convert", src, tmp_path / "one.nii.gz", "--json", check_rc=0)
    row = json.loads(proc.stdout)
    assert row["status"] == "ok" and Path(row["dst"]) == tmp_path / "one.nii.gz"
    assert row["in_bytes"] == src.stat().st_size
    assert row["out_bytes"] == (tmp_path / "one.nii.gz").stat().st_size
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    proc = run_cli("convert", bad, tmp_path / "bad.mla", "--json", check_rc=1)
    row = json.loads(proc.stdout)
    assert row["status"] == "failed" and "bad.nii.gz" in row["message"]
    assert not (tmp_path / "bad.mla").exists()


def test_dicom_export_run_again_says_exists_or_replaces_the_series(tmp_path):
    """``mlarray convert case.mla case_dicom --to dicom`` run again: "exists already"
    (exit 2), and with --overwrite the series is replaced (was: a second series nested
    in case_dicom/case/, the old one left where converting back reads it). A folder
    holding anything else still receives the series inside it."""
    case, out = tmp_path / "case.mla", tmp_path / "case_dicom"
    first = np.arange(4 * 16 * 16, dtype=np.int16).reshape(4, 16, 16)
    MLArray(first, spacing=(2, 1, 1)).save(case)
    run_cli("convert", case, out, "--to", "dicom", check_rc=0)
    names = sorted(p.name for p in out.iterdir())
    proc = run_cli("convert", case, out, "--to", "dicom", check_rc=2)
    assert "exists already" in proc.stderr and "case_dicom" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == names  # nothing nested, nothing lost
    MLArray(first[::-1].copy(), spacing=(2, 1, 1)).save(case)  # new content
    run_cli("convert", case, out, "--to", "dicom", "--overwrite", check_rc=0)
    assert all(p.is_file() for p in out.iterdir())
    run_cli("convert", out, tmp_path / "back.mla", check_rc=0)
    np.testing.assert_array_equal(MLArray.open(tmp_path / "back.mla")[...], first[::-1])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    run_cli("convert", case, mine, "--to", "dicom", check_rc=0)
    assert (mine / "notes.txt").read_text() == "keep" and (mine / "case").is_dir()


def test_dicom_export_overwrite_never_replaces_a_folder_holding_other_files(tmp_path):
    """A DICOM export replaces an existing series folder, an empty folder, nothing else:
    ``to_file(img, folder, format="dicom")`` (overwrite is its default) and ``mlarray
    convert IN/ OUT/ --to dicom --overwrite`` deleted whatever the folder held (was: the
    user's OUT/case/notes.txt gone, the folder replaced by the series)."""
    from mlarray.convert import to_file

    img = MLArray(np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8), spacing=(2, 1, 1))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConversionError, match=r"mine.*other than a DICOM series"):
        to_file(img, mine, format="dicom")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(ConversionError, match="not a folder"):
        to_file(img, afile, format="dicom")
    assert afile.read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    to_file(img, empty, format="dicom")
    assert len(list(empty.iterdir())) == 3
    flipped = MLArray(img[...][::-1].copy(), spacing=(2, 1, 1))
    to_file(flipped, empty, format="dicom")
    # the new series, voxel for voxel at its world positions (GDCM may order the slices
    # either way along the normal)
    # (the image has no coord_system: its geometry is taken as RAS)
    flipped_world = (flipped[...], np.asarray(flipped.affine, dtype=np.float64))
    assert_same_world(*flipped_world, *ours(from_file(empty)), atol=1e-4)
    # folder mode: OUT/case/ is the output of data/case.mla, the user's notes are in it
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    img.save(data / "case.mla")
    (out / "case").mkdir()
    (out / "case" / "notes.txt").write_text("keep")
    proc = run_cli("convert", data, out, "--to", "dicom", "--overwrite", check_rc=1)
    assert "other than a DICOM series" in proc.stdout + proc.stderr
    assert [p.name for p in (out / "case").iterdir()] == ["notes.txt"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_reference_named_commands(tmp_path):
    nrrd = oblique_sitk(tmp_path, ".nrrd")
    run_cli(nrrd, tmp_path / "a.mla", exe=BIN / "mlarray_convert", check_rc=0)
    header = json.loads(run_cli(tmp_path / "a.mla", exe=BIN / "mlarray_header", check_rc=0).stdout)
    # the reference converter's layout: an affine into RAS, the array's axis codes
    affine = np.asarray(header["spatial"]["affine"])
    from mlarray.geometry import axis_codes

    assert header["spatial"]["coord_system"] == axis_codes(affine) + "+"
    assert header["_image_meta_format"] == {"image_meta_format": "nrrd"} or header[
        "_image_meta_format"
    ] in ("nrrd",)
    assert header["bbox"] is None and header["_has_array"] is True
    run_cli(tmp_path / "a.mla", tmp_path / "b.nii.gz", exe=BIN / "mlarray_convert", check_rc=0)
    proc = run_cli(nrrd, tmp_path / "c.nii.gz", exe=BIN / "mlarray_convert", check_rc=1)
    assert "Traceback" not in proc.stderr and ".mla" in proc.stderr


def test_reference_package_in_the_same_environment_is_reported(tmp_path):
    """A dist named ``mlarray`` owning the ``mlarray`` package is detected and explained."""
    site = tmp_path / "site"
    info = site / "mlarray-0.0.54.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlarray\nVersion: 0.0.54\n")
    (info / "RECORD").write_text("mlarray/__init__.py,,\nmlarray/cli.py,,\n")
    nrrd = oblique_sitk(tmp_path, ".nrrd")
    run_cli("convert", nrrd, tmp_path / "a.mla", check_rc=0)
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run(
        [str(MLARRAY_EXE), "info", str(tmp_path / "a.mla")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "reference package mlarray 0.0.54 is installed" in proc.stderr
    assert "pip uninstall" in proc.stderr
    clean = run_cli("info", tmp_path / "a.mla", check_rc=0)
    assert "reference package" not in clean.stderr
    assert sys.executable  # the same interpreter runs both


def test_folder_mode_edge_cases_in_process(tmp_path, capsys):
    data = tmp_path / "in"
    data.mkdir()
    im = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    nib.save(im, data / "a.nii.gz")
    nib.save(im, data / "a.nii")
    (data / "out").mkdir()
    assert main(["convert", str(data), str(data / "out")]) == 2  # both would write out/a.mla
    err = capsys.readouterr().err
    assert "would both be written" in err and "a.nii" in err
    (data / "a.nii").unlink()
    assert main(["convert", str(data), str(data / "out")]) == 0
    # a rerun does not take the outputs inside the input folder for inputs
    assert main(["convert", str(data), str(data / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 files: 0 done, 1 skipped, 0 failed" in out
    assert sorted(p.name for p in (data / "out").iterdir()) == ["a.mla"]


def test_info_reads_the_header_only(tmp_path):
    """Damaged chunk data does not stop ``info``: it never decompresses the array."""
    from mlarray import Meta

    a = np.random.default_rng(0).integers(0, 1000, (64, 64, 64)).astype(np.int16)
    meta = Meta(is_seg=False)
    meta.add_bbox([[1, 5], [2, 6], [3, 7]], score=0.5, label="nodule")
    MLArray(a, meta=meta, chunk_size=(16, 64, 64), block_size=(8, 32, 32), patch_size=None).save(
        tmp_path / "a.mla"
    )
    raw = bytearray((tmp_path / "a.mla").read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4096] = bytes(4096)  # wipe compressed data in the middle chunks
    (tmp_path / "a.mla").write_bytes(bytes(raw))
    try:  # the data really are damaged: reading them fails or gives other values
        damaged = not np.array_equal(MLArray.open(tmp_path / "a.mla")[...], a)
    except Exception:
        damaged = True
    assert damaged
    text = run_cli("info", tmp_path / "a.mla", check_rc=0).stdout
    assert "(64, 64, 64) int16" in text
    assert "boxes        1 labels ['nodule']" in text
    assert "chunks       (16, 64, 64)  blocks (8, 32, 32)" in text


def test_folder_mode_converts_images_beside_dicom_files_and_series_below_a_dicomdir(
    tmp_path, capsys
):
    import shutil

    from pydicom.data import get_testdata_file

    raw = tmp_path / "raw"
    (raw / "case1" / "extra").mkdir(parents=True)
    (raw / "case2").mkdir()
    rng = np.random.default_rng(0)
    images = ["case1/ct.nii.gz", "case1/seg.nii.gz", "case1/extra/ct.nii.gz", "case2/ct.nii.gz"]
    for name in images:
        a = rng.integers(0, 1000, (4, 5, 6)).astype(np.int16)
        nib.save(nib.Nifti1Image(a, np.eye(4)), raw / name)
    shutil.copy(get_testdata_file("CT_small.dcm"), raw / "case1" / "scout.dcm")  # a stray file
    out = tmp_path / "out"
    out.mkdir()
    assert main(["convert", str(raw), str(out), "--no-seg"]) == 0
    report = capsys.readouterr().out
    assert "5 files: 5 done, 0 skipped, 0 failed" in report, report
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mla"))
    expected = [n.replace(".nii.gz", ".mla") for n in images] + ["case1.mla"]
    assert written == sorted(expected)
    assert MLArray.open(out / "case1.mla").meta._image_meta_format.image_meta_format == "dicom"

    # a CD / PACS export: DICOMDIR at the root, series in subfolders, files without a suffix
    cd = tmp_path / "cd"
    cd.mkdir()
    shutil.copy(get_testdata_file("DICOMDIR"), cd / "DICOMDIR")
    for series in ("SE0", "SE1"):
        folder = cd / "DICOM" / "ST0" / series
        make_dicom_series(folder, n_slices=3)
        for i, f in enumerate(sorted(folder.iterdir())):
            f.rename(folder / f"IM{i}")
    cdout = tmp_path / "cdout"
    cdout.mkdir()
    assert main(["convert", str(cd), str(cdout)]) == 0
    written = sorted(p.relative_to(cdout).as_posix() for p in cdout.rglob("*.mla"))
    assert written == ["DICOM/ST0/SE0.mla", "DICOM/ST0/SE1.mla"]
    assert MLArray.open(cdout / "DICOM/ST0/SE0.mla").shape == (3, 128, 128)


def test_convert_names_a_missing_or_odd_input_not_the_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "case_0001.nii.gz", "case_0001.mla"]) == 2
    err = capsys.readouterr().err
    assert "case_0001.nii.gz: no such file or folder" in err and "output folder" not in err
    os.mkfifo(tmp_path / "pipe.nii.gz")  # would block nibabel forever
    assert main(["convert", "pipe.nii.gz", "pipe.mla"]) == 2
    assert "pipe.nii.gz: not a regular file or folder" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert main(["convert", "images", "images.mla"]) == 2
    err = capsys.readouterr().err
    assert "images.mla: the output folder does not exist" in err and "the folder images" in err
    make_dicom_series(tmp_path / "x.nrrd", n_slices=3)  # a series folder with an odd name
    assert main(["convert", "x.nrrd", "x.mla"]) == 0
    assert MLArray.open(tmp_path / "x.mla").shape == (3, 128, 128)


def test_convert_into_the_input_folder_itself(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    a = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(a, np.eye(4)), raw / f"{name}.nii.gz")
    assert main(["convert", str(raw), str(raw), "--no-seg"]) == 0
    assert "2 files: 2 done" in capsys.readouterr().out
    np.testing.assert_array_equal(MLArray.open(raw / "a.mla").to_numpy(), a.transpose(2, 1, 0))
    assert main(["convert", str(raw / "*.nii.gz"), str(raw)]) == 0  # a rerun: outputs exist
    assert "2 files: 0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in raw.iterdir()) == ["a.mla", "a.nii.gz", "b.mla", "b.nii.gz"]


def test_rerun_into_the_input_folder_never_replaces_an_input(tmp_path, capsys):
    # .mla files exported to NIfTI beside them: a rerun (with --overwrite too) must not take
    # the exports for images to convert back over the user's originals, and goes on with
    # what is new in either direction
    d = tmp_path / "cases"
    d.mkdir()
    a = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    for name in ("a", "b"):
        MLArray(a, spacing=[1.0, 2.0, 3.0], meta={"source": {"case": name}}).save(d / f"{name}.mla")
    originals = {n: (d / f"{n}.mla").read_bytes() for n in ("a", "b")}
    assert main(["convert", str(d), str(d)]) == 0
    assert "2 files: 2 done" in capsys.readouterr().out
    assert main(["convert", str(d), str(d), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "0 done, 2 skipped, 0 failed" in out and "also an input" in out
    assert {n: (d / f"{n}.mla").read_bytes() for n in ("a", "b")} == originals
    # a new .mla beside them is exported, the pairs stay as they are
    MLArray(a, spacing=[1.0, 2.0, 3.0]).save(d / "c.mla")
    nifti_a = (d / "a.nii.gz").read_bytes()
    assert main(["convert", str(d), str(d), "--overwrite"]) == 0
    assert "3 files: 1 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert (d / "c.nii.gz").exists() and (d / "a.nii.gz").read_bytes() == nifti_a
    # a new NIfTI beside them turns the run around: it becomes an .mla, the pairs stay
    nib.save(nib.Nifti1Image(a, np.eye(4)), d / "z.nii.gz")
    assert main(["convert", str(d), str(d), "--overwrite", "--no-seg"]) == 0
    assert "4 files: 1 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert {n: (d / f"{n}.mla").read_bytes() for n in ("a", "b")} == originals
    np.testing.assert_array_equal(MLArray.open(d / "z.mla").to_numpy(), a.transpose(2, 1, 0))


def test_console_scripts_say_so_when_the_reference_replaced_our_files(tmp_path):
    # the reference package installed after this project replaces mlarray/cli.py: the
    # scripts (outside the mlarray package) name the cause and the fix, not an ImportError
    fake = tmp_path / "site" / "mlarray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("def cli_print_header():\n    pass\n")  # no main()
    code = "from napari_mlarray._console import main; raise SystemExit(main())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "mlarray: error: cannot start" in r.stderr and "pip uninstall -y mlarray" in r.stderr
    # with this project's files the same script runs the command line
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "convert" in r.stdout


def test_an_unforeseen_error_is_one_line_naming_its_type(tmp_path, capsys, monkeypatch):
    import mlarray.cli as cli

    def broken(args):
        raise KeyError("spacing")

    monkeypatch.setattr(cli, "_cmd_info", broken)
    assert main(["info", str(tmp_path / "x.mla")]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "mlarray info: error: KeyError: 'spacing'" in err and "--debug" in err
    assert "Traceback" not in err
    assert main(["info", "--debug", str(tmp_path / "x.mla")]) == cli.EXIT_FAILED
    assert "Traceback" in capsys.readouterr().err


_CLI_RSS_SCRIPT = """
import sys
from mlarray.cli import main

*argv, small, big = sys.argv[1:]
assert main([*argv, small]) == 0  # every module the command needs imported
with open("/proc/self/clear_refs", "w") as fh:  # VmHWM := VmRSS now
    fh.write("5")
before = status("VmRSS")
assert main([*argv, big]) == 0
"""


def test_recompress_and_stats_commands_keep_the_file_out_of_resident_memory(tmp_path):
    """``mlarray recompress``/``stats`` read their file once, a few chunks at a time, as the
    library's save and compute_stats do: the compressed file does not stay resident (a
    cluster that limits a job's RSS would otherwise need memory for the whole file)."""
    src = tmp_path / "big.mla"
    # 1 MiB chunks: what the statistics hold per chunk stays small beside the file
    a = MLArray.create(src, (256, 512, 512), np.int16, patch_size=None, chunk_size=(2, 512, 512))
    rng = np.random.default_rng(0)
    for z in range(0, 256, 16):  # noise, made a few chunks at a time: it does not compress
        a[z : z + 16] = rng.integers(-(2**15), 2**15, (16, 512, 512), dtype=np.int16)
    a.close()
    size = src.stat().st_size
    assert size > 120e6
    small = tmp_path / "small.mla"
    MLArray(np.arange(4096, dtype=np.int16).reshape(16, 16, 16)).save(small)
    for argv in (["recompress", "--codec", "zstd", "--clevel", "1"], ["stats", "--overwrite"]):
        grown = peak_rss_growth(_CLI_RSS_SCRIPT, *argv, small, src)
        assert grown < size / 3, (
            f"mlarray {argv[0]} grew the peak RSS by {grown / 1e6:.0f} MB "
            f"({size / 1e6:.0f} MB file)"
        )
    assert header_info(src)["codec"] == "ZSTD"  # both did their work
    assert MLArray.open(src).meta.stats.min == -(2**15)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_a_zero_voxel_size_is_refused_naming_the_file_for_every_format(tmp_path, capsys, suffix):
    """A spacing with a 0 (the library writes and reads it) cannot place voxels in any
    image format: every export refuses it with one line naming the file, and writes
    nothing (NIfTI died in nibabel with a traceback naming no file)."""
    src = tmp_path / "zero.mla"
    MLArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6), spacing=[1.0, 0.0, 1.0]).save(src)
    out = tmp_path / f"zero{suffix}"
    assert main(["convert", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"mlarray: error: {src}: the geometry has a zero voxel size", err
    with pytest.raises(ConversionError, match="zero voxel size") as caught:
        convert_file(src, out)
    assert str(src) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero.mla"]


def test_info_shows_a_filter_id_blosc2_has_no_name_for_as_its_number(tmp_path, capsys):
    """A frame header whose filter pipeline lists an id blosc2 does not know (one byte
    damaged, or a newer writer) still gets its header shown: the id as a number (info
    died with an AttributeError traceback and showed nothing)."""
    ok = tmp_path / "ok.mla"
    x = np.arange(12 * 16 * 20, dtype=np.int16).reshape(12, 16, 20)
    MLArray(x, spacing=[1, 1, 1]).save(ok)
    raw = bytearray(ok.read_bytes())
    assert raw[72] == 0  # the frame header's filter pipeline: a NOFILTER slot
    raw[72] = 0xFF
    odd = tmp_path / "odd.mla"
    odd.write_bytes(bytes(raw))
    assert np.array_equal(MLArray.open(odd)[...], x)  # the chunks carry their own filters
    assert main(["info", "--json", str(ok), str(odd)]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [i["filters"] for i in infos] == [["SHUFFLE"], ["255", "SHUFFLE"]]
    assert main(["info", str(odd)]) == 0
    assert "filters 255,SHUFFLE" in capsys.readouterr().out


def test_storage_option_help_says_what_convert_and_recompress_really_write(tmp_path, capsys):
    """``--help`` states the defaults the commands use: convert picks codec and filter by
    content, recompress keeps the file's own settings (the help claimed lz4hc, level 8
    and shuffle, the reference package's defaults, for both)."""

    def help_of(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    def written(path: Path) -> tuple:
        h = header_info(path)
        return h["codec"], h["clevel"], h["filters"]

    text = help_of("convert")
    assert "(default by content: lz4 for images, lz4hc for label maps)" in text
    assert "level (default 9)" in text
    assert "default shuffle; none for one-byte data such as uint8 when no other" in text
    x = (np.arange(32**3) % 200).reshape(32, 32, 32)
    for dtype, options, expected in (
        (np.int16, [], ("LZ4", 9, ["SHUFFLE"])),
        (np.uint8, [], ("LZ4", 9, [])),
        (np.uint8, ["--seg"], ("LZ4HC", 9, [])),
        (np.int16, ["--seg"], ("LZ4HC", 9, ["SHUFFLE"])),
        (np.uint8, ["--clevel", "5"], ("LZ4", 5, ["SHUFFLE"])),
    ):
        src = tmp_path / f"{np.dtype(dtype).name}.nii.gz"
        nib.save(nib.Nifti1Image(x.astype(dtype), np.eye(4)), src)
        assert main(["convert", str(src), str(tmp_path / "o.mla"), "--overwrite", *options]) == 0
        assert written(tmp_path / "o.mla") == expected, (dtype, options)

    text = help_of("recompress")
    for option in ("Blosc2 codec", "level", "byte filter"):
        assert f"{option} (default: the file's current one)" in text
    assert "lz4hc" not in text.replace("{blosclz,lz4,lz4hc,zlib,zstd}", "")
    p = tmp_path / "z.mla"
    MLArray(x.astype(np.uint8), cparams={"codec": "zstd", "clevel": 3, "filters": [2]}).save(p)
    assert main(["recompress", str(p), "--clevel", "5"]) == 0
    assert written(p) == ("ZSTD", 5, ["BITSHUFFLE"])
    assert main(["recompress", str(p), "--codec", "lz4"]) == 0
    assert written(p) == ("LZ4", 5, ["BITSHUFFLE"])


def test_stats_command_names_a_damaged_chunk_and_leaves_the_file(tmp_path, capsys):
    # it decoded without the checksum check: blosc2's "Error while getting the buffer"
    # (or statistics of damaged values) instead of the library's CorruptChunkError
    from mlarray import frame

    p = tmp_path / "case.mla"
    data = np.random.default_rng(0).integers(0, 1000, (40, 48, 48)).astype(np.int16)
    MLArray(data, chunk_size=[20, 24, 24], block_size=[10, 12, 12]).save(p)
    raw = bytearray(p.read_bytes())
    info = frame.inspect_frame(bytes(raw), str(p))
    raw[int(info.chunk_pos[3]) + 40] ^= 0xFF
    p.write_bytes(bytes(raw))
    assert main(["stats", str(p)]) != 0
    out = capsys.readouterr().out
    assert "chunk 3" in out and "checksum" in out
    assert p.read_bytes() == bytes(raw)


def test_stats_of_an_all_nan_or_empty_volume_is_done_with_nothing_to_summarise(tmp_path, capsys):
    """``mlarray stats`` on an all-NaN or a size-0 volume: done, exit 0, the stats stored
    unset (was: the file rewritten, then the row 'failed' with "unsupported format string
    passed to NoneType.__format__", exit 1)."""
    nan, empty = tmp_path / "allnan.mla", tmp_path / "empty.mla"
    MLArray(np.full((4, 5), np.nan, np.float32), patch_size=None).save(nan)
    MLArray(np.zeros((0, 5), np.float32), patch_size=None).save(empty)
    assert main(["stats", str(nan), str(empty)]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out and "NoneType" not in out and out.count("no values") == 2, out
    for p in (nan, empty):
        assert MLArray.open(p).meta.stats.min is None


def test_recompress_writes_chunks_stored_as_one_value_as_such(tmp_path):
    """``mlarray recompress`` of chunks Blosc2 stores as one value (zeros, NaN, a value)
    writes them as that value without decoding them: a 9 KB file claiming 64 GiB of 7s
    is done in about a second (it decoded and compressed 64 GiB: 223 s here; stopped
    after 60 s); a file mixing such chunks with data reads back equal."""
    import blosc2

    claim = tmp_path / "claim.mla"
    shape, chunks = (4096, 4096, 4096), (256, 1024, 1024)
    blosc2.full(shape, 7, dtype=np.uint8, chunks=chunks, blocks=(16, 256, 256), urlpath=str(claim))
    args = [MLARRAY_EXE, "recompress", claim, "--codec", "lz4", "--clevel", "3"]
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=60)
    done = MLArray.open(claim)
    assert done.meta.blosc2.cparams["codec"] == blosc2.Codec.LZ4.value
    assert done[4095, 4095, 4095] == 7 and done[100, 2000, 3000] == 7
    assert done.verify().damaged == [] and claim.stat().st_size < 1 << 20

    mixed = tmp_path / "mixed.mla"
    arr = blosc2.full((45, 37, 29), 9.5, dtype=np.float32, chunks=(16, 16, 16), blocks=(8, 8, 8))
    arr[:16] = 0
    arr[16:32, 16:32] = np.nan
    arr[32:] = np.random.default_rng(0).random((13, 37, 29), dtype=np.float32)
    MLArray(arr[...], chunk_size=(16, 16, 16), block_size=(8, 8, 8), patch_size=None).save(mixed)
    before = MLArray.open(mixed)[...]
    assert main(["recompress", str(mixed), "--codec", "zstd", "--clevel", "1"]) == 0
    np.testing.assert_array_equal(MLArray.open(mixed)[...], before)
    assert MLArray.open(mixed).verify().damaged == []


def test_stats_with_other_percentiles_recomputes_them(tmp_path, capsys):
    # a file with 0.5/99.5 statistics was skipped for --percentiles 1 99 (exit 0), keeping
    # the old window
    p = tmp_path / "case.mla"
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    MLArray(data).save(p)
    assert main(["stats", str(p)]) == 0
    assert MLArray.open(p).meta.stats.percentile_max_key == 99.5
    capsys.readouterr()
    assert main(["stats", str(p), "--percentiles", "1", "99"]) == 0
    assert "1 done" in capsys.readouterr().out
    s = MLArray.open(p).meta.stats
    assert (s.percentile_min_key, s.percentile_max_key) == (1.0, 99.0)
    assert s.percentile_min == pytest.approx(np.percentile(data, 1), abs=1.0)
    assert s.percentile_max == pytest.approx(np.percentile(data, 99), abs=1.0)
    np.testing.assert_array_equal(MLArray.open(p)[...], data)
    # the same percentiles again, or none asked: statistics kept, file untouched
    before = p.read_bytes()
    for extra in (["--percentiles", "1", "99"], []):
        assert main(["stats", str(p), *extra]) == 0
        out = capsys.readouterr().out
        assert "skipped" in out and "percentiles 1 99 already computed" in out, out
    assert p.read_bytes() == before
    assert main(["stats", str(p), "--percentiles", "0.5", "99.5"]) == 0  # back to the default
    assert MLArray.open(p).meta.stats.percentile_max_key == 99.5


def test_preview_size_out_of_range_is_a_usage_error_naming_the_limits(tmp_path, capsys):
    # 0 or -5 wrote an 8-pixel-high PNG with exit 0; --size 100000 allocated until the
    # OOM killer ended it
    from PIL import Image

    from mlarray._preview import PreviewError, write_preview

    p = tmp_path / "pv.mla"
    MLArray(np.random.default_rng(0).random((40, 50, 60), np.float32), spacing=[2, 1, 1]).save(p)
    out = tmp_path / "p.png"
    for size in ("0", "-5", "15", "4097", "100000", "1e3"):
        with pytest.raises(SystemExit) as done:
            main(["preview", str(p), "-o", str(out), "--size", size])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "--size" in err and ("16 to 4096" in err or "integer" in err), err
        assert not out.exists()
    with pytest.raises(PreviewError, match="16 to 4096"):
        write_preview(p, out, size=0)
    assert not out.exists()
    assert main(["preview", str(p), "-o", str(out), "--size", "16"]) == 0
    assert Image.open(out).height == 16
    # a long, thin volume: no panel wider than 4096 pixels at the default size
    MLArray(np.zeros((10, 10, 3000), np.float32), spacing=[1, 1, 1]).save(tmp_path / "w.mla")
    assert main(["preview", str(tmp_path / "w.mla"), "-o", str(tmp_path / "w.png")]) == 0
    w = Image.open(tmp_path / "w.png")
    assert w.width <= 2 * 4096 + 8 + 4096 and w.height >= 8


def test_info_json_is_a_list_for_a_folder_or_glob_even_of_one_file(tmp_path, capsys):
    # a folder or glob matching one file printed a bare object: `for rec in json.load(...)`
    # iterated over its keys
    for name in ("one/a.mla", "two/a.mla", "two/b.mla"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        MLArray(np.zeros((4, 5, 6), np.uint8)).save(tmp_path / name)

    def info(*files: object) -> Any:
        assert main(["info", "--json", *map(str, files)]) == 0
        return json.loads(capsys.readouterr().out)

    for files in (
        [tmp_path / "one"],
        [str(tmp_path / "one" / "*.mla")],
        [tmp_path / "two"],
        [tmp_path / "one" / "a.mla", tmp_path / "two" / "a.mla"],
    ):
        got = info(*files)
        assert isinstance(got, list) and all(r["shape"] == [4, 5, 6] for r in got), files
    assert len(info(tmp_path / "one")) == 1 and len(info(tmp_path / "two")) == 2
    single = info(tmp_path / "one" / "a.mla")  # one file named: its object
    assert isinstance(single, dict) and single["shape"] == [4, 5, 6]
    # a damaged single file: the error on stderr, no JSON on stdout, exit 1
    (tmp_path / "bad.mla").write_bytes(b"not a frame")
    assert main(["info", "--json", str(tmp_path / "bad.mla")]) == 1
    out = capsys.readouterr()
    assert out.out == "" and "bad.mla" in out.err


def test_existing_files_whose_names_hold_glob_characters_are_those_files(tmp_path):
    """``scan[1].nii.gz`` that exists is that file (as a shell passes it on): it was taken
    for a pattern only and refused ("no input files match", a wrong "output folder" reason)."""
    nib.save(
        nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)),
        tmp_path / "scan[1].nii.gz",
    )
    MLArray(np.ones((4, 4, 4), np.float32)).save(tmp_path / "case[1].mla")
    run_cli("convert", tmp_path / "scan[1].nii.gz", tmp_path / "scan1.mla", "--no-seg", check_rc=0)
    assert MLArray.open(tmp_path / "scan1.mla").shape == (4, 4, 4)
    proc = run_cli("info", "--json", tmp_path / "case[1].mla", check_rc=0)
    assert isinstance(json.loads(proc.stdout), dict)  # one FILE argument: one object
    run_cli("stats", tmp_path / "case[1].mla", check_rc=0)
    assert MLArray.open(tmp_path / "case[1].mla").meta.stats.max == 1
    # a pattern that names no file is still a pattern
    MLArray(np.ones((2, 2, 2), np.float32)).save(tmp_path / "case2.mla")
    proc = run_cli("info", "--json", tmp_path / "case[2-3].mla", check_rc=0)
    assert [item["path"] for item in json.loads(proc.stdout)] == [str(tmp_path / "case2.mla")]
