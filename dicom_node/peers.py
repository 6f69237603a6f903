"""AE administration: the remote peers stored in the database.

Every read goes to the database, so an edit made with ``gazex ae`` takes effect on the
next association of a running node without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog, os_user
from dicom_node.db.models import Peer
from dicom_node.errors import PeerError
from dicom_node.settings import PeerSeed, validate_ae_title

logger = logging.getLogger(__name__)

ROLES = ("source", "destination")


@dataclass(frozen=True)
class PeerInfo:
    """A detached, immutable view of a peer row."""

    id: int
    name: str
    ae_title: str
    #: Its DICOM address; None for a peer reached over DICOMweb only.
    host: str | None
    port: int | None
    roles: tuple[str, ...]
    enabled: bool
    #: Its DICOMweb base URL: results go there by STOW-RS instead of by C-STORE.
    dicomweb_url: str | None = None
    #: What the node presents there (``basic:<user>:<password>``, ``bearer:<token>``).
    dicomweb_auth: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, peer: Peer) -> PeerInfo:
        return cls(
            peer.id,
            peer.name,
            peer.ae_title,
            peer.host,
            peer.port,
            tuple(peer.roles),
            peer.enabled,
            peer.dicomweb_url,
            peer.dicomweb_auth,
        )

    @property
    def address(self) -> str:
        """Where it is reached, for logs and audit: host:port, or its DICOMweb URL."""
        if self.dicomweb_url is not None:
            return self.dicomweb_url
        return f"{self.host}:{self.port}"


def parse_roles(value: str | Iterable[str]) -> tuple[str, ...]:
    roles = value.split(",") if isinstance(value, str) else list(value)
    cleaned = tuple(dict.fromkeys(r.strip() for r in roles if r.strip()))
    unknown = [r for r in cleaned if r not in ROLES]
    if unknown or not cleaned:
        raise PeerError(f"roles must be a comma-separated subset of {', '.join(ROLES)}")
    return cleaned


def _check(ae_title: str | None, port: int | None) -> None:
    if ae_title is not None:
        try:
            validate_ae_title(ae_title)
        except ValueError as exc:
            raise PeerError(str(exc)) from None
    if port is not None and not 1 <= port <= 65535:
        raise PeerError(f"port {port} is not between 1 and 65535")


def _check_address(
    host: str | None, port: int | None, dicomweb_url: str | None, dicomweb_auth: str | None
) -> None:
    if (host is None) != (port is None):
        raise PeerError("a DICOM address needs both a host and a port")
    if host is None and dicomweb_url is None:
        raise PeerError("a peer needs a DICOM address (host and port) or a DICOMweb URL")
    if dicomweb_url is not None:
        parsed = urlsplit(dicomweb_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PeerError(f"DICOMweb URL {dicomweb_url!r} is not an http(s) URL")
        if parsed.username or parsed.password:
            raise PeerError("put DICOMweb credentials in the auth setting, not in the URL")
    if dicomweb_auth is not None:
        kind, _, secret = dicomweb_auth.partition(":")
        if kind not in ("basic", "bearer") or not secret or (kind == "basic" and ":" not in secret):
            raise PeerError("DICOMweb auth is basic:<user>:<password> or bearer:<token>")


class PeerDirectory:
    """Peers in the database. Every change is audited (who, what, when) in its own
    transaction: to the table always, and to the JSON lines file of ``audit`` when given."""

    def __init__(self, sessions: sessionmaker[Session], audit: AuditLog | None = None) -> None:
        self._sessions = sessions
        self._audit = audit if audit is not None else AuditLog(sessions)

    def add(
        self,
        name: str,
        ae_title: str,
        host: str | None,
        port: int | None,
        roles: Sequence[str],
        enabled: bool = True,
        *,
        dicomweb_url: str | None = None,
        dicomweb_auth: str | None = None,
        actor: str | None = None,
    ) -> PeerInfo:
        """Add a peer: a DICOM address (host and port), a DICOMweb base URL, or both.
        ``dicomweb_auth`` is what the node presents there: ``basic:<user>:<password>`` or
        ``bearer:<token>``."""
        _check(ae_title, port)
        roles = parse_roles(roles)
        _check_address(host, port, dicomweb_url, dicomweb_auth)
        with self._sessions.begin() as session:
            if session.scalar(select(Peer).where(Peer.name == name)) is not None:
                raise PeerError(f"a peer named {name!r} exists already")
            peer = Peer(
                name=name,
                ae_title=ae_title.strip(),
                host=host,
                port=port,
                dicomweb_url=dicomweb_url.rstrip("/") if dicomweb_url else None,
                dicomweb_auth=dicomweb_auth,
                is_source="source" in roles,
                is_destination="destination" in roles,
                enabled=enabled,
            )
            session.add(peer)
            session.flush()
            info = PeerInfo.of(peer)
            self._audit_change(session, "peer-add", info, _describe(info), actor)
        logger.info("peer %s added (%s, roles %s)", name, info.ae_title, ",".join(info.roles))
        return info

    def edit(
        self,
        name: str,
        *,
        ae_title: str | None = None,
        host: str | None = None,
        port: int | None = None,
        roles: Sequence[str] | None = None,
        enabled: bool | None = None,
        new_name: str | None = None,
        dicomweb_url: str | None = None,
        dicomweb_auth: str | None = None,
    ) -> PeerInfo:
        _check(ae_title, port)
        with self._sessions.begin() as session:
            peer = self._get(session, name)
            before = PeerInfo.of(peer)
            if dicomweb_url is not None:
                peer.dicomweb_url = dicomweb_url.rstrip("/") or None
            if dicomweb_auth is not None:
                peer.dicomweb_auth = dicomweb_auth or None
            _check_address(
                host if host is not None else peer.host,
                port if port is not None else peer.port,
                peer.dicomweb_url,
                peer.dicomweb_auth,
            )
            if new_name is not None and new_name != name:
                if session.scalar(select(Peer).where(Peer.name == new_name)) is not None:
                    raise PeerError(f"a peer named {new_name!r} exists already")
                peer.name = new_name
            if ae_title is not None:
                peer.ae_title = ae_title.strip()
            if host is not None:
                peer.host = host
            if port is not None:
                peer.port = port
            if roles is not None:
                parsed = parse_roles(roles)
                peer.is_source = "source" in parsed
                peer.is_destination = "destination" in parsed
            if enabled is not None:
                peer.enabled = enabled
            session.flush()
            info = PeerInfo.of(peer)
            self._audit_change(session, "peer-edit", info, _changes(before, info), None)
        logger.info("peer %s edited", info.name)
        return info

    def remove(self, name: str) -> None:
        with self._sessions.begin() as session:
            peer = self._get(session, name)
            info = PeerInfo.of(peer)
            session.delete(peer)
            self._audit_change(session, "peer-remove", info, _describe(info), None)
        logger.info("peer %s removed", name)

    def get(self, name: str) -> PeerInfo:
        with self._sessions() as session:
            return PeerInfo.of(self._get(session, name))

    def all(self) -> list[PeerInfo]:
        with self._sessions() as session:
            return [PeerInfo.of(p) for p in session.scalars(select(Peer).order_by(Peer.name))]

    def source_ae_titles(self) -> list[str]:
        """AE titles allowed to send to us: enabled peers with the ``source`` role."""
        with self._sessions() as session:
            rows = session.scalars(
                select(Peer.ae_title).where(Peer.enabled.is_(True), Peer.is_source.is_(True))
            )
            return sorted(set(rows))

    def destinations_for_ae(self, ae_title: str) -> list[PeerInfo]:
        """Enabled destination peers whose AE title is ``ae_title`` (results go back home)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(Peer).where(
                    Peer.ae_title == ae_title,
                    Peer.enabled.is_(True),
                    Peer.is_destination.is_(True),
                )
            )
            return [PeerInfo.of(p) for p in rows]

    def seed(self, seeds: Iterable[PeerSeed], *, actor: str | None = None) -> None:
        """Create the peers the config file declares and the database lacks."""
        existing = {p.name for p in self.all()}
        for seed in seeds:
            if seed.name not in existing:
                self.add(
                    seed.name,
                    seed.ae_title,
                    seed.host,
                    seed.port,
                    seed.roles,
                    seed.enabled,
                    dicomweb_url=seed.dicomweb_url,
                    dicomweb_auth=(
                        seed.dicomweb_auth.get_secret_value() if seed.dicomweb_auth else None
                    ),
                    actor=actor,
                )

    def _audit_change(
        self, session: Session, action: str, peer: PeerInfo, what: str, actor: str | None
    ) -> None:
        self._audit.add(
            session,
            "config",
            action,
            ae_title=peer.ae_title,
            address=peer.address,
            actor=actor or os_user(),
            detail=f"peer {peer.name}: {what}",
        )

    @staticmethod
    def _get(session: Session, name: str) -> Peer:
        peer = session.scalar(select(Peer).where(Peer.name == name))
        if peer is None:
            raise PeerError(f"no peer named {name!r} (see `gazex ae list`)")
        return peer


def _describe(peer: PeerInfo) -> str:
    return (
        f"AE {peer.ae_title} at {peer.address}, roles {','.join(peer.roles)}, "
        f"{'enabled' if peer.enabled else 'disabled'}"
    )


def _changes(before: PeerInfo, after: PeerInfo) -> str:
    """What an edit changed, as "field old -> new" pairs."""
    changed = [
        f"{key} {getattr(before, key)!r} -> {getattr(after, key)!r}"
        for key in ("name", "ae_title", "host", "port", "dicomweb_url", "roles", "enabled")
        if getattr(before, key) != getattr(after, key)
    ]
    if before.dicomweb_auth != after.dicomweb_auth:
        changed.append("DICOMweb credentials replaced")  # never the secret itself
    return ", ".join(changed) or "no change"
