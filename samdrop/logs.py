"""Structured logs for Cloud Logging, through the standard library's ``logging``.

On Cloud Functions gen2 / Cloud Run a JSON line on stdout becomes a log entry: ``severity``,
``message``, ``time`` and ``logging.googleapis.com/sourceLocation`` become the entry's own fields and
everything else lands in ``jsonPayload``, so the fields a caller passes (``object``, ``generation``,
``outcome``, ``timings_ms`` …) can be filtered on in Logs Explorer. Callers log as usual and pass
their fields with ``extra=fields(...)``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from samdrop.tracing import current_trace_id

SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_FIELDS = "samdrop_fields"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: structured fields (``None`` values are left out)."""
    return {_FIELDS: {key: value for key, value in values.items() if value is not None}}


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per record, in the shape Cloud Logging's agent parses."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry: dict[str, Any] = {
            "severity": SEVERITY.get(record.levelno, "DEFAULT"),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": record.lineno,
                "function": record.funcName,
            },
            "logger": record.name,
        }
        trace_id = current_trace_id()
        if trace_id is not None:  # traces on (SAMDROP_TRACES): the line names its image's trace
            entry["trace_id"] = trace_id
        entry.update(getattr(record, _FIELDS, {}))
        return json.dumps(entry, default=str, separators=(",", ":"))


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure(level: str, loggers: tuple[str, ...] = ("functions", "samdrop")) -> None:
    """Send ``loggers`` to stdout as Cloud Logging JSON at ``level`` (``SAMDROP_LOG_LEVEL``).
    Idempotent: a warm instance calls it once per event at no cost."""
    for name in loggers:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if not any(isinstance(handler, StdoutHandler) for handler in logger.handlers):
            handler = StdoutHandler()
            handler.setFormatter(CloudLoggingFormatter())
            logger.addHandler(handler)
            logger.propagate = False
