"""Structured log lines on stdout, one JSON object each, as Cloud Logging parses them.

Cloud Functions gen2 (Cloud Run) turns a JSON line into a log entry: ``severity`` and ``message``
become the entry's own fields and everything else lands in ``jsonPayload``, so the fields below
(``object``, ``generation``, ``outcome``, ``timings_ms`` …) can be filtered on in Logs Explorer.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

SEVERITIES = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")


def log(severity: str, message: str, *, stream: TextIO | None = None, **fields: Any) -> None:
    """Write one JSON log line: ``{"severity", "message", **fields}``; ``None`` fields are dropped."""
    entry: dict[str, Any] = {
        "severity": severity if severity in SEVERITIES else "DEFAULT",
        "message": message,
    }
    entry.update({key: value for key, value in fields.items() if value is not None})
    out = stream or sys.stdout
    out.write(json.dumps(entry, default=str, separators=(",", ":")) + "\n")
    out.flush()


def info(message: str, **fields: Any) -> None:
    log("INFO", message, **fields)


def warning(message: str, **fields: Any) -> None:
    log("WARNING", message, **fields)


def error(message: str, **fields: Any) -> None:
    log("ERROR", message, **fields)
