"""The HTTP port of every process: uvicorn serving ``dicom_node.web.app`` on a thread.

The socket is bound in the caller's thread, so a port in use fails ``start`` with one line
naming it; port 0 picks a free one. TLS, when the node's settings enable it, uses the
same certificate and client-certificate rules as the DICOM port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence

import uvicorn
from sqlalchemy import Engine
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from dicom_node.errors import StartError, port_error
from dicom_node.metrics import Metrics
from dicom_node.settings import Settings
from dicom_node.tls import server_ssl_context
from dicom_node.web.app import build_app
from dicom_node.web.probes import Check, Probes, standard_checks

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 10.0


class WebServer:
    """uvicorn on its own thread and event loop; ``stop`` finishes open requests first."""

    def __init__(
        self,
        app: ASGIApp,
        bind: str,
        port: int,
        *,
        probes: Probes | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.probes = probes if probes is not None else Probes()
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((bind, port))
        except OSError:
            self._socket.close()
            raise
        self._socket.listen(128)
        config = uvicorn.Config(
            app,
            log_config=None,  # the process's own logging (dicom_node.logs) applies
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        config.load()
        config.ssl = ssl_context  # the node's context, as the DICOM port uses
        self.tls = ssl_context is not None
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def add_check(self, name: str, check: Check) -> None:
        """Add a readiness check (a worker's "model loaded")."""
        self.probes.add(name, check)

    def start(self) -> WebServer:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._socket])),
            name="gazex-http",
            daemon=True,
        )
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(STARTUP_TIMEOUT / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.02)
        if not self._server.started:
            self.stop()
            raise StartError(f"the HTTP port {self.port} did not start")
        logger.info("HTTP%s on %s:%d", " (TLS)" if self.tls else "", *self.address)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()


def start_http(
    settings: Settings,
    engine: Engine,
    metrics: Metrics,
    extra_checks: Mapping[str, Check] | None = None,
    routes: Sequence[BaseRoute] = (),
    *,
    tls: bool = False,
) -> WebServer | None:
    """Start the HTTP port as ``settings.http`` says (the node with its DICOMweb routes and
    TLS per ``settings.tls``; each worker with its own checks, e.g. ``{"model": ...}``);
    None when disabled. A port that cannot be bound raises StartError naming it: probes
    answering for another process would lie."""
    if not settings.http.enabled:
        return None
    probes = Probes({**standard_checks(settings, engine), **(extra_checks or {})})
    app = build_app(probes, metrics, routes)
    bind, port = settings.http.bind, settings.http.port
    try:
        server = WebServer(
            app,
            bind,
            port,
            probes=probes,
            ssl_context=server_ssl_context(settings.tls) if tls else None,
        )
    except OSError as exc:
        raise port_error("http.port", bind, port, exc) from None
    return server.start()
