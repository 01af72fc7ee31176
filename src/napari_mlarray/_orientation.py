"""The display convention: where napari shows each axis of a record. Pure numpy, no napari.

Everything about the file (which axes are spatial, its geometry, the world
frame its ``coord_system`` names) comes from the library: :mod:`mlarray.meta`
and :mod:`mlarray.geometry`. Only the convention below lives here.

Display convention
------------------
napari world axes ``(0, 1, 2)`` point toward the patient's **inferior**,
**posterior** and **left** (``napari = (-z, y, x)`` of LPS). napari draws the
last two axes as rows (down the screen) and columns (to the right), and in 3D
its default camera keeps axis 0 toward the viewer, axis 1 down and axis 2 to
the right, a right-handed set. Hence, with the default axis order:

- axial (slider on S-I): anterior up, patient right on the screen's left
  (radiological);
- coronal (``viewer.dims.order = (1, 0, 2)``): superior up, patient right on
  the left; sagittal (``(2, 0, 1)``): superior up, anterior on the left;
- 3D: a right-handed world, so the patient is rendered as they are (seen from
  the front, the patient's right is on the viewer's left).

The frame is right-handed, so no view is a mirror image. Flips and axis
permutations go into a lazy transpose of the data, the flips as reversed axes
(napari's thick slices need positive scales along the sliders; a Shapes layer of
boxes draws its rectangles mirrored the same way, so every layer of a file has one
data-to-world transform and napari's Convert to Labels works on it); napari gets at
most the residual rotation of an oblique acquisition
and a shear (its 3D view is then exact; its 2-D slicing of a rotated layer is
not: see the README on oblique acquisitions).

Vocabulary
----------
file world
    The frame the record's geometry lives in (FORMAT.md section 4), named by
    :func:`mlarray.geometry.anatomical_frame` when it is anatomical.
napari world
    ``napari = D @ file_world`` with ``D`` a signed permutation
    (:attr:`Orientation.frame`). Without an anatomical frame ``D`` is a plain
    permutation: the data is shown as stored (``spatial_x/y/z`` labels, when
    present, order the axes z, y, x).
view order
    Data axes handed to napari: non-spatial axes first (as stored), then the
    spatial axes in napari-world order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mlarray import geometry
from mlarray.errors import MetaValidationError
from mlarray.meta import Meta, MetaSpatial

__all__ = [
    "ANATOMY_LABELS",
    "Orientation",
    "affine_from_layer",
    "as_meta",
    "display_frame",
    "expand_upper_triangular",
    "frame_by_geometry",
    "geometry_key",
    "layer_matrix",
    "napari_from_frame",
    "napari_transforms",
    "orientation_for",
    "record_affine",
    "spatial_mask",
]

#: tilt (degrees) from which opening a volume says what napari's 2-D views show of it
OBLIQUE_NOTE_DEGREES = 0.1
#: napari world axis -> its label, "from-to" in the direction of increasing coordinates
ANATOMY_LABELS = ("S-I", "A-P", "R-L")
#: napari world (inferior, posterior, left) from RAS world
_NAPARI_FROM_RAS = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
_XYZ_RANK = {"spatial_z": 0, "spatial_y": 1, "spatial_x": 2}


def as_meta(record: Meta | Mapping | None) -> Meta:
    """The record as a :class:`mlarray.meta.Meta` (validated by the library).

    Parameters
    ----------
    record : Meta, mapping or None
        A ``Meta``, or a record mapping such as ``Meta.to_mapping()`` (keys may
        be missing).

    Returns
    -------
    Meta
    """
    if isinstance(record, Meta):
        return record
    return Meta.from_mapping(dict(record or {}))


def spatial_mask(record: Meta | Mapping, ndim: int) -> list[bool]:
    """Which of the ``ndim`` stored axes are spatial: the library's rule, and its checks.

    Parameters
    ----------
    record : Meta or mapping
        The ``.mla`` record.
    ndim : int
        Number of stored axes.

    Returns
    -------
    list of bool

    Raises
    ------
    MetaValidationError
        When the record does not fit an ``ndim``-d array (what ``MLArray``
        refuses too, e.g. 3 spacings and no axis labels for 4 axes).
    """
    sp = as_meta(record).spatial
    shape = sp.shape if sp.shape is not None else [1] * ndim
    if len(shape) != ndim:
        raise MetaValidationError("spatial.shape", f"has {len(shape)} entries for {ndim} axes")
    checked = MetaSpatial.from_mapping({**sp.to_mapping(), "shape": list(shape)})
    return list(checked.spatial_axis_mask)


def record_affine(record: Meta | Mapping, n: int) -> np.ndarray:
    """Homogeneous ``(n+1, n+1)`` affine of the record's geometry (file world).

    Parameters
    ----------
    record : Meta or mapping
    n : int
        Number of spatial axes.

    Returns
    -------
    numpy.ndarray
    """
    sp = as_meta(record).spatial
    if sp.affine is not None:
        A = np.asarray(sp.affine, dtype=float)
        if A.shape != (n + 1, n + 1):
            raise MetaValidationError("spatial.affine", f"has shape {A.shape} for {n} spatial axes")
        return A
    return geometry.compose_affine(sp.spacing, sp.origin, sp.direction, ndim=n)


def napari_from_frame(frame: str, n: int) -> tuple[np.ndarray, list[str]]:
    """Signed permutation ``D`` (napari world from the first ``n`` axes of ``frame``), and labels.

    Parameters
    ----------
    frame : str
        Anatomical world frame (``"RAS"``, ``"LPS"``, ...).
    n : int
        Number of world axes used (1 to 3).

    Returns
    -------
    D : numpy.ndarray
        ``(n, n)``.
    labels : list of str
        Anatomy label of each napari world axis (row of ``D``).
    """
    full = _NAPARI_FROM_RAS @ geometry.frame_matrix(frame)  # napari <- file world
    cols = full[:, :n]
    rows = [r for r in range(3) if np.any(cols[r])]
    return cols[rows], [ANATOMY_LABELS[r] for r in rows]


def display_frame(labels) -> tuple[str, np.ndarray] | None:
    """The anatomical frame of a napari world labelled with this convention's axis labels.

    A layer made in napari over an opened file (napari's own "new labels",
    a layer added with the viewer's axis labels) lives in the display world;
    its axis labels (:data:`ANATOMY_LABELS`) say which anatomical axis each
    world axis is.

    Parameters
    ----------
    labels : sequence of str or None
        The axis label of each spatial world axis of the layer.

    Returns
    -------
    (str, numpy.ndarray) or None
        A frame code (LPS letters, :func:`mlarray.geometry.frame_with_axes`)
        and ``D``, with ``layer world = D @ frame world`` over those axes (its
        transpose is the way back); ``None`` unless every label is a distinct
        anatomy label.
    """
    if (
        not labels
        or any(x not in ANATOMY_LABELS for x in labels)
        or len(set(labels)) != len(labels)
    ):
        return None
    rows = [ANATOMY_LABELS.index(x) for x in labels]
    code = geometry.frame_with_axes([int(np.flatnonzero(_NAPARI_FROM_RAS[r])[0]) for r in rows])
    D, shown = napari_from_frame(code, len(labels))
    return code, D[[shown.index(x) for x in labels]]


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


def _unit_columns(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=0)
    return m / np.where(norms == 0, 1.0, norms)[np.newaxis, :]


@dataclass(frozen=True)
class Orientation:
    """How stored axes are shown in napari.

    Attributes
    ----------
    perm : tuple of int
        View axis ``k`` is stored axis ``perm[k]`` (non-spatial axes first).
    spatial : tuple of bool
        Per stored axis: shown as a spatial axis.
    frame : numpy.ndarray
        ``D``: napari world (spatial part) ``= D @ file world``.
    frame_source : str
        ``"coord_system"``, ``"axis_labels"`` or ``"stored"`` (what decided it).
    affine : numpy.ndarray
        ``(n+1, n+1)`` affine of the shown spatial axes, file world.
    world_frame : str or None
        The anatomical frame of the file world (``"RAS"``, ``"LPS"``, ...).
    world_labels : tuple of str or None
        Anatomy label of each napari world axis (``"S-I"``, ``"A-P"``, ``"R-L"``).
    notes : tuple of str
        What the user should be told about this file's display (once).
    """

    perm: tuple[int, ...]
    spatial: tuple[bool, ...]
    frame: np.ndarray
    frame_source: str
    affine: np.ndarray
    world_frame: str | None = None
    world_labels: tuple[str, ...] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def n_spatial(self) -> int:
        """Number of shown spatial axes."""
        return int(sum(self.spatial))

    @property
    def spatial_order(self) -> list[int]:
        """Shown spatial-axis indices (0..n-1 among them) in napari order."""
        sp = [a for a, s in enumerate(self.spatial) if s]
        return [sp.index(a) for a in self.perm if self.spatial[a]]

    def view_labels(self, stored_labels: list[str] | None) -> list[str] | None:
        """napari axis labels in view order: the anatomy when known, else the stored labels.

        Parameters
        ----------
        stored_labels : list of str or None
            The record's ``axis_labels``.

        Returns
        -------
        list of str or None
        """
        k0 = len(self.perm) - self.n_spatial
        if self.world_labels is None:
            if stored_labels is None:
                return None
            return [str(stored_labels[a]) for a in self.perm]
        out = []
        for k, a in enumerate(self.perm):
            if k >= k0:
                out.append(self.world_labels[k - k0])
            elif stored_labels is not None:
                out.append(str(stored_labels[a]))
            else:
                out.append(f"axis {a}")
        return out


def orientation_for(record: Meta | Mapping, ndim: int, *, name: str = "") -> Orientation:
    """Decide the view order and napari world frame for a record with ``ndim`` axes.

    With an anatomical frame (:func:`mlarray.geometry.anatomical_frame`) the
    napari world is the display convention of this module, and each data
    axis goes to the world axis it runs along most. A spatial axis beyond
    the three anatomical ones (a 4-D file without axis labels: time stored
    as a fourth "spatial" axis) is shown as a non-spatial slider, with a
    note. Without a frame the data is shown as stored (``spatial_x/y/z``
    labels order the axes z, y, x), with a note.

    Parameters
    ----------
    record : Meta or mapping
        The ``.mla`` record.
    ndim : int
        Number of stored axes.
    name : str, optional
        File or layer name used in the notes.

    Returns
    -------
    Orientation
    """
    meta = as_meta(record)
    sp = meta.spatial
    mask = spatial_mask(meta, ndim)
    sp_axes = [a for a in range(ndim) if mask[a]]
    n = len(sp_axes)
    full = record_affine(meta, n) if n else np.eye(1)
    who = f"{name}: " if name else ""
    notes: list[str] = []
    frame = (
        geometry.anatomical_frame(
            sp.coord_system,
            full,
            geometry_as_affine=sp.affine is not None,
            source_format=meta._image_meta_format.image_meta_format,
        )
        if n
        else None
    )
    world_labels = None
    if frame is not None:
        if n > 3:  # world axes 3.. are not anatomy: show their array axes as non-spatial
            mapping = geometry.axis_world_map(_unit_columns(full[:n, :n]))
            keep = [j for j in range(n) if mapping[j][0] < 3]
            extra = [sp_axes[j] for j in range(n) if mapping[j][0] >= 3]
            notes.append(
                f"{who}stored axis {', '.join(map(str, extra))} is spatial in the file but not "
                f"one of the three anatomical axes of its {frame} world (a 4-D file without "
                "axis labels): shown as a non-spatial slider, without a physical scale"
            )
            rows = sorted(mapping[j][0] for j in keep)
            sub = np.eye(len(keep) + 1)
            sub[:-1, :-1] = full[np.ix_(rows, keep)]
            sub[:-1, -1] = full[rows, n]
            full = sub
            for a in extra:
                mask[a] = False
            sp_axes = [sp_axes[j] for j in keep]
            n = len(sp_axes)
        D, world_labels = napari_from_frame(frame, n)
        world = [w for w, _ in geometry.axis_world_map(_unit_columns(D @ full[:n, :n]))]
        order = sorted(range(n), key=lambda j: world[j])
        source = "coord_system"
    else:
        world = [w for w, _ in geometry.axis_world_map(_unit_columns(full[:n, :n]))] if n else []
        labels = sp.axis_labels
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
        if n:
            what = (
                "its anatomy is unknown"
                if sp.coord_system is None
                else (f"coord_system {sp.coord_system!r} is not an anatomical frame")
            )
            notes.append(
                f"{who}no anatomical coord_system ({what}): shown as stored, "
                "not in the radiological orientation"
            )
    tilt = geometry.obliquity(full[:n, :n]) if n >= 3 else 0.0
    if tilt >= OBLIQUE_NOTE_DEGREES:
        notes.append(
            f"{who}an oblique acquisition (stored axes tilted up to {tilt:.1f} degrees from "
            "the world axes): the 3D view shows it exactly, but napari's 2-D views do not "
            "reslice it: they show whole stored slices placed by the world origin, so for a "
            "volume away from it some slider steps stay black and some slices show only in 3D"
        )
    perm = tuple([a for a in range(ndim) if not mask[a]] + [sp_axes[j] for j in order])
    return Orientation(
        perm,
        tuple(mask),
        D,
        source,
        full,
        frame,
        None if world_labels is None else tuple(world_labels),
        tuple(notes),
    )


def geometry_key(record: Meta | Mapping, ndim: int) -> tuple[tuple[int, ...], np.ndarray] | None:
    """The grid of a record's spatial axes: their shape and the file-world affine.

    Parameters
    ----------
    record : Meta or mapping
    ndim : int
        Number of stored axes.

    Returns
    -------
    (tuple of int, numpy.ndarray) or None
        ``None`` without spatial axes or shape.
    """
    meta = as_meta(record)
    mask = spatial_mask(meta, ndim)
    n = sum(mask)
    if not n or meta.spatial.shape is None:
        return None
    shape = tuple(int(meta.spatial.shape[a]) for a in range(ndim) if mask[a])
    return shape, record_affine(meta, n)


def frame_by_geometry(record: Meta | Mapping, ndim: int, others) -> tuple[str, str] | None:
    """The world frame of another file on exactly this record's grid, for a record without one.

    A mask saved with its image's spacing, origin and direction but no
    ``coord_system`` (code written for the reference package does that) lives
    in its image's world: shown in that frame, it overlays the image.

    Parameters
    ----------
    record : Meta or mapping
        A record without an anatomical frame.
    ndim : int
        Number of its stored axes.
    others : iterable of (str, str, key)
        ``(name, frame, geometry_key)`` of files with a ``RAS`` or ``LPS`` world.

    Returns
    -------
    (str, str) or None
        ``(frame, name)`` of the first file on the same grid (same spatial shape
        and affine, to 1e-6 of the voxel size).
    """
    mine = geometry_key(record, ndim)
    if mine is None or len(mine[0]) > 3:
        return None
    shape, affine = mine
    tol = 1e-6 * max(1.0, float(np.abs(affine[:-1, :-1]).max()))
    for name, frame, key in others:
        same_grid = key is not None and key[0] == shape and key[1].shape == affine.shape
        if same_grid and np.allclose(key[1], affine, rtol=0, atol=tol):
            return frame, name
    return None


def napari_transforms(orient: Orientation, ndim: int, shape=None) -> dict:
    """napari ``scale``/``translate``/``rotate``/``shear`` of an orientation (view order).

    The linear part in view order is ``M = rotate @ shear @ diag(scale)``:
    :func:`mlarray.geometry.decompose_affine` of ``M`` with its flips taken
    out. Given the data's ``shape``, the flips go into the data: ``flip`` names
    the view axes the layer's data must show reversed (a
    :class:`~napari_mlarray._lazy.LazyView` ``flip``), the scales stay positive
    and ``translate`` places the first voxel of a reversed axis where its last
    one was. napari's thick slices (slider margins: slab projections) need a
    positive scale along the slider axes. Without a shape the flips are put back
    as negative scales.

    Parameters
    ----------
    orient : Orientation
        From :func:`orientation_for`.
    ndim : int
        Number of axes (all of them, spatial or not).
    shape : sequence of int, optional
        The data's shape in view order.

    Returns
    -------
    dict
        One entry per keyword (non-spatial axes get the identity), and ``flip``:
        a bool per view axis.
    """
    n = orient.n_spatial
    k0 = ndim - n
    scale, translate = np.ones(ndim), np.zeros(ndim)
    rotate, shear = np.eye(ndim), np.eye(ndim)
    flip = np.zeros(ndim, dtype=bool)
    if n:
        M = (orient.frame @ orient.affine[:n, :n])[:, orient.spatial_order]
        flips = np.where(np.diag(M) < 0, -1.0, 1.0)
        unflipped = np.eye(n + 1)
        unflipped[:n, :n] = M * flips[np.newaxis, :]
        _, rot, sh, sc = geometry.decompose_affine(unflipped)
        if np.linalg.det(rot) < 0:  # an oblique reflection: one more flip, never in rotate
            k = int(np.argmin(np.diag(rot)))
            f = np.ones(n)
            f[k] = -1.0
            rot, sh, flips = rot * f[np.newaxis, :], sh * f[:, None] * f[None, :], flips * f
        rot = np.where(np.abs(rot - np.eye(n)) < 1e-12, np.eye(n), rot)
        sh = np.where(np.abs(sh - np.eye(n)) < 1e-12, np.eye(n), sh)
        translate[k0:] = orient.frame @ orient.affine[:n, n]
        rotate[k0:, k0:] = rot
        shear[k0:, k0:] = sh
        if shape is None:
            scale[k0:] = sc * flips
        else:
            # voxel v of a reversed axis of length N is shown as voxel N - 1 - v
            last = np.asarray(shape, dtype=float)[k0:] - 1
            translate[k0:] += rot @ sh @ (sc * flips * np.where(flips < 0, last, 0.0))
            scale[k0:] = sc
            flip[k0:] = flips < 0
    return {
        "scale": scale,
        "translate": translate,
        "rotate": rotate,
        "shear": shear,
        "flip": tuple(bool(f) for f in flip),
    }
