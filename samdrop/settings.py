"""One frozen settings object, built from a mapping passed in and validated at start-up.

Nothing below the edges reads ``os.environ``: an edge (CLI, function entry point, model server
load) calls ``Settings.from_env(os.environ)`` once and passes the result down. Every field is read
from ``SAMDROP_<FIELD NAME>`` (pydantic-settings, ``env_prefix``); its type and bounds are checked
by pydantic, and every problem found is reported in one ``ConfigError`` that names the variable
and what it should be (``SAMDROP_BATCH_SIZE='abc' should be a valid integer …``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from samdrop.budgets import DEFAULT_MAX_JSON_DEPTH
from samdrop.concepts import MAX_CONCEPT_CHARS, MAX_CONCEPTS_PER_IMAGE
from samdrop.errors import ConfigError
from samdrop.models import MODEL_TYPES, NO_WEIGHTS, model_info, unknown_type_message

ENV_PREFIX = "SAMDROP_"
Device = Literal["auto", "cpu", "cuda"]
PipelineRunner = Literal["local", "vertex", "none"]
Precision = Literal["auto", "fp32", "bf16"]
CompileChoice = Literal["auto", "on", "off"]
TracesMode = Literal["off", "console", "otlp", "cloud"]  # where spans go (samdrop/tracing.py)
DEVICES: tuple[str, ...] = get_args(Device)
PIPELINE_RUNNERS: tuple[str, ...] = get_args(PipelineRunner)
PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_CHOICES: tuple[str, ...] = get_args(CompileChoice)
TRACES_MODES: tuple[str, ...] = get_args(TracesMode)
RESULTS_SUFFIX = "-results"  # the default results bucket is <upload bucket>-results
# SAMDROP_REQUEST_TIMEOUT_S's default, for the callers that run without settings (deploy's admin calls).
DEFAULT_REQUEST_TIMEOUT_S = 60.0
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def _prefix(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip().lstrip("/")
    if not text:
        raise ValueError("must not be empty")
    return text if text.endswith("/") else text + "/"


def _empty_is_none(value: Any) -> Any:
    return (value.strip() or None) if isinstance(value, str) else value


def _auto_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value


Prefix = Annotated[str, BeforeValidator(_prefix)]  # an object name prefix: no leading /, one trailing /
OptionalText = Annotated[str | None, BeforeValidator(_empty_is_none)]  # empty: unset


def _env(default: Any, help: str, **bounds: Any) -> Any:
    """A setting: its default, the one line ``samdrop settings`` prints, and pydantic bounds."""
    return Field(default, description=help, **bounds)


class Settings(BaseSettings):
    """Every knob of samdrop, each read from one ``SAMDROP_*`` variable (see ``describe()``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Google Cloud resources (emulated locally).
    project: str = _env("samdrop-local", "Google Cloud project id")
    region: str = _env("us-central1", "region for Vertex AI and the function")
    bucket: str = _env("samdrop-local", "bucket users upload into")
    results_bucket: OptionalText = _env(
        None,
        "bucket for outputs (default: <bucket>-results, as `samdrop deploy` makes; may be the upload bucket)",
    )
    incoming_prefix: Prefix = _env("incoming/", "single uploads")
    batches_prefix: Prefix = _env("batches/", "bulk drops")
    results_prefix: Prefix = _env("results/", "outputs (never triggers)")
    uploads_topic: str = _env("samdrop-uploads", "GCS notification topic")
    completions_topic: str = _env("samdrop-completions", "completion topic")
    completions_subscription: str = _env("samdrop-completions-sub", "user's pull subscription")
    dead_letter_topic: str = _env("samdrop-dead-letter", "dead letters")
    max_delivery_attempts: int = _env(
        5, "deliveries before dead-lettering (5..100, Pub/Sub's dead-letter bounds)", ge=5, le=100
    )

    # Endpoint the function calls: Vertex endpoint resource name or http(s) URL of a CPR server.
    endpoint: OptionalText = _env(None, "projects/P/locations/R/endpoints/E or http(s)://host:port")
    endpoint_timeout_s: float = _env(300.0, "endpoint call timeout", gt=0)
    request_timeout_s: float = _env(
        DEFAULT_REQUEST_TIMEOUT_S,
        "timeout of one Cloud Storage or Pub/Sub call (and of its retries, together)",
        gt=0,
    )

    # Bulk drops (pipeline/): who runs the KFP pipeline for batches/<id>/_READY, and how.
    pipeline_runner: PipelineRunner = _env("local", "local (kfp.local), vertex (Vertex AI Pipelines) or none")
    pipeline_template: OptionalText = _env(None, "gs:// URI of the compiled pipeline YAML (vertex)")
    pipeline_root: OptionalText = _env(None, "gs:// pipeline root (vertex); local: <state dir>/pipelines")
    pipeline_service_account: OptionalText = _env(None, "service account pipeline runs act as (vertex)")
    pipeline_image: OptionalText = _env(None, "container image of the pipeline's components (vertex)")
    shard_size: int = _env(
        0, "images per pipeline shard task; 0: the batch split evenly over the parallel shard tasks", ge=0
    )
    pipeline_parallelism: int = _env(4, "shard tasks run at once", gt=0)
    pipeline_machine_type: str = _env("g2-standard-8", "machine type of a shard task (vertex)")
    pipeline_accelerator_type: str = _env("NVIDIA_L4", "GPU of a shard task (vertex)")
    pipeline_accelerator_count: int = _env(1, "GPUs per shard task (vertex; 0 for CPU)", ge=0)

    # Model and engine.
    model_type: str = _env(
        "auto",
        "one of "
        + ", ".join(MODEL_TYPES)
        + "; auto: the newest SAM whose weights are cached or given (SAM 2.1 over SAM 1), else classic",
    )
    checkpoint: OptionalText = _env(
        None,
        "checkpoint path, http(s):// or gs:// URI (#sha256=<hex> checks it); SAM 2.1: a save_pretrained "
        "folder or gs:// folder; auto or empty: the type's official weights (Meta's file, Hugging Face "
        "repo; tiny: built)",
    )
    device: Device = _env("auto", "auto, cpu or cuda")
    fast_path: bool = _env(True, "bf16 autocast + SDPA attention + batching")
    precision: Precision = _env(
        "auto", "auto (bf16 where the GPU or CPU has it natively, else fp32), fp32 or bf16"
    )
    compile: CompileChoice = _env(
        "auto", "torch.compile the automatic-mask decoder: auto (on CPUs), on or off"
    )
    batch_size: int = _env(4, "images per encoder pass (SAM 2.1, SAM 3: on a GPU; one on a CPU)", gt=0)
    batch_window_ms: float = _env(
        5.0, "how long the server waits to group concurrent requests (0..1000)", ge=0, le=1000
    )
    points_per_batch: int = _env(64, "automatic-mask points per decoder call", gt=0)
    embedding_cache_size: int = _env(16, "image embeddings kept (LRU)", ge=0)
    max_image_pixels: int = _env(64_000_000, "larger images are refused (decompression bombs)", gt=0)
    # Budgets: every request is checked against these before any work (docs/operations.md "Limits").
    max_input_bytes: int = _env(100 * 2**20, "larger uploads are refused before download (bytes)", gt=0)
    max_request_bytes: int = _env(16 * 2**20, "larger :predict request bodies are refused (bytes)", gt=0)
    max_instances: int = _env(32, "instances per :predict request", gt=0)
    max_prompts: int = _env(64, "boxes, and points, per image", gt=0)
    max_concepts: int = _env(MAX_CONCEPTS_PER_IMAGE, "SAM 3 text concepts per image", gt=0)
    max_concept_chars: int = _env(MAX_CONCEPT_CHARS, "characters per SAM 3 text concept", gt=0)
    concept_score_threshold: float = _env(
        0.5, "SAM 3 keeps instances whose score (detection x presence) is above this, in [0, 1]", ge=0, le=1
    )
    max_auto_points: int = _env(
        65_536, "automatic-mask grid points per image, all crop layers together", gt=0
    )
    max_points_per_batch: int = _env(256, "a request's amg.points_per_batch is clamped to this", gt=0)
    decoder_memory_bytes: Annotated[int | None, BeforeValidator(_auto_is_none)] = _env(
        None,
        "memory one automatic-mask decoder batch may use; points_per_batch shrinks to fit the image "
        "(auto: a quarter of the device's memory)",
        gt=0,
    )
    max_aspect_ratio: float = _env(100.0, "long side / short side above which an image is refused", ge=1)
    max_json_depth: int = _env(
        DEFAULT_MAX_JSON_DEPTH,
        "nesting depth of JSON read from users (samdrop-prompts, notifications, predictor requests)",
        gt=0,
    )
    max_object_name_bytes: int = _env(
        1024, "longest output object name (Cloud Storage: 1024 UTF-8 bytes)", gt=0
    )
    amg_points_per_side: Annotated[int | None, BeforeValidator(_auto_is_none)] = _env(
        None,
        "automatic masks' default grid side (1..128); auto: 32 on a GPU, on a CPU what keeps an image "
        "near 10 s",
        ge=1,
        le=128,
    )
    max_masks: int = _env(256, "cap on masks returned per image", gt=0)
    tile_above_pixels: int = _env(
        0,
        "tile (and stitch) images with more pixels than this even when not asked; 0: only when asked",
        ge=0,
    )
    tile_size: int = _env(1024, "default tile side, px, when tiling is asked with true", ge=64)
    tile_overlap: int = _env(128, "default overlap of neighbouring tiles, px", ge=0)
    cache_dir: Path = _env(Path.home() / ".cache" / "samdrop", "checkpoint download cache")
    weights_url: OptionalText = _env(
        None,
        "mirror of Meta's checkpoints (http(s):// or gs:// folder holding sam_vit_*.pth) for checkpoint auto",
    )
    io_threads: int = _env(8, "threads for image reads and decodes", gt=0)

    # Local stack.
    state_dir: Path = _env(Path(".samdrop"), "local stack state and logs")
    gcs_port: int = _env(4443, "fake-gcs-server port", gt=0, lt=65536)
    pubsub_port: int = _env(8085, "Pub/Sub emulator port", gt=0, lt=65536)
    predictor_port: int = _env(8080, "CPR predictor server port", gt=0, lt=65536)
    function_port: int = _env(8081, "functions-framework port", gt=0, lt=65536)
    bridge_port: int = _env(8082, "local delivery bridge's status port", gt=0, lt=65536)

    log_level: str = _env("INFO", "DEBUG, INFO, WARNING or ERROR")
    # OpenTelemetry spans (samdrop/tracing.py).
    traces: TracesMode = _env(
        "off", "off, console, otlp (to OTEL_EXPORTER_OTLP_ENDPOINT) or cloud (Cloud Trace)"
    )

    # Pub/Sub delivery to the function (deploy/resources.py; checked there against Pub/Sub's bounds).
    uploads_subscription: str = _env("samdrop-uploads-sub", "subscription feeding the function (local)")
    delivery_concurrency: int = _env(8, "uploads delivered to the function at once (local bridge)", gt=0)
    dead_letter_subscription: str = _env("samdrop-dead-letter-sub", "pull subscription keeping dead letters")
    push_ack_deadline_s: int = _env(600, "seconds a push may take before redelivery (10..600)")
    retry_min_backoff_s: float = _env(10.0, "first redelivery delay after a failure (0..600)")
    retry_max_backoff_s: float = _env(600.0, "longest redelivery delay (0..600)")

    def __init__(self, **values: Any) -> None:
        """Settings from field values (strings are parsed); ``ConfigError`` lists every problem."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError("invalid settings: " + "; ".join(map(_problem, exc.errors()))) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed in: ``Settings()`` never reads ``os.environ`` (see ``from_env``)."""
        return (init_settings,)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = list(self._problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _problems(self) -> Iterator[str]:
        """What the field types cannot say: checks across fields, names and URL forms."""
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
        for name in ("bucket", "results_bucket"):
            value = getattr(self, name)
            if value is not None and not _BUCKET_NAME.match(value):
                yield f"{env_name(name)}={value!r} is not a valid bucket name (3-63 of a-z 0-9 . _ -)"
        if self.results_bucket is None and not _BUCKET_NAME.match(self.output_bucket):
            yield (
                f"the default results bucket {self.output_bucket!r} (SAMDROP_BUCKET + {RESULTS_SUFFIX!r}) is "
                "not a valid bucket name: set SAMDROP_RESULTS_BUCKET"
            )
        if self.tile_overlap >= self.tile_size // 2:
            yield (
                f"SAMDROP_TILE_SIZE={self.tile_size} / SAMDROP_TILE_OVERLAP={self.tile_overlap}: the "
                "overlap must be under half of the tile"
            )
        if self.endpoint and not self.endpoint.startswith(("http://", "https://", "projects/")):
            yield "SAMDROP_ENDPOINT must be an http(s):// URL or projects/P/locations/R/endpoints/E"
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            yield f"SAMDROP_LOG_LEVEL={self.log_level!r} is not DEBUG, INFO, WARNING or ERROR"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``env`` (usually ``os.environ`` at an edge); ``overrides`` win."""
        return cls(**{**_MappingSource(cls, env)(), **overrides})

    def replace(self, **changes: Any) -> Settings:
        return type(self)(**{**self.model_dump(), **changes})

    def to_env(self) -> dict[str, str]:
        """The ``SAMDROP_*`` variables that rebuild these settings in another process."""
        return {
            env_name(name): str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    @property
    def output_bucket(self) -> str:
        """Where outputs go: ``SAMDROP_RESULTS_BUCKET``, else ``<bucket>-results``. A bucket of its
        own keeps output writes from notifying the uploads topic, locally as in Google Cloud."""
        return self.results_bucket or self.bucket + RESULTS_SUFFIX

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, help) for every setting, for docs and ``--help``."""
        return [
            (env_name(name), str(info.default), info.description or "")
            for name, info in cls.model_fields.items()
        ]


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a mapping passed in instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._env.items() if name.startswith(ENV_PREFIX)}


def env_name(field_name: str) -> str:
    """The variable a setting is read from: ``batch_size`` → ``SAMDROP_BATCH_SIZE``."""
    return ENV_PREFIX + field_name.upper()


def _problem(error: ErrorDetails) -> str:
    """One pydantic error as the variable to fix and what it should be."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across fields (:meth:`Settings._problems`): already worded
        return message
    return f"{env_name(str(error['loc'][0]))}={error['input']!r} {message.removeprefix('Input ')}"
