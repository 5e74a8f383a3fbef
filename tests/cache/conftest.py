"""Fixtures of the cache tests (helpers live in tests/support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import make_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")
