"""What every ``samdrop`` sub-command shares, whichever unit defines it: the exit statuses (one
table, docs/cli.md "Exit statuses") and the argument types that range-check numbers as they are
parsed, so a bad number is a usage error (exit 2) before anything runs."""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable


class ExitStatus(enum.IntEnum):
    """How a ``samdrop`` command ends; ``deploy.command`` turns errors into these."""

    DONE = 0  # everything asked for was done
    FAILED = 1  # it ran and failed: a service, the credentials, a failed batch or image, a timeout
    USAGE = 2  # the command line or a SAMDROP_* setting is wrong: nothing was done
    PARTIAL = 3  # a batch finished with some images failed (`samdrop batch status`)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), like a shell
    TERMINATED = 143  # SIGTERM (128 + 15), after the command cleaned up (its subscription deleted)
    BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): ends quietly, 128 + SIGPIPE


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number within ``minimum..maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its message
    return parse


def positive_number(text: str) -> float:
    """An argparse ``type`` for a number of seconds (or any quantity) above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is out of range: must be a number > 0")
    return value


PORT = whole_number(1, 65535)
