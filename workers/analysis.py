"""The analysis stage: choose the image, predict, build the DICOM objects, store them and
add their outbox rows. Plain functions; the ``analyze_study`` task only calls them.

Every function takes ids, re-reads its rows and is idempotent: output UIDs are derived from
(study, model version, object kind, revision), so a retry rewrites the same files and the
same outbox rows, and a destination receiving them again overwrites instead of duplicating.
Study states change only through ``dicom_node.lifecycle``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node import lifecycle
from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Instance,
    Notification,
    NotificationState,
    Output,
    Step,
    StepOutcome,
    Study,
    utcnow,
)
from dicom_node.errors import AnalysisRefused, ModelUnavailable
from dicom_node.logs import bind
from dicom_node.peers import PeerInfo
from dicom_node.spool import Spool, short_hash
from model.result import InferenceResult
from workers.builder import EncodedObject
from workers.context import WorkerContext
from workers.hl7.messages import control_id

logger = logging.getLogger(__name__)

#: Modalities and views the model reads.
_RADIOGRAPHS = {"CR", "DX"}
_FRONTAL_ORDER = ("PA", "AP", "")


@dataclass(frozen=True)
class AnalysisOutcome:
    analysis_id: int | None
    #: "analysed", or why nothing was done ("already done", "superseded", ...)
    status: str
    notify: bool = False


@contextmanager
def step(ctx: WorkerContext, analysis_id: int, name: str) -> Iterator[Step]:
    """Record one step's start, end and outcome in its own short transaction."""
    with ctx.sessions.begin() as session:
        row = Step(analysis_id=analysis_id, name=name, outcome=StepOutcome.RUNNING)
        session.add(row)
        session.flush()
        step_id = row.id
    outcome, detail = StepOutcome.OK, None
    try:
        yield row
        outcome, detail = row.outcome, row.detail
        if outcome is StepOutcome.RUNNING:
            outcome = StepOutcome.OK
    except BaseException as exc:
        outcome, detail = StepOutcome.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        with ctx.sessions.begin() as session:
            saved = session.get(Step, step_id)
            if saved is not None:
                saved.outcome = outcome
                saved.detail = detail
                saved.finished_at = utcnow()


def _read(ctx: WorkerContext, instance: Instance) -> Dataset:
    try:
        return dcmread(ctx.spool.absolute(instance.path))
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise AnalysisRefused(
            f"stored instance {short_hash(instance.SOPInstanceUID)} cannot be read: {exc}"
        ) from exc


def select_image(instances: list[Instance]) -> tuple[Instance, str]:
    """The frontal radiograph to analyse (PA before AP) and a note on what was left out."""
    radiographs = [i for i in instances if (i.Modality or "") in _RADIOGRAPHS]
    frontal = [i for i in radiographs if (i.ViewPosition or "") in _FRONTAL_ORDER]
    if not frontal:
        views = sorted({i.ViewPosition or "-" for i in radiographs}) or ["none"]
        raise AnalysisRefused(
            f"no frontal chest radiograph in the study (views: {', '.join(views)})"
        )
    frontal.sort(key=lambda i: (_FRONTAL_ORDER.index(i.ViewPosition or ""), i.received_at))
    chosen = frontal[0]
    skipped = len(instances) - 1
    lateral = sum((i.ViewPosition or "") in {"LL", "RL", "LATERAL", "LAT"} for i in instances)
    note = f"analysed {chosen.ViewPosition or 'unlabelled'} view"
    if skipped:
        note += (
            f"; {skipped} other image(s) not analysed"
            f" ({lateral} lateral: the model reads frontal views)"
        )
    return chosen, note


def _start(ctx: WorkerContext, study_id: int) -> tuple[str, int, int, list[Instance]] | str:
    """Claim the study's current analysis; returns why not when there is nothing to do."""
    with ctx.sessions.begin() as session:
        study = session.get(Study, study_id, with_for_update=True)
        if study is None:
            return "no such study"
        analysis = lifecycle.start_analysis(session, study)
        if isinstance(analysis, str):
            return analysis
        instances = list(
            session.scalars(select(Instance).where(Instance.study_id == study.id)).all()
        )
        return short_hash(study.StudyInstanceUID), analysis.id, study.revision, instances


def analyze_study(ctx: WorkerContext, study_id: int) -> AnalysisOutcome:
    """Analyse a complete study: choose the image, predict, build the DICOM objects, store
    them and put them in the outbox for each destination."""
    claimed = _start(ctx, study_id)
    if isinstance(claimed, str):
        logger.info("nothing to analyse for study row %d: %s", study_id, claimed)
        unsent = _unsent_notification(ctx, study_id)
        if unsent is not None:
            # The analysis committed but its notification was never handed on (the worker
            # died, or the broker refused, before send_task): this redelivery hands it on.
            return AnalysisOutcome(unsent, f"{claimed}; notification handed on again", True)
        return AnalysisOutcome(None, claimed)
    study, analysis_id, revision, instances = claimed
    with bind(study=study):
        try:
            return _analyze(ctx, study_id, analysis_id, revision, instances)
        except AnalysisRefused as exc:
            fail_analysis(ctx, analysis_id, str(exc))
            raise


def _unsent_notification(ctx: WorkerContext, study_id: int) -> int | None:
    """The id of the study's current, succeeded analysis when its HL7 notification was
    never attempted (still pending, no attempt), else None."""
    if not ctx.settings.hl7.enabled:
        return None
    with ctx.sessions() as session:
        return session.scalar(
            select(Analysis.id)
            .join(Study, Study.id == Analysis.study_id)
            .join(Notification, Notification.analysis_id == Analysis.id)
            .where(
                Study.id == study_id,
                Analysis.revision == Study.revision,
                Analysis.state == AnalysisState.SUCCEEDED,
                Notification.state == NotificationState.PENDING,
                Notification.attempts == 0,
            )
        )


def _analyze(
    ctx: WorkerContext, study_id: int, analysis_id: int, revision: int, instances: list[Instance]
) -> AnalysisOutcome:
    with step(ctx, analysis_id, "select") as row:
        chosen, row.detail = select_image(instances)
        source = _read(ctx, chosen)
    with step(ctx, analysis_id, "predict"):
        try:
            predictor = ctx.predictor
        except ModelUnavailable as exc:
            raise AnalysisRefused(f"model unavailable: {exc}") from exc
        try:
            with ctx.metrics.model_seconds.time():
                result = predictor.predict(source)
        except (ValueError, NotImplementedError) as exc:  # undecodable or unsupported pixels
            raise AnalysisRefused(f"the model cannot read the image: {exc}") from exc
    with step(ctx, analysis_id, "build") as row:
        objects = ctx.builder.build(result, source, revision)
        row.detail = ", ".join(str(o.kind) for o in objects)
    study_uid = str(source.StudyInstanceUID)
    with step(ctx, analysis_id, "store"):
        ctx.spool.write(Spool.result_path(study_uid, revision), result.to_json().encode("utf-8"))
        stored: list[tuple[EncodedObject, Path]] = []
        for obj in objects:
            relative = ctx.spool.relative_path(
                study_uid, obj.series_instance_uid, obj.sop_instance_uid, kind="out"
            )
            ctx.spool.write(relative, obj.data)
            stored.append((obj, relative))
    with step(ctx, analysis_id, "route") as row:
        destinations = destinations_for(ctx, study_id)
        row.detail = ", ".join(p.name for p in destinations) or "no destination configured"
    with ctx.sessions.begin() as session:
        analysis = session.get(Analysis, analysis_id, with_for_update=True)
        assert analysis is not None
        if analysis.state is not AnalysisState.RUNNING:
            # The study re-opened while we worked: its next revision will be analysed.
            logger.info("re-opened during analysis: results discarded for the next revision")
            return AnalysisOutcome(analysis_id, "superseded")
        _record_domain(ctx, analysis, result)
        for obj, relative in stored:
            _upsert_output(session, analysis_id, obj, relative)
            for peer in destinations:
                item = ctx.outbox.enqueue(
                    session,
                    peer.id,
                    obj.sop_instance_uid,
                    obj.sop_class_uid,
                    ctx.spool.absolute(relative),
                )
                item.analysis_id = analysis_id
        notify = ctx.settings.hl7.enabled
        if (
            notify
            and session.scalar(select(Notification).where(Notification.analysis_id == analysis_id))
            is None
        ):
            session.add(
                Notification(
                    analysis_id=analysis_id,
                    control_id=control_id(result, revision),
                    state=NotificationState.PENDING,
                )
            )
        study = lifecycle.analysis_succeeded(session, analysis, len(destinations))
        ctx.metrics.stage_reached("analysed", study.first_received_at)
        if not destinations:
            ctx.audit.add(
                session,
                "results",
                "undelivered",
                ae_title=study.calling_ae,
                StudyInstanceUID=study.StudyInstanceUID,
                detail=f"{len(stored)} object(s) kept in the spool: no destination",
            )
    if destinations:
        logger.info(
            "study %s revision %d analysed: %d object(s) for %s",
            short_hash(study.StudyInstanceUID),
            revision,
            len(stored),
            ", ".join(p.name for p in destinations),
        )
    else:
        logger.warning(
            "study %s revision %d analysed, but its %d object(s) go nowhere: %s",
            short_hash(study.StudyInstanceUID),
            revision,
            len(stored),
            lifecycle.NO_DESTINATION,
        )
    return AnalysisOutcome(analysis_id, "analysed", notify)


def _record_domain(ctx: WorkerContext, analysis: Analysis, result: InferenceResult) -> None:
    """The domain gate's verdict on the study record and in the metrics; a warning in the log
    for a film out of domain (its results say so to the radiologist)."""
    domain = result.domain
    analysis.domain_score = None if domain is None else domain.score
    analysis.out_of_domain = None if domain is None else not domain.in_domain
    ctx.metrics.domain_verdict(analysis.out_of_domain)
    if domain is not None and not domain.in_domain:
        logger.warning(
            "study %s: film out of the model's training domain (score %.1f > %.1f): its "
            "results say so",
            short_hash(result.source.StudyInstanceUID),
            domain.score,
            domain.threshold,
        )


def _upsert_output(
    session: Session, analysis_id: int, obj: EncodedObject, relative: Path
) -> Output:
    row = session.scalar(
        select(Output).where(Output.analysis_id == analysis_id, Output.kind == str(obj.kind))
    )
    if row is None:
        row = Output(analysis_id=analysis_id, kind=str(obj.kind))
        session.add(row)
    row.SOPInstanceUID = obj.sop_instance_uid
    row.SOPClassUID = obj.sop_class_uid
    row.SeriesInstanceUID = obj.series_instance_uid
    row.path = relative.as_posix()
    session.flush()
    return row


def destinations_for(ctx: WorkerContext, study_id: int) -> list[PeerInfo]:
    """The AE that sent the study when it is a destination peer, plus the destinations its
    routing rule names."""
    with ctx.sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None
        calling_ae, rule_name = study.calling_ae, study.routing_rule
    found: dict[int, PeerInfo] = {}
    if calling_ae:
        for peer in ctx.peers.destinations_for_ae(calling_ae):
            found[peer.id] = peer
    rule = next((r for r in ctx.settings.routing.rules if r.name == rule_name), None)
    for name in rule.destinations if rule else []:
        peer = ctx.peers.get(name)
        if peer.enabled and "destination" in peer.roles:
            found[peer.id] = peer
    return sorted(found.values(), key=lambda p: p.name)


def fail_analysis(ctx: WorkerContext, analysis_id: int, reason: str) -> None:
    """Record an analysis that refused its input (poison: not retried)."""
    with ctx.sessions.begin() as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None:
            return
        lifecycle.analysis_failed(session, analysis, reason)
    logger.warning("analysis failed: %s", reason)
