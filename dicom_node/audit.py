"""The audit trail: who talked to the node, what it received and sent, who changed what.

Each event is a row of the append-only ``audit_event`` table (the source of truth, kept
with the data it describes) and a JSON line in ``<GAZEX_HOME>/logs/audit.jsonl`` for log
shippers. Events hold UIDs, AE titles, addresses and OS user names: never a patient name
or ID.

    kind         actions
    association  accepted, rejected (with the reason), released, aborted
    study        received, reopened, complete, skipped (with the routing decision)
    results      sent, failed (with the destination)
    config       peer-add, peer-edit, peer-remove (with the OS user and the changes)

``AuditLog.add(session, ...)`` writes the row in the caller's transaction, and the JSON
line once that transaction commits; ``AuditLog.record(...)`` is its own transaction.
``query`` reads it back (``gazex audit``, in ``dicom_node.cli.audit``).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import logs
from dicom_node.db.models import AuditEvent, utcnow

logger = logging.getLogger(__name__)

KINDS = ("association", "study", "results", "config", "dicomweb", "review")

_PENDING = "gazex_audit_pending"
_file_lock = threading.Lock()


def os_user() -> str:
    """The OS user running this process (who made a configuration change)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class _Line:
    path: Path
    entry: dict[str, Any]


def as_dict(row: AuditEvent) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": row.id} if row.id is not None else {}
    entry |= {
        "at": row.at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "kind": row.kind,
        "action": row.action,
    }
    for key in (
        "ae_title",
        "address",
        "actor",
        "association",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "detail",
    ):
        value = getattr(row, key)
        if value is not None:
            entry[key] = value
    return entry


def _append(lines: list[_Line]) -> None:
    with _file_lock:
        for line in lines:
            try:
                line.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(line.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                with os.fdopen(fd, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line.entry, ensure_ascii=False) + "\n")
            except OSError as exc:
                # The row is committed; only the copy for log shippers is missing.
                logger.error("cannot append to the audit file %s: %s", line.path, exc.strerror)


def _after_commit(session: Session) -> None:
    pending: list[_Line] = session.info.pop(_PENDING, [])
    if pending:
        _append(pending)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _listen(sessions: sessionmaker[Session]) -> None:
    if not event.contains(sessions, "after_commit", _after_commit):
        event.listen(sessions, "after_commit", _after_commit)
        event.listen(sessions, "after_rollback", _after_rollback)


class AuditLog:
    """Writes audit events to the table and, when ``path`` is set, to a JSON lines file."""

    def __init__(self, sessions: sessionmaker[Session], path: Path | None = None) -> None:
        self._sessions = sessions
        self.path = path
        _listen(sessions)

    def add(
        self,
        session: Session,
        kind: str,
        action: str,
        *,
        ae_title: str | None = None,
        address: str | None = None,
        actor: str | None = None,
        association: str | None = None,
        StudyInstanceUID: str | None = None,
        SOPInstanceUID: str | None = None,
        detail: str | None = None,
    ) -> AuditEvent:
        """Add an event to ``session``'s transaction; its JSON line follows the commit.

        The association id defaults to the one bound to the logs (``logs.bind``).
        """
        if kind not in KINDS:
            raise ValueError(f"audit kind {kind!r} is not one of {', '.join(KINDS)}")
        row = AuditEvent(
            at=utcnow(),
            kind=kind,
            action=action,
            ae_title=ae_title[:16] if ae_title else ae_title,
            address=address[:300] if address else address,
            actor=actor[:64] if actor else actor,
            association=association or logs.current().get("association"),
            StudyInstanceUID=StudyInstanceUID,
            SOPInstanceUID=SOPInstanceUID,
            detail=detail,
        )
        session.add(row)
        if self.path is not None:
            session.info.setdefault(_PENDING, []).append(_Line(self.path, as_dict(row)))
        return row

    def record(self, kind: str, action: str, **fields: str | None) -> None:
        """Write one event in its own transaction. When the database is down the event
        still reaches the JSON file (and the log), and this never raises for it."""
        try:
            with self._sessions.begin() as session:
                self.add(session, kind, action, **fields)
        except SQLAlchemyError as exc:
            logger.error(
                "audit event %s/%s not stored in the database (%s)",
                kind,
                action,
                type(exc).__name__,
            )
            if self.path is not None:
                entry: dict[str, Any] = {
                    "at": utcnow().isoformat(timespec="milliseconds"),
                    "kind": kind,
                    "action": action,
                    "stored": False,
                }
                entry.update({k: v for k, v in fields.items() if v is not None})
                _append([_Line(self.path, entry)])


# -- reading -------------------------------------------------------------------------


def query(
    sessions: sessionmaker[Session],
    *,
    kind: str | None = None,
    ae_title: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """The newest ``limit`` events matching the filters, oldest first."""
    statement = select(AuditEvent)
    if kind is not None:
        statement = statement.where(AuditEvent.kind == kind)
    if ae_title is not None:
        statement = statement.where(AuditEvent.ae_title == ae_title)
    if since is not None:
        statement = statement.where(AuditEvent.at >= since)
    statement = statement.order_by(AuditEvent.id.desc()).limit(limit)
    with sessions() as session:
        rows = list(session.scalars(statement))
    rows.reverse()
    return rows
