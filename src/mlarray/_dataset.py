"""Whole datasets: find the files, run one job per file in parallel, report.

Every job is a :class:`Task` run by :func:`run_task`, a plain function that
never raises for a bad file (it returns a failed :class:`Row`), so a pool of
local processes or a Dask cluster can run them and the rest go on. Outputs
are written atomically by the functions the jobs call, so a file that exists
is finished: a rerun skips it.
"""

from __future__ import annotations

import glob
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlarray.errors import MLArrayError

__all__ = [
    "Row",
    "SchedulerError",
    "Task",
    "as_json_rows",
    "dicom_files_in",
    "expand_inputs",
    "one_line",
    "run_task",
    "run_tasks",
    "summary_table",
]

_GLOB_CHARS = set("*?[")


@dataclass
class Task:
    """One file's job: ``kind`` is ``convert``, ``recompress`` or ``stats``."""

    kind: str
    src: str
    dst: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    debug: bool = False
    #: why the job is not run (reported as a ``skipped`` row), e.g. its output is an input
    skip: str = ""


@dataclass
class Row:
    """The outcome of one :class:`Task`, one line of the summary table."""

    src: str
    dst: str | None
    status: str  # "ok", "skipped" or "failed"
    message: str = ""
    seconds: float = 0.0
    in_bytes: int = 0
    out_bytes: int = 0
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs


def _has_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def is_pattern(arg: str) -> bool:
    """Whether the command-line argument ``arg`` is a glob pattern: it holds ``*``, ``?`` or
    ``[`` and names no existing file or folder (``scan[1].nii.gz`` that exists is that
    file, as a shell passes it on when nothing matches the pattern)."""
    return _has_glob(arg) and not os.path.lexists(arg)


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _has_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _is_dicom_slice(path: Path) -> bool:
    """A DICOM file of a series (``.dcm`` or the ``DICM`` magic), not a ``DICOMDIR`` index."""
    from mlarray.convert import FORMAT_SUFFIXES, is_dicom_file

    name = path.name.lower()
    if name == "dicomdir":
        return False
    if name.endswith(".dcm"):
        return True
    others = (s for fmt, sufs in FORMAT_SUFFIXES.items() if fmt != "dicom" for s in sufs)
    return not name.endswith(tuple(others)) and is_dicom_file(path)


def dicom_files_in(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files (``.dcm`` or the ``DICM`` magic).

    A ``DICOMDIR`` (the index at the root of a CD or PACS export) does not count.
    """
    return any(_dicom_entries(folder))


def is_series_folder(folder: Path) -> bool:
    """Whether ``folder`` holds one DICOM series folder's files only: DICOM files (see
    :func:`dicom_files_in`), no subfolders, nothing else (what ``mlarray convert ...
    --to dicom`` writes). Such a folder named as the output of one input is that
    export's destination, not a folder to put the output into."""
    listed = False
    for is_dicom in _dicom_entries(folder):
        if not is_dicom:
            return False
        listed = True
    return listed


def _dicom_entries(folder: Path) -> Iterator[bool]:
    """Per entry of ``folder``, lazily (callers stop at the answer): whether it is a DICOM
    file (a ``DICOMDIR`` is not); nothing if the folder cannot be listed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return iter(())
    return (e.is_file() and _is_dicom_slice(Path(e.path)) for e in entries)


def _wanted(path: Path, accept: Callable[[Path], bool]) -> bool:
    return not path.name.startswith(".") and accept(path)


def _walk(folder: Path, accept: Callable[[Path], bool], dicom: bool) -> list[Path]:
    """Files ``accept`` takes in ``folder`` and below; with ``dicom``, each folder that
    holds DICOM files is one item (its series) and its other files and subfolders are
    still searched."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        files = [here / f for f in sorted(filenames)]
        if dicom:
            slices = [f for f in files if f.is_file() and _is_dicom_slice(f)]
            if slices:
                out.append(here)
            taken = set(slices)
            files = [f for f in files if f not in taken and f.name.upper() != "DICOMDIR"]
        out.extend(f for f in files if _wanted(f, accept))
    return out


def expand_inputs(
    patterns: Sequence[str], accept: Callable[[Path], bool], *, dicom: bool = False
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Expand files, folders and glob patterns into ``(item, root)`` pairs.

    ``root`` is the folder an item's output path is made relative to.
    Folders are searched recursively for files ``accept`` takes; with
    ``dicom=True`` a folder holding DICOM files is also one item (a series),
    beside the other images in it and below it.

    Returns
    -------
    (items, unmatched)
        The items (no duplicates, in order) and the patterns that matched
        nothing.
    """
    items: list[tuple[Path, Path]] = []
    unmatched: list[str] = []
    seen: set[Path] = set()

    found = False  # whether the current pattern matched a file (listed before or not)

    def add(p: Path, root: Path) -> None:
        nonlocal found
        found = True
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            items.append((p, root))

    for pattern in patterns:
        found = False
        matches = (
            [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            if is_pattern(pattern)
            else ([Path(pattern)] if Path(pattern).exists() else [])
        )
        root_of_glob = _glob_root(pattern)
        for m in matches:
            own_root = m.parent if not is_pattern(pattern) else root_of_glob
            if m.is_dir():
                for p in _walk(m, accept, dicom):
                    add(p, own_root if p == m else m)
            elif m.is_file() and (accept(m) or not is_pattern(pattern)):
                add(m, own_root)
        if not found:  # a pattern whose files an earlier one named did match
            unmatched.append(pattern)
    return items, unmatched


# ----------------------------------------------------------------------------- one job


def _size(path: str | os.PathLike | None) -> int:
    if path is None:
        return 0
    p = Path(path)
    try:
        if p.is_dir():
            return sum(e.stat().st_size for e in os.scandir(p) if e.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def _layout_request(store: Any, meta: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Storage keywords for rewriting a file: the requested layout, else the file's own."""
    if options.get("patch_size") is not None:
        return {"patch_size": options["patch_size"]}
    if options.get("chunk_size") is not None or options.get("block_size") is not None:
        return {
            "patch_size": None,
            "chunk_size": options.get("chunk_size") or list(store.chunks),
            "block_size": options.get("block_size") or list(store.blocks),
        }
    return {"patch_size": None, "chunk_size": list(store.chunks), "block_size": list(store.blocks)}


def _requested_cparams(meta: Any, options: dict[str, Any]) -> dict[str, Any]:
    from mlarray import layout

    cp = dict(meta.blosc2.cparams or {})
    cp.pop("nthreads", None)
    for key in ("codec", "clevel", "filters"):
        if options.get(key) is not None:
            cp[key] = options[key]
    if options.get("nthreads") is not None:
        cp["nthreads"] = options["nthreads"]
    return layout.normalize_cparams(cp)


def _do_convert(task: Task, row: Row, progress: Callable[[int, int], None] | None) -> None:
    from mlarray.convert import convert_file

    result = convert_file(
        task.src, task.dst, overwrite=task.overwrite, progress=progress, **task.options
    )
    row.notes.extend(result.notes)


def _do_recompress(task: Task, row: Row, progress: Callable[[int, int], None] | None) -> None:
    from mlarray import io, layout

    store, meta = io.open_streaming(task.src)  # read once: no map held resident
    if not meta._has_array.has_array:
        row.status, row.message = "skipped", "no array (metadata only)"
        return
    cparams = _requested_cparams(meta, task.options)
    request = _layout_request(store, meta, task.options)
    opts = layout.resolve_storage(
        tuple(store.shape),
        store.dtype,
        meta.spatial.spatial_axis_mask,
        cparams=cparams,
        dparams=meta.blosc2.dparams,
        **request,
    )
    same_layout = (
        list(opts.chunk_size or ()) == list(store.chunks)
        and list(opts.block_size or ()) == list(store.blocks)
        and (opts.patch_size is None or list(opts.patch_size) == meta.blosc2.patch_size)
    )
    stored = layout.normalize_cparams(
        {k: v for k, v in (meta.blosc2.cparams or {}).items() if k != "nthreads"}
    )
    wanted = {k: v for k, v in cparams.items() if k != "nthreads"}
    stored.pop("nthreads", None)
    if same_layout and stored == wanted and not task.overwrite:
        row.status, row.message = "skipped", "already stored this way"
        return
    dst = task.dst or task.src
    io.save_mla(
        dst, store, meta, cparams=cparams, dparams=meta.blosc2.dparams, progress=progress, **request
    )


def _stored_cparams(store: Any, meta: Any) -> Any:
    """The codec settings the chunks of ``store`` are stored with: its record's, or for
    another tool's file (no record of them) the frame's own, so that the chunks are
    copied as they are instead of compressed again."""
    if meta.blosc2.cparams:
        return meta.blosc2.cparams
    import dataclasses

    from mlarray import layout

    own = dataclasses.replace(store.schunk.cparams, blocksize=0)  # blocks: the layout's
    try:
        cparams = layout.normalize_cparams(own)
    except MLArrayError:  # settings mlarray does not store: its defaults
        return None
    cparams.pop("nthreads", None)  # how the file was written, not how it is stored
    return cparams


def _do_stats(task: Task, row: Row, progress: Callable[[int, int], None] | None) -> None:
    from mlarray import io
    from mlarray.meta import MetaStatistics
    from mlarray.stats import file_stats

    store, meta = io.open_streaming(task.src)  # read once: no map held resident
    if not meta._has_array.has_array:
        row.status, row.message = "skipped", "no array (metadata only)"
        return
    asked = task.options.get("percentiles")
    stored = (meta.stats.percentile_min_key, meta.stats.percentile_max_key)
    if (
        meta.stats.min is not None
        and not task.overwrite
        and (asked is None or tuple(map(float, asked)) == stored)
    ):
        had = f"percentiles {stored[0]:g} {stored[1]:g}" if None not in stored else "stats"
        row.status, row.message = "skipped", f"{had} already computed (--overwrite to redo)"
        return
    pct = tuple(asked or (0.5, 99.5))
    values = file_stats(store, task.src, pct)
    meta.stats = MetaStatistics(**values)
    io.save_mla(
        task.src,
        store,
        meta,
        patch_size=None,
        chunk_size=list(store.chunks),
        block_size=list(store.blocks),
        cparams=_stored_cparams(store, meta),
        dparams=meta.blosc2.dparams,
        progress=progress,
    )
    if values["min"] is None:  # an empty array, or floats that are all NaN
        row.message = "no values to summarise (empty or all NaN): stats stored as unset"
    else:
        row.message = f"min {values['min']:.6g}, max {values['max']:.6g}, mean {values['mean']:.6g}"


_JOBS = {"convert": _do_convert, "recompress": _do_recompress, "stats": _do_stats}
_EXPECTED = (MLArrayError, OSError, ValueError, RuntimeError, TypeError, MemoryError)


def run_task(task: Task, progress: Callable[[int, int], None] | None = None) -> Row:
    """Run one job; a failure becomes a ``failed`` row naming the file, never an exception."""
    row = Row(src=task.src, dst=task.dst, status="ok", in_bytes=_size(task.src))
    start = time.perf_counter()
    if task.skip:
        row.status, row.message = "skipped", task.skip
        row.out_bytes = _size(task.dst) if task.dst else 0
        return row
    if task.kind == "convert" and task.dst and Path(task.dst).exists() and not task.overwrite:
        row.status, row.message = "skipped", "output exists (--overwrite to redo)"
        row.out_bytes = _size(task.dst)
        return row
    try:
        _JOBS[task.kind](task, row, progress)
    except Exception as exc:  # one bad file must not stop the others: report it, go on
        row.status, row.message = "failed", one_line(exc, task.src)
        if not isinstance(exc, _EXPECTED):
            row.message += f" ({type(exc).__name__}; --debug shows where)"
        if task.debug:
            row.notes.append(traceback.format_exc())
    row.seconds = time.perf_counter() - start
    if row.status == "ok":
        row.out_bytes = _size(task.dst or task.src)
    return row


def one_line(exc: BaseException, path: str | os.PathLike) -> str:
    """An error as one line that names ``path`` (prefixed unless the message already does)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    name = os.fspath(path)
    return text if name in text else f"{name}: {text}"


# ----------------------------------------------------------------------------- many jobs


def _bar(total: int, desc: str, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="file", disable=None if enabled else True)


def run_tasks(
    tasks: list[Task],
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Run ``tasks`` in this process (``jobs=1``), a process pool, or on a Dask cluster.

    Parameters
    ----------
    jobs : int
        Local worker processes (ignored with ``scheduler``).
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``); the
        files must be reachable from the workers under the same paths.
    progress : bool
        Show a progress bar on a terminal.
    on_row : callable, optional
        Called with each finished row (to print notes as they come).

    Returns
    -------
    list of Row
        In the order of ``tasks``.
    """
    bar = _bar(len(tasks), tasks[0].kind if tasks else "", progress)
    rows: dict[int, Row] = {}

    def done(i: int, row: Row) -> None:
        rows[i] = row
        if on_row is not None:
            on_row(row)
        if bar is not None:
            bar.update(1)

    try:
        if scheduler:
            _run_dask(tasks, scheduler, done)
        elif jobs > 1 and len(tasks) > 1:
            _run_pool(tasks, jobs, done)
        else:
            for i, t in enumerate(tasks):
                done(i, run_task(t))
    finally:
        if bar is not None:
            bar.close()
    return [rows[i] for i in range(len(tasks))]


def _crashed(task: Task, exc: BaseException) -> Row:
    return Row(task.src, task.dst, "failed", f"{task.src}: worker failed: {one_line(exc, '')}")


def _run_pool(tasks: list[Task], jobs: int, done: Callable[[int, Row], None]) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = {pool.submit(run_task, t): i for i, t in enumerate(tasks)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # a worker process died (out of memory, a signal)
                row = _crashed(tasks[i], exc)
            done(i, row)


class SchedulerError(MLArrayError, ConnectionError):
    """The Dask scheduler cannot be reached."""


def _run_dask(tasks: list[Task], address: str, done: Callable[[int, Row], None]) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SchedulerError(
            'running on a Dask cluster needs the dask extra (pip install "napari-mlarray[dask]")'
        ) from None
    import dask

    timeout = dask.config.get("mlarray.scheduler_timeout", "10s")  # DASK_MLARRAY__SCHEDULER_TIMEOUT
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        futures = client.map(run_task, tasks, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                row = fut.result()
            except Exception as exc:  # the worker died or lost the task
                row = _crashed(tasks[i], exc)
            done(i, row)
    finally:
        client.close()


# ----------------------------------------------------------------------------- report


def _mb(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    return f"{n / 1024:.1f} kB"


def summary_table(rows: Iterable[Row]) -> str:
    """A plain-text table of the rows, with a count line at the end."""
    rows = list(rows)
    lines = [f"{'status':<8} {'time':>7} {'input':>10} {'output':>10}  file"]
    for r in rows:
        t = f"{r.seconds:.1f}s" if r.status == "ok" else "-"
        out = _mb(r.out_bytes) if r.out_bytes else "-"
        name = r.src if r.dst is None or r.dst == r.src else f"{r.src} -> {r.dst}"
        msg = "" if not r.message else (f"  ({r.message})" if r.status != "failed" else "")
        lines.append(f"{r.status:<8} {t:>7} {_mb(r.in_bytes):>10} {out:>10}  {name}{msg}")
        if r.status == "failed":
            lines.append(f"{'':<8} {r.message}")
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
    total_in = sum(r.in_bytes for r in rows if r.status == "ok")
    total_out = sum(r.out_bytes for r in rows if r.status == "ok")
    ratio = f", {_mb(total_in)} -> {_mb(total_out)}" if total_in else ""
    lines.append(
        f"{len(rows)} files: {counts['ok']} done, {counts['skipped']} skipped, "
        f"{counts['failed']} failed{ratio}"
    )
    return "\n".join(lines)


def as_json_rows(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts."""
    out = []
    for r in rows:
        d = dict(r.__dict__)
        d["seconds"] = float(np.round(r.seconds, 3))
        out.append(d)
    return out
