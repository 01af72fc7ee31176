"""The ``.mla`` record as a plain dict: its full key set and default values.

Everything that reads a record's sections goes through
:func:`normalized_record`, so a record missing keys (an older file, a layer
made in napari) is read as if every key were present.
"""

from __future__ import annotations

import copy

__all__ = ["default_record", "normalized_record"]


def default_record() -> dict:
    """Return a record with the full FORMAT.md §3 key set and default values.

    Returns
    -------
    dict
    """
    from mlarray.stats import STAT_KEYS  # here, not at the top: importing mlarray loads blosc2

    return {
        "source": {"data": {}},
        "extra": {"data": {}},
        "spatial": {
            "spacing": None,
            "origin": None,
            "direction": None,
            "affine": None,
            "shape": None,
            "axis_labels": None,
            "coord_system": None,
            "axis_units": None,
            "_num_spatial_axes": None,
            "_num_non_spatial_axes": None,
        },
        "stats": dict.fromkeys(STAT_KEYS),
        "bbox": {"bboxes": None, "scores": None, "labels": None},
        "is_seg": {"is_seg": None},
        "blosc2": {
            "chunk_size": None,
            "block_size": None,
            "patch_size": None,
            "cparams": None,
            "dparams": None,
        },
        "_has_array": {"has_array": True},
        "_image_meta_format": {"image_meta_format": None},
        "_mlarray_version": "v0",
    }


def normalized_record(record: dict | None) -> dict:
    """Deep copy of ``record`` over the default key set; bare single-key wrappers wrapped.

    Parameters
    ----------
    record : dict or None
        The ``.mla`` record (``None``: all defaults).

    Returns
    -------
    dict
    """
    out = default_record()
    for key, value in (record or {}).items():
        default = out.get(key)
        if isinstance(default, dict) and len(default) == 1 and not isinstance(value, dict):
            value = {next(iter(default)): value}
        if isinstance(default, dict) and isinstance(value, dict):
            out[key] = {**default, **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out
