"""End-to-end demo: write a synthetic CT case as ``.mla``, inspect it, view it.

Run ``python -m napari_mlarray.demo [--out DIR] [--screenshot PNG]``. It

1. writes ``ct.mla`` (CT volume), ``ct_seg.mla`` (segmentation) and
   ``ct_boxes.mla`` (boxes only) to ``DIR`` (default ``./demo_output``);
2. reopens each with :meth:`mlarray.MLArray.open` and prints its header
   (shape, dtype, geometry, layout, codec, boxes, statistics, size, ratio);
3. opens the files in napari the way drag-and-drop does
   (``viewer.open(paths, plugin=None)``) and shows the viewer, or, with
   ``--screenshot`` or without a display, saves a screenshot and exits.

Headless use: under ``xvfb-run`` (detected from ``$XAUTHORITY``) the demo
does not wait on a window nobody sees; it saves ``DIR/demo.png`` (or the
``--screenshot`` path) and exits 0. Without any display (no ``$DISPLAY`` /
``$WAYLAND_DISPLAY``) it re-runs itself under ``xvfb-run -a`` to do the same,
or, with no ``xvfb-run`` installed, only writes and describes the files.
``--no-viewer`` skips napari altogether.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["describe_file", "main", "open_in_napari"]

_CODEC_NAMES = {0: "BLOSCLZ", 1: "LZ4", 2: "LZ4HC", 4: "ZLIB", 5: "ZSTD"}
_FILTER_NAMES = {0: "NOFILTER", 1: "SHUFFLE", 2: "BITSHUFFLE"}


def _enum_int(value) -> int:
    return int(getattr(value, "value", value))


def _fmt_matrix(matrix) -> str:
    return "-" if matrix is None else " ".join(_fmt(row, 3) for row in matrix)


def _fmt(values, digits: int = 4) -> str:
    if values is None:
        return "-"
    if isinstance(values, int | float):
        return f"{values:.{digits}g}"
    return "(" + ", ".join(_fmt(v, digits) for v in values) + ")"


def describe_file(path: str | os.PathLike) -> str:
    """A readable header of an ``.mla`` file.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    str
        Multi-line text: shape, dtype, spacing, origin, direction, coordinate
        system, axis labels, chunks/blocks, codec, segmentation flag, boxes,
        statistics, file size and compression ratio.
    """
    import blosc2

    from mlarray import MLArray
    from napari_mlarray._recompress import format_bytes

    path = Path(path)
    arr = MLArray.open(path)
    meta = arr.meta
    sp = meta.spatial
    size = path.stat().st_size
    lines = [f"{path.name}  ({format_bytes(size)} on disk)"]
    if arr.shape is None:
        lines.append("  array        : none (metadata-only file)")
    else:
        lines.append(f"  shape, dtype : {tuple(arr.shape)}, {arr.dtype}")
    lines += [
        f"  axis labels  : {sp.axis_labels or '-'}",
        f"  spacing      : {_fmt(sp.spacing)}",
        f"  origin       : {_fmt(sp.origin)}",
        f"  direction    : {_fmt_matrix(sp.direction)}",
    ]
    if sp.affine is not None:
        lines.append(f"  affine       : {_fmt_matrix(sp.affine)}")
    lines.append(f"  coord system : {sp.coord_system or '-'}")
    if arr.shape is not None:
        nbytes = math.prod(arr.shape) * arr.dtype.itemsize
        stored = blosc2.open(os.fspath(path))  # (its schunk is a view: kept alive)
        cp = stored.schunk.cparams
        filters = [_FILTER_NAMES.get(_enum_int(f), str(f)) for f in cp.filters if _enum_int(f)]
        lines += [
            f"  chunks/blocks: {tuple(arr.chunks)} / {tuple(arr.blocks)}",
            f"  codec        : {_CODEC_NAMES.get(_enum_int(cp.codec), cp.codec)} level {cp.clevel}"
            f" + {'+'.join(filters) or 'no filter'}",
            f"  size         : {format_bytes(nbytes)} raw -> {format_bytes(size)}"
            f" (ratio {nbytes / size:.2f}x)",
        ]
    if meta.is_seg.is_seg:
        lines.append("  segmentation : yes")
    bbox = meta.bbox
    if bbox.bboxes:
        lines.append(f"  boxes        : {len(bbox.bboxes)}")
        labels = bbox.labels or [None] * len(bbox.bboxes)
        scores = bbox.scores or [None] * len(bbox.bboxes)
        for box, label, score in zip(bbox.bboxes, labels, scores, strict=True):
            ranges = " x ".join(f"[{lo:g}, {hi:g})" for lo, hi in box)
            extra = f" score {score:.2f}" if score is not None else ""
            lines.append(f"    {label!s:>8}: {ranges}{extra}")
    st = meta.stats
    stats = {
        "min": st.min,
        "max": st.max,
        "mean": st.mean,
        "std": st.std,
        f"p{_fmt(st.percentile_min_key)}": st.percentile_min,
        f"p{_fmt(st.percentile_max_key)}": st.percentile_max,
    }
    shown = ", ".join(f"{k} {v:.1f}" for k, v in stats.items() if v is not None)
    if shown:
        lines.append(f"  stats        : {shown}")
    return "\n".join(lines)


def _has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _virtual_display() -> bool:
    """Whether we run under ``xvfb-run`` (a display nobody looks at)."""
    return "xvfb-run" in os.environ.get("XAUTHORITY", "")


def _rerun_under_xvfb(argv: list[str], screenshot: Path) -> int | None:
    """Run this demo again under ``xvfb-run -a``; ``None`` if it is not installed."""
    import shutil
    import subprocess

    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        return None
    cmd = [xvfb, "-a", sys.executable, "-m", "napari_mlarray.demo", *argv]
    cmd += ["--screenshot", os.fspath(screenshot)]
    return subprocess.run(cmd, check=False).returncode


def open_in_napari(
    paths: Sequence[str | os.PathLike],
    screenshot: str | os.PathLike | None,
    *,
    focus: Sequence[float] | None = None,
    window: tuple[float, float] | None = None,
    widget: bool = True,
):
    """Open ``.mla`` files in a napari viewer like drag-and-drop does.

    Parameters
    ----------
    paths : sequence of path
        Files to open, with ``plugin=None`` so napari picks this plugin's reader.
    screenshot : path or None
        Save a screenshot of the viewer there and close it; ``None`` runs the
        napari event loop until the window is closed.
    focus : sequence of float, optional
        Array index (of the first image) to put the sliders on.
    window : (float, float), optional
        Contrast limits for the first image (e.g. a soft-tissue CT window).
    widget : bool
        Also dock the plugin's *Recompress .mla* widget.

    Returns
    -------
    pathlib.Path or None
        The screenshot path, if one was written.
    """
    import napari
    from napari.layers import Image

    viewer = napari.Viewer(title="napari-mlarray demo", show=True)
    try:
        viewer.open([os.fspath(p) for p in paths], plugin=None)
        image = next((layer for layer in viewer.layers if isinstance(layer, Image)), None)
        if image is not None:
            viewer.layers.selection.active = image
            if window is not None:
                image.contrast_limits = window
            if focus is not None:
                world = image.data_to_world(focus)
                for axis in range(viewer.dims.ndim - viewer.dims.ndisplay):
                    viewer.dims.set_point(axis, world[axis])
        if widget:
            viewer.window.add_plugin_dock_widget("napari-mlarray", "Recompress .mla")
        viewer.window.resize(1400, 860)
        viewer.reset_view()
        if screenshot is None:
            napari.run()
            return None
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        from napari.qt import get_qapp

        get_qapp().processEvents()  # lay out the docked widget before grabbing
        viewer.reset_view()  # fit the volume to the canvas the dock left
        get_qapp().processEvents()
        viewer.screenshot(os.fspath(screenshot), canvas_only=False, flash=False)
        return screenshot
    finally:
        if screenshot is not None:
            viewer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``python -m napari_mlarray.demo``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments; ``sys.argv[1:]`` when ``None``.

    Returns
    -------
    int
        Exit status (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="python -m napari_mlarray.demo",
        description="Write a synthetic CT case as .mla files, print their headers "
        "and open them in napari.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="folder for the .mla files"
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="save a screenshot of the viewer to this PNG and exit (default when no display)",
    )
    parser.add_argument(
        "--no-viewer", action="store_true", help="only write and describe the files"
    )
    args = parser.parse_args(argv)

    if not args.no_viewer and args.screenshot is None and not _has_display():
        # headless shell: let xvfb-run provide a display, then take a screenshot
        rc = _rerun_under_xvfb(list(sys.argv[1:] if argv is None else argv), args.out / "demo.png")
        if rc is not None:
            return rc
        print("No display and no xvfb-run: writing the files only.", file=sys.stderr)
        args.no_viewer = True

    from napari_mlarray._sample_data import make_ct_sample, write_sample

    paths = write_sample(args.out)
    print(f"Wrote the sample case to {args.out.resolve()}\n")
    for path in paths.values():
        print(describe_file(path))
        print()
    if args.no_viewer:
        return 0

    screenshot = args.screenshot
    if screenshot is None and _virtual_display():
        screenshot = args.out / "demo.png"
    order = [paths["image"], paths["seg"], paths["boxes"]]
    lesion = make_ct_sample().boxes["bboxes"][1]
    written = open_in_napari(
        order,
        screenshot,
        focus=[(lo + hi - 1) / 2 for lo, hi in lesion],  # the lesion's middle slice
        window=(-250.0, 350.0),  # soft-tissue window: liver and lesion stand out
    )
    if written is not None:
        print(f"Saved a screenshot of the viewer to {written.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
