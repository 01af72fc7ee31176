"""Every file written by the reference package (0.0.54) loads and opens here, with every field."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mlarray import MLArray
from tests.conftest import FIXTURES, fixture_names, load_expected

NAMES = fixture_names()


def _close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1e-9)


@pytest.fixture(params=NAMES)
def case(request):
    return request.param, load_expected(request.param)


@pytest.mark.parametrize("how", ["open", "load", "load_numpy", "constructor"])
def test_fixture_recovers_every_field(case, how):
    name, exp = case
    path = FIXTURES / f"{name}.mla"
    if how == "open":
        a = MLArray.open(path)
    elif how == "load":
        a = MLArray.load(path)
    elif how == "load_numpy":
        a = MLArray.load(path, compressed=False)
    else:
        a = MLArray(path)
    m = a.meta
    assert m._has_array.has_array is exp["has_array"]
    if exp["has_array"]:
        assert list(a.shape) == exp["shape"]
        assert a.dtype == np.dtype(exp["dtype_str"])
        data = a.to_numpy()
        assert (
            hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
            == exp["sha256_c_order"]
        )
        assert a.ndim == exp["ndim"] and a.spatial_ndim == exp["spatial_ndim"]
        if how in ("open", "load"):
            assert list(a.chunks) == exp["chunk_size"]
            assert list(a.blocks) == exp["block_size"]
    else:
        assert a.shape is None and a.ndim is None
        with pytest.raises(TypeError):
            a.to_numpy()
    assert _close(a.spacing, exp["spacing"])
    assert _close(a.origin, exp["origin"])
    assert _close(a.direction, exp["direction"])
    assert _close(m.spatial.affine, exp["affine_stored"])
    assert _close(a.affine, exp["affine_property"])
    assert _close(a.translation, exp["translation"])
    assert _close(a.scale, exp["scale"])
    assert _close(a.rotation, exp["rotation"])
    assert _close(a.shear, exp["shear"])
    assert m.spatial.axis_labels == exp["axis_labels"]
    assert m.spatial.axis_units == exp["axis_units"]
    assert m.spatial.coord_system == exp["coord_system"]
    assert m.is_seg.is_seg == exp["is_seg"]
    assert m.bbox.bboxes == exp["bboxes"]
    assert m.bbox.scores == exp["bbox_scores"]
    assert m.bbox.labels == exp["bbox_labels"]
    assert m.stats.to_mapping() == exp["stats"]
    assert m.source.data == exp["source"]
    assert m.extra.data == exp["extra"]
    if how != "load_numpy":
        assert m.blosc2.chunk_size == exp["chunk_size"]
        assert m.blosc2.block_size == exp["block_size"]
        assert m.blosc2.patch_size == exp["patch_size"]
        assert m.blosc2.cparams == exp["meta_cparams"]
        assert m.blosc2.dparams == exp["meta_dparams"]
        assert m.to_mapping() == exp["meta_to_mapping"]
        assert m.to_plain() == exp["meta_to_plain"]
    assert m._mlarray_version.value == exp["mlarray_version"]
    assert m._image_meta_format.value == exp["image_meta_format"]


def test_fixture_resave_roundtrip_keeps_everything(case, tmp_path):
    name, exp = case
    a = MLArray.open(FIXTURES / f"{name}.mla")
    out = tmp_path / f"{name}.mla"
    a.save(out)
    b = MLArray.open(out)
    assert b.meta.to_mapping() == exp["meta_to_mapping"]
    if exp["has_array"]:
        assert hashlib.sha256(b.to_numpy().tobytes()).hexdigest() == exp["sha256_c_order"]
        assert list(b.chunks) == exp["chunk_size"] and list(b.blocks) == exp["block_size"]


def test_partial_reads_of_fixture_match_full_read():
    a = MLArray.open(FIXTURES / "a_ct3d_int16.mla")
    full = a.to_numpy()
    np.testing.assert_array_equal(a[10:20, 5:70:3, -4:], full[10:20, 5:70:3, -4:])
    np.testing.assert_array_equal(a[3], full[3])
    np.testing.assert_array_equal(np.asarray(a), full)
    assert len(a) == 64
