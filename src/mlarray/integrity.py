"""Per-chunk checksums: detect damaged chunk data instead of returning wrong values.

A Blosc2 frame has no checksum of its own, and a flipped bit inside a
compressed stream often decompresses "successfully" into wrong values. Files
written by mlarray therefore carry one 64-bit xxHash (XXH3) digest per chunk,
taken over the chunk's compressed bytes as stored, in a separate
variable-length metalayer, ``vlmeta["mlarray_checksums"]``. The reference
package ignores that entry, so files stay readable there; files without it
(written by other tools) open as before, unverified.

Entry layout (bytes): the 8-byte tag ``b"MLAXXH3\\x01"``, the little-endian
``uint64`` digest of the ``b2nd`` metalayer (shape, chunk and block shapes,
dtype: a forged header shape is detected), then one little-endian ``uint64``
digest per chunk in chunk order. A chunk stored as a special value in the chunk
offsets (all zeros, all NaN, uninitialized) is digested over its 8-byte offset
value. A second entry, ``vlmeta["mlarray_checksums_frame"]`` (:data:`FRAME_KEY`),
names the frame the digests were computed for: the 8-byte tag
``b"MLAFRM\\x00\\x02"``, the little-endian ``uint64`` digest of the frame's
chunk index (every chunk's offset and compressed size, :func:`frame_binding`)
and every chunk's offset (little-endian ``int64``: a chunk now pointing at
another chunk's data, still there, is a damaged index, not a rewrite; see
:func:`_index_damaged`).
A third entry, ``vlmeta["mlarray_checksums_record"]`` (:data:`RECORD_KEY`),
names the metadata record the digests were stored with: the 8-byte tag
``b"MLAREC\x00\x01"`` and the little-endian ``uint64`` digest of the bytes of
``vlmeta["mlarray"]`` (:func:`record_binding`).
They are separate entries so that mlarray versions that predate them still read
and verify new files; files without them (written before they existed) are
verified as they always were.

Other tools copy the entries without updating them (the reference package's
``save`` of a file it read from ours, its in-place writes). Their rewrite moves
or resizes chunks, so the chunk index no longer matches the frame binding, or
leaves a rewritten chunk at its offset with its size (often, for a small edit
of real data) but rewrites the record (the reference package does on every
in-place write and save), so the record no longer matches the record binding:
the digests are stale, and the file is read unverified, with one
:class:`StaleChecksumsWarning` naming it, instead of being reported damaged.
Damage to the data of a file we wrote leaves its chunk index and its record as
they were: the bindings match and the damaged chunk raises
:class:`~mlarray.errors.CorruptChunkError`. Both bindings are checked once per
file version, when it is opened (:func:`attach`); reads pay nothing for them.

How it is used:

* :func:`attach` (called by :func:`mlarray.io.open_store`) gives an opened
  Blosc2 array a :class:`ChunkVerifier` when the file has checksums;
* :func:`verify_read` is **the read hook**: ``verify_read(store, key)``
  checks that the file was not changed in place since it was opened
  (:func:`mlarray._maps.check`) and verifies the chunks a read of ``key``
  touches, each chunk at most once per handle. Fast read paths that bypass
  ``MLArray.__getitem__`` call it (or :func:`verify_region` with per-axis
  ``(start, stop)`` bounds) before decompressing;
* :func:`note_write` marks a handle's file as modified in place (checking
  stops for that handle); each in-place write stores the digests of the
  chunks it rewrote (:func:`updated_entry`, called by
  :func:`mlarray.io.write_in_place`), so the file's checksums are current
  after every write; :func:`refresh_file` recomputes all digests (on
  ``close()`` of a file that had none), :func:`digest_file` is used by
  ``save``;
* :func:`verify_file` checks a whole file (``MLArray.verify()``).

Verification on read is on by default; :func:`set_verify_on_read` (or the
environment variable ``MLARRAY_VERIFY=0``) turns it off.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import stat
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from mlarray import _clib, _maps
from mlarray.errors import (
    CorruptChunkError,
    FileChangedError,
    InvalidPathError,
    MLArrayError,
    MLArrayFormatError,
    MLArrayIOError,
    MLArrayMemoryError,
    os_errors,
)
from mlarray.frame import (
    FrameInfo,
    check_chunk_blocks,
    chunk_special,
    inspect_frame,
    read_vlmeta_bytes,
)
from mlarray.indexing import Box, box_of_key, key_bounds, numpy_accepts
from mlarray.record import VLMETA_KEY

__all__ = [
    "CHECKSUM_KEY",
    "FRAME_KEY",
    "RECORD_KEY",
    "ChunkDecodeCheck",
    "ChunkVerifier",
    "StaleChecksumsWarning",
    "VerifyReport",
    "attach",
    "chunk_digests",
    "chunks_in_box",
    "digest_file",
    "encode_binding",
    "encode_digests",
    "frame_binding",
    "note_write",
    "record_binding",
    "refresh_file",
    "set_verify_on_read",
    "stored_digests",
    "updated_entry",
    "verify_file",
    "verify_read",
    "verify_region",
    "verifying",
]

CHECKSUM_KEY = "mlarray_checksums"
_TAG = b"MLAXXH3\x01"
#: vlmeta entry naming the frame the checksums were computed for (:func:`frame_binding`)
FRAME_KEY = "mlarray_checksums_frame"
_FRAME_TAG = b"MLAFRM\x00\x02"  # digest + every chunk's offset
#: vlmeta entry naming the metadata record the checksums were stored with (:func:`record_binding`)
RECORD_KEY = "mlarray_checksums_record"
_RECORD_TAG = b"MLAREC\x00\x01"  # digest of the record's bytes
_VERIFIER_ATTR = "_mlarray_verifier"

_verify_on_read = os.environ.get("MLARRAY_VERIFY", "1").strip().lower() not in ("0", "false", "no")


def set_verify_on_read(enabled: bool) -> bool:
    """Turn checksum verification of reads on or off for files opened afterwards.

    Returns the previous setting. ``MLArray.verify()`` always verifies.
    """
    global _verify_on_read
    previous, _verify_on_read = _verify_on_read, bool(enabled)
    return previous


def verifying() -> bool:
    """Whether files opened now verify their chunks' checksums on read."""
    return _verify_on_read


# The largest page-cache folio a kernel maps for a file (a PMD: 2 MiB with 4 KiB pages).
# Touching one byte of a file cached in large folios maps the whole folio, bytes before
# the touched range too: a release must cover the folios it touched, not only its range.
_FOLIO = 2 << 20


def _release(buf: Any, lo: int, hi: int) -> None:
    """Unmap the pages of ``buf[lo:hi]`` from this process (the page cache keeps them),
    with the rest of the :data:`_FOLIO`-aligned span around them.

    Hashing a whole file through a read-only mapping would otherwise leave
    every page of it resident in the process: a streamed save of a 2 GB
    volume would peak at gigabytes of RSS. (Pages of that span another read of
    this process uses are faulted back in when it touches them again.)
    """
    if hi > lo and isinstance(buf, mmap.mmap):
        start = lo - lo % _FOLIO
        end = min(-(-hi // _FOLIO) * _FOLIO, len(buf))
        with contextlib.suppress(OSError, ValueError, AttributeError):
            buf.madvise(mmap.MADV_DONTNEED, start, end - start)


def chunk_digests(
    buf: Any, info: FrameInfo, ids: Sequence[int] | None = None, release: bool = True
) -> np.ndarray:
    """XXH3-64 digest of each chunk (or of chunks ``ids``) of the frame in ``buf``.

    The chunks are hashed where they are (a mapped file is not copied); with
    ``release``, a mapped ``buf`` keeps no hashed page resident (see :func:`_release`).
    A read that decodes those chunks from the mapping next passes False: it would map
    them again at once.
    """
    mv = memoryview(buf).cast("B")
    idx = range(info.nchunks) if ids is None else ids
    out = np.empty(len(idx), dtype=np.uint64)
    pos, cb, raw = info.chunk_pos, info.chunk_cbytes, info.raw_offsets
    h = xxhash.xxh3_64_intdigest
    for j, i in enumerate(idx):
        p = int(pos[i])
        if p < 0:
            out[j] = h(raw[i : i + 1].tobytes())
            continue
        out[j] = h(mv[p : p + int(cb[i])])
        if release:
            _release(buf, p, p + int(cb[i]))
    return out


_CHECK_EVERY = 8 << 20  # bytes hashed between two checks of a mapped file
_SETTLE = 0.02  # s: a chunk failing its checksum is hashed again after this (see _rewritten)


def _watched_digests(
    buf: Any, info: FrameInfo, ids: Sequence[int] | None, watch: Any, release: bool = True
) -> Any:
    """:func:`chunk_digests`, with ``watch`` (a :class:`mlarray._maps.Watch` of the mapped
    file, or None) checked before the first chunk and every few MiB hashed: a file cut
    short meanwhile raises :class:`~mlarray.errors.FileChangedError`, not a SIGBUS."""
    if watch is None:
        return chunk_digests(buf, info, ids, release)
    idx = list(range(info.nchunks) if ids is None else ids)
    cb = info.chunk_cbytes
    parts, start, due = [], 0, 0
    for j, i in enumerate(idx):
        due += max(int(cb[i]), 0)
        if due >= _CHECK_EVERY or j == len(idx) - 1:
            watch.check()
            parts.append(chunk_digests(buf, info, idx[start : j + 1], release))
            start, due = j + 1, 0
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


def layout_digest(buf: Any, info: FrameInfo) -> int:
    """XXH3-64 digest of the frame's ``b2nd`` metalayer (shape, chunks, blocks, dtype)."""
    lo, hi = info.b2nd_span
    return xxhash.xxh3_64_intdigest(memoryview(buf).cast("B")[lo:hi])


class StaleChecksumsWarning(UserWarning):
    """A file's checksum entry was computed for another version of its frame: another
    tool rewrote chunks or the metadata record and copied the entries unchanged. The file
    is read unverified."""


def frame_binding(info: Any) -> int:
    """XXH3-64 digest of the frame's chunk index: each chunk's offset (or special value)
    and compressed size. Any rewrite of a chunk by a Blosc2 writer moves or resizes it.
    (``info`` is a :class:`~mlarray.frame.FrameInfo`, or anything with its
    ``raw_offsets`` and ``chunk_cbytes``.)"""
    index = np.concatenate([info.raw_offsets, info.chunk_cbytes]).astype("<i8")
    return xxhash.xxh3_64_intdigest(index.tobytes())


def encode_binding(info: Any) -> bytes:
    """The value of :data:`FRAME_KEY` for the frame ``info`` describes: the tag, the
    :func:`frame_binding` digest and every chunk's offset (raw, as the frame's index
    holds it), so a frame whose index differs can be told apart from a rewrite."""
    offsets = np.asarray(info.raw_offsets, dtype="<i8").tobytes()
    return _FRAME_TAG + frame_binding(info).to_bytes(8, "little") + offsets


def _index_damaged(bound: bytes, info: FrameInfo, buf: Any, raw: Any) -> int | None:
    """The first chunk whose index entry now points at another chunk's data (a damaged
    chunk index), or None.

    ``bound`` is the :data:`FRAME_KEY` entry naming the frame the checksums were
    computed for (its chunk offsets), ``raw`` the checksum entry (its digests). A
    Blosc2 writer rewriting chunks puts them at new places: appended, in a new file
    written in order, or moved down when it compacts the frame (a chunk that became a
    special value, e.g. all zeros, frees its bytes and every later chunk moves into
    them). So a chunk whose offset is now one another chunk had is a rewrite when its
    bytes there are its own (they hash to its digest) or new ones (rewritten), and a
    damaged index (a swapped offset: its data would be the other chunk's) when they
    are still the other chunk's. (Two chunks sharing bytes are refused by
    :func:`~mlarray.frame.inspect_frame`.) Only chunks at such an offset are hashed,
    at open, and only for a frame whose index changed."""
    old = np.frombuffer(bound[16:], dtype="<i8")
    new = np.asarray(info.raw_offsets, dtype=np.int64)
    if len(old) != len(new):
        return None
    live = old >= 0  # special values (zeros, NaNs, ...) are shared by many chunks
    owner = dict(zip(old[live].tolist(), np.flatnonzero(live).tolist(), strict=True))
    suspects = []  # (chunk, the chunk whose offset it now has)
    for i in np.flatnonzero((new != old) & (new >= 0)).tolist():
        j = owner.get(int(new[i]))
        if j is not None and j != i:
            suspects.append((i, j))
    if not suspects:
        return None
    digests = _entry_digests(raw, info)
    if digests is None:
        return None
    for i, j in suspects:
        got = int(chunk_digests(buf, info, [i])[0])
        if got != int(digests[i]) and got == int(digests[j]):
            return i
    return None


def _entry_digests(raw: Any, info: FrameInfo) -> np.ndarray | None:
    """The chunk digests the checksum entry ``raw`` holds (None if it is not a valid
    entry for ``info``'s number of chunks)."""
    if not isinstance(raw, bytes) or not raw.startswith(_TAG):
        return None
    body = raw[len(_TAG) + 8 :]
    if len(body) != 8 * info.nchunks:
        return None
    return np.frombuffer(body, dtype="<u8")


def _head(buf: Any, info: FrameInfo) -> bytes:
    return _TAG + np.array([layout_digest(buf, info)], dtype="<u8").tobytes()


def record_binding(record: bytes) -> bytes:
    """The value of :data:`RECORD_KEY` for the metadata record ``record`` (the bytes of
    ``vlmeta["mlarray"]``): the tag and the record's XXH3-64 digest.

    Other tools that write our file rewrite its record (the reference package does on
    every ``close()`` of a writable handle and every ``save``, even when only voxels
    changed) but copy this entry: a record that no longer fits it tells such a rewrite
    apart from damage when the rewritten chunks kept their offsets and sizes."""
    return _RECORD_TAG + xxhash.xxh3_64_intdigest(record).to_bytes(8, "little")


def _record_entry(buf: Any, info: FrameInfo) -> dict[str, bytes]:
    """``{RECORD_KEY: ...}`` for the record the frame in ``buf`` holds (empty without one)."""
    record = read_vlmeta_bytes(buf, info, VLMETA_KEY)
    return {RECORD_KEY: record_binding(record)} if isinstance(record, bytes) else {}


def encode_digests(buf: Any, info: FrameInfo) -> dict[str, bytes]:
    """The checksum entries of the frame in ``buf``: :data:`CHECKSUM_KEY` (tag, layout
    and chunk digests), :data:`FRAME_KEY` (which frame they were computed for) and
    :data:`RECORD_KEY` (which metadata record they were stored with)."""
    entry = _head(buf, info) + np.asarray(chunk_digests(buf, info), dtype="<u8").tobytes()
    return {CHECKSUM_KEY: entry, FRAME_KEY: encode_binding(info), **_record_entry(buf, info)}


def encode_written(writer: Any, record: bytes | None) -> dict[str, bytes]:
    """The checksum entries (as :func:`encode_digests` makes them) of the frame a
    :class:`mlarray._framewrite.FrameWriter` wrote: from the layout and chunk digests it
    took while writing, with the metadata record ``record`` (None: the frame has none)."""
    head = _TAG + int(writer.layout_digest).to_bytes(8, "little")
    entry = head + np.asarray(writer.digests, dtype="<u8").tobytes()
    out = {CHECKSUM_KEY: entry, FRAME_KEY: encode_binding(writer)}
    if record is not None:
        out[RECORD_KEY] = record_binding(record)
    return out


def _stored(buf: Any, info: FrameInfo, path: Any) -> tuple[Any, Any, Any]:
    """The raw values of the checksum entry, of its frame binding and of its record
    binding (None if absent)."""
    raw = read_vlmeta_bytes(buf, info, CHECKSUM_KEY, path)
    if raw is None:
        return None, None, None
    bound = read_vlmeta_bytes(buf, info, FRAME_KEY, path)
    return raw, bound, read_vlmeta_bytes(buf, info, RECORD_KEY, path)


def _decode_digests(raw: Any, bound: Any, rec: Any, buf: Any, info: FrameInfo, path: Any) -> Any:
    """The stored chunk digests (None without a checksum entry of ours, or with one
    another tool left stale: a :class:`StaleChecksumsWarning` says so); checks the layout."""
    digests, stale = _read_entry(raw, bound, rec, buf, info, path)
    if stale:
        if _maps.write_under_way(path):  # chunks moved by a write of mlarray under way
            raise FileChangedError(
                path,
                "is being written in place by another program or handle; "
                "open it again once the write is done",
            )
        _warn_stale(path)
    return digests


def _warn_stale(path: Any) -> None:
    # the warning names the caller's line outside mlarray (MLArray.open, load, verify)
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{os.fspath(path)}: its chunk checksums were written for another version of "
        "the file (another tool rewrote its chunks or its metadata and kept mlarray's "
        "checksum entries); "
        "reading it unverified. Saving it with mlarray writes current checksums.",
        StaleChecksumsWarning,
        stacklevel=level,
    )


def _read_entry(
    raw: Any, bound: Any, rec: Any, buf: Any, info: FrameInfo, path: Any
) -> tuple[np.ndarray | None, bool]:
    """``(chunk digests, stale)`` of the entry ``raw`` and its bindings ``bound`` (frame)
    and ``rec`` (record): ``(None, False)`` without an entry, ``(None, True)`` for an
    entry bound to another frame (see :func:`frame_binding`) or stored with another
    metadata record (see :func:`record_binding`). An entry without a binding (written
    before it existed) is used as it is."""
    if raw is None:
        return None, False
    if bound is not None:
        if not (
            isinstance(bound, bytes)
            and len(bound) >= 16
            and len(bound) % 8 == 0
            and bound.startswith(_FRAME_TAG)
        ):
            raise CorruptChunkError(
                path,
                f"the checksum entry {FRAME_KEY!r} is damaged or of a newer mlarray "
                "(MLARRAY_VERIFY=0 reads the file unverified)",
            )
        if int.from_bytes(bound[8:16], "little") != frame_binding(info):
            i = _index_damaged(bound, info, buf, raw)
            if i is not None:
                raise CorruptChunkError(
                    path,
                    f"chunk {i} (chunk grid position {_chunk_coords(info, i)}) points at "
                    "another chunk's data: the chunk index is damaged",
                    chunk=i,
                )
            return None, True
    if rec is not None:
        if not (isinstance(rec, bytes) and len(rec) == 16 and rec.startswith(_RECORD_TAG)):
            raise CorruptChunkError(
                path,
                f"the checksum entry {RECORD_KEY!r} is damaged or of a newer mlarray "
                "(MLARRAY_VERIFY=0 reads the file unverified)",
            )
        record = read_vlmeta_bytes(buf, info, VLMETA_KEY, path)
        if not isinstance(record, bytes) or record_binding(record) != rec:
            return None, True  # another tool rewrote the record, and maybe chunks
    if not isinstance(raw, bytes) or not raw.startswith(_TAG):
        # Anything else under our key is damage (or a newer format this version cannot
        # check): never fall back to reading unverified data silently.
        raise CorruptChunkError(
            path,
            f"the checksum entry {CHECKSUM_KEY!r} is damaged or of a newer mlarray "
            "(MLARRAY_VERIFY=0 reads the file unverified)",
        )
    body = raw[len(_TAG) :]
    if len(body) != 8 * (info.nchunks + 1):
        raise CorruptChunkError(
            path, f"checksum entry holds {len(body) // 8 - 1} digests for {info.nchunks} chunks"
        )
    values = np.frombuffer(body, dtype="<u8").astype(np.uint64)
    if int(values[0]) != layout_digest(buf, info):
        raise CorruptChunkError(
            path,
            f"the array layout in the header (shape {info.shape}, chunks {info.chunks}, "
            f"dtype {info.dtype}) does not match its checksum; the header is damaged or forged",
        )
    return values[1:], False


def chunks_in_box(info: FrameInfo, bounds: Sequence[tuple[int, int]] | None) -> np.ndarray:
    """Flat numbers of the chunks overlapping ``[(start, stop), ...]`` (all chunks for None)."""
    if bounds is None:
        return np.arange(info.nchunks, dtype=np.int64)
    if not info.nchunks:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(info.geometry().chunks_in_box(bounds), dtype=np.int64)


def stored_digests(buf: Any, info: FrameInfo, path: Any) -> np.ndarray | None:
    """The chunk digests stored in the frame in ``buf`` (None without a checksum entry,
    or with one another tool left stale: the file needs all of them computed anew).

    Raises
    ------
    CorruptChunkError
        If the entry is damaged or does not match the layout.
    """
    return _read_entry(*_stored(buf, info, path), buf, info, path)[0]


def updated_entry(
    buf: Any, info: FrameInfo, digests: np.ndarray, ids: np.ndarray
) -> dict[str, bytes]:
    """The checksum entries of the frame in ``buf`` after chunks ``ids`` were rewritten
    (see :func:`encode_digests`).

    ``digests`` are the digests stored before the write (chunks other than
    ``ids`` keep theirs: rewriting a chunk may move the others, but not change
    their bytes).
    """
    out = np.array(digests, dtype=np.uint64, copy=True)
    if len(ids):
        out[ids] = chunk_digests(buf, info, [int(i) for i in ids])
    return {
        CHECKSUM_KEY: _head(buf, info) + out.astype("<u8").tobytes(),
        FRAME_KEY: encode_binding(info),
        **_record_entry(buf, info),
    }


def _chunk_coords(info: FrameInfo, i: int) -> tuple[int, ...]:
    return tuple(int(c) for c in np.unravel_index(i, info.grid)) if info.shape else ()


# Chunks already verified in this process, per file version (device, inode, size,
# modification time, ctime): a data loader reading random patches from the same files
# epoch after epoch hashes each chunk once, not on every read. One byte per chunk
# (a bytearray: indexing it with a Python int is the cheapest membership test).
_VERIFIED: collections.OrderedDict[tuple, bytearray] = collections.OrderedDict()
_VERIFIED_FILES = 4096


def _verified_mask(version: tuple | None, nchunks: int) -> bytearray:
    if version is None:
        return bytearray(nchunks)
    mask = _VERIFIED.get(version)
    if mask is None or len(mask) != nchunks:
        mask = _VERIFIED[version] = bytearray(nchunks)
        while len(_VERIFIED) > _VERIFIED_FILES:
            _VERIFIED.popitem(last=False)
    else:
        _VERIFIED.move_to_end(version)
    return mask


def forget_verified(store: Any = None) -> Callable[[], None]:
    """Forget which chunks were verified in this process (all files), and by ``store``.

    The next read of each chunk hashes it again, as in a fresh process: for
    benchmarks of the first touch of a chunk, and for tests. Returns a function
    that brings back what was forgotten (without hashing anything).
    """
    saved = collections.OrderedDict(_VERIFIED)
    verifier = getattr(store, _VERIFIER_ATTR, None)
    before = None if verifier is None else (verifier.checked, verifier.done)
    _VERIFIED.clear()
    if verifier is not None:
        verifier.checked = _verified_mask(verifier.version, verifier.info.nchunks)
        verifier.done = not verifier.info.nchunks

    def restore() -> None:
        _VERIFIED.clear()
        _VERIFIED.update(saved)
        if before is not None:
            verifier.checked, verifier.done = before

    return restore


# Stored digests per file version, so an unchanged file is not decoded again.
_EXPECTED: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()


class ChunkVerifier:
    """Verifies the chunks of one opened file against its stored digests.

    A chunk is hashed at most once per process and file version (see
    :data:`_VERIFIED`), so repeated patch reads cost only the first time. The
    steady state (every chunk a read touches already verified) is plain
    integer arithmetic over the few chunks a patch touches: no numpy.
    """

    def __init__(
        self,
        path: Any,
        buf: Any,
        info: FrameInfo,
        expected: np.ndarray,
        version: tuple | None = None,
        watch: Any = None,
    ):
        self.path = path
        self.version = version
        # The bytes the store decodes: a frame held in memory, or the mapping of the
        # file version (shared by all its handles, see mlarray._maps): the chunks are
        # hashed where they are read from, even after the file was replaced on disk.
        self.buf = buf
        #: the store's :class:`mlarray._maps.Watch` of its file (None in memory): a file cut
        #: short while a long verification hashes it is an error, not a SIGBUS
        self.watch = watch
        self.touched = 0 if watch is None else watch.touched
        self.info = info
        self.expected = expected
        self.checked = _verified_mask(version, info.nchunks)
        self.done = 0 not in self.checked
        self.enabled = True
        self.geometry = info.geometry()
        self.shape = self.geometry.shape

    def verify_chunks(self, ids: Any) -> None:
        """Verify chunks ``ids`` (flat chunk numbers) not verified yet in this process."""
        if not self.enabled or self.done:
            return
        checked = self.checked
        todo = sorted({int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()})
        todo = [i for i in todo if not checked[i]]
        if todo:
            self._hash(todo)

    def _hash(self, todo: list[int], release: bool = True) -> None:
        """Hash chunks ``todo`` (unverified, distinct) and compare them with their digests
        (``release``: see :func:`chunk_digests`)."""
        got = _watched_digests(self.buf, self.info, todo, self.watch, release)
        expected = self.expected
        bad = [i for i, g in zip(todo, got.tolist(), strict=True) if g != int(expected[i])]
        if bad:
            changed = None if self.watch is None else self.watch.changed_error()
            got_bad = [int(g) for i, g in zip(todo, got.tolist(), strict=True) if i in bad]
            if changed is None and self._rewritten(bad, got_bad):
                changed = FileChangedError(
                    self.path,
                    "changed on disk while it was being read (written in place by another "
                    "program or handle); reopen it to read the new version",
                )
            if changed is not None:  # written by another program while being read
                raise changed
            i = bad[0]
            coords = _chunk_coords(self.info, i)
            raise CorruptChunkError(
                self.path,
                f"chunk {i} (chunk grid position {coords}) does not match its checksum; "
                "the file is damaged"
                + (f" ({len(bad)} damaged chunks in this read)" if len(bad) > 1 else ""),
                chunk=i,
            )
        checked = self.checked
        for i in todo:
            checked[i] = 1
        self.done = 0 not in checked

    def _rewritten(self, bad: list[int], got: list[int]) -> bool:
        """Whether chunks ``bad`` (their digests ``got``), which failed their checksums
        although the file's size, modification time, header and trailer looked unchanged,
        were rewritten by another program rather than damaged: the file's checksum entry
        no longer holds the digests this handle expected, or their bytes change again
        within a moment. (The modification time moves at most once per tick of the
        kernel's clock, so a whole in-place write can leave it, and this handle's idea of
        the file version, as they were.)"""
        try:
            now = stored_digests(self.buf, self.info, self.path)
        except MLArrayError:  # the entry read at open no longer parses: rewritten
            return True
        if now is None or any(int(now[i]) != int(self.expected[i]) for i in bad):
            return True
        time.sleep(_SETTLE)
        return chunk_digests(self.buf, self.info, bad).tolist() != got

    def verify_region(self, bounds: Sequence[tuple[int, int]], release: bool = True) -> None:
        """Verify the chunks overlapping the box ``[(start, stop), ...]`` (one pair per axis)
        (``release``: see :func:`chunk_digests`)."""
        if not self.enabled or self.done or not self.info.nchunks:
            return
        checked = self.checked
        todo = [i for i in self.geometry.chunks_in_box(bounds) if not checked[i]]
        if todo:
            self._hash(todo, release)

    def verify_key(self, key: Any, box: Box | None = None, release: bool = True) -> None:
        """Verify the chunks a read of ``key`` (valid for the shape) touches; ``box`` is
        its :func:`~mlarray.indexing.box_of_key`, when the caller has it already.
        ``release``: see :func:`chunk_digests` (every chunk verified, when the key's
        chunks are not known, releases them all the same)."""
        if not self.enabled or self.done:
            return
        if box is None:
            box = box_of_key(key, self.shape)
        if box is not None:
            bounds = box.bounds
        else:
            try:
                bounds = key_bounds(key, self.shape)
            except Exception:
                if numpy_accepts(key, self.shape):  # chunks not known: check all of them
                    self.verify_all()
                return  # a key numpy refuses: the read itself reports it
            if bounds is None:
                return
        self.verify_region(bounds, release)

    def verify_all(self) -> None:
        """Verify every chunk."""
        if self.enabled and not self.done:
            checked = self.checked
            self._hash([i for i in range(self.info.nchunks) if not checked[i]])


def attach(
    store: Any,
    path: Any,
    buf: Any,
    info: FrameInfo,
    version: tuple | None = None,
    *,
    verify: bool | None = None,
) -> ChunkVerifier | None:
    """Give an opened Blosc2 array the verifier of its file (None without checksums, or
    with checksums another tool left stale: one :class:`StaleChecksumsWarning` per file
    version and process says so).

    With verification switched off (:func:`set_verify_on_read`, or ``verify=False``:
    the setting the caller read once), nothing is checked, so the data of a damaged
    file can still be salvaged. ``version`` (device, inode, size, mtime, ctime) names
    the file version whose verified chunks are remembered for the process.
    """
    if not (_verify_on_read if verify is None else verify):
        return None
    cached = _EXPECTED.get(version) if version is not None else None
    if cached is None:
        expected = _decode_digests(*_stored(buf, info, path), buf, info, path)
        if version is not None:
            _EXPECTED[version] = (expected,)
            while len(_EXPECTED) > _VERIFIED_FILES:
                _EXPECTED.popitem(last=False)
    else:
        (expected,) = cached
    if expected is None:
        return None
    verifier = ChunkVerifier(path, buf, info, expected, version, _maps.watch_of(store))
    try:
        setattr(store, _VERIFIER_ATTR, verifier)
    except AttributeError:  # pragma: no cover - blosc2 arrays accept attributes
        return None
    return verifier


def reattach(store: Any, path: Any) -> None:
    """Hand the verifier of a kept Blosc2 array to a new handle opened as ``path``: its
    errors name that path, and it follows what the process remembers as verified now
    (:func:`forget_verified` may have dropped it since)."""
    verifier = getattr(store, _VERIFIER_ATTR, None)
    if verifier is not None:
        verifier.path = path
        verifier.checked = _verified_mask(verifier.version, verifier.info.nchunks)
        verifier.done = 0 not in verifier.checked


def verify_read(store: Any, key: Any, box: Box | None = None) -> None:
    """The read hook: verify the chunks a read of ``store[key]`` touches.

    Call it with a key numpy accepts, after the key was validated against the
    shape; ``box`` is the key's :func:`~mlarray.indexing.box_of_key` if the caller
    worked it out already. Verifies nothing for arrays without checksums, with
    verification switched off, or after this handle wrote to its file.

    First, for a store that decodes from a mapping of its file, checks that no other
    program changed the file in place since it was opened (:func:`mlarray._maps.check`:
    a truncated file would be a SIGBUS, not an error, once the read touches it).

    Raises
    ------
    FileChangedError
        If the file was truncated or rewritten in place since the store was opened.
    CorruptChunkError
        If a touched chunk does not match its checksum.
    """
    _maps.check(store)
    verifier = getattr(store, _VERIFIER_ATTR, None)
    if verifier is not None:
        _after_touch(verifier)
        if verifier.enabled and not verifier.done:
            # a store decoding from the mapping maps those pages again at once
            verifier.verify_key(key, box, release=not _maps.decodes_from_mapping(store))


def _after_touch(verifier: ChunkVerifier) -> None:
    """A file found touched since the verifier last looked (same size, frame header and
    trailer: :class:`mlarray._maps.Watch`) has its chunks checked again as they are read:
    bytes of a chunk changed in place would leave those the same."""
    w = verifier.watch
    if w is not None and w.touched != verifier.touched:
        verifier.touched = w.touched
        verifier.checked = bytearray(verifier.info.nchunks)
        verifier.done = not verifier.info.nchunks


def verify_region(store: Any, bounds: Sequence[tuple[int, int]]) -> None:
    """Verify the chunks overlapping ``[(start, stop), ...]`` (one pair per axis) of ``store``
    (after the file check of :func:`verify_read`)."""
    _maps.check(store)
    verifier = getattr(store, _VERIFIER_ATTR, None)
    if verifier is not None:
        _after_touch(verifier)
        if verifier.enabled:
            verifier.verify_region(bounds)


def damage_error(
    store: Any, path: Any, message: str, chunk: int | None = None
) -> MLArrayFormatError:
    """The error for a read of ``store`` that found its data undecodable: a
    :class:`~mlarray.errors.FileChangedError` if the file was written meanwhile (by
    another program, or another handle: see :meth:`mlarray._maps.Watch.changed_error`),
    else :class:`~mlarray.errors.CorruptChunkError` with ``message``."""
    changed = _maps.changed_error(store)
    if changed is not None:
        return changed
    return CorruptChunkError(path, message, chunk=chunk)


def verifies(store: Any) -> bool:
    """Whether the chunks of ``store`` are vouched for by its file's checksums: reads are
    verified (a file with current checksums, verification on, no in-place write through
    this handle), or every chunk was verified when it was loaded (:func:`mark_verified`)."""
    if getattr(store, _LOADED_ATTR, False):
        return True
    verifier = getattr(store, _VERIFIER_ATTR, None)
    return verifier is not None and verifier.enabled


_LOADED_ATTR = "_mlarray_verified_whole"


def mark_verified(store: Any) -> None:
    """Every chunk of the in-memory ``store`` was verified against its file's checksums
    when it was loaded (see :func:`verifies`)."""
    with contextlib.suppress(AttributeError):
        setattr(store, _LOADED_ATTR, True)


def verify_all(store: Any) -> None:
    """Verify every chunk of an opened ``store`` that has checksums (e.g. before statistics),
    after the file check of :func:`verify_read`."""
    _maps.check(store)
    verifier = getattr(store, _VERIFIER_ATTR, None)
    if verifier is not None:
        _after_touch(verifier)
        if verifier.enabled:
            verifier.verify_all()


def note_write(store: Any) -> None:
    """This handle modified its file in place: stop verifying (digests are refreshed on close)."""
    check_identity(store)
    verifier = getattr(store, _VERIFIER_ATTR, None)
    if verifier is not None:
        verifier.enabled = False
    store._mlarray_written = True


def remember_identity(store: Any, path: Any) -> None:
    """Remember which file (device, inode) a writable handle opened."""
    st = os.stat(path)
    store._mlarray_identity = (os.fspath(path), st.st_dev, st.st_ino)


def check_identity(store: Any) -> None:
    """Refuse to write through a handle whose file was replaced since it was opened.

    Another process may save a new version of the file (a new inode) while
    this handle is open; writing through the handle would put chunks or
    metadata of the old version into the new file.
    """
    ident = getattr(store, "_mlarray_identity", None)
    if ident is None:
        return
    path, dev, ino = ident
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MLArrayIOError(path, "was deleted since it was opened; not writing to it") from None
    if (st.st_dev, st.st_ino) != (dev, ino):
        raise MLArrayIOError(
            path,
            "was replaced by another file since it was opened (saved by another process?); "
            "not writing to it. Reopen it to modify the new version.",
        )


def was_written(store: Any) -> bool:
    """Whether :func:`note_write` was called for ``store``."""
    return bool(getattr(store, "_mlarray_written", False))


def mark_stale(store: Any) -> None:
    """The file of ``store`` was written without keeping its digests current."""
    store._mlarray_stale = True


def is_stale(store: Any) -> bool:
    """Whether the file of ``store`` needs its digests recomputed (see :func:`mark_stale`)."""
    return bool(getattr(store, "_mlarray_stale", False))


@dataclass
class VerifyReport:
    """Result of :func:`verify_file`."""

    path: str
    nchunks: int
    has_checksums: bool
    damaged: list[int]
    #: the file's checksum entry was left stale by another tool (``has_checksums`` is
    #: False: nothing could be verified; see :class:`StaleChecksumsWarning`)
    stale_checksums: bool = False
    #: without (valid) checksums, every chunk was decompressed instead: ``damaged`` lists
    #: those that cannot be; a chunk whose bytes changed but still decompress is not seen
    decode_checked: bool = False

    @property
    def ok(self) -> bool:
        """True when the structure is valid and no chunk failed its checksum (or, in a
        file without checksums, no chunk failed to decompress)."""
        return not self.damaged


def _regular(p: Any, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InvalidPathError(p, "is not a regular file")


def _map(path: Any) -> tuple[Any, Any]:
    """A private read-only mapping of the file ``path`` (``b""`` if it is empty) and
    the :class:`mlarray._maps.Watch` of it (None for an empty file)."""
    with os_errors(path, "cannot read"):
        return _maps.map_private_watched(path, _regular)


def digest_file(path: Any) -> dict[str, bytes]:
    """Inspect the frame at ``path`` and return its checksum entries (name: value, see
    :func:`encode_digests`), for storing in its vlmeta."""
    buf, watch = _map(path)
    info = _inspect_mapped(buf, path, watch)
    return encode_digests(buf, info)


def _inspect_mapped(buf: Any, path: Any, watch: Any) -> FrameInfo:
    """:func:`~mlarray.frame.inspect_frame` of the file ``path`` mapped as ``buf`` (its
    :class:`~mlarray._maps.Watch` ``watch``), the chunk headers read with ``pread``."""
    with _maps.reader(path, None if watch is None else (watch.dev, watch.ino)) as read_at:
        return inspect_frame(buf, path, read_at)


def refresh_file(store: Any, path: Any) -> None:
    """Recompute and store the digests of ``path`` through its open ``store``."""
    _maps.refuse_write(store, path)
    for key, value in digest_file(path).items():
        store.schunk.vlmeta[key] = value


def verify_file(path: Any, *, raise_on_error: bool = True) -> VerifyReport:
    """Check the whole file: frame structure and every chunk against its checksum.

    A file without (valid) checksums, as every file other tools write, has each chunk
    decompressed instead, one at a time (``decode_checked`` in the report): a chunk that
    cannot be decompressed is damaged; one whose bytes changed but still decompress
    cannot be told from an intact one.

    Parameters
    ----------
    path : str or PathLike
        An ``.mla`` file.
    raise_on_error : bool
        Raise :class:`~mlarray.errors.CorruptChunkError` at the first damaged
        chunk (default); otherwise list all damaged chunks in the report.

    Raises
    ------
    MLArrayFormatError
        If the frame structure is invalid (always raised).
    """
    buf, watch = _map(path)
    info = _inspect_mapped(buf, path, watch)
    raw, bound, rec = _stored(buf, info, path)
    expected = _decode_digests(raw, bound, rec, buf, info, path)
    stale = raw is not None and expected is None
    damaged: list[int] = []
    if expected is None:
        damaged = _undecodable(buf, info, path, watch, first_only=raise_on_error)
        if damaged and raise_on_error:
            i, why = damaged[0]
            raise CorruptChunkError(
                path,
                f"chunk {i} (chunk grid position {_chunk_coords(info, i)}) cannot be "
                f"decompressed ({why}); the file is damaged",
                chunk=i,
            )
        return VerifyReport(
            os.fspath(path), info.nchunks, False, [i for i, _ in damaged], stale, True
        )
    if info.nchunks:
        got = _watched_digests(buf, info, None, watch)
        damaged = [int(i) for i in np.flatnonzero(got != expected)]
        changed = None if not damaged or watch is None else watch.changed_error()
        if changed is not None:  # written by another program while being verified
            raise changed
        if damaged and raise_on_error:
            i = damaged[0]
            raise CorruptChunkError(
                path,
                f"chunk {i} (chunk grid position {_chunk_coords(info, i)}) does not match its "
                f"checksum; {len(damaged)} of {info.nchunks} chunks are damaged",
                chunk=i,
            )
    return VerifyReport(os.fspath(path), info.nchunks, True, damaged, stale)


class ChunkDecodeCheck:
    """Tells whether whole Blosc2 chunks decompress: what proves a chunk readable when
    its file has no checksums.

    Chunks are decoded one at a time into one buffer of the frame's chunk size, reused
    (the data are thrown away): checking a file holds one chunk in memory, whatever its
    size. What c-blosc2 trusts in a chunk (its sizes, its block starts:
    :func:`mlarray.frame.check_chunk_blocks`) is checked before it decodes it.
    """

    def __init__(self, chunksize: int, path: Any) -> None:
        self.chunksize = int(chunksize)
        try:
            self._out = np.empty(max(self.chunksize, 1), dtype=np.uint8)
        except MemoryError:
            raise MLArrayMemoryError(
                f"{path}: not enough memory to decode a chunk of {self.chunksize} bytes"
            ) from None
        self._lib = _clib.get()

    def problem(self, chunk: Any) -> str | None:
        """Why the whole chunk held in the bytes-like ``chunk`` cannot be decompressed,
        or None if it can."""
        try:
            check_chunk_blocks(chunk, "the chunk", self.chunksize)
        except Exception as exc:  # frame._Bad
            return str(exc)
        mv = memoryview(chunk).cast("B")
        nbytes = int.from_bytes(mv[4:8], "little", signed=True)
        out = self._out
        if self._lib is not None:
            src = np.frombuffer(mv, dtype=np.uint8)
            if chunk_special(mv, mv[3])[0] and nbytes > 0:  # a special value: no blocks stored
                return self._special_problem(src, nbytes, mv[3])
            got = self._lib.decompress(src.ctypes.data, len(mv), out.ctypes.data, self.chunksize)
            return None if got == nbytes else f"c-blosc2 error {got}"
        import blosc2

        try:
            blosc2.decompress2(mv, dst=out[: max(nbytes, 1)])
        except (RuntimeError, ValueError) as exc:
            return str(exc) or type(exc).__name__
        return None

    def _special_problem(self, src: np.ndarray, nbytes: int, typesize: int) -> str | None:
        """A chunk stored as a special value (zeros, NaN, a value): its first and last
        items decoded by c-blosc2, not all of them (the chunk of a tiny file may claim
        gigabytes of one value: decoding it whole took seconds per 64 GiB)."""
        if typesize < 1 or nbytes % typesize:
            return f"a chunk of {nbytes} bytes of {typesize}-byte items"
        n = nbytes // typesize
        for start in (0, n - 1):
            got = self._lib.getitem(
                src.ctypes.data, len(src), start, 1, self._out.ctypes.data, typesize
            )
            if got != typesize:
                return f"c-blosc2 error {got}"
        return None


def _undecodable(
    buf: Any, info: FrameInfo, path: Any, watch: Any, *, first_only: bool
) -> list[tuple[int, str]]:
    """The chunks of the frame in ``buf`` that cannot be decompressed, with why (only the
    first one with ``first_only``): each decoded where it is mapped, one at a time, its
    pages released after (:func:`_release`); ``watch`` (the file's
    :class:`mlarray._maps.Watch`, or None) is checked every few MiB."""
    if not info.nchunks:
        return []
    decoder = ChunkDecodeCheck(info.chunksize, path)
    mv = memoryview(buf).cast("B")
    # only chunks with bytes in the file (special values: nothing stored to decode); no
    # Python int for each of the millions of special chunks a tiny file may have
    stored = np.flatnonzero(info.chunk_pos >= 0)
    bad: list[tuple[int, str]] = []
    due = _CHECK_EVERY
    for i, p, n in zip(
        stored.tolist(),
        info.chunk_pos[stored].tolist(),
        info.chunk_cbytes[stored].tolist(),
        strict=True,
    ):
        if watch is not None and due >= _CHECK_EVERY:
            watch.check()
            due = 0
        due += n
        why = decoder.problem(mv[p : p + n])
        _release(buf, p, p + n)
        if why is not None:
            bad.append((i, why))
            if first_only:
                break
    changed = None if not bad or watch is None else watch.changed_error()
    if changed is not None:  # written by another program while being checked
        raise changed
    return bad
