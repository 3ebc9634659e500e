"""``samdrop predictor serve --model-type sam2.1_hiera_tiny --checkpoint DIR`` through the real CPR
model server, DIR being ``save_pretrained`` of a small random SAM 2.1 (tests/sam2_models.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from samdrop.masks import rle_to_mask
from samdrop.models import text_models
from tests.helpers import encode
from tests.integration.test_model_server import b64, free_port, wait_healthy
from tests.sam2_models import write_tiny_sam2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = write_tiny_sam2(tmp_path_factory.mktemp("sam2") / "sam2.1-random")
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "SAMDROP_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "SAMDROP_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        # The compiled decoder is proven against eager in test_sam2_decoder.py; compiling it again
        # in this process would cost a minute and a half here.
        "SAMDROP_COMPILE": "off",
    }
    for name in ("STORAGE_EMULATOR_HOST", "SAMDROP_MODEL_TYPE", "SAMDROP_CHECKPOINT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "deploy.command", "predictor", "serve", "--port", str(port)]
    command += ["--model-type", "sam2.1_hiera_tiny", "--checkpoint", str(checkpoint)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log_path, timeout=240)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_prompts_automatic_masks_and_text_refused(server: str, coffee: np.ndarray):
    image = b64(encode(coffee))
    instances: list[dict[str, Any]] = [
        {"image": image, "file_path": "points.jpg", "points": [[300, 200]], "labels": [1]},
        {"image": image, "file_path": "boxes.jpg", "boxes": [[10, 10, 200, 200], [300, 50, 590, 390]]},
        {"image": image, "file_path": "auto.jpg", "amg": {"use_m2m": True}},
        {"image": image, "file_path": "text.jpg", "text": "a coffee cup"},
    ]
    body = {
        "instances": instances,
        "parameters": {"amg": {"points_per_side": 3, "pred_iou_thresh": 0, "stability_score_thresh": 0}},
    }
    response = requests.post(f"{server}/predict", json=body, timeout=300)
    assert response.status_code == 200, response.text
    points, boxes, automatic, text = response.json()["predictions"]
    assert len(points["masks"]) == 3
    assert [m["prompt_index"] for m in boxes["masks"]] == [0, 1]
    assert automatic["mode"] == "automatic" and automatic["masks"]
    assert automatic["amg"]["use_m2m"] is True
    for prediction in (points, boxes, automatic):
        assert (prediction["width"], prediction["height"]) == (600, 400)
        assert prediction["model"]["type"] == "sam2.1_hiera_tiny"
        assert prediction["model"]["family"] == "sam2.1"
        assert prediction["model"]["checkpoint"].endswith("sam2.1-random")
        for mask in prediction["masks"]:
            assert rle_to_mask(mask["segmentation"]).shape == (400, 600)
    assert text["error"]["code"] == "invalid_request"
    for name in text_models():
        assert name in text["error"]["message"]
