"""A batch with one batch-wide SAM 3 concept through the local stack: ``_READY`` ``{"text": ["ellipse"]}``
reaches the function, kfp.local runs the pipeline with the tiny random SAM 3 of tests/sam3_models.py
(``SAMDROP_MODEL_TYPE=sam3``, ``SAMDROP_CHECKPOINT`` its ``save_pretrained`` folder), and the batch's
COCO file has the concept as its one category."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from samdrop.batches import BatchPaths
from tests.sam3_models import write_tiny_sam3
from tests.schema_check import check_document

from .local_stack_support import Completions, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 240
CONCEPT = "ellipse"


@pytest.fixture(scope="module")
def sam3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, object]]:
    checkpoint = write_tiny_sam3(tmp_path_factory.mktemp("sam3-tiny"))
    settings = stack_settings(
        tmp_path_factory.mktemp("samdrop-sam3"),
        pipeline_runner="local",
        model_type="sam3",
        checkpoint=str(checkpoint),
        cache_dir=tmp_path_factory.mktemp("samdrop-model-cache"),
        device="cpu",
        precision="fp32",
        concept_score_threshold=0.0,  # random weights: keep every query, so each image has masks
        batch_size=4,
    )
    stack = LocalStack(
        settings,
        predictor=False,
        function=True,
        base_env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    stack.up()
    try:
        yield stack, settings
    finally:
        stack.down()


def _ellipses(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (int(rng.integers(48, 80)), int(rng.integers(40, 64))), (30, 60, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 6, 30, 24), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_one_ready_line_labels_a_batch_with_its_concept(sam3_stack, tmp_path: Path):
    stack, settings = sam3_stack
    env = stack.client_env()
    client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
    bucket, results = client.bucket(settings.bucket), client.bucket(settings.output_bucket)
    _, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    completions = Completions.of(subscriber, settings)
    batch = "concepts"
    files = [f"e_{i}.png" for i in range(3)]
    for i, name in enumerate(files):
        bucket.blob(f"batches/{batch}/{name}").upload_from_string(_ellipses(i), content_type="image/png")
    ready = {"text": [CONCEPT], "outputs": ["yolo"]}
    marker = bucket.blob(f"batches/{batch}/_READY")
    marker.upload_from_string(json.dumps(ready), content_type="application/json")

    key = (BatchPaths.of(settings, batch).input_uri, None)
    message = completions.first(key, timeout_s=RUN_TIMEOUT_S)
    assert message["status"] == "succeeded", message
    assert (message["images"], message["succeeded"]) == (3, 3)

    folder = f"results/batches/{batch}/"
    found = {}
    for name in files:
        raw = json.loads(results.blob(f"{folder}{name}/masks.json").download_as_bytes())
        doc = check_document("masks", raw)
        found[name] = doc["masks"]
        assert doc["mode"] == "prompted" and doc["prompts"] == {"text": [CONCEPT]}
        assert doc["model"]["type"] == "sam3" and doc["model"]["family"] == "sam3"
        assert doc["masks"] and {mask["label"] for mask in doc["masks"]} == {CONCEPT}
        assert all(mask["prompt_index"] == 0 for mask in doc["masks"])
    coco_file = tmp_path / "annotations.coco.json"
    coco_file.write_bytes(results.blob(folder + "annotations.coco.json").download_as_bytes())
    coco = COCO(str(coco_file))
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [(1, CONCEPT)]
    masks = sum(len(masks) for masks in found.values())
    assert len(coco.getAnnIds()) == masks > 0
    summary = json.loads(results.blob(folder + "summary.json").download_as_bytes())
    assert summary["label_counts"] == message["label_counts"] == {CONCEPT: masks}
    assert sorted(image["file_name"] for image in coco.dataset["images"]) == files
    for image in coco.dataset["images"]:
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
            assert ann["category_id"] == 1
            assert coco.annToMask(ann).shape == (image["height"], image["width"])
    data_yaml = results.blob(folder + "yolo/data.yaml").download_as_text()
    assert f"nc: 1\nnames:\n  0: {CONCEPT}" in data_yaml.replace('"', "")
