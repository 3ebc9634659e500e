"""The real aiplatform CPR model server, started as a subprocess by ``samdrop predictor serve``."""

from __future__ import annotations

import base64
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import encode

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "SAMDROP_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "SAMDROP_DEVICE": "cpu",
        "SAMDROP_MODEL_TYPE": "tiny",
        "SAMDROP_MAX_IMAGE_PIXELS": "4000000",
    }
    env.pop("STORAGE_EMULATOR_HOST", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.command", "predictor", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log_path)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    pytest.fail(f"server not healthy after {timeout}s:\n{log_path.read_text()[-3000:]}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_health(server: str):
    response = requests.get(f"{server}/health", timeout=10)
    assert response.status_code == 200


def test_mixed_good_and_bad_instances(server: str, coffee):
    from PIL import Image

    image = b64(encode(coffee))
    instances: list[dict[str, Any]] = [
        {"image": image, "file_path": "coffee.jpg", "points": [[300, 200]], "labels": [1]},
        {"image": b64(b"\x89PNG\r\n\x1a\n broken"), "file_path": "broken.png"},
        {"image": image, "file_path": "boxes.jpg", "boxes": [[10, 10, 200, 200], [300, 50, 590, 390]]},
        {"image": image, "file_path": "outside.jpg", "points": [[1000, 10]], "labels": [1]},
        {"image": b64(encode(Image.new("L", (3000, 3000)), "PNG")), "file_path": "huge.png"},
        {"image": image, "file_path": "legacy.jpg", "input_point": [[100, 100]], "input_label": [1]},
        {"image": image, "file_path": "typo.jpg", "pionts": [[1, 1]]},
        {"image": image, "file_path": "auto.jpg"},
    ]
    body = {
        "instances": instances,
        "parameters": {"amg": {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0}},
    }
    response = requests.post(f"{server}/predict", json=body, timeout=300)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["file_path"] for p in predictions] == [i["file_path"] for i in instances]
    codes = [p.get("error", {}).get("code") for p in predictions]
    assert codes == [
        None,
        "invalid_image",
        None,
        "invalid_prompt",
        "image_too_large",
        None,
        "invalid_request",
        None,
    ]
    assert len(predictions[0]["masks"]) == 3
    assert [m["prompt_index"] for m in predictions[2]["masks"]] == [0, 1]
    assert predictions[7]["mode"] == "automatic" and predictions[7]["masks"]
    for prediction in predictions:
        if "error" not in prediction:
            assert (prediction["width"], prediction["height"]) == (600, 400)
            assert prediction["model"]["type"] == "tiny"
    # SAMDROP_COMPILE=auto compiles the automatic-mask decoder on a CPU with a C++ compiler.
    has_compiler = bool(shutil.which("c++") or shutil.which("g++"))
    assert predictions[7]["model"]["compiled"] is has_compiler
    assert predictions[7]["model"]["precision"] in ("fp32", "bf16")


def test_concurrent_requests_share_encoder_passes(server: str, coffee):
    """A burst of single-image requests is grouped: the encoder runs batches, not one by one."""
    images = [coffee[i * 7 : 300 + i * 7, i * 11 : 400 + i * 11] for i in range(12)]  # all different

    def one(image) -> dict:
        body = {"instances": [{"image": b64(encode(image)), "boxes": [[10, 10, 200, 200]]}]}
        response = requests.post(f"{server}/predict", json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]

    with ThreadPoolExecutor(len(images)) as pool:
        predictions = list(pool.map(one, images))
    assert all(len(p["masks"]) == 1 and (p["width"], p["height"]) == (400, 300) for p in predictions)
    batches = [p["model"]["encoder_batch"] for p in predictions]
    assert max(batches) > 1, batches
    assert max(p["model"]["requests_batched"] for p in predictions) > 1


def test_server_keeps_serving_after_bad_requests(server: str, coffee):
    assert requests.post(f"{server}/predict", data=b"{not json", timeout=10).status_code == 400
    bad = requests.post(f"{server}/predict", json={"instance": []}, timeout=10)
    assert bad.status_code == 400 and "instances" in bad.json()["detail"]["message"]
    assert bad.json()["detail"]["code"] == "invalid_request"
    ok = requests.post(
        f"{server}/predict",
        json={"instances": [{"image": b64(encode(coffee)), "boxes": [[1, 1, 50, 50]]}]},
        timeout=120,
    )
    assert ok.status_code == 200 and "masks" in ok.json()["predictions"][0]
    assert requests.get(f"{server}/health", timeout=10).status_code == 200


def _series(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_each_answer_by_outcome_and_time_each_stage(server: str, coffee):
    before = _series(server)
    good = {"image": b64(encode(coffee)), "boxes": [[10, 10, 200, 200]]}
    bodies = [
        {"instances": [good, {"image": b64(b"not an image")}]},
        {"instances": [good]},
        {"instances": [{**good, "boxes": [[50, 50, 10, 10]]}]},
    ]
    codes: collections.Counter[str] = collections.Counter()
    for body in bodies:
        response = requests.post(f"{server}/predict", json=body, timeout=300)
        assert response.status_code == 200, response.text
        for prediction in response.json()["predictions"]:
            codes[prediction["error"]["code"] if "error" in prediction else ""] += 1
    assert requests.post(f"{server}/predict", data=b"{not json", timeout=10).status_code == 400
    after = _series(server)

    def delta(name: str, **labels: str) -> float:
        def total(series: dict) -> float:
            wanted = set(labels.items())
            return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)

        return total(after) - total(before)

    assert codes == {"": 2, "invalid_image": 1, "invalid_prompt": 1}
    for code, count in codes.items():
        outcome = "failed" if code else "succeeded"
        assert delta("samdrop_predictor_images_total", outcome=outcome, code=code) == count
    assert delta("samdrop_predictor_images_total") == sum(codes.values())
    assert delta("samdrop_predictor_requests_total", outcome="ok") == len(bodies)
    assert delta("samdrop_predictor_requests_total", outcome="invalid_request") == 1
    # The inverted box is refused before its image is read; the two good ones ran the encoder.
    assert delta("samdrop_predictor_stage_seconds_count", stage="read") == 3
    assert delta("samdrop_predictor_stage_seconds_count", stage="decode") == 3
    assert delta("samdrop_predictor_stage_seconds_count", stage="encode") == 2
    assert delta("samdrop_predictor_stage_seconds_count", stage="decode_masks") == 2
    assert delta("samdrop_predictor_stage_seconds_count", stage="encode_outputs") == 4
    assert delta("samdrop_predictor_stage_seconds_sum", stage="encode") > 0
    # The same coffee twice: the second is an embedding-cache hit.
    assert delta("samdrop_predictor_embedding_cache_total", result="hit") >= 1
    assert delta("samdrop_predictor_queue_wait_seconds_count") >= 2
    labels = {dict(ls).get("model") for (n, ls) in after if n == "samdrop_predictor_images_total"}
    assert labels == {"tiny"}
