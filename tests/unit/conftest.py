from __future__ import annotations

from pathlib import Path

import pytest

from predictor.engine import SamEngine
from predictor.registry import load_sam


@pytest.fixture(scope="session")
def fast_engine(cache_dir: Path) -> SamEngine:
    return SamEngine(
        load_sam("tiny", None, cache_dir, "cpu"), "tiny", fast=True, batch_size=2, random_weights=True
    )


@pytest.fixture(scope="session")
def reference_engine(cache_dir: Path) -> SamEngine:
    return SamEngine(load_sam("tiny", None, cache_dir, "cpu"), "tiny", fast=False, random_weights=True)
