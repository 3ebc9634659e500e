"""``samdrop upload`` and ``samdrop watch``: what a user does with the bucket and the completion topic.

Planning and prompt checks are pure; the functions that touch Google Cloud take their clients.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc

from samdrop.errors import InputNotFound, InvalidImage, InvalidPrompt, InvalidRequest
from samdrop.images import is_image_name
from samdrop.prompts import PROMPTS_METADATA_KEY, parse_prompts_json
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S
from samdrop.storage import MAX_CUSTOM_METADATA_BYTES, custom_metadata_bytes

UPLOAD_THREADS = 8

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


@dataclass(frozen=True)
class Uploaded:
    """One planned upload's outcome: the object's ``generation``, or the ``error`` that stopped it."""

    item: PlannedUpload
    uri: str
    generation: int | None = None
    error: BaseException | None = None


def upload(
    client: storage.Client,
    bucket: str,
    planned: Sequence[PlannedUpload],
    prompts: dict[str, Any] | None,
    *,
    threads: int = UPLOAD_THREADS,
    progress: bool = False,
) -> Iterator[Uploaded]:
    """Upload each planned file (prompts in custom metadata), ``threads`` at a time with the storage
    library's transfer manager; yields each outcome, in plan order, as its group of uploads ends.
    ``progress``: a bar of files uploaded on stderr (where stderr is a terminal)."""
    from google.cloud.storage import transfer_manager
    from tqdm import tqdm

    target = client.bucket(bucket)
    if client.lookup_bucket(bucket, timeout=DEFAULT_REQUEST_TIMEOUT_S) is None:
        raise InputNotFound(f"bucket {bucket} does not exist: run `samdrop local up` or set SAMDROP_BUCKET")
    # Groups of a few times the thread count: the bar moves, and each group's outcomes are printed
    # while the next one uploads.
    group = threads * 4
    with tqdm(total=len(planned), unit="file", desc="upload", disable=None if progress else True) as bar:
        for first in range(0, len(planned), group):
            items = planned[first : first + group]
            blobs = [_blob(target, item, prompts) for item in items]
            outcomes = transfer_manager.upload_many(
                [(str(item.source), blob) for item, blob in zip(items, blobs, strict=True)],
                upload_kwargs={"timeout": DEFAULT_REQUEST_TIMEOUT_S},
                worker_type=transfer_manager.THREAD,  # threads update each Blob (its generation) in place
                max_workers=threads,
            )
            for item, blob, outcome in zip(items, blobs, outcomes, strict=True):
                uri = f"gs://{bucket}/{item.object_name}"
                if isinstance(outcome, BaseException):
                    yield Uploaded(item, uri, error=outcome)
                else:
                    yield Uploaded(item, uri, generation=int(blob.generation))
            bar.update(len(items))


def _blob(target: storage.Bucket, item: PlannedUpload, prompts: dict[str, Any] | None) -> storage.Blob:
    blob: storage.Blob = target.blob(item.object_name)
    if prompts:
        # The prompts travel atomically with the object: the finalize event carries them.
        blob.metadata = prompts_metadata(prompts)
    blob.content_type = mimetypes.guess_type(item.source.name)[0] or "application/octet-stream"
    return blob


def pull(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = 10.0,
) -> Iterator[tuple[bytes, dict[str, str]]]:
    """Yield ``(data, attributes)`` of each message on ``subscription`` (full path) and acknowledge
    it, until ``timeout_s`` seconds have passed (None: no limit) or the caller stops."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
        if wait <= 0:
            return
        try:
            response = subscriber.pull(
                request={"subscription": subscription, "max_messages": 100}, timeout=wait
            )
        except gexc.DeadlineExceeded:
            continue
        handled: list[str] = []
        try:
            for received in response.received_messages:
                handled.append(received.ack_id)  # before the yield: a caller that stops has seen it
                yield received.message.data, dict(received.message.attributes)
        finally:
            # NotFound: closed after its subscription was deleted (Ctrl-C): nothing left to ack.
            with contextlib.suppress(gexc.NotFound):
                if handled:
                    subscriber.acknowledge(
                        request={"subscription": subscription, "ack_ids": handled},
                        timeout=DEFAULT_REQUEST_TIMEOUT_S,
                    )


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
    seen = 0
    if count == 0:
        return seen
    for data, attributes in pull(subscriber, subscription, timeout_s=timeout_s, poll_s=poll_s):
        emit(format_message(data, attributes))
        seen += 1
        if count is not None and seen >= count:
            break
    return seen


def format_message(data: bytes, attributes: dict[str, str]) -> str:
    """One JSON line: the completion message itself, or a wrapper for a body that is not JSON."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = {"data": data.decode("utf-8", "replace"), "attributes": attributes}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
