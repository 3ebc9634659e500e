"""``samdrop upload`` and ``samdrop watch``: what a user does with the bucket and the completion topic.

Planning and prompt checks are pure; the two functions that touch Google Cloud take their clients.
"""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from samdrop.errors import InputNotFound, InvalidImage, InvalidPrompt, InvalidRequest
from samdrop.images import is_image_name
from samdrop.prompts import PROMPTS_METADATA_KEY, parse_prompts_json
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S
from samdrop.storage import MAX_CUSTOM_METADATA_BYTES, custom_metadata_bytes

if TYPE_CHECKING:
    from google.cloud import pubsub_v1, storage


@dataclass(frozen=True)
class PlannedUpload:
    source: Path
    object_name: str


def prompts_metadata(prompts: dict[str, Any]) -> dict[str, str]:
    """The custom metadata that carries ``prompts`` with an uploaded image."""
    return {PROMPTS_METADATA_KEY: json.dumps(prompts, separators=(",", ":"))}


def parse_prompts(text: str) -> dict[str, Any]:
    """Check ``--prompts`` JSON (shape in :mod:`samdrop.prompts`) and return it normalised."""
    prompts = parse_prompts_json(text, where="--prompts")
    if prompts is None:
        raise InvalidPrompt('--prompts must not be empty: e.g. {"points": [[x, y]], "labels": [1]}')
    size = custom_metadata_bytes(prompts_metadata(prompts))
    if size > MAX_CUSTOM_METADATA_BYTES:
        raise InvalidPrompt(
            f"--prompts is {size} bytes as object metadata, over Cloud Storage's {MAX_CUSTOM_METADATA_BYTES} "
            "bytes of custom metadata per object: use fewer prompts, or a batch's prompts.json"
        )
    return prompts


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
    if client.lookup_bucket(bucket, timeout=DEFAULT_REQUEST_TIMEOUT_S) is None:
        raise InputNotFound(f"bucket {bucket} does not exist: run `samdrop local up` or set SAMDROP_BUCKET")
    for item in planned:
        blob = target.blob(item.object_name)
        if prompts:
            # The prompts travel atomically with the object: the finalize event carries them.
            blob.metadata = prompts_metadata(prompts)
        content_type = mimetypes.guess_type(item.source.name)[0] or "application/octet-stream"
        blob.upload_from_filename(
            str(item.source), content_type=content_type, timeout=DEFAULT_REQUEST_TIMEOUT_S
        )
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
                timeout=DEFAULT_REQUEST_TIMEOUT_S,
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
