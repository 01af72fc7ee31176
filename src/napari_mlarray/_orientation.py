"""How a record's stored axes are shown in napari: pure N-d numpy, no napari import.

:func:`orientation_for` decides the view order and the napari world frame of a
record; :func:`napari_transforms` turns that into napari's
``scale``/``translate``/``rotate``/``shear``, and :func:`layer_matrix` reads
such keywords back into one data-to-world matrix.

Vocabulary
----------
file world
    The frame the record's ``direction``/``origin``/``affine`` live in
    (FORMAT.md §4): world axis ``i`` is row ``i`` of ``direction``.
napari world
    The frame the plugin hands to napari. With a known ``coord_system`` it is
    the LPS frame in reversed order, ``(z, y, x)`` for 3-D: napari shows the
    last two world axes as rows (down) and columns (right), so rows run toward
    posterior (anterior up) and columns toward patient left (patient right on
    the screen's left), the radiological view. ``napari = D @ file_world``
    where ``D`` is a signed permutation (:func:`display_frame`).
view order
    The order of the data axes given to napari: non-spatial axes first (as
    stored), then the spatial axes in napari-world order. Only a transpose of
    the stored order, applied lazily; the signs go into negative ``scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mlarray._record_defaults import normalized_record

__all__ = [
    "SPATIAL_LABELS",
    "Orientation",
    "affine_from_layer",
    "affine_from_record_spatial",
    "axis_world_map",
    "decompose_linear",
    "display_frame",
    "expand_upper_triangular",
    "is_spatial_label",
    "layer_matrix",
    "napari_transforms",
    "orientation_for",
    "parse_coord_system",
    "spatial_mask",
]

SPATIAL_LABELS = ("spatial", "spatial_x", "spatial_y", "spatial_z")

# anatomical letter -> (LPS axis, sign of that letter's direction along it)
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_XYZ_RANK = {"spatial_z": 0, "spatial_y": 1, "spatial_x": 2}


def is_spatial_label(label: object) -> bool:
    """Return whether an ``axis_labels`` entry names a spatial axis (FORMAT.md §4)."""
    return isinstance(label, str) and label in SPATIAL_LABELS


def parse_coord_system(coord_system: str | None) -> list[tuple[int, int]] | None:
    """Parse an anatomical ``coord_system`` string such as ``"RAS"`` or ``"LPS+"``.

    Parameters
    ----------
    coord_system : str or None
        The record's ``spatial.coord_system``.

    Returns
    -------
    list of (int, int) or None
        For each letter (world axis ``i``), the LPS axis it runs along and the
        sign (+1 if its positive direction is L, P or S). ``None`` when the
        string is missing or not an anatomical three-letter code.
    """
    if not isinstance(coord_system, str):
        return None
    code = coord_system.strip().upper().rstrip("+")
    if len(code) != 3 or any(c not in _LETTERS for c in code):
        return None
    parsed = [_LETTERS[c] for c in code]
    if len({axis for axis, _ in parsed}) != 3:
        return None
    return parsed


def display_frame(coord_system: str | None, n: int) -> np.ndarray | None:
    """Signed permutation ``D`` with ``napari_world = D @ file_world``.

    Parameters
    ----------
    coord_system : str or None
        The record's ``spatial.coord_system``.
    n : int
        Number of spatial (world) axes.

    Returns
    -------
    numpy.ndarray or None
        ``(n, n)`` matrix, or ``None`` when ``coord_system`` is not a known
        anatomical code (then the caller chooses the order, see
        :func:`orientation_for`).
    """
    parsed = parse_coord_system(coord_system)
    if parsed is None:
        return None
    # LPS rank of each file-world axis; extra axes (n > 3) keep their index.
    rank, sign = [], []
    for i in range(n):
        if i < 3:
            rank.append(parsed[i][0])
            sign.append(parsed[i][1])
        else:
            rank.append(i)
            sign.append(1)
    if n < 3 and len(set(rank)) != n:  # e.g. 2-D data whose two letters collide
        return None
    order = sorted(range(n), key=lambda i: -rank[i])  # napari axis k <- file-world axis
    D = np.zeros((n, n))
    for k, i in enumerate(order):
        D[k, i] = sign[i]
    return D


def axis_world_map(linear: np.ndarray) -> list[int]:
    """Assign each column (data axis) the row (world axis) it points along most.

    Greedy on ``|cos|``: the largest remaining normalised entry is taken first,
    so the result is a permutation even for oblique data.

    Parameters
    ----------
    linear : numpy.ndarray
        ``(n, n)`` matrix whose column ``j`` is the world vector of data axis ``j``.

    Returns
    -------
    list of int
        ``world[j]``: the world axis assigned to data axis ``j``.
    """
    m = np.asarray(linear, dtype=float)
    n = m.shape[0]
    try:  # the library's version, when present (same greedy rule)
        from mlarray.geometry import axis_world_map as lib_map
    except ImportError:
        lib_map = None
    if lib_map is not None:
        norms = np.linalg.norm(m, axis=0)
        return [int(w) for w, _ in lib_map(m / np.where(norms == 0, 1.0, norms))]
    norms = np.linalg.norm(m, axis=0)
    cos = np.abs(m) / np.where(norms == 0, 1.0, norms)
    world = [-1] * n
    free_rows, free_cols = set(range(n)), set(range(n))
    while free_cols:
        best = max(
            ((r, c) for r in free_rows for c in free_cols),
            key=lambda rc: (cos[rc], -rc[1], -abs(rc[0] - rc[1])),
        )
        world[best[1]] = best[0]
        free_rows.discard(best[0])
        free_cols.discard(best[1])
    return world


def affine_from_record_spatial(spatial: dict, n: int) -> np.ndarray:
    """Homogeneous ``(n+1, n+1)`` affine of a record's ``spatial`` section (FORMAT.md §4).

    Parameters
    ----------
    spatial : dict
        The ``spatial`` section (``affine`` or ``spacing``/``origin``/``direction``).
    n : int
        Number of spatial axes.

    Returns
    -------
    numpy.ndarray
    """
    if spatial.get("affine") is not None:
        A = np.asarray(spatial["affine"], dtype=float)
        if A.shape != (n + 1, n + 1):
            raise ValueError(f"spatial.affine has shape {A.shape}, expected {(n + 1, n + 1)}")
        return A
    spacing = spatial.get("spacing")
    origin = spatial.get("origin")
    direction = spatial.get("direction")
    sp = np.ones(n) if spacing is None else np.asarray(spacing, dtype=float)
    org = np.zeros(n) if origin is None else np.asarray(origin, dtype=float)
    dirm = np.eye(n) if direction is None else np.asarray(direction, dtype=float)
    if sp.shape != (n,) or org.shape != (n,) or dirm.shape != (n, n):
        raise ValueError(
            f"spatial geometry does not match {n} spatial axes: spacing {sp.shape}, "
            f"origin {org.shape}, direction {dirm.shape}"
        )
    A = np.eye(n + 1)
    A[:n, :n] = dirm @ np.diag(sp)
    A[:n, n] = org
    return A


def _clean(m: np.ndarray, target: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Snap ``m`` to ``target`` when they differ only by rounding noise."""
    return target.copy() if np.allclose(m, target, rtol=0, atol=tol) else m


def decompose_linear(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``m = rotate @ shear @ diag(scale)`` (QR), keeping ``rotate`` near identity.

    Parameters
    ----------
    m : numpy.ndarray
        ``(n, n)`` invertible matrix whose column ``k`` points mostly along
        row ``k`` (see :func:`axis_world_map`).

    Returns
    -------
    rotate : numpy.ndarray
        ``(n, n)`` proper rotation (det +1), the identity for axis-aligned data.
    shear : numpy.ndarray
        ``(n, n)`` upper triangular with a unit diagonal.
    scale : numpy.ndarray
        ``(n,)``, negative where the axis is flipped.
    """
    m = np.asarray(m, dtype=float)
    n = m.shape[0]
    q, r = np.linalg.qr(m)
    s = np.where(np.diag(q) < 0, -1.0, 1.0)
    q = q * s[None, :]
    r = r * s[:, None]
    if np.linalg.det(q) < 0:  # a reflection left in q: move it into the scale
        k = int(np.argmin(np.diag(q)))
        q[:, k] *= -1
        r[k, :] *= -1
    scale = np.diag(r).copy()
    shear = r / scale[None, :]
    rotate = _clean(q, np.eye(n))
    shear = _clean(np.triu(shear), np.eye(n))
    np.fill_diagonal(shear, 1.0)
    return rotate, shear, scale


def expand_upper_triangular(values, n: int) -> np.ndarray:
    """Turn napari's shear vector (upper triangle, row-major) or matrix into an ``(n, n)`` matrix.

    Parameters
    ----------
    values : array-like
        ``n*(n-1)/2`` values or an ``(n, n)`` matrix.
    n : int
        Dimension.

    Returns
    -------
    numpy.ndarray
    """
    v = np.asarray(values, dtype=float)
    if v.ndim == 2:
        return v
    out = np.eye(n)
    out[np.triu_indices(n, 1)] = v
    return out


def affine_from_layer(
    ndim: int, *, scale=None, translate=None, rotate=None, shear=None, affine=None
) -> np.ndarray:
    """Data-to-world ``(ndim+1, ndim+1)`` matrix of a napari layer's transform keywords.

    napari composes ``world = affine @ (rotate @ shear @ scale @ x + translate)``.

    Parameters
    ----------
    ndim : int
        Layer dimensionality.
    scale, translate, rotate, shear, affine : array-like, optional
        As in ``layer.as_layer_data_tuple()[1]``; ``None`` means identity.

    Returns
    -------
    numpy.ndarray
    """
    sc = np.ones(ndim) if scale is None else np.asarray(scale, dtype=float)
    tr = np.zeros(ndim) if translate is None else np.asarray(translate, dtype=float)
    rot = np.eye(ndim) if rotate is None else np.asarray(rotate, dtype=float)
    if rot.ndim == 0 or rot.shape != (ndim, ndim):
        raise ValueError(f"rotate must be a {ndim}x{ndim} matrix, got shape {rot.shape}")
    sh = np.eye(ndim) if shear is None else expand_upper_triangular(shear, ndim)
    inner = np.eye(ndim + 1)
    inner[:ndim, :ndim] = rot @ sh @ np.diag(sc)
    inner[:ndim, ndim] = tr
    if affine is None:
        return inner
    outer = np.asarray(affine, dtype=float)
    if outer.shape == (ndim, ndim):
        full = np.eye(ndim + 1)
        full[:ndim, :ndim] = outer
        outer = full
    return outer @ inner


def layer_matrix(meta: dict, ndim: int) -> np.ndarray:
    """:func:`affine_from_layer` of the transform keywords in a layer's ``meta`` dict.

    Parameters
    ----------
    meta : dict
        ``layer.as_layer_data_tuple()[1]``, or any dict with some of
        ``scale``, ``translate``, ``rotate``, ``shear``, ``affine``.
    ndim : int
        Layer dimensionality.

    Returns
    -------
    numpy.ndarray
    """
    return affine_from_layer(
        ndim,
        scale=meta.get("scale"),
        translate=meta.get("translate"),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        affine=meta.get("affine"),
    )


def _geometry_length(spatial: dict) -> int | None:
    for key in ("spacing", "origin"):
        if spatial.get(key) is not None:
            return len(spatial[key])
    if spatial.get("direction") is not None:
        return len(spatial["direction"])
    if spatial.get("affine") is not None:
        return len(spatial["affine"]) - 1
    return None


def spatial_mask(record: dict, ndim: int) -> list[bool]:
    """Which of the ``ndim`` stored axes are spatial (FORMAT.md §4).

    Parameters
    ----------
    record, ndim
        As in :func:`orientation_for`.

    Returns
    -------
    list of bool
    """
    spatial = normalized_record(record)["spatial"]
    labels = spatial["axis_labels"]
    if labels is not None:
        if len(labels) != ndim:
            raise ValueError(f"spatial.axis_labels has {len(labels)} entries for {ndim} axes")
        return [is_spatial_label(label) for label in labels]
    n = _geometry_length(spatial)
    if n is not None and n < ndim:  # geometry for the trailing axes only
        return [a >= ndim - n for a in range(ndim)]
    return [True] * ndim


@dataclass(frozen=True)
class Orientation:
    """How stored axes are shown in napari.

    Attributes
    ----------
    perm : tuple of int
        View axis ``k`` is stored axis ``perm[k]`` (non-spatial axes first).
    spatial : tuple of bool
        Per stored axis.
    frame : numpy.ndarray
        ``D``: napari world (spatial part) ``= D @ file world``.
    frame_source : str
        ``"coord_system"``, ``"axis_labels"`` or ``"stored"`` (what decided it).
    affine : numpy.ndarray
        The record's ``(n+1, n+1)`` spatial affine in the file world.
    """

    perm: tuple[int, ...]
    spatial: tuple[bool, ...]
    frame: np.ndarray
    frame_source: str
    affine: np.ndarray

    @property
    def n_spatial(self) -> int:
        """Number of spatial axes."""
        return int(sum(self.spatial))

    @property
    def spatial_order(self) -> list[int]:
        """Stored spatial-axis indices (0..n-1 among spatial axes) in napari order."""
        sp = [a for a, s in enumerate(self.spatial) if s]
        return [sp.index(a) for a in self.perm if self.spatial[a]]


def orientation_for(record: dict, ndim: int) -> Orientation:
    """Decide the view order and napari world frame for a record with ``ndim`` axes.

    With an anatomical ``coord_system`` the napari world is LPS reversed
    (``z, y, x``), and each data axis goes to the world axis it runs along most.
    Without one, ``spatial_x/y/z`` labels order the axes ``z, y, x``; with
    neither the stored order is kept (FORMAT.md §4). Non-spatial axes lead.

    Parameters
    ----------
    record : dict
        The ``.mla`` record.
    ndim : int
        Number of stored axes.

    Returns
    -------
    Orientation
    """
    rec = normalized_record(record)
    spatial = rec["spatial"]
    mask = spatial_mask(rec, ndim)
    sp_axes = [a for a in range(ndim) if mask[a]]
    n = len(sp_axes)
    affine = affine_from_record_spatial(spatial, n)
    linear = affine[:n, :n]
    D = display_frame(spatial["coord_system"], n) if n else np.eye(0)
    if D is not None:
        world = axis_world_map(D @ linear) if n else []
        order = sorted(range(n), key=lambda j: world[j])
        source = "coord_system"
    else:
        world = axis_world_map(linear) if n else []
        labels = spatial["axis_labels"]
        names = [labels[a] for a in sp_axes] if labels is not None else []
        if names and all(x in _XYZ_RANK for x in names) and len(set(names)) == n:
            order = sorted(range(n), key=lambda j: _XYZ_RANK[names[j]])
            source = "axis_labels"
        else:
            order = list(range(n))
            source = "stored"
        D = np.zeros((n, n))
        for k, j in enumerate(order):
            D[k, world[j]] = 1.0
    perm = tuple([a for a in range(ndim) if not mask[a]] + [sp_axes[j] for j in order])
    return Orientation(perm, tuple(mask), D, source, affine)


def napari_transforms(orient: Orientation, ndim: int) -> dict:
    """napari ``scale``/``translate``/``rotate``/``shear`` of an orientation (view order).

    Parameters
    ----------
    orient : Orientation
        From :func:`orientation_for`.
    ndim : int
        Number of axes (all of them, spatial or not).

    Returns
    -------
    dict
        One entry per keyword; non-spatial axes get the identity.
    """
    n = orient.n_spatial
    k0 = ndim - n
    scale, translate = np.ones(ndim), np.zeros(ndim)
    rotate, shear = np.eye(ndim), np.eye(ndim)
    if n:
        M = orient.frame @ orient.affine[:n, :n]
        rot, sh, sc = decompose_linear(M[:, orient.spatial_order])
        scale[k0:] = sc
        translate[k0:] = orient.frame @ orient.affine[:n, n]
        rotate[k0:, k0:] = rot
        shear[k0:, k0:] = sh
    return {"scale": scale, "translate": translate, "rotate": rotate, "shear": shear}
