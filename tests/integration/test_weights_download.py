"""``samdrop predictor serve --model-type vit_b --checkpoint http://…`` fetches the checkpoint once
from a local HTTP server (a seeded random ``vit_b`` state dict), then starts from the cache with the
server gone. Truncation, resume and checksums are covered in tests/unit/test_weights.py."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import torch

from deploy import processes
from deploy.local import find_free_port
from predictor.registry import build_sam
from tests.weights_server import serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def seeded_vit_b() -> bytes:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(13)
        model = build_sam("vit_b")
    finally:
        torch.random.set_rng_state(state)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def start_server(url: str, cache: Path, log: Path) -> processes.ProcessRecord:
    port = find_free_port()
    env = {
        **os.environ,
        "SAMDROP_CACHE_DIR": str(cache),
        "SAMDROP_DEVICE": "cpu",
        "SAMDROP_COMPILE": "off",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "deploy.command", "predictor", "serve", "--port", str(port)]
    argv += ["--model-type", "vit_b", "--checkpoint", url]
    proc, record = processes.start(
        "predictor", argv, env=env, log=log, port=port, health_url=f"http://127.0.0.1:{port}/health"
    )
    processes.wait_ready(proc, record, timeout_s=240)
    return record


def test_serve_fetches_once_then_starts_from_the_cache(tmp_path: Path):
    cache, log = tmp_path / "cache", tmp_path / "predictor.log"
    with serve({"/weights/sam_vit_b_random.pth": seeded_vit_b()}) as server:
        url = f"{server.base_url}/weights/sam_vit_b_random.pth"
        processes.stop([start_server(url, cache, log)])
        assert [path for path, _ in server.requests] == ["/weights/sam_vit_b_random.pth"]
    (cached,) = cache.glob("checkpoints/*/sam_vit_b_random.pth")
    assert not list(cache.rglob("*.part"))

    processes.stop([start_server(url, cache, log)])  # the HTTP server is gone: the cache serves

    assert "loaded SAM vit_b" in log.read_text()
    assert cached.exists()
