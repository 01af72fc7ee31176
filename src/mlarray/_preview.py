"""``mlarray preview``: the three orthogonal mid-planes as one PNG, radiological view.

Only the three planes are read from the file (a memory-mapped open
decompresses just the chunks they cross). Each panel is shown as radiology
viewers do: axial and coronal with the patient's right on the left of the
image, anterior (axial) or superior (coronal, sagittal) up, sagittal with
anterior on the left. Pixels keep the physical aspect of the voxels.
Drawing uses Pillow (the ``preview`` extra).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlarray import geometry
from mlarray.errors import MLArrayError
from mlarray.meta import is_colour_axis
from mlarray.mlarray import MLArray

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "PreviewError",
    "anatomical_axes",
    "plane_views",
    "write_preview",
]

#: Allowed ``size`` (height of the tallest panel, pixels); no panel side exceeds MAX_SIZE,
#: so a PNG holds at most three 4096 x 4096 panels (~150 MB of RGB while drawn).
MIN_SIZE, MAX_SIZE = 16, 4096

# letters at the (start, end) of each LPS world axis, i.e. the - and + ends
_ENDS = {0: ("R", "L"), 1: ("A", "P"), 2: ("I", "S")}
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 190],
    ],
    dtype=np.float64,
)


class PreviewError(MLArrayError, ValueError):
    """A file that cannot be previewed; the message names it."""


def anatomical_axes(img: MLArray) -> tuple[list[tuple[int, int]], str | None]:
    """For each spatial array axis, the LPS world axis it runs along and the sign.

    Returns
    -------
    (list of (int, int), str or None)
        ``(lps_axis, sign)`` per spatial array axis (sign +1 toward L, P or S),
        and a note when the orientation had to be assumed.
    """
    meta = img.meta.spatial
    mask = img.spatial_axis_mask
    spatial = [ax for ax, m in enumerate(mask) if m]
    n = len(spatial)
    frame = meta.world_frame  # the reference converter's array codes read as RAS
    if frame is not None and n == 3:
        rot = geometry.rotation(np.asarray(img.affine, dtype=np.float64))
        to_lps = geometry.frame_matrix("LPS").T @ geometry.frame_matrix(frame)
        return [(w, s) for w, s in geometry.axis_world_map(to_lps @ rot)], None
    labels = meta.axis_labels
    named = {"spatial_x": 0, "spatial_y": 1, "spatial_z": 2}
    if labels and n == 3 and all(labels[ax] in named for ax in spatial):
        return [(named[labels[ax]], 1) for ax in spatial], (
            "no world frame (coord_system) recorded; orientation taken from the axis labels"
        )
    return [(n - 1 - j, 1) for j in range(n)], (
        "no world frame (coord_system) or x/y/z labels; planes shown in stored order, "
        "which may not be anatomical"
    )


@dataclass
class PlaneView:
    """How one panel is cut: the fixed array axis, and the row/column axes with flips."""

    name: str
    fixed: int
    rows: int
    cols: int
    flip_rows: bool
    flip_cols: bool
    top: str
    bottom: str
    left: str
    right: str


def plane_views(axes: list[tuple[int, int]], spatial: list[int]) -> list[PlaneView]:
    """Axial, coronal and sagittal views for spatial array axes with LPS ``axes``."""
    by_world = {w: (spatial[j], s) for j, (w, s) in enumerate(axes)}

    def view(name: str, fixed_w: int, row_w: int, row_to_plus: bool, col_w: int) -> PlaneView:
        # rows run toward the + end of row_w when row_to_plus, columns toward + of col_w
        r_ax, r_sign = by_world[row_w]
        c_ax, c_sign = by_world[col_w]
        flip_r = (r_sign > 0) != row_to_plus
        flip_c = c_sign < 0
        r_ends, c_ends = _ENDS[row_w], _ENDS[col_w]
        top, bottom = (r_ends[0], r_ends[1]) if row_to_plus else (r_ends[1], r_ends[0])
        return PlaneView(
            name, by_world[fixed_w][0], r_ax, c_ax, flip_r, flip_c, top, bottom, *c_ends
        )

    return [
        view("axial", 2, 1, True, 0),  # A up, patient right on the left
        view("coronal", 1, 2, False, 0),  # S up, patient right on the left
        view("sagittal", 0, 2, False, 1),  # S up, anterior on the left
    ]


def _spacing_of(img: MLArray, spatial: list[int]) -> dict[int, float]:
    try:
        sc = geometry.scale(np.asarray(img.affine, dtype=np.float64))
    except MLArrayError:
        sc = np.ones(len(spatial))
    return {ax: float(sc[j]) for j, ax in enumerate(spatial)}


def _colour_axis(img: MLArray, shape: tuple[int, ...]) -> int | None:
    """The axis holding the colours of an RGB(A) picture (:func:`mlarray.meta.is_colour_axis`),
    when it is the file's only non-spatial axis; else None."""
    other = [ax for ax, m in enumerate(img.spatial_axis_mask) if not m]
    if len(other) == 1 and is_colour_axis(shape, other[0], img.dtype):
        return other[0]
    return None


def _plane(
    img: MLArray, v: PlaneView, index: int, shape: tuple[int, ...], colour: int | None = None
) -> np.ndarray:
    """The mid-plane ``v`` of ``img`` as shown (rows down, columns right); the colours
    of a picture (axis ``colour``) kept as its last axis."""
    mask = img.spatial_axis_mask
    key: list[Any] = []
    for ax, n in enumerate(shape):
        if ax == colour:
            key.append(slice(None))
        elif not mask[ax]:
            key.append(min(max(index, 0), n - 1))
        elif ax == v.fixed:
            key.append(n // 2)
        else:
            key.append(slice(None))
    plane = np.asarray(img[tuple(key)])
    remaining = [ax for ax in range(len(shape)) if mask[ax] and ax != v.fixed]
    if remaining.index(v.rows) != 0:
        plane = np.swapaxes(plane, 0, 1)
    if v.flip_rows:
        plane = plane[::-1]
    if v.flip_cols:
        plane = plane[:, ::-1]
    return plane


def _window(planes: list[np.ndarray], img: MLArray) -> tuple[float, float]:
    st = img.meta.stats
    if st.percentile_min is not None and st.percentile_max is not None:
        lo, hi = float(st.percentile_min), float(st.percentile_max)
    else:
        values = np.concatenate([p.ravel() for p in planes]).astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        lo, hi = (float(x) for x in np.percentile(values, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _labels_rgb(labels: np.ndarray) -> np.ndarray:
    lab = labels.astype(np.int64)
    rgb = _PALETTE[(lab - 1) % len(_PALETTE)]
    rgb[lab == 0] = 0
    return rgb


def _render(gray: np.ndarray | None, labels: np.ndarray | None, lo: float, hi: float) -> np.ndarray:
    if gray is None:
        return _labels_rgb(labels).astype(np.uint8)
    if gray.ndim == 3:  # an RGB(A) picture, drawn as it is (over black where transparent)
        rgb = gray[..., :3].astype(np.float64)
        if gray.shape[-1] == 4:
            rgb *= gray[..., 3:4] / 255.0
    else:
        g = np.clip((gray.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255
        rgb = np.repeat(g[..., np.newaxis], 3, axis=2)
    if labels is not None:
        on = labels > 0
        rgb[on] = 0.55 * rgb[on] + 0.45 * _labels_rgb(labels)[on]
    return np.nan_to_num(rgb).astype(np.uint8)


def write_preview(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    index: int = 0,
    size: int = 256,
    boxes: bool = True,
) -> list[str]:
    """Write the three mid-planes of ``path`` to the PNG ``output``.

    Parameters
    ----------
    path : str or Path
        An ``.mla`` file with three spatial axes. An RGB(A) picture (8-bit colours on
        its last axis, as ``mlarray convert`` stores colour DICOM and NIfTI) is drawn
        in its colours.
    output : str or Path
        The PNG to write (atomically).
    mask : str or Path, optional
        A label map on the same grid, drawn in colour over the image. When
        ``path`` itself is a label map (``is_seg``) it is drawn in colour.
    index : int
        Position along non-spatial axes (channel, time).
    size : int
        Height in pixels of the tallest panel, :data:`MIN_SIZE` to
        :data:`MAX_SIZE`; all panels share one scale (pixels per
        millimetre), so the three views are comparable. A panel wider than
        :data:`MAX_SIZE` at that scale (a long, thin volume) lowers the scale
        of all of them so that none is.
    boxes : bool
        Draw the boxes of ``meta.bbox`` that cross each plane.

    Returns
    -------
    list of str
        Notes for the user (an assumed orientation).

    Raises
    ------
    PreviewError
        For a ``size`` out of range (before the file is read), a file without
        three spatial axes, a mask on another grid.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise PreviewError(f"size: expected an int, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise PreviewError(f"size {size}: expected {MIN_SIZE} to {MAX_SIZE} pixels")
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise PreviewError(
            "preview needs Pillow; install the preview extra "
            '(pip install "napari-mlarray[preview]")'
        ) from None
    img = MLArray.open(path)
    if img.shape is None:
        raise PreviewError(f"{os.fspath(path)}: holds no array (metadata only)")
    shape = tuple(img.shape)
    spatial = [ax for ax, m in enumerate(img.spatial_axis_mask) if m]
    if len(spatial) != 3:
        raise PreviewError(
            f"{os.fspath(path)}: preview needs 3 spatial axes, the file has {len(spatial)}"
        )
    axes, note = anatomical_axes(img)
    notes = [note] if note else []
    views = plane_views(axes, spatial)
    seg_img = bool(img.meta.is_seg.is_seg)
    colour = None if seg_img else _colour_axis(img, shape)
    planes = [_plane(img, v, index, shape, colour) for v in views]
    label_planes: list[np.ndarray | None] = [None] * 3
    if mask is not None:
        m = MLArray.open(mask)
        m_spatial = [ax for ax, k in enumerate(m.spatial_axis_mask) if k]
        if [m.shape[a] for a in m_spatial] != [shape[a] for a in spatial]:
            raise PreviewError(
                f"{os.fspath(mask)}: the mask's spatial shape "
                f"{[m.shape[a] for a in m_spatial]} differs from the image's "
                f"{[shape[a] for a in spatial]}"
            )
        m_views = plane_views(axes, m_spatial)
        label_planes = [_plane(m, v, index, tuple(m.shape)) for v in m_views]
    lo, hi = _window(planes, img)
    spacing = _spacing_of(img, spatial)
    font = ImageFont.load_default()
    extents = [
        (plane.shape[0] * spacing[v.rows], plane.shape[1] * spacing[v.cols])
        for v, plane in zip(views, planes, strict=True)
    ]
    px_per_mm = min(  # one scale for all panels; no side longer than MAX_SIZE
        int(size) / max(h for h, _ in extents), MAX_SIZE / max(w for _, w in extents)
    )
    panels = []
    for v, plane, labels, (h_mm, w_mm) in zip(views, planes, label_planes, extents, strict=True):
        rgb = _render(None, plane, lo, hi) if seg_img else _render(plane, labels, lo, hi)
        height = max(8, round(h_mm * px_per_mm))
        width = max(8, round(w_mm * px_per_mm))
        resample = Image.NEAREST if (seg_img or labels is not None) else Image.BILINEAR
        panel = Image.fromarray(rgb, "RGB").resize((width, height), resample)
        draw = ImageDraw.Draw(panel)
        if boxes and img.meta.bbox.bboxes:
            _draw_boxes(draw, img.meta.bbox.bboxes, v, plane.shape[:2], shape, width, height)
        draw.text((width // 2 - 3, 2), v.top, fill=(255, 255, 0), font=font)
        draw.text((width // 2 - 3, height - 12), v.bottom, fill=(255, 255, 0), font=font)
        draw.text((2, height // 2 - 5), v.left, fill=(255, 255, 0), font=font)
        draw.text((width - 9, height // 2 - 5), v.right, fill=(255, 255, 0), font=font)
        draw.text((3, 2), f"{v.name} {shape[v.fixed] // 2}", fill=(255, 255, 255), font=font)
        panels.append(panel)
    gap = 4
    canvas = Image.new(
        "RGB",
        (sum(p.width for p in panels) + gap * (len(panels) - 1), max(p.height for p in panels)),
    )
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    out = Path(output)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        canvas.save(tmp, format="PNG")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return notes


def _draw_boxes(
    draw: Any,
    bboxes: list,
    v: PlaneView,
    plane_shape: tuple[int, int],
    shape: tuple[int, ...],
    width: int,
    height: int,
) -> None:
    mid = shape[v.fixed] // 2
    rows_n, cols_n = plane_shape
    for box in bboxes:
        if len(box) != len(shape):
            continue
        f_lo, f_hi = box[v.fixed]
        if not f_lo <= mid <= f_hi:
            continue
        r_lo, r_hi = box[v.rows]
        c_lo, c_hi = box[v.cols]
        if v.flip_rows:
            r_lo, r_hi = rows_n - r_hi, rows_n - r_lo
        if v.flip_cols:
            c_lo, c_hi = cols_n - c_hi, cols_n - c_lo
        sx, sy = width / cols_n, height / rows_n
        draw.rectangle(
            [c_lo * sx, r_lo * sy, c_hi * sx - 1, r_hi * sy - 1], outline=(0, 255, 0), width=2
        )
