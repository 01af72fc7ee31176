"""Console scripts (``mlarray``, ``mlarray_header``, ``mlarray_convert``).

They live outside the ``mlarray`` package on purpose: the reference package (distribution
``mlarray``) installs the same ``mlarray`` import package, and installed after this
project it replaces ``mlarray/cli.py``. A script pointing into ``mlarray.cli`` then dies
with a bare ImportError; these say what happened and how to repair the environment.
(When both import, ``mlarray.cli`` warns about the clash itself.)
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["header", "main", "reference_convert"]

_BROKEN = (
    "{prog}: error: cannot start: the `mlarray` package here is not napari-mlarray's "
    "({exc}). The reference package `mlarray`, installed after this project, replaced its "
    "files. Fix: pip uninstall -y mlarray napari-mlarray, then reinstall this project "
    "(see the README's Install section)."
)


def _ours(name: str, prog: str) -> Any:
    """``mlarray.cli.<name>``, or exit with a message when that is not this project's."""
    try:
        import mlarray.cli as cli

        return getattr(cli, name)
    except (ImportError, AttributeError) as exc:
        print(_BROKEN.format(prog=prog, exc=" ".join(str(exc).split())), file=sys.stderr)
        raise SystemExit(1) from None


def main() -> int:
    """``mlarray``: the command line."""
    return _ours("main", "mlarray")()


def header() -> None:
    """``mlarray_header FILE``: the reference's command."""
    return _ours("cli_print_header", "mlarray_header")()


def reference_convert() -> None:
    """``mlarray_convert IN OUT``: the reference's command."""
    return _ours("cli_convert_to_mlarray", "mlarray_convert")()
