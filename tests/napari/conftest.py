"""Fixtures for the napari plugin tests (no Qt import here)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.napari._helpers import ReadCounter


@pytest.fixture
def read_counter(monkeypatch):
    """Counts elements decompressed through ``MLArray.__getitem__``."""
    return ReadCounter(monkeypatch)


@pytest.fixture
def ct_volume():
    """A small CT-like int16 volume (z, y, x)."""
    z, y, x = np.mgrid[0:24, 0:40, 0:48]
    return (1000 * np.sin(x / 7.0) * np.cos(y / 5.0) + 10 * z).astype(np.int16)
