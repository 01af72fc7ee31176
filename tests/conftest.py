"""Shared test data: the reference package's sample files, vendored in ``tests/data``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "upstream-0.0.54"


def fixture_names() -> list[str]:
    """Stems of the vendored reference files (each ``.mla`` has a ``.json`` of expectations)."""
    names = sorted(p.stem for p in FIXTURES.glob("*.mla"))
    if not names:  # the data is part of the repository: missing means a broken checkout
        raise FileNotFoundError(f"reference fixtures missing from {FIXTURES}")
    return names


def load_expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def plain_blosc2_file(p: Path, ref: Any, clevel: int) -> tuple[bytearray, Any]:
    """Write ``ref`` (shape (20, 30, 40)) as a plain Blosc2 file, as another tool would (no
    checksums; chunks (10, 30, 40), blocks (5, 10, 40), LZ4 at ``clevel``): its bytes to
    damage, and its :class:`~mlarray.frame.FrameInfo`."""
    import blosc2

    from mlarray.frame import inspect_frame

    blosc2.asarray(
        ref,
        urlpath=str(p),
        mode="w",
        chunks=(10, 30, 40),
        blocks=(5, 10, 40),
        cparams={"codec": blosc2.Codec.LZ4, "clevel": clevel},
    )
    buf = bytearray(p.read_bytes())
    return buf, inspect_frame(bytes(buf))
