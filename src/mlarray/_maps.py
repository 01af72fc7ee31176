"""Read-only mappings of ``.mla`` files, shared per file version.

Every open of a file maps it read-only (the frame is checked on the mapping before
c-blosc2 sees it, chunk checksums are hashed from it, read-only handles decode
straight from it). A data loader opens the same files again and again (nnU-Net: once
per patch), and a fresh mapping costs more than the map call: every page a read
touches is faulted into the new mapping again (~0.5-2 ms for a 96^3-192^3 patch).
So the mapping of a file version (device, inode, size, mtime, ctime) is made once
and shared by every handle of that version; handles hold it for as long as they
live, this cache keeps the most recently used ones.

A training set is hundreds of files, opened in random order: the cache keeps up to
1024 of them. Each cached mapping holds a file descriptor (Python's ``mmap`` keeps
one), so it keeps at most an eighth of the process's descriptor limit (128 files
under the common limit of 1024). A mapping keeps its file allocated on disk after it
was deleted or replaced, so only the newest version of a path is kept: a file
replaced by a save through mlarray, or opened again after it was replaced, is dropped
from the cache (handles that still use it keep it), and every new mapping looks at a
few cached paths in turn (:func:`_sweep`) and drops those that now name another file
or none (replaced or deleted by another program).

A mapping is only as long-lived as its file's length: a page past the end of a file
that another program truncated or rewrote in place (``open(path, "wb")``,
``truncate -s 0``) is a SIGBUS when touched, and the whole process dies. Replacing the
file by a rename (as mlarray saves) is safe: the old file stays mapped. So every store
that decodes from a mapping carries a :class:`Watch` of its file, and every read checks
it (:func:`check`, through the read hooks of :mod:`mlarray.integrity`) before c-blosc2
or numpy touches the mapping: a file changed in place raises
:class:`~mlarray.errors.FileChangedError`, naming the file and its sizes then and now.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "Version",
    "Watch",
    "absolute",
    "attached",
    "changed_by_this_process",
    "changed_error",
    "changed_since",
    "check",
    "check_read",
    "decodes_from_mapping",
    "forget",
    "frame_print",
    "frame_spans",
    "identity",
    "map_file",
    "map_private",
    "map_private_watched",
    "pread_at",
    "reader",
    "rename",
    "resync",
    "same_file",
    "touched_count",
    "version_of",
    "watch",
    "watch_of",
    "write_under_way",
    "writing",
]

Version = tuple[int, int, int, int, int]  # device, inode, size, mtime ns, ctime ns


def _limit() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 128
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(8, min(1024, soft // 8))


_MAX = _limit()
_MAPS: collections.OrderedDict[Version, mmap.mmap] = collections.OrderedDict()
# What users of a cached mapping keep with it (see attached); dropped with the mapping.
_ATTACHED: dict[Version, dict] = {}
_PATHS: dict[str, Version] = {}  # absolute path -> the version last mapped through it
_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    # A thread of the parent may have held the lock when it forked: the child's copy
    # would stay locked for ever.
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def version_of(st: os.stat_result) -> Version:
    """The file version ``st`` describes: any write changes its ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def absolute(path: os.PathLike | str) -> str:
    """``path`` made absolute against the working directory of now, ``..`` left in
    place: ``link/../x.mla`` names what the operating system finds through the link
    (``os.path.abspath`` would drop ``link/..`` as text and name another file)."""
    s = os.fsdecode(path)
    return s if os.path.isabs(s) else os.path.join(os.getcwd(), s)


def map_file(p: Path, check: Any) -> tuple[mmap.mmap, Version, Version | None]:
    """A read-only mapping of the regular file ``p``, its version, and the version of
    ``p`` this replaced in the cache (or None).

    A cached mapping of the version ``p`` has now is reused (one ``stat``). Otherwise
    ``p`` is opened non-blocking (a FIFO named like an ``.mla`` file cannot hang the
    caller), ``check(p, st)`` vets the ``fstat`` of the open descriptor (it raises
    for anything that is not a file worth mapping), and the new mapping is cached.
    ``OSError`` propagates for the caller to name the file.
    """
    key = absolute(p)
    try:
        st = os.stat(key)
    except OSError:
        st = None  # the open below reports it
    if st is not None and stat.S_ISREG(st.st_mode):
        version = version_of(st)
        with _LOCK:
            buf = _MAPS.get(version)
            if buf is not None:
                _MAPS.move_to_end(version)
                return buf, version, None
    _sweep()
    buf, st = _map_new(key, p, check)
    version = version_of(st)
    with _LOCK:
        old = _PATHS.get(key)
        replaced = old if old is not None and old != version else None
        if replaced is not None:
            _drop(replaced)
        _PATHS[key] = version
        _MAPS[version] = buf
        _ATTACHED.pop(version, None)  # anything kept with an earlier mapping of it
        while len(_MAPS) > _MAX:
            gone = next(iter(_MAPS))
            _drop(gone)
            for k in [k for k, v in _PATHS.items() if v == gone]:
                del _PATHS[k]
    return buf, version, replaced


_SWEEP = 4  # cached paths looked at per new mapping
_cursor = 0


def _sweep() -> None:
    """Drop the cached mappings of a few paths (:data:`_SWEEP`, in turn) that now name
    another file or none: replaced or deleted by another program, their old file would
    stay allocated on disk for as long as the cache kept it. A handle that still uses
    such a mapping keeps it."""
    global _cursor
    with _LOCK:
        n = len(_PATHS)
        if not n:
            return
        start = _cursor % n
        items = list(_PATHS.items())
        todo = [items[(start + i) % n] for i in range(min(_SWEEP, n))]
        _cursor = start + len(todo)
    for key, version in todo:
        try:
            st = os.stat(key)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == version[:2]:
            continue  # the same file (written in place, perhaps: its pages are the same)
        with _LOCK:
            if _PATHS.get(key) == version:
                del _PATHS[key]
                if version not in _PATHS.values():
                    _drop(version)


def map_private(p: Path, check: Any) -> mmap.mmap | bytes:
    """A read-only mapping of ``p`` of the caller's own (not cached; ``b""`` for an empty
    file). Opened non-blocking (a FIFO cannot hang the caller); ``check(p, st)`` vets
    the ``fstat`` of the open descriptor first. ``OSError`` propagates."""
    return _map_new(p, p, check)[0]


def map_private_watched(p: Path, check: Any) -> tuple[mmap.mmap | bytes, Watch | None]:
    """:func:`map_private`, and the :class:`Watch` of the file it mapped (None when
    empty): for long reads of the mapping that check it as they go."""
    buf, st = _map_new(p, p, check)
    return buf, (Watch(p, buf, version_of(st)) if st.st_size else None)


# read-only, non-blocking (a FIFO named like an .mla file cannot hang the caller)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _map_new(name: Any, p: Path, check: Any) -> tuple[Any, os.stat_result]:
    """Map the file ``name`` (``p`` is how the caller names it); with its ``fstat``."""
    fd = os.open(name, _READ_FLAGS)
    try:
        st = os.fstat(fd)
        check(p, st)
        return (mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if st.st_size else b""), st
    finally:
        os.close(fd)


@contextlib.contextmanager
def reader(p: Path, version: tuple | None) -> Iterator[Any]:
    """``read_at(offset, size)`` (an ``os.pread``) on a descriptor of ``p`` while it is
    the file of ``version`` (a :data:`Version`, or any tuple starting with the device
    and inode: the same pages as a mapping of that version); None when it is another
    file now, or cannot be opened. For :func:`mlarray.frame.inspect_frame`, which then
    maps no page of the chunks."""
    try:
        fd = os.open(p, _READ_FLAGS) if version is not None else -1
    except OSError:
        fd = -1
    if fd < 0:
        yield None
        return
    try:
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        same = st is not None and (st.st_dev, st.st_ino) == tuple(version[:2])
        yield pread_at(fd) if same else None
    finally:
        os.close(fd)


def pread_at(fd: int) -> Any:
    """``read_at(offset, size)`` on the open descriptor ``fd`` (None without
    ``os.pread``), for :func:`mlarray.frame.inspect_frame`."""
    if not hasattr(os, "pread"):
        return None
    return lambda offset, size: os.pread(fd, size, offset)


def _drop(version: Version) -> None:
    _MAPS.pop(version, None)
    _ATTACHED.pop(version, None)


def attached(version: Version, buf: mmap.mmap) -> dict | None:
    """A dict kept with the cached mapping ``buf`` of ``version`` and dropped with it
    (None if ``buf`` is no longer the cached mapping of ``version``).

    For what is only worth keeping while the mapping is: objects built on the
    mapping, which would otherwise keep it (and its descriptor) alive past the cache.
    """
    with _LOCK:
        if _MAPS.get(version) is not buf:
            return None
        return _ATTACHED.setdefault(version, {})


def forget(p: os.PathLike | str) -> Version | None:
    """Drop the cached mapping of ``p`` (after this process replaced the file); return
    the version it had, or None."""
    with _LOCK:
        version = _PATHS.pop(absolute(p), None)
        if version is not None:
            _drop(version)
    return version


def drop_resident() -> None:
    """Unmap every page of the cached mappings from this process; the page cache keeps
    them and the mappings stay usable (a later read faults its pages back in).

    What the kernel's reclaim does to a mapped file under memory pressure. A page
    this process maps cannot be dropped from the page cache by
    ``posix_fadvise(POSIX_FADV_DONTNEED)``, so benchmarks of cold reads call this
    before evicting a file.
    """
    with _LOCK:
        bufs = list(_MAPS.values())
    for buf in bufs:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            buf.madvise(mmap.MADV_DONTNEED)


_BORROWED = "_mlarray_frame"  # a store whose frame lives in a shared mapping holds it here


def lend(store: Any, view: memoryview) -> None:
    """Record that ``store`` decodes from ``view`` (a shared mapping): the store keeps
    it alive, and :func:`refuse_write` refuses writes through the store."""
    setattr(store, _BORROWED, view)


def decodes_from_mapping(store: Any) -> bool:
    """Whether ``store`` decodes its chunks from the file's shared mapping (a read-only
    handle made by :func:`lend`, or one that says so: the napari reader's C store), so
    the pages of the chunks a read verifies are mapped again at once when it decodes
    them (other stores read through c-blosc2's own file access)."""
    return getattr(store, _BORROWED, None) is not None or bool(
        getattr(store, "decodes_from_mapping", False)
    )


def refuse_write(store: Any, path: Any) -> None:
    """Raise :class:`~mlarray.errors.ReadOnlyError` if ``store`` decodes from a shared
    read-only mapping: c-blosc2 would write into memory it does not own (the process
    aborts) instead of refusing the write."""
    if getattr(store, _BORROWED, None) is not None:
        from mlarray.errors import ReadOnlyError

        raise ReadOnlyError(
            f"{path}: opened read-only; use MLArray.open(path, mmap_mode='r+') to write"
        )


_WATCH = "_mlarray_watch"  # a store decoding from a mapping of a file holds its Watch here


class Watch:
    """What a handle decoding from a mapping of a file expects that file to be.

    The file is the one :func:`map_file` mapped: ``version`` is its (device, inode,
    size, mtime, ctime) then, ``buf`` its mapping (Python's ``mmap`` keeps a descriptor
    of it, so no descriptor is added per handle). :meth:`check` costs one ``stat``:

    * while ``path`` still names that file, any change of its size or modification
      time (a truncation, a rewrite in place, an append: writes by other programs or
      other handles) raises; the bytes a mapping shows may no longer be the frame the
      handle was opened on, and pages past a new, shorter end would be a SIGBUS;
    * once ``path`` names another file or none (replaced by a rename, deleted), the
      mapped file can only be changed through a descriptor someone kept: its size is
      checked through the mapping's own descriptor (``mmap.size()``, an ``fstat``).

    Not closed: a truncation *during* a read that already passed its check (the few
    milliseconds c-blosc2 decodes, per group of chunks for whole-volume reads) is still
    a SIGBUS. Nothing in-process can turn that into an error safely (see
    :func:`check`); the window is one read long instead of the handle's lifetime.
    """

    __slots__ = (
        "_given",
        "_journal",
        "_print",
        "_spans",
        "_stat_path",
        "buf",
        "by_path",
        "dev",
        "ino",
        "mtime",
        "path",
        "size",
        "touched",
        "writes",
        "writing",
    )

    def __init__(
        self, path: Any, buf: Any, version: Version, spans: Any = None, by_path: bool = False
    ) -> None:
        self._name(path)
        self.buf = buf
        self.dev, self.ino, self.size, self.mtime = version[0], version[1], version[2], version[3]
        # The byte ranges of the mapping that describe the frame (its header, and its
        # trailer with the chunk index and the metadata, chunk checksums included) and
        # their digest now: a file whose modification time moved while these stayed the
        # same was touched, not rewritten (see check).
        self._spans = spans if buf is not None else None
        self._print = self._fingerprint()
        #: times the file was found touched: its chunks are checked against their
        #: checksums again (integrity), for a chunk rewritten in place keeps the trailer
        self.touched = 0
        #: in-place writes through this very handle under way (see :func:`writing`): its
        #: reads from other threads meanwhile see the file change as the write goes
        self.writing = 0
        self.writes = 0  # in-place writes through this handle begun so far
        #: the handle's reads open the file by its path (see :func:`watch`)
        self.by_path = by_path

    def _name(self, path: Any) -> None:
        self._given = os.fspath(path)
        self.path = absolute(self._given)
        self._stat_path = os.fsencode(self.path)  # not encoded again on every check
        self._journal: bytes | None = None  # the undo journal's name, worked out once

    def _journal_exists(self) -> bool:
        """Whether the undo journal of an in-place write of mlarray into the file exists
        (a write under way, or one a crash interrupted)."""
        if self._journal is None:
            from mlarray._sidefiles import journal_path

            self._journal = os.fsencode(journal_path(self.path))
        try:
            os.stat(self._journal)
        except (OSError, ValueError):
            return False
        return True

    def check_read(self, touched: int) -> None:
        """After a read decoded from the file: raise
        :class:`~mlarray.errors.FileChangedError` if the file changed while it did
        (:meth:`check`, found touched since ``touched`` was this watch's count, or its
        frame's header and trailer differ), or an in-place write of mlarray is under way
        (its undo journal exists), for the read may hold voxels of two versions
        (:meth:`changed_error`, and the touched count). The modification time alone does
        not tell: it moves at most once per tick of the kernel's clock, and not for every
        write through a shared mapping."""
        if self.writing:
            return  # this handle's own write: its reads are not told about it
        changed = self.changed_error()
        if changed is None and self.touched != touched:  # found touched meanwhile
            from mlarray.errors import FileChangedError

            changed = FileChangedError(
                self.path,
                "changed on disk while it was being read (written in place by another "
                "program or handle); reopen it to read the new version",
                was=self.size,
            )
        if changed is not None:
            raise changed

    def check(self) -> None:
        """Raise :class:`~mlarray.errors.FileChangedError` if the file changed in place."""
        begun = self.writes
        if self.writing:
            return
        try:
            st = os.stat(self._stat_path)
        except (OSError, ValueError):
            st = None
        if st is not None and st.st_ino == self.ino and st.st_dev == self.dev:
            if st.st_mtime_ns == self.mtime and st.st_size == self.size:
                return
            if self.writing or self.writes != begun:
                return  # this handle began a write while the stat ran: its own change
            if (
                st.st_size == self.size
                and self._print is not None
                and self._fingerprint() == self._print  # same size: safe to read
                and not self._journal_exists()  # not a write of mlarray under way
            ):
                self.mtime = st.st_mtime_ns  # touched, not rewritten
                self.touched += 1
                return
            self._changed(st.st_size)
        if self.by_path:  # its reads would go to the file the path names now
            from mlarray.errors import FileChangedError

            raise FileChangedError(
                self.path,
                "replaced or deleted since it was opened (this handle reads the file by "
                "its path); reopen it to read the new version",
                was=self.size,
            )
        try:
            now = self.buf.size()  # fstat of the descriptor the mapping keeps
        except (OSError, ValueError, AttributeError):
            return  # no descriptor (not an mmap) or a closed one: nothing mapped to lose
        if now != self.size:  # the mapped file itself, whatever its path names now
            self._changed(now)

    def changed_error(self) -> Exception | None:
        """The :class:`~mlarray.errors.FileChangedError` to raise instead of a "damaged"
        error a read just hit, if the file changed since the handle opened it (or is being
        written in place right now); None if it did not: the damage is real.

        Called only after a read failed. It looks further than :meth:`check`: the frame's
        header and trailer in the mapping even when size and modification time are the
        same (a write within one timestamp tick), and the undo journal mlarray's in-place
        writers keep while a write is under way.
        """
        from mlarray.errors import FileChangedError

        try:
            self.check()
        except FileChangedError as exc:
            return exc
        if self.writing:
            return None  # this handle's own write: its reads are not told about it
        rewritten = self._print is not None and self._fingerprint() != self._print
        if rewritten or self._journal_exists():
            return FileChangedError(
                self.path,
                "changed on disk while it was being read (written in place by another "
                "program or handle); reopen it to read the new version",
                was=self.size,
            )
        return None

    def _fingerprint(self) -> int | None:
        """XXH3-64 of the frame's header and trailer in the mapping (None without them)."""
        return frame_print(self.buf, self._spans) if self._spans else None

    def _changed(self, now: int) -> None:
        from mlarray.errors import FileChangedError

        if now < self.size:
            how = "truncated or rewritten in place by another program or handle"
        else:
            how = "written to in place by another program or handle"
        raise FileChangedError(
            self.path,
            f"changed on disk while open: it is now {now} bytes, was {self.size} ({how}); "
            "reopen it to read the new version",
            size=now,
            was=self.size,
        )

    def resync(self, st: os.stat_result) -> None:
        """The handle changed the file itself (an in-place write): expect it as ``st``."""
        if (st.st_dev, st.st_ino) == (self.dev, self.ino):
            self.size, self.mtime = st.st_size, st.st_mtime_ns
            self._print = None  # its frame moved: a later touch is reported as a change

    def changed_by_this_process(self) -> bool:
        """Whether the file changed in place since the handle opened it, and is now as
        the last in-place write of this process left it (through another handle)."""
        try:
            st = os.stat(self._stat_path)
        except (OSError, ValueError):
            return False
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            return False
        now = (st.st_size, st.st_mtime_ns)
        return now != (self.size, self.mtime) and _OWN.get((self.dev, self.ino)) == now


def watch(
    store: Any, path: Any, buf: Any, version: Version, info: Any = None, by_path: bool = False
) -> None:
    """Give ``store``, which decodes from (a mapping of) the file version ``version``
    of ``path`` mapped as ``buf``, the :class:`Watch` its reads check; ``info`` (the
    frame's :class:`~mlarray.frame.FrameInfo`) lets it tell a touched file from a
    rewritten one. ``by_path``: the store's reads open ``path`` itself, so once ``path``
    names another file or none its reads raise instead of reading that file."""
    spans = None if info is None else frame_spans(info, version[2])
    with contextlib.suppress(AttributeError):
        setattr(store, _WATCH, Watch(path, buf, version, spans, by_path))


def rename(store: Any, path: Any) -> None:
    """A kept handle of the same file version is handed to an open of ``path`` (another
    spelling, maybe): its checks stat and name that path."""
    w = getattr(store, _WATCH, None)
    if w is not None and (w._given != os.fspath(path) or w.path != absolute(path)):
        w._name(path)  # another spelling, or the same one from another working directory


def watch_of(store: Any) -> Watch | None:
    """The :class:`Watch` of ``store`` (None for a store without a file)."""
    return getattr(store, _WATCH, None)


def check(store: Any) -> None:
    """Raise :class:`~mlarray.errors.FileChangedError` if the file ``store`` decodes from
    was changed in place since it was opened; nothing for stores without a file.

    Called before anything reads from the mapping. The alternatives to a check before
    the read were weighed: a SIGBUS handler cannot return into the faulting C code
    (Python runs its handlers between bytecodes, after the fault; a C handler that
    jumps out of c-blosc2 would leave its contexts and allocator inconsistent), and
    reading the chunks with ``pread`` instead of from the mapping would cost a copy of
    the compressed bytes on every read.
    """
    w = getattr(store, _WATCH, None)
    if w is not None:
        w.check()


def frame_spans(info: Any, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The byte ranges of a frame (:class:`~mlarray.frame.FrameInfo` ``info``, in a file
    of ``size`` bytes) that describe it: its header, and its trailer (the chunk index and
    the metadata, checksums included). Every in-place write changes them."""
    return ((0, info.header_len), (info.header_len + info.cbytes, size))


def frame_print(buf: Any, spans: Any) -> int:
    """XXH3-64 of the byte ranges ``spans`` (:func:`frame_spans`) of the mapping ``buf``."""
    import xxhash

    h = xxhash.xxh3_64()
    with memoryview(buf) as view:
        for a, b in spans:
            h.update(view[a:b])
    return h.intdigest()


def touched_count(store: Any) -> int:
    """How often the file of ``store`` was found touched so far (0 without a file): what
    :func:`check_read` compares with after the read."""
    w = getattr(store, _WATCH, None)
    return 0 if w is None else w.touched


def check_read(store: Any, touched: int, cache: Any = None) -> None:
    """:meth:`Watch.check_read` of ``store``'s file (nothing for a store without one):
    called after a read that decoded from the file, with the :func:`touched_count`
    taken after the check before it. The read's chunk cache ``cache`` (if any) is
    emptied when the check fails: it may hold blocks of both versions."""
    w = getattr(store, _WATCH, None)
    if w is None:
        return
    try:
        w.check_read(touched)
    except Exception:
        if cache is not None:
            cache.clear()
        raise


def changed_error(store: Any) -> Exception | None:
    """:meth:`Watch.changed_error` of ``store`` (None for a store without a file)."""
    w = getattr(store, _WATCH, None)
    return None if w is None else w.changed_error()


def write_under_way(path: Any) -> bool:
    """Whether an in-place write of mlarray into ``path`` is under way (or was interrupted):
    its undo journal exists (:func:`mlarray._sidefiles.journal_path`)."""
    from mlarray._sidefiles import journal_path

    try:
        return journal_path(path).exists()
    except (OSError, ValueError):
        return False


def changed_since(path: Any, version: Version) -> bool:
    """Whether the file ``path`` is no longer the file version ``version`` (written,
    replaced or deleted since), or is being written in place by mlarray now: what an
    open that found its frame inconsistent asks before calling the file damaged."""
    try:
        st = os.stat(absolute(path))
    except OSError:
        return True
    return version_of(st) != version or write_under_way(path)


def identity(store: Any) -> tuple | None:
    """Which file version ``store`` reads: device, inode, size and the digest of its
    frame's header and trailer (a touch changes none of them; the modification time
    where there is no digest); None for a store without a mapped file."""
    w = getattr(store, _WATCH, None)
    if w is None or w.buf is None:
        return None
    return (w.dev, w.ino, w.size, w._print if w._print is not None else w.mtime)


def same_file(a: Any, b: Any) -> bool:
    """Whether stores ``a`` and ``b`` were opened on the same version of the same file."""
    ida = identity(a)
    return ida is not None and ida == identity(b)


# The state (size, mtime) the last in-place write of this process left each file in, by
# (device, inode): another handle of the same file can tell that change from another
# program's (see Watch.changed_by_this_process).
_OWN: dict[tuple[int, int], tuple[int, int]] = {}
_OWN_MAX = 4096


@contextlib.contextmanager
def writing(store: Any) -> Iterator[None]:
    """An in-place write through ``store`` is under way: its reads do not report the
    changes of its file meanwhile."""
    w = getattr(store, _WATCH, None)
    if w is not None:
        w.writes += 1
        w.writing += 1
    try:
        yield
    finally:
        if w is not None:
            w.writing -= 1


def resync(store: Any, st: os.stat_result) -> None:
    """``store`` wrote its file in place (now described by ``st``): its reads expect that,
    and other handles of this process can tell it was this process's write."""
    w = getattr(store, _WATCH, None)
    if w is not None:
        w.resync(st)
    _OWN[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns)
    while len(_OWN) > _OWN_MAX:
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread's
            _OWN.pop(next(iter(_OWN)))


def changed_by_this_process(store: Any) -> bool:
    """Whether the file of ``store`` was changed in place since it was opened, by an
    in-place write of this process through another handle (and nothing since)."""
    w = getattr(store, _WATCH, None)
    return w is not None and w.changed_by_this_process()
