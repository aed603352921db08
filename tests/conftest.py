"""Suite-wide settings: no test touches ~/.cidflow, and Hypothesis has no per-example deadline
(CI machines are small and shared; a slow example is not a failure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("cidflow", deadline=None)
settings.load_profile("cidflow")


@pytest.fixture(autouse=True)
def _isolated_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    home = tmp_path_factory.mktemp("default-home")
    monkeypatch.setenv("CIDFLOW_HOME", str(home))
    return home
