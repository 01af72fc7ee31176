"""Affine math for ``.mla`` geometry, as pure N-d functions on arrays.

Conventions (FORMAT.md section 4), for ``n`` spatial axes:

- ``direction`` is ``n x n``; column ``j`` is the world direction of spatial
  array axis ``j`` and row ``i`` is world axis ``i`` (the ITK convention).
- The homogeneous affine is ``(n+1) x (n+1)`` with
  ``A[:n, :n] = direction @ diag(spacing)``, ``A[:n, n] = origin`` and last
  row ``[0, ..., 0, 1]``. A missing spacing is ones, a missing origin zeros,
  a missing direction the identity.
- The linear part decomposes as ``M = rotation @ shear @ diag(scale)``
  (napari's own order, ``rotate @ shear @ scale``), with ``rotation``
  orthonormal (its determinant may be -1: a reflection lives in the
  rotation, never in a negative scale), ``shear`` unit upper-triangular and
  ``scale > 0``.

Nothing here imports napari or Qt; every function takes and returns numpy
arrays (or plain Python containers of numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlarray.errors import MetaValidationError

__all__ = [
    "anatomical_frame",
    "anatomical_part",
    "axis_codes",
    "axis_world_map",
    "compose_affine",
    "converter_reorientation",
    "decompose_affine",
    "frame_matrix",
    "frame_with_axes",
    "is_orthonormal",
    "obliquity",
    "parse_axis_codes",
    "rotation",
    "scale",
    "shear",
    "spacing_origin_direction",
    "translation",
]

ArrayLike = np.ndarray | Sequence


def _as_vector(field: str, value: ArrayLike) -> np.ndarray:
    """Return ``value`` as a finite 1-d float64 array, or raise naming ``field``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetaValidationError(field, f"expected a sequence of numbers, got {value!r}") from exc
    if arr.ndim != 1:
        raise MetaValidationError(
            field, f"expected one number per spatial axis (a 1-d sequence), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise MetaValidationError(field, f"all values must be finite, got {arr.tolist()}")
    return arr


def _as_square(field: str, value: ArrayLike) -> np.ndarray:
    """Return ``value`` as a finite square float64 matrix, or raise naming ``field``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetaValidationError(
            field, f"expected a square matrix of numbers, got {value!r}"
        ) from exc
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise MetaValidationError(field, f"expected a square matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise MetaValidationError(field, "all values must be finite")
    return arr


def _as_affine(affine: ArrayLike) -> np.ndarray:
    """Validate a homogeneous affine: square, at least 1 x 1, finite, last row ``[0..0, 1]``.

    ``[[1.0]]`` is the affine of no spatial axis (an array whose axes are all
    channels, time, ...), as in the reference package.
    """
    arr = _as_square("affine", affine)
    if arr.shape[0] < 1:
        raise MetaValidationError(
            "affine", f"expected shape (n+1, n+1) with n >= 0, got {arr.shape}"
        )
    last = np.zeros(arr.shape[0])
    last[-1] = 1.0
    if not np.allclose(arr[-1], last, rtol=0.0, atol=1e-12):
        raise MetaValidationError(
            "affine",
            f"the last row must be [0, ..., 0, 1], got {arr[-1].tolist()}; "
            "projective transforms cannot be stored",
        )
    return arr


def compose_affine(
    spacing: ArrayLike | None = None,
    origin: ArrayLike | None = None,
    direction: ArrayLike | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Build the homogeneous affine from spacing, origin and direction.

    Parameters
    ----------
    spacing : sequence of float, optional
        Voxel size per spatial axis, in array-axis order. Ones when omitted.
    origin : sequence of float, optional
        World position of voxel ``(0, ..., 0)``. Zeros when omitted.
    direction : (n, n) array_like, optional
        Column ``j`` is the world direction of spatial array axis ``j``.
        The identity when omitted.
    ndim : int, optional
        Number of spatial axes. Needed only when the other three are all
        ``None``; when given together with them it must agree.

    Returns
    -------
    numpy.ndarray
        ``(n+1, n+1)`` float64 affine with ``A[:n, :n] = direction @
        diag(spacing)``, ``A[:n, n] = origin`` and last row ``[0, ..., 0, 1]``;
        ``[[1.0]]`` for no spatial axis (``n = 0``), as in the reference package.

    Raises
    ------
    MetaValidationError
        When lengths disagree, ``direction`` is not square, a value is not
        finite, or the dimensionality cannot be determined.
    """
    sizes: dict[str, int] = {}
    sp = og = dr = None
    if spacing is not None:
        sp = _as_vector("spacing", spacing)
        sizes["spacing"] = sp.shape[0]
    if origin is not None:
        og = _as_vector("origin", origin)
        sizes["origin"] = og.shape[0]
    if direction is not None:
        dr = _as_square("direction", direction)
        sizes["direction"] = dr.shape[0]
    if ndim is not None:
        if isinstance(ndim, bool) or not isinstance(ndim, int | np.integer) or ndim < 0:
            raise MetaValidationError("ndim", f"expected an integer >= 0, got {ndim!r}")
        sizes["ndim"] = int(ndim)
    if not sizes:
        raise MetaValidationError(
            "ndim", "give ndim when spacing, origin and direction are all None"
        )
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{name} has {size}" for name, size in sizes.items())
        field = next(name for name in ("spacing", "origin", "direction", "ndim") if name in sizes)
        raise MetaValidationError(
            field, f"spatial dimensionality disagrees ({detail}); give one value per spatial axis"
        )
    n = next(iter(sizes.values()))
    linear = np.eye(n) if dr is None else dr.copy()
    if sp is not None:
        linear = linear * sp[np.newaxis, :]
    affine = np.eye(n + 1)
    affine[:n, :n] = linear
    if og is not None:
        affine[:n, n] = og
    return affine


def decompose_affine(
    affine: ArrayLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split an affine into translation, rotation, shear and scale.

    The linear part is factored by QR (Gram-Schmidt on its columns) as
    ``M = rotation @ shear @ diag(scale)``, napari's ``rotate @ shear @
    scale`` order. Unlike column norms, this recovers the true scale of a
    sheared affine; for an affine without shear the two agree.

    Parameters
    ----------
    affine : (n+1, n+1) array_like
        Homogeneous affine, last row ``[0, ..., 0, 1]``.

    Returns
    -------
    translation : (n,) numpy.ndarray
    rotation : (n, n) numpy.ndarray
        Orthonormal; determinant -1 when the affine contains a reflection.
    shear : (n, n) numpy.ndarray
        Unit upper-triangular.
    scale : (n,) numpy.ndarray
        Strictly positive.

    For no spatial axis (``[[1.0]]``) all four are empty.

    Raises
    ------
    MetaValidationError
        For a malformed, non-finite or singular affine (field ``"affine"``).
    """
    arr = _as_affine(affine)
    n = arr.shape[0] - 1
    if n == 0:
        return np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0)
    linear = arr[:n, :n]
    q, r = np.linalg.qr(linear)
    diag = np.diag(r)
    norm = float(np.max(np.abs(linear)))
    if norm == 0.0 or np.min(np.abs(diag)) <= norm * n * np.finfo(np.float64).eps * 16:
        raise MetaValidationError(
            "affine",
            "the linear part is singular (a zero or degenerate voxel axis); "
            "every spacing must be non-zero and the axes linearly independent",
        )
    signs = np.where(diag < 0, -1.0, 1.0)
    rot = q * signs[np.newaxis, :]
    upper = r * signs[:, np.newaxis]
    scl = np.diag(upper).copy()
    shr = np.triu(upper / scl[np.newaxis, :])
    np.fill_diagonal(shr, 1.0)
    return arr[:n, n].copy(), rot, shr, scl


def translation(affine: ArrayLike) -> np.ndarray:
    """Translation (world position of voxel zero) of ``affine``; see :func:`decompose_affine`."""
    return _as_affine(affine)[:-1, -1].copy()


def rotation(affine: ArrayLike) -> np.ndarray:
    """Orthonormal rotation (reflection included) of ``affine``; see :func:`decompose_affine`."""
    return decompose_affine(affine)[1]


def shear(affine: ArrayLike) -> np.ndarray:
    """Unit upper-triangular shear of ``affine``; see :func:`decompose_affine`."""
    return decompose_affine(affine)[2]


def scale(affine: ArrayLike) -> np.ndarray:
    """Positive per-axis scale of ``affine``; see :func:`decompose_affine`."""
    return decompose_affine(affine)[3]


def spacing_origin_direction(
    affine: ArrayLike, *, atol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert :func:`compose_affine` for an affine without shear.

    Parameters
    ----------
    affine : (n+1, n+1) array_like
        Homogeneous affine.
    atol : float, optional
        Largest off-diagonal shear entry still treated as zero.

    Returns
    -------
    spacing : (n,) numpy.ndarray
        The scale of the affine (always positive).
    origin : (n,) numpy.ndarray
    direction : (n, n) numpy.ndarray
        The rotation of the affine; a reflection stays in it.

    Raises
    ------
    MetaValidationError
        When the affine is sheared: spacing/origin/direction cannot express
        shear, so the affine form must be kept. Also for a malformed or
        singular affine.
    """
    origin, rot, shr, scl = decompose_affine(affine)
    off_diagonal = np.abs(np.triu(shr, k=1))
    if off_diagonal.size and float(off_diagonal.max()) > atol:
        raise MetaValidationError(
            "affine",
            f"the affine has shear (largest shear entry {float(off_diagonal.max()):.3g} > "
            f"atol={atol:g}); spacing/origin/direction cannot represent it, so keep the "
            "geometry in the affine form",
        )
    return scl, origin, rot


def is_orthonormal(m: ArrayLike, atol: float = 1e-6) -> bool:
    """Return whether ``m`` is a square matrix with orthonormal columns.

    Parameters
    ----------
    m : array_like
        Candidate matrix. Anything that is not a finite square matrix gives
        ``False``.
    atol : float, optional
        Tolerance on each entry of ``m.T @ m - I``.

    Returns
    -------
    bool
    """
    try:
        arr = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or not np.all(np.isfinite(arr)):
        return False
    return bool(np.allclose(arr.T @ arr, np.eye(arr.shape[0]), rtol=0.0, atol=atol))


def axis_world_map(direction: ArrayLike) -> list[tuple[int, int]]:
    """Match every spatial array axis with the world axis it points along most.

    The assignment is a permutation: pairs are taken greedily by decreasing
    ``|direction[i, j]|`` over the whole matrix (not column by column), so a
    rotation near 45 degrees still maps each world axis once. Exact ties
    prefer ``i == j``, then the lower array axis, then the lower world axis.

    Parameters
    ----------
    direction : (n, n) array_like
        Column ``j`` is the world direction of array axis ``j``.

    Returns
    -------
    list of (int, int)
        Entry ``j`` is ``(world_axis, sign)``: array axis ``j`` runs along
        world axis ``world_axis``, toward its positive end when ``sign`` is
        ``+1`` and its negative end when ``-1``.

    Raises
    ------
    MetaValidationError
        When ``direction`` is not a finite square matrix.
    """
    dr = _as_square("direction", direction)
    n = dr.shape[0]
    magnitude = np.round(np.abs(dr), 12)
    order = sorted(
        ((i, j) for i in range(n) for j in range(n)),
        key=lambda ij: (-magnitude[ij], ij[0] != ij[1], ij[1], ij[0]),
    )
    world_of: dict[int, int] = {}
    used_world: set[int] = set()
    for i, j in order:
        if j in world_of or i in used_world:
            continue
        world_of[j] = i
        used_world.add(i)
        if len(world_of) == n:
            break
    return [(world_of[j], -1 if dr[world_of[j], j] < 0 else 1) for j in range(n)]


def anatomical_part(
    affine: ArrayLike, n_world: int = 3, *, atol: float = 1e-6
) -> tuple[list[int], list[int], np.ndarray]:
    """Split an affine over more spatial axes than world axes ``0 .. n_world-1`` into the
    anatomical part and the rest.

    The reference converter stores a 4-D NIfTI's time as a fourth "spatial"
    axis (a 5 x 5 affine, 2000 "mm" per frame): the array axes that run along
    world axes ``n_world`` and beyond (:func:`axis_world_map`) are not anatomy.

    Parameters
    ----------
    affine : (n+1, n+1) array_like
        Homogeneous affine with ``n >= n_world``.
    n_world : int, optional
        Number of anatomical world axes (the first ones).
    atol : float, optional
        Largest entry, relative to the axis' scale, still treated as no mixing.

    Returns
    -------
    keep : list of int
        The spatial array axes (positions among the ``n``) along world axes
        ``0 .. n_world-1``, in array order.
    extra : list of int
        The others, in array order.
    sub : (n_world+1, n_world+1) numpy.ndarray
        The affine of the ``keep`` axes onto the anatomical world axes.

    Raises
    ------
    MetaValidationError
        When an extra axis moves along an anatomical world axis or an
        anatomical array axis along an extra world axis (time mixed with
        space), or for a zero voxel size.
    """
    a = _as_affine(affine)
    n = a.shape[0] - 1
    if n < n_world:
        raise MetaValidationError("affine", f"expected at least {n_world} spatial axes, got {n}")
    linear = a[:n, :n]
    norms = np.linalg.norm(linear, axis=0)
    if np.any(norms == 0):
        raise MetaValidationError("affine", "an axis has a zero voxel size")
    mapping = axis_world_map(linear / norms[np.newaxis, :])
    keep = [j for j in range(n) if mapping[j][0] < n_world]
    extra = [j for j in range(n) if mapping[j][0] >= n_world]
    unit = linear / norms[np.newaxis, :]
    if np.any(np.abs(unit[:n_world][:, extra]) > atol) or np.any(
        np.abs(unit[n_world:][:, keep]) > atol
    ):
        raise MetaValidationError(
            "affine", "the axes beyond the anatomical ones mix with the anatomical world axes"
        )
    sub = np.eye(n_world + 1)
    sub[:n_world, :n_world] = linear[:n_world][:, keep]
    sub[:n_world, n_world] = a[:n_world, n]
    return keep, extra, sub


# --------------------------------------------------------------------------- anatomical frames

# anatomical letter -> (RAS world axis, +1 if the letter is that axis' positive end)
_RAS_LETTERS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
_RAS_NAMES = ("RL", "AP", "SI")  # positive, negative end of each RAS axis


def obliquity(direction: ArrayLike) -> float:
    """The largest angle, in degrees, between a spatial array axis and the world axis it
    runs along most (:func:`axis_world_map`): 0 for an axis-aligned volume, the tilt of an
    oblique acquisition.

    Parameters
    ----------
    direction : (n, n) array_like
        Column ``j`` is the world direction of array axis ``j`` (any length: the
        linear part of an affine will do).

    Returns
    -------
    float

    Raises
    ------
    MetaValidationError
        When ``direction`` is not a finite square matrix.
    """
    dr = _as_square("direction", direction)
    if not dr.size:
        return 0.0
    norms = np.linalg.norm(dr, axis=0)
    unit = dr / np.where(norms == 0, 1.0, norms)[np.newaxis, :]
    cosines = [abs(unit[i, j]) for j, (i, _) in enumerate(axis_world_map(unit))]
    return float(np.degrees(np.arccos(np.clip(min(cosines), 0.0, 1.0))))


# --------------------------------------------------------------------------- anatomical frames

# anatomical letter -> (RAS world axis, +1 if the letter is that axis' positive end)
_RAS_LETTERS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
_RAS_NAMES = ("RL", "AP", "SI")  # positive, negative end of each RAS axis


def parse_axis_codes(code: object) -> str | None:
    """Normalise an anatomical three-letter code such as ``"RAS"``, ``"lps+"`` or ``"SLP+"``.

    Parameters
    ----------
    code : object
        Typically a record's ``spatial.coord_system``.

    Returns
    -------
    str or None
        The three upper-case letters (a trailing ``+`` dropped), or ``None``
        when ``code`` is not a string naming each of the R-L, A-P and S-I axes
        exactly once.
    """
    if not isinstance(code, str):
        return None
    letters = code.strip().upper().removesuffix("+")
    if len(letters) != 3 or any(c not in _RAS_LETTERS for c in letters):
        return None
    if len({_RAS_LETTERS[c][0] for c in letters}) != 3:
        return None
    return letters


def frame_matrix(code: str) -> np.ndarray:
    """Signed permutation ``F`` with ``ras = F @ world`` for the frame named by ``code``.

    Parameters
    ----------
    code : str
        Anatomical frame such as ``"LPS"``: world axis ``i`` points toward
        letter ``i`` (LPS: +x left, +y posterior, +z superior).

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` matrix; its determinant is +1 for right-handed frames
        (``RAS``, ``LPS``, ...).

    Raises
    ------
    MetaValidationError
        When ``code`` is not an anatomical three-letter code.
    """
    letters = parse_axis_codes(code)
    if letters is None:
        raise MetaValidationError("coord_system", f"not an anatomical frame: {code!r}")
    out = np.zeros((3, 3))
    for i, c in enumerate(letters):
        axis, sign = _RAS_LETTERS[c]
        out[axis, i] = sign
    return out


def frame_with_axes(ras_axes: Sequence[int], base: str = "LPS") -> str:
    """Anatomical frame whose first world axes run along the given RAS axes.

    A world of ``n < 3`` anatomical axes is the first ``n`` axes of the frame
    its ``coord_system`` names (FORMAT.md section 4): a 2-D coronal plane
    (patient left and superior) needs a frame starting with ``L`` and ``S``.

    Parameters
    ----------
    ras_axes : sequence of int
        Distinct RAS world axes (0: R-L, 1: A-P, 2: S-I) the first world axes
        must run along, in any order.
    base : str
        Anatomical frame giving the direction (letter) of each axis and their
        order; ``"LPS"`` by default.

    Returns
    -------
    str
        Three letters: the ``base`` letters of ``ras_axes`` in ``base`` order,
        then the remaining ones, the last of them reversed when that makes the
        frame right-handed (base LPS: ``"LPS"`` for all three axes or for R-L
        and A-P, ``"LSA"`` for R-L and S-I).

    Raises
    ------
    MetaValidationError
        When ``base`` is not anatomical or ``ras_axes`` repeats or leaves 0..2.
    """
    letters = parse_axis_codes(base)
    if letters is None:
        raise MetaValidationError("coord_system", f"not an anatomical frame: {base!r}")
    wanted = [int(a) for a in ras_axes]
    if len(set(wanted)) != len(wanted) or any(a not in (0, 1, 2) for a in wanted):
        raise MetaValidationError("coord_system", f"not distinct RAS axes 0..2: {ras_axes!r}")
    first = [c for c in letters if _RAS_LETTERS[c][0] in wanted]
    rest = [c for c in letters if _RAS_LETTERS[c][0] not in wanted]
    code = "".join(first + rest)
    if rest and np.linalg.det(frame_matrix(code)) < 0:  # reverse the last free letter
        flipped = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}[rest[-1]]
        code = "".join(first + rest[:-1] + [flipped])
    return code


def axis_codes(linear: ArrayLike, frame: str = "RAS") -> str:
    """Anatomical letter each array axis points toward (nibabel's ``aff2axcodes``).

    Parameters
    ----------
    linear : (3, 3) or (4, 4) array_like
        Linear part of an affine (or the homogeneous affine) into ``frame``;
        column ``j`` is the world vector of array axis ``j``.
    frame : str
        The world frame, ``"RAS"`` by default.

    Returns
    -------
    str
        One letter per array axis, e.g. ``"SLP"``; each world axis is used
        once (see :func:`axis_world_map`).
    """
    m = _as_square("affine", linear)
    if m.shape[0] == 4:
        m = m[:3, :3]
    if m.shape != (3, 3):
        raise MetaValidationError("affine", f"expected 3 spatial axes, got shape {m.shape}")
    ras = frame_matrix(frame) @ m
    norms = np.linalg.norm(ras, axis=0)
    mapping = axis_world_map(ras / np.where(norms == 0, 1.0, norms)[np.newaxis, :])
    return "".join(_RAS_NAMES[axis][0 if sign > 0 else 1] for axis, sign in mapping)


def converter_reorientation(linear: ArrayLike) -> tuple[list[int], list[bool]]:
    """Axis order and flips the reference converter gives an image of RAS-world ``linear``.

    The reference ``mlarray_convert`` (0.0.54, via medvol) reorders a NIfTI
    (or an anatomical NRRD, taken into RAS world) before storing it: with
    ``(world_axis[j], sign[j])`` of each stored axis ``j`` (RAS world, see
    :func:`axis_world_map`), the array becomes ``data.transpose(world_axis)``
    with axis ``i`` then reversed where ``sign[i]`` is negative. Measured on
    all 48 NIfTI storage orders (and 2-D): an R,A,S, L,A,S or L,P,S NIfTI stays
    x, y, z (RAS+, as nibabel's canonical order), an A,L,S one becomes an
    L,P,S array, a P,I,R one S,L,P.

    Parameters
    ----------
    linear : (n, n) array_like
        Linear part of the image's affine into RAS world (n = 2 or 3).

    Returns
    -------
    axes : list of int
        ``out = data.transpose(axes)`` ...
    flips : list of bool
        ... then ``out`` axis ``i`` reversed where ``flips[i]``.
    """
    m = _as_square("affine", linear)
    norms = np.linalg.norm(m, axis=0)
    mapping = axis_world_map(m / np.where(norms == 0, 1.0, norms)[np.newaxis, :])
    return [w for w, _ in mapping], [sign < 0 for _, sign in mapping]


def anatomical_frame(
    coord_system: object,
    affine: ArrayLike | None = None,
    *,
    geometry_as_affine: bool = True,
    source_format: str | None = None,
) -> str | None:
    """The anatomical world frame a record's geometry maps into.

    ``coord_system`` normally names the world frame (FORMAT.md section 4):
    ``"RAS"`` and ``"LPS"`` as written, ``"RAS+"`` and ``"LPS+"`` as RAS and
    LPS. The reference converter (``mlarray_convert`` via medvol) instead
    stores the *array's* axis codes with a ``+`` while its affine maps into
    RAS world: converting NIfTI files in all 48 storage orders gives
    ``RAS+``, ``LPS+``, ``RPI+``, ``SLP+``, ``PIR+``, ... (an A,L,S NIfTI
    becomes an L,P,S array with ``coord_system="LPS+"`` and an affine into
    RAS). That converter always stores its geometry as an ``affine``, so for
    such a record (``geometry_as_affine``) every code other than a bare
    ``RAS``/``LPS`` that equals the affine's own axis codes in RAS world
    means RAS. A record with ``spacing``/``origin``/``direction`` names its
    world frame: ``"LPS+"`` over SimpleITK's geometry of an R,A,S-ordered
    array is LPS, although its axis codes read in RAS are ``LPS`` too.

    Two more of that converter's forms: a 2-D NIfTI gets the 2-D array's
    codes (``"RA+"``, ``"LP+"``) over an affine into the R-L, A-P plane of
    RAS, read as RAS like three letters; a NRRD without an anatomical
    ``space`` (every 2-D NRRD) is stored with its own geometry and no
    ``coord_system``, read (``source_format="nrrd"``) as LPS, the world
    SimpleITK and ITK-based tools give such a file.

    Parameters
    ----------
    coord_system : object
        The record's ``spatial.coord_system``.
    affine : array_like, optional
        The record's homogeneous affine (its first three spatial axes are
        used when it has more).
    geometry_as_affine : bool, optional
        Whether the record stores its geometry as ``affine`` (True, the
        default, the reference converter's form) rather than as ``spacing``,
        ``origin`` and ``direction`` (False: ``coord_system`` is always read
        as the frame it names). :attr:`mlarray.MetaSpatial.world_frame` passes
        the record's own form.
    source_format : str, optional
        The record's ``_image_meta_format`` (``"nifti"``, ``"nrrd"``, ...),
        when known.

    Returns
    -------
    str or None
        Three letters naming the world axes (``"RAS"``, ``"LPS"``, ...), or
        ``None`` when ``coord_system`` is missing or not anatomical.
    """
    letters = parse_axis_codes(coord_system)
    if coord_system is None and geometry_as_affine and source_format == "nrrd":
        return "LPS"  # the reference converter's raw NRRD geometry (SimpleITK's world)
    if letters is None and affine is not None and geometry_as_affine:
        return _plane_codes_frame(coord_system, affine)
    if letters is None or affine is None or not geometry_as_affine:
        return letters
    if letters in ("RAS", "LPS") and coord_system.strip().upper() == letters:
        return letters  # a bare world-frame name (FORMAT.md)
    a = _as_square("affine", affine)
    if a.shape[0] < 4:
        return letters
    try:
        own = axis_codes(a[:3, :3])
    except MetaValidationError:
        return letters
    return "RAS" if own == letters else letters


def _plane_codes_frame(coord_system: object, affine: ArrayLike) -> str | None:
    """``"RAS"`` when ``coord_system`` holds the 1-D or 2-D array's own axis codes (``"RA+"``)
    over an affine into the first world axes of RAS (the reference converter's 2-D NIfTI),
    else None."""
    if not isinstance(coord_system, str):
        return None
    code = coord_system.strip().upper().removesuffix("+")
    a = _as_square("affine", affine)
    n = a.shape[0] - 1
    if n not in (1, 2) or len(code) != n:
        return None
    norms = np.linalg.norm(a[:n, :n], axis=0)
    if not norms.all():
        return None
    own = "".join(
        _RAS_NAMES[w][0 if sign > 0 else 1] for w, sign in axis_world_map(a[:n, :n] / norms)
    )
    return "RAS" if own == code else None
