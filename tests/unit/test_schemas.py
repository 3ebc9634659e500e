import copy
import json

import jsonschema
import pytest

from samdrop import schemas
from samdrop.documents import ErrorRecord, ManifestLine, MaskRecord, MasksDocument
from samdrop.messages import BatchCompletion, ImageCompletion
from tests.schema_check import check_document

MASK = MaskRecord({"size": [2, 3], "counts": "abc"}, 0.9, [0, 0, 2, 1], 5, prompt_index=0)
DOC = MasksDocument(
    input="gs://b/incoming/a.png", generation="1712345678901234", width=3, height=2, mode="prompted",
    prompts={"boxes": [[0.0, 0.0, 2.0, 1.0]], "multimask": False},  # no points: optional keys
    masks=[MASK], model={"type": "tiny", "random_weights": True},
    outputs={"masks": ["gs://r/m0.png"], "metadata": "gs://r/masks.json", "overlay": "gs://r/o.jpg"},
)  # fmt: skip
DOCUMENTS = {
    "masks": DOC.to_json(),
    "error": ErrorRecord("invalid_image", "not an image", "gs://b/incoming/x", "1").to_json(),
    "manifest-line": ManifestLine.succeeded(
        DOC, file="a.png", shard=0, resumed=False, timings_ms={}
    ).to_json(),
    "completion": ImageCompletion(status="succeeded", input=DOC.input, model=DOC.model).to_json(),
}


def test_committed_schemas_are_the_ones_the_types_generate():
    assert schemas.stale() == [], "a document type changed: run python -m samdrop.schemas and commit schemas/"


def test_check_names_a_schema_that_no_longer_matches_its_type(tmp_path, capsys):
    assert schemas.main(["--folder", str(tmp_path)]) == 0
    assert schemas.main(["--check", "--folder", str(tmp_path)]) == 0
    edited = json.loads(schemas.path("error", tmp_path).read_text())
    del edited["properties"]["code"]
    schemas.path("error", tmp_path).write_text(json.dumps(edited))
    assert schemas.main(["--check", "--folder", str(tmp_path)]) == 1
    assert "error.schema.json differs" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_documents_as_written_carry_the_version_and_validate(name):
    assert DOCUMENTS[name]["schema_version"] == 1
    check_document(name, DOCUMENTS[name])


def test_a_batch_completion_validates_and_an_image_one_needs_no_batch_id():
    batch = BatchCompletion(
        status="failed", batch_id="b1", input="gs://b/batches/b1/", images=0, succeeded=0, failed=0,
        error={"code": "empty_batch", "message": "no images"},
    )  # fmt: skip
    check_document("completion", batch.to_json())
    with pytest.raises(jsonschema.ValidationError):
        check_document("completion", {**batch.to_json(), "batch_id": None})


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("masks", lambda d: d.update(model="tiny")),  # model is one object everywhere
        ("masks", lambda d: d["masks"][0].update(box=[0, 0, 2])),
        ("masks", lambda d: d.update(schema_version=2)),
        ("masks", lambda d: d.pop("outputs")),
        ("error", lambda d: d.pop("code")),
        ("manifest-line", lambda d: d.update(status="partial")),
        ("completion", lambda d: d.update(model="tiny")),
        ("completion", lambda d: d.update(kind="video")),
    ],
)
def test_off_contract_documents_are_refused(name, change):
    document = copy.deepcopy(DOCUMENTS[name])
    change(document)
    with pytest.raises(jsonschema.ValidationError):
        check_document(name, document)
