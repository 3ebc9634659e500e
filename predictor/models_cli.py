"""``samdrop models list|pull``: which SAM checkpoints are cached, and fetching them."""

from __future__ import annotations

import argparse
from typing import Any

from predictor import weights
from predictor.backends import resolve_model
from samdrop.settings import SAM_TYPES, Settings


def add_commands(subparsers: Any) -> None:
    group = subparsers.add_parser("models", help="SAM checkpoints: list what is cached, pull one")
    commands = group.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="each model type, where its weights come from, and if cached")
    listing.set_defaults(func=list_command)
    pull = commands.add_parser("pull", help="download a SAM type's official checkpoint into the cache")
    pull.add_argument("model_type", choices=SAM_TYPES, metavar="TYPE", help=", ".join(SAM_TYPES))
    pull.set_defaults(func=pull_command)


def list_command(args: argparse.Namespace, settings: Settings) -> int:
    print(f"{'TYPE':8} {'CACHED':7} SOURCE -> CACHE FILE")
    for model_type in SAM_TYPES:
        url = weights.official_url(model_type, settings.weights_url)
        target = weights.source(url, settings.cache_dir).target
        print(f"{model_type:8} {'yes' if target.is_file() else 'no':7} {url} -> {target}")
    print(f"{'tiny':8} {'-':7} built by samdrop (random weights: pipeline tests only)")
    print(f"{'classic':8} {'-':7} no weights (OpenCV GrabCut + scikit-image graph segmentation)")
    try:
        chosen = resolve_model(settings).model_type
    except Exception as exc:  # a bad SAMDROP_CHECKPOINT must not hide the listing
        chosen = f"? ({exc})"
    print(f"\nSAMDROP_MODEL_TYPE={settings.model_type} serves: {chosen}")
    if chosen == "classic":
        print("For SAM masks: samdrop models pull vit_b  (then auto picks it; vit_h is the best, ~2.4 GiB)")
    return 0


def pull_command(args: argparse.Namespace, settings: Settings) -> int:
    url = weights.official_url(args.model_type, settings.weights_url)
    path = weights.fetch(url, settings.cache_dir, progress=True)
    print(f"{args.model_type}: {path}")
    return 0
