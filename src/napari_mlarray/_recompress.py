"""Recompress ``.mla`` files and napari layers: the work behind the widget.

Pure functions, no Qt: :func:`recompress_file` rewrites a file on disk (in
place or to a new path), :func:`recompress_layer` saves a layer's data tuple
through the plugin's writer; both report progress through a callback and
return a :class:`RecompressResult` with sizes, ratios and timing.
:func:`iter_progress` turns such a callback-style job into a generator of
progress values, which is what a napari ``thread_worker`` wants.

Every write goes through ``mlarray.io.save_mla`` (temp file in the destination
folder, fsync, ``os.replace``), so a failed recompression leaves an existing
destination, including the source itself, untouched.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Progress",
    "RecompressResult",
    "format_bytes",
    "iter_progress",
    "layer_source_path",
    "recompress_file",
    "recompress_layer",
]

#: ``progress(done, total)``, called after each written chunk.
Progress = Callable[[int, int], Any]


def format_bytes(n: int | None) -> str:
    """Human-readable size: ``"1.5 MiB"``.

    Parameters
    ----------
    n : int or None
        Number of bytes.

    Returns
    -------
    str
    """
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RecompressResult:
    """What a recompression did.

    Parameters
    ----------
    path : pathlib.Path
        The written file.
    nbytes : int
        Uncompressed size of the array.
    before_bytes : int
        Size before: the source file on disk, or the layer's in-memory size.
    before_on_disk : bool
        Whether ``before_bytes`` is a file size (``False``: in-memory nbytes).
    after_bytes : int
        Size of the written file.
    seconds : float
        Wall time of the write.
    """

    path: Path
    nbytes: int
    before_bytes: int
    before_on_disk: bool
    after_bytes: int
    seconds: float

    @property
    def ratio_before(self) -> float:
        """Uncompressed size / size before (1.0 for an in-memory layer)."""
        return self.nbytes / self.before_bytes if self.before_bytes else math.nan

    @property
    def ratio_after(self) -> float:
        """Uncompressed size / size of the written file."""
        return self.nbytes / self.after_bytes if self.after_bytes else math.nan

    def summary(self) -> str:
        """Readable multi-line summary of sizes, ratios and time.

        Returns
        -------
        str
        """
        where = "on disk" if self.before_on_disk else "in memory"
        return (
            f"Current: {format_bytes(self.before_bytes)} {where} "
            f"(ratio {self.ratio_before:.2f}x)\n"
            f"Result: {format_bytes(self.after_bytes)} (ratio {self.ratio_after:.2f}x)\n"
            f"Time: {self.seconds:.2f} s -> {self.path.name}"
        )


def _nbytes(shape, dtype) -> int:
    return int(math.prod(int(s) for s in shape)) * np.dtype(dtype).itemsize


def _timed_write(
    write: Callable[[], str | os.PathLike], *, nbytes: int, before_bytes: int, before_on_disk: bool
) -> RecompressResult:
    """Run ``write()`` (which returns the written path) and measure the file it wrote."""
    start = time.perf_counter()
    written = Path(write())
    seconds = time.perf_counter() - start
    return RecompressResult(
        path=written,
        nbytes=nbytes,
        before_bytes=before_bytes,
        before_on_disk=before_on_disk,
        after_bytes=written.stat().st_size,
        seconds=seconds,
    )


def recompress_file(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    storage: dict[str, Any],
    progress: Progress | None = None,
) -> RecompressResult:
    """Rewrite an ``.mla`` file with new compression settings.

    Parameters
    ----------
    src : path
        The ``.mla`` file to read.
    dst : path, optional
        Where to write; ``None`` or ``src`` itself recompresses in place. The
        write is atomic: on any error the previous file at ``dst`` is kept.
    storage : dict
        ``save_mla`` keyword arguments, e.g. from
        :func:`napari_mlarray._settings.storage_for`.
    progress : callable, optional
        ``progress(done, total)`` after each written chunk.

    Returns
    -------
    RecompressResult

    Raises
    ------
    mlarray.MLArrayError
        For unreadable sources, bad destinations or settings the library rejects.
    """
    from mlarray import MLArray
    from mlarray.io import save_mla

    src = Path(src)
    dst = src if dst is None else Path(dst)
    before = src.stat().st_size
    arr = MLArray.open(src)
    has_array = arr.shape is not None
    nbytes = _nbytes(arr.shape, arr.dtype) if has_array else 0
    return _timed_write(
        lambda: save_mla(dst, arr if has_array else None, arr.meta, **storage, progress=progress),
        nbytes=nbytes,
        before_bytes=before,
        before_on_disk=True,
    )


def layer_source_path(meta: dict[str, Any] | None, source: Any = None) -> Path | None:
    """The ``.mla`` file a layer was read from, if any.

    Parameters
    ----------
    meta : dict or None
        The layer's ``as_layer_data_tuple()[1]`` (unused today; kept so callers
        need no layer object).
    source : napari.layers._source.Source, optional
        ``layer.source``.

    Returns
    -------
    pathlib.Path or None
        The path when the layer came from an existing ``.mla`` file.
    """
    path = getattr(source, "path", None)
    if path and str(path).endswith(".mla") and Path(path).is_file():
        return Path(path)
    return None


def recompress_layer(
    layer_data: tuple[Any, dict[str, Any], str],
    dst: str | os.PathLike,
    *,
    storage: dict[str, Any],
    progress: Progress | None = None,
    source_path: str | os.PathLike | None = None,
) -> RecompressResult:
    """Save a napari layer's data tuple as a recompressed ``.mla`` file.

    Parameters
    ----------
    layer_data : tuple
        ``layer.as_layer_data_tuple()``: ``(data, meta, layer_type)`` of an
        image or labels layer.
    dst : path
        The ``.mla`` file to write (atomically).
    storage : dict
        ``save_mla`` keyword arguments.
    progress : callable, optional
        ``progress(done, total)`` after each written chunk.
    source_path : path, optional
        The file the layer was read from; its size is "before". Without it,
        "before" is the layer's uncompressed in-memory size.

    Returns
    -------
    RecompressResult

    Raises
    ------
    ValueError
        For layer types other than image and labels, or multiscale data.
    """
    data, _meta, layer_type = layer_data
    if layer_type not in ("image", "labels"):
        raise ValueError(f"layer type: {layer_type!r} cannot be recompressed; pick image or labels")
    if isinstance(data, list | tuple):
        raise ValueError("layer data: multiscale layers cannot be saved as one .mla array")
    from napari_mlarray._writer import save_layers

    nbytes = _nbytes(data.shape, data.dtype)
    if source_path is not None:
        before, on_disk = Path(source_path).stat().st_size, True
    else:
        before, on_disk = nbytes, False

    def write() -> str:
        paths = save_layers(os.fspath(dst), [layer_data], storage=storage, progress=progress)
        if not paths:
            raise RuntimeError(f"{os.fspath(dst)}: the writer wrote nothing")
        return paths[0]

    return _timed_write(write, nbytes=nbytes, before_bytes=before, before_on_disk=on_disk)


def iter_progress(
    job: Callable[..., Any], *args: Any, **kwargs: Any
) -> Generator[tuple[int, int], None, Any]:
    """Run ``job(*args, progress=cb, **kwargs)``, yielding its progress.

    The job runs in a helper thread; each ``cb(done, total)`` call becomes a
    yielded ``(done, total)``. The generator returns the job's result (as
    ``StopIteration.value``) or re-raises its exception. Meant for
    ``napari.qt.threading.create_worker``: yielded values arrive on the UI
    thread through the worker's ``yielded`` signal, the result through
    ``returned``.

    Parameters
    ----------
    job : callable
        Accepts a ``progress`` keyword argument.
    *args, **kwargs
        Passed to ``job``.

    Yields
    ------
    tuple of int
        ``(done, total)``.

    Returns
    -------
    object
        What ``job`` returned.
    """
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    done = object()

    def _run():
        try:
            outcome["value"] = job(*args, progress=lambda d, t: events.put((d, t)), **kwargs)
        except BaseException as exc:  # handed to the consumer below, re-raised there
            outcome["error"] = exc
        finally:
            events.put(done)

    thread = threading.Thread(target=_run, name="mla-recompress", daemon=True)
    thread.start()
    while (item := events.get()) is not done:
        yield (int(item[0]), int(item[1]))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
