"""Qt-free tier: the writer as a pure function of (path, layer data, layer metadata).

Layers are real ``napari.layers`` objects (napari without a viewer or Qt).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_mlarray._reader import read_mla
from napari_mlarray._writer import (
    LayerSaveError,
    save_layers,
    write_layers,
    write_single_image,
)
from tests.napari._helpers import view_index, write_mla

# an oblique affine whose data axes run along other world axes, with a flip and an offset
OBLIQUE = np.array(
    [
        [0.0, 0.0, 2.5, -40.0],
        [0.6, 0.35, 0.0, 12.0],
        [-0.3, 0.7, 0.1, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# shear, flip and offset, each data axis still mostly along its own world axis
SHEARED = np.array(
    [
        [2.5, 0.0, 0.2, -40.0],
        [0.1, -0.8, 0.0, 12.0],
        [0.0, 0.3, 0.7, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _save(layer, path):
    return save_layers(path, [layer.as_layer_data_tuple()])


_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)


@pytest.mark.parametrize(
    "transform",
    [
        {"affine": OBLIQUE},
        {"scale": (2.5, -0.8, 0.7), "translate": (5.0, 6.0, -7.0)},
        {"scale": (3.0, 1.0, 0.5), "rotate": [[1, 0, 0], [0, _C, -_S], [0, _S, _C]]},
    ],
    ids=["affine", "scale-translate", "rotate"],
)
def test_layer_made_in_napari_saves_the_geometry_it_was_given(tmp_path, transform):
    from napari.layers import Image

    from mlarray import MLArray

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    layer = Image(data, **transform)
    expected = _layer_affine(layer)
    out = tmp_path / "made.mla"
    assert _save(layer, out) == [str(out)]
    back = MLArray.open(out)
    # what you set is what you get: same array, same axes, same affine
    np.testing.assert_array_equal(back[...], data)
    np.testing.assert_allclose(np.asarray(back.affine), expected, atol=1e-12)
    assert back.meta.spatial.coord_system is None


@pytest.mark.parametrize(
    "transform",
    [
        {"affine": SHEARED},
        {"scale": (2.5, -0.8, 0.7), "translate": (5.0, 6.0, -7.0)},
        {"scale": (3.0, 1.0, 0.5), "rotate": [[1, 0, 0], [0, _C, -_S], [0, _S, _C]]},
    ],
    ids=["affine", "scale-translate", "rotate"],
)
def test_layer_made_in_napari_reopens_where_it_was(tmp_path, transform):
    """Data axes that run mostly along their own world axis: napari shows the file as stored
    (an axis running against its world axis reversed in the data)."""
    from napari.layers import Image

    layer = Image(np.ones((4, 5, 6), np.float32), **transform)
    out = tmp_path / "made.mla"
    _save(layer, out)
    (d2, kw, _), *_ = read_mla(str(out))
    again = Image(d2, **{k: kw[k] for k in ("scale", "translate", "rotate", "shear")})
    block = kw["metadata"]["mlarray"]
    assert block["perm"] == [0, 1, 2] and np.all(np.asarray(kw["scale"]) > 0)
    for idx in ([0, 0, 0], [3, 4, 5], [1, 2, 3]):
        shown = view_index(block, idx, (4, 5, 6))
        np.testing.assert_allclose(again.data_to_world(shown), layer.data_to_world(idx), atol=1e-9)


def _ras_of_display(world) -> np.ndarray:
    """RAS position of a point of the display world: napari world axes point toward the
    patient's inferior, posterior and left (README), i.e. ``napari = (-S, -A, -R)``."""
    inferior, posterior, left = world
    return np.array([-left, -posterior, -inferior])


@pytest.mark.parametrize(
    ("labels", "transform"),
    [
        (("S-I", "A-P", "R-L"), {"scale": (2.5, -0.8, 0.7), "translate": (5.0, 6.0, -7.0)}),
        (("S-I", "A-P", "R-L"), {"affine": SHEARED}),
        (("S-I", "R-L", "A-P"), {"scale": (3.0, 1.0, 0.5), "translate": (1.0, -2.0, 3.0)}),
        (("S-I", "R-L"), {"scale": (2.0, 0.5), "translate": (-4.0, 9.0)}),
        (("A-P", "R-L"), {"scale": (1.5, -0.5), "translate": (4.0, 2.0)}),
    ],
    ids=["volume", "sheared", "labels-reordered", "coronal-plane", "axial-plane"],
)
def test_layer_made_in_the_display_world_keeps_its_anatomy(tmp_path, labels, transform):
    """A layer napari made over an opened file (its "new labels" copies the reader's axis
    labels) lives in the display world: saved, each voxel keeps its anatomical position."""
    from napari.layers import Labels

    from mlarray import MLArray, geometry

    shape = (4, 5, 6)[-len(labels) :]
    layer = Labels(np.zeros(shape, np.uint8), axis_labels=labels, **transform)
    out = tmp_path / "mask.mla"
    _save(layer, out)
    back = MLArray.open(out)
    frame = geometry.anatomical_frame(back.meta.spatial.coord_system, None)
    assert frame is not None
    n = len(shape)
    to_ras = geometry.frame_matrix(frame)[:, :n]
    for idx in itertools.product(*[(0, s - 1) for s in shape]):
        world = dict(zip(labels, layer.data_to_world(idx), strict=True))
        display = [world.get(x, 0.0) for x in ("S-I", "A-P", "R-L")]
        file_world = (np.asarray(back.affine) @ np.r_[idx, 1.0])[:n]
        np.testing.assert_allclose(to_ras @ file_world, _ras_of_display(display), atol=1e-9)


def _layer_affine(layer) -> np.ndarray:
    """The layer's full data-to-world matrix, from napari's own transform chain."""
    n = layer.ndim
    out = np.eye(n + 1)
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        out[:n, j] = np.asarray(layer.data_to_world(e)) - np.asarray(layer.data_to_world(0 * e))
    out[:n, n] = layer.data_to_world(np.zeros(n))
    return out


def test_2d_image_with_affine_round_trips(tmp_path):
    from napari.layers import Image

    from mlarray import MLArray

    A = np.array([[0.0, -1.5, 10.0], [2.0, 0.0, -3.0], [0.0, 0.0, 1.0]])
    data = np.arange(30, dtype=np.float32).reshape(5, 6)
    out = tmp_path / "plane.mla"
    _save(Image(data, affine=A), out)
    np.testing.assert_allclose(np.asarray(MLArray.open(out).affine), A)


def test_labels_made_for_an_opened_image_save_like_the_image(tmp_path):
    from napari.layers import Image, Labels

    from mlarray import MLArray
    from napari_mlarray._new_labels import labels_kwargs_for_image, labels_shape_for_image

    xyz = np.random.default_rng(0).integers(0, 900, (12, 14, 10)).astype(np.int16)
    src = write_mla(
        tmp_path / "ras.mla",
        xyz,
        spacing=[0.7, 0.8, 2.5],
        origin=[10.0, -20.0, 30.0],
        direction=np.diag([-1.0, -1.0, 1.0]).tolist(),
        axis_labels=["spatial_x", "spatial_y", "spatial_z"],
        coord_system="RAS",
    )
    (data, kw, _), *_ = read_mla(str(src))
    image = Image(data, **kw)
    img_data, img_meta, _ = image.as_layer_data_tuple()
    shape = labels_shape_for_image(img_data, img_meta)
    labels = Labels(np.zeros(shape, np.uint8), **labels_kwargs_for_image(img_meta))
    assert labels.name == f"{image.name} labels"
    labels.data[3, 5, 7] = 2  # layer order (z, y, x)
    out = tmp_path / "seg.mla"
    save_layers(out, [labels.as_layer_data_tuple()])
    seg, img = MLArray.open(out), MLArray.open(src)
    assert seg.shape == img.shape and seg.dtype == np.uint8
    # stored (x, y, z); RAS with x, y negated is LPS: z shown reversed (S-I)
    assert np.argwhere(seg[...] == 2).tolist() == [[7, 5, 10 - 1 - 3]]
    assert seg.meta.spatial.coord_system == "RAS" and seg.meta.is_seg.is_seg is True
    assert seg.meta.spatial.axis_labels == ["spatial_x", "spatial_y", "spatial_z"]
    np.testing.assert_allclose(np.asarray(seg.affine), np.asarray(img.affine))


def test_labels_kwargs_for_a_plain_image_copy_its_transforms():
    from napari.layers import Image

    from napari_mlarray._new_labels import labels_kwargs_for_image, labels_shape_for_image

    data = np.zeros((3, 8, 9, 3), np.uint8)
    image = Image(data, rgb=True, scale=(2.0, 0.5, 0.25), name="photo")
    d, meta, _ = image.as_layer_data_tuple()
    kw = labels_kwargs_for_image(meta)
    assert labels_shape_for_image(d, meta) == (3, 8, 9)
    assert "metadata" not in kw and kw["name"] == "photo labels"
    np.testing.assert_allclose(kw["scale"], (2.0, 0.5, 0.25))


@pytest.mark.parametrize(
    "kinds",
    [("image", "labels"), ("image", "image"), ("labels", "points")],
)
def test_selection_an_mla_cannot_hold_is_refused_with_our_own_message(tmp_path, kinds):
    data = np.zeros((4, 5, 6), np.uint8)
    meta = {"scale": [1, 1, 1], "metadata": {}}
    layers = [(data, meta, kind) for kind in kinds]
    out = tmp_path / "x.mla"
    for call in (lambda: save_layers(out, layers), lambda: write_layers(str(out), layers)):
        with pytest.raises(LayerSaveError, match="holds one image or labels layer") as info:
            call()
        # not a ValueError: napari takes those for "not a valid writer" and hides the message
        assert not isinstance(info.value, ValueError)
        assert str(out) in str(info.value) and ", ".join(kinds) in str(info.value)
    assert not out.exists()


def test_npe2_single_writer_reports_library_value_errors_as_ours(tmp_path):
    data = np.zeros((4, 5, 6), np.uint8)
    out = tmp_path / "x.mla"
    with pytest.raises(LayerSaveError, match="rotate must be a 3x3 matrix") as info:
        write_single_image(str(out), data, {"rotate": np.eye(2), "metadata": {}})
    assert isinstance(info.value.__cause__, ValueError)


def test_npe2_write_of_image_and_labels_raises_our_message(tmp_path):
    """Through npe2's writer selection, as napari's File ▸ Save does."""
    import npe2
    from napari.layers import Image, Labels
    from npe2 import io_utils

    npe2.PluginManager.instance().discover()
    layers = [
        Image(np.zeros((4, 5, 6), np.int16)).as_layer_data_tuple(),
        Labels(np.zeros((4, 5, 6), np.uint8)).as_layer_data_tuple(),
    ]
    out = tmp_path / "both.mla"
    with pytest.raises(LayerSaveError, match=r"save each to its own \.mla file"):
        io_utils.write(str(out), layers, plugin_name="napari-mlarray")


def test_rgb_and_multiscale_layers_save_what_napari_shows(tmp_path):
    from napari.layers import Image

    from mlarray import MLArray

    rgb = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    out = tmp_path / "photo.mla"
    _save(Image(rgb, rgb=True, scale=(2.0, 3.0), translate=(1.0, -1.0)), out)
    back = MLArray.open(out)
    np.testing.assert_array_equal(back[...], rgb)
    assert back.meta.spatial.axis_labels == ["spatial", "spatial", "channel"]
    np.testing.assert_allclose(np.asarray(back.affine), [[2, 0, 1], [0, 3, -1], [0, 0, 1]])

    levels = [np.arange(64.0).reshape(8, 8), np.zeros((4, 4))]
    out = tmp_path / "pyramid.mla"
    _save(Image(levels, multiscale=True, scale=(0.5, 0.5)), out)
    back = MLArray.open(out)
    np.testing.assert_array_equal(back[...], levels[0])  # the full resolution
    np.testing.assert_allclose(np.asarray(back.affine), np.diag([0.5, 0.5, 1.0]))


def test_boxes_saved_alone_over_an_unreadable_file_are_refused(tmp_path):
    from napari.layers import Shapes

    path = tmp_path / "broken.mla"
    path.write_bytes(b"not an mla file at all")
    rect = np.array([[0.0, 0.0], [0.0, 4.0], [3.0, 4.0], [3.0, 0.0]])
    shapes = Shapes([rect], shape_type="rectangle")
    with pytest.raises(LayerSaveError, match=r"broken.mla.*cannot be read to keep"):
        write_layers(str(path), [shapes.as_layer_data_tuple()])
    assert path.read_bytes() == b"not an mla file at all"


def test_boxes_saved_alone_over_a_boxes_only_file_replace_it(tmp_path):
    from napari.layers import Shapes

    from mlarray import Meta, MLArray
    from mlarray.io import save_mla

    record = {"bbox": {"bboxes": [[[0, 2], [0, 2]]]}, "spatial": {"spacing": [1.0, 1.0]}}
    path = save_mla(tmp_path / "boxes.mla", None, Meta.from_mapping(record))
    rect = np.array([[0.5, 0.5], [0.5, 4.5], [3.5, 4.5], [3.5, 0.5]])
    shapes = Shapes([rect], shape_type="rectangle")
    assert write_layers(str(path), [shapes.as_layer_data_tuple()]) == [str(path)]
    back = MLArray.open(path)
    assert back.shape is None and back.meta.bbox.bboxes == [[[1, 4], [1, 5]]]


_RECT_3D = np.array([[2.0, 0.5, 1.5], [2.0, 0.5, 3.5], [2.0, 2.5, 3.5], [2.0, 2.5, 1.5]])


@pytest.mark.parametrize(("channels", "dtype"), [(2, np.uint8), (3, np.int16), (5, np.float32)])
def test_boxes_saved_alone_over_a_multichannel_image_stay_on_its_spatial_axes(
    tmp_path, channels, dtype
):
    """The reader shows a multichannel image as one layer per channel, its boxes over the
    spatial axes: Shapes drawn there and saved alone over the file keep the file's
    array and box, and add the drawn box on the spatial axes (was: every box rewritten
    with an extra channel extent [0, channels])."""
    from mlarray import MLArray

    data = np.arange(6 * 8 * 10 * channels, dtype=dtype).reshape(6, 8, 10, channels)
    m = MLArray(data, axis_labels=["spatial_z", "spatial_y", "spatial_x", "channel"])
    m.meta.bbox.bboxes = [[[1, 4], [2, 6], [3, 9]]]
    p = tmp_path / "mc.mla"
    m.save(p)
    shapes = {"ndim": 3, "name": "drawn", "shape_type": ["rectangle"], "metadata": {}}
    save_layers(p, [([_RECT_3D], shapes, "shapes")])
    back = MLArray.open(p)
    np.testing.assert_array_equal(back[...], data)
    kept, drawn = back.meta.bbox.bboxes
    assert kept == [[1, 4], [2, 6], [3, 9]]
    assert len(drawn) == 3


def test_boxes_saved_alone_over_a_label_map_with_three_channels_box_every_axis(tmp_path):
    """A label map (``is_seg``) with a 3-long uint8 channel axis opens as one Labels layer
    over every axis (not as an RGB picture): 4-d Shapes drawn on it and saved alone over
    the file box its four axes (was: "a 4-d Shapes layer cannot box a 3-d layer")."""
    from mlarray import MLArray

    data = np.zeros((6, 8, 10, 3), np.uint8)
    data[1:3, 2:5, 3:7, 1] = 1
    m = MLArray(data, axis_labels=["spatial_z", "spatial_y", "spatial_x", "channel"])
    m.meta.is_seg.is_seg = True
    m.meta.bbox.bboxes = [[[1, 4], [2, 6], [3, 9]]]
    p = tmp_path / "seg.mla"
    m.save(p)
    layers = read_mla(p)
    assert [kind for _, _, kind in layers] == ["labels", "shapes"]
    rect = np.column_stack([np.ones(4), _RECT_3D])  # on channel 1
    shapes = {"ndim": 4, "name": "drawn", "shape_type": ["rectangle"], "metadata": {}}
    save_layers(p, [([rect], shapes, "shapes")])
    back = MLArray.open(p)
    np.testing.assert_array_equal(back[...], data)
    assert back.meta.is_seg.is_seg is True
    kept, drawn = back.meta.bbox.bboxes
    assert kept[:3] == [[1, 4], [2, 6], [3, 9]]
    assert len(drawn) == 4 and drawn[3] == [1, 2]
