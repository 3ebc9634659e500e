"""In-process fakes of the function's clients (storage, Pub/Sub publisher, SAM endpoint).

They follow the protocols in ``samdrop.storage``, ``samdrop.messages`` and
``functions.endpoint`` and are passed in as arguments: no module globals are patched.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from functions.handler import Deps
from samdrop.documents import MaskRecord, Prediction, PromptsRecord
from samdrop.errors import InputNotFound
from samdrop.masks import mask_box, mask_to_rle
from samdrop.settings import Settings
from samdrop.storage import ObjectInfo, WriteConflict

EVENTS = Path(__file__).resolve().parents[1] / "data" / "events"
BUCKET = "samdrop-local"
RESULTS = "samdrop-local-results"  # where outputs go by default (SAMDROP_BUCKET + "-results")


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@dataclass
class _Version:
    generation: int
    data: bytes
    metadata: dict[str, str]
    content_type: str


class Crash(BaseException):
    """Simulates the process dying mid-delivery (BaseException: no handler catches it)."""


@dataclass
class FakeStore:
    """Objects live in memory; the bucket is not versioned (only the live generation is readable)."""

    objects: dict[tuple[str, str], _Version] = field(default_factory=dict)
    ops: list[tuple[str, str]] = field(default_factory=list)
    # (op, name) -> exception to raise (once, then removed) before the operation happens.
    faults: dict[tuple[str, str], BaseException] = field(default_factory=dict)
    # Called after each successful write (e.g. to crash after a given object is written).
    after_write: Callable[[str], None] | None = None
    _generations: itertools.count[int] = field(default_factory=lambda: itertools.count(1_000_000_000_000_000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(
        self, bucket: str, name: str, data: bytes, *, content_type: str = "image/jpeg", **metadata: str
    ) -> int:
        generation = next(self._generations)
        self.objects[(bucket, name)] = _Version(generation, data, dict(metadata), content_type)
        return generation

    def _fault(self, op: str, name: str) -> None:
        with self._lock:
            self.ops.append((op, name))
            exc = self.faults.pop((op, name), None)
        if exc is not None:
            raise exc

    def _info(self, name: str, v: _Version) -> ObjectInfo:
        return ObjectInfo(name, v.generation, dict(v.metadata), v.content_type, len(v.data))

    def list(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        self._fault("list", prefix)
        with self._lock:
            return {
                name: self._info(name, v)
                for (b, name), v in self.objects.items()
                if b == bucket and name.startswith(prefix) and "/" not in name[len(prefix) :]
            }

    def stat(self, bucket: str, name: str, *, generation: int | None = None) -> ObjectInfo | None:
        self._fault("stat", name)
        v = self.objects.get((bucket, name))
        if v is None or (generation is not None and v.generation != generation):
            return None
        return self._info(name, v)

    def read(self, bucket: str, name: str, *, generation: int | None = None) -> bytes:
        self._fault("read", name)
        v = self.objects.get((bucket, name))
        if v is None or (generation is not None and v.generation != generation):
            raise InputNotFound(f"gs://{bucket}/{name} does not exist")
        return v.data

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        *,
        content_type: str,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        self._fault("write", name)
        with self._lock:
            current = self.objects.get((bucket, name))
            if (current.generation if current else 0) != if_generation_match:
                raise WriteConflict(f"gs://{bucket}/{name}: precondition failed")
            generation = next(self._generations)
            self.objects[(bucket, name)] = _Version(generation, data, dict(metadata or {}), content_type)
        if self.after_write is not None:
            self.after_write(name)
        return generation

    def delete(self, bucket: str, name: str, *, if_generation_match: int) -> None:
        self._fault("delete", name)
        with self._lock:
            current = self.objects.get((bucket, name))
            if current is None:
                raise InputNotFound(name)
            if current.generation != if_generation_match:
                raise WriteConflict(name)
            del self.objects[(bucket, name)]

    def names(self, prefix: str = "") -> builtins.list[str]:
        return sorted(name for (_, name) in self.objects if name.startswith(prefix))

    def json(self, name: str, bucket: str = RESULTS) -> Any:
        return json.loads(self.objects[(bucket, name)].data)


@dataclass
class FakePublisher:
    messages: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    fail_next: BaseException | None = None

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.messages.append((topic, json.loads(data.decode("utf-8")), dict(attributes)))
        return str(len(self.messages))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body, _ in self.messages]


@dataclass
class FakeEndpoint:
    """Answers with ``masks`` (HxW bool each) for a ``width``x``height`` image, or raises ``error``."""

    width: int = 64
    height: int = 48
    masks: list[np.ndarray] = field(default_factory=list)
    random_weights: bool = True
    error: BaseException | None = None
    slot: dict[str, Any] | None = None  # a raw prediction to return instead
    calls: list[tuple[list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)

    def predict(self, instances: list[dict[str, Any]], parameters: dict[str, Any]) -> list[Any]:
        self.calls.append((instances, parameters))
        if self.error is not None:
            raise self.error
        if self.slot is not None:
            return [self.slot]
        masks = self.masks or default_masks(self.width, self.height)
        instance = instances[0]
        prompts = PromptsRecord()
        if "points" in instance:
            prompts["points"], prompts["labels"] = instance["points"], instance["labels"]
        if "boxes" in instance:
            prompts["boxes"] = instance["boxes"]
        prediction = Prediction(
            file_path=instance["file_path"],
            width=self.width,
            height=self.height,
            masks=[
                MaskRecord(
                    segmentation=mask_to_rle(m),
                    score=0.9 - 0.1 * i,
                    box=mask_box(m),
                    area=int(m.sum()),
                    stability_score=0.95,
                    prompt_index=0 if prompts else None,
                )
                for i, m in enumerate(masks)
            ],
            mode="prompted" if prompts else "automatic",
            prompts=PromptsRecord(**prompts, multimask="boxes" not in instance) if prompts else None,
            amg=None if prompts else {"points_per_side": 32},
            model={"type": "tiny", "random_weights": self.random_weights},
            timings_ms={"model": 12.5, "total": 14.0},
        )
        return [prediction.to_json()]


def default_masks(width: int = 64, height: int = 48, count: int = 3) -> list[np.ndarray]:
    out = []
    for i in range(count):
        m = np.zeros((height, width), dtype=bool)
        m[4 * i : 4 * i + 10, 5 * i : 5 * i + 20] = True
        out.append(m)
    return out


def jpeg(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def settings(**overrides: Any) -> Settings:
    return Settings.from_env(
        {"SAMDROP_BUCKET": BUCKET, "SAMDROP_ENDPOINT": "http://127.0.0.1:8080"}, **overrides
    )


@dataclass
class Ticker:
    """A deterministic clock: each call advances 10 ms."""

    now: float = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def make_deps(
    store: FakeStore | None = None,
    publisher: FakePublisher | None = None,
    endpoint: FakeEndpoint | None = None,
    **kwargs: Any,
) -> Deps:
    return Deps(
        settings=kwargs.pop("settings", None) or settings(),
        store=store if store is not None else FakeStore(),
        publisher=publisher if publisher is not None else FakePublisher(),
        endpoint=endpoint if endpoint is not None else FakeEndpoint(),
        clock=Ticker(),
        **kwargs,
    )
