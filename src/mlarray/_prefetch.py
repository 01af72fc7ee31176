"""Ask the kernel for the compressed bytes a read needs, all at once, before decoding.

A read of a file that is not in the page cache (a data loader's first epoch, a file
evicted by other work) otherwise waits on the disk page fault by page: Blosc2 walks the
touched chunks' blocks through its memory map and every missing page is one synchronous
read. :meth:`Prefetcher.region` first hands the kernel the byte range of every chunk the
read touches (``madvise(MADV_WILLNEED)``, one call per run of chunks stored next to each
other), so the reads are queued together and overlap; the decoding then finds the pages
there or in flight. On pages already cached the hint costs a few microseconds.

Only read-only handles get a prefetcher: the chunk positions are those of the file as it
was opened.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlarray import _maps
from mlarray.frame import FrameInfo
from mlarray.indexing import key_bounds

__all__ = ["Prefetcher", "attach", "for_frame", "prefetch_read"]

_ATTR = "_mlarray_prefetch"
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)
#: Runs of chunks whose gap in the file is at most this many bytes are asked for together.
_GAP = 64 * 1024
_PAGE = mmap.PAGESIZE


_MINCORE: Any = None  # (mincore function or None, ctypes), loaded on first use


def _load_mincore() -> tuple[Any, Any]:
    """libc's ``mincore`` through ctypes (loaded on the first read: not at import)."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):  # not a POSIX libc: no residency check
        return None, ctypes
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn, ctypes


def _address(buf: mmap.mmap) -> int | None:
    """Start address of a mapping (for ``mincore``), None if it cannot be had."""
    try:
        return np.frombuffer(buf, dtype=np.uint8).ctypes.data if len(buf) else None
    except (TypeError, ValueError):
        return None


def _resident(addr: int | None, offset: int) -> bool:
    """Whether the page at ``offset`` of the mapping is in the page cache (False when
    it cannot be told)."""
    global _MINCORE
    if _MINCORE is None:
        _MINCORE = _load_mincore()
    fn, ctypes = _MINCORE
    if fn is None or addr is None:
        return False
    vec = ctypes.c_ubyte()  # one per call: reads come from several threads (napari)
    if fn(addr + offset, _PAGE, ctypes.byref(vec)) != 0:
        return False
    return bool(vec.value & 1)


class Prefetcher:
    """The file positions of one opened frame's chunks, and its read-only mapping."""

    __slots__ = ("addr", "buf", "cbytes", "end", "geometry", "pos", "samples", "shape", "size")

    def __init__(self, buf: mmap.mmap, info: FrameInfo) -> None:
        self.buf = buf
        self.size = len(buf)
        self.addr = _address(buf)
        self.geometry = info.geometry()
        self.shape = self.geometry.shape
        # the frame's own arrays (no copy: a frame may have millions of chunks); a
        # special chunk (zeros, NaNs: no bytes in the file) has position -1
        self.pos = np.asarray(info.chunk_pos, dtype=np.int64)
        self.cbytes = np.asarray(info.chunk_cbytes, dtype=np.int64)
        last = int(np.argmax(self.pos)) if len(self.pos) else 0  # chunks do not overlap
        self.end = int(self.pos[last] + self.cbytes[last]) if len(self.pos) else 0
        self.end = max(self.end, 0)
        stored = np.flatnonzero(self.pos >= 0)  # the pages of a few chunk headers
        picks = (
            [int(self.pos[i]) for i in (stored[0], stored[len(stored) // 2], stored[-1])]
            if len(stored)
            else ()
        )
        self.samples = sorted({a - a % _PAGE for a in picks})

    def _ask(self, a: int, b: int, check: bool) -> bool:
        """madvise(WILLNEED) ``[a, b)`` unless ``check`` and its first page is cached."""
        a -= a % _PAGE
        b = min(b, self.size)
        if b <= a:
            return False
        if check and _resident(self.addr, a):
            return False
        with contextlib.suppress(OSError, ValueError):
            self.buf.madvise(_WILLNEED, a, b - a)
        return True

    def headers_resident(self) -> bool:
        """Whether the pages holding the first bytes of the first, middle and last chunk
        are in the page cache: a sample of whether the file is.

        Decoding straight from the shared mapping (``mlarray.io``) reads every chunk's
        header when the handle is made; on a file evicted from the page cache that is
        one synchronous read (with the kernel's read-around) per chunk, 15 ms for a
        40 MB file, where opening the file lazily reads only its ends.
        """
        return all(_resident(self.addr, a) for a in self.samples)

    def frame_ends(self, header_len: int) -> None:
        """Ask for the frame's header and its trailer (chunk offsets, metadata): what
        opening the file reads before any chunk."""
        self._ask(0, header_len, True)
        self._ask(self.end, self.size, True)

    def region(self, start: Sequence[int], stop: Sequence[int]) -> int:
        """Ask for the chunks overlapping the box ``start:stop`` that are not cached;
        returns the number of ``madvise`` calls.

        Residency is sampled (``mincore`` of the middle page of the first chunk): on a
        file in the page cache a read pays a few microseconds, not the kernel's walk
        over every page of the touched chunks. A file partly evicted may get no hint.
        """
        geo = self.geometry
        if len(start) != len(geo.shape):
            return 0
        box = [
            (max(int(lo), 0), min(int(hi), n))
            for lo, hi, n in zip(start, stop, geo.shape, strict=True)
        ]
        if any(hi <= lo for lo, hi in box):
            return 0
        # the first chunk alone first: on a cached file that is all a read pays for
        first = geo.chunks_in_box([(lo, lo + 1) for lo, _ in box])[0]
        a = int(self.pos[first])
        if a >= 0:
            b = a + int(self.cbytes[first])
            mid = (a + b) // 2  # a page of this chunk alone (its ends may share a page)
            if _resident(self.addr, mid - mid % _PAGE):
                return 0
        ids = np.asarray(geo.chunks_in_box(box), dtype=np.intp)
        starts = self.pos[ids]
        ids, starts = ids[starts >= 0], starts[starts >= 0]
        spans: list[list[int]] = []
        for a, n in zip(starts.tolist(), self.cbytes[ids].tolist(), strict=True):
            b = a + n
            if b <= a:
                continue
            if spans and spans[-1][0] - _GAP <= a <= spans[-1][1] + _GAP:
                spans[-1][0] = min(spans[-1][0], a)
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
        return sum(self._ask(a, b, False) for a, b in spans)


_KEY = "prefetch.prefetcher"


def for_frame(buf: Any, info: FrameInfo, version: tuple) -> Prefetcher | None:
    """The prefetcher of file version ``version`` mapped in ``buf`` (None where ``madvise``
    is not available).

    Kept with the shared mapping of the file (:func:`mlarray._maps.attached`) and
    shared by its handles, so a data loader opening the same files again and again
    builds each once, and a mapping the cache lets go is not kept alive by it.
    """
    if _WILLNEED is None or not isinstance(buf, mmap.mmap) or not info.nchunks:
        return None
    extras = _maps.attached(version, buf)
    if extras is None:  # not (or no longer) the cached mapping of the file
        return Prefetcher(buf, info)
    pre = extras.get(_KEY)
    if pre is None:
        pre = extras.setdefault(_KEY, Prefetcher(buf, info))
    return pre


def attach(store: Any, prefetcher: Prefetcher | None) -> None:
    """Give a read-only opened store the prefetcher of its file."""
    if prefetcher is not None:
        with contextlib.suppress(AttributeError):
            setattr(store, _ATTR, prefetcher)


def prefetch_read(store: Any, key: Any, box: tuple[Any, Any] | None = None) -> None:
    """Ask for the chunks a read of ``store[key]`` touches (if ``store`` has a prefetcher).

    ``box`` (``start``, ``stop`` per axis), when the caller knows it, spares working out
    the key's bounds. A key numpy would refuse is left to the read itself to report.
    """
    pre = getattr(store, _ATTR, None)
    if pre is None:
        return
    if box is None:
        try:
            bounds = key_bounds(key, pre.shape)
        except Exception:  # an invalid key: the read reports it
            return
        if bounds is None:
            return
        box = ([lo for lo, _ in bounds], [hi for _, hi in bounds])
    pre.region(*box)
