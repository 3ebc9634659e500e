"""Fixtures shared by every tier: sample images and one tiny SAM per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

# No test reaches the real Hugging Face hub (huggingface_hub reads this when first imported); a
# test that wants a hub runs tests/hf_hub_server.py and a subprocess with HF_ENDPOINT pointing there.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def user_state_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samdrop command keeps the local stack's state under $XDG_STATE_HOME/samdrop: a test run
    never reads or writes the user's own (a test that starts a stack gives it a state dir of its own)."""
    home = tmp_path_factory.mktemp("xdg-state")
    os.environ["XDG_STATE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("samdrop-cache")


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """scikit-image's coffee photo: ``400x600x3 uint8``."""
    return skdata.coffee()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo: ``512x512x3 uint8``."""
    return skdata.astronaut()


# The file that waits longest (a minute of outage, then Pub/Sub's backoff): it starts first.
FIRST = "test_outage.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a ``slow`` test run first, :data:`FIRST` before them, each file's tests kept
    together (module fixtures start once). With ``make test``'s two xdist workers (``--dist
    loadfile``, collection order) the long stack tests, which mostly wait on backoffs and emulators,
    start early and overlap the CPU-bound unit tests instead of running last on one worker."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: (item.path.name != FIRST, item.path not in slow_files))
