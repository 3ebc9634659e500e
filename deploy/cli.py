"""``samdrop local up|down|status|env``, ``samdrop upload``, ``watch``, ``results get``, ``view``,
``sweep`` and ``redrive``.

Heavy imports (Google clients) wait until a command runs, so ``samdrop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samdrop.commandline import ExitStatus, positive_number, whole_number
from samdrop.errors import InvalidRequest
from samdrop.settings import Settings

if TYPE_CHECKING:
    from google.cloud import pubsub_v1, storage

    from deploy import upload


def add_commands(subparsers: Any) -> None:
    local = subparsers.add_parser(
        "local", help="start, stop and inspect the local stack (emulators + servers)"
    )
    actions = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up",
        help="start the emulators, predictor, function and delivery bridge (only those not running); "
        "create topics and buckets",
    )
    up.add_argument(
        "--fresh",
        action="store_true",
        help="start with an empty bucket store (stored objects are kept otherwise)",
    )
    up.add_argument("--no-predictor", action="store_true", help="do not start the CPR predictor server")
    up.add_argument("--no-function", action="store_true", help="do not start functions-framework")
    up.set_defaults(func=local_up)
    down = actions.add_parser(
        "down", help="stop everything `local up` started, batch workers included (stored objects are kept)"
    )
    down.set_defaults(func=local_down)
    status = actions.add_parser(
        "status", help="which servers run and answer; exit 1 unless all do (found from any folder)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=local_status)
    env = actions.add_parser("env", help='print export lines for clients: eval "$(samdrop local env)"')
    env.set_defaults(func=local_env)

    upload = subparsers.add_parser(
        "upload", help="upload images (or folders of images) to the incoming prefix, in parallel"
    )
    upload.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file or folder")
    upload.add_argument(
        "--prompts",
        help='JSON {"points": [[x, y]...], "labels": [1|0...], "boxes": [[x0, y0, x1, y1]...]} in pixels; '
        "without it SAM makes automatic masks",
    )
    upload.add_argument(
        "--wait",
        action="store_true",
        help="then wait for each image's completion message and print it (a JSON line each)",
    )
    upload.add_argument(
        "--download",
        type=Path,
        metavar="DIR",
        help="with --wait: save each image's results to DIR/<object name>/ as its completion arrives",
    )
    upload.add_argument(
        "--timeout",
        type=positive_number,
        default=600.0,
        help="with --wait: seconds to wait for all completions (default 600)",
    )
    upload.add_argument("--threads", type=whole_number(1, 64), default=8, help="uploads at once (default 8)")
    upload.set_defaults(func=upload_command)

    results = subparsers.add_parser("results", help="an uploaded image's results")
    results_actions = results.add_subparsers(dest="results_command", required=True, metavar="ACTION")
    get = results_actions.add_parser(
        "get",
        help="download an input's results (masks, masks.json or error.json, overlay) to DIR/<object name>/",
    )
    get.add_argument("input", metavar="INPUT", help="the input's object name (incoming/cat.jpg) or gs:// URI")
    get.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder (default: here)")
    get.add_argument(
        "--generation",
        type=whole_number(1),
        help="the input generation whose results to get (default: the input's current one)",
    )
    get.set_defaults(func=results_get_command)

    demo = subparsers.add_parser(
        "demo", help="start the local stack, drop sample photos, wait for their masks and completion messages"
    )
    demo.add_argument("--out", type=Path, default=Path("samdrop-demo"), help="folder for inputs and overlays")
    demo.add_argument(
        "--timeout", type=positive_number, default=600.0, help="seconds to wait for all completions"
    )
    demo.add_argument("--keep-running", action="store_true", help="leave the local stack up afterwards")
    demo.set_defaults(func=demo_command)

    watch = subparsers.add_parser(
        "watch",
        help="print completion messages as JSON lines, from a subscription of its own (removed on exit)",
    )
    watch.add_argument("--count", type=whole_number(1), help="stop after this many messages")
    watch.add_argument("--timeout", type=positive_number, help="stop after this many seconds")
    watch.add_argument(
        "--filter",
        default="",
        help='only messages whose attributes match, in Pub/Sub filter syntax: attributes.kind = "batch"',
    )
    watch.set_defaults(func=watch_command)

    view = subparsers.add_parser(
        "view", help="write one self-contained HTML page of an upload and its masks, and open it"
    )
    view.add_argument("input", metavar="INPUT", help="an upload (incoming/cat.jpg) or its gs:// URI")
    view.add_argument("--out", type=Path, help="where to write the page (default: <file name>.html here)")
    view.add_argument("--no-open", action="store_true", help="only write the page; do not open a browser")
    view.set_defaults(func=view_command)

    add_redrive_commands(subparsers)


def local_up(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.local import LocalStack

    stack = LocalStack(settings, predictor=not args.no_predictor, function=not args.no_function)
    state, started, changes = stack.up(fresh=args.fresh)
    for record in state.processes:
        verb = "started" if record in started else "running"
        print(f"{verb} {record.name:9} pid {record.pid:<7} http://127.0.0.1:{record.port}  log {record.log}")
    for change in changes:
        print(f"{change.outcome:9} {change.kind:12} {change.name}")
    print(f'clients: eval "$(samdrop local env)"; stop with: samdrop local down (state {stack.state_path})')
    return 0


def local_down(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.local import LocalStack

    stopped = LocalStack(settings).down()
    print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def local_status(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.local import STATE_FILE, LocalStack
    from deploy.target import LEGACY_STATE_DIR

    stack = LocalStack(settings)
    services = stack.status()
    if args.json:
        print(json.dumps({"services": [dataclasses.asdict(s) for s in services], "env": stack.client_env()}))
    elif not services:
        print(f"the local stack is not running (no {stack.state_path}): start it with `samdrop local up`")
        legacy = LEGACY_STATE_DIR / STATE_FILE
        if legacy.is_file() and legacy.resolve() != stack.state_path:
            print(
                f"{legacy.resolve()} records a stack started by an earlier samdrop: stop it with "
                f"`SAMDROP_STATE_DIR={LEGACY_STATE_DIR} samdrop local down`"
            )
    else:
        for s in services:
            state = "healthy" if s.healthy else ("running, not answering" if s.running else "stopped")
            print(f"{s.name:9} pid {s.pid:<7} port {s.port:<5} {state:22} log {s.log}")
    return 0 if services and all(s.healthy for s in services) else 1


def local_env(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.local import LocalStack, export_lines

    print("\n".join(export_lines(LocalStack(settings).client_env())))
    return 0


def upload_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import upload

    if args.download is not None and not args.wait:
        raise InvalidRequest("--download needs --wait: samdrop upload PATH... --wait --download DIR")
    prompts = upload.parse_prompts(args.prompts) if args.prompts is not None else None
    planned = upload.plan_uploads(args.paths, settings.incoming_prefix)
    client = _storage_client(settings)

    def send() -> list[upload.Uploaded]:
        done = []
        for outcome in upload.upload(
            client, settings.bucket, planned, prompts, threads=args.threads, progress=True
        ):
            if outcome.error is None:
                print(outcome.uri, flush=True)
                done.append(outcome)
            else:
                _say(f"not uploaded: {outcome.item.source} -> {outcome.uri}: {outcome.error}")
        return done

    if not args.wait:
        return ExitStatus.DONE if len(send()) == len(planned) else ExitStatus.FAILED
    return _upload_and_wait(args, settings, client, send, planned_count=len(planned))


def _upload_and_wait(
    args: argparse.Namespace,
    settings: Settings,
    client: storage.Client,
    send: Callable[[], list[upload.Uploaded]],
    *,
    planned_count: int,
) -> int:
    from deploy import results
    from deploy.harness import Upload, await_completions
    from deploy.own_subscription import own_subscription
    from samdrop.storage import GcsStore

    store = GcsStore(client, timeout_s=settings.request_timeout_s)

    def arrived(done: Upload) -> None:
        print(json.dumps(done.completion, sort_keys=True, separators=(",", ":")), flush=True)
        if args.download is not None:
            name = results.input_name(settings, done.uri)
            paths, _, objects = results.outputs_of(store, settings, name, int(done.generation))
            folder = results.download(store, paths, objects, args.download, name)
            _say(f"saved {len(objects)} files to {folder}")

    subscriber = _subscriber(settings)
    try:
        # Subscribed before the first upload: no completion can come before the subscription exists.
        with own_subscription(
            subscriber, settings.project, settings.completions_topic, filter='attributes.kind = "image"'
        ) as subscription:
            waiting = [Upload(u.item.object_name, u.uri, str(u.generation), time.monotonic()) for u in send()]
            await_completions(
                subscriber, subscription, waiting, timeout_s=args.timeout, on_completion=arrived
            )
    finally:
        subscriber.close()
    for missing in (u for u in waiting if u.completion is None):
        _say(f"no completion for {missing.uri} within {args.timeout:g} s")
    succeeded = [u for u in waiting if u.completion and u.completion.get("status") == "succeeded"]
    return ExitStatus.DONE if len(succeeded) == planned_count else ExitStatus.FAILED


def results_get_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import results
    from samdrop.storage import GcsStore

    name = results.input_name(settings, args.input)
    store = GcsStore(_storage_client(settings), timeout_s=settings.request_timeout_s)
    paths, generation, objects = results.outputs_of(store, settings, name, args.generation)
    folder = results.download(store, paths, objects, args.out, name)
    print(folder)
    _say(f"saved {len(objects)} files of generation {generation} from {paths.uri(paths.folder)}")
    return ExitStatus.DONE


def _say(line: str) -> None:
    """A line for the person at the terminal (stderr), apart from the output scripts read."""
    print(line, file=sys.stderr, flush=True)


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.demo import demo_command as run

    return run(args, settings)


def watch_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import upload
    from deploy.own_subscription import own_subscription

    subscriber = _subscriber(settings)
    try:
        with own_subscription(
            subscriber, settings.project, settings.completions_topic, filter=args.filter
        ) as subscription:
            upload.watch(
                subscriber,
                subscription,
                count=args.count,
                timeout_s=args.timeout,
                emit=lambda line: print(line, flush=True),
            )
    finally:
        subscriber.close()
    return ExitStatus.DONE


def view_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import view
    from samdrop.storage import GcsStore

    store = GcsStore(_storage_client(settings), timeout_s=settings.request_timeout_s)
    path = view.write_view(store, settings, args.input, args.out)
    print(path)
    if not args.no_open and view.can_open_browser(os.environ) and not view.open_page(path):
        print(f"no browser could be started: open {path.resolve().as_uri()}")
    return 0


# --- samdrop sweep / redrive (deploy/redrive.py): unfinished work back through the function ---------
def add_redrive_commands(subparsers: Any) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="re-send every upload under the incoming prefix whose current generation has no completion",
    )
    sweep.add_argument(
        "--prefix", help="only inputs under this prefix (must lie under SAMDROP_INCOMING_PREFIX)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="say what would be sent; send nothing")
    sweep.set_defaults(func=sweep_command)
    redrive = subparsers.add_parser(
        "redrive", help="move dead letters back onto the uploads topic (each acked after its publish)"
    )
    redrive.add_argument("--max", type=whole_number(1), help="move at most this many (default: all)")
    redrive.add_argument("--dry-run", action="store_true", help="list the dead letters; leave them there")
    redrive.set_defaults(func=redrive_command)


def sweep_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import redrive

    prefix = redrive.sweep_prefix(settings, args.prefix)  # a wrong prefix fails before any client
    publisher = _publisher(settings)
    try:
        redrive.sweep(
            _storage_client(settings),
            publisher,
            settings,
            prefix=prefix,
            dry_run=args.dry_run,
            emit=lambda line: print(line, flush=True),
        )
    finally:
        publisher.transport.close()
    return 0


def redrive_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import redrive

    subscriber, publisher = _subscriber(settings), _publisher(settings)
    try:
        redrive.redrive(
            subscriber,
            publisher,
            settings,
            max_messages=args.max,
            dry_run=args.dry_run,
            emit=lambda line: print(line, flush=True),
        )
    finally:
        subscriber.close()
        publisher.transport.close()
    return 0


def _publisher(settings: Settings) -> pubsub_v1.PublisherClient:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient()


# --- end of sweep / redrive ------------------------------------------------------------------------


# The local stack, when one runs, is in the environment already (deploy.command): plain clients reach it.
def _storage_client(settings: Settings) -> storage.Client:
    import google.cloud.storage as storage

    return storage.Client(project=settings.project)


def _subscriber(settings: Settings) -> pubsub_v1.SubscriberClient:
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient()
