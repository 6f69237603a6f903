"""Factories for the HL7 tests: a source image's patient/study modules and a result.

Unique module name (pytest puts each test folder on sys.path through its conftest)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from model.abcdef import STEPS, Step
from model.findings import FINDINGS_BY_KEY
from model.result import (
    Box,
    Finding,
    Fixation,
    InferenceResult,
    ModelInfo,
    Report,
    ReportSection,
    SourceImage,
)

MODEL = ModelInfo(
    name="GazeX-CXR",
    version="0.3.1",
    checkpoint_sha256="ab12" * 16,
    trained_on_synthetic_data=True,
)

PARTIES = {
    "sending_application": "GAZEX",
    "sending_facility": "NODE-1",
    "receiving_application": "RIS",
    "receiving_facility": "St. Elsewhere",
}


def make_source(
    *,
    patient_name: str = "Doe^Jane",
    charset: str | None = None,
    accession: str = "ACC-7",
    issuer: str | None = "HOSP",
    sex: str = "F",
) -> Dataset:
    """The attributes of a CR image that the ORU^R01 uses (no pixel data needed)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = "PID|42"
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19800229"
    ds.PatientSex = sex
    ds.AccessionNumber = accession
    ds.StudyDate = "20250314"
    ds.StudyTime = "101500.123"
    ds.Rows = 200
    ds.Columns = 160
    return ds


def finding(key: str, probability: float, box: Box | None = None, sentence: str = "") -> Finding:
    kind = FINDINGS_BY_KEY[key]
    return Finding(
        key=key,
        code=kind.code,
        probability=probability,
        present=probability >= 0.5,
        step=kind.step,
        sentence=sentence or f"{kind.display}: {probability:.0%}.",
        box=box,
    )


def make_result(
    ds: Dataset,
    *,
    findings: tuple[Finding, ...] = (),
    sections: dict[Step, str] | None = None,
    impression: str = "No acute finding.",
    skipped: tuple[Step, ...] = (),
) -> InferenceResult:
    sections = sections or {}
    return InferenceResult(
        source=SourceImage(
            StudyInstanceUID=ds.StudyInstanceUID,
            SeriesInstanceUID=ds.SeriesInstanceUID,
            SOPInstanceUID=ds.SOPInstanceUID,
            SOPClassUID=ds.SOPClassUID,
            Rows=int(ds.Rows),
            Columns=int(ds.Columns),
        ),
        model=MODEL,
        findings=findings,
        trajectory=(
            Fixation(
                x=80.0,
                y=30.0,
                start_ms=0.0,
                duration_ms=210.0,
                region="trachea",
                step=Step.AIRWAYS,
                patch_index=3,
            ),
        ),
        report=Report(
            sections=tuple(
                ReportSection(step, sections.get(step, f"{step.title} unremarkable."))
                for step in STEPS
            ),
            impression=impression,
        ),
        coverage=tuple((step, step not in skipped) for step in STEPS),
    )


def every_finding() -> tuple[Finding, ...]:
    """All twelve labels, probabilities spread over [0, 1], one with a box."""
    keys = list(FINDINGS_BY_KEY)
    return tuple(
        finding(key, round(i / (len(keys) - 1), 3), box=Box(10, 10, 50, 60) if i == 3 else None)
        for i, key in enumerate(keys)
    )
