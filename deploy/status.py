"""``samdrop status [--watch] [--json] [--project P]``: backlog, failures and throughput at a glance.

It keeps no state of its own: every figure is read, each time, from what the services expose.

* The local stack: the delivery bridge's counters and its tally of the topics (``deploy/tally.py``:
  the emulator has no metrics API), the predictor's ``/metrics``, the stack's batch workers.
* A project: Cloud Monitoring — Pub/Sub's ``num_undelivered_messages`` and
  ``oldest_unacked_message_age`` on the uploads trigger's subscription and on the dead-letter
  subscription, the endpoint's replicas, the function's per-image log-based metric
  (:data:`deploy.gcp.monitoring.IMAGES_METRIC`) — and Vertex AI's running pipeline jobs. The
  predictor's queue is not reachable behind a Vertex endpoint: those figures stay empty.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.tally import RATE_WINDOW_S
from samdrop.settings import Settings

HTTP_TIMEOUT_S = 5.0


@dataclass
class Status:
    """One look at the service. None: not known here (a server down, a figure this target lacks)."""

    target: str
    uploads_waiting: int | None = None
    oldest_upload_age_s: float | None = None
    dead_letters: int | None = None
    completions_last_hour: dict[str, int] = field(default_factory=dict)  # by status
    errors_last_hour: dict[str, int] = field(default_factory=dict)  # failed images by error code
    images_per_minute: float | None = None
    batches_running: int | None = None
    endpoint_replicas: int | None = None
    predictor_queue_depth: float | None = None
    predictor_batch_fill: float | None = None  # mean images per engine run / SAMDROP_BATCH_SIZE
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        def show(value: object, unit: str = "") -> str:
            return "-" if value is None else f"{value}{unit}"

        errors = ", ".join(f"{code} {n}" for code, n in sorted(self.errors_last_hour.items())) or "none"
        done = ", ".join(f"{status} {n}" for status, n in sorted(self.completions_last_hour.items()))
        oldest = show(self.oldest_upload_age_s, " s")
        fill = None if self.predictor_batch_fill is None else f"{self.predictor_batch_fill:.0%}"
        return [
            f"samdrop status: {self.target}",
            f"  uploads waiting      {show(self.uploads_waiting)} (oldest {oldest})",
            f"  dead letters         {show(self.dead_letters)}",
            f"  last hour            {done or 'no completions'}",
            f"  errors, last hour    {errors}",
            f"  images per minute    {show(self.images_per_minute)}",
            f"  batches running      {show(self.batches_running)}",
            f"  endpoint replicas    {show(self.endpoint_replicas)}",
            f"  predictor queue      {show(self.predictor_queue_depth)} waiting, batch fill {show(fill)}",
            *(f"  note: {note}" for note in self.notes),
        ]


def predictor_figures(metrics_text: str) -> tuple[float | None, float | None]:
    """Queue depth and batch fill from the predictor's ``/metrics`` (:mod:`predictor.metrics`)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    depth = values.get("samdrop_predictor_queue_depth")
    runs = values.get("samdrop_predictor_run_images_count", 0.0)
    size = values.get("samdrop_predictor_batch_size")
    fill = None
    if runs and size:
        fill = round(values["samdrop_predictor_run_images_sum"] / runs / size, 3)
    return depth, fill


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return bytes(response.read())
    except OSError:
        return None


def local_status(settings: Settings, *, fetch: Callable[[str], bytes | None] = _get) -> Status:
    """The local stack started from ``settings.state_dir`` (its servers' ports from its state file)."""
    from deploy import processes
    from deploy.local import HOST, LocalStack
    from samdrop.errors import ConfigError

    stack = LocalStack(settings)
    state = processes.load_state(stack.state_path)
    if state is None:
        raise ConfigError(
            f"no local stack in {settings.state_dir}: start one (samdrop local up) or pass --project"
        )
    ports = {record.name: record.port for record in state.processes}
    status = Status(target=f"local stack ({settings.state_dir})")
    bridge = fetch(f"http://{HOST}:{ports['bridge']}/") if "bridge" in ports else None
    if bridge is None:
        status.notes.append("the delivery bridge does not answer: no backlog or completion counts")
    else:
        counters = json.loads(bridge)
        tally = counters.get("tally", {})
        status.uploads_waiting = tally.get("uploads_waiting")
        status.oldest_upload_age_s = tally.get("oldest_upload_age_s")
        status.dead_letters = counters.get("dead_lettered")
        status.completions_last_hour = tally.get("completions_last_hour", {})
        status.errors_last_hour = tally.get("errors_last_hour", {})
        status.images_per_minute = tally.get("images_per_minute")
        status.notes.append("counted since the bridge started; dead letters: moved there since then")
    metrics = fetch(f"http://{HOST}:{ports['predictor']}/metrics") if "predictor" in ports else None
    status.endpoint_replicas = 0 if metrics is None else 1
    if metrics is not None:
        status.predictor_queue_depth, status.predictor_batch_fill = predictor_figures(metrics.decode())
    status.batches_running = len(stack.batch_workers())
    return status


def project_status(settings: Settings, project: str, region: str, *, clients: Any = None) -> Status:
    """A deployed project, from Cloud Monitoring and Vertex AI (``clients``: a
    :class:`deploy.gcp.monitoring.MonitoringReader`-like object; built from ADC when None)."""
    from deploy.gcp.monitoring import MonitoringReader

    reader = clients if clients is not None else MonitoringReader(project, region)
    status = Status(target=f"project {project} ({region})")
    subscriptions = reader.trigger_subscriptions(settings.uploads_topic)
    if subscriptions:
        waiting = [reader.latest("num_undelivered_messages", s) for s in subscriptions]
        ages = [reader.latest("oldest_unacked_message_age", s) for s in subscriptions]
        status.uploads_waiting = int(sum(w or 0 for w in waiting))
        status.oldest_upload_age_s = max((a or 0 for a in ages), default=None)
    else:
        status.notes.append(f"no Eventarc subscription on {settings.uploads_topic}: is it deployed?")
    dead = reader.latest("num_undelivered_messages", settings.dead_letter_subscription)
    status.dead_letters = None if dead is None else int(dead)
    hour = reader.image_outcomes(3600)
    status.completions_last_hour = {
        outcome: int(sum(n for (o, _), n in hour.items() if o == outcome)) for outcome, _ in hour
    }
    status.errors_last_hour = {code: int(n) for (outcome, code), n in hour.items() if code}
    recent = reader.image_outcomes(int(RATE_WINDOW_S))
    status.images_per_minute = round(sum(recent.values()) * 60 / RATE_WINDOW_S, 1)
    status.endpoint_replicas = reader.endpoint_replicas()
    status.batches_running = reader.running_pipelines()
    status.notes.append("the predictor's queue is inside the Vertex endpoint: see its latency charts")
    return status


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="uploads waiting, dead letters, failures and throughput (local stack or --project)"
    )
    parser.add_argument("--project", help="a deployed Google Cloud project (default: the local stack)")
    parser.add_argument("--region", default="us-central1", help="its region (default us-central1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per look")
    parser.add_argument("--watch", action="store_true", help="look again every --interval seconds")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between looks (5)")
    parser.set_defaults(func=status_command)


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    while True:
        if args.project:
            status = project_status(settings, args.project, args.region)
        else:
            status = local_status(settings)
        if args.json:
            print(json.dumps(status.to_json()), flush=True)
        else:
            print("\n".join(status.lines()), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.interval)
