"""One policy for unexpected exceptions (samdrop.errors.as_samdrop_error) and one translation of
storage errors (samdrop.storage.storage_error), met the same way by the predictor and the function."""

from __future__ import annotations

import logging

import pytest
import requests
from google.api_core import exceptions as api_exceptions

from functions.handler import handle_upload
from predictor.cpr import SamRoutine
from predictor.engine import SamEngine
from samdrop.errors import ConfigError, InputNotFound, InvalidRequest, TransientError, as_samdrop_error
from samdrop.settings import Settings
from samdrop.storage import WriteConflict, storage_error

from .function_fakes import FakeEndpoint, FakePublisher, FakeStore, make_deps
from .pipeline_fakes import png
from .test_function_errors import FOLDER, upload


class OddDecoderError(Exception):
    """Not an I/O failure, not a samdrop error: what a decoder bug looks like from outside."""


def _routine(engine: SamEngine, cache_dir, read) -> SamRoutine:
    routine = SamRoutine()
    routine.setup(Settings.from_env({}, cache_dir=cache_dir), engine, read)
    return routine


def _predict(routine: SamRoutine) -> dict:
    body = {"instances": [{"gcs_uri": "gs://b/a.png", "boxes": [[0, 0, 10, 10]]}]}
    [prediction] = routine.postprocess(routine.predict(routine.preprocess(body)))["predictions"]
    return dict(prediction)


def test_a_decoder_bug_is_internal_in_the_predictor_and_its_trace_is_logged(
    fast_engine, cache_dir, monkeypatch, caplog
):
    def broken_decoder(data: bytes, **kwargs: object) -> None:
        raise OddDecoderError("the decoder tripped over itself")

    monkeypatch.setattr("predictor.cpr.decode_image", broken_decoder)
    with caplog.at_level(logging.ERROR):
        prediction = _predict(_routine(fast_engine, cache_dir, lambda uri, generation: png()))
    assert prediction["error"]["code"] == "internal"  # permanent: redelivering meets the same bug
    assert "OddDecoderError" in prediction["error"]["message"]
    assert "tripped" not in prediction["error"]["message"], "raw exception text stays in the log"
    [record] = [r for r in caplog.records if r.exc_info and r.exc_info[0] is OddDecoderError]
    assert "reading gs://b/a.png" in record.getMessage()


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionError("reset"),
        TimeoutError(),
        requests.ConnectionError("refused"),
        api_exceptions.ServiceUnavailable("x"),
    ],
)
def test_an_io_failure_while_reading_is_transient_in_the_predictor(fast_engine, cache_dir, failure):
    def read(uri: str, generation: int | None) -> bytes:
        raise failure

    prediction = _predict(_routine(fast_engine, cache_dir, read))
    assert prediction["error"]["code"] == "unavailable"


def test_the_function_meets_the_same_policy(caplog):
    store, publisher = FakeStore(), FakePublisher()
    with pytest.raises(TransientError):  # a network failure nobody translated: redelivered
        handle_upload(
            upload(store), make_deps(store, publisher, FakeEndpoint(error=requests.ConnectionError()))
        )
    assert publisher.messages == []
    with caplog.at_level(logging.ERROR):
        outcome = handle_upload(
            upload(store), make_deps(store, publisher, FakeEndpoint(error=OddDecoderError()))
        )
    assert outcome == "failed" and store.json(FOLDER + "error.json")["code"] == "internal"
    assert any(r.exc_info and r.exc_info[0] is OddDecoderError for r in caplog.records)


def test_as_samdrop_error_keeps_samdrop_errors():
    error = InputNotFound("gone")
    assert as_samdrop_error(error, where="x", log=logging.getLogger("t")) is error


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_exceptions.NotFound("x"), InputNotFound),
        (api_exceptions.Forbidden("x"), ConfigError),
        (api_exceptions.Unauthorized("x"), ConfigError),
        (api_exceptions.BadRequest("x"), InvalidRequest),
        (api_exceptions.PreconditionFailed("x"), WriteConflict),
        (api_exceptions.TooManyRequests("x"), TransientError),
        (api_exceptions.InternalServerError("x"), TransientError),
        (api_exceptions.ServiceUnavailable("x"), TransientError),
        (requests.ConnectionError("x"), TransientError),
        (requests.Timeout("x"), TransientError),
        (TimeoutError(), TransientError),
    ],
)
def test_one_storage_error_translation(exc, expected):
    assert type(storage_error(exc, "gs://b/o")) is expected
    assert storage_error(KeyError("a bug"), "gs://b/o") is None  # left to the edge's policy: internal


def test_the_predictors_gcs_reader_goes_through_the_one_store(monkeypatch):
    """A 403 reading a gcs_uri is a configuration error (the predictor's account lacks access), as
    for the function and the pipeline, not a missing input."""
    from predictor import cpr

    class Blob:
        def __init__(self, name: str, generation: int | None = None) -> None:
            self.name, self.generation = name, generation

        def download_as_bytes(self, **kwargs: object) -> bytes:
            raise api_exceptions.Forbidden("no access")

    class Bucket:
        def get_blob(self, name: str, generation: int | None = None, **kwargs: object) -> object:
            blob = Blob(name, generation or 7)
            blob.size, blob.metadata, blob.content_type = 10, {}, "image/png"  # type: ignore[attr-defined]
            return blob

        def blob(self, name: str, generation: int | None = None) -> Blob:
            return Blob(name, generation)

    class Client:
        _http = None

        def __init__(self, project: str | None = None) -> None:
            pass

        def bucket(self, name: str) -> Bucket:
            return Bucket()

    monkeypatch.setattr("google.cloud.storage.Client", Client)
    read = cpr.gcs_reader(Settings.from_env({}))
    with pytest.raises(ConfigError, match="access denied"):
        read("gs://b/a.png", None)


def test_one_request_timeout_setting_reaches_the_store_and_writes_retry_only_with_a_precondition(
    monkeypatch,
):
    from google.cloud.storage.retry import ConditionalRetryPolicy

    from functions.main import build_deps
    from samdrop.storage import write_retry

    settings = Settings.from_env({"SAMDROP_REQUEST_TIMEOUT_S": "7.5"})
    assert settings.request_timeout_s == 7.5
    with pytest.raises(ConfigError, match="SAMDROP_REQUEST_TIMEOUT_S"):
        Settings.from_env({"SAMDROP_REQUEST_TIMEOUT_S": "0"})
    policy = write_retry(7.5)
    assert isinstance(policy, ConditionalRetryPolicy)
    assert policy.get_retry_policy_if_conditions_met(query_params={}) is None  # no precondition: once
    retry = policy.get_retry_policy_if_conditions_met(query_params={"ifGenerationMatch": 0})
    assert retry is not None and retry.timeout == 7.5

    class AnyClient:
        _http = None

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

    monkeypatch.setattr("google.cloud.storage.Client", AnyClient)
    monkeypatch.setattr("google.cloud.pubsub_v1.PublisherClient", AnyClient)
    deps = build_deps({"SAMDROP_REQUEST_TIMEOUT_S": "7.5", "SAMDROP_PIPELINE_RUNNER": "none"})
    assert deps.store._timeout == 7.5 and deps.publisher._timeout == 7.5  # type: ignore[attr-defined]
