"""The executor runs the plan's own step objects: probes skip finished work, outputs feed later
steps, failures stop the run; preflight says what to run when gcloud or credentials are missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy.gcp import executor as executor_module
from deploy.gcp.destroy import destroy_steps
from deploy.gcp.executor import CommandResult, Executor, preflight
from deploy.gcp.plan import ApiCall, DeployError, Gcloud, Probe, Step, StepResult, policy_binds
from deploy.gcp.steps import deploy_steps
from samdrop import models

from .test_deploy_cloud_plan import sample_options, sample_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeGcloud:
    """Records every argv; ``answer(argv)`` decides the result (default: success, no output)."""

    def __init__(self, answer=None):
        self.calls: list[tuple[str, ...]] = []
        self.answer = answer or (lambda argv: CommandResult(0, "", ""))

    def __call__(self, argv):
        self.calls.append(tuple(argv))
        return self.answer(tuple(argv))


def _is_probe(argv) -> bool:
    return (
        any(word in argv for word in ("describe", "get-iam-policy", "list"))
        and "add-iam-policy-binding" not in argv
    )


def gcloud_steps(steps):
    return [s for s in steps if isinstance(s.action, Gcloud)]


def gcloud_executor(gcloud) -> Executor:
    """An executor for the plan's gcloud steps alone: the endpoint id, which the (left out) Vertex
    AI step would produce, is given up front."""
    executor = Executor(gcloud, clients=None)  # type: ignore[arg-type]
    executor.outputs["endpoint_id"] = "1234"
    return executor


LOOKUPS = {
    "projects": "123456789012\n",
    "service-agent": "service-123456789012@gs-project-accounts.iam.gserviceaccount.com\n",
}


def fresh_project(argv):
    """A project where nothing exists yet: probes fail or print nothing, lookups answer."""
    if argv[1:3] == ("projects", "describe"):
        return CommandResult(0, LOOKUPS["projects"], "")
    if argv[1:3] == ("storage", "service-agent"):
        return CommandResult(0, LOOKUPS["service-agent"], "")
    if _is_probe(argv):
        if "get-iam-policy" in argv:
            return CommandResult(0, json.dumps({"bindings": []}), "")
        return CommandResult(1, "", "NOT_FOUND")
    return CommandResult(0, "", "")


def test_fresh_project_runs_every_gcloud_command_in_plan_order_with_outputs_substituted():
    steps = gcloud_steps(deploy_steps(sample_options(), sample_settings()))
    gcloud = FakeGcloud(fresh_project)
    results = gcloud_executor(gcloud).run(steps)

    mutating = [
        argv
        for argv in gcloud.calls
        if not _is_probe(argv) and argv[1:3] not in (("projects", "describe"), ("storage", "service-agent"))
    ]
    expected = [s.action.argv for s in steps if s.action.output is None]
    assert len(mutating) == len(expected)
    for ran, planned in zip(mutating, expected, strict=True):
        planned_resolved = tuple(
            a.replace("${project_number}", "123456789012")
            .replace("${gcs_service_agent}", LOOKUPS["service-agent"].strip())
            .replace("${endpoint_id}", "1234")
            for a in planned
        )
        assert ran == planned_resolved
    assert not any("${" in arg for argv in gcloud.calls for arg in argv)
    outcomes = {s.key: r.outcome for s, r in zip(steps, results, strict=True)}
    assert outcomes["project-number"] == "read"
    assert outcomes["service-account:function"] == "created"
    assert outcomes["grant:pubsub-agent:samdrop-dead-letter"] == "updated"


def test_second_run_on_a_finished_project_changes_nothing():
    steps = gcloud_steps(deploy_steps(sample_options(), sample_settings()))
    function_label = next(s for s in steps if s.key == "function").action.probe.expect[0]
    from deploy.gcp.steps import APIS

    def finished(argv):
        if argv[1:3] == ("projects", "describe"):
            return CommandResult(0, "123456789012\n", "")
        if argv[1:3] == ("storage", "service-agent"):
            return CommandResult(0, "agent@gs-project-accounts.iam.gserviceaccount.com\n", "")
        if argv[1:3] == ("services", "list"):
            return CommandResult(0, "\n".join(APIS) + "\nother.googleapis.com\n", "")
        if "get-iam-policy" in argv:
            # every binding any step asks for is there
            wanted = [
                s.action.probe.expect for s in steps if s.action.probe and s.action.probe.done_when == "binds"
            ]
            members = [
                (
                    r,
                    m.replace("${project_number}", "123456789012").replace(
                        "${gcs_service_agent}", "agent@gs-project-accounts.iam.gserviceaccount.com"
                    ),
                )
                for r, m in wanted
            ]
            return CommandResult(
                0, json.dumps({"bindings": [{"role": r, "members": [m]} for r, m in members]}), ""
            )
        if argv[1:3] == ("functions", "describe"):
            return CommandResult(0, function_label + "\n", "")
        if argv[1:4] == ("iam", "roles", "describe") and "--flatten=includedPermissions" in argv:
            # each custom role holds exactly what its step lists
            (listed,) = [
                s.action.probe.expect for s in steps if s.action.probe and s.action.probe.argv == argv
            ]
            return CommandResult(0, "\n".join(reversed(listed)) + "\n", "")
        if "describe" in argv:
            return CommandResult(0, "name: x\n", "")
        raise AssertionError(f"a finished project must not run {argv}")

    gcloud = FakeGcloud(finished)
    results = gcloud_executor(gcloud).run(steps)
    assert {r.outcome for r in results} == {"unchanged", "read"}


def test_a_function_with_an_older_label_is_redeployed():
    steps = [s for s in deploy_steps(sample_options(), sample_settings()) if s.key == "function"]
    gcloud = FakeGcloud(lambda argv: CommandResult(0, "0123456789abcdef\n" if "describe" in argv else "", ""))
    (result,) = gcloud_executor(gcloud).run(steps)
    assert result.outcome == "updated"
    assert gcloud.calls[-1][:3] == ("gcloud", "functions", "deploy")


def test_a_failing_command_stops_the_run_and_names_the_step():
    steps = gcloud_steps(deploy_steps(sample_options(), sample_settings()))

    def quota_error(argv):
        if argv[1:4] == ("iam", "service-accounts", "create"):
            return CommandResult(1, "", "ERROR: (gcloud.iam.service-accounts.create) PERMISSION_DENIED")
        return fresh_project(argv)

    gcloud = FakeGcloud(quota_error)
    with pytest.raises(DeployError) as caught:
        gcloud_executor(gcloud).run(steps)
    message = caught.value.message
    assert "service-account:function" in message and "PERMISSION_DENIED" in message
    assert "run the same command again" in message
    assert not any(argv[1:3] == ("artifacts", "repositories") and "create" in argv for argv in gcloud.calls)


def test_api_steps_get_the_clients_and_resolved_arguments():
    seen = {}

    def produce(clients, name):
        seen["produce"] = (clients, name)
        return StepResult("created", outputs={"endpoint_id": "42"})

    def consume(clients, endpoint):
        seen["consume"] = endpoint
        return StepResult("unchanged")

    steps = [
        Step("make", ApiCall(produce, {"name": "e"}), key="a"),
        Step(
            "use", ApiCall(consume, {"endpoint": "projects/p/locations/r/endpoints/${endpoint_id}"}), key="b"
        ),
    ]
    clients = object()
    results = Executor(FakeGcloud(), clients).run(steps)  # type: ignore[arg-type]
    assert seen == {"produce": (clients, "e"), "consume": "projects/p/locations/r/endpoints/42"}
    assert [r.outcome for r in results] == ["created", "unchanged"]


def test_a_reference_nobody_produced_is_an_error_not_a_literal():
    steps = [Step("use", Gcloud(("gcloud", "x", "${nothing}")), key="a")]
    gcloud = FakeGcloud()
    with pytest.raises(DeployError, match=r"no value for \$\{nothing\}"):
        gcloud_executor(gcloud).run(steps)
    assert gcloud.calls == []


def test_client_library_errors_become_deploy_errors_naming_the_step():
    def broken(clients):
        raise RuntimeError("403 caller lacks storage.buckets.create")

    with pytest.raises(DeployError, match=r"step 1 \(bucket: b\).*storage.buckets.create"):
        Executor(FakeGcloud(), clients=None).run([Step("b", ApiCall(broken, {}), key="bucket")])  # type: ignore[arg-type]


def test_destroy_skips_what_is_already_gone():
    steps = gcloud_steps(destroy_steps(sample_options(), sample_settings(), delete_data=True))
    gcloud = FakeGcloud(
        lambda argv: CommandResult(1, "", "NOT_FOUND") if _is_probe(argv) else CommandResult(0, "", "")
    )
    results = gcloud_executor(gcloud).run(steps)
    assert {r.outcome for r in results} == {"absent"}
    assert all(_is_probe(argv) for argv in gcloud.calls)


def test_destroy_deletes_what_exists():
    steps = gcloud_steps(destroy_steps(sample_options(), sample_settings()))
    members = [
        {"role": s.action.probe.expect[0], "members": [s.action.probe.expect[1]]}
        for s in steps
        if s.action.probe.done_when == "unbinds"
    ]

    def existing(argv):
        if "get-iam-policy" in argv:
            return CommandResult(0, json.dumps({"bindings": members}), "")
        return CommandResult(0, "", "")

    gcloud = FakeGcloud(existing)
    results = gcloud_executor(gcloud).run(steps)
    assert {r.outcome for r in results} == {"deleted"}
    assert gcloud.calls[1][:4] == ("gcloud", "functions", "delete", "samdrop-on-upload")


@pytest.mark.parametrize(
    ("probe", "returncode", "stdout", "done"),
    [
        (Probe(("x",), "succeeds"), 0, "", True),
        (Probe(("x",), "succeeds"), 1, "", False),
        (Probe(("x",), "fails"), 1, "", True),
        (Probe(("x",), "prints", ("a", "b")), 0, "b\na\nc\n", True),
        (Probe(("x",), "prints", ("a", "b")), 0, "a\n", False),
        (Probe(("x",), "prints"), 0, "  \n", False),
        (
            Probe(("x",), "binds", ("roles/r", "user:u")),
            0,
            '{"bindings": [{"role": "roles/r", "members": ["user:u"]}]}',
            True,
        ),
        (
            Probe(("x",), "binds", ("roles/r", "user:u")),
            0,
            '{"bindings": [{"role": "roles/q", "members": ["user:u"]}]}',
            False,
        ),
        (Probe(("x",), "unbinds", ("roles/r", "user:u")), 1, "", True),
        (
            Probe(("x",), "unbinds", ("roles/r", "user:u")),
            0,
            '{"bindings": [{"role": "roles/r", "members": ["user:u"]}]}',
            False,
        ),
    ],
)
def test_probe_semantics(probe, returncode, stdout, done):
    assert probe.is_done(returncode, stdout) is done


def test_a_conditional_binding_does_not_count():
    policy = {"bindings": [{"role": "roles/r", "members": ["user:u"], "condition": {"expression": "false"}}]}
    assert not policy_binds(json.dumps(policy), "roles/r", "user:u")


def test_preflight_without_gcloud_says_how_to_install_it():
    with pytest.raises(DeployError, match="install the Google Cloud CLI"):
        preflight(FakeGcloud(), which=lambda name: None)


def test_preflight_without_a_login_says_gcloud_auth_login():
    gcloud = FakeGcloud(lambda argv: CommandResult(0, "", ""))
    with pytest.raises(DeployError, match="run `gcloud auth login`"):
        preflight(gcloud, which=lambda name: "/usr/bin/gcloud")
    assert gcloud.calls == [("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)")]


def test_preflight_without_application_default_credentials_says_what_to_run(monkeypatch):
    import google.auth
    from google.auth import exceptions as auth_exceptions

    def no_adc(*args, **kwargs):
        raise auth_exceptions.DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_adc)
    gcloud = FakeGcloud(lambda argv: CommandResult(0, "me@example.com\n", ""))
    with pytest.raises(DeployError, match="gcloud auth application-default login"):
        preflight(gcloud, which=lambda name: "/usr/bin/gcloud")


def test_preflight_returns_the_account(monkeypatch):
    import google.auth

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (object(), "p"))
    gcloud = FakeGcloud(lambda argv: CommandResult(0, "me@example.com\n", ""))
    assert preflight(gcloud, which=lambda name: "/usr/bin/gcloud") == "me@example.com"


def test_subprocess_gcloud_runs_without_prompts(tmp_path):
    script = tmp_path / "gcloud"
    script.write_text('#!/bin/sh\necho "prompts=$CLOUDSDK_CORE_DISABLE_PROMPTS args=$*"\nexit 3\n')
    script.chmod(0o755)
    runner = executor_module.SubprocessGcloud(env={"PATH": str(tmp_path)})
    result = runner(["gcloud", "a", "b"])
    assert (result.returncode, result.stdout.strip()) == (3, "prompts=1 args=a b")


def installed_samdrop() -> list[str]:
    """The ``samdrop`` command as pyproject.toml installs it (what its console script runs), with this
    checkout's code: the shared virtualenv's script may have been installed from another tree."""
    entry = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]["samdrop"]
    module, function = entry.split(":")
    code = f"import sys; from {module} import {function}; sys.argv[0] = 'samdrop'; sys.exit({function}())"
    return [sys.executable, "-c", code]


def _samdrop(args, tmp_path, path_dirs, extra_env=None):
    """``samdrop`` in a clean process: no credentials, a private gcloud config, a chosen PATH."""
    env = {
        "PATH": os.pathsep.join(str(p) for p in path_dirs),
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "PYTHONPATH": str(REPO_ROOT),
        **(extra_env or {}),
    }
    return subprocess.run(
        [*installed_samdrop(), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _recording_gcloud(tmp_path) -> Path:
    """A gcloud on PATH that only records that it was called."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "gcloud"
    script.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "gcloud-calls.txt"}\nexit 1\n')
    script.chmod(0o755)
    return folder


def test_dry_run_prints_the_plan_without_gcloud_or_credentials(tmp_path):
    done = _samdrop(
        ["deploy", "--project", "samdrop-demo", "--region", "europe-west4", "--dry-run", "--image-tag", "v1"],
        tmp_path,
        [tmp_path / "nothing-here"],
    )
    assert done.returncode == 0, done.stderr
    assert "nothing was changed" in done.stdout
    assert "$ gcloud functions deploy samdrop-on-upload" in done.stdout
    assert "call deploy.gcp.vertex_calls.ensure_deployment(" in done.stdout
    destroy = _samdrop(["destroy", "--project", "samdrop-demo", "--dry-run"], tmp_path, [tmp_path / "none"])
    assert destroy.returncode == 0, destroy.stderr
    assert "$ gcloud functions delete samdrop-on-upload" in destroy.stdout


def test_dry_run_calls_no_gcloud_even_when_present(tmp_path):
    folder = _recording_gcloud(tmp_path)
    done = _samdrop(["deploy", "--project", "samdrop-demo", "--dry-run"], tmp_path, [folder])
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "gcloud-calls.txt").exists()


def test_dry_run_with_no_model_flag_stages_a_real_model_and_classic_gets_no_gpu(tmp_path):
    done = _samdrop(["deploy", "--project", "samdrop-demo", "--dry-run"], tmp_path, [tmp_path / "none"])
    assert done.returncode == 0, done.stderr
    real = models.DEPLOY_DEFAULT
    staged = f"gs://samdrop-demo-samdrop-models/{real}/"
    assert f"call deploy.gcp.weights_calls.stage_repo(model_type='{real}'" in done.stdout
    model = f"Vertex AI Model samdrop-sam ({real}) serving the CPR image with the checkpoint folder {staged}"
    assert model in done.stdout
    assert "1 x NVIDIA_L4 (g2-standard-8), 0..1 replicas (scales to zero when idle)" in done.stdout
    assert "random weights" not in done.stdout + done.stderr
    classic = _samdrop(
        ["deploy", "--project", "samdrop-demo", "--dry-run", "--model-type", "classic"], tmp_path, [tmp_path]
    )
    assert classic.returncode == 0, classic.stderr
    assert "the model on n2-standard-4, no GPU (classic runs on CPU)" in classic.stdout
    assert "accelerator_type=None, accelerator_count=0" in classic.stdout
    assert "NVIDIA" not in classic.stdout and "weights_calls" not in classic.stdout


def test_tiny_is_refused_with_a_message_unless_the_flag_asks_for_it(tmp_path):
    refused = _samdrop(
        ["deploy", "--project", "samdrop-demo", "--dry-run", "--model-type", "tiny"], tmp_path, [tmp_path]
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert "--model-type tiny has random weights: its masks are meaningless" in refused.stderr
    assert "--allow-random-weights" in refused.stderr
    # from the environment too: SAMDROP_MODEL_TYPE=tiny is not a way around the flag
    from_env = _samdrop(
        ["deploy", "--project", "samdrop-demo", "--dry-run"],
        tmp_path,
        [tmp_path],
        {"SAMDROP_MODEL_TYPE": "tiny"},
    )
    assert from_env.returncode == 2 and "--allow-random-weights" in from_env.stderr
    flags = ["--model-type", "tiny", "--allow-random-weights"]
    allowed = _samdrop(
        ["deploy", "--project", "samdrop-demo", "--dry-run", *flags],
        tmp_path,
        [tmp_path],
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "(tiny: random weights, masks are meaningless)" in allowed.stdout
    assert "random weights: its masks are meaningless" in allowed.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--gpu", "NVIDIA_K80"], "--gpu"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas 3 is larger than --max-replicas 2"),
        (["--max-replicas", "0", "--min-replicas", "0"], "--max-replicas must be at least 1"),
        (["--region", "Central-US"], "--region"),
        (["--bucket", "Bad_Bucket!"], "--bucket"),
        (["--model-type", "tiny"], "--allow-random-weights"),
        (["--model-type", "classic", "--gpu", "NVIDIA_L4"], "runs on CPU only"),
        (["--checkpoint", "/local/sam.pth"], "--checkpoint"),
    ],
)
def test_invalid_options_fail_before_any_gcloud_call(tmp_path, args, named):
    folder = _recording_gcloud(tmp_path)
    done = _samdrop(["deploy", "--project", "samdrop-demo", *args], tmp_path, [folder])
    assert done.returncode == 2
    assert named in done.stderr
    assert not (tmp_path / "gcloud-calls.txt").exists(), "no gcloud call may happen before validation"


def test_real_run_without_credentials_stops_at_preflight(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    calls = tmp_path / "gcloud-calls.txt"
    script = folder / "gcloud"
    # `auth list` prints no account: not logged in; any other command would be recorded
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 0\n')
    script.chmod(0o755)
    done = _samdrop(["deploy", "--project", "samdrop-demo"], tmp_path, [folder])
    assert done.returncode == 1  # failed, not a usage error: the options were right (docs/cli.md)
    assert "gcloud auth login" in done.stderr
    assert calls.read_text().splitlines() == ["auth list --filter=status:ACTIVE --format=value(account)"]
