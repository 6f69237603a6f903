"""The outbox: one row per (object, destination), sent with retries and backoff.

The outbox is the one owner of delivery. A worker that has built a study's results only
adds their rows (due at once) in the transaction that records the analysis; the node's
delivery loop (``Outbox.run``) sends every due row. One owner means one schedule, kept in
the database: a crash anywhere loses nothing, and no second sender races the first.

A row goes by C-STORE (``scu``), or by STOW-RS (``stow_client``) to a peer with a
DICOMweb URL; both answer one result per file, read the same way here.

A destination that is down only delays its own rows: each peer is sent to on its own
thread (a peer still being tried is not started again), and a failed try sets the next
attempt by exponential backoff with a ceiling.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import scu, stow_client
from dicom_node.audit import AuditLog
from dicom_node.db.models import Analysis, OutboxItem, OutboxState, Peer, Study, utcnow
from dicom_node.errors import DeliveryError
from dicom_node.lifecycle import mark_done_if_finished
from dicom_node.metrics import Metrics
from dicom_node.peers import PeerInfo
from dicom_node.settings import NodeSettings, Settings
from dicom_node.spool import short_hash

logger = logging.getLogger(__name__)

#: How often the delivery loop looks for due rows: a result waits half of it on average
#: (0.25 s cost 113 ms a study on the pipeline benchmark; one indexed query a tick).
POLL_SECONDS = 0.1
#: Peers sent to at once; a peer that is down holds one of these until its timeouts pass.
PARALLEL_PEERS = 4


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

    def due(self, now: datetime | None = None) -> dict[int, list[int]]:
        """Pending rows whose time has come, by peer id."""
        with self._sessions() as session:
            rows = session.execute(
                select(OutboxItem.id, OutboxItem.peer_id).where(
                    OutboxItem.state == OutboxState.PENDING,
                    OutboxItem.next_attempt_at <= (now or utcnow()),
                )
            ).all()
        by_peer: dict[int, list[int]] = defaultdict(list)
        for item_id, peer_id in rows:
            by_peer[peer_id].append(item_id)
        return dict(by_peer)

    def deliver_due(self, now: datetime | None = None) -> int:
        """Try every due row now, one association per peer, one peer after the other."""
        return sum(self.deliver(item_ids) for item_ids in self.due(now).values())

    def run(self, stop: threading.Event) -> None:
        """The node's delivery loop, until ``stop`` is set: sends the due rows of each peer
        on a thread of its own, so a peer that is down never delays the others."""
        in_flight: dict[int, Future[int]] = {}
        with ThreadPoolExecutor(PARALLEL_PEERS, thread_name_prefix="gazex-deliver") as pool:
            while not stop.wait(POLL_SECONDS):
                for peer_id, future in list(in_flight.items()):
                    if future.done():
                        del in_flight[peer_id]
                        if (error := future.exception()) is not None:
                            logger.error(
                                "delivery to peer #%d failed: %s", peer_id, type(error).__name__
                            )
                try:
                    due = self.due()
                except SQLAlchemyError as exc:
                    logger.error("outbox not readable (%s); retrying", type(exc).__name__)
                    continue
                for peer_id, item_ids in due.items():
                    if peer_id not in in_flight:
                        in_flight[peer_id] = pool.submit(self.deliver, item_ids)

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
        failure, refused_for_good = "no result for this file", False
        try:
            if not peer.enabled:
                raise DeliveryError(f"{peer.name} is disabled")
            results = {r.path: r for r in send(peer, list(paths.values()), node)}
        except DeliveryError as exc:
            results = {}
            failure = str(exc)
            refused_for_good = not exc.transient  # a peer with no address to send to, say
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
                permanent = not result.transient if result is not None else refused_for_good
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
                    wait = self.backoff(item.attempts)
                    item.next_attempt_at = utcnow() + wait
                    logger.warning(
                        "delivery of %s to %s failed (%s): retry in %.0f s (attempt %d of %d)",
                        short_hash(item.SOPInstanceUID),
                        peer.name,
                        item.last_error,
                        wait.total_seconds(),
                        item.attempts,
                        self._settings.delivery.max_attempts,
                    )
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
            address=peer.address,
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


def send(peer: PeerInfo, paths: list[Path], node: NodeSettings) -> list[scu.SendResult]:
    """Send by the peer's kind: STOW-RS to a DICOMweb URL, else C-STORE."""
    if peer.dicomweb_url is not None:
        return stow_client.send(peer, paths, scu.Timeouts.of(node))
    return scu.send(peer, paths, node.ae_title, scu.Timeouts.of(node))


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
