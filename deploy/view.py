"""``samdrop view INPUT``: one self-contained HTML page of an upload and its masks.

INPUT is an upload's object name in the uploads bucket (``incoming/cat.jpg``,
``batches/<id>/a.png``) or its ``gs://`` URI. The page (:mod:`samdrop.viewer`) is written to a
file and opened in a browser where a desktop session has one; on a server it is only written.
"""

from __future__ import annotations

import json
import sys
import webbrowser
from collections.abc import Mapping
from pathlib import Path

from deploy.results import input_name  # one reading of INPUT for `results get` and `view`
from samdrop.documents import ErrorRecord, MasksDocument
from samdrop.errors import InputNotFound
from samdrop.layout import input_generation, output_paths
from samdrop.settings import Settings
from samdrop.storage import ObjectStore
from samdrop.viewer import page_from_store


def read_masks(store: ObjectStore, settings: Settings, name: str) -> MasksDocument:
    """``masks.json`` of upload ``name``; a clear error when its newest record is an ``error.json``,
    or when it has none yet."""
    paths = output_paths(settings, name)
    listing = store.list(paths.bucket, paths.folder)
    records = [listing[n] for n in (paths.masks_json, paths.error_json) if n in listing]
    if not records:
        raise InputNotFound(
            f"no results for gs://{settings.bucket}/{name} (nothing under {paths.uri(paths.folder)}): "
            "check the name, or wait for its completion (samdrop watch)"
        )
    newest = max(records, key=lambda info: input_generation(info.metadata) or 0)
    raw = json.loads(store.read(paths.bucket, newest.name, generation=newest.generation))
    if newest.name == paths.error_json:
        error = ErrorRecord.from_json(raw)
        raise InputNotFound(f"gs://{settings.bucket}/{name} has no masks: {error.code}: {error.message}")
    return MasksDocument.from_json(raw)


def write_view(store: ObjectStore, settings: Settings, given: str, out: Path | None) -> Path:
    """Write the page of ``given`` to ``out`` (default ``<file name>.html`` here); returns the path."""
    name = input_name(settings, given)
    doc = read_masks(store, settings, name)
    page = page_from_store(store, doc, max_pixels=settings.max_image_pixels)
    path = out if out is not None else Path(name.rsplit("/", 1)[-1] + ".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def can_open_browser(env: Mapping[str, str], platform: str = sys.platform) -> bool:
    """True where ``webbrowser`` opens a graphical browser: macOS, Windows, or a Linux desktop. Without
    a display it would start a text browser (lynx, w3m) in the terminal instead."""
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def open_page(path: Path) -> bool:
    """Open ``path`` in the default browser; False when none could be started."""
    try:
        return webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        return False
