"""What ``samdrop deploy`` / ``destroy`` accept, checked before anything changes, and the names
of everything they create (derived here only, so deploy and destroy agree)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from samdrop.errors import ConfigError
from samdrop.models import BY_NAME, DEPLOY_DEFAULT, HF_REPO, META_FILE, ModelInfo, unknown_type_message
from samdrop.settings import RESULTS_SUFFIX

# The GPU decides the machine: Vertex AI accepts each accelerator on one machine family only.
GPU_MACHINE_TYPES = {
    "NVIDIA_L4": "g2-standard-8",
    "NVIDIA_TESLA_T4": "n1-standard-8",
    "NVIDIA_A100_80GB": "a2-ultragpu-1g",
    "NVIDIA_H100_80GB": "a3-highgpu-1g",
}
DEFAULT_GPU = "NVIDIA_L4"
# A model that never uses a GPU (the table's ``uses_gpu``) gets this machine and no accelerator:
# 4 vCPUs and 16 GB, enough for classic's OpenCV and scikit-image on one image at a time.
CPU_MACHINE_TYPE = "n2-standard-4"
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")  # no dots: those need domain verification
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_MEMORY = re.compile(r"^[1-9][0-9]*(Mi|Gi)$")
_MEMBER = re.compile(r"^(user|group|serviceAccount|domain):[^\s,=]+$")
_GS_URI = re.compile(r"^gs://[a-z0-9][a-z0-9._-]+/.+")

FUNCTION_NAME = "samdrop-on-upload"
ENDPOINT_NAME = "samdrop-sam"
REPOSITORY = "samdrop"
CONFIG_LABEL = "samdrop_config"  # label holding a digest of what deploy asked for
# The template decides what code runs as the pipeline account: it lives in <bucket>-pipelines, which
# no service account may write. The root is written by Vertex AI as the pipeline account, so it lives
# in the results bucket, which only samdrop's own accounts write (docs/operations.md "Trust zones").
PIPELINE_TEMPLATE_OBJECT = "templates/samdrop_pipeline.yaml"
PIPELINE_ROOT_PREFIX = "pipeline-root/"
PIPELINES_SUFFIX = "-pipelines"
# Deploy copies the weights here (only the deployer writes it), one folder per model type, so the
# endpoint and the pipeline never depend on Meta's server or the Hugging Face hub being reachable.
MODELS_SUFFIX = "-models"


@dataclass(frozen=True)
class DeployOptions:
    """The command-line choices of ``samdrop deploy``; ``validate()`` before building a plan."""

    project: str
    region: str
    bucket: str
    results_bucket: str | None = None  # None: <bucket>-results
    pipelines_bucket: str | None = None  # None: <bucket>-pipelines
    models_bucket: str | None = None  # None: <bucket>-models
    uploaders: tuple[str, ...] = ()  # IAM members granted write on the upload bucket only
    model_type: str = DEPLOY_DEFAULT
    # gs:// (used where it is), https:// (staged into the models bucket); None: the type's official
    # weights, staged into the models bucket (Meta's file under SAMDROP_WEIGHTS_URL, or the HF repo)
    checkpoint: str | None = None
    weights_url: str | None = None  # a mirror of Meta's SAM 1 files (SAMDROP_WEIGHTS_URL)
    allow_random_weights: bool = False  # tiny's meaningless masks, asked for by name
    gpu: str | None = None  # None: DEFAULT_GPU, or no GPU for a CPU-only model type
    accelerator_count: int = 1
    min_replicas: int = 0  # scale to zero when idle (Vertex AI's preview API; vertex_calls._deploy)
    max_replicas: int = 1
    function_memory: str = "2Gi"
    function_cpu: int = 1
    function_concurrency: int = 4
    function_timeout_s: int = 540
    function_max_instances: int = 20
    image_tag: str = "latest"
    source_digest: str = "none"  # of the code deploy ships (function_source.source_digest())

    def validate(self) -> DeployOptions:
        """Raise :class:`ConfigError` naming every bad option; return ``self`` when all are fine."""
        problems = list(self._problems())
        if problems:
            raise ConfigError("invalid deploy options:\n  - " + "\n  - ".join(problems))
        return self

    def _problems(self) -> list[str]:
        problems = []
        if not _PROJECT_ID.match(self.project):
            problems.append(
                f"--project {self.project!r} is not a project id (6-30 of a-z 0-9 -, starting with a letter)"
            )
        if not _REGION.match(self.region):
            problems.append(f"--region {self.region!r} is not a region name like us-central1")
        if not _BUCKET.match(self.bucket) or self.bucket.startswith("goog") or "google" in self.bucket:
            problems.append(
                f"--bucket {self.bucket!r} is not a valid bucket name "
                "(3-63 of a-z 0-9 _ -, starting and ending with a letter or digit, no 'goog')"
            )
        buckets = {
            "--results-bucket": self.results,
            "--pipelines-bucket": self.pipelines,
            "--models-bucket": self.models,
        }
        for flag, name in buckets.items():
            if not _BUCKET.match(name) or name.startswith("goog") or "google" in name:
                problems.append(
                    f"{flag} {name!r} is not a valid bucket name (3-63 of a-z 0-9 _ -, no 'goog'): "
                    f"name it with {flag}"
                )
            elif name == self.bucket:
                problems.append(
                    f"{flag} must differ from --bucket {self.bucket}: whoever may upload could then "
                    "write there too (results, or the pipeline's code)"
                )
        if len({self.results, self.pipelines, self.models}) < 3:
            problems.append("--results-bucket, --pipelines-bucket and --models-bucket must all differ")
        for member in self.uploaders:
            if not _MEMBER.match(member):
                problems.append(
                    f"--uploader {member!r} is not an IAM member like user:ana@example.com, "
                    "group:team@example.com, serviceAccount:… or domain:example.com"
                )
        info = BY_NAME.get(self.model_type)
        if info is None:
            problems.append(unknown_type_message(self.model_type, where="--model-type", allow_auto=False))
        else:
            problems += self._model_problems(info)
        if self.gpu is not None and self.gpu not in GPU_MACHINE_TYPES:
            problems.append(f"--gpu {self.gpu!r} is not one of {', '.join(GPU_MACHINE_TYPES)}")
        if self.max_replicas < 1:
            problems.append(f"--max-replicas must be at least 1, got {self.max_replicas}")
        if self.min_replicas < 0:
            problems.append(f"--min-replicas must be 0 or more, got {self.min_replicas}")
        elif self.min_replicas > self.max_replicas:
            problems.append(
                f"--min-replicas {self.min_replicas} is larger than --max-replicas {self.max_replicas}"
            )
        if self.accelerator_count < 1:
            problems.append(f"--accelerator-count must be at least 1, got {self.accelerator_count}")
        if not _MEMORY.match(self.function_memory):
            problems.append(f"--function-memory {self.function_memory!r} must look like 512Mi or 2Gi")
        if self.function_concurrency < 1:
            problems.append("--function-concurrency must be at least 1")
        if self.function_concurrency > 1 and self.function_cpu < 1:
            problems.append("--function-concurrency above 1 needs --function-cpu 1 or more")
        if not 1 <= self.function_timeout_s <= 540:
            problems.append(
                "--function-timeout must be within 1..540 seconds (event-driven gen2 functions' limit)"
            )
        if self.function_max_instances < 1:
            problems.append("--function-max-instances must be at least 1")
        if not _TAG.match(self.image_tag):
            problems.append(f"--image-tag {self.image_tag!r} is not a valid image tag")
        return problems

    def _model_problems(self, info: ModelInfo) -> list[str]:
        problems = []
        if info.random_weights and not self.allow_random_weights:
            problems.append(
                f"--model-type {info.name} has random weights: its masks are meaningless. Deploy a real "
                f"model (leave --model-type out for {DEPLOY_DEFAULT}), or add --allow-random-weights to "
                "deploy it anyway for a pipeline test"
            )
        if not info.uses_gpu and self.gpu is not None:
            problems.append(
                f"--model-type {info.name} runs on CPU only: leave --gpu out (it gets a {CPU_MACHINE_TYPE})"
            )
        checkpoint = self.checkpoint
        if checkpoint is None:
            return problems
        if not info.needs_weights:
            problems.append(f"--model-type {info.name} takes no weights: leave --checkpoint out")
        elif checkpoint.startswith("gs://"):
            if not _GS_URI.match(checkpoint):
                problems.append(f"--checkpoint {checkpoint!r} is not a gs://bucket/path URI")
        elif checkpoint.startswith("https://"):
            if info.weights == HF_REPO:
                problems.append(
                    f"--checkpoint {checkpoint}: {info.name} weights are a Hugging Face repo, not one file: "
                    "give a gs:// folder (what save_pretrained writes), or set HF_ENDPOINT to a mirror of "
                    "the hub and leave --checkpoint out"
                )
        else:
            problems.append(
                f"--checkpoint {checkpoint!r} must be a gs://bucket/path URI or an https:// URL "
                "(a local file: copy it to a bucket first)"
            )
        return problems

    @property
    def weights_source(self) -> str | None:
        """What deploy copies into the models bucket: an https:// URL of a SAM 1 file, a Hugging
        Face repo id (``facebook/…``); None when nothing is copied (a gs:// checkpoint is used where
        it is; classic and tiny take no weights)."""
        info = BY_NAME[self.model_type]
        if not info.needs_weights or (self.checkpoint or "").startswith("gs://"):
            return None
        if self.checkpoint is not None:
            return self.checkpoint
        if info.weights == META_FILE:
            from predictor import official_url  # requests only; no ML stack

            return official_url(info.name, self.weights_url)
        return info.source

    @property
    def checkpoint_uri(self) -> str | None:
        """The gs:// checkpoint the endpoint and the pipeline load: ``--checkpoint gs://…`` as given,
        else where deploy stages the weights (the SAM 1 file, or the repo's folder); None: no weights."""
        source = self.weights_source
        if source is None:
            return self.checkpoint
        folder = f"gs://{self.models}/{self.model_type}/"
        if BY_NAME[self.model_type].weights == META_FILE:
            return folder + source.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return folder

    @property
    def accelerator(self) -> str | None:
        """The GPU each replica gets; None for a CPU-only model type."""
        if not BY_NAME[self.model_type].uses_gpu:
            return None
        return self.gpu or DEFAULT_GPU

    @property
    def accelerators(self) -> int:
        """GPUs per replica: ``accelerator_count``, or 0 without a GPU."""
        return self.accelerator_count if self.accelerator is not None else 0

    @property
    def results(self) -> str:
        """The results bucket: ``--results-bucket``, else ``<bucket>-results``."""
        return self.results_bucket or self.bucket + RESULTS_SUFFIX

    @property
    def pipelines(self) -> str:
        """The bucket holding the pipeline template: ``--pipelines-bucket``, else ``<bucket>-pipelines``."""
        return self.pipelines_bucket or self.bucket + PIPELINES_SUFFIX

    @property
    def models(self) -> str:
        """The bucket deploy stages weights into: ``--models-bucket``, else ``<bucket>-models``."""
        return self.models_bucket or self.bucket + MODELS_SUFFIX

    @property
    def machine_type(self) -> str:
        return CPU_MACHINE_TYPE if self.accelerator is None else GPU_MACHINE_TYPES[self.accelerator]

    @property
    def names(self) -> Names:
        return Names(self.project, self.region, self.bucket, self.image_tag, self.results, self.pipelines)


@dataclass(frozen=True)
class Names:
    """Every resource name a deployment uses, from project, region, buckets and image tag."""

    project: str
    region: str
    bucket: str
    image_tag: str
    results_bucket: str
    pipelines_bucket: str

    def service_account(self, role: str) -> str:
        """``samdrop-<role>@<project>.iam.gserviceaccount.com`` for role function, endpoint or pipeline."""
        return f"samdrop-{role}@{self.project}.iam.gserviceaccount.com"

    @property
    def image(self) -> str:
        return f"{self.region}-docker.pkg.dev/{self.project}/{REPOSITORY}/predictor:{self.image_tag}"

    def custom_role(self, name: str) -> str:
        """``projects/<project>/roles/<name>``: a role deploy defines in the project."""
        return f"projects/{self.project}/roles/{name}"

    @property
    def pipeline_template(self) -> str:
        return f"gs://{self.pipelines_bucket}/{PIPELINE_TEMPLATE_OBJECT}"

    @property
    def pipeline_root(self) -> str:
        return f"gs://{self.results_bucket}/{PIPELINE_ROOT_PREFIX}"

    @property
    def endpoint(self) -> str:
        """The endpoint resource name; its id is known once the endpoint step ran."""
        return f"projects/{self.project}/locations/{self.region}/endpoints/${{endpoint_id}}"


def checkpoint_folder(checkpoint: str | None) -> str | None:
    """The ``gs://`` folder Vertex AI copies to ``AIP_STORAGE_URI``: the URI itself if it is a
    folder (ends with ``/`` or has no ``.pth``), else its parent."""
    if checkpoint is None:
        return None
    if checkpoint.endswith("/") or not checkpoint.endswith((".pth", ".pt")):
        return checkpoint.rstrip("/") + "/"
    return checkpoint.rsplit("/", 1)[0] + "/"
