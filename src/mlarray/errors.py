"""One error hierarchy for mlarray.

Every error derives from :class:`MLArrayError` and also from the builtin a
caller would naturally catch (``ValueError``, ``TypeError``, ...), so both
``except MLArrayError`` and ``except ValueError`` work. Errors about a file
name the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "ClosedError",
    "CorruptChunkError",
    "DiskFullError",
    "FileChangedError",
    "IndexingError",
    "InvalidModeError",
    "InvalidPathError",
    "LayoutError",
    "MLArrayError",
    "MLArrayFileNotFoundError",
    "MLArrayFormatError",
    "MLArrayIOError",
    "MLArrayMemoryError",
    "MetaTypeError",
    "MetaValidationError",
    "NoArrayError",
    "ReadOnlyError",
    "UnsafeRecordError",
]


class MLArrayError(Exception):
    """Base class of every error raised by mlarray.

    Every error pickles with its message and attributes (``path``, ``chunk``,
    ``errno``...), so worker processes (``multiprocessing``, ``concurrent.futures``,
    dask) hand it to the parent as it was raised.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without calling ``__init__``: subclasses take the path and the
        # message apart and join them into the one message ``args`` holds.
        state = dict(self.__dict__)
        if isinstance(self, OSError):
            state["errno"] = self.errno  # a slot of OSError, not in ``__dict__``
        return _rebuild, (type(self), self.args, state)


def _rebuild(cls: type[MLArrayError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """An error of class ``cls`` with ``args`` and attributes ``state`` (unpickling)."""
    try:
        err = cls.__new__(cls, *args)
    except TypeError:  # MemoryError's own __new__ refuses to build a subclass this way
        err = BaseException.__new__(cls, *args)
    err.args = args
    for name, value in state.items():
        setattr(err, name, value)
    return err


def _with_path(path: str | os.PathLike | None, message: str) -> str:
    return f"{os.fspath(path)}: {message}" if path is not None else message


class InvalidPathError(MLArrayError, RuntimeError):
    """A path that cannot hold an ``.mla`` file (wrong suffix, a directory...)."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        super().__init__(_with_path(path, message))


class InvalidModeError(MLArrayError, RuntimeError):
    """An open/create ``mode`` or ``mmap_mode`` that is not supported."""


class MLArrayFileNotFoundError(MLArrayError, FileNotFoundError, RuntimeError):
    """The ``.mla`` file does not exist.

    Also a ``RuntimeError``, which is what the reference package raises from
    ``MLArray.open`` for a missing file.
    """

    def __init__(self, path: str | os.PathLike, message: str = "no such .mla file"):
        self.path = os.fspath(path)
        super().__init__(_with_path(path, message))


class MLArrayIOError(MLArrayError, OSError):
    """The operating system refused a read or write (permissions, disk full...).

    ``errno`` is the one of the underlying error; the message names the file.
    """

    def __init__(self, path: str | os.PathLike | None, message: str, errno: int | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(_with_path(path, message))
        self.errno = errno


class MLArrayFormatError(MLArrayError, ValueError, RuntimeError):
    """A file that is not a valid ``.mla`` file (bad container, bad record...).

    Also a ``RuntimeError``, which is what the reference package raises for such a
    file (Blosc2 cannot open it), so ``except RuntimeError`` in code written for it
    still catches it.
    """

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        super().__init__(_with_path(path, message))


class FileChangedError(MLArrayFormatError):
    """The file of an open handle was changed on disk by another program (truncated,
    rewritten or written to in place) since the handle was opened; reopen it to read
    the new version.

    ``size`` is its size now (None if it cannot be told), ``was`` its size when it
    was opened. A file replaced by a new one (saved through a temporary file and
    renamed, as mlarray saves) does not count: the handle keeps reading its own.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        message: str,
        size: int | None = None,
        was: int | None = None,
    ):
        super().__init__(path, message)
        self.size = size
        self.was = was


class UnsafeRecordError(MLArrayFormatError):
    """The metadata record asks for something a safe reader refuses.

    Raised for pickled globals that name code (``os.system``, ``builtins.eval``, ...),
    records beyond the caps on decompressed size, pickle operations or nesting
    depth, and when writing a record a reader would refuse.
    """


class MetaValidationError(MLArrayError, ValueError):
    """A metadata field has a value of the wrong type or shape."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class MetaTypeError(MetaValidationError, TypeError):
    """A metadata field has a value of the wrong type (a number where a string belongs...).

    Both a ``ValueError`` (as every :class:`MetaValidationError`) and a
    ``TypeError`` (as the reference package raises for wrong types).
    """


class LayoutError(MLArrayError, RuntimeError, ValueError):
    """Storage keywords that are each well formed but do not fit together.

    For example a block larger than its chunk, a ``chunk_size`` or a
    ``patch_size`` with a different number of entries than the array has
    (spatial) axes. Both a ``RuntimeError`` (what the API reference documents
    for inconsistent patch/chunk/block arguments, and what the reference
    package raises for a patch size of the wrong length) and a ``ValueError``
    (what it raises, from Blosc2, for chunk and block shapes that do not fit).
    """


class NoArrayError(MLArrayError, TypeError):
    """An operation needs array data, but this MLArray holds none."""


class ClosedError(MLArrayError, ValueError):
    """An operation on an MLArray after :meth:`~mlarray.MLArray.close` (a ValueError, as
    for a closed Python file): it no longer holds its array, so it cannot be saved."""


class ReadOnlyError(MLArrayError, PermissionError, ValueError):
    """A write to an array opened read-only (also a ``ValueError``, which is what the
    reference package raises for it)."""


class CorruptChunkError(MLArrayFormatError):
    """A chunk's data does not match its stored checksum, or cannot be decompressed.

    ``chunk`` is the flat chunk number (None when unknown).
    """

    def __init__(self, path: str | os.PathLike | None, message: str, chunk: int | None = None):
        super().__init__(path, message)
        self.chunk = chunk


class DiskFullError(MLArrayIOError):
    """No space left on the device while writing; the existing file is unchanged."""


class MLArrayMemoryError(MLArrayError, MemoryError):
    """An operation would need more memory than is available (names the file and the size)."""


class IndexingError(MLArrayError, IndexError):
    """An index numpy itself refuses for this shape (out of range, wrong number of axes...)."""


@contextlib.contextmanager
def os_errors(path: Path, doing: str) -> Iterator[None]:
    """Turn an OSError inside the block into our error type, naming ``path``.

    A missing file becomes :class:`MLArrayFileNotFoundError` (it may vanish
    between a check and its use), anything else :class:`MLArrayIOError`.
    """
    try:
        yield
    except MLArrayError:
        raise
    except FileNotFoundError:
        raise MLArrayFileNotFoundError(path) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", -1):
            raise DiskFullError(
                path,
                f"{doing}: {exc.strerror or 'No space left on device'} "
                "(a file that was there is unchanged)",
                exc.errno,
            ) from exc
        raise MLArrayIOError(path, f"{doing}: {exc.strerror or exc}", exc.errno) from exc
