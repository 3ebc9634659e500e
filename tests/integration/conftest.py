"""One local stack per test session on free ports and a temporary state dir; torn down after.
Headless Chromium for tests that open a page, installed with apt-get when missing (tests/chromium.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deploy.local import LocalStack
from tests.chromium import chromium_binary

from .local_stack_support import RECORDER, RunningStack, stack_settings


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state_dir = tmp_path_factory.mktemp("samdrop-state")
    record_file = state_dir / "function-events.jsonl"
    settings = stack_settings(state_dir)
    # The real predictor is the e2e tier's business; here the recorder function stands in for functions/.
    stack = LocalStack(
        settings,
        predictor=False,
        function_source=RECORDER,
        base_env={**os.environ, "RECORD_FILE": str(record_file)},
    )
    stack.up()
    try:
        yield RunningStack(stack, settings, record_file)
    finally:
        stack.down()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary: Debian's ``chromium``, installed when missing and root; else a skip."""
    return chromium_binary()
