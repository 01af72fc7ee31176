"""File names: the ``.mla`` suffix, and the files mlarray writes beside an ``.mla`` file
(temporaries of a save, the undo journal of an in-place write; see :mod:`mlarray.io`).

Kept apart from :mod:`mlarray.io` so that readers which do not import python-blosc2
(:mod:`mlarray._cstore`) find the journal by the same rule.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

__all__ = ["SUFFIX", "journal_path"]

#: Suffix of an ``.mla`` file (any case).
SUFFIX = ".mla"
_JOURNAL_SUFFIX = ".journal"


def _temp_prefix(target: Path) -> str:
    digest = hashlib.sha1(target.name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f".mla-{digest}-"


def journal_path(path: str | os.PathLike) -> Path:
    """The undo journal of an in-place write to ``path``: ``.mla-<hash>.journal`` beside it.

    The name is short (any file name near the system's limit has one) and
    hidden; ``<hash>`` is the first 12 hex digits of the SHA-1 of the file's name.
    Symbolic links are resolved first: writers and readers reaching one file
    through different names find the same journal.
    """
    return Path(_journal_name(os.path.realpath(os.fspath(path))))


@functools.lru_cache(maxsize=4096)
def _journal_name(path: str | bytes) -> str:
    target = Path(os.fsdecode(path))
    return os.fspath(target.parent / f"{_temp_prefix(target)[:-1]}{_JOURNAL_SUFFIX}")
