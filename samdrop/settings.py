"""One frozen settings object, built from a mapping passed in and validated at start-up.

Nothing below the edges reads ``os.environ``: an edge (CLI, function entry point, model server
load) calls ``Settings.from_env(os.environ)`` once and passes the result down.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samdrop.budgets import DEFAULT_MAX_JSON_DEPTH
from samdrop.concepts import MAX_CONCEPT_CHARS, MAX_CONCEPTS_PER_IMAGE
from samdrop.errors import ConfigError
from samdrop.models import MODEL_TYPES, NO_WEIGHTS, model_info, unknown_type_message

DEVICES = ("auto", "cpu", "cuda")
RESULTS_SUFFIX = "-results"  # the default results bucket is <upload bucket>-results
PIPELINE_RUNNERS = ("local", "vertex", "none")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_CHOICES = ("auto", "on", "off")
TRACES_MODES = ("off", "console", "otlp", "cloud")  # where spans go (samdrop/tracing.py)
# SAMDROP_REQUEST_TIMEOUT_S's default, for the callers that run without settings (deploy's admin calls).
DEFAULT_REQUEST_TIMEOUT_S = 60.0
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def _env(name: str, default: Any, help: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A settings field read from environment variable ``name``."""
    return field(default=default, metadata={"env": name, "help": help, "parse": parse})


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _prefix(text: str) -> str:
    text = text.strip().lstrip("/")
    if not text:
        raise ValueError("must not be empty")
    return text if text.endswith("/") else text + "/"


def _optional(text: str) -> str | None:
    return text.strip() or None


def _auto_int(text: str) -> int | None:
    """``auto`` (or empty) -> None; otherwise a whole number."""
    return None if text.strip().lower() in ("", "auto") else int(text)


@dataclass(frozen=True)
class Settings:
    """Every knob of samdrop, each read from one ``SAMDROP_*`` variable (see ``describe()``)."""

    # Google Cloud resources (emulated locally).
    project: str = _env("SAMDROP_PROJECT", "samdrop-local", "Google Cloud project id")
    region: str = _env("SAMDROP_REGION", "us-central1", "region for Vertex AI and the function")
    bucket: str = _env("SAMDROP_BUCKET", "samdrop-local", "bucket users upload into")
    results_bucket: str | None = _env(
        "SAMDROP_RESULTS_BUCKET",
        None,
        "bucket for outputs (default: <bucket>-results, as `samdrop deploy` makes; may be the upload bucket)",
        _optional,
    )
    incoming_prefix: str = _env("SAMDROP_INCOMING_PREFIX", "incoming/", "single uploads", _prefix)
    batches_prefix: str = _env("SAMDROP_BATCHES_PREFIX", "batches/", "bulk drops", _prefix)
    results_prefix: str = _env("SAMDROP_RESULTS_PREFIX", "results/", "outputs (never triggers)", _prefix)
    uploads_topic: str = _env("SAMDROP_UPLOADS_TOPIC", "samdrop-uploads", "GCS notification topic")
    completions_topic: str = _env("SAMDROP_COMPLETIONS_TOPIC", "samdrop-completions", "completion topic")
    completions_subscription: str = _env(
        "SAMDROP_COMPLETIONS_SUBSCRIPTION", "samdrop-completions-sub", "user's pull subscription"
    )
    dead_letter_topic: str = _env("SAMDROP_DEAD_LETTER_TOPIC", "samdrop-dead-letter", "dead letters")
    max_delivery_attempts: int = _env(
        "SAMDROP_MAX_DELIVERY_ATTEMPTS", 5, "deliveries before dead-lettering (5..100)", int
    )

    # Endpoint the function calls: Vertex endpoint resource name or http(s) URL of a CPR server.
    endpoint: str | None = _env(
        "SAMDROP_ENDPOINT", None, "projects/P/locations/R/endpoints/E or http(s)://host:port", _optional
    )
    endpoint_timeout_s: float = _env("SAMDROP_ENDPOINT_TIMEOUT_S", 300.0, "endpoint call timeout", float)
    request_timeout_s: float = _env(
        "SAMDROP_REQUEST_TIMEOUT_S",
        DEFAULT_REQUEST_TIMEOUT_S,
        "timeout of one Cloud Storage or Pub/Sub call (and of its retries, together)",
        float,
    )

    # Bulk drops (pipeline/): who runs the KFP pipeline for batches/<id>/_READY, and how.
    pipeline_runner: str = _env(
        "SAMDROP_PIPELINE_RUNNER", "local", "local (kfp.local), vertex (Vertex AI Pipelines) or none"
    )
    pipeline_template: str | None = _env(
        "SAMDROP_PIPELINE_TEMPLATE", None, "gs:// URI of the compiled pipeline YAML (vertex)", _optional
    )
    pipeline_root: str | None = _env(
        "SAMDROP_PIPELINE_ROOT", None, "gs:// pipeline root (vertex); local: <state dir>/pipelines", _optional
    )
    pipeline_service_account: str | None = _env(
        "SAMDROP_PIPELINE_SERVICE_ACCOUNT", None, "service account pipeline runs act as (vertex)", _optional
    )
    pipeline_image: str | None = _env(
        "SAMDROP_PIPELINE_IMAGE", None, "container image of the pipeline's components (vertex)", _optional
    )
    shard_size: int = _env(
        "SAMDROP_SHARD_SIZE",
        0,
        "images per pipeline shard task; 0: the batch split evenly over the parallel shard tasks",
        int,
    )
    pipeline_parallelism: int = _env("SAMDROP_PIPELINE_PARALLELISM", 4, "shard tasks run at once", int)
    pipeline_machine_type: str = _env(
        "SAMDROP_PIPELINE_MACHINE_TYPE", "g2-standard-8", "machine type of a shard task (vertex)"
    )
    pipeline_accelerator_type: str = _env(
        "SAMDROP_PIPELINE_ACCELERATOR_TYPE", "NVIDIA_L4", "GPU of a shard task (vertex)"
    )
    pipeline_accelerator_count: int = _env(
        "SAMDROP_PIPELINE_ACCELERATOR_COUNT", 1, "GPUs per shard task (vertex; 0 for CPU)", int
    )

    # Model and engine.
    model_type: str = _env(
        "SAMDROP_MODEL_TYPE",
        "auto",
        "one of "
        + ", ".join(MODEL_TYPES)
        + "; auto: the newest SAM whose weights are cached or given (SAM 2.1 over SAM 1), else classic",
    )
    checkpoint: str | None = _env(
        "SAMDROP_CHECKPOINT",
        None,
        "checkpoint path, http(s):// or gs:// URI (#sha256=<hex> checks it); SAM 2.1: a save_pretrained "
        "folder or gs:// folder; auto or empty: the type's official weights (Meta's file, Hugging Face "
        "repo; tiny: built)",
        _optional,
    )
    device: str = _env("SAMDROP_DEVICE", "auto", "auto, cpu or cuda")
    fast_path: bool = _env("SAMDROP_FAST_PATH", True, "bf16 autocast + SDPA attention + batching", _bool)
    precision: str = _env(
        "SAMDROP_PRECISION",
        "auto",
        "auto (bf16 where the GPU or CPU has it natively, else fp32), fp32 or bf16",
    )
    compile: str = _env(
        "SAMDROP_COMPILE", "auto", "torch.compile the automatic-mask decoder: auto (on CPUs), on or off"
    )
    batch_size: int = _env("SAMDROP_BATCH_SIZE", 4, "images per encoder pass", int)
    batch_window_ms: float = _env(
        "SAMDROP_BATCH_WINDOW_MS", 5.0, "how long the server waits to group concurrent requests", float
    )
    points_per_batch: int = _env(
        "SAMDROP_POINTS_PER_BATCH", 64, "automatic-mask points per decoder call", int
    )
    embedding_cache_size: int = _env("SAMDROP_EMBEDDING_CACHE_SIZE", 16, "image embeddings kept (LRU)", int)
    max_image_pixels: int = _env(
        "SAMDROP_MAX_IMAGE_PIXELS", 64_000_000, "larger images are refused (decompression bombs)", int
    )
    # Budgets: every request is checked against these before any work (docs/operations.md "Limits").
    max_input_bytes: int = _env(
        "SAMDROP_MAX_INPUT_BYTES", 100 * 2**20, "larger uploads are refused before download (bytes)", int
    )
    max_request_bytes: int = _env(
        "SAMDROP_MAX_REQUEST_BYTES", 16 * 2**20, "larger :predict request bodies are refused (bytes)", int
    )
    max_instances: int = _env("SAMDROP_MAX_INSTANCES", 32, "instances per :predict request", int)
    max_prompts: int = _env("SAMDROP_MAX_PROMPTS", 64, "boxes, and points, per image", int)
    max_concepts: int = _env(
        "SAMDROP_MAX_CONCEPTS", MAX_CONCEPTS_PER_IMAGE, "SAM 3 text concepts per image", int
    )
    max_concept_chars: int = _env(
        "SAMDROP_MAX_CONCEPT_CHARS", MAX_CONCEPT_CHARS, "characters per SAM 3 text concept", int
    )
    concept_score_threshold: float = _env(
        "SAMDROP_CONCEPT_SCORE_THRESHOLD",
        0.5,
        "SAM 3 keeps instances whose score (detection x presence) is above this, in [0, 1]",
        float,
    )
    max_auto_points: int = _env(
        "SAMDROP_MAX_AUTO_POINTS",
        65_536,
        "automatic-mask grid points per image, all crop layers together",
        int,
    )
    max_points_per_batch: int = _env(
        "SAMDROP_MAX_POINTS_PER_BATCH", 256, "a request's amg.points_per_batch is clamped to this", int
    )
    decoder_memory_bytes: int | None = _env(
        "SAMDROP_DECODER_MEMORY_BYTES",
        None,
        "memory one automatic-mask decoder batch may use; points_per_batch shrinks to fit the image "
        "(auto: a quarter of the device's memory)",
        _auto_int,
    )
    max_aspect_ratio: float = _env(
        "SAMDROP_MAX_ASPECT_RATIO", 100.0, "long side / short side above which an image is refused", float
    )
    max_json_depth: int = _env(
        "SAMDROP_MAX_JSON_DEPTH",
        DEFAULT_MAX_JSON_DEPTH,
        "nesting depth of JSON read from users (samdrop-prompts, notifications, predictor requests)",
        int,
    )
    max_object_name_bytes: int = _env(
        "SAMDROP_MAX_OBJECT_NAME_BYTES",
        1024,
        "longest output object name (Cloud Storage: 1024 UTF-8 bytes)",
        int,
    )
    amg_points_per_side: int | None = _env(
        "SAMDROP_AMG_POINTS_PER_SIDE",
        None,
        "automatic masks' default grid side; auto: 32 on a GPU, on a CPU what keeps an image near 10 s",
        _auto_int,
    )
    max_masks: int = _env("SAMDROP_MAX_MASKS", 256, "cap on masks returned per image", int)
    tile_above_pixels: int = _env(
        "SAMDROP_TILE_ABOVE_PIXELS",
        0,
        "tile (and stitch) images with more pixels than this even when not asked; 0: only when asked",
        int,
    )
    tile_size: int = _env(
        "SAMDROP_TILE_SIZE", 1024, "default tile side, px, when tiling is asked with true", int
    )
    tile_overlap: int = _env("SAMDROP_TILE_OVERLAP", 128, "default overlap of neighbouring tiles, px", int)
    cache_dir: Path = _env(
        "SAMDROP_CACHE_DIR", Path.home() / ".cache" / "samdrop", "checkpoint download cache", Path
    )
    weights_url: str | None = _env(
        "SAMDROP_WEIGHTS_URL",
        None,
        "mirror of Meta's checkpoints (http(s):// or gs:// folder holding sam_vit_*.pth) for checkpoint auto",
        _optional,
    )
    io_threads: int = _env("SAMDROP_IO_THREADS", 8, "threads for image reads and decodes", int)

    # Local stack.
    state_dir: Path = _env("SAMDROP_STATE_DIR", Path(".samdrop"), "local stack state and logs", Path)
    gcs_port: int = _env("SAMDROP_GCS_PORT", 4443, "fake-gcs-server port", int)
    pubsub_port: int = _env("SAMDROP_PUBSUB_PORT", 8085, "Pub/Sub emulator port", int)
    predictor_port: int = _env("SAMDROP_PREDICTOR_PORT", 8080, "CPR predictor server port", int)
    function_port: int = _env("SAMDROP_FUNCTION_PORT", 8081, "functions-framework port", int)
    bridge_port: int = _env("SAMDROP_BRIDGE_PORT", 8082, "local delivery bridge's status port", int)

    log_level: str = _env("SAMDROP_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    # OpenTelemetry spans (samdrop/tracing.py).
    traces: str = _env(
        "SAMDROP_TRACES", "off", "off, console, otlp (to OTEL_EXPORTER_OTLP_ENDPOINT) or cloud (Cloud Trace)"
    )

    # Pub/Sub delivery to the function (deploy/resources.py; checked there against Pub/Sub's bounds).
    uploads_subscription: str = _env(
        "SAMDROP_UPLOADS_SUBSCRIPTION", "samdrop-uploads-sub", "subscription feeding the function (local)"
    )
    delivery_concurrency: int = _env(
        "SAMDROP_DELIVERY_CONCURRENCY", 8, "uploads delivered to the function at once (local bridge)", int
    )
    dead_letter_subscription: str = _env(
        "SAMDROP_DEAD_LETTER_SUBSCRIPTION",
        "samdrop-dead-letter-sub",
        "pull subscription keeping dead letters",
    )
    push_ack_deadline_s: int = _env(
        "SAMDROP_PUSH_ACK_DEADLINE_S", 600, "seconds a push may take before redelivery (10..600)", int
    )
    retry_min_backoff_s: float = _env(
        "SAMDROP_RETRY_MIN_BACKOFF_S", 10.0, "first redelivery delay after a failure (0..600)", float
    )
    retry_max_backoff_s: float = _env(
        "SAMDROP_RETRY_MAX_BACKOFF_S", 600.0, "longest redelivery delay (0..600)", float
    )

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    def _problems(self) -> Any:
        if self.model_type not in MODEL_TYPES:
            yield unknown_type_message(self.model_type)
        elif (
            self.model_type != "auto"
            and model_info(self.model_type).weights == NO_WEIGHTS
            and self.checkpoint not in (None, "auto")
        ):
            yield (
                f"SAMDROP_MODEL_TYPE={self.model_type} uses no weights: "
                "unset SAMDROP_CHECKPOINT or pick a SAM type"
            )
        if self.weights_url and not self.weights_url.startswith(("http://", "https://", "gs://")):
            yield "SAMDROP_WEIGHTS_URL must be an http(s):// or gs:// URL (a folder holding sam_vit_*.pth)"
        if self.device not in DEVICES:
            yield f"SAMDROP_DEVICE={self.device!r} is not one of {', '.join(DEVICES)}"
        for name in ("bucket", "results_bucket"):
            value = getattr(self, name)
            if value is not None and not _BUCKET_NAME.match(value):
                yield f"{_env_name(name)}={value!r} is not a valid bucket name (3-63 of a-z 0-9 . _ -)"
        if self.results_bucket is None and not _BUCKET_NAME.match(self.output_bucket):
            yield (
                f"the default results bucket {self.output_bucket!r} (SAMDROP_BUCKET + {RESULTS_SUFFIX!r}) is "
                "not a valid bucket name: set SAMDROP_RESULTS_BUCKET"
            )
        positive = (
            "batch_size",
            "delivery_concurrency",
            "points_per_batch",
            "max_image_pixels",
            "max_masks",
            "io_threads",
            "endpoint_timeout_s",
            "request_timeout_s",
            "pipeline_parallelism",
            "max_input_bytes",
            "max_request_bytes",
            "max_instances",
            "max_prompts",
            "max_concepts",
            "max_concept_chars",
            "max_auto_points",
            "max_points_per_batch",
            "max_json_depth",
            "max_object_name_bytes",
        )
        if not 0 <= self.concept_score_threshold <= 1:
            yield f"SAMDROP_CONCEPT_SCORE_THRESHOLD must be within [0, 1], got {self.concept_score_threshold}"
        if self.tile_above_pixels < 0:
            yield f"SAMDROP_TILE_ABOVE_PIXELS must be 0 (off) or a pixel count, got {self.tile_above_pixels}"
        if not 0 <= self.tile_overlap < self.tile_size // 2 or self.tile_size < 64:
            yield (
                f"SAMDROP_TILE_SIZE={self.tile_size} / SAMDROP_TILE_OVERLAP={self.tile_overlap}: the tile "
                "must be at least 64 px and the overlap under half of it"
            )
        if self.amg_points_per_side is not None and not 1 <= self.amg_points_per_side <= 128:
            yield f"SAMDROP_AMG_POINTS_PER_SIDE must be auto or within 1..128, got {self.amg_points_per_side}"
        for choice, allowed in (("precision", PRECISIONS), ("compile", COMPILE_CHOICES)):
            if getattr(self, choice) not in allowed:
                yield f"{_env_name(choice)}={getattr(self, choice)!r} is not one of {', '.join(allowed)}"
        for name in positive:
            if getattr(self, name) <= 0:
                yield f"{_env_name(name)} must be > 0, got {getattr(self, name)}"
        if self.decoder_memory_bytes is not None and self.decoder_memory_bytes <= 0:
            yield "SAMDROP_DECODER_MEMORY_BYTES must be auto or > 0"
        if self.max_aspect_ratio < 1:
            yield f"SAMDROP_MAX_ASPECT_RATIO must be >= 1, got {self.max_aspect_ratio}"
        if self.shard_size < 0:
            yield "SAMDROP_SHARD_SIZE must be >= 0 (0: automatic)"
        if not 0 <= self.batch_window_ms <= 1000:
            yield "SAMDROP_BATCH_WINDOW_MS must be within 0..1000"
        if self.embedding_cache_size < 0:
            yield "SAMDROP_EMBEDDING_CACHE_SIZE must be >= 0"
        if not 5 <= self.max_delivery_attempts <= 100:
            yield "SAMDROP_MAX_DELIVERY_ATTEMPTS must be within 5..100 (Pub/Sub's dead-letter bounds)"
        if self.endpoint and not (
            self.endpoint.startswith(("http://", "https://")) or self.endpoint.startswith("projects/")
        ):
            yield "SAMDROP_ENDPOINT must be an http(s):// URL or projects/P/locations/R/endpoints/E"
        if self.pipeline_runner not in PIPELINE_RUNNERS:
            runners = ", ".join(PIPELINE_RUNNERS)
            yield f"SAMDROP_PIPELINE_RUNNER={self.pipeline_runner!r} is not one of {runners}"
        if self.pipeline_accelerator_count < 0:
            yield "SAMDROP_PIPELINE_ACCELERATOR_COUNT must be >= 0"
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            yield f"SAMDROP_LOG_LEVEL={self.log_level!r} is not DEBUG, INFO, WARNING or ERROR"
        if self.traces not in TRACES_MODES:
            yield f"SAMDROP_TRACES={self.traces!r} is not one of {', '.join(TRACES_MODES)}"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``env`` (usually ``os.environ`` at an edge); ``overrides`` win."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or f.name in overrides:
                continue
            parse = f.metadata["parse"] or str
            try:
                values[f.name] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{f.metadata['env']}={raw!r} is invalid: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The ``SAMDROP_*`` variables that rebuild these settings in another process."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    @property
    def output_bucket(self) -> str:
        """Where outputs go: ``SAMDROP_RESULTS_BUCKET``, else ``<bucket>-results``. A bucket of its
        own keeps output writes from notifying the uploads topic, locally as in Google Cloud."""
        return self.results_bucket or self.bucket + RESULTS_SUFFIX

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, help) for every setting, for docs and ``--help``."""
        return [
            (f.metadata["env"], str(f.default), f.metadata["help"])
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING
        ]


def _env_name(field_name: str) -> str:
    return next(str(f.metadata["env"]) for f in dataclasses.fields(Settings) if f.name == field_name)
