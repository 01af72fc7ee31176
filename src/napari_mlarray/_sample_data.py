"""A synthetic CT-like case: volume, segmentation and boxes.

:func:`make_ct_sample` builds the arrays (pure numpy, deterministic);
:func:`write_sample` stores them as three ``.mla`` files with the library;
:func:`make_sample_data` is napari's sample-data command: it writes the files
to a temporary folder and returns what the plugin's reader makes of them, so
the sample looks exactly like opened files.

The volume is stored z, y, x in the LPS world frame (the usual ITK /
nnU-Net layout): spacing (2.5, 0.8, 0.8) mm, array axis 0 runs inferior to
superior, axis 1 anterior to posterior, axis 2 patient right to left.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CTSample",
    "in_sample_folder",
    "make_ct_sample",
    "make_sample_data",
    "sample_records",
    "write_sample",
]

SHAPE = (64, 128, 128)
SPACING = (2.5, 0.8, 0.8)
#: Direction columns are the world (LPS x, y, z) directions of array axes z, y, x.
DIRECTION = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))
#: World (LPS) position of voxel (0, 0, 0), in mm. Equal components, so it is
#: the same whether read as world x, y, z or in array-axis order.
ORIGIN = (-51.2, -51.2, -51.2)
LABEL_NAMES = {0: "background", 1: "liver", 2: "lesion"}
FILE_NAMES = {"image": "ct.mla", "seg": "ct_seg.mla", "boxes": "ct_boxes.mla"}


class CTSample(NamedTuple):
    """A synthetic CT case (a tuple: unpack it like one).

    Attributes
    ----------
    image : numpy.ndarray
        ``int16`` Hounsfield units, shape ``(z, y, x)``.
    seg : numpy.ndarray
        ``uint8`` labels, same shape: 0 background, 1 liver, 2 lesion.
    boxes : dict
        ``{"bboxes", "scores", "labels"}`` as in the ``.mla`` record:
        ``[min, max)`` index ranges per array axis, around the liver and
        the lesion.
    spacing : tuple of float
        Voxel size per array axis, mm.
    origin : tuple of float
        World position of voxel (0, 0, 0), mm.
    direction : tuple of tuple of float
        3x3 direction matrix (columns: array axes, rows: LPS world axes).
    """

    image: np.ndarray
    seg: np.ndarray
    boxes: dict[str, list]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]


def _ellipsoid(grid, center, radii):
    """Boolean mask of an axis-aligned ellipsoid; ``radii`` in voxels per axis."""
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True)) <= 1.0


def _box(mask: np.ndarray) -> list[list[int]]:
    """``[min, max)`` index range per axis of the true voxels of ``mask``."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def make_ct_sample(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> CTSample:
    """Build a synthetic abdominal CT volume with a liver, a lesion and boxes.

    Air (-1000 HU) surrounds an elliptic body (fat rim ~-100 HU, soft tissue
    ~40 HU) with a rib ring (~800 HU), a spine (cortex ~1000 HU, marrow
    ~300 HU), a contrast-filled aorta (~180 HU), a liver (~60 HU, on the
    patient's right, low x) and a hypodense lesion (~10 HU) inside it, plus
    Gaussian noise. Everything scales with ``shape``.

    Parameters
    ----------
    shape : tuple of int
        ``(z, y, x)`` size; the default is 64 x 128 x 128.
    seed : int
        Seed for the noise: the same arguments always give the same arrays.

    Returns
    -------
    CTSample
        ``(image, seg, boxes, spacing, origin, direction)``.
    """
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(
        np.arange(nz, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nx, dtype=np.float32),
        indexing="ij",
        sparse=True,
    )
    cz, cy, cx = (nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2
    # the body tapers a little towards both ends of the scan
    taper = 1.0 - 0.12 * ((z - cz) / max(cz, 1)) ** 2
    ry, rx = 0.36 * ny * taper, 0.46 * nx * taper
    ell = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    body = ell <= 1.0
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = -100.0  # subcutaneous fat
    image[ell <= 0.82] = 35.0  # muscle and soft tissue
    # rib ring, open at the front (sternum gap); ribs are arcs along z, not a tube
    ribs = (ell > 0.6) & (ell <= 0.72) & ~((np.abs(x - cx) < 0.12 * nx) & (y < cy))
    rib_rows = (np.arange(nz) % 6 < 3)[:, None, None]
    image[np.broadcast_to(ribs, shape) & rib_rows] = 800.0
    spine_c = (cy + 0.55 * ry, cx)
    spine_r = 0.09 * nx
    spine_d2 = ((y - spine_c[0]) ** 2 + (x - spine_c[1]) ** 2) / spine_r**2
    image[np.broadcast_to(spine_d2 <= 1.0, shape)] = 1000.0
    image[np.broadcast_to(spine_d2 <= 0.55, shape)] = 300.0
    aorta = ((y - (spine_c[0] - 1.8 * spine_r)) ** 2 + (x - (cx + 0.6 * spine_r)) ** 2) <= (
        0.45 * spine_r
    ) ** 2
    image[np.broadcast_to(aorta, shape)] = 180.0

    liver_center = (0.5 * nz, cy - 0.05 * ny, cx - 0.2 * nx)
    liver_radii = (0.33 * nz, 0.2 * ny, 0.2 * nx)
    liver = _ellipsoid((z, y, x), liver_center, liver_radii) & body
    lesion_center = (0.55 * nz, liver_center[1] + 0.04 * ny, liver_center[2] - 0.05 * nx)
    # a sphere of radius ~8 mm: 3.2 slices of 2.5 mm, 10 pixels of 0.8 mm at full size
    lesion_radii = (0.05 * nz, 0.078 * ny, 0.078 * nx)
    lesion = _ellipsoid((z, y, x), lesion_center, lesion_radii) & liver
    image[liver] = 70.0
    image[lesion] = 10.0

    image += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    seg = np.zeros(shape, dtype=np.uint8)
    seg[liver] = 1
    seg[lesion] = 2
    boxes = {
        "bboxes": [_box(liver), _box(lesion)],
        "scores": [1.0, 0.87],
        "labels": ["liver", "lesion"],
    }
    return CTSample(image, seg, boxes, SPACING, ORIGIN, DIRECTION)


def _stats(image: np.ndarray) -> dict[str, float]:
    values = image.astype(np.float64).ravel()
    low, high = np.percentile(values, [0.5, 99.5])
    inside = values[(values >= low) & (values <= high)]
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "percentile_min": float(low),
        "percentile_max": float(high),
        "percentile_mean": float(inside.mean()),
        "percentile_median": float(np.median(inside)),
        "percentile_std": float(inside.std()),
        "percentile_min_key": 0.5,
        "percentile_max_key": 99.5,
    }


def sample_records(sample: CTSample) -> dict[str, dict[str, Any]]:
    """The ``.mla`` metadata records of the three sample files.

    Parameters
    ----------
    sample : CTSample
        From :func:`make_ct_sample`.

    Returns
    -------
    dict
        ``{"image", "seg", "boxes"}`` -> partial record mappings (FORMAT.md
        section 3; missing keys take their defaults). All three share the
        same geometry, so they overlay in a viewer.
    """
    spatial = {
        "spacing": [float(s) for s in sample.spacing],
        "origin": [float(o) for o in sample.origin],
        "direction": [[float(v) for v in row] for row in sample.direction],
        "axis_labels": ["spatial_z", "spatial_y", "spatial_x"],
        "axis_units": ["mm", "mm", "mm"],
        "coord_system": "LPS",
    }
    source = {"data": {"case_id": "synthetic-ct-0", "generator": "napari_mlarray.make_ct_sample"}}
    return {
        "image": {
            "source": source,
            "spatial": dict(spatial),
            "stats": _stats(sample.image),
            "is_seg": {"is_seg": False},
        },
        "seg": {
            "source": source,
            "extra": {"data": {"label_names": {str(k): v for k, v in LABEL_NAMES.items()}}},
            "spatial": dict(spatial),
            "is_seg": {"is_seg": True},
        },
        "boxes": {
            "source": source,
            "spatial": dict(spatial),
            "bbox": {k: list(v) for k, v in sample.boxes.items()},
        },
    }


def write_sample(
    folder: str | os.PathLike, sample: CTSample | None = None, **storage: Any
) -> dict[str, Path]:
    """Write the sample case as three ``.mla`` files.

    - ``ct.mla``: the CT volume (int16 HU) with its intensity statistics;
    - ``ct_seg.mla``: the segmentation (uint8, ``is_seg`` true, label names
      in ``extra.data.label_names``);
    - ``ct_boxes.mla``: a metadata-only file (no array) holding the two boxes,
      with the volume's geometry so the boxes overlay the image.

    Parameters
    ----------
    folder : path
        Created if missing; existing sample files are replaced.
    sample : CTSample, optional
        Defaults to :func:`make_ct_sample` ``()``.
    **storage
        Passed to ``save_mla`` for the two arrays (``cparams``, ``patch_size``...).

    Returns
    -------
    dict
        ``{"image", "seg", "boxes"}`` -> path of each file.
    """
    from mlarray.io import save_mla

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sample = make_ct_sample() if sample is None else sample
    records = sample_records(sample)
    paths = {key: folder / name for key, name in FILE_NAMES.items()}
    save_mla(paths["image"], sample.image, records["image"], **storage)
    save_mla(paths["seg"], sample.seg, records["seg"], **storage)
    save_mla(paths["boxes"], None, records["boxes"])
    return paths


def _read_with_plugin(path: Path) -> list[tuple]:
    from napari_mlarray._reader import get_reader

    reader = get_reader(os.fspath(path))
    if reader is None:
        raise RuntimeError(f"{path}: the napari-mlarray reader does not accept the sample file")
    return list(reader(os.fspath(path)))


#: folders :func:`make_sample_data` wrote to in this process (removed when it exits)
_TEMPORARY_FOLDERS: list[Path] = []


def in_sample_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in a folder the sample data was written to, which is removed
    when Python exits: nothing the user keeps may be proposed there."""
    p = Path(os.path.abspath(path))
    return any(p == f or f in p.parents for f in _TEMPORARY_FOLDERS)


def make_sample_data() -> list[tuple]:
    """napari sample data: the CT volume, its segmentation and boxes.

    The files are written to a temporary folder (removed when Python exits)
    and read back with this plugin's reader, so the layers carry the same
    scale, orientation and metadata as when the files are opened.

    Returns
    -------
    list of tuple
        Layer data tuples: an image, a labels and a shapes layer.
    """
    folder = Path(tempfile.mkdtemp(prefix="napari-mlarray-sample-"))
    _TEMPORARY_FOLDERS.append(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths = write_sample(folder)
    layers: list[tuple] = []
    for key in ("image", "seg", "boxes"):
        layers.extend(_read_with_plugin(paths[key]))
    return layers
