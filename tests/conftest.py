"""Shared fixtures: where the reference package's sample files live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "upstream-0.0.54"


def fixture_names() -> list[str]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p.stem for p in FIXTURES.glob("*.mla"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


def load_expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())
