"""Helpers shared by the local-stack fixture and tests (a module name no other folder uses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.local import LocalStack, free_ports
from samdrop.settings import Settings

RECORDER = Path(__file__).resolve().parent / "recorder_function" / "main.py"


@dataclass(frozen=True)
class RunningStack:
    stack: LocalStack
    settings: Settings
    record_file: Path  # CloudEvents the recorder function received, one JSON per line

    @property
    def env(self) -> dict[str, str]:
        return self.stack.client_env()


def stack_settings(state_dir: Path, **overrides) -> Settings:
    """Settings on free ports; quick retries so the dead-letter path runs in seconds."""
    ports = free_ports()
    values = dict(
        state_dir=state_dir,
        retry_min_backoff_s=1.0,
        retry_max_backoff_s=2.0,
        max_delivery_attempts=5,
        # Every stack here starts new predictor processes: skip the decoder compile (tens of seconds
        # cold). The compiled path runs through the real model server in test_model_server.py and
        # through the whole stack in tests/e2e (defaults).
        compile="off",
    )
    return Settings.from_env({}, **{**ports, **values, **overrides})


def until(get: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``get`` until it returns something truthy (and return that); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = get()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s}s")
