"""The notification stage: the HL7 ORU^R01 of an analysis, sent over MLLP with its ACK
recorded. A plain function; the ``notify`` task only calls it."""

from __future__ import annotations

import logging

from pydicom import dcmread
from sqlalchemy import select

from dicom_node.db.models import Analysis, Instance, Notification, NotificationState, Study, utcnow
from dicom_node.errors import (
    AckError,
    AckRejected,
    AnalysisRefused,
    HL7BuildError,
    MLLPTransportError,
)
from dicom_node.lifecycle import mark_done_if_finished
from dicom_node.spool import Spool
from model.result import InferenceResult
from workers.context import WorkerContext
from workers.hl7 import mllp
from workers.hl7.messages import build_oru_r01, encode

logger = logging.getLogger(__name__)


def notify(ctx: WorkerContext, analysis_id: int) -> str:
    """Send the HL7 ORU^R01 of an analysis and record the ACK; returns the ACK code."""
    settings = ctx.settings.hl7
    if settings.host is None:
        return "not configured"
    with ctx.sessions() as session:
        analysis = session.get(Analysis, analysis_id)
        notification = session.scalar(
            select(Notification).where(Notification.analysis_id == analysis_id)
        )
        if analysis is None or notification is None:
            return "nothing to send"
        if notification.state in (NotificationState.ACCEPTED, NotificationState.REJECTED):
            return notification.ack_code or notification.state.value
        study = session.get(Study, analysis.study_id)
        assert study is not None
        revision = analysis.revision
        result_path = Spool.result_path(study.StudyInstanceUID, revision)
        source_row = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
    result = InferenceResult.from_json(ctx.spool.absolute(result_path).read_text(encoding="utf-8"))
    source_instance = next(
        (i for i in source_row if i.SOPInstanceUID == result.source.SOPInstanceUID), None
    )
    if source_instance is None:
        raise AnalysisRefused("the analysed instance is no longer in the study")
    source = dcmread(ctx.spool.absolute(source_instance.path), stop_before_pixels=True)
    try:
        message = build_oru_r01(
            result,
            source,
            sending_application=settings.sending_application,
            sending_facility=settings.sending_facility,
            receiving_application=settings.receiving_application,
            receiving_facility=settings.receiving_facility,
            revision=revision,
        )
    except HL7BuildError as exc:
        give_up(ctx, analysis_id, f"the ORU^R01 cannot be built: {exc}")
        raise
    state, code, error = NotificationState.ACCEPTED, "AA", None
    try:
        ack = mllp.send(
            encode(message),
            settings.host,
            settings.port,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )
        code = ack.code
    except AckRejected as exc:
        state, code, error = NotificationState.REJECTED, "AR", str(exc)
    except AckError as exc:
        state, code, error = NotificationState.ERROR, "AE", str(exc)
    except MLLPTransportError:
        ctx.metrics.hl7_failures.inc()
        raise
    with ctx.sessions.begin() as session:
        row = session.scalar(select(Notification).where(Notification.analysis_id == analysis_id))
        assert row is not None
        row.attempts += 1
        row.state = state
        row.ack_code = code
        row.last_error = error
        if state is NotificationState.ACCEPTED:
            row.sent_at = utcnow()
            ctx.metrics.stage_reached("notified", study.first_received_at)
        else:
            ctx.metrics.hl7_failures.inc()
        analysis = session.get(Analysis, analysis_id)
        assert analysis is not None
        mark_done_if_finished(session, analysis)
    if state is NotificationState.ERROR:
        raise MLLPTransportError(f"HL7 receiver answered AE: {error}")
    return code


def give_up(ctx: WorkerContext, analysis_id: int, reason: str) -> None:
    """Record a notification that will not be sent (retries spent, or a message that cannot
    be built), so `gazex status` lists it instead of it waiting "pending" for ever."""
    with ctx.sessions.begin() as session:
        row = session.scalar(select(Notification).where(Notification.analysis_id == analysis_id))
        if row is None or row.state in (NotificationState.ACCEPTED, NotificationState.REJECTED):
            return
        row.state = NotificationState.FAILED
        row.last_error = reason[:2000]
    logger.error("HL7 notification %s given up: %s", row.control_id, reason)
