"""The ``samdrop`` command (``[project.scripts]``). Each unit adds its own sub-commands in its
``cli.py``; this file only dispatches. It lives in ``deploy/``, the top layer, because it imports
every unit (docs/design.md "Layers").

Units are imported lazily so ``samdrop --help`` stays fast and a unit's heavy imports (torch,
kfp) load only for the commands that need them. Two things every command shares live here:

* the local stack is found one way: for the commands that talk to the bucket or the topics, a
  running local stack's client variables (emulator hosts, bucket, topics) are added to the
  environment unless already set, so plain Google clients reach it (``deploy``/``destroy`` never:
  they speak to Google Cloud);
* a user's mistake (a bad argument, missing credentials, a stack that is down) ends with one line
  on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, MutableMapping, Sequence

from samdrop.errors import SamdropError
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
STACK_COMMANDS = ("upload", "watch", "batch", "sweep", "redrive")


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
    for name, default, text in Settings.describe():
        print(f"{name:36} {default:28} {text}")
    return 0


def use_local_stack(env: MutableMapping[str, str], find: Callable[[Settings], dict[str, str]]) -> None:
    """Add the running local stack's client variables to ``env`` where ``env`` has none of its own."""
    for key, value in find(Settings.from_env(env)).items():
        env.setdefault(key, value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in STACK_COMMANDS:
            from deploy.local import running_stack_env

            use_local_stack(os.environ, running_stack_env)
        settings = Settings.from_env(os.environ)
        logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"samdrop: error: {message}", file=sys.stderr)
        return 2


def user_error(exc: BaseException) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from requests import exceptions as http_exceptions

    if isinstance(exc, SamdropError):
        return exc.message
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return (
            "no Google Cloud credentials: start the local stack (samdrop local up) to work locally, or "
            "run `gcloud auth application-default login` for Google Cloud"
        )
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return f"Google Cloud refused the credentials ({exc}): run `gcloud auth application-default login`"
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"Google Cloud answered {exc.code}: {exc.message}"
    if isinstance(exc, http_exceptions.ConnectionError | ConnectionError):
        return f"cannot connect ({exc}): is the local stack up? Check with `samdrop local status`"
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return f"{exc.strerror}: {exc.filename}"
    return None


if __name__ == "__main__":
    sys.exit(main())
