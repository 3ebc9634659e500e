"""The ``samdrop`` command. Each unit adds its own sub-commands; this file only dispatches.

Units are imported lazily so ``samdrop --help`` stays fast and a unit's heavy imports (torch,
kfp) load only for the commands that need them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from samdrop.errors import SamdropError
from samdrop.settings import Settings

# Modules exposing ``add_commands(subparsers)``; each sub-command sets ``func(args, settings) -> int``.
COMMAND_MODULES = ("predictor.cli", "deploy.cli", "deploy.gcp.cli", "pipeline.cli")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args, settings) or 0)
    except SamdropError as exc:
        print(f"samdrop: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
