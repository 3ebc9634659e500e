"""Pure pieces of the local stack: client env, export lines, start commands, missing-tool messages."""

import os
import shlex
import socket
from pathlib import Path

import pytest

from deploy import processes
from deploy.local import (
    CLIENT_ENV_KEYS,
    LocalStack,
    client_env,
    export_lines,
    fake_gcs_binary,
    pubsub_emulator_problems,
)
from deploy.processes import LocalStackError, ProcessRecord, StackState
from samdrop.pidfile import start_ticks
from samdrop.settings import Settings


def _settings(tmp_path: Path, **overrides) -> Settings:
    return Settings.from_env({}, state_dir=tmp_path / "state", **overrides)


def test_export_lines_cover_every_client_variable_in_order_and_quote(tmp_path):
    settings = _settings(tmp_path, project="my-proj", completions_subscription="subs with space")
    env = client_env(settings, gcs_port=1234, pubsub_port=5678)
    lines = export_lines(env)
    assert [line.split("=", 1)[0] for line in lines] == [f"export {k}" for k in CLIENT_ENV_KEYS]
    assert "export STORAGE_EMULATOR_HOST=http://127.0.0.1:1234" in lines
    assert "export PUBSUB_EMULATOR_HOST=127.0.0.1:5678" in lines
    assert "export SAMDROP_COMPLETIONS_SUBSCRIPTION='subs with space'" in lines
    parsed = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert parsed == env
    assert parsed["SAMDROP_RESULTS_BUCKET"] == settings.output_bucket == "samdrop-local-results"


def test_client_env_without_a_running_stack_uses_the_settings_ports(tmp_path):
    stack = LocalStack(_settings(tmp_path, gcs_port=1111, pubsub_port=2222))
    env = stack.client_env()
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:1111"
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:2222"


def test_specs_wire_the_emulators_together(tmp_path):
    settings = _settings(
        tmp_path,
        gcs_port=1111,
        pubsub_port=2222,
        predictor_port=3333,
        function_port=4444,
        bridge_port=5555,
        delivery_concurrency=6,
    )
    specs = {s.name: s for s in LocalStack(settings, base_env={"PATH": "/bin"}).specs()}
    assert list(specs) == ["pubsub", "gcs", "predictor", "function", "bridge"]

    pubsub = specs["pubsub"]
    assert pubsub.argv[:5] == ["gcloud", "beta", "emulators", "pubsub", "start"]
    assert "--host-port=127.0.0.1:2222" in pubsub.argv
    assert pubsub.env["CLOUDSDK_CORE_DISABLE_PROMPTS"] == "1"

    gcs = specs["gcs"].argv
    flags = dict(zip(gcs[1::2], gcs[2::2], strict=True))
    assert flags["-event.pubsub-topic"] == settings.uploads_topic
    assert flags["-event.pubsub-project-id"] == settings.project
    assert flags["-event.bucket"] == settings.bucket
    assert flags["-port"] == "1111"
    # In memory: no file-name or extended-attribute limits (deploy/store_snapshot.py keeps them).
    assert flags["-backend"] == "memory"
    assert "-filesystem-root" not in flags
    assert specs["gcs"].env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:2222"

    assert specs["predictor"].argv[1:] == ["-m", "deploy.command", "predictor", "serve", "--port", "3333"]
    assert specs["predictor"].health_url == "http://127.0.0.1:3333/health"

    function = specs["function"]
    assert function.env["SAMDROP_ENDPOINT"] == "http://127.0.0.1:3333"
    assert function.env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:1111"
    assert function.env["SAMDROP_BUCKET"] == settings.bucket
    assert function.env["PATH"] == "/bin"
    assert function.argv[-6:-2] == ["--signature-type", "cloudevent", "--host", "127.0.0.1"]
    assert function.env["THREADS"] == "6"  # as many requests at once as the bridge delivers

    bridge = specs["bridge"]
    assert bridge.argv[1:] == ["-m", "deploy.bridge"]
    assert bridge.health_url == "http://127.0.0.1:5555/"
    assert bridge.env["SAMDROP_FUNCTION_PORT"] == "4444"
    assert bridge.env["SAMDROP_DELIVERY_CONCURRENCY"] == "6"


def test_without_predictor_the_function_keeps_the_configured_endpoint(tmp_path):
    settings = _settings(tmp_path, endpoint="projects/p/locations/r/endpoints/1")
    specs = {s.name: s for s in LocalStack(settings, predictor=False, base_env={}).specs()}
    assert "predictor" not in specs
    assert specs["function"].env["SAMDROP_ENDPOINT"] == "projects/p/locations/r/endpoints/1"


def _fake_sdk(tmp_path: Path, *, with_emulator: bool) -> str:
    root = tmp_path / "google-cloud-sdk"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "lib" / "gcloud.py").write_text("")
    (root / "bin" / "gcloud").write_text("")
    if with_emulator:
        (root / "platform" / "pubsub-emulator").mkdir(parents=True)
    return str(root / "bin" / "gcloud")


def test_pubsub_emulator_problems_name_the_fix(tmp_path):
    assert (
        pubsub_emulator_problems(
            {"java": "/usr/bin/java", "gcloud": _fake_sdk(tmp_path, with_emulator=True)}.get
        )
        == []
    )

    nothing: dict[str, str] = {}
    problems = " ".join(pubsub_emulator_problems(nothing.get))
    assert "apt-get install google-cloud-cli" in problems
    assert "Java" in problems and "default-jre-headless" in problems

    (tmp_path / "no-emulator").mkdir()
    gcloud = _fake_sdk(tmp_path / "no-emulator", with_emulator=False)
    problems = " ".join(pubsub_emulator_problems({"java": "/usr/bin/java", "gcloud": gcloud}.get))
    assert "apt-get install google-cloud-cli-pubsub-emulator" in problems
    assert "gcloud components install pubsub-emulator" in problems


def test_fake_gcs_binary_is_found_in_the_wheel():
    binary = fake_gcs_binary()
    assert binary.name.startswith("fake-gcs-server-")
    assert "site-packages" in binary.parts
    assert os.access(binary, os.X_OK)


def test_preflight_reports_a_busy_port_with_its_variable(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = LocalStack(_settings(tmp_path, gcs_port=port), predictor=False, function=False)
        with pytest.raises(LocalStackError, match=f"port {port} for gcs is in use.*SAMDROP_GCS_PORT"):
            stack.preflight(stack.specs())


def test_preflight_reports_a_missing_function_source(tmp_path):
    stack = LocalStack(_settings(tmp_path), predictor=False, function_source=tmp_path / "nope.py")
    with pytest.raises(LocalStackError, match=r"nope\.py is missing: start with --no-function"):
        stack.preflight([])


def test_up_refuses_to_restart_fake_gcs_server_alone_while_the_bridge_runs(tmp_path):
    # The bridge would hand the restore's notifications to the function before the restored
    # completions are back. This test process stands in for the running bridge.
    settings = _settings(tmp_path)
    stack = LocalStack(settings, predictor=False)
    pid = os.getpid()
    ticks = start_ticks(pid)
    bridge = ProcessRecord("bridge", pid, os.getpgrp(), 1, ["x"], "/tmp/l", "http://h/", 1.0, ticks)
    settings.state_dir.mkdir(parents=True)
    processes.save_state(stack.state_path, StackState([bridge]))
    with pytest.raises(LocalStackError, match=r"fake-gcs-server stopped while the delivery bridge runs"):
        stack.up()
    assert processes.load_state(stack.state_path) == StackState([bridge])  # nothing started or stopped
