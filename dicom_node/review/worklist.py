"""The review worklist: analysed studies a radiologist is to look at, in triage order.

A study is on the worklist once its analysis ended: results built (``analysed``,
``undelivered``, ``done``) or refused (``failed``). Its review state:

    awaiting_review   results built, film in the model's domain (not yet signed)
    out_of_domain     results built, but the domain gate says the film is unlike the
                      training films: its findings are withheld here
    failed            the analysis refused the study (the reason is given)
    signed            a radiologist signed it: a review of this analysis whose verified
                      SR was built (``signed_at``, from the ``review`` table); it reopens
                      read-only with its history, and a new signature is a correction

The database holds no patient data, so the accession number and study date and time are
read from the analysed instance's header in the spool (``dcmread``, no pixels), and the
findings from the analysis's result JSON (``Spool.result_path``, format
``gazex.result/1``, read as plain JSON). Both never change for one analysis revision and
are cached. Default order: a present critical finding (``ReviewSettings.critical_codes``)
first, then the longest waiting first.

The study's key in URLs is ``study_key``: a hash of the StudyInstanceUID (its first ten
characters are the ``short_hash`` the logs use), never a patient identifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Instance,
    SignedReview,
    Study,
    StudyState,
)
from dicom_node.db.models import ReviewState as SignedReviewState
from dicom_node.settings import ReviewSettings
from dicom_node.spool import Spool, short_hash

logger = logging.getLogger(__name__)

REVIEWABLE = (StudyState.ANALYSED, StudyState.UNDELIVERED, StudyState.DONE, StudyState.FAILED)
MAX_LIMIT = 200
KEY_LENGTH = 16
_HEADER_TAGS = ["AccessionNumber", "StudyDate", "StudyTime"]


class ReviewState(StrEnum):
    AWAITING = "awaiting_review"
    SIGNED = "signed"
    OUT_OF_DOMAIN = "out_of_domain"
    FAILED = "failed"


def study_key(StudyInstanceUID: str) -> str:
    """The study's opaque key in review URLs."""
    return hashlib.sha256(StudyInstanceUID.encode("utf-8", "replace")).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class FindingSummary:
    key: str
    scheme: str
    value: str
    meaning: str
    probability: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "code": {"scheme": self.scheme, "value": self.value, "meaning": self.meaning},
            "probability": round(self.probability, 4),
        }


@dataclass(frozen=True)
class _Details:
    """What the spool says about one analysis revision (cached)."""

    AccessionNumber: str | None = None
    StudyDate: str | None = None
    StudyTime: str | None = None
    findings: tuple[FindingSummary, ...] = ()
    in_domain: bool | None = None
    model: str | None = None
    trained_on_synthetic_data: bool | None = None
    result_missing: bool = False
    #: Every file that should be there was read (only then is it cached).
    complete: bool = True


@dataclass(frozen=True)
class WorklistItem:
    key: str
    StudyInstanceUID: str
    state: ReviewState
    critical: bool
    revision: int
    Modality: str | None
    analysed_at: datetime | None
    AccessionNumber: str | None
    StudyDate: str | None
    StudyTime: str | None
    #: Present findings, most probable first; empty when withheld (out of domain).
    findings: tuple[FindingSummary, ...]
    findings_withheld: bool
    domain_score: float | None
    model: str | None
    trained_on_synthetic_data: bool | None
    #: Why the analysis failed (failed studies only).
    error: str | None
    result_missing: bool
    signed_at: datetime | None = None
    sort_key: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "StudyInstanceUID": self.StudyInstanceUID,
            "state": self.state.value,
            "critical": self.critical,
            "revision": self.revision,
            "Modality": self.Modality,
            "analysed_at": None if self.analysed_at is None else self.analysed_at.isoformat(),
            "AccessionNumber": self.AccessionNumber,
            "StudyDate": self.StudyDate,
            "StudyTime": self.StudyTime,
            "findings": [f.to_json() for f in self.findings],
            "findings_withheld": self.findings_withheld,
            "domain_score": self.domain_score,
            "model": self.model,
            "trained_on_synthetic_data": self.trained_on_synthetic_data,
            "error": self.error,
            "result_missing": self.result_missing,
            "signed_at": None if self.signed_at is None else self.signed_at.isoformat(),
        }


@dataclass(frozen=True)
class Page:
    total: int
    limit: int
    offset: int
    items: tuple[WorklistItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
            "items": [item.to_json() for item in self.items],
        }


def parse_states(text: str | None) -> frozenset[ReviewState] | None:
    """``awaiting_review,failed`` -> those states; None (all) when empty. Raises
    ValueError naming an unknown state."""
    if not text:
        return None
    states: set[ReviewState] = set()
    for part in text.split(","):
        try:
            states.add(ReviewState(part.strip()))
        except ValueError:
            known = ", ".join(s.value for s in ReviewState)
            raise ValueError(f"unknown state {part.strip()!r} (one of {known})") from None
    return frozenset(states)


def _signed_at(session: Session, analysis: Analysis | None) -> datetime | None:
    """When a radiologist last signed this analysis (a review whose verified SR was built);
    None while it is unsigned or its first signature is still being recorded."""
    if analysis is None:
        return None
    signed: datetime | None = session.scalar(
        select(func.max(SignedReview.signed_at)).where(
            SignedReview.analysis_id == analysis.id,
            SignedReview.state == SignedReviewState.BUILT,
        )
    )
    if signed is not None and signed.tzinfo is None:  # SQLite drops the zone in max()
        signed = signed.replace(tzinfo=UTC)
    return signed


class Worklist:
    """Reads the worklist; blocking (database and spool): call it on a worker thread."""

    CACHE_SIZE = 4096

    def __init__(
        self, sessions: sessionmaker[Session], spool: Spool, settings: ReviewSettings
    ) -> None:
        self._sessions = sessions
        self._spool = spool
        self._critical = frozenset(settings.critical_codes)
        self._cache: OrderedDict[tuple[int, int], _Details] = OrderedDict()
        self._lock = threading.Lock()

    def page(
        self,
        states: frozenset[ReviewState] | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """One page of the worklist in triage order, filtered by review state and by
        ``q`` (a part of the accession number, the StudyInstanceUID or the key)."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1-{MAX_LIMIT}")
        if offset < 0:
            raise ValueError("offset cannot be negative")
        items = self._items(states)
        if q:
            needle = q.strip().lower()
            items = [
                i
                for i in items
                if needle in (i.AccessionNumber or "").lower()
                or needle in i.StudyInstanceUID
                or i.key.startswith(needle)
            ]
        items.sort(key=lambda i: i.sort_key)
        return Page(len(items), limit, offset, tuple(items[offset : offset + limit]))

    def find(self, key: str) -> WorklistItem | None:
        """The worklist entry whose key is ``key`` (for the study's own page)."""
        return next((i for i in self._items(None) if i.key == key), None)

    def _items(self, states: frozenset[ReviewState] | None) -> list[WorklistItem]:
        with self._sessions() as session:
            rows = session.execute(
                select(Study, Analysis)
                .outerjoin(
                    Analysis,
                    and_(Analysis.study_id == Study.id, Analysis.revision == Study.revision),
                )
                .where(Study.state.in_(REVIEWABLE))
            ).all()
            items = []
            for study, analysis in rows:
                item = self._item(session, study, analysis, states)
                if item is not None:
                    items.append(item)
            return items

    def _item(
        self,
        session: Session,
        study: Study,
        analysis: Analysis | None,
        states: frozenset[ReviewState] | None,
    ) -> WorklistItem | None:
        failed = study.state is StudyState.FAILED
        if not failed and (analysis is None or analysis.state is not AnalysisState.SUCCEEDED):
            return None  # between states; it shows once its analysis row says so
        signed_at = _signed_at(session, analysis)
        if failed:
            state = ReviewState.FAILED
        elif signed_at is not None:
            state = ReviewState.SIGNED
        elif analysis is not None and analysis.out_of_domain:
            state = ReviewState.OUT_OF_DOMAIN
        else:
            state = ReviewState.AWAITING
        details = self._details(session, study, analysis)
        if state is ReviewState.AWAITING and details.in_domain is False:
            state = ReviewState.OUT_OF_DOMAIN  # the result says so though the row does not
        if states is not None and state not in states:
            return None
        withheld = state is ReviewState.OUT_OF_DOMAIN
        findings = () if withheld or failed else details.findings
        critical = any(f"{f.scheme}:{f.value}" in self._critical for f in findings)
        analysed_at = analysis.finished_at if analysis is not None else None
        waiting_since = analysed_at or study.updated_at
        return WorklistItem(
            key=study_key(study.StudyInstanceUID),
            StudyInstanceUID=study.StudyInstanceUID,
            state=state,
            critical=critical,
            revision=study.revision,
            Modality=study.Modality,
            analysed_at=analysed_at,
            AccessionNumber=details.AccessionNumber,
            StudyDate=details.StudyDate,
            StudyTime=details.StudyTime,
            findings=findings,
            findings_withheld=withheld,
            domain_score=analysis.domain_score if analysis is not None else None,
            model=details.model,
            trained_on_synthetic_data=details.trained_on_synthetic_data,
            error=_failure(study, analysis) if failed else None,
            result_missing=details.result_missing,
            signed_at=signed_at,
            sort_key=(not critical, waiting_since.timestamp(), study.id),
        )

    def _details(self, session: Session, study: Study, analysis: Analysis | None) -> _Details:
        cache_key = (study.id, study.revision if analysis is None else analysis.revision)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        details = self._read(session, study, analysis)
        if not details.complete:
            return details  # read again next time: the file may be back (or late)
        with self._lock:
            self._cache[cache_key] = details
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return details

    def _read(self, session: Session, study: Study, analysis: Analysis | None) -> _Details:
        result: dict[str, Any] | None = None
        succeeded = analysis is not None and analysis.state is AnalysisState.SUCCEEDED
        if analysis is not None and succeeded:
            result = self._result(study.StudyInstanceUID, analysis.revision)
        analysed_sop = _get(result, "source", "SOPInstanceUID")
        instances = session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        ).all()
        chosen = next((i for i in instances if i.SOPInstanceUID == analysed_sop), None)
        if chosen is None and instances:
            chosen = instances[0]
        header = self._header(study.StudyInstanceUID, chosen.path) if chosen is not None else None
        model = _get(result, "model")
        domain = _get(result, "domain")
        complete = header is not None and (result is not None or not succeeded)
        header = header or {}
        return _Details(
            AccessionNumber=header.get("AccessionNumber"),
            StudyDate=_date(header.get("StudyDate")),
            StudyTime=_time(header.get("StudyTime")),
            findings=_present_findings(result),
            in_domain=bool(domain["in_domain"])
            if isinstance(domain, dict) and "in_domain" in domain
            else None,
            model=f"{model.get('name', '?')} {model.get('version', '?')}"
            if isinstance(model, dict)
            else None,
            trained_on_synthetic_data=bool(model["trained_on_synthetic_data"])
            if isinstance(model, dict) and "trained_on_synthetic_data" in model
            else None,
            result_missing=succeeded and result is None,
            complete=complete,
        )

    def _result(self, StudyInstanceUID: str, revision: int) -> dict[str, Any] | None:
        path = self._spool.absolute(Spool.result_path(StudyInstanceUID, revision))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            logger.warning(
                "study %s revision %d: no result file in the spool",
                short_hash(StudyInstanceUID),
                revision,
            )
            return None
        except (OSError, ValueError) as exc:
            logger.warning(
                "study %s revision %d: unreadable result file (%s)",
                short_hash(StudyInstanceUID),
                revision,
                type(exc).__name__,
            )
            return None
        return data if isinstance(data, dict) else None

    def _header(self, StudyInstanceUID: str, relative: str) -> dict[str, str] | None:
        """The header fields the worklist shows; None when the file cannot be read."""
        path: Path = self._spool.absolute(relative)
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (OSError, InvalidDicomError, ValueError) as exc:
            logger.warning(
                "study %s: cannot read the instance header (%s)",
                short_hash(StudyInstanceUID),
                type(exc).__name__,
            )
            return None
        return {k: str(ds.get(k, "") or "").strip() for k in _HEADER_TAGS if ds.get(k)}


def _failure(study: Study, analysis: Analysis | None) -> str | None:
    if analysis is not None and analysis.error:
        return analysis.error
    return study.reason


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _present_findings(result: dict[str, Any] | None) -> tuple[FindingSummary, ...]:
    findings = _get(result, "findings")
    if not isinstance(findings, list):
        return ()
    present: list[FindingSummary] = []
    for finding in findings:
        code = _get(finding, "code")
        if not (isinstance(finding, dict) and finding.get("present") is True):
            continue
        if not isinstance(code, dict):
            continue
        try:
            present.append(
                FindingSummary(
                    key=str(finding.get("key", "")),
                    scheme=str(code["scheme"]),
                    value=str(code["value"]),
                    meaning=str(code.get("meaning", "")),
                    probability=float(finding["probability"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    present.sort(key=lambda f: -f.probability)
    return tuple(present)


def _date(value: str | None) -> str | None:
    """DICOM DA (YYYYMMDD) as ISO 8601; other text as it is."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or None


def _time(value: str | None) -> str | None:
    """DICOM TM (HHMMSS.FFFFFF, parts optional) as HH:MM[:SS]; other text as it is."""
    if not value:
        return None
    whole = value.split(".")[0]
    if whole.isdigit() and len(whole) in (2, 4, 6):
        parts = [whole[i : i + 2] for i in range(0, len(whole), 2)]
        return ":".join(parts if len(parts) > 1 else [*parts, "00"])
    return value
