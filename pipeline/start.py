"""Starting a batch for ``batches/<id>/_READY``: check it, claim it once, hand it to a runner.

The function calls a starter (the ``StartBatch`` shape of ``functions/batches.py``) and returns at
once. Order: plan the batch (a bad ``_READY``/``prompts.json`` or a folder without images gets a
``failed`` completion and is *not* claimed, so a corrected ``_READY`` can start it); claim it by
creating ``results/batches/<id>/_CLAIMED`` with ``if_generation_match=0`` (a second delivery or
upload of ``_READY`` finds the claim and starts nothing); then start the run. If the start itself
fails the claim is removed and the error raised, so Pub/Sub redelivers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.config import pipeline_config
from pipeline.listing import PlanSummary, TreeStore, plan_batch, write_plan
from samdrop.batches import BatchPaths, failed_completion
from samdrop.errors import ConfigError, TransientError
from samdrop.layout import json_record, write_output
from samdrop.messages import Publisher, publish_completion
from samdrop.settings import Settings
from samdrop.storage import ObjectStore, WriteConflict

# Vertex AI picks a machine from CPU and memory limits: what a machine type offers (vCPU, GB).
MACHINE_FAMILIES = {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0}
FIXED_MACHINES = {
    "a2-highgpu-1g": (12, 85),
    "a2-highgpu-2g": (24, 170),
    "a2-ultragpu-1g": (12, 170),
    "a3-highgpu-1g": (26, 234),
}
N1_MEMORY_PER_CPU = {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9}


class ReadyMarker(Protocol):
    """What a starter needs of the marker (``functions.batches.BatchStart`` has it)."""

    @property
    def batch_id(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def generation(self) -> str: ...


@runtime_checkable
class _Tree(Protocol):
    def list_tree(self, bucket: str, prefix: str) -> Any: ...


Launch = Callable[[Settings, BatchPaths, int], str]


def start_batch(
    request: ReadyMarker,
    *,
    settings: Settings,
    store: ObjectStore,
    publisher: Publisher,
    launch: Launch,
) -> str:
    """Check, claim and launch one batch; returns the outcome for the function's log line."""
    paths = BatchPaths.of(settings, request.batch_id, request.bucket)
    generation = int(request.generation)
    plan, started = None, time.perf_counter()
    if isinstance(store, _Tree):
        # A malformed _READY body or prompts file (JSON nested too deeply included) is plan.error.
        plan = plan_batch(
            paths,
            generation,
            store,
            default_shard_size=settings.shard_size,
            workers=settings.pipeline_parallelism,
            model_type=settings.model_type,
        )
        if plan.error is not None:
            message = failed_completion(paths, plan.error["code"], plan.error["message"])
            publish_completion(publisher, settings.completions_topic, message)
            return "batch_rejected"
    claim = {
        "batch_id": paths.batch_id,
        "marker_generation": str(generation),
        "runner": settings.pipeline_runner,
    }
    claim["claimed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        claimed = write_output(  # seen=None: only if no claim exists
            store,
            paths.output_bucket,
            paths.claim,
            json_record(claim),
            "application/json",
            seen=None,
            generation=generation,
        )
    except WriteConflict:
        return "batch_already_claimed"
    try:
        if plan is not None:  # planned once, here: the pipeline's list step reuses plan.json
            list_ms = round((time.perf_counter() - started) * 1000, 1)
            write_plan(paths, plan, store, list_ms=list_ms)
        run = launch(settings, paths, generation)
    except BaseException:
        store.delete(paths.output_bucket, paths.claim, if_generation_match=claimed)
        raise
    return f"batch_started {run}"


def starter_for(settings: Settings) -> Callable[..., str]:
    """The starter for ``settings.pipeline_runner`` (``local`` or ``vertex``), checked now."""
    launchers: dict[str, Launch] = {"local": launch_local, "vertex": launch_vertex}
    if settings.pipeline_runner not in launchers:
        raise ConfigError(
            f"SAMDROP_PIPELINE_RUNNER={settings.pipeline_runner} has no starter: use local or vertex"
        )
    if settings.pipeline_runner == "vertex":
        vertex_problems(settings)
    launch = launchers[settings.pipeline_runner]

    def start(request: ReadyMarker, *, settings: Settings, store: ObjectStore, publisher: Publisher) -> str:
        return start_batch(request, settings=settings, store=store, publisher=publisher, launch=launch)

    return start


# --- local: kfp.local in a detached worker process ----------------------------------------------


def local_root(settings: Settings) -> Path:
    root = settings.pipeline_root
    if root and not root.startswith("gs://"):
        return Path(root).resolve()
    return (settings.state_dir / "pipelines").resolve()


def launch_local(settings: Settings, paths: BatchPaths, generation: int) -> str:
    """Start ``python -m pipeline.worker`` in its own session (it outlives this request); returns its pid.

    The worker inherits this process's environment (emulator hosts, credentials) plus ``settings``.
    """
    log_dir = local_root(settings) / _safe(paths.batch_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "pipeline.worker",
        "--batch-id", paths.batch_id, "--bucket", paths.bucket, "--marker-generation", str(generation),
    ]  # fmt: skip
    env = {**os.environ, **settings.to_env()}  # the edge's environment, passed on unchanged
    with open(log_dir / "worker.log", "ab") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return f"local pid {process.pid} (log {log_dir / 'worker.log'})"


# --- Vertex AI Pipelines -------------------------------------------------------------------------


def vertex_problems(settings: Settings) -> None:
    """Raise ``ConfigError`` naming each missing Vertex setting."""
    problems = []
    if not (settings.pipeline_template or "").startswith(("gs://", "https://")):
        problems.append("SAMDROP_PIPELINE_TEMPLATE must be the gs:// URI of the compiled pipeline YAML")
    if not (settings.pipeline_root or "").startswith("gs://"):
        problems.append("SAMDROP_PIPELINE_ROOT must be a gs:// folder for pipeline artifacts")
    try:
        machine_resources(settings.pipeline_machine_type)
    except ConfigError as exc:
        problems.append(exc.message)
    if problems:
        raise ConfigError("the vertex pipeline runner is not configured: " + "; ".join(problems))


def vertex_parameters(settings: Settings, paths: BatchPaths, generation: int) -> dict[str, Any]:
    cpu, memory = machine_resources(settings.pipeline_machine_type)
    return {
        "batch_id": paths.batch_id,
        "bucket": paths.bucket,
        "marker_generation": str(generation),
        "config": pipeline_config(settings),
        "accelerator_type": settings.pipeline_accelerator_type,
        "accelerator_count": settings.pipeline_accelerator_count,
        "cpu_limit": _number(cpu),
        "memory_limit": f"{_number(memory)}G",
    }


def launch_vertex(settings: Settings, paths: BatchPaths, generation: int, *, aiplatform: Any = None) -> str:
    """Submit a ``PipelineJob`` from the compiled template and return its resource name (no waiting)."""
    if aiplatform is None:
        from google.cloud import aiplatform
    from google.api_core import exceptions as api_exceptions

    job_id = f"samdrop-{_safe(paths.batch_id)}-{generation}"[:128]
    try:
        job = aiplatform.PipelineJob(
            display_name=f"samdrop batch {paths.batch_id}",
            template_path=settings.pipeline_template,
            pipeline_root=settings.pipeline_root,
            job_id=job_id,
            parameter_values=vertex_parameters(settings, paths, generation),
            enable_caching=False,
            project=settings.project,
            location=settings.region,
            labels={"samdrop-batch": _safe(paths.batch_id)[:63]},
        )
        job.submit(service_account=settings.pipeline_service_account)
    except (api_exceptions.TooManyRequests, api_exceptions.ServerError, api_exceptions.RetryError) as exc:
        raise TransientError(f"submitting pipeline job {job_id} failed, will retry: {exc}") from exc
    except (api_exceptions.PermissionDenied, api_exceptions.Unauthenticated, api_exceptions.NotFound) as exc:
        raise ConfigError(
            f"cannot submit pipeline job {job_id} ({exc}): check SAMDROP_PIPELINE_TEMPLATE and grant the "
            "function's service account roles/aiplatform.user and iam.serviceAccountUser on "
            "SAMDROP_PIPELINE_SERVICE_ACCOUNT"
        ) from exc
    return f"vertex {job.resource_name}"


def machine_resources(machine_type: str) -> tuple[float, float]:
    """(vCPU, GB) of a Compute Engine machine type, e.g. ``g2-standard-8`` → (8, 32)."""
    if machine_type in FIXED_MACHINES:
        cpu, memory = FIXED_MACHINES[machine_type]
        return float(cpu), float(memory)
    match = re.fullmatch(r"([a-z][a-z0-9]*)-(standard|highmem|highcpu)-(\d+)", machine_type)
    if match is None:
        raise ConfigError(
            f"SAMDROP_PIPELINE_MACHINE_TYPE={machine_type!r} is not a machine type this starter knows: use "
            "<family>-standard|highmem|highcpu-<vCPUs> (e.g. g2-standard-8, n1-standard-8) or one of "
            + ", ".join(FIXED_MACHINES)
        )
    family, kind, count = match.group(1), match.group(2), int(match.group(3))
    per_cpu = N1_MEMORY_PER_CPU[kind] if family == "n1" else MACHINE_FAMILIES[kind]
    return float(count), round(count * per_cpu, 1)


def status_of(paths: BatchPaths, store: ObjectStore, tree: TreeStore | None = None) -> dict[str, Any]:
    """Where batch ``paths.batch_id`` stands, from what it wrote: claim, plan, shards, images, completion."""
    out: dict[str, Any] = {"batch_id": paths.batch_id, "input": paths.input_uri, "state": "not started"}
    for key, name in (("claim", paths.claim), ("plan", paths.plan), ("completion", paths.completion)):
        info = store.stat(paths.output_bucket, name)
        if info is not None:
            out[key] = json.loads(store.read(paths.output_bucket, name, generation=info.generation))
    if "claim" in out:
        out["state"] = "claimed"
    plan = PlanSummary.from_json(out.pop("plan")) if "plan" in out else None
    if plan:
        out.update(state="running", images=plan.images, shards=plan.shards, warnings=plan.warnings)
        out["shards_done"] = sum(
            1
            for i in range(plan.shards)
            if store.stat(paths.output_bucket, paths.shard_report(i)) is not None
        )
    if tree is not None and plan:
        names = tree.list_tree(paths.output_bucket, paths.folder)
        out["images_done"] = sum(1 for n in names if n.endswith(("/masks.json", "/error.json")))
        out["images_failed"] = sum(1 for n in names if n.endswith("/error.json"))
    if "completion" in out:
        out["state"] = out["completion"]["status"]
    claimed_at = _time((out.get("claim") or {}).get("claimed_at"))
    if claimed_at is not None:
        ended = _time((out.get("completion") or {}).get("published_at")) or datetime.now(UTC)
        out["elapsed_s"] = round((ended - claimed_at).total_seconds(), 1)
    return out


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _safe(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "batch"
