"""`gazex status`: studies by state, recent failures with reasons, outbox backlog."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import db
from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Notification,
    NotificationState,
    OutboxItem,
    OutboxState,
    Peer,
    Study,
    StudyState,
)
from dicom_node.settings import load_settings
from dicom_node.spool import short_hash


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subparsers.add_parser(
        "status",
        help="studies by state, failures, outbox backlog",
        description="What the node has done: studies by state (with a warning for results "
        "that went to no destination), the outbox backlog per destination, and the recent "
        "failures with their reasons. Reads the database; the node need not run.",
    )
    status.add_argument("--failures", type=int, default=10, help="recent failures to show")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    report = collect(db.open_sessions(load_settings(args.config).database_url), args.failures)
    print(report.render())
    return 0


@dataclass(frozen=True)
class Failure:
    at: datetime
    what: str
    reason: str


@dataclass(frozen=True)
class Backlog:
    peer: str
    pending: int
    failed: int
    oldest: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class StatusReport:
    studies: dict[str, int]
    failures: list[Failure]
    backlog: list[Backlog]
    #: analyses whose film the model's domain gate found unlike its training films
    out_of_domain: int = 0

    def render(self) -> str:
        lines = ["Studies by state:"]
        for state in StudyState:
            lines.append(f"  {state.value:<11} {self.studies.get(state.value, 0)}")
        undelivered = self.studies.get(StudyState.UNDELIVERED.value, 0)
        if undelivered:
            lines.append(
                f"  ! {undelivered} analysed study(ies) went to no destination: add the sender "
                "as one (gazex ae edit NAME --role source,destination) or name destinations "
                "in the routing rule, then resend"
            )
        if self.out_of_domain:
            lines.append(
                f"  ! {self.out_of_domain} analysed film(s) were outside the model's training "
                "domain: their results say so and make no finding call"
            )
        lines.append("Outbox backlog:")
        if not self.backlog:
            lines.append("  empty")
        for b in self.backlog:
            oldest = b.oldest.isoformat(timespec="seconds") if b.oldest else "-"
            lines.append(
                f"  {b.peer}: {b.pending} pending, {b.failed} failed, oldest {oldest}"
                + (f", last error: {b.last_error}" if b.last_error else "")
            )
        lines.append("Recent failures:")
        if not self.failures:
            lines.append("  none")
        for f in self.failures:
            lines.append(f"  {f.at.isoformat(timespec='seconds')}  {f.what}: {f.reason}")
        return "\n".join(lines)


def collect(sessions: sessionmaker[Session], limit: int = 10) -> StatusReport:
    with sessions() as session:
        counts = {
            state.value: count
            for state, count in session.execute(
                select(Study.state, func.count()).group_by(Study.state)
            )
        }
        out_of_domain = session.scalar(
            select(func.count()).select_from(Analysis).where(Analysis.out_of_domain.is_(True))
        )
        failures: list[Failure] = []
        for analysis, uid in session.execute(
            select(Analysis, Study.StudyInstanceUID)
            .join(Study, Study.id == Analysis.study_id)
            .where(Analysis.state == AnalysisState.FAILED)
            .order_by(Analysis.finished_at.desc())
            .limit(limit)
        ):
            failures.append(
                Failure(
                    analysis.finished_at or analysis.created_at,
                    f"analysis of study {short_hash(uid)} rev {analysis.revision}",
                    analysis.error or "unknown",
                )
            )
        for item, peer_name in session.execute(
            select(OutboxItem, Peer.name)
            .join(Peer, Peer.id == OutboxItem.peer_id)
            .where(OutboxItem.state == OutboxState.FAILED)
            .order_by(OutboxItem.created_at.desc())
            .limit(limit)
        ):
            failures.append(
                Failure(
                    item.created_at,
                    f"delivery of {short_hash(item.SOPInstanceUID)} to {peer_name}",
                    item.last_error or "unknown",
                )
            )
        for note in session.scalars(
            select(Notification)
            .where(Notification.state.in_([NotificationState.REJECTED, NotificationState.FAILED]))
            .limit(limit)
        ):
            failures.append(
                Failure(note.created_at, f"HL7 {note.control_id}", note.last_error or "")
            )
        failures.sort(key=lambda f: f.at, reverse=True)
        backlog: list[Backlog] = []
        for peer in session.scalars(select(Peer).order_by(Peer.name)):
            rows = session.scalars(
                select(OutboxItem).where(
                    OutboxItem.peer_id == peer.id, OutboxItem.state != OutboxState.SENT
                )
            ).all()
            if not rows:
                continue
            pending = [r for r in rows if r.state is OutboxState.PENDING]
            backlog.append(
                Backlog(
                    peer.name,
                    len(pending),
                    len(rows) - len(pending),
                    min((r.created_at for r in pending), default=None),
                    next((r.last_error for r in rows if r.last_error), None),
                )
            )
    return StatusReport(counts, failures[:limit], backlog, out_of_domain or 0)
