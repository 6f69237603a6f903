"""The outbox: one row per (object, destination), sent with retries and backoff.

A destination that is down only delays its own rows: each peer is tried on its own, and
a failed try sets the next attempt by exponential backoff with a ceiling.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import scu
from dicom_node.audit import AuditLog
from dicom_node.errors import DeliveryError
from dicom_node.metrics import Metrics
from dicom_node.models import (
    Analysis,
    Notification,
    NotificationState,
    OutboxItem,
    OutboxState,
    Peer,
    Study,
    StudyState,
    utcnow,
)
from dicom_node.peers import PeerInfo
from dicom_node.settings import Settings
from dicom_node.spool import short_hash

logger = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._metrics = metrics if metrics is not None else Metrics()
        self._audit = audit

    def backoff(self, attempts: int) -> timedelta:
        delivery = self._settings.delivery
        seconds = delivery.backoff_initial * 2 ** max(0, attempts - 1)
        return timedelta(seconds=min(seconds, delivery.backoff_max))

    def enqueue(
        self, session: Session, peer_id: int, SOPInstanceUID: str, SOPClassUID: str, path: Path
    ) -> OutboxItem:
        """Add (or reset, for a re-delivery of the same object) the row for one delivery."""
        item = session.scalar(
            select(OutboxItem).where(
                OutboxItem.SOPInstanceUID == SOPInstanceUID, OutboxItem.peer_id == peer_id
            )
        )
        if item is None:
            item = OutboxItem(peer_id=peer_id, SOPInstanceUID=SOPInstanceUID, attempts=0)
            session.add(item)
        item.SOPClassUID = SOPClassUID
        item.path = str(path)
        item.state = OutboxState.PENDING
        item.next_attempt_at = utcnow()
        item.last_error = None
        session.flush()
        return item

    def deliver_due(self, now: datetime | None = None) -> int:
        """Try every pending row whose time has come, one association per peer."""
        now = now or utcnow()
        with self._sessions() as session:
            due = session.execute(
                select(OutboxItem.id, OutboxItem.peer_id).where(
                    OutboxItem.state == OutboxState.PENDING, OutboxItem.next_attempt_at <= now
                )
            ).all()
        by_peer: dict[int, list[int]] = defaultdict(list)
        for item_id, peer_id in due:
            by_peer[peer_id].append(item_id)
        sent = 0
        for item_ids in by_peer.values():
            sent += self.deliver(item_ids)
        return sent

    def deliver(self, item_ids: list[int]) -> int:
        """Send these rows (all to one peer) now; returns how many were stored."""
        with self._sessions() as session:
            items = session.scalars(select(OutboxItem).where(OutboxItem.id.in_(item_ids))).all()
            if not items:
                return 0
            peer_row = session.get(Peer, items[0].peer_id)
            assert peer_row is not None
            peer = PeerInfo.of(peer_row)
            paths = {item.id: Path(item.path) for item in items}
        node = self._settings.node
        timeouts = scu.Timeouts(node.acse_timeout, node.dimse_timeout, node.network_timeout)
        try:
            if not peer.enabled:
                raise DeliveryError(f"{peer.name} is disabled")
            results = {
                r.path: r for r in scu.send(peer, list(paths.values()), node.ae_title, timeouts)
            }
        except DeliveryError as exc:
            results = {}
            failure = str(exc)
        sent = 0
        with self._sessions.begin() as session:
            studies = _studies_of(session, item_ids)
            for item in session.scalars(select(OutboxItem).where(OutboxItem.id.in_(item_ids))):
                result = results.get(paths[item.id])
                item.attempts += 1
                if result is not None and result.ok:
                    item.state = OutboxState.SENT
                    item.sent_at = utcnow()
                    item.last_error = None
                    sent += 1
                    self._audit_result(session, "sent", item, peer, studies, None)
                    continue
                self._metrics.delivery_failures.inc()
                if result is None:
                    item.last_error = failure
                elif result.status is not None:
                    item.last_error = f"status 0x{result.status:04X}"
                else:
                    item.last_error = result.error
                permanent = result is not None and not result.transient
                if permanent or item.attempts >= self._settings.delivery.max_attempts:
                    item.state = OutboxState.FAILED
                    self._audit_result(session, "failed", item, peer, studies, item.last_error)
                    logger.error(
                        "delivery of %s to %s failed for good: %s",
                        short_hash(item.SOPInstanceUID),
                        peer.name,
                        item.last_error,
                    )
                else:
                    item.next_attempt_at = utcnow() + self.backoff(item.attempts)
            session.flush()
            self._observe_delivered(session, studies)
            for analysis_id in {
                i.analysis_id
                for i in session.scalars(select(OutboxItem).where(OutboxItem.id.in_(item_ids)))
            } - {None}:
                analysis = session.get(Analysis, analysis_id)
                if analysis is not None:
                    mark_done_if_finished(session, analysis)
        if sent:
            logger.info("delivered %d object(s) to %s", sent, peer.name)
        return sent

    def _audit_result(
        self,
        session: Session,
        action: str,
        item: OutboxItem,
        peer: PeerInfo,
        studies: dict[int, tuple[str, datetime]],
        detail: str | None,
    ) -> None:
        if self._audit is None:
            return
        study = studies.get(item.analysis_id) if item.analysis_id is not None else None
        self._audit.add(
            session,
            "results",
            action,
            ae_title=peer.ae_title,
            address=f"{peer.host}:{peer.port}",
            StudyInstanceUID=study[0] if study is not None else None,
            SOPInstanceUID=item.SOPInstanceUID,
            detail=f"to {peer.name}" + (f": {detail}" if detail else ""),
        )

    def _observe_delivered(
        self, session: Session, studies: dict[int, tuple[str, datetime]]
    ) -> None:
        """An analysis whose outbox rows are all sent now is delivered: observe the stage."""
        for analysis_id, (_, first_received_at) in studies.items():
            waiting = session.scalar(
                select(func.count())
                .select_from(OutboxItem)
                .where(OutboxItem.analysis_id == analysis_id, OutboxItem.state != OutboxState.SENT)
            )
            if not waiting:
                self._metrics.stage_reached("delivered", first_received_at)


def _studies_of(session: Session, item_ids: list[int]) -> dict[int, tuple[str, datetime]]:
    """analysis id -> (Study Instance UID, first received) for the rows that have one."""
    rows = session.execute(
        select(Analysis.id, Study.StudyInstanceUID, Study.first_received_at)
        .join(Study, Analysis.study_id == Study.id)
        .join(OutboxItem, OutboxItem.analysis_id == Analysis.id)
        .where(OutboxItem.id.in_(item_ids))
        .distinct()
    ).all()
    return {analysis_id: (uid, first) for analysis_id, uid, first in rows}


def mark_done_if_finished(session: Session, analysis: Analysis) -> None:
    """The study is done once every result is delivered and the HL7 message acknowledged.

    The delivery and the notification finish in separate transactions, often at the same
    moment. Each first writes its own outcome, then takes the analysis row's lock and
    checks the other's: the second to get the lock reads the first's committed outcome, so
    one of them always marks the study done (without the lock, under PostgreSQL's READ
    COMMITTED, each saw the other unfinished and the study stayed "analysed"). SQLite
    serialises the writers already.
    """
    session.flush()
    session.execute(select(Analysis.id).where(Analysis.id == analysis.id).with_for_update())
    pending = session.scalar(
        select(OutboxItem.id).where(
            OutboxItem.analysis_id == analysis.id, OutboxItem.state != OutboxState.SENT
        )
    )
    notification = session.scalar(
        select(Notification).where(Notification.analysis_id == analysis.id)
    )
    unsent = notification is not None and notification.state is not NotificationState.ACCEPTED
    study = session.get(Study, analysis.study_id)
    if (
        pending is None
        and not unsent
        and study is not None
        and study.revision == analysis.revision
        and study.state is StudyState.ANALYSED
    ):
        study.state = StudyState.DONE
        logger.info("study #%d done: results delivered", study.id)
