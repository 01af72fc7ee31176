"""The demo script, end to end: files, header, napari screenshot."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_mlarray import demo


def test_demo_writes_and_describes_without_viewer(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--no-viewer"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.mla", "ct_boxes.mla", "ct_seg.mla"]
    for text in (
        "ct.mla",
        "(64, 128, 128), int16",
        "spacing      : (2.5, 0.8, 0.8)",
        "coord system : LPS",
        "chunks/blocks",
        "codec        : LZ4 level 9",  # image default (mlarray.layout)
        "codec        : LZ4HC level 9",  # label-map default
        "ratio",
        "segmentation : yes",
        "metadata-only",
        "liver",
        "lesion",
        "stats        : min -1024.0",
        "p99.5",
    ):
        assert text in out, text


@pytest.mark.qt
def test_demo_screenshot_under_xvfb(tmp_path):
    try:
        import qtpy.QtWidgets  # noqa: F401
    except ImportError as exc:  # qtpy's QtBindingsNotFoundError is an ImportError
        pytest.skip(f"no Qt binding: {exc}")
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    png = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_mlarray.demo",
            "--out",
            str(tmp_path),
            "--screenshot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Saved a screenshot" in proc.stdout
    import imageio.v3 as iio

    image = iio.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    gray = image[..., :3].astype(float).mean(axis=-1)
    assert gray.std() > 10  # not blank
    # the canvas shows the CT: many distinct gray levels, not just UI chrome
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 200
