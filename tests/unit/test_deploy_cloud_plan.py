"""The deploy and destroy plans: golden files, the function's environment, its staged source.

Golden plans live in tests/data/deploy/. After an intended change to the plan, regenerate them with
    SAMDROP_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_deploy_cloud_plan.py
and review the diff like code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy.gcp import function_source, iam
from deploy.gcp.destroy import destroy_steps
from deploy.gcp.options import DeployOptions
from deploy.gcp.plan import ApiCall, Gcloud, render_plan
from deploy.gcp.steps import APIS, deploy_steps, env_vars_flag, function_env
from samdrop.settings import Settings

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "deploy"
REPO_ROOT = Path(__file__).resolve().parents[2]
REGENERATE = os.environ.get("SAMDROP_REGENERATE_GOLDEN") == "1"

# What the function's environment does not have (pip install '.[function]' pulls none of them).
WITHOUT = ("torch", "torchvision", "segment_anything", "cv2", "kfp")


def sample_options(**changes) -> DeployOptions:
    values = dict(
        project="samdrop-demo",
        region="europe-west4",
        bucket="samdrop-demo-images",
        model_type="vit_h",
        checkpoint="gs://samdrop-demo-models/sam/sam_vit_h_4b8939.pth",
        gpu="NVIDIA_L4",
        min_replicas=0,
        max_replicas=2,
        image_tag="v1",
        source_digest="0" * 64,
        uploaders=("group:samdrop-uploaders@example.com",),
    )
    return DeployOptions(**{**values, **changes})


def sample_settings(**changes) -> Settings:
    # from an empty mapping: the plan must not depend on the environment of whoever runs the tests
    fixed = {"state_dir": Path(".samdrop"), "cache_dir": Path("~/.cache/samdrop")}  # not the user's home
    return Settings.from_env({}, **{**fixed, **changes})


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with SAMDROP_REGENERATE_GOLDEN=1 to write it"
    assert text == path.read_text(), (
        f"the plan differs from {path}; if the change is intended, regenerate it (see module docstring)"
    )


def test_deploy_plan_matches_the_golden_plan():
    _check_golden("plan_deploy_sample.txt", render_plan(deploy_steps(sample_options(), sample_settings())))


def test_the_default_deploy_plan_matches_its_golden_plan():
    """No model flag: the table's deploy default, its weights staged into the models bucket, on a GPU
    that scales to zero."""
    options = DeployOptions(
        project="samdrop-demo", region="us-central1", bucket="samdrop-demo-images", image_tag="v1",
        source_digest="0" * 64,
    )  # fmt: skip
    _check_golden("plan_deploy_default.txt", render_plan(deploy_steps(options, sample_settings())))


def test_destroy_plan_matches_the_golden_plan():
    steps = destroy_steps(sample_options(), sample_settings(), delete_data=True)
    _check_golden("plan_destroy_sample.txt", render_plan(steps))


def test_deploy_plan_has_every_issue_step_in_dependency_order():
    keys = [step.key for step in deploy_steps(sample_options(), sample_settings())]
    order = [
        "apis",
        "bucket:samdrop-demo-images",
        "topic:samdrop-uploads",
        "topic:samdrop-dead-letter",
        "notification",
        "service-account:function",
        "artifact-registry",
        "image",
        "model",
        "endpoint",
        "pipeline-template",
        "function-source",
        "function",
        "trigger-dead-letter",
    ]
    positions = [keys.index(key) for key in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))
    assert len(keys) == len(set(keys)), "step keys must be unique"


def test_plan_is_deterministic_and_independent_of_the_environment(monkeypatch):
    first = render_plan(deploy_steps(sample_options(), sample_settings()))
    monkeypatch.setenv("SAMDROP_BUCKET", "someone-elses-bucket")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    assert render_plan(deploy_steps(sample_options(), sample_settings())) == first


def test_enable_apis_step_lists_every_api_the_system_needs():
    (apis,) = [s for s in deploy_steps(sample_options(), sample_settings()) if s.key == "apis"]
    assert isinstance(apis.action, Gcloud)
    for api in (
        "aiplatform",
        "cloudfunctions",
        "run",
        "eventarc",
        "cloudbuild",
        "artifactregistry",
        "pubsub",
    ):
        assert f"{api}.googleapis.com" in apis.action.argv
    assert apis.action.probe is not None and set(apis.action.probe.expect) == set(APIS)


def test_gpu_decides_the_machine_and_the_scale_bounds_reach_the_endpoint():
    steps = deploy_steps(
        sample_options(gpu="NVIDIA_H100_80GB", min_replicas=1, max_replicas=4), sample_settings()
    )
    (endpoint,) = [s for s in steps if s.key == "endpoint"]
    assert isinstance(endpoint.action, ApiCall)
    args = endpoint.action.args
    assert (args["machine_type"], args["accelerator_type"]) == ("a3-highgpu-1g", "NVIDIA_H100_80GB")
    assert (args["min_replicas"], args["max_replicas"]) == (1, 4)
    assert args["model"] == "${model}"  # the model step's output, substituted while running


def test_function_deploy_command_carries_trigger_retry_limits_and_settings():
    (function,) = [s for s in deploy_steps(sample_options(), sample_settings()) if s.key == "function"]
    assert isinstance(function.action, Gcloud)
    argv = function.action.argv
    assert argv[:5] == ("gcloud", "functions", "deploy", "samdrop-on-upload", "--gen2")
    for flag in (
        "--runtime=python311",
        "--entry-point=on_upload",
        "--trigger-topic=samdrop-uploads",
        "--retry",
        "--memory=2Gi",
        "--cpu=1",
        "--concurrency=4",
        "--timeout=540s",
        "--service-account=samdrop-function@samdrop-demo.iam.gserviceaccount.com",
    ):
        assert flag in argv
    (env_flag,) = [a for a in argv if a.startswith("--set-env-vars=")]
    assert "SAMDROP_PIPELINE_RUNNER=vertex" in env_flag
    assert (
        "SAMDROP_ENDPOINT=projects/samdrop-demo/locations/europe-west4/endpoints/${endpoint_id}" in env_flag
    )


def test_a_changed_function_setting_changes_the_label_the_probe_looks_for():
    def function_step(**changes):
        steps = deploy_steps(sample_options(**changes), sample_settings())
        return next(s for s in steps if s.key == "function").action

    base, bigger, newer = (
        function_step(),
        function_step(function_memory="4Gi"),
        function_step(source_digest="1" * 64),
    )
    assert base.probe.expect != bigger.probe.expect
    assert base.probe.expect != newer.probe.expect
    assert f"--update-labels=samdrop_config={base.probe.expect[0]}" in base.argv


def test_function_env_rebuilds_the_deployed_settings_without_local_paths():
    settings = sample_settings(log_level="DEBUG", state_dir=Path("/home/me/.samdrop"))
    (function,) = [s for s in deploy_steps(sample_options(), settings) if s.key == "function"]
    from deploy.gcp.steps import deployed_settings

    deployed = deployed_settings(sample_options(), settings)
    env = function_env(deployed)
    assert "SAMDROP_STATE_DIR" not in env and "SAMDROP_CACHE_DIR" not in env
    assert not any(key.endswith("_PORT") for key in env)
    resolved = {k: v.replace("${endpoint_id}", "123") for k, v in env.items()}
    rebuilt = Settings.from_env(resolved)
    for name in (
        "project",
        "region",
        "bucket",
        "pipeline_runner",
        "pipeline_template",
        "pipeline_root",
        "pipeline_service_account",
        "pipeline_image",
        "pipeline_machine_type",
        "log_level",
        "model_type",
        "checkpoint",
    ):
        assert getattr(rebuilt, name) == getattr(deployed, name), name
    assert rebuilt.endpoint == "projects/samdrop-demo/locations/europe-west4/endpoints/123"
    assert isinstance(function.action, Gcloud)
    assert f"--set-env-vars={','.join(f'{k}={v}' for k, v in env.items())}" in function.action.argv


def test_env_values_with_commas_switch_gcloud_delimiter():
    assert env_vars_flag({"A": "1", "B": "2"}) == "--set-env-vars=A=1,B=2"
    assert env_vars_flag({"A": "x,y", "B": "2"}) == "--set-env-vars=^@^A=x,y@B=2"


def test_destroy_keeps_the_data_unless_asked():
    kept = [s.key for s in destroy_steps(sample_options(), sample_settings())]
    assert not any(k.startswith("delete-bucket") for k in kept)
    deleted = [s.key for s in destroy_steps(sample_options(), sample_settings(), delete_data=True)]
    assert deleted[-1] == "delete-bucket:samdrop-demo-images"


def test_destroy_reverses_deploy_order():
    keys = [s.key for s in destroy_steps(sample_options(), sample_settings())]
    order = [
        "delete-endpoint",
        "delete-models",
        "delete-function",
        "delete-notification",
        "delete-topic:samdrop-uploads",
        "delete-service-account:function",
        "delete-artifact-registry",
    ]
    positions = [keys.index(k) for k in order]
    assert positions == sorted(positions)
    # bindings go before the accounts they name
    revoke = max(i for i, k in enumerate(keys) if k.startswith("revoke:"))
    assert revoke < keys.index("delete-service-account:pipeline")


def test_results_and_the_pipeline_template_get_buckets_of_their_own():
    steps = deploy_steps(sample_options(), sample_settings())
    keys = [s.key for s in steps]
    for bucket in ("samdrop-demo-images", "samdrop-demo-images-results", "samdrop-demo-images-pipelines"):
        assert f"bucket:{bucket}" in keys and f"bucket-access:{bucket}" in keys
    (template,) = [s for s in steps if s.key == "pipeline-template"]
    assert isinstance(template.action, ApiCall)
    assert template.action.args["bucket"] == "samdrop-demo-images-pipelines"
    named = deploy_steps(sample_options(results_bucket="my-results"), sample_settings())
    assert "bucket:my-results" in [s.key for s in named]
    from_env = deploy_steps(sample_options(results_bucket="env-results"), sample_settings())
    (function,) = [s for s in from_env if s.key == "function"]
    assert isinstance(function.action, Gcloud)
    assert any("SAMDROP_RESULTS_BUCKET=env-results" in arg for arg in function.action.argv)


# Roles that let an account create or replace objects in a bucket.
WRITES = {
    "roles/storage.objectUser",
    "roles/storage.objectCreator",
    "roles/storage.objectAdmin",
    "roles/storage.admin",
}


def written_by(bucket: str) -> set[str]:
    return {
        g.account
        for g in iam.grants(sample_options(), "samdrop-completions")
        if g.resource == bucket and g.role in WRITES
    }


def test_trust_zones_who_writes_where():
    assert written_by("samdrop-demo-images") == {"uploader"}, "no samdrop account writes the upload bucket"
    assert written_by("samdrop-demo-images-results") == {"function", "pipeline"}
    assert written_by("samdrop-demo-images-pipelines") == set(), "only the deployer writes the template"
    uploaders = [g for g in iam.grants(sample_options(), "samdrop-completions") if g.account == "uploader"]
    assert [(g.member, g.role, g.resource) for g in uploaders] == [
        ("group:samdrop-uploaders@example.com", "roles/storage.objectUser", "samdrop-demo-images")
    ]
    endpoint = {
        (g.role, g.resource)
        for g in iam.grants(sample_options(), "samdrop-completions")
        if g.account == "endpoint"
    }
    assert endpoint == {
        ("roles/storage.objectViewer", "samdrop-demo-images"),
        ("roles/cloudtrace.agent", "samdrop-demo"),
    }, "the predictor reads its inputs only (and may write spans)"


def test_the_function_may_predict_on_its_endpoint_and_launch_pipelines_nothing_wider():
    grant_list = [g for g in iam.grants(sample_options(), "samdrop-completions") if g.account == "function"]
    assert not any(g.role == "roles/aiplatform.user" for g in grant_list)
    (predict,) = [g for g in grant_list if g.role.endswith("/roles/samdropPredict")]
    assert (predict.scope, predict.resource) == (
        "endpoint",
        "projects/samdrop-demo/locations/europe-west4/endpoints/${endpoint_id}",
    )
    assert iam.PREDICT.permissions == ("aiplatform.endpoints.predict",)
    assert {p.split(".")[1] for p in iam.PIPELINE_LAUNCHER.permissions} == {"metadataStores", "pipelineJobs"}
    assert not any(p.endswith((".delete", ".cancel", ".update")) for p in iam.PIPELINE_LAUNCHER.permissions)
    keys = [s.key for s in deploy_steps(sample_options(), sample_settings())]
    binding = keys.index("grant:function:projects/samdrop-demo/roles/samdropPredict:endpoint")
    assert keys.index("endpoint") < binding, "the endpoint's policy is set once the endpoint exists"
    assert keys.index("custom-role:samdropPredict") < keys.index("custom-role-permissions:samdropPredict")
    assert keys.index("custom-role-permissions:samdropPipelineLauncher") < keys.index(
        "grant:function:projects/samdrop-demo/roles/samdropPipelineLauncher:project:samdrop-demo"
    )


def test_notifications_cover_the_incoming_and_batches_prefixes_only():
    settings = sample_settings(incoming_prefix="in/", batches_prefix="bulk/")
    (notification,) = [s for s in deploy_steps(sample_options(), settings) if s.key == "notification"]
    assert isinstance(notification.action, ApiCall)
    assert notification.action.args["prefixes"] == ("in/", "bulk/")
    assert notification.action.args["bucket"] == "samdrop-demo-images"


def test_a_checkpoint_in_another_bucket_is_readable_by_the_pipeline_and_revoked_on_destroy():
    key = "grant:pipeline:roles/storage.objectViewer:bucket:samdrop-demo-models"
    assert key in [s.key for s in deploy_steps(sample_options(), sample_settings())]
    same_bucket = sample_options(checkpoint="gs://samdrop-demo-images/sam/sam_vit_h_4b8939.pth")
    assert not any(
        s.key.endswith(":samdrop-demo-models") for s in deploy_steps(same_bucket, sample_settings())
    )
    revoke = key.replace("grant:", "revoke:", 1)
    assert revoke in [s.key for s in destroy_steps(sample_options(), sample_settings())]


def test_the_deploy_reference_names_every_role_and_why():
    readme = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert "\n## Service accounts and their roles\n" in readme
    grant_list = iam.grants(sample_options(), "samdrop-completions")
    for grant in grant_list:
        assert grant.role.rsplit("/", 1)[-1] in readme, grant.role
    for role in iam.CUSTOM_ROLES:
        assert all(permission in readme for permission in role.permissions), role.role_id
    for needed in (
        "gcloud storage cp",
        "gcloud pubsub subscriptions pull",
        "samdrop destroy",
        "--min-replicas",
    ):
        assert needed in readme


def test_requirements_pin_the_function_dependencies_without_torch():
    text = function_source.requirements(REPO_ROOT / "pyproject.toml")
    lines = text.splitlines()
    assert lines[0] == "-c constraints.txt"
    assert any(line.startswith("functions-framework==") for line in lines)
    assert any(line.startswith("google-cloud-aiplatform==") for line in lines)
    assert not any(line.startswith(("torch", "segment-anything", "kfp", "fake-gcs")) for line in lines)


def test_the_function_source_ships_only_what_it_imports():
    files = {path.as_posix() for path in function_source.function_files()}
    assert {"functions/main.py", "functions/segment.py", "samdrop/outputs.py", "pipeline/start.py"} <= files
    # SAM, the pipeline's tasks and the deploy tooling stay out of the function's bundle.
    assert not files & {
        "predictor/engine.py",
        "predictor/cpr.py",
        "pipeline/shard.py",
        "pipeline/components.py",
    }
    assert not any(name.startswith(("deploy/", "tests/")) for name in files)


def test_staged_function_source_imports_the_entry_point(tmp_path):
    destination = tmp_path / "function-source"
    result = function_source.stage_function_source(None, str(destination))
    assert result.outcome == "done"
    assert {"main.py", "requirements.txt", "constraints.txt", "functions", "samdrop"} <= {
        p.name for p in destination.iterdir()
    }
    assert not list(destination.rglob("__pycache__"))
    # the staged folder alone (no repo on sys.path) exposes on_upload, as Cloud Functions will import it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # and without torch or kfp: the function's requirements leave them out (SAM runs on the endpoint)
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({WITHOUT!r})); import main, functions.main; "
        "print(main.on_upload.__module__, functions.main.__file__)"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code],
        cwd=destination,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    module, file = probe.stdout.split()
    assert module == "functions.main"
    assert Path(file).resolve().is_relative_to(destination.resolve()), "imported the checkout, not the stage"


def test_staged_function_builds_its_clients_from_the_deployed_env_without_torch(tmp_path):
    """The environment deploy gives the function is complete: the staged code builds its storage,
    Pub/Sub, endpoint and Vertex pipeline starter from it, with no torch installed."""
    from deploy.gcp.steps import deployed_settings

    destination = tmp_path / "function-source"
    function_source.stage_function_source(None, str(destination))
    env = function_env(deployed_settings(sample_options(), sample_settings()))
    env = {k: v.replace("${endpoint_id}", "123") for k, v in env.items()}
    # emulator hosts only spare the clients credentials; building them connects to nothing
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SAMDROP_")}
    hosts = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}
    code = (
        f"import os, sys; sys.modules.update(dict.fromkeys({WITHOUT!r}))\n"
        "import main, functions.main as fm, functions.batches as fb\n"
        "deps = fm.build_deps(os.environ)\n"
        "print(type(deps.endpoint).__name__, deps.start_batch is fb.pipelines_not_configured)\n"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code],
        cwd=destination,
        env={**base, **env, **hosts},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == ["VertexEndpoint", "False"]


def test_source_digest_follows_the_code(tmp_path):
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        (tmp_path / name).write_text(name)
    (tmp_path / "samdrop").mkdir()
    (tmp_path / "samdrop" / "a.py").write_text("x = 1\n")
    first = function_source.source_digest(tmp_path)
    assert function_source.source_digest(tmp_path) == first
    (tmp_path / "samdrop" / "__pycache__").mkdir()
    (tmp_path / "samdrop" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert function_source.source_digest(tmp_path) == first
    (tmp_path / "samdrop" / "a.py").write_text("x = 2\n")
    assert function_source.source_digest(tmp_path) != first


@pytest.mark.parametrize(
    "checkpoint, folder",
    [
        ("gs://models-b/sam/sam_vit_h_4b8939.pth", "gs://models-b/sam/"),
        ("gs://models-b/sam/", "gs://models-b/sam/"),
        ("gs://models-b/sam", "gs://models-b/sam/"),
    ],
)
def test_model_artifact_is_the_checkpoint_folder(checkpoint, folder):
    steps = deploy_steps(sample_options(checkpoint=checkpoint), sample_settings())
    (model,) = [s for s in steps if s.key == "model"]
    assert isinstance(model.action, ApiCall)
    assert model.action.args["artifact_uri"] == folder


def test_the_serving_image_installs_its_extras_and_copies_what_it_imports():
    dockerfile = (REPO_ROOT / "predictor" / "Dockerfile").read_text()
    extras = re.search(r"^ARG EXTRAS=(\S+)$", dockerfile, re.MULTILINE)
    assert extras is not None and extras.group(1) == "predictor,pipeline"
    optional = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.group(1).split(",")) <= set(optional)
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    entries = ("predictor/handler.py", "predictor/cpr.py", "pipeline/components.py", "pipeline/worker.py")
    imported = {path.parts[0] for entry in entries for path in function_source.function_files(entry=entry)}
    assert imported == copied == {"samdrop", "predictor", "pipeline"}


def test_every_document_the_code_names_is_in_the_repository():
    sources = [REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md"]
    for folder in ("samdrop", "functions", "pipeline", "predictor", "deploy", "benchmarks", "docs"):
        sources += [p for p in (REPO_ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", "")]
    named: set[str] = set()
    for path in sources:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "DESIGN.md" not in text, f"{path} names DESIGN.md: the design is docs/design.md"
            named |= set(re.findall(r"docs/[\w/.-]+\.md", text))
    assert "docs/design.md" in named
    assert all((REPO_ROOT / name).is_file() for name in named), sorted(named)


@pytest.mark.parametrize(("traces", "expected"), [("off", None), ("cloud", "cloud")])
def test_the_endpoint_traces_as_the_function_does(traces, expected):
    steps = deploy_steps(sample_options(), sample_settings(traces=traces))
    (model,) = [s for s in steps if s.key == "model"]
    (function,) = [s for s in steps if s.key == "function"]
    assert isinstance(model.action, ApiCall) and isinstance(function.action, Gcloud)
    assert model.action.args["environment"].get("SAMDROP_TRACES") == expected
    assert any(f"SAMDROP_TRACES={traces}" in arg for arg in function.action.argv) == (expected is not None)
