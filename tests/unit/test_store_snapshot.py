"""The pure parts of deploy/store_snapshot.py; save and restore through fake-gcs-server are in
tests/integration/test_store_snapshot.py."""

from __future__ import annotations

from deploy import store_snapshot
from deploy.store_snapshot import SavedObject, current, discard, translate
from samdrop.layout import GENERATION_KEY


def test_only_the_input_generation_tag_is_rewritten_and_only_when_known():
    generations = {100: 900, 200: 950}
    assert translate({GENERATION_KEY: "100", "other": "100"}, generations) == {
        GENERATION_KEY: "900",
        "other": "100",
    }
    assert translate({GENERATION_KEY: "300"}, generations) == {GENERATION_KEY: "300"}  # input gone
    assert translate({GENERATION_KEY: "²"}, generations) == {GENERATION_KEY: "²"}  # not samdrop's
    assert translate({}, generations) == {}


def test_a_saved_object_reads_back_as_written_generation_as_a_string():
    saved = SavedObject("bkt", "incoming/ü.png", 1796268374500186, None, {"k": "v"}, "ab" * 32)
    raw = saved.to_json()
    assert raw["generation"] == "1796268374500186"  # beyond JSON's safe integers
    assert SavedObject.from_json(raw) == saved


def test_a_swap_stopped_between_its_renames_still_finds_the_complete_snapshot(tmp_path):
    folder = tmp_path / "gcs-snapshot"
    assert current(folder) is None
    old = tmp_path / ".gcs-snapshot.old"  # the swap renamed the snapshot away and stopped
    old.mkdir()
    (old / store_snapshot.INDEX).write_text("")
    assert current(folder) == old
    (tmp_path / ".gcs-snapshot.new").mkdir()  # half written: never read
    discard(folder)
    assert list(tmp_path.iterdir()) == []
