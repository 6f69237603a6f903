"""The review page's HTTP side: login, logout, ``/review/api/...``, and their guard.

``review_routes(ctx)`` is one ``Mount("/review")`` for the node's HTTP port:

    GET  /review/login            the login page (no session needed)
    POST /review/login            name, password, csrf -> 303 to /review/ with the cookie
    GET  /review/static/review.css  the login page's stylesheet (no session needed)
    POST /review/logout           ends the session (CSRF-checked) -> 303 to the login page
    GET  /review/, /review/studies/{key}, /review/static/app/...
                                  the review page: a browser app (``dicom_node.review.pages``)
    GET  /review/api/me           {name, role, csrf}
    GET  /review/api/worklist     ?state=&q=&limit=&offset= (``dicom_node.review.worklist``)
    GET  /review/api/studies/{key}        one study's details (``dicom_node.review.signing``)
    POST /review/api/studies/{key}/sign   the session user's signature -> 202 (the workers
                                          build the verified SR and send the ORU^R01)
    GET  /review/dicom-web/...    the node's QIDO-RS and WADO-RS (read only), given by the
                                  node as ``image_routes``, under the same session

Everything but the login page, its POST and its stylesheet needs a valid session
(``RequireSession``): an API route answers 401 with a one-line JSON error, a page 303 to
the login page. Every POST/PUT/PATCH/DELETE must carry the session's CSRF token in the
``X-CSRF-Token`` header or a ``csrf`` form field, else 403. The login form itself is
protected by a double-submit cookie: the page sets ``gazex_login_csrf`` and the same value
as its hidden field; the POST must carry both, equal.

The session cookie ``gazex_session`` is HttpOnly, SameSite=Strict, Path=/review, Secure when
the request came over https (uvicorn honours X-Forwarded-Proto from a proxy on loopback) or
``ReviewSettings.cookie_secure`` says so; it has no Max-Age, so it ends with the browser.

Guessing is slowed two ways: every failed login waits ``login_failure_delay`` seconds before
its answer, and a host with ``login_max_failures`` failures within ``login_failure_window``
seconds gets 429 (without a password check) until the window has passed
(``accounts.LoginThrottle``). A failed login answers the same for an unknown name, a wrong
password and a disabled account, and is audited with the remote address.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_node.audit import AuditLog
from dicom_node.review.accounts import LoginThrottle, SessionUser, WebSessions
from dicom_node.review.pages import page_routes
from dicom_node.review.signing import (
    BadSignature,
    NotAllowed,
    NotSignable,
    StudyReview,
    UnknownStudy,
    dispatch_review,
    pending_reviews,
)
from dicom_node.review.worklist import MAX_LIMIT, Worklist, parse_states
from dicom_node.settings import ReviewSettings
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

SESSION_COOKIE = "gazex_session"
LOGIN_COOKIE = "gazex_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_FORM_BYTES = 64 * 1024
MAX_SIGN_BYTES = 256 * 1024
NOTICE = "GazeX Node review — research use, not for clinical use"
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
}

T = TypeVar("T")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")  # what secrets.token_urlsafe(32) gives


@dataclass(frozen=True)
class ReviewContext:
    """What the review routes are given: built once by the node, passed down explicitly."""

    settings: ReviewSettings
    sessions: sessionmaker[Session]
    spool: Spool
    audit: AuditLog | None = None
    #: Hands a new signature (its review id) to the workers (``gazex.sign_review``).
    dispatch: Callable[[int], None] | None = None


class _Review:
    """The objects the routes share, built once per app."""

    def __init__(self, ctx: ReviewContext) -> None:
        self.ctx = ctx
        self.audit = ctx.audit if ctx.audit is not None else AuditLog(ctx.sessions)
        self.web_sessions = WebSessions(ctx.sessions, ctx.settings, self.audit)
        self.worklist = Worklist(ctx.sessions, ctx.spool, ctx.settings)
        self.throttle = LoginThrottle(
            ctx.settings.login_max_failures, ctx.settings.login_failure_window
        )
        self.study = StudyReview(ctx.sessions, ctx.spool, self.worklist, self.audit, ctx.dispatch)


def hand_on_pending(ctx: ReviewContext) -> int:
    """Dispatch again the signatures recorded but not built (the node was stopped, or the
    broker was down); the task is idempotent. Returns how many."""
    pending = pending_reviews(ctx.sessions)
    for review_id in pending:
        dispatch_review(ctx.dispatch, review_id)
    if pending:
        logger.info("handed %d pending signature(s) to the workers again", len(pending))
    return len(pending)


def review_routes(
    ctx: ReviewContext, image_routes: list[BaseRoute] | None = None
) -> list[BaseRoute]:
    """The routes the node adds to its HTTP port for the review page; ``image_routes``
    (the node's read-only DICOMweb) are mounted at /review/dicom-web behind the session."""
    review = _Review(ctx)
    pages = _Pages(review)
    return [
        Mount(
            "/review",
            routes=[
                *page_routes(),
                Route("/login", pages.login_form, methods=["GET"]),
                Route("/login", pages.login, methods=["POST"]),
                Route("/logout", pages.logout, methods=["POST"]),
                Route("/static/review.css", pages.stylesheet, methods=["GET"]),
                Route("/api/me", pages.me, methods=["GET"]),
                Route("/api/worklist", pages.worklist, methods=["GET"]),
                Route("/api/studies/{key}", pages.study, methods=["GET"]),
                Route("/api/studies/{key}/sign", pages.sign, methods=["POST"]),
                *([Mount("/dicom-web", routes=image_routes)] if image_routes else []),
            ],
            middleware=[Middleware(RequireSession, review=review)],
        )
    ]


# -- the guard ---------------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path below the mount ("/api/me" for /review/api/me)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _mount_root(scope: Scope) -> str:
    root: str = scope.get("root_path", "")
    return root


def _address(scope: Scope) -> tuple[str | None, str]:
    """(host:port for the audit, host for the throttle) of the caller."""
    client = scope.get("client")
    if not client:
        return None, "unknown"
    return f"{client[0]}:{client[1]}", str(client[0])


def _public(path: str) -> bool:
    return path in ("/login", "/static/review.css")


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for key, value in SECURITY_HEADERS.items():
                if key not in headers:
                    headers[key] = value
        await send(message)

    return wrapped


class RequireSession:
    """ASGI middleware over the review routes: a valid session for all but the login page
    (sets ``request.state.review_user``), and the session's CSRF token on every
    state-changing request. Adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, review: _Review) -> None:
        self.app = app
        self.review = review

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        path = _route_path(scope)
        if _public(path):
            await self.app(scope, receive, send)
            return
        token = Request(scope).cookies.get(SESSION_COOKIE)
        user: SessionUser | None = None
        if token:
            try:
                user = await run_in_threadpool(self.review.web_sessions.resolve, token)
            except SQLAlchemyError as exc:
                logger.error("review session check failed: %s", type(exc).__name__)
                await _json(503, "the node's database is unavailable")(scope, receive, send)
                return
        if user is None:
            if path.startswith(("/api/", "/dicom-web/")):
                response: Response = _json(401, "login required (no valid session)")
            else:
                response = RedirectResponse(f"{_mount_root(scope)}/login", status_code=303)
            await response(scope, receive, send)
            return
        if scope["method"] in UNSAFE_METHODS:
            presented, receive = await _presented_csrf(scope, receive)
            if presented is None or not hmac.compare_digest(
                presented.encode("utf-8", "replace"), user.csrf.encode()
            ):
                await self._refuse_csrf(scope, user, presented is None)
                await _json(403, "missing or wrong CSRF token")(scope, receive, send)
                return
        state = scope.setdefault("state", {})
        state["review_user"] = user
        state["actor"] = user.name  # the image routes below audit the reader, not "DICOMWEB"
        await self.app(scope, receive, send)

    async def _refuse_csrf(self, scope: Scope, user: SessionUser, missing: bool) -> None:
        address, _ = _address(scope)
        why = "no CSRF token" if missing else "wrong CSRF token"
        logger.warning("review request refused (403) from %s: %s", address, why)
        await run_in_threadpool(
            self.review.audit.record,
            "review",
            "csrf-refused",
            actor=user.name,
            address=address,
            detail=f"{scope['method']} {scope['path']}: {why}",
        )


async def _presented_csrf(scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
    """The CSRF token a request carries (header, else a ``csrf`` field of a url-encoded
    form), and the ``receive`` that still yields the whole body to the route."""
    headers = Headers(scope=scope)
    header = headers.get(CSRF_HEADER)
    if header is not None:
        return header, receive
    if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None, receive
    body = await _read_body(receive, MAX_FORM_BYTES)
    if body is None:
        return None, receive
    fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return fields.get(CSRF_FIELD), replay


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` or the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func`` on a worker thread; a database that fails is 503, not a traceback."""
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except SQLAlchemyError as exc:
        logger.error("review: database error %s", type(exc).__name__)
        raise HTTPException(503, "the node's database is unavailable") from None


def _session_user(request: Request) -> SessionUser:
    user: SessionUser = request.state.review_user
    return user


# -- the routes --------------------------------------------------------------------------


def _cookie(name: str, value: str, path: str, secure: bool, max_age: int | None = None) -> str:
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class _Pages:
    def __init__(self, review: _Review) -> None:
        self.review = review
        self.settings = review.ctx.settings

    def _secure(self, request: Request) -> bool:
        return request.url.scheme == "https" or self.settings.cookie_secure

    def _login_page(
        self, request: Request, status: int, message: str | None, token: str | None = None
    ) -> Response:
        """The login page with a login CSRF token (a new one unless given) in its form
        and in the double-submit cookie."""
        token = token or secrets.token_urlsafe(32)
        root = _mount_root(request.scope)
        response = HTMLResponse(_login_html(root, token, message), status_code=status)
        response.headers.append(
            "set-cookie",
            _cookie(LOGIN_COOKIE, token, f"{root}/login", self._secure(request), max_age=3600),
        )
        return response

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request, 200, None)

    async def login(self, request: Request) -> Response:
        address, host = _address(request.scope)
        body = await _read_body(request.receive, MAX_FORM_BYTES)
        fields = dict(parse_qsl((body or b"").decode("utf-8", "replace"), keep_blank_values=True))
        presented = fields.get(CSRF_FIELD, "")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if (
            not _TOKEN.match(presented)
            or not expected
            or not hmac.compare_digest(
                presented.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
            )
        ):
            logger.warning("review login refused (403) from %s: login form token", address)
            return self._login_page(request, 403, "The login form expired: please try again.")
        wait = self.review.throttle.retry_after(host)
        if wait is not None:
            logger.warning("review login refused (429) from %s: too many failures", address)
            response = self._login_page(
                request,
                429,
                f"Too many failed logins from this address: try again in {wait // 60 + 1} "
                "minute(s).",
                presented,
            )
            response.headers["Retry-After"] = str(wait)
            return response
        name = fields.get("name", "").strip()
        password = fields.get("password", "")
        new = await _blocking(
            self.review.web_sessions.login,
            name,
            password,
            address,
            request.cookies.get(SESSION_COOKIE),
        )
        if new is None:
            await asyncio.sleep(self.settings.login_failure_delay)
            if self.review.throttle.failed(host):
                await _blocking(
                    self.review.audit.record,
                    "review",
                    "login-locked",
                    address=address,
                    detail=f"{self.settings.login_max_failures} failed logins: this host's "
                    f"logins refused for up to {self.settings.login_failure_window:.0f} s",
                )
            logger.warning("review login failed from %s", address)
            return self._login_page(request, 401, "Name or password is wrong.", presented)
        self.review.throttle.succeeded(host)
        root = _mount_root(request.scope)
        response = RedirectResponse(f"{root}/", status_code=303)
        secure = self._secure(request)
        response.headers.append("set-cookie", _cookie(SESSION_COOKIE, new.token, root, secure))
        response.headers.append(
            "set-cookie", _cookie(LOGIN_COOKIE, "", f"{root}/login", secure, max_age=0)
        )
        logger.info("review login: %s from %s", new.user.name, address)
        return response

    async def logout(self, request: Request) -> Response:
        address, _ = _address(request.scope)
        user = _session_user(request)
        await _blocking(self.review.web_sessions.logout, user, address)
        root = _mount_root(request.scope)
        response = RedirectResponse(f"{root}/login", status_code=303)
        response.headers.append(
            "set-cookie", _cookie(SESSION_COOKIE, "", root, self._secure(request), max_age=0)
        )
        return response

    async def stylesheet(self, request: Request) -> Response:
        return Response(STYLESHEET, media_type="text/css")

    async def me(self, request: Request) -> Response:
        user = _session_user(request)
        return JSONResponse({"name": user.name, "role": user.role, "csrf": user.csrf})

    async def worklist(self, request: Request) -> Response:
        params = request.query_params
        try:
            states = parse_states(params.get("state"))
            limit = int(params.get("limit", "50"))
            offset = int(params.get("offset", "0"))
            if not 1 <= limit <= MAX_LIMIT or offset < 0:
                raise ValueError(f"limit is 1-{MAX_LIMIT} and offset at least 0")
        except ValueError as exc:
            return _json(400, str(exc).splitlines()[0])
        page = await _blocking(self.review.worklist.page, states, params.get("q"), limit, offset)
        return JSONResponse(page.to_json())

    async def study(self, request: Request) -> Response:
        try:
            detail = await _blocking(self.review.study.detail, request.path_params["key"])
        except UnknownStudy as exc:
            return _json(404, str(exc))
        return JSONResponse(detail)

    async def sign(self, request: Request) -> Response:
        address, _ = _address(request.scope)
        body = await _read_body(request.receive, MAX_SIGN_BYTES)
        if body is None:
            return _json(400, f"the body must be JSON of at most {MAX_SIGN_BYTES} bytes")
        try:
            decoded = json.loads(body)
        except ValueError:
            return _json(400, "the body is not JSON")
        try:
            record = await _blocking(
                self.review.study.sign,
                request.path_params["key"],
                _session_user(request),
                decoded,
                address,
            )
        except UnknownStudy as exc:
            return _json(404, str(exc))
        except BadSignature as exc:
            return _json(400, str(exc).splitlines()[0])
        except NotAllowed as exc:
            return _json(403, str(exc))
        except NotSignable as exc:
            return _json(409, str(exc))
        return JSONResponse(record, status_code=202)


# -- HTML --------------------------------------------------------------------------------

STYLESHEET = """\
body { font: 16px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d1f23; }
main { max-width: 24rem; margin: 10vh auto; background: #fff; padding: 2rem;
       border: 1px solid #d0d4da; border-radius: 6px; }
h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
.notice { background: #fff4d6; border: 1px solid #e5c56b; padding: .5rem .75rem;
          font-weight: 600; margin: 0 0 1.25rem; }
.error { background: #fde7e7; border: 1px solid #d88; padding: .5rem .75rem; }
label { display: block; margin: .75rem 0 .25rem; }
input[type=text], input[type=password] { width: 100%; box-sizing: border-box;
       padding: .45rem; font: inherit; }
button { margin-top: 1.25rem; padding: .5rem 1.25rem; font: inherit; }
"""


def _page(root: str, title: str, content: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{html.escape(root)}/static/review.css"></head>'
        f'<body><main><p class="notice">{html.escape(NOTICE)}</p>{content}</main></body></html>\n'
    )


def _login_html(root: str, token: str, message: str | None) -> str:
    error = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return _page(
        root,
        "GazeX Node review: log in",
        "<h1>Log in</h1>"
        f"{error}"
        f'<form method="post" action="{html.escape(root)}/login">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(token)}">'
        '<label for="name">Name</label>'
        '<input type="text" id="name" name="name" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" '
        'autocomplete="current-password" required>'
        '<button type="submit">Log in</button></form>',
    )
