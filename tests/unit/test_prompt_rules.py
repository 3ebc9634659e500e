"""One prompt validator (samdrop/prompts.py) behind every path: `samdrop upload`, a single upload's
completion (the function), a batch's manifest line (pipeline) and the endpoint's `:predict` (CPR).
The same mistake gets the same words everywhere; only the source each path names differs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.upload import parse_prompts
from functions.events import UploadEvent
from functions.handler import handle_upload
from pipeline.listing import plan_batch
from pipeline.shard import ShardWorker
from predictor.cpr import SamRoutine
from predictor.engine import SamEngine
from samdrop.batches import BatchPaths
from samdrop.errors import SamdropError
from samdrop.prompts import multimask_for
from samdrop.settings import Settings

from .function_fakes import BUCKET, FakeEndpoint, FakePublisher, FakeStore, make_deps
from .pipeline_fakes import TreeStore, png

BAD_PROMPTS: list[tuple[dict[str, Any], str]] = [
    (
        {"points": [[1, 2], [3, 4]], "labels": [1, 0, 1]},
        " has 2 points but 3 labels: give one label per point",
    ),
    ({"points": [[1, 2]], "labels": [2]}, ".labels must be a list of 1 (foreground) or 0 (background)"),
    ({"boxes": [[9, 0, 1, 5]]}, ".boxes entry [9, 0, 1, 5] is not [x0, y0, x1, y1] with x0 <= x1, y0 <= y1"),
    ({"points": [[-1, 2]]}, ".points entry [-1, 2] is not 2 non-negative numbers ([[x, y], ...])"),
    ({"boxes": [[0, 0, 5, 5]], "multimask": "yes"}, ".multimask must be true or false"),
    (
        {"text": ["car"], "points": [[1, 2]]},
        " gives ['points'] with text: text concepts take only "
        "['text', 'boxes', 'box_labels', 'amg', 'outputs', 'tiling'] (each mask is labelled with its "
        "concept; points go to a SAM 1 / SAM 2.1 request without text)",
    ),
    ({"text": []}, ': "text" is empty: name at least one concept, e.g. {"text": ["car"]}'),
    ({"text": ["car", " car"]}, ": concept 'car' is listed twice in \"text\": list it once"),
    (
        {"text": "car", "boxes": [[0, 0, 5, 5]], "box_labels": [1, 0]},
        " has 1 exemplar boxes but 2 box_labels",
    ),
    (
        {"boxes": [[0, 0, 5, 5]], "box_labels": [1]},
        ".box_labels mark exemplar boxes of text concepts: give them with text",
    ),
]


def _upload_cli(prompts: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(SamdropError) as caught:
        parse_prompts(json.dumps(prompts))
    return caught.value.code, caught.value.message.removeprefix("--prompts")


def _run_function(prompts: dict[str, Any], endpoint: FakeEndpoint) -> tuple[str, dict[str, Any]]:
    """One upload of a 96x64 PNG with ``prompts`` through the function: its outcome and completion."""
    store, publisher = FakeStore(), FakePublisher()
    metadata = {"samdrop-prompts": json.dumps(prompts)}
    name = "incoming/cat.png"
    generation = store.put(BUCKET, name, png(), **metadata)
    event = UploadEvent("OBJECT_FINALIZE", BUCKET, name, str(generation), "image/png", metadata=metadata)
    outcome = handle_upload(event, make_deps(store, publisher, endpoint))
    [(_, body, _)] = publisher.messages
    return outcome, body


def _function(prompts: dict[str, Any]) -> tuple[str, str]:
    endpoint = FakeEndpoint()
    outcome, body = _run_function(prompts, endpoint)
    assert outcome == "failed" and endpoint.calls == [], "refused before the endpoint"
    return body["error"]["code"], body["error"]["message"].removeprefix("metadata samdrop-prompts")


def _run_batch(prompts: dict[str, Any], engine: SamEngine) -> tuple[dict[str, Any], TreeStore]:
    """A batch of one 96x64 PNG with ``prompts`` in its prompts.json: listing, then one shard."""
    settings = Settings.from_env({"SAMDROP_BUCKET": BUCKET})
    paths, store = BatchPaths.of(settings, "b1"), TreeStore()
    store.put(BUCKET, "batches/b1/a.png", png(), content_type="image/png")
    store.put(BUCKET, "batches/b1/prompts.json", json.dumps({"a.png": prompts}).encode(), content_type="x")
    marker = store.put(BUCKET, paths.marker, b"", content_type="text/plain")
    plan = plan_batch(paths, marker, store, default_shard_size=8)
    worker = ShardWorker(
        paths=paths, shard=0, settings=settings, store=store, engine=engine, options=plan.options
    )
    [line] = worker.run(plan.shards[0]).lines
    return line, store


def _batch(prompts: dict[str, Any], engine: SamEngine) -> tuple[str, str]:
    line, _ = _run_batch(prompts, engine)
    source = f"gs://{BUCKET}/batches/b1/prompts.json entry 'a.png'"
    return line["error"]["code"], line["error"]["message"].removeprefix(source)


def _predict(prompts: dict[str, Any], routine: SamRoutine) -> dict[str, Any]:
    body = {"instances": [{"gcs_uri": "gs://b/a.png", **prompts}]}
    [prediction] = routine.postprocess(routine.predict(routine.preprocess(body)))["predictions"]
    return dict(prediction)


def _endpoint(prompts: dict[str, Any], routine: SamRoutine) -> tuple[str, str]:
    prediction = _predict(prompts, routine)
    return prediction["error"]["code"], prediction["error"]["message"].removeprefix("instances[0]")


@pytest.fixture
def routine(fast_engine: SamEngine, cache_dir) -> SamRoutine:
    routine = SamRoutine()
    routine.setup(Settings.from_env({}, cache_dir=cache_dir), fast_engine, lambda uri, generation: png())
    return routine


@pytest.mark.parametrize(("prompts", "words"), BAD_PROMPTS)
def test_a_bad_prompt_gets_the_same_words_on_every_path(prompts, words, fast_engine, routine):
    answers = {
        "samdrop upload": _upload_cli(prompts),
        "function": _function(prompts),
        "batch": _batch(prompts, fast_engine),
        "endpoint": _endpoint(prompts, routine),
    }
    assert answers == dict.fromkeys(answers, ("invalid_prompt", words))


def test_unknown_amg_parameters_are_refused_by_upload_function_and_endpoint(routine):
    prompts = {"amg": {"points_per_sid": 8}}
    words = ".amg has unknown parameter(s) ['points_per_sid']"
    for code, message in (_upload_cli(prompts), _function(prompts), _endpoint(prompts, routine)):
        assert code == "invalid_prompt" and message.startswith(words), message


def test_points_without_labels_are_foreground_everywhere(fast_engine, routine):
    prompts = {"points": [[20, 20], [30, 30]]}
    assert parse_prompts(json.dumps(prompts))["labels"] == [1, 1]

    endpoint = FakeEndpoint(width=96, height=64)
    outcome, _ = _run_function(prompts, endpoint)
    [([instance], _)] = endpoint.calls
    assert outcome == "succeeded" and instance["labels"] == [1, 1]

    prediction = _predict(prompts, routine)
    assert "error" not in prediction and prediction["prompts"]["labels"] == [1, 1]

    line, store = _run_batch(prompts, fast_engine)
    assert line["status"] == "succeeded", line
    assert store.json("results/batches/b1/a.png/masks.json")["prompts"]["labels"] == [1, 1]


def test_the_multimask_default_is_decided_once():
    assert multimask_for(0, None) is True and multimask_for(2, None) is False
    assert multimask_for(0, False) is False and multimask_for(3, True) is True


def test_text_concepts_are_checked_and_passed_through_unchanged():
    from samdrop.prompts import check_prompts

    assert check_prompts({"text": " solar panel "}, where="p") == {"text": ["solar panel"]}
    checked = check_prompts(
        {"text": ["car", "tree"], "boxes": [[0, 0, 5, 5], [1, 1, 4, 4]], "box_labels": [1, False]}, where="p"
    )
    assert checked == {
        "text": ["car", "tree"],
        "boxes": [[0, 0, 5, 5], [1, 1, 4, 4]],
        "box_labels": [True, False],
    }
    endpoint = FakeEndpoint(width=96, height=64)
    outcome, _ = _run_function({"text": ["car"]}, endpoint)
    [([instance], _)] = endpoint.calls
    assert outcome == "succeeded" and instance["text"] == ["car"]


@pytest.mark.parametrize(
    ("env", "prompts", "words"),
    [
        ({}, {"text": [f"thing {i}" for i in range(17)]}, r"at most 16 per image \(SAMDROP_MAX_CONCEPTS=16"),
        ({"SAMDROP_MAX_CONCEPTS": "2"}, {"text": ["a", "b", "c"]}, r"SAMDROP_MAX_CONCEPTS=2\)"),
        ({"SAMDROP_MAX_CONCEPT_CHARS": "4"}, {"text": "tiger"}, r"SAMDROP_MAX_CONCEPT_CHARS=4\)"),
    ],
)
def test_concept_budgets_are_settings_named_in_the_refusal(env, prompts, words):
    from samdrop.errors import InvalidPrompt
    from samdrop.prompts import check_budget, check_prompts

    checked = check_prompts(prompts, where="p")
    with pytest.raises(InvalidPrompt, match=words):
        check_budget(checked, Settings.from_env(env))


def test_text_sent_to_a_model_without_text_names_sam3(fast_engine, routine):
    prediction = _predict({"text": ["car"]}, routine)
    assert prediction["error"]["code"] == "invalid_request"
    assert "text concepts need sam3" in prediction["error"]["message"]
    line, _ = _run_batch({"text": ["car"]}, fast_engine)
    assert line["error"]["code"] == "invalid_request" and "need sam3" in line["error"]["message"]
