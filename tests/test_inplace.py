"""In-place writes are all-or-nothing: a full disk, a failed write or a killed writer never
damages the file (``mlarray.io.write_in_place``, RELIABILITY.md "In-place writes").

Real files, real blosc2, and real faults: a full tmpfs mounted in a private mount
namespace (``unshare -m``; skipped where mounting is not allowed), a file-size limit
(``RLIMIT_FSIZE``, everywhere), and writer processes killed with SIGKILL or SIGBUS.
Permission tests run the operation as the unprivileged user ``nobody`` when the tests
run as root (root passes every access check).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlarray import MLArray, io
from mlarray.errors import FileChangedError, MLArrayError, MLArrayIOError
from mlarray.integrity import verify_file

MODES = [
    pytest.param({"mode": "a", "mmap_mode": None}, id="a-nommap"),
    pytest.param({"mode": "r", "mmap_mode": "r+"}, id="mmap-r+"),
]


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _volume(shape=(40, 64, 64), seed=0) -> np.ndarray:
    """Well-compressible data: rewriting a chunk with noise makes the file grow."""
    z, y, x = np.indices(shape)
    return ((z // 4 + y // 8 + x // 16) % 7).astype(np.int16) + seed


def _save(p: Path, data: np.ndarray) -> None:
    MLArray(data, patch_size=None, chunk_size=(20, 32, 32), block_size=(10, 16, 16)).save(p)


def _left_behind(p: Path) -> list[str]:
    """Files beside ``p``, other than the tests' own (scripts, the full-disk filler)."""
    own = (p.name, "filler")
    return sorted(x.name for x in p.parent.iterdir() if x.name not in own and x.suffix != ".py")


@pytest.mark.parametrize("how", MODES)
def test_every_write_is_committed_with_current_checksums(tmp_path, how):
    p = tmp_path / "w.mla"
    data = _volume()
    _save(p, data)
    a = MLArray.open(p, **how)
    rng = np.random.default_rng(1)
    for key in [
        (slice(5, 30), slice(10, 60), slice(0, 40)),
        (slice(None, None, 3), 7, slice(None)),
        ([1, 30, 39], slice(2, 5), [0, 63, 31]),  # advanced: through the bounding box
        (np.zeros((40, 64, 64), bool) | (np.indices((40, 64, 64))[0] == 33),),
        (Ellipsis, 0),
    ]:
        value = rng.integers(-500, 500, np.empty((40, 64, 64))[key].shape).astype(np.int16)
        a[key] = value
        data[key] = value
        # Committed at once: no journal, every checksum current, the data on disk.
        assert _left_behind(p) == []
        assert verify_file(p).ok
        assert np.array_equal(MLArray.open(p)[...], data)
    a.close()
    assert verify_file(p).has_checksums
    assert np.array_equal(MLArray.open(p)[...], data)


# ----------------------------------------------------------------------------- full disk

_FULL_DISK = r"""
import json, os, shutil, sys
import numpy as np
sys.path.insert(0, sys.argv[4])
from tests.test_inplace import _save, _volume, _sha, _left_behind
from mlarray import MLArray, io
from mlarray.errors import DiskFullError, MLArrayError
from mlarray.integrity import verify_file

phase, d, out = sys.argv[1], sys.argv[2], sys.argv[3]
p = os.path.join(d, "v.mla")
filler = os.path.join(d, "filler")


def fill(leave):
    # Fill the file system, then give back `leave` bytes.
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc
    os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    os.close(fd)


def attempt(how, key, value):
    before = _sha(p)
    a = MLArray.open(p, **how)
    try:
        a[key] = value
        got = "ok"
    except MLArrayError as exc:
        got = [type(exc).__name__, str(exc), getattr(exc, "errno", None)]
    try:
        a.close()
        closed = "ok"
    except MLArrayError as exc:
        closed = type(exc).__name__
    same = _sha(p) == before
    b = MLArray.open(p)
    return {"write": got, "close": closed, "same": same, "verify": verify_file(p).ok,
            "left": _left_behind(__import__("pathlib").Path(p)), "shape": list(b.shape)}


noise = np.random.default_rng(5).integers(-30000, 30000, (20, 32, 32)).astype(np.int16)
key = (slice(20, 40), slice(32, 64), slice(32, 64))  # the last chunk: a small journal
modes = {"a": {"mode": "a", "mmap_mode": None}, "r+": {"mmap_mode": "r+"}}
rows = {}
if phase == "reserve":
    for name, how in modes.items():
        _save(__import__("pathlib").Path(p), _volume())
        fill(24 << 10)
        rows[name] = attempt(how, key, noise)
        os.unlink(filler)  # with space again, the same write works
        rows[name + "-space"] = attempt(how, key, noise)
        rows[name + "-space"]["data"] = bool(np.array_equal(MLArray.open(p)[key], noise))
elif phase == "nofallocate":  # a file system without fallocate: the free space is checked
    io._fallocate = lambda fd, mode, offset, length: False
    _save(__import__("pathlib").Path(p), _volume())
    fill(24 << 10)
    rows["nofallocate"] = attempt(modes["r+"], key, noise)
    os.unlink(filler)
elif phase == "journal":  # no reservation: c-blosc2 runs out of space in the middle
    io._reserve = lambda fd, size, length: None
    _save(__import__("pathlib").Path(p), _volume())
    fill(24 << 10)
    rows["journal"] = attempt(modes["a"], key, noise)
    os.unlink(filler)
elif phase == "crash":  # no reservation, memory-mapped: the kernel sends SIGBUS
    io._reserve = lambda fd, size, length: None
    _save(__import__("pathlib").Path(p), _volume())
    json.dump({"sha": _sha(p)}, open(os.path.join(out, "crash.json"), "w"))
    fill(24 << 10)
    a = MLArray.open(p, mmap_mode="r+")
    print(json.dumps({"crash-journal-written": True}), flush=True)
    a[key] = noise
    rows["crash-survived"] = True
elif phase == "check":
    want = json.load(open(os.path.join(out, "crash.json")))["sha"]
    rows["journal-before-open"] = os.path.exists(io.journal_path(p))
    b = MLArray.open(p)  # rolls the interrupted write back
    rows["check"] = {"same": _sha(p) == want, "verify": verify_file(p).ok,
                     "left": _left_behind(__import__("pathlib").Path(p)),
                     "data": bool(np.array_equal(b[...], _volume()))}
print(json.dumps(rows), flush=True)
"""


def _namespace_prefix() -> list[str] | None:
    """A command prefix that runs a shell in a private mount namespace where tmpfs mounts."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return None
    probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d" && rmdir "$d"'
    for prefix in (
        ["unshare", "-m", "--propagation", "private"],
        ["unshare", "-Urm", "--propagation", "private"],  # unprivileged user namespace
    ):
        try:
            ok = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok.returncode == 0:
            return prefix
    return None


NAMESPACE = _namespace_prefix()


@pytest.mark.skipif(NAMESPACE is None, reason="cannot mount a tmpfs in a mount namespace here")
def test_a_real_full_disk_never_damages_the_file(tmp_path):
    """A 1 MiB tmpfs, filled up: writes fail with DiskFullError and leave the file as it was."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full_disk.py"  # beside the mount point, not in it
    script.write_text(_FULL_DISK)
    repo = os.fspath(Path(__file__).resolve().parents[1])
    run = f'"{sys.executable}" "{script}" {{}} "{mnt}" "{tmp_path}" "{repo}"'
    shell = " ; ".join(
        [
            f'mount -t tmpfs -o size=1m tmpfs "{mnt}" || exit 90',
            run.format("reserve"),
            run.format("nofallocate"),
            run.format("journal"),
            run.format("crash"),
            'echo "{\\"crash_rc\\": $?}"',
            run.format("check"),
        ]
    )
    proc = subprocess.run(
        [*NAMESPACE, "sh", "-c", shell], capture_output=True, text=True, timeout=300
    )
    rows = {}
    for line in proc.stdout.splitlines():
        rows.update(json.loads(line))
    assert proc.returncode == 0 and "check" in rows, proc.stderr[-3000:]
    for name in ("a", "r+"):
        r = rows[name]
        # The reservation fails before c-blosc2 writes anything (mmap: no SIGBUS).
        assert r["write"][0] == "DiskFullError" and r["write"][2] == 28, r
        assert "v.mla" in r["write"][1] and "No space left" in r["write"][1]
        assert r["same"] and r["verify"] and r["left"] == [], r
        space = rows[name + "-space"]
        assert space["write"] == "ok" and space["close"] == "ok" and space["data"], space
        assert space["verify"] and space["left"] == []
    n = rows["nofallocate"]
    assert n["write"][0] == "DiskFullError" and n["same"] and n["verify"], n
    # Without the reservation, c-blosc2 fails in the middle; the journal restores the file.
    j = rows["journal"]
    assert j["write"][0] == "DiskFullError" and "restored" in j["write"][1], j
    assert j["same"] and j["verify"] and j["left"] == [], j
    # Memory-mapped without the reservation: the kernel kills the writer (SIGBUS); the
    # next open rolls the write back from the journal.
    assert rows["crash_rc"] == 128 + signal.SIGBUS, rows
    assert "crash-survived" not in rows
    assert rows["journal-before-open"]
    assert rows["check"] == {"same": True, "verify": True, "left": [], "data": True}


_FILE_SIZE_LIMIT = r"""
import json, os, resource, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from tests.test_inplace import _sha, _left_behind
from pathlib import Path
from mlarray import MLArray, io
from mlarray.errors import MLArrayError
from mlarray.integrity import verify_file

p, reserve = Path(sys.argv[1]), sys.argv[2] == "1"
if not reserve:
    io._reserve = lambda fd, size, length: None
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
size = p.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, size + 8192))
noise = np.random.default_rng(5).integers(-30000, 30000, (40, 64, 64)).astype(np.int16)
rows = {}
for name, how in {"a": {"mode": "a", "mmap_mode": None}, "r+": {"mmap_mode": "r+"}}.items():
    before = _sha(p)
    a = MLArray.open(p, **how)
    try:
        a[:, 32:] = noise[:, 32:]
        got = "ok"
    except MLArrayError as exc:
        got = [type(exc).__name__, str(exc), exc.errno]
    a.close()
    rows[name] = {"write": got, "same": _sha(p) == before, "verify": verify_file(p).ok,
                  "left": _left_behind(p)}
print(json.dumps(rows))
"""


@pytest.mark.parametrize("reserve", [True, False], ids=["reserved", "journal-only"])
def test_a_file_size_limit_fails_the_write_and_keeps_the_file(tmp_path, reserve):
    """RLIMIT_FSIZE (EFBIG, not ENOSPC): runs everywhere, also without mount rights."""
    p = tmp_path / "data" / "v.mla"
    p.parent.mkdir()
    _save(p, _volume())
    before = _sha(p)
    script = tmp_path / "fsize.py"
    script.write_text(_FILE_SIZE_LIMIT)
    repo = os.fspath(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p), "1" if reserve else "0", repo],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.splitlines()[-1])
    for name in ("a", "r+"):
        r = rows[name]
        assert r["write"][0] == "MLArrayIOError" and "v.mla" in r["write"][1], r
        if reserve:  # refused before anything was written
            assert r["write"][2] == 27 and "too large" in r["write"][1].lower(), r
        assert r["same"] and r["verify"] and r["left"] == [], r
    assert _sha(p) == before
    assert np.array_equal(MLArray.open(p)[...], _volume())


# ----------------------------------------------------------------------------- killed writers

_KILL_MID_WRITE = r"""
import os, signal, sys
import numpy as np
from mlarray import MLArray, io

from mlarray import integrity

p, mmap_mode, where = sys.argv[1], sys.argv[2], sys.argv[3]
when = sys.argv[4] if len(sys.argv) > 4 else "sync"
a = MLArray.open(p, mode="a", mmap_mode=None if mmap_mode == "none" else mmap_mode)
syncs = []
real = io._datasync
real_entry = integrity.updated_entry


def datasync(fd):
    # The 1st sync of a write is its journal's; the 2nd is the file's, after c-blosc2
    # wrote everything: killed there, the write is complete but not committed.
    syncs.append(fd)
    if when == "sync" and len(syncs) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)


def updated_entry(*args):
    # c-blosc2 rewrote the chunks; their digests are not stored yet.
    if when == "digests":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_entry(*args)


real_note = io._note_state


def note_state(*args):
    # "unnoted": c-blosc2 wrote the chunks, their state is not in the journal yet;
    # "noted": it is.
    if when == "unnoted":
        os.kill(os.getpid(), signal.SIGKILL)
    state = real_note(*args)
    if when == "noted":
        os.kill(os.getpid(), signal.SIGKILL)
    return state


import blosc2.schunk

real_setitem = blosc2.schunk.vlmeta.__setitem__


def setitem(self, name, content):
    # "entries": killed right after c-blosc2 stored the new checksum entry, before the
    # entries that go with it (the last step of the write)
    real_setitem(self, name, content)
    if when == "entries" and name == integrity.CHECKSUM_KEY:
        os.kill(os.getpid(), signal.SIGKILL)


io._datasync = datasync
integrity.updated_entry = updated_entry
io._note_state = note_state
blosc2.schunk.vlmeta.__setitem__ = setitem
if where == "write":
    a[0:25, 10:50, 5:60] = np.random.default_rng(2).integers(-9, 9, (25, 40, 55))
elif where == "tail":  # the last chunk only: the chunks before it are never touched
    a[20:40, 32:64, 32:64] = np.random.default_rng(2).integers(-9, 9, (20, 32, 32))
else:
    a.meta.is_seg = True
    a.close()
print("not killed")
"""


def _after(where: str) -> np.ndarray:
    """The volume after the write of ``_KILL_MID_WRITE``'s case ``where``."""
    v = _volume()
    if where == "write":
        v[0:25, 10:50, 5:60] = np.random.default_rng(2).integers(-9, 9, (25, 40, 55))
    elif where == "tail":
        v[20:40, 32:64, 32:64] = np.random.default_rng(2).integers(-9, 9, (20, 32, 32))
    return v


def _kill_writer(tmp_path: Path, p: Path, how: str, where: str, when: str) -> None:
    script = tmp_path / "kill.py"
    script.write_text(_KILL_MID_WRITE)
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p), how, where, when],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert io.journal_path(p).exists()


@pytest.mark.parametrize("how", ["none", "r+"], ids=["a-nommap", "mmap-r+"])
@pytest.mark.parametrize("where", ["write", "tail"])
def test_a_writer_killed_before_its_write_commits_is_rolled_back_on_open(tmp_path, how, where):
    p = tmp_path / "k.mla"
    _save(p, _volume())
    before = p.read_bytes()
    _kill_writer(tmp_path, p, how, where, "digests")
    assert p.read_bytes() != before  # the chunks were rewritten in place ...
    a = MLArray.open(p)  # ... and the next open (read-only, too) rolls them back
    assert p.read_bytes() == before
    assert not io.journal_path(p).exists() and _left_behind(p) == []
    assert verify_file(p).ok
    assert np.array_equal(a[...], _volume())
    b = MLArray.open(p, mode="a", mmap_mode="r+")  # and it can be written again
    b[0] = 3
    b.close()
    assert np.all(MLArray.open(p)[0] == 3) and verify_file(p).ok


@pytest.mark.parametrize("how", ["none", "r+"], ids=["a-nommap", "mmap-r+"])
@pytest.mark.parametrize("where", ["write", "tail", "close"])
def test_a_writer_killed_after_its_write_completed_keeps_the_write(tmp_path, how, where):
    # Killed at the file's sync: the write is complete (every chunk matches its stored
    # digest) but its journal was not removed. The next open keeps the finished write
    # and removes the journal: all of the write, never a part.
    p = tmp_path / "k.mla"
    _save(p, _volume())
    before = p.read_bytes()
    _kill_writer(tmp_path, p, how, where, "sync")
    a = MLArray.open(p)
    assert p.read_bytes() != before
    assert not io.journal_path(p).exists() and _left_behind(p) == []
    assert verify_file(p).ok and bool(a.meta.is_seg) == (where == "close")
    assert np.array_equal(a[...], _after(where))


def test_a_journal_does_not_undo_content_put_into_the_file_after_the_crash(tmp_path):
    # The file is replaced by a whole other file through the same inode (cp keeps it):
    # the journal of the crashed write must not be applied over it.
    p = tmp_path / "k.mla"
    _save(p, _volume())
    _kill_writer(tmp_path, p, "none", "write", "digests")
    other = tmp_path / "other.mla"
    _save(other, np.full((40, 64, 64), 7, np.int16))
    ino = p.stat().st_ino
    shutil.copyfile(other, p)
    assert p.stat().st_ino == ino
    assert np.array_equal(MLArray.open(p)[...], np.full((40, 64, 64), 7, np.int16))
    assert not io.journal_path(p).exists()


def _save_plain(p: Path, data: np.ndarray) -> None:
    """As :func:`_save`, without checksums (as the reference package and other tools write)."""
    import blosc2

    from mlarray.integrity import CHECKSUM_KEY, FRAME_KEY

    _save(p, data)
    store = blosc2.open(os.fspath(p), mode="a")
    del store.schunk.vlmeta[CHECKSUM_KEY]
    del store.schunk.vlmeta[FRAME_KEY]
    del store


def _new_version() -> np.ndarray:
    """The volume of another version of the case: only the chunk "tail" writes differs."""
    v = _volume()
    v[20:40, 32:64, 32:64] = 42
    return v


def _aside(p: Path) -> list[Path]:
    return sorted(p.parent.glob(io.journal_path(p).name + "-unapplied-*"))


@pytest.mark.parametrize("when", ["unnoted", "digests"], ids=["mid-step", "noted"])
def test_a_journal_is_not_applied_to_a_new_version_copied_onto_the_file(tmp_path, when):
    """Killed mid-write, then ``cp new.mla case.mla`` (same inode) puts another version of
    the case in place whose bytes before the written chunk are the old file's (the guard
    holds) and which has no checksums (as the reference package writes): the journal must
    not roll the new version's chunk back to the old file's. It is kept aside, with a
    warning naming it and the file. (The case had checksums: a killed write of a case
    without them is rolled back whenever the guard holds, see RELIABILITY.md.)"""
    p = tmp_path / "case.mla"
    _save(p, _volume())
    _kill_writer(tmp_path, p, "r+", "tail", when)
    new = tmp_path / "new" / "case.mla"
    new.parent.mkdir()
    _save_plain(new, _new_version())
    ino = p.stat().st_ino
    shutil.copyfile(new, p)
    assert p.stat().st_ino == ino
    with pytest.warns(io.JournalNotAppliedWarning) as got:
        a = MLArray.open(p)
    assert np.array_equal(a[...], _new_version())
    assert p.read_bytes() == new.read_bytes()
    journal = io.journal_path(p)
    aside = _aside(p)
    assert not journal.exists() and len(aside) == 1
    text = str(got[0].message)
    assert os.fspath(p) in text and os.fspath(aside[0]) in text
    assert MLArray.open(p)[...].tolist() == _new_version().tolist()  # and stays so


@pytest.mark.parametrize("plain", [True, False], ids=["plain", "checksums"])
@pytest.mark.parametrize("when", ["noted", "unnoted"])
def test_a_killed_write_of_the_file_itself_is_rolled_back(tmp_path, plain, when):
    """The stricter recognition still rolls the interrupted file back: its state is the
    one the writer noted, or (killed within a step) it keeps its checksum entry, or it
    had none (then the guard decides, as for a killed write between two chunks)."""
    p = tmp_path / "case.mla"
    (_save_plain if plain else _save)(p, _volume())
    before = p.read_bytes()
    _kill_writer(tmp_path, p, "r+", "tail", when)
    assert p.read_bytes() != before
    with warnings.catch_warnings():
        warnings.simplefilter("error", io.JournalNotAppliedWarning)
        a = MLArray.open(p)
    assert p.read_bytes() == before and np.array_equal(a[...], _volume())
    assert not io.journal_path(p).exists() and _left_behind(p) == []


@pytest.mark.parametrize("where", ["write", "tail"])
def test_a_write_killed_while_it_stores_its_checksum_entries_is_rolled_back(tmp_path, where):
    """Killed right after c-blosc2 stored the write's new checksum entry, before the
    entries that go with it: the journal knows the entry the write was storing, so the
    file is rolled back (verified, no warning, no journal kept aside)."""
    p = tmp_path / "case.mla"
    _save(p, _volume())
    before = p.read_bytes()
    _kill_writer(tmp_path, p, "r+", where, "entries")
    assert p.read_bytes() != before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = MLArray.open(p)
        assert np.array_equal(a[...], _volume())
    assert p.read_bytes() == before and verify_file(p).ok
    assert not io.journal_path(p).exists() and _left_behind(p) == []


_SLAB_WRITER = r"""
import sys
import numpy as np
from mlarray import MLArray

a = MLArray.open(sys.argv[1], mmap_mode="r+")
new = np.random.default_rng(2).integers(-9000, 9000, a.shape).astype(np.int16)
print("ready", flush=True)
sys.stdin.readline()
a[...] = new
print("not killed", flush=True)
"""


def test_a_multi_chunk_write_of_a_file_without_checksums_killed_between_chunks_is_rolled_back(
    tmp_path,
):
    """c-blosc2 rewrites a slab chunk after chunk, leaving a readable frame after each:
    a writer of a file without checksums (as the reference package and other tools write)
    killed between two chunks leaves a readable, half-written file. The next open rolls
    it back to the old data (not a torn volume kept with a warning)."""
    import blosc2

    from mlarray.integrity import CHECKSUM_KEY, FRAME_KEY

    shape = (64, 128, 128)
    p = tmp_path / "case.mla"
    old = _volume(shape)
    MLArray(old, patch_size=None, chunk_size=(8, 32, 32), block_size=(8, 16, 16)).save(p)
    b = blosc2.open(os.fspath(p), mode="a")
    del b.schunk.vlmeta[CHECKSUM_KEY]
    del b.schunk.vlmeta[FRAME_KEY]
    del b
    before = p.read_bytes()
    new = np.random.default_rng(2).integers(-9000, 9000, shape).astype(np.int16)
    script = tmp_path / "slab.py"
    script.write_text(_SLAB_WRITER)
    torn = 0
    for attempt in range(12):
        p.write_bytes(before)
        proc = subprocess.Popen(
            [sys.executable, os.fspath(script), os.fspath(p)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            size0 = p.stat().st_size
            proc.stdin.write("go\n")
            proc.stdin.flush()
            # killed once c-blosc2 appended some of the rewritten chunks, not all
            target = size0 + (attempt % 4 + 1) * 100_000
            deadline = time.monotonic() + 60
            while p.stat().st_size <= target and proc.poll() is None:
                assert time.monotonic() < deadline
        finally:
            proc.kill()
            proc.wait()
        if not io.journal_path(p).exists():
            continue  # finished before the kill
        # the file as the killed writer left it, read without its journal
        copy = tmp_path / "copy" / "case.mla"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(p, copy)
        try:
            left = blosc2.open(os.fspath(copy), mode="r")[...]
        except Exception:
            left = None
        if left is not None and not np.array_equal(left, old) and not np.array_equal(left, new):
            torn += 1
        with warnings.catch_warnings():
            warnings.simplefilter("error", io.JournalNotAppliedWarning)
            a = MLArray.open(p)
            assert np.array_equal(a[...], old)
        assert p.read_bytes() == before
        assert not io.journal_path(p).exists() and _left_behind(p) == ["copy"]
        if torn >= 2:
            break
    assert torn >= 1  # at least one kill left a readable half-written file


def test_writers_through_a_symbolic_link_share_the_real_files_journal(tmp_path):
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    real, link = real_dir / "a.mla", link_dir / "a.mla"
    _save(real, _volume())
    link.symlink_to(real)
    assert io.journal_path(link) == io.journal_path(real)
    _kill_writer(tmp_path, link, "none", "write", "digests")
    b = MLArray.open(
        real, mode="a", mmap_mode="r+"
    )  # rolls the crashed write back first, then writes
    assert np.array_equal(b[...], _volume())
    b[...] = 42
    b.close()
    for name in (link, real, link):
        assert np.all(MLArray.open(name)[...] == 42), name
    assert not io.journal_path(real).exists()


def test_a_live_writers_journal_is_left_alone_and_a_replaced_files_is_dropped(
    tmp_path, monkeypatch
):
    import fcntl

    p = tmp_path / "k.mla"
    _save(p, _volume())
    before = p.read_bytes()
    script = tmp_path / "kill.py"
    script.write_text(_KILL_MID_WRITE)
    subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p), "none", "write", "digests"], timeout=120
    )
    journal = io.journal_path(p)
    assert journal.exists()
    fd = os.open(journal, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as its writer would hold it while it lives
    monkeypatch.setattr(io, "_RECOVER_WAIT", 0.2)
    assert io.recover(p) is False and journal.exists()
    os.close(fd)
    assert io.recover(p) is True and p.read_bytes() == before
    # A journal whose file was replaced since (here: saved anew) is dropped, not applied.
    subprocess.run([sys.executable, os.fspath(script), os.fspath(p), "none", "write"], timeout=120)
    assert journal.exists()
    _save(p, _volume(seed=1))
    assert not journal.exists()
    assert np.array_equal(MLArray.open(p)[...], _volume(seed=1))


def test_a_journal_is_not_applied_to_other_content_put_into_the_file(tmp_path):
    """Killed mid-write, then another tool overwrites the file in place (same inode, e.g.
    ``cp`` onto it): the journal's guard (a digest of chunk bytes its write never changes)
    no longer matches, so the journal is dropped instead of patching the new content."""
    p = tmp_path / "k.mla"
    _save(p, _volume())
    script = tmp_path / "kill.py"
    script.write_text(_KILL_MID_WRITE)
    subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p), "none", "tail", "digests"], timeout=120
    )
    journal = io.journal_path(p)
    assert journal.exists()
    other = tmp_path / "other" / "k.mla"
    other.parent.mkdir()
    _save(other, _volume(seed=3))
    with open(p, "r+b") as fh:  # same inode, other bytes
        fh.write(other.read_bytes())
        fh.truncate()
    ino = p.stat().st_ino
    assert np.array_equal(MLArray.open(p)[...], _volume(seed=3))
    assert p.read_bytes() == other.read_bytes() and p.stat().st_ino == ino
    assert not journal.exists()  # a whole file with its checksums: the journal is dropped


_WRITE_LOOP = r"""
import sys
import numpy as np
from mlarray import MLArray

p, mmap_mode = sys.argv[1], sys.argv[2]
a = MLArray.open(p, mode="a", mmap_mode=None if mmap_mode == "none" else mmap_mode)
for i in range(1, 10_000):
    a[{key}] = i
    print(i, flush=True)
"""


def _loop_key(i: int) -> tuple:
    z = (i * 7) % 30
    return (slice(z, z + 10), slice((i * 13) % 40, (i * 13) % 40 + 24), slice(None))


@pytest.mark.parametrize("how", ["none", "r+"], ids=["a-nommap", "mmap-r+"])
def test_writers_killed_at_random_times_leave_an_old_or_a_new_state(tmp_path, how):
    """SIGKILL a writer looping over patch writes; the file then holds exactly the first j
    writes, j being the last write it reported or the one after (the one in flight)."""
    rng = np.random.default_rng(7)
    p = tmp_path / "loop.mla"
    script = tmp_path / "loop.py"
    script.write_text(
        _WRITE_LOOP.replace(
            "{key}",
            "slice((i * 7) % 30, (i * 7) % 30 + 10), "
            "slice((i * 13) % 40, (i * 13) % 40 + 24), slice(None)",
        )
    )
    for _trial in range(3):
        _save(p, _volume())
        child = subprocess.Popen(
            [sys.executable, os.fspath(script), os.fspath(p), how],
            stdout=subprocess.PIPE,
            text=True,
        )
        last, stop = 0, int(rng.integers(2, 8))
        while last < stop:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            last = int(line)
        time.sleep(float(rng.uniform(0, 0.05)))
        child.kill()
        child.wait(timeout=30)
        rest = child.stdout.read().split()
        child.stdout.close()
        last = int(rest[-1]) if rest else last
        got = MLArray.open(p)[...]  # rolls back the write in flight, if any
        assert verify_file(p).ok and _left_behind(p) == []
        states = []
        for j in (last, last + 1):
            want = _volume()
            for i in range(1, j + 1):
                want[_loop_key(i)] = i
            states.append(np.array_equal(got, want))
        assert any(states), f"killed after write {last}: neither that state nor the next"


# ----------------------------------------------------------------------------- permissions


def _world_dir() -> Path:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="mla-perm-"))
    d.chmod(0o777)  # pytest's tmp_path is 0700: nobody could not even look inside
    return d


def _as_nobody(fn, *args):
    """Run ``fn(*args)`` as the unprivileged user ``nobody`` when root, else as we are.

    A forked child drops its privileges (the interpreter may live under /root, which
    ``nobody`` cannot read, so no new interpreter is started) and sends back the outcome.
    """
    if os.geteuid() != 0:
        return fn(*args)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            q.put(("ok", fn(*args)))
        except BaseException as exc:  # sent back as text: only what the test asserts
            q.put(("raised", (type(exc).__name__, str(exc), getattr(exc, "errno", None))))

    proc = ctx.Process(target=child)
    proc.start()
    kind, value = q.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    if kind == "raised":
        raise _Raised(*value)
    return value


class _Raised(Exception):
    def __init__(self, name, message, err):
        super().__init__(f"{name}: {message}")
        self.name, self.message, self.errno = name, message, err


def _outcome(fn, *args):
    try:
        return ("ok", _as_nobody(fn, *args))
    except _Raised as exc:
        return (exc.name, exc.message, exc.errno)
    except MLArrayError as exc:  # not root: the operation ran here
        return (type(exc).__name__, str(exc), getattr(exc, "errno", None))


def _open_for_writing(path: str, how: dict) -> str:
    a = MLArray.open(path, **how)
    a[0] = 1
    a.close()
    return "wrote"


def _save_over(path: str) -> str:
    MLArray(np.ones(3)).save(path)
    return "saved"


def _read(path: str) -> str:
    return str(MLArray.open(path)[...].sum())


def _load(path: str) -> str:
    return str(MLArray.load(path).to_numpy().sum())


def _owned_by_runner(p: Path) -> None:
    if os.geteuid() == 0:
        os.chown(p, 65534, 65534)


@pytest.mark.parametrize(
    "how", [{"mode": "a", "mmap_mode": "r+"}, {"mode": "a", "mmap_mode": None}, {"mmap_mode": "r+"}]
)
def test_writable_open_of_a_file_the_user_cannot_write_is_refused(how):
    d = _world_dir()
    try:
        p = d / "theirs.mla"
        MLArray(np.arange(12.0)).save(p)
        p.chmod(0o644)  # root's file (or, not as root, made read-only below)
        if os.geteuid() != 0:
            p.chmod(0o444)
        before = p.read_bytes()
        got = _outcome(_open_for_writing, os.fspath(p), how)
        assert got[0] == "MLArrayIOError" and "theirs.mla" in got[1], got
        assert got[2] == 13 and "write-protected" in got[1]
        assert p.read_bytes() == before
        assert _left_behind(p) == []
    finally:
        shutil.rmtree(d)


def test_save_does_not_replace_a_file_its_owner_made_read_only():
    d = _world_dir()
    try:
        p = d / "mine.mla"
        MLArray(np.zeros(3)).save(p)
        _owned_by_runner(p)
        p.chmod(0o444)
        before = p.read_bytes()
        got = _outcome(_save_over, os.fspath(p))
        assert got[0] == "MLArrayIOError" and "mine.mla" in got[1] and "read-only" in got[1], got
        assert p.read_bytes() == before and _left_behind(p) == []
        # Root is refused the same way (the check is on the mode bits, not on access).
        with pytest.raises(MLArrayIOError, match=r"mine\.mla.*read-only"):
            _save_over(os.fspath(p))
        with pytest.raises(MLArrayIOError, match=r"mine\.mla.*write-protected"):
            _open_for_writing(os.fspath(p), {"mode": "a", "mmap_mode": "r+"})
        assert p.read_bytes() == before and _left_behind(p) == []
    finally:
        shutil.rmtree(d)


def test_unreadable_files_and_unwritable_folders_give_our_errors():
    d = _world_dir()
    try:
        p = d / "locked.mla"
        MLArray(np.arange(6.0)).save(p)
        _owned_by_runner(p)
        before = p.read_bytes()
        p.chmod(0)
        for read in (_read, _load):
            got = _outcome(read, os.fspath(p))
            assert got[0] == "MLArrayIOError" and "locked.mla" in got[1] and got[2] == 13, got
        p.chmod(0o644)
        sub = d / "ro"
        sub.mkdir()
        sub.chmod(0o555)
        got = _outcome(_save_over, os.fspath(sub / "new.mla"))
        assert got[0] == "MLArrayIOError" and "new.mla" in got[1] and got[2] == 13, got
        assert list(sub.iterdir()) == []
        assert p.read_bytes() == before
    finally:
        shutil.rmtree(d)


def test_in_place_writes_need_a_writable_folder_for_their_journal():
    d = _world_dir()
    try:
        sub = d / "shared"
        sub.mkdir()
        p = sub / "w.mla"
        MLArray(np.arange(12.0)).save(p)
        p.chmod(0o666)  # the file is writable, its folder is not
        sub.chmod(0o555)
        before = p.read_bytes()
        got = _outcome(_open_for_writing, os.fspath(p), {"mode": "a", "mmap_mode": None})
        assert got[0] == "MLArrayIOError" and "w.mla" in got[1] and "journal" in got[1], got
        assert got[2] == 13 and p.read_bytes() == before and _left_behind(p) == []
    finally:
        (d / "shared").chmod(0o755)
        shutil.rmtree(d)


def test_open_rolls_back_only_with_write_permission():
    """A reader who may not write the file cannot restore it: our error, file untouched."""
    d = _world_dir()
    try:
        p = d / "k.mla"
        _save(p, _volume())
        p.chmod(0o644)
        script = d / "kill.py"
        script.write_text(_KILL_MID_WRITE)
        subprocess.run(
            [sys.executable, os.fspath(script), os.fspath(p), "none", "write", "digests"]
        )
        torn = p.read_bytes()
        journal = io.journal_path(p)
        journal.chmod(0o644)
        if os.geteuid() == 0:
            got = _outcome(_read, os.fspath(p))
            assert got[0] == "MLArrayIOError" and "k.mla" in got[1], got
            assert "interrupted" in got[1] and got[2] == 13
            assert p.read_bytes() == torn and journal.exists()
        assert np.array_equal(MLArray.open(p)[...], _volume())  # the owner's open restores
        assert not journal.exists()
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("how", MODES)
def test_negative_indices_mark_every_chunk_they_write(tmp_path, how):
    """Found by the property tests: [0, -1, 1] on two rows writes row 0 too; its chunk's
    checksum must be stored (the bounds of a key normalise negative indices first)."""
    p = tmp_path / "n.mla"
    MLArray(np.arange(2, dtype=np.uint8), patch_size=None, chunk_size=(1,)).save(p)
    a = MLArray.open(p, **how)
    a[np.array([0, -1, 1])] = [7, 8, 9]
    assert verify_file(p).ok
    a.close()
    assert MLArray.open(p)[...].tolist() == [7, 9]


def test_a_0d_write_refreshes_the_checksum_of_its_chunk(tmp_path):
    """A 0-d array's box is ``[]`` (no axes), yet it has one chunk: the write journals it
    and refreshes its checksum (it was once taken for a metadata-only write)."""
    p = tmp_path / "z.mla"
    MLArray(np.array(5, dtype=np.int32)).save(p)
    for how in ({"mode": "a", "mmap_mode": None}, {"mode": "r", "mmap_mode": "r+"}):
        a = MLArray.open(p, **how)
        a[()] = 7
        a[...] = a[()] + 1
        a.close()
        assert verify_file(p).ok
        assert MLArray.open(p)[()] == 8
        MLArray.open(p).verify()
        MLArray(np.array(5, dtype=np.int32)).save(p)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("mask2d", id="2d-mask-ellipsis"),
        pytest.param((np.True_, 5), id="true-then-int"),
        pytest.param((True, slice(None, None, -3), None, [2, -1]), id="true-negstep-none-list"),
        pytest.param("mask3d", id="3d-mask"),
    ],
)
def test_writes_of_boolean_keys_journal_and_checksum_the_chunks_they_change(tmp_path, key):
    """A 2-d mask covers two axes, a 0-d boolean none (numpy's rules): ``a[mask2d, ...] = 9``
    was refused, and ``a[np.True_, 5] = 9`` wrote chunks outside its journal and their old
    checksums stayed (the file then read as damaged)."""
    p = tmp_path / "b.mla"
    shape = (16, 20, 12)
    MLArray(np.zeros(shape, np.int16), patch_size=None, chunk_size=(4, 5, 6)).save(p)
    if key == "mask2d":
        m = np.zeros(shape[:2], bool)
        m[3, 4] = m[13, 17] = True
        key = (m, Ellipsis)
    elif key == "mask3d":
        key = np.random.default_rng(0).random(shape) < 0.01
    want = np.zeros(shape, np.int16)
    want[key] = 9
    a = MLArray.open(p, mode="a", mmap_mode="r+")
    a[key] = 9
    a.close()
    assert MLArray.open(p).verify().ok
    assert np.array_equal(MLArray.open(p)[...], want)


_WRITES = iter(range(10**9))


def test_in_place_writes_of_any_numpy_key_keep_the_file_valid(tmp_path):
    """Property: for any key numpy accepts (masks of any ndim, 0-d booleans, None, negative
    steps, index lists), an in-place write leaves a file that verifies and holds numpy's
    result of the same assignment."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.test_fuzz_reliability import numpy_keys

    shape = (9, 10, 7)
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(numpy_keys(shape), st.booleans(), st.sampled_from(["a", "r+"]))
    def check(key, scalar, how):
        want = data.copy()
        try:
            selected = want[key]
        except (IndexError, TypeError, ValueError):
            return  # numpy refuses the key
        values = -1 if scalar else -np.arange(1, selected.size + 1).reshape(selected.shape)
        want[key] = values
        p = tmp_path / f"k{next(_WRITES)}.mla"
        MLArray(data, patch_size=None, chunk_size=(2, 3, 2), block_size=(2, 3, 2)).save(p)
        opened = (
            {"mode": "a", "mmap_mode": "r+"} if how == "a" else {"mode": "r", "mmap_mode": "r+"}
        )
        a = MLArray.open(p, **opened)
        a[key] = values
        a.close()
        b = MLArray.open(p)
        assert b.verify().ok
        assert np.array_equal(b[...], want)
        p.unlink()

    check()


def _open_read_close(args):
    path, i = args
    try:
        a = MLArray.open(path, mmap_mode="r+")
        total = float(a[i % 20 : i % 20 + 3].sum())
        a.close()
        return total
    except Exception as exc:  # reported to the parent, with its type
        return f"{type(exc).__name__}: {exc}"


def test_writable_handles_that_change_nothing_write_nothing_on_close(tmp_path):
    """Workers that open a file with mmap_mode="r+" and only read: every close() wrote
    the metadata again, and failed ("another process is writing to it in place") when
    another worker's close wrote at the same moment. Now a close with nothing changed
    writes nothing; the file keeps its bytes and its modification time."""
    p = tmp_path / "shared.mla"
    data = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32)
    MLArray(data).save(p)
    before, st = p.read_bytes(), os.stat(p)
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(_open_read_close, [(p, i) for i in range(100)])
    want = [float(data[i % 20 : i % 20 + 3].sum()) for i in range(100)]
    assert [g for g in got if isinstance(g, str)] == []
    assert got == want
    assert p.read_bytes() == before and os.stat(p).st_mtime_ns == st.st_mtime_ns
    a = MLArray.open(p, mmap_mode="r+")  # a change is still written on close
    a.meta.extra.data = {"reviewed": True}
    a.close()
    assert MLArray.open(p).meta.extra.data == {"reviewed": True}


def _write_constants(path, stop_at):
    a = MLArray.open(path, mmap_mode="r+")
    i = 0
    while time.monotonic() < stop_at:
        a[...] = np.full(a.shape, 1 + i % 30000, dtype=a.dtype)  # a new value each time
        i += 1
    a.close()
    return i


def _read_patches(args):
    path, seed, long_lived, stop_at = args
    rng = np.random.default_rng(seed)
    one_version, changed, mixed = 0, 0, []
    a = MLArray.open(path) if long_lived else None
    while time.monotonic() < stop_at:
        try:
            h = a if long_lived else MLArray.open(path)
            key = tuple(slice(int(o), int(o) + 8) for o in rng.integers(0, 24, 3))
            v = np.asarray(h[key])
            if (v == v.flat[0]).all():
                one_version += 1
            else:
                mixed.append(sorted(np.unique(v).tolist())[:4])
            if not long_lived:
                h.close()
        except FileChangedError:
            changed += 1
            if long_lived:
                a = MLArray.open(path)  # what the error says to do
    return one_version, changed, mixed


def test_reads_racing_an_in_place_writer_get_one_version_or_file_changed(tmp_path):
    """A patch read while another process wrote the file in place could hold voxels of
    two writes (each write puts one constant everywhere), silently. Now the file is
    checked again after the read decoded: one version, or FileChangedError."""
    p = tmp_path / "cache.mla"
    MLArray(np.zeros((32, 32, 32), np.int16), patch_size=(8, 8, 8)).save(p)
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as pool:
        stop_at = time.monotonic() + 4.0
        writes = pool.apply_async(_write_constants, (p, stop_at))
        reads = pool.map(_read_patches, [(p, 1, False, stop_at), (p, 2, True, stop_at)])
        assert writes.get(timeout=60) > 10
    for one_version, changed, mixed in reads:
        assert mixed == []
        assert one_version > 0 and changed > 0
