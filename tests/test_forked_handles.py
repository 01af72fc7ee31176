"""Handles a forked child inherits from its parent read the file version the parent
opened (or raise FileChangedError), whatever the path names by the time the child
uses them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork start method")

_SCRIPT = """
import os, sys
import numpy as np
from mlarray import MLArray
from mlarray.errors import FileChangedError

folder, case = sys.argv[1], sys.argv[2]
two = {"nthreads": 2}  # decoding threads: the child must reopen its handles
handles = {}
for name, kw in [
    ("r", {}),
    ("none", {"mmap_mode": None}),
    ("c", {"mmap_mode": "c"}),
    ("r+", {"mmap_mode": "r+"}),
    ("a", {"mmap_mode": None, "mode": "a"}),
]:
    p = os.path.join(folder, name + ".mla")
    MLArray(np.zeros((32, 32, 32), np.float32), spacing=(1.0, 2.0, 3.0)).save(p)
    h = MLArray.open(p, dparams=two, **kw)
    h[...]  # the parent read it with 2 threads
    handles[name] = (p, h)
    if case == "replaced":  # a save over the path (a new file renamed onto it)
        MLArray(np.ones((40, 30, 20), np.float32), spacing=(9.0, 9.0, 9.0)).save(p)
    elif case == "deleted":
        os.remove(p)
    elif case == "written":  # another handle of the parent writes it in place
        with MLArray.open(p, mmap_mode="r+") as w:
            w[0:4] = 7.0


def reads():
    out = []
    for name, (p, h) in handles.items():
        try:
            v = np.asarray(h[...])
            got = f"shape={h.shape}/{v.shape} sum={float(v.sum()):g} sp={tuple(h.spacing)}"
        except FileChangedError:
            got = "FileChangedError"
        except Exception as exc:  # what the test then shows
            got = f"{type(exc).__name__}({exc})".replace("|", "/")
        out.append(f"{name}:{got}")
    return out


pid_r, pid_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(pid_r)
    try:
        os.write(pid_w, "|".join(reads()).encode())
    finally:
        os._exit(0)
os.close(pid_w)
data = b""
while chunk := os.read(pid_r, 65536):
    data += chunk
os.waitpid(pid, 0)
print(data.decode())
print("|".join(reads()))
"""


def _run(tmp_path, case):
    script = tmp_path / "fork_versions.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(tmp_path), case],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child, parent = proc.stdout.strip().splitlines()
    return tuple(dict(s.split(":", 1) for s in line.split("|")) for line in (child, parent))


OLD = "shape=(32, 32, 32)/(32, 32, 32) sum=0 sp=(1.0, 2.0, 3.0)"


@pytest.mark.parametrize("case", ["replaced", "deleted"])
def test_a_forked_child_reads_the_version_its_parent_opened(tmp_path, case):
    """A file saved over (or deleted) after the parent opened it with decoding threads:
    the child's read-only handles read the parent's version (they read the new file,
    with the old metadata, or failed on a deleted one); writable ones raise
    FileChangedError instead of reading another file."""
    child, parent = _run(tmp_path, case)
    assert {k: parent[k] for k in ("r", "none", "c", "r+")} == dict.fromkeys(
        ("r", "none", "c", "r+"), OLD
    )
    assert child == {
        "r": OLD,
        "none": OLD,
        "c": OLD,
        "r+": "FileChangedError",
        "a": "FileChangedError",
    }


def test_a_forked_child_reads_what_its_parent_wrote_in_place(tmp_path):
    """Written in place by another handle of the parent before the fork: the child's
    handles behave as the parent's (the read-only ones raise FileChangedError, the
    writable ones read the write)."""
    child, parent = _run(tmp_path, "written")
    new = f"shape=(32, 32, 32)/(32, 32, 32) sum={7 * 4 * 32 * 32:g} sp=(1.0, 2.0, 3.0)"
    assert (
        child
        == parent
        == {
            "r": "FileChangedError",
            "none": "FileChangedError",
            "c": "FileChangedError",
            "r+": new,
            "a": new,
        }
    )
