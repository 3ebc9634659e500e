"""The SAM endpoint client: a CPR server URL (local stack) or a Vertex AI endpoint resource name.

Classification (docs/design.md "Errors"): 408/429/500/502/503/504, connection errors and timeouts →
``TransientError`` (Pub/Sub redelivers); 401/403/404 → ``ConfigError`` (a wrong URL, route or
permission is our deployment's fault, so the message is redelivered and dead-lettered, not
dropped); a 400 whose ``detail`` is ``{"code", "message"}`` with a permanent code → that error (the
predictor refusing a request over a budget); any other 4xx → ``PermanentError`` carrying the
server's message. Every call has
``SAMDROP_ENDPOINT_TIMEOUT_S``.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

import requests
from google.api_core import exceptions as api_exceptions

from samdrop.errors import (
    ERROR_CODES,
    ConfigError,
    PermanentError,
    RetryRule,
    SamdropError,
    TransientError,
    error_from_code,
    retry_rule,
)
from samdrop.settings import Settings
from samdrop.storage import skip_environment_lookups
from samdrop.tracing import outgoing_headers

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CONFIG_STATUS = frozenset({401, 403, 404})


class EndpointRejected(PermanentError):
    """The endpoint refused the request itself (HTTP 4xx other than auth/not-found)."""

    code = "endpoint_rejected"


class BadResponse(PermanentError):
    """The endpoint answered 200 with something that is not the predictor contract."""

    code = "bad_response"


class Endpoint(Protocol):
    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        """One prediction per instance, in order (raw JSON values, see :mod:`functions.prediction`)."""
        ...


def classify_status(status: int, message: str, where: str, *, code: str | None = None) -> SamdropError:
    """The samdrop error for a non-2xx HTTP ``status`` from the endpoint; ``code`` is the one the
    predictor put in a 400's detail, if any."""
    if status == 400 and code is not None and code in ERROR_CODES and retry_rule(code) is RetryRule.PERMANENT:
        return error_from_code(code, message)
    text = f"{where} answered HTTP {status}: {message}"
    if status in TRANSIENT_STATUS or status >= 500:
        return TransientError(text)
    if status in CONFIG_STATUS:
        return ConfigError(text + " (check SAMDROP_ENDPOINT and the function's permissions)")
    return EndpointRejected(text)


class HttpEndpoint:
    """POST ``{url}/predict`` (or ``url`` itself when it already has a path) with JSON."""

    def __init__(self, url: str, *, timeout_s: float, session: requests.Session | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.url = url.rstrip("/") + "/predict" if parsed.path in ("", "/") else url
        self._timeout = timeout_s
        if session is None:
            session = requests.Session()
            skip_environment_lookups(session)
        self._session = session

    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        body = {"instances": instances, "parameters": parameters}
        try:
            # traceparent: the predictor's spans join this image's trace (samdrop/tracing.py)
            traced = {"headers": headers} if (headers := outgoing_headers()) else {}
            response = self._session.post(self.url, json=body, timeout=self._timeout, **traced)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"{self.url} unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code >= 300:
            code = _server_code(response)
            raise classify_status(response.status_code, _server_message(response), self.url, code=code)
        try:
            payload = response.json()
        except ValueError:
            raise BadResponse(f"{self.url} answered non-JSON: {response.text[:200]!r}") from None
        return _predictions(payload, self.url, len(instances))


class VertexEndpoint:
    """``projects/P/locations/R/endpoints/E`` through ``google.cloud.aiplatform``.

    The SDK object is built on first use (its constructor makes a network call) and then reused.
    ``factory`` builds it from the resource name; tests pass a fake.
    """

    def __init__(self, name: str, *, timeout_s: float, factory: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self._timeout = timeout_s
        self._factory = factory or _aiplatform_endpoint
        self._endpoint: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._endpoint is None:
                self._endpoint = self._factory(self.name)
            return self._endpoint

    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        try:
            result = self._get().predict(instances=instances, parameters=parameters, timeout=self._timeout)
        except api_exceptions.GoogleAPICallError as exc:
            raise classify_status(int(exc.code or 500), exc.message or str(exc), self.name) from exc
        except (api_exceptions.RetryError, requests.ConnectionError, requests.Timeout, TimeoutError) as exc:
            raise TransientError(f"{self.name} unreachable ({type(exc).__name__}: {exc})") from exc
        return _predictions({"predictions": list(result.predictions)}, self.name, len(instances))


def _aiplatform_endpoint(name: str) -> Any:
    from google.cloud import aiplatform  # heavy import: only where a Vertex endpoint is configured

    return aiplatform.Endpoint(endpoint_name=name)


def make_endpoint(settings: Settings, *, session: requests.Session | None = None) -> Endpoint:
    """The endpoint client ``settings.endpoint`` names; ``ConfigError`` when it is unset."""
    if not settings.endpoint:
        raise ConfigError(
            "SAMDROP_ENDPOINT is not set: give an http(s):// CPR server URL or a Vertex endpoint"
        )
    if settings.endpoint.startswith(("http://", "https://")):
        return HttpEndpoint(settings.endpoint, timeout_s=settings.endpoint_timeout_s, session=session)
    return VertexEndpoint(settings.endpoint, timeout_s=settings.endpoint_timeout_s)


def _predictions(payload: Any, where: str, expected: int) -> list[Any]:
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list) or len(predictions) != expected:
        raise BadResponse(f"{where} answered without {expected} prediction(s): {str(payload)[:200]}")
    return predictions


def _server_code(response: requests.Response) -> str | None:
    """The ``code`` of a ``{"detail": {"code", "message"}}`` error body (the predictor's 400s)."""
    try:
        body = response.json()
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    code = detail.get("code") if isinstance(detail, dict) else None
    return code if isinstance(code, str) else None


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason or ""
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if body.get(key):
                value = body[key]
                return value.get("message", str(value)) if isinstance(value, dict) else str(value)
    return str(body)[:500]
