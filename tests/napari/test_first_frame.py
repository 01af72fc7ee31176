"""The reader reaches the first frame without importing python-blosc2 (planes and volumes
decoded through the wheel's libblosc2, see napari_mlarray._source), and gives exactly
what it gives through ``MLArray``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlarray import MLArray, _clib
from mlarray.errors import CorruptChunkError, MLArrayFormatError
from mlarray.frame import inspect_frame
from mlarray.io import save_mla
from mlarray.meta import Meta
from napari_mlarray._lazy import LazyView
from napari_mlarray._reader import read_mla
from napari_mlarray._source import FileSource
from napari_mlarray._writer import save_layers
from tests.conftest import FIXTURES, fixture_names
from tests.napari._helpers import write_mla


def _ct(shape=(30, 40, 50), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, shape).astype(np.int16)


def _oblique(tmp_path, name="ct.mla", **kw):
    data = _ct()
    path = tmp_path / name
    write_mla(
        path,
        data,
        spacing=(2.5, 0.8, 0.7),
        origin=(10.0, -20.0, 5.0),
        **kw,
    )
    return path, data


def _run(code: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _without_clib(monkeypatch):
    monkeypatch.setattr(_clib, "_package_dir", lambda: None)
    _clib.reset()


def _same_kwargs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray) or isinstance(b[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def test_reader_plane_path_does_not_import_blosc2(tmp_path):
    assert _clib.get() is not None
    path, _ = _oblique(tmp_path)
    code = f"""
import json, sys
import numpy as np
from napari_mlarray._reader import read_mla
((view, kw, kind),) = read_mla({str(path)!r})
planes = [np.asarray(view[i]).tolist() for i in (0, view.shape[0] // 2)]
side = np.asarray(view[:, 7]).tolist()
print(json.dumps({{"blosc2": "blosc2" in sys.modules, "kind": kind,
                  "source": type(view.source).__name__, "perm": list(view.perm),
                  "planes": planes, "side": side,
                  "limits": list(kw["contrast_limits"])}}))
"""
    out = _run(code)
    # the reference's files: an image, a label map with boxes, boxes without an array
    names = fixture_names()
    fixtures = _run(
        "import json, sys\n"
        "import numpy as np\n"
        "from napari_mlarray._reader import read_mla\n"
        "kinds = {}\n"
        f"for name in {names!r}:\n"
        f"    layers = read_mla({str(FIXTURES)!r} + '/' + name + '.mla')\n"
        "    kinds[name] = [t for _, _, t in layers]\n"
        "    for data, _, t in layers:\n"
        "        if t != 'shapes':\n"
        "            np.asarray(data[data.shape[0] // 2])\n"
        'print(json.dumps({"blosc2": "blosc2" in sys.modules, "kinds": kinds}))'
    )
    assert fixtures["blosc2"] is False
    assert fixtures["kinds"]["i_metadata_only_bboxes"] == ["shapes"]
    assert fixtures["kinds"]["d_seg_uint8_bboxes"] == ["labels", "shapes"]
    assert out["blosc2"] is False and out["kind"] == "image"
    assert out["source"] == "FileSource"
    ref = LazyView(MLArray.open(path), perm=out["perm"])
    n = ref.shape[0]
    for got, i in zip(out["planes"], (0, n // 2), strict=True):
        np.testing.assert_array_equal(np.array(got, np.int16), ref[i])
    np.testing.assert_array_equal(np.array(out["side"], np.int16), ref[:, 7])


@pytest.mark.qt
def test_viewer_first_frame_and_3d_without_blosc2(tmp_path):
    """A real viewer in a fresh process: drag-and-drop open, first frame, scroll, 3D."""
    assert _clib.get() is not None
    path, _ = _oblique(tmp_path)
    code = f"""
import json, sys
import numpy as np
import napari
viewer = napari.Viewer(show=True)
layers = viewer.open({str(path)!r}, plugin=None)
shot = viewer.screenshot(canvas_only=True, flash=False)
first = "blosc2" in sys.modules
viewer.dims.set_current_step(0, 3)
viewer.screenshot(canvas_only=True, flash=False)
viewer.dims.ndisplay = 3
shot3 = viewer.screenshot(canvas_only=True, flash=False)
layer = layers[0]
out = {{"first": first, "after_3d": "blosc2" in sys.modules,
        "blank": bool(np.asarray(shot)[..., :3].std() == 0),
        "blank3d": bool(np.asarray(shot3)[..., :3].std() == 0),
        "perm": list(layer.data.perm), "plane3": np.asarray(layer.data[3]).tolist(),
        "limits": list(layer.contrast_limits)}}
viewer.close()
print(json.dumps(out))
"""
    out = _run(code)
    assert out["first"] is False and out["after_3d"] is False
    assert not out["blank"] and not out["blank3d"]
    ref = LazyView(MLArray.open(path), perm=out["perm"])
    np.testing.assert_array_equal(np.array(out["plane3"], np.int16), ref[3])


@pytest.mark.parametrize("name", fixture_names())
def test_same_layers_with_and_without_the_c_library(monkeypatch, name):
    p = str(FIXTURES / f"{name}.mla")
    fast = read_mla(p)
    _without_clib(monkeypatch)
    try:
        slow = read_mla(p)
    finally:
        monkeypatch.undo()
        _clib.reset()
    assert [t for _, _, t in fast] == [t for _, _, t in slow]
    for (a, ka, kind), (b, kb, _) in zip(fast, slow, strict=True):
        _same_kwargs(ka, kb)
        if kind == "shapes":
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
            continue
        assert type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
        if isinstance(a, LazyView):
            assert isinstance(a.source, FileSource) and not isinstance(b.source, FileSource)
            for axis in range(a.ndim):
                for i in (0, a.shape[axis] // 2, a.shape[axis] - 1):
                    key = (slice(None),) * axis + (i,)
                    np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_array_equal(a, b)


def test_labels_read_the_same_without_the_c_library(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, (20, 24, 28)).astype(np.uint8)
    p = tmp_path / "seg.mla"
    write_mla(p, labels, meta={"is_seg": True}, spacing=(1.0, 1.0, 2.0))
    ((fast, kf, kind),) = read_mla(str(p))
    _without_clib(monkeypatch)
    try:
        ((slow, ks, _),) = read_mla(str(p))
    finally:
        monkeypatch.undo()
        _clib.reset()
    assert kind == "labels" and isinstance(fast, np.ndarray) and fast.flags.writeable
    np.testing.assert_array_equal(fast, slow)
    _same_kwargs(kf, ks)


def test_a_damaged_chunk_raises_ours_through_the_reader(tmp_path):
    data = _ct((30, 40, 50), seed=3)
    p = tmp_path / "damaged.mla"
    save_mla(p, data, Meta(), patch_size=None, chunk_size=(10, 20, 25), block_size=(5, 10, 5))
    buf = bytearray(p.read_bytes())
    info = inspect_frame(bytes(buf))
    bad = int(np.flatnonzero(info.chunk_pos >= 0)[-1])  # chunk (2, 1, 1): planes 20..29
    buf[int(info.chunk_pos[bad]) + 40] ^= 0xFF
    p.write_bytes(bytes(buf))
    ((view, _, _),) = read_mla(str(p))  # the sample plane (15) is in undamaged chunks
    assert isinstance(view.source, FileSource)
    k = list(view.perm).index(0)  # the view axis of stored axis 0
    expected = LazyView(data, perm=view.perm)
    key = (slice(None),) * k + (5,)
    np.testing.assert_array_equal(view[key], expected[key])
    with pytest.raises(CorruptChunkError, match=rf"damaged\.mla.*chunk {bad} "):
        np.asarray(view[(slice(None),) * k + (25,)])  # a lazy plane, read here
    with pytest.raises(CorruptChunkError, match=r"damaged\.mla"):
        np.asarray(view)  # the 3D view's whole read
    seg = tmp_path / "damaged_seg.mla"
    save_mla(
        seg,
        (data > 500).astype(np.uint8),
        Meta.from_mapping({"is_seg": True}),
        patch_size=None,
        chunk_size=(10, 20, 25),
        block_size=(5, 10, 5),
    )
    buf = bytearray(seg.read_bytes())
    info = inspect_frame(bytes(buf))
    buf[int(info.chunk_pos[0] + info.chunk_cbytes[0]) - 3] ^= 0xFF  # compressed data
    seg.write_bytes(bytes(buf))
    with pytest.raises(CorruptChunkError, match=r"damaged_seg\.mla"):
        read_mla(str(seg))  # label maps are read whole when opened


def test_file_source_hands_over_to_mlarray(tmp_path):
    path, data = _oblique(tmp_path)
    ((view, kw, _),) = read_mla(str(path))
    src = view.source
    assert isinstance(src, FileSource) and src._full is None
    ref = MLArray.open(path)
    # keys the C path does not serve, and attributes of MLArray, open the file as one
    np.testing.assert_array_equal(src[np.array([1, 4]), 3], ref[np.array([1, 4]), 3])
    assert src._full is not None
    np.testing.assert_allclose(src.affine, ref.affine)
    assert src.meta.to_mapping() == ref.meta.to_mapping()
    # saving the unchanged layer streams the file's own chunks into a new file
    out = tmp_path / "copy.mla"
    assert save_layers(out, [(view, kw, "image")]) == [str(out)]
    np.testing.assert_array_equal(MLArray.open(out)[...], data)
    with pytest.raises(AttributeError):
        src.no_such_attribute  # noqa: B018


def test_file_source_refuses_a_file_changed_on_disk(tmp_path):
    path, data = _oblique(tmp_path)
    ((view, _, _),) = read_mla(str(path))
    src = view.source
    np.testing.assert_array_equal(np.asarray(view), LazyView(data, perm=view.perm)[...])
    save_mla(path, data[::-1].copy(), Meta())  # replaced: same shape, other data
    # planes still come from the version the viewer opened...
    np.testing.assert_array_equal(np.asarray(view), LazyView(data, perm=view.perm)[...])
    # ...and nothing silently switches to the new one
    with pytest.raises(MLArrayFormatError, match=r"ct\.mla: changed on disk"):
        src.affine  # noqa: B018


def test_a_layer_whose_file_was_deleted_still_saves_the_version_shown(tmp_path):
    path, data = _oblique(tmp_path)
    ((view, kw, _),) = read_mla(str(path))
    affine = np.asarray(MLArray.open(path).affine)
    path.unlink()  # the mapping keeps the version on screen
    out = tmp_path / "rescued.mla"
    assert save_layers(out, [(view, kw, "image")]) == [str(out)]
    saved = MLArray.open(out)
    np.testing.assert_array_equal(saved[...], data)
    np.testing.assert_allclose(np.asarray(saved.affine), affine)
