"""The function's ``:predict`` instance is a document (samdrop.documents.PredictInstance)."""

from __future__ import annotations

from functions.events import UploadEvent
from functions.prompts import build_instance
from samdrop.documents import PredictInstance


def test_an_upload_becomes_a_pinned_instance_by_reference_with_its_prompts_as_keys():
    event = UploadEvent("OBJECT_FINALIZE", "b", "incoming/cat.jpg", "1712", "image/jpeg", metadata={})
    prompts = {"points": [[10.0, 20.0]], "labels": [1], "multimask": False}
    raw = build_instance(event, prompts).to_json()
    assert raw == {
        "gcs_uri": event.uri,
        "generation": "1712",
        "file_path": "incoming/cat.jpg",
        "mask_format": "rle",
        **prompts,
    }
    assert "image" not in raw  # never the bytes
    assert PredictInstance.from_json(raw) == PredictInstance(event.uri, "1712", "incoming/cat.jpg", prompts)


def test_no_prompts_means_automatic_masks_and_round_trips():
    instance = PredictInstance("gs://b/incoming/a.png", None, "incoming/a.png")
    assert set(instance.to_json()) == {"gcs_uri", "generation", "file_path", "mask_format"}
    assert PredictInstance.from_json(instance.to_json()) == instance
