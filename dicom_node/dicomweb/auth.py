"""Who is calling: every DICOMweb request carries a peer's credential.

A peer presents HTTP basic credentials (a user name and a password) or a bearer token
(``gzx_<key id>_<secret>``, printed once by ``gazex ae credential add``). The node keeps
only argon2 hashes (``argon2-cffi``), in the ``credential`` table, each tied to a peer: the
request then acts as that peer, with its AE title for routing and audit, and only while the
peer is enabled and has the ``source`` role. A missing or unknown credential gets 401 and
an audit record; nothing answers anonymously unless ``dicomweb.allow_anonymous`` says so.

argon2 costs tens of milliseconds and 64 MiB by design, and a viewer sends hundreds of
requests for one study: a verified credential is remembered by its SHA-256 for
``VERIFIED_FOR`` seconds. The peer and credential rows are still read on every request, so
removing a credential or disabling a peer takes effect on the next request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_node.audit import AuditLog, os_user
from dicom_node.db.models import Credential, Peer, utcnow
from dicom_node.dicomweb.context import DicomWebContext
from dicom_node.errors import PeerError
from dicom_node.peers import PeerInfo

logger = logging.getLogger(__name__)

KINDS = ("basic", "bearer")
TOKEN_PREFIX = "gzx"  # noqa: S105 - the token scheme's name, not a secret
VERIFIED_FOR = 60.0
CHALLENGE = 'Basic realm="GAZEX DICOMweb", charset="UTF-8", Bearer realm="GAZEX DICOMweb"'

_hasher = PasswordHasher()


@dataclass(frozen=True)
class CredentialInfo:
    id: int
    peer: str
    kind: str
    name: str
    created_at: datetime
    last_used_at: datetime | None


class Credentials:
    """The credentials peers present; every change is audited like a peer edit."""

    def __init__(self, sessions: sessionmaker[Session], audit: AuditLog | None = None) -> None:
        self._sessions = sessions
        self._audit = audit if audit is not None else AuditLog(sessions)
        self._verified: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    # -- administration (gazex ae credential) ------------------------------------------

    def add_basic(self, peer: str, username: str, password: str) -> CredentialInfo:
        """A user name and password for ``peer`` (HTTP basic)."""
        if not username or ":" in username or len(username) > 64:
            raise PeerError("a user name is 1-64 characters without ':'")
        if len(password) < 12:
            raise PeerError("a password needs at least 12 characters")
        return self._add(peer, "basic", username, password)

    def add_token(self, peer: str) -> tuple[CredentialInfo, str]:
        """A new bearer token for ``peer``: returns it once; only its hash is kept."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        info = self._add(peer, "bearer", key_id, secret)
        return info, f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def _add(self, peer_name: str, kind: str, name: str, secret: str) -> CredentialInfo:
        with self._sessions.begin() as session:
            peer = _peer(session, peer_name)
            if session.scalar(select(Credential).where(Credential.name == name)) is not None:
                raise PeerError(f"a credential named {name!r} exists already")
            row = Credential(
                peer_id=peer.id, kind=kind, name=name, secret_hash=_hasher.hash(secret)
            )
            session.add(row)
            session.flush()
            info = _info(row, peer.name)
            self._audit_change(session, "credential-add", peer, f"{kind} credential {name}")
        return info

    def remove(self, peer_name: str, name: str) -> None:
        with self._sessions.begin() as session:
            peer = _peer(session, peer_name)
            row = session.scalar(
                select(Credential).where(Credential.peer_id == peer.id, Credential.name == name)
            )
            if row is None:
                raise PeerError(f"peer {peer_name!r} has no credential {name!r}")
            session.delete(row)
            self._audit_change(session, "credential-remove", peer, f"{row.kind} credential {name}")
        with self._lock:
            self._verified = {k: v for k, v in self._verified.items() if v[0] != row.id}

    def list(self, peer_name: str | None = None) -> list[CredentialInfo]:
        with self._sessions() as session:
            statement = select(Credential, Peer.name).join(Peer).order_by(Peer.name, Credential.id)
            if peer_name is not None:
                statement = statement.where(Peer.id == _peer(session, peer_name).id)
            return [_info(row, name) for row, name in session.execute(statement)]

    def _audit_change(self, session: Session, action: str, peer: Peer, what: str) -> None:
        self._audit.add(
            session,
            "config",
            action,
            ae_title=peer.ae_title,
            actor=os_user(),
            detail=f"peer {peer.name}: {what}",
        )

    # -- checking a request --------------------------------------------------------------

    def authenticate(self, authorization: str) -> PeerInfo | None:
        """The enabled source peer whose credential ``authorization`` (an HTTP
        Authorization header) carries; None when it names none. Blocking (argon2)."""
        parsed = _parse(authorization)
        if parsed is None:
            return None
        kind, name, secret = parsed
        fingerprint = hashlib.sha256(authorization.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        with self._lock:
            remembered = self._verified.get(fingerprint)
        with self._sessions.begin() as session:
            row = session.scalar(
                select(Credential).where(Credential.name == name, Credential.kind == kind)
            )
            if row is None:
                return None
            if remembered is None or remembered[0] != row.id or remembered[1] < now:
                try:
                    _hasher.verify(row.secret_hash, secret)
                except (VerificationError, InvalidHashError):
                    return None
                with self._lock:
                    self._verified[fingerprint] = (row.id, now + VERIFIED_FOR)
                row.last_used_at = utcnow()
            peer = row.peer
            if not peer.enabled or not peer.is_source:
                return None
            return PeerInfo.of(peer)


def _parse(authorization: str) -> tuple[str, str, str] | None:
    """(kind, name, secret) of a Basic or Bearer header; None when it is neither."""
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, colon, password = decoded.partition(":")
        return ("basic", username, password) if colon and username else None
    if scheme.lower() == "bearer":
        prefix, _, rest = value.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix == TOKEN_PREFIX and key_id and secret:
            return "bearer", key_id, secret
    return None


def _peer(session: Session, name: str) -> Peer:
    peer = session.scalar(select(Peer).where(Peer.name == name))
    if peer is None:
        raise PeerError(f"no peer named {name!r} (see `gazex ae list`)")
    return peer


def _info(row: Credential, peer: str) -> CredentialInfo:
    return CredentialInfo(row.id, peer, row.kind, row.name, row.created_at, row.last_used_at)


class RequirePeer:
    """ASGI middleware over the DICOMweb routes: sets ``request.state.peer`` from the
    request's credential, or answers 401 (and audits it) when there is none that holds."""

    def __init__(self, app: ASGIApp, ctx: DicomWebContext) -> None:
        self.app = app
        self.ctx = ctx
        self.credentials = Credentials(ctx.sessions, ctx.audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        peer: PeerInfo | None = None
        if authorization is not None:
            try:
                peer = await anyio.to_thread.run_sync(self.credentials.authenticate, authorization)
            except SQLAlchemyError as exc:
                logger.error("DICOMweb credential check failed: %s", type(exc).__name__)
                response = JSONResponse(
                    {"error": "the node's database is unavailable"},
                    status_code=503,
                    headers={"Retry-After": "10"},
                )
                await response(scope, receive, send)
                return
        if peer is None and (
            authorization is not None or not self.ctx.settings.dicomweb.allow_anonymous
        ):
            await self._refuse(scope, receive, send, authorization is not None)
            return
        scope.setdefault("state", {})["peer"] = peer
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, presented: bool) -> None:
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else None
        why = "unknown credential" if presented else "no credential"
        logger.warning("DICOMweb request refused (401) from %s: %s", address, why)
        if self.ctx.audit is not None:
            await anyio.to_thread.run_sync(
                lambda: self.ctx.audit.record(  # type: ignore[union-attr]
                    "dicomweb",
                    "unauthorized",
                    address=address,
                    detail=f"{scope['method']} {scope['path']}: {why}",
                )
            )
        response = JSONResponse(
            {"error": f"authentication required ({why})"},
            status_code=401,
            headers={"WWW-Authenticate": CHALLENGE},
        )
        await response(scope, receive, send)
