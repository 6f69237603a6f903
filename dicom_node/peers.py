"""AE administration: the remote peers stored in the database.

Every read goes to the database, so an edit made with ``gazex ae`` takes effect on the
next association of a running node without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    host: str
    port: int
    roles: tuple[str, ...]
    enabled: bool

    @classmethod
    def of(cls, peer: Peer) -> PeerInfo:
        return cls(
            peer.id, peer.name, peer.ae_title, peer.host, peer.port, tuple(peer.roles), peer.enabled
        )


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
        host: str,
        port: int,
        roles: Sequence[str],
        enabled: bool = True,
        *,
        actor: str | None = None,
    ) -> PeerInfo:
        _check(ae_title, port)
        roles = parse_roles(roles)
        with self._sessions.begin() as session:
            if session.scalar(select(Peer).where(Peer.name == name)) is not None:
                raise PeerError(f"a peer named {name!r} exists already")
            peer = Peer(
                name=name,
                ae_title=ae_title.strip(),
                host=host,
                port=port,
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
    ) -> PeerInfo:
        _check(ae_title, port)
        with self._sessions.begin() as session:
            peer = self._get(session, name)
            before = PeerInfo.of(peer)
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
            address=f"{peer.host}:{peer.port}",
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
        f"AE {peer.ae_title} at {peer.host}:{peer.port}, roles {','.join(peer.roles)}, "
        f"{'enabled' if peer.enabled else 'disabled'}"
    )


def _changes(before: PeerInfo, after: PeerInfo) -> str:
    """What an edit changed, as "field old -> new" pairs."""
    changed = [
        f"{key} {getattr(before, key)!r} -> {getattr(after, key)!r}"
        for key in ("name", "ae_title", "host", "port", "roles", "enabled")
        if getattr(before, key) != getattr(after, key)
    ]
    return ", ".join(changed) or "no change"
