"""``samdrop results get`` (deploy/results.py) against the in-memory store: which outputs, and where."""

from __future__ import annotations

import pytest

from deploy.results import NoResults, download, input_name, outputs_of
from samdrop.errors import InvalidRequest
from samdrop.layout import output_paths, tag
from samdrop.settings import Settings

from .function_fakes import FakeStore

SETTINGS = Settings.from_env({})
NAME = "incoming/cat.jpg"


def test_an_input_is_its_object_name_or_its_uri_in_the_uploads_bucket():
    assert input_name(SETTINGS, NAME) == NAME
    assert input_name(SETTINGS, f"gs://{SETTINGS.bucket}/{NAME}") == NAME
    with pytest.raises(InvalidRequest, match="not in the uploads bucket"):
        input_name(SETTINGS, f"gs://other/{NAME}")
    with pytest.raises(InvalidRequest, match="names no object"):
        input_name(SETTINGS, f"gs://{SETTINGS.bucket}/")


def store_with_two_generations() -> tuple[FakeStore, int, int]:
    """Outputs of an old upload (mask only) and of the current one (mask and masks.json)."""
    store = FakeStore()
    paths = output_paths(SETTINGS, NAME)
    old = store.put(SETTINGS.bucket, NAME, b"old cat")
    store.put(paths.bucket, paths.mask(1), b"old mask", **tag(old))
    new = store.put(SETTINGS.bucket, NAME, b"new cat")
    store.put(paths.bucket, paths.mask(0), b"new mask", **tag(new))
    store.put(paths.bucket, paths.masks_json, b"{}", **tag(new))
    store.put(paths.bucket, paths.folder + "notes.txt", b"not ours")  # no generation tag: skipped
    return store, old, new


def test_the_outputs_are_those_of_the_inputs_current_generation(tmp_path):
    store, old, new = store_with_two_generations()
    paths, generation, objects = outputs_of(store, SETTINGS, NAME)
    assert generation == new
    assert [o.name.rsplit("/", 1)[1] for o in objects] == ["mask_000.png", "masks.json"]
    folder = download(store, paths, objects, tmp_path, NAME)
    assert folder == tmp_path / NAME
    assert sorted(p.name for p in folder.iterdir()) == ["mask_000.png", "masks.json"]
    assert (folder / "mask_000.png").read_bytes() == b"new mask"
    _, _, older = outputs_of(store, SETTINGS, NAME, old)
    assert [o.name.rsplit("/", 1)[1] for o in older] == ["mask_001.png"]


def test_a_deleted_input_gives_its_newest_outputs_and_none_is_one_error():
    store, _, new = store_with_two_generations()
    del store.objects[(SETTINGS.bucket, NAME)]
    assert outputs_of(store, SETTINGS, NAME)[1] == new
    with pytest.raises(NoResults, match="does not exist and has no results"):
        outputs_of(store, SETTINGS, "incoming/dog.jpg")
    store.put(SETTINGS.bucket, "incoming/dog.jpg", b"dog")
    with pytest.raises(NoResults, match=r"has no results in .* yet"):
        outputs_of(store, SETTINGS, "incoming/dog.jpg")


def test_an_input_name_that_would_leave_the_folder_is_refused(tmp_path):
    store, _, _ = store_with_two_generations()
    paths, _, objects = outputs_of(store, SETTINGS, NAME)
    with pytest.raises(InvalidRequest, match="outside"):
        download(store, paths, objects, tmp_path / "out", "../../etc/cat.jpg")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
