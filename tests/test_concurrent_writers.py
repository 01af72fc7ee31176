"""Several processes writing one file in place at once (``mmap_mode="r+"``,
``mode="a", mmap_mode=None``): their writes take turns and all land, whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlarray import MLArray

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork start method")

_SLABS = """
import json, multiprocessing as mp, sys
from collections import Counter
import numpy as np
from mlarray import MLArray

path, mode, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = {"mmap_mode": "r+"} if mode == "r+" else {"mode": "a", "mmap_mode": None}


def per_slab(i):  # open, write one slab, close: a pool filling an output file
    try:
        a = MLArray.open(path, **kw)
        a[i * 4 : (i + 1) * 4] = i + 1
        a.close()
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def long_lived(first):  # one handle writes several slabs while the others write theirs
    try:
        with MLArray.open(path, **kw) as a:
            for i in range(first, 32, 4):
                a[i * 4 : (i + 1) * 4] = i + 1
                a[i * 4, 0, 0] = i + 1  # a second write into the same chunk
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    out = Counter()
    for r in range(rounds):
        MLArray(np.zeros((128, 64, 64), np.float32), patch_size=(4, 64, 64)).save(path)
        with mp.get_context("fork").Pool(4) as pool:
            if r % 2:
                got = pool.map(long_lived, range(4), chunksize=1)
            else:
                got = pool.map(per_slab, range(32), chunksize=1)
        out.update(got)
        b = MLArray.open(path)
        x = np.asarray(b[...])
        missing = [i for i in range(32) if not (x[i * 4 : (i + 1) * 4] == i + 1).all()]
        out[f"missing slabs {missing}" if missing else "all slabs"] += 1
        out["verifies" if not b.verify().damaged else "DAMAGED"] += 1
    print(json.dumps(dict(out)))
"""


@pytest.mark.parametrize("mode", ["r+", "a"])
def test_processes_writing_one_file_at_once_all_write(tmp_path, mode):
    """Four worker processes fill one file slab by slab (a handle per slab, or one
    handle writing several slabs): every write waits for the one under way and lands.
    A writer found another's write under way and failed at once ('another process is
    writing to it in place'), or read the half-written frame and called the healthy
    file damaged ('damaged or forged Blosc2 frame'); its slab was missing."""
    script = tmp_path / "slabs.py"
    script.write_text(_SLABS)
    rounds = 6
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(tmp_path / "slabs.mla"), mode, str(rounds)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    tasks = 32 * (rounds // 2) + 4 * (rounds // 2)
    assert got == {"ok": tasks, "all slabs": rounds, "verifies": rounds}, got
    assert not list(tmp_path.glob(".mla-*")), "a journal or temp file was left"


def test_a_write_through_a_handle_whose_file_another_process_wrote_lands(tmp_path):
    """A handle opened before another process wrote the file in place writes through a
    fresh view of the file: both writes are there (it raised FileChangedError, or
    wrote through its stale view of the frame)."""
    p = tmp_path / "two.mla"
    MLArray(np.zeros((16, 32, 32), np.int16), patch_size=(4, 32, 32)).save(p)
    a = MLArray.open(p, mmap_mode="r+")
    code = (
        "import sys\nfrom mlarray import MLArray\n"
        "with MLArray.open(sys.argv[1], mmap_mode='r+') as b:\n    b[0:4] = 5\n"
    )
    subprocess.run([sys.executable, "-c", code, os.fspath(p)], check=True, timeout=120)
    a[8:12] = 7
    a.close()
    x = MLArray.open(p)[...]
    expect = np.zeros((16, 32, 32), np.int16)
    expect[0:4], expect[8:12] = 5, 7
    np.testing.assert_array_equal(x, expect)
    assert MLArray.open(p).verify().ok


_FORK_MID_WRITE = """
import os, sys
import numpy as np
from mlarray import MLArray, io

path = sys.argv[1]
a = MLArray.open(path, mmap_mode="r+")
go_r, go_w = os.pipe()
child = []


def write(store):  # a loader forks its workers while a thread of it writes
    store[0:4] = 1
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)  # the parent's write is done
        try:
            b = MLArray.open(path, mmap_mode="r+")
            b[8:12] = 2  # waited up to 10 s for the lock the child itself held, then failed
            b.close()
            os._exit(0)
        except BaseException as exc:
            print("child:", type(exc).__name__, exc, flush=True)
            os._exit(3)
    child.append(pid)


io.write_in_place(a._file_store, path, [(0, 4), (0, 32), (0, 32)], write)
os.write(go_w, b"x")
status = os.waitpid(child[0], 0)[1]
x = MLArray.open(path)[...]
print("ok" if status == 0 and (x[0:4] == 1).all() and (x[8:12] == 2).all() else f"WRONG {status}")
"""


def test_a_child_forked_during_a_write_does_not_hold_the_files_writer_lock(tmp_path):
    """A process forked while its parent writes a file in place does not keep the
    file's writer lock: its own later write (or another process's) goes through."""
    _run_on_a_fresh_file(tmp_path, "fork_lock", _FORK_MID_WRITE)


def _run_on_a_fresh_file(tmp_path, name: str, code: str) -> None:
    """Run the script ``code`` in a fresh interpreter on a new 16 x 32 x 32 file (its
    path the script's argument); it prints "ok" last when all went as expected."""
    p = tmp_path / f"{name}.mla"
    MLArray(np.zeros((16, 32, 32), np.int16), patch_size=(4, 32, 32)).save(p)
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(p)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.split()[-1:] == ["ok"], proc.stdout + proc.stderr[-2000:]


_FORK_JOURNAL = """
import os, sys
import numpy as np
from mlarray import MLArray, io
from mlarray._sidefiles import journal_path

path = sys.argv[1]
a = MLArray.open(path, mmap_mode="r+")
child = []


def write(store):  # a loader forks its workers while a thread of it writes
    store[0:4] = 1
    journal = os.stat(journal_path(path))  # the write's undo journal, locked
    pid = os.fork()
    if pid == 0:
        held = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.path.samestat(os.fstat(int(name)), journal):
                    held.append(name)
            except OSError:
                pass
        os._exit(3 if held else 0)
    child.append(pid)


io.write_in_place(a._file_store, path, [(0, 4), (0, 32), (0, 32)], write)
status = os.waitpid(child[0], 0)[1]
print("ok" if status == 0 else f"the child holds the journal ({status})")
"""


def test_a_child_forked_during_a_write_does_not_hold_its_journal(tmp_path):
    """A process forked while its parent writes a file in place does not keep the
    write's locked undo journal: its opens of the file waited 10 s for a lock it held
    itself, and the journal's space stayed in use for the child's life."""
    _run_on_a_fresh_file(tmp_path, "fork_journal", _FORK_JOURNAL)
