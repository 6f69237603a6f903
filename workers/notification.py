"""The notification stage: the HL7 ORU^R01 of an analysis (result status P), and of a
signed review (F; C for a correction), sent over MLLP with its ACK recorded. Plain
functions; the ``notify`` and ``notify_review`` tasks only call them."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from hl7apy.core import Message
from pydicom import Dataset, dcmread
from sqlalchemy import select

from dicom_node.db.models import (
    Analysis,
    Instance,
    Notification,
    NotificationState,
    ReviewState,
    SignedReview,
    Study,
    utcnow,
)
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
from workers.hl7.messages import build_oru_r01, encode, review_control_id
from workers.review import reviewed_calls

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
        instances = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
    result, source = _analysed(ctx, study.StudyInstanceUID, revision, instances)
    try:
        message = build_oru_r01(
            result,
            source,
            sending_application=settings.sending_application,
            sending_facility=settings.sending_facility,
            receiving_application=settings.receiving_application,
            receiving_facility=settings.receiving_facility,
            revision=revision,
            critical_codes=frozenset(ctx.settings.review.critical_codes),
        )
    except HL7BuildError as exc:
        give_up(ctx, analysis_id, f"the ORU^R01 cannot be built: {exc}")
        raise
    state, code, error = _send(ctx, message)
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


def _analysed(
    ctx: WorkerContext, StudyInstanceUID: str, revision: int, instances: Sequence[Instance]
) -> tuple[InferenceResult, Dataset]:
    """The model's result of an analysis revision and the header of the film it analysed."""
    result_path = Spool.result_path(StudyInstanceUID, revision)
    result = InferenceResult.from_json(ctx.spool.absolute(result_path).read_text(encoding="utf-8"))
    source_instance = next(
        (i for i in instances if i.SOPInstanceUID == result.source.SOPInstanceUID), None
    )
    if source_instance is None:
        raise AnalysisRefused("the analysed instance is no longer in the study")
    return result, dcmread(ctx.spool.absolute(source_instance.path), stop_before_pixels=True)


def _send(ctx: WorkerContext, message: Message) -> tuple[NotificationState, str, str | None]:
    """Send an ORU^R01 over MLLP: (state, ACK code, error). A transport failure counts and
    raises (the task retries it); an AR or AE answer is a state to record."""
    settings = ctx.settings.hl7
    assert settings.host is not None
    try:
        ack = mllp.send(
            encode(message),
            settings.host,
            settings.port,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )
    except AckRejected as exc:
        return NotificationState.REJECTED, "AR", str(exc)
    except AckError as exc:
        return NotificationState.ERROR, "AE", str(exc)
    except MLLPTransportError:
        ctx.metrics.hl7_failures.inc()
        raise
    return NotificationState.ACCEPTED, ack.code, None


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


def notify_review(ctx: WorkerContext, review_id: int) -> str:
    """Send the ORU^R01 of a signed review (result status F; C for a later revision, a
    correction) and record the ACK on the review row; returns the ACK code."""
    settings = ctx.settings.hl7
    if settings.host is None:
        return "not configured"
    with ctx.sessions() as session:
        row = session.get(SignedReview, review_id)
        if row is None or row.state is not ReviewState.BUILT or row.SOPInstanceUID is None:
            return "nothing to send"
        if row.hl7_state in (NotificationState.ACCEPTED, NotificationState.REJECTED):
            return row.ack_code or row.hl7_state.value
        study = session.get(Study, row.study_id)
        analysis = session.get(Analysis, row.analysis_id)
        assert study is not None and analysis is not None
        revision, review_revision = analysis.revision, row.revision
        control, sr_uid = (
            row.control_id or review_control_id(row.SOPInstanceUID),
            row.SOPInstanceUID,
        )
        calls = reviewed_calls(json.loads(row.decisions))
        instances = session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
    result, source = _analysed(ctx, study.StudyInstanceUID, revision, instances)
    try:
        message = build_oru_r01(
            result,
            source,
            sending_application=settings.sending_application,
            sending_facility=settings.sending_facility,
            receiving_application=settings.receiving_application,
            receiving_facility=settings.receiving_facility,
            revision=revision,
            message_control_id=control,
            critical_codes=frozenset(ctx.settings.review.critical_codes),
            result_status="F" if review_revision == 1 else "C",
            findings_sr_uid=sr_uid,
            reviewed=calls,
        )
    except HL7BuildError as exc:
        give_up_review(ctx, review_id, f"the ORU^R01 cannot be built: {exc}")
        raise
    state, code, error = _send(ctx, message)
    with ctx.sessions.begin() as session:
        saved = session.get(SignedReview, review_id)
        assert saved is not None
        saved.control_id = control
        saved.hl7_state = state
        saved.ack_code = code
        saved.error = error
        if state is not NotificationState.ACCEPTED:
            ctx.metrics.hl7_failures.inc()
    if state is NotificationState.ERROR:
        raise MLLPTransportError(f"HL7 receiver answered AE: {error}")
    return code


def give_up_review(ctx: WorkerContext, review_id: int, reason: str) -> None:
    """Record a signed review's ORU^R01 that will not be sent (retries spent, or a message
    that cannot be built)."""
    with ctx.sessions.begin() as session:
        row = session.get(SignedReview, review_id)
        if row is None or row.hl7_state in (NotificationState.ACCEPTED, NotificationState.REJECTED):
            return
        row.hl7_state = NotificationState.FAILED
        row.error = reason[:2000]
    logger.error("HL7 notification of review %d given up: %s", review_id, reason)
