"""Viewer tier: a colour DICOM converted with ``mlarray convert`` opens in napari as one RGB
picture in its own colours, as napari shows a PNG (it opened as three channel layers)."""

from __future__ import annotations

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception as exc:  # qtpy raises its own error types for a missing binding
    pytest.skip(f"no usable Qt binding: {exc}", allow_module_level=True)

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.qt


def _stripes_dicom(folder) -> np.ndarray:
    """A one-slice RGB DICOM of red | green | blue stripes (left to right), written with
    mlarray's own DICOM output; returns its pixels."""
    from mlarray.convert import convert_file

    picture = np.zeros((1, 60, 90, 3), np.uint8)
    for k in range(3):
        picture[0, :, 30 * k : 30 * (k + 1), k] = 255
    img = sitk.GetImageFromArray(picture, isVector=True)
    sitk.WriteImage(img, str(folder / "stripes.nrrd"))
    convert_file(folder / "stripes.nrrd", folder / "stripes.mla")
    convert_file(folder / "stripes.mla", folder / "stripes_dicom", to="dicom")
    return picture


def test_converted_colour_dicom_opens_as_one_rgb_layer(make_napari_viewer, tmp_path):
    from pydicom.data import get_testdata_file

    from mlarray.convert import convert_file

    src = get_testdata_file("examples_rgb_color.dcm")
    convert_file(src, tmp_path / "photo.mla")
    viewer = make_napari_viewer(show=True)  # screenshots need a shown canvas
    layers = viewer.open(str(tmp_path / "photo.mla"), plugin=None)
    assert len(layers) == 1
    (photo,) = layers
    assert photo._type_string == "image" and photo.rgb
    np.testing.assert_array_equal(
        np.asarray(photo.data), pydicom.dcmread(src).pixel_array[np.newaxis]
    )
    viewer.layers.clear()

    picture = _stripes_dicom(tmp_path)  # through DICOM and back, then seen on the canvas
    convert_file(tmp_path / "stripes_dicom", tmp_path / "stripes.mla", overwrite=True)
    (stripes,) = viewer.open(str(tmp_path / "stripes.mla"), plugin=None)
    assert stripes.rgb
    np.testing.assert_array_equal(np.asarray(stripes.data), picture)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    lit = shot.sum(-1) > 0
    rows, cols = np.nonzero(lit)
    mid = (rows.min() + rows.max()) // 2
    width = cols.max() - cols.min() + 1
    # what the user sees, left to right: pure red, green, blue, each a third of the picture
    for k in range(3):
        seen = shot[mid, cols.min() + (2 * k + 1) * width // 6]
        expected = np.zeros(3, int)
        expected[k] = 255
        np.testing.assert_allclose(seen, expected, atol=8)
