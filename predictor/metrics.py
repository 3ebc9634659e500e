"""The predictor's Prometheus metrics, served at ``/metrics`` (:mod:`predictor.server`).

Every series carries ``model`` and ``precision`` labels, so a scrape of two servers (or of one
before and after a model change) never mixes them. Each routine owns its own registry: tests build
many routines in one process, and the server has exactly one.

What is measured, and where its boundary is in the code:

* ``samdrop_predictor_requests_total{outcome}``: one per ``/predict`` call — ``ok``,
  ``invalid_request`` (the 400s of :mod:`predictor.handler`) or ``error`` (a 500);
* ``samdrop_predictor_images_total{outcome,code}``: one per instance answered — ``succeeded``, or
  ``failed`` with the slot's error code (:data:`samdrop.errors.ERROR_CODES`);
* ``samdrop_predictor_stage_seconds{stage}``: ``read`` (the bytes of the image), ``decode`` (bytes to
  pixels, budgets, tiling), ``encode`` (the image's share of its encoder pass), ``decode_masks``
  (mask decoder and its post-processing, or the automatic-mask generator) and ``encode_outputs``
  (the answer: RLE/PNG and polygon exports);
* ``samdrop_predictor_encoder_batch_images``: images per encoder pass;
* ``samdrop_predictor_run_images``: images per engine run (the batcher's group; its fill is this
  over ``samdrop_predictor_batch_size``);
* ``samdrop_predictor_queue_wait_seconds`` and ``samdrop_predictor_queue_depth``: how long a request
  waited for the engine, and how many wait now;
* ``samdrop_predictor_embedding_cache_total{result}``: the engine's embedding-cache hits and misses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

STAGES = ("read", "decode", "encode", "decode_masks", "encode_outputs")
# Seconds: a tiny CPU image decodes in ~1 ms, a vit_h encoder pass on a CPU takes a minute.
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ("model", "precision")


class PredictorMetrics:
    """The metrics of one routine (one model, one precision)."""

    def __init__(self, model: str, precision: str, batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self._labels = {"model": model, "precision": precision}
        r = self.registry
        self._requests = Counter(
            "samdrop_predictor_requests", "/predict calls by outcome", [*LABELS, "outcome"], registry=r
        )
        self._images = Counter(
            "samdrop_predictor_images",
            "instances answered, by outcome and error code",
            [*LABELS, "outcome", "code"],
            registry=r,
        )
        self._stages = Histogram(
            "samdrop_predictor_stage_seconds",
            "time per image in each stage",
            [*LABELS, "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._encoder = Histogram(
            "samdrop_predictor_encoder_batch_images",
            "images per encoder pass",
            LABELS,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self._runs = Histogram(
            "samdrop_predictor_run_images",
            "images per engine run (requests grouped by the batcher)",
            LABELS,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self._wait = Histogram(
            "samdrop_predictor_queue_wait_seconds",
            "time a request waited for the engine",
            LABELS,
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._depth = Gauge(
            "samdrop_predictor_queue_depth", "requests waiting for the engine", LABELS, registry=r
        )
        Gauge(
            "samdrop_predictor_batch_size", "SAMDROP_BATCH_SIZE: images per run at most", LABELS, registry=r
        ).labels(**self._labels).set(batch_size)
        self._depth.labels(**self._labels).set(0)

    def request(self, outcome: str) -> None:
        self._requests.labels(**self._labels, outcome=outcome).inc()

    def image(self, code: str | None) -> None:
        """One instance answered: ``code`` None when it succeeded, else its error code."""
        outcome = "succeeded" if code is None else "failed"
        self._images.labels(**self._labels, outcome=outcome, code=code or "").inc()

    def stage(self, stage: str, seconds: float) -> None:
        assert stage in STAGES, stage
        self._stages.labels(**self._labels, stage=stage).observe(seconds)

    def encoder_pass(self, images: int) -> None:
        self._encoder.labels(**self._labels).observe(images)

    def engine_run(self, images: int, waits_s: list[float]) -> None:
        """One batcher group: its images, and how long each of its requests waited."""
        self._runs.labels(**self._labels).observe(images)
        for wait in waits_s:
            self._wait.labels(**self._labels).observe(wait)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time."""
        self._depth.labels(**self._labels).set_function(depth)

    def watch_cache(self, hits_misses: Callable[[], tuple[int, int]]) -> None:
        """Read the engine's embedding-cache counters at scrape time."""
        self.registry.register(_CacheCollector(hits_misses, self._labels))

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    def __init__(self, hits_misses: Callable[[], tuple[int, int]], labels: dict[str, str]) -> None:
        self._read = hits_misses
        self._labels = labels

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "samdrop_predictor_embedding_cache",
            "embedding-cache lookups by result",
            labels=[*LABELS, "result"],
        )
        hits, misses = self._read()
        values = list(self._labels.values())
        family.add_metric([*values, "hit"], hits)
        family.add_metric([*values, "miss"], misses)
        yield family
