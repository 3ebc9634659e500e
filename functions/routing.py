"""What to do with one GCS change: segment it, start a batch, or ignore it (always with a reason)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from functions.events import UploadEvent
from samdrop.images import is_image_object
from samdrop.layout import READY
from samdrop.settings import Settings


class Action(enum.Enum):
    SEGMENT = "segment"
    START_BATCH = "start_batch"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Route:
    action: Action
    reason: str
    batch_id: str | None = None


def route(event: UploadEvent, settings: Settings) -> Route:
    """Decide from bucket, event type, prefix and content type; the results prefix is checked first
    so that nothing the function writes can ever trigger it again (loop guard)."""
    if event.bucket != settings.bucket:
        return _ignore(f"bucket {event.bucket!r} is not the upload bucket {settings.bucket!r}")
    if event.event_type != "OBJECT_FINALIZE":
        return _ignore(f"event type {event.event_type} is not OBJECT_FINALIZE")
    name = event.name
    if name.startswith(settings.results_prefix):
        return _ignore(f"under {settings.results_prefix} (outputs never trigger work)")
    if name.startswith(settings.batches_prefix):
        return _batch_route(name[len(settings.batches_prefix) :], settings.batches_prefix)
    if name.startswith(settings.incoming_prefix):
        if name.endswith("/"):
            return _ignore("a folder placeholder, not an image")
        if is_image_object(event.name, event.content_type):
            return Route(Action.SEGMENT, f"image under {settings.incoming_prefix}")
        return _ignore(
            f"not an image (content type {event.content_type or 'unknown'}, no image extension) "
            f"under {settings.incoming_prefix}"
        )
    return _ignore(f"outside {settings.incoming_prefix} and {settings.batches_prefix}")


def _batch_route(rest: str, prefix: str) -> Route:
    batch_id, slash, tail = rest.partition("/")
    if not batch_id or not slash:
        return _ignore(f"directly under {prefix}: a batch lives in {prefix}<id>/")
    if tail == READY:
        return Route(Action.START_BATCH, f"{READY} marker of batch {batch_id}", batch_id=batch_id)
    return _ignore(f"part of batch {batch_id}; waits for {prefix}{batch_id}/{READY}")


def _ignore(reason: str) -> Route:
    return Route(Action.IGNORE, reason)
