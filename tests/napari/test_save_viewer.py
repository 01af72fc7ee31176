"""Viewer tier: saving from napari, "New labels for this image", and the save dialog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception as exc:  # qtpy raises its own error types for a missing binding
    pytest.skip(f"no usable Qt binding: {exc}", allow_module_level=True)

from tests.napari._helpers import view_index, view_index_inverse, write_mla

DATA = Path(__file__).parents[1] / "data"

pytestmark = pytest.mark.qt

COMMAND = "napari-mlarray.new_labels_for_image"


def _run_command(command_id: str = COMMAND) -> None:
    """Run an npe2 command the way its menu item does (napari's app model injects the viewer)."""
    from napari._app_model import get_app_model

    get_app_model().commands.execute_command(command_id).result()


def _menu_commands(menu_id: str) -> list[str]:
    from app_model.types import MenuItem
    from napari._app_model import get_app_model

    items = get_app_model().menus.get_menu(menu_id)
    return [item.command.id for item in items if isinstance(item, MenuItem)]


def test_new_labels_for_this_image_from_the_menu_pairs_with_the_image(
    make_napari_viewer, tmp_path, ct_volume
):
    from mlarray import Meta, MLArray
    from mlarray.io import save_mla
    from napari_mlarray._writer import LayerSaveError

    spatial = {
        "spacing": [0.7, 0.8, 2.5],
        "origin": [10.0, -20.0, 30.0],
        "direction": np.diag([-1.0, -1.0, 1.0]).tolist(),
        "axis_labels": ["spatial_x", "spatial_y", "spatial_z"],
        "coord_system": "RAS",
    }
    record = {"spatial": spatial, "bbox": {"bboxes": [[[2, 6], [3, 9], [4, 8]]]}}
    xyz = np.ascontiguousarray(ct_volume.transpose(2, 1, 0))  # stored x, y, z (RAS)
    path = save_mla(tmp_path / "ct.mla", xyz, Meta.from_mapping(record))
    viewer = make_napari_viewer()
    image, boxes = viewer.open(str(path), plugin=None)
    assert viewer.layers.selection.active is boxes  # what used to need "select the image first"
    assert COMMAND in _menu_commands("napari/layers/annotate")
    assert COMMAND in _menu_commands("napari/file/new_layer")

    _run_command()

    labels = viewer.layers[-1]
    assert labels._type_string == "labels" and labels.name == "ct labels"
    assert viewer.layers.selection.active is labels
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    for idx in ([0, 0, 0], [5, 10, 12]):
        np.testing.assert_allclose(labels.data_to_world(idx), image.data_to_world(idx))
    labels.paint((5, 10, 12), 3, refresh=True)
    labels.data[7, 2:4, 2:4] = 2
    out = tmp_path / "finding.mla"
    # napari's own writer selection (no plugin named), only the labels layer selected
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    mask, img = MLArray.open(out), MLArray.open(path)
    assert mask.meta.is_seg.is_seg is True and mask.meta.bbox.bboxes is None
    # stored like the image: same axis order (x, y, z), frame and geometry
    block = image.metadata["mlarray"]  # the labels layer shows the image's grid
    assert mask.shape == img.shape
    assert mask[view_index_inverse(block, (5, 10, 12), img.shape)] == 3
    assert mask[view_index_inverse(block, (7, 3, 3), img.shape)] == 2
    assert mask.meta.spatial.coord_system == "RAS"
    assert mask.meta.spatial.axis_labels == ["spatial_x", "spatial_y", "spatial_z"]
    np.testing.assert_allclose(np.asarray(mask.affine), np.asarray(img.affine))
    (again,) = viewer.open(str(out), plugin=None)
    assert again._type_string == "labels"
    np.testing.assert_allclose(again.data_to_world([5, 10, 12]), image.data_to_world([5, 10, 12]))
    # saved over the image's own file it would replace the image with the mask: refused
    before = path.read_bytes()
    viewer.layers.selection = {labels}
    with pytest.raises(LayerSaveError, match="made in napari for this file"):
        labels.save(str(path), plugin="napari-mlarray")
    assert path.read_bytes() == before


def test_napari_new_labels_button_mask_exports_over_the_image_anatomy(make_napari_viewer, tmp_path):
    """napari's own "new labels" button over an image converted from NIfTI: the painted
    voxel, saved with our writer and converted back to NIfTI, is at the RAS position of the
    image voxel it was painted over."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    from mlarray import MLArray
    from mlarray.convert import convert_file

    mni = nib.load(DATA / "mni152_t1_2mm.nii.gz")
    data = np.asarray(mni.dataobj).astype(np.int16)
    ijk = np.round(np.linalg.solve(mni.affine, [-50.0, 40.0, 30.0, 1.0])[:3]).astype(int)
    marker = int(data.max()) + 1
    data[tuple(ijk)] = marker  # left frontal
    turned = nib.Nifti1Image(data, mni.affine).as_reoriented(
        ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(("P", "I", "R")))
    )
    nib.save(turned, tmp_path / "mni_pir.nii.gz")
    convert_file(tmp_path / "mni_pir.nii.gz", tmp_path / "mni.mla")
    ras = turned.affine @ np.r_[np.argwhere(np.asarray(turned.dataobj) == marker)[0], 1.0]

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "mni.mla"), plugin=None)
    viewer.layers.selection.active = image
    viewer.window._qt_viewer.layerButtons.newLabelsButton.click()  # napari's own button
    labels = viewer.layers[-1]
    assert labels._type_string == "labels" and "mlarray" not in labels.metadata
    under = np.argwhere(np.asarray(image.data) == marker)[0]
    index = np.round(labels.world_to_data(image.data_to_world(under))).astype(int)
    labels.brush_size = 1
    labels.paint(tuple(index), 1, refresh=False)
    out = tmp_path / "mask.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    assert MLArray.open(out).meta.spatial.coord_system is not None
    convert_file(out, tmp_path / "mask.nii.gz")
    mask = nib.load(tmp_path / "mask.nii.gz")
    painted = np.argwhere(np.asarray(mask.dataobj) == 1)
    assert len(painted) == 1
    np.testing.assert_allclose((mask.affine @ np.r_[painted[0], 1.0])[:3], ras[:3], atol=1e-6)
    # reopened next to the image: the same place in the viewer, with its anatomy
    (again,) = viewer.open(str(out), plugin=None)
    assert again.axis_labels == image.axis_labels
    np.testing.assert_allclose(
        again.data_to_world(np.argwhere(np.asarray(again.data) == 1)[0]),
        image.data_to_world(under),
        atol=1e-6,
    )


def test_integer_image_converted_to_labels_paints_with_the_brush_and_saves(
    make_napari_viewer, tmp_path
):
    """A label map converted by the reference tools has no is_seg: it opens as a lazy Image.
    napari's "Convert to Labels" keeps that data; the brush then paints into a copy (the
    file is untouched until saved) and the save writes the painted voxel."""
    import shutil

    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    from mlarray import MLArray

    path = tmp_path / "seg.mla"
    shutil.copy(DATA / "converted" / "phantom_PIR.mla", path)  # int16, no is_seg
    before = MLArray.open(path)[...]
    assert MLArray.open(path).meta.is_seg.is_seg is not True and before.dtype.kind == "i"
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=None)
    assert image._type_string == "image"
    viewer.layers.selection.active = image
    _run_command("napari.layer.convert_to_labels")  # the layer list's context menu
    labels = viewer.layers[-1]
    assert labels._type_string == "labels" and labels.data is image.data  # napari kept it

    index = np.array(labels.data.shape) // 2
    world = labels.data_to_world(index)
    viewer.dims.set_point(0, world[0])
    labels.mode, labels.selected_label, labels.brush_size = "paint", 7, 1
    for kind, callbacks in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):  # a click of the brush: napari's own paint mouse binding
        event = read_only_mouse_event(
            type=kind,
            position=tuple(world),
            view_direction=[1, 0, 0],
            dims_displayed=[1, 2],
        )
        callbacks(labels, event)
    assert labels.data[tuple(index)] == 7 and (np.asarray(labels.data) == 7).sum() == 1
    np.testing.assert_array_equal(MLArray.open(path)[...], before)  # not written yet

    out = tmp_path / "painted.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    saved = MLArray.open(out)
    stored = view_index_inverse(labels.metadata["mlarray"], index, before.shape)
    expected = before.copy()
    expected[stored] = 7
    np.testing.assert_array_equal(saved[...], expected)
    assert saved.meta.is_seg.is_seg is True


def test_new_labels_over_one_channel_pair_with_the_image_spatial_axes(make_napari_viewer, tmp_path):
    from mlarray import MLArray

    affine = [[-0.7, 0, 0, 10], [0, -0.8, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]]
    path = write_mla(
        tmp_path / "mr.mla",
        np.random.default_rng(0).normal(size=(2, 6, 7, 5)).astype(np.float32),
        affine=affine,
        axis_labels=["channel", "spatial_x", "spatial_y", "spatial_z"],
        coord_system="RAS",
    )
    viewer = make_napari_viewer()
    first, _ = viewer.open(str(path), plugin=None)
    viewer.layers.selection.active = first
    _run_command()
    labels = viewer.layers[-1]
    labels.data[1, 2, 3] = 4  # layer order is z, y, x
    out = tmp_path / "mask.mla"
    viewer.layers.save(str(out), selected=True)
    mask = MLArray.open(out)
    # stored like the image's spatial axes (x, y, z), without the channel axis; x and y
    # (RAS with x, y negated: LPS) as shown, z reversed (napari's first axis: inferior)
    assert mask.shape == (6, 7, 5) and mask[3, 2, 5 - 1 - 1] == 4
    assert mask.meta.spatial.axis_labels == ["spatial_x", "spatial_y", "spatial_z"]
    assert mask.meta.spatial.coord_system == "RAS"
    np.testing.assert_allclose(np.asarray(mask.affine), affine)


def test_new_labels_without_an_image_warns_and_adds_nothing(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.add_points([[0, 0]])
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        _run_command()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert any("select the image layer" in str(event.message) for event in seen)
    assert [layer._type_string for layer in viewer.layers] == ["points"]


def test_image_added_with_an_affine_saves_that_affine(make_napari_viewer, tmp_path):
    from mlarray import MLArray

    A = np.array(
        [[2.5, 0.0, 0.2, -40.0], [0.1, -0.8, 0.0, 12.0], [0.0, 0.3, 0.7, 7.5], [0, 0, 0, 1]]
    )
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, affine=A, name="ct")
    out = tmp_path / "ct.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    back = MLArray.open(out)
    np.testing.assert_array_equal(back[...], data)
    np.testing.assert_allclose(np.asarray(back.affine), A, atol=1e-12)
    (again,) = viewer.open(str(out), plugin=None)
    for idx in ([0, 0, 0], [3, 4, 5]):  # the same voxel at the same world position
        shown = view_index(again.metadata["mlarray"], idx, data.shape)
        np.testing.assert_allclose(again.data_to_world(shown), layer.data_to_world(idx), atol=1e-9)


def test_saving_image_and_labels_together_shows_our_message(
    make_napari_viewer, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog

    from napari_mlarray._writer import LayerSaveError

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 5, 6), np.int16), name="ct")
    labels = viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="seg")
    viewer.layers.selection = {image, labels}
    out = tmp_path / "both.mla"
    message = "holds one image or labels layer .* save each to its own .mla file"
    with pytest.raises(LayerSaveError, match=message):
        viewer.layers.save(str(out), selected=True)
    second = viewer.add_image(np.zeros((4, 5, 6), np.int16), name="ct2")
    viewer.layers.selection = {image, second}
    with pytest.raises(LayerSaveError, match="has image, image"):
        viewer.layers.save(str(out), selected=True)
    viewer.layers.selection = {image, labels}

    # File ▸ Save Selected Layers: the dialog offers our writer first; napari shows the error
    def choose(*args, filter="", **kwargs):
        return str(out), filter.split(";;")[0]

    monkeypatch.setattr(QFileDialog, "getSaveFileName", choose)
    with pytest.raises(LayerSaveError, match=message):
        viewer.window._qt_viewer._save_layers_dialog(selected=True)
    assert not out.exists()


def test_layer_whose_file_was_replaced_still_saves_what_the_viewer_shows(
    make_napari_viewer, tmp_path, ct_volume
):
    from mlarray import MLArray
    from napari_mlarray._recompress import PRESETS, recompress

    ct = write_mla(tmp_path / "ct.mla", ct_volume, spacing=(2.5, 0.8, 0.7))
    seg = write_mla(tmp_path / "seg.mla", (ct_volume > 0).astype(np.uint8), meta={"is_seg": True})
    viewer = make_napari_viewer()
    image, labels = viewer.open([str(ct), str(seg)], plugin=None)
    assert labels._type_string == "labels"
    # the label map saved over the CT by mistake: only the viewer still holds the CT
    viewer.layers.selection = {labels}
    viewer.layers.save(str(ct), selected=True)
    assert MLArray.open(ct).meta.is_seg.is_seg is True
    viewer.layers.selection = {image}
    for target in (tmp_path / "rescued.mla", ct):
        assert viewer.layers.save(str(target), selected=True) == [str(target)]
        np.testing.assert_array_equal(MLArray.open(target)[...], ct_volume)

    # the plugin's own in-place recompression of the open file, then a geometry fix saved
    (image,) = viewer.open(str(ct), plugin=None)
    recompress(ct, None, storage=PRESETS["archive"])
    image.translate = np.asarray(image.translate) + np.array([0.0, 0.0, 1.5])
    viewer.layers.selection = {image}
    assert viewer.layers.save(str(ct), selected=True) == [str(ct)]
    saved = MLArray.open(ct)
    np.testing.assert_array_equal(saved[...], ct_volume)
    assert saved.meta.spatial.origin[2] == pytest.approx(1.5)


def test_layer_whose_file_was_rewritten_in_place_refuses_to_save(
    make_napari_viewer, tmp_path, ct_volume
):
    from napari_mlarray._writer import LayerSaveError

    ct = write_mla(tmp_path / "ct.mla", ct_volume, spacing=(2.5, 0.8, 0.7))
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(ct), plugin=None)
    with open(ct, "r+b") as f:  # cut short in place (the mapping's pages are gone)
        f.truncate(200)
    viewer.layers.selection = {image}
    out = tmp_path / "out.mla"
    with pytest.raises(LayerSaveError, match=r"ct\.mla: changed on disk while open"):
        viewer.layers.save(str(out), selected=True)
    assert not out.exists()


def _two_channel_file(path):
    from mlarray import Meta
    from mlarray.io import save_mla

    data = np.random.default_rng(2).integers(0, 1000, (2, 6, 7, 8)).astype(np.float32)
    spatial = {
        "spacing": [3.0, 1.0, 0.5],
        "origin": [1.0, 2.0, 3.0],
        "coord_system": "LPS",
        "axis_labels": ["channel", "spatial_z", "spatial_y", "spatial_x"],
    }
    return save_mla(path, data, Meta.from_mapping({"spatial": spatial})), data


def test_one_channel_saved_over_its_multichannel_file_is_refused(make_napari_viewer, tmp_path):
    from mlarray import MLArray
    from napari_mlarray._writer import LayerSaveError

    path, data = _two_channel_file(tmp_path / "two.mla")
    before = path.read_bytes()
    viewer = make_napari_viewer()
    first, _ = viewer.open(str(path), plugin=None)  # one layer per channel
    first.translate = np.asarray(first.translate) + np.array([0, 0, 0.5])  # fixing its registration
    viewer.layers.selection = {first}
    with pytest.raises(LayerSaveError, match=r"two.mla.*channel 0 of the 2 channels"):
        viewer.layers.save(str(path), selected=True)
    assert path.read_bytes() == before
    # to a new file it saves: that channel alone
    out = tmp_path / "channel0.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    back = MLArray.open(out)
    assert back.shape == (1, 6, 7, 8) and np.array_equal(back[...], data[:1])


def test_recompressing_a_channel_layer_in_place_recompresses_every_channel(
    make_napari_viewer, qtbot, tmp_path
):
    import blosc2

    from mlarray import MLArray
    from napari_mlarray._widget import RecompressWidget

    path, data = _two_channel_file(tmp_path / "two.mla")
    viewer = make_napari_viewer()
    first, _ = viewer.open(str(path), plugin=None)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mlarray", "Recompress .mla")
    assert isinstance(widget, RecompressWidget)
    widget.layer.value = first
    assert widget.in_place.enabled
    widget.in_place.value = True
    widget.preset.value = "archive"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30_000)

    assert widget.result is not None and widget.result.path == path, widget.status.value
    back = MLArray.open(path)
    assert back.shape == (2, 6, 7, 8) and np.array_equal(back[...], data)
    assert back.meta.spatial.axis_labels == ["channel", "spatial_z", "spatial_y", "spatial_x"]
    assert _codec(path) == blosc2.Codec.ZSTD


def test_boxes_layer_saved_alone_over_its_file_keeps_the_label_map(make_napari_viewer, tmp_path):
    import shutil

    from mlarray import MLArray

    path = tmp_path / "case.mla"
    shutil.copy(DATA / "upstream-0.0.54" / "d_seg_uint8_bboxes.mla", path)
    before = MLArray.open(path)
    labels_before, boxes_before = before[...], before.meta.bbox.bboxes
    chunks_before = before.meta.blosc2.chunk_size
    viewer = make_napari_viewer()
    labels, boxes = viewer.open(str(path), plugin=None)
    assert (labels._type_string, boxes._type_string) == ("labels", "shapes")
    # the annotator moves the first box's rectangle on one slice down two rows
    moved = [d + np.array([0, 2, 0]) if i == 0 else d for i, d in enumerate(boxes.data)]
    boxes.data = moved
    viewer.layers.selection = {boxes}
    assert viewer.layers.save(str(path), selected=True) == [str(path)]

    after = MLArray.open(path)
    assert after.shape == (48, 64, 64) and after.meta.is_seg.is_seg is True
    assert np.array_equal(after[...], labels_before)  # the label map is still there
    assert after.meta.blosc2.chunk_size == chunks_before
    first = boxes_before[0]
    assert after.meta.bbox.bboxes == [
        [first[0], [first[1][0] + 2, first[1][1] + 2], first[2]],
        boxes_before[1],
    ]


def test_new_boxes_saved_alone_over_an_image_file_are_added_to_it(make_napari_viewer, tmp_path):
    from mlarray import Meta, MLArray
    from mlarray.io import save_mla

    data = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14)
    spatial = {
        "spacing": [2.0, 0.5, 0.5],
        "axis_labels": ["spatial_z", "spatial_y", "spatial_x"],
        "coord_system": "LPS",
    }
    record = {"spatial": spatial, "bbox": {"bboxes": [[[1, 3], [2, 5], [4, 9]]], "labels": ["a"]}}
    path = save_mla(tmp_path / "ct.mla", data, Meta.from_mapping(record))
    viewer = make_napari_viewer()
    image = viewer.open(str(path), plugin=None)[0]
    # a lesion drawn on a new Shapes layer over the image: slice 4, rows 2..5, columns 3..7
    corners = np.array([[4, 1.5, 2.5], [4, 1.5, 7.5], [4, 5.5, 7.5], [4, 5.5, 2.5]])
    world = np.array([image.data_to_world(c) for c in corners])
    lesion = viewer.add_shapes([world], shape_type="rectangle", name="lesions")
    viewer.layers.selection = {lesion}
    assert viewer.layers.save(str(path), selected=True) == [str(path)]

    back = MLArray.open(path)
    assert np.array_equal(back[...], data)  # the image is kept
    assert back.meta.spatial.spacing == [2.0, 0.5, 0.5]
    bboxes = back.meta.bbox.bboxes
    assert bboxes[0] == [[1, 3], [2, 5], [4, 9]] and back.meta.bbox.labels[0] == "a"
    assert len(bboxes) == 2
    # the voxels under the rectangle, found in the stored array by their (unique) values
    under = np.asarray(image.data[4:5, 2:6, 3:8]).ravel()
    where = np.unravel_index(np.searchsorted(data.ravel(), under), data.shape)
    stored = [[int(w.min()), int(w.max()) + 1] for w in where]
    np.testing.assert_allclose(np.asarray(bboxes[1], float), stored)


def test_save_after_an_in_place_recompress_keeps_the_new_compression(
    make_napari_viewer, qtbot, tmp_path
):
    import blosc2

    from mlarray import Meta, MLArray
    from mlarray.io import save_mla

    seg = np.zeros((20, 24, 28), np.uint8)
    seg[5:12, 6:15, 7:20] = 1
    record = {"is_seg": {"is_seg": True}, "spatial": {"spacing": [2.0, 1.0, 1.0]}}
    path = save_mla(tmp_path / "seg.mla", seg, Meta.from_mapping(record), cparams={"codec": 1})
    viewer = make_napari_viewer()
    labels = viewer.open(str(path), plugin=None)[0]
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mlarray", "Recompress .mla")
    widget.layer.value = labels
    widget.in_place.value = True
    widget.preset.value = "archive"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30_000)
    assert widget.result is not None and widget.result.path == path, widget.status.value
    recompressed = MLArray.open(path).meta.blosc2
    assert _codec(path) == blosc2.Codec.ZSTD

    labels.paint((3, 3, 3), 2, refresh=True)  # keeps annotating, then saves over the file
    viewer.layers.selection = {labels}
    assert viewer.layers.save(str(path), selected=True) == [str(path)]

    back = MLArray.open(path)
    assert back[3, 3, 3] == 2 and back[8, 10, 10] == 1
    assert _codec(path) == blosc2.Codec.ZSTD
    assert back.meta.blosc2.chunk_size == recompressed.chunk_size
    assert back.meta.blosc2.cparams == recompressed.cparams


def test_labels_saved_after_their_boxes_keep_the_edited_boxes(make_napari_viewer, tmp_path):
    import shutil

    from mlarray import MLArray

    path = tmp_path / "case.mla"
    shutil.copy(DATA / "upstream-0.0.54" / "d_seg_uint8_bboxes.mla", path)
    viewer = make_napari_viewer()
    labels, boxes = viewer.open(str(path), plugin=None)
    boxes.data = [d + np.array([0, 2, 0]) if i == 0 else d for i, d in enumerate(boxes.data)]
    viewer.layers.selection = {boxes}
    viewer.layers.save(str(path), selected=True)  # the boxes first
    edited = MLArray.open(path).meta.bbox.bboxes
    labels.paint((10, 30, 30), 7, refresh=True)  # then the label map, alone
    viewer.layers.selection = {labels}
    viewer.layers.save(str(path), selected=True)

    back = MLArray.open(path)
    assert back[10, 30, 30] == 7
    assert back.meta.bbox.bboxes == edited


def test_projection_of_an_opened_volume_saves_to_a_new_file_not_over_it(
    make_napari_viewer, tmp_path, ct_volume
):
    from napari.layers import _layer_actions

    from mlarray import Meta, MLArray
    from mlarray.io import save_mla
    from napari_mlarray._writer import LayerSaveError

    spatial = {"spacing": [2.5, 0.8, 0.7], "origin": [3.0, -4.0, 5.0], "coord_system": "LPS"}
    path = save_mla(tmp_path / "ct.mla", ct_volume, Meta.from_mapping({"spatial": spatial}))
    before = path.read_bytes()
    viewer = make_napari_viewer()
    image = viewer.open(str(path), plugin=None)[0]
    viewer.layers.selection = {image}
    viewer.layers.selection.active = image
    _layer_actions._project(viewer.layers, axis=0, mode="max")  # Layers > Projections > Max
    mip = viewer.layers[-1]
    assert mip.ndim == 2
    viewer.layers.selection = {mip}
    with pytest.raises(LayerSaveError, match=r"ct.mla.*2 axes.*3-axis.*new .mla file"):
        viewer.layers.save(str(path), selected=True)
    assert path.read_bytes() == before

    out = tmp_path / "mip.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    assert MLArray.open(out).shape == mip.data.shape
    back = viewer.open(str(out), plugin=None)[0]
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(mip.data))
    for idx in ([0, 0], [10, 20]):
        np.testing.assert_allclose(back.data_to_world(idx), mip.data_to_world(idx))


def test_one_time_point_split_from_a_series_saves_to_a_new_file(make_napari_viewer, tmp_path):
    from napari.layers import _layer_actions

    from mlarray import Meta, MLArray
    from mlarray.io import save_mla

    series = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)
    spatial = {
        "axis_labels": ["temporal", "spatial_z", "spatial_y", "spatial_x"],
        "spacing": [3.0, 2.0, 1.0],
        "coord_system": "RAS",
    }
    path = save_mla(tmp_path / "series.mla", series, Meta.from_mapping({"spatial": spatial}))
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin=None)[0]
    assert layer.ndim == 4
    viewer.layers.selection = {layer}
    viewer.layers.selection.active = layer
    _layer_actions._split_stack(viewer.layers, axis=0)  # Layers > Split Stack
    point = next(
        x for x in viewer.layers if x is not layer and x.ndim == 3 and x.name.endswith("1")
    )
    viewer.layers.selection = {point}
    out = tmp_path / "t1.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    back = viewer.open(str(out), plugin=None)[0]
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(point.data))
    for idx in ([0, 0, 0], [1, 2, 3]):
        np.testing.assert_allclose(back.data_to_world(idx), point.data_to_world(idx))
    assert MLArray.open(out).shape == point.data.shape  # stored as napari holds it


def test_rgb_layer_saved_reopens_as_one_rgb_layer(make_napari_viewer, tmp_path):
    from mlarray import MLArray
    from napari_mlarray._writer import stored_axes

    picture = np.zeros((40, 60, 3), np.uint8)
    picture[:, :20, 0] = 255  # red | green | blue stripes
    picture[:, 20:40, 1] = 255
    picture[:, 40:, 2] = 255
    viewer = make_napari_viewer()
    photo = viewer.add_image(
        picture, rgb=True, name="photo", scale=(0.5, 0.25), translate=(3.0, -2.0)
    )
    path = tmp_path / "photo.mla"
    viewer.layers.selection = {photo}
    assert viewer.layers.save(str(path), selected=True) == [str(path)]

    (back,) = viewer.open(str(path), plugin=None)
    assert back.rgb and back.data.shape == (40, 60, 3)
    np.testing.assert_array_equal(np.asarray(back.data), picture)
    assert tuple(back.contrast_limits) == (0, 255)
    for idx in ([0, 0], [10, 30]):
        np.testing.assert_allclose(back.data_to_world(idx), photo.data_to_world(idx))
    assert stored_axes(back.as_layer_data_tuple()) == [0, 1, 2]

    # saved again, moved: still one RGB picture where it was put
    back.translate = (5.0, 1.0)
    again = tmp_path / "again.mla"
    viewer.layers.selection = {back}
    assert viewer.layers.save(str(again), selected=True) == [str(again)]
    arr = MLArray.open(again)
    assert arr.shape == (40, 60, 3) and np.array_equal(arr[...], picture)
    (third,) = viewer.open(str(again), plugin=None)
    assert third.rgb
    np.testing.assert_allclose(third.data_to_world([10, 30]), back.data_to_world([10, 30]))


def test_two_opened_volumes_merged_to_a_stack_save_to_a_new_file(
    make_napari_viewer, tmp_path, ct_volume
):
    from napari.layers import _layer_actions

    from mlarray import Meta, MLArray
    from mlarray.io import save_mla

    record = Meta.from_mapping({"spatial": {"spacing": [2.5, 0.8, 0.7], "coord_system": "LPS"}})
    a = save_mla(tmp_path / "a.mla", ct_volume, record)
    b = save_mla(tmp_path / "b.mla", ct_volume + 1, record)
    viewer = make_napari_viewer()
    first, second = viewer.open(str(a), plugin=None)[0], viewer.open(str(b), plugin=None)[0]
    viewer.layers.selection = {first, second}
    _layer_actions._merge_stack(viewer.layers)  # Layers > Merge to Stack
    stack = viewer.layers[-1]
    assert stack.ndim == 4
    viewer.layers.selection = {stack}
    out = tmp_path / "stack.mla"
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    arr = MLArray.open(out)
    assert arr.shape == stack.data.shape
    np.testing.assert_array_equal(arr[...], np.asarray(stack.data))


def test_boxes_of_an_rgb_volume_open_over_its_spatial_axes(make_napari_viewer, tmp_path):
    """An RGB volume (colour axis last) opens as one 3-D RGB layer: its boxes opened as a
    4-D Shapes layer with a 'channel' slider the image does not have. They open over the
    layer's spatial axes, where the same boxes of a grey volume open."""
    from mlarray import Meta, MLArray

    rgb = np.zeros((20, 30, 40, 3), np.uint8)
    rgb[5:10, 10:20, 10:30] = (255, 0, 0)
    paths = {}
    for kind, data, labels, box in (
        ("rgb", rgb, ["spatial_z", "spatial_y", "spatial_x", "channel"], [[0, 3]]),
        ("grey", rgb[..., 0], ["spatial_z", "spatial_y", "spatial_x"], []),
    ):
        lps = Meta(spatial={"coord_system": "LPS"})
        m = MLArray(data, spacing=[2.0, 1.0, 1.0], axis_labels=labels, meta=lps)
        m.meta.bbox.bboxes = [[[5, 10], [10, 20], [10, 30], *box]]
        paths[kind] = tmp_path / f"{kind}.mla"
        m.save(paths[kind])
    viewer = make_napari_viewer()
    image, boxes = viewer.open(str(paths["rgb"]), plugin=None)
    assert image.rgb and boxes.ndim == 3 and viewer.dims.ndim == 3
    assert tuple(boxes.axis_labels) == tuple(image.axis_labels)
    _, grey_boxes = viewer.open(str(paths["grey"]), plugin=None)
    for rect, grey in zip(boxes.data, grey_boxes.data, strict=True):
        np.testing.assert_allclose(
            [boxes.data_to_world(p) for p in rect], [grey_boxes.data_to_world(p) for p in grey]
        )


def _indexed_rgb_file(tmp_path):
    """An RGB(A) file (colours on a last ``channel`` axis, LPS, anisotropic) whose red and
    green values hold each voxel's stored index, with one box: ``(array, path)``."""
    from mlarray import MLArray

    rgb = np.zeros((6, 8, 10, 3), np.uint8)
    rgb[..., 0] = np.arange(6 * 8 * 10).reshape(6, 8, 10) % 256  # each voxel's stored index
    rgb[..., 1] = np.arange(6 * 8 * 10).reshape(6, 8, 10) // 256
    m = MLArray(
        rgb,
        spacing=(2.9, 1.3, 0.7),
        origin=(5, 6, 7),
        axis_labels=["spatial_z", "spatial_y", "spatial_x", "channel"],
    )
    m.meta.spatial.coord_system = "LPS"
    m.meta.bbox.bboxes = [[[1, 4], [2, 6], [3, 9]]]
    path = tmp_path / "rgb.mla"
    m.save(path)
    return rgb, path


def test_an_rgb_picture_saved_with_its_boxes_keeps_them_and_adds_the_ones_drawn(
    make_napari_viewer, tmp_path
):
    """An RGB(A) file (colours on a last ``channel`` axis) opened by drag-and-drop and saved
    with its boxes layer: the stored boxes are written as they were and a rectangle drawn
    on slice z=2 becomes a box over exactly those voxels (was: every box rewritten on the
    wrong axes, [[1, 4], [2, 6], [3, 9]] -> [[6.95, 15.65], [1.52, 3.31], [-14, -11]], also
    over the file it came from)."""
    import itertools

    import napari

    from mlarray import MLArray

    rgb, path = _indexed_rgb_file(tmp_path)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=None)
    image, boxes = layers
    assert image.rgb and type(boxes).__name__ == "Shapes"
    napari.save_layers(str(path), layers, plugin="napari-mlarray")
    back = MLArray.open(path)
    assert back.meta.bbox.bboxes == [[[1, 4], [2, 6], [3, 9]]]
    np.testing.assert_array_equal(back[...], rgb)
    # a rectangle over rows 1..2 and columns 2..3 of the shown slice 2 (the Shapes layer
    # shares the image layer's data coordinates); the voxels it covers, by their values
    rect = [[2.0, r, c] for r, c in [(0.5, 1.5), (0.5, 3.5), (2.5, 3.5), (2.5, 1.5)]]
    boxes.add_rectangles([np.array(rect)])
    shown = np.asarray(image.data)
    covered = {
        np.unravel_index(int(shown[i][0]) + 256 * int(shown[i][1]), (6, 8, 10))
        for i in itertools.product([2], range(1, 3), range(2, 4))
    }
    napari.save_layers(str(tmp_path / "drawn.mla"), [image, boxes], plugin="napari-mlarray")
    drawn = MLArray.open(tmp_path / "drawn.mla")
    assert drawn.meta.bbox.bboxes[0] == [[1, 4], [2, 6], [3, 9]]
    box = drawn.meta.bbox.bboxes[1]
    assert set(itertools.product(*(range(int(a), int(b)) for a, b in box))) == covered
    np.testing.assert_array_equal(drawn[...], rgb)


def test_a_new_boxes_layer_saved_alone_over_an_rgb_picture_adds_boxes_on_its_spatial_axes(
    make_napari_viewer, tmp_path
):
    """Shapes drawn in a new layer over an RGB(A) file opened by drag-and-drop and saved
    alone over that file: the picture and its boxes stay, and the rectangle becomes a
    box over exactly the voxels it covers, on the picture's three spatial axes (was:
    every box written with a fourth, colour extent [0, 3])."""
    import itertools

    import napari

    from mlarray import MLArray

    rgb, path = _indexed_rgb_file(tmp_path)
    viewer = make_napari_viewer()
    image, _ = viewer.open(path, plugin=None)
    assert image.rgb
    corners = [[2.0, r, c] for r, c in [(0.5, 1.5), (0.5, 3.5), (2.5, 3.5), (2.5, 1.5)]]
    drawn = viewer.add_shapes(
        [np.array([image.data_to_world(p) for p in corners])], shape_type="rectangle", ndim=3
    )
    shown = np.asarray(image.data)
    covered = {
        np.unravel_index(int(shown[i][0]) + 256 * int(shown[i][1]), (6, 8, 10))
        for i in itertools.product([2], range(1, 3), range(2, 4))
    }
    napari.save_layers(str(path), [drawn], plugin="napari-mlarray")
    back = MLArray.open(path)
    np.testing.assert_array_equal(back[...], rgb)
    assert back.meta.spatial.axis_labels == ["spatial_z", "spatial_y", "spatial_x", "channel"]
    kept, box = back.meta.bbox.bboxes
    assert kept == [[1, 4], [2, 6], [3, 9]]
    assert len(box) == 3
    assert set(itertools.product(*(range(int(a), int(b)) for a, b in box))) == covered


def test_new_labels_for_an_rgb_picture_pair_voxel_for_voxel_with_it(make_napari_viewer, tmp_path):
    """ "New labels for this image" over an RGB(A) picture saves a mask of the picture's
    grid in its stored order: the voxel painted under the brush is the picture's voxel at
    the same index, same affine and axis labels (was: stored as a layer made in napari,
    z reversed for a zyx file, transposed for an xyz one, another affine, no labels)."""
    import napari

    from mlarray import MLArray
    from napari_mlarray._new_labels import new_labels_for_image

    rgb = np.zeros((6, 8, 10, 3), np.uint8)
    rgb[..., 0] = np.arange(6 * 8 * 10).reshape(6, 8, 10) % 256
    rgb[..., 1] = np.arange(6 * 8 * 10).reshape(6, 8, 10) // 256
    for labels in (
        ["spatial_z", "spatial_y", "spatial_x"],
        ["spatial_x", "spatial_y", "spatial_z"],
    ):
        m = MLArray(
            rgb, spacing=(2.9, 1.3, 0.7), origin=(5, 6, 7), axis_labels=[*labels, "channel"]
        )
        m.meta.spatial.coord_system = "LPS"
        path = tmp_path / f"{labels[0]}.mla"
        m.save(path)
        viewer = make_napari_viewer()
        image = viewer.open(path, plugin=None)[0]
        mask = new_labels_for_image(viewer) or viewer.layers[-1]
        mask.data[1, 2, 3] = 5
        under = np.asarray(image.data)[1, 2, 3]
        out = tmp_path / f"{labels[0]}_mask.mla"
        napari.save_layers(str(out), [mask], plugin="napari-mlarray")
        saved = MLArray.open(out)
        assert saved.shape == rgb.shape[:-1] and saved.meta.spatial.axis_labels == labels
        (painted,) = np.argwhere(saved[...] == 5)
        np.testing.assert_array_equal(rgb[tuple(painted)], under)
        img_affine = np.asarray(MLArray.open(path).affine, dtype=float)
        np.testing.assert_allclose(np.asarray(saved.affine, dtype=float), img_affine)


def _codec(path: Path) -> object:
    """The codec of a file's chunks (python-blosc2's schunk is a view of its NDArray: the
    NDArray is kept alive while it is read)."""
    import blosc2

    stored = blosc2.open(str(path))
    return stored.schunk.cparams.codec
