"""The error hierarchy every unit shares.

Errors carry a stable ``code`` and a ``message`` that says what to fix. Only the edges turn them
into something else: the predictor into a per-instance ``{"error": {...}}``, the function into
ack (permanent) or redelivery (transient), the pipeline into a manifest line.
"""

from __future__ import annotations

from typing import Any


class SamdropError(Exception):
    """Base of all samdrop errors. ``code`` is stable and machine-readable."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
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
