"""CloudEvent → :class:`UploadEvent`: the one plain value the rest of the function works on.

Two CloudEvent shapes carry a GCS change, and both decode here:

- ``google.cloud.pubsub.topic.v1.messagePublished`` (Eventarc Pub/Sub trigger, and what
  functions-framework builds from a Pub/Sub push): ``data.message.attributes`` has ``eventType``,
  ``bucketId``, ``objectId``, ``objectGeneration``, ``payloadFormat``; ``data.message.data`` is the
  base64 JSON object resource (absent or empty when ``payloadFormat`` is ``NONE``).
- ``google.cloud.storage.object.v1.*`` (Eventarc direct storage trigger): ``data`` is the object resource.

The attributes are authoritative for identity (bucket, name, generation); the payload only adds
content type, size and custom metadata.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from samdrop.budgets import DEFAULT_MAX_JSON_DEPTH, loads_limited
from samdrop.errors import PermanentError

PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_TYPES = {
    "google.cloud.storage.object.v1.finalized": "OBJECT_FINALIZE",
    "google.cloud.storage.object.v1.deleted": "OBJECT_DELETE",
    "google.cloud.storage.object.v1.archived": "OBJECT_ARCHIVE",
    "google.cloud.storage.object.v1.metadataUpdated": "OBJECT_METADATA_UPDATE",
}


class EventDecodeError(PermanentError):
    """The CloudEvent is not a GCS notification this function understands; logged and acknowledged.
    ``subject`` is the object it names (an :class:`UploadEvent` with generation ``"0"``) when the
    notification's identity attributes could be read, so its uploader can still be told."""

    code = "invalid_event"
    subject: UploadEvent | None = None


@dataclass(frozen=True)
class UploadEvent:
    """One GCS object change. ``generation`` is a decimal string (it exceeds 2**53, JSON-unsafe)."""

    event_type: str
    bucket: str
    name: str
    generation: str
    content_type: str | None = None
    size: int | None = None
    # None: the notification carried no payload (payloadFormat NONE), so metadata is unknown here.
    metadata: Mapping[str, str] | None = field(default=None, compare=False)
    message_id: str | None = None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


_DECIMAL = re.compile(r"[0-9]{1,30}")


def decode_event(
    ce_type: str, data: Any, *, ce_id: str | None = None, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> UploadEvent:
    """Decode a CloudEvent's ``type`` and ``data``; raises :class:`EventDecodeError` when malformed
    (JSON nested deeper than ``max_json_depth`` included)."""
    data = _json_object(data, "CloudEvent data", max_json_depth)
    if ce_type in STORAGE_TYPES:
        return _from_resource(STORAGE_TYPES[ce_type], data, message_id=ce_id)
    if ce_type != PUBSUB_TYPE:
        raise EventDecodeError(f"unsupported CloudEvent type {ce_type!r}; expected {PUBSUB_TYPE}")
    message = data.get("message")
    if not isinstance(message, Mapping):
        raise EventDecodeError("Pub/Sub CloudEvent has no data.message object")
    attributes = message.get("attributes")
    if not isinstance(attributes, Mapping):
        raise EventDecodeError("Pub/Sub message has no attributes: is this a GCS notification?")
    missing = [k for k in ("eventType", "bucketId", "objectId", "objectGeneration") if not attributes.get(k)]
    if missing:
        raise EventDecodeError(f"GCS notification lacks attribute(s) {', '.join(missing)}")
    try:
        generation = _generation(attributes["objectGeneration"])
        payload = _payload(message.get("data"), attributes.get("payloadFormat"), max_json_depth)
        content_type = size = metadata = None
        if payload is not None:
            content_type, size, metadata = _details(payload)
    except EventDecodeError as exc:
        subject = (str(attributes["eventType"]), str(attributes["bucketId"]), str(attributes["objectId"]))
        exc.subject = UploadEvent(*subject, generation="0")
        raise
    message_id = message.get("messageId") or message.get("message_id") or ce_id
    return UploadEvent(
        event_type=str(attributes["eventType"]),
        bucket=str(attributes["bucketId"]),
        name=str(attributes["objectId"]),
        generation=generation,
        content_type=content_type,
        size=size,
        metadata=metadata,
        message_id=str(message_id) if message_id else None,
    )


def _payload(raw: Any, payload_format: Any, max_json_depth: int) -> dict[str, Any] | None:
    if raw in (None, "", b""):
        if payload_format in (None, "NONE"):
            return None
        raise EventDecodeError(f"payloadFormat is {payload_format} but the message has no data")
    if payload_format == "NONE":
        return None
    try:
        text = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise EventDecodeError(f"message data is not valid base64: {exc}") from None
    return _json_object(text, "message data", max_json_depth)


def _from_resource(event_type: str, resource: Mapping[str, Any], *, message_id: str | None) -> UploadEvent:
    for key in ("bucket", "name", "generation"):
        if not resource.get(key):
            raise EventDecodeError(f"storage object resource lacks {key!r}")
    content_type, size, metadata = _details(resource)
    return UploadEvent(
        event_type=event_type,
        bucket=str(resource["bucket"]),
        name=str(resource["name"]),
        generation=_generation(resource["generation"]),
        content_type=content_type,
        size=size,
        metadata=metadata,
        message_id=message_id,
    )


def _details(resource: Mapping[str, Any]) -> tuple[str | None, int | None, dict[str, str]]:
    content_type = resource.get("contentType")
    try:
        size = int(resource["size"]) if resource.get("size") is not None else None
    except (TypeError, ValueError):
        size = None
    metadata = resource.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise EventDecodeError("object resource 'metadata' is not an object")
    return (
        str(content_type) if content_type else None,
        size,
        {str(k): str(v) for k, v in metadata.items()},
    )


def _generation(raw: Any) -> str:
    # Real GCS sends a string, fake-gcs-server an integer; both become a decimal string.
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    text = str(raw).strip()
    if not _DECIMAL.fullmatch(text):
        raise EventDecodeError(f"object generation {raw!r} is not a non-negative integer")
    return str(int(text))


def _json_object(raw: Any, what: str, max_json_depth: int) -> dict[str, Any]:
    if isinstance(raw, bytes | str):
        try:
            raw = loads_limited(raw, max_depth=max_json_depth)
        except (UnicodeDecodeError, ValueError) as exc:
            raise EventDecodeError(f"{what} is not JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise EventDecodeError(f"{what} is not a JSON object (got {type(raw).__name__})")
    return dict(raw)
