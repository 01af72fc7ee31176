"""Saving a layer read from a file without checksums (the reference package's files) whose
chunk under no shown plane cannot be decompressed: refused, naming that file, and the file
it would have replaced is kept (the verbatim chunk copy once wrote fresh checksums that
vouched for the unreadable chunk)."""

from __future__ import annotations

import numpy as np
import pytest

from mlarray import MLArray
from mlarray.errors import CorruptChunkError
from napari_mlarray._reader import read_mla
from napari_mlarray._writer import save_layers
from tests.test_unchecksummed import _break_chunk, _without_checksums


def test_saving_a_layer_of_a_damaged_file_without_checksums_is_refused(tmp_path):
    data = (np.random.default_rng(3).normal(size=(40, 50, 60)) * 100).astype(np.int16)
    src = tmp_path / "legacy.mla"
    _without_checksums(src, data, (20, 25, 30), (10, 25, 15))
    _break_chunk(src, 7)  # the last chunk: no plane the reader reads to show the layer
    ((view, kw, _),) = read_mla(str(src))
    out = tmp_path / "out.mla"
    MLArray(np.zeros((3, 4), np.uint8)).save(out)
    before = out.read_bytes()
    with pytest.raises(CorruptChunkError, match=r"legacy\.mla: chunk 7 cannot be decompressed"):
        save_layers(out, [(view, kw, "image")])
    assert out.read_bytes() == before
