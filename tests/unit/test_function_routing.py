import pytest

from functions.events import UploadEvent
from functions.routing import Action, route
from tests.unit.function_fakes import BUCKET, settings


def event(
    name: str, event_type: str = "OBJECT_FINALIZE", content_type: str | None = None, bucket: str = BUCKET
):
    return UploadEvent(event_type, bucket, name, "1", content_type=content_type, metadata={})


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("incoming/cat.jpg", "image/jpeg"),
        ("incoming/cat.jpg", None),  # no payload: the extension decides
        ("incoming/a/b/c/scan.TIFF", "application/octet-stream"),
        ("incoming/no-extension", "image/png"),  # the content type decides
        ("incoming/photo.webp", "image/webp; charset=binary"),
    ],
)
def test_images_under_incoming_are_segmented(name, content_type):
    decision = route(event(name, content_type=content_type), settings())
    assert decision.action is Action.SEGMENT


@pytest.mark.parametrize(
    ("name", "content_type", "why"),
    [
        ("incoming/notes.txt", "text/plain", "not an image"),
        ("incoming/data.bin", "application/octet-stream", "not an image"),
        ("incoming/", "application/x-directory", "folder"),
        ("incoming/sub/", None, "folder"),
        ("results/incoming/cat.jpg/mask_000.png", "image/png", "outputs never trigger"),
        ("results/incoming/cat.jpg/masks.json", "application/json", "outputs never trigger"),
        ("results/batches/b1/report.html", "text/html", "outputs never trigger"),
        ("batches/b1/cat.jpg", "image/jpeg", "waits for batches/b1/_READY"),
        ("batches/b1/prompts.json", "application/json", "waits for"),
        ("batches/b1/sub/_READY", "text/plain", "waits for"),
        ("batches/_READY", "text/plain", "a batch lives in"),
        ("cat.jpg", "image/jpeg", "outside incoming/ and batches/"),
        ("uploads/cat.jpg", "image/jpeg", "outside"),
    ],
)
def test_everything_else_is_ignored_with_a_reason(name, content_type, why):
    decision = route(event(name, content_type=content_type), settings())
    assert decision.action is Action.IGNORE
    assert why in decision.reason


def test_ready_marker_starts_its_batch():
    decision = route(event("batches/2026-11-25-a/_READY", content_type="application/json"), settings())
    assert decision.action is Action.START_BATCH
    assert decision.batch_id == "2026-11-25-a"


@pytest.mark.parametrize("event_type", ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"])
@pytest.mark.parametrize("name", ["incoming/cat.jpg", "batches/b1/_READY"])
def test_other_event_types_are_ignored(event_type, name):
    decision = route(event(name, event_type=event_type, content_type="image/jpeg"), settings())
    assert decision.action is Action.IGNORE
    assert event_type in decision.reason


def test_other_buckets_are_ignored():
    decision = route(event("incoming/cat.jpg", content_type="image/jpeg", bucket="someone-else"), settings())
    assert decision.action is Action.IGNORE
    assert "someone-else" in decision.reason


def test_results_prefix_wins_even_when_nested_under_incoming():
    custom = settings(results_prefix="incoming/_results/")
    decision = route(event("incoming/_results/cat.jpg/mask_000.png", content_type="image/png"), custom)
    assert decision.action is Action.IGNORE


def test_prefixes_come_from_settings():
    custom = settings(incoming_prefix="drop/", batches_prefix="bulk/")
    assert route(event("drop/cat.jpg", content_type="image/jpeg"), custom).action is Action.SEGMENT
    assert route(event("incoming/cat.jpg", content_type="image/jpeg"), custom).action is Action.IGNORE
    ready = route(event("bulk/x/_READY"), custom)
    assert (ready.action, ready.batch_id) == (Action.START_BATCH, "x")
