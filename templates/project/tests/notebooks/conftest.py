"""The `notebooks` marker of tests/notebooks/ (`pytest -m "not notebooks"` leaves them out)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "notebooks: runs a notebook of notebooks/ (seconds to half a minute each)")
