"""Completion messages (docs/design.md "Completion messages") and publishing them to Pub/Sub.

Body: UTF-8 JSON; attributes: ``kind``, ``status`` and ``batch_id`` (when set) so subscribers can
filter. ``(input, generation)`` identifies an image's work: a subscriber that must not act twice
dedupes on it (Pub/Sub itself delivers at least once).
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

from google.api_core import exceptions as api_exceptions

from samdrop.errors import ConfigError, ErrorInfo, TransientError
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S
from samdrop.tracing import current_trace_id

Kind = Literal["image", "batch"]
Status = Literal["succeeded", "partial", "failed"]  # partial: batches only
KINDS: tuple[Kind, ...] = get_args(Kind)
STATUSES: dict[Kind, tuple[Status, ...]] = {"image": ("succeeded", "failed"), "batch": get_args(Status)}
_IMAGE_KEYS = (
    "kind",
    "status",
    "input",
    "generation",
    "outputs",
    "mask_count",
    "label_counts",
    "model",
    "timings_ms",
    "error",
    "trace_id",
)
_BATCH_KEYS = (
    "kind",
    "status",
    "batch_id",
    "input",
    "images",
    "succeeded",
    "failed",
    "label_counts",
    "outputs",
    "error",
)
# labelled masks only, traces on only (SAMDROP_TRACES): other messages keep their shape
_ONLY_WHEN_SET = ("label_counts", "trace_id")


@dataclass(frozen=True)
class CompletionMessage:
    """One completion. ``input`` is a ``gs://`` URI (a folder URI for batches); ``outputs`` maps a
    role (``masks`` → list of URIs, ``metadata``, ``overlay``, ``manifest``, ``report``) to URIs;
    ``error`` is ``{"code", "message"}`` exactly when ``status`` is ``failed``."""

    kind: Kind
    status: Status
    input: str
    generation: str | None = None
    batch_id: str | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)
    mask_count: int | None = None
    label_counts: Mapping[str, int] | None = None  # masks per label (concept prompts), in order
    model: str | None = None
    timings_ms: Mapping[str, float] | None = None
    images: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    error: ErrorInfo | None = None
    trace_id: str | None = None  # the image's OpenTelemetry trace (samdrop/tracing.py)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.status not in STATUSES[self.kind]:
            raise ValueError(
                f"a {self.kind} status must be one of {STATUSES[self.kind]}, got {self.status!r}"
            )
        if self.kind == "batch" and not self.batch_id:
            raise ValueError("a batch completion needs batch_id")
        if (self.status == "failed") != (self.error is not None):
            raise ValueError("error is set exactly when status is 'failed'")
        if self.error is not None and not {"code", "message"} <= set(self.error):
            raise ValueError("error needs 'code' and 'message'")

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        keys = _IMAGE_KEYS if self.kind == "image" else _BATCH_KEYS
        return {
            key: _plain(values[key]) for key in keys if key not in _ONLY_WHEN_SET or values[key] is not None
        }

    def to_record(self, message_id: str) -> dict[str, Any]:
        """``completion.json``: the message as published, with the id Pub/Sub gave it and when."""
        published_at = datetime.now(UTC).isoformat(timespec="seconds")
        return {**self.to_json(), "message_id": message_id, "published_at": published_at}

    def data(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=False).encode("utf-8")

    def attributes(self) -> dict[str, str]:
        attributes: dict[str, str] = {"kind": self.kind, "status": self.status}
        if self.batch_id:
            attributes["batch_id"] = self.batch_id
        return attributes

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CompletionMessage:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in body.items() if key in known})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class Publisher(Protocol):
    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish one message to ``topic`` (short id); returns the server's message id."""
        ...


class PubsubPublisher:
    """:class:`Publisher` over ``google.cloud.pubsub_v1.PublisherClient``; waits ``timeout_s`` at most."""

    def __init__(self, client: Any, project: str, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self._client = client
        self._project = project
        self._timeout = timeout_s

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        path = self._client.topic_path(self._project, topic)
        try:
            return str(self._client.publish(path, data, **attributes).result(timeout=self._timeout))
        except (api_exceptions.NotFound, api_exceptions.PermissionDenied, api_exceptions.Forbidden) as exc:
            raise ConfigError(
                f"cannot publish to {path} ({exc.message}): create the topic (SAMDROP_COMPLETIONS_TOPIC) "
                "and grant the function's service account roles/pubsub.publisher"
            ) from exc
        except (
            api_exceptions.GoogleAPICallError,
            api_exceptions.RetryError,
            concurrent.futures.TimeoutError,
        ) as exc:
            raise TransientError(f"publishing to {path} failed ({type(exc).__name__}: {exc})") from exc


def publish_completion(publisher: Publisher, topic: str, message: CompletionMessage) -> str:
    """Publish ``message`` to ``topic``; returns the message id. Raises ``TransientError`` on failure.
    Inside a trace (``SAMDROP_TRACES``), a message without a ``trace_id`` gets the current one."""
    message = traced(message)
    return publisher.publish(topic, message.data(), message.attributes())


def traced(message: CompletionMessage) -> CompletionMessage:
    """``message`` with the current trace's id, unless it has one or no trace is in progress."""
    trace_id = current_trace_id()
    if message.trace_id is not None or trace_id is None:
        return message
    return replace(message, trace_id=trace_id)
