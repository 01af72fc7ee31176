"""Shared test data: the reference package's sample files, vendored in ``tests/data``."""

from __future__ import annotations

import json
from pathlib import Path

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
