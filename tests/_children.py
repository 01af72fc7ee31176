"""Children of tests: a forked child waited for with a deadline (a hung child is killed),
a Python child running a script."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run_python(code: str, *args: object, timeout: float = 120) -> str:
    """Run ``code`` in a new Python with ``args`` as ``sys.argv[1:]``; its standard
    output (the test fails with its standard error if it did not exit with 0)."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    r = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def wait_status(pid: int, seconds: float = 60) -> int | None:
    """The wait status of child ``pid``, or None if it did not end within ``seconds``
    (it is killed then)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def reference_env() -> dict[str, str]:
    """The environment for the reference package's Python: without a ``PYTHONPATH``
    (set to run these tests on a source tree), which would import this tree in its
    place."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run_reference(code: str, cwd: os.PathLike | str, timeout: float = 300) -> str:
    """Run ``code`` (dedented) under the reference package's Python
    (``MLARRAY_REFERENCE_PYTHON``, a black box) in ``cwd``; its standard output. The
    child gets no ``PYTHONPATH``: it must import the reference, never this tree."""
    import textwrap

    env = reference_env()
    r = subprocess.run(
        [os.environ["MLARRAY_REFERENCE_PYTHON"], "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


_RSS_PRELUDE = """
def status(key):  # kB; VmHWM is this process's peak (ru_maxrss survives exec from pytest)
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith(key + ":")).split()[1])


"""


def peak_rss_growth(code: str, *args: object, timeout: float = 300) -> int:
    """Bytes the peak resident memory of a new Python running ``code`` grew beyond
    ``before`` (which ``code`` sets with ``before = status("VmRSS")`` before the work
    measured; ``status(key)`` reads ``/proc/self/status``, in kB)."""
    epilogue = '\nprint((status("VmHWM") - before) * 1024)\n'
    return int(run_python(_RSS_PRELUDE + code + epilogue, *args, timeout=timeout).split()[-1])
