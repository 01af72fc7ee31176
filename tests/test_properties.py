"""Property tests (hypothesis): indexing against numpy, geometry and record round trips, layout.

Each property is checked on generated inputs through the public API only:

- ``MLArray.__getitem__``/``__setitem__`` agree with numpy for ints (negative too), slices
  with any step, ``...``, ``None``, integer arrays, boolean masks and mixtures, in memory
  and on files opened for writing (the written file reads back the same);
- :mod:`mlarray.geometry`: compose/decompose round trips for 1-6 spatial axes, with
  reflections, axis permutations and shear;
- :mod:`mlarray.record`: any plain record survives encode/decode unchanged, and a
  :class:`~mlarray.Meta` survives the record and a file;
- :mod:`mlarray.layout`: the documented invariants of the chunk/block layout.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlarray import Meta, MetaValidationError, MLArray
from mlarray.geometry import (
    compose_affine,
    decompose_affine,
    is_orthonormal,
    spacing_origin_direction,
)
from mlarray.layout import comp_blosc2_params
from mlarray.record import decode_record, encode_record, meta_from_record, record_from_meta

FILE_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FAST_SETTINGS = settings(max_examples=100, deadline=None)

_counter = itertools.count()


def _fresh(tmp_path, stem: str):
    """A new file name in ``tmp_path`` for every hypothesis example."""
    return tmp_path / f"{stem}_{next(_counter)}.mla"


# ============================================================================ indexing

DTYPES = [
    "bool",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "int32",
    "uint32",
    "int64",
    "float16",
    "float32",
    "float64",
    "complex64",
]


def _random_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype):
    """Values spread over ``dtype``'s range (bits for integers, signed magnitudes for floats)."""
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    values = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


@st.composite
def _mixed_keys(draw, shape: tuple[int, ...]):
    """A tuple of per-axis ints, slices, integer arrays/lists, with ``...`` and ``None``."""
    n_index = draw(st.integers(0, len(shape)))
    length = draw(st.integers(1, 3))  # integer arrays broadcast together: one common length
    items = []
    for n in shape[:n_index]:
        kind = draw(st.sampled_from(["int", "slice", "array", "list"]))
        if kind == "int":
            items.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            items.append(draw(st.slices(n)))
        else:
            idx = draw(st.lists(st.integers(-n, n - 1), min_size=length, max_size=length))
            items.append(np.array(idx, dtype=np.intp) if kind == "array" else idx)
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), Ellipsis)
    for _ in range(draw(st.integers(0, 2))):
        items.insert(draw(st.integers(0, len(items))), None)
    return tuple(items)


@st.composite
def _mask_keys(draw, shape: tuple[int, ...]):
    """A boolean mask over the leading ``k`` axes, alone or followed by basic indices."""
    k = draw(st.integers(1, len(shape)))
    mask = draw(hnp.arrays(np.bool_, shape[:k]))
    if k == len(shape) or draw(st.booleans()):
        return mask
    rest = draw(hnp.basic_indices(shape[k:], min_dims=0, allow_ellipsis=False))
    return (mask, *(rest if isinstance(rest, tuple) else (rest,)))


def _keys(shape: tuple[int, ...]):
    basic = hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True)
    if 0 in shape:  # an empty array: no integer index exists
        return st.one_of(basic, _mask_keys(shape))
    return st.one_of(
        basic,
        hnp.integer_array_indices(
            shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=3)
        ),
        _mask_keys(shape),
        _mixed_keys(shape),
    )


@st.composite
def _indexing_cases(draw):
    full = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)
    maybe_empty = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)
    shape = draw(st.one_of(full, full, full, maybe_empty))  # empty arrays are supported too
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    chunk = tuple(draw(st.integers(1, max(n, 1))) for n in shape)
    block = tuple(draw(st.integers(1, c)) for c in chunk)
    key = draw(_keys(shape))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, dtype, chunk, block, key, seed


WHERE = ["memory", "numpy", "file r+", "file a", "file c", "created"]


def _make(where: str, data: np.ndarray, chunk, block, tmp_path) -> tuple[MLArray, object]:
    """An MLArray holding ``data``; for files also the path to read back.

    ``"file c"`` is copy-on-write: writes change the array, never the file.
    """
    layout = {"patch_size": None, "chunk_size": chunk, "block_size": block}
    if where == "memory":
        return MLArray(data.copy(), **layout), None
    if where == "numpy":
        return MLArray(data.copy(), compressed=False), None
    path = _fresh(tmp_path, "idx")
    if where == "created":
        a = MLArray.create(path, data.shape, data.dtype, **layout)
        a[...] = data
        return a, path
    MLArray(data, **layout).save(path)
    if where == "file r+":
        return MLArray.open(path, mmap_mode="r+"), path
    if where == "file c":
        return MLArray.open(path, mmap_mode="c"), path
    return MLArray.open(path, mode="a", mmap_mode=None), path


def _index_error(array: np.ndarray, key) -> bool:
    try:
        array[key]
    except IndexError:
        return True
    return False


_B = np.dtype("bool")


@pytest.mark.parametrize("where", WHERE)
@FILE_SETTINGS
@given(case=_indexing_cases())
# keys Blosc2 alone gets wrong (found by this test): None with a negative step on write,
# None next to an array, array entries separated by a slice (numpy moves them to the front)
@example(case=((3, 1, 1), _B, (1, 1, 1), (1, 1, 1), (None, slice(2, 0, -1), 0, 0), 0))
@example(case=((1, 1), _B, (1, 1), (1, 1), (Ellipsis, 0, None, np.array([0])), 0))
@example(case=((1, 1), _B, (1, 1), (1, 1), (None, 0, np.array([0])), 0))
@example(case=((4, 5, 6), _B, (2, 3, 4), (1, 2, 2), ([0, 3], slice(None), [1, 2]), 1))
def test_getitem_and_setitem_agree_with_numpy(tmp_path, where, case):
    shape, dtype, chunk, block, key, seed = case
    rng = np.random.default_rng(seed)
    expected = _random_values(rng, shape, dtype)
    original = expected.copy()
    a, path = _make(where, expected, chunk, block, tmp_path)
    if _index_error(expected, key):  # numpy refuses the key: so do we, for reads and writes
        with pytest.raises(IndexError):
            a[key]
        with pytest.raises(IndexError):
            a[key] = 0
    else:
        got = a[key]
        want = expected[key]
        assert isinstance(got, np.ndarray | np.generic)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)

        values = _random_values(rng, want.shape, dtype)
        expected[key] = values
        a[key] = values
        np.testing.assert_array_equal(a[...], expected)
        scalar = np.asarray(_random_values(rng, (), dtype))[()]  # broadcasts over the selection
        expected[key] = scalar
        a[key] = scalar
        np.testing.assert_array_equal(a.to_numpy(), expected)
    if path is not None:
        a.close()
        back = MLArray.open(path)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back.to_numpy(), original if where == "file c" else expected)


# ============================================================================ geometry

_SPACING = st.floats(1e-3, 1e3)
_ORIGIN = st.floats(-1e4, 1e4)


def _direction(kind: str, n: int, seed: int) -> np.ndarray:
    """An orthonormal direction: a random rotation (maybe reflected) or a signed permutation."""
    rng = np.random.default_rng(seed)
    if kind == "rotation":
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        q = q * np.sign(np.diag(r))[np.newaxis, :]
    elif kind == "permutation":  # axis swaps, as in sagittal or coronal stacks
        q = np.eye(n)[:, rng.permutation(n)]
    else:
        q = np.eye(n)
    return q * rng.choice([-1.0, 1.0], size=n)[np.newaxis, :]  # flips (LPS vs RAS)


@st.composite
def _geometries(draw, min_n: int = 1, max_n: int = 6):
    n = draw(st.integers(min_n, max_n))
    spacing = np.array(draw(st.lists(_SPACING, min_size=n, max_size=n)))
    origin = np.array(draw(st.lists(_ORIGIN, min_size=n, max_size=n)))
    kind = draw(st.sampled_from(["rotation", "permutation", "identity"]))
    direction = _direction(kind, n, draw(st.integers(0, 2**32 - 1)))
    return spacing, origin, direction


def _unit_upper(draw, n: int) -> np.ndarray:
    s = np.eye(n)
    for i, j in itertools.combinations(range(n), 2):
        s[i, j] = draw(st.floats(-1.0, 1.0))
    return s


def _assert_affine_close(a, b, scale: float) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9 * scale)


@FAST_SETTINGS
@given(geom=_geometries())
def test_compose_then_decompose_recovers_spacing_origin_direction(geom):
    spacing, origin, direction = geom
    n = spacing.size
    affine = compose_affine(spacing, origin, direction)
    assert affine.shape == (n + 1, n + 1)
    np.testing.assert_array_equal(affine[n], np.eye(n + 1)[n])
    np.testing.assert_allclose(affine[:n, :n], direction * spacing[np.newaxis, :], rtol=1e-12)
    sp, og, dr = spacing_origin_direction(affine)
    np.testing.assert_allclose(sp, spacing, rtol=1e-9)
    np.testing.assert_array_equal(og, origin)
    np.testing.assert_allclose(dr, direction, atol=1e-9)
    translation, rotation, shear, scale = decompose_affine(affine)
    np.testing.assert_array_equal(translation, origin)
    np.testing.assert_allclose(rotation, direction, atol=1e-9)
    np.testing.assert_allclose(shear, np.eye(n), atol=1e-9)
    np.testing.assert_allclose(scale, spacing, rtol=1e-9)
    # a flip (odd number of reflections) stays in the rotation; the scale stays positive
    assert np.sign(np.linalg.det(rotation)) == np.sign(np.linalg.det(direction))
    _assert_affine_close(compose_affine(sp, og, dr), affine, float(np.max(spacing) + 1e4))


@FAST_SETTINGS
@given(geom=_geometries(), data=st.data())
def test_sheared_affine_decomposes_into_rotation_shear_scale(geom, data):
    scale, origin, rotation = geom
    n = scale.size
    shear = _unit_upper(data.draw, n)
    affine = np.eye(n + 1)
    affine[:n, :n] = rotation @ shear @ np.diag(scale)
    affine[:n, n] = origin
    t, r, s, k = decompose_affine(affine)
    assert is_orthonormal(r, atol=1e-9)
    np.testing.assert_array_equal(np.tril(s, -1), 0)
    np.testing.assert_array_equal(np.diag(s), 1)
    assert np.all(k > 0)
    np.testing.assert_array_equal(t, origin)
    np.testing.assert_allclose(r, rotation, atol=1e-7)
    np.testing.assert_allclose(s, shear, atol=1e-7)
    np.testing.assert_allclose(k, scale, rtol=1e-7)
    np.testing.assert_allclose(r @ s @ np.diag(k), affine[:n, :n], rtol=1e-9, atol=1e-9 * 1e3)
    if n > 1 and np.max(np.abs(np.triu(shear, 1))) > 1e-3:
        with pytest.raises(MetaValidationError, match="shear"):
            spacing_origin_direction(affine)


@FAST_SETTINGS
@given(n=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_any_invertible_affine_factors_exactly(n, seed):
    rng = np.random.default_rng(seed)
    linear = rng.standard_normal((n, n)) * 10.0 ** rng.integers(-2, 3, size=n)[np.newaxis, :]
    assume(np.linalg.cond(linear) < 1e8)
    affine = np.eye(n + 1)
    affine[:n, :n] = linear
    affine[:n, n] = rng.standard_normal(n) * 100
    t, r, s, k = decompose_affine(affine)
    assert is_orthonormal(r, atol=1e-9)
    assert np.all(k > 0)
    np.testing.assert_allclose(np.tril(s, -1), 0, atol=0)
    np.testing.assert_allclose(r @ s @ np.diag(k), linear, atol=1e-9 * np.max(np.abs(linear)))
    assert np.sign(np.linalg.det(r)) == np.sign(np.linalg.det(linear))
    np.testing.assert_array_equal(t, affine[:n, n])


@st.composite
def _labelled_geometries(draw):
    """Geometry for ``n`` spatial axes of an array that may lead with one non-spatial axis."""
    spacing, origin, direction = draw(_geometries(max_n=5))
    n = spacing.size
    leading = draw(st.sampled_from([None, "channel", "temporal"]))
    labels = (["spatial"] * n) if leading is None else [leading, *(["spatial"] * n)]
    shape = tuple(draw(st.integers(1, 3)) for _ in labels)
    return shape, labels, spacing, origin, direction


@FILE_SETTINGS
@given(case=_labelled_geometries())
def test_mlarray_geometry_matches_geometry_module_and_survives_a_file(tmp_path, case):
    shape, labels, spacing, origin, direction = case
    a = MLArray(
        np.zeros(shape, np.uint8),
        spacing=spacing,
        origin=origin,
        direction=direction,
        axis_labels=labels,
    )
    expected = compose_affine(spacing, origin, direction)
    scale = float(np.max(spacing) + 1e4)
    _assert_affine_close(a.affine, expected, scale)
    path = _fresh(tmp_path, "geom")
    a.save(path)
    b = MLArray.open(path)
    np.testing.assert_array_equal(np.asarray(b.spacing, dtype=float), spacing)
    np.testing.assert_array_equal(np.asarray(b.origin, dtype=float), origin)
    np.testing.assert_array_equal(np.asarray(b.direction, dtype=float), direction)
    _assert_affine_close(b.affine, expected, scale)
    np.testing.assert_allclose(np.asarray(b.scale, dtype=float), spacing, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(b.rotation, dtype=float), direction, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(b.translation, dtype=float), origin)


@FILE_SETTINGS
@given(case=_labelled_geometries(), data=st.data())
def test_mlarray_sheared_affine_survives_a_file(tmp_path, case, data):
    shape, labels, scale, origin, rotation = case
    n = scale.size
    shear = _unit_upper(data.draw, n)
    affine = np.eye(n + 1)
    affine[:n, :n] = rotation @ shear @ np.diag(scale)
    affine[:n, n] = origin
    path = _fresh(tmp_path, "affine")
    MLArray(np.ones(shape, np.float32), affine=affine, axis_labels=labels).save(path)
    b = MLArray.open(path)
    np.testing.assert_array_equal(np.asarray(b.affine, dtype=float), affine)
    np.testing.assert_allclose(np.asarray(b.shear, dtype=float), shear, atol=1e-7)
    np.testing.assert_allclose(np.asarray(b.scale, dtype=float), scale, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(b.rotation, dtype=float), rotation, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(b.translation, dtype=float), origin)


# ============================================================================ record

_KEYS = st.text(max_size=8)


def _nested(integers, floats):
    """Scalars (None, bool, int, float, str) nested in lists and string-keyed dicts."""
    scalars = st.one_of(st.none(), st.booleans(), integers, floats, st.text(max_size=12))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)
        ),
        max_leaves=20,
    )


# anything the record format holds (pickle: big ints, NaN, infinities) ...
_PLAIN = _nested(st.integers(), st.floats())
# ... and what a user's source/extra dict may hold (JSON-compatible)
_JSON = _nested(st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False))


def _same(a, b) -> bool:
    """Equal values of equal types, recursively (so True never passes for 1, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@FAST_SETTINGS
@given(record=st.dictionaries(_KEYS, _PLAIN, max_size=6))
def test_plain_records_survive_encode_decode(record):
    raw = encode_record(record)
    back = decode_record(raw, "x.mla")
    assert _same(back, record)
    assert encode_record(back) == raw  # deterministic bytes


@st.composite
def _metas(draw, ndim: int):
    """A Meta with every user-settable section filled at random (valid for ``ndim`` axes)."""
    n_boxes = draw(st.integers(0, 3))
    finite = st.floats(-1e6, 1e6)
    boxes = []
    for _ in range(n_boxes):
        box = []
        for _ in range(ndim):
            lo, hi = sorted(draw(st.lists(st.integers(0, 100), min_size=2, max_size=2)))
            box.append([lo, hi])
        boxes.append(box)
    mapping = {
        "source": {"data": draw(st.dictionaries(_KEYS, _JSON, max_size=4))},
        "extra": {"data": draw(st.dictionaries(_KEYS, _JSON, max_size=4))},
        "is_seg": {"is_seg": draw(st.sampled_from([None, True, False]))},
        "stats": {k: draw(st.none() | finite) for k in ("min", "max", "mean", "median", "std")},
        "spatial": {
            "spacing": draw(st.lists(_SPACING, min_size=ndim, max_size=ndim)),
            "origin": draw(st.lists(_ORIGIN, min_size=ndim, max_size=ndim)),
            "direction": _direction("rotation", ndim, draw(st.integers(0, 2**32 - 1))).tolist(),
            "coord_system": draw(st.sampled_from([None, "LPS", "RAS"])),
            "axis_units": draw(
                st.none() | st.lists(st.text(max_size=4), min_size=ndim, max_size=ndim)
            ),
        },
    }
    if boxes:
        mapping["bbox"] = {
            "bboxes": boxes,
            "scores": draw(st.lists(st.floats(0, 1), min_size=n_boxes, max_size=n_boxes)),
            "labels": draw(
                st.lists(
                    st.text(max_size=6) | st.integers(0, 9), min_size=n_boxes, max_size=n_boxes
                )
            ),
        }
    return Meta.from_mapping(mapping)


_USER_SECTIONS = ("source", "extra", "is_seg", "stats", "bbox")
_USER_SPATIAL = ("spacing", "origin", "direction", "coord_system", "axis_units")


def _user_part(record: dict) -> dict:
    out = {k: record[k] for k in _USER_SECTIONS}
    out["spatial"] = {k: record["spatial"][k] for k in _USER_SPATIAL}
    return out


@FAST_SETTINGS
@given(data=st.data(), ndim=st.integers(1, 4))
def test_meta_survives_the_record(data, ndim):
    meta = data.draw(_metas(ndim))
    record = record_from_meta(meta)
    back = meta_from_record(decode_record(encode_record(record), "x.mla"), "x.mla")
    assert _same(record_from_meta(back), record)


@FILE_SETTINGS
@given(data=st.data(), ndim=st.integers(1, 4))
def test_meta_survives_a_file(tmp_path, data, ndim):
    meta = data.draw(_metas(ndim))
    path = _fresh(tmp_path, "meta")
    MLArray(np.zeros((2,) * ndim, np.int16), meta=meta).save(path)
    stored = record_from_meta(MLArray.open(path).meta)
    assert _same(_user_part(stored), _user_part(record_from_meta(meta)))
    assert stored["spatial"]["shape"] == [2] * ndim


# ============================================================================ layout

_L1, _L3 = 32768, 1441792


@st.composite
def _layout_cases(draw):
    ndim = draw(st.integers(1, 6))
    image = [draw(st.one_of(st.integers(1, 40), st.integers(1, 2000))) for _ in range(ndim)]
    mask = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    n_spatial = sum(mask)
    if draw(st.booleans()):
        patch = [draw(st.sampled_from([64, 128, 192]))] * n_spatial
    else:
        patch = draw(st.lists(st.integers(1, 500), min_size=n_spatial, max_size=n_spatial))
    bpp = draw(st.sampled_from([1, 2, 4, 8, 16]))
    l1 = draw(st.sampled_from([_L1, 8192, 65536, 16]))
    l3 = draw(st.sampled_from([_L3, 262144, 8 * 2**20, l1]))
    safety = draw(st.sampled_from([0.8, 0.5, 1.0]))
    return image, patch, mask, bpp, l1, l3, safety


@FAST_SETTINGS
@given(case=_layout_cases())
def test_layout_invariants_hold(case):
    image, patch, mask, bpp, l1, l3, safety = case
    chunk, block = comp_blosc2_params(
        image,
        patch,
        spatial_axis_mask=mask,
        bytes_per_pixel=bpp,
        l1_cache_size_per_core_in_bytes=l1,
        l3_cache_size_per_core_in_bytes=l3,
        safety_factor=safety,
    )
    assert len(chunk) == len(block) == len(image)
    assert all(type(v) is int for v in chunk + block)
    for c, b, n, spatial in zip(chunk, block, image, mask, strict=True):
        assert 1 <= b <= c <= n  # blocks inside chunks inside the image
        assert c % b == 0 or c == n  # whole blocks, unless clipped to the image
        if not spatial:
            assert c == b == 1
    if math.prod(block) > 1:  # a single element is the least a block can be
        assert math.prod(block) * bpp <= l1 * safety
    if chunk != block:  # the chunk grows only within the L3 budget
        assert math.prod(chunk) * bpp <= l3 * safety
    # a patch entry for every array axis: the non-spatial entries are ignored
    full = iter(patch)
    per_axis = [next(full) if m else 7 for m in mask]
    again = comp_blosc2_params(
        image,
        per_axis,
        spatial_axis_mask=mask,
        bytes_per_pixel=bpp,
        l1_cache_size_per_core_in_bytes=l1,
        l3_cache_size_per_core_in_bytes=l3,
        safety_factor=safety,
    )
    assert again == (chunk, block)


@st.composite
def _storage_cases(draw):
    ndim = draw(st.integers(1, 4))
    spatial = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim).filter(any))
    labels = ["spatial" if s else "channel" for s in spatial]
    shape = tuple(draw(st.integers(1, 9 if s else 3)) for s in spatial)
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int16", "float32", "float64"])))
    patch = draw(st.integers(1, 12))
    return shape, labels, spatial, dtype, patch


@FILE_SETTINGS
@given(case=_storage_cases())
def test_arrays_get_the_documented_layout(tmp_path, case):
    shape, labels, spatial, dtype, patch = case
    data = np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    a = MLArray(data, axis_labels=labels, patch_size=patch)
    chunk, block = comp_blosc2_params(
        shape, [patch] * sum(spatial), spatial_axis_mask=spatial, bytes_per_pixel=dtype.itemsize
    )
    assert a.chunks == tuple(chunk) and a.blocks == tuple(block)
    path = _fresh(tmp_path, "layout")
    a.save(path)
    b = MLArray.open(path)
    assert b.chunks == tuple(chunk) and b.blocks == tuple(block)  # saving keeps the layout
    np.testing.assert_array_equal(b[...], data)


@FAST_SETTINGS
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=12),
    data=st.data(),
)
def test_explicit_chunks_and_blocks_are_clipped_to_the_shape(shape, data):
    chunk = [data.draw(st.integers(1, 20)) for _ in shape]
    block = [data.draw(st.integers(1, c)) for c in chunk]
    a = MLArray(np.zeros(shape, np.uint8), patch_size=None, chunk_size=chunk, block_size=block)
    assert a.chunks == tuple(min(c, n) for c, n in zip(chunk, shape, strict=True))
    assert a.blocks == tuple(min(b, n) for b, n in zip(block, shape, strict=True))
