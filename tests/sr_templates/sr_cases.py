"""The scenarios of the result-object tests and helpers shared by their modules."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import sr_factories as f
from pydicom.dataset import Dataset

from model.abcdef import Step
from model.result import Box, DomainCheck, InferenceResult
from sr_templates.build import build_all
from sr_templates.cli import write_objects
from sr_templates.enum import ObjectKindValues


@dataclass(frozen=True)
class Case:
    """One scenario: the source image, the result, the revision and the written objects."""

    name: str
    source: Dataset
    result: InferenceResult
    revision: int
    objects: dict[ObjectKindValues, Dataset]
    paths: dict[ObjectKindValues, Path]


def _many_findings(ds: Dataset) -> InferenceResult:
    rows, columns = int(ds.Rows), int(ds.Columns)
    mask = np.zeros((rows, columns), dtype=bool)
    mask[130:170, 30:70] = True
    findings = (
        f.finding(
            "pleural_effusion",
            0.8734,
            box=Box(10.5, 160.25, 90.0, 230.0),
            region="right costophrenic angle",
            fixation_indices=(5,),
        ),
        f.finding(
            "consolidation",
            0.66,
            box=Box(30.0, 130.0, 70.0, 170.0),
            mask=mask,
            region="right lower lung zone",
            fixation_indices=(3,),
        ),
        f.finding("nodule", 0.91, box=Box(140.0, 60.0, 150.5, 70.5), region="left upper lung zone"),
        f.finding("endotracheal_tube", 0.97, box=Box(95.0, 0.0, 105.0, 60.0), region="trachea"),
        f.finding("cardiomegaly", 0.71, region="cardiac silhouette"),
        f.finding("pulmonary_edema", 0.52),
        f.finding("pneumothorax", 0.03),
        f.finding("atelectasis", 0.2),
        f.finding("mass", 0.01),
        f.finding("central_venous_catheter", 0.04),
        f.finding("nasogastric_tube", 0.02),
        f.finding("pacemaker", 0.0),
    )
    attention = np.random.default_rng(1).random((14, 12)).astype(np.float32)
    return f.make_result(
        ds,
        findings=findings,
        skipped=(Step.EXTERNAL,),
        attention=attention,
        fixations=f.trajectory(rows, columns, count=9),
    )


HUGE_SECTION = "Line one with HL7 delimiters | ^ & ~ \\ and DICOM ones \\ = ^.\n" + "\n".join(
    f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 40 for i in range(300)
)


def _cases() -> list[tuple[str, Dataset, InferenceResult, int]]:
    cases = []
    # CR, odd-sized, UTF-8 name with an ideographic group, every label, revision 2.
    ds = f.make_source(
        modality="CR",
        rows=241,
        columns=199,
        charset="ISO_IR 192",
        patient_name="Gómez^José=山田^太郎",
        seed=1,
    )
    cases.append(("cr_many_findings", ds, _many_findings(ds), 2))
    # DX for presentation, MONOCHROME1, one grounded finding and one image-level.
    ds = f.make_source(modality="DX", rows=160, columns=128, photometric="MONOCHROME1", seed=2)
    findings = (
        f.finding(
            "pneumothorax", 0.88, box=Box(80.0, 20.0, 120.0, 90.0), region="left apical zone"
        ),
        f.finding("cardiomegaly", 0.64),
    )
    cases.append(("dx_monochrome1", ds, f.make_result(ds, findings=findings), 1))
    # No finding at all present, one fixation only (no path), no window in the source.
    ds = f.make_source(modality="CR", rows=128, columns=128, window=False, seed=3)
    result = f.make_result(
        ds,
        findings=f.all_absent(),
        fixations=f.trajectory(128, 128, count=1),
        skipped=(Step.CIRCULATION, Step.DIAPHRAGM, Step.EXTERNAL, Step.FOREIGN_MATERIAL),
    )
    cases.append(("no_finding", ds, result, 1))
    # Latin-1 name, a finding without a box, a huge report with delimiters in it.
    ds = f.make_source(
        modality="CR",
        rows=99,
        columns=131,
        charset="ISO_IR 100",
        patient_name="Müller^Jürgen",
        seed=4,
    )
    report = f.report({Step.BREATHING: HUGE_SECTION}, impression="Huge report.\nSecond line.")
    findings = (f.finding("pulmonary_edema", 0.77, sentence="Edema | with ^ delimiters & more"),)
    cases.append(("huge_text", ds, f.make_result(ds, findings=findings, report_=report), 1))
    # A real CR's quirky header: PixelSpacing 0\0 and no ImagerPixelSpacing, MONOCHROME1,
    # 15 bits stored; a grounded finding with a mask, and an attention map.
    ds = f.make_source(modality="CR", rows=150, columns=120, photometric="MONOCHROME1", seed=6)
    ds.PixelSpacing = [0, 0]
    del ds.ImagerPixelSpacing
    ds.BitsStored, ds.HighBit = 15, 14
    ds.PixelData = (np.frombuffer(ds.PixelData, dtype=np.uint16) * 8).astype(np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 16384, 32768
    mask = np.zeros((150, 120), dtype=bool)
    mask[40:70, 20:50] = True
    findings = (
        f.finding("nodule", 0.83, box=Box(20.0, 40.0, 50.0, 70.0), mask=mask),
        f.finding("pneumothorax", 0.1),
    )
    attention = np.linspace(0.0, 1.0, 36, dtype=np.float32).reshape(6, 6)
    result = f.make_result(ds, findings=findings, attention=attention)
    cases.append(("cr_zero_spacing", ds, result, 1))
    # A film the domain gate found unlike the training films: nothing drawn as if known.
    ds = f.make_source(modality="DX", rows=128, columns=128, seed=7)
    findings = (
        f.finding("nodule", 0.91, box=Box(10.0, 12.0, 60.0, 70.0)),
        f.finding("cardiomegaly", 0.2),
    )
    result = replace(
        f.make_result(ds, findings=findings),
        domain=DomainCheck(score=80.5, threshold=23.2, in_domain=False, method="test/1"),
    )
    cases.append(("out_of_domain", ds, result, 1))
    # A model that output no label and no trajectory at all.
    ds = f.make_source(modality="DX", rows=64, columns=80, seed=5)
    result = f.make_result(ds, findings=(), fixations=(), skipped=tuple(Step))
    cases.append(("empty_result", ds, result, 1))
    return cases


def build_cases(out: Path) -> dict[str, Case]:
    """Build every case's objects and write them under ``out/<case>/``."""
    built = {}
    for name, ds, result, revision in _cases():
        objects = build_all(result, ds, revision=revision)
        paths = dict(zip(objects, write_objects(objects, out / name), strict=True))
        built[name] = Case(name, ds, result, revision, objects, paths)
    return built


def all_paths(cases: dict[str, Case]) -> list[tuple[str, ObjectKindValues, Path]]:
    return [(c.name, kind, path) for c in cases.values() for kind, path in c.paths.items()]


def issue_lines(output: str, level: str) -> list[str]:
    """dciodvfy's lines of ``level`` ("Error" or "Warning")."""
    return [line for line in output.splitlines() if re.match(rf"^{level}\b", line)]
