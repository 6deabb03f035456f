"""Shared fixtures. Real data comes from one setting: LUNGNODULE_DATA (default ../shared/data from the repo root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LUNGNODULE_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real LIDC data not found at {path} (set LUNGNODULE_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA_DIR)


@pytest.fixture(scope="session")
def voi_dir() -> Path:
    return _require(DATA_DIR / "lidc-voi")


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    return _require(DATA_DIR / "lidc-ct")
