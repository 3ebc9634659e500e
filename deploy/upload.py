"""``samdrop upload`` and ``samdrop watch``: what a user does with the bucket and the completion topic.

Planning and prompt checks are pure; the two functions that touch Google Cloud take their clients.
"""

from __future__ import annotations

import json
import math
import mimetypes
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from samdrop.errors import InputNotFound, InvalidImage, InvalidPrompt, InvalidRequest
from samdrop.images import is_image_name

if TYPE_CHECKING:
    from google.cloud import pubsub_v1, storage

PROMPTS_METADATA_KEY = "samdrop-prompts"
PROMPT_KEYS = ("points", "labels", "boxes")
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PlannedUpload:
    source: Path
    object_name: str


def parse_prompts(text: str) -> dict[str, list[Any]]:
    """Check ``--prompts`` JSON and return it normalised.

    Shape: ``{"points": Nx2 pixel XY, "labels": N of 1 (foreground) or 0 (background),
    "boxes": Mx4 pixel XYXY}``; any key may be left out, but points need their labels.
    """
    try:
        prompts = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPrompt(f"--prompts is not JSON ({exc})") from None
    if not isinstance(prompts, dict) or not prompts:
        raise InvalidPrompt('--prompts must be a JSON object like {"points": [[x, y]], "labels": [1]}')
    unknown = sorted(set(prompts) - set(PROMPT_KEYS))
    if unknown:
        raise InvalidPrompt(f"--prompts has unknown keys {unknown}; allowed: {', '.join(PROMPT_KEYS)}")
    points = _coordinates(prompts.get("points", []), 2, "points", "[[x, y], ...]")
    boxes = _coordinates(prompts.get("boxes", []), 4, "boxes", "[[x0, y0, x1, y1], ...]")
    labels = prompts.get("labels", [])
    if not isinstance(labels, list) or any(
        label not in (0, 1) or isinstance(label, bool) for label in labels
    ):
        raise InvalidPrompt("--prompts labels must be a list of 1 (foreground) or 0 (background)")
    if len(labels) != len(points):
        raise InvalidPrompt(
            f"--prompts has {len(points)} points but {len(labels)} labels: give one label per point"
        )
    for box in boxes:
        if box[0] > box[2] or box[1] > box[3]:
            raise InvalidPrompt(f"--prompts box {box} is not [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
    normalised: dict[str, list[Any]] = {}
    if points:
        normalised["points"], normalised["labels"] = points, labels
    if boxes:
        normalised["boxes"] = boxes
    return normalised


def _coordinates(value: Any, width: int, name: str, shape: str) -> list[list[float]]:
    if not isinstance(value, list):
        raise InvalidPrompt(f"--prompts {name} must be a list {shape}")
    for item in value:
        ok = isinstance(item, list) and len(item) == width
        if not ok or not all(_is_coordinate(v) for v in item):
            raise InvalidPrompt(
                f"--prompts {name} entry {item!r} is not {width} non-negative numbers ({shape})"
            )
    return value


def _is_coordinate(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


def plan_uploads(paths: Iterable[Path], prefix: str) -> list[PlannedUpload]:
    """Object names for ``paths`` under ``prefix``, like ``gcloud storage cp -r PATH gs://b/prefix``.

    A file lands as ``<prefix><file name>``; a folder as ``<prefix><folder name>/<relative path>``
    with every image in it, recursively (other files are skipped). Raises if nothing is left.
    """
    planned = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)):
                relative = file.relative_to(path).as_posix()
                planned.append(PlannedUpload(file, f"{prefix}{path.resolve().name}/{relative}"))
        elif path.is_file():
            if not is_image_name(path.name):
                raise InvalidImage(f"{path} does not have an image file extension (.jpg, .png, .webp, …)")
            planned.append(PlannedUpload(path, prefix + path.name))
        else:
            raise InputNotFound(f"{path} does not exist")
    if not planned:
        raise InputNotFound("no images found in " + ", ".join(str(p) for p in paths))
    names = [p.object_name for p in planned]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequest(f"two inputs would overwrite each other as {duplicates}: rename one")
    return planned


def upload(
    client: storage.Client, bucket: str, planned: Iterable[PlannedUpload], prompts: dict[str, Any] | None
) -> Iterator[str]:
    """Upload each planned file (prompts in custom metadata); yields ``gs://`` URIs as they finish."""
    target = client.bucket(bucket)
    if client.lookup_bucket(bucket, timeout=TIMEOUT_S) is None:
        raise InputNotFound(f"bucket {bucket} does not exist: run `samdrop local up` or set SAMDROP_BUCKET")
    for item in planned:
        blob = target.blob(item.object_name)
        if prompts:
            # The prompts travel atomically with the object: the finalize event carries them.
            blob.metadata = {PROMPTS_METADATA_KEY: json.dumps(prompts, separators=(",", ":"))}
        content_type = mimetypes.guess_type(item.source.name)[0] or "application/octet-stream"
        blob.upload_from_filename(str(item.source), content_type=content_type, timeout=TIMEOUT_S)
        yield f"gs://{bucket}/{item.object_name}"


def watch(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    *,
    count: int | None = None,
    timeout_s: float | None = None,
    emit: Callable[[str], None] = print,
    poll_s: float = 10.0,
) -> int:
    """Emit each message on ``subscription`` (full path) as one JSON line, then ack it.

    Stops after ``count`` messages or ``timeout_s`` seconds (either may be None: no limit);
    returns how many were emitted. A body that is not JSON is wrapped as ``{"data", "attributes"}``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0
    while count is None or seen < count:
        wait = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
        if wait <= 0:
            break
        wanted = 100 if count is None else min(100, count - seen)
        try:
            response = subscriber.pull(
                request={"subscription": subscription, "max_messages": wanted}, timeout=wait
            )
        except gexc.DeadlineExceeded:
            continue
        for received in response.received_messages:
            emit(format_message(received.message.data, dict(received.message.attributes)))
        if response.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                },
                timeout=TIMEOUT_S,
            )
            seen += len(response.received_messages)
    return seen


def format_message(data: bytes, attributes: dict[str, str]) -> str:
    """One JSON line: the completion message itself, or a wrapper for a body that is not JSON."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = {"data": data.decode("utf-8", "replace"), "attributes": attributes}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
