"""``samdrop local up|down|status|env``, ``samdrop upload``, ``watch``, ``view``, ``sweep`` and ``redrive``.

Heavy imports (Google clients) wait until a command runs, so ``samdrop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samdrop.settings import Settings

if TYPE_CHECKING:
    from google.cloud import pubsub_v1, storage


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
    status = actions.add_parser("status", help="which servers run and answer; exit 1 unless all do")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=local_status)
    env = actions.add_parser("env", help='print export lines for clients: eval "$(samdrop local env)"')
    env.set_defaults(func=local_env)

    upload = subparsers.add_parser(
        "upload", help="upload images (or folders of images) to the incoming prefix"
    )
    upload.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file or folder")
    upload.add_argument(
        "--prompts",
        help='JSON {"points": [[x, y]...], "labels": [1|0...], "boxes": [[x0, y0, x1, y1]...]} in pixels; '
        "without it SAM makes automatic masks",
    )
    upload.set_defaults(func=upload_command)

    demo = subparsers.add_parser(
        "demo", help="start the local stack, drop sample photos, wait for their masks and completion messages"
    )
    demo.add_argument("--out", type=Path, default=Path("samdrop-demo"), help="folder for inputs and overlays")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all completions")
    demo.add_argument("--keep-running", action="store_true", help="leave the local stack up afterwards")
    demo.set_defaults(func=demo_command)

    watch = subparsers.add_parser("watch", help="print completion messages as JSON lines (and ack them)")
    watch.add_argument("--count", type=int, help="stop after this many messages")
    watch.add_argument("--timeout", type=float, help="stop after this many seconds")
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
    from deploy.local import LocalStack

    stack = LocalStack(settings)
    services = stack.status()
    if args.json:
        print(json.dumps({"services": [dataclasses.asdict(s) for s in services], "env": stack.client_env()}))
    elif not services:
        print(f"the local stack is not running (no {stack.state_path})")
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

    prompts = upload.parse_prompts(args.prompts) if args.prompts is not None else None
    planned = upload.plan_uploads(args.paths, settings.incoming_prefix)
    for uri in upload.upload(_storage_client(settings), settings.bucket, planned, prompts):
        print(uri)
    return 0


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.demo import demo_command as run

    return run(args, settings)


def watch_command(args: argparse.Namespace, settings: Settings) -> int:
    from deploy import upload

    subscriber = _subscriber(settings)
    try:
        subscription = subscriber.subscription_path(settings.project, settings.completions_subscription)
        upload.watch(
            subscriber,
            subscription,
            count=args.count,
            timeout_s=args.timeout,
            emit=lambda line: print(line, flush=True),
        )
    finally:
        subscriber.close()
    return 0


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
    redrive.add_argument("--max", type=int, help="move at most this many (default: all)")
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
