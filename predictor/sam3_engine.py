"""SAM 3 behind samdrop's engine interface: text-concept jobs in, :class:`~predictor.engine.MaskSet` out.

:class:`~predictor.concepts.ConceptEngine` does the model work; this adapter only turns jobs into
one :meth:`~predictor.concepts.ConceptEngine.segment` call for the whole group (the vision encoder
runs once per image, the text encoder once per distinct concept of the group) and its
:class:`~predictor.concepts.ConceptMasks` into the mask records every other engine writes. A mask's
``label`` is its concept and ``prompt_index`` the concept's index in the job's ``text``.

SAM 3 here is concept-only (transformers' ``Sam3Model``): a job without text is refused with
``invalid_request`` (:func:`predictor.instances.check_model_takes`, also called before any image is
read by the predictor and the shard).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from predictor import hf_weights
from predictor.concepts import ConceptEngine, ConceptMasks, ConceptThresholds
from predictor.engine import Job, MaskSet, pick_device
from predictor.instances import check_model_takes
from predictor.records import prompt_record
from samdrop.concepts import ExemplarBox
from samdrop.documents import MaskRecord
from samdrop.models import model_info
from samdrop.settings import Settings


class Sam3Engine:
    """SAM 3 concept segmentation as an :class:`~predictor.backends.Engine`."""

    def __init__(
        self,
        concepts: ConceptEngine,
        model_type: str = "sam3",
        *,
        checkpoint: str | None = None,
        max_masks: int = 256,
        random_weights: bool = False,
        thresholds: ConceptThresholds | None = None,
    ) -> None:
        self.concepts = concepts
        self.model_type = model_type
        self.batch_size = concepts.batch_size
        self.info = model_info(model_type)
        self.checkpoint = checkpoint or self.info.source
        self.max_masks = max_masks
        self.random_weights = random_weights
        self.thresholds = thresholds or ConceptThresholds()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Sam3Engine:
        """Load ``settings.model_type`` from ``settings.checkpoint`` (a ``save_pretrained`` folder,
        a ``gs://`` folder, or the Hugging Face repo: :func:`predictor.hf_weights.resolve`).
        ``overrides``: ``random_weights`` and ``thresholds`` for this engine, anything else for the
        concept engine."""
        info = model_info(settings.model_type)
        checkpoint = settings.checkpoint if settings.checkpoint not in (None, "auto") else None
        folder = hf_weights.resolve(info, checkpoint, settings.cache_dir)
        random_weights = bool(overrides.pop("random_weights", False))
        thresholds = overrides.pop("thresholds", ConceptThresholds(score=settings.concept_score_threshold))
        options: dict[str, Any] = {
            "batch_size": settings.batch_size,
            "max_concepts": settings.max_concepts,
            "max_concept_chars": settings.max_concept_chars,
        }
        concepts = ConceptEngine.from_pretrained(
            folder,
            device=pick_device(settings.device),
            precision=settings.precision,
            **{**options, **overrides},
        )
        return cls(
            concepts,
            settings.model_type,
            checkpoint=checkpoint or info.source,
            max_masks=settings.max_masks,
            random_weights=random_weights,
            thresholds=thresholds,
        )

    @property
    def description(self) -> dict[str, Any]:
        """What produced the masks, for responses and ``masks.json``."""
        record = hf_weights.hf_description(self.info, self.checkpoint, "Sam3Model", self.random_weights)
        return {**self.concepts.description, **record}

    @property
    def auto_points_per_side(self) -> int:
        """Unused (SAM 3 here makes no automatic masks), but the predictor fills every request's
        default ``amg`` from it, which must stay a valid grid."""
        return 16

    def embed(self, images: Sequence[np.ndarray]) -> Sequence[Any]:
        """SAM 3's vision features per image (not cached: :meth:`run` computes them once per call,
        and text features are the cached part)."""
        return self.concepts.embed(images)

    def clear_cache(self) -> None:
        self.concepts.clear_cache()

    def run(self, jobs: Sequence[Job]) -> list[MaskSet]:
        """Every job's concepts in one :meth:`ConceptEngine.segment` call; one :class:`MaskSet` per job.

        Each job needs ``prompts.text``; its ``prompts.boxes`` (``Mx4 float32`` XYXY px) are
        exemplars, positive where ``prompts.box_labels`` says so."""
        for job in jobs:
            check_model_takes(job.prompts, self.model_type)
        if not jobs:
            return []
        texts = [list(job.prompts.text or ()) for job in jobs if job.prompts is not None]
        exemplars = [_exemplars(job) for job in jobs]
        started = time.perf_counter()
        found = self.concepts.segment(
            [job.image for job in jobs], texts, exemplars if any(exemplars) else None, self.thresholds
        )
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        results = []
        for names, concept_masks in zip(texts, found, strict=True):
            result = MaskSet(
                self._records(concept_masks, names), width=concept_masks.width, height=concept_masks.height
            )
            result.timings_ms["concepts"] = round(elapsed_ms / len(jobs), 2)
            result.stages_ms = {key: round(value, 2) for key, value in concept_masks.timings_ms.items()}
            result.encoder_batch = min(len(jobs), self.concepts.images_per_pass)
            results.append(result)
        return results

    def _records(self, found: ConceptMasks, names: list[str]) -> list[MaskRecord]:
        """Mask records, concept by concept as asked, each by score; at most ``max_masks`` per
        image, the lowest scores dropped. SAM 3 gives no stability score: its detection score stands
        in; the box is the mask's own, inclusive, as every engine writes it."""
        order = sorted(range(len(found.labels)), key=lambda i: -float(found.scores[i]))[: self.max_masks]
        records = []
        for i in sorted(order):  # back to concept order
            score, label = float(found.scores[i]), found.labels[i]
            record = prompt_record(found.masks[i], score, score, names.index(label))
            records.append(replace(record, label=label))
        return records


def _exemplars(job: Job) -> list[ExemplarBox]:
    prompts = job.prompts
    if prompts is None or prompts.boxes is None:
        return []
    positives = prompts.box_labels or (True,) * len(prompts.boxes)
    return [(box.tolist(), positive) for box, positive in zip(prompts.boxes, positives, strict=True)]
