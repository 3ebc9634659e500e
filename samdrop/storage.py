"""The few Cloud Storage operations samdrop needs, behind a small protocol.

:func:`storage_error` is the one translation of the client library's exceptions into samdrop's,
for every unit that touches Cloud Storage (the function, the pipeline, the predictor's ``gcs_uri``
reader, through :class:`GcsStore`): 404 → ``InputNotFound`` (permanent), 412 → :class:`WriteConflict`
(another writer got there first), 400 → ``InvalidRequest`` (permanent: the same call would be
refused again, e.g. a name too long), 401/403 → ``ConfigError`` (fix the service account; the
message is redelivered, not lost), 429/5xx, timeouts and connection errors → ``TransientError``
(:data:`samdrop.errors.IO_FAILURES`). Every call has ``SAMDROP_REQUEST_TIMEOUT_S`` and
python-storage's retry rule: reads its ``DEFAULT_RETRY``, writes and deletes :func:`write_retry`,
which retries only a call carrying a generation precondition. Tests pass an in-memory store instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
from google.api_core import exceptions as api_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY, ConditionalRetryPolicy, is_generation_specified

from samdrop.errors import (
    IO_FAILURES,
    ConfigError,
    InputNotFound,
    InvalidRequest,
    SamdropError,
    TransientError,
)
from samdrop.settings import DEFAULT_REQUEST_TIMEOUT_S


def write_retry(timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> ConditionalRetryPolicy:
    """The library's own retry rule (what it retries: 429, 5xx, connection errors) with shorter
    waits, all within ``timeout_s``, applied to a write or delete only when it carries a generation
    precondition (as python-storage's ``DEFAULT_RETRY_IF_GENERATION_SPECIFIED``): repeating it then
    cannot overwrite or delete someone else's object."""
    retry = DEFAULT_RETRY.with_delay(initial=0.5, maximum=8.0, multiplier=2.0).with_timeout(timeout_s)
    return ConditionalRetryPolicy(retry, is_generation_specified, ["query_params"])


# Cloud Storage's limit on one object's custom metadata: all keys and values together, UTF-8 bytes.
# The local stack's fake-gcs-server (memory backend) has none below it.
MAX_CUSTOM_METADATA_BYTES = 8 * 1024


def custom_metadata_bytes(metadata: Mapping[str, str]) -> int:
    """The size Cloud Storage counts against :data:`MAX_CUSTOM_METADATA_BYTES`."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in metadata.items())


# What requests reads from the environment when ``trust_env`` is on, besides ``*_proxy`` variables.
_REQUESTS_VARIABLES = frozenset({"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC"})


def skip_environment_lookups(
    session: Any, environ: Mapping[str, str] = os.environ, home: Path | None = None
) -> bool:
    """Stop a ``requests`` session re-reading the environment on every call when it holds nothing
    for requests; returns whether the lookups were turned off.

    With ``trust_env`` on, each request scans all of ``os.environ`` for proxies and checks for
    ``~/.netrc``: under a burst that was about a tenth of the function's busy time (py-spy). Where
    no proxy, CA-bundle or netrc setting exists, those lookups cannot change a request; where any
    does, the session is left as it is. Other objects (fakes) are left alone too.
    """
    if not isinstance(session, requests.Session):
        return False
    try:
        home = Path.home() if home is None else home
    except RuntimeError:  # no home directory to look in: leave requests to decide per call
        return False
    if any(k.lower().endswith("_proxy") or k.upper() in _REQUESTS_VARIABLES for k in environ):
        return False
    if (home / ".netrc").exists() or (home / "_netrc").exists():
        return False
    session.trust_env = False
    return True


class WriteConflict(SamdropError):
    """A generation precondition failed (HTTP 412): someone else wrote or replaced the object."""

    code = "conflict"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object version: ``generation`` as int, custom ``metadata`` as str → str."""

    name: str
    generation: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    size: int | None = None


class ObjectStore(Protocol):
    def list(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        """Objects directly under ``prefix`` (not in sub-folders), by full name."""
        ...

    def stat(self, bucket: str, name: str, *, generation: int | None = None) -> ObjectInfo | None:
        """One object's info, or None when it does not exist."""
        ...

    def read(self, bucket: str, name: str, *, generation: int | None = None) -> bytes:
        """The object's bytes; raises ``InputNotFound`` when absent."""
        ...

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Create (``if_generation_match=0``) or replace that exact generation; returns the new one.
        Raises :class:`WriteConflict` when the precondition fails."""
        ...

    def delete(self, bucket: str, name: str, *, if_generation_match: int) -> None:
        """Delete that exact generation; raises :class:`WriteConflict` or ``InputNotFound``."""
        ...


class GcsStore:
    """:class:`ObjectStore` over ``google.cloud.storage.Client``; every call has ``timeout_s``."""

    def __init__(self, client: Any, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self._client = client
        self._timeout = timeout_s
        self._write_retry = write_retry(timeout_s)
        skip_environment_lookups(getattr(client, "_http", None))  # the client's requests session

    def list(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        with _translated(f"gs://{bucket}/{prefix}"):
            blobs = self._client.list_blobs(bucket, prefix=prefix, delimiter="/", timeout=self._timeout)
            return {blob.name: _info(blob) for blob in blobs}

    def list_tree(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under ``prefix``, sub-folders included, by full name (the pipeline's listing)."""
        with _translated(f"gs://{bucket}/{prefix}"):
            blobs = self._client.list_blobs(bucket, prefix=prefix, timeout=self._timeout)
            return {blob.name: _info(blob) for blob in blobs}

    def stat(self, bucket: str, name: str, *, generation: int | None = None) -> ObjectInfo | None:
        with _translated(f"gs://{bucket}/{name}"):
            blob = self._client.bucket(bucket).get_blob(name, generation=generation, timeout=self._timeout)
            return _info(blob) if blob is not None else None

    def read(self, bucket: str, name: str, *, generation: int | None = None) -> bytes:
        with _translated(f"gs://{bucket}/{name}"):
            blob = self._client.bucket(bucket).blob(name, generation=generation)
            return bytes(blob.download_as_bytes(timeout=self._timeout))

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        with _translated(f"gs://{bucket}/{name}"):
            blob = self._client.bucket(bucket).blob(name)
            if metadata:
                blob.metadata = dict(metadata)
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=if_generation_match,
                timeout=self._timeout,
                retry=self._write_retry,
            )
            return int(blob.generation or 0)

    def delete(self, bucket: str, name: str, *, if_generation_match: int) -> None:
        with _translated(f"gs://{bucket}/{name}"):
            self._client.bucket(bucket).blob(name).delete(
                if_generation_match=if_generation_match, timeout=self._timeout, retry=self._write_retry
            )


def _info(blob: Any) -> ObjectInfo:
    return ObjectInfo(
        name=blob.name,
        generation=int(blob.generation or 0),
        metadata=dict(blob.metadata or {}),
        content_type=blob.content_type,
        size=int(blob.size) if blob.size is not None else None,
    )


def storage_error(exc: BaseException, uri: str) -> SamdropError | None:
    """The samdrop error for a Cloud Storage client exception about ``uri``; None for anything
    else (a bug: the edge's :func:`samdrop.errors.as_samdrop_error` makes it ``internal``)."""
    if isinstance(exc, api_exceptions.PreconditionFailed):
        return WriteConflict(f"{uri}: generation precondition failed ({exc.message})")
    if isinstance(exc, api_exceptions.NotFound):
        return InputNotFound(f"{uri} does not exist (deleted or replaced?)")
    if isinstance(exc, api_exceptions.BadRequest):  # the server's text stays on the chained exception
        return InvalidRequest(f"Cloud Storage refused a request for {uri[:200]} as invalid (HTTP 400)")
    if isinstance(exc, api_exceptions.Unauthorized | api_exceptions.Forbidden):
        return ConfigError(
            f"{uri}: access denied ({exc.message}); grant the service account this runs as "
            "roles/storage.objectUser on the bucket"
        )
    if isinstance(exc, IO_FAILURES):
        return TransientError(f"{uri}: storage unavailable ({type(exc).__name__}: {exc})")
    return None


@contextlib.contextmanager
def _translated(uri: str) -> Iterator[None]:
    """Raise :func:`storage_error`'s translation of a client-library exception (chained to it)."""
    try:
        yield
    except SamdropError:
        raise
    except Exception as exc:
        error = storage_error(exc, uri)
        if error is None:
            raise
        raise error from exc


def split_uri(uri: str) -> tuple[str, str]:
    """``("b", "a/c.jpg")`` for ``gs://b/a/c.jpg``; raises ``InvalidRequest`` for anything else."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket or not name:
        raise InvalidRequest(f"{uri!r} is not a gs://bucket/object URI")
    return bucket, name
