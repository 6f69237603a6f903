"""One study of the review page: its details (``GET /review/api/studies/{key}``) and its
signature (``POST /review/api/studies/{key}/sign``).

The details are what the page draws: the analysed image's UIDs and size (its pixels come
through the node's WADO-RS under ``/review/dicom-web``, with the same session), the model's
result JSON for the analysed revision as the spool holds it (findings, trajectory, report,
coverage, attention, domain, model), the latest signed review and the history of every
signature, and the rejection reasons the page offers. No patient name or ID: the accession
number and the study date only, as in the worklist.

A signature is the session user's (nothing in the body names a signer; a radiologist or an
admin). The body::

    {"decisions": [{"finding": "SCT:36118008", "decision": "accept" | "reject" | "correct",
                    "reason": "RJ-ARTEFACT",            (reject only, from the list)
                    "box": {"x0":, "y0":, "x1":, "y1":}}],  (correct only; source pixels)
     "added": [{"finding": "SCT:...", "box": {...}}]}     (a label of the model it did not
                                                          call present)

Every finding the model called present is decided exactly once; boxes lie inside the image
(0 <= x0 < x1 <= Columns, 0 <= y0 < y1 <= Rows); any other field is refused. A valid
signature becomes a ``review`` row (state ``pending``, revision 1, 2, ... per analysis)
and an audit event in one transaction (a signature after one whose SR could not be built
takes that one's revision); after the commit the ``gazex.sign_review`` task is
dispatched by name, which builds the verified SR revision, puts it in the outbox and sends
the ORU^R01 (F, or C for a correction). The study is ``signed`` once the SR is built.

Errors (translated to HTTP answers by ``web``)::

    ReviewError
    ├── UnknownStudy    no analysed study has this key (404)
    ├── BadSignature    the body breaks a rule above (400; a ValueError)
    ├── NotAllowed      the user's role may not sign (403)
    └── NotSignable     out of domain, failed, or a signature still being recorded (409)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog
from dicom_node.db.models import (
    Analysis,
    Instance,
    ReviewState,
    SignedReview,
    Study,
    utcnow,
)
from dicom_node.review.accounts import ROLES, SessionUser
from dicom_node.review.reasons import REASON_VALUES, REJECTION_REASONS
from dicom_node.review.worklist import ReviewState as StudyReviewState
from dicom_node.review.worklist import Worklist
from dicom_node.spool import Spool, short_hash

logger = logging.getLogger(__name__)

#: Roles that may sign (every role the accounts know today).
SIGNER_ROLES = frozenset(ROLES)
DECISIONS = ("accept", "reject", "correct")
_DECISION_FIELDS = {"finding", "decision", "reason", "box"}
_ADDED_FIELDS = {"finding", "box"}
_BODY_FIELDS = {"decisions", "added"}


class ReviewError(Exception):
    """A request about one study that cannot be answered as asked."""


class UnknownStudy(ReviewError):
    """No analysed study has this key."""


class BadSignature(ReviewError, ValueError):
    """The signature's body breaks a rule (one line saying which)."""


class NotAllowed(ReviewError):
    """The user's role may not sign."""


class NotSignable(ReviewError):
    """The study cannot be signed now."""


@dataclass(frozen=True)
class _Finding:
    key: str  # "SCHEME:VALUE"
    meaning: str
    present: bool


def finding_key(code: dict[str, Any]) -> str:
    """ "SCHEME:VALUE" of a result's finding code (SRT is SNOMED CT's old designator)."""
    scheme = str(code.get("scheme", ""))
    return f"{'SCT' if scheme == 'SRT' else scheme}:{code.get('value', '')}"


def _findings(result: dict[str, Any]) -> dict[str, _Finding]:
    found: dict[str, _Finding] = {}
    for finding in result.get("findings", []) or []:
        code = finding.get("code") if isinstance(finding, dict) else None
        if isinstance(code, dict):
            key = finding_key(code)
            found[key] = _Finding(key, str(code.get("meaning", "")), finding.get("present") is True)
    return found


def _box(value: Any, where: str, rows: int, columns: int) -> dict[str, float]:
    if not isinstance(value, dict) or set(value) != {"x0", "y0", "x1", "y1"}:
        raise BadSignature(f"{where}: box must be {{x0, y0, x1, y1}} in source pixels")
    numbers: dict[str, float] = {}
    for name in ("x0", "y0", "x1", "y1"):
        v = value[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise BadSignature(f"{where}: box {name} must be a finite number")
        numbers[name] = float(v)
    if not (0 <= numbers["x0"] < numbers["x1"] <= columns) or not (
        0 <= numbers["y0"] < numbers["y1"] <= rows
    ):
        raise BadSignature(f"{where}: box {numbers} is empty or outside the {columns}x{rows} image")
    return numbers


def parse_signature(body: Any, result: dict[str, Any], rows: int, columns: int) -> dict[str, Any]:
    """The decisions of a signature body, checked against the model's result, as stored
    in the ``review`` row (each finding with its meaning). Raises BadSignature."""
    if not isinstance(body, dict):
        raise BadSignature("the body must be a JSON object {decisions, added}")
    unknown = set(body) - _BODY_FIELDS
    if unknown:
        raise BadSignature(
            f"unknown field(s) {', '.join(sorted(unknown))}: the body holds decisions and "
            "added only (the signer is always the logged-in user)"
        )
    decisions, added = body.get("decisions"), body.get("added", [])
    if not isinstance(decisions, list) or not isinstance(added, list):
        raise BadSignature("decisions and added must be lists")
    findings = _findings(result)
    claimed = {k for k, f in findings.items() if f.present}
    out: dict[str, list[dict[str, Any]]] = {"decisions": [], "added": []}
    seen: set[str] = set()
    for n, item in enumerate(decisions):
        where = f"decisions[{n}]"
        if not isinstance(item, dict) or set(item) - _DECISION_FIELDS:
            raise BadSignature(f"{where}: fields are finding, decision, reason, box")
        key, decision = item.get("finding"), item.get("decision")
        if not isinstance(key, str) or key not in claimed:
            raise BadSignature(f"{where}: {key!r} is not a finding the model called present")
        if key in seen:
            raise BadSignature(f"{where}: {key} is decided twice")
        seen.add(key)
        if decision not in DECISIONS:
            raise BadSignature(f"{where}: decision must be one of {', '.join(DECISIONS)}")
        entry: dict[str, Any] = {
            "finding": key,
            "meaning": findings[key].meaning,
            "decision": decision,
        }
        reason = item.get("reason")
        if decision == "reject":
            if reason not in REASON_VALUES:
                raise BadSignature(
                    f"{where}: rejecting {key} needs a reason from the list "
                    f"({', '.join(r.value for r in REJECTION_REASONS)})"
                )
            entry["reason"] = reason
        elif reason is not None:
            raise BadSignature(f"{where}: a reason goes with a rejection only")
        if decision == "correct":
            entry["box"] = _box(item.get("box"), where, rows, columns)
        elif item.get("box") is not None:
            raise BadSignature(f"{where}: a box goes with a correction only")
        out["decisions"].append(entry)
    undecided = sorted(claimed - seen)
    if undecided:
        raise BadSignature(f"findings left undecided: {', '.join(undecided)}")
    for n, item in enumerate(added):
        where = f"added[{n}]"
        if not isinstance(item, dict) or set(item) != _ADDED_FIELDS:
            raise BadSignature(f"{where}: fields are finding and box")
        key = item["finding"]
        if not isinstance(key, str) or key not in findings:
            raise BadSignature(f"{where}: {key!r} is not a label of the model")
        if key in seen:
            raise BadSignature(f"{where}: {key} is already decided or added")
        seen.add(key)
        out["added"].append(
            {
                "finding": key,
                "meaning": findings[key].meaning,
                "box": _box(item["box"], where, rows, columns),
            }
        )
    return out


def changes(decisions: dict[str, Any]) -> list[str]:
    """What a signature changed, one phrase each, in words a reader of the history (and
    of the audit trail) understands: the finding's name and code, the reason's meaning."""
    reasons = {r.value: r.meaning for r in REJECTION_REASONS}

    def name(d: dict[str, Any]) -> str:
        return f"{d['meaning']} ({d['finding']})" if d.get("meaning") else d["finding"]

    said: list[str] = []
    for d in decisions.get("decisions", []):
        if d["decision"] == "reject":
            why = reasons.get(d["reason"], d["reason"])
            said.append(f"rejected {name(d)}: {why.lower()}")
        elif d["decision"] == "correct":
            said.append(f"corrected the box of {name(d)}")
    said += [f"added {name(a)}" for a in decisions.get("added", [])]
    return said


def _review_json(row: SignedReview) -> dict[str, Any]:
    decisions = json.loads(row.decisions)
    return {
        "id": row.id,
        "revision": row.revision,
        "signed_by": row.user.name,
        "role": row.user.role,
        "signed_at": row.signed_at.isoformat(),
        "state": row.state.value,
        "decisions": decisions.get("decisions", []),
        "added": decisions.get("added", []),
        "changes": changes(decisions),
        "SOPInstanceUID": row.SOPInstanceUID,
        "hl7": None
        if row.control_id is None
        else {
            "control_id": row.control_id,
            "result_status": "F" if row.revision == 1 else "C",
            "state": None if row.hl7_state is None else row.hl7_state.value,
            "ack": row.ack_code,
        },
        "error": row.error,
    }


class StudyReview:
    """Details and signatures of one study; blocking (database and spool): call it on a
    worker thread. ``dispatch(review_id)`` hands a new signature to the workers."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        spool: Spool,
        worklist: Worklist,
        audit: AuditLog,
        dispatch: Callable[[int], None] | None,
    ) -> None:
        self._sessions = sessions
        self._spool = spool
        self._worklist = worklist
        self._audit = audit
        self._dispatch = dispatch

    def _result(self, StudyInstanceUID: str, revision: int) -> dict[str, Any] | None:
        path = self._spool.absolute(Spool.result_path(StudyInstanceUID, revision))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning(
                "study %s revision %d: result file not readable (%s)",
                short_hash(StudyInstanceUID),
                revision,
                type(exc).__name__,
            )
            return None
        return data if isinstance(data, dict) else None

    def _rows(
        self, session: Session, key: str
    ) -> tuple[StudyReviewState, Study, Analysis | None, str | None, str | None]:
        item = self._worklist.find(key)
        if item is None:
            raise UnknownStudy(f"no analysed study with key {key}")
        study = session.scalar(select(Study).where(Study.StudyInstanceUID == item.StudyInstanceUID))
        if study is None:
            raise UnknownStudy(f"no analysed study with key {key}")
        analysis = session.scalar(
            select(Analysis).where(
                Analysis.study_id == study.id, Analysis.revision == item.revision
            )
        )
        return item.state, study, analysis, item.AccessionNumber, item.StudyDate

    def detail(self, key: str) -> dict[str, Any]:
        """The study page's data (see the module docstring). Raises UnknownStudy."""
        with self._sessions() as session:
            state, study, analysis, accession, study_date = self._rows(session, key)
            result = (
                self._result(study.StudyInstanceUID, analysis.revision)
                if analysis is not None and state is not StudyReviewState.FAILED
                else None
            )
            image = self._image(session, study, result)
            reviews = (
                session.scalars(
                    select(SignedReview)
                    .where(SignedReview.analysis_id == analysis.id)
                    .order_by(SignedReview.revision)
                ).all()
                if analysis is not None
                else []
            )
            history = [_review_json(r) for r in reviews]
        signed = [h for h in history if h["state"] == ReviewState.BUILT.value]
        pending = [h for h in history if h["state"] == ReviewState.PENDING.value]
        return {
            "key": key,
            "state": state.value,
            "read_only": state is not StudyReviewState.AWAITING,
            "accession": accession,
            "study_date": study_date,
            "revision": None if analysis is None else analysis.revision,
            "image": image,
            "wado_root": "/review/dicom-web",
            "result": result,
            "review": signed[-1] if signed else None,
            "pending": pending[-1] if pending else None,
            "history": history,
            "reasons": [r.to_json() for r in REJECTION_REASONS],
        }

    def _image(
        self, session: Session, study: Study, result: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        source = result.get("source") if result is not None else None
        if isinstance(source, dict):
            return {
                k: source.get(k)
                for k in (
                    "StudyInstanceUID",
                    "SeriesInstanceUID",
                    "SOPInstanceUID",
                    "Rows",
                    "Columns",
                )
            }
        instance = session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        ).first()
        if instance is None:
            return None
        rows = columns = None
        try:
            ds = dcmread(
                self._spool.absolute(instance.path),
                stop_before_pixels=True,
                specific_tags=["Rows", "Columns"],
            )
            rows, columns = ds.get("Rows"), ds.get("Columns")
        except (OSError, InvalidDicomError, ValueError):
            pass  # the UIDs are enough to fetch it; its size shows once it is readable
        return {
            "StudyInstanceUID": study.StudyInstanceUID,
            "SeriesInstanceUID": instance.SeriesInstanceUID,
            "SOPInstanceUID": instance.SOPInstanceUID,
            "Rows": None if rows is None else int(rows),
            "Columns": None if columns is None else int(columns),
        }

    def sign(self, key: str, user: SessionUser, body: Any, address: str | None) -> dict[str, Any]:
        """Record the session user's signature and hand it to the workers (after the
        commit); returns the review record. Raises a ReviewError."""
        if user.role not in SIGNER_ROLES:
            raise NotAllowed(f"role {user.role} may not sign")
        with self._sessions.begin() as session:
            state, study, analysis, _, _ = self._rows(session, key)
            if state in (StudyReviewState.FAILED, StudyReviewState.OUT_OF_DOMAIN):
                raise NotSignable(f"a {state.value.replace('_', ' ')} study cannot be signed")
            if analysis is None:
                raise NotSignable("the study has no analysis to sign")
            analysis = session.get(Analysis, analysis.id, with_for_update=True)
            assert analysis is not None
            result = self._result(study.StudyInstanceUID, analysis.revision)
            source = result.get("source") if result is not None else None
            if result is None or not isinstance(source, dict):
                raise NotSignable("the model's result for this study is not readable")
            decisions = parse_signature(
                body, result, int(source.get("Rows", 0)), int(source.get("Columns", 0))
            )
            pending = session.scalar(
                select(SignedReview.id).where(
                    SignedReview.analysis_id == analysis.id,
                    SignedReview.state == ReviewState.PENDING,
                )
            )
            if pending is not None:
                raise NotSignable("the previous signature is still being recorded: try again")
            last = session.scalars(
                select(SignedReview)
                .where(SignedReview.analysis_id == analysis.id)
                .order_by(SignedReview.revision.desc())
                .limit(1)
            ).first()
            if last is not None and last.state is ReviewState.FAILED:
                # Its SR was never built: this signature takes its revision (the audit
                # trail keeps both), so revision n > 1 always follows a built n - 1.
                row = last
                row.user_id = user.user_id
                row.signed_at = utcnow()
                row.decisions = json.dumps(decisions, sort_keys=True)
                row.state = ReviewState.PENDING
                row.error = row.control_id = row.hl7_state = row.ack_code = None
            else:
                row = SignedReview(
                    study_id=study.id,
                    analysis_id=analysis.id,
                    revision=(last.revision if last is not None else 0) + 1,
                    user_id=user.user_id,
                    decisions=json.dumps(decisions, sort_keys=True),
                    state=ReviewState.PENDING,
                )
                session.add(row)
            try:
                session.flush()
            except IntegrityError:
                raise NotSignable("signed at the same moment by another request") from None
            said = changes(decisions)
            self._audit.add(
                session,
                "review",
                "signed",
                actor=user.name,
                address=address,
                StudyInstanceUID=study.StudyInstanceUID,
                detail=f"revision {row.revision} of analysis revision {analysis.revision}: "
                + (
                    "; ".join(said)
                    if said
                    else f"accepted all {len(decisions['decisions'])} finding(s)"
                ),
            )
            session.refresh(row, ["user"])
            record = _review_json(row)
            review_id, StudyInstanceUID = row.id, study.StudyInstanceUID
        logger.info(
            "study %s signed by %s: review revision %d",
            short_hash(StudyInstanceUID),
            user.name,
            record["revision"],
        )
        self.dispatch(review_id)
        return record

    def dispatch(self, review_id: int) -> None:
        dispatch_review(self._dispatch, review_id)


def dispatch_review(dispatch: Callable[[int], None] | None, review_id: int) -> None:
    """Hand a signature to the workers; when the broker is down the row stays pending and
    is handed on again when the node starts (``pending_reviews``)."""
    if dispatch is None:
        logger.warning("review %d recorded, but no worker dispatcher is configured", review_id)
        return
    try:
        dispatch(review_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the row waits
        logger.error(
            "review %d recorded; handing it to the workers failed (%s): it is handed on "
            "again at the next start",
            review_id,
            type(exc).__name__,
        )


def pending_reviews(sessions: sessionmaker[Session]) -> list[int]:
    """Signatures whose verified SR is not built yet (to hand on again at start-up)."""
    with sessions() as session:
        return list(
            session.scalars(
                select(SignedReview.id)
                .where(SignedReview.state == ReviewState.PENDING)
                .order_by(SignedReview.id)
            ).all()
        )
