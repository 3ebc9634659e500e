"""`samdrop demo` end to end, as the README's first command runs it: a real subprocess, real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from deploy.local import free_ports, port_in_use

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_runs_the_whole_story_and_cleans_up(tmp_path):
    ports = {f"SAMDROP_{name.upper()}": str(port) for name, port in free_ports().items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMDROP_") and "EMULATOR_HOST" not in k}
    env.update(ports, SAMDROP_STATE_DIR=str(tmp_path / "state"), SAMDROP_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "demo"

    done = subprocess.run(
        [sys.executable, "-m", "deploy.command", "demo", "--out", str(out), "--timeout", "300"],
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == summary["succeeded"] == 5
    assert all(c["status"] == "succeeded" and c["mask_count"] >= 1 for c in summary["completions"])
    for overlay in summary["overlays"]:
        assert Image.open(overlay).format == "JPEG"
    assert len(summary["overlays"]) == 5
    # No weights here: the default (auto) serves the classic backend and says how to switch to SAM.
    assert all(c["model"]["type"] == "classic" for c in summary["completions"])
    assert "'classic' backend" in done.stdout and "samdrop models pull vit_b" in done.stdout
    assert "waiting for completions" in done.stderr and "5/5" in done.stderr
    # It stopped what it started: no state file, every port free again.
    assert not (tmp_path / "state" / "stack.json").exists()
    assert not any(port_in_use(int(port)) for port in ports.values())
