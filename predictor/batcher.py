"""Dynamic batching: concurrent ``/predict`` requests share encoder passes.

Each request thread parses and decodes its own images (I/O overlaps the model), then hands its slots
to :class:`RequestBatcher`. One worker thread runs the model: it takes the first waiting request,
gathers whatever else arrives within ``window_s`` (and whatever queued while the model was busy) up
to ``max_images`` images, and runs them in one :meth:`~predictor.cpr.SamRoutine.predict` call, so a
burst of single-image uploads runs the encoder at the configured batch size instead of one by one.

A failure of a grouped run is retried request by request, so one request's problem is never its
neighbours' (each request then gets its own result or its own exception).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class _Request(Generic[Item]):
    items: Sequence[Item]
    images: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    group_size: int = 0  # requests that ran together
    queued: float = field(default_factory=time.monotonic)


class RequestBatcher(Generic[Item]):
    """Runs ``run(items)`` for groups of concurrently submitted requests on one worker thread.

    ``run`` receives the items of every request in the group, in submission order, and fills in
    their results in place (as ``SamRoutine.predict`` does with its slots).
    """

    def __init__(
        self,
        run: Callable[[list[Item]], object],
        *,
        max_images: int,
        window_s: float,
        count: Callable[[Sequence[Item]], int] = len,
        on_group: Callable[[int, list[float]], None] | None = None,
    ) -> None:
        """``on_group(images, waits_s)`` hears of each group before it runs: its images and how long
        each of its requests waited (the predictor's metrics)."""
        self._run = run
        self._on_group = on_group
        self._max_images = max(1, max_images)
        self._window_s = max(0.0, window_s)
        self._count = count
        self._queue: queue.SimpleQueue[_Request[Item]] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._loop, name="samdrop-batcher", daemon=True)
        self._worker.start()

    def submit(self, items: Sequence[Item]) -> int:
        """Run ``items`` (blocking) with whatever else is waiting; returns how many requests ran
        together. Raises what ``run`` raised for these items."""
        request = _Request(items, self._count(items))
        if request.images == 0:  # nothing for the model (every slot failed earlier)
            return 1
        self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.group_size

    def depth(self) -> int:
        """Requests waiting for the worker (approximate, as ``qsize`` is)."""
        return self._queue.qsize()

    def _loop(self) -> None:
        while True:
            group = self._gather(self._queue.get())
            if self._on_group is not None:
                now = time.monotonic()
                self._on_group(sum(r.images for r in group), [now - r.queued for r in group])
            try:
                self._run([item for request in group for item in request.items])
                for request in group:
                    request.group_size = len(group)
            except BaseException:
                for request in group:  # alone, so the failure lands only where it belongs
                    request.group_size = 1
                    try:
                        self._run(list(request.items))
                    except BaseException as exc:
                        request.error = exc
            for request in group:
                request.done.set()

    def _gather(self, first: _Request[Item]) -> list[_Request[Item]]:
        group, images = [first], first.images
        deadline = time.monotonic() + self._window_s
        while images < self._max_images:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            group.append(nxt)
            images += nxt.images
        return group
