"""The signing stage: a radiologist's signature (a ``review`` row the review page wrote)
becomes a verified findings SR revision, delivered like any result. A plain function; the
``sign_review`` task only calls it, then hands the ORU^R01 (``notification.notify_review``)
on.

``sign_review(ctx, review_id)`` re-reads the review row, the analysis's AI findings SR
(its ``findings-sr`` Output row) and the analysed image from the spool, builds the verified
SR with ``sr_templates.review.build_verified_sr`` (the reviewer: the signing user's name as
the PN family name; the organisation: the film's InstitutionName, else
``review.organization``, else the facility the node names in HL7, ``hl7.sending_facility``),
writes it to the spool, replaces the analysis's
``findings-sr-verified`` Output row (one per analysis, the newest revision: DICOMweb lists
only it; the review rows keep every revision's SOPInstanceUID), adds its outbox rows to the
study's destinations and marks the review built, in one transaction. Idempotent: the SR's
UIDs are derived from (source, model, kind, review revision), so a retry rewrites the same
file and the same outbox rows. A signature that cannot be built (a ``ValueError`` of the
builder: the AI SR does not match the decisions, no organisation, ...) is recorded as
failed, with the reason, and not retried.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code
from sqlalchemy import select

from dicom_node.db.models import (
    Analysis,
    Instance,
    NotificationState,
    Output,
    ReviewState,
    SignedReview,
    Study,
    utcnow,
)
from dicom_node.errors import AnalysisRefused
from dicom_node.logs import bind
from dicom_node.spool import Spool, short_hash
from model.result import Box, InferenceResult
from sr_templates import codes
from sr_templates.enum import ObjectKindValues, ReviewedObjectKindValues
from sr_templates.review import Decision, FindingDecision, Review, Reviewer, build_verified_sr
from workers.analysis import destinations_for
from workers.context import WorkerContext
from workers.hl7.messages import review_control_id

logger = logging.getLogger(__name__)

KIND = str(ReviewedObjectKindValues.VERIFIED_FINDINGS_SR)
_REASONS = {code.value: code for code in codes.REJECTION_REASONS}


@dataclass(frozen=True)
class ReviewOutcome:
    review_id: int
    #: "built", or why nothing was done ("already built", "no such review", ...)
    status: str
    #: Whether its ORU^R01 is still to be sent.
    notify: bool = False


def _code(key: str, meaning: str) -> Code:
    scheme, _, value = key.partition(":")
    return Code(value, scheme, meaning)


def _box(data: dict[str, Any]) -> Box:
    return Box(float(data["x0"]), float(data["y0"]), float(data["x1"]), float(data["y1"]))


def decisions_of(data: dict[str, Any]) -> tuple[FindingDecision, ...]:
    """The builder's decisions from a review row's JSON (``dicom_node.review.signing``)."""
    out: list[FindingDecision] = []
    for d in data.get("decisions", []):
        code = _code(d["finding"], d["meaning"])
        decision = Decision(d["decision"])
        if decision is Decision.REJECT:
            reason = _REASONS.get(d.get("reason", ""))
            if reason is None:
                raise ValueError(f"rejection reason {d.get('reason')!r} is not in the list")
            out.append(FindingDecision(code, decision, reason=reason))
        elif decision is Decision.CORRECT:
            out.append(FindingDecision(code, decision, box=_box(d["box"])))
        else:
            out.append(FindingDecision(code, decision))
    for a in data.get("added", []):
        out.append(
            FindingDecision(_code(a["finding"], a["meaning"]), Decision.ADD, box=_box(a["box"]))
        )
    return tuple(out)


def reviewed_calls(data: dict[str, Any]) -> dict[str, bool]:
    """ "SCHEME:VALUE" -> present, as the reviewer decided (for the ORU^R01)."""
    calls = {d["finding"]: d["decision"] != "reject" for d in data.get("decisions", [])}
    calls.update({a["finding"]: True for a in data.get("added", [])})
    return calls


@dataclass(frozen=True)
class _Inputs:
    StudyInstanceUID: str
    study_id: int
    analysis_id: int
    revision: int
    signed_at: Any
    user_name: str
    decisions: dict[str, Any]
    ai_sr_path: str
    instances: list[tuple[str, str]]
    analysis_revision: int


def _inputs(ctx: WorkerContext, review_id: int) -> _Inputs | ReviewOutcome:
    with ctx.sessions() as session:
        row = session.get(SignedReview, review_id)
        if row is None:
            return ReviewOutcome(review_id, "no such review")
        if row.state is not ReviewState.PENDING:
            unsent = row.hl7_state not in (NotificationState.ACCEPTED, NotificationState.REJECTED)
            built = row.state is ReviewState.BUILT
            return ReviewOutcome(
                review_id,
                f"already {row.state.value}",
                built and unsent and ctx.settings.hl7.enabled,
            )
        analysis = session.get(Analysis, row.analysis_id)
        study = session.get(Study, row.study_id)
        assert analysis is not None and study is not None
        ai_sr = session.scalar(
            select(Output).where(
                Output.analysis_id == analysis.id,
                Output.kind == str(ObjectKindValues.FINDINGS_SR),
            )
        )
        if ai_sr is None:
            raise AnalysisRefused("the analysis has no AI findings SR to review")
        instances = [
            (i.SOPInstanceUID, i.path)
            for i in session.scalars(select(Instance).where(Instance.study_id == study.id))
        ]
        return _Inputs(
            study.StudyInstanceUID,
            study.id,
            analysis.id,
            row.revision,
            row.signed_at,
            row.user.name,
            json.loads(row.decisions),
            ai_sr.path,
            instances,
            analysis.revision,
        )


def _read(ctx: WorkerContext, relative: str, what: str) -> Dataset:
    try:
        return dcmread(ctx.spool.absolute(relative), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise AnalysisRefused(f"the {what} cannot be read from the spool: {exc}") from exc


def source_of(
    ctx: WorkerContext, StudyInstanceUID: str, revision: int
) -> tuple[InferenceResult, str]:
    """The analysis's result and the SOPInstanceUID of the analysed image."""
    path = ctx.spool.absolute(Spool.result_path(StudyInstanceUID, revision))
    try:
        result = InferenceResult.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AnalysisRefused(f"the analysis's result cannot be read: {exc}") from exc
    return result, result.source.SOPInstanceUID


def sign_review(ctx: WorkerContext, review_id: int) -> ReviewOutcome:
    """Build, store and route the verified SR of one signature (see the module docstring)."""
    inputs = _inputs(ctx, review_id)
    if isinstance(inputs, ReviewOutcome):
        logger.info("review %d: %s", review_id, inputs.status)
        return inputs
    with bind(study=short_hash(inputs.StudyInstanceUID)):
        try:
            return _sign(ctx, review_id, inputs)
        except AnalysisRefused as exc:
            give_up(ctx, review_id, str(exc))
            raise


def _sign(ctx: WorkerContext, review_id: int, inputs: _Inputs) -> ReviewOutcome:
    _, analysed = source_of(ctx, inputs.StudyInstanceUID, inputs.analysis_revision)
    source_path = next((p for uid, p in inputs.instances if uid == analysed), None)
    if source_path is None:
        raise AnalysisRefused("the analysed instance is no longer in the study")
    source = _read(ctx, source_path, "analysed image")
    ai_sr = _read(ctx, inputs.ai_sr_path, "AI findings SR")
    organization = (
        str(source.get("InstitutionName", "") or "").strip()
        or ctx.settings.review.organization
        or ctx.settings.hl7.sending_facility
    )
    try:
        review = Review(
            Reviewer(inputs.user_name, organization=organization),
            inputs.signed_at,
            decisions_of(inputs.decisions),
            inputs.revision,
        )
        sr = build_verified_sr(ai_sr, source, review)
    except (ValueError, KeyError) as exc:
        raise AnalysisRefused(f"the verified SR cannot be built: {exc}") from exc
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    SeriesInstanceUID, SOPInstanceUID = str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)
    relative = ctx.spool.relative_path(
        inputs.StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, kind="out"
    )
    ctx.spool.write(relative, buffer.getvalue())
    destinations = destinations_for(ctx, inputs.study_id)
    notify = ctx.settings.hl7.enabled
    with ctx.sessions.begin() as session:
        row = session.get(SignedReview, review_id, with_for_update=True)
        assert row is not None
        if row.state is not ReviewState.PENDING:
            return ReviewOutcome(review_id, f"already {row.state.value}")
        output = session.scalar(
            select(Output).where(Output.analysis_id == inputs.analysis_id, Output.kind == KIND)
        )
        if output is None:
            output = Output(analysis_id=inputs.analysis_id, kind=KIND)
            session.add(output)
        output.SOPInstanceUID = SOPInstanceUID
        output.SOPClassUID = str(sr.SOPClassUID)
        output.SeriesInstanceUID = SeriesInstanceUID
        output.path = relative.as_posix()
        output.created_at = utcnow()
        session.flush()
        for peer in destinations:
            item = ctx.outbox.enqueue(
                session, peer.id, SOPInstanceUID, str(sr.SOPClassUID), ctx.spool.absolute(relative)
            )
            item.analysis_id = inputs.analysis_id
        row.state = ReviewState.BUILT
        row.SOPInstanceUID = SOPInstanceUID
        row.built_at = utcnow()
        row.error = None
        if notify:
            row.control_id = review_control_id(SOPInstanceUID)
            row.hl7_state = NotificationState.PENDING
        ctx.audit.add(
            session,
            "review",
            "built",
            actor=inputs.user_name,
            StudyInstanceUID=inputs.StudyInstanceUID,
            SOPInstanceUID=SOPInstanceUID,
            detail=f"verified SR revision {inputs.revision} for "
            + (", ".join(p.name for p in destinations) or "no destination"),
        )
    logger.info(
        "review %d: verified SR revision %d built for %s",
        review_id,
        inputs.revision,
        ", ".join(p.name for p in destinations) or "no destination",
    )
    return ReviewOutcome(review_id, "built", notify)


def give_up(ctx: WorkerContext, review_id: int, reason: str) -> None:
    """Record a signature whose verified SR cannot be built (shown in the study's history)."""
    with ctx.sessions.begin() as session:
        row = session.get(SignedReview, review_id)
        if row is None or row.state is not ReviewState.PENDING:
            return
        row.state = ReviewState.FAILED
        row.error = reason[:2000]
    logger.error("review %d failed: %s", review_id, reason)
