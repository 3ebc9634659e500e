"""Outages on the whole local stack (predictor ``tiny``, real function, bridge, emulators).

A burst survives the predictor being killed and brought back by ``samdrop local up`` with the
default retry policy; ``local down`` during a running batch leaves no process behind; a
restarted stack keeps its objects.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deploy import processes
from deploy.drill import CompletionLog, outage_drill
from deploy.harness import upload_file
from deploy.local import LocalStack, emulator_storage_client
from deploy.status import Status, local_status
from samdrop.pidfile import WORKERS_DIR
from samdrop.settings import Settings

from .local_stack_support import settled, stack_settings, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST = 150
OUTAGE_S = 60.0


def _samdrop(settings: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")} | settings.to_env()
    return subprocess.run(
        [sys.executable, "-m", "deploy.command", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state_dir = tmp_path_factory.mktemp("samdrop-outage")
    defaults = Settings.from_env({})
    settings = stack_settings(
        state_dir,
        model_type="tiny",
        cache_dir=state_dir / "cache",
        amg_points_per_side=4,
        pipeline_runner="local",
        # Google Cloud's defaults, not the quick ones the other stack tests use: the point is that
        # a one-minute outage is outlasted without anybody re-driving anything.
        retry_min_backoff_s=defaults.retry_min_backoff_s,
        retry_max_backoff_s=defaults.retry_max_backoff_s,
        max_delivery_attempts=defaults.max_delivery_attempts,
    )
    stack = LocalStack(settings)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def _images(folder: Path, count: int) -> list[Path]:
    """``count`` small distinct JPEGs: a bright square on a dark ground, moving with the index."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        pixels = np.full((96, 128, 3), 30 + index % 50, dtype=np.uint8)
        x = 10 + index % 60
        pixels[30:70, x : x + 40] = (220, 200 - index % 100, 40)
        path = folder / f"img_{index:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        files.append(path)
    return files


def test_a_burst_outlasts_a_predictor_outage_with_one_completion_each(full_stack, tmp_path):
    settings = full_stack.settings
    files = _images(tmp_path / "burst", BURST)

    def restart() -> str:
        result = _samdrop(settings, "local", "up")
        assert result.returncode == 0, result.stderr
        return result.stdout

    with StatusSamples(settings) as samples:
        report = outage_drill(
            full_stack,
            files,
            lambda i: {"boxes": [[10 + i % 60, 30, 50 + i % 60, 70]]},
            restart=restart,
            kill_after_s=15.0,
            outage_s=OUTAGE_S,
            timeout_s=900.0,
            prefix="outage",
        )
        # What `samdrop status --json` says once the burst is done: nothing waits, and its
        # counts equal the completions received.
        final = until(
            lambda: (
                (s := json.loads(_samdrop(settings, "status", "--json").stdout))["uploads_waiting"] == 0 and s
            ),
            30,
            "an empty backlog in samdrop status",
        )
    # `local up` on the partly running stack started the predictor alone.
    lines = report.restart_output.splitlines()
    assert any(line.startswith("started predictor") for line in lines), report.restart_output
    for name in ("pubsub", "gcs", "function", "bridge"):
        assert any(line.startswith(f"running {name}") for line in lines), report.restart_output
    # What clients saw: from the kill until the predictor answered its health check again.
    assert report.outage_s >= OUTAGE_S, report
    counts = {k: getattr(report, k) for k in ("completed", "succeeded", "duplicates", "dead_letters")}
    assert counts == {"completed": BURST, "succeeded": BURST, "duplicates": 0, "dead_letters": 0}, report
    # The backlog rose while the predictor was down and drained after the restart.
    waiting = [sample.uploads_waiting or 0 for sample in samples.seen]
    peak = waiting.index(max(waiting))
    assert max(waiting) >= 20, waiting
    assert any(age and age >= 10 for age in (s.oldest_upload_age_s for s in samples.seen)), samples.seen
    assert min(waiting[peak:]) == 0, waiting
    assert final["completions_last_hour"] == {"succeeded": BURST}
    assert final["errors_last_hour"] == {} and final["dead_letters"] == 0
    assert final["endpoint_replicas"] == 1 and final["predictor_batch_fill"] > 0


class StatusSamples:
    """``deploy.status.local_status`` every second in a thread, while a drill runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: list[Status] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusSamples:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.seen.append(local_status(self.settings))


def test_sweep_after_deleting_five_results_redrives_exactly_those_five(full_stack, tmp_path):
    settings = full_stack.settings
    files = _images(tmp_path / "sweep", 8)
    client = emulator_storage_client(settings.project, full_stack.client_env()["STORAGE_EMULATOR_HOST"])
    with CompletionLog(full_stack) as log:
        uploads = [
            upload_file(
                client, settings.bucket, path, f"incoming/sweep/{path.name}", {"boxes": [[10, 30, 50, 70]]}
            )
            for path in files
        ]
        keys = {(u.uri, u.generation) for u in uploads}
        until(lambda: keys <= set(log.by_upload()), 300, "the first completions")
        lost = uploads[:5]
        for upload in lost:  # as if someone cleaned up by hand
            folder = f"{settings.results_prefix}{upload.uri.split('/', 3)[3]}/"
            for blob in client.list_blobs(settings.output_bucket, prefix=folder):
                blob.delete()

        swept = _samdrop(settings, "sweep", "--prefix", "incoming/sweep/")
        assert swept.returncode == 0, swept.stderr
        sent = sorted(line.split()[1] for line in swept.stdout.splitlines() if line.startswith("sent "))
        assert sent == sorted(f"{u.uri}#{u.generation}" for u in lost), swept.stdout

        def ours() -> list[tuple[float, dict[str, Any]]]:
            grouped = log.by_upload()
            return [message for key in keys for message in grouped.get(key, [])]

        # One more completion for each swept upload, and nothing else after the last of them.
        settled(ours, len(uploads) + len(lost), timeout_s=300, what="completions of the sweep's uploads")
        grouped = log.by_upload()
    assert {key: len(grouped[key]) for key in keys} == {
        (u.uri, u.generation): 2 if u in lost else 1 for u in uploads
    }
    for upload in lost:
        assert [body["status"] for _, body in grouped[(upload.uri, upload.generation)]] == ["succeeded"] * 2
        folder = f"{settings.results_prefix}{upload.uri.split('/', 3)[3]}/"
        assert client.bucket(settings.output_bucket).get_blob(folder + "masks.json") is not None


def _batch_image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_down_during_a_batch_stops_its_workers_and_a_restart_keeps_the_objects(full_stack):
    settings = full_stack.settings
    client = emulator_storage_client(settings.project, full_stack.client_env()["STORAGE_EMULATOR_HOST"])
    bucket = client.bucket(settings.bucket)
    kept = bucket.blob("incoming/kept-across-restarts.txt")
    kept.upload_from_string(b"still here", timeout=30)
    batch = "outage-batch"
    for index in range(12):  # automatic masks on a 16x16 grid: the batch runs for a while
        bucket.blob(f"batches/{batch}/img_{index:02d}.png").upload_from_string(
            _batch_image(index), content_type="image/png", timeout=30
        )
    bucket.blob(f"batches/{batch}/_READY").upload_from_string(
        json.dumps({"amg": {"points_per_side": 16}}), timeout=30
    )
    workers_dir = settings.state_dir.resolve() / WORKERS_DIR

    def running_worker_with_tasks() -> list[processes.ProcessRecord]:
        records = processes.worker_records(workers_dir)
        # The worker has started kfp tasks: its process group has more than the worker itself.
        return [r for r in records if len(processes.live_members(r.pgid)) >= 2]

    (worker,) = until(running_worker_with_tasks, 120, "a batch worker running its kfp tasks")
    stack_state = processes.load_state(full_stack.state_path)
    assert stack_state is not None

    down = _samdrop(settings, "local", "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"batch worker {worker.pid}" in down.stdout
    for record in [worker, *stack_state.processes]:
        assert processes.live_members(record.pgid) == [], record.name
    assert list(workers_dir.glob("*.json")) == []

    up = _samdrop(settings, "local", "up")
    assert up.returncode == 0, up.stderr
    restarted = emulator_storage_client(settings.project, full_stack.client_env()["STORAGE_EMULATOR_HOST"])
    assert restarted.bucket(settings.bucket).blob(kept.name).download_as_bytes(timeout=30) == b"still here"

    refused = _samdrop(settings, "local", "up", "--fresh")
    assert refused.returncode != 0
    assert "--fresh needs a stopped stack" in refused.stderr

    _samdrop(settings, "local", "down", timeout=120)
    fresh = _samdrop(settings, "local", "up", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    emptied = emulator_storage_client(settings.project, full_stack.client_env()["STORAGE_EMULATOR_HOST"])
    assert emptied.bucket(settings.bucket).get_blob(kept.name, timeout=30) is None
