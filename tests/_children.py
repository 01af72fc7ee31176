"""Waiting for a forked child in tests, with a deadline (a hung child is killed)."""

from __future__ import annotations

import os
import time


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
