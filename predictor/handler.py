"""HTTP edge of the CPR model server: JSON in, the routine in worker threads, JSON out.

The SDK's default ``PredictionHandler`` runs the model on the event loop, so ``/health`` stalls
while an image is segmented, and requests run one at a time. Here each request reads and decodes its
images in its own thread, concurrent requests share the model through a
:class:`~predictor.batcher.RequestBatcher` (one engine run per group, the encoder at its batch
size), and a malformed body gets a 400 whose ``detail`` is ``{"code", "message"}`` (a code from
:data:`samdrop.errors.ERROR_CODES`, so the caller can record it as it would an error slot). The
body's size and JSON depth are checked before it is parsed (:mod:`samdrop.budgets`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import HTTPException
from google.cloud.aiplatform.prediction.handler import PredictionHandler
from google.cloud.aiplatform.prediction.predictor import Predictor
from opentelemetry.trace import Span, SpanKind, set_span_in_context
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from predictor.batcher import RequestBatcher
from predictor.cpr import SamRoutine, Slot
from samdrop.budgets import check_request_bytes, loads_limited
from samdrop.errors import InvalidRequest
from samdrop.settings import Settings
from samdrop.tracing import incoming_context, tracer

log = logging.getLogger(__name__)


class SamHandler(PredictionHandler):
    """``HANDLER_MODULE=predictor.handler``, ``HANDLER_CLASS=SamHandler``."""

    def __init__(self, artifacts_uri: str, predictor: type[Predictor] | None = None) -> None:
        super().__init__(artifacts_uri, predictor)
        routine = self._predictor
        assert isinstance(routine, SamRoutine) and routine.settings is not None
        assert routine.metrics is not None
        self.metrics = routine.metrics
        self._batcher: RequestBatcher[Slot] = RequestBatcher(
            routine.predict,
            max_images=routine.settings.batch_size,
            window_s=routine.settings.batch_window_ms / 1000,
            count=lambda slots: sum(slot.image is not None for slot in slots),
            on_group=self.metrics.engine_run,
        )
        self.metrics.watch_queue(self._batcher.depth)

    async def handle(self, request: Request) -> Response:  # type: ignore[override]  # the SDK awaits it
        settings = self._settings
        declared = request.headers.get("content-length", "")
        try:
            if declared.isascii() and declared.isdigit():  # refused before the body is read
                check_request_bytes(int(declared), limit=settings.max_request_bytes)
            body = await request.body()
            check_request_bytes(len(body), limit=settings.max_request_bytes)
            try:
                payload = loads_limited(body or b"null", max_depth=settings.max_json_depth)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidRequest(f"request body is not JSON: {exc}") from None
            with tracer().start_as_current_span(
                "predictor.predict", context=incoming_context(request.headers), kind=SpanKind.SERVER
            ) as span:
                result = await run_in_threadpool(self._run, payload, span)
        except InvalidRequest as exc:
            self.metrics.request("invalid_request")
            raise HTTPException(status_code=400, detail=exc.to_json()) from None
        except Exception:
            self.metrics.request("error")  # the SDK's server answers 500
            raise
        self.metrics.request("ok")
        return Response(content=json.dumps(result), media_type="application/json")

    @property
    def _settings(self) -> Settings:
        routine = self._predictor
        assert isinstance(routine, SamRoutine) and routine.settings is not None
        return routine.settings

    def _run(self, payload: Any, span: Span) -> Any:
        routine = self._predictor
        assert isinstance(routine, SamRoutine)
        slots = routine.preprocess(payload)
        submitted = time.time_ns()
        grouped = self._batcher.submit(slots)
        for slot in slots:
            slot.requests_batched = grouped
        answer = routine.postprocess(slots)
        record_spans(span, slots, submitted)
        return answer


def record_spans(parent: Span, slots: list[Slot], submitted_ns: int) -> None:
    """Each instance's stages as children of the request's span, from the times its slot kept:
    ``read``, ``decode``, ``queue`` (waiting for the engine), ``model`` (the engine run it shared,
    with ``encode`` and ``decode_masks`` laid out inside it from this image's own durations) and
    ``encode_outputs``. Nothing when traces are off."""
    if not parent.is_recording():
        return
    context = set_span_in_context(parent)

    def child(name: str, start: int, end: int, where: Any = context, **attributes: Any) -> Span:
        span = tracer().start_span(
            f"predictor.{name}", context=where, start_time=start, attributes=attributes
        )
        span.end(end_time=end)
        return span

    for slot in slots:
        index = {"samdrop.instance": slot.index}
        for stage in ("read", "decode"):
            if stage in slot.stages_ns:
                child(stage, *slot.stages_ns[stage], **index)
        if slot.model_ns is not None:
            start, end = slot.model_ns
            child("queue", min(submitted_ns, start), start, **index)
            model = child("model", start, end, requests_batched=slot.requests_batched, **index)
            if slot.result is not None:
                inside = set_span_in_context(model)
                timings = slot.result.timings_ms
                encode_ns = int(timings.get("encoder", 0.0) * 1e6)
                decode_ns = int((sum(timings.values()) * 1e6) - encode_ns)
                child("encode", start, start + encode_ns, inside, encoder_batch=slot.result.encoder_batch)
                child("decode_masks", start + encode_ns, min(end, start + encode_ns + decode_ns), inside)
        if "encode_outputs" in slot.stages_ns:
            child("encode_outputs", *slot.stages_ns["encode_outputs"], **index)
