"""Factories for the result-object tests: synthetic CR/DX source images and results.

Everything is built in code; no file is committed. Module name is unique across test
folders (pytest's default import mode puts each test folder on sys.path).
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

MODEL = ModelInfo(
    name="GazeX-CXR",
    version="0.3.1",
    checkpoint_sha256="3f2a" * 16,
    trained_on_synthetic_data=True,
    manufacturer="GazeX Node project",
)


def make_source(
    *,
    modality: str = "CR",
    rows: int = 240,
    columns: int = 200,
    photometric: str = "MONOCHROME2",
    patient_name: str = "Doe^Jane",
    charset: str | None = None,
    window: bool = True,
    seed: int = 0,
) -> Dataset:
    """A small but complete CR or DX (for presentation) chest image with pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_PRESENTATION
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    today = datetime.date(2025, 3, 14).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC-2025-0042"
    ds.Modality = modality
    ds.Manufacturer = "Synthetic Radiography Inc."
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.PatientName = patient_name
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "S1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["R", "F"] if modality == "CR" else ["L", "F"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    if window:
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    lungs = np.exp(
        -(((xx - columns * 0.3) / (columns * 0.15)) ** 2 + ((yy - rows * 0.5) / (rows * 0.3)) ** 2)
    )
    lungs += np.exp(
        -(((xx - columns * 0.7) / (columns * 0.15)) ** 2 + ((yy - rows * 0.5) / (rows * 0.3)) ** 2)
    )
    pixels = (3000 - 2000 * lungs + rng.normal(0, 40, (rows, columns))).clip(0, 4095)
    if photometric == "MONOCHROME1":
        pixels = 4095 - pixels
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.ImageLaterality = "U"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
        ds.DetectorType = "DIRECT"
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.PixelSpacing = [0.2, 0.2]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PositionerType = "NONE"
        ds.PatientPosition = ""
        ds.AcquisitionContextSequence = []
        ds.ReferencedPerformedProcedureStepSequence = []
        anatomy = Dataset()
        anatomy.CodeValue = "43799004"
        anatomy.CodingSchemeDesignator = "SCT"
        anatomy.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = [anatomy]
    else:  # a CR gives its plate's spacing, as most do (see the cr_zero_spacing case)
        ds.ImagerPixelSpacing = [0.15, 0.15]
    return ds


def source_image(ds: Dataset) -> SourceImage:
    return SourceImage(
        StudyInstanceUID=ds.StudyInstanceUID,
        SeriesInstanceUID=ds.SeriesInstanceUID,
        SOPInstanceUID=ds.SOPInstanceUID,
        SOPClassUID=ds.SOPClassUID,
        Rows=int(ds.Rows),
        Columns=int(ds.Columns),
    )


def finding(
    key: str,
    probability: float,
    *,
    present: bool | None = None,
    box: Box | None = None,
    sentence: str | None = None,
    region: str | None = None,
    fixation_indices: tuple[int, ...] = (),
    mask: Any = None,
) -> Finding:
    kind = FINDINGS_BY_KEY[key]
    is_present = probability >= 0.5 if present is None else present
    return Finding(
        key=key,
        code=kind.code,
        probability=probability,
        present=is_present,
        step=kind.step,
        sentence=sentence
        if sentence is not None
        else (f"{kind.display} is seen." if is_present else f"No {kind.display.lower()}."),
        box=box,
        mask=mask,
        fixation_indices=fixation_indices,
        region=region,
    )


def trajectory(rows: int, columns: int, count: int = 6) -> tuple[Fixation, ...]:
    """A reading path that walks A->F over plausible regions, in increasing time."""
    plan = [
        (0.50, 0.15, "trachea", Step.AIRWAYS),
        (0.30, 0.35, "right upper lung zone", Step.BREATHING),
        (0.70, 0.35, "left upper lung zone", Step.BREATHING),
        (0.30, 0.65, "right lower lung zone", Step.BREATHING),
        (0.55, 0.55, "cardiac silhouette", Step.CIRCULATION),
        (0.25, 0.85, "right costophrenic angle", Step.DIAPHRAGM),
        (0.75, 0.85, "left hemidiaphragm", Step.DIAPHRAGM),
        (0.10, 0.30, "right clavicle", Step.EXTERNAL),
        (0.50, 0.20, "upper mediastinum", Step.FOREIGN_MATERIAL),
    ]
    fixations = []
    for i in range(count):
        fx, fy, region, step = plan[i % len(plan)]
        fixations.append(
            Fixation(
                x=round(fx * columns, 2),
                y=round(fy * rows, 2),
                start_ms=137.5 + 311.25 * i,
                duration_ms=180.0 + 17.5 * (i % 5),
                region=region,
                step=step,
                patch_index=(int(fy * 16) * 16 + int(fx * 16)),
            )
        )
    return tuple(fixations)


def report(text_of: dict[Step, str] | None = None, impression: str | None = None) -> Report:
    text_of = text_of or {}
    defaults = {
        Step.AIRWAYS: "Trachea central.",
        Step.BREATHING: "Right lower zone opacity; lungs otherwise clear.",
        Step.CIRCULATION: "Heart size normal.",
        Step.DIAPHRAGM: "Blunted right costophrenic angle.",
        Step.EXTERNAL: "No bony abnormality.",
        Step.FOREIGN_MATERIAL: "No lines or tubes.",
    }
    return Report(
        sections=tuple(ReportSection(step, text_of.get(step, defaults[step])) for step in STEPS),
        impression=impression if impression is not None else "Small right pleural effusion.",
    )


def make_result(
    ds: Dataset,
    *,
    findings: tuple[Finding, ...] = (),
    fixations: tuple[Fixation, ...] | None = None,
    report_: Report | None = None,
    skipped: tuple[Step, ...] = (),
    attention: Any = None,
    model: ModelInfo = MODEL,
) -> InferenceResult:
    rows, columns = int(ds.Rows), int(ds.Columns)
    return InferenceResult(
        source=source_image(ds),
        model=model,
        findings=findings,
        trajectory=trajectory(rows, columns) if fixations is None else fixations,
        report=report_ or report(),
        coverage=tuple((step, step not in skipped) for step in STEPS),
        attention=attention,
    )


def all_absent(probability: float = 0.05) -> tuple[Finding, ...]:
    """Every label of the finding head, none present."""
    return tuple(finding(key, probability, present=False) for key in FINDINGS_BY_KEY)


def with_model(result: InferenceResult, **changes: Any) -> InferenceResult:
    return replace(result, model=replace(result.model, **changes))
