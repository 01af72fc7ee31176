"""A single sagittal or coronal slice (a DICOM localizer) is shown edge-on by napari's default
view: the reader says which dims order shows it in its plane (real localizers from pydicom)."""

from __future__ import annotations

import ast
import os
import re

import numpy as np
import pytest

try:  # pytest.importorskip does not skip when no binding is installed (NAPARI_NOTES)
    from qtpy import QtWidgets  # noqa: F401
except Exception:  # pragma: no cover - no Qt binding
    pytest.skip("needs a Qt binding", allow_module_level=True)

pydicom = pytest.importorskip("pydicom")

LOCALIZERS = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "dicomdirtests")


def _open_noting(viewer, path):
    from napari.utils.notifications import notification_manager

    heard = []
    notification_manager.notification_ready.connect(heard.append)
    try:
        (layer,) = viewer.open(str(path), plugin=None)
    finally:
        notification_manager.notification_ready.disconnect(heard.append)
    return layer, [str(n.message) for n in heard if "edge-on" in str(n.message)]


def _lit_extent(viewer):
    """Height and width (px) of the bright part of the canvas."""
    viewer.reset_view()
    grey = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int).sum(-1)
    rows, cols = np.nonzero(grey > 0)
    return (np.ptp(rows) + 1, np.ptp(cols) + 1) if rows.size else (0, 0)


@pytest.mark.parametrize(
    ("dicom", "plane", "flat", "order"),
    [
        ("98892003/MR1/4919", "sagittal", "R-L", (2, 0, 1)),
        ("98892003/MR2/4950", "coronal", "A-P", (1, 0, 2)),
    ],
)
def test_a_single_slice_is_said_and_its_dims_order_shows_it(
    make_napari_viewer, tmp_path, dicom, plane, flat, order
):
    from mlarray.convert import convert_file

    path = tmp_path / f"{plane}.mla"
    convert_file(os.path.join(LOCALIZERS, dicom), path)
    viewer = make_napari_viewer(show=True)  # screenshots need a shown canvas
    layer, notes = _open_noting(viewer, path)
    assert layer.axis_labels == ("S-I", "A-P", "R-L")
    assert layer.data.shape[layer.axis_labels.index(flat)] == 1
    assert len(notes) == 1 and f"a single {plane} slice" in notes[0]
    assert f"drag {flat} to the top" in notes[0]
    said = ast.literal_eval(re.search(r"viewer\.dims\.order = (\([\d, ]+\))", notes[0])[1])
    assert said == order
    # the default view shows a line; the order the note gives shows the slice in its plane
    height, width = _lit_extent(viewer)
    assert min(height, width) < 0.1 * max(height, width)
    # what the note says to do: in napari's dims sorter (right-click Roll), drag the flat
    # axis to the top of the list
    from napari._qt.widgets.qt_dims_sorter import QtDimsSorter

    sorter = QtDimsSorter(viewer.dims, None)
    listed = [viewer.dims.axis_labels[a.axis] for a in sorter.axis_list]
    sorter.axis_list.move(listed.index(flat), 0)
    sorter.deleteLater()
    assert tuple(viewer.dims.order) == said
    assert flat not in [viewer.dims.axis_labels[d] for d in viewer.dims.displayed]
    height, width = _lit_extent(viewer)
    assert min(height, width) > 0.5 * max(height, width)


def test_an_axial_slice_and_a_volume_are_not_noted(make_napari_viewer, tmp_path):
    from mlarray.convert import convert_file

    viewer = make_napari_viewer()
    path = tmp_path / "axial.mla"
    convert_file(os.path.join(LOCALIZERS, "98892003/MR2/4981"), path)  # an axial slice
    layer, notes = _open_noting(viewer, path)
    assert layer.data.shape[0] == 1 and notes == []
