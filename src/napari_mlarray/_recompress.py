"""Recompress ``.mla`` files and napari layers: presets and the job, no Qt.

A preset is a plain dict of :func:`mlarray.io.save_mla` storage keywords
(``patch_size``, ``chunk_size``, ``block_size``, ``cparams``, ``dparams``),
checked by the library (:func:`mlarray.layout.resolve_storage`). The presets were chosen by
``benchmarks/bench_presets.py`` on real volumes (``benchmarks/RESULTS.md``).

Every write goes through ``save_mla`` (temporary file in the destination
folder, fsync, ``os.replace``), so a failed recompression leaves an existing
destination, the source included, untouched.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PRESETS",
    "PRESET_LABELS",
    "RecompressResult",
    "format_bytes",
    "recompress",
    "suggest_output",
]


def _cparams(codec: str, clevel: int, filt: str) -> dict[str, Any]:
    return {"codec": codec, "clevel": clevel, "filters": [filt]}


#: Named storage keyword dicts for ``save_mla``.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"patch_size": 192, "cparams": _cparams("LZ4HC", 8, "SHUFFLE")},
    "training": {"patch_size": 192, "cparams": _cparams("LZ4", 5, "SHUFFLE")},
    "archive": {
        "patch_size": None,
        "chunk_size": 256,
        "block_size": 64,
        "cparams": _cparams("ZSTD", 9, "SHUFFLE"),
    },
    "labels": {"patch_size": 192, "cparams": _cparams("ZSTD", 5, "BITSHUFFLE")},
}

#: What each preset is for, as shown in the widget's menu.
PRESET_LABELS: dict[str, str] = {
    "default": "Library default: LZ4HC 8 + shuffle, patch 192",
    "training": "Fast patch reads (training): LZ4 5 + shuffle, patch 192",
    "archive": "Smallest file (archiving): ZSTD 9 + shuffle, chunks 256, blocks 64; slow to write",
    "labels": "Label maps: ZSTD 5 + bitshuffle, patch 192",
}


def format_bytes(n: int) -> str:
    """Human-readable size of ``n`` bytes, e.g. ``"1.50 MiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


@dataclass(frozen=True)
class RecompressResult:
    """What a recompression did: sizes in bytes, wall time in seconds."""

    path: Path
    nbytes: int
    before_bytes: int
    before_on_disk: bool
    after_bytes: int
    seconds: float

    @property
    def ratio_after(self) -> float:
        """Uncompressed size / size of the written file."""
        return self.nbytes / self.after_bytes if self.after_bytes else math.nan

    def summary(self) -> str:
        """Sizes, ratios and time, one line each.

        Returns
        -------
        str
        """
        where = "on disk" if self.before_on_disk else "in memory"
        before = self.nbytes / self.before_bytes if self.before_bytes else math.nan
        return (
            f"Before: {format_bytes(self.before_bytes)} {where} ({before:.2f}x)\n"
            f"After: {format_bytes(self.after_bytes)} ({self.ratio_after:.2f}x)\n"
            f"Time: {self.seconds:.2f} s -> {self.path.name}"
        )


def recompress(
    source: str | os.PathLike | tuple,
    dst: str | os.PathLike | None,
    *,
    storage: dict[str, Any],
    progress: Callable[[int, int], Any] | None = None,
    source_path: str | os.PathLike | None = None,
) -> RecompressResult:
    """Write an ``.mla`` file or a layer again with other storage settings.

    Parameters
    ----------
    source : path or tuple
        An ``.mla`` file, or an image/labels layer's ``as_layer_data_tuple()``
        (saved through :func:`napari_mlarray._writer.save_layers`).
    dst : path or None
        Where to write, atomically; ``None`` rewrites the source file in place.
    storage : dict
        ``save_mla`` storage keywords, in stored axis order.
    progress : callable, optional
        ``progress(done, total)`` after each written chunk.
    source_path : path, optional
        For a layer: the file it was read from (its size is "before"; without
        one, "before" is the layer's in-memory size).

    Returns
    -------
    RecompressResult
    """
    from mlarray import MLArray
    from mlarray.io import save_mla
    from napari_mlarray._writer import save_layers

    if isinstance(source, tuple):
        data, _, kind = source
        if kind not in ("image", "labels") or isinstance(data, list):
            raise ValueError(f"layer: a {kind} layer (or a multiscale one) is not one .mla array")
        nbytes = math.prod(data.shape) * data.dtype.itemsize
        if dst is None:
            raise ValueError("output: choose where to write the layer")
        on_disk = source_path is not None
        before = Path(source_path).stat().st_size if on_disk else nbytes

        def write() -> Path:
            return Path(save_layers(dst, [source], storage=storage, progress=progress)[0])

    else:
        src = Path(source)
        dst = src if dst is None else dst
        before, on_disk = src.stat().st_size, True
        arr = MLArray.open(src)
        nbytes = 0 if arr.shape is None else math.prod(arr.shape) * arr.dtype.itemsize

        def write() -> Path:
            data = None if arr.shape is None else arr
            return save_mla(dst, data, arr.meta, **storage, progress=progress)

    start = time.perf_counter()
    path = write()
    seconds = time.perf_counter() - start
    return RecompressResult(path, nbytes, before, on_disk, path.stat().st_size, seconds)


def suggest_output(source: Path | None, name: str, folder: Path) -> Path:
    """Default output: ``<stem>_recompressed.mla`` next to ``source`` (the file the data was
    read from), else ``<name>.mla`` in ``folder`` (e.g. next to the file a layer was made for).
    """
    if source is None:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "layer"
        return folder / f"{stem}.mla"
    stem = Path(source.name.removesuffix(".gz")).stem
    return source.with_name(f"{stem}_recompressed.mla")
