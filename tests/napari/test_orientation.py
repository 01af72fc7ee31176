"""Qt-free tier: the display convention on the library's metadata (Meta objects, geometry)."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import MetaValidationError
from mlarray.meta import Meta
from napari_mlarray import _mapping
from napari_mlarray._orientation import (
    ANATOMY_LABELS,
    napari_from_frame,
    orientation_for,
    spatial_mask,
)
from tests._children import reference_env
from tests.data.make_converted import CONVERTER_CODES, ORDERS

CONVERTED = Path(__file__).parents[1] / "data" / "converted"


def test_spatial_mask_is_the_librarys_rule():
    # 3 spacings for 4 unlabelled axes: MLArray refuses it, and so does the plugin
    with pytest.raises(MetaValidationError):
        spatial_mask({"spatial": {"spacing": [1, 1, 1]}}, 4)
    with pytest.raises(MetaValidationError):
        MLArray(np.zeros((2, 3, 4, 5)), spacing=[1, 1, 1])
    labels = ["channel", "spatial_z", "spatial_y", "spatial_x"]
    assert spatial_mask({"spatial": {"axis_labels": labels}}, 4) == [False, True, True, True]
    assert spatial_mask(Meta(), 3) == [True, True, True]


def test_display_frame_is_right_handed_inferior_posterior_left():
    for frame in ("RAS", "LPS", "LAS"):
        D, labels = napari_from_frame(frame, 3)
        assert labels == list(ANATOMY_LABELS)
        from mlarray.geometry import frame_matrix

        ras = frame_matrix(frame) @ np.linalg.inv(D)  # columns: napari axes in RAS
        assert np.allclose(ras, [[0, 0, -1], [0, -1, 0], [-1, 0, 0]])  # I, P, L
    assert np.linalg.det(napari_from_frame("RAS", 3)[0] @ np.eye(3)) == 1
    D2, labels2 = napari_from_frame("LPS", 2)  # 2-D x, y: rows posterior, columns left
    assert labels2 == ["A-P", "R-L"] and np.allclose(D2, [[0, 1], [1, 0]])


def test_lps_plus_with_spacing_origin_direction_is_shown_in_lps():
    """An R,A,S-stored (x, y, z) MNI152 with SimpleITK's LPS geometry and ``coord_system``
    ``LPS+`` is placed with every voxel at (-S, -A, -R) of nibabel's world (mirrored
    left-right and front-back before: ``LPS+`` was read as the array's own axis codes)."""
    import nibabel as nib
    import SimpleITK as sitk

    from napari_mlarray._orientation import napari_transforms

    path = Path(__file__).parents[1] / "data" / "mni152_t1_2mm.nii.gz"
    src, itk = nib.load(path), sitk.ReadImage(str(path))
    meta = Meta(
        spatial={
            "spacing": list(itk.GetSpacing()),
            "origin": list(itk.GetOrigin()),
            "direction": np.asarray(itk.GetDirection()).reshape(3, 3).tolist(),
            "axis_labels": ["spatial_x", "spatial_y", "spatial_z"],
            "coord_system": "LPS+",
        }
    )
    orient = orientation_for(meta, 3)
    assert orient.world_frame == "LPS"
    t = napari_transforms(orient, 3)
    idx = np.array([[0, 0, 0], [90, 10, 5], [3, 100, 80], [97, 115, 93]], float).T  # x, y, z
    view = idx[list(orient.perm)]
    world = t["rotate"] @ t["shear"] @ (t["scale"][:, None] * view) + t["translate"][:, None]
    ras = src.affine[:3, :3] @ idx + src.affine[:3, 3:]
    np.testing.assert_allclose(world, -ras[::-1], atol=1e-6)


@pytest.mark.parametrize("code", ORDERS)
def test_converted_files_show_the_axial_slider_first(code):
    arr = MLArray.open(CONVERTED / f"phantom_{code}.mla")
    orient = orientation_for(arr.meta, arr.ndim)
    assert orient.world_frame == "RAS" and not orient.notes
    kw = _mapping.image_layer_kwargs(arr.meta, arr.ndim, name=code)
    assert kw["axis_labels"] == ["S-I", "A-P", "R-L"]
    assert kw["units"] == ["mm", "mm", "mm"]
    # the S-I slider runs over the array axis that is superior-inferior
    A = np.asarray(arr.affine)
    assert np.argmax(np.abs(A[2, :3])) == orient.perm[0]


def test_channel_split_keeps_the_3d_rendering():
    meta = Meta.from_mapping(
        {
            "spatial": {
                "axis_labels": ["channel", "spatial_z", "spatial_y", "spatial_x"],
                "coord_system": "LPS",
                "shape": [2, 3, 4, 5],
            }
        }
    )
    kw = _mapping.image_layer_kwargs(meta, 4, name="x")
    assert kw["channel_axis"] == 0 and kw["rendering"] == "attenuated_mip"
    flat = _mapping.image_layer_kwargs({"spatial": {"shape": [4, 5]}}, 2, name="x")
    assert "rendering" not in flat  # 2-D images have no 3D view


REFERENCE_PYTHON = os.environ.get("MLARRAY_REFERENCE_PYTHON")


@pytest.mark.skipif(
    not REFERENCE_PYTHON,
    reason="set MLARRAY_REFERENCE_PYTHON to a python with mlarray==0.0.54 (.ci/run does)",
)
def test_vendored_conversions_are_what_the_reference_converter_writes(tmp_path):
    script = Path(__file__).parents[1] / "data" / "make_converted.py"
    has_converter = subprocess.run(
        [REFERENCE_PYTHON, "-c", "import medvol, nibabel"], capture_output=True, env=reference_env()
    )
    if has_converter.returncode != 0:
        pytest.skip("the reference environment has no medvol/nibabel (.ci/run installs them)")
    # three of them (each conversion starts the converter anew): reordered, NRRD, 4-D
    stems = ["phantom_PIR", "phantom_nrrd", "series_4d"]
    subprocess.run(
        [REFERENCE_PYTHON, str(script), str(tmp_path), *stems],
        check=True,
        capture_output=True,
        env=reference_env(),
    )
    assert sorted(p.stem for p in tmp_path.glob("*.mla")) == sorted(stems)
    for name in [f"{stem}.mla" for stem in stems]:
        ours, fresh = MLArray.open(CONVERTED / name), MLArray.open(tmp_path / name)
        assert np.array_equal(ours[...], fresh[...]), name
        assert ours.meta.spatial == fresh.meta.spatial, name


SIGNED_PERMUTATIONS = [
    (perm, signs)
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1.0, -1.0), repeat=3)
]
LETTERS = ("RL", "AP", "SI")


@pytest.mark.parametrize(("perm", "signs"), SIGNED_PERMUTATIONS)
def test_every_storage_order_shows_axial_first(perm, signs):
    """All 48 storage orders, with a RAS world affine named as the converter does or as "RAS"."""
    from mlarray.geometry import axis_codes

    linear = np.zeros((3, 3))
    for j, (w, s) in enumerate(zip(perm, signs, strict=True)):
        linear[w, j] = s * (1.0 + j)  # anisotropic spacing
    A = np.eye(4)
    A[:3, :3] = linear
    A[:3, 3] = [5.0, -7.0, 11.0]
    codes = axis_codes(A)
    assert codes == "".join(LETTERS[w][0 if s > 0 else 1] for w, s in zip(perm, signs, strict=True))
    names = ["RAS"] + ([codes + "+"] if codes + "+" in CONVERTER_CODES else [])
    for coord_system in names:
        meta = Meta.from_mapping(
            {"spatial": {"affine": A.tolist(), "coord_system": coord_system, "shape": [4, 5, 6]}}
        )
        orient = orientation_for(meta, 3)
        assert orient.world_frame == "RAS"
        kw = _mapping.image_layer_kwargs(meta, 3, name="x")
        assert kw["axis_labels"] == ["S-I", "A-P", "R-L"]
        assert np.array_equal(kw["rotate"], np.eye(3)) and np.array_equal(kw["shear"], np.eye(3))
        # napari world of view axis k runs along napari axis k: inferior, posterior, left
        napari_from_ras = np.array([[0, 0, -1], [0, -1, 0], [-1, 0, 0]])
        M = napari_from_ras @ linear[:, list(orient.perm)]
        # the reversed axes are reversed in the data, napari gets positive scales
        flip = np.where(kw["metadata"]["mlarray"]["flip"], -1.0, 1.0)
        assert np.all(np.asarray(kw["scale"]) > 0)
        assert np.allclose(M, np.diag(kw["scale"] * flip))


def _tilted(deg: float) -> dict:
    a = np.radians(deg)
    tilt_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    zyx = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # stored z, y, x
    spatial = {
        "spacing": [8.0, 1.4, 1.4],
        "origin": [-100.0, 150.0, 60.0],
        "direction": (tilt_x @ zyx).tolist(),
        "coord_system": "LPS",
    }
    return {"spatial": spatial}


def test_an_oblique_volume_says_what_the_2d_views_show():
    orient = orientation_for(_tilted(10.0), 3, name="mr.mla")
    (note,) = orient.notes
    assert note.startswith("mr.mla: an oblique acquisition (stored axes tilted up to 10.0 degrees")
    assert "2-D views do not reslice it" in note
    for straight in (0.0, 1e-6):  # axis-aligned, or a float32 round-off of it
        assert not orientation_for(_tilted(straight), 3).notes
    rotated_2d = {
        "spatial": {"direction": [[0.9, -0.43589], [0.43589, 0.9]], "coord_system": "LPS"}
    }
    assert not orientation_for(rotated_2d, 2).notes  # in-plane: napari shows it exactly


def test_a_frameless_record_takes_the_frame_of_the_same_grid_only():
    from napari_mlarray._orientation import frame_by_geometry, geometry_key

    def record(origin, shape=(4, 5, 6), coord_system=None):
        spatial = {
            "shape": list(shape),
            "spacing": [2.0, 1.0, 0.5],
            "origin": list(origin),
            "direction": [[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]],
            "coord_system": coord_system,
        }
        return Meta.from_mapping({"spatial": spatial})

    image = record((10.0, -20.0, 30.0), coord_system="LPS")
    others = [("other", "RAS", geometry_key(record((0.0, 0.0, 0.0)), 3))]
    others.append(("image", "LPS", geometry_key(image, 3)))
    assert frame_by_geometry(record((10.0, -20.0, 30.0)), 3, others) == ("LPS", "image")
    assert frame_by_geometry(record((10.0, -20.0, 30.5)), 3, others) is None  # moved
    assert frame_by_geometry(record((10.0, -20.0, 30.0), (4, 5, 7)), 3, others) is None
