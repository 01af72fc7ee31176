"""Small helpers the reference package exports (``from mlarray import is_serializable``)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["is_serializable"]


def is_serializable(d: Any) -> bool:
    """Return whether ``d`` can be written as JSON by :func:`json.dumps`.

    Parameters
    ----------
    d : dict
        The value to test (typically free-form metadata).

    Returns
    -------
    bool
        True when ``json.dumps(d)`` succeeds (tuples, int keys and NaN included),
        False otherwise (numpy values, sets, bytes, tuple keys, ...).

    Notes
    -----
    What an ``.mla`` file's ``source``/``extra`` accept is checked by
    :class:`mlarray.MetaSource` itself (it also converts numpy values); this
    function only answers the JSON question.
    """
    try:
        json.dumps(d)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False
    return True
