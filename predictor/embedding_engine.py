"""What SAM 1's and SAM 2.1's engines share around their models: image embeddings cached by image
content, and the run loop (one encoder pass per ``batch_size`` new images, then each job's masks).

A subclass supplies the model's halves: ``_encode`` (images to embeddings, one encoder pass),
``segment`` (prompts on one embedded image) and ``generate`` (automatic masks).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from predictor.engine import Job, MaskSet
    from predictor.instances import Prompts
    from samdrop.settings import Settings

E = TypeVar("E")  # the family's embedding of one image


def image_key(image: np.ndarray) -> str:
    """Content hash of an ``HxWx3 uint8`` image (shape included), the embedding-cache key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class EmbeddingEngine(abc.ABC, Generic[E]):
    """Thread-safe (one job at a time): every public call holds ``_lock``."""

    batch_size: int
    precision: str  # "fp32" | "bf16"
    device: torch.device

    def _init_cache(self, cache_size: int) -> None:
        """An LRU of ``cache_size`` embeddings (0: none), plus the embeddings of the run in progress."""
        self._cache: OrderedDict[str, E] = OrderedDict()
        self._cache_size = cache_size
        self._pinned: dict[str, E] = {}
        self._lock = threading.RLock()
        self.cache_hits = 0
        self.cache_misses = 0

    @abc.abstractmethod
    def _encode(self, images: Sequence[np.ndarray]) -> list[E]:
        """One encoder pass over ``HxWx3 uint8`` RGB ``images``."""

    @abc.abstractmethod
    def segment(
        self, image: np.ndarray, prompts: Prompts, embedding: E | None = None, *, return_logits: bool = False
    ) -> MaskSet:
        """Masks for ``prompts`` (pixel XY of ``image``)."""

    @abc.abstractmethod
    def generate(self, image: np.ndarray, amg: dict[str, object] | None = None) -> MaskSet:
        """Automatic masks of ``image``."""

    def _encoder_step(self) -> int:
        """Images per encoder pass."""
        return self.batch_size

    def embed(self, images: Sequence[np.ndarray]) -> list[E]:
        """Embeddings for ``HxWx3 uint8`` RGB images, from the cache or the encoder (batched)."""
        return [embedding for _, embedding in self._embed_keyed(images)]

    def _embed_keyed(
        self, images: Sequence[np.ndarray], *, count: bool = True, batches: dict[str, int] | None = None
    ) -> list[tuple[str, E]]:
        """``(cache key, embedding)`` per image; ``batches`` gets, per key encoded now, the size of
        the encoder pass that did it."""
        with self._lock:
            keys = [image_key(image) for image in images]
            found: dict[str, E] = {}
            missing: dict[str, np.ndarray] = {}
            for key, image in zip(keys, images, strict=True):
                hit = self._lookup(key)
                if hit is not None:
                    found[key] = hit
                else:
                    missing.setdefault(key, image)
            if count:
                self.cache_hits += len(images) - len(missing)
                self.cache_misses += len(missing)
            missing_keys = list(missing)
            step = self._encoder_step()
            for start in range(0, len(missing_keys), step):
                chunk = missing_keys[start : start + step]
                for key, embedding in zip(chunk, self._encode([missing[k] for k in chunk]), strict=True):
                    found[key] = embedding
                    self._remember(key, embedding)
                    if batches is not None:
                        batches[key] = len(chunk)
            return [(key, found[key]) for key in keys]

    def _lookup(self, key: str) -> E | None:
        if key in self._pinned:
            return self._pinned[key]
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def _remember(self, key: str, embedding: E) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = embedding
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._pinned.clear()

    def run(self, jobs: Sequence[Job]) -> list[MaskSet]:
        """Segment every job: one encoder pass per ``batch_size`` images, then each job's masks."""
        with self._lock:
            started = time.perf_counter()
            batches: dict[str, int] = {}
            keyed = self._embed_keyed([job.image for job in jobs], batches=batches)
            encode_ms = (time.perf_counter() - started) * 1000 / max(len(jobs), 1)
            # Pinned for this run, so a cache smaller than the batch cannot evict them before use.
            self._pinned = dict(keyed)
            try:
                results = []
                for job, (key, embedding) in zip(jobs, keyed, strict=True):
                    if job.prompts is not None:
                        result = self.segment(
                            job.image, job.prompts, embedding, return_logits=job.return_logits
                        )
                    else:
                        result = self.generate(job.image, job.amg)
                    result.timings_ms["encoder"] = round(encode_ms, 2)
                    result.encoder_batch = batches.pop(key, 0)  # a repeated image counts once
                    if result.stages_ms:
                        result.stages_ms["encoder"] = round(result.stages_ms["encoder"] + encode_ms, 2)
                    results.append(result)
                return results
            finally:
                self._pinned.clear()

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        """bf16 autocast when the engine runs bf16."""
        with bf16_autocast(self.precision, self.device):
            yield


def engine_options(settings: Settings) -> dict[str, Any]:
    """The settings every SAM engine's constructor takes, by keyword (budgets, batching, cache)."""
    return {
        "batch_size": settings.batch_size,
        "points_per_batch": settings.points_per_batch,
        "cache_size": settings.embedding_cache_size,
        "max_masks": settings.max_masks,
        "max_points_per_batch": settings.max_points_per_batch,
        "decoder_memory_bytes": settings.decoder_memory_bytes,
        "max_auto_points": settings.max_auto_points,
    }


@contextlib.contextmanager
def bf16_autocast(precision: str, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` to bf16 on ``device`` when ``precision`` is ``bf16``; else nothing."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
