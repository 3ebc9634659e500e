"""The main job through real parts: fake-gcs-server notifies the Pub/Sub emulator, which pushes to
the real function under functions-framework, which calls the real CPR predictor server (``tiny``).

The predictor runs outside the stack's own process list so a test can take the endpoint down and
bring it back.
"""

from __future__ import annotations

import collections
import io
import json
import os
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.cloud import pubsub_v1, storage
from google.cloud.storage import Blob, Bucket
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deploy import processes
from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from pipeline.listing import BatchOptions, PlanItem
from pipeline.shard import ShardWorker
from predictor.engine import SamEngine
from samdrop.batches import BatchPaths
from samdrop.settings import Settings
from samdrop.storage import GcsStore
from tests.helpers import json_shape
from tests.schema_check import check_document

from .local_stack_support import Completions, key_of, stack_settings, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "127.0.0.1"


@dataclass
class EventStack:
    stack: LocalStack
    settings: Settings
    storage: storage.Client
    publisher: pubsub_v1.PublisherClient
    subscriber: pubsub_v1.SubscriberClient
    predictor_log: Path
    completions: Completions
    predictor: processes.ProcessRecord | None = None

    @property
    def bucket(self) -> Bucket:
        return self.storage.bucket(self.settings.bucket)

    def start_predictor(self) -> None:
        port = self.settings.predictor_port
        env = {**os.environ, **self.settings.to_env(), **self.stack.client_env(), "PYTHONUNBUFFERED": "1"}
        proc, record = processes.start(
            "predictor",
            [sys.executable, "-m", "deploy.command", "predictor", "serve", "--port", str(port)],
            env=env,
            log=self.predictor_log,
            port=port,
            health_url=f"http://{HOST}:{port}/health",
        )
        self.predictor = record
        processes.wait_ready(proc, record, timeout_s=180)

    def stop_predictor(self) -> None:
        if self.predictor is not None:
            processes.stop([self.predictor])
            self.predictor = None

    def upload(self, name: str, data: bytes, prompts: dict[str, Any] | None = None) -> Blob:
        blob = self.bucket.blob(name)
        if prompts is not None:
            blob.metadata = {"samdrop-prompts": json.dumps(prompts)}
        blob.upload_from_string(data, content_type="image/png" if name.endswith(".png") else "image/jpeg")
        return blob

    def await_completion(self, blob: Blob, timeout_s: float = 90, recorded: bool = True) -> dict[str, Any]:
        """The completion message for ``blob``, once the function has finished with it.

        The function publishes first and records the message in ``completion.json`` just after
        (design.md, idempotency): with ``recorded`` this also waits for that record, so a test that
        lists the results folder sees the function's last write. ``recorded=False`` is for inputs
        whose results cannot be written at all (names over Cloud Storage's limit)."""
        message = self.completions.first(key_of(blob), timeout_s=timeout_s)
        if recorded:
            record = f"completion.json for {blob.name}"
            until(lambda: "completion.json" in self.results(blob.name), 30, record)
        return message

    def function_log(self, object_name: str) -> list[dict[str, Any]]:
        """The function's structured log lines about ``object_name``."""
        lines = (self.stack.state_dir / "logs" / "function.log").read_text(errors="replace").splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if str(e.get("object", "")).endswith("/" + object_name)]

    def results(self, object_name: str) -> dict[str, Blob]:
        folder = f"{self.settings.results_prefix}{object_name}/"
        return {
            b.name.removeprefix(folder): b
            for b in self.storage.list_blobs(self.settings.output_bucket, prefix=folder)
        }


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStack]:
    state_dir = tmp_path_factory.mktemp("samdrop-events")
    ports = stack_settings(state_dir)
    settings = ports.replace(
        endpoint=f"http://{HOST}:{ports.predictor_port}",
        model_type="tiny",  # SAM's own code paths; the classic backend has tests/integration/test_geometry.py
        amg_points_per_side=4,  # SAM's 32x32 grid takes minutes per image with tiny on this CPU
        max_delivery_attempts=100,  # the endpoint-down test must outlast the predictor's restart
        cache_dir=state_dir / "cache",
    )
    stack = LocalStack(settings, predictor=False)
    stack.up()
    env = stack.client_env()
    client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    completions = Completions.of(subscriber, settings)
    running = EventStack(
        stack, settings, client, publisher, subscriber, state_dir / "logs" / "predictor.log", completions
    )
    try:
        running.start_predictor()
        yield running
    finally:
        running.stop_predictor()
        subscriber.close()
        publisher.transport.close()
        stack.down()


def photo(size: tuple[int, int] = (160, 120), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A small image with a few flat shapes (what the tiny model sees does not matter)."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), 40, np.uint8)
    pixels[20:80, 30:90] = rng.integers(0, 255, 3)
    pixels[60:110, 100:150] = rng.integers(0, 255, 3)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def unique(name: str) -> str:
    return f"incoming/{uuid.uuid4().hex[:8]}/{name}"


def test_upload_with_prompts_gets_masks_metadata_overlay_and_a_success(events):
    prompts = {"boxes": [[20, 10, 100, 90], [90, 50, 155, 115]], "points": [[60, 50]], "labels": [1]}
    name = unique("shapes.png")
    blob = events.upload(name, photo(), prompts)

    message = events.await_completion(blob)

    assert message["status"] == "succeeded" and message["error"] is None
    assert message["kind"] == "image" and message["model"]["type"] == "tiny"
    assert message["_attributes"] == {"schema_version": "1", "kind": "image", "status": "succeeded"}
    outputs = events.results(name)
    pngs = sorted(n for n in outputs if n.startswith("mask_"))
    assert len(pngs) == message["mask_count"] >= 2
    results = events.settings.output_bucket
    assert message["outputs"]["masks"] == [f"gs://{results}/{outputs[n].name}" for n in pngs]
    for png in pngs:
        mask = Image.open(io.BytesIO(outputs[png].download_as_bytes()))
        assert mask.size == (160, 120) and mask.mode in ("1", "L")
    doc = check_document("masks", json.loads(outputs["masks.json"].download_as_bytes()))
    assert doc["generation"] == str(blob.generation) and doc["mode"] == "prompted"
    assert doc["prompts"]["boxes"] == prompts["boxes"] and doc["prompts"]["points"] == prompts["points"]
    assert {m["prompt_index"] for m in doc["masks"]} >= {0, 1}
    assert "RANDOM WEIGHTS" in doc["note"]
    overlay = Image.open(io.BytesIO(outputs["overlay.jpg"].download_as_bytes()))
    assert overlay.format == "JPEG" and overlay.size == (160, 120)
    assert "error.json" not in outputs


def test_no_prompts_means_automatic_masks_with_the_servers_grid(events):
    name = unique("auto.jpg")
    blob = events.upload(name, photo(fmt="JPEG", seed=1))

    message = events.await_completion(blob)

    assert message["status"] == "succeeded"
    doc = check_document("masks", json.loads(events.results(name)["masks.json"].download_as_bytes()))
    assert doc["mode"] == "automatic" and doc["prompts"] is None
    assert doc["mask_count"] == message["mask_count"] == len(doc["masks"])


def test_corrupt_image_gets_error_json_and_a_failure_then_the_next_image_works(events):
    bad = events.upload(unique("broken.png"), photo()[:60])  # a truncated PNG
    failed = events.await_completion(bad)

    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_image"
    assert failed["_attributes"]["status"] == "failed"
    outputs = events.results(bad.name)
    assert set(outputs) == {"error.json", "completion.json"}
    error = check_document("error", json.loads(outputs["error.json"].download_as_bytes()))
    assert error["code"] == "invalid_image" and error["generation"] == str(bad.generation)
    assert error["input"] == f"gs://{events.settings.bucket}/{bad.name}"
    bad.reload()
    assert bad.size == 60  # the input is left as it was

    good = events.upload(unique("after.png"), photo(seed=2), {"boxes": [[10, 10, 60, 60]]})
    assert events.await_completion(good)["status"] == "succeeded"


def test_bad_prompts_are_a_recorded_failure_not_a_retry(events):
    blob = events.upload(unique("outside.png"), photo(), {"boxes": [[10, 10, 900, 60]]})
    message = events.await_completion(blob)
    assert message["status"] == "failed" and message["error"]["code"] == "invalid_prompt"
    assert "900" in message["error"]["message"]


def test_duplicate_delivery_gives_one_output_set_and_one_success(events):
    name = unique("twice.png")
    blob = events.upload(name, photo(seed=3), {"boxes": [[10, 10, 80, 80]]})
    events.await_completion(blob)
    before = {n: b.generation for n, b in events.results(name).items()}

    blob.reload()
    resource = {"kind": "storage#object", "bucket": blob.bucket.name, "name": name,
                "generation": str(blob.generation), "metadata": blob.metadata,
                "contentType": blob.content_type, "size": str(blob.size)}  # fmt: skip
    topic = events.publisher.topic_path(events.settings.project, events.settings.uploads_topic)
    events.publisher.publish(
        topic,
        json.dumps(resource).encode(),
        eventType="OBJECT_FINALIZE",
        bucketId=blob.bucket.name,
        objectId=name,
        objectGeneration=str(blob.generation),
        payloadFormat="JSON_API_V1",
        notificationConfig="projects/_/buckets/samdrop/notificationConfigs/1",
    ).result(timeout=30)

    until(lambda: any(e["outcome"] == "duplicate" for e in events.function_log(name)), 60, "duplicate log")
    events.completions.exactly(key_of(blob), expect=1)  # the redelivery published nothing
    assert {n: b.generation for n, b in events.results(name).items()} == before


def test_endpoint_down_redelivers_and_nothing_is_lost(events):
    events.stop_predictor()
    try:
        name = unique("outage.png")
        blob = events.upload(name, photo(seed=4), {"boxes": [[10, 10, 80, 80]]})
        retries = until(
            lambda: [e for e in events.function_log(name) if e["outcome"] == "retry"][1:],
            60,
            "two redeliveries while the endpoint is down",
        )
        assert "redeliver" in retries[0]["message"], retries[0]
        events.completions.pull()
        assert events.completions.about(key_of(blob)) == [] and events.results(name) == {}
    finally:
        events.start_predictor()

    message = events.await_completion(blob, timeout_s=120)
    assert message["status"] == "succeeded"
    events.completions.exactly(key_of(blob), expect=1)


def test_upload_under_results_triggers_nothing(events):
    name = f"{events.settings.results_prefix}incoming/{uuid.uuid4().hex[:8]}/looks-like-input.png"
    blob = events.upload(name, photo())

    logged = until(lambda: events.function_log(name), 60, "the function's log line")
    assert [e["outcome"] for e in logged] == ["ignored"]
    events.completions.exactly(key_of(blob), expect=0)
    assert events.results(name) == {}


def test_single_upload_and_batch_shard_write_the_same_masks_json(events):
    """One output path: the function (through the predictor server) and a pipeline shard (the engine
    in process) write masks.json with the same keys, JSON types and conventions for one image."""
    prompts = {"boxes": [[20, 10, 100, 90]], "points": [[60, 50]], "labels": [1]}
    name = unique("same.png")
    blob = events.upload(name, photo(seed=3), prompts)
    assert events.await_completion(blob)["status"] == "succeeded"
    single = check_document("masks", json.loads(events.results(name)["masks.json"].download_as_bytes()))

    batch_name = f"{events.settings.batches_prefix}same-{uuid.uuid4().hex[:6]}/same.png"
    batch_blob = events.upload(batch_name, photo(seed=3))
    paths = BatchPaths.of(events.settings, batch_name.split("/")[1])
    worker = ShardWorker(
        paths=paths,
        shard=0,
        settings=events.settings,
        store=GcsStore(events.storage),
        engine=SamEngine.from_settings(events.settings),
        options=BatchOptions(),
    )
    (line,) = worker.run([PlanItem(batch_name, batch_blob.generation, prompts)]).lines
    assert line["status"] == "succeeded", line["error"]
    batch = check_document("masks", json.loads(events.results(batch_name)["masks.json"].download_as_bytes()))

    assert single["batch_id"] is None and batch["batch_id"] == paths.batch_id
    for doc in (single, batch):
        for key in ("batch_id", "timings_ms", "predictor_timings_ms"):  # each path's own stages
            doc.pop(key)
    assert json_shape(single) == json_shape(batch)
    assert single["mode"] == batch["mode"] == "prompted"
    assert single["prompts"] == batch["prompts"]
    assert [m["box"] for m in single["masks"]] == [m["box"] for m in batch["masks"]]
    assert all(isinstance(v, int) for m in batch["masks"] for v in m["box"])


def _predictor_images(events: EventStack) -> collections.Counter[tuple[str, str]]:
    """``samdrop_predictor_images_total`` from the predictor's /metrics, by (outcome, code)."""
    url = f"http://{HOST}:{events.settings.predictor_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "samdrop_predictor_images_total":
                counts[(sample.labels["outcome"], sample.labels["code"])] += int(sample.value)
    return counts


def test_metrics_and_log_lines_count_a_burst_exactly_as_its_completions(events):
    before = _predictor_images(events)
    boxes = [{"boxes": [[10, 10, 60 + i, 60]]} for i in range(5)] + [{"boxes": [[10, 10, 900, 60]]}]
    blobs = [events.upload(unique(f"burst{i}.png"), photo(seed=10 + i), p) for i, p in enumerate(boxes)]
    messages = events.completions.exactly(*(key_of(b) for b in blobs), expect=len(blobs))

    by_outcome = collections.Counter(
        (m["status"], m["error"]["code"] if m["error"] else "") for m in messages
    )
    assert by_outcome == {("succeeded", ""): 5, ("failed", "invalid_prompt"): 1}
    assert _predictor_images(events) - before == by_outcome

    # The function's one line per image, as the log-based metric counts them (written after the
    # completion is published: wait for the last of them).
    def logged() -> collections.Counter[tuple[str, str]]:
        lines = [line for blob in blobs for line in events.function_log(blob.name)]
        finished = [line for line in lines if line["outcome"] in ("succeeded", "failed")]
        return collections.Counter((line["outcome"], line.get("error_code", "")) for line in finished)

    until(lambda: sum(logged().values()) == len(blobs), 30, "a log line per image")
    assert logged() == by_outcome
