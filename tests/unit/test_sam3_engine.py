"""SAM 3 behind the engine interface (predictor/sam3_engine.py) on the tiny random SAM 3 of
tests/sam3_models.py, loaded by ``load_engine`` from a ``save_pretrained`` folder."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from predictor.backends import load_engine
from predictor.concepts import ConceptThresholds
from predictor.cpr import SamRoutine
from predictor.engine import Job
from predictor.instances import parse_instance
from predictor.sam3_engine import Sam3Engine
from predictor.tiling import Tiling, run_jobs
from samdrop.errors import InvalidRequest
from samdrop.settings import Settings
from tests.sam3_models import write_tiny_sam3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam3(tmp_path_factory.mktemp("sam3-tiny"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Sam3Engine:
    settings = Settings.from_env(
        {
            "SAMDROP_MODEL_TYPE": "sam3",
            "SAMDROP_CHECKPOINT": str(model_dir),
            "SAMDROP_DEVICE": "cpu",
            "SAMDROP_PRECISION": "fp32",  # bf16 autocast on a CPU breaks exemplar boxes (roi_align)
        }
    )
    # Score threshold 0: every query of the random model is kept, so every concept has masks.
    loaded = load_engine(settings, random_weights=True, thresholds=ConceptThresholds(score=0.0))
    assert isinstance(loaded, Sam3Engine)
    return loaded


def test_one_image_per_vision_pass_on_a_cpu(engine: Sam3Engine):
    """SAMDROP_BATCH_SIZE images per request group, one per encoder pass on a CPU (faster there)."""
    assert Settings.from_env({}).batch_size > 1
    assert engine.batch_size == engine.concepts.batch_size == Settings.from_env({}).batch_size
    assert engine.concepts.images_per_pass == 1


def _job(image: np.ndarray, **prompts: Any) -> Job:
    instance = parse_instance({"image": base64.b64encode(b"x").decode(), **prompts})
    return Job(image, instance.prompts)


def test_run_labels_every_mask_with_its_concept_at_the_image_size(
    engine: Sam3Engine, model_dir: Path
) -> None:
    rng = np.random.default_rng(2)
    wide, tall = (rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 60, 3), (64, 48, 3)))
    calls: list[int] = []
    segment = engine.concepts.segment

    def counted(images: Any, *args: Any) -> Any:
        calls.append(len(images))
        return segment(images, *args)

    engine.concepts.segment = counted  # type: ignore[method-assign,assignment]
    try:
        first, second = engine.run(
            [
                _job(wide, text=["car", "tree"]),
                _job(tall, text="tree", boxes=[[2, 2, 30, 40]], box_labels=[1]),
            ]
        )
    finally:
        del engine.concepts.segment
    assert calls == [2], "one segment call for the whole group"
    queries = int(engine.concepts.model.config.detr_decoder_config.num_queries)  # type: ignore[union-attr]
    for result, text, (height, width) in ((first, ["car", "tree"], (40, 60)), (second, ["tree"], (64, 48))):
        assert (result.width, result.height) == (width, height)
        assert [m.label for m in result.masks] == [name for name in text for _ in range(queries)]
        assert [m.prompt_index for m in result.masks] == [i for i in range(len(text)) for _ in range(queries)]
        for mask in result.masks:
            assert mask.rle["size"] == [height, width]
            assert mask.stability_score == mask.score and 0 <= mask.score <= 1
            x0, y0, x1, y1 = mask.box
            assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
        scores = [m.score for m in result.masks if m.label == "tree"]
        assert scores == sorted(scores, reverse=True)
    description = engine.description
    assert (description["type"], description["family"]) == ("sam3", "sam3")
    assert description["checkpoint"] == str(model_dir) and description["random_weights"] is True


def test_a_job_without_text_is_refused_naming_sam21(engine: Sam3Engine) -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    for job in (Job(image), _job(image, points=[[3, 3]])):
        with pytest.raises(InvalidRequest, match=r"text concepts only.*SAM 2\.1") as caught:
            engine.run([job])
        assert caught.value.code == "invalid_request"


def test_the_predictor_answers_text_and_refuses_automatic_masks(engine: Sam3Engine) -> None:
    routine = SamRoutine()
    routine.setup(Settings.from_env({}), engine)
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 120, 60)).save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    body = {"instances": [{"image": image, "text": ["ellipse"]}, {"image": image}]}
    text, automatic = routine.postprocess(routine.predict(routine.preprocess(body)))["predictions"]
    assert text.get("mode") == "prompted", text
    assert text["prompts"] == {"text": ["ellipse"]}
    assert text["masks"] and {m["label"] for m in text["masks"]} == {"ellipse"}
    assert (text["width"], text["height"]) == (40, 30) and text["model"]["type"] == "sam3"
    assert automatic["error"]["code"] == "invalid_request"
    assert "cannot make automatic masks" in automatic["error"]["message"]


def test_a_tiled_image_asks_every_tile_each_concept_and_keeps_the_labels(engine: Sam3Engine) -> None:
    """The real SAM 3 engine through the tiling path (where masks land is proven with a stand-in in
    test_tiling.py): 2 x 2 tiles, every mask full size and labelled, concepts in the order asked."""
    image = np.random.default_rng(5).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    (result,) = run_jobs(engine, [_job(image, text=["car", "tree"])], [Tiling(120, 20)])
    assert result.tiling == {"tile": 120, "overlap": 20, "tiles": 4, "grid": [2, 2]}
    assert result.masks and {m.label for m in result.masks} <= {"car", "tree"}
    assert [m.prompt_index for m in result.masks] == sorted(m.prompt_index or 0 for m in result.masks)
    for mask in result.masks:
        assert mask.rle["size"] == [150, 200] and mask.tiles
        assert mask.prompt_index == ["car", "tree"].index(mask.label or "")
