"""The error hierarchy every unit shares, and the one table of error codes.

Errors carry a stable ``code`` and a ``message`` that says what to fix. :data:`ERROR_CODES` says,
for every code any unit writes, whether retrying can help; every path (function, predictor,
pipeline) asks :func:`retry_rule` or :func:`error_from_code` instead of deciding on its own. Only
the edges turn errors into something else: the predictor into a per-instance ``{"error": {...}}``,
the function into ack (permanent) or redelivery (transient, config), the pipeline into a manifest
line. An exception that is not a samdrop error meets :func:`as_samdrop_error` at every edge: an I/O
failure is transient, anything else a bug (``internal``, permanent, its trace logged). See
docs/design.md "Errors".
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12


class RetryRule(enum.Enum):
    """What a code means for the one who meets it."""

    PERMANENT = "permanent"  # the input is at fault: record error.json, acknowledge
    TRANSIENT = "transient"  # worth retrying: redeliver (function) or leave for the next run (pipeline)
    CONFIG = "config"  # the deployment is at fault: redeliver until fixed, then dead-letter


# Every code a unit writes into error.json, a completion, a manifest line or a prediction slot.
ERROR_CODES: dict[str, RetryRule] = {
    "invalid_input": RetryRule.PERMANENT,
    "invalid_image": RetryRule.PERMANENT,
    "image_too_large": RetryRule.PERMANENT,
    "invalid_prompt": RetryRule.PERMANENT,
    "invalid_request": RetryRule.PERMANENT,
    "unsupported_format": RetryRule.PERMANENT,
    "not_found": RetryRule.PERMANENT,
    "size_mismatch": RetryRule.PERMANENT,  # the object changed between the endpoint's read and ours
    "endpoint_rejected": RetryRule.PERMANENT,  # the endpoint answered 4xx for this input
    "bad_response": RetryRule.PERMANENT,  # the endpoint answered 200 off-contract for this input
    "superseded": RetryRule.PERMANENT,  # a newer upload of the same name owns the outputs
    "internal": RetryRule.PERMANENT,  # a bug: retrying the same input meets it again
    "empty_batch": RetryRule.PERMANENT,
    "all_failed": RetryRule.PERMANENT,
    "pipelines_not_configured": RetryRule.PERMANENT,
    "unavailable": RetryRule.TRANSIENT,
    "conflict": RetryRule.TRANSIENT,  # a generation precondition failed: look again later
    "not_processed": RetryRule.TRANSIENT,  # its shard never reported: the next run tries it
    "pipeline_failed": RetryRule.TRANSIENT,  # the run failed before its report: a new run resumes
    "config": RetryRule.CONFIG,
}


class ErrorInfo(TypedDict):
    """``{"code", "message"}`` as it appears inside documents and messages."""

    code: str
    message: str


def retry_rule(code: str) -> RetryRule:
    """The rule for ``code``; a code missing from the table is treated as permanent."""
    return ERROR_CODES.get(code, RetryRule.PERMANENT)


class SamdropError(Exception):
    """Base of all samdrop errors. ``code`` is stable and machine-readable (see :data:`ERROR_CODES`)."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def permanent(self) -> bool:
        return retry_rule(self.code) is RetryRule.PERMANENT

    def to_json(self) -> ErrorInfo:
        return {"code": self.code, "message": self.message}


class ConfigError(SamdropError):
    """A setting, model type or checkpoint is wrong; raised at start-up, never per request."""

    code = "config"


class PermanentError(SamdropError):
    """Retrying cannot help: the input itself is at fault. Recorded, then acknowledged."""

    code = "invalid_input"


class InvalidImage(PermanentError):
    """Bytes that are empty, not an image, or cannot be decoded."""

    code = "invalid_image"


class ImageTooLarge(PermanentError):
    """More pixels than ``SAMDROP_MAX_IMAGE_PIXELS`` (decompression-bomb guard)."""

    code = "image_too_large"


class InvalidPrompt(PermanentError):
    """Points, labels, boxes or parameters that do not fit the image or the schema."""

    code = "invalid_prompt"


class InvalidRequest(PermanentError):
    """A request or instance that does not follow the predictor contract."""

    code = "invalid_request"


class InputNotFound(PermanentError):
    """A ``gs://`` object that does not exist (or is not readable)."""

    code = "not_found"


class TransientError(SamdropError):
    """Worth retrying: endpoint 429/5xx, timeouts, storage 5xx. Raised so Pub/Sub redelivers."""

    code = "unavailable"


def error_from_code(code: str, message: str) -> SamdropError:
    """The exception a ``{"code", "message"}`` stands for, by :data:`ERROR_CODES`."""
    rule = retry_rule(code)
    if rule is RetryRule.TRANSIENT:
        return TransientError(message, code=code)
    if rule is RetryRule.CONFIG:
        return ConfigError(message, code=code)
    return PermanentError(message, code=code)


# Longest error message a completion, error.json or prediction slot carries (names can be ~1 KB).
MAX_MESSAGE_CHARS = 2000


def public_error(exc: BaseException) -> ErrorInfo:
    """``{"code", "message"}`` fit for a completion or ``error.json``: a samdrop error's own code and
    message (written for the user, cut at :data:`MAX_MESSAGE_CHARS`); anything else is ``internal``
    with its type only, because raw exception text belongs in the log, not in a message."""
    if isinstance(exc, SamdropError):
        message = exc.message
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        return {"code": exc.code, "message": message}
    return {
        "code": "internal",
        "message": f"internal error ({type(exc).__name__}); the trace is in the service's log",
    }


# Exceptions that mean the network or a service failed, not the code or the input: connection
# errors, timeouts, and 429/5xx from Google APIs (Cloud Storage, Pub/Sub) once their retries ran out.
IO_FAILURES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    api_exceptions.TooManyRequests,
    api_exceptions.ServerError,
    api_exceptions.RetryError,
    api_exceptions.DeadlineExceeded,
    auth_exceptions.TransportError,
)


def as_samdrop_error(
    exc: BaseException, *, where: str, log: logging.Logger, extra: Mapping[str, Any] | None = None
) -> SamdropError:
    """The one policy for an exception an edge catches: a samdrop error stays what it is; an I/O
    failure (:data:`IO_FAILURES`) is transient (``unavailable``: retry later); anything else is a
    bug, ``internal`` and permanent (the same input would meet it again, so retrying only delays
    the answer), with its trace in ``log`` and only its type in the message. ``where`` says what
    was being done (``reading gs://b/a.jpg``); ``extra``: the log record's structured fields."""
    if isinstance(exc, SamdropError):
        return exc
    if isinstance(exc, IO_FAILURES):
        return TransientError(f"{where} failed, retry later ({type(exc).__name__}: {exc})")
    log.error("unexpected error %s; recorded as a permanent failure", where, exc_info=exc, extra=extra)
    return PermanentError(f"{where}: {public_error(exc)['message']}", code="internal")
