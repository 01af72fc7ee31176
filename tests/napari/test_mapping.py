"""Qt-free tier: the pure record <-> layer-keyword mapping, written as invariants.

No Qt import and no viewer here (napari's transform maths is used once to
check our composition of scale/rotate/shear/translate).
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest

from mlarray import geometry
from mlarray.meta import Meta
from napari_mlarray import _mapping
from napari_mlarray._boxes import boxes_from_shapes, shapes_layer_data
from napari_mlarray._orientation import (
    affine_from_layer,
    orientation_for,
    record_affine,
)
from tests.napari._helpers import view_index


def default_record() -> dict:
    return Meta().to_mapping()


SPATIAL_NAMES = {
    1: ["spatial_x"],
    2: ["spatial_y", "spatial_x"],
    3: ["spatial_z", "spatial_y", "spatial_x"],
}


def random_direction(
    rng: np.random.Generator, n: int, *, reflect: bool, max_angle: float = 0.6, permute: bool = True
):
    """A rotation of moderate angle times a random signed permutation (oblique, maybe reflected)."""
    a = rng.normal(size=(n, n))
    skew = (a - a.T) / 2
    skew *= max_angle / max(np.linalg.norm(skew, 2), 1e-12)
    rot = np.eye(n)  # expm of a skew matrix (a rotation), by its series
    term = np.eye(n)
    for k in range(1, 30):
        term = term @ skew / k
        rot = rot + term
    perm = np.eye(n)[rng.permutation(n)] if permute else np.eye(n)
    signs = np.diag(rng.choice([-1.0, 1.0], size=n)) if permute else np.eye(n)
    d = rot @ perm @ signs
    if reflect and np.linalg.det(d) > 0:
        d[:, 0] *= -1
    if not reflect and np.linalg.det(d) < 0:
        d[:, 0] *= -1
    return d


def make_record(
    *,
    spacing,
    origin,
    direction,
    coord_system=None,
    axis_labels=None,
    axis_units=None,
    affine_form=False,
    shape=None,
    bboxes=None,
    labels=None,
    scores=None,
):
    rec = default_record()
    sp = rec["spatial"]
    if affine_form:
        n = len(spacing)
        A = np.eye(n + 1)
        A[:n, :n] = np.asarray(direction) @ np.diag(spacing)
        A[:n, n] = origin
        sp["affine"] = A.tolist()
    else:
        sp["spacing"] = list(map(float, spacing))
        sp["origin"] = list(map(float, origin))
        sp["direction"] = np.asarray(direction, dtype=float).tolist()
    sp.update(coord_system=coord_system, axis_labels=axis_labels, axis_units=axis_units)
    sp["shape"] = None if shape is None else list(shape)
    rec["bbox"] = {"bboxes": bboxes, "scores": scores, "labels": labels}
    return rec


def layer_meta(kw: dict) -> dict:
    """What ``layer.as_layer_data_tuple()[1]`` would hold for these keywords."""
    meta = copy.deepcopy(kw)
    ndim = len(np.atleast_1d(meta["scale"]))
    meta.setdefault("affine", np.eye(ndim + 1))
    if meta.get("axis_labels") is None:
        meta["axis_labels"] = tuple(str(k - ndim) for k in range(ndim))
    if meta.get("units") is None:
        meta["units"] = ("pixel",) * ndim
    return meta


def napari_matrix(kw: dict, ndim: int) -> np.ndarray:
    return affine_from_layer(
        ndim,
        scale=kw["scale"],
        translate=kw["translate"],
        rotate=kw["rotate"],
        shear=kw["shear"],
        affine=kw.get("affine"),
    )


def expected_frame(coord_system: str, n: int) -> np.ndarray:
    """napari world (inferior, posterior, left) from the file world's first ``min(n, 3)`` axes.

    Written out independently of the code under test.
    """
    napari_from_lps = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], float)
    lps_from_file = np.diag({"LPS": [1, 1, 1], "RAS": [-1, -1, 1]}[coord_system])
    full = napari_from_lps @ lps_from_file
    m = min(n, 3)
    cols = full[:, :m]
    return cols[np.any(cols, axis=1)]


CASES = [
    (n, extra, cs, reflect, affine_form)
    for n in (2, 3, 4, 5)
    for extra in (0, 1)
    for cs in ("LPS", "RAS", None)
    for reflect in (False, True)
    for affine_form in (False, True)
    if n + extra <= 5
]


@pytest.mark.parametrize(("n", "extra", "cs", "reflect", "affine_form"), CASES)
def test_record_layer_record_roundtrip_and_world(n, extra, cs, reflect, affine_form):
    rng = np.random.default_rng(hash((n, extra, cs, reflect, affine_form)) % 2**32)
    ndim = n + extra
    direction = random_direction(rng, n, reflect=reflect)
    spacing = rng.uniform(0.3, 3.0, n)
    origin = rng.uniform(-200, 200, n)
    labels = None
    if extra:
        labels = ["temporal"] + (SPATIAL_NAMES[n] if n <= 3 else ["spatial"] * n)
    rec = make_record(
        spacing=spacing,
        origin=origin,
        direction=direction,
        coord_system=cs,
        axis_labels=labels,
        affine_form=affine_form,
        shape=[4] * ndim,
    )
    kw = _mapping.image_layer_kwargs(rec, ndim, name="x", contrast_limits=(0, 1))
    orient = orientation_for(rec, ndim)
    perm = orient.perm
    assert sorted(perm) == list(range(ndim))
    if extra:
        assert perm[0] == 0  # the non-spatial axis stays a leading slider axis
        assert kw["axis_labels"][0] == "temporal"
    # the residual napari gets is a proper rotation near identity, never an axis swap
    rot = np.asarray(kw["rotate"])
    assert np.isclose(np.linalg.det(rot), 1.0)
    assert np.all(np.diag(rot) > 0.5)

    # world = physical: napari world of every voxel corner == frame @ file world
    T = napari_matrix(kw, ndim)
    A = record_affine(rec, n)
    shown = list(orient.spatial)
    lib_spatial = [a for a in range(ndim) if labels is None or labels[a] != "temporal"]
    if cs and n > 3:  # world axes past the three anatomical ones: non-spatial sliders
        assert orient.n_spatial == 3 and orient.notes
        assert kw["axis_labels"][ndim - 3 :] == ["S-I", "A-P", "R-L"]
        world_of = [
            w for w, _ in geometry.axis_world_map(A[:n, :n] / np.linalg.norm(A[:n, :n], axis=0))
        ]
        assert [a for a in range(ndim) if shown[a]] == [
            lib_spatial[j] for j in range(n) if world_of[j] < 3
        ]
        A = A[np.ix_([0, 1, 2, n], [j for j in range(n) if world_of[j] < 3] + [n])]
    m = orient.n_spatial
    sp_axes = [a for a in range(ndim) if shown[a]]
    D = expected_frame(cs, m) if cs else orient.frame
    if not cs:
        assert np.allclose(np.abs(D).sum(0), 1) and np.all(D >= 0)  # a plain permutation
    corners = np.array(list(itertools.product(*[(-0.5, 3.5)] * ndim)))
    world_pts = []
    for c in corners:
        stored = c
        view = view_index(kw["metadata"]["mlarray"], stored, [4] * ndim)
        world = (T @ np.r_[view, 1])[:ndim]
        file_world = (A @ np.r_[stored[sp_axes], 1])[:m]
        assert np.allclose(world[ndim - m :], D @ file_world, atol=1e-8)
        world_pts.append(world[ndim - m :])
    for i, j in [(0, -1), (1, 2), (0, 3)]:
        phys = np.linalg.norm(
            A[:m, :m] @ (corners[i][sp_axes] - corners[j][sp_axes])
        )  # physical distance between two corners
        assert math.isclose(np.linalg.norm(world_pts[i] - world_pts[j]), phys, rel_tol=1e-9)

    # layer -> record -> same record and the transpose that undoes the view
    back, undo = _mapping.record_from_layer((4,) * ndim, "int16", layer_meta(kw), "image")
    assert back["spatial"] == Meta.from_mapping(rec).to_mapping()["spatial"]
    assert [perm[a] for a in np.argsort(perm)] == list(range(ndim))
    assert undo.perm == tuple(int(i) for i in np.argsort(perm))

    # a moved layer: re-derived geometry reproduces the moved world transform
    moved = layer_meta(kw)
    moved["translate"] = np.asarray(kw["translate"]) + np.r_[np.zeros(ndim - m), np.full(m, 7.0)]
    moved["scale"] = np.asarray(kw["scale"]) * np.r_[np.ones(ndim - m), np.full(m, 1.5)]
    if cs and n > 3:  # cannot be expressed without moving the non-anatomical axis: refused
        with pytest.raises(ValueError, match="non-spatial"):
            _mapping.record_from_layer((4,) * ndim, "int16", moved, "image")
        return
    rec2, _ = _mapping.record_from_layer((4,) * ndim, "int16", moved, "image")
    assert (rec2["spatial"]["affine"] is not None) == affine_form
    kw2 = _mapping.image_layer_kwargs(rec2, ndim, name="x")
    assert np.allclose(napari_matrix(kw2, ndim), napari_matrix(moved, ndim), atol=1e-8)


@pytest.mark.parametrize("n", [2, 3])
def test_lps_zyx_and_ras_xyz_show_the_same_anatomy(n):
    rng = np.random.default_rng(n)
    d_lps = random_direction(rng, n, reflect=False, max_angle=0.3, permute=False)
    spacing = rng.uniform(0.5, 2.5, n)
    origin = rng.uniform(-50, 50, n)
    shape = rng.integers(3, 7, n)
    # LPS file stored z, y, x: array axis j runs along LPS world axis n-1-j
    rev = np.eye(n)[::-1]
    A_lps = np.eye(n + 1)
    A_lps[:n, :n] = d_lps @ rev @ np.diag(spacing)
    A_lps[:n, n] = origin
    # the same anatomy stored x, y, z in RAS: flip x, y of the world, reverse array axes
    F = np.diag([*[-1.0, -1.0, 1.0][:n], 1.0])
    P = np.eye(n + 1)
    P[:n, :n] = rev
    A_ras = F @ A_lps @ P
    recs = {}
    for name, A in (("lps", A_lps), ("ras", A_ras)):
        lin = A[:n, :n]
        sp = np.linalg.norm(lin, axis=0)
        recs[name] = make_record(
            spacing=sp,
            origin=A[:n, n],
            direction=lin / sp,
            coord_system=name.upper(),
            axis_labels=SPATIAL_NAMES[n] if name == "lps" else SPATIAL_NAMES[n][::-1],
        )
    kws = {k: _mapping.image_layer_kwargs(r, n, name=k) for k, r in recs.items()}
    perms = {k: orientation_for(r, n).perm for k, r in recs.items()}
    assert perms["lps"] == tuple(range(n))  # z, y, x LPS: shown as stored
    assert perms["ras"] == tuple(range(n))[::-1]  # x, y, z RAS: transposed lazily
    for _ in range(10):
        i_lps = rng.uniform(0, shape - 1)
        i_ras = i_lps[::-1]
        w = {}
        for k, idx in (("lps", i_lps), ("ras", i_ras)):
            view = idx[list(perms[k])]
            w[k] = (napari_matrix(kws[k], n) @ np.r_[view, 1])[:n]
        assert np.allclose(w["lps"], w["ras"], atol=1e-9)
    # radiological: rows run toward posterior, columns toward patient left
    lps_world = np.linalg.inv(expected_frame("LPS", n)) @ napari_matrix(kws["ras"], n)[:n, :n]
    assert lps_world[1, n - 2] > 0  # moving down the rows goes posterior
    assert lps_world[0, n - 1] > 0  # moving right along the columns goes to patient left


def test_no_coord_system_uses_axis_labels_then_stored_order():
    eye = np.eye(3)
    rec = make_record(
        spacing=[1, 2, 3],
        origin=[0, 0, 0],
        direction=eye,
        axis_labels=["spatial_x", "spatial_y", "spatial_z"],
    )
    assert orientation_for(rec, 3).perm == (2, 1, 0)
    rec["spatial"]["axis_labels"] = None
    assert orientation_for(rec, 3).perm == (0, 1, 2)
    kw = _mapping.image_layer_kwargs(rec, 3, name="x")
    assert np.allclose(kw["scale"], [1, 2, 3])
    assert np.allclose(kw["rotate"], eye) and np.allclose(kw["shear"], eye)


def test_orthogonal_direction_gives_exact_identity_residual():
    rec = make_record(
        spacing=[0.7, 0.7, 2.0],
        origin=[1, 2, 3],
        direction=np.diag([-1.0, -1, 1]),
        coord_system="RAS",
    )
    kw = _mapping.image_layer_kwargs(rec, 3, name="x")
    assert np.array_equal(kw["rotate"], np.eye(3))
    assert np.array_equal(kw["shear"], np.eye(3))
    # RAS with x, y flipped is LPS; napari's first axis runs toward inferior: z flipped
    assert np.array_equal(kw["scale"], [-2.0, 0.7, 0.7])
    assert kw["units"] == ["mm", "mm", "mm"]


def test_sheared_affine_roundtrips():
    A = np.array([[1.0, 0.3, 0, 5], [0, 2.0, 0.2, 6], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    rec = default_record()
    rec["spatial"]["affine"] = A.tolist()
    rec["spatial"]["coord_system"] = "LPS"
    kw = _mapping.image_layer_kwargs(rec, 3, name="x")
    assert not np.allclose(kw["shear"], np.eye(3))
    T = napari_matrix(kw, 3)
    for idx in itertools.product((0, 3), repeat=3):
        view = np.array(idx, float)[list(orientation_for(rec, 3).perm)]
        assert np.allclose(
            T @ np.r_[view, 1], np.r_[expected_frame("LPS", 3) @ (A @ np.r_[idx, 1])[:3], 1]
        )
    moved = layer_meta(kw)
    moved["translate"] = np.asarray(kw["translate"]) + 1
    rec2, _ = _mapping.record_from_layer((3, 3, 3), "f4", moved, "image")
    assert np.allclose(np.asarray(rec2["spatial"]["affine"])[:3, :3], A[:3, :3])


def test_our_composition_matches_napari():
    from napari.utils.transforms import Affine

    rng = np.random.default_rng(3)
    _, rot, shear, scale = geometry.decompose_affine(
        np.block([[rng.normal(size=(3, 3)) + 3 * np.eye(3), np.zeros((3, 1))], [np.eye(4)[3]]])
    )
    translate = rng.normal(size=3)
    ours = affine_from_layer(3, scale=scale, translate=translate, rotate=rot, shear=shear)
    theirs = Affine(scale=scale, translate=translate, rotate=rot, shear=shear).affine_matrix
    assert np.allclose(ours, theirs)
    vec = shear[np.triu_indices(3, 1)]
    assert np.allclose(
        affine_from_layer(3, scale=scale, shear=vec, rotate=rot)[:3, :3], theirs[:3, :3]
    )


def test_channel_axis_for_images_and_writer_reinserts_it():
    rec = make_record(
        spacing=[1, 2, 3],
        origin=[0, 0, 0],
        direction=np.eye(3),
        coord_system="LPS",
        axis_labels=["spatial_x", "channel", "spatial_y", "spatial_z"],
        axis_units=["mm", "", "mm", "mm"],
        shape=[5, 3, 6, 7],
    )
    kw = _mapping.image_layer_kwargs(rec, 4, name="img", contrast_limits=(0, 10))
    perm = orientation_for(rec, 4).perm
    assert perm == (1, 3, 2, 0)
    assert kw["channel_axis"] == 0
    assert len(kw["metadata"]) == 3 and len(kw["scale"]) == 3 and len(kw["name"]) == 3
    assert kw["axis_labels"][0] == ["S-I", "A-P", "R-L"]  # the anatomy, not the stored names
    assert kw["contrast_limits"] == [(0, 10)] * 3
    # what napari's split hands each channel layer, then to the writer
    one = {k: v if k in ("rotate", "shear") else v[1] for k, v in kw.items() if k != "channel_axis"}
    back, undo = _mapping.record_from_layer((7, 6, 5), "uint8", layer_meta(one), "image")
    assert back["spatial"]["axis_labels"] == rec["spatial"]["axis_labels"]
    assert back["spatial"]["axis_units"] == rec["spatial"]["axis_units"]
    assert undo.insert == (1,)
    from napari_mlarray._lazy import LazyView

    data = np.arange(5 * 3 * 6 * 7).reshape(5, 3, 6, 7)
    shown = np.asarray(LazyView(data, perm=perm, flip=kw["metadata"][1]["mlarray"]["flip"]))[1]
    stored = LazyView(shown, **undo.view_kwargs)
    assert np.array_equal(np.asarray(stored), data[:, 1:2])
    # Labels keep every axis as a slider axis
    lk = _mapping.labels_layer_kwargs(rec, 4, name="seg")
    assert "channel_axis" not in lk and len(lk["scale"]) == 4


def test_new_layer_without_metadata_gets_geometry_from_transforms():
    meta = {
        "scale": [2.0, -0.5, 0.5],
        "translate": [10.0, 20.0, 30.0],
        "rotate": np.eye(3),
        "shear": [0.0, 0.0, 0.0],
        "affine": np.eye(4),
        "axis_labels": ("-3", "-2", "-1"),
        "units": ("millimeter", "millimeter", "millimeter"),
        "metadata": {},
    }
    rec, undo = _mapping.record_from_layer((4, 5, 6), "uint8", meta, "labels")
    assert undo.identity
    assert rec["is_seg"]["is_seg"] is True
    assert rec["spatial"]["axis_labels"] is None
    assert rec["spatial"]["axis_units"] == ["mm", "mm", "mm"]
    kw = _mapping.labels_layer_kwargs(rec, 3, name="x")
    assert orientation_for(rec, 3).perm == (0, 1, 2)
    assert np.allclose(napari_matrix(kw, 3), napari_matrix(meta, 3))
    assert set(rec) == set(default_record())


def test_stats_window_and_sample_limits():
    rec = default_record()
    assert _mapping.contrast_limits_from_stats(rec) is None
    rec["stats"].update(min=-1024, max=3000, percentile_min=-1000.0, percentile_max=1500.0)
    assert _mapping.contrast_limits_from_stats(rec) == (-1000.0, 1500.0)
    data = np.zeros((10, 20, 30), np.int16)
    data[4] = np.arange(30)  # the plane napari shows first: step int((10 - 1) / 2)
    data[5] = -np.arange(30)  # ... counted from the far end along a flipped axis
    data[0] = 999  # in neither
    assert _mapping.contrast_limits_from_sample(data) == (0.0, 29.0)
    assert _mapping.contrast_limits_from_sample(data, scale=[2.0, 1, 1]) == (0.0, 29.0)
    assert _mapping.contrast_limits_from_sample(data, scale=[-2.0, 1, 1]) == (-29.0, 0.0)
    assert _mapping.contrast_limits_from_sample(np.full((4, 4), np.nan)) == (0.0, 1.0)


def test_contrast_slider_span_without_stats_is_never_a_whole_16_bit_range():
    """With stats the slider spans their min/max; without, an 8-bit type's range, the
    window itself when it holds every value, else the window widened by its width on each
    side (not below 0 for a non-negative window, within the type) -- never the 65536
    grey values of a 16-bit type, which leave an MR a few slider pixels."""
    rec = default_record()
    span = _mapping.contrast_range
    mr = (127.0, 2145.0)  # pydicom's MR_small
    assert span(rec, np.int16, mr) == (0.0, 4163.0)
    assert span(rec, np.uint16, mr) == (0.0, 4163.0)
    assert span(rec, np.int16, mr, whole=True) is None  # napari's: the window
    assert span(rec, np.int16, (-1024.0, 1000.0)) == (-3048.0, 3024.0)  # a CT plane
    assert span(rec, np.int16, (-30000.0, 30000.0)) == (-32768.0, 32767.0)  # within int16
    assert span(rec, np.float32, (0.0, 1.0)) == (0.0, 2.0)
    assert span(rec, np.uint8, (3.0, 40.0)) == (0.0, 255.0)
    assert span(rec, np.int8, (3.0, 40.0), whole=True) == (-128.0, 127.0)
    assert span(rec, np.int16, [(0.0, 100.0), (0.0, 7.0)]) == [(0.0, 200.0), (0.0, 14.0)]
    assert span(rec, np.int16, [(0.0, 100.0)], whole=True) == [None]
    rec["stats"].update(min=-1024, max=3000)
    assert span(rec, np.int16, (-1000.0, 1500.0)) == (-1024.0, 3000.0)
    assert span(rec, np.int16, [(0.0, 100.0), (0.0, 7.0)]) == [(-1024.0, 3000.0)] * 2
    assert _mapping.sample_is_whole((1, 64, 64))
    assert not _mapping.sample_is_whole((2, 64, 64))
    assert not _mapping.sample_is_whole((2000, 2000))  # subsampled


@pytest.mark.parametrize(
    ("shape", "scale", "plane"),
    [
        ((10, 20, 30), None, (4,)),
        ((11, 20, 30), None, (5,)),
        ((10, 20, 30), [-1.0, 1.0, 1.0], (5,)),
        ((11, 20, 30), [-1.0, 1.0, 1.0], (5,)),
        ((1, 20, 30), [-1.0, 1.0, 1.0], (0,)),
        ((4, 10, 20, 30), [1.0, -1.0, 1.0, 1.0], (1, 5)),
        ((20, 30), [1.0, 1.0], ()),
    ],
)
def test_first_plane_is_the_one_napari_shows(shape, scale, plane):
    assert _mapping.first_plane(shape, scale) == plane


@pytest.mark.parametrize(
    ("lo", "hi", "dtype"), [(0, 1, "u1"), (0, 300, "u2"), (-1, 5, "i1"), (0, 2**40, "u8")]
)
def test_label_dtype(lo, hi, dtype):
    assert _mapping.label_dtype(lo, hi) == np.dtype(dtype)


def _shapes_meta(data, kw):
    meta = layer_meta(dict(kw))
    meta["features"] = {k: list(v) for k, v in kw["features"].items()}
    return meta


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_boxes_shapes_boxes(ndim):
    rng = np.random.default_rng(ndim)
    boxes = []
    for _ in range(4):
        lo = rng.integers(0, 10, ndim).astype(float)
        hi = lo + rng.integers(1, 5, ndim)
        box = [[int(a), int(b)] for a, b in zip(lo, hi, strict=True)]
        boxes.append(box)
    boxes[0][0] = [2.0, 4.5]  # float extents survive untouched boxes
    labels = ["tumor", 2, "cyst", 2.5]
    scores = [0.9, 0.1, 0.25, 0.5]
    rec = make_record(
        spacing=rng.uniform(0.5, 2, ndim),
        origin=np.zeros(ndim),
        direction=np.eye(ndim)[::-1],
        coord_system="RAS" if ndim == 3 else None,
        bboxes=boxes,
        labels=labels,
        scores=scores,
        shape=[20] * ndim,
    )
    data, kw = shapes_layer_data(rec, ndim, name="b")
    assert kw["shape_type"] == "rectangle"
    n_rect = sum(
        math.prod(math.ceil(b[a][1]) - math.floor(b[a][0]) for a in range(ndim - 2))
        if ndim > 2
        else 1
        for b in [[b[p] for p in orientation_for(rec, ndim).perm] for b in boxes]
    )
    assert len(data) == n_rect
    assert len(set(kw["features"]["label"])) == 4
    # unchanged shapes give back the stored boxes exactly
    bbox, base = boxes_from_shapes([(data, _shapes_meta(data, kw))])
    assert bbox == {"bboxes": boxes, "labels": labels, "scores": scores}
    assert base["bbox"]["bboxes"] == boxes
    # moving one box's rectangles by one voxel along the last displayed axis
    moved = [d.copy() for d in data]
    ids = kw["features"]["box"]
    for i, b in enumerate(ids):
        if b == 1:
            moved[i][:, -1] += 1
    bbox2, _ = boxes_from_shapes([(moved, _shapes_meta(moved, kw))])
    col_axis = orientation_for(rec, ndim).perm[-1]
    # drawn as the image shows the data: a reversed axis mirrored (N - 1 - i), positive scales
    flip_last = kw["metadata"]["mlarray"]["flip_last"]
    assert all(v > 0 for v in kw["scale"])
    step = -1 if flip_last[-1] is not None else 1
    expect = copy.deepcopy(boxes[1])
    expect[col_axis] = [expect[col_axis][0] + step, expect[col_axis][1] + step]
    assert bbox2["bboxes"][1] == expect
    assert bbox2["bboxes"][0] == boxes[0]
    # a rectangle drawn by the user becomes a new box
    new = np.array(
        [
            [*([1.0] * (ndim - 2)), 2.5, 3.5],
            [*([1.0] * (ndim - 2)), 2.5, 7.5],
            [*([1.0] * (ndim - 2)), 5.5, 7.5],
            [*([1.0] * (ndim - 2)), 5.5, 3.5],
        ]
    )
    meta = _shapes_meta(data, kw)
    for key, default in (("box", -1), ("label", "new"), ("score", math.nan)):
        meta["features"][key] = [*meta["features"][key], default]
    bbox3, _ = boxes_from_shapes([([*data, new], meta)])
    assert len(bbox3["bboxes"]) == 5
    perm = orientation_for(rec, ndim).perm
    added = bbox3["bboxes"][4]
    view_box = [
        [added[p][0], added[p][1]]
        if last is None
        else [last + 1 - added[p][1], last + 1 - added[p][0]]
        for p, last in zip(perm, flip_last, strict=True)
    ]  # in the Shapes layer's data coordinates
    assert view_box[-2:] == [[3, 6], [4, 8]]
    assert all(v == [1, 2] for v in view_box[:-2])
    assert bbox3["labels"][4] == "new" and math.isnan(bbox3["scores"][4])
    Meta.from_mapping({"bbox": bbox3})  # a valid record


def test_box_edges_land_on_voxel_edges_in_world():
    rec = make_record(
        spacing=[2.0, 0.5, 0.5],
        origin=[5, 6, 7],
        direction=np.eye(3)[::-1],  # stored z, y, x
        coord_system="LPS",
        bboxes=[[[1, 3], [2, 6], [4, 9]]],
        shape=[10, 10, 10],
    )
    img = _mapping.image_layer_kwargs(rec, 3, name="i")
    data, kw = shapes_layer_data(rec, 3, name="b")
    T_img, T_box = napari_matrix(img, 3), napari_matrix(kw, 3)
    # same data-to-world as the image: its reversed axis reversed in the data (positive
    # scales, which napari's Convert to Labels needs), the rectangles drawn on slices 9 - z
    block = img["metadata"]["mlarray"]
    assert np.all(np.asarray(img["scale"]) > 0) and block["flip"] == [True, False, False]
    assert np.all(np.asarray(kw["scale"]) > 0)
    assert np.allclose(T_img, T_box)
    assert len(data) == 2 and sorted(d[0, 0] for d in data) == [9 - 2, 9 - 1]
    rect = data[0]
    # world corner of voxel (z, 2, 4) on its low side == world of the rectangle corner
    voxel_corner = T_img @ np.array([rect[0, 0], 2 - 0.5, 4 - 0.5, 1])
    assert np.allclose((T_box @ np.r_[rect.min(0), 1]), voxel_corner)
    far = T_img @ np.array([rect[0, 0], 6 - 0.5, 9 - 0.5, 1])
    assert np.allclose((T_box @ np.r_[rect.max(0), 1]), far)


def test_spatial_only_boxes_on_a_time_series():
    rec = make_record(
        spacing=[1, 1, 1],
        origin=[0, 0, 0],
        direction=np.eye(3)[::-1],
        coord_system="LPS",
        axis_labels=["temporal", "spatial_z", "spatial_y", "spatial_x"],
        bboxes=[[[0, 2], [1, 3], [2, 5]]],
        shape=[4, 5, 6, 7],
    )
    data, kw = shapes_layer_data(rec, 4, name="b")
    assert kw["ndim"] == 3 and len(data) == 2  # napari broadcasts over time
    bbox, _ = boxes_from_shapes([(data, _shapes_meta(data, kw))])
    assert bbox["bboxes"] == rec["bbox"]["bboxes"]


def test_units_per_spatial_axis_on_a_channel_first_record():
    """axis_units with one unit per spatial axis (as spacing; the reference writes them)."""
    rec = make_record(
        spacing=[1, 2, 3],
        origin=[0, 0, 0],
        direction=np.eye(3),
        coord_system="LPS",
        axis_labels=["channel", "spatial_z", "spatial_y", "spatial_x"],
        axis_units=["mm", "mm", "mm"],
        shape=[2, 5, 6, 7],
    )
    assert Meta.from_mapping(rec).spatial.units_per_axis() == [None, "mm", "mm", "mm"]
    kw = _mapping.image_layer_kwargs(rec, 4, name="img", contrast_limits=(0, 10))
    assert kw["channel_axis"] == 0
    assert [list(u) for u in kw["units"]] == [["mm", "mm", "mm"]] * 2  # one list per channel
    one = {k: v if k in ("rotate", "shear") else v[1] for k, v in kw.items() if k != "channel_axis"}
    back, undo = _mapping.record_from_layer((5, 6, 7), "uint8", layer_meta(one), "image")
    assert undo.insert == (0,)
    assert Meta.from_mapping(back).spatial.units_per_axis() == [None, "mm", "mm", "mm"]
    lk = _mapping.labels_layer_kwargs(rec, 4, name="seg")
    assert list(lk["units"])[-3:] == ["mm", "mm", "mm"]
    # boxes over the spatial axes only keep the spatial axes' units
    rec["bbox"]["bboxes"] = [[[0, 2], [1, 3], [2, 4]]]
    shapes = shapes_layer_data(rec, 4, name="boxes")
    assert shapes is not None and list(shapes[1]["units"]) == ["mm", "mm", "mm"]
