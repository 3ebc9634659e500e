"""SAM 3 concept engine on a tiny random ``Sam3Config`` with an offline CLIP tokenizer.

The model (tests/sam3_models.py) is saved with ``save_pretrained`` and loaded back through
:meth:`ConceptEngine.from_pretrained`, as a real checkpoint would be; nothing reaches the hub.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Sam3Model

from predictor.concepts import (
    ConceptEngine,
    ConceptMasks,
    ConceptThresholds,
    _upsample,
)
from samdrop.concepts import MAX_CONCEPT_CHARS, MAX_CONCEPTS_PER_IMAGE
from samdrop.errors import ConfigError, InvalidImage, InvalidPrompt
from tests.sam3_models import write_tiny_sam3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam3(tmp_path_factory.mktemp("sam3-tiny"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> ConceptEngine:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return ConceptEngine.from_pretrained(model_dir, precision="fp32")


@pytest.fixture(scope="module")
def reference(engine: ConceptEngine) -> ConceptEngine:
    return ConceptEngine(engine.model, engine.processor, fast=False)


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 60, 3), (64, 48, 3), (30, 30, 3))]


class Calls:
    """Rows (concepts, images) that went through the text and vision encoders."""

    def __init__(self, model: Sam3Model) -> None:
        self.text = 0
        self.vision = 0
        self._handles = [
            model.text_encoder.register_forward_hook(self._count_text),
            # The ViT's first layer norm: both the library's forward and Sam3FastVision call it
            # (the fast path has its own copies of the other weights), once per batch.
            model.vision_encoder.backbone.layer_norm.register_forward_hook(self._count_vision),
        ]

    def _count_text(self, module: object, args: tuple[torch.Tensor, ...], output: object) -> None:
        self.text += 1

    def _count_vision(self, module: object, args: tuple[torch.Tensor, ...], output: object) -> None:
        self.vision += len(args[0])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def calls(engine: ConceptEngine) -> Iterator[Calls]:
    counter = Calls(engine.model)
    yield counter
    counter.remove()


def test_masks_labels_and_boxes_fit_each_image(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    results = engine.segment(images, ["car", "solar panel"], thresholds=ConceptThresholds(score=0.0))
    assert len(results) == len(images)
    for image, result in zip(images, results, strict=True):
        height, width = image.shape[:2]
        count = len(result.labels)
        assert count == 2 * 8  # every query of both concepts passes a zero threshold
        assert result.masks.shape == (count, height, width) and result.masks.dtype == bool
        assert result.scores.shape == (count,) and result.scores.dtype == np.float32
        assert result.boxes.shape == (count, 4) and result.boxes.dtype == np.int64
        assert (result.boxes >= 0).all() and (result.boxes[:, [0, 2]] <= width).all()
        assert (result.boxes[:, [1, 3]] <= height).all()
        assert result.labels == ["car"] * 8 + ["solar panel"] * 8
        for label in ("car", "solar panel"):
            scores = result.scores[[i for i, name in enumerate(result.labels) if name == label]]
            assert (np.diff(scores) <= 0).all()  # highest first within a concept


def _split_threshold(scores: np.ndarray) -> float:
    """A score threshold in the widest gap between the reference's scores: a small numeric
    difference between the paths cannot move an instance across it."""
    ordered = np.sort(scores)
    gap = int(np.argmax(np.diff(ordered)))
    return float(ordered[gap] + ordered[gap + 1]) / 2


def _assert_same(ours: ConceptMasks, theirs: ConceptMasks) -> None:
    assert ours.labels == theirs.labels
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4)
    assert np.abs(ours.boxes - theirs.boxes).max(initial=0) <= 1
    assert ours.masks.shape == theirs.masks.shape
    # Pixels whose probability sits at the mask threshold may flip with the last bit of a logit.
    assert (ours.masks != theirs.masks).mean() < 1e-3
    assert ours.masks.any() and not ours.masks.all()


@pytest.mark.parametrize("with_boxes", [False, True], ids=["text", "text+exemplars"])
def test_fast_path_matches_plain_transformers(
    engine: ConceptEngine, reference: ConceptEngine, images: list[np.ndarray], with_boxes: bool
) -> None:
    concepts = ["car", "tree", "solar panel"]
    boxes = None
    if with_boxes:
        boxes = [[([2, 3, 30, 20], True), ([35, 10, 58, 38], False)], [([5, 5, 40, 60], True)], []]
    everything = reference.segment(images, concepts, boxes, ConceptThresholds(score=0.0))
    threshold = _split_threshold(np.concatenate([r.scores for r in everything]))
    thresholds = ConceptThresholds(score=threshold, mask=0.5)
    theirs = reference.segment(images, concepts, boxes, thresholds)
    ours = engine.segment(images, concepts, boxes, thresholds)
    assert 0 < sum(len(r.labels) for r in theirs) < sum(len(r.labels) for r in everything)
    for mine, plain in zip(ours, theirs, strict=True):
        _assert_same(mine, plain)


def test_exemplar_boxes_change_the_answer(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    image = images[0]
    plain = engine.segment([image], ["car"], thresholds=ConceptThresholds(score=0.0))[0]
    shown = engine.segment([image], ["car"], [[([2, 3, 30, 20], True)]], ConceptThresholds(score=0.0))[0]
    assert not np.allclose(plain.scores, shown.scores)


def test_text_once_per_concept_and_vision_once_per_image(
    engine: ConceptEngine, images: list[np.ndarray], calls: Calls
) -> None:
    engine.clear_cache()
    engine.segment(images, [["car", "tree"], ["tree", "boat"], ["car"]])
    assert (calls.text, calls.vision) == (1, len(images))  # one text batch: car, tree, boat
    engine.segment(images[:1], ["boat", "car", "house"])  # only "house" is new
    assert (calls.text, calls.vision) == (2, len(images) + 1)
    engine.segment(images[:2], ["car", "boat"])  # all cached: no text encoder at all
    assert (calls.text, calls.vision) == (2, len(images) + 3)


def test_the_cache_holds_features_of_the_concept_not_the_batch(
    engine: ConceptEngine, images: list[np.ndarray]
) -> None:
    engine.clear_cache()
    alone = engine.segment(images[:1], ["tree"], thresholds=ConceptThresholds(score=0.0))[0]
    engine.clear_cache()
    engine.segment(images[:1], ["car", "tree", "boat"])  # "tree" encoded in a batch of three
    cached = engine.segment(images[:1], ["tree"], thresholds=ConceptThresholds(score=0.0))[0]
    np.testing.assert_allclose(alone.scores, cached.scores, atol=1e-5)


def test_vision_is_batched(model_dir: Path, images: list[np.ndarray]) -> None:
    engine = ConceptEngine.from_pretrained(model_dir, precision="fp32", batch_size=2, images_per_pass=2)
    batches: list[int] = []
    handle = engine.model.vision_encoder.backbone.layer_norm.register_forward_hook(
        lambda m, args, out: batches.append(len(args[0]))
    )
    try:
        engine.segment(images, ["car"])
    finally:
        handle.remove()
    assert batches == [2, 1]


@pytest.mark.parametrize(
    ("concepts", "boxes", "message"),
    [
        (
            [f"thing {letter}" for letter in string.ascii_lowercase[: MAX_CONCEPTS_PER_IMAGE + 1]],
            None,
            "at most",
        ),
        (["a" * (MAX_CONCEPT_CHARS + 1)], None, f"at most {MAX_CONCEPT_CHARS}"),
        (["é" * 20], None, "tokens"),  # 20 characters, 40 byte tokens
        (["car", " car "], None, "listed twice"),
        ([], None, "at least one"),
        (["  "], None, "non-empty"),
        ("car", None, "list of concept names"),
        (["car"], [[([0, 0, 100, 10], True)], [], []], "inside the 60x40 image"),
        (["car"], [[([5, 5, 5, 10], True)], [], []], "x0 < x1"),
        (["car"], [[([1, 2, 3], True)], [], []], "[x0, y0, x1, y1]"),
        (["car"], [[(["1", 2, 3, 4], True)], [], []], "[x0, y0, x1, y1]"),
        (["car"], [[([1, 2, float("nan"), 4], True)], [], []], "[x0, y0, x1, y1]"),
        (["car"], [[([1, 2, 3, 4], "yes")], [], []], "positive true or false"),
        (["car"], [[[1, 2, 3, 4]], [], []], "positive true or false"),
        (["car"], [[([1, 2, 3, 4], True)] * 17, [], []], "at most 16 per image"),
        (["car"], [[]], "for 1 images"),
    ],
)
def test_budgets_and_bad_prompts_are_refused_before_any_work(
    engine: ConceptEngine,
    images: list[np.ndarray],
    calls: Calls,
    concepts: list[str],
    boxes: list[list[tuple[list[float], bool]]] | None,
    message: str,
) -> None:
    with pytest.raises(InvalidPrompt, match=message.replace("[", r"\[")) as caught:
        engine.segment(images, concepts, boxes)
    assert caught.value.code == "invalid_prompt"
    assert (calls.text, calls.vision) == (0, 0)


def test_a_bad_concept_of_a_later_image_stops_the_whole_call(
    engine: ConceptEngine, images: list[np.ndarray], calls: Calls
) -> None:
    with pytest.raises(InvalidPrompt, match="listed twice"):
        engine.segment(images, [["car"], ["tree"], ["boat", "boat"]])
    assert (calls.text, calls.vision) == (0, 0)


@pytest.mark.parametrize("values", [{"score": 1.5}, {"mask": -0.1}, {"score": "high"}])
def test_thresholds_outside_zero_to_one_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(InvalidPrompt, match=r"in \[0, 1\]"):
        ConceptThresholds(**values)  # type: ignore[arg-type]


def test_masks_are_upsampled_a_few_at_a_time_with_the_same_pixels() -> None:
    logits = torch.randn(5, 16, 16)
    whole = _upsample(logits, 50, 40, 0.5)
    assert torch.equal(_upsample(logits, 50, 40, 0.5, max_floats=2 * 50 * 40), whole)  # chunks of 2
    assert whole.shape == (5, 50, 40) and whole.any() and not whole.all()


def test_an_image_that_is_not_rgb_uint8_is_refused(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    with pytest.raises(InvalidImage, match="HxWx3 uint8"):
        engine.segment([images[0], images[1][:, :, 0]], ["car"])


def test_nothing_found_is_an_empty_result(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    result = engine.segment(images[:1], ["car"], thresholds=ConceptThresholds(score=1.0))[0]
    assert result.masks.shape == (0, 40, 60) and result.boxes.shape == (0, 4) and result.labels == []


def test_bf16_runs_behind_the_same_interface(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    bf16 = ConceptEngine(engine.model, engine.processor, precision="bf16")
    result = bf16.segment(images[:1], ["car"], thresholds=ConceptThresholds(score=0.0))[0]
    exact = engine.segment(images[:1], ["car"], thresholds=ConceptThresholds(score=0.0))[0]
    assert result.masks.shape == exact.masks.shape and result.labels == exact.labels
    np.testing.assert_allclose(np.sort(result.scores), np.sort(exact.scores), atol=0.1)


def test_a_directory_without_a_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        ConceptEngine.from_pretrained(tmp_path)


def test_bf16_takes_exemplar_boxes_on_a_cpu(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    """torchvision's roi_align has no CPU autocast rule for the fp16 copy transformers makes of bf16
    features: the exemplar boxes are encoded outside autocast, in fp32."""
    bf16 = ConceptEngine(engine.model, engine.processor, precision="bf16")
    boxes = [[([5.0, 5.0, 30.0, 25.0], True)]]
    result = bf16.segment(images[:1], ["car"], boxes, ConceptThresholds(score=0.0))[0]
    exact = engine.segment(images[:1], ["car"], boxes, ConceptThresholds(score=0.0))[0]
    assert result.masks.shape == exact.masks.shape and result.labels == exact.labels
    np.testing.assert_allclose(np.sort(result.scores), np.sort(exact.scores), atol=0.1)


def test_embed_gives_the_vision_features_segment_uses(
    engine: ConceptEngine, images: list[np.ndarray], calls: Calls
) -> None:
    before = calls.vision
    features = engine.embed(images)
    assert len(features) == len(images) and calls.vision - before == len(images)
    one = engine.embed(images[:1])[0]
    torch.testing.assert_close(one.fpn_hidden_states[-1], features[0].fpn_hidden_states[-1])


def test_mask_work_is_done_only_for_kept_queries(engine: ConceptEngine, images: list[np.ndarray]) -> None:
    """Queries under the score threshold get no mask embedding; a concept with none above it gets
    no pixel decoder pass (the library decodes all 200 queries of every concept, then drops them)."""
    decoder = engine.model.mask_decoder
    embedded: list[int] = []
    projected: list[int] = []
    handles = [
        decoder.mask_embedder.register_forward_hook(lambda m, args, out: embedded.append(len(args[0]))),
        decoder.pixel_decoder.norms[0].register_forward_hook(
            lambda m, args, out: projected.append(len(args[0]))
        ),
    ]
    try:
        everything = engine.segment(images[:1], ["car", "tree"], thresholds=ConceptThresholds(score=0.0))[0]
        best = [
            everything.scores[[label == name for label in everything.labels]].max()
            for name in ("car", "tree")
        ]
        threshold = float(sum(best)) / 2  # between the two concepts' best scores: one keeps some, one none
        embedded.clear()
        projected.clear()
        some = engine.segment(images[:1], ["car", "tree"], thresholds=ConceptThresholds(score=threshold))[0]
        assert 0 < len(some.labels) < len(everything.labels)
        assert sum(embedded) == len(some.labels)  # one embedding per kept query
        assert sum(projected) == len(set(some.labels)) == 1  # one concept decoded, the other skipped
        embedded.clear()
        projected.clear()
        engine.segment(images[:1], ["car", "tree"], thresholds=ConceptThresholds(score=1.0))
        assert embedded == [] and projected == []
    finally:
        for handle in handles:
            handle.remove()
