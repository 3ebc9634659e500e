"""Starting a batch: checks, the one-time claim, the launchers' arguments, machine types."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from functions.batches import BatchStart
from pipeline.config import pipeline_config
from pipeline.listing import read_plan
from pipeline.start import (
    launch_vertex,
    machine_resources,
    start_batch,
    starter_for,
    status_of,
    vertex_parameters,
)
from pipeline.steps import Context, list_step
from samdrop.batches import BatchPaths
from samdrop.errors import ConfigError, TransientError
from samdrop.settings import Settings

from .function_fakes import FakePublisher
from .pipeline_fakes import BUCKET, RESULTS, TreeStore, png

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET})
VERTEX = SETTINGS.replace(
    pipeline_runner="vertex",
    pipeline_template="gs://samdrop-local/pipeline/samdrop_pipeline.yaml",
    pipeline_root="gs://samdrop-local/pipeline-root",
    pipeline_service_account="pipeline@p.iam.gserviceaccount.com",
)


@dataclass
class Launcher:
    calls: list[tuple[str, int]] = field(default_factory=list)
    error: BaseException | None = None

    def __call__(self, settings: Settings, paths: BatchPaths, generation: int) -> str:
        self.calls.append((paths.batch_id, generation))
        if self.error is not None:
            raise self.error
        return "run-1"


def _ready(store: TreeStore, batch: str = "b1", body: bytes = b"", images: int = 2) -> BatchStart:
    for i in range(images):
        store.put(BUCKET, f"batches/{batch}/{i}.png", png(seed=i), content_type="image/png")
    generation = store.put(BUCKET, f"batches/{batch}/_READY", body)
    return BatchStart(batch, BUCKET, str(generation), f"batches/{batch}/")


def test_a_batch_is_claimed_and_launched_once():
    store, publisher, launch = TreeStore(), FakePublisher(), Launcher()
    request = _ready(store)
    args: dict[str, Any] = {"settings": SETTINGS, "store": store, "publisher": publisher, "launch": launch}
    assert start_batch(request, **args) == "batch_started run-1"
    assert start_batch(request, **args) == "batch_already_claimed"
    assert launch.calls == [("b1", int(request.generation))]
    claim = store.json("results/batches/b1/_CLAIMED")
    assert claim["marker_generation"] == request.generation and claim["runner"] == "local"
    assert publisher.messages == []


def test_the_list_step_spreads_a_batch_over_the_parallel_shard_tasks():
    store = TreeStore()
    request = _ready(store, images=200)
    # A task's settings come from the ``config`` parameter: the parallelism must travel in it.
    config = pipeline_config(SETTINGS.replace(pipeline_parallelism=2))
    shards = list_step(Context(Settings.from_env(config), store), "b1", BUCKET, int(request.generation))
    plan = store.json("results/batches/b1/_plan/plan.json")
    assert shards == [0, 1] and (plan["shard_size"], plan["images"]) == (100, 200)


@pytest.mark.parametrize(
    ("body", "images", "code"),
    [
        (b"", 0, "empty_batch"),
        (b"{oops", 1, "invalid_request"),
        (b'{"prompts": "nope.json"}', 1, "not_found"),
        (b"[" * 3000 + b"]" * 3000, 1, "invalid_request"),  # refused, not a RecursionError retried
    ],
)
def test_bad_batches_get_a_failed_completion_and_no_claim(body, images, code):
    store, publisher, launch = TreeStore(), FakePublisher(), Launcher()
    outcome = start_batch(
        _ready(store, body=body, images=images),
        settings=SETTINGS,
        store=store,
        publisher=publisher,
        launch=launch,
    )
    assert outcome == "batch_rejected" and launch.calls == []
    ((topic, message, attributes),) = publisher.messages
    assert (
        topic == "samdrop-completions" and message["status"] == "failed" and message["error"]["code"] == code
    )
    assert attributes["batch_id"] == "b1"
    assert "results/batches/b1/_CLAIMED" not in store.names()


def test_a_prompts_file_nested_thousands_deep_rejects_the_batch_once():
    store, publisher, launch = TreeStore(), FakePublisher(), Launcher()
    store.put(BUCKET, "batches/b1/prompts.json", b'{"0.png": ' + b"[" * 3000 + b"]" * 3000 + b"}")
    request = _ready(store, body=b'{"prompts": "prompts.json"}')
    outcome = start_batch(request, settings=SETTINGS, store=store, publisher=publisher, launch=launch)
    assert outcome == "batch_rejected" and launch.calls == []
    ((_, message, _),) = publisher.messages
    assert (
        message["error"]["code"] == "invalid_request"
        and "exceeds SAMDROP_MAX_JSON_DEPTH=32" in message["error"]["message"]
    )


def test_a_failed_launch_releases_the_claim_for_redelivery():
    store, publisher = TreeStore(), FakePublisher()
    request = _ready(store)
    launch = Launcher(error=TransientError("Vertex AI answered 503"))
    with pytest.raises(TransientError):
        start_batch(request, settings=SETTINGS, store=store, publisher=publisher, launch=launch)
    assert "results/batches/b1/_CLAIMED" not in store.names()
    launch.error = None
    assert start_batch(
        request, settings=SETTINGS, store=store, publisher=publisher, launch=launch
    ).startswith("batch_started")


@pytest.mark.parametrize(
    ("machine", "expected"),
    [("g2-standard-8", (8.0, 32.0)), ("n1-standard-8", (8.0, 30.0)), ("n1-highmem-4", (4.0, 26.0)),
     ("a2-highgpu-1g", (12.0, 85.0))],
)  # fmt: skip
def test_machine_types_become_cpu_and_memory_limits(machine, expected):
    assert machine_resources(machine) == expected


def test_unknown_machine_types_and_missing_vertex_settings_are_config_errors():
    with pytest.raises(ConfigError, match="SAMDROP_PIPELINE_MACHINE_TYPE"):
        machine_resources("big-box")
    with pytest.raises(ConfigError) as caught:
        starter_for(SETTINGS.replace(pipeline_runner="vertex"))
    assert (
        "SAMDROP_PIPELINE_TEMPLATE" in caught.value.message
        and "SAMDROP_PIPELINE_ROOT" in caught.value.message
    )
    assert callable(starter_for(VERTEX)) and callable(starter_for(SETTINGS))


class FakeAiplatform:
    """Records what ``launch_vertex`` hands the SDK's ``PipelineJob``."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        owner = self

        class PipelineJob:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs
                self.resource_name = f"projects/p/locations/r/pipelineJobs/{kwargs['job_id']}"

            def submit(self, service_account: str | None = None) -> None:
                owner.jobs.append({**self.kwargs, "service_account": service_account})

        self.PipelineJob = PipelineJob


def test_vertex_launch_submits_the_template_with_batch_parameters():
    sdk = FakeAiplatform()
    paths = BatchPaths.of(VERTEX, "Run_2026.11")
    outcome = launch_vertex(VERTEX, paths, 1234, aiplatform=sdk)
    (job,) = sdk.jobs
    assert outcome == "vertex projects/p/locations/r/pipelineJobs/samdrop-run-2026-11-1234"
    assert job["template_path"] == VERTEX.pipeline_template and job["pipeline_root"] == VERTEX.pipeline_root
    assert job["service_account"] == VERTEX.pipeline_service_account and job["enable_caching"] is False
    params = job["parameter_values"]
    assert params == vertex_parameters(VERTEX, paths, 1234)
    assert (params["batch_id"], params["marker_generation"], params["accelerator_type"]) == (
        "Run_2026.11",
        "1234",
        "NVIDIA_L4",
    )
    assert (params["cpu_limit"], params["memory_limit"], params["accelerator_count"]) == ("8", "32G", 1)
    assert params["config"]["SAMDROP_BUCKET"] == BUCKET and "SAMDROP_STATE_DIR" not in params["config"]


def test_pipeline_config_rebuilds_the_component_settings():
    settings = SETTINGS.replace(results_bucket="samdrop-out", batch_size=2, model_type="tiny")
    rebuilt = Settings.from_env(pipeline_config(settings))
    assert (rebuilt.output_bucket, rebuilt.batch_size, rebuilt.bucket) == ("samdrop-out", 2, BUCKET)


def test_status_follows_the_files_a_batch_writes():
    store, publisher = TreeStore(), FakePublisher()
    request = _ready(store)
    paths = BatchPaths.of(SETTINGS, "b1")
    assert status_of(paths, store, store)["state"] == "not started"
    start_batch(request, settings=SETTINGS, store=store, publisher=publisher, launch=Launcher())
    # The function plans the batch once, when it claims it; the pipeline reuses that plan.
    started = status_of(paths, store, store)
    assert started["state"] == "running" and started["shards_done"] == 0
    plan = replace(read_plan(paths, store), images=2, shards=1)
    store.put(RESULTS, paths.plan, json.dumps(plan.to_json()).encode())
    store.put(RESULTS, "results/batches/b1/0.png/masks.json", b"{}")
    running = status_of(paths, store, store)
    assert (running["state"], running["images"], running["shards_done"], running["images_done"]) == (
        "running",
        2,
        0,
        1,
    )
    store.put(RESULTS, paths.completion, json.dumps({"status": "succeeded"}).encode())
    assert status_of(paths, store, store)["state"] == "succeeded"
