"""``samdrop models list|pull``: every model type of the table, where its weights come from and
whether they are cached, and fetching them.

The predictor's modules (torch among their imports: seconds) load when a command runs, not when
``samdrop`` builds its parser for every command.
"""

from __future__ import annotations

import argparse
from typing import Any

from samdrop.models import BUILT, HF_REPO, META_FILE, MODELS, RECOMMENDED, ModelInfo, model_info, names
from samdrop.settings import Settings


def add_commands(subparsers: Any) -> None:
    group = subparsers.add_parser("models", help="model types: list them and what is cached, pull weights")
    commands = group.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="each model type, where its weights come from, and if cached")
    listing.set_defaults(func=list_command)
    pullable = names(weights=HF_REPO) + names(weights=META_FILE)
    pull = commands.add_parser("pull", help="download a model type's official weights into the cache")
    pull.add_argument("model_type", choices=pullable, metavar="TYPE", help=", ".join(pullable))
    pull.set_defaults(func=pull_command)


def list_command(args: argparse.Namespace, settings: Settings) -> int:
    from predictor.backends import resolve_model  # loads torch: only for this command, not every samdrop

    print(f"{'TYPE':24} {'FAMILY':8} {'CACHED':7} {'CAN DO':22} {'LICENCE':12} SOURCE")
    for info in MODELS:
        mark = " (recommended)" if info.recommended else ""
        print(
            f"{info.name:24} {info.family:8} {_cached(info, settings):7} {_capabilities(info):22} "
            f"{info.licence:12} {_source(info, settings)}{mark}"
        )
    try:
        chosen = resolve_model(settings).model_type
    except Exception as exc:  # a bad SAMDROP_CHECKPOINT must not hide the listing
        chosen = f"? ({exc})"
    print(f"\nSAMDROP_MODEL_TYPE={settings.model_type} serves: {chosen}")
    if chosen == "classic":
        print(f"For SAM masks: samdrop models pull {RECOMMENDED}  (then auto picks it)")
    return 0


def pull_command(args: argparse.Namespace, settings: Settings) -> int:
    from predictor import weights

    info = model_info(args.model_type)
    if info.weights == HF_REPO:
        from predictor import hf_weights

        path = hf_weights.download(info, settings.cache_dir)
    else:
        path = weights.fetch(
            weights.official_url(info.name, settings.weights_url), settings.cache_dir, progress=True
        )
    print(f"{info.name}: {path}")
    return 0


def _cached(info: ModelInfo, settings: Settings) -> str:
    from predictor.backends import cached_weights

    if not info.needs_weights:
        return "-"
    return "yes" if cached_weights(info.name, settings) is not None else "no"


def _capabilities(info: ModelInfo) -> str:
    can = [
        what
        for what, yes in (("prompts", info.prompts), ("auto", info.automatic), ("text", info.text))
        if yes
    ]
    return "+".join(can)


def _source(info: ModelInfo, settings: Settings) -> str:
    from predictor import weights

    if info.weights == META_FILE:
        url = weights.official_url(info.name, settings.weights_url)
        return f"{url} -> {weights.source(url, settings.cache_dir).target}"
    if info.weights == HF_REPO:
        gated = " [gated: accept the licence there, set HF_TOKEN]" if info.gated else ""
        return f"Hugging Face {info.source} ({info.source_url}){gated}"
    if info.weights == BUILT:
        return f"built by samdrop: {info.note}"
    return f"no weights: {info.note}"
