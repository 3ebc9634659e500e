"""The local stack's bucket objects across a restart: save them when the stack stops, restore them
when it starts.

fake-gcs-server runs on its memory backend, the only one that takes every object Cloud Storage
takes (its filesystem backend makes each object one file, so names over 255 bytes escaped fail, and
keeps custom metadata in an ext4 extended attribute of about 4 KB): docs/design.md "Local stack".
What a restart must keep, this module keeps, through the same client calls any user makes.

A snapshot is a folder: ``buckets.json`` (every bucket name), ``objects.jsonl`` (one
:class:`SavedObject` a line) and ``content/<sha256>`` (each distinct content once). It is written
beside the old one and swapped in by two renames, so a stop that fails half way keeps the last
complete snapshot.

No client can choose an object's generation, so restored objects get new ones. samdrop's
idempotency compares generations only through custom metadata ``samdrop-input-generation`` on its
outputs (:mod:`samdrop.layout`), so the restore rewrites that value from each old generation to the
new generation of the object that had it; outputs whose input is gone keep their old value, which
is older than every restored object, as a newer upload's would be.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.processes import LocalStackError
from samdrop.layout import GENERATION_KEY, input_generation
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S

if TYPE_CHECKING:
    from google.cloud import storage

BUCKETS = "buckets.json"
INDEX = "objects.jsonl"
CONTENT = "content"
TIMEOUT_S = DEFAULT_REQUEST_TIMEOUT_S  # each storage call
WORKERS = 8  # objects read or written at once


@dataclass(frozen=True)
class SavedObject:
    """One object as saved: ``generation`` is the one it had before the restart."""

    bucket: str
    name: str
    generation: int
    content_type: str | None
    metadata: dict[str, str]
    sha256: str  # names its content file

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "name": self.name,
            "generation": str(self.generation),
            "content_type": self.content_type,
            "metadata": self.metadata,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SavedObject:
        return cls(
            bucket=str(raw["bucket"]),
            name=str(raw["name"]),
            generation=int(raw["generation"]),
            content_type=raw.get("content_type"),
            metadata={str(k): str(v) for k, v in (raw.get("metadata") or {}).items()},
            sha256=str(raw["sha256"]),
        )


@dataclass(frozen=True)
class RestoreReport:
    objects: int
    buckets: int
    generations: dict[int, int]  # old generation → new, for every restored object


def save(client: storage.Client, folder: Path) -> int:
    """Write every bucket's live objects to ``folder`` (replacing what was there); returns the count."""
    buckets = sorted(bucket.name for bucket in client.list_buckets(timeout=TIMEOUT_S))
    blobs = [blob for name in buckets for blob in client.list_blobs(name, timeout=TIMEOUT_S)]
    new = _sibling(folder, "new")
    shutil.rmtree(new, ignore_errors=True)
    (new / CONTENT).mkdir(parents=True)

    def save_one(blob: Any) -> SavedObject:
        # A listed blob carries its generation, so the read is pinned to it: index and content agree.
        data = blob.download_as_bytes(timeout=TIMEOUT_S)
        digest = hashlib.sha256(data).hexdigest()
        path = new / CONTENT / digest
        if not path.exists():  # two objects with one content may race here: each writes it whole
            part = path.with_name(f"{digest}.{threading.get_ident()}")
            part.write_bytes(data)
            part.replace(path)
        return SavedObject(
            bucket=blob.bucket.name,
            name=blob.name,
            generation=int(blob.generation),
            content_type=blob.content_type,
            metadata=dict(blob.metadata or {}),
            sha256=digest,
        )

    with ThreadPoolExecutor(WORKERS) as pool:
        saved = list(pool.map(save_one, blobs))
    (new / BUCKETS).write_text(json.dumps(buckets))
    (new / INDEX).write_text("".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in saved))
    _swap_in(new, folder)
    return len(saved)


def restore(client: storage.Client, folder: Path) -> RestoreReport:
    """Create the buckets and objects saved in ``folder`` (nothing when there is no snapshot).

    Objects without ``samdrop-input-generation`` go first, so that every value it holds can be
    rewritten to the new generation of the object it named. Expects an empty store: each object
    is created with ``if_generation_match=0``.
    """
    source = current(folder)
    if source is None:
        return RestoreReport(0, 0, {})
    try:
        buckets = [str(name) for name in json.loads((source / BUCKETS).read_text())]
        lines = (source / INDEX).read_text(encoding="utf-8").splitlines()
        saved = [SavedObject.from_json(json.loads(line)) for line in lines if line]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _unreadable(source, exc) from exc
    existing = {bucket.name for bucket in client.list_buckets(timeout=TIMEOUT_S)}
    for name in buckets:
        if name not in existing:
            client.create_bucket(name, timeout=TIMEOUT_S)
    generations: dict[int, int] = {}

    def restore_one(item: SavedObject) -> tuple[int, int]:
        path = source / CONTENT / item.sha256
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _unreadable(source, exc) from exc
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise _unreadable(source, ValueError(f"{path} does not hold the content it names"))
        blob = client.bucket(item.bucket).blob(item.name)
        blob.metadata = translate(item.metadata, generations) or None
        blob.upload_from_string(
            data,
            content_type=item.content_type or "application/octet-stream",
            if_generation_match=0,
            timeout=TIMEOUT_S,
        )
        return item.generation, int(blob.generation or 0)

    untagged = [s for s in saved if input_generation(s.metadata) is None]
    tagged = [s for s in saved if input_generation(s.metadata) is not None]
    with ThreadPoolExecutor(WORKERS) as pool:
        for group in (untagged, tagged):  # the map is complete before any tag is rewritten
            generations.update(pool.map(restore_one, group))
    return RestoreReport(len(saved), len(buckets), generations)


def translate(metadata: Mapping[str, str], generations: Mapping[int, int]) -> dict[str, str]:
    """``metadata`` with ``samdrop-input-generation`` rewritten to the new generation, where known."""
    out = dict(metadata)
    old = input_generation(metadata)
    if old is not None and old in generations:
        out[GENERATION_KEY] = str(generations[old])
    return out


def discard(folder: Path) -> None:
    """Remove the snapshot (``local up --fresh``), half-written ones included."""
    for path in (folder, _sibling(folder, "new"), _sibling(folder, "old")):
        shutil.rmtree(path, ignore_errors=True)


def current(folder: Path) -> Path | None:
    """The complete snapshot: ``folder``, or the old one when a swap stopped between its renames."""
    for path in (folder, _sibling(folder, "old")):
        if (path / INDEX).is_file():
            return path
    return None


def _swap_in(new: Path, folder: Path) -> None:
    old = _sibling(folder, "old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{kind}")


def _unreadable(source: Path, exc: Exception) -> LocalStackError:
    return LocalStackError(
        f"the saved bucket objects in {source} cannot be read ({exc}): fix or move that folder, "
        "or start empty with `samdrop local up --fresh`"
    )
