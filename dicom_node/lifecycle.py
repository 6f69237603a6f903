"""The study's state machine: every change of ``Study.state`` (and of the analysis that goes
with it) is made here, in the caller's transaction.

    RECEIVING --complete--> COMPLETE --dispatched--> QUEUED --claimed--> ANALYSING
        |                     ^  ^                     |                    |   |
        +--skip--> SKIPPED    |  +--requeue (restart)--+                    |   +--> FAILED
                              +----------requeue (stale worker)-------------+
    ANALYSING --succeeded--> ANALYSED --delivered and acknowledged--> DONE
    ANALYSING --succeeded, but no destination--> UNDELIVERED (results kept in the spool)
    any state --a late or changed instance--> RECEIVING (a new revision if one was analysed)

The SCP (receiver, completion loop), the workers (analysis) and the outbox (delivery) call
these functions; none of them assigns ``Study.state`` itself. A move the machine does not
allow raises ``IllegalTransition``: a bug, never a user's error.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Notification,
    NotificationState,
    OutboxItem,
    OutboxState,
    Study,
    StudyState,
    utcnow,
)
from dicom_node.spool import short_hash

logger = logging.getLogger(__name__)

S = StudyState
#: state -> the states it may move to (RECEIVING is reachable from every state: re-open).
ALLOWED: dict[StudyState, frozenset[StudyState]] = {
    S.RECEIVING: frozenset({S.RECEIVING, S.COMPLETE, S.SKIPPED}),
    S.COMPLETE: frozenset({S.RECEIVING, S.QUEUED, S.ANALYSING}),
    S.QUEUED: frozenset({S.RECEIVING, S.COMPLETE, S.ANALYSING}),
    S.ANALYSING: frozenset(
        {S.RECEIVING, S.COMPLETE, S.ANALYSING, S.ANALYSED, S.UNDELIVERED, S.FAILED}
    ),
    S.ANALYSED: frozenset({S.RECEIVING, S.DONE}),
    S.UNDELIVERED: frozenset({S.RECEIVING}),
    S.DONE: frozenset({S.RECEIVING}),
    S.SKIPPED: frozenset({S.RECEIVING}),
    S.FAILED: frozenset({S.RECEIVING}),
}


NO_DESTINATION = (
    "no destination: the sender is not a destination peer and the routing rule names none; "
    "the results are kept in the spool (gazex ae add NAME ... --role destination)"
)


class IllegalTransition(RuntimeError):
    """A code path tried a move the state machine does not have."""


def _move(study: Study, to: StudyState) -> None:
    if to not in ALLOWED[study.state]:
        raise IllegalTransition(
            f"study {short_hash(study.StudyInstanceUID)}: {study.state.value} -> {to.value} "
            "is not a transition"
        )
    study.state = to


# -- the SCP: receiving and completion ----------------------------------------------------


def new_study(StudyInstanceUID: str, Modality: str | None, now: datetime) -> Study:
    """A study seen for the first time: it starts receiving at revision 1."""
    return Study(
        StudyInstanceUID=StudyInstanceUID,
        state=StudyState.RECEIVING,
        revision=1,
        Modality=Modality,
        first_received_at=now,
    )


def receiving(session: Session, study: Study) -> None:
    """An instance arrived. A study past receiving re-opens: an analysis already made for
    its revision is superseded, so the next one becomes a new revision."""
    if study.state is not StudyState.RECEIVING:
        previous_state = study.state
        analysed = session.scalar(
            select(func.count())
            .select_from(Analysis)
            .where(Analysis.study_id == study.id, Analysis.revision == study.revision)
        )
        if analysed:
            session.execute(
                update(Analysis)
                .where(
                    Analysis.study_id == study.id,
                    Analysis.state.in_(
                        [AnalysisState.QUEUED, AnalysisState.RUNNING, AnalysisState.SUCCEEDED]
                    ),
                )
                .values(state=AnalysisState.SUPERSEDED, finished_at=utcnow())
            )
            study.revision += 1
        logger.info(
            "study %s re-opened (was %s; revision %d)",
            short_hash(study.StudyInstanceUID),
            previous_state.value,
            study.revision,
        )
    _move(study, StudyState.RECEIVING)
    study.released_at = None
    study.completed_at = None
    study.dispatched_at = None
    study.reason = None


def complete(
    session: Session, study: Study, rule_name: str | None, reason: str, now: datetime
) -> None:
    """The study arrived in full. With a matching routing rule it waits for dispatch (its
    analysis row is created); without one it is skipped with ``reason``."""
    study.completed_at = now
    study.reason = reason
    study.routing_rule = rule_name
    if rule_name is None:
        _move(study, StudyState.SKIPPED)
        return
    _move(study, StudyState.COMPLETE)
    analysis = session.scalar(
        select(Analysis).where(Analysis.study_id == study.id, Analysis.revision == study.revision)
    )
    if analysis is None:
        session.add(
            Analysis(study_id=study.id, revision=study.revision, state=AnalysisState.QUEUED)
        )


def queued(study: Study) -> bool:
    """The study's message reached the broker; False if it moved on meanwhile."""
    if study.state is not StudyState.COMPLETE:
        return False
    _move(study, StudyState.QUEUED)
    study.dispatched_at = utcnow()
    return True


def requeue(study: Study) -> None:
    """Hand the study on again: its message may be lost (restart) or its worker died."""
    _move(study, StudyState.COMPLETE)
    study.dispatched_at = None


# -- the workers: analysis ----------------------------------------------------------------


def analysable(study: Study) -> bool:
    """Whether a worker may claim the study's current analysis."""
    return study.state in (StudyState.COMPLETE, StudyState.QUEUED, StudyState.ANALYSING)


def start_analysis(session: Session, study: Study) -> Analysis | str:
    """Claim the study's current analysis for a worker; returns why not when there is
    nothing to do."""
    if not analysable(study):
        return f"study is {study.state.value}"
    analysis = session.scalar(
        select(Analysis).where(Analysis.study_id == study.id, Analysis.revision == study.revision)
    )
    if analysis is None:
        analysis = Analysis(study_id=study.id, revision=study.revision, state=AnalysisState.QUEUED)
        session.add(analysis)
    elif analysis.state in (AnalysisState.SUCCEEDED, AnalysisState.SUPERSEDED):
        return f"analysis already {analysis.state.value}"
    analysis.state = AnalysisState.RUNNING
    analysis.started_at = utcnow()
    analysis.error = None
    _move(study, StudyState.ANALYSING)
    session.flush()
    return analysis


def analysis_succeeded(session: Session, analysis: Analysis, destinations: int) -> Study:
    """The results are stored and in the outbox for ``destinations`` peers: the study is
    analysed (and done at once when nothing is left to deliver or acknowledge). With no
    destination it is undelivered: the results stay in the spool and nobody is told that
    they arrived, so the state says so instead of "done"."""
    analysis.state = AnalysisState.SUCCEEDED
    analysis.finished_at = utcnow()
    study = session.get_one(Study, analysis.study_id)
    if destinations == 0:
        _move(study, StudyState.UNDELIVERED)
        study.reason = NO_DESTINATION
        return study
    _move(study, StudyState.ANALYSED)
    mark_done_if_finished(session, analysis)
    return study


def analysis_failed(session: Session, analysis: Analysis, reason: str) -> None:
    """The analysis refused its input (poison: never retried). The study fails with the
    reason unless it has moved on to a newer revision."""
    analysis.state = AnalysisState.FAILED
    analysis.error = reason
    analysis.finished_at = utcnow()
    study = session.get(Study, analysis.study_id)
    if study is not None and study.revision == analysis.revision:
        _move(study, StudyState.FAILED)
        study.reason = reason


# -- the outbox and the notification: done ------------------------------------------------


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
        _move(study, StudyState.DONE)
        logger.info("study %s done: results delivered", short_hash(study.StudyInstanceUID))
