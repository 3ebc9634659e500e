"""Objects Cloud Storage takes but fake-gcs-server's filesystem backend refused (5,000 bytes of
custom metadata, a 960-byte name, a long non-ASCII name) go through the real stack, and everything
about them survives `local down` + `local up`: objects, metadata, results, and the completions that
keep `samdrop sweep` and the function from doing the work again (issue #21)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from deploy import redrive
from deploy.local import pubsub_clients
from samdrop.layout import input_generation

from .local_stack_support import Completions, key_of, settled, until
from .test_event_path import EventStack, photo
from .test_event_path import events as events  # this module's own stack
from .test_hostile_uploads import deep, upload_raw

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def anything_new(events: EventStack) -> list[dict[str, Any]]:
    """Every completion that arrives from now on (draining: none may come within the settle window)."""
    before = len(events.completions.pull())
    return settled(lambda: events.completions.pull()[before:], 0, timeout_s=30, what="new completions")


def swept(events: EventStack, prefix: str) -> redrive.SweepReport:
    settings = events.settings
    return redrive.sweep(events.storage, events.publisher, settings, prefix=prefix, emit=lambda _: None)


def test_objects_cloud_storage_allows_are_stored_completed_once_and_survive_a_restart(events):
    folder = f"incoming/{uuid.uuid4().hex[:8]}/"
    deep_blob = upload_raw(events, folder + "deep.jpg", photo(fmt="JPEG"), {"samdrop-prompts": deep(2500)})
    long_name = folder + "n" * (960 - len(folder) - len(".png")) + ".png"
    long_blob = events.upload(long_name, photo(seed=1), {"boxes": [[20, 10, 100, 90]]})
    wide_name = folder + "фото 写真 " + "ü" * 100 + ".png"  # 300+ bytes, about 900 percent-escaped
    wide_blob = events.upload(wide_name, photo(seed=2), {"points": [[60, 50]], "labels": [1]})
    inputs = [deep_blob, long_blob, wide_blob]
    assert len(long_name.encode()) == 960 and len(deep_blob.metadata["samdrop-prompts"]) == 5000

    completions = events.completions.exactly(*(key_of(b, any_generation=True) for b in inputs), expect=3)

    by_name = {c["input"].removeprefix(f"gs://{events.settings.bucket}/"): c for c in completions}
    assert by_name[deep_blob.name]["status"] == "failed"
    assert by_name[deep_blob.name]["error"]["code"] == "invalid_prompt"
    assert by_name[long_name]["status"] == by_name[wide_name]["status"] == "succeeded"
    recorded = {b.name for b in inputs}  # the function records completion.json just after publishing
    until(lambda: all("completion.json" in events.results(n) for n in recorded), 30, "completion.json")
    listed = {b.name: b for b in events.storage.list_blobs(events.settings.bucket, prefix="incoming/")}
    assert sorted(listed) == sorted(b.name for b in inputs)
    for blob in inputs:
        assert listed[blob.name].metadata == blob.metadata
    assert swept(events, folder).sent == []
    assert anything_new(events) == []
    results_before = {b.name: sorted(events.results(b.name)) for b in inputs}
    contents_before = {b.name: b.download_as_bytes() for b in inputs}

    events.stack.down()
    events.stack.up()
    publisher, subscriber = pubsub_clients(events.stack.client_env()["PUBSUB_EMULATOR_HOST"])
    events.publisher, events.subscriber = publisher, subscriber  # the emulator restarted empty
    events.completions = Completions.of(subscriber, events.settings)
    try:
        listed = {b.name: b for b in events.storage.list_blobs(events.settings.bucket, prefix="incoming/")}
        assert sorted(listed) == sorted(b.name for b in inputs)
        for blob in inputs:
            restored = listed[blob.name]
            assert restored.metadata == blob.metadata
            assert restored.download_as_bytes() == contents_before[blob.name]
            assert sorted(events.results(blob.name)) == results_before[blob.name]
            completion = events.results(blob.name)["completion.json"]
            assert input_generation(completion.metadata) == int(restored.generation)
        report = swept(events, folder)
        assert report.sent == [] and report.completed == 3
        assert anything_new(events) == []  # neither the restore nor the sweep made the function work again

        after = events.upload(folder + "after-restart.png", photo(seed=3), {"boxes": [[10, 10, 60, 60]]})
        assert events.await_completion(after)["status"] == "succeeded"
    finally:
        subscriber.close()
        publisher.transport.close()
