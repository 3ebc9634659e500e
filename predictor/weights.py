"""Fetching SAM checkpoints: Meta's official files, a mirror, any ``http(s)://`` or ``gs://`` URI.

Every download goes once into ``<cache dir>/checkpoints/`` through a ``.part`` file that is renamed
into place only after its size (and checksum, where one is known) checked out, so a half-written
file is never loaded. An interrupted HTTP download resumes from its ``.part`` with a ``Range``
request. A checksum is known from :data:`SHA256` (official files) or from a ``#sha256=<hex>``
fragment on the URI (pip's convention): ``http://mirror/x.pth#sha256=ab12…``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from samdrop.errors import ConfigError
from samdrop.models import META_FILE, MODELS

log = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# Meta's file per SAM 1 type, from the one model table.
OFFICIAL_FILES = {info.name: str(info.source) for info in MODELS if info.weights == META_FILE}
# sha256 of Meta's files. None: not known here (this project is built offline and never saw the
# files); fill in from a download you trust. Until then only the size the server announces is checked.
SHA256: dict[str, str | None] = {name: None for name in OFFICIAL_FILES.values()}
CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


class DownloadError(ConfigError):
    """A checkpoint could not be fetched or failed its checks; the message says what to do."""


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from and where it lands.

    url: ``http(s)://`` or ``gs://`` without any ``#sha256=`` fragment; sha256: expected hex digest
    or None; target: the cached file (``<cache>/checkpoints/<file>`` for official names, else under a
    folder keyed by the URL).
    """

    url: str
    sha256: str | None
    target: Path


def is_remote(checkpoint: str) -> bool:
    return checkpoint.startswith(("http://", "https://", "gs://"))


def official_url(model_type: str, base_url: str | None = None) -> str:
    """The checkpoint URI of ``model_type`` under ``base_url`` (a mirror) or Meta's own server."""
    try:
        name = OFFICIAL_FILES[model_type]
    except KeyError:
        raise ConfigError(
            f"SAMDROP_CHECKPOINT=auto has no official checkpoint for model type {model_type!r}: "
            f"use one of {', '.join(OFFICIAL_FILES)} or give a checkpoint path"
        ) from None
    base = base_url or OFFICIAL_BASE_URL
    return base if base.endswith(".pth") else base.rstrip("/") + "/" + name


def source(uri: str, cache_dir: Path) -> Source:
    """Split ``uri`` into URL and checksum and pick its cache file."""
    url, _, fragment = uri.partition("#")
    sha256 = None
    if fragment:
        key, _, value = fragment.partition("=")
        if key != "sha256" or len(value) != 64:
            raise ConfigError(f"checkpoint URI {uri}: the only fragment understood is #sha256=<64 hex>")
        sha256 = value.lower()
    name = url.rstrip("/").rsplit("/", 1)[-1]
    root = cache_dir / "checkpoints"
    if name in SHA256:  # an official file, from Meta or a mirror: one place, easy to fill by hand
        return Source(url, sha256 or SHA256[name], root / name)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Source(url, sha256, root / key / name)


def cached(uri: str, cache_dir: Path) -> Path | None:
    """The cached file for ``uri``, if it is there (no network)."""
    target = source(uri, cache_dir).target
    return target if target.is_file() else None


def fetch(uri: str, cache_dir: Path, *, progress: bool | None = None) -> Path:
    """The local file for a remote checkpoint, downloaded once into ``cache_dir``.

    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal). Raises
    :class:`DownloadError` with what to do when the server cannot be reached, the download stops
    short (its ``.part`` stays for the next try to resume) or the checksum differs (``.part`` deleted).
    """
    src = source(uri, cache_dir)
    if src.target.is_file():
        return src.target
    src.target.parent.mkdir(parents=True, exist_ok=True)
    with lock(src.target):
        if src.target.is_file():  # another process finished it while we waited
            return src.target
        part = src.target.with_name(src.target.name + ".part")
        if src.url.startswith("gs://"):
            fetch_gcs(src.url, part)
        else:
            _fetch_http(src, part, progress)
        _check_sha256(src, part)
        os.replace(part, src.target)
    log.info("checkpoint %s cached at %s", src.url, src.target)
    return src.target


def offline_hint(src: Source) -> str:
    return (
        f"place the file at {src.target} (it is then used without any download), or set "
        "SAMDROP_CHECKPOINT to a local path, or SAMDROP_WEIGHTS_URL to a mirror you can reach"
    )


def _fetch_http(src: Source, part: Path, progress: bool | None) -> None:
    from tqdm import tqdm

    url = src.url
    have = part.stat().st_size if part.exists() else 0
    # identity: the bytes counted must be the bytes the server announced (no transparent gzip).
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = requests.get(
            url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        )
    except requests.RequestException as exc:
        raise DownloadError(f"could not reach {url} ({type(exc).__name__}); {offline_hint(src)}") from None
    with response:
        if response.status_code == 416:  # the part is already whole (or the server disagrees): restart
            part.unlink(missing_ok=True)
            return _fetch_http(src, part, progress)
        if response.status_code not in (200, 206):
            raise DownloadError(f"downloading {url} failed: HTTP {response.status_code} {response.reason}")
        if response.status_code == 200:
            have = 0  # no Range support: start over
        total = _total_size(response, have)
        log.info("downloading %s (%s bytes, from byte %d) to %s", url, total or "?", have, part)
        mode = "ab" if have else "wb"
        received = have
        bar = tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=None if progress is None else not progress,
        )
        try:
            with bar, part.open(mode) as handle:
                for chunk in response.iter_content(CHUNK_BYTES):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except requests.RequestException as exc:
            raise DownloadError(
                f"download of {url} stopped after {received} of {total or '?'} bytes "
                f"({type(exc).__name__}); run again to resume from {part}"
            ) from None
    if total is not None and received != total:
        raise DownloadError(
            f"download of {url} stopped after {received} of {total} bytes; run again to resume from {part}"
        )


def _total_size(response: requests.Response, have: int) -> int | None:
    """The whole file's size in bytes, from ``Content-Range`` (a resumed 206) or ``Content-Length``."""
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def fetch_gcs(uri: str, part: Path) -> None:
    import google.cloud.storage as storage

    bucket_name, _, name = uri.removeprefix("gs://").partition("/")
    try:
        blob = storage.Client().bucket(bucket_name).blob(name)
        blob.download_to_filename(str(part), timeout=600)
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not download checkpoint {uri}: {exc}") from None


def _check_sha256(src: Source, part: Path) -> None:
    if src.sha256 is None:
        return
    digest = hashlib.sha256()
    with part.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    if digest.hexdigest() != src.sha256:
        part.unlink()
        raise DownloadError(
            f"checkpoint {src.url} has sha256 {digest.hexdigest()}, expected {src.sha256}: the download "
            "was deleted; check the URL (or mirror) serves the right file, or fix the expected checksum"
        )


@contextlib.contextmanager
def lock(target: Path) -> Iterator[None]:
    """One downloader per file across processes (the server and a pipeline may start together)."""
    with target.with_name(target.name + ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
