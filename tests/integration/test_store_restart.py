"""Objects Cloud Storage takes but fake-gcs-server's filesystem backend refused (5,000 bytes of
custom metadata, a 960-byte name, a long non-ASCII name) go through the real stack, and everything
about them survives `local down` + `local up`: objects, metadata, results, and the completions that
keep `samdrop sweep` and the function from doing the work again (issue #21)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from google.cloud.storage import Blob

from deploy import redrive
from deploy.local import pubsub_clients
from samdrop.layout import input_generation

from .local_stack_support import until
from .test_event_path import EventStack, photo
from .test_event_path import events as events  # this module's own stack
from .test_hostile_uploads import deep, upload_raw

pytestmark = pytest.mark.integration

QUIET_S = 3.0  # no completion for this long after the last one: nothing else is coming


def drain(events: EventStack, inputs: list[Blob], timeout_s: float = 120) -> list[dict[str, Any]]:
    """Completions for ``inputs`` (any generation): wait for one each, then keep pulling until
    QUIET_S pass without a new message, so duplicates and late extras are counted too."""
    uris = {f"gs://{b.bucket.name}/{b.name}" for b in inputs}

    def mine() -> list[dict[str, Any]]:
        return [c for c in events.completions if c["input"] in uris]

    def one_each() -> bool:
        events.pull_completions()
        return len({c["input"] for c in mine()}) == len(uris)

    until(one_each, timeout_s, "completion for each input")
    seen, last = len(events.completions), time.monotonic()
    while time.monotonic() - last < QUIET_S:
        if len(events.pull_completions()) > seen:
            seen, last = len(events.completions), time.monotonic()
        else:
            time.sleep(0.2)
    return mine()


def quiet(events: EventStack) -> list[dict[str, Any]]:
    """Every completion that arrives until QUIET_S pass without one."""
    before, last = len(events.completions), time.monotonic()
    while time.monotonic() - last < QUIET_S:
        seen = len(events.completions)
        if len(events.pull_completions()) > seen:
            last = time.monotonic()
        else:
            time.sleep(0.2)
    return events.completions[before:]


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

    completions = drain(events, inputs)

    assert len(completions) == 3, completions  # exactly one each
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
    assert quiet(events) == []
    results_before = {b.name: sorted(events.results(b.name)) for b in inputs}
    contents_before = {b.name: b.download_as_bytes() for b in inputs}

    events.stack.down()
    events.stack.up()
    publisher, subscriber = pubsub_clients(events.stack.client_env()["PUBSUB_EMULATOR_HOST"])
    events.publisher, events.subscriber = publisher, subscriber  # the emulator restarted empty
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
        assert quiet(events) == []  # neither the restore nor the sweep made the function work again

        after = events.upload(folder + "after-restart.png", photo(seed=3), {"boxes": [[10, 10, 60, 60]]})
        assert events.await_completion(after)["status"] == "succeeded"
    finally:
        subscriber.close()
        publisher.transport.close()
