"""The review page's browser app: one shell for every page, and its built assets.

The app (``dicom_node/review/frontend``, cornerstone3D bundled by Vite) is built into
``dicom_node/review/static/app`` by ``scripts/setup``; the package ships that folder. Its
routes, below the ``/review`` mount and behind the same session guard as the API:

    GET  /review/                   the worklist      } the app's index.html: the app reads
    GET  /review/studies/{key}      the study view    } the path and asks the API
    GET  /review/static/app/...     the built scripts, styles, workers and WebAssembly codecs

Their Content-Security-Policy (``APP_CSP``) is the review's strict one plus what the
DICOM image loader needs: its decoders run in module workers from the app's own origin,
and the compressed-syntax codecs are WebAssembly (``'wasm-unsafe-eval'``, which allows
compiling WebAssembly and nothing of ``eval``). The header goes on the assets too, since a
worker's policy is the one its script was served with.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Where ``npm run build`` in dicom_node/review/frontend writes the app.
APP_DIR = Path(__file__).resolve().parent / "static" / "app"
APP_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "img-src 'self' data: blob:; style-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)
#: Vite names the files under assets/ by a hash of their content: they never change.
IMMUTABLE = "private, max-age=31536000, immutable"
NOT_BUILT = "the review page is not built: run scripts/setup (it runs npm ci and the build)"


class _AppHeaders:
    """ASGI wrapper: the app's CSP on every answer, long caching for hashed assets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hashed = str(scope.get("path", "")).split("/static/app/", 1)[-1].startswith("assets/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = APP_CSP
                if hashed and message["status"] == 200:
                    headers["cache-control"] = IMMUTABLE
            await send(message)

        await self.app(scope, receive, wrapped)


class _Shell:
    """ASGI app answering the app's index.html (503 when the app was never built)."""

    def __init__(self, folder: Path) -> None:
        self.index = folder / "index.html"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response
        if self.index.is_file():
            response = FileResponse(self.index, media_type="text/html; charset=utf-8")
        else:
            response = PlainTextResponse(NOT_BUILT, status_code=503)
        await response(scope, receive, send)


def page_routes(folder: Path = APP_DIR) -> list[BaseRoute]:
    """The app's pages and assets, for the routes of the ``/review`` mount."""
    shell = _Shell(folder)
    assets = StaticFiles(directory=folder, check_dir=False)
    return [
        Route("/", _AppHeaders(shell), methods=["GET"]),
        Route("/studies/{key:str}", _AppHeaders(shell), methods=["GET"]),
        Mount("/static/app", app=_AppHeaders(assets)),
    ]
