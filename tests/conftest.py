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


def plain_blosc2_file(
    p: Path, ref: Any, clevel: int, chunks: tuple = (10, 30, 40), blocks: tuple = (5, 10, 40)
) -> tuple[bytearray, Any]:
    """Write ``ref`` (shape (20, 30, 40)) as a plain Blosc2 file, as another tool would (no
    checksums; LZ4 at ``clevel``): its bytes to damage, and its
    :class:`~mlarray.frame.FrameInfo`."""
    import blosc2

    from mlarray.frame import inspect_frame

    blosc2.asarray(
        ref,
        urlpath=str(p),
        mode="w",
        chunks=chunks,
        blocks=blocks,
        cparams={"codec": blosc2.Codec.LZ4, "clevel": clevel},
    )
    buf = bytearray(p.read_bytes())
    return buf, inspect_frame(bytes(buf))


def undecodable_blosc2_file(p: Path, ref: Any) -> None:
    """Write ``ref`` (shape (20, 30, 40)) as a plain Blosc2 file (chunks (10, 10, 20),
    blocks (5, 5, 10)) whose every chunk c-blosc2 cannot decode: the compressed streams
    inverted, each chunk's header and block starts left intact."""
    buf, info = plain_blosc2_file(p, ref, 1, chunks=(10, 10, 20), blocks=(5, 5, 10))
    for n in range(int(info.nchunks)):
        pos, cb = int(info.chunk_pos[n]), int(info.chunk_cbytes[n])
        start = pos + 32 + 4 * 8  # header and block starts (8 blocks) left intact
        buf[start : pos + cb] = bytes(b ^ 0xFF for b in buf[start : pos + cb])
    p.write_bytes(bytes(buf))
