"""Invariants of the affine math in :mod:`mlarray.geometry`, for N from 2 to 5."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlarray.errors import MetaValidationError
from mlarray.geometry import (
    axis_world_map,
    compose_affine,
    decompose_affine,
    is_orthonormal,
    obliquity,
    rotation,
    scale,
    shear,
    spacing_origin_direction,
    translation,
)
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "a_ct3d_int16.json"
NDIMS = [2, 3, 4, 5]
SEEDS = range(5)


def random_rotation(rng: np.random.Generator, n: int, reflect: bool = False) -> np.ndarray:
    """A random orthonormal matrix with determinant +1 (or -1 when ``reflect``)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))[np.newaxis, :]
    if (np.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def random_shear(rng: np.random.Generator, n: int) -> np.ndarray:
    """A unit upper-triangular matrix with entries of magnitude 0.3 to 0.6."""
    k = n * (n - 1) // 2
    z = np.eye(n)
    z[np.triu_indices(n, k=1)] = rng.uniform(0.3, 0.6, k) * rng.choice([-1.0, 1.0], k)
    return z


def random_geometry(rng: np.random.Generator, n: int, reflect: bool = False):
    spacing = rng.uniform(0.2, 5.0, n)
    origin = rng.uniform(-200.0, 200.0, n)
    return spacing, origin, random_rotation(rng, n, reflect)


# ----------------------------------------------------------------------------- compose


@pytest.mark.parametrize("n", NDIMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_compose_layout_matches_format(n, seed):
    rng = np.random.default_rng(seed)
    spacing, origin, direction = random_geometry(rng, n)
    affine = compose_affine(spacing, origin, direction)
    assert affine.shape == (n + 1, n + 1)
    assert affine.dtype == np.float64
    np.testing.assert_allclose(affine[:n, :n], direction @ np.diag(spacing), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(affine[:n, n], origin)
    np.testing.assert_array_equal(affine[n], np.r_[np.zeros(n), 1.0])


def test_compose_defaults():
    np.testing.assert_array_equal(compose_affine(ndim=3), np.eye(4))
    np.testing.assert_array_equal(compose_affine(spacing=[2, 3]), np.diag([2.0, 3.0, 1.0]))
    expected = np.eye(3)
    expected[:2, 2] = [5, 6]
    np.testing.assert_array_equal(compose_affine(origin=(5, 6)), expected)
    rot = random_rotation(np.random.default_rng(0), 3)
    np.testing.assert_array_equal(compose_affine(direction=rot)[:3, :3], rot)
    np.testing.assert_array_equal(compose_affine([1, 2], ndim=2), np.diag([1.0, 2.0, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"spacing": [1, 2], "origin": [0, 0, 0]}, "spacing"),
        ({"spacing": [1, 2, 3], "direction": np.eye(2)}, "spacing"),
        ({"origin": [1, 2], "direction": np.eye(3)}, "origin"),
        ({"spacing": [1, 2], "ndim": 3}, "spacing"),
        ({"direction": np.ones((2, 3))}, "direction"),
        ({"direction": np.ones((2, 2, 2))}, "direction"),
        ({"spacing": [1.0, np.nan]}, "spacing"),
        ({"origin": [np.inf, 0.0]}, "origin"),
        ({"direction": [[1.0, 0.0], [0.0, np.nan]]}, "direction"),
        ({"spacing": [[1.0, 2.0]]}, "spacing"),
        ({"spacing": ["a", "b"]}, "spacing"),
        ({}, "ndim"),
        ({"ndim": -1}, "ndim"),
        ({"ndim": 1.0}, "ndim"),
    ],
)
def test_compose_errors_name_the_field(kwargs, field):
    with pytest.raises(MetaValidationError) as info:
        compose_affine(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_no_spatial_axis_is_the_1x1_identity_with_empty_parts():
    # an array whose axes are all non-spatial (channels, time): as the reference package
    np.testing.assert_array_equal(compose_affine(ndim=0), [[1.0]])
    np.testing.assert_array_equal(compose_affine(spacing=[], origin=[]), [[1.0]])
    t, r, z, s = decompose_affine([[1.0]])
    assert (t.shape, r.shape, z.shape, s.shape) == ((0,), (0, 0), (0, 0), (0,))
    assert [t.tolist(), r.tolist(), z.tolist(), s.tolist()] == [[], [], [], []]
    assert spacing_origin_direction([[1.0]])[0].tolist() == []
    with pytest.raises(MetaValidationError, match="last row"):
        decompose_affine([[2.0]])


# ----------------------------------------------------------------------------- decompose


@pytest.mark.parametrize("n", NDIMS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reflect", [False, True])
def test_round_trip_without_shear_is_exact(n, seed, reflect):
    rng = np.random.default_rng(seed)
    spacing, origin, direction = random_geometry(rng, n, reflect)
    affine = compose_affine(spacing, origin, direction)
    t, r, z, s = decompose_affine(affine)
    np.testing.assert_allclose(s, spacing, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, np.linalg.norm(affine[:n, :n], axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(r, direction, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z, np.eye(n), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(t, origin)
    assert np.sign(np.linalg.det(r)) == (-1 if reflect else 1)
    assert np.all(s > 0)
    # and back
    sp, og, dr = spacing_origin_direction(affine)
    np.testing.assert_allclose(compose_affine(sp, og, dr), affine, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", NDIMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_sheared_affine_recovers_true_factors(n, seed):
    """QR recovers R, Z, S of ``R @ Z @ diag(S)``; column norms would not give S."""
    rng = np.random.default_rng(100 + seed)
    r_true = random_rotation(rng, n, reflect=bool(seed % 2))
    z_true = random_shear(rng, n)
    s_true = rng.uniform(0.5, 3.0, n)
    affine = np.eye(n + 1)
    affine[:n, :n] = r_true @ z_true @ np.diag(s_true)
    affine[:n, n] = rng.uniform(-10, 10, n)

    t, r, z, s = decompose_affine(affine)
    np.testing.assert_allclose(s, s_true, rtol=1e-12)
    np.testing.assert_allclose(r, r_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z, z_true, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(t, affine[:n, n])
    # the column-norm estimate of the reference package is off by several percent
    column_norms = np.linalg.norm(affine[:n, :n], axis=0)
    assert np.max(np.abs(column_norms / s_true - 1)) > 0.04


@pytest.mark.parametrize("n", NDIMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_decomposition_invariants(n, seed):
    rng = np.random.default_rng(200 + seed)
    affine = np.eye(n + 1)
    affine[:n, :n] = rng.standard_normal((n, n)) * rng.uniform(0.1, 10)
    affine[:n, n] = rng.standard_normal(n)
    _, r, z, s = decompose_affine(affine)
    assert is_orthonormal(r, atol=1e-12)
    assert np.all(s > 0)
    np.testing.assert_array_equal(np.diag(z), np.ones(n))
    np.testing.assert_array_equal(np.tril(z, k=-1), np.zeros((n, n)))
    np.testing.assert_allclose(r @ z @ np.diag(s), affine[:n, :n], rtol=0, atol=1e-12 * s.max())
    # a rotation on the left does not change scale or shear
    q = random_rotation(rng, n)
    rotated = affine.copy()
    rotated[:n, :n] = q @ affine[:n, :n]
    _, r2, z2, s2 = decompose_affine(rotated)
    np.testing.assert_allclose(s2, s, rtol=1e-12)
    np.testing.assert_allclose(z2, z, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r2, q @ r, rtol=0, atol=1e-12)


def test_wrappers_agree_with_decompose():
    rng = np.random.default_rng(7)
    affine = np.eye(4)
    affine[:3, :3] = random_rotation(rng, 3) @ random_shear(rng, 3) @ np.diag([1, 2, 3])
    affine[:3, 3] = [4, 5, 6]
    t, r, z, s = decompose_affine(affine)
    np.testing.assert_array_equal(translation(affine), t)
    np.testing.assert_array_equal(rotation(affine), r)
    np.testing.assert_array_equal(shear(affine), z)
    np.testing.assert_array_equal(scale(affine), s)
    for value in (translation(affine), rotation(affine), shear(affine), scale(affine)):
        assert isinstance(value, np.ndarray)


def test_reflection_stays_in_rotation():
    affine = compose_affine([2.0, 3.0, 4.0], [0, 0, 0], np.diag([1.0, -1.0, 1.0]))
    _, r, _, s = decompose_affine(affine)
    np.testing.assert_allclose(s, [2.0, 3.0, 4.0])
    np.testing.assert_allclose(r, np.diag([1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.0, 0.0, 1.0, 1.0]),  # a zero spacing
        np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]]),  # collinear axes
        np.zeros((4, 4)),
        np.diag([1.0, np.nan, 1.0]),
        np.diag([1.0, np.inf, 1.0]),
        np.eye(3)[:2],  # not square
        np.array([[2.0]]),  # no spatial axis, but not the identity
        np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 1.0]]),  # projective
        [[1, 0], "x"],
    ],
)
def test_decompose_rejects_bad_affines(affine):
    with pytest.raises(MetaValidationError) as info:
        decompose_affine(affine)
    assert info.value.field == "affine"


def test_spacing_origin_direction_refuses_to_lose_shear():
    affine = np.eye(3)
    affine[:2, :2] = [[1.0, 0.5], [0.0, 1.0]]
    with pytest.raises(MetaValidationError, match="keep the geometry in the affine form") as info:
        spacing_origin_direction(affine)
    assert info.value.field == "affine"
    # a shear below atol is treated as none
    affine[0, 1] = 1e-9
    sp, og, dr = spacing_origin_direction(affine)
    np.testing.assert_allclose(sp, [1.0, 1.0])
    np.testing.assert_allclose(dr, np.eye(2), atol=1e-8)
    np.testing.assert_array_equal(og, [0.0, 0.0])
    with pytest.raises(MetaValidationError):
        spacing_origin_direction(affine, atol=1e-12)


def test_negative_spacing_becomes_a_reflection():
    affine = compose_affine([-2.0, 3.0], [1.0, 1.0])
    sp, _, dr = spacing_origin_direction(affine)
    np.testing.assert_allclose(sp, [2.0, 3.0])
    np.testing.assert_allclose(dr, np.diag([-1.0, 1.0]))
    np.testing.assert_allclose(compose_affine(sp, [1.0, 1.0], dr), affine)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("n", NDIMS)
def test_is_orthonormal(n):
    rng = np.random.default_rng(n)
    assert is_orthonormal(random_rotation(rng, n))
    assert is_orthonormal(random_rotation(rng, n, reflect=True))
    assert not is_orthonormal(2 * random_rotation(rng, n))
    assert not is_orthonormal(random_rotation(rng, n) @ random_shear(rng, n))
    assert is_orthonormal(np.eye(n) + 1e-8)
    assert not is_orthonormal(np.eye(n) + 1e-8, atol=1e-10)


@pytest.mark.parametrize("value", [np.ones((2, 3)), np.ones(3), [[1, 0], [0, np.nan]], "eye", None])
def test_is_orthonormal_is_false_for_non_matrices(value):
    assert is_orthonormal(value) is False


@pytest.mark.parametrize("n", NDIMS)
@pytest.mark.parametrize("seed", SEEDS)
def test_axis_world_map_of_signed_permutations(n, seed):
    rng = np.random.default_rng(300 + seed)
    perm = rng.permutation(n)
    signs = rng.choice([-1, 1], n)
    direction = np.zeros((n, n))
    direction[perm, np.arange(n)] = signs
    # a small perturbation does not change the answer
    direction = (0.95 * np.eye(n) + 0.05 * random_rotation(rng, n)) @ direction
    assert axis_world_map(direction) == [(int(perm[j]), int(signs[j])) for j in range(n)]


@pytest.mark.parametrize("n", NDIMS)
@pytest.mark.parametrize("seed", range(20))
def test_axis_world_map_is_always_a_permutation(n, seed):
    direction = random_rotation(np.random.default_rng(400 + seed), n)
    mapping = axis_world_map(direction)
    assert sorted(world for world, _ in mapping) == list(range(n))
    for j, (i, sign) in enumerate(mapping):
        assert sign == (1 if direction[i, j] >= 0 else -1)


def test_axis_world_map_resolves_collisions_globally():
    # by column, both array axes point most along world axis 0
    direction = np.array([[0.9, 0.8], [0.1, -0.6]])
    assert axis_world_map(direction) == [(0, 1), (1, -1)]
    # a 45 degree rotation: exact ties map the identity
    c = np.sqrt(0.5)
    assert axis_world_map([[c, -c], [c, c]]) == [(0, 1), (1, 1)]
    # just past 45 degrees the axes swap
    a = np.deg2rad(46)
    rot = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    assert axis_world_map(rot) == [(1, 1), (0, -1)]


def test_axis_world_map_rejects_non_square():
    with pytest.raises(MetaValidationError) as info:
        axis_world_map(np.ones((2, 3)))
    assert info.value.field == "direction"


# ----------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def ct3d() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_geometry_composes_to_reference_affine(ct3d):
    affine = compose_affine(ct3d["spacing"], ct3d["origin"], ct3d["direction"])
    np.testing.assert_allclose(affine, ct3d["affine_property"], rtol=0, atol=1e-12)


def test_fixture_affine_decomposes_to_reference_factors(ct3d):
    t, r, z, s = decompose_affine(ct3d["affine_property"])
    np.testing.assert_allclose(t, ct3d["translation"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(r, ct3d["rotation"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, ct3d["scale"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(z, ct3d["shear"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(z, np.eye(3), rtol=0, atol=1e-12)
    sp, og, dr = spacing_origin_direction(ct3d["affine_property"])
    np.testing.assert_allclose(sp, ct3d["spacing"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(og, ct3d["origin"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(dr, ct3d["direction"], rtol=0, atol=1e-12)
    assert is_orthonormal(ct3d["direction"])


# --------------------------------------------------------------------------- anatomical frames


def test_parse_axis_codes():
    from mlarray.geometry import parse_axis_codes

    assert parse_axis_codes("RAS+") == "RAS"
    assert parse_axis_codes(" lps ") == "LPS"
    assert parse_axis_codes("SLP+") == "SLP"
    for bad in (None, "", "scanner", "LLS", "RA", "RASX", 3):
        assert parse_axis_codes(bad) is None


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS", "PIR", "SLP"])
def test_frame_matrix_maps_each_axis_to_its_letter(code):
    from mlarray.geometry import axis_codes, frame_matrix

    F = frame_matrix(code)
    assert axis_codes(F) == code  # the identity in that frame points along its letters
    assert np.allclose(np.abs(F).sum(0), 1) and np.allclose(F.T @ F, np.eye(3))


def test_frame_handedness():
    from mlarray.geometry import frame_matrix

    assert np.linalg.det(frame_matrix("RAS")) == 1 and np.linalg.det(frame_matrix("LPS")) == 1
    assert np.linalg.det(frame_matrix("LAS")) == -1


@pytest.mark.parametrize(
    ("axes", "code"),
    [((0, 1, 2), "LPS"), ((2, 0, 1), "LPS"), ((0, 1), "LPS"), ((2, 0), "LSA"), ((1, 2), "PSL")],
)
def test_frame_with_axes_starts_with_those_axes_and_is_right_handed(axes, code):
    from mlarray.geometry import frame_matrix, frame_with_axes

    got = frame_with_axes(axes)
    assert got == code
    F = frame_matrix(got)
    # its first world axes run along the wanted RAS axes, with LPS's sign (toward L, P, S)
    lps = frame_matrix("LPS")
    for i in range(len(axes)):
        (ras_axis,) = np.flatnonzero(F[:, i])
        assert ras_axis in axes and F[ras_axis, i] == lps[ras_axis, ras_axis]
    assert np.linalg.det(F) == 1


def test_frame_with_axes_refuses_what_names_no_frame():
    from mlarray.geometry import frame_with_axes

    for bad in ((0, 0), (3,), (-1, 1)):
        with pytest.raises(MetaValidationError):
            frame_with_axes(bad)
    with pytest.raises(MetaValidationError):
        frame_with_axes((0,), base="XYZ")


def test_axis_codes_like_nibabel():
    from mlarray.geometry import axis_codes

    # nibabel: aff2axcodes(diag(1, 1, 1)) == RAS; a P, I, R array in RAS world
    assert axis_codes(np.eye(4)) == "RAS"
    pir = [[0, 0, 1.0], [-1.0, 0, 0], [0, -2.0, 0]]
    assert axis_codes(pir) == "PIR"
    assert axis_codes(pir, "LPS") == "AIL"
    with pytest.raises(MetaValidationError):
        axis_codes(np.eye(2))


def test_anatomical_frame_reads_world_frames_and_the_converters_axis_codes():
    from mlarray.geometry import anatomical_frame

    slp = [[0, -1.0, 0, 9], [0, 0, -1.5, 16.5], [2.0, 0, 0, -28], [0, 0, 0, 1]]
    assert anatomical_frame("SLP+", slp) == "RAS"  # what mlarray_convert writes for PIR NIfTI
    assert anatomical_frame("RAS+", np.eye(4)) == "RAS"
    assert anatomical_frame("LPS+", np.eye(4)) == "LPS"
    # an A, L, S NIfTI through the converter: an L, P, S array, "LPS+", affine into RAS
    assert anatomical_frame("LPS+", np.diag([-1.0, -1, 1, 1])) == "RAS"
    # ... but a record with spacing/origin/direction names its frame: LPS+ is LPS
    assert anatomical_frame("LPS+", np.diag([-1.0, -1, 1, 1]), geometry_as_affine=False) == "LPS"
    assert anatomical_frame("SLP+", slp, geometry_as_affine=False) == "SLP"
    # a bare LPS names the world, also when the voxels run L, P, S in RAS terms
    assert anatomical_frame("LPS", np.diag([-1.0, -1, 1, 1])) == "LPS"
    assert anatomical_frame("lps", np.diag([-1.0, -1, 1, 1])) == "LPS"
    assert anatomical_frame("LAS", np.eye(4)) == "LAS"  # a code the affine does not match
    assert anatomical_frame(None, np.eye(4)) is None
    assert anatomical_frame("scanner", np.eye(4)) is None
    # 4-D: the first three world axes decide
    four = np.eye(5)
    four[:3, :3] = np.asarray(slp)[:3, :3]
    assert anatomical_frame("SLP+", four) == "RAS"


def test_anatomical_part_splits_time_stored_as_a_fourth_spatial_axis():
    from mlarray import geometry

    a = np.eye(5)
    a[:4, :4] = np.diag([1.0, 1.5, 2.0, 2000.0])[:, [2, 0, 1, 3]]  # z, x, y stored first
    a[:4, 4] = [-10, -18, -28, 5]
    keep, extra, sub = geometry.anatomical_part(a)
    assert (keep, extra) == ([0, 1, 2], [3])
    np.testing.assert_array_equal(sub[:3, :3], a[:3, :3])
    np.testing.assert_array_equal(sub[:3, 3], [-10, -18, -28])
    a[0, 3] = 0.5  # time moving along x: not separable
    with pytest.raises(MetaValidationError, match="mix"):
        geometry.anatomical_part(a)


def test_obliquity_is_the_largest_tilt_of_an_axis_from_its_world_axis():
    a = np.radians(10.0)
    tilt_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    assert obliquity(tilt_x @ np.diag([8.0, 1.4, 1.4])) == pytest.approx(10.0)
    # axis order, flips and spacing are no tilt
    assert obliquity([[0, 0, -2.0], [0, 0.7, 0], [3.0, 0, 0]]) == 0.0
    assert obliquity(np.eye(2)) == 0.0
    near45 = np.radians(44.0)
    in_plane = [[np.cos(near45), -np.sin(near45)], [np.sin(near45), np.cos(near45)]]
    assert obliquity(in_plane) == pytest.approx(44.0)
    with pytest.raises(MetaValidationError):
        obliquity([[1.0, np.nan], [0.0, 1.0]])
