"""The reference package's test suite: the ``tests/`` folder of the PyPI sdist of mlarray 0.0.54.

Downloaded once with pip into the git-ignored cache ``.refsdist/`` and reduced to that folder
and the README (whose examples must run here too): only ``mlarray-0.0.54/tests/`` and
``mlarray-0.0.54/README.md`` are extracted, so the reference implementation is neither read
nor importable. ``.ci/run`` calls ``python -m tests.reference_sdist`` (prints the directory to
set as ``MLARRAY_REFERENCE_SDIST``); ``tests/test_reference_suite.py`` runs the suite.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REQUIREMENT = "mlarray==0.0.54"
SDIST_ROOT = "mlarray-0.0.54"
REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".refsdist"


class ReferenceUnavailable(RuntimeError):
    """The reference sdist could not be downloaded or unpacked."""


def _pip() -> list[str]:
    """A pip to download with: this interpreter's if it has one, else the system ``python3``'s."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    python3 = shutil.which("python3")
    if python3 is None:
        raise ReferenceUnavailable("no pip: neither this Python nor a python3 on PATH has one")
    return [python3, "-m", "pip"]


def _download(dest: Path) -> Path:
    """Download the sdist (no wheels, no dependencies) into ``dest``; return the archive."""
    cmd = [*_pip(), "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check"]
    cmd += ["-q", "-d", str(dest), REQUIREMENT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReferenceUnavailable(f"{' '.join(cmd)}: {exc}") from exc
    archives = sorted(dest.glob(f"{SDIST_ROOT}.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise ReferenceUnavailable(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return archives[0]


def _extract_tests(archive: Path, dest: Path) -> None:
    """Extract only ``<root>/tests/`` and ``<root>/README.md`` of ``archive`` into ``dest``."""
    prefix, readme = f"{SDIST_ROOT}/tests/", f"{SDIST_ROOT}/README.md"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [
                m
                for m in tar.getmembers()
                if (m.name.startswith(prefix) or m.name == readme) and m.isfile()
            ]
            if not any(m.name == readme for m in members) or len(members) < 2:
                raise ReferenceUnavailable(f"{archive} has no {prefix} folder or {readme}")
            tar.extractall(dest, members=members, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ReferenceUnavailable(f"cannot unpack {archive}: {exc}") from exc


def reference_root(cache: Path = CACHE) -> Path:
    """The unpacked ``mlarray-0.0.54`` directory (only ``tests/`` and ``README.md``), downloaded
    if needed.

    Raises
    ------
    ReferenceUnavailable
        When pip cannot download the sdist (no network, no pip) or the archive is unusable.
    """
    root = cache / SDIST_ROOT
    if (root / "tests").is_dir() and (root / "README.md").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = _download(Path(tmp))
        _extract_tests(archive, Path(tmp) / "x")
        shutil.rmtree(root, ignore_errors=True)
        (Path(tmp) / "x" / SDIST_ROOT).rename(root)  # whole folder appears at once
    return root


if __name__ == "__main__":
    try:
        print(reference_root())
    except ReferenceUnavailable as exc:
        sys.exit(f"error: {exc}")
