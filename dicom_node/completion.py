"""Study completion: when has a study arrived in full, and handing it on once it has.

A study is complete when the association that carried its last instance has ended
(A-RELEASE or abort) and a quiet period has passed with nothing new (per calling AE and per
modality; the longest applies). A study that stops receiving without a release is forced
complete after ``force_complete_after``. The due time lives in the database, so a restart
resumes where it stopped; the in-memory part only says which associations are still open.

Once complete, the routing rules decide: analyse (an ``analysis`` row is created and the
study handed to the queue after the commit) or skip (the reason is recorded).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import lifecycle
from dicom_node.audit import AuditLog
from dicom_node.db.models import Analysis, AnalysisState, Instance, Study, StudyState, utcnow
from dicom_node.metrics import Metrics
from dicom_node.routing import InstanceFacts, route
from dicom_node.settings import Settings
from dicom_node.spool import short_hash

logger = logging.getLogger(__name__)

#: Hands a completed study (by id) to the analysis queue; raises when the broker is down.
DispatchFunc = Callable[[int], None]

#: How often the loop looks at the database even when nothing woke it.
_SWEEP_SECONDS = 1.0
#: How long to wait before retrying a dispatch that failed.
_DISPATCH_RETRY_SECONDS = 5.0
#: How often to look for analyses whose worker died (see ``requeue_stale``).
_STALE_SWEEP_SECONDS = 10.0


class CompletionTracker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        dispatch: DispatchFunc,
        *,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._dispatch = dispatch
        self._metrics = metrics if metrics is not None else Metrics()
        self._audit = audit
        self._lock = threading.Condition()
        #: association key -> ids of the studies it stored instances of
        self._open: dict[int, set[int]] = defaultdict(set)
        self._wake_at: datetime | None = None
        self._dispatch_retry_at: datetime | None = None
        self._stale_sweep_at: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called from association threads --------------------------------------------------

    def instance_stored(self, association: int, study_id: int) -> None:
        with self._lock:
            self._open[association].add(study_id)

    def association_ended(self, association: int) -> None:
        """The association released or aborted: start the quiet period of its studies,
        unless another open association is still sending to them."""
        with self._lock:
            studies = self._open.pop(association, set())
            still_open = set().union(*self._open.values()) if self._open else set()
        waiting = studies - still_open
        if not waiting:
            return
        now = utcnow()
        earliest: datetime | None = None
        with self._sessions.begin() as session:
            for study in session.scalars(
                select(Study).where(Study.id.in_(waiting), Study.state == StudyState.RECEIVING)
            ):
                quiet = self._settings.quiet_period_for(study.calling_ae, study.Modality)
                due = now + timedelta(seconds=quiet)
                study.released_at = now
                study.complete_due_at = due
                earliest = due if earliest is None else min(earliest, due)
        if earliest is not None:
            self.wake(earliest)

    def wake(self, at: datetime | None = None) -> None:
        with self._lock:
            if at is None or self._wake_at is None or at < self._wake_at:
                self._wake_at = at or utcnow()
            self._lock.notify_all()

    # -- the loop ---------------------------------------------------------------------

    def recover(self) -> None:
        """At start-up: associations that were open are gone, so studies still receiving
        start their quiet period now; studies handed on before the stop are handed on again
        (tasks are idempotent, and a lost message would otherwise lose the study)."""
        now = utcnow()
        with self._sessions.begin() as session:
            receiving = session.scalars(select(Study).where(Study.state == StudyState.RECEIVING))
            for study in receiving:
                quiet = self._settings.quiet_period_for(study.calling_ae, study.Modality)
                due = now + timedelta(seconds=quiet)
                if study.complete_due_at is None or study.complete_due_at > due:
                    study.complete_due_at = due
            requeue = session.scalars(select(Study).where(Study.state == StudyState.QUEUED))
            count = 0
            for study in requeue:
                lifecycle.requeue(study)
                count += 1
        if count:
            logger.info("re-dispatching %d study(ies) queued before the restart", count)

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="gazex-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            next_due: datetime | None = None
            try:
                self.complete_due()
                now = utcnow()
                if self._stale_sweep_at is None or now >= self._stale_sweep_at:
                    self.requeue_stale(now)
                    self._stale_sweep_at = now + timedelta(seconds=_STALE_SWEEP_SECONDS)
                self.dispatch_pending()
                next_due = self.next_due()
            except SQLAlchemyError:
                logger.exception("database error in the completion loop; retrying")
            # Sleep until the earliest due study (from the database, so several studies
            # released together are each completed on time) or a wake(), at most a sweep.
            # wake() takes the lock, so a wake between here and wait() is never lost.
            with self._lock:
                now = utcnow()
                targets = [t for t in (self._wake_at, next_due) if t is not None]
                self._wake_at = None
                timeout = _SWEEP_SECONDS
                if targets:
                    timeout = min(timeout, max(0.0, (min(targets) - now).total_seconds()))
                if timeout > 0 and not self._stop.is_set():
                    self._lock.wait(timeout)

    def next_due(self) -> datetime | None:
        """When the next receiving study becomes complete if nothing else arrives."""
        with self._sessions() as session:
            return session.scalar(
                select(func.min(Study.complete_due_at)).where(Study.state == StudyState.RECEIVING)
            )

    def complete_due(self, now: datetime | None = None) -> list[int]:
        """Complete every receiving study whose due time has passed; returns their ids."""
        now = now or utcnow()
        done: list[int] = []
        with self._sessions.begin() as session:
            due = session.scalars(
                select(Study)
                .where(Study.state == StudyState.RECEIVING, Study.complete_due_at <= now)
                .with_for_update(skip_locked=True)
            ).all()
            for study in due:
                self._complete(session, study, now)
                done.append(study.id)
        return done

    def _complete(self, session: Session, study: Study, now: datetime) -> None:
        facts = [
            InstanceFacts(
                Modality=i.Modality or "",
                SOPClassUID=i.SOPClassUID,
                BodyPartExamined=i.BodyPartExamined or "",
                ViewPosition=i.ViewPosition or "",
                calling_ae=i.calling_ae,
            )
            for i in session.scalars(select(Instance).where(Instance.study_id == study.id))
        ]
        decision = route(self._settings.routing.rules, facts)
        forced = study.released_at is None
        rule_name = decision.rule.name if decision.rule is not None else None
        lifecycle.complete(session, study, rule_name, decision.reason, now)
        delay = (now - study.released_at).total_seconds() if study.released_at else None
        logger.info(
            "study %s complete%s: %d instance(s), %s -> %s",
            short_hash(study.StudyInstanceUID),
            " (forced: no release)" if forced else f" {delay:.3f} s after release",
            len(facts),
            decision.reason,
            study.state.value,
        )
        self._metrics.stage_reached("complete", study.first_received_at, now)
        if self._audit is not None:
            self._audit.add(
                session,
                "study",
                "complete" if study.state is StudyState.COMPLETE else "skipped",
                ae_title=study.calling_ae,
                StudyInstanceUID=study.StudyInstanceUID,
                detail=f"{len(facts)} instance(s); {decision.reason}",
            )

    def requeue_stale(self, now: datetime | None = None) -> int:
        """Hand on again the studies whose analysis was queued or started longer ago than
        ``worker.stale_after`` and has not finished: its worker died or its message was
        lost. The analysis task is idempotent, so a slow worker racing it does no harm."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=self._settings.worker.stale_after)
        count = 0
        with self._sessions.begin() as session:
            stuck = session.scalars(
                select(Study).where(
                    Study.state.in_([StudyState.QUEUED, StudyState.ANALYSING]),
                    Study.dispatched_at < cutoff,
                )
            )
            for study in stuck:
                analysis = session.scalar(
                    select(Analysis).where(
                        Analysis.study_id == study.id, Analysis.revision == study.revision
                    )
                )
                if analysis is not None and analysis.state in (
                    AnalysisState.QUEUED,
                    AnalysisState.RUNNING,
                ):
                    lifecycle.requeue(study)
                    count += 1
        if count:
            logger.warning("re-queued %d study(ies) whose analysis went stale", count)
        return count

    def dispatch_pending(self) -> int:
        """Hand complete, not yet dispatched studies to the queue (after their commit)."""
        now = utcnow()
        if self._dispatch_retry_at is not None and now < self._dispatch_retry_at:
            return 0
        with self._sessions() as session:
            pending = session.scalars(
                select(Study.id)
                .where(Study.state == StudyState.COMPLETE, Study.dispatched_at.is_(None))
                .order_by(Study.completed_at)
            ).all()
        sent = 0
        for study_id in pending:
            try:
                self._dispatch(study_id)
            except Exception as exc:  # noqa: BLE001 - any broker failure: keep it for later
                self._dispatch_retry_at = now + timedelta(seconds=_DISPATCH_RETRY_SECONDS)
                logger.warning(
                    "broker unavailable (%s); %d study(ies) wait in the database",
                    type(exc).__name__,
                    len(pending) - sent,
                )
                return sent
            with self._sessions.begin() as session:
                study = session.get(Study, study_id)
                if study is not None and lifecycle.queued(study):
                    logger.info(
                        "study %s handed to the analysis queue",
                        short_hash(study.StudyInstanceUID),
                    )
            sent += 1
        self._dispatch_retry_at = None
        return sent
