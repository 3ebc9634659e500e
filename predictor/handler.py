"""HTTP edge of the CPR model server: JSON in, the routine in a worker thread, JSON out.

The SDK's default ``PredictionHandler`` runs the model on the event loop, so ``/health`` stalls
while an image is segmented; this one runs it in a thread (one request at a time: the engine is
one model on one device) and answers a malformed body with a 400 that says what is wrong.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from fastapi import HTTPException
from google.cloud.aiplatform.prediction.handler import PredictionHandler
from google.cloud.aiplatform.prediction.predictor import Predictor
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from samdrop.errors import InvalidRequest

log = logging.getLogger(__name__)


class SamHandler(PredictionHandler):
    """``HANDLER_MODULE=predictor.handler``, ``HANDLER_CLASS=SamHandler``."""

    def __init__(self, artifacts_uri: str, predictor: type[Predictor] | None = None) -> None:
        super().__init__(artifacts_uri, predictor)
        self._lock = threading.Lock()

    async def handle(self, request: Request) -> Response:  # type: ignore[override]  # the SDK awaits it
        body = await request.body()
        try:
            payload = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(status_code=400, detail=f"request body is not JSON: {exc}") from None
        try:
            result = await run_in_threadpool(self._run, payload)
        except InvalidRequest as exc:
            raise HTTPException(status_code=400, detail=exc.message) from None
        return Response(content=json.dumps(result), media_type="application/json")

    def _run(self, payload: Any) -> Any:
        with self._lock:
            predictor = self._predictor
            return predictor.postprocess(predictor.predict(predictor.preprocess(payload)))
