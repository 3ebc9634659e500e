"""The viewer page (samdrop/viewer.py) and ``samdrop view`` (deploy/view.py) over an in-memory store.
The page in a real browser: tests/integration/test_geometry.py."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from deploy.results import input_name
from deploy.view import can_open_browser, write_view
from samdrop.documents import MasksDocument
from samdrop.errors import InputNotFound, InvalidRequest, PermanentError
from samdrop.layout import json_record, output_paths, tag
from samdrop.masks import mask_box, mask_to_rle
from samdrop.settings import Settings
from samdrop.viewer import viewer_page

from .function_fakes import BUCKET, RESULTS
from .pipeline_fakes import TreeStore

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET})
NAME = "incoming/<b>odd</b>.png"


def _masks() -> list[np.ndarray]:
    first, second = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    first[5:20, 10:30] = True
    second[25:35, 40:55] = True
    return [first, second]


def _doc(labels: list[str | None], generation: int = 1, text: list[str] | None = None) -> MasksDocument:
    masks = [
        {"segmentation": mask_to_rle(m), "score": 0.9 - i / 10, "box": mask_box(m), "area": int(m.sum())}
        | ({"label": label} if label else {})
        for i, (m, label) in enumerate(zip(_masks(), labels, strict=True))
    ]
    return MasksDocument.from_json(
        {
            "input": f"gs://{BUCKET}/{NAME}",
            "generation": str(generation),
            "width": 60,
            "height": 40,
            "mode": "prompted",
            "prompts": {"text": text} if text else None,
            "masks": masks,
            "outputs": {"masks": ["m0", "m1"], "metadata": "m", "overlay": "o"},
            "model": {"type": "classic"},
        }
    )


def _page_data(page: str) -> dict:
    found = re.search(r"const DATA = (.*);\n", page)
    assert found is not None, "the page has no data for its script"
    return json.loads(found.group(1))


def test_the_page_inlines_one_layer_per_mask_with_the_mask_as_its_alpha():
    page = viewer_page(_doc([None, None]), np.zeros((40, 60, 3), np.uint8))
    data = _page_data(page)
    assert [m["index"] for m in data["masks"]] == [0, 1] and data["labels"] == []
    assert [m["area"] for m in data["masks"]] == [300, 150] and data["masks"][1]["score"] == 0.8
    for record, mask in zip(data["masks"], _masks(), strict=True):
        png = base64.b64decode(record["png"].removeprefix("data:image/png;base64,"))
        with Image.open(io.BytesIO(png)) as layer:
            alpha = np.asarray(layer.convert("RGBA"))[:, :, 3]
        np.testing.assert_array_equal(alpha > 0, mask)
    assert len({m["colour"] for m in data["masks"]}) == 2
    assert '<img id="image" src="data:image/jpeg;base64,' in page
    assert "<b>odd</b>" not in page and "&lt;b&gt;odd&lt;/b&gt;" in page  # names are escaped


def test_labels_get_one_colour_each_the_concepts_first_and_unlabelled_masks_their_own():
    data = _page_data(viewer_page(_doc(["car", None], text=["tree", "car"]), np.zeros((40, 60, 3), np.uint8)))
    assert [label["name"] for label in data["labels"]] == ["tree", "car", data["unlabelled"]]
    assert len({label["colour"] for label in data["labels"]}) == 3
    assert [m["label"] for m in data["masks"]] == ["car", None]


def test_a_batch_page_inlines_a_smaller_image_and_full_size_masks():
    page = viewer_page(_doc([None, None]), np.zeros((40, 60, 3), np.uint8), max_side=30)
    jpeg = re.search(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert jpeg is not None
    with Image.open(io.BytesIO(base64.b64decode(jpeg.group(1)))) as inlined:
        assert inlined.size == (30, 20)
    assert 'width="60" height="40"' in page  # laid out at the masks' size
    png = _page_data(page)["masks"][0]["png"].removeprefix("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(png))) as layer:
        assert layer.size == (60, 40)


def test_an_image_of_another_size_is_refused():
    with pytest.raises(PermanentError, match="60x40"):
        viewer_page(_doc([None, None]), np.zeros((41, 60, 3), np.uint8))


def _uploaded(store: TreeStore) -> int:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(buffer, format="PNG")
    generation = store.put(BUCKET, NAME, buffer.getvalue(), content_type="image/png")
    doc = _doc([None, None], generation)
    paths = output_paths(SETTINGS, NAME)
    store.put(RESULTS, paths.masks_json, json_record(doc.to_json()), **tag(generation))
    return generation


def test_samdrop_view_writes_the_page_of_an_upload(tmp_path):
    store = TreeStore()
    _uploaded(store)
    path = write_view(store, SETTINGS, f"gs://{BUCKET}/{NAME}", tmp_path / "out" / "page.html")
    assert len(_page_data(path.read_text())["masks"]) == 2


def test_samdrop_view_says_why_there_is_no_page(tmp_path):
    store = TreeStore()
    with pytest.raises(InputNotFound, match=r"no results for .*samdrop watch"):
        write_view(store, SETTINGS, NAME, tmp_path / "p.html")
    error = {"code": "invalid_image", "message": "not an image", "input": "x", "generation": "3"}
    store.put(RESULTS, output_paths(SETTINGS, NAME).error_json, json.dumps(error).encode(), **tag(3))
    with pytest.raises(InputNotFound, match="has no masks: invalid_image: not an image"):
        write_view(store, SETTINGS, NAME, tmp_path / "p.html")


def test_samdrop_view_refuses_masks_of_an_image_that_was_replaced(tmp_path):
    store = TreeStore()
    generation = _uploaded(store)
    store.put(BUCKET, NAME, b"newer bytes", content_type="image/png")  # replaced, results not yet
    with pytest.raises(InputNotFound, match=f"generation {generation}, the image these masks"):
        write_view(store, SETTINGS, NAME, tmp_path / "p.html")


def test_inputs_and_browsers():
    assert input_name(SETTINGS, f"gs://{BUCKET}/a/b.jpg") == "a/b.jpg" == input_name(SETTINGS, "a/b.jpg")
    with pytest.raises(InvalidRequest, match="not in the uploads bucket"):
        input_name(SETTINGS, "gs://elsewhere/a.jpg")
    assert not can_open_browser({}, "linux") and can_open_browser({"DISPLAY": ":0"}, "linux")
    assert can_open_browser({}, "darwin")
