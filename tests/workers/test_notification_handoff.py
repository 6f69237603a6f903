"""An analysis whose notification was never handed on (the worker died, or the broker
refused, between the results' commit and ``send_task``) hands it on when its message is
delivered again; once the ORU^R01 has been tried, a redelivery leaves it alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import free_port
from reviewkit import analysed_study
from sqlalchemy import select

from dicom_node import db
from dicom_node.db.models import Analysis, Notification, NotificationState, StudyState
from dicom_node.settings import load_settings
from workers import analysis, notification
from workers.context import WorkerContext
from workers.hl7.messages import control_id
from workers.hl7.mllp import MLLPListener

pytestmark = pytest.mark.integration  # a real MLLP listener on loopback


def _ids(ctx: WorkerContext) -> tuple[int, int]:
    """(study id, analysis id) of the one analysed study."""
    with ctx.sessions() as session:
        row = session.execute(select(Analysis.study_id, Analysis.id)).one()
        return int(row[0]), int(row[1])


@pytest.fixture
def listener() -> Iterator[MLLPListener]:
    running = MLLPListener(port=0).start()
    try:
        yield running
    finally:
        running.stop()


def test_redelivered_analysis_hands_its_notification_on_once(
    tmp_path: Path, listener: MLLPListener
) -> None:
    url = f"sqlite:///{tmp_path / 'gazex.sqlite3'}"
    db.upgrade(url)
    settings = load_settings(
        None,
        home=tmp_path / "home",
        node__port=free_port(),
        database__url=url,
        hl7__host="127.0.0.1",
        hl7__port=listener.port,
    )
    ctx = WorkerContext.build(settings)
    analysed = analysed_study(ctx.sessions, ctx.spool, state=StudyState.ANALYSED)
    study_id, analysis_id = _ids(ctx)
    with ctx.sessions.begin() as session:
        session.add(
            Notification(
                analysis_id=analysis_id,
                control_id=control_id(analysed.result, 1),
                state=NotificationState.PENDING,
            )
        )

    again = analysis.analyze_study(ctx, study_id)
    assert (again.analysis_id, again.notify) == (analysis_id, True)
    assert again.status == "study is analysed; notification handed on again"

    assert notification.notify(ctx, analysis_id) == "AA"
    assert len(listener.received) == 1
    with ctx.sessions() as session:
        row = session.scalar(select(Notification))
        assert row is not None and row.state is NotificationState.ACCEPTED

    later = analysis.analyze_study(ctx, study_id)
    assert (later.analysis_id, later.notify) == (None, False)


def test_without_hl7_nothing_is_handed_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gazex.sqlite3'}"
    db.upgrade(url)
    settings = load_settings(
        None, home=tmp_path / "home", node__port=free_port(), database__url=url
    )
    ctx = WorkerContext.build(settings)
    analysed = analysed_study(ctx.sessions, ctx.spool, state=StudyState.DONE)
    study_id, analysis_id = _ids(ctx)
    with ctx.sessions.begin() as session:  # left pending by a node that had HL7 configured
        session.add(
            Notification(
                analysis_id=analysis_id,
                control_id=control_id(analysed.result, 1),
                state=NotificationState.PENDING,
            )
        )
    outcome = analysis.analyze_study(ctx, study_id)
    assert (outcome.analysis_id, outcome.notify) == (None, False)
