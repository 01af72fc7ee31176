"""Convert medical image files (NIfTI, NRRD, MetaImage, DICOM) to and from ``.mla``.

Well-kept readers do the parsing: nibabel for NIfTI (``.nii``, ``.nii.gz``)
and SimpleITK for NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) and DICOM (a series folder or one ``.dcm`` file). Both are in the
optional ``convert`` extra and imported only when a conversion runs.

Geometry is kept exactly, in the world frame of the source file, and the
frame is recorded in ``meta.spatial.coord_system`` (FORMAT.md section 4):

- NIfTI: the affine nibabel chooses (sform, else qform) maps voxel indices to
  RAS millimetres; it is stored as spacing (column norms), origin and
  direction (unit columns), whose product is that affine, or as the
  ``affine`` itself when it is sheared; ``coord_system="RAS"``.
- NRRD, MetaImage, DICOM: SimpleITK's spacing, origin and direction in LPS
  millimetres, stored as such with ``coord_system="LPS"``.

``coord_system=`` converts to the other frame (a sign flip of the first two
world axes; the voxels do not move). The array is stored in the order
SimpleITK and nnU-Net use, ``(channel, time, z, y, x)``, with matching
``axis_labels``; ``axis_order="xyz"`` keeps NIfTI's own ``x, y, z`` order. A colour
picture (a colour DICOM, an RGB24/RGBA32 NIfTI, 3 or 4 8-bit vector components) keeps
its colours last, ``(z, y, x, channel)``, as ITK, PIL and napari hold colour pictures
(:func:`mlarray.meta.is_colour_axis`); a segmentation never is one (its channels stay
first). ``axis_order="reference"`` keeps the reference's layout.

>>> from mlarray.convert import from_file, to_file
>>> img = from_file("case_0001.nii.gz")           # an in-memory MLArray
>>> img.save("case_0001.mla")
>>> to_file("case_0001.mla", "case_0001.nrrd")    # and back, any supported format
>>> to_file("case_0001.mla", "case_0001_dicom", format="dicom")  # a DICOM series folder
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlarray import geometry, io
from mlarray.errors import MLArrayError
from mlarray.meta import (
    Meta,
    MetaImageFormat,
    MetaIsSeg,
    MetaSource,
    MetaSpatial,
    _meta_internal_write,
    is_colour_axis,
)
from mlarray.mlarray import MLArray

__all__ = [
    "ConversionError",
    "ConversionResult",
    "convert_file",
    "from_file",
    "guess_seg",
    "image_format",
    "is_dicom_file",
    "to_file",
]

#: file-name endings of each supported format, longest first where they overlap
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "mla": (".mla",),
    "nifti": (".nii.gz", ".nii"),
    "nrrd": (".nrrd", ".nhdr"),
    "metaimage": (".mha", ".mhd"),
    "dicom": (".dcm",),
}
WRITABLE = ("mla", "nifti", "nrrd", "metaimage", "dicom")

# Each world frame as (LPS axis, sign) per world axis, for a sign flip between frames.
_FRAMES = {"RAS": np.array([-1.0, -1.0, 1.0]), "LPS": np.array([1.0, 1.0, 1.0])}
_SEG_WORDS = {
    "seg",
    "segs",
    "segmentation",
    "segmentations",
    "label",
    "labels",
    "labelstr",
    "labelsts",
    "labelmap",
    "mask",
    "masks",
    "gt",
    "annotation",
    "annotations",
}
_MAX_SOURCE_VALUE = 4096  # longest string kept from a source header entry


class ConversionError(MLArrayError, ValueError):
    """An input or output that cannot be converted; the message names the file."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


@dataclass
class ConversionResult:
    """What :func:`convert_file` did: the output path and the notes worth telling the user."""

    output: Path
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- formats


def image_format(path: str | os.PathLike) -> str | None:
    """Return the format of ``path``: ``mla``, ``nifti``, ``nrrd``, ``metaimage``, ``dicom``.

    A directory is ``dicom`` (a series folder). ``None`` for anything else.
    """
    p = Path(path)
    name = p.name.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    if p.is_dir():
        return "dicom"
    if p.is_file() and is_dicom_file(p):
        return "dicom"
    return None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


#: Oldest release of a converter dependency whose API the checks here rely on: pydicom 2
#: gives a deferred pixel data element no length, and the pixel-data checks of
#: :func:`_dicom_pixel_bytes` would pass every file unchecked.
_MIN_VERSIONS = {"pydicom": (3, 0)}


def _require(module: str, path: Any) -> Any:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ConversionError(
            path,
            f"converting this format needs {module}; install the 'convert' extra "
            '(pip install "napari-mlarray[convert]")',
        ) from None
    least = _MIN_VERSIONS.get(module)
    if least is not None:
        version = str(getattr(mod, "__version__", ""))
        found = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
        if found < least:
            raise ConversionError(
                path,
                f"converting this format needs {module} {'.'.join(map(str, least))} or newer "
                f"(found {version or 'an unknown version'}); pip install -U {module}",
            )
    return mod


def _plain_value(value: Any) -> Any:
    """A header value as JSON-compatible data (bytes decoded, NaN as None, arrays as lists)."""
    if isinstance(value, bytes):
        value = value.split(b"\x00", 1)[0].decode("latin-1")
    if isinstance(value, np.ndarray):
        return _plain_value(value.tolist() if value.ndim else value.item())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, str):
        return value[:_MAX_SOURCE_VALUE]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:_MAX_SOURCE_VALUE]


def header_to_source(header: Any) -> dict[str, Any]:
    """A reader's header (a mapping, a nibabel header) as a JSON-compatible dict."""
    keys = header.keys() if hasattr(header, "keys") else []
    return {str(k): _plain_value(header[k]) for k in keys}


# ----------------------------------------------------------------------------- reading


@dataclass
class _Loaded:
    """A decoded image before it becomes an MLArray.

    ``index_axes`` are the data axes of voxel index ``i, j, k`` (x, y, z in
    ITK/NIfTI naming) and ``affine`` maps ``(i, j, k)`` to ``frame`` world
    coordinates; ``nonspatial`` pairs data axes with their labels. ``colour``: its
    ``channel`` axis holds the colour components of a picture (an RGB NIfTI, a colour
    DICOM, 3 or 4 8-bit vector components), not channels such as modalities.
    """

    data: Any
    index_axes: list[int]
    affine: np.ndarray
    frame: str
    nonspatial: list[tuple[int, str]]
    source: dict[str, Any]
    fmt: str
    notes: list[str] = field(default_factory=list)
    sod: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    colour: bool = False


def _memory_budget() -> int:
    """Bytes of physical memory (a volume claiming more is refused before allocating)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_claimed_size(path: Path, claimed: int, available: int | None) -> None:
    """Refuse a header whose data size the file cannot hold or memory cannot take."""
    if available is not None and claimed > available:
        raise ConversionError(
            path,
            f"the header claims {claimed} bytes of voxel data but the file can hold at most "
            f"{available}; it is truncated or its header is damaged",
        )
    budget = _memory_budget()
    if claimed > budget:
        raise ConversionError(
            path,
            f"the image needs {claimed / 2**30:.1f} GiB, more than this machine's memory "
            f"({budget / 2**30:.1f} GiB)",
        )


def _nifti_available_bytes(path: Path, offset: int) -> int:
    """Voxel bytes present after the header of an uncompressed ``.nii``."""
    return max(0, path.stat().st_size - offset)


_DEFLATE_MAX_RATIO = 1032  # zlib cannot expand a byte of input into more than this
_STREAM_STEP = 1 << 24


def _gz_payload(path: Path, offset: int, claimed: int, keep: bool) -> bytearray:
    """The ``claimed`` bytes after ``offset`` in a gzip file, read to its end.

    Reading on to the end makes :mod:`gzip` check every member's CRC and
    length, so a damaged file is refused rather than decoded into wrong
    voxels; the buffer grows with the bytes really there, never to what the
    header merely claims. ``keep=False`` only counts (for an image too big for
    memory: a truncated file is still told apart from a big one).
    """
    import gzip
    import zlib

    buf = bytearray()
    have = 0
    try:
        with gzip.open(path, "rb") as fh:
            skipped = 0
            while skipped < offset:
                step = fh.read(min(_STREAM_STEP, offset - skipped))
                if not step:
                    break
                skipped += len(step)
            while skipped == offset and have < claimed:
                step = fh.read(min(_STREAM_STEP, claimed - have))
                if not step:
                    break
                have += len(step)
                if keep:
                    buf += step
            while fh.read(_STREAM_STEP):  # to the end: CRC and length of every member
                pass
    except (EOFError, OSError, zlib.error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConversionError(
            path, f"the gzip data are damaged or cut short ({reason}); the file cannot be read"
        ) from None
    if have < claimed:
        raise ConversionError(
            path,
            f"the header claims {claimed} bytes of voxel data but the file holds only {have}; "
            "it is truncated or its header is damaged",
        )
    return buf


def _nifti_voxels(img: Any, path: Path, claimed: int, offset: int) -> np.ndarray:
    """The scaled voxel array of a NIfTI image, the file checked against its header first."""
    if not path.name.lower().endswith(".gz"):
        _check_claimed_size(path, claimed, _nifti_available_bytes(path, offset))
        return np.asanyarray(img.dataobj)
    _check_claimed_size(path, claimed, path.stat().st_size * _DEFLATE_MAX_RATIO)
    fits = claimed <= _memory_budget()
    buf = _gz_payload(path, offset, claimed, keep=fits)
    _check_claimed_size(path, claimed, None)  # read to the end: the size is real
    proxy = img.dataobj
    raw = np.frombuffer(buf, dtype=proxy.dtype, count=int(np.prod(proxy.shape)))
    raw = raw.reshape(proxy.shape, order=proxy.order)
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):  # as nibabel's own proxy scales
        inter = inter.astype(slope.dtype)
    from nibabel.volumeutils import apply_read_scaling

    return apply_read_scaling(raw, slope, inter)


def _read_nifti(path: Path, fourth_axis: str | None) -> _Loaded:
    nib = _require("nibabel", path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise ConversionError(path, f"not a NIfTI image (nibabel reads a {type(img).__name__})")
        hdr = img.header
        claimed = int(np.prod(img.shape, dtype=np.float64)) * hdr.get_data_dtype().itemsize
        offset = int(img.dataobj.offset)  # the header may say 0 for "right after me"
        data = _nifti_voxels(img, path, claimed, offset)
    except ConversionError:
        raise
    except MemoryError:
        raise ConversionError(path, "the image does not fit in memory") from None
    except Exception as exc:  # nibabel raises many types for damaged files
        raise ConversionError(path, f"cannot read NIfTI: {exc}") from None
    notes = []
    affine = np.asarray(img.affine, dtype=np.float64)
    sform, qform = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform > 0 and qform > 0:
        q = np.asarray(hdr.get_qform(), dtype=np.float64)
        if not np.allclose(q, np.asarray(hdr.get_sform()), atol=1e-3):
            notes.append(
                "the NIfTI header's sform and qform disagree; the sform was used (as nibabel and "
                "ITK-SNAP do)"
            )
    if data.ndim < 3:  # NIfTI is 3-D at heart: pad to three spatial axes
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    extra: list[str] = []
    vectors = data.ndim >= 5 and data.shape[3] == 1
    if vectors:
        data = data[:, :, :, 0]  # NIfTI puts vector components in dim 5, with dim 4 = 1
        extra = ["channel"] + ["non_spatial"] * (data.ndim - 4)
    elif data.ndim >= 4:
        extra = [fourth_axis or "temporal", *["channel", "non_spatial"][: data.ndim - 4]]
        extra += ["non_spatial"] * (data.ndim - 3 - len(extra))
    # 3 or 4 vector components of 8 bits: the RGB(A) picture SimpleITK writes as a vector
    rgb_vectors = vectors and data.ndim == 4 and data.shape[3] in (3, 4)
    colour = bool(data.dtype.names) or (rgb_vectors and data.dtype == np.uint8)
    if data.dtype.names:  # RGB24/RGBA32: colour components as a last channel axis, as ITK
        extra = ["non_spatial" if label == "channel" else label for label in extra]
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
        extra.append("channel")
        if data.dtype.kind not in "iuf":
            raise ConversionError(path, f"colour components of type {data.dtype} are not numbers")
    nonspatial = [(3 + i, label) for i, label in enumerate(extra)]
    if not np.all(np.isfinite(affine)):
        raise ConversionError(path, "the NIfTI header holds a non-finite affine")
    source = header_to_source(hdr)
    return _Loaded(
        data=data,
        index_axes=[0, 1, 2],
        affine=affine,
        frame="RAS",
        nonspatial=nonspatial,
        source=source,
        fmt="nifti",
        notes=notes,
        colour=colour,
    )


@contextlib.contextmanager
def _quiet_itk(sitk: Any) -> Iterator[None]:
    """Keep ITK from printing warnings to the terminal; we report what matters ourselves."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


_SITK_NOISE = (
    re.compile(r"^Exception thrown in SimpleITK \S+:\s*"),  # the call that failed
    re.compile(r"^\S+\.(?:cxx|cpp|hxx|h):\d+:\s*"),  # a source location
    re.compile(r"^(?:sitk::)?ERROR:\s*"),
    re.compile(r"^ITK ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?"),
    re.compile(r"^\[nrrd\]\s*(?:\w+:\s*)?"),  # teem's call chain
)
_SITK_VAGUE = ("trouble", "error reading", "read: error reading")


@contextlib.contextmanager
def _printed_by_readers(said: list[str]) -> Iterator[None]:
    """Collect what C++ readers print on the terminal themselves while reading (MetaIO
    says why a MetaImage fails there): the error message tells it instead."""
    import ctypes
    import sys
    import tempfile

    try:
        flush_c = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):  # no C library to flush (Windows): nothing to do
        flush_c = None
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no terminal streams at all
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as sink:
        try:
            if flush_c is not None:
                flush_c(None)
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            if flush_c is not None:
                flush_c(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            said.append(sink.read(1 << 16).decode("utf-8", "replace"))


def _reader_said(said: list[str]) -> str:
    """The lines a reader printed, without its call chain, as one line."""
    lines = []
    for line in "".join(said).splitlines():
        line = re.sub(r"^(?:\w+: )*", "", line.strip())  # MetaImage: M_Read: ...
        if line and not line.lower().startswith(("error parsing", "cannot parse", "met_read")):
            lines.append(line)
    return " ".join(" ".join(lines).split())[:300]


def _sitk_reason(path: Path, exc: Exception) -> str:
    """What went wrong, from a SimpleITK error: its most specific line, without the call
    chain, source locations, the file name (the message names it) or a stale errno."""
    reasons = []
    for line in str(exc).splitlines():
        line = line.strip()
        for noise in _SITK_NOISE:
            line = noise.sub("", line)
        line = line.replace(f'"{path}"', "").replace(str(path), "").strip(" :.")
        if line.startswith("Reason:") and path.exists():
            continue  # ITK appends strerror(errno) of an earlier call: misleading
        if line and not line.lower().startswith(_SITK_VAGUE):
            reasons.append(line)
    reason = reasons[-1] if reasons else type(exc).__name__
    if reason.startswith("Unable to determine ImageIO reader for"):
        return "SimpleITK finds no reader that takes it (not an image, or cut short or damaged)"
    if reason.startswith("File cannot be read") and path.exists():
        return "the reader cannot read it; it is cut short or damaged"
    return reason


def _sitk_error(path: Path, exc: Exception, doing: str) -> ConversionError:
    return ConversionError(path, f"{doing}: {_sitk_reason(path, exc)}")


def _dicom_not_an_image(path: Path) -> str | None:
    """For a DICOM file SimpleITK cannot read: why, when it is an object without pixels."""
    try:
        import pydicom

        ds = pydicom.dcmread(path, force=True, defer_size=256)
    except Exception:  # pydicom missing or the file damaged: no better reason
        return None
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return None
    kind = getattr(ds.get("SOPClassUID"), "name", None) or str(ds.get("Modality", "")) or "object"
    if "Image" in kind:
        return f"a DICOM {kind} file without its pixel data: it is cut short or damaged"
    return f"not an image: a DICOM {kind} without pixel data"


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
_DICOM_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _dicom_fragments(fh: Any, start: int, size: int) -> int:
    """The number of fragments of encapsulated pixel data starting at ``start``
    (the offset table item first, not counted); -1 when the items run past the
    file's ``size`` bytes or the sequence does not end."""
    import struct

    at, count = start, -1
    while at + 8 <= size:
        fh.seek(at)
        group, elem, length = struct.unpack("<HHI", fh.read(8))
        if (group, elem) == (0xFFFE, 0xE0DD):  # sequence delimiter: the end
            return max(count, 0)
        if (group, elem) != (0xFFFE, 0xE000) or at + 8 + length > size:
            return -1
        count += 1
        at += 8 + length
    return -1


def _dicom_pixel_bytes(name: str) -> int | None:
    """Bytes the voxels of DICOM file ``name`` decode to, checked against its pixel data.

    Refuses (:class:`ConversionError` naming the file) pixel data that are shorter
    than Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated claim
    (uncompressed syntaxes), run past the end of the file, or, encapsulated, hold
    fewer fragments than frames; GDCM fills the missing voxels with zeros without
    a word. ``None`` when pydicom cannot parse the file (GDCM's own checks only).
    """
    import warnings

    import pydicom

    path = Path(name)
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(name, force=True, defer_size=1024)
        if any("End of file reached before delimiter" in str(w.message) for w in said):
            raise ConversionError(
                path,
                "the file ends inside a sequence or its compressed pixel data: it is cut short",
            )
        syntax = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
        # pydicom 3 (see _MIN_VERSIONS): the element as read, its value still deferred
        element = next((ds.get_item(t, keep_deferred=True) for t in _PIXEL_TAGS if t in ds), None)
        if element is None:
            return None
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        length, tell = int(element.length), getattr(element, "value_tell", None)
    except ConversionError:
        raise
    except Exception:  # pydicom raises many types for damaged files
        return None
    if rows <= 0 or cols <= 0 or bits <= 0 or frames <= 0 or samples <= 0:
        return None  # GDCM refuses or makes up its own layout
    claimed = (rows * cols * samples * frames * bits + 7) // 8
    size = path.stat().st_size
    undefined = length == 0xFFFFFFFF
    if syntax == _DICOM_DEFLATED:  # the whole data set is deflated: only its ratio bounds it
        _check_claimed_size(path, claimed, size * _DEFLATE_MAX_RATIO)
        return claimed
    if undefined:  # encapsulated (compressed) frames
        if tell is not None:
            with open(name, "rb") as fh:
                fragments = _dicom_fragments(fh, int(tell), size)
            if fragments < 0:
                raise ConversionError(
                    path, "its compressed pixel data run past the end of the file: it is cut short"
                )
            if fragments < frames:
                raise ConversionError(
                    path,
                    f"it claims {frames} compressed frames but holds {fragments} fragments of "
                    "pixel data: it is cut short or damaged",
                )
        _check_claimed_size(path, claimed, None)
        return claimed
    if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422" and samples == 3:
        claimed = (rows * cols * 2 * frames * bits + 7) // 8  # two values a pixel
    if tell is not None and int(tell) + length > size:
        raise ConversionError(
            path,
            f"its pixel data element claims {length} bytes but the file ends after "
            f"{max(0, size - int(tell))}: it is cut short",
        )
    if length < claimed:
        raise ConversionError(
            path,
            f"its pixel data hold {length} bytes but Rows x Columns x SamplesPerPixel x frames "
            f"x BitsAllocated ({rows} x {cols} x {samples} x {frames} x {bits} bits) need "
            f"{claimed}: it is cut short or its header is damaged",
        )
    return claimed


def _check_dicom_pixels(path: Path, files: list[str]) -> None:
    """Check every file's pixel data (:func:`_dicom_pixel_bytes`) and the series'
    total against memory, before GDCM allocates what the headers claim."""
    _require("pydicom", path)
    total = sum(_dicom_pixel_bytes(name) or 0 for name in files)
    _check_claimed_size(path, total, None)


def _dicom_series(sitk: Any, folder: Path, series: str | None) -> tuple[list[str], str]:
    reader = sitk.ImageSeriesReader
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        kinds = _check_left_out(folder, [], None)
        if kinds:
            raise ConversionError(
                folder,
                f"no DICOM image series in this folder: its DICOM files are "
                f"{', '.join(sorted(set(kinds)))}, not images",
            )
        raise ConversionError(folder, "no DICOM series found in this folder")
    if series is None:
        if len(ids) > 1:
            raise ConversionError(
                folder,
                f"the folder holds {len(ids)} DICOM series ({', '.join(ids)}); "
                "choose one with --series UID",
            )
        series = ids[0]
    elif series not in ids:
        raise ConversionError(folder, f"no series {series!r} here; found {', '.join(ids)}")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), series))
    _check_left_out(folder, files, series)
    return files, series


def _check_left_out(folder: Path, files: list[str], series: str | None) -> list[str]:
    """Refuse a series GDCM read without some of its files (cut short, damaged).

    GDCM leaves a file it cannot parse out of every series without a word, and
    a missing end slice leaves no gap to see; so every DICOM file in the folder
    that is not in the series is opened with pydicom: one of this series, or one
    that cannot be read at all, is named. Other objects (an RT plan, a report)
    are left alone; their kinds are returned. With no series (GDCM found none),
    an image file left out is named.
    """
    taken = {os.path.basename(f) for f in files}
    others = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name in taken or e.name.upper() == "DICOMDIR" or not e.is_file():
                continue
            if e.name.lower().endswith(".dcm") or is_dicom_file(e.path):
                others.append(Path(e.path))
    kinds: list[str] = []
    if not others:
        return kinds
    pydicom = _require("pydicom", folder)
    for other in sorted(others):
        try:
            ds = pydicom.dcmread(other, stop_before_pixels=True, force=True)
            uid = str(ds.get("SeriesInstanceUID", ""))
            if not uid:
                raise ValueError("no SeriesInstanceUID")
        except Exception as exc:  # pydicom raises many types for damaged files
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ConversionError(
                other,
                f"cannot be read as DICOM ({reason}); it may be a slice of the series in "
                f"{folder}: repair or remove it",
            ) from None
        if uid == series:
            raise ConversionError(
                other,
                "a slice of this DICOM series that cannot be read (truncated or damaged); "
                "converting without it would lose the slice",
            )
        kind = getattr(ds.get("SOPClassUID"), "name", None) or str(ds.get("Modality") or "")
        if series is None and "Image" in kind:
            raise ConversionError(
                other, f"a DICOM {kind} file that cannot be read (truncated or damaged)"
            )
        kinds.append(kind or "objects of an unknown kind")
    return kinds


def _rounding_units(texts: list[list[str]]) -> np.ndarray:
    """Per world axis, half a unit of the last decimal the positions ``texts`` (one
    ImagePositionPatient's x, y, z strings per slice) are written to: how far rounding
    may have moved each. The most decimals any slice shows on an axis is the writer's
    precision (a writer trimming zeros writes some with fewer); an axis whose strings are
    the same on every slice has the same rounding on all, which differences cancel: 0."""
    units = np.zeros(3)
    for axis, column in enumerate(zip(*texts, strict=False)):
        if axis >= 3 or len(set(column)) == 1:
            continue
        if any("e" in text.lower() for text in column):
            continue  # exponent notation: no decimals to count
        decimals = max(len(text.strip().partition(".")[2]) for text in column)
        units[axis] = 0.5 * 10.0**-decimals
    return units


def _check_dicom_spacing(path: Path, reader: Any, n: int) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing or repeated slice) or
    do not lie on one line along the slice normal (gantry tilt)."""
    if n < 2:
        return
    try:
        texts = [reader.GetMetaData(i, "0020|0032").split("\\") for i in range(n)]
        pos = np.array([[float(v) for v in text] for text in texts])
        cosines = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    except (RuntimeError, ValueError):
        return  # no positions (e.g. secondary capture): nothing to check against
    normal = np.cross(cosines[:3], cosines[3:])
    normal = normal / (np.linalg.norm(normal) or 1.0)
    # how far the decimals written alone can move a difference of two positions in-plane
    # (an oblique series written to one decimal drifts ~0.1 mm from rounding alone) and a
    # gap from the typical one along the normal; never near a whole step or pixel, so a
    # missing or repeated slice and a real tilt are refused however the positions are written
    units = _rounding_units(texts)
    drift_rounding = 2.0 * float(np.linalg.norm(units))
    gap_rounding = 4.0 * float(np.abs(normal) @ units)
    along = pos @ normal
    gaps = np.diff(along)
    # in-plane drift of each slice from the line through the first along the normal; up to
    # a tenth of a pixel, or the rounding of the written positions, is not a tilt
    drift = np.linalg.norm((pos - pos[0]) - np.outer(along - along[0], normal), axis=1)
    try:
        pixel = min(float(v) for v in reader.GetMetaData(0, "0028|0030").split("\\"))
    except (RuntimeError, ValueError):
        pixel = 0.0
    worst = int(np.argmax(drift))
    if drift[worst] > max(1e-2, 0.1 * pixel, min(1.01 * drift_rounding, 0.5 * pixel)):
        raise ConversionError(
            path,
            f"the DICOM slices do not lie on a line along the slice normal (slice {worst + 1} "
            f"is {drift[worst]:.4g} mm off it in-plane): gantry tilt or a sheared acquisition, "
            "whose geometry a volume with one direction per axis cannot hold; resample it "
            "first (e.g. dcm2niix corrects gantry tilt)",
        )
    if n < 3:
        return
    step = float(np.median(gaps))
    tolerance = max(1e-3, 0.01 * abs(step), min(1.01 * gap_rounding, 0.25 * abs(step)))
    if step == 0 or np.any(np.abs(gaps - step) > tolerance):
        worst = int(np.argmax(np.abs(gaps - step)))
        raise ConversionError(
            path,
            f"the DICOM slices are not evenly spaced (slice {worst + 1} to {worst + 2}: "
            f"{gaps[worst]:.4g} mm, typical {step:.4g} mm); a slice is missing or the series "
            "mixes acquisitions",
        )


def _rescaled_per_slice(sitk: Any, reader: Any, img: Any, n: int) -> Any:
    """The series read again as float64 (as SimpleITK reads a fractional slope) when its
    slices' RescaleSlope/Intercept differ.

    SimpleITK picks the pixel type from the first slice and applies each
    slice's own rescale into it: with a slope of 1 there and 0.37 elsewhere (PET
    stores one per slice) every other slice would be truncated to integers.
    """
    if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        return img

    def values(tag: str, default: float) -> set[float]:
        found = set()
        for i in range(n):
            try:
                found.add(float(reader.GetMetaData(i, tag)))
            except (RuntimeError, ValueError):
                found.add(default)
        return found

    slopes, intercepts = values("0028|1053", 1.0), values("0028|1052", 0.0)
    if len(slopes) == 1 and len(intercepts) == 1:
        return img
    reader.SetOutputPixelType(sitk.sitkFloat64)
    return reader.Execute()


_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage


def _gdcm_miscodes(syntax: str, bits: int, samples: int) -> str | None:
    """Why GDCM (SimpleITK's DICOM reader) decodes pixels of this transfer syntax, bits
    allocated and samples per pixel into wrong values without an error, or ``None``.

    Found against pydicom's ``pixel_array`` on pydicom's test files: 32-bit
    Explicit VR Big Endian data come out with their 16-bit halves swapped, RLE
    colour data of more than 8 bits with the bytes of the colour planes mixed up,
    and 1-bit (BINARY) data as 0/255 instead of 0/1.
    """
    if bits == 1:
        return "1-bit pixels"
    if syntax == "1.2.840.10008.1.2.2" and bits > 16:  # Explicit VR Big Endian
        return f"{bits}-bit big-endian pixels"
    if syntax == "1.2.840.10008.1.2.5" and samples > 1 and bits > 8:  # RLE Lossless
        return f"{bits}-bit RLE colour pixels"
    return None


def _miscoded(files: list[str], layout: Callable[[int], tuple[str, str]]) -> str | None:
    """Why GDCM decodes one of DICOM ``files`` wrongly (:func:`_gdcm_miscodes`), else
    ``None``; ``layout(i)`` gives file i's BitsAllocated and SamplesPerPixel as GDCM read
    them, and only the small file meta group of each file is read again for its syntax."""
    pydicom = _require("pydicom", files[0])
    from pydicom.filereader import read_file_meta_info

    for i, name in enumerate(files):
        try:
            bits, samples = (int(v) for v in layout(i))
        except (RuntimeError, ValueError):
            continue  # no such tags: GDCM made up a layout, not one of those it gets wrong
        if bits != 1 and bits <= 8:
            continue  # GDCM decodes every syntax of these right: no need to look
        try:
            syntax = str(read_file_meta_info(name).get("TransferSyntaxUID", ""))
        except Exception:  # no file meta group: the syntax is in the data set
            try:
                ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
                syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
            except Exception:  # GDCM read it; pydicom's view is only a second opinion
                continue
        why = _gdcm_miscodes(syntax, bits, samples)
        if why is not None:
            return why
    return None


def _seg_number(ds: Any, path: Path) -> int | None:
    """The segment number of a one-segment BINARY DICOM SEG, else ``None``; one of several
    segments, each frame a mask of one of them, is not one image volume: refused."""
    if str(ds.get("SOPClassUID", "")) != _SEG_SOP_CLASS:
        return None
    segments = ds.get("SegmentSequence") or []
    if len(segments) > 1:
        raise ConversionError(
            path,
            f"a DICOM SEG of {len(segments)} segments, each frame a mask of one segment: not "
            "one image volume; convert it with a SEG tool (e.g. dcmqi's segimage2itkimage)",
        )
    if segments and str(ds.get("SegmentationType", "")).upper() == "BINARY":
        return int(segments[0].get("SegmentNumber") or 1)
    return None


def _sitk_layout(get: Callable[..., str], *slice_: int) -> tuple[str, str]:
    """BitsAllocated and SamplesPerPixel from a SimpleITK reader's (or image's) tags."""
    return get(*slice_, "0028|0100"), get(*slice_, "0028|0002")


def _pydicom_pixels(path: Path, files: list[str], data: np.ndarray, why: str) -> np.ndarray:
    """The voxels of DICOM ``files`` decoded by pydicom, for a series or file GDCM decodes
    wrongly (``why``); ``data`` is GDCM's decode, for its shape and dtype.

    Each file's RescaleSlope/Intercept is applied as SimpleITK does; the result
    keeps GDCM's dtype when it holds the values exactly. A layout pydicom cannot
    take the place of GDCM for (another colour space, MONOCHROME1, a DICOM SEG
    of several segments) is refused rather than converted wrong.
    """
    pydicom = _require("pydicom", path)
    planes = []
    try:
        for name in files:
            ds = pydicom.dcmread(name, force=True)
            photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
            if photometric not in ("MONOCHROME2", "RGB"):
                raise ConversionError(
                    path,
                    f"SimpleITK decodes {why} wrongly, and in {photometric or 'this'} colour "
                    "space they are not decoded here otherwise; write the file in another "
                    "transfer syntax first (e.g. dcmconv +te)",
                )
            segment = _seg_number(ds, path)
            pixels = np.asarray(ds.pixel_array)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            if segment is not None:
                pixels = pixels * np.asarray(segment, np.min_scalar_type(segment))
            elif slope != 1 or intercept != 0:
                pixels = pixels * slope + intercept
            planes.append(pixels)
    except ConversionError:
        raise
    except MemoryError:
        raise ConversionError(path, "the image does not fit in memory") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConversionError(
            path, f"SimpleITK decodes {why} wrongly and pydicom cannot decode them: {reason}"
        ) from None
    pixels = np.stack(planes) if len(planes) > 1 else planes[0]
    if pixels.size != data.size:
        raise ConversionError(
            path,
            f"SimpleITK decodes {why} wrongly, and pydicom decodes {pixels.shape} values "
            f"where SimpleITK reads {data.shape}; the file cannot be converted safely",
        )
    pixels = pixels.reshape(data.shape)
    kept = pixels.astype(data.dtype)
    if np.array_equal(kept, pixels):
        return kept
    return pixels.astype(pixels.dtype.newbyteorder("="))


def _sitk_itemsize(sitk: Any, reader: Any) -> int:
    """Bytes per pixel component of the image a SimpleITK reader is about to read."""
    name = sitk.GetPixelIDValueAsString(reader.GetPixelID()).lower()
    for bits, size in (("64", 8), ("32", 4), ("16", 2), ("8", 1)):
        if bits in name:
            return size
    return 8


def _header_fields(path: Path, sep: str) -> dict[str, str]:
    """``key<sep>value`` lines of a text header (NRRD, MetaImage), lower-case keys."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16).decode("latin-1")
    fields = {}
    for line in head.splitlines():
        if not line.strip():
            break  # the end of an attached NRRD header
        key, found, value = line.partition(sep)
        if found:
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break  # the last MetaImage header line: binary data may follow
    return fields


def _sitk_data_bound(path: Path, fmt: str) -> int | None:
    """Most voxel bytes an NRRD or MetaImage file (and its data file) can decode to.

    Raw data hold their size; text at most 8 bytes a character (one digit, a double);
    deflate at most 1032 bytes a byte. ``None`` when it cannot be told (data
    split over several files, bzip2).
    """
    if fmt not in ("nrrd", "metaimage"):
        return None
    fields = _header_fields(path, ":" if fmt == "nrrd" else "=")
    if fmt == "nrrd":
        encoding = fields.get("encoding", "raw").lower()
        data_file = fields.get("data file") or fields.get("datafile")
        deflate = _DEFLATE_MAX_RATIO
        factor = {"raw": 1, "ascii": 8, "text": 8, "txt": 8, "hex": 1, "gzip": deflate}
        ratio = factor.get("gzip" if encoding == "gz" else encoding)
    else:
        data_file = fields.get("elementdatafile")
        compressed = fields.get("compresseddata", "false").lower() == "true"
        ratio = _DEFLATE_MAX_RATIO if compressed else 1
        if data_file is not None and data_file.upper() == "LOCAL":
            data_file = None
    if ratio is None:
        return None
    size = path.stat().st_size
    if data_file is not None:
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            return None
        other = path.parent / data_file
        try:
            size = other.stat().st_size
        except FileNotFoundError:
            raise ConversionError(path, f"its data file {other} does not exist") from None
        except OSError:
            return None
    return size * ratio


def _checking(check: Callable[[Path], None], path: Path) -> Callable[[], None]:
    """Run ``check(path)`` in a thread beside the read (zlib works without the GIL, so
    checking adds no wall time); the returned function waits and raises what it found."""
    import threading

    found: list[BaseException] = []

    def run() -> None:
        try:
            check(path)
        except BaseException as exc:  # handed to the reading thread
            found.append(exc)

    thread = threading.Thread(target=run, name="mlarray-check", daemon=True)
    thread.start()

    def result() -> None:
        thread.join()
        if found:
            raise found[0]

    return result


def _check_metaimage_zlib(path: Path) -> None:
    """Refuse compressed MetaImage data whose zlib checksum fails or that end early.

    MetaIO decodes a damaged stream into wrong voxels without a word; reading the
    stream once here (a chunk at a time) checks its Adler-32 and its end.
    """
    import zlib

    fields = _header_fields(path, "=")
    if fields.get("compresseddata", "false").lower() != "true":
        return
    data_file = fields.get("elementdatafile", "")
    if data_file.upper() == "LOCAL":
        source, start = path, None
    elif data_file and not data_file.upper().startswith("LIST") and "%" not in data_file:
        source, start = path.parent / data_file, 0
    else:
        return  # data split over several files: MetaIO's own checks only
    with open(source, "rb") as fh:
        if start is None:  # after the ElementDataFile line, which ends the header
            head = fh.read(1 << 16)
            at = re.search(rb"ElementDataFile\s*=\s*LOCAL[^\n]*\n", head)
            if at is None:
                return
            fh.seek(at.end())
        inflate, ended = zlib.decompressobj(), False
        try:
            while chunk := fh.read(1 << 20):
                while chunk:
                    if inflate.eof:  # a further zlib stream follows
                        inflate = zlib.decompressobj()
                    inflate.decompress(chunk, 1 << 20)  # the output is thrown away
                    while inflate.unconsumed_tail and not inflate.eof:
                        inflate.decompress(inflate.unconsumed_tail, 1 << 20)
                    chunk = inflate.unused_data if inflate.eof else b""
                    ended = inflate.eof
        except zlib.error as exc:
            raise ConversionError(
                path, f"the compressed voxel data are damaged ({exc}); the file cannot be read"
            ) from None
    if not ended:
        raise ConversionError(path, "the compressed voxel data end early: the file is cut short")


def _release_freed_memory() -> None:
    """Give memory freed by C code back to the system (glibc keeps what GDCM's scan of a
    folder freed, about the size of the series, in its heap, and the volume read next
    does not reuse it); nothing off Linux or where the C library has no ``malloc_trim``
    (musl). ``ctypes.CDLL(None)`` is a TypeError on Windows."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).malloc_trim(0)


class _ImageBuffer:
    """The voxel buffer of a SimpleITK image, kept alive as long as an array on it."""

    def __init__(self, image: Any, view: np.ndarray) -> None:
        self.image = image  # SimpleITK's own view does not keep the image alive
        self.__array_interface__ = view.__array_interface__


def _image_voxels(sitk: Any, img: Any) -> np.ndarray:
    """The voxels of SimpleITK image ``img`` as an array on its own buffer, not a copy
    (``GetArrayFromImage`` held the volume twice, and briefly three times)."""
    return np.asarray(_ImageBuffer(img, sitk.GetArrayViewFromImage(img)))


def _read_sitk(path: Path, fmt: str, series: str | None, fourth_axis: str | None) -> _Loaded:
    sitk = _require("SimpleITK", path)
    notes: list[str] = []
    said: list[str] = []  # what a reader printed itself
    with _quiet_itk(sitk):
        try:
            if path.is_dir():
                files, uid = _dicom_series(sitk, path, series)
                _release_freed_memory()  # GDCM's scan of the folder leaves ~the series behind
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(files)
                reader.MetaDataDictionaryArrayUpdateOn()
                _check_dicom_pixels(path, files)
                img = reader.Execute()
                _check_dicom_spacing(path, reader, len(files))
                img = _rescaled_per_slice(sitk, reader, img, len(files))
                source = {k: reader.GetMetaData(0, k) for k in reader.GetMetaDataKeys(0)}
                source["SeriesInstanceUID"] = uid
                source["number_of_files"] = len(files)
            else:
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                if fmt == "metaimage":  # ITK finds it by the lower-case suffix only
                    reader.SetImageIO("MetaImageIO")
                if fmt == "dicom":
                    _check_dicom_pixels(path, [str(path)])
                with _printed_by_readers(said) if fmt == "metaimage" else contextlib.nullcontext():
                    reader.ReadImageInformation()
                n_voxels = int(np.prod(reader.GetSize(), dtype=np.float64))
                n_values = n_voxels * reader.GetNumberOfComponents()
                _check_claimed_size(
                    path, n_values * _sitk_itemsize(sitk, reader), _sitk_data_bound(path, fmt)
                )
                checked = _checking(_check_metaimage_zlib, path) if fmt == "metaimage" else None
                try:
                    with _printed_by_readers(said) if checked else contextlib.nullcontext():
                        img = reader.Execute()
                finally:
                    if checked is not None:
                        checked()  # raises what the check found, before ITK's error
                source = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
            why = None
            if fmt == "dicom":
                if path.is_dir():
                    why = _miscoded(files, lambda i: _sitk_layout(reader.GetMetaData, i))
                else:
                    files = [str(path)]
                    why = _miscoded(files, lambda i: _sitk_layout(img.GetMetaData))
            reader = None  # a series reader shares its output's buffer: the view would copy it
            data = _image_voxels(sitk, img)
            if fmt == "dicom" and why is not None:
                data = _pydicom_pixels(path, files, data, why)
                notes.append(
                    f"its {why} were decoded with pydicom (SimpleITK decodes them wrongly)"
                )
        except ConversionError:
            raise
        except RuntimeError as exc:
            why = _dicom_not_an_image(path) if fmt == "dicom" and path.is_file() else None
            if why is not None:
                raise ConversionError(path, why) from None
            error = _sitk_error(path, exc, f"cannot read {fmt.upper()}")
            printed = _reader_said(said)
            if printed:
                error = ConversionError(path, f"cannot read {fmt.upper()}: {printed}")
            raise error from None
        except MemoryError:
            raise ConversionError(path, "the image does not fit in memory") from None
    dim = img.GetDimension()
    vector = img.GetNumberOfComponentsPerPixel() > 1
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    origin = np.array(img.GetOrigin(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    n_sp = min(dim, 3)
    if dim > 3:
        off = np.concatenate([direction[:n_sp, n_sp:].ravel(), direction[n_sp:, :n_sp].ravel()])
        if np.any(np.abs(off) > 1e-6):
            raise ConversionError(path, "the direction mixes the time axis with space")
    affine = geometry.compose_affine(spacing[:n_sp], origin[:n_sp], direction[:n_sp, :n_sp])
    # numpy axis of ITK index axis d is (dim - 1 - d)
    index_axes = [dim - 1 - d for d in range(n_sp)]
    nonspatial = [(dim - 1 - d, fourth_axis or "temporal") for d in range(n_sp, dim)]
    if vector:
        nonspatial.append((dim, "channel"))
    # a DICOM's samples per pixel are colours (RGB, YBR decoded to RGB by GDCM, a palette
    # expanded); elsewhere 3 or 4 components of 8 bits are an RGB(A) picture, as ITK writes
    # one, unless a NRRD calls them a "list" (3D Slicer's layers of overlapping segments)
    n_comp = img.GetNumberOfComponentsPerPixel()
    listed = str(source.get("NRRD_kinds[pixel]", "")).strip().lower() == "list"
    colour = vector and (
        fmt == "dicom" or (n_comp in (3, 4) and data.dtype == np.uint8 and not listed)
    )
    if dim > 3:
        source["time_spacing"] = float(spacing[3])
        source["time_origin"] = float(origin[3])
    return _Loaded(
        data=data,
        index_axes=index_axes,
        affine=affine,
        frame="LPS",
        nonspatial=nonspatial,
        source=header_to_source(source),
        fmt=fmt,
        notes=notes,
        sod=(spacing[:n_sp], origin[:n_sp], direction[:n_sp, :n_sp]),
        colour=colour,
    )


def _read(path: Path, series: str | None = None, fourth_axis: str | None = None) -> _Loaded:
    if not path.exists():
        raise ConversionError(path, "no such file or folder")
    if not path.is_file() and not path.is_dir():
        raise ConversionError(path, "not a regular file or folder (a pipe or a device?)")
    if path.is_file() and path.stat().st_size == 0:
        raise ConversionError(path, "the file is empty")
    fmt = "dicom" if path.is_dir() else image_format(path)  # a series folder named x.nrrd too
    if fmt is None or fmt == "mla":
        raise ConversionError(
            path,
            "unsupported input; convert reads .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .dcm "
            "and DICOM series folders",
        )
    if fourth_axis not in (None, "temporal", "channel"):
        raise ConversionError(
            path, f"fourth_axis must be 'temporal' or 'channel', not {fourth_axis!r}"
        )
    if fmt == "nifti":
        return _read_nifti(path, fourth_axis)
    return _read_sitk(path, fmt, series, fourth_axis)


# ----------------------------------------------------------------------------- segmentation guess


def guess_seg(path: str | os.PathLike, data: Any, components: bool = False) -> tuple[bool, str]:
    """Guess whether an image is a label map, and say why.

    A file or folder name with a word such as ``seg``, ``label(s)``,
    ``mask`` or ``gt`` makes a segmentation when the data are integers;
    otherwise integer data with few distinct non-negative values (at most 32
    in a sample) does, unless its voxels have several components
    (``components``: an RGB or vector image, e.g. a colour DICOM secondary
    capture with a handful of colours). Floating-point data never is.

    Returns
    -------
    (bool, str)
        The guess and a short reason to show the user.
    """
    p = Path(path)
    dtype = np.dtype(data.dtype)
    integer = dtype.kind in "iub"
    words = [w for w in re.split(r"[^a-z]+", p.name.lower()) if w]
    parent = p.parent.name.lower()  # a dataset folder such as nnU-Net's labelsTr
    for hit in [next((w for w in words if w in _SEG_WORDS), None), parent]:
        if hit not in _SEG_WORDS:
            continue
        if integer:
            return True, f"the name contains '{hit}' and the data are integers"
        return False, f"the name contains '{hit}' but the data are {dtype} (not integers)"
    if not integer:
        return False, f"the data are {dtype}"
    if components:
        return False, "its voxels have several components (a colour or vector image)"
    flat = np.asarray(data).reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]
    if sample.size and sample.min() >= 0:
        values = np.unique(sample)
        if values.size <= 32:
            return True, f"integer data with only {values.size} distinct values"
    return False, "integer data with many or negative values"


# ----------------------------------------------------------------------------- to MLArray


def _frame_name(coord_system: str | None, path: Any) -> str | None:
    if coord_system is None:
        return None
    cs = coord_system.strip().upper().rstrip("+")
    if cs not in _FRAMES:
        raise ConversionError(path, f"coord_system must be 'RAS' or 'LPS', not {coord_system!r}")
    return cs


def _frame_signs(src: str, dst: str, n: int) -> np.ndarray:
    """Per world axis, the sign that takes frame ``src`` coordinates to frame ``dst``."""
    signs = np.ones(n)
    signs[: min(n, 3)] = (_FRAMES[src] * _FRAMES[dst])[: min(n, 3)]
    return signs


def _flip_frame(affine: np.ndarray, src: str, dst: str) -> np.ndarray:
    """The same affine expressed in world frame ``dst`` instead of ``src`` (3 world axes max)."""
    n = affine.shape[0] - 1
    flip = np.append(_frame_signs(src, dst, n), 1.0)
    return flip[:, np.newaxis] * affine


def _voxel_sizes(linear: np.ndarray, path: Any) -> np.ndarray:
    """The column norms of an affine's linear part; a zero one (no image format can
    place such voxels) is a :class:`ConversionError` naming ``path``."""
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing == 0):
        raise ConversionError(path, "the geometry has a zero voxel size")
    return spacing


def _spacing_origin_direction(
    affine: np.ndarray, path: Any, *, sheared: str | None = None
) -> tuple[np.ndarray, ...]:
    """Column norms and unit columns of an affine.

    Its axes must be orthogonal unless ``sheared`` names the output format that
    stores any direction (NRRD ``space directions``, a MetaImage
    ``TransformMatrix``: SimpleITK writes and reads unit columns that are not
    orthogonal as they are); they must then still span the space.
    """
    n = affine.shape[0] - 1
    linear = affine[:n, :n]
    spacing = _voxel_sizes(linear, path)
    direction = linear / spacing[np.newaxis, :]
    if geometry.is_orthonormal(direction, atol=1e-5):
        return spacing, affine[:n, n].copy(), direction
    if sheared is None:
        raise ConversionError(
            path,
            "the geometry is sheared; DICOM slices cannot store shear, write NIfTI, NRRD or "
            "MetaImage instead",
        )
    if abs(np.linalg.det(direction)) < 1e-6:
        raise ConversionError(
            path,
            f"the voxel axes do not span the space (they are parallel); {sheared} cannot "
            "place such voxels",
        )
    return spacing, affine[:n, n].copy(), direction


def _arranged(
    loaded: _Loaded, axis_order: str, colour_last: bool = False
) -> tuple[Any, list[str], np.ndarray, list[int]]:
    """Transpose to (non-spatial..., spatial in ``axis_order``) and permute the affine to match.

    With ``colour_last``, the ``channel`` axis of a colour picture goes after the spatial
    axes instead (:func:`mlarray.meta.is_colour_axis`: as ITK, PIL and napari hold colour
    pictures, and as the napari plugin shows one RGB layer).
    """
    n_sp = len(loaded.index_axes)
    if axis_order == "zyx":
        index_order = list(range(n_sp))[::-1]
    elif axis_order == "xyz":
        index_order = list(range(n_sp))
    else:
        raise ValueError(f"axis_order must be 'zyx' or 'xyz', not {axis_order!r}")
    rank = {"channel": 0, "temporal": 1}
    ns = sorted(loaded.nonspatial, key=lambda al: (rank.get(al[1], 2), al[0]))
    after = [al for al in ns if colour_last and loaded.colour and al[1] == "channel"]
    ns = [al for al in ns if al not in after]
    perm = [ax for ax, _ in ns] + [loaded.index_axes[d] for d in index_order]
    perm += [ax for ax, _ in after]
    names = ["spatial_x", "spatial_y", "spatial_z"]
    # named for 2-D images too: the index order they were stored in is known on the way back
    labels = [lab for _, lab in ns] + [names[d] if n_sp >= 2 else "spatial" for d in index_order]
    labels += [lab for _, lab in after]
    affine = loaded.affine.copy()
    affine[:n_sp, :n_sp] = loaded.affine[:n_sp, :n_sp][:, index_order]
    return loaded.data.transpose(perm), labels, affine, index_order


def _storage(
    patch_size: Any, chunk_size: Any, block_size: Any, cparams: Any, dparams: Any, meta: Meta
) -> dict[str, Any]:
    """The storage keywords of a conversion to ``.mla`` of the image ``meta`` describes:
    a ``cparams`` dict without a codec or level takes them from the defaults of the
    content (an image or a label map), as ``mlarray convert`` says."""
    if isinstance(cparams, Mapping):
        from mlarray import layout
        from mlarray.io import is_label_map

        cparams = {**layout.default_cparams(is_label_map(meta)), **cparams}
    return {
        "patch_size": patch_size,
        "chunk_size": chunk_size,
        "block_size": block_size,
        "cparams": cparams,
        "dparams": dparams,
    }


def _prepare(
    path: str | os.PathLike,
    *,
    is_seg: bool | None,
    coord_system: str | None,
    axis_order: str,
    fourth_axis: str | None,
    series: str | None,
) -> tuple[Any, Meta, list[str]]:
    """Read ``path`` and return (data view, Meta, notes)."""
    p = Path(path)
    frame = _frame_name(coord_system, p)
    loaded = _read(p, series=series, fourth_axis=fourth_axis)
    reference = axis_order == "reference"
    notes = list(loaded.notes)
    if is_seg is None and loaded.colour:  # guessed from its name and type alone (components)
        is_seg, why = guess_seg(p, loaded.data, components=True)
        if is_seg:
            notes.append(f"treated as a segmentation: {why} (pass --no-seg if it is an image)")
    # a label map (a 3D Slicer .seg.nrrd of 3 overlapping layers) is never a colour
    # picture: its channels stay first, as every multi-channel segmentation's
    data, labels, affine, index_order = _arranged(
        loaded, "xyz" if reference else axis_order, colour_last=not reference and not is_seg
    )
    if frame is not None and frame != loaded.frame:
        affine = _flip_frame(affine, loaded.frame, frame)
    signs = _frame_signs(loaded.frame, frame or loaded.frame, affine.shape[0] - 1)
    frame = frame or loaded.frame
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif not data.dtype.isnative:  # e.g. a big-endian NIfTI: store native byte order
        data = data.astype(data.dtype.newbyteorder("="))
    if is_seg is None:
        is_seg, why = guess_seg(p, data, components=bool(labels) and "channel" in labels)
        if is_seg:
            notes.append(f"treated as a segmentation: {why} (pass --no-seg if it is an image)")
    elif is_seg and data.dtype.kind not in "iu":
        raise ConversionError(p, f"--seg needs integer data, but the data are {data.dtype}")
    if loaded.sod is not None:  # the reader's own spacing/origin/direction, permuted and flipped
        spacing, origin, direction = loaded.sod
        spatial = MetaSpatial(
            spacing=spacing[index_order].tolist(),
            origin=(signs * origin).tolist(),
            direction=(signs[:, np.newaxis] * direction[:, index_order]).tolist(),
            axis_labels=labels,
            coord_system=frame,
        )
    else:
        try:  # NIfTI: column norms and unit columns; direction @ diag(spacing) is the affine
            spacing, origin, direction = _spacing_origin_direction(affine, p)
            spatial = MetaSpatial(
                spacing=spacing.tolist(),
                origin=origin.tolist(),
                direction=direction.tolist(),
                axis_labels=labels,
                coord_system=frame,
            )
        except ConversionError:  # sheared: keep the affine as stored
            spatial = MetaSpatial(affine=affine.tolist(), axis_labels=labels, coord_system=frame)
    if reference:
        data, spatial = _reference_layout(data, spatial, loaded)
    meta = Meta(
        source=MetaSource(data=loaded.source),
        spatial=spatial,
        is_seg=MetaIsSeg(is_seg=bool(is_seg)),
        _image_meta_format=MetaImageFormat(image_meta_format=loaded.fmt),
    )
    return data, meta, notes


def _reference_layout(data: Any, spatial: MetaSpatial, loaded: _Loaded) -> tuple[Any, MetaSpatial]:
    """The array and geometry the reference ``mlarray_convert`` stores (FORMAT.md section 4),
    from an x, y, z arranged image: for 2 or 3 spatial axes and nothing else, reordered by
    :func:`mlarray.geometry.converter_reorientation` in RAS world, the geometry an ``affine``
    into RAS and ``coord_system`` the array's axis codes with ``+`` (``RAS+``); a NRRD without
    an anatomical ``space``, and a 2-D ITK image, keep their voxel order and LPS geometry, as
    the reference keeps them raw. A 4-D NIfTI becomes x, y, z, t as the reference stores it
    (no axis labels, time a fourth axis of the affine: ``pixdim[4]``, ``toffset``). Other
    images stay as arranged."""
    n = len(loaded.index_axes)
    dim = loaded.source.get("dim") if loaded.fmt == "nifti" else None
    dim0 = dim[0] if isinstance(dim, list) and dim else None
    timed = dim0 == 4 and n == 3 and len(loaded.nonspatial) == 1 and data.ndim == 4
    if (loaded.nonspatial and not timed) or n not in (2, 3):
        return data, spatial
    if timed:
        data = np.moveaxis(data, 0, -1)  # arranged t, x, y, z
    affine = geometry.compose_affine(spatial.spacing, spatial.origin, spatial.direction, ndim=n)
    if spatial.affine is not None:
        affine = np.asarray(spatial.affine, dtype=np.float64)
    if n == 3 and dim0 == 2 and data.shape[2] == 1:
        n, data, affine = 2, data[:, :, 0], affine[np.ix_([0, 1, 3], [0, 1, 3])]  # 2-D NIfTI
    labels = ["spatial_x", "spatial_y", "spatial_z"][:n]
    frame = spatial.coord_system or loaded.frame
    no_space = loaded.fmt == "nrrd" and "NRRD_space" not in loaded.source
    if loaded.fmt != "nifti" and (n == 2 or no_space):
        return data, MetaSpatial(affine=affine.tolist(), axis_labels=labels, coord_system=frame)
    ras = _into_frame(affine, frame, "RAS")
    axes, flips = geometry.converter_reorientation(ras[:n, :n])
    shape = [data.shape[a] for a in axes]
    extra = list(range(n, data.ndim))
    out = data.transpose(axes + extra)
    out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    new = np.eye(n + 1)
    new[:n, n] = ras[:n, n]
    for i, (a, f) in enumerate(zip(axes, flips, strict=True)):
        new[:n, i] = -ras[:n, a] if f else ras[:n, a]
        if f:
            new[:n, n] += ras[:n, a] * (shape[i] - 1)
    codes = "".join(
        ("RL", "AP", "SI")[w][0 if sign > 0 else 1]
        for w, sign in geometry.axis_world_map(new[:n, :n] / np.linalg.norm(new[:n, :n], axis=0))
    )
    if timed:
        pixdim, toffset = loaded.source.get("pixdim"), loaded.source.get("toffset")
        step = _positive(pixdim[4] if isinstance(pixdim, list) and len(pixdim) > 4 else 1.0, 1.0)
        timed_affine = np.eye(5)
        timed_affine[:3, :3], timed_affine[:3, 4] = new[:3, :3], new[:3, 3]
        timed_affine[3, 3], timed_affine[3, 4] = step, _finite(toffset, 0.0)
        return out, MetaSpatial(affine=timed_affine.tolist(), coord_system=codes + "+")
    return out, MetaSpatial(affine=new.tolist(), axis_labels=labels, coord_system=codes + "+")


def from_file(
    path: str | os.PathLike,
    *,
    is_seg: bool | None = None,
    coord_system: str | None = None,
    axis_order: str = "zyx",
    fourth_axis: str | None = None,
    series: str | None = None,
    patch_size: Any = "default",
    chunk_size: Any = None,
    block_size: Any = None,
    cparams: Any = None,
    dparams: Any = None,
    notes: list[str] | None = None,
) -> MLArray:
    """Read a NIfTI, NRRD, MetaImage or DICOM image into an in-memory :class:`MLArray`.

    Parameters
    ----------
    path : str or Path
        ``.nii``/``.nii.gz`` (nibabel), ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``,
        ``.dcm`` or a DICOM series folder (SimpleITK).
    is_seg : bool, optional
        Mark the result as a label map. ``None`` guesses from the name and the
        data (see :func:`guess_seg`); the reason is appended to ``notes``.
    coord_system : {"RAS", "LPS"}, optional
        World frame to store the geometry in. ``None`` keeps the file's own:
        RAS for NIfTI, LPS for the others.
    axis_order : {"zyx", "xyz", "reference"}
        Order of the spatial array axes: ``zyx`` (SimpleITK's numpy order, the
        default) or ``xyz`` (NIfTI's own order); ``reference`` stores what the
        reference ``mlarray_convert`` stores (its x, y, z layout and RAS
        affine with axis codes, as ``mlarray_convert`` here does; then
        ``coord_system`` is not used).
    fourth_axis : {"temporal", "channel"}, optional
        What a fourth image dimension is (NIfTI ``dim[4]``, a 4-D NRRD or
        MetaImage). ``None`` means time, as the formats define it.
    series : str, optional
        The SeriesInstanceUID to read from a folder that holds several series.
    patch_size, chunk_size, block_size, cparams, dparams
        Storage options, as for :class:`MLArray`, except that a ``cparams`` dict
        without ``codec`` (or ``clevel``) takes it from the defaults of the content
        (:func:`mlarray.layout.default_cparams` of the image or label map), as the
        ``mlarray convert`` options say.
    notes : list of str, optional
        Receives what the user should be told (a guessed segmentation, a
        NIfTI sform/qform mismatch).

    Returns
    -------
    MLArray
        With the source header in ``meta.source`` and the geometry in
        ``meta.spatial`` (``coord_system`` set); non-spatial axes first, except the
        colours of a colour picture, last (``axis_order`` ``zyx`` or ``xyz``).

    Raises
    ------
    ConversionError
        (a ValueError) naming the file: missing, unsupported, damaged, or a
        DICOM series with missing slices.
    """
    data, meta, told = _prepare(
        path,
        is_seg=is_seg,
        coord_system=coord_system,
        axis_order=axis_order,
        fourth_axis=fourth_axis,
        series=series,
    )
    if notes is not None:
        notes.extend(told)
    image_format = meta._image_meta_format.copy()  # the constructor keeps user fields only
    img = MLArray(
        np.ascontiguousarray(data),
        meta=meta,
        **_storage(patch_size, chunk_size, block_size, cparams, dparams, meta),
    )
    with _meta_internal_write():
        img.meta._image_meta_format = image_format
    return img


# ----------------------------------------------------------------------------- from MLArray


def _index_axes_of(labels: list[str] | None, spatial: list[int]) -> list[int]:
    """Array axes of voxel index i, j[, k] (x, y[, z]) for writing; reversed order unless
    labelled (``spatial_x``, ``spatial_y`` and, for 3-D, ``spatial_z`` on the spatial axes)."""
    if labels is not None and len(spatial) in (2, 3):
        named = {lab: ax for ax, lab in enumerate(labels)}
        wanted = [f"spatial_{c}" for c in "xyz"[: len(spatial)]]
        if all(w in named for w in wanted) and sorted(named[w] for w in wanted) == spatial:
            return [named[w] for w in wanted]
    return spatial[::-1]


def _world_frame(spatial: MetaSpatial, notes: list[str], source_format: str | None = None) -> str:
    """The anatomical frame an MLArray's geometry lives in (FORMAT.md section 4).

    :attr:`MetaSpatial.world_frame` decides (the reference converter's array
    codes over a RAS affine read as RAS); a reference-converted NRRD without
    ``coord_system`` is in its own (LPS) space; otherwise RAS is assumed. The
    last two are said.
    """
    frame = spatial.world_frame
    if frame is not None:
        return frame
    if spatial.affine is not None:
        frame = geometry.anatomical_frame(
            spatial.coord_system, spatial.affine, source_format=source_format
        )
        if frame is not None:
            notes.append(
                f"the file has no coord_system; its geometry was taken as {frame}, the space of "
                "the NRRD it was converted from"
            )
            return frame
    if spatial.coord_system:
        notes.append(
            f"coord_system {spatial.coord_system!r} is not an anatomical frame; its geometry "
            "was taken as RAS"
        )
    else:
        notes.append("the file has no coord_system; its geometry was taken as RAS")
    return "RAS"


def _into_frame(affine: np.ndarray, frame: str, target: str) -> np.ndarray:
    """``affine`` (world frame ``frame``, any anatomical code) re-expressed in ``target``."""
    n = affine.shape[0] - 1
    if n != 3:  # 1-D/2-D geometry: only a RAS <-> LPS sign flip is meaningful
        return _flip_frame(affine, frame, target) if frame in _FRAMES else affine
    change = np.eye(4)
    change[:3, :3] = geometry.frame_matrix(target).T @ geometry.frame_matrix(frame)
    return change @ affine


def _tmp_dir_for(target: Path) -> Path:
    """A new folder next to ``target`` to write into, with the umask's permissions.

    ``tempfile.mkdtemp`` makes it 0700, and a DICOM series folder is this
    folder renamed into place: it must get the mode a plain ``mkdir`` gives.
    """
    for _ in range(100):
        path = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _error_of(target, exc) from None
        return path
    raise ConversionError(target, f"cannot make a temporary folder in {target.parent}")


def _error_of(target: Path, exc: Exception) -> ConversionError:
    """A writing error named after the output the user asked for, not the hidden
    temporary file or folder it was being written as."""
    if isinstance(exc, ConversionError):
        text = str(exc)
        if exc.path is not None and text.startswith(f"{exc.path}: "):
            text = text[len(exc.path) + 2 :]
        return ConversionError(target, text)
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
    return ConversionError(target, f"cannot write: {reason}")


def _written_name(target: Path) -> str:
    """The name to write ``target`` as: its suffix in lower case.

    SimpleITK picks the writer, and MetaImage's single-file or header+data
    layout, from the lower-case suffix only (``X.MHA`` would become ``X.mhd``
    plus ``X.zraw``); the file is renamed to ``target`` when published.
    """
    stem, suffix = split_suffix(target.name)
    return stem + suffix.lower()


def _publish(tmpdir: Path, written: str, target: Path, overwrite: bool) -> None:
    """Move every file written in ``tmpdir`` next to ``target``, the header (``written``) last.

    A data file written beside the header (``X.zraw`` of ``X.mhd``) does not
    replace an existing file of that name unless ``overwrite``.
    """
    others = [p for p in tmpdir.iterdir() if p.name != written]
    if not overwrite:
        for p in others:
            if os.path.lexists(target.parent / p.name):
                raise ConversionError(
                    target,
                    f"its data file {p.name} exists already beside it (use --overwrite to "
                    "replace it)",
                )
    for p in others:
        os.replace(p, target.parent / p.name)
    os.replace(tmpdir / written, target)


def _source_for(meta: Meta, fmt: str) -> dict[str, Any]:
    """The source header entries to hand back when writing ``fmt`` (same family only)."""
    src = meta.source.data or {}
    if (meta._image_meta_format.image_meta_format or "") != fmt:
        return {}
    return src


_NIFTI_KEEP = (
    "descrip",
    "aux_file",
    "intent_code",
    "intent_p1",
    "intent_p2",
    "intent_p3",
    "intent_name",
    "xyzt_units",
    "cal_min",
    "cal_max",
    "slice_code",
    "slice_start",
    "slice_end",
    "slice_duration",
    "toffset",
    "dim_info",
)


def _nifti_4d_source(meta: Meta) -> bool:
    """Whether the image came from a 4-D NIfTI (its channels were ``dim[4]``, not vectors)."""
    dim = _source_for(meta, "nifti").get("dim")
    return isinstance(dim, list) and bool(dim) and dim[0] == 4


def _nifti_shape(meta: Meta, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without the trailing 1s a NIfTI source did not have (a 2-D NIfTI read as
    ``(x, y, 1)`` goes back as ``(x, y)``)."""
    dim = _source_for(meta, "nifti").get("dim")
    if not (isinstance(dim, list) and dim and isinstance(dim[0], int) and 1 <= dim[0] < 8):
        return shape
    n = dim[0]
    if len(shape) > n and all(v == 1 for v in shape[n:]):
        return shape[:n]
    return shape


def _as_2d_source(meta: Meta, data: _Layout, affine: np.ndarray) -> tuple[_Layout, np.ndarray]:
    """A ``(1, j, i)`` image of a 2-D NIfTI as the 2-D image SimpleITK reads from that NIfTI
    (when its third axis is apart from the other two), else unchanged."""
    dim = _source_for(meta, "nifti").get("dim")
    separate = not np.any(affine[:2, 2]) and not np.any(affine[2, :2])
    if isinstance(dim, list) and dim and dim[0] == 2 and data.shape[0] == 1 and separate:
        return data.reshape(data.shape[1:]), affine[np.ix_([0, 1, 3], [0, 1, 3])]
    return data, affine


#: bytes of voxels an export reads and writes at a time (a slab of whole chunks if they fit)
_SLAB_BYTES = 64 * 2**20


class _Layout:
    """An image's voxels in the layout a writer puts them in (a transpose of the stored
    axes, with axes of length 1 added or dropped), read from the file a slab at a time.

    ``transpose`` and ``reshape`` (which may only add or drop axes of length 1) change
    the layout without reading anything; :meth:`boxes` gives its slabs in a file's order,
    :meth:`read` reads one, :meth:`to_array` all into one array.
    """

    def __init__(self, img: MLArray):
        self._img = img
        self._store = io.streaming_store(img)  # read once: no map held resident
        self._src_shape = tuple(int(n) for n in img.shape)
        self.shape = self._src_shape
        self.dtype = np.dtype(img.dtype)
        # the stored axis of each output axis longer than 1, in output order
        self._order = [a for a, n in enumerate(self._src_shape) if n != 1]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def _with(self, shape: tuple[int, ...], order: list[int]) -> _Layout:
        new = object.__new__(_Layout)
        new.__dict__.update(self.__dict__)
        new.shape, new._order = tuple(int(n) for n in shape), order
        return new

    def transpose(self, axes: Sequence[int]) -> _Layout:
        axes = list(axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} do not permute {self.ndim} axes")
        long = [a for a in range(self.ndim) if self.shape[a] != 1]
        order = [self._order[long.index(a)] for a in axes if self.shape[a] != 1]
        return self._with(tuple(self.shape[a] for a in axes), order)

    def reshape(self, shape: Sequence[int]) -> _Layout:
        if [n for n in shape if n != 1] != [n for n in self.shape if n != 1]:
            raise ValueError(f"cannot lay out {self.shape} as {tuple(shape)}")
        return self._with(tuple(shape), self._order)

    def read(self, box: Sequence[tuple[int, int]]) -> np.ndarray:
        """The voxels of ``box`` (a (start, stop) per output axis) in the output layout."""
        long_out = [a for a in range(self.ndim) if self.shape[a] != 1]
        of_src = dict(zip(self._order, long_out, strict=True))
        key = tuple(
            slice(*box[of_src[a]]) if a in of_src else slice(0, 1)
            for a in range(len(self._src_shape))
        )
        block = np.asarray(self._img._read(self._store, key))
        block = block.reshape([block.shape[a] for a in range(block.ndim) if a in of_src])
        src_long = sorted(of_src)
        block = block.transpose([src_long.index(a) for a in self._order])
        return block.reshape([stop - start for start, stop in box])

    def _step(self, axis: int, inner: int) -> int:
        """How many indices of output ``axis`` a slab takes, ``inner`` bytes each: whole
        chunks (else blocks) of the stored axis under it, within the slab budget."""
        step = max(1, _SLAB_BYTES // max(inner, 1))
        long_out = [a for a in range(self.ndim) if self.shape[a] != 1]
        src = self._order[long_out.index(axis)]
        for grid in ("chunks", "blocks"):
            c = getattr(self._store, grid, None)
            if c is not None and 1 < c[src] <= step:
                return step // c[src] * c[src]
        blocks = getattr(self._store, "blocks", None)
        if blocks is not None and blocks[src] * inner <= 4 * _SLAB_BYTES:
            return blocks[src]  # a block decoded for part of it would be decoded again
        return step

    def boxes(self, fortran: bool, whole_last: bool = False) -> Iterator[list[tuple[int, int]]]:
        """The slabs that cover the image in a file's order: C order (the first axis
        slowest, as ITK's arrays) or Fortran order (the last slowest, as NIfTI's);
        ``whole_last`` keeps the last axis whole and fastest (the colours of a voxel)."""
        n = self.ndim - whole_last
        slow = [a for a in (range(n)[::-1] if fortran else range(n)) if self.shape[a] != 1]
        box = [(0, s) for s in self.shape]
        item = self.dtype.itemsize * (self.shape[-1] if whole_last else 1)
        if self.size == 0:
            return

        def walk(level: int) -> Iterator[list[tuple[int, int]]]:
            if level == len(slow):
                yield list(box)
                return
            a = slow[level]
            inner = item * math.prod(self.shape[b] for b in slow[level + 1 :])
            if inner > _SLAB_BYTES and level + 1 < len(slow):
                for i in range(self.shape[a]):  # one index at a time, finer below
                    box[a] = (i, i + 1)
                    yield from walk(level + 1)
            else:
                step = self._step(a, inner)
                for start in range(0, self.shape[a], step):
                    box[a] = (start, min(start + step, self.shape[a]))
                    yield list(box)
            box[a] = (0, self.shape[a])

        yield from walk(0)

    def to_array(self, dtype: np.dtype) -> np.ndarray:
        """The whole image as one C-order array of ``dtype``, filled a slab at a time."""
        out = np.empty(self.shape, dtype=dtype)
        for box in self.boxes(fortran=False):
            out[tuple(slice(*b) for b in box)] = self.read(box)
        return out

    def extrema(self) -> tuple[Any, Any]:
        """(min, max) of the voxels, read a slab at a time (None, None when empty)."""
        lo = hi = None
        for box in self.boxes(fortran=False):
            block = self.read(box)
            lo = block.min() if lo is None else min(lo, block.min())
            hi = block.max() if hi is None else max(hi, block.max())
        return lo, hi


def _out_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an image of ``dtype`` is written in, one every output format holds: a bool
    mask as uint8, float16 as float32 (neither NIfTI nor ITK stores them), a big-endian
    array (the reference's conversion of a big-endian NIfTI) in native byte order (ITK
    takes no other); others unchanged."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.kind == "f" and dtype.itemsize == 2:
        return np.dtype(np.float32)
    return dtype.newbyteorder("=") if dtype.fields is None else dtype


def _common_dtype(data: np.ndarray) -> np.ndarray:
    """``data`` in :func:`_out_dtype` (the same array when it is that already)."""
    return data.astype(_out_dtype(data.dtype), copy=False)


def _one_array(data: _Layout | np.ndarray) -> np.ndarray:
    """``data`` as the one C-order array in :func:`_out_dtype` that SimpleITK copies from:
    a layout read into it a slab at a time (no whole-volume read, transpose and copy)."""
    if isinstance(data, _Layout):
        return data.to_array(_out_dtype(data.dtype))
    return np.ascontiguousarray(_common_dtype(data))


def _nifti_colours(data: np.ndarray) -> np.ndarray:
    """8-bit colour components on the last axis as NIfTI's RGB24 (3) or RGBA32 (4) voxels,
    the structured dtype nibabel reads and writes them as."""
    names = "RGBA"[: data.shape[-1]]
    out = np.empty(data.shape[:-1], dtype=[(c, np.uint8) for c in names])
    for k, c in enumerate(names):
        out[c] = data[..., k]
    return out


class _Shape:
    """What nibabel needs of an image to fill its header: a shape and a dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)


def _write_nifti(
    data: _Layout,
    affine_ras: np.ndarray,
    meta: Meta,
    target: Path,
    time: tuple[float, float] | None,
    vector: bool,
    colour: bool,
) -> None:
    """Write ``data`` (its colours on a last axis when ``colour``) as a NIfTI-1 file, the
    header by nibabel, the voxels a slab at a time (through gzip for ``.nii.gz``)."""
    nib = _require("nibabel", target)
    from nibabel.openers import Opener
    from nibabel.volumeutils import seek_tell

    dtype = _out_dtype(data.dtype)
    shape = data.shape[:-1] if colour else data.shape
    if colour:  # NIfTI's RGB24 / RGBA32 voxels, as nibabel reads and writes them
        dtype = np.dtype([(c, np.uint8) for c in "RGBA"[: data.shape[-1]]])
    elif dtype.kind in "iu" and dtype.itemsize == 8 and data.size:
        lo, hi = data.extrema()  # int64 in int32 when the values fit (more readers take it)
        if dtype.kind == "i" and lo >= -(2**31) and hi < 2**31:
            dtype = np.dtype(np.int32)
        elif dtype.kind == "u" and hi < 2**32:
            dtype = np.dtype(np.uint32)
    img = nib.Nifti1Image(_Shape(shape, dtype), affine_ras, dtype=dtype)
    hdr = img.header
    src = _source_for(meta, "nifti")
    for key in _NIFTI_KEEP:
        if src.get(key) is not None:
            with contextlib.suppress(Exception):
                hdr[key] = src[key]
    pixdim = src.get("pixdim")
    if isinstance(pixdim, list) and len(pixdim) == 8 and data.ndim >= 4:
        hdr["pixdim"][4:] = [v if v is not None else 1.0 for v in pixdim[4:]]
    if time is not None:  # seconds; in the source's own time unit for a NIfTI source
        if not src:
            hdr.set_xyzt_units("mm", "sec")
        unit = _nifti_time_unit(hdr["xyzt_units"])
        hdr["pixdim"][4] = time[0] / unit
        hdr["toffset"] = time[1] / unit
    if vector:  # as SimpleITK writes a vector image (and reads it back as one)
        hdr.set_intent("vector")
    elif colour:  # RGB24/RGBA32 as nibabel writes them: a source's vector intent (SimpleITK's
        # RGB picture) on them made ITK overrun its buffer and end the process
        hdr.set_intent("none")
    sform = int(src.get("sform_code") or 1)
    qform = int(src.get("qform_code") or 1)
    img.set_sform(affine_ras, code=sform)
    # The qform cannot hold shear: nibabel stores the nearest rotation. ITK reads a NIfTI
    # through its qform when the sform is sheared, so a qform is always written.
    try:
        img.set_qform(affine_ras, code=qform, strip_shears=True)
    except (nib.spatialimages.HeaderDataError, np.linalg.LinAlgError):
        img.set_qform(None, code=0)  # an affine nibabel cannot decompose: sform only
    img.update_header()
    hdr = img.header
    hdr.set_slope_inter(1.0, 0.0)  # unscaled, as nibabel's writer records such an array
    on_disk = hdr.get_data_dtype()  # dtype in the header's byte order
    with Opener(str(target), "wb") as f:
        hdr.write_to(f)
        seek_tell(f, hdr.get_data_offset(), write0=True)
        for box in data.boxes(fortran=True, whole_last=colour):
            block = data.read(box)
            if colour:
                block = _nifti_colours(block)
            f.write(block.astype(on_disk, copy=False).tobytes(order="F"))
            del block


# NIfTI xyzt_units time codes (bits 0x38) in seconds: sec, msec, usec
_NIFTI_TIME_UNITS = {8: 1.0, 16: 1e-3, 24: 1e-6}


def _nifti_time_unit(xyzt_units: Any) -> float:
    """Seconds per unit of a NIfTI header's time values (1 when unknown), as ITK reads them."""
    try:
        return _NIFTI_TIME_UNITS.get(int(xyzt_units) & 0x38, 1.0)
    except (TypeError, ValueError):
        return 1.0


def _positive(value: Any, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) and v > 0 else default


def _finite(value: Any, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _time_from_space(
    target: Path, meta: Meta, spatial: list[int], affine: np.ndarray
) -> tuple[list[int], list[int], dict[str, Any] | None]:
    """Time stored as a fourth "spatial" axis (the reference converter's 4-D NIfTI).

    With an anatomical frame, spatial axes beyond the three that run along
    its world axes are time: returns the anatomical spatial axes, that time
    axis and ``{"step", "origin", "affine"}`` (its scale and offset, the 3-D
    affine). Otherwise the axes unchanged, no time axis and None.
    """
    if len(spatial) <= 3 or meta.spatial.world_frame is None:
        return spatial, [], None
    try:
        keep, extra, sub = geometry.anatomical_part(affine)
    except MLArrayError as exc:
        raise ConversionError(target, f"{len(spatial)} spatial axes: {exc}") from None
    if len(keep) != 3 or len(extra) != 1:
        return spatial, [], None
    j, n = extra[0], len(spatial)
    step, origin = abs(float(affine[3:n, j].sum())), float(affine[3, n])
    found = {"step": step, "origin": origin, "affine": sub}
    return [spatial[k] for k in keep], [spatial[j]], found


def _time_axis(meta: Meta, in_space: dict[str, Any] | None) -> tuple[float, float]:
    """(time step, time origin) in seconds, as SimpleITK gives them, of an image with time.

    From a NIfTI source's ``pixdim[4]``/``toffset`` in its ``xyzt_units``
    (or the reference's fourth spatial axis, in those units), an ITK
    source's time spacing and origin, else 1 and 0.
    """
    src = meta.source.data or {}
    fmt = meta._image_meta_format.image_meta_format or ""
    if fmt == "nifti":
        unit = _nifti_time_unit(src.get("xyzt_units"))
        pixdim = src.get("pixdim")
        step = pixdim[4] if isinstance(pixdim, list) and len(pixdim) == 8 else None
        origin = src.get("toffset")
    else:
        unit, step, origin = 1.0, src.get("time_spacing"), src.get("time_origin")
    if in_space is not None:
        step, origin = in_space["step"], in_space["origin"]
    return _positive(step, 1.0) * unit, _finite(origin, 0.0) * unit


def _write_sitk(
    data: _Layout | np.ndarray,
    affine_lps: np.ndarray,
    time: tuple[float, float] | None,
    vector: bool,
    meta: Meta,
    fmt: str,
    target: Path,
) -> None:
    sitk = _require("SimpleITK", target)
    n_sp = affine_lps.shape[0] - 1
    spacing, origin, direction = _spacing_origin_direction(
        affine_lps, target, sheared={"nrrd": "NRRD"}.get(fmt, "MetaImage")
    )
    full_dir = np.eye(n_sp + (time is not None))
    full_dir[:n_sp, :n_sp] = direction
    sp = list(spacing) + ([time[0]] if time is not None else [])
    og = list(origin) + ([time[1]] if time is not None else [])
    with _quiet_itk(sitk):
        try:
            if isinstance(data, _Layout) and data.size:
                # SimpleITK writes the header of a one-voxel image of the same kind,
                # the voxels follow a slab at a time
                tiny = np.zeros((1,) * (data.ndim - vector) + data.shape[data.ndim - vector :])
                img = sitk.GetImageFromArray(tiny.astype(_out_dtype(data.dtype)), isVector=vector)
            else:
                img = sitk.GetImageFromArray(_one_array(data), isVector=vector)
            img.SetSpacing([float(v) for v in sp])
            img.SetOrigin([float(v) for v in og])
            img.SetDirection([float(v) for v in full_dir.ravel()])
            for key, value in _source_for(meta, fmt).items():
                if (
                    isinstance(key, str)  # source dicts may have int keys (a label map)
                    and isinstance(value, str)
                    and not key.startswith(("NRRD_", "ITK_"))
                ):
                    img.SetMetaData(key, value)
            sitk.WriteImage(img, str(target), useCompression=True)
        except (RuntimeError, TypeError) as exc:
            raise _sitk_error(target, exc, f"cannot write {fmt.upper()}") from None
    if isinstance(data, _Layout) and data.size:
        _stream_itk_voxels(data, vector, fmt, target)


#: zlib level of the voxels of a NRRD / MetaImage export (fast, as nibabel writes .nii.gz)
_ITK_ZLIB_LEVEL = 1


def _stream_itk_voxels(data: _Layout, vector: bool, fmt: str, target: Path) -> None:
    """Put the voxels of ``data`` in the NRRD / MetaImage ``target`` that SimpleITK wrote
    for one voxel: its sizes become the image's, its gzip (NRRD) or zlib (MetaImage) data
    the whole image, compressed a slab at a time (the data file beside a ``.nhdr`` /
    ``.mhd``, else after the header)."""
    import zlib

    dtype = _out_dtype(data.dtype)
    itk_sizes = [str(n) for n in data.shape[: data.ndim - vector][::-1]]
    raw = target.read_bytes()
    nrrd = fmt == "nrrd"
    try:  # the header: up to its blank line (NRRD), its ElementDataFile line (MetaImage)
        end = (
            raw.index(b"\n\n") + 2
            if nrrd
            else raw.index(b"\n", raw.index(b"ElementDataFile = ")) + 1
        )
    except ValueError:
        end = len(raw)  # a detached NRRD header (.nhdr) may end without a blank line
    header = raw[:end].decode("latin-1")
    lines = header.split("\n")
    comps = [str(data.shape[-1])] if vector else []
    if nrrd:
        want, key = "sizes: " + " ".join(comps + ["1"] * len(itk_sizes)), "sizes: "
        new = "sizes: " + " ".join(comps + itk_sizes)
        data_key = "data file: "
    else:
        want, key = "DimSize = " + " ".join(["1"] * len(itk_sizes)), "DimSize = "
        new = "DimSize = " + " ".join(itk_sizes)
        data_key = "ElementDataFile = "
    at = [i for i, line in enumerate(lines) if line.startswith(key)]
    if len(at) != 1 or lines[at[0]] != want:
        raise ConversionError(target, f"cannot write {fmt.upper()}: unexpected header from ITK")
    lines[at[0]] = new
    named = [line[len(data_key) :] for line in lines if line.startswith(data_key)]
    beside = named[0] if named and named[0] != "LOCAL" else None
    packer = zlib.compressobj(_ITK_ZLIB_LEVEL, zlib.DEFLATED, 31 if nrrd else 15)
    # the voxels: into the data file beside the header, else (MetaImage needs their
    # compressed size in its header) a scratch file copied after the header
    body = target.parent / (beside if beside else f".{target.name}.voxels")
    size = 0
    with open(body, "wb") as f:
        for box in data.boxes(fortran=False, whole_last=vector):
            packed = packer.compress(data.read(box).astype(dtype, copy=False).tobytes())
            size += len(packed)
            f.write(packed)
            del packed
        tail = packer.flush()
        size += len(tail)
        f.write(tail)
    if not nrrd:
        at = [i for i, line in enumerate(lines) if line.startswith("CompressedDataSize = ")]
        if len(at) != 1:
            raise ConversionError(target, "cannot write MetaImage: unexpected header from ITK")
        lines[at[0]] = f"CompressedDataSize = {size}"
    with open(target, "wb") as f:
        f.write("\n".join(lines).encode("latin-1"))
        if beside is None:
            with open(body, "rb") as voxels:
                shutil.copyfileobj(voxels, f, 2**22)
    if beside is None:
        body.unlink()


# DICOM tags copied from a DICOM source into a written series: patient and study only
_DICOM_KEEP = (
    "0008|0020",  # study date
    "0008|0030",  # study time
    "0008|0050",  # accession number
    "0008|0060",  # modality
    "0008|1030",  # study description
    "0010|0010",  # patient name
    "0010|0020",  # patient ID
    "0010|0030",  # birth date
    "0010|0040",  # sex
    "0020|000d",  # study instance UID
    "0020|0010",  # study ID
    "0020|0052",  # frame of reference UID
)


def _new_uid() -> str:
    """A new DICOM UID (the UUID-derived ``2.25.`` form, no registered root needed)."""
    import uuid

    return f"2.25.{uuid.uuid4().int}"


def _write_dicom(
    data: _Layout | np.ndarray, affine_lps: np.ndarray, meta: Meta, folder: Path
) -> None:
    """Write a 3-D (k, j, i) array as a DICOM series, one file per slice, into ``folder``;
    a (k, j, i, c) array of 8-bit colours as RGB slices (3 samples per pixel)."""
    sitk = _require("SimpleITK", folder)
    dtype = _out_dtype(data.dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 4:
        raise ConversionError(
            folder, f"DICOM output needs 8, 16 or 32-bit integers; the image is {dtype}"
        )
    if data.ndim == 4 and data.shape[-1] != 3:
        raise ConversionError(
            folder,
            f"DICOM output holds RGB colour pictures, not {data.shape[-1]} colour components "
            "(RGBA); write NIfTI, NRRD or MetaImage instead",
        )
    spacing, origin, direction = _spacing_origin_direction(affine_lps, folder)
    src = _source_for(meta, "dicom")
    common = {key: str(src[key]) for key in _DICOM_KEEP if isinstance(src.get(key), str)}
    common.setdefault("0008|0060", "OT")
    common.setdefault("0020|000d", _new_uid())
    common.setdefault("0020|0052", _new_uid())
    common.update(
        {
            "0008|0008": "DERIVED\\SECONDARY",
            "0008|103e": "converted from .mla by mlarray",
            "0020|000e": _new_uid(),
            "0020|0037": "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1])),
            "0018|0050": f"{spacing[2]:.10g}",
            # rows apart (j), then columns apart (i): without it GDCM keeps the in-plane
            # size of a Secondary Capture only as NominalScannedPixelSpacing, which
            # readers other than GDCM (nibabel, dcm2niix, viewers) do not take
            "0028|0030": f"{spacing[1]:.10g}\\{spacing[0]:.10g}",
        }
    )
    with _quiet_itk(sitk):
        try:
            vector = data.ndim == 4
            # the geometry of the volume (one voxel of it: only its index -> point is used)
            grid = sitk.GetImageFromArray(np.zeros((1,) * 3 + data.shape[3:], np.uint8), vector)
            grid.SetSpacing([float(v) for v in spacing])
            grid.SetOrigin([float(v) for v in origin])
            grid.SetDirection([float(v) for v in direction.ravel()])
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            for k, values in _slices(data, dtype):  # a slab of slices read at a time
                position = grid.TransformIndexToPhysicalPoint((0, 0, k))
                one = sitk.GetImageFromArray(values[np.newaxis], isVector=vector)
                one.SetSpacing(grid.GetSpacing())
                one.SetDirection(grid.GetDirection())
                one.SetOrigin(position)
                plane = one[:, :, 0]
                for tag, value in common.items():
                    plane.SetMetaData(tag, value)
                plane.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
                plane.SetMetaData("0020|0013", str(k + 1))
                plane.SetMetaData("0008|0018", _new_uid())
                writer.SetFileName(str(folder / f"IM{k + 1:05d}.dcm"))
                writer.Execute(plane)
        except (RuntimeError, TypeError) as exc:
            raise _sitk_error(folder, exc, "cannot write DICOM") from None


def _slices(data: _Layout | np.ndarray, dtype: np.dtype) -> Iterator[tuple[int, np.ndarray]]:
    """(k, slice k) of a (k, j, i[, c]) image in ``dtype``, read a slab at a time."""
    if not isinstance(data, _Layout):
        for k in range(data.shape[0]):
            yield k, np.ascontiguousarray(data[k], dtype=dtype)
        return
    n = data.shape[0]
    step = data._step(0, math.prod(data.shape[1:]) * data.dtype.itemsize) if n > 1 else 1
    for k0 in range(0, n, step):
        box = [(k0, min(k0 + step, n))] + [(0, m) for m in data.shape[1:]]
        slab = data.read(box).astype(dtype, copy=False)
        for k in range(box[0][0], box[0][1]):
            yield k, np.ascontiguousarray(slab[k - k0])
        del slab


def _check_replaceable_series(target: Path) -> None:
    """Refuse to replace ``target`` unless it is an empty folder or a DICOM series folder
    (DICOM files only, as a DICOM export writes): any other file or folder there is the
    user's, and replacing the folder would delete it."""
    from mlarray._dataset import is_series_folder

    if not os.path.lexists(target):
        return
    if target.is_symlink() or not target.is_dir():
        raise ConversionError(
            target, "exists and is not a folder; a DICOM series is written as a folder"
        )
    try:
        empty = not any(os.scandir(target))
    except OSError as exc:
        raise ConversionError(target, f"cannot list the existing folder ({exc})") from None
    if not empty and not is_series_folder(target):
        raise ConversionError(
            target,
            "exists and holds files other than a DICOM series (or subfolders); it is not "
            "replaced: write the series to a new folder",
        )


def _publish_folder(tmpdir: Path, target: Path) -> None:
    """Put the folder written as ``tmpdir`` in place of ``target`` (an old series goes last;
    it is put back if the new one cannot take its place)."""
    _check_replaceable_series(target)
    old = None
    if os.path.lexists(target):
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(tmpdir, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def to_file(
    mlarray: MLArray | str | os.PathLike,
    path: str | os.PathLike,
    *,
    overwrite: bool = True,
    notes: list[str] | None = None,
    format: str | None = None,
) -> Path:
    """Write an :class:`MLArray` (or an ``.mla`` file) to NIfTI, NRRD, MetaImage, DICOM or ``.mla``.

    The voxels keep their world positions: the geometry is converted to the
    target's frame (RAS for NIfTI, LPS for NRRD/MetaImage) and the array is
    written in the target's index order (``x, y, z`` first, then time, then
    channels). The source header travels back into a file of the format it
    came from. The output appears atomically (written next to it, then
    renamed).

    Parameters
    ----------
    mlarray : MLArray or path
        The image.
    path : str or Path
        Output; the format follows the suffix, or ``format``.
    overwrite : bool
        Replace an existing output (default True, as ``save`` does). A DICOM series
        replaces only an empty folder or one holding DICOM files only; a folder holding
        anything else is refused, never deleted.
    notes : list of str, optional
        Receives what the user should be told (an assumed world frame).
    format : {"dicom"}, optional
        ``"dicom"`` writes a series folder at ``path`` (one file per slice,
        integer data or an 8-bit RGB picture with its colours on a last
        ``channel`` axis, patient and study tags from a DICOM source kept, new
        series and instance UIDs). An 8-bit colour picture goes to NIfTI as
        RGB24/RGBA32 voxels, to NRRD/MetaImage as vector pixels.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ConversionError
        For an unsupported suffix, a missing folder, an existing output with
        ``overwrite=False`` or geometry the target cannot hold.
    """
    target = Path(path)
    fmt = format or (image_format(target) if not target.is_dir() else None)
    if fmt not in WRITABLE or (fmt == "dicom" and format != "dicom"):
        raise ConversionError(
            target,
            "unsupported output; write .mla, .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd or a DICOM "
            "series folder (--to dicom)",
        )
    if not target.parent.is_dir():
        raise ConversionError(target, f"the output folder {target.parent} does not exist")
    if target.exists() and not overwrite:
        raise ConversionError(target, "exists already (use --overwrite to replace it)")
    if fmt == "dicom":
        _check_replaceable_series(target)  # before a voxel is read
    img = mlarray if isinstance(mlarray, MLArray) else MLArray.open(mlarray)
    told: list[str] = [] if notes is None else notes
    if fmt == "mla":
        io.save_mla(target, img, img.meta)
        return target
    if img.shape is None:
        raise ConversionError(target, "the MLArray holds no array (metadata only)")
    meta = img.meta
    labels = meta.spatial.axis_labels
    mask = img.spatial_axis_mask
    spatial = [ax for ax, m in enumerate(mask) if m]
    a = np.asarray(img.affine, dtype=np.float64)
    spatial, time_axes, time_in_space = _time_from_space(target, meta, spatial, a)
    if time_in_space is not None:
        a = time_in_space.pop("affine")
    # a colour picture (8-bit colours on a last channel axis) goes out as RGB(A) slices;
    # a label map's channels never are colours (--seg, a .seg.nrrd of overlapping layers)
    seg = bool(meta.is_seg)
    colour_dicom = (
        not seg
        and len(mask) == 4
        and labels is not None
        and labels[-1] == "channel"
        and is_colour_axis(img.shape, 3, img.dtype)
    )
    if fmt == "dicom" and (len(spatial) != 3 or (len(spatial) != len(mask) and not colour_dicom)):
        raise ConversionError(
            target,
            "DICOM output needs a 3-D image without channels or time (or an 8-bit colour "
            "picture, its colours on a last channel axis)",
        )
    if not 1 <= len(spatial) <= 3:
        raise ConversionError(target, f"{len(spatial)} spatial axes; NIfTI/NRRD/MHA hold 1 to 3")
    nonspatial = [ax for ax, m in enumerate(mask) if not m]
    time_axes += [ax for ax in nonspatial if labels and labels[ax] == "temporal"]
    chan_axes = [ax for ax in nonspatial if ax not in time_axes]
    if len(time_axes) > 1 or len(chan_axes) > 1:
        raise ConversionError(
            target, f"axes {labels}: at most one time and one channel axis can be written"
        )
    time = _time_axis(meta, time_in_space) if time_axes else None
    index_axes = _index_axes_of(labels, spatial)
    if time_in_space is not None and labels is None:
        index_axes = spatial  # x, y, z as stored, as the reference labels its 3-D files
    n = len(spatial)
    cols = [spatial.index(ax) for ax in index_axes]
    affine = a.copy()
    affine[:n, :n] = a[:n, :n][:, cols]
    # any format, before a voxel is read; the file whose geometry it is named if any
    _voxel_sizes(affine[:n, :n], getattr(img, "_path", None) or target)
    frame = _world_frame(meta.spatial, told, meta._image_meta_format.image_meta_format)
    data = _Layout(img)  # read a slab at a time as each writer lays the voxels out
    tmpdir = _tmp_dir_for(target)
    written = _written_name(target)
    try:
        if fmt == "dicom":
            data = data.transpose(index_axes[::-1] + chan_axes)
            _write_dicom(data, _into_frame(affine, frame, "LPS"), meta, tmpdir)
            _publish_folder(tmpdir, target)
            return target
        if fmt == "nifti":
            pad = 3 - n
            data = data.transpose(index_axes + time_axes + chan_axes)
            if pad:
                data = data.reshape(data.shape[:n] + (1,) * pad + data.shape[n:])
            # a colour picture goes out as RGB24/RGBA32 voxels, as ITK and nibabel write one
            colour = bool(chan_axes) and not seg and _colour_axis(img, meta, chan_axes[0])
            vector = (
                bool(chan_axes) and not colour and not (not time_axes and _nifti_4d_source(meta))
            )
            if vector and not time_axes:  # NIfTI keeps vector components in dim 5
                data = data.reshape((*data.shape[:3], 1, *data.shape[3:]))
            affine3 = np.eye(4)
            affine3[:n, :n] = affine[:n, :n]
            affine3[:n, 3] = affine[:n, n]
            affine3 = _into_frame(affine3, frame, "RAS")
            if not time_axes and not chan_axes:
                data = data.reshape(_nifti_shape(meta, data.shape))
            elif not time_axes and colour:  # the colours stay on their last axis
                data = data.reshape((*_nifti_shape(meta, data.shape[:-1]), data.shape[-1]))
            _write_nifti(data, affine3, meta, tmpdir / written, time, vector, colour)
        else:
            singleton = time_axes and data.shape[time_axes[0]] == 1 and _nifti_4d_source(meta)
            if singleton:  # SimpleITK reads a NIfTI whose dim[4] is 1 as 3-D: so is its copy
                data, time = (
                    data.reshape(data.shape[: time_axes[0]] + data.shape[time_axes[0] + 1 :]),
                    None,
                )
                chan_axes = [ax - (ax > time_axes[0]) for ax in chan_axes]
                index_axes = [ax - (ax > time_axes[0]) for ax in index_axes]
                time_axes = []
            data = data.transpose(time_axes + index_axes[::-1] + chan_axes)
            affine_lps = _into_frame(affine, frame, "LPS")
            if not time_axes and not chan_axes and n == 3:
                data, affine_lps = _as_2d_source(meta, data, affine_lps)
            _write_sitk(
                data,
                affine_lps,
                time,
                bool(chan_axes),
                meta,
                fmt,
                tmpdir / written,
            )
        _publish(tmpdir, written, target, overwrite)
    except (ConversionError, OSError) as exc:
        raise _error_of(target, exc) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target


def _colour_axis(img: MLArray, meta: Meta, axis: int) -> bool:
    """Whether channel ``axis`` of ``img`` holds the 8-bit colours of a picture: stored last
    (:func:`mlarray.meta.is_colour_axis`, as ``mlarray convert`` and the napari plugin store
    colour pictures), or 3 or 4 of them converted from an RGB24/RGBA32 NIfTI."""
    if is_colour_axis(img.shape, axis, img.dtype):
        return True
    datatype = _source_for(meta, "nifti").get("datatype")
    return datatype in (128, 2304) and img.dtype == np.uint8 and img.shape[axis] in (3, 4)


# ----------------------------------------------------------------------------- one file, any way


class _ByChunk:
    """A numpy array (or view) seen as a plain array-like, so that ``save_mla`` writes it
    chunk by chunk: a transposed view is never copied whole, and progress is reported."""

    def __init__(self, array: np.ndarray):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.ascontiguousarray(self._array[key])


def convert_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    is_seg: bool | None = None,
    coord_system: str | None = None,
    axis_order: str = "zyx",
    fourth_axis: str | None = None,
    series: str | None = None,
    patch_size: Any = "default",
    chunk_size: Any = None,
    block_size: Any = None,
    cparams: Any = None,
    dparams: Any = None,
    progress: Callable[[int, int], None] | None = None,
    to: str | None = None,
) -> ConversionResult:
    """Convert ``src`` to ``dst``; the direction follows the suffixes (one side ``.mla``).

    Writing an ``.mla`` streams chunk by chunk and is atomic; see
    :func:`from_file` and :func:`to_file` for the keywords. ``to="dicom"``
    writes ``dst`` as a DICOM series folder.

    Returns
    -------
    ConversionResult
        The output path and notes for the user.
    """
    s, d = Path(src), Path(dst)
    s_fmt = image_format(s)
    d_fmt = "dicom" if to == "dicom" else (None if d.is_dir() else image_format(d))
    if d_fmt is None or d_fmt not in WRITABLE or (d_fmt == "dicom" and to != "dicom"):
        raise ConversionError(
            d,
            "unsupported output; write .mla, .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd or a DICOM "
            "series folder (--to dicom)",
        )
    if (s_fmt == "mla") == (d_fmt == "mla"):
        raise ConversionError(s, f"convert needs .mla on exactly one side ({s.name} -> {d.name})")
    if not s.exists():
        raise ConversionError(s, "no such file or folder")
    if not d.parent.is_dir():
        raise ConversionError(d, f"the output folder {d.parent} does not exist")
    if d.exists() and not overwrite:
        raise ConversionError(d, "exists already (use --overwrite to replace it)")
    notes: list[str] = []
    if d_fmt == "mla":
        data, meta, notes = _prepare(
            s,
            is_seg=is_seg,
            coord_system=coord_system,
            axis_order=axis_order,
            fourth_axis=fourth_axis,
            series=series,
        )
        io.save_mla(
            d,
            _ByChunk(data) if progress is not None else data,
            meta,
            progress=progress,
            **_storage(patch_size, chunk_size, block_size, cparams, dparams, meta),
        )
    else:
        to_file(MLArray.open(s), d, overwrite=overwrite, notes=notes, format=to)
    return ConversionResult(d, notes)


def split_suffix(name: str) -> tuple[str, str]:
    """Split a file name into stem and known suffix (``a.nii.gz`` -> ``a``, ``.nii.gz``)."""
    low = name.lower()
    for suffixes in FORMAT_SUFFIXES.values():
        for suf in suffixes:
            if low.endswith(suf):
                return name[: -len(suf)], name[-len(suf) :]
    return name, ""


def input_suffixes() -> Sequence[str]:
    """Every suffix ``convert`` reads."""
    return [s for fmt, sufs in FORMAT_SUFFIXES.items() for s in sufs]
