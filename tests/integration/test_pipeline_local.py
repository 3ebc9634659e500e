"""The batch pipeline end to end on the local stack: real emulators, the real function, kfp.local.

Uploading ``batches/<id>/_READY`` reaches the function through the GCS notification and the Pub/Sub
push; the function claims the batch and starts the detached kfp.local worker; the pipeline lists,
shards, segments with the tiny model, reports and publishes one completion.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kfp.dsl import PipelineTaskFinalStatus
from PIL import Image
from pycocotools.coco import COCO

from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from pipeline import components
from pipeline.exports import yolo_label_name
from pipeline.listing import BatchOptions, build_plan, parse_prompts_file
from pipeline.shard import ShardWorker
from predictor.engine import SamEngine
from samdrop.batches import BatchPaths
from samdrop.models import amg_used
from samdrop.prompts import check_amg
from samdrop.storage import GcsStore
from tests.schema_check import check_document, check_file

from .local_stack_support import Completions, Key, stack_settings, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARD_SIZE = 8
GOOD, CORRUPT = 28, 2
AMG = {"points_per_side": 2}
RUN_TIMEOUT_S = 240
RECORDS = ("/masks.json", "/error.json")


class Stack:
    def __init__(self, stack: LocalStack, settings: Any, cache_dir: Path) -> None:
        self.stack, self.settings, self.cache_dir = stack, settings, cache_dir
        env = stack.client_env()
        self.env = env
        self.client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
        self.bucket = self.client.bucket(settings.bucket)
        self.results = self.client.bucket(settings.output_bucket)
        self.store = GcsStore(self.client)
        _, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
        self.completions = Completions.of(subscriber, settings)

    def batch(self, batch_id: str, bucket: str | None = None) -> Key:
        """What batch ``batch_id``'s completion names (its input folder)."""
        return BatchPaths.of(self.settings, batch_id, bucket).input_uri, None

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        blob = self.bucket.blob(name)
        blob.upload_from_string(data, content_type=content_type, timeout=30)
        return int(blob.generation)

    def names(self, prefix: str) -> dict[str, Any]:
        blobs = self.client.list_blobs(self.settings.output_bucket, prefix=prefix)
        return {blob.name: blob for blob in blobs}

    def json(self, name: str) -> Any:
        """An output object's JSON, checked against its schema when it is a published document."""
        return check_file(name, json.loads(self.results.blob(name).download_as_bytes()))

    def function_log(self) -> str:
        return (self.settings.state_dir / "logs" / "function.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def pipeline_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("samdrop-pipeline")
    cache_dir = tmp_path_factory.mktemp("samdrop-model-cache")
    settings = stack_settings(
        state_dir,
        pipeline_runner="local",
        model_type="tiny",
        shard_size=SHARD_SIZE,
        cache_dir=cache_dir,
        device="cpu",
        batch_size=4,
    )
    stack = LocalStack(
        settings, predictor=False, function=True, base_env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    stack.up()
    try:
        yield Stack(stack, settings, cache_dir)
    finally:
        stack.down()


def _image(seed: int) -> tuple[bytes, str, str]:
    """A small picture (64-160 px) with a few shapes, alternating PNG and JPEG."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(64, 120)), int(rng.integers(80, 160))
    pixels = np.full((height, width, 3), rng.integers(0, 255, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = int(rng.integers(0, height - 20)), int(rng.integers(0, width - 20))
        pixels[y : y + 20, x : x + 20] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    fmt, ext, ctype = ("PNG", "png", "image/png") if seed % 2 else ("JPEG", "jpg", "image/jpeg")
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue(), ext, ctype


def _upload_batch(stack: Stack, batch_id: str) -> dict[str, int]:
    """28 good images (26 prompted, 2 automatic) and 2 corrupt ones; returns generation by file."""
    files: dict[str, int] = {}
    prompts = {}
    for i in range(GOOD):
        data, ext, ctype = _image(i)
        name = f"img_{i:02d}.{ext}"
        files[name] = stack.put(f"batches/{batch_id}/{name}", data, ctype)
        if i not in (5, 17):
            prompts[name] = {"points": [[20, 20], [40, 30]], "labels": [1, 0]}
    files["broken_a.jpg"] = stack.put(f"batches/{batch_id}/broken_a.jpg", _image(99)[0][:120], "image/jpeg")
    files["broken_b.png"] = stack.put(
        f"batches/{batch_id}/broken_b.png", b"\x89PNG\r\n\x1a\n garbage", "image/png"
    )
    stack.put(f"batches/{batch_id}/prompts.json", json.dumps(prompts).encode(), "application/json")
    return files


def _pre_run_first_shard(stack: Stack, batch_id: str) -> list[str]:
    """Segment the first shard in this process, as an interrupted earlier run would have."""
    settings = stack.settings
    paths = BatchPaths.of(settings, batch_id)
    objects = stack.store.list_tree(settings.bucket, paths.input_folder)
    prompts = parse_prompts_file(
        stack.bucket.blob(paths.input_folder + "prompts.json").download_as_bytes(), where="p"
    )
    options = BatchOptions(shard_size=SHARD_SIZE, amg=AMG)
    plan = build_plan(paths, 0, objects, options, prompts)
    engine = SamEngine.from_settings(settings)
    worker = ShardWorker(
        paths=paths, shard=0, settings=settings, store=stack.store, engine=engine, options=options
    )
    result = worker.run(plan.shards[0])  # sorted by name: both broken files, then img_00 … img_05
    statuses = {line["file"]: line["status"] for line in result.lines}
    assert statuses == {name: "failed" if name.startswith("broken") else "succeeded" for name in statuses}
    return sorted(statuses)


def _check_exports(stack: Stack, folder: str, manifest: list[dict], message: dict, tmp_path: Path) -> None:
    """annotations.coco.json loads with pycocotools: one image per succeeded input, one annotation per
    mask of the manifest, each decoding to its image's size; YOLO labels for every such image."""
    coco_file = tmp_path / "annotations.coco.json"
    coco_file.write_bytes(stack.results.blob(folder + "annotations.coco.json").download_as_bytes())
    coco = COCO(str(coco_file))
    succeeded = {line["file"]: line for line in manifest if line["status"] == "succeeded"}
    assert sorted(image["file_name"] for image in coco.dataset["images"]) == sorted(succeeded)
    assert len(coco.getAnnIds()) == sum(line["mask_count"] for line in succeeded.values())
    for image in coco.dataset["images"]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == succeeded[image["file_name"]]["mask_count"]
        for ann in anns:
            assert coco.annToMask(ann).shape == (image["height"], image["width"])
    assert message["outputs"]["coco"] == f"gs://{stack.settings.output_bucket}/{folder}annotations.coco.json"
    assert message["outputs"]["yolo"] == f"gs://{stack.settings.output_bucket}/{folder}yolo/data.yaml"
    labels = set(stack.names(folder + "yolo/"))
    expected = {folder + yolo_label_name(file) for file in succeeded} | {folder + "yolo/data.yaml"}
    assert labels == expected


def test_ready_runs_the_pipeline_once_and_resumes(pipeline_stack: Stack, tmp_path: Path):
    stack, batch = pipeline_stack, "bulk-a"
    files = _upload_batch(stack, batch)
    pre_run = _pre_run_first_shard(stack, batch)
    folder = f"results/batches/{batch}/"
    before = {n: blob.generation for n, blob in stack.names(folder).items() if n.endswith(RECORDS)}
    assert len(before) == SHARD_SIZE

    started = time.monotonic()
    ready = {"amg": AMG, "outputs": ["yolo"]}
    stack.put(f"batches/{batch}/_READY", json.dumps(ready).encode(), "application/json")
    message = stack.completions.first(stack.batch(batch), timeout_s=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started

    assert message["status"] == "partial", message
    assert (message["images"], message["succeeded"], message["failed"]) == (30, 28, 2)
    assert message["input"] == f"gs://{stack.settings.bucket}/batches/{batch}/"
    outputs = stack.names(folder)
    masks = sorted(n for n in outputs if n.endswith("/masks.json"))
    errors = sorted(n for n in outputs if n.endswith("/error.json"))
    assert len(masks) == GOOD and len(errors) == CORRUPT
    assert [stack.json(n)["code"] for n in errors] == ["invalid_image", "invalid_image"]
    assert {stack.json(n)["generation"] for n in errors} == {
        str(files["broken_a.jpg"]),
        str(files["broken_b.png"]),
    }
    # The pre-run shard's records were kept, not recomputed.
    after = {name: outputs[name].generation for name in before}
    assert after == before

    manifest = [
        check_document("manifest-line", json.loads(line))
        for line in stack.results.blob(folder + "manifest.jsonl").download_as_text().splitlines()
    ]
    assert len(manifest) == 30
    assert sorted(line["file"] for line in manifest) == sorted(files)
    resumed = {line["file"] for line in manifest if line["resumed"]}
    assert resumed == set(pre_run)
    by_file = {line["file"]: line for line in manifest}
    doc = stack.json(f"{folder}img_05.png/masks.json")  # automatic masks (no prompts entry)
    assert doc["mode"] == "automatic" and doc["batch_id"] == batch
    # the parameters used, as the predictor records them: pred_iou_thresh left out is tiny's 0.88
    assert doc["amg"] == amg_used(check_amg(AMG), "tiny") and doc["amg"]["pred_iou_thresh"] == 0.88
    assert doc["mask_count"] == by_file["img_05.png"]["mask_count"]
    prompted = stack.json(f"{folder}img_02.jpg/masks.json")
    assert prompted["mode"] == "prompted" and prompted["mask_count"] == 3  # multimask for a points prompt
    assert all(f"{folder}img_02.jpg/mask_{i:03d}.png" in outputs for i in range(3))
    assert f"{folder}img_02.jpg/overlay.jpg" in outputs

    for name in ("report.md", "report.html", "throughput.png", "time_per_image.png", "masks_per_image.png"):
        assert folder + name in outputs, name
    for plot in ("throughput.png", "time_per_image.png", "masks_per_image.png"):
        with Image.open(io.BytesIO(outputs[folder + plot].download_as_bytes())) as image:
            assert image.format == "PNG" and image.size[0] > 100
    report = outputs[folder + "report.md"].download_as_text()
    assert "partial" in report and "img_02.jpg/overlay.jpg" in report and "random weights" in report
    assert "data:image/jpeg;base64," in outputs[folder + "report.html"].download_as_text()
    summary = stack.json(folder + "summary.json")
    assert summary["resumed"] == SHARD_SIZE and summary["shards"] == 4
    _check_exports(stack, folder, manifest, message, tmp_path)
    print(f"pipeline run for 30 images took {elapsed:.1f}s")

    # A second _READY upload finds the claim: nothing starts, nothing is published again.
    # completion.json is written just after the message is published: wait for it, not for the listing.
    record = until(lambda: stack.names(folder).get(folder + "completion.json"), 30, "completion.json")
    completion = record.generation
    stack.put(f"batches/{batch}/_READY", b"", "application/json")
    deadline = time.monotonic() + 20
    while "batch_already_claimed" not in stack.function_log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "batch_already_claimed" in stack.function_log()
    stack.completions.exactly(stack.batch(batch), expect=1)
    assert stack.names(folder + "completion.json")[folder + "completion.json"].generation == completion
    runs = list((stack.settings.state_dir / "pipelines" / "runs").iterdir())
    assert len(runs) == 1, runs

    # samdrop batch status reads the finished batch back: for scripts, and for people.
    status = _samdrop(stack, "batch", "status", batch, "--json")
    assert status.returncode == 3, status.stderr  # partial (samdrop/commandline.py ExitStatus)
    body = json.loads(status.stdout)
    assert body["state"] == "partial" and body["images"] == 30 and body["images_done"] == 30
    assert body["images_failed"] == CORRUPT and body["elapsed_s"] > 0
    readable = _samdrop(stack, "batch", "status", batch).stdout
    assert f"batch {batch}: partial" in readable and "28 succeeded, 2 failed" in readable
    assert "report.html" in readable and "4/4 finished" in readable

    # samdrop batch run re-runs the claimed batch here: every image is taken as done, nothing is
    # recomputed or republished.
    records = {n: b.generation for n, b in stack.names(folder).items() if n.endswith(RECORDS)}
    rerun = _samdrop(stack, "batch", "run", batch)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["status"] == "partial"
    assert {n: b.generation for n, b in stack.names(folder).items() if n.endswith(RECORDS)} == records
    assert stack.json(folder + "summary.json")["resumed"] == 30
    stack.completions.exactly(stack.batch(batch), expect=1)


def test_bad_batches_fail_without_starting_a_run(pipeline_stack: Stack, tmp_path: Path):
    stack = pipeline_stack
    stack.put("batches/empty-one/_READY", b"")
    data, ext, ctype = _image(1)
    stack.put(f"batches/bad-ready/a.{ext}", data, ctype)
    stack.put("batches/bad-ready/_READY", b"{not json")
    # Wrong options from the CLI are refused before anything is uploaded (the one prompt validator)...
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / f"b.{ext}").write_bytes(data)
    zero = '{"points_per_side": 0}'
    upload = _samdrop(stack, "batch", "start", str(folder), "--id", "bad-amg-cli", "--amg", zero)
    assert upload.returncode == 2 and "points_per_side must be within 1..128" in upload.stderr, upload
    assert list(stack.client.list_blobs(stack.settings.bucket, prefix="batches/bad-amg-cli/")) == []
    # ... and a marker written by other means with the same options is refused by the starter.
    stack.put(f"batches/bad-amg/b.{ext}", data, ctype)
    stack.put("batches/bad-amg/_READY", json.dumps({"amg": {"points_per_side": 0}}).encode())

    empty = stack.completions.first(stack.batch("empty-one"), timeout_s=60)
    assert empty["status"] == "failed" and empty["error"]["code"] == "empty_batch"
    bad = stack.completions.first(stack.batch("bad-ready"), timeout_s=60)
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_request"
    assert "not valid JSON" in bad["error"]["message"]
    amg = stack.completions.first(stack.batch("bad-amg"), timeout_s=60)
    assert amg["status"] == "failed" and "points_per_side" in amg["error"]["message"]
    claims = [n for n in stack.names("results/batches/") if n.endswith("/_CLAIMED")]
    assert not [c for c in claims if any(b in c for b in ("empty-one", "bad-ready", "bad-amg"))]
    # Inputs are untouched.
    assert stack.bucket.blob(f"batches/bad-ready/a.{ext}").download_as_bytes() == data


def test_components_through_python_func(pipeline_stack: Stack, monkeypatch: pytest.MonkeyPatch):
    """list_images and publish called as plain Python, against the emulators."""
    stack, batch = pipeline_stack, "direct-1"
    for key in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        monkeypatch.setenv(key, stack.env[key])
    # A bucket without notifications: the function never hears of this batch.
    bucket = stack.client.create_bucket("samdrop-direct")
    config = {
        "SAMDROP_BUCKET": bucket.name,
        "SAMDROP_RESULTS_BUCKET": bucket.name,  # outputs beside the inputs: a supported layout too
        "SAMDROP_PROJECT": stack.settings.project,
        "SAMDROP_SHARD_SIZE": "2",
        "SAMDROP_COMPILE": "off",
    }
    for i in range(5):
        data, ext, ctype = _image(i)
        bucket.blob(f"batches/{batch}/p{i}.{ext}").upload_from_string(data, content_type=ctype)
    marker = bucket.blob(f"batches/{batch}/_READY")
    marker.upload_from_string(b"", if_generation_match=0)

    shards = components.default_components().list_images.python_func(
        batch_id=batch, bucket=bucket.name, marker_generation=str(marker.generation), config=config
    )
    assert shards == [0, 1, 2]
    plan_blob = bucket.get_blob(f"results/batches/{batch}/_plan/plan.json")
    plan = json.loads(plan_blob.download_as_bytes())
    assert plan["images"] == 5 and plan["marker_generation"] == str(marker.generation)
    again = components.default_components().list_images.python_func(
        batch_id=batch, bucket=bucket.name, marker_generation=str(marker.generation), config=config
    )
    assert again == shards  # the plan of this marker generation is reused, not rewritten
    assert bucket.get_blob(plan_blob.name).generation == plan_blob.generation

    status = PipelineTaskFinalStatus(
        state="FAILED",
        pipeline_job_resource_name="local",
        pipeline_task_name="exit-handler-1",
        error_code=1,
        error_message="shard task ran out of memory",
    )
    body = components.default_components().publish.python_func(
        batch_id=batch,
        bucket=bucket.name,
        marker_generation=str(marker.generation),
        config=config,
        status=status,
    )
    assert body["status"] == "failed" and body["error"]["code"] == "pipeline_failed"
    assert "out of memory" in body["error"]["message"]
    message = stack.completions.first(stack.batch(batch, bucket.name), timeout_s=30)
    assert message["error"] == body["error"]
    # Published once: a second call finds completion.json and publishes nothing.
    components.default_components().publish.python_func(
        batch_id=batch,
        bucket=bucket.name,
        marker_generation=str(marker.generation),
        config=config,
        status=status,
    )
    stack.completions.exactly(stack.batch(batch, bucket.name), expect=1)


def _samdrop(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.settings.to_env(), **stack.env}
    return subprocess.run(
        [sys.executable, "-m", "deploy.command", *args], env=env, capture_output=True, text=True, timeout=120
    )
