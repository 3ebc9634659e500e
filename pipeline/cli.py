"""``samdrop batch start PATH... --id ID`` (upload a folder, ``_READY`` last), ``samdrop batch
status ID [--json] [--watch]`` (exit status by the batch's state, :data:`STATE_EXIT`) and ``samdrop
batch run ID`` (run a claimed batch's pipeline here, in the foreground: resumes it).

A running local stack is found by ``deploy.command`` (as for every command); otherwise the clients
reach Google Cloud.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.listing import parse_prompts_file, parse_ready
from samdrop.batches import PROMPTS_FILE, READY, BatchPaths
from samdrop.commandline import ExitStatus, positive_number, whole_number
from samdrop.errors import InputNotFound, InvalidRequest, PermanentError
from samdrop.images import is_image_name
from samdrop.layout import GENERATION_KEY, input_generation
from samdrop.prompts import check_amg
from samdrop.settings import Settings

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
UPLOAD_THREADS = 8


@dataclass(frozen=True)
class PlannedFile:
    source: Path
    object_name: str


def add_commands(subparsers: Any) -> None:
    batch = subparsers.add_parser(
        "batch",
        help="bulk drops: upload a folder as a batch, show a batch's progress, or run it here",
        description="samdrop batch start PATH... --id ID | samdrop batch status ID | samdrop batch run ID",
    )
    actions = batch.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start", help="upload folders or images as batch ID, then its _READY marker (which starts it)"
    )
    start.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="folders or images to upload")
    start.add_argument("--id", dest="batch_id", required=True, help="batch id (uploads go to batches/<id>/)")
    start.add_argument("--prompts", type=Path, help=f"a prompts file to upload as {PROMPTS_FILE}")
    start.add_argument(
        "--amg", help='automatic-mask parameters for the _READY body, JSON like {"points_per_side": 16}'
    )
    start.add_argument(
        "--text",
        action="append",
        metavar="CONCEPT",
        help='a SAM 3 concept for every image without its own prompts ("solar panel"); repeat for '
        "more: they are the batch's COCO categories and YOLO classes, in this order",
    )
    start.add_argument(
        "--shard-size", type=whole_number(1), help="images per shard task (default SAMDROP_SHARD_SIZE)"
    )
    start.set_defaults(func=start_command)
    status = actions.add_parser(
        "status",
        help="where batch ID stands; exit 0: running or succeeded, 1: failed or not started, 3: partial",
    )
    status.add_argument("batch_id", metavar="ID", help="the batch id given to `batch start --id`")
    status.add_argument("--json", action="store_true", help="print the status as JSON, for scripts")
    status.add_argument(
        "--watch", action="store_true", help="follow the batch with a progress bar until it ends"
    )
    status.add_argument(
        "--interval", type=positive_number, default=2.0, help="--watch: seconds between looks (default 2)"
    )
    status.set_defaults(func=_status)
    run = actions.add_parser(
        "run", help="run (or resume) claimed batch ID's pipeline here, in the foreground"
    )
    run.add_argument("batch_id", metavar="ID", help="the batch id")
    run.set_defaults(func=_run)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    return status_command(
        settings, args.batch_id, as_json=args.json, watch=args.watch, interval_s=args.interval
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return run_command(settings, args.batch_id)


def start_command(args: argparse.Namespace, settings: Settings) -> int:
    body = ready_body(args.amg, args.shard_size, args.text)
    planned = plan_batch_upload(args.paths, args.batch_id, settings, prompts=args.prompts)
    client = _storage_client(settings)
    for uri in upload_batch(client, settings, args.batch_id, planned, body):
        print(uri)
    return ExitStatus.DONE


def ready_body(amg: str | None, shard_size: int | None, text: Sequence[str] | None = None) -> bytes:
    """The ``_READY`` body for the CLI options (empty: defaults), checked by the batch's own
    listing step (``parse_ready``) before anything is uploaded."""
    body: dict[str, Any] = {}
    if amg is not None:
        try:
            body["amg"] = json.loads(amg)
        except ValueError as exc:
            raise InvalidRequest(f"--amg is not JSON ({exc})") from None
        check_amg(body["amg"], where="--amg")  # in the words every path uses for amg
    if text:
        body["text"] = list(text)
    if shard_size is not None:
        body["shard_size"] = shard_size
    if not body:
        return b""
    data = json.dumps(body).encode("utf-8")
    parse_ready(data, default_shard_size=1, where="--text")  # the rest of the body, as the batch reads it
    return data


def plan_batch_upload(
    paths: Sequence[Path], batch_id: str, settings: Settings, *, prompts: Path | None = None
) -> list[PlannedFile]:
    """Object names under ``batches/<id>/``: a folder's images keep their path relative to the folder
    (its ``prompts.json`` too), a file keeps its name. Raises when nothing is left or names collide."""
    if not BATCH_ID.match(batch_id):
        raise InvalidRequest(
            f"batch id {batch_id!r} must be 1-128 of A-Z a-z 0-9 . _ - (starting alphanumeric)"
        )
    prefix = f"{settings.batches_prefix}{batch_id}/"
    planned: list[PlannedFile] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                relative = file.relative_to(path).as_posix()
                if is_image_name(file.name) or (relative == PROMPTS_FILE and prompts is None):
                    planned.append(PlannedFile(file, prefix + relative))
        elif path.is_file():
            planned.append(PlannedFile(path, prefix + path.name))
        else:
            raise InputNotFound(f"{path} does not exist")
    if prompts is not None:
        if not prompts.is_file():
            raise InputNotFound(f"--prompts {prompts} does not exist")
        planned.append(PlannedFile(prompts, prefix + PROMPTS_FILE))
    if not any(is_image_name(p.object_name) for p in planned):
        raise InputNotFound("no images found in " + ", ".join(str(p) for p in paths))
    names = [p.object_name for p in planned]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or prefix + READY in names:
        raise InvalidRequest(f"two files would land on the same object {duplicates or [READY]}: rename one")
    for item in planned:
        if item.object_name == prefix + PROMPTS_FILE:
            check_prompts_file(item.source)
    return planned


def check_prompts_file(path: Path) -> None:
    """Refuse a prompts file the batch would refuse, or with an entry it would fail, before any
    upload: the listing step's own check (:func:`pipeline.listing.parse_prompts_file`)."""
    for entry in parse_prompts_file(path.read_bytes(), where=str(path)).values():
        if isinstance(entry, PermanentError):
            raise entry


def upload_batch(
    client: Any, settings: Settings, batch_id: str, planned: Sequence[PlannedFile], ready: bytes
) -> list[str]:
    """Upload every file (in parallel), then the ``_READY`` marker last; returns the URIs written.

    Uploads create objects only (``if_generation_match=0``): an existing batch is never overwritten.
    """
    paths = BatchPaths.of(settings, batch_id)
    bucket = client.bucket(settings.bucket)
    if client.lookup_bucket(settings.bucket, timeout=settings.request_timeout_s) is None:
        raise InputNotFound(
            f"bucket {settings.bucket} does not exist: run `samdrop local up` or set SAMDROP_BUCKET"
        )

    def put(item: PlannedFile) -> str:
        content_type = mimetypes.guess_type(item.source.name)[0] or "application/octet-stream"
        bucket.blob(item.object_name).upload_from_filename(
            str(item.source),
            content_type=content_type,
            if_generation_match=0,
            timeout=settings.request_timeout_s,
        )
        return f"gs://{settings.bucket}/{item.object_name}"

    with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="samdrop-upload") as pool:
        uris = list(pool.map(put, planned))
    bucket.blob(paths.marker).upload_from_string(
        ready, content_type="application/json", if_generation_match=0, timeout=settings.request_timeout_s
    )
    return [*uris, paths.input(paths.marker)]


def status_command(
    settings: Settings, batch_id: str, *, as_json: bool = False, watch: bool = False, interval_s: float = 2.0
) -> int:
    """Print where a batch stands: a summary for people, JSON for scripts, or a live progress bar."""
    from pipeline.start import status_of
    from samdrop.storage import GcsStore

    paths = BatchPaths.of(settings, batch_id)
    store = GcsStore(_storage_client(settings), timeout_s=settings.request_timeout_s)

    def look() -> dict[str, Any]:
        return status_of(paths, store, store)

    status = follow(look, interval_s=interval_s) if watch else look()
    print(json.dumps(status, indent=1) if as_json else summary(status, paths))
    return STATE_EXIT.get(status["state"], ExitStatus.DONE)


FINISHED = ("succeeded", "partial", "failed")
# `batch status`'s exit status by the batch's state; the others (claimed, running, succeeded): DONE.
STATE_EXIT = {"not started": ExitStatus.FAILED, "failed": ExitStatus.FAILED, "partial": ExitStatus.PARTIAL}


def follow(look: Callable[[], dict[str, Any]], *, interval_s: float) -> dict[str, Any]:
    """Look at the batch every ``interval_s`` with a progress bar (images with a record) until it
    finishes or was never started; returns the last status."""
    from tqdm import tqdm

    status = look()
    with tqdm(total=status.get("images"), unit="image", desc=f"batch {status['batch_id']}") as bar:
        while status["state"] not in (*FINISHED, "not started"):
            bar.total = status.get("images")
            bar.n = int(status.get("images_done", 0))
            bar.set_postfix(failed=status.get("images_failed", 0), shards=_shards(status), refresh=False)
            bar.refresh()
            time.sleep(interval_s)
            status = look()
        bar.total = status.get("images") or bar.total
        bar.n = int(status.get("images_done", bar.n))
        bar.refresh()
    return status


def summary(status: Mapping[str, Any], paths: BatchPaths) -> str:
    """A few lines for people: state, images done and failed, shards, elapsed time, the report."""
    if status["state"] == "not started":
        return (
            f"batch {status['batch_id']}: not started ({paths.uri(paths.claim)} does not exist). Upload the "
            f"images, then {READY} last: samdrop batch start PATH... --id {status['batch_id']}"
        )
    lines = [f"batch {status['batch_id']}: {status['state']}  ({status['input']})"]
    completion = status.get("completion") or {}
    if completion:
        lines.append(
            f"images   {completion.get('images', 0)}: {completion.get('succeeded', 0)} succeeded, "
            f"{completion.get('failed', 0)} failed"
        )
    elif "images" in status:
        done, failed = int(status.get("images_done", 0)), int(status.get("images_failed", 0))
        lines.append(f"images   {done} of {status['images']} done ({failed} failed)")
    else:
        lines.append("images   not planned yet")
    if "shards" in status:
        lines.append(f"shards   {_shards(status)} finished")
    if "elapsed_s" in status:
        lines.append(f"elapsed  {_duration(float(status['elapsed_s']))}")
    outputs = completion.get("outputs") or {}
    if outputs.get("report"):
        lines.append(f"report   {outputs['report']}")
        lines.append(f"manifest {outputs.get('manifest', '')}")
    if completion.get("error"):
        lines.append(f"error    {completion['error']['code']}: {completion['error']['message']}")
    lines += [f"warning  {warning}" for warning in status.get("warnings") or []]
    return "\n".join(lines)


def _shards(status: Mapping[str, Any]) -> str:
    return f"{status.get('shards_done', 0)}/{status.get('shards', '?')}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def run_command(settings: Settings, batch_id: str) -> int:
    """Run (or resume) a claimed batch's pipeline in this process."""
    from pipeline.worker import run_local
    from samdrop.storage import GcsStore

    paths = BatchPaths.of(settings, batch_id)
    store = GcsStore(_storage_client(settings), timeout_s=settings.request_timeout_s)
    info = store.stat(paths.output_bucket, paths.claim)
    if info is None:
        raise InputNotFound(f"batch {batch_id} was never started ({paths.uri(paths.claim)} is missing)")
    # The claim's tag, not its body: a local stack's restore rewrites only the tag to the marker's new
    # generation (deploy/store_snapshot.py).
    marker_generation = input_generation(info.metadata)
    if marker_generation is None:
        raise InvalidRequest(
            f"{paths.uri(paths.claim)} has no {GENERATION_KEY} metadata: samdrop did not write it"
        )
    run_local(settings, batch_id, paths.bucket, marker_generation)
    print(json.dumps(_completion(store, paths)))  # last line: the batch's completion record
    return 0


def _completion(store: Any, paths: BatchPaths) -> dict[str, Any]:
    info = store.stat(paths.output_bucket, paths.completion)
    return json.loads(store.read(paths.output_bucket, paths.completion)) if info is not None else {}


def _storage_client(settings: Settings) -> Any:
    from google.cloud import storage

    return storage.Client(project=settings.project)
