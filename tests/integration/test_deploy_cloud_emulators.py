"""`samdrop deploy`'s storage and Pub/Sub steps, run for real against fake-gcs-server and the
Pub/Sub emulator: the first run creates, a second run changes nothing, dead letters arrive.

Steps the emulators cannot serve are left out, each for a stated reason: ``bucket-access``
(fake-gcs-server ignores iamConfiguration), ``notification`` (it has no notificationConfigs API;
its -event flags publish instead), IAM grants (neither emulator has IAM), and everything that
is not Storage or Pub/Sub. Those are covered by the unit tests with recorded gcloud and fakes.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.gcp import storage_calls
from deploy.gcp.clients import CloudClients
from deploy.gcp.destroy import destroy_steps
from deploy.gcp.executor import Executor
from deploy.gcp.options import DeployOptions
from deploy.gcp.plan import ApiCall, Step
from deploy.gcp.steps import deploy_steps
from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from samdrop import models
from samdrop.settings import Settings

from .local_stack_support import stack_settings

pytestmark = pytest.mark.integration

PROJECT = "deploy-emu-test"  # not the stack's own project: every resource here starts absent
OPTIONS = DeployOptions(project=PROJECT, region="europe-west4", bucket="deploy-emu-bucket", image_tag="v1")
EMULATED = ("bucket", "topic", "subscription", "trigger-dead-letter")
EVENTARC_SUBSCRIPTION = "eventarc-europe-west4-samdrop-on-upload-000000-sub-000"


@dataclass
class Emulators:
    clients: CloudClients
    settings: Settings


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    stack = LocalStack(
        stack_settings(tmp_path_factory.mktemp("deploy-state")), predictor=False, function=False
    )
    stack.up()
    env = stack.client_env()
    storage_client = emulator_storage_client(PROJECT, env["STORAGE_EMULATOR_HOST"])
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    clients = CloudClients(
        PROJECT, "europe-west4", storage_client=storage_client, publisher=publisher, subscriber=subscriber
    )
    # quick redelivery so the dead-letter path takes seconds
    settings = Settings.from_env(
        {}, retry_min_backoff_s=0.5, retry_max_backoff_s=1.0, max_delivery_attempts=5
    )
    try:
        yield Emulators(clients, settings)
    finally:
        subscriber.close()
        publisher.transport.close()
        storage_client.close()
        stack.down()


def refuse_gcloud(argv):
    raise AssertionError(f"storage and Pub/Sub steps must not run gcloud: {argv}")


def run(emulators: Emulators, steps: list[Step]) -> dict[str, str]:
    results = Executor(refuse_gcloud, emulators.clients).run(steps)
    return {step.key: result.outcome for step, result in zip(steps, results, strict=True)}


def emulated(steps: list[Step]) -> list[Step]:
    return [s for s in steps if s.key.split(":")[0] in EMULATED]


def simulate_eventarc(emulators: Emulators) -> str:
    """The subscription Eventarc creates on the uploads topic when the function is deployed."""
    c = emulators.clients
    path = c.subscriber.subscription_path(PROJECT, EVENTARC_SUBSCRIPTION)
    c.subscriber.create_subscription(
        request={"name": path, "topic": c.publisher.topic_path(PROJECT, emulators.settings.uploads_topic)}
    )
    return path


def test_deploy_creates_then_changes_nothing_and_dead_letters_arrive(emulators):
    s = emulators.settings
    steps = emulated(deploy_steps(OPTIONS, s))
    assert [step.key for step in steps] == [
        "bucket:deploy-emu-bucket",
        "bucket:deploy-emu-bucket-results",
        "bucket:deploy-emu-bucket-pipelines",
        "bucket:deploy-emu-bucket-models",
        f"topic:{s.uploads_topic}",
        f"topic:{s.completions_topic}",
        f"topic:{s.dead_letter_topic}",
        f"subscription:{s.dead_letter_subscription}",
        f"subscription:{s.completions_subscription}",
        "trigger-dead-letter",
    ]
    before_function, trigger = steps[:-1], steps[-1:]
    first = run(emulators, before_function)
    assert set(first.values()) == {"created"}, first
    eventarc = simulate_eventarc(emulators)  # what `gcloud functions deploy` leaves behind
    assert run(emulators, trigger) == {"trigger-dead-letter": "updated"}

    second = run(emulators, steps)
    assert set(second.values()) == {"unchanged"}, second

    c = emulators.clients
    for bucket in (
        "deploy-emu-bucket",
        "deploy-emu-bucket-results",
        "deploy-emu-bucket-pipelines",
        "deploy-emu-bucket-models",
    ):
        assert c.storage.lookup_bucket(bucket) is not None, bucket
    configured = c.subscriber.get_subscription(request={"subscription": eventarc})
    assert configured.dead_letter_policy.dead_letter_topic == c.publisher.topic_path(
        PROJECT, s.dead_letter_topic
    )
    assert configured.dead_letter_policy.max_delivery_attempts == 5
    assert configured.retry_policy.minimum_backoff.total_seconds() == 0.5
    completions = c.subscriber.get_subscription(
        request={"subscription": c.subscriber.subscription_path(PROJECT, s.completions_subscription)}
    )
    assert completions.topic == c.publisher.topic_path(PROJECT, s.completions_topic)

    # A message the function keeps failing ends in the dead-letter subscription.
    c.publisher.publish(c.publisher.topic_path(PROJECT, s.uploads_topic), b"poison").result(timeout=30)
    dead_letters = c.subscriber.subscription_path(PROJECT, s.dead_letter_subscription)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # return_immediately: an empty pull answers at once instead of holding the loop for seconds
        pulled = c.subscriber.pull(
            request={"subscription": eventarc, "max_messages": 10, "return_immediately": True}, timeout=10
        )
        ids = [m.ack_id for m in pulled.received_messages]
        if ids:  # nack: what a failing function does
            c.subscriber.modify_ack_deadline(
                request={"subscription": eventarc, "ack_ids": ids, "ack_deadline_seconds": 0}
            )
        dead = c.subscriber.pull(
            request={"subscription": dead_letters, "max_messages": 10, "return_immediately": True}, timeout=10
        )
        if dead.received_messages:
            assert dead.received_messages[0].message.data == b"poison"
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the message never reached the dead-letter subscription")


def test_destroy_removes_topics_and_subscriptions_then_finds_nothing(emulators):
    s = emulators.settings
    options = dataclasses.replace(OPTIONS, bucket="deploy-emu-destroy")  # tests stay independent
    run(emulators, emulated(deploy_steps(options, s))[:-1])  # present now, whichever test ran first
    removable = [
        step
        for step in destroy_steps(options, s)
        if step.key.split(":")[0] in ("delete-subscription", "delete-topic", "delete-pipeline-template")
    ]
    first = run(emulators, removable)
    assert first["delete-pipeline-template"] == "absent"
    assert {v for k, v in first.items() if k != "delete-pipeline-template"} == {"deleted"}, first
    assert set(run(emulators, removable).values()) == {"absent"}
    c = emulators.clients
    topics = {t.name for t in c.publisher.list_topics(request={"project": f"projects/{PROJECT}"})}
    assert not topics & {c.publisher.topic_path(PROJECT, s.uploads_topic)}
    assert c.storage.lookup_bucket("deploy-emu-destroy") is not None, "the bucket and its data stay"


def test_template_upload_is_skipped_when_the_bytes_match(emulators):
    c = emulators.clients
    storage_calls.ensure_bucket(c, "deploy-emu-uploads", "europe-west4")
    name = "pipelines/probe.yaml"
    assert storage_calls.upload_if_changed(
        c, "deploy-emu-uploads", name, b"a: 1\n", "application/x-yaml"
    ).outcome == ("created")
    assert storage_calls.upload_if_changed(
        c, "deploy-emu-uploads", name, b"a: 1\n", "application/x-yaml"
    ).outcome == ("unchanged")
    assert storage_calls.upload_if_changed(
        c, "deploy-emu-uploads", name, b"a: 2\n", "application/x-yaml"
    ).outcome == ("updated")
    assert c.storage.bucket("deploy-emu-uploads").blob(name).download_as_bytes() == b"a: 2\n"


def test_pipeline_template_step_compiles_and_uploads_once(emulators):
    options = dataclasses.replace(OPTIONS, bucket="deploy-emu-template")
    steps = deploy_steps(options, emulators.settings)
    (bucket,) = [s for s in steps if s.key == "bucket:deploy-emu-template-pipelines"]
    (step,) = [s for s in steps if s.key == "pipeline-template"]
    run(emulators, [bucket])
    assert run(emulators, [step]) == {"pipeline-template": "created"}
    assert run(emulators, [step]) == {"pipeline-template": "unchanged"}
    templates = emulators.clients.storage.bucket("deploy-emu-template-pipelines")
    blob = templates.get_blob("templates/samdrop_pipeline.yaml")
    assert blob is not None and blob.size > 0
    assert OPTIONS.names.image in blob.download_as_text(), "the components must run the deployed image"


def test_the_weights_step_stages_a_file_once_and_keeps_its_folder_to_one_model(emulators, tmp_path):
    """``--checkpoint https://…`` for a SAM 1 type: fetched once (served here over local HTTP) and
    copied into the models bucket; a second run uploads nothing; a stale file in the folder goes."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "my_vit_b.pth").write_bytes(b"SAM 1 weights " * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        options = dataclasses.replace(
            OPTIONS,
            bucket="deploy-emu-weights",
            model_type="vit_b",
            checkpoint="https://mirror.example/weights/my_vit_b.pth",
        )
        settings = emulators.settings.replace(cache_dir=tmp_path / "cache")
        steps = {s.key: s for s in deploy_steps(options, settings)}
        # the plan's step, pointed at this test's plain-HTTP server (deploy itself takes https:// only)
        local = f"http://127.0.0.1:{server.server_address[1]}/my_vit_b.pth"
        action = steps["weights"].action
        assert isinstance(action, ApiCall) and action.args["url"] == options.checkpoint
        weights = dataclasses.replace(
            steps["weights"], action=ApiCall(action.func, {**action.args, "url": local})
        )
        run(emulators, [steps["bucket:deploy-emu-weights-models"]])
        bucket = emulators.clients.storage.bucket("deploy-emu-weights-models")
        bucket.blob("vit_b/old_vit_b.pth").upload_from_string(b"an older checkpoint")
        assert run(emulators, [weights]) == {"weights": "updated"}
        assert run(emulators, [weights]) == {"weights": "unchanged"}
        server.shutdown()
    assert options.checkpoint_uri == "gs://deploy-emu-weights-models/vit_b/my_vit_b.pth"
    assert [b.name for b in bucket.list_blobs(prefix="vit_b/")] == ["vit_b/my_vit_b.pth"]
    assert bucket.blob("vit_b/my_vit_b.pth").download_as_bytes() == b"SAM 1 weights " * 1000


def test_the_weights_step_stages_a_hugging_face_snapshot(emulators, tmp_path, monkeypatch):
    """The default model: its repo snapshot (here a folder standing in for the hub's download) copied
    file by file under ``<models bucket>/<type>/``."""
    import predictor

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text('{"model_type": "sam2"}')
    (snapshot / "model.safetensors").write_bytes(b"\0" * 4096)
    asked = []

    def download(info: models.ModelInfo, cache_dir: Path) -> Path:
        asked.append((info.source, cache_dir))
        return snapshot

    monkeypatch.setattr(predictor, "download_hf_weights", download)
    options = dataclasses.replace(OPTIONS, bucket="deploy-emu-repo")
    steps = {s.key: s for s in deploy_steps(options, emulators.settings.replace(cache_dir=tmp_path))}
    run(emulators, [steps["bucket:deploy-emu-repo-models"]])
    assert run(emulators, [steps["weights"]]) == {"weights": "created"}
    assert run(emulators, [steps["weights"]]) == {"weights": "unchanged"}
    info = models.model_info(models.DEPLOY_DEFAULT)
    assert asked == [(info.source, tmp_path)] * 2
    folder = f"{models.DEPLOY_DEFAULT}/"
    names = sorted(b.name for b in emulators.clients.storage.bucket("deploy-emu-repo-models").list_blobs())
    assert names == [folder + "config.json", folder + "model.safetensors"]
    assert options.checkpoint_uri == f"gs://deploy-emu-repo-models/{folder}"
