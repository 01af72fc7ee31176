"""The ``mlarray`` command line, and the reference package's CLI names.

Subcommands (``mlarray COMMAND --help`` for each)::

    mlarray info FILE... [--json]                   header only, never the data
    mlarray convert IN... OUT [--seg] [--jobs N | --scheduler ADDRESS]
    mlarray recompress FILE... [--codec zstd --clevel 5 --patch-size 128]
    mlarray stats FILE...                            fills meta.stats, streaming
    mlarray preview FILE -o PNG [--mask SEG.mla]     three mid-planes, radiological

Exit codes: 0 success, 1 some files failed, 2 bad usage (a missing output
folder, an existing output without ``--overwrite``, no input matched). Errors
are one line naming the file; ``--debug`` shows the traceback.

The reference package's entry points and functions are here too, with its
signatures: ``mlarray_header FILE``, ``mlarray_convert IN OUT``,
:func:`convert_to_mlarray`, :func:`convert_from_mlarray`, :func:`convert_image`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlarray._dataset import one_line as _one_line
from mlarray.errors import InvalidPathError, MLArrayError

__all__ = [
    "cli_convert_to_mlarray",
    "cli_print_header",
    "convert_from_mlarray",
    "convert_image",
    "convert_to_mlarray",
    "main",
    "print_header",
    "reference_package_conflict",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
_CODECS = ("blosclz", "lz4", "lz4hc", "zlib", "zstd")
_FILTERS = {"none": 0, "shuffle": 1, "bitshuffle": 2}


class UsageError(Exception):
    """Bad command-line usage; exits with code 2 after one line."""


# ----------------------------------------------------------------------------- environment


def reference_package_conflict() -> str | None:
    """Say so when the reference ``mlarray`` distribution is installed here as well.

    This project (distribution ``napari-mlarray``) and the reference package
    (distribution ``mlarray``) both install the ``mlarray`` import package; in
    one environment their files overwrite each other.

    Returns
    -------
    str or None
        A message telling the user what to do, or None when there is no clash.
    """
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if name != "mlarray":
            continue
        files = dist.files or []
        if any(str(f).replace("\\", "/") == "mlarray/__init__.py" for f in files):
            return (
                f"the reference package mlarray {dist.version} is installed in this environment "
                "too; it provides the same `import mlarray` as napari-mlarray, so the files of "
                "one overwrote the other's. Fix: pip uninstall -y mlarray napari-mlarray, then "
                "reinstall this project (see the README's Install section)."
            )
    return None


def _warn_conflict() -> None:
    msg = reference_package_conflict()
    if msg:
        print(f"mlarray: warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- helpers


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _jsonable(value.item())
    return value


def _int_list(text: str) -> int | list[int]:
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 128 or 64,128,128: {text!r}"
        ) from None
    if not parts or any(p <= 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return parts[0] if len(parts) == 1 else parts


# What a file is written with when an option is not given: the library's defaults by
# content (mlarray.layout.DEFAULT_CPARAMS, DEFAULT_SEG_CPARAMS, NO_FILTER) for a new file,
# the file's own settings for a rewritten one
_NEW_DEFAULTS = {
    "codec": "default by content: lz4 for images, lz4hc for label maps",
    "clevel": "default 9",
    "filter": "default shuffle; none for one-byte data such as uint8 when no other "
    "--codec/--clevel/--nthreads is given",
}
_KEPT_DEFAULTS = dict.fromkeys(_NEW_DEFAULTS, "default: the file's current one")


def _add_storage_options(p: argparse.ArgumentParser, *, rewrite: bool = False) -> None:
    d = _KEPT_DEFAULTS if rewrite else _NEW_DEFAULTS
    g = p.add_argument_group("compression and layout (as in the library)")
    g.add_argument("--codec", choices=_CODECS, help=f"Blosc2 codec ({d['codec']})")
    g.add_argument(
        "--clevel", type=int, choices=range(10), metavar="0-9", help=f"level ({d['clevel']})"
    )
    g.add_argument("--filter", choices=sorted(_FILTERS), help=f"byte filter ({d['filter']})")
    g.add_argument(
        "--patch-size", type=_int_list, metavar="N[,N,N]", help="patch size hint per spatial axis"
    )
    g.add_argument("--chunk-size", type=_int_list, metavar="N,N,...", help="explicit chunk shape")
    g.add_argument("--block-size", type=_int_list, metavar="N,N,...", help="explicit block shape")
    g.add_argument("--nthreads", type=int, help="compression threads")


def _cparams(args: argparse.Namespace) -> dict[str, Any] | None:
    cp: dict[str, Any] = {}
    if args.codec:
        cp["codec"] = args.codec
    if args.clevel is not None:
        cp["clevel"] = args.clevel
    if args.filter:
        cp["filters"] = [_FILTERS[args.filter]]
    if args.nthreads:
        cp["nthreads"] = args.nthreads
    return cp or None


def _storage_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"cparams": _cparams(args)}
    if args.patch_size is not None:
        kw["patch_size"] = args.patch_size
    elif args.chunk_size is not None or args.block_size is not None:
        kw.update(patch_size=None, chunk_size=args.chunk_size, block_size=args.block_size)
    return kw


def _add_parallel_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("whole datasets")
    g.add_argument(
        "-j", "--jobs", type=int, default=1, help="files converted at once by local processes"
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask distributed cluster (tcp://host:8786); the paths must be the same "
        "on the workers",
    )
    g.add_argument("--overwrite", action="store_true", help="redo files whose output exists")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")


def _progress_bar(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="chunk", leave=False, disable=None)


def _chunk_progress(desc: str) -> tuple[Any, Any]:
    state: dict[str, Any] = {"bar": None}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = _progress_bar(total, desc)
        if state["bar"] is not None:
            state["bar"].n = done
            state["bar"].refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return progress, close


def _write(line: str, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


# ----------------------------------------------------------------------------- info


def _codec_name(value: Any) -> str:
    import blosc2

    if hasattr(value, "name"):
        return str(value.name)
    try:
        return blosc2.Codec(int(value)).name
    except (ValueError, TypeError):
        return str(value)


def _filter_names(filters: Any) -> list[str]:
    """Names of a frame header's filters (NOFILTER left out); blosc2 gives an id it has
    no name for (a damaged or newer header) as a plain int: shown as that number."""
    import blosc2

    names = []
    for f in filters:
        try:
            number = int(getattr(f, "value", f))
        except (TypeError, ValueError):
            names.append(str(f))
            continue
        if number == 0:
            continue
        try:
            names.append(blosc2.Filter(number).name)
        except ValueError:
            names.append(str(number))
    return names


def header_info(path: str | os.PathLike) -> dict[str, Any]:
    """What ``mlarray info`` shows, read from the file's header only (no data decompressed)."""
    from mlarray import io

    store, meta = io.open_store(path, mmap_mode="r")
    has = bool(meta._has_array.has_array)
    schunk = store.schunk
    cp = schunk.cparams
    info: dict[str, Any] = {
        "path": os.fspath(path),
        "shape": list(store.shape) if has else None,
        "dtype": str(store.dtype) if has else None,
        "chunks": list(store.chunks) if has else None,
        "blocks": list(store.blocks) if has else None,
        "codec": _codec_name(cp.codec),
        "clevel": int(cp.clevel),
        "filters": _filter_names(cp.filters),
        "nbytes": int(schunk.nbytes),
        "cbytes": int(schunk.cbytes),
        "ratio": float(schunk.nbytes / schunk.cbytes) if schunk.cbytes else None,
        "file_bytes": Path(path).stat().st_size,
        "meta": meta.to_mapping(),
    }
    return _jsonable(info)


def _fmt_list(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, list) and v and isinstance(v[0], list):
        return "[" + ", ".join(_fmt_list(r, digits) for r in v) + "]"
    if isinstance(v, list):
        return (
            "[" + ", ".join(f"{x:.{digits}g}" if isinstance(x, float) else str(x) for x in v) + "]"
        )
    return str(v)


def format_info(info: dict[str, Any]) -> str:
    """``mlarray info`` text for one file."""
    m = info["meta"]
    sp = m["spatial"]
    lines = [info["path"]]

    def add(key: str, value: str) -> None:
        lines.append(f"  {key:<13}{value}")

    if info["shape"] is None:
        add("array", "none (metadata only)")
    else:
        add("shape", f"{tuple(info['shape'])} {info['dtype']}")
    add("axes", ", ".join(sp["axis_labels"]) if sp["axis_labels"] else "all spatial (no labels)")
    if sp["affine"] is not None:
        add("affine", _fmt_list(sp["affine"]))
    else:
        add("spacing", _fmt_list(sp["spacing"]))
        add("origin", _fmt_list(sp["origin"]))
        add("direction", _fmt_list(sp["direction"]))
    add("coord_system", sp["coord_system"] or "- (world frame not recorded)")
    if sp["axis_units"]:
        add("units", ", ".join(sp["axis_units"]))
    is_seg = m["is_seg"]["is_seg"] if isinstance(m["is_seg"], dict) else m["is_seg"]
    add("is_seg", str(is_seg))
    boxes = m["bbox"]["bboxes"]
    if boxes:
        labels = m["bbox"]["labels"]
        extra = f" labels {sorted({str(x) for x in labels})}" if labels else ""
        add("boxes", f"{len(boxes)}{extra}")
    else:
        add("boxes", "0")
    st = m["stats"]
    if st.get("min") is not None:
        parts = [
            f"{key} {st[key]:.6g}"
            for key in ("min", "max", "mean", "std", "median")
            if st.get(key) is not None
        ]
        add("stats", "  ".join(parts))
    else:
        add("stats", "not computed (mlarray stats FILE)")
    if info["shape"] is not None:
        add("chunks", f"{tuple(info['chunks'])}  blocks {tuple(info['blocks'])}")
        filters = ",".join(info["filters"]) or "none"
        ratio = f"{info['ratio']:.2f}x" if info["ratio"] else "-"
        add(
            "codec",
            f"{info['codec']} level {info['clevel']}, filters {filters}; ratio {ratio} "
            f"({info['nbytes']} -> {info['cbytes']} bytes)",
        )
    src = m["source"]
    src = src.get("data", src) if isinstance(src, dict) else src
    fmt = m["_image_meta_format"]
    fmt = fmt.get("image_meta_format") if isinstance(fmt, dict) else fmt
    if src or fmt:
        add("source", f"{fmt or '-'}, {len(src or {})} header entries")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from mlarray._dataset import expand_inputs, is_pattern

    # --json: one object for one FILE argument naming a file, else a list (also when a
    # folder or glob matches one file), so the shape depends on the arguments only
    one = len(args.files) == 1 and not is_pattern(args.files[0])
    one = one and not Path(args.files[0]).is_dir()
    items, unmatched = expand_inputs(args.files, lambda p: p.name.lower().endswith(".mla"))
    for pattern in unmatched:
        raise UsageError(f"{pattern}: no such .mla file")
    failed = 0
    out = []
    for path, _ in items:
        try:
            info = header_info(path)
        except MLArrayError as exc:
            _write(f"mlarray: error: {_one_line(exc, path)}", err=True)
            failed += 1
            continue
        if args.json:
            out.append(info)
        else:
            _write(format_info(info))
    if args.json and not (one and failed):
        _write(json.dumps(out[0] if one else out, indent=2))
    return EXIT_FAILED if failed else 0


# ----------------------------------------------------------------------------- convert


def _convert_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = _storage_kwargs(args)
    opts.update(
        is_seg=args.seg,
        coord_system=args.coord_system,
        axis_order=args.order,
        fourth_axis=args.fourth_axis,
        series=args.series,
    )
    return opts


def _single_convert(args: argparse.Namespace, src: Path, dst: Path) -> int:
    from mlarray.convert import ConversionError, convert_file, image_format

    if image_format(dst) is None and args.to != "dicom":
        raise UsageError(
            f"{dst}: unknown output type; end it with .mla, .nii.gz, .nii, .nrrd, .mha or .mhd, "
            "or give an existing folder"
        )
    if not dst.parent.is_dir():
        raise UsageError(f"{dst}: the output folder {dst.parent} does not exist")
    if dst.exists() and not args.overwrite:
        raise UsageError(f"{dst}: exists already (use --overwrite to replace it)")
    from mlarray._dataset import Row, _size

    progress, close = _chunk_progress(f"{src.name} -> {dst.name}")
    t0 = time.perf_counter()
    try:
        result = convert_file(
            src,
            dst,
            overwrite=args.overwrite,
            progress=progress,
            to="dicom" if args.to == "dicom" else None,
            **_convert_options(args),
        )
    except ConversionError as exc:
        close()
        if args.debug:
            traceback.print_exc()
        message = _one_line(exc, src)
        _write(f"mlarray: error: {message}", err=True)
        if args.json:  # the row folder mode prints for this file
            _write_row(Row(str(src), str(dst), "failed", message, time.perf_counter() - t0))
        return EXIT_FAILED
    close()
    for note in result.notes:
        _write(f"{src}: {note}", err=True)
    if args.json:  # one object, as `info --json` gives for one file argument
        seconds = time.perf_counter() - t0
        notes = list(result.notes)
        _write_row(Row(str(src), str(dst), "ok", "", seconds, _size(src), _size(dst), notes))
    else:
        _write(f"{src} -> {dst}")
    return 0


def _write_row(row: Any) -> None:
    """Print one :class:`mlarray._dataset.Row` as the JSON object folder mode lists."""
    from mlarray._dataset import as_json_rows

    _write(json.dumps(as_json_rows([row])[0], indent=2))


def _dataset_target(item: Path, root: Path, out: Path, to_suffix: str) -> Path:
    from mlarray.convert import split_suffix

    try:
        rel = item.relative_to(root)
    except ValueError:
        rel = Path(item.name)
    stem, _ = split_suffix(rel.name)
    return out / rel.parent / f"{stem}{to_suffix}"


def _cmd_convert(args: argparse.Namespace) -> int:
    from mlarray._dataset import (
        Task,
        dicom_files_in,
        expand_inputs,
        is_pattern,
        is_series_folder,
    )
    from mlarray.convert import image_format

    if len(args.paths) < 2:
        raise UsageError("convert needs an input and an output: mlarray convert IN... OUT")
    *inputs, out_arg = args.paths
    out = Path(out_arg)
    one = Path(inputs[0]) if len(inputs) == 1 and not is_pattern(inputs[0]) else None
    if one is not None and one.is_file() and args.to == "dicom" and is_series_folder(out):
        # the series an earlier run wrote there: exists already, or --overwrite replaces it
        return _single_convert(args, one, out)
    if one is not None and not out.is_dir():
        if not one.exists():
            raise UsageError(f"{one}: no such file or folder")
        if not one.is_file() and not one.is_dir():
            raise UsageError(f"{one}: not a regular file or folder (a pipe or a device?)")
        if one.is_file() or dicom_files_in(one):
            return _single_convert(args, one, out)
        raise UsageError(
            f"{out}: the output folder does not exist (converting the images in the folder "
            f"{one} needs an existing output folder)"
        )
    if not out.is_dir():
        raise UsageError(
            f"{out}: the output folder does not exist (several inputs need an existing folder)"
        )
    to = args.to or "nii.gz"
    to_suffix = "" if to == "dicom" else "." + to.lstrip(".")
    if to != "dicom" and image_format(Path("x" + to_suffix)) in (None, "dicom", "mla"):
        raise UsageError(f"--to {args.to}: write one of nii.gz, nii, nrrd, mha, mhd, dicom")

    def accept(p: Path) -> bool:
        return image_format(p) not in (None,) and not (image_format(p) == "dicom" and p.is_dir())

    items, unmatched = expand_inputs(inputs, accept, dicom=True)
    if unmatched:
        raise UsageError(f"{unmatched[0]}: no input files match")
    out_root = out.resolve()
    # files in OUT may be earlier outputs: when OUT is beside or inside the inputs, only the
    # files outside it are inputs; when OUT is the input folder itself, all of them are
    outside = [(p, r) for p, r in items if out_root not in (p.resolve(), *p.resolve().parents)]
    items = outside or items

    def target(item: Path, root: Path) -> Path:
        mla = image_format(item) == "mla"
        return _dataset_target(item, root, out, to_suffix if mla else ".mla")

    # An input whose output is another input (a.nii.gz beside a.mla: OUT is the input
    # folder of an earlier run) is never written over, --overwrite or not: which of
    # the two is the original is not known. One direction per run: images to .mla when
    # there are images without such a twin, else .mla to --to.
    inputs_at = {p.resolve() for p, _ in items}
    twins = {p for p, r in items if target(p, r).resolve() in inputs_at}
    images = [(p, r) for p, r in items if image_format(p) != "mla"]
    single = [(p, r) for p, r in items if p not in twins]
    if any(image_format(p) != "mla" for p, _ in single) or not single:
        items = images or items
    else:
        items = [(p, r) for p, r in items if image_format(p) == "mla"]
    opts = _convert_options(args)
    tasks, planned = [], {}
    for item, root in items:
        is_mla = image_format(item) == "mla"
        dst = target(item, root)
        if dst in planned:
            raise UsageError(
                f"{item} and {planned[dst]} would both be written to {dst}; convert them separately"
            )
        planned[dst] = item
        task_opts = ({"to": "dicom"} if to == "dicom" else {}) if is_mla else opts
        skip = ""
        if item in twins:
            skip = (
                f"output is also an input here ({dst.name}: converted from it earlier?), "
                "never replaced; convert it by name or into another folder"
            )
        tasks.append(
            Task("convert", str(item), str(dst), task_opts, args.overwrite, args.debug, skip)
        )
    if not tasks:
        raise UsageError(f"{', '.join(inputs)}: no images to convert")
    for t in tasks:
        Path(t.dst).parent.mkdir(parents=True, exist_ok=True)
    return _run_many(args, tasks)


def _run_many(args: argparse.Namespace, tasks: list) -> int:
    from mlarray._dataset import SchedulerError, as_json_rows, run_tasks, summary_table

    def on_row(row: Any) -> None:
        for note in row.notes:
            _write(f"{row.src}: {note}", err=True)

    try:
        rows = run_tasks(
            tasks,
            jobs=max(1, args.jobs),
            scheduler=args.scheduler,
            progress=not args.json,
            on_row=on_row,
        )
    except SchedulerError as exc:
        _write(f"mlarray: error: {exc}", err=True)
        return EXIT_FAILED
    if args.json:
        _write(json.dumps(as_json_rows(rows), indent=2))
    else:
        _write(summary_table(rows))
    return EXIT_FAILED if any(r.status == "failed" for r in rows) else 0


# ----------------------------------------------------------------------------- recompress / stats


def _mla_tasks(args: argparse.Namespace, kind: str, options: dict[str, Any]) -> list:
    from mlarray._dataset import Task, expand_inputs

    items, unmatched = expand_inputs(args.files, lambda p: p.name.lower().endswith(".mla"))
    if unmatched:
        raise UsageError(f"{unmatched[0]}: no .mla files match")
    return [Task(kind, str(p), None, options, args.overwrite, args.debug) for p, _ in items]


def _cmd_recompress(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "codec": args.codec,
        "clevel": args.clevel,
        "filters": [_FILTERS[args.filter]] if args.filter else None,
        "nthreads": args.nthreads,
        "patch_size": args.patch_size,
        "chunk_size": args.chunk_size,
        "block_size": args.block_size,
    }
    return _run_many(args, _mla_tasks(args, "recompress", options))


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.percentiles is None:  # not asked: existing statistics of any percentiles stay
        return _run_many(args, _mla_tasks(args, "stats", {"percentiles": None}))
    lo, hi = args.percentiles
    if not 0 <= lo < hi <= 100:
        raise UsageError(f"--percentiles {lo} {hi}: need 0 <= low < high <= 100")
    return _run_many(args, _mla_tasks(args, "stats", {"percentiles": [lo, hi]}))


def _preview_size(text: str) -> int:
    """``--size``: an int in the range :func:`mlarray._preview.write_preview` draws."""
    from mlarray._preview import MAX_SIZE, MIN_SIZE

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not MIN_SIZE <= n <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{n} pixels: expected {MIN_SIZE} to {MAX_SIZE}")
    return n


def _cmd_preview(args: argparse.Namespace) -> int:
    from mlarray._preview import PreviewError, write_preview

    out = Path(args.output)
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the output folder {out.parent} does not exist")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out}: exists already (use --overwrite to replace it)")
    try:
        notes = write_preview(
            args.file,
            out,
            mask=args.mask,
            index=args.index,
            size=args.size,
            boxes=not args.no_boxes,
        )
    except (MLArrayError, PreviewError) as exc:
        if args.debug:
            traceback.print_exc()
        _write(f"mlarray: error: {_one_line(exc, args.file)}", err=True)
        return EXIT_FAILED
    for note in notes:
        _write(f"{args.file}: {note}", err=True)
    _write(f"{args.file} -> {out}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``mlarray`` argument parser (every subcommand has ``--help``)."""
    from mlarray import __version__

    parser = argparse.ArgumentParser(
        prog="mlarray",
        description="Inspect, convert, recompress and preview .mla medical images.",
        epilog="Run 'mlarray COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"mlarray {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "info",
        parents=[common],
        help="show a file's header (shape, geometry, labels, boxes, stats, codec)",
        description="Show what an .mla file holds, from its header alone (no data is read).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".mla files, folders or globs")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of text: one object for a single FILE argument naming a "
        "file, otherwise (several arguments, a folder, a quoted glob) a list, even of one",
    )
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "convert",
        parents=[common],
        help="NIfTI/NRRD/MHA/DICOM to .mla and back, one file or a whole dataset",
        description=(
            "Convert IN to OUT. With one input file (or one DICOM series folder) OUT is the "
            "output file; its suffix picks the format (.mla, .nii.gz, .nii, .nrrd, .mha, .mhd). "
            "With several inputs, folders or globs, OUT is an existing folder: images become "
            ".mla files and .mla files become --to files, keeping the relative paths."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="IN... OUT", help="inputs, then the output")
    seg = p.add_mutually_exclusive_group()
    seg.add_argument(
        "--seg", dest="seg", action="store_const", const=True, help="the inputs are label maps"
    )
    seg.add_argument(
        "--no-seg", dest="seg", action="store_const", const=False, help="the inputs are images"
    )
    p.set_defaults(seg=None)
    p.add_argument(
        "--coord-system",
        choices=("RAS", "LPS"),
        help="world frame to store (default: the file's own, RAS for NIfTI, LPS otherwise)",
    )
    p.add_argument(
        "--order",
        choices=("zyx", "xyz"),
        default="zyx",
        help="spatial axis order of the array (default zyx, as SimpleITK and nnU-Net)",
    )
    p.add_argument(
        "--fourth-axis",
        choices=("temporal", "channel"),
        help="what a 4th image dimension is (default temporal, as NIfTI defines it)",
    )
    p.add_argument(
        "--series", metavar="UID", help="DICOM SeriesInstanceUID in a multi-series folder"
    )
    p.add_argument(
        "--to",
        metavar="FORMAT",
        help="output format of .mla inputs in folder mode: nii.gz (default), nii, nrrd, mha, "
        "mhd or dicom; 'dicom' also makes OUT a DICOM series folder for one .mla input",
    )
    _add_storage_options(p)
    _add_parallel_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "recompress",
        parents=[common],
        help="rewrite .mla files with another codec or layout (atomic)",
        description=(
            "Rewrite .mla files in place with a new codec, level or chunk layout. Each file is "
            "replaced atomically; options not given keep the file's current settings."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".mla files, folders or globs")
    _add_storage_options(p, rewrite=True)
    _add_parallel_options(p)
    p.set_defaults(func=_cmd_recompress)

    p = sub.add_parser(
        "stats",
        parents=[common],
        help="compute intensity statistics into meta.stats (streaming)",
        description="Compute min, max, mean, std, median and percentiles chunk by chunk and "
        "store them in each file's meta.stats (atomic rewrite, chunks copied as they are).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".mla files, folders or globs")
    p.add_argument(
        "--percentiles",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="percentiles to store (default 0.5 99.5); a file whose statistics have other "
        "percentiles is recomputed, one with these (or, without this option, any) is skipped "
        "unless --overwrite",
    )
    _add_parallel_options(p)
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser(
        "preview",
        parents=[common],
        help="PNG of the three orthogonal mid-planes, radiological view, with overlays",
        description=(
            "Draw the axial, coronal and sagittal mid-planes of FILE side by side the way "
            "radiology viewers show them (patient right on the left of the image, anterior and "
            "superior up), with a label map (--mask, or FILE itself when it is one) and the "
            "file's boxes drawn over them."
        ),
    )
    p.add_argument("file", metavar="FILE", help="an .mla file")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="the PNG to write")
    p.add_argument("--mask", metavar="SEG.mla", help="a label map on the same grid to overlay")
    p.add_argument("--index", type=int, default=0, help="index along non-spatial axes (default 0)")
    p.add_argument(
        "--size",
        type=_preview_size,
        default=256,
        help="height of the tallest panel in pixels, 16 to 4096 (default 256); no panel is "
        "wider than 4096",
    )
    p.add_argument("--no-boxes", action="store_true", help="do not draw the file's boxes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.set_defaults(func=_cmd_preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlarray`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    _warn_conflict()
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        _write(f"mlarray {args.command}: error: {exc}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _write("mlarray: interrupted", err=True)
        return 130
    except BrokenPipeError:  # output piped into head, less...
        return 0
    except (MLArrayError, OSError, ValueError) as exc:
        if args.debug:
            traceback.print_exc()
        _write(f"mlarray {args.command}: error: {' '.join(str(exc).split())}", err=True)
        return EXIT_FAILED
    except Exception as exc:  # a failure nobody foresaw: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        text = " ".join(str(exc).split()) or "(no message)"
        hint = "" if args.debug else "; --debug shows where"
        _write(
            f"mlarray {args.command}: error: {type(exc).__name__}: {text} "
            f"(an unexpected error{hint})",
            err=True,
        )
        return EXIT_FAILED


# ----------------------------------------------------------------------------- reference names


def _header_to_source_meta(header: Any) -> dict[str, Any]:
    """A reader's header as JSON-compatible ``meta.source`` (numpy values as Python ones)."""
    from mlarray.convert import header_to_source

    return header_to_source(header)


def print_header(filepath: str | os.PathLike) -> None:
    """Print an ``.mla`` file's metadata record as JSON, like the reference ``mlarray_header``."""
    from mlarray import io
    from mlarray.meta import META_PARTS

    meta = io.read_meta(filepath)
    out: dict[str, Any] = {}
    for key in META_PARTS:
        part = getattr(meta, key)
        if key in ("_has_array", "_mlarray_version"):
            out[key] = part.value
        elif part.is_default():
            out[key] = None
        else:
            out[key] = part.to_plain(include_none=True)
    print(json.dumps(_jsonable(out), indent=2, sort_keys=True))


#: A ``medvol.MedVol``-compatible image class. ``None`` (the default) converts with
#: :mod:`mlarray.convert`; code written for the reference package may set it (its tests
#: patch it) to convert through that class as the reference does (see ``mlarray._medvol``).
MedVol: Any = None


def convert_to_mlarray(load_filepath: str | os.PathLike, save_filepath: str | os.PathLike) -> None:
    """Convert a NIfTI/NRRD/MetaImage/DICOM image to ``.mla`` (reference signature).

    The array is stored as the reference's ``mlarray_convert`` stores it, so
    code written for its files reads the same voxel at the same index: x, y, z
    (a NIfTI in nibabel's R,A,S, L,A,S or L,P,S order keeps its array; other
    orders are reordered as the reference reorders them), the geometry an
    ``affine`` into RAS world and ``coord_system`` the array's axis codes
    (``"RAS+"``, FORMAT.md section 4). ``mlarray convert`` (z, y, x) is
    :func:`mlarray.convert.convert_file`. The source header goes to
    ``meta.source``. An existing output is replaced.
    """
    if MedVol is not None:
        from mlarray import _medvol

        _medvol.to_mlarray(MedVol, load_filepath, save_filepath)
        return
    from mlarray.convert import convert_file

    # the reference's array layout, so code written for its files reads the same voxels
    convert_file(load_filepath, save_filepath, overwrite=True, axis_order="reference")


def convert_from_mlarray(
    load_filepath: str | os.PathLike, save_filepath: str | os.PathLike
) -> None:
    """Convert an ``.mla`` file to NIfTI/NRRD/MetaImage (reference signature).

    The geometry is written in the target's frame; ``meta.source`` goes back
    into the header of a file of the format it came from.
    """
    if MedVol is not None:
        from mlarray import _medvol

        _medvol.from_mlarray(MedVol, load_filepath, save_filepath)
        return
    from mlarray.convert import to_file

    to_file(load_filepath, save_filepath, overwrite=True)


def convert_image(load_filepath: str | os.PathLike, save_filepath: str | os.PathLike) -> None:
    """Convert in the direction the suffixes say (reference signature).

    Raises
    ------
    InvalidPathError
        (a RuntimeError) when neither or both paths end with ``.mla``.
    """
    src_mla = os.fspath(load_filepath).lower().endswith(".mla")
    dst_mla = os.fspath(save_filepath).lower().endswith(".mla")
    if src_mla == dst_mla:
        raise InvalidPathError(
            load_filepath,
            f"cannot convert to {os.fspath(save_filepath)}: exactly one side must be .mla",
        )
    if dst_mla:
        convert_to_mlarray(load_filepath, save_filepath)
    else:
        convert_from_mlarray(load_filepath, save_filepath)


def _reference_main(parser: argparse.ArgumentParser, run: Any, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    _warn_conflict()
    try:
        run(args)
    except (MLArrayError, OSError, ValueError, RuntimeError) as exc:
        _write(f"{parser.prog}: error: {' '.join(str(exc).split())}", err=True)
        return EXIT_FAILED
    return 0


def cli_print_header(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mlarray_header FILE`` (the reference's name and arguments)."""
    parser = argparse.ArgumentParser(
        prog="mlarray_header", description="Print the MLArray metadata header for a file."
    )
    parser.add_argument("filepath", help="Path to a .mla file.")
    sys.exit(_reference_main(parser, lambda a: print_header(a.filepath), argv))


def cli_convert_to_mlarray(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mlarray_convert IN OUT`` (the reference's name and arguments)."""
    parser = argparse.ArgumentParser(
        prog="mlarray_convert", description="Convert between MLArray and NIfTI/NRRD files."
    )
    parser.add_argument(
        "load_filepath",
        help="Input path: MLArray (.mla), NIfTI (.nii.gz, .nii), NRRD (.nrrd), MetaImage "
        "(.mha, .mhd) or a DICOM series folder.",
    )
    parser.add_argument(
        "save_filepath",
        help="Output path: MLArray (.mla), NIfTI (.nii.gz, .nii), NRRD (.nrrd) or MetaImage.",
    )
    sys.exit(
        _reference_main(parser, lambda a: convert_image(a.load_filepath, a.save_filepath), argv)
    )
