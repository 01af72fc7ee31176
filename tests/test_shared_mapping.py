"""Read-only opens share one mapping per file version (mlarray._maps).

A data loader opens a file per patch; each open used to map the file anew (and
hold a descriptor per handle). These tests pin what users see: handles of one
file version hold one descriptor and one mapping between them, a file replaced
on disk is read as its new version by new handles and as its old one by old
handles (and the old one is not kept on disk by the cache), metadata of each
handle is its own, and read-only handles refuse writes without touching C.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import numpy as np
import pytest

from mlarray import Meta, MLArray
from mlarray.errors import CorruptChunkError, MetaValidationError, ReadOnlyError
from tests._children import run_python, wait_status


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mapped(name: str) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if name in line]


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 3000, (40, 56, 72)).astype(np.int16)


def test_handles_of_one_file_share_one_descriptor_and_mapping(tmp_path):
    p = tmp_path / "shared_one.mla"
    x = _volume()
    MLArray(x).save(p)
    MLArray.open(p)[0]  # the first open maps the file: count from here
    fds, maps = _fds(), len(_mapped("shared_one.mla"))
    handles = [MLArray.open(p) for _ in range(64)]
    for i, h in enumerate(handles):
        np.testing.assert_array_equal(h[i % 40, 3:50], x[i % 40, 3:50])
    assert _fds() - fds <= 1
    assert len(_mapped("shared_one.mla")) - maps <= 1


def test_replaced_file_new_handles_see_new_data_old_handles_keep_theirs(tmp_path):
    p = tmp_path / "shared_replaced.mla"
    old, new = _volume(1), _volume(2)
    MLArray(old).save(p)
    a = MLArray.open(p)
    np.testing.assert_array_equal(a[5], old[5])
    MLArray(new).save(p)  # atomic replace: a new inode under the same name
    b = MLArray.open(p)
    np.testing.assert_array_equal(b[...], new)
    np.testing.assert_array_equal(a[...], old)  # the old handle reads its own file, verified
    del a
    gc.collect()
    # nothing of this process maps the replaced (deleted) file any more: its space is freed
    assert not [line for line in _mapped("shared_replaced.mla") if "(deleted)" in line]


def test_each_handle_has_its_own_metadata(tmp_path):
    p = tmp_path / "shared_meta.mla"
    meta = Meta()
    meta.spatial.spacing = [1.0, 2.0, 3.0]
    meta.extra = {"site": "A", "tags": ["x"]}
    MLArray(_volume(), meta=meta).save(p)
    a, b = MLArray.open(p), MLArray.open(p)
    a.meta.spatial.spacing = [5.0, 5.0, 5.0]
    a.meta.extra["tags"].append("changed")
    a.meta.extra["site"] = "B"
    c = MLArray.open(p)
    for h in (b, c):
        assert h.meta.spatial.spacing == [1.0, 2.0, 3.0]
        assert h.meta.extra["site"] == "A" and h.meta.extra["tags"] == ["x"]
    assert MLArray.load(p).meta.extra["tags"] == ["x"]
    with pytest.raises(MetaValidationError):  # validation still applies to a handed-out copy
        c.meta.spatial.spacing = [1.0, -1.0]


def test_read_only_handles_refuse_writes(tmp_path):
    """Read-only handles decode straight from the shared mapping; a write must be
    refused before c-blosc2 sees it (it would abort the process)."""
    p = tmp_path / "shared_ro.mla"
    x = _volume()
    MLArray(x).save(p)
    code = (
        "import sys, numpy as np\n"
        "from mlarray import MLArray\n"
        "from mlarray.errors import ReadOnlyError\n"
        "a = MLArray.open(sys.argv[1])\n"
        "for key in [(0,), (slice(0, 4), 3), (np.array([0, 2]),), (a[...] > 0,)]:\n"
        "    try:\n"
        "        a[key] = 1\n"
        "    except ReadOnlyError:\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit('written')\n"
        "print(int(a[...].sum()))\n"
    )
    assert int(run_python(code, p)) == int(x.sum(dtype=np.int64))
    with pytest.raises(ReadOnlyError):
        MLArray.open(p)[0] = 1
    np.testing.assert_array_equal(MLArray.open(p)[...], x)


def test_damaged_chunk_is_caught_through_a_shared_mapping(tmp_path):
    """A chunk damaged on disk after handles of the file were open is still refused
    by a new handle (a write changes the file's version: it is checked again)."""
    p = tmp_path / "shared_damaged.mla"
    x = _volume()
    MLArray(x, patch_size=(16, 16, 16)).save(p)
    keep = MLArray.open(p)
    np.testing.assert_array_equal(keep[...], x)
    from mlarray.frame import inspect_frame

    raw = bytearray(p.read_bytes())
    info = inspect_frame(bytes(raw), p)
    start = int(info.chunk_pos[3]) + int(info.chunk_cbytes[3]) // 2
    raw[start] ^= 0xFF
    with open(p, "r+b") as f:  # in place: same inode, new size/mtime/ctime
        f.write(raw)
    with pytest.raises(CorruptChunkError):
        MLArray.open(p)[...]


def test_evicted_pages_of_the_shared_mapping_read_back(tmp_path):
    """After the shared mapping's pages are unmapped and the file is dropped from the
    page cache (as reclaim under memory pressure does), reads fault them back in."""
    from mlarray import _maps

    p = tmp_path / "shared_evicted.mla"
    x = _volume(3)
    MLArray(x, patch_size=(16, 16, 16)).save(p)
    h = MLArray.open(p)
    np.testing.assert_array_equal(h[...], x)
    _maps.drop_resident()
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    np.testing.assert_array_equal(h[3:30, 7:50, 1:70], x[3:30, 7:50, 1:70])
    np.testing.assert_array_equal(MLArray.open(p)[...], x)


def test_a_file_blosc2_refuses_is_refused_on_every_open(tmp_path):
    """A frame python-blosc2 refuses to open (a header field out of range) is refused
    again on later opens of the same, cached file version, not opened from the shared
    mapping (which validates less)."""
    from mlarray.errors import MLArrayFormatError

    p = tmp_path / "shared_bad_header.mla"
    x = np.random.default_rng(1).integers(0, 50, (24, 40, 40)).astype(np.int16)
    MLArray(x, patch_size=None, chunk_size=(8, 20, 20), block_size=(4, 10, 10)).save(p)
    raw = bytearray(p.read_bytes())
    raw[82] ^= 0x80  # a filters byte of the frame header: blosc2.open overflows on it
    p.write_bytes(bytes(raw))
    for _ in range(3):
        with pytest.raises(MLArrayFormatError, match=r"shared_bad_header\.mla"):
            MLArray.open(p)


def test_internal_writers_refuse_read_only_handles(tmp_path):
    """Writes through a read-only handle's store (the checksum refresh, a metadata
    flush) raise ReadOnlyError naming the file instead of reaching c-blosc2, which
    aborts the process on a write into a frame it does not own."""
    p = tmp_path / "shared_writers.mla"
    MLArray(_volume()).save(p)
    code = (
        "import sys\n"
        "from mlarray import MLArray, io, integrity\n"
        "from mlarray.errors import ReadOnlyError\n"
        "p = sys.argv[1]\n"
        "MLArray.open(p)[0]\n"
        "a = MLArray.open(p)\n"
        "a[1]\n"
        "a.meta.extra = {'changed': 1}\n"  # (a flush with nothing to write writes nothing)
        "calls = [lambda: integrity.refresh_file(a._store, p),\n"
        "         lambda: io.flush_meta(a._store, p, a.meta)]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except ReadOnlyError as e:\n"
        "        assert p in str(e), e\n"
        "    else:\n"
        "        sys.exit('written')\n"
        "print('ok')\n"
    )
    assert run_python(code, p).strip() == "ok"


def test_a_child_forked_while_the_mapping_cache_is_locked_can_open_files(tmp_path):
    """The mapping cache's lock held by another thread at fork time (a loader forking
    workers while its threads open files) does not hang the child's opens."""
    from mlarray import _maps

    p, q = tmp_path / "shared_fork_a.mla", tmp_path / "shared_fork_b.mla"
    x = _volume()
    MLArray(x).save(p)
    MLArray(x + 1).save(q)
    MLArray.open(p)[0]
    with _maps._LOCK:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = np.array_equal(MLArray.open(p)[2], x[2])
            ok = ok and np.array_equal(MLArray.open(q)[3], x[3] + 1)
            os._exit(0 if ok else 3)
    assert wait_status(pid) == 0


# -- handles reused across opens (io._idle_store) ----------------------------------------


def test_an_open_reuses_the_blosc2_array_of_a_dropped_handle_never_a_live_ones(tmp_path):
    """A loader that opens a file per patch gets the Blosc2 array of its previous,
    dropped handle back (no array built anew); a handle still in use, or anything
    still referring to its array, keeps its array to itself."""
    p = tmp_path / "reuse.mla"
    x = _volume()
    MLArray(x).save(p)
    MLArray.open(p)[0]
    a = MLArray.open(p)
    first = id(a._store)
    np.testing.assert_array_equal(a[3:9], x[3:9])
    del a
    b = MLArray.open(p)
    assert id(b._store) == first  # reused
    c = MLArray.open(p)
    assert c._store is not b._store  # b is alive: c gets its own
    kept = c._store
    del c
    d = MLArray.open(p)
    assert d._store is not kept  # something still refers to c's array: not reused
    for h in (b, d):
        np.testing.assert_array_equal(h[...], x)
        assert h.meta is not b.meta or h is b


def test_reused_arrays_follow_the_verification_setting_and_the_path(tmp_path):
    """A handle opened with verification off is not handed to an open that verifies
    (its reads would go unchecked), and errors name the path the user opened."""
    from mlarray import integrity
    from mlarray.frame import inspect_frame

    p = tmp_path / "reuse_verify.mla"
    MLArray(_volume(), patch_size=(16, 16, 16)).save(p)
    raw = bytearray(p.read_bytes())
    info = inspect_frame(bytes(raw), p)
    start = int(info.chunk_pos[0]) + int(info.chunk_cbytes[0]) // 2
    raw[start] ^= 0xFF
    with open(p, "r+b") as f:
        f.write(raw)
    previous = integrity.set_verify_on_read(False)
    try:
        MLArray.open(p)[0, 0, 0]  # unverified: whatever the damaged chunk decodes to
    except Exception:  # a damaged chunk may also fail to decode
        pass
    finally:
        integrity.set_verify_on_read(previous)
    gc.collect()
    with pytest.raises(CorruptChunkError):
        MLArray.open(p)[0, 0, 0]
    link = tmp_path / "other_name.mla"
    link.symlink_to(p)
    with pytest.raises(CorruptChunkError, match=r"other_name\.mla"):
        MLArray.open(link)[0, 0, 0]


def test_threads_opening_one_file_per_read_get_correct_patches(tmp_path):
    """Threads of one loader opening the same file for every patch never share a
    Blosc2 array (its decompression context is not thread-safe)."""
    import threading

    p = tmp_path / "reuse_threads.mla"
    x = _volume(3)
    MLArray(x, patch_size=(8, 8, 8)).save(p)
    errors: list[str] = []
    nthreads = 4
    stores: list[set[int]] = [set() for _ in range(60)]
    lock = threading.Lock()
    together = threading.Barrier(nthreads)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(60):
            lo = rng.integers(0, [24, 40, 56])
            key = tuple(slice(int(s), int(s) + 16) for s in lo)
            h = MLArray.open(p)
            with lock:
                stores[i].add(id(h._store))
            together.wait(timeout=60)  # every thread's handle of round i is open now
            if not np.array_equal(h[key], x[key]):
                errors.append(f"thread {seed}: wrong patch at {lo}")
            together.wait(timeout=60)
            del h

    threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(len(ids) == nthreads for ids in stores)  # open at once: never one array twice


def test_a_forked_child_reuses_arrays_of_its_parent_safely(tmp_path):
    p = tmp_path / "reuse_fork.mla"
    x = _volume(4)
    MLArray(x).save(p)
    a = MLArray.open(p)
    a[0]
    del a  # an idle one-thread array kept for reuse, inherited by the child
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = all(np.array_equal(MLArray.open(p)[i], x[i]) for i in range(0, 40, 7))
        os._exit(0 if ok else 3)
    assert wait_status(pid) == 0
    np.testing.assert_array_equal(MLArray.open(p)[...], x)


def test_an_open_during_another_threads_write_in_place_reads_the_written_file(
    tmp_path, monkeypatch
):
    """A reader opening a file while a writer (a napari layer being painted, another
    thread) is in the middle of an in-place write that grows it waits for the write
    and reads the new file: not the old mapping's view of it ("damaged")."""
    import threading
    import time

    from mlarray import io

    p = tmp_path / "reuse_writing.mla"
    z, y, xx = np.indices((40, 64, 64))
    old = ((z // 4 + y // 8 + xx // 16) % 7).astype(np.int16)  # compresses well
    MLArray(old, patch_size=None, chunk_size=(20, 32, 32), block_size=(10, 16, 16)).save(p)
    np.testing.assert_array_equal(MLArray.open(p)[...], old)  # this version was seen
    new = np.random.default_rng(2).integers(-30000, 30000, old.shape).astype(np.int16)
    journal_written = threading.Event()
    real = io._write_journal

    def slow_journal(*args):  # the write goes on 0.5 s after its journal exists
        out = real(*args)
        journal_written.set()
        time.sleep(0.5)
        return out

    monkeypatch.setattr(io, "_write_journal", slow_journal)
    w = MLArray.open(p, mode="a", mmap_mode=None)
    t = threading.Thread(target=w.__setitem__, args=((slice(None),) * 3, new))
    t.start()
    assert journal_written.wait(30)
    try:
        got = MLArray.open(p)[...]
    finally:
        t.join()
    np.testing.assert_array_equal(got, new)


def test_forget_verified_applies_to_reopened_files(tmp_path, monkeypatch):
    """After integrity.forget_verified() the next read of a chunk hashes it again, also
    through a handle that reuses a dropped handle's Blosc2 array."""
    from mlarray import integrity

    p = tmp_path / "reuse_forget.mla"
    MLArray(_volume(), patch_size=(16, 16, 16)).save(p)
    hashed: list[int] = []
    real = integrity.chunk_digests

    def spy(buf, info, ids=None, release=True):
        hashed.extend([] if ids is None else list(ids))
        return real(buf, info, ids, release)

    monkeypatch.setattr(integrity, "chunk_digests", spy)
    a = MLArray.open(p)
    a[0:8, 0:8, 0:8]
    del a
    for _ in range(3):
        integrity.forget_verified()
        hashed.clear()
        MLArray.open(p)[0:8, 0:8, 0:8]
        assert hashed == [0]


def test_paths_through_a_file_or_a_symlink_loop_are_not_found(tmp_path):
    """As Path.exists() (and the reference: a RuntimeError) sees them."""
    from mlarray.errors import MLArrayFileNotFoundError

    f = tmp_path / "file"
    f.write_bytes(b"x")
    loop = tmp_path / "loop.mla"
    loop.symlink_to(loop)
    for bad in (f / "x.mla", loop):
        with pytest.raises(MLArrayFileNotFoundError, match="no such"):
            MLArray.open(bad)
        with pytest.raises(RuntimeError):
            MLArray.open(bad)


def test_a_tracer_reading_locals_does_not_make_a_used_array_look_unused(tmp_path):
    """Debuggers and tracers that read a frame's locals add references while they run
    (here: while mlarray is imported, then while files are opened); two handles in
    use never share a Blosc2 array, traced or not."""
    p = tmp_path / "reuse_traced.mla"
    MLArray(_volume()).save(p)
    code = (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    frame.f_locals\n"
        "    return tracer\n"
        "sys.settrace(tracer)\n"
        "from mlarray import io\n"
        "sys.settrace(None)\n"
        "shared = []\n"
        "for traced in (False, True, False):\n"
        "    sys.settrace(tracer if traced else None)\n"
        "    for _ in range(2):\n"
        "        s, _m = io.open_store(sys.argv[1])\n"
        "        del s\n"
        "    s1, _ = io.open_store(sys.argv[1])\n"
        "    s2, _ = io.open_store(sys.argv[1])\n"
        "    sys.settrace(None)\n"
        "    shared.append(s1 is s2)\n"
        "    del s1, s2\n"
        "print(shared)\n"
    )
    assert run_python(code, p).strip() == "[False, False, False]"


# -- the mapping cache's size and what it lets go ------------------------------------------


@pytest.mark.parametrize(("soft", "kept"), [(64, 8), (1024, 128), (20000, 1024)])
def test_the_mapping_cache_keeps_an_eighth_of_the_descriptor_limit(tmp_path, soft, kept):
    """A training set of hundreds of files stays mapped where descriptors allow it;
    under a low descriptor limit the cache stays small (each mapping holds one)."""
    files = []
    for i in range(kept + 5):
        q = tmp_path / f"cap_{i}.mla"
        if i == 0:
            MLArray(np.arange(64, dtype=np.int16).reshape(4, 4, 4)).save(q)
        else:
            q.write_bytes(files[0].read_bytes())
        files.append(q)
    code = (
        "import resource, sys, os\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))\n"
        "from mlarray import MLArray\n"
        "before = len(os.listdir('/proc/self/fd'))\n"
        "for f in sys.argv[2:]:\n"
        "    assert MLArray.open(f)[1, 2, 3] == 16 + 8 + 3\n"
        "maps = sum(1 for line in open('/proc/self/maps') if 'cap_' in line)\n"
        "print(maps, len(os.listdir('/proc/self/fd')) - before)\n"
    )
    maps, fds = map(int, run_python(code, soft, *files, timeout=300).split())
    assert maps == kept
    assert fds <= kept


def test_files_replaced_or_deleted_by_another_program_are_let_go(tmp_path):
    """The cache does not keep a file another program replaced or deleted allocated on
    disk: opening other files drops its mapping (a handle still using it keeps it)."""
    a = tmp_path / "gone_replaced.mla"
    b = tmp_path / "gone_deleted.mla"
    x = _volume()
    MLArray(x).save(a)
    MLArray(x).save(b)
    kept = MLArray.open(a)  # in use: keeps the old file of a readable
    MLArray.open(b)[0]
    tmp = tmp_path / "other.tmp"
    MLArray(x + 1).save(tmp_path / "other.mla")
    os.replace(tmp_path / "other.mla", a)  # another program's save over a
    b.unlink()
    del tmp
    from mlarray import _maps

    def deleted_files() -> list[str]:
        return [line for line in _mapped("gone_") if "(deleted)" in line]

    def open_new_files_until(done: Any) -> None:
        # each new mapping looks at a few of the cached paths in turn (earlier tests of
        # this process cached others): within as many new mappings as there are cached
        # paths, every one of them was looked at. (One collection first, for handles a
        # reference cycle kept; one per new file made this test take minutes late in a
        # full run, where the process holds many objects and many cached paths.)
        gc.collect()
        for i in range(len(_maps._PATHS) + 2):
            if done():
                return
            q = tmp_path / f"gone_other_{i}_{len(_maps._PATHS)}.mla"
            MLArray(x).save(q)
            MLArray.open(q)[0]

    open_new_files_until(lambda: not any("gone_deleted" in line for line in deleted_files()))
    gc.collect()
    deleted = deleted_files()
    assert len(deleted) == 1 and "gone_replaced.mla" in deleted[0]  # only kept's
    np.testing.assert_array_equal(kept[...], x)
    del kept
    open_new_files_until(lambda: not deleted_files())
    gc.collect()
    assert not deleted_files()
    np.testing.assert_array_equal(MLArray.open(a)[...], x + 1)


def test_paths_with_dotdot_through_a_symlinked_folder_name_what_the_os_finds(tmp_path, monkeypatch):
    """``link/../x.mla`` is the file next to the link's target, as ``open()`` and
    ``os.stat`` find it; dropping ``link/..`` as text named a file that does not exist.
    Opens (absolute and relative, after a chdir), loads, writes through a handle, and a
    handle sent to a worker (pickled with its absolute path) all read the right file."""
    import pickle

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "link").symlink_to(tmp_path / "real" / "sub")
    vol = _volume()
    MLArray(vol).save(tmp_path / "real" / "x.mla")
    through = tmp_path / "other" / "link" / ".." / "x.mla"
    assert through.exists()
    np.testing.assert_array_equal(MLArray.open(through)[...], vol)
    np.testing.assert_array_equal(MLArray.load(through).to_numpy(), vol)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(MLArray.open(through)))[...], vol)
    with MLArray.open(through, mode="a", mmap_mode="r+") as a:
        a[0] = 7
    np.testing.assert_array_equal(MLArray.open(tmp_path / "real" / "x.mla")[0], 7)
    monkeypatch.chdir(tmp_path / "other")
    np.testing.assert_array_equal(MLArray.open("link/../x.mla")[1:], vol[1:])
    assert not (tmp_path / "other" / "x.mla").exists()


def test_chunk_headers_are_read_only_from_the_file_version_that_was_mapped(tmp_path):
    """``_maps.reader`` gives a pread of the path only while it is the file of the version
    mapped (device and inode); after a replace by rename, or for no version, none: the
    header check then reads the mapping itself."""
    from mlarray import _maps

    p = tmp_path / "a.bin"
    p.write_bytes(b"0123456789")
    st = os.stat(p)
    with _maps.reader(p, _maps.version_of(st)) as read_at:
        assert read_at(2, 3) == b"234"
    with _maps.reader(p, None) as read_at:
        assert read_at is None
    other = tmp_path / "b.bin"
    other.write_bytes(b"abcdefghij")
    os.replace(other, p)  # another file at the path now
    with _maps.reader(p, _maps.version_of(st)) as read_at:
        assert read_at is None
    with _maps.reader(tmp_path / "gone.bin", _maps.version_of(st)) as read_at:
        assert read_at is None
