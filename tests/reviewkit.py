"""Helpers for the signing tests: an analysed study as the worker leaves it (the film in
the spool, its rows, the result JSON and the AI findings SR with its Output row), and a
logged-in httpx client of the review page."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
from factories import radiograph
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Instance,
    Output,
    Study,
    StudyState,
    utcnow,
)
from dicom_node.review.accounts import Accounts
from dicom_node.review.worklist import study_key
from dicom_node.spool import Spool
from model.abcdef import STEPS
from model.findings import FINDINGS_BY_KEY
from model.result import (
    Box,
    DomainCheck,
    Finding,
    Fixation,
    InferenceResult,
    ModelInfo,
    Report,
    ReportSection,
    SourceImage,
)
from sr_templates.enum import ObjectKindValues
from sr_templates.sr import build_findings_sr

PASSWORD = "correct horse battery staple"
PATIENT = ("Müller", "SECRET-PID-4711")  # what tests/factories.radiograph writes
MODEL = ModelInfo("GazeX-CXR", "0.3.1", "3f2a" * 16, True)
ROWS, COLUMNS = 64, 48
#: The model's present findings: pneumothorax (critical by default) and a nodule.
PRESENT = {
    "pneumothorax": (0.91, Box(5.0, 4.0, 20.0, 30.0)),
    "nodule": (0.72, Box(30.0, 10.0, 40.0, 20.0)),
}


def code_key(name: str) -> str:
    code = FINDINGS_BY_KEY[name].code
    return f"{code.scheme}:{code.value}"


def result_of(ds: Dataset, in_domain: bool = True) -> InferenceResult:
    findings = tuple(
        Finding(
            key=key,
            code=kind.code,
            probability=PRESENT[key][0] if key in PRESENT else 0.05,
            present=key in PRESENT,
            step=kind.step,
            sentence=f"{kind.display} is seen." if key in PRESENT else "",
            box=PRESENT[key][1] if key in PRESENT else None,
            fixation_indices=(0,) if key in PRESENT else (),
        )
        for key, kind in FINDINGS_BY_KEY.items()
    )
    return InferenceResult(
        source=SourceImage(
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            int(ds.Rows),
            int(ds.Columns),
        ),
        model=MODEL,
        findings=findings,
        trajectory=(Fixation(10.0, 10.0, 0.0, 200.0, "trachea", STEPS[0], 0),),
        report=Report(tuple(ReportSection(step, "Normal.") for step in STEPS), "Normal."),
        coverage=tuple((step, True) for step in STEPS),
        domain=DomainCheck(2.0 if in_domain else 9.0, 5.0, in_domain, "test"),
    )


@dataclass(frozen=True)
class Analysed:
    StudyInstanceUID: str
    key: str
    source: Dataset
    result: InferenceResult


def _save(spool: Spool, relative: Path, ds: Dataset) -> int:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    spool.write(relative, buffer.getvalue())
    return len(buffer.getvalue())


def analysed_study(
    sessions: sessionmaker[Session],
    spool: Spool,
    *,
    in_domain: bool = True,
    institution: str | None = "St Elsewhere Radiology",
    state: StudyState = StudyState.DONE,
) -> Analysed:
    """A study sent by STORESCU and analysed: its film, result JSON and AI findings SR in
    the spool, and its rows (study, instance, analysis, the SR's Output row)."""
    ds = radiograph(study=generate_uid(), rows=ROWS, columns=COLUMNS)
    if institution:
        ds.InstitutionName = institution
    relative = spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = _save(spool, relative, ds)
    result = result_of(ds, in_domain)
    spool.write(Spool.result_path(ds.StudyInstanceUID, 1), result.to_json().encode())
    ai_sr = build_findings_sr(result, ds)
    sr_relative = spool.relative_path(
        ds.StudyInstanceUID, ai_sr.SeriesInstanceUID, ai_sr.SOPInstanceUID, kind="out"
    )
    _save(spool, sr_relative, ai_sr)
    with sessions.begin() as session:
        study = Study(
            StudyInstanceUID=ds.StudyInstanceUID,
            state=state,
            Modality="DX",
            calling_ae="STORESCU",
        )
        session.add(study)
        session.flush()
        session.add(
            Instance(
                study_id=study.id,
                SeriesInstanceUID=ds.SeriesInstanceUID,
                SOPInstanceUID=ds.SOPInstanceUID,
                SOPClassUID=ds.SOPClassUID,
                TransferSyntaxUID=ds.file_meta.TransferSyntaxUID,
                Modality="DX",
                ViewPosition="PA",
                path=str(relative),
                size=size,
                calling_ae="STORESCU",
            )
        )
        analysis = Analysis(
            study_id=study.id,
            revision=1,
            state=AnalysisState.SUCCEEDED,
            finished_at=utcnow(),
            domain_score=2.0 if in_domain else 9.0,
            out_of_domain=not in_domain,
        )
        session.add(analysis)
        session.flush()
        session.add(
            Output(
                analysis_id=analysis.id,
                kind=str(ObjectKindValues.FINDINGS_SR),
                SOPInstanceUID=str(ai_sr.SOPInstanceUID),
                SOPClassUID=str(ai_sr.SOPClassUID),
                SeriesInstanceUID=str(ai_sr.SeriesInstanceUID),
                path=sr_relative.as_posix(),
            )
        )
    return Analysed(str(ds.StudyInstanceUID), study_key(str(ds.StudyInstanceUID)), ds, result)


def add_user(
    sessions: sessionmaker[Session], name: str = "alice", role: str = "radiologist"
) -> None:
    Accounts(sessions).add(name, role, PASSWORD)


def login(url: str, name: str = "alice") -> tuple[httpx.Client, str]:
    """A client with a session cookie, and the session's CSRF token."""
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    page = client.get("/review/login")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    answer = client.post(
        "/review/login", data={"name": name, "password": PASSWORD, "csrf": match.group(1)}
    )
    assert answer.status_code == 303, answer.text
    csrf: str = client.get("/review/api/me").json()["csrf"]
    return client, csrf


def reject_nodule_add_effusion() -> dict[str, object]:
    """Accept the pneumothorax, reject the nodule, add a pleural effusion."""
    return {
        "decisions": [
            {"finding": code_key("pneumothorax"), "decision": "accept"},
            {"finding": code_key("nodule"), "decision": "reject", "reason": "RJ-ARTEFACT"},
        ],
        "added": [
            {
                "finding": code_key("pleural_effusion"),
                "box": {"x0": 2.0, "y0": 40.0, "x1": 30.0, "y1": 60.0},
            }
        ],
    }
