"""Viewer tier: every view shows the anatomy the way radiology viewers do, checked on screenshots.

Phantoms carry bright markers at the patient's right, anterior and superior
side (``tests/data/make_converted.py``). They are written by this library
(RAS x,y,z and LPS z,y,x) and by the reference converter from NIfTI files in
several storage orders (vendored, made by the real ``mlarray_convert``). A
marker is found in a screenshot by its grey level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception as exc:  # qtpy raises its own error types for a missing binding
    pytest.skip(f"no usable Qt binding: {exc}", allow_module_level=True)

from tests.data.make_converted import (
    ANTERIOR,
    ORDERS,
    RIGHT,
    SUPERIOR,
    phantom,
    ras_affine,
)
from tests.napari._helpers import view_index

pytestmark = pytest.mark.qt

DATA = Path(__file__).parents[1] / "data"
CONVERTED = DATA / "converted"
TOP = 300  # contrast limit: a marker's grey level is value / TOP * 255
CODES = [*ORDERS, "nrrd"]  # NIfTI storage orders, and an LPS-space NRRD
SOURCES = ["ours_ras_xyz", "ours_lps_zyx", *[f"converted_{code}" for code in CODES]]


def _meta(spatial: dict, **parts):
    from mlarray.meta import Meta

    return Meta.from_mapping({"spatial": spatial, **parts})


def write_source(source: str, folder: Path) -> Path:
    """The phantom as an ``.mla`` file: written here, or the reference converter's file."""
    from mlarray import MLArray

    if source.startswith("converted_"):
        return CONVERTED / f"phantom_{source.split('_')[1]}.mla"
    path = folder / f"{source}.mla"
    if source == "ours_ras_xyz":  # x, y, z as stored by NIfTI, world RAS
        A = ras_affine()
        arr = MLArray(
            phantom(),
            spacing=np.diag(A)[:3].tolist(),
            origin=A[:3, 3].tolist(),
            axis_labels=["spatial_x", "spatial_y", "spatial_z"],
            meta=_meta({"coord_system": "RAS"}),
        )
    else:  # z, y, x as stored by ITK, world LPS: the same anatomy
        A = ras_affine()
        lps = phantom()[::-1, ::-1, :].transpose(2, 1, 0)
        corner = np.diag([-1.0, -1.0, 1.0]) @ (A @ [19, 23, 0, 1])[:3]  # LPS of voxel 0
        arr = MLArray(
            np.ascontiguousarray(lps),
            spacing=[A[2, 2], A[1, 1], A[0, 0]],
            origin=corner.tolist(),
            direction=[[0.0, 0, 1], [0, 1, 0], [1, 0, 0]],
            axis_labels=["spatial_z", "spatial_y", "spatial_x"],
            meta=_meta({"coord_system": "LPS"}),
        )
    arr.save(path)
    return path


def write_mask(image_path: Path, folder: Path) -> Path:
    """A label map of the right-side marker, on the image's grid and geometry (as stored)."""
    from mlarray import MLArray

    image = MLArray.open(image_path)
    mask = (np.asarray(image[...]) == RIGHT).astype(np.uint8)
    spatial = image.meta.spatial.to_mapping()
    out = folder / f"{image_path.stem}_mask.mla"
    MLArray(mask, meta=_meta(spatial, is_seg=True)).save(out)
    return out


def marker(shot: np.ndarray, value: int) -> np.ndarray:
    """Centre (row, column), as fractions of the canvas, of the pixels showing ``value``."""
    grey = shot[..., :3].astype(float).mean(-1)
    rows, cols = np.nonzero(np.abs(grey - value / TOP * 255) < 12)
    assert rows.size > 20, f"marker {value} not visible"
    return np.array([rows.mean() / grey.shape[0], cols.mean() / grey.shape[1]])


def world_of(layer, value: int) -> np.ndarray:
    """napari world position of a marker's centre (from the layer's own transform)."""
    index = np.argwhere(np.asarray(layer.data) == value).mean(0)
    return np.asarray(layer.data_to_world(index))


def show(viewer, image, value, order):
    """Screenshot of the plane through marker ``value`` with the view order ``order``."""
    viewer.dims.order = order
    viewer.dims.set_point(order[0], world_of(image, value)[order[0]])
    viewer.reset_view()
    return viewer.screenshot(canvas_only=True, flash=False)


@pytest.mark.parametrize("source", SOURCES)
def test_every_view_shows_the_anatomy(make_napari_viewer, tmp_path, source):
    path = write_source(source, tmp_path)
    mask_path = write_mask(path, tmp_path)
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(str(path), plugin=None)
    (mask,) = viewer.open(str(mask_path), plugin=None)
    assert mask._type_string == "labels"
    image.contrast_limits = (0, TOP)
    image.colormap = "gray"
    assert viewer.dims.axis_labels == ("S-I", "A-P", "R-L")
    mask.visible = False

    # axial (slider on S-I): anterior up, the patient's right on the screen's left
    shot = show(viewer, image, RIGHT, (0, 1, 2))
    right, front = marker(shot, RIGHT), marker(shot, ANTERIOR)
    assert right[1] < 0.45 and right[1] < front[1] - 0.05
    assert front[0] < 0.4 and front[0] < right[0] - 0.05
    # the mask of the right marker lies on it
    image.visible, mask.visible = False, True
    painted = viewer.screenshot(canvas_only=True, flash=False)[..., :3].sum(-1)
    rows, cols = np.nonzero(painted > 30)
    assert rows.size > 20
    seen = np.array([rows.mean() / painted.shape[0], cols.mean() / painted.shape[1]])
    assert np.allclose(seen, right, atol=0.02)
    image.visible, mask.visible = True, False

    # the orders below are what napari's buttons give (README): roll; transpose, then roll
    viewer.dims.order = (0, 1, 2)
    viewer.dims.roll()
    assert tuple(viewer.dims.order) == (2, 0, 1)
    viewer.dims.order = (0, 1, 2)
    viewer.dims.transpose()
    viewer.dims.roll()
    assert tuple(viewer.dims.order) == (1, 0, 2)

    # coronal: superior up, the patient's right on the screen's left
    shot = show(viewer, image, RIGHT, (1, 0, 2))
    right, top = marker(shot, RIGHT), marker(shot, SUPERIOR)
    assert right[1] < 0.45 and right[1] < top[1] - 0.05
    assert top[0] < 0.4 and top[0] < right[0] - 0.05

    # sagittal: superior up, anterior on the screen's left
    shot = show(viewer, image, ANTERIOR, (2, 0, 1))
    front, top = marker(shot, ANTERIOR), marker(shot, SUPERIOR)
    assert front[1] < 0.45 and front[1] < top[1] - 0.05
    assert top[0] < 0.4 and top[0] < front[0] - 0.05

    # 3D, looking at the patient's face with superior up: their right is on our left
    viewer.dims.order = (0, 1, 2)
    viewer.dims.ndisplay = 3
    image.rendering = "mip"
    image.interpolation3d = "nearest"
    centre = np.asarray(image.data_to_world((np.asarray(image.data.shape) - 1) / 2))
    viewer.scene.camera.set_view_direction(
        view_direction=centre - world_of(image, ANTERIOR),
        up_direction=world_of(image, SUPERIOR) - centre,
    )
    shot = viewer.screenshot(canvas_only=True, flash=False)
    right, front, top = marker(shot, RIGHT), marker(shot, ANTERIOR), marker(shot, SUPERIOR)
    assert right[1] < front[1] - 0.03  # the anterior marker is in the middle
    assert top[0] < front[0] - 0.03


def test_converted_files_keep_their_geometry_in_napari_world(make_napari_viewer):
    """Every converted file puts each marker at the same napari world position."""
    viewer = make_napari_viewer()
    where = {}
    for code in CODES:
        (layer,) = viewer.open(str(CONVERTED / f"phantom_{code}.mla"), plugin=None)
        assert layer.metadata["mlarray"]["world_frame"] == "RAS"
        where[code] = [world_of(layer, v) for v in (RIGHT, ANTERIOR, SUPERIOR)]
    ras = ras_affine()
    for value, got in zip((RIGHT, ANTERIOR, SUPERIOR), where["RAS"], strict=True):
        centre = (ras @ np.r_[np.argwhere(phantom() == value).mean(0), 1])[:3]
        napari_world = np.array([-centre[2], -centre[1], -centre[0]])  # (I, P, L)
        assert np.allclose(got, napari_world)
    for code in CODES:
        assert np.allclose(where[code], where["RAS"])


def test_no_coord_system_is_said_once_and_shown_as_stored(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    from mlarray import MLArray

    path = tmp_path / "plain.mla"
    MLArray(phantom(), spacing=[1.0, 1.5, 2.0]).save(path)
    heard = []
    notification_manager.notification_ready.connect(heard.append)
    try:
        viewer = make_napari_viewer()
        (layer,) = viewer.open(str(path), plugin=None)
    finally:
        notification_manager.notification_ready.disconnect(heard.append)
    notes = [str(n.message) for n in heard if "coord_system" in str(n.message)]
    assert len(notes) == 1 and "shown as stored" in notes[0]
    assert layer.metadata["mlarray"]["perm"] == [0, 1, 2]
    assert np.allclose(layer.scale, [1.0, 1.5, 2.0])
    assert viewer.dims.axis_labels != ("S-I", "A-P", "R-L")


def test_mask_saved_with_the_image_geometry_but_no_coord_system_overlays_it(
    make_napari_viewer, mni, tmp_path
):
    """Code written for the reference package saves a prediction with its image's spacing,
    origin and direction and no coord_system: it lives in the image's world and must overlay
    the image, opened after it or in one read with it (before: mirrored through the origin)."""
    from napari.layers import Image, Labels
    from napari.utils.notifications import notification_manager

    from mlarray import Meta, MLArray, geometry
    from napari_mlarray._reader import read_mla

    volume = np.asarray(MLArray.open(mni)[...])
    spacing, origin, direction = geometry.spacing_origin_direction(MLArray.open(mni).affine)
    grid = {"spacing": spacing.tolist(), "origin": origin.tolist(), "direction": direction.tolist()}
    mni = tmp_path / "case.mla"  # as `mlarray convert` writes it: spacing, origin, direction
    MLArray(volume, **grid, meta=_meta({"coord_system": "RAS"})).save(mni)
    img = MLArray.open(mni)
    pred = tmp_path / "pred.mla"
    mask = (volume == 1000).astype(np.uint8)
    meta = Meta(is_seg=True)
    MLArray(mask, spacing=img.spacing, origin=img.origin, direction=img.direction, meta=meta).save(
        pred
    )
    assert MLArray.open(pred).meta.spatial.coord_system is None

    def centres(image, labels):
        return [
            np.mean([layer.data_to_world(i) for i in np.argwhere(np.asarray(layer.data) == v)], 0)
            for layer, v in ((image, 1000), (labels, 1))
        ]

    heard = []
    notification_manager.notification_ready.connect(heard.append)
    try:
        viewer = make_napari_viewer()
        (image,) = viewer.open(str(mni), plugin=None)
        (labels,) = viewer.open(str(pred), plugin=None)
        at_image, at_labels = centres(image, labels)
        np.testing.assert_allclose(at_labels, at_image, atol=1e-6)
        assert labels.axis_labels == image.axis_labels == ("S-I", "A-P", "R-L")
        assert labels.metadata["mlarray"]["record"]["spatial"]["coord_system"] is None
    finally:
        notification_manager.notification_ready.disconnect(heard.append)
    notes = [str(n.message) for n in heard if str(n.message).startswith("pred:")]
    assert notes and all("shown in its RAS world" in n for n in notes)
    # saved unchanged, the file keeps its record (no coord_system added)
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "again.mla"), selected=True)
    assert MLArray.open(tmp_path / "again.mla").meta.spatial.coord_system is None
    # one read of both files, the prediction first (nothing in the viewer)
    viewer.layers.clear()
    (mask_data, mask_kw, _), (image_data, image_kw, _) = read_mla([str(pred), str(mni)])
    at_image, at_labels = centres(Image(image_data, **image_kw), Labels(mask_data, **mask_kw))
    np.testing.assert_allclose(at_labels, at_image, atol=1e-6)
    # the prediction opened (and painted) first, its image after: re-oriented over it
    viewer.layers.clear()
    probs = tmp_path / "probs.mla"  # a frame-less image too (a probability map)
    MLArray(mask.astype(np.float32), **grid).save(probs)
    (prob_layer,) = viewer.open(str(probs), plugin=None)
    (labels,) = viewer.open(str(pred), plugin=None)
    assert labels.axis_labels != ("S-I", "A-P", "R-L")  # shown as stored, for now
    shown = tuple(np.argwhere(np.asarray(labels.data) == 1)[0])
    labels.data[shown] = 2
    block = labels.metadata["mlarray"]  # shown as stored, axes reversed into the data
    painted = [0] * 3
    for k, (a, f) in enumerate(zip(block["perm"], block["flip"], strict=True)):
        painted[a] = mask.shape[a] - 1 - shown[k] if f else shown[k]
    painted = tuple(painted)
    (image,) = viewer.open(str(mni), plugin=None)
    assert labels.axis_labels == ("S-I", "A-P", "R-L")
    at_image, _ = centres(image, labels)
    at_two = labels.data_to_world(np.argwhere(np.asarray(labels.data) == 2)[0])
    ones = np.argwhere(np.asarray(labels.data) >= 1)
    np.testing.assert_allclose(np.mean([labels.data_to_world(i) for i in ones], 0), at_image)
    hot = np.argwhere(np.asarray(prob_layer.data) == 1)
    np.testing.assert_allclose(np.mean([prob_layer.data_to_world(i) for i in hot], 0), at_image)
    viewer.layers.selection = {prob_layer}
    viewer.layers.save(str(tmp_path / "probs_again.mla"), selected=True)
    np.testing.assert_array_equal(MLArray.open(tmp_path / "probs_again.mla")[...], mask)
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "painted.mla"), selected=True)
    saved = MLArray.open(tmp_path / "painted.mla")
    expected = mask.copy()
    expected[painted] = 2
    np.testing.assert_array_equal(saved[...], expected)
    assert saved.meta.spatial.coord_system is None
    world = (np.asarray(img.affine) @ np.r_[painted, 1.0])[:3]  # RAS
    np.testing.assert_allclose(at_two, [-world[2], -world[1], -world[0]], atol=1e-6)


def test_a_4d_file_without_labels_has_a_non_spatial_slider(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    heard = []
    notification_manager.notification_ready.connect(heard.append)
    try:
        viewer = make_napari_viewer()
        (layer,) = viewer.open(str(CONVERTED / "series_4d.mla"), plugin=None)
    finally:
        notification_manager.notification_ready.disconnect(heard.append)
    # the reference converter stores time as a fourth "spatial" axis, 2000 (ms) apart
    assert [str(n.message) for n in heard if "non-spatial" in str(n.message)]
    assert layer.data.shape[0] == 3  # time leads as a slider
    assert layer.scale[0] == 1.0 and str(layer.units[0]) == "pixel"
    assert viewer.dims.axis_labels == ("axis 3", "S-I", "A-P", "R-L")
    assert np.allclose(np.abs(layer.scale[1:]), [2.0, 1.5, 1.0])


def test_status_bar_reads_millimetres_along_inferior_posterior_left(make_napari_viewer, tmp_path):
    """What the README says the status bar shows: (-z, y, x) of LPS, (-z, -y, -x) of RAS."""
    path = write_source("ours_ras_xyz", tmp_path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=None)
    voxel = np.array([15, 10, 12])  # stored x, y, z
    ras = (ras_affine() @ np.r_[voxel, 1])[:3]
    block = layer.metadata["mlarray"]
    view = view_index(block, voxel, block["record"]["spatial"]["shape"])
    world = np.asarray(layer.data_to_world(view))
    assert np.allclose(world, [-ras[2], -ras[1], -ras[0]])
    status = layer.get_status(world, world=True)
    shown = [float(x) for x in status["coords"].strip("[]").replace(",", " ").split()]
    assert np.allclose(shown, world, atol=0.01)


@pytest.fixture
def mni(tmp_path):
    """The MNI152 T1 template (2 mm), stored P, I, R like a reoriented NIfTI, world RAS.

    A bright marker sits in the right hemisphere at RAS (+50, -20, 10) mm.
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from mlarray import MLArray

    img = nib.load(DATA / "mni152_t1_2mm.nii.gz")
    data = np.asarray(img.dataobj).astype(np.int16)
    ijk = np.round(np.linalg.solve(img.affine, [50.0, -20.0, 10.0, 1.0])[:3]).astype(int)
    data[tuple(slice(i - 2, i + 3) for i in ijk)] = 1000
    turned = nib.Nifti1Image(data, img.affine).as_reoriented(
        ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(("P", "I", "R")))
    )
    path = tmp_path / "mni_pir.mla"
    arr = MLArray(
        np.ascontiguousarray(np.asarray(turned.dataobj)),
        affine=turned.affine.tolist(),
        meta=_meta({"coord_system": "RAS"}),
    )
    arr.compute_stats()
    arr.save(path)
    return path


def test_real_volume_axial_is_radiological_and_3d_is_not_a_blob(make_napari_viewer, mni):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(mni), plugin=None)
    assert viewer.dims.axis_labels == ("S-I", "A-P", "R-L")
    assert layer.rendering == "attenuated_mip"
    from mlarray import MLArray

    stats = MLArray.open(mni).meta.stats  # the stored percentile window, not the marker's 1000
    assert tuple(layer.contrast_limits) == (stats.percentile_min, stats.percentile_max)
    # 3D front view, as opened: a surface, not a saturated silhouette
    viewer.dims.ndisplay = 3
    viewer.scene.camera.set_view_direction(view_direction=(0, 1, 0), up_direction=(-1, 0, 0))
    grey = viewer.screenshot(canvas_only=True, flash=False)[..., :3].mean(-1)
    head = grey[grey > 10]
    assert head.size > 0.05 * grey.size
    assert (head > 240).mean() < 0.05  # a plain MIP saturates about half of it
    layer.rendering = "mip"
    grey_mip = viewer.screenshot(canvas_only=True, flash=False)[..., :3].mean(-1)
    assert (grey_mip[grey_mip > 10] > 240).mean() > 0.2  # the blob the default avoids
    # axial through the marker: it shows on the screen's left
    viewer.dims.ndisplay = 2
    layer.contrast_limits = (0, 1000)
    index = np.argwhere(np.asarray(layer.data) == 1000).mean(0)
    viewer.dims.set_point(0, layer.data_to_world(index)[0])
    viewer.reset_view()
    grey = viewer.screenshot(canvas_only=True, flash=False)[..., :3].mean(-1)
    rows, cols = np.nonzero(grey > 240)
    assert rows.size > 20 and cols.mean() / grey.shape[1] < 0.4


def test_an_oblique_volume_is_said_once_when_opened(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    from mlarray import Meta
    from mlarray.io import save_mla
    from tests.napari.test_orientation import _tilted

    path = save_mla(tmp_path / "mr.mla", phantom(), Meta.from_mapping(_tilted(10.0)))
    heard = []
    notification_manager.notification_ready.connect(heard.append)
    try:
        viewer = make_napari_viewer()
        viewer.open(str(path), plugin=None)
    finally:
        notification_manager.notification_ready.disconnect(heard.append)
    notes = [str(n.message) for n in heard if "oblique" in str(n.message)]
    assert len(notes) == 1 and "tilted up to 10.0 degrees" in notes[0]
