"""The ASGI app of a process's HTTP port: probes and metrics, plus what the process serves.

- ``/healthz``: 200 while the process runs (liveness).
- ``/readyz``: 200 when every readiness check passes, else 503; the JSON body names each
  check and what failed (``dicom_node.web.probes``).
- ``/metrics``: the process's ``Metrics`` registry in the Prometheus text format.
- the node adds ``/dicom-web`` (``dicom_node.dicomweb``), which asks for credentials.

The probes and metrics ask for none: keep the port on a management network or behind a
proxy that exposes only ``/dicom-web`` (deploy/README.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_node.metrics import Metrics
from dicom_node.web.probes import Probes

logger = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store"}


async def json_error(request: Request, exc: Exception) -> Response:
    """Every error answer is one JSON line saying why (never a traceback)."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def build_app(probes: Probes, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"}, headers=NO_STORE)

    async def readyz(request: Request) -> Response:
        failed, body = await run_in_threadpool(probes.readiness)
        if failed:
            logger.warning("not ready: %s", ", ".join(failed))
        return JSONResponse(body, status_code=503 if failed else 200, headers=NO_STORE)

    async def metrics_text(request: Request) -> Response:
        payload = await run_in_threadpool(metrics.exposition)
        return Response(payload, media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_text),
            *routes,
        ],
        exception_handlers={HTTPException: json_error},
    )
