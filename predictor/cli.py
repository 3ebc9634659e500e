"""``samdrop predictor …`` commands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from samdrop.commandline import PORT
from samdrop.models import MODEL_TYPES
from samdrop.settings import Settings

PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"


def add_commands(subparsers: Any) -> None:
    group = subparsers.add_parser("predictor", help="the SAM prediction server (Vertex CPR)")
    commands = group.add_subparsers(dest="predictor_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve /predict, /health and /metrics with the aiplatform CPR model server"
    )
    serve.add_argument("--port", type=PORT, help="port (default SAMDROP_PREDICTOR_PORT)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--model-type", choices=MODEL_TYPES, help="default SAMDROP_MODEL_TYPE (auto)")
    serve.add_argument(
        "--checkpoint", help="checkpoint path, http(s):// or gs:// URI (default SAMDROP_CHECKPOINT)"
    )
    serve.set_defaults(func=serve_command)


def server_env(settings: Settings, port: int) -> dict[str, str]:
    """The variables the aiplatform CPR model server reads, plus samdrop's own settings."""
    return {
        **settings.to_env(),
        "AIP_HTTP_PORT": str(port),
        "AIP_PREDICT_ROUTE": PREDICT_ROUTE,
        "AIP_HEALTH_ROUTE": HEALTH_ROUTE,
        "HANDLER_MODULE": "predictor.handler",
        "HANDLER_CLASS": "SamHandler",
        "PREDICTOR_MODULE": "predictor.cpr",
        "PREDICTOR_CLASS": "SamRoutine",
        # One worker: one copy of the model per device.
        "VERTEX_CPR_WEB_CONCURRENCY": "1",
    }


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    changes = {"model_type": args.model_type, "checkpoint": args.checkpoint}
    settings = settings.replace(**{k: v for k, v in changes.items() if v is not None})
    port = args.port or settings.predictor_port
    os.environ.update(server_env(settings, port))
    import uvicorn

    # The SDK's server plus /metrics (the one Vertex runs in the container), bound to loopback by default.
    uvicorn.run(
        "predictor.server:SamModelServer",
        host=args.host,
        port=port,
        factory=True,
        workers=1,
        log_level="info",
    )
    return 0
