"""Who may use the review page: accounts, their passwords, and server-side sessions.

An account has a name, a role (``radiologist`` or ``admin``) and a password of at least
``MIN_PASSWORD`` characters, kept only as an argon2id hash (``argon2-cffi``). Accounts are
managed with ``gazex user`` (``dicom_node.cli.user``); every change is audited (kind
``review``) with the OS user who made it, never with the password.

A login creates a ``web_session`` row. The browser's cookie holds a random token; the
database keeps only its SHA-256 as the row's id, so a copy of the database opens no session.
A session ends at the first of: its absolute lifetime, ``idle_timeout`` without a request,
logout (revoked), the account being disabled or its password changed (all its sessions are
revoked). Each session has its own CSRF token that state-changing requests echo.

Logins are checked the same way whether the account is unknown, disabled or the password
wrong (an argon2 verification always runs), so the answer and its timing say nothing about
which names exist. ``LoginThrottle`` slows guessing per remote address (``web``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog, os_user
from dicom_node.db.models import User, WebSession, utcnow
from dicom_node.errors import AccountError
from dicom_node.settings import ReviewSettings
from dicom_node.spool import short_hash

logger = logging.getLogger(__name__)

ROLES = ("radiologist", "admin")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; a megabyte "password" is only a cost
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str
    enabled: bool
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class SessionUser:
    """The account behind a valid session, as a request sees it."""

    session_id: str
    user_id: int
    name: str
    role: str
    csrf: str


@dataclass(frozen=True)
class NewSession:
    """A session just opened: ``token`` goes into the cookie and is never stored."""

    token: str
    user: SessionUser


def token_hash(token: str) -> str:
    """The id a session token is stored under."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")


def _info(row: User) -> UserInfo:
    return UserInfo(row.id, row.name, row.role, row.enabled, row.created_at, row.last_login_at)


class Accounts:
    """The review page's accounts (``gazex user``); every change is audited."""

    def __init__(self, sessions: sessionmaker[Session], audit: AuditLog | None = None) -> None:
        self._sessions = sessions
        self._audit = audit if audit is not None else AuditLog(sessions)

    def add(self, name: str, role: str, password: str) -> UserInfo:
        if not _NAME.match(name):
            raise AccountError(
                f"a user name is 1-64 letters, digits or . _ @ - (starting with a letter or "
                f"digit), not {name!r}"
            )
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
        check_password(password)
        with self._sessions.begin() as session:
            if session.scalar(select(User).where(User.name == name)) is not None:
                raise AccountError(f"a user named {name!r} exists already")
            row = User(name=name, role=role, password_hash=_hasher.hash(password), enabled=True)
            session.add(row)
            session.flush()
            self._changed(session, "user-add", f"user {name}: added with role {role}")
            return _info(row)

    def set_password(self, name: str, password: str) -> UserInfo:
        """A new password; the account's open sessions end."""
        check_password(password)
        with self._sessions.begin() as session:
            row = _user(session, name)
            row.password_hash = _hasher.hash(password)
            revoked = _revoke_all(session, row.id)
            self._changed(
                session, "user-passwd", f"user {name}: password changed, {revoked} session(s) ended"
            )
            return _info(row)

    def set_enabled(self, name: str, enabled: bool) -> UserInfo:
        """Enable or disable an account; disabling ends its open sessions."""
        with self._sessions.begin() as session:
            row = _user(session, name)
            row.enabled = enabled
            if enabled:
                self._changed(session, "user-enable", f"user {name}: enabled")
            else:
                revoked = _revoke_all(session, row.id)
                self._changed(
                    session, "user-disable", f"user {name}: disabled, {revoked} session(s) ended"
                )
            return _info(row)

    def get(self, name: str) -> UserInfo:
        with self._sessions() as session:
            return _info(_user(session, name))

    def list(self) -> list[UserInfo]:
        with self._sessions() as session:
            return [_info(row) for row in session.scalars(select(User).order_by(User.name))]

    def _changed(self, session: Session, action: str, detail: str) -> None:
        self._audit.add(session, "review", action, actor=os_user(), detail=detail)


def _user(session: Session, name: str) -> User:
    row = session.scalar(select(User).where(User.name == name))
    if row is None:
        raise AccountError(f"no user named {name!r} (see `gazex user list`)")
    return row


def _revoke_all(session: Session, user_id: int) -> int:
    result = session.execute(
        update(WebSession)
        .where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


class WebSessions:
    """Login, the session behind a cookie, and logout. Blocking (database, argon2): the web
    routes call these on a worker thread."""

    #: last_seen_at is written at most this often per session (not on every request).
    TOUCH_EVERY = timedelta(seconds=15)
    #: Sessions that ended longer ago than this are deleted at the next login.
    KEEP_ENDED = timedelta(days=7)
    CONCURRENT_VERIFICATIONS = 4

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: ReviewSettings,
        audit: AuditLog | None = None,
    ) -> None:
        self._sessions = sessions
        self.settings = settings
        self._audit = audit if audit is not None else AuditLog(sessions)
        self._dummy_hash: str | None = None
        self._lock = threading.Lock()
        #: argon2 takes 64 MiB per verification: a burst of logins waits, not the memory.
        self._verifying = threading.BoundedSemaphore(self.CONCURRENT_VERIFICATIONS)

    def _dummy(self) -> str:
        """A hash to verify against when the name is unknown: the same work either way."""
        with self._lock:
            if self._dummy_hash is None:
                self._dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
            return self._dummy_hash

    def login(
        self, name: str, password: str, address: str | None, previous: str | None = None
    ) -> NewSession | None:
        """A new session for ``name`` when the password is right and the account enabled;
        None (audited, with the address) otherwise, whatever the reason. A new session
        always gets a new token; the session of ``previous`` (the token the browser still
        held, if any) ends."""
        with self._sessions() as session:  # no connection held while argon2 works
            found = session.scalar(select(User).where(User.name == name)) if name else None
        with self._verifying:
            valid = _verify(found.password_hash if found is not None else self._dummy(), password)
        with self._sessions.begin() as session:
            row = session.get(User, found.id) if found is not None else None
            if row is not None and found is not None and row.password_hash != found.password_hash:
                valid = False  # the password changed while this one was checked
            if row is None or not valid or not row.enabled:
                if row is None:
                    # What was typed may be a password in the wrong field: only a hash of it.
                    why = f"unknown user name (sha256 {short_hash(name)})"
                else:
                    why = f"user {row.name}: " + ("wrong password" if not valid else "disabled")
                self._audit.add(session, "review", "login-failed", address=address, detail=why)
                return None
            if _hasher.check_needs_rehash(row.password_hash):
                row.password_hash = _hasher.hash(password)
            now = utcnow()
            token = secrets.token_urlsafe(32)
            web = WebSession(
                id=token_hash(token),
                user_id=row.id,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(seconds=self.settings.session_lifetime),
                address=address[:300] if address else None,
            )
            session.add(web)
            if previous:
                session.execute(
                    update(WebSession)
                    .where(WebSession.id == token_hash(previous), WebSession.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
            row.last_login_at = now
            session.execute(delete(WebSession).where(WebSession.expires_at < now - self.KEEP_ENDED))
            self._audit.add(
                session,
                "review",
                "login",
                actor=row.name,
                address=address,
                detail=f"user {row.name} ({row.role}) logged in",
            )
            return NewSession(
                token, SessionUser(web.id, row.id, row.name, row.role, web.csrf_token)
            )

    def resolve(self, token: str) -> SessionUser | None:
        """The account behind a session cookie's token, while the session holds (not
        revoked, not past its lifetime or idle timeout, the account enabled); None else."""
        if not token or len(token) > 200:
            return None
        now = utcnow()
        with self._sessions.begin() as session:
            web = session.get(WebSession, token_hash(token))
            if web is None or web.revoked_at is not None or web.expires_at <= now:
                return None
            if web.last_seen_at + timedelta(seconds=self.settings.idle_timeout) <= now:
                return None
            user = web.user
            if not user.enabled:
                return None
            touch_every = min(self.TOUCH_EVERY, timedelta(seconds=self.settings.idle_timeout / 4))
            if now - web.last_seen_at >= touch_every:
                web.last_seen_at = now
            return SessionUser(web.id, user.id, user.name, user.role, web.csrf_token)

    def logout(self, user: SessionUser, address: str | None) -> None:
        with self._sessions.begin() as session:
            web = session.get(WebSession, user.session_id)
            if web is not None and web.revoked_at is None:
                web.revoked_at = utcnow()
            self._audit.add(
                session,
                "review",
                "logout",
                actor=user.name,
                address=address,
                detail=f"user {user.name} logged out",
            )


def _verify(password_hash: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD:
        password = password[:MAX_PASSWORD]  # still verify: the same work as any attempt
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class LoginThrottle:
    """Slows password guessing per remote host: after ``max_failures`` failed logins within
    ``window`` seconds, that host's logins are refused (429) until the oldest failure
    leaves the window; a success clears its count. In memory, per process: the node serves
    /review from one process."""

    MAX_HOSTS = 10_000

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, host: str, now: float) -> deque[float]:
        failures = self._failures.get(host)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[host]
        return failures

    def retry_after(self, host: str) -> int | None:
        """Seconds until ``host`` may try again; None when it may now."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(host, now)
            if len(failures) < self.max_failures:
                return None
            return max(1, int(failures[0] + self.window - now + 1))

    def failed(self, host: str) -> bool:
        """Count a failure; True when it is the one that locks ``host`` out."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(host, now)
            if host not in self._failures:
                if len(self._failures) >= self.MAX_HOSTS:
                    oldest = min(self._failures, key=lambda h: self._failures[h][-1])
                    del self._failures[oldest]
                self._failures[host] = failures
            failures.append(now)
            return len(failures) == self.max_failures

    def succeeded(self, host: str) -> None:
        with self._lock:
            self._failures.pop(host, None)
