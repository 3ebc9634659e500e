"""Deploy options are checked before any plan exists; each message names the option to fix."""

from __future__ import annotations

import re

import pytest

from deploy.gcp.destroy import destroy_steps
from deploy.gcp.options import CPU_MACHINE_TYPE, GPU_MACHINE_TYPES, DeployOptions, checkpoint_folder
from deploy.gcp.plan import ApiCall
from deploy.gcp.steps import deploy_steps
from samdrop import models
from samdrop.errors import ConfigError

from .test_deploy_cloud_plan import sample_options, sample_settings


def test_the_sample_options_are_valid():
    assert sample_options().validate() == sample_options()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpu": "NVIDIA_K80"}, "--gpu 'NVIDIA_K80' is not one of NVIDIA_L4, NVIDIA_TESLA_T4"),
        ({"min_replicas": 3, "max_replicas": 2}, "--min-replicas 3 is larger than --max-replicas 2"),
        ({"min_replicas": 0, "max_replicas": 0}, "--max-replicas must be at least 1"),
        ({"min_replicas": -1}, "--min-replicas must be 0 or more"),
        ({"region": "uscentral"}, "--region 'uscentral' is not a region name"),
        ({"region": "us-central1; rm -rf /"}, "--region"),
        ({"bucket": "UPPER"}, "--bucket 'UPPER' is not a valid bucket name"),
        ({"bucket": "ab"}, "--bucket"),
        ({"bucket": "goog-bucket"}, "--bucket"),
        ({"bucket": "with.dots.example"}, "--bucket"),
        ({"project": "1starts-with-digit"}, "--project '1starts-with-digit' is not a project id"),
        ({"project": "short"}, "--project"),
        ({"model_type": "vit_x"}, "--model-type 'vit_x'"),
        ({"checkpoint": "/local/sam.pth"}, "--checkpoint '/local/sam.pth' must be a gs://bucket/path URI"),
        ({"checkpoint": "gs://"}, "--checkpoint 'gs://' is not a gs://bucket/path URI"),
        ({"checkpoint": "http://mirror/sam_vit_h_4b8939.pth"}, "or an https:// URL"),
        ({"model_type": "tiny"}, "--model-type tiny has random weights: its masks are meaningless"),
        ({"model_type": "classic", "checkpoint": None}, "--model-type classic runs on CPU only: leave --gpu"),
        ({"model_type": "classic", "gpu": None}, "--model-type classic takes no weights"),
        (
            {"model_type": "sam2.1_hiera_tiny", "checkpoint": "https://mirror/sam2.1_hiera_tiny.pt"},
            "weights are a Hugging Face repo, not one file",
        ),
        ({"models_bucket": "samdrop-demo-images-results"}, "--models-bucket must all differ"),
        ({"accelerator_count": 0}, "--accelerator-count"),
        ({"function_memory": "2GB"}, "--function-memory"),
        (
            {"function_concurrency": 4, "function_cpu": 0},
            "--function-concurrency above 1 needs --function-cpu",
        ),
        ({"function_timeout_s": 3600}, "--function-timeout"),
        ({"image_tag": "Bad Tag"}, "--image-tag"),
    ],
)
def test_each_bad_option_is_named(changes, message):
    with pytest.raises(ConfigError) as caught:
        sample_options(**changes).validate()
    assert message in caught.value.message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        sample_options(gpu="TPU", region="nowhere", min_replicas=5, max_replicas=1).validate()
    message = caught.value.message
    assert "--gpu" in message and "--region" in message and "--min-replicas" in message


@pytest.mark.parametrize("build", [deploy_steps, destroy_steps])
def test_plans_refuse_invalid_options(build):
    with pytest.raises(ConfigError, match="--bucket"):
        build(sample_options(bucket="Not A Bucket"), sample_settings())


@pytest.mark.parametrize(
    ("gpu", "machine"),
    [
        ("NVIDIA_L4", "g2-standard-8"),
        ("NVIDIA_TESLA_T4", "n1-standard-8"),
        ("NVIDIA_A100_80GB", "a2-ultragpu-1g"),
        ("NVIDIA_H100_80GB", "a3-highgpu-1g"),
    ],
)
def test_gpu_decides_the_machine_type(gpu, machine):
    assert sample_options(gpu=gpu).machine_type == machine
    assert GPU_MACHINE_TYPES[gpu] == machine


def test_the_defaults_deploy_the_tables_real_model_on_a_gpu_scaling_to_zero():
    options = DeployOptions(project="my-project", region="us-east4", bucket="my-bucket").validate()
    info = models.model_info(options.model_type)
    assert options.model_type == models.DEPLOY_DEFAULT and info.deploy_default
    assert not info.random_weights and not info.gated and info.automatic and info.needs_weights
    hardware = (options.accelerator, options.machine_type, options.min_replicas)
    assert hardware == ("NVIDIA_L4", "g2-standard-8", 0)
    assert options.weights_source == info.source  # its Hugging Face repo, staged by deploy
    assert options.checkpoint_uri == f"gs://my-bucket-models/{options.model_type}/"


def test_tiny_is_deployed_only_when_asked_for_with_the_flag():
    options = DeployOptions(
        project="my-project", region="us-east4", bucket="my-bucket", model_type="tiny",
        allow_random_weights=True,
    ).validate()  # fmt: skip
    assert (options.weights_source, options.checkpoint_uri) == (None, None)  # built, nothing staged


@pytest.mark.parametrize("model_type", [info.name for info in models.MODELS if not info.uses_gpu])
def test_a_cpu_only_type_gets_a_cpu_machine_and_no_gpu(model_type):
    options = sample_options(model_type=model_type, checkpoint=None, gpu=None).validate()
    assert (options.accelerator, options.accelerators, options.machine_type) == (None, 0, CPU_MACHINE_TYPE)
    steps = deploy_steps(options, sample_settings())
    (endpoint,) = [s for s in steps if s.key == "endpoint"]
    assert isinstance(endpoint.action, ApiCall)
    assert endpoint.action.args["accelerator_type"] is None
    assert endpoint.action.args["accelerator_count"] == 0
    assert endpoint.action.args["machine_type"] == CPU_MACHINE_TYPE
    assert "weights" not in [s.key for s in steps]


@pytest.mark.parametrize(
    ("changes", "source", "staged"),
    [
        (  # Meta's file from its server
            {"model_type": "vit_b", "checkpoint": None},
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "gs://samdrop-demo-images-models/vit_b/sam_vit_b_01ec64.pth",
        ),
        (  # or from the mirror SAMDROP_WEIGHTS_URL names
            {"model_type": "vit_b", "checkpoint": None, "weights_url": "https://mirror.example/sam/"},
            "https://mirror.example/sam/sam_vit_b_01ec64.pth",
            "gs://samdrop-demo-images-models/vit_b/sam_vit_b_01ec64.pth",
        ),
        (  # any https:// file, its checksum fragment kept for the download and dropped from the name
            {"model_type": "vit_h", "checkpoint": "https://x.example/m/my_vit_h.pth#sha256=" + "a" * 64},
            "https://x.example/m/my_vit_h.pth#sha256=" + "a" * 64,
            "gs://samdrop-demo-images-models/vit_h/my_vit_h.pth",
        ),
        (  # a gated repo is staged with the deployer's HF_TOKEN, so the endpoint needs none
            {"model_type": "sam3", "checkpoint": None},
            "facebook/sam3",
            "gs://samdrop-demo-images-models/sam3/",
        ),
        (  # a gs:// checkpoint is used where it is
            {"model_type": "vit_h", "checkpoint": "gs://elsewhere/sam/sam_vit_h_4b8939.pth"},
            None,
            "gs://elsewhere/sam/sam_vit_h_4b8939.pth",
        ),
    ],
)
def test_where_the_weights_come_from_and_where_they_are_staged(changes, source, staged):
    options = sample_options(**changes).validate()
    assert (options.weights_source, options.checkpoint_uri) == (source, staged)
    steps = {s.key: s for s in deploy_steps(options, sample_settings())}
    assert ("weights" in steps) == (source is not None)
    (model,) = [s for s in steps.values() if s.key == "model"]
    assert isinstance(model.action, ApiCall)
    assert model.action.args["artifact_uri"] == checkpoint_folder(staged)


def test_names_derive_from_project_region_and_tag():
    names = sample_options().names
    assert names.service_account("function") == "samdrop-function@samdrop-demo.iam.gserviceaccount.com"
    assert names.image == "europe-west4-docker.pkg.dev/samdrop-demo/samdrop/predictor:v1"
    assert names.pipeline_template == "gs://samdrop-demo-images-pipelines/templates/samdrop_pipeline.yaml"
    assert names.pipeline_root == "gs://samdrop-demo-images-results/pipeline-root/"
    assert (names.results_bucket, names.pipelines_bucket) == (
        "samdrop-demo-images-results",
        "samdrop-demo-images-pipelines",
    )
    assert names.endpoint == "projects/samdrop-demo/locations/europe-west4/endpoints/${endpoint_id}"
    named = sample_options(results_bucket="my-results", pipelines_bucket="my-pipelines").names
    assert named.pipeline_template == "gs://my-pipelines/templates/samdrop_pipeline.yaml"
    assert named.pipeline_root == "gs://my-results/pipeline-root/"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"results_bucket": "samdrop-demo-images"}, "--results-bucket must differ from --bucket"),
        ({"pipelines_bucket": "samdrop-demo-images"}, "--pipelines-bucket must differ from --bucket"),
        ({"results_bucket": "x", "pipelines_bucket": "x"}, "must all differ"),
        ({"bucket": "b" * 60}, "--results-bucket 'bbb"),  # <bucket>-results passes 63 characters
        ({"results_bucket": "Results"}, "--results-bucket 'Results' is not a valid bucket name"),
        ({"uploaders": ("ana@example.com",)}, "--uploader 'ana@example.com' is not an IAM member"),
        ({"uploaders": ("user:a@b.c,role=x",)}, "--uploader"),
    ],
)
def test_results_and_pipelines_live_in_buckets_of_their_own(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sample_options(**changes).validate()


def test_checkpoint_folder():
    assert checkpoint_folder(None) is None
    assert checkpoint_folder("gs://b/x/sam_vit_b_01ec64.pth") == "gs://b/x/"
    assert checkpoint_folder("gs://b/x") == "gs://b/x/"


def test_auto_model_type_is_decided_at_deploy_time():
    from deploy.gcp.cli import _deployed_type

    assert _deployed_type("auto", "gs://m/sam/sam_vit_h_4b8939.pth") == "vit_h"
    assert _deployed_type("auto", None) == models.DEPLOY_DEFAULT
    assert _deployed_type("classic", None) == "classic"


def test_other_weights_in_the_same_folder_make_a_new_model():
    def model_label(**changes):
        options = sample_options(model_type="vit_b", checkpoint=None, **changes)
        steps = deploy_steps(options, sample_settings())
        (model,) = [s for s in steps if s.key == "model"]
        assert isinstance(model.action, ApiCall)
        return model.action.args["artifact_uri"], model.action.args["labels"]["samdrop_config"]

    official = model_label()
    mirrored = model_label(weights_url="https://mirror.example/sam/")
    assert official[0] == mirrored[0]  # the same staged file name, the same folder
    assert official[1] != mirrored[1]


def test_samdrop_checkpoint_auto_deploys_the_official_weights(monkeypatch, capsys):
    from deploy.command import main

    monkeypatch.setenv("SAMDROP_CHECKPOINT", "auto")  # the settings' word for "the type's own weights"
    assert main(["deploy", "--project", "samdrop-demo", "--dry-run", "--model-type", "vit_b"]) == 0
    out = capsys.readouterr().out
    assert "stage_file(url='https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth'" in out
