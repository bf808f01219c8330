"""Fixtures for the metrics tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def empty_xrv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``~`` (so ``~/.torchxrayvision/models_data``) at an empty folder.

    Every test then runs without real weights unless it places a file (loaded networks are cached
    per file path, so nothing leaks between tests).
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home / ".torchxrayvision" / "models_data"


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_blas():
    """One BLAS thread for the 1024 x 1024 eigensolves: OpenBLAS threads spin badly on a busy 2-core box."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
