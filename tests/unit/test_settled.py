"""The "nothing else arrived" helper of the emulator tests fails on a late duplicate and on a
shortfall, and returns once the settle window after the last message has passed quietly."""

from __future__ import annotations

import time

import pytest

from tests.integration.local_stack_support import settled


def arrivals(*at_s: float):
    """An ``arrived`` callable: message ``i`` has arrived ``at_s[i]`` seconds after the first call."""
    first_call: float | None = None

    def arrived() -> list[int]:
        nonlocal first_call
        now = time.monotonic()
        first_call = now if first_call is None else first_call
        return [i for i, at in enumerate(at_s) if now - first_call >= at]

    return arrived


def test_a_duplicate_after_the_expected_message_fails():
    with pytest.raises(AssertionError, match="2 messages, expected 1"):
        settled(arrivals(0.0, 0.4), 1, timeout_s=5, settle_s=1.0, what="messages")


def test_the_window_runs_from_the_last_message_not_from_the_call():
    # The expected message comes at 0.6 s; a duplicate 0.8 s after it is still inside the window.
    with pytest.raises(AssertionError, match="expected 1"):
        settled(arrivals(0.6, 1.4), 1, timeout_s=5, settle_s=1.0, what="messages")


def test_quiet_after_the_expected_messages_returns_them():
    started = time.monotonic()
    assert settled(arrivals(0.0, 0.3), 2, timeout_s=5, settle_s=0.5, what="messages") == [0, 1]
    assert time.monotonic() - started >= 0.8  # 0.3 s to the last message, then the 0.5 s window


def test_too_few_within_the_timeout_fails():
    with pytest.raises(AssertionError, match=r"1 of 2 messages within 0\.5s"):
        settled(arrivals(0.0), 2, timeout_s=0.5, settle_s=0.2, what="messages")
