"""The study state machine in dicom_node.lifecycle: the moves a study makes, and the ones
it may not make."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import db, lifecycle
from dicom_node.db.models import Analysis, AnalysisState, Study, StudyState, utcnow


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'gazex.sqlite3'}"
    return db.open_sessions(url)


def test_a_study_walks_from_receiving_to_done(sessions: sessionmaker[Session]) -> None:
    """Receiving, complete, queued, analysing, analysed and done, each through lifecycle;
    with nothing to deliver or acknowledge the analysed study is done at once."""
    with sessions.begin() as session:
        study = lifecycle.new_study("1.2.3", "DX", utcnow())
        session.add(study)
        session.flush()
        lifecycle.receiving(session, study)
        lifecycle.complete(session, study, "chest", "matched chest", utcnow())
        assert study.state is StudyState.COMPLETE
        assert lifecycle.queued(study) and study.state is StudyState.QUEUED
        analysis = lifecycle.start_analysis(session, study)
        assert isinstance(analysis, Analysis) and analysis.state is AnalysisState.RUNNING
        assert study.state is StudyState.ANALYSING
        lifecycle.analysis_succeeded(session, analysis, destinations=1)
        assert study.state is StudyState.DONE
        assert lifecycle.start_analysis(session, study) == "study is done"


def test_analysed_with_no_destination_is_undelivered(
    sessions: sessionmaker[Session],
) -> None:
    """Results with nowhere to go leave the study undelivered, with the reason, not done."""
    with sessions.begin() as session:
        study = lifecycle.new_study("1.2.6", "DX", utcnow())
        session.add(study)
        session.flush()
        lifecycle.complete(session, study, "chest", "matched chest", utcnow())
        analysis = lifecycle.start_analysis(session, study)
        assert isinstance(analysis, Analysis)
        lifecycle.analysis_succeeded(session, analysis, destinations=0)
        assert study.state is StudyState.UNDELIVERED
        assert study.reason == lifecycle.NO_DESTINATION


def test_a_late_instance_reopens_with_a_new_revision(
    sessions: sessionmaker[Session],
) -> None:
    """A study that was analysed re-opens on a late instance: its analysis is superseded,
    its revision goes up, and its completion and dispatch times are cleared."""
    with sessions.begin() as session:
        study = lifecycle.new_study("1.2.4", "DX", utcnow())
        session.add(study)
        session.flush()
        lifecycle.complete(session, study, "chest", "matched chest", utcnow())
        lifecycle.queued(study)
        analysis = lifecycle.start_analysis(session, study)
        assert isinstance(analysis, Analysis)
        lifecycle.receiving(session, study)
        assert (study.state, study.revision) == (StudyState.RECEIVING, 2)
        assert study.completed_at is None and study.dispatched_at is None
        states = session.scalars(select(Analysis.state)).all()
        assert states == [AnalysisState.SUPERSEDED]


def test_moves_the_machine_does_not_have_raise(sessions: sessionmaker[Session]) -> None:
    """A skipped study cannot be queued, a receiving one cannot be analysed or done, and a
    failed one cannot be requeued: each raises IllegalTransition naming the move."""
    with sessions.begin() as session:
        study = lifecycle.new_study("1.2.5", "DX", utcnow())
        session.add(study)
        session.flush()
        assert lifecycle.start_analysis(session, study) == "study is receiving"
        with pytest.raises(lifecycle.IllegalTransition, match="receiving -> queued"):
            lifecycle._move(study, StudyState.QUEUED)
        lifecycle.complete(session, study, None, "no rule matched", utcnow())
        assert study.state is StudyState.SKIPPED
        assert lifecycle.queued(study) is False
        with pytest.raises(lifecycle.IllegalTransition, match="skipped -> complete"):
            lifecycle.requeue(study)
        assert session.scalar(select(Study.state)) is StudyState.SKIPPED
