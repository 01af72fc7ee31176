"""The reference converter's route through a MedVol image class, for code that plugs one in.

The reference package converts through ``medvol.MedVol`` and its code (and its tests)
may replace ``mlarray.cli.MedVol`` with a compatible class. When that attribute is set,
:func:`mlarray.cli.convert_to_mlarray` and :func:`mlarray.cli.convert_from_mlarray` hand
the file to that class exactly as the reference does: the array as the class gives it,
labelled ``spatial_x, spatial_y, spatial_z``, its affine, header and coordinate system.
Left at ``None`` (the default), our own converter (:mod:`mlarray.convert`) runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mlarray.convert import header_to_source
from mlarray.meta import Meta, MetaImageFormat, MetaSource, MetaSpatial, _meta_internal_write
from mlarray.mlarray import MLArray

__all__ = ["from_mlarray", "to_mlarray"]

# coord_system -> the MedVol coordinate system written with it (anything else: RAS+)
_SYSTEMS = {"RAS": "RAS+", "RAS+": "RAS+", "LPS": "LPS+", "LPS+": "LPS+"}


def _format_of(path: str) -> str | None:
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    return None


def to_mlarray(medvol: Any, load_filepath: str | os.PathLike, save_filepath: str | os.PathLike):
    """Read ``load_filepath`` with the MedVol class ``medvol`` and save it as ``.mla``."""
    image = medvol(os.fspath(load_filepath))
    array = np.asarray(image.array)
    affine = np.asarray(image.affine, dtype=np.float64)
    labels = ["spatial_x", "spatial_y", "spatial_z"] if array.ndim == 3 else None
    spatial = MetaSpatial(
        affine=affine.tolist(),
        axis_labels=labels,
        coord_system=getattr(image, "coordinate_system", None),
    )
    meta = Meta(source=MetaSource(data=header_to_source(dict(image.header or {}))), spatial=spatial)
    out = MLArray(array, meta=meta)
    with _meta_internal_write():
        out.meta._image_meta_format = MetaImageFormat(
            image_meta_format=_format_of(os.fspath(load_filepath))
        )
    out.save(save_filepath)


def from_mlarray(medvol: Any, load_filepath: str | os.PathLike, save_filepath: str | os.PathLike):
    """Write an ``.mla`` file through the MedVol class ``medvol`` (NIfTI or NRRD)."""
    image = MLArray.open(load_filepath)
    sp = image.meta.spatial
    header = {
        k: v for k, v in dict(image.meta.source.data).items() if k not in ("space", "NRRD_space")
    }
    target = os.fspath(save_filepath)
    geometry: dict[str, Any]
    if sp.affine is not None:
        geometry = {"affine": np.asarray(sp.affine, dtype=np.float64)}
    else:
        geometry = {
            "spacing": image.spacing or [1.0] * image.ndim,
            "origin": image.origin or [0.0] * image.ndim,
            "direction": image.direction or np.eye(image.ndim).tolist(),
        }
    out = medvol(
        image.to_numpy(),
        header=header,
        coordinate_system=_SYSTEMS.get((sp.coord_system or "").upper(), "RAS+"),
        backend="pynrrd" if _format_of(target) == "nrrd" else None,
        **geometry,
    )
    out.save(target)
