import json
import types
from typing import Any

import pytest
import requests
from google.api_core import exceptions as api_exceptions

from functions.endpoint import BadResponse, EndpointRejected, HttpEndpoint, VertexEndpoint, make_endpoint
from functions.events import UploadEvent
from functions.handler import handle_upload
from functions.prediction import parse_prediction
from functions.prompts import prompts_from_metadata
from samdrop.errors import ConfigError, InputNotFound, InvalidPrompt, PermanentError, TransientError
from samdrop.storage import GcsStore, WriteConflict
from tests.unit.function_fakes import (
    BUCKET,
    FakeEndpoint,
    FakePublisher,
    FakeStore,
    jpeg,
    make_deps,
    settings,
)

FOLDER = "results/incoming/cat.jpg/"


class FakeResponse:
    def __init__(self, status: int, body: object = None, text: str = "") -> None:
        self.status_code, self._body, self.reason = status, body, "reason"
        self.text = text or (json.dumps(body) if body is not None else "")

    def json(self):
        if self._body is None:
            raise ValueError("no json")
        return self._body


class FakeSession:
    def __init__(self, result) -> None:
        self.result = result
        self.calls: list[Any] = []

    def post(self, url, json=None, timeout=None):
        self.calls.append((url, json, timeout))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def http(result) -> HttpEndpoint:
    return HttpEndpoint("http://127.0.0.1:8080", timeout_s=7.0, session=FakeSession(result))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_http_retryable_statuses_are_transient(status):
    with pytest.raises(TransientError, match=str(status)):
        http(FakeResponse(status, {"detail": "busy"})).predict([{}], {})


@pytest.mark.parametrize("error", [requests.ConnectionError("refused"), requests.Timeout("slow")])
def test_http_connection_errors_and_timeouts_are_transient(error):
    with pytest.raises(TransientError):
        http(error).predict([{}], {})


def test_http_4xx_is_permanent_with_the_servers_message():
    with pytest.raises(EndpointRejected, match="instances must be a list") as info:
        http(FakeResponse(400, {"detail": "instances must be a list"})).predict([{}], {})
    assert isinstance(info.value, PermanentError)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_http_auth_and_not_found_are_config_errors(status):
    with pytest.raises(ConfigError):
        http(FakeResponse(status, text="nope")).predict([{}], {})


def test_http_request_shape_and_timeout():
    session = FakeSession(FakeResponse(200, {"predictions": [{"width": 1}]}))
    endpoint = HttpEndpoint("http://h:1/", timeout_s=7.0, session=session)
    assert endpoint.predict([{"gcs_uri": "gs://b/o"}], {}) == [{"width": 1}]
    assert session.calls == [
        ("http://h:1/predict", {"instances": [{"gcs_uri": "gs://b/o"}], "parameters": {}}, 7.0)
    ]


@pytest.mark.parametrize(
    "response", [FakeResponse(200, text="<html>"), FakeResponse(200, {"predictions": []})]
)
def test_http_off_contract_answers_are_bad_responses(response):
    with pytest.raises(BadResponse):
        http(response).predict([{}], {})


class FakeVertex:
    def __init__(self, error=None) -> None:
        self.error = error
        self.calls: list[Any] = []

    def predict(self, instances, parameters, timeout):
        self.calls.append(timeout)
        if self.error:
            raise self.error

        return types.SimpleNamespace(predictions=[{"width": 4.0}])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (api_exceptions.TooManyRequests("quota"), TransientError),
        (api_exceptions.ServiceUnavailable("down"), TransientError),
        (api_exceptions.InternalServerError("boom"), TransientError),
        (api_exceptions.DeadlineExceeded("slow"), TransientError),
        (api_exceptions.BadRequest("bad instance"), EndpointRejected),
        (api_exceptions.NotFound("no endpoint"), ConfigError),
        (api_exceptions.PermissionDenied("no"), ConfigError),
    ],
)
def test_vertex_errors_are_classified(error, expected):
    endpoint = VertexEndpoint(
        "projects/p/locations/r/endpoints/1", timeout_s=3.0, factory=lambda _: FakeVertex(error)
    )
    with pytest.raises(expected):
        endpoint.predict([{}], {})


def test_vertex_endpoint_is_built_lazily_once():
    built: list[str] = []

    def factory(name: str) -> FakeVertex:
        built.append(name)
        return FakeVertex()

    endpoint = VertexEndpoint("projects/p/locations/r/endpoints/1", timeout_s=3.0, factory=factory)
    assert built == []
    endpoint.predict([{}], {})
    endpoint.predict([{}], {})
    assert built == ["projects/p/locations/r/endpoints/1"]


def test_make_endpoint_picks_the_client():
    assert isinstance(make_endpoint(settings()), HttpEndpoint)
    vertex = settings(endpoint="projects/p/locations/us-central1/endpoints/123")
    assert isinstance(make_endpoint(vertex), VertexEndpoint)
    with pytest.raises(ConfigError, match="SAMDROP_ENDPOINT"):
        make_endpoint(settings(endpoint=None))


def test_prediction_error_slot_is_permanent_with_its_code():
    with pytest.raises(PermanentError, match="cannot decode") as info:
        parse_prediction({"error": {"code": "invalid_image", "message": "cannot decode"}}, where="x")
    assert info.value.code == "invalid_image"


@pytest.mark.parametrize(
    ("code", "expected"),
    [("unavailable", TransientError), ("config", ConfigError)],
)
def test_prediction_error_slots_the_input_did_not_cause_are_redelivered(code, expected):
    with pytest.raises(expected, match="predictor: storage said 503") as info:
        parse_prediction({"error": {"code": code, "message": "storage said 503"}}, where="x")
    assert not isinstance(info.value, PermanentError)


def test_prediction_internal_error_is_permanent_as_everywhere():
    # One error-code table (samdrop.errors.ERROR_CODES): "internal" is a bug, retrying meets it again.
    with pytest.raises(PermanentError, match="model crashed") as info:
        parse_prediction({"error": {"code": "internal", "message": "model crashed"}}, where="x")
    assert info.value.code == "internal"


def test_prediction_numbers_from_protobuf_are_coerced():
    raw = {"width": 2.0, "height": 1.0, "masks": [{"segmentation": {"size": [1.0, 2.0], "counts": "02"},
           "score": 0.5, "box": [0, 0, 1, 0], "area": 2.0, "prompt_index": 0.0}]}  # fmt: skip
    prediction = parse_prediction(raw, where="x")
    mask = prediction.masks[0]
    assert mask.rle["size"] == [1, 2] and mask.area == 2 and mask.prompt_index == 0
    assert mask.box == [0, 0, 1, 0] and all(isinstance(v, int) for v in mask.box)


@pytest.mark.parametrize(
    "raw",
    [
        '{"points": [[1, 2]], "labels": [1, 0]}',
        '{"points": [[1]]}',
        '{"boxes": [[10, 10, 5, 5]]}',
        '{"point": [[1, 2]]}',
        '{"points": [[1, 2]], "labels": [2]}',
        '{"multimask": "yes"}',
        "[1, 2]",
        "{not json",
    ],
)
def test_malformed_prompts_are_invalid(raw):
    with pytest.raises(InvalidPrompt):
        prompts_from_metadata({"samdrop-prompts": raw})


def test_prompts_default_labels_and_empty_means_automatic():
    assert prompts_from_metadata({"samdrop-prompts": '{"points": [[1, 2]]}'}) == {
        "points": [[1, 2]],
        "labels": [1],
    }
    assert prompts_from_metadata({"samdrop-prompts": "{}"}) is None
    assert prompts_from_metadata({}) is None


# --- storage translation -------------------------------------------------------------------------


class RaisingBlob:
    def __init__(self, error) -> None:
        self.error, self.metadata, self.generation = error, None, None

    def download_as_bytes(self, **_):
        raise self.error

    def upload_from_string(self, *_, **__):
        raise self.error


class RaisingClient:
    def __init__(self, error) -> None:
        self.error = error

    def bucket(self, _):
        client = self

        class Bucket:
            def blob(self, *_args, **_kwargs):
                return RaisingBlob(client.error)

        return Bucket()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (api_exceptions.ServiceUnavailable("down"), TransientError),
        (api_exceptions.TooManyRequests("slow down"), TransientError),
        (requests.ConnectionError("reset"), TransientError),
        (requests.Timeout("slow"), TransientError),
        (api_exceptions.NotFound("gone"), InputNotFound),
        (api_exceptions.Forbidden("denied"), ConfigError),
    ],
)
def test_storage_read_errors_are_classified(error, expected):
    with pytest.raises(expected):
        GcsStore(RaisingClient(error)).read("b", "o", generation=1)


def test_storage_400_is_permanent_and_keeps_the_servers_text_out_of_the_message():
    with pytest.raises(PermanentError) as info:
        GcsStore(RaisingClient(api_exceptions.BadRequest("object name too long RAW"))).write(
            "b", "o", b"x", content_type="text/plain", if_generation_match=0
        )
    assert info.value.code == "invalid_request" and "RAW" not in info.value.message


def test_http_400_with_a_coded_detail_is_that_code():
    detail = {"code": "invalid_request", "message": "33 instances exceeds SAMDROP_MAX_INSTANCES=32"}
    with pytest.raises(PermanentError) as info:
        http(FakeResponse(400, {"detail": detail})).predict([{}], {})
    assert info.value.code == "invalid_request" and info.value.message == detail["message"]
    transient = {"code": "unavailable", "message": "?"}  # only permanent codes are taken at their word
    with pytest.raises(EndpointRejected):
        http(FakeResponse(400, {"detail": transient})).predict([{}], {})


def test_storage_412_is_a_write_conflict():
    with pytest.raises(WriteConflict):
        GcsStore(RaisingClient(api_exceptions.PreconditionFailed("412"))).write(
            "b", "o", b"x", content_type="text/plain", if_generation_match=0
        )


# --- the handler meets Pub/Sub: ack or redeliver --------------------------------------------------


def upload(store: FakeStore, **metadata: str) -> UploadEvent:
    generation = store.put(BUCKET, "incoming/cat.jpg", jpeg(), **metadata)
    return UploadEvent(
        "OBJECT_FINALIZE", BUCKET, "incoming/cat.jpg", str(generation), "image/jpeg", metadata=metadata
    )


def test_transient_endpoint_error_propagates_and_writes_nothing():
    store, publisher = FakeStore(), FakePublisher()
    deps = make_deps(store, publisher, FakeEndpoint(error=TransientError("503")))
    with pytest.raises(TransientError):
        handle_upload(upload(store), deps)
    assert store.names("results/") == [] and publisher.messages == []


@pytest.mark.parametrize(
    ("endpoint", "metadata", "code"),
    [
        (
            FakeEndpoint(slot={"error": {"code": "invalid_image", "message": "bad pixels"}}),
            {},
            "invalid_image",
        ),
        (FakeEndpoint(error=EndpointRejected("HTTP 400: no")), {}, "endpoint_rejected"),
        (FakeEndpoint(), {"samdrop-prompts": "{oops"}, "invalid_prompt"),
        (FakeEndpoint(width=10, height=10), {}, "size_mismatch"),
        (FakeEndpoint(error=KeyError("a bug")), {}, "internal"),
    ],
)
def test_permanent_errors_are_recorded_and_acknowledged(endpoint, metadata, code):
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store, **metadata)
    assert handle_upload(event, make_deps(store, publisher, endpoint)) == "failed"
    error = store.json(FOLDER + "error.json")
    assert error["code"] == code and error["input"] == event.uri and error["generation"] == event.generation
    assert set(error) == {"schema_version", "code", "message", "input", "generation"}
    [(_, body, attributes)] = publisher.messages
    assert attributes == {"schema_version": "1", "kind": "image", "status": "failed"}
    assert body["error"]["code"] == code


def test_malformed_prompts_never_reach_the_endpoint():
    store, endpoint = FakeStore(), FakeEndpoint()
    handle_upload(upload(store, **{"samdrop-prompts": '{"points": 3}'}), make_deps(store, endpoint=endpoint))
    assert endpoint.calls == []


def test_prompts_are_sent_by_reference():
    store, endpoint = FakeStore(), FakeEndpoint()
    prompts = '{"points": [[3, 4]], "labels": [1], "boxes": [[0, 0, 9, 9]]}'
    event = upload(store, **{"samdrop-prompts": prompts})
    handle_upload(event, make_deps(store, endpoint=endpoint))
    [([instance], parameters)] = endpoint.calls
    assert instance == {
        "gcs_uri": f"gs://{BUCKET}/incoming/cat.jpg",
        "generation": event.generation,  # pinned: the endpoint reads exactly these bytes
        "file_path": "incoming/cat.jpg",
        "mask_format": "rle",
        "points": [[3, 4]],
        "labels": [1],
        "boxes": [[0, 0, 9, 9]],
    }
    assert parameters == {}
    assert store.json(FOLDER + "masks.json")["mode"] == "prompted"


def test_input_gone_before_processing_is_recorded_not_found():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    del store.objects[(BUCKET, "incoming/cat.jpg")]
    assert handle_upload(event, make_deps(store, publisher)) == "failed"
    assert store.json(FOLDER + "error.json")["code"] == "not_found"


def test_storage_outage_propagates():
    store = FakeStore()
    event = upload(store)
    store.faults[("list", FOLDER)] = TransientError("storage 503")
    with pytest.raises(TransientError):
        handle_upload(event, make_deps(store))


def test_missing_endpoint_setting_is_a_config_error_not_an_ack():
    store = FakeStore()
    deps = make_deps(store, settings=settings(endpoint=None))
    deps = type(deps)(**{**deps.__dict__, "endpoint": None})
    with pytest.raises(ConfigError):
        handle_upload(upload(store), deps)
    assert store.names("results/") == []


def test_a_bug_before_any_record_gets_one_curated_failed_completion_and_is_acknowledged():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    store.faults[("list", FOLDER)] = ValueError("invalid literal for int() RAW-DETAIL")
    assert handle_upload(event, make_deps(store, publisher)) == "failed"
    [(_, body, _)] = publisher.messages
    assert body["status"] == "failed" and body["outputs"] == {}
    assert body["error"] == {
        "code": "internal",
        "message": f"handling {event.uri}: internal error (ValueError); the trace is in the service's log",
    }


def test_a_retryable_samdrop_error_before_any_record_is_redelivered():
    store, publisher = FakeStore(), FakePublisher()
    event = upload(store)
    store.faults[("list", FOLDER)] = WriteConflict("412")
    with pytest.raises(WriteConflict):
        handle_upload(event, make_deps(store, publisher))
    assert publisher.messages == []
