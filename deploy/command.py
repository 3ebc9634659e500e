"""The ``samdrop`` command (``[project.scripts]``). Each unit adds its own sub-commands in its
``cli.py``; this file only dispatches. It lives in ``deploy/``, the top layer, because it imports
every unit (docs/design.md "Layers").

Units are imported lazily so ``samdrop --help`` stays fast and a unit's heavy imports (torch,
kfp) load only for the commands that need them. What every command shares lives here:

* the local stack is found one way, from any folder: its state is in the user's state directory
  (:func:`deploy.target.user_state_dir`), and for the commands that talk to the bucket or the
  topics a running stack's client variables (emulator hosts, buckets, topics) are added to the
  environment unless already set, so plain Google clients reach it (``deploy``/``destroy`` never:
  they speak to Google Cloud). Without a stack the project is gcloud's
  (:func:`deploy.target.gcloud_project`) unless ``SAMDROP_PROJECT`` names one;
* how a command ends: the exit statuses of :class:`samdrop.commandline.ExitStatus`; a user's
  mistake or a failure the user can act on is one line on stderr, never a traceback; a reader that
  goes away (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence

from samdrop.commandline import ExitStatus
from samdrop.errors import ConfigError, PermanentError, SamdropError
from samdrop.settings import Settings

# Modules exposing ``add_commands(subparsers)``; each sub-command sets ``func(args, settings) -> int``.
COMMAND_MODULES = (
    "predictor.cli",
    "predictor.models_cli",
    "deploy.cli",
    "deploy.gcp.cli",
    "deploy.status",
    "pipeline.cli",
)
# Commands that use the local stack when one runs (and the environment names no other target).
STACK_COMMANDS = ("upload", "watch", "results", "view", "batch", "sweep", "redrive")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samdrop",
        description="Segment Anything on Google Cloud: drop images in a bucket, get masks and a message.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    settings_help = subparsers.add_parser("settings", help="list every SAMDROP_* setting and its default")
    settings_help.set_defaults(func=_print_settings)
    return parser


def _print_settings(args: argparse.Namespace, settings: Settings) -> int:
    from deploy.target import STATE_DIR_DEFAULT, STATE_DIR_VAR

    for name, default, text in Settings.describe():
        # The samdrop command fills the state dir in before building settings (deploy.target).
        shown = STATE_DIR_DEFAULT if name == STATE_DIR_VAR else default
        print(f"{name:36} {shown:28} {text}")
    return 0


def use_local_stack(env: MutableMapping[str, str], stack: Mapping[str, str]) -> None:
    """Add the running local stack's client variables to ``env`` where ``env`` has none of its own."""
    for key, value in stack.items():
        env.setdefault(key, value)


def settings_env(env: MutableMapping[str, str], command: str) -> dict[str, str]:
    """The variables ``command``'s settings are built from: ``env`` with the state dir and, for the
    commands of :data:`STACK_COMMANDS`, the running local stack's client variables (added to ``env``
    itself, where the Google clients read them) or, with no stack, gcloud's project."""
    from deploy.target import STATE_DIR_VAR, gcloud_project, user_state_dir

    extra = {STATE_DIR_VAR: str(user_state_dir(env))}
    if command in STACK_COMMANDS:
        from deploy.local import running_stack_env

        use_local_stack(env, running_stack_env(Settings.from_env({**env, **extra})))
        if "SAMDROP_PROJECT" not in env and (project := gcloud_project(env)):
            extra["SAMDROP_PROJECT"] = project
    return {**env, **extra}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            with _sigterm_unwinds():
                status = run(argv)
        finally:  # argparse's --help and usage errors leave by SystemExit: flushed here too
            sys.stdout.flush()  # a reader gone after the last line shows here, not at exit
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.BROKEN_PIPE
    return status


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 here (argparse)
    try:
        settings = Settings.from_env(settings_env(os.environ, args.command))
    except (SamdropError, ValueError) as exc:  # a bad SAMDROP_* value: its message names it
        print(f"samdrop: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return ExitStatus.USAGE
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # google-auth warns about each credential source it tried; the missing-credentials line says it all.
    logging.getLogger("google.auth._default").setLevel(logging.ERROR)
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:
        known = user_error(exc)
        if known is None:
            raise
        message, status = known
        print(f"samdrop: error: {message}", file=sys.stderr)
        return status


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C while a command runs, so its ``finally`` blocks run (``watch``
    deletes its subscription); the previous handler comes back after (``main`` called in process)."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(ExitStatus.TERMINATED)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: not Python's


def user_error(exc: BaseException) -> tuple[str, ExitStatus] | None:
    """One line and the exit status for an error the user can act on, or None for a bug (which
    keeps its traceback). The user's own input at fault (an argument, a setting, a path) is
    :attr:`ExitStatus.USAGE`; a service, the credentials or the stack failing is ``FAILED``."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from requests import exceptions as http_exceptions

    failed = ExitStatus.FAILED
    if isinstance(exc, PermanentError | ConfigError):
        return exc.message, ExitStatus.USAGE
    if isinstance(exc, SamdropError):
        return exc.message, failed
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return (
            "no local stack and no Google Cloud credentials: start the local stack with `samdrop local up`, "
            "or log in to Google Cloud with `gcloud auth application-default login`"
        ), failed
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        message = f"Google Cloud refused the credentials ({exc}): `gcloud auth application-default login`"
        return message, failed
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"Google Cloud answered {exc.code}: {exc.message}", failed
    if isinstance(exc, http_exceptions.ConnectionError | ConnectionError):
        return f"cannot connect ({exc}): is the local stack up? Check with `samdrop local status`", failed
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return f"{exc.strerror}: {exc.filename}", ExitStatus.USAGE
    return None


if __name__ == "__main__":
    sys.exit(main())
