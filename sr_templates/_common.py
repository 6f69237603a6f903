"""What the SR, SEG and GSPS builders share: the header modules every object gets from the
result, the order of the findings, and the image attributes highdicom leaves out."""

from __future__ import annotations

from typing import TypedDict

from pydicom.dataset import Dataset

from model.result import Finding, InferenceResult, ModelInfo
from sr_templates import content, uids
from sr_templates.enum import ObjectKindValues


class Equipment(TypedDict):
    """General Equipment keyword arguments of highdicom's constructors."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


class Series(TypedDict):
    """Series and instance keyword arguments of highdicom's constructors."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    series_description: str


def equipment(result: InferenceResult) -> Equipment:
    """General Equipment from the model info (never placeholders)."""
    model = result.model
    return {
        "manufacturer": model.manufacturer,
        "manufacturer_model_name": model.name,
        "software_versions": model.version,
        "device_serial_number": model.checkpoint_sha256[:64],
    }


def series(result: InferenceResult, kind: ObjectKindValues, revision: int) -> Series:
    """The object's own series and instance (see ``uids`` and ``enum``)."""
    ids = uids.object_uids(result, kind, revision)
    return {
        "series_instance_uid": ids.SeriesInstanceUID,
        "series_number": ids.SeriesNumber,
        "sop_instance_uid": ids.SOPInstanceUID,
        "instance_number": ids.InstanceNumber,
        "series_description": kind.series_description,
    }


def content_description(model: ModelInfo) -> str:
    """ContentDescription (LO, at most 64 characters) of the SEG and the attention map: the
    overlay notice, shortened where needed so that it still ends in NOT FOR CLINICAL USE."""
    trained = model.trained_on_synthetic_data
    for notice in (
        content.short_notice(model),
        f"AI {model.name} {model.version}" + (", synthetic-data model" if trained else ""),
        f"AI {model.name}" + (", synthetic-data model" if trained else ""),
        "AI model" + (", trained on synthetic data" if trained else ""),
    ):
        if not notice.endswith("NOT FOR CLINICAL USE"):
            notice += ": NOT FOR CLINICAL USE"
        if len(notice) <= 64:
            return notice
    return "AI: NOT FOR CLINICAL USE"


def ordered_findings(result: InferenceResult) -> list[Finding]:
    """Grounded findings first, then image-level ones, then absent ones; each by
    decreasing probability."""

    def rank(finding: Finding) -> tuple[int, float]:
        tier = 0 if finding.present and finding.box is not None else 1 if finding.present else 2
        return (tier, -finding.probability)

    return sorted(result.findings, key=rank)


def claimed_findings(result: InferenceResult) -> list[Finding]:
    """The present findings, in ``ordered_findings`` order, that the objects state as the
    model's call (boxes, segments, labels); none on a film outside the training domain,
    where nothing is reported as if the model knew."""
    if result.out_of_domain:
        return []
    return [f for f in ordered_findings(result) if f.present]


def copy_image_attributes(obj: Dataset, source: Dataset, *keywords: str) -> None:
    """Copy what highdicom leaves out but the IOD asks for (see DICOM_OUTPUTS.md)."""
    for keyword in keywords:
        if keyword in source and keyword not in obj:
            obj[keyword] = source[keyword]
