"""The ``samdrop`` command from a folder outside the checkout, finding the running local stack
through the user's state directory: ``local status``, ``upload --wait --download``, ``watch``,
``results get`` and ``batch status``'s exit statuses.

The session's stack runs the recorder function, which writes no outputs; a stand-in here answers
each upload as the real function does (outputs tagged with the input generation, then the
completion message), so the test is about the command, not about segmentation (tests/e2e)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local import emulator_storage_client, pubsub_clients
from samdrop.batches import BatchPaths
from samdrop.commandline import ExitStatus
from samdrop.layout import output_paths, tag
from samdrop.messages import ImageCompletion, PubsubPublisher, publish_completion
from tests.samdrop_command import REPO, run, user_env, write_console_script

from .local_stack_support import RunningStack, own_subscriptions, settled, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def user(local_stack: RunningStack, tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """(console script, a user's environment, a folder outside the checkout); the user's state dir
    is the session stack's (a link), so the command finds it only through XDG_STATE_HOME."""
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    (home / "state" / "samdrop").symlink_to(local_stack.stack.state_dir)
    (tmp_path / "work").mkdir()
    return write_console_script(tmp_path), user_env(home), tmp_path / "work"


@pytest.fixture
def function(local_stack: RunningStack) -> Iterator[None]:
    """Answers every upload under the incoming prefix like the function: ``mask_000.png`` and
    ``masks.json`` for its generation, then the completion message."""
    s, env = local_stack.settings, local_stack.env
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    storage = emulator_storage_client(s.project, env["STORAGE_EMULATOR_HOST"])
    path = subscriber.subscription_path(s.project, f"stand-in-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(
        request={"name": path, "topic": publisher.topic_path(s.project, s.uploads_topic)}
    )
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            response = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=5)
            for received in response.received_messages:
                name = received.message.attributes["objectId"]
                generation = int(received.message.attributes["objectGeneration"])
                if name.startswith(s.incoming_prefix):
                    paths = output_paths(s, name)
                    bucket = storage.bucket(paths.bucket)
                    for object_name, data in (
                        (paths.mask(0), b"png " + name.encode()),
                        (paths.masks_json, b"{}"),
                    ):
                        blob = bucket.blob(object_name)
                        blob.metadata = tag(generation)
                        blob.upload_from_string(data, timeout=30)
                    message = ImageCompletion(
                        status="succeeded",
                        input=f"gs://{s.bucket}/{name}",
                        generation=str(generation),
                        outputs={
                            "masks": [paths.uri(paths.mask(0))],
                            "metadata": paths.uri(paths.masks_json),
                        },
                        mask_count=1,
                    )
                    publish_completion(PubsubPublisher(publisher, s.project), s.completions_topic, message)
                subscriber.acknowledge(request={"subscription": path, "ack_ids": [received.ack_id]})

    worker = threading.Thread(target=answer, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=30)
        subscriber.delete_subscription(request={"subscription": path})
        subscriber.close()
        publisher.transport.close()
        storage.close()


def test_the_command_finds_the_stack_from_any_folder(local_stack, user, function, tmp_path):
    script, env, cwd = user
    s = local_stack.settings
    status = run(script, "local", "status", env=env, cwd=cwd)
    assert status.returncode == ExitStatus.DONE, status.stdout + status.stderr

    # The user's own consumer: the shared subscription must still get every completion.
    _, subscriber = pubsub_clients(local_stack.env["PUBSUB_EMULATOR_HOST"])
    shared = subscriber.subscription_path(s.project, s.completions_subscription)
    before = set(own_subscriptions(local_stack))
    watch = subprocess.Popen(
        [str(script), "watch", "--count", "2", "--timeout", "60"],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    until(lambda: set(own_subscriptions(local_stack)) - before, 30, "watch's own subscription")

    key = uuid.uuid4().hex[:8]
    images = [tmp_path / f"cli-{key}-{n}.png" for n in ("a", "b")]
    for image in images:
        image.write_bytes(b"\x89PNG not really")
    out = tmp_path / "results"
    uploaded = run(script, "upload", *map(str, images), "--wait", "--download", str(out), env=env, cwd=cwd)
    assert uploaded.returncode == ExitStatus.DONE, uploaded.stderr
    lines = uploaded.stdout.splitlines()
    uris = [f"gs://{s.bucket}/{s.incoming_prefix}{image.name}" for image in images]
    assert lines[:2] == uris
    completions = [json.loads(line) for line in lines[2:]]
    assert sorted(c["input"] for c in completions) == uris
    for image in images:
        folder = out / s.incoming_prefix / image.name
        assert (folder / "mask_000.png").read_bytes() == b"png " + f"{s.incoming_prefix}{image.name}".encode()
        assert (folder / "masks.json").read_bytes() == b"{}"

    watched, errors = watch.communicate(timeout=90)
    assert watch.returncode == ExitStatus.DONE, errors
    assert sorted(json.loads(line)["input"] for line in watched.splitlines()) == uris
    assert own_subscriptions(local_stack) == [], "watch and upload --wait delete their subscriptions"

    seen: list[str] = []

    def mine() -> list[str]:
        """Our inputs among the completions the shared subscription got so far (each acknowledged)."""
        response = subscriber.pull(request={"subscription": shared, "max_messages": 50}, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(
                request={"subscription": shared, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
        for m in response.received_messages:
            if key in m.message.data.decode():
                seen.append(json.loads(m.message.data)["input"])
        return seen

    assert sorted(settled(mine, 2, timeout_s=30, what="completions on the shared subscription")) == uris

    got = run(script, "results", "get", uris[0], "--out", "again", env=env, cwd=cwd)
    assert got.returncode == ExitStatus.DONE, got.stderr
    assert (cwd / "again" / s.incoming_prefix / images[0].name / "mask_000.png").is_file()
    missing = run(script, "results", "get", f"{s.incoming_prefix}never-{key}.png", env=env, cwd=cwd)
    assert missing.returncode == ExitStatus.FAILED
    assert "has no results" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("state", "status"), [("partial", ExitStatus.PARTIAL), ("failed", ExitStatus.FAILED)]
)
def test_batch_status_exit_status_follows_the_batch(local_stack, user, state, status):
    script, env, cwd = user
    s = local_stack.settings
    batch_id = f"cli-{state}-{uuid.uuid4().hex[:6]}"
    paths = BatchPaths.of(s, batch_id)
    storage = emulator_storage_client(s.project, local_stack.env["STORAGE_EMULATOR_HOST"])
    bucket = storage.bucket(paths.output_bucket)
    bucket.blob(paths.claim).upload_from_string(json.dumps({"claimed_at": "2026-12-03T07:00:00+00:00"}))
    completion = {"status": state, "images": 2, "succeeded": 1 if state == "partial" else 0}
    bucket.blob(paths.completion).upload_from_string(json.dumps(completion))
    result = run(script, "batch", "status", batch_id, env=env, cwd=cwd)
    assert result.returncode == status, result.stdout + result.stderr
    assert f"batch {batch_id}: {state}" in result.stdout


def test_the_subscriber_in_the_docs_gets_what_its_filter_names(local_stack):
    """docs/cli.md's subscriber, run as written (its wait cut short), with `samdrop local env`'s variables."""
    s = local_stack.settings
    docs = (REPO / "docs" / "cli.md").read_text()
    code = docs.split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count(".result()") == 1
    code = code.replace(".result()", ".result(timeout=8)")
    publisher, subscriber = pubsub_clients(local_stack.env["PUBSUB_EMULATOR_HOST"])
    path = subscriber.subscription_path(s.project, "my-failed-images")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    reader = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**base, **local_stack.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        topic = publisher.topic_path(s.project, s.completions_topic)
        listed = lambda: path in publisher.list_topic_subscriptions(request={"topic": topic})  # noqa: E731
        until(listed, 30, "the docs' subscription")
        failed = ImageCompletion(
            status="failed",
            input=f"gs://{s.bucket}/incoming/docs-{uuid.uuid4().hex[:6]}.jpg",
            generation="1",
            error={"code": "invalid_image", "message": "not an image"},
        )
        succeeded = ImageCompletion(status="succeeded", input=failed.input, generation="2")
        for message in (succeeded, failed):
            publish_completion(PubsubPublisher(publisher, s.project), s.completions_topic, message)
        printed, _ = reader.communicate(timeout=60)  # ends when its 8 s wait runs out
        got = [json.loads(line) for line in printed.splitlines()]
        # Pub/Sub applies the filter; the emulator does from Google Cloud SDK 555 on (older ones,
        # like 528 here, deliver every message): the failed one must come either way.
        assert failed.to_json() in got and all(m in (failed.to_json(), succeeded.to_json()) for m in got)
    finally:
        reader.kill()
        subscriber.delete_subscription(request={"subscription": path})
        subscriber.close()
        publisher.transport.close()


# SIGINT back to its default, then the command itself (the same process, so its pid is watch's).
_DEFAULT_SIGINT_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (``SigIgn`` in ``/proc/PID/status``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


@pytest.mark.parametrize(
    ("sent", "status"), [(signal.SIGINT, ExitStatus.INTERRUPTED), (signal.SIGTERM, ExitStatus.TERMINATED)]
)
def test_watch_deletes_its_subscription_when_stopped(local_stack, user, sent, status):
    script, env, cwd = user
    before = set(own_subscriptions(local_stack))
    env = {**env, "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
    # Started as from a terminal, where Ctrl-C is not ignored. A child inherits an ignored SIGINT,
    # and Python then installs no KeyboardInterrupt for it: in the full suite this worker had it
    # ignored by then, and watch went on pulling after SIGINT (reproduced with `trap '' INT`).
    worker_ignores = _ignores_sigint(os.getpid())
    command = [sys.executable, "-c", _DEFAULT_SIGINT_EXEC, str(script), "watch"]
    watch = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    until(lambda: set(own_subscriptions(local_stack)) - before, 30, "watch's own subscription")
    assert not _ignores_sigint(watch.pid)
    watch.send_signal(sent)
    try:
        _, errors = watch.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        watch.send_signal(signal.SIGABRT)
        _, errors = watch.communicate(timeout=30)
        pytest.fail(
            f"watch still running 60 s after {sent.name} (this worker ignores SIGINT: {worker_ignores});"
            f" its threads:\n{errors}"
        )
    assert watch.returncode == status, errors
    assert set(own_subscriptions(local_stack)) == before
