"""The model server: the aiplatform CPR server plus ``GET /metrics`` (:mod:`predictor.metrics`).

``python -m predictor.server`` is what the serving image runs (``predictor/Dockerfile``) and what
``samdrop predictor serve`` starts; routes and port come from the ``AIP_*`` variables as for the
SDK's own server. Vertex AI does not route ``/metrics`` to the outside (its own metrics are in Cloud
Monitoring); the local stack and ``samdrop status`` scrape it.
"""

from __future__ import annotations

import os

from google.cloud.aiplatform.prediction.model_server import (
    CprModelServer,
    set_number_of_workers_from_env,
)
from starlette.responses import Response

from predictor.handler import SamHandler
from predictor.metrics import CONTENT_TYPE

METRICS_ROUTE = "/metrics"


class SamModelServer(CprModelServer):
    """``CprModelServer`` with the handler's metrics at :data:`METRICS_ROUTE`."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # the SDK is unannotated
        self.app.add_api_route(path=METRICS_ROUTE, endpoint=self.metrics, methods=["GET"])

    def metrics(self) -> Response:
        handler = self.handler
        assert isinstance(handler, SamHandler), "HANDLER_CLASS must be SamHandler"
        return Response(content=handler.metrics.exposition(), media_type=CONTENT_TYPE)


def main() -> None:
    """What the SDK's ``python -m …model_server`` does, with this server."""
    import uvicorn

    set_number_of_workers_from_env()
    uvicorn.run(
        "predictor.server:SamModelServer",
        host="0.0.0.0",  # inside the container: Vertex reaches it from outside
        port=int(os.environ["AIP_HTTP_PORT"]),
        factory=True,
    )


if __name__ == "__main__":
    main()
