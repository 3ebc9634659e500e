"""Completion messages (docs/design.md "Completion messages") and publishing them to Pub/Sub.

Body: UTF-8 JSON; attributes: ``schema_version``, ``kind``, ``status`` and ``batch_id`` (batches)
so subscribers can filter. ``(input, generation)`` identifies an image's work: a subscriber that must
not act twice dedupes on it (Pub/Sub itself delivers at least once).
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Mapping
from dataclasses import field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeAlias, TypeVar

from google.api_core import exceptions as api_exceptions
from pydantic import Field, TypeAdapter
from pydantic.dataclasses import dataclass

from samdrop.documents import DOCUMENT, SCHEMA_VERSION, Document, JsonObject, SchemaVersion, absent_when_none
from samdrop.errors import ConfigError, ErrorInfo, TransientError
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S
from samdrop.tracing import current_trace_id


class _Completion(Document):
    """What both kinds share: the body (``to_json``), the attributes, the ``completion.json`` record.
    ``error`` is ``{"code", "message"}`` exactly when ``status`` is ``failed``."""

    if TYPE_CHECKING:  # fields of each kind, declared there in the order they are written
        kind: str
        status: str
        error: ErrorInfo | None

    def __post_init__(self) -> None:
        if (self.status == "failed") != (self.error is not None):
            raise ValueError("error is set exactly when status is 'failed'")

    def to_record(self, message_id: str) -> dict[str, Any]:
        """``completion.json``: the message as published, with the id Pub/Sub gave it and when."""
        published_at = datetime.now(UTC).isoformat(timespec="seconds")
        return {**self.to_json(), "message_id": message_id, "published_at": published_at}

    def data(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=False).encode("utf-8")

    def attributes(self) -> dict[str, str]:
        return {"schema_version": str(SCHEMA_VERSION), "kind": self.kind, "status": self.status}


@dataclass(frozen=True, kw_only=True, config=DOCUMENT)
class ImageCompletion(_Completion):
    """One image's completion. ``input``: its ``gs://`` URI; ``outputs`` maps a role (``masks`` →
    list of URIs, ``metadata``, ``overlay``, or ``error``) to URIs; ``model``: the ``masks.json``
    ``model`` object (``type`` …); ``label_counts``: masks per label (concept prompts), in order,
    present only for labelled masks."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    kind: Literal["image"] = "image"
    status: Literal["succeeded", "failed"]
    input: str
    generation: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    mask_count: int | None = None
    label_counts: dict[str, int] | None = absent_when_none()
    model: JsonObject | None = None
    timings_ms: dict[str, float] | None = None
    error: ErrorInfo | None = None
    trace_id: str | None = absent_when_none()  # the image's OpenTelemetry trace (SAMDROP_TRACES)


@dataclass(frozen=True, kw_only=True, config=DOCUMENT)
class BatchCompletion(_Completion):
    """One batch's completion. ``input``: the batch folder's ``gs://`` URI; ``outputs``: ``manifest``,
    ``report``, ``report_md``, ``summary`` and the exports' URIs; ``partial``: some images failed."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    kind: Literal["batch"] = "batch"
    status: Literal["succeeded", "partial", "failed"]
    batch_id: Annotated[str, Field(min_length=1)]
    input: str
    images: int
    succeeded: int
    failed: int
    label_counts: dict[str, int] | None = absent_when_none()
    outputs: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None

    def attributes(self) -> dict[str, str]:
        return {**super().attributes(), "batch_id": self.batch_id}


CompletionMessage: TypeAlias = ImageCompletion | BatchCompletion
COMPLETION = TypeAdapter[CompletionMessage](Annotated[CompletionMessage, Field(discriminator="kind")])


def completion_from_json(body: Mapping[str, Any]) -> CompletionMessage:
    """A completion body as published (its ``kind`` says which); ``ValueError`` when off-contract."""
    return COMPLETION.validate_python(dict(body))


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


C = TypeVar("C", bound=ImageCompletion | BatchCompletion)


def traced(message: C) -> C:
    """An image's ``message`` with the current trace's id, unless it has one or no trace is in
    progress; a batch's message as it is (a batch spans many traces)."""
    trace_id = current_trace_id()
    if not isinstance(message, ImageCompletion) or message.trace_id is not None or trace_id is None:
        return message
    return replace(message, trace_id=trace_id)
