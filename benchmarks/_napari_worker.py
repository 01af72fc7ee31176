"""One napari measurement in a fresh process (run under xvfb-run by bench_napari.py).

``python _napari_worker.py KIND PATH OUT.json [LO HI]``: KIND ``mla`` opens PATH like a
drag-and-drop (``viewer.open(path, plugin=None)``: our reader); ``mla-direct`` calls our
reader function itself and adds its layers with ``viewer.add_<layer type>`` (what
``viewer.open`` does after its progress bar and npe2's reader lookup); ``npy-open`` opens
the ``.npy`` PATH like a drag-and-drop too, through napari's own builtin reader
(``np.load``: the whole array in memory; napari computes the contrast limits);
``npy-direct`` calls that builtin reader itself (``napari_builtins.io.napari_get_reader``)
and adds its layers with ``viewer.add_<layer type>``, as ``mla-direct`` does for ours;
``npy`` adds ``np.load(PATH, mmap_mode="r")`` by hand with the given contrast limits (the
fastest thing a user can do without a reader). Times: open -> first frame (the first
canvas screenshot; wall and this process's cpu time), 32 slider steps along the first
axis (each: set the step, process events), and the first 3D frame (ndisplay = 3, then a
screenshot).
"""

from __future__ import annotations

import json
import sys
import time


def _add(viewer, layer_data: tuple):
    """Add one ``(data, [kwargs, [layer_type]])`` tuple as ``viewer.open`` does."""
    kw = layer_data[1] if len(layer_data) > 1 else {}
    kind = layer_data[2] if len(layer_data) > 2 else "image"
    return getattr(viewer, f"add_{kind}")(layer_data[0], **kw)


def main(argv: list[str]) -> int:
    kind, path, out = argv[1], argv[2], argv[3]
    t_imp = time.perf_counter()
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    imported = time.perf_counter() - t_imp
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    app.processEvents()
    viewer.screenshot(canvas_only=True, flash=False)  # an empty canvas is drawn once

    t0, c0 = time.perf_counter(), time.process_time()
    if kind in ("mla", "npy-open"):
        layers = viewer.open(path, plugin=None)
    elif kind == "mla-direct":
        from napari_mlarray._reader import read_mla

        layers = [_add(viewer, ld) for ld in read_mla(path)]
    elif kind == "npy-direct":
        from napari_builtins.io import napari_get_reader

        layers = [_add(viewer, ld) for ld in napari_get_reader(path)(path)]
    else:
        lo, hi = float(argv[4]), float(argv[5])
        layers = [viewer.add_image(np.load(path, mmap_mode="r"), contrast_limits=(lo, hi))]
    shot = viewer.screenshot(canvas_only=True, flash=False)
    first_frame = time.perf_counter() - t0
    first_frame_cpu = time.process_time() - c0  # all threads of this process
    blosc2_first = "blosc2" in sys.modules  # did anything import python-blosc2 so far?

    nz = layers[0].data.shape[0]
    start = max(0, nz // 2 - 16)
    steps = []
    for i in range(start, min(nz, start + 32)):
        s = time.perf_counter()
        viewer.dims.set_current_step(0, i)
        app.processEvents()
        steps.append(time.perf_counter() - s)
    s = time.perf_counter()
    viewer.screenshot(canvas_only=True, flash=False)
    after_scroll_frame = time.perf_counter() - s

    s = time.perf_counter()
    viewer.dims.ndisplay = 3
    shot3 = viewer.screenshot(canvas_only=True, flash=False)
    first_3d = time.perf_counter() - s
    result = {
        "import": imported,
        "first_frame": first_frame,
        "first_frame_cpu": first_frame_cpu,
        "steps": steps,
        "frame_after_scroll": after_scroll_frame,
        "first_3d": first_3d,
        "blosc2_first_frame": blosc2_first,
        "blosc2_3d": "blosc2" in sys.modules,
        "frame_not_blank": bool(np.asarray(shot)[..., :3].std() > 0),
        "frame3d_not_blank": bool(np.asarray(shot3)[..., :3].std() > 0),
    }
    viewer.close()
    with open(out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
