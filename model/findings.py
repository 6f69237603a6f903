"""The findings the model reports, with their codes and the ABCDEF step each belongs to.

Codes are SNOMED CT (designator ``SCT``) where the concept is verified, RadLex (``RADLEX``)
otherwise; see ``shared/DICOM_OUTPUTS.md`` for where each was checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.abcdef import Step


@dataclass(frozen=True)
class Code:
    """A coded concept: (value, scheme designator, meaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class FindingType:
    """One label of the model's finding head."""

    key: str
    code: Code
    step: Step
    #: True for lines, tubes and devices: reported as present/absent, never as disease.
    device: bool = False

    @property
    def display(self) -> str:
        return self.code.meaning


FINDING_TYPES: tuple[FindingType, ...] = (
    FindingType("cardiomegaly", Code("8186001", "SCT", "Cardiomegaly"), Step.CIRCULATION),
    FindingType("pleural_effusion", Code("60046008", "SCT", "Pleural effusion"), Step.DIAPHRAGM),
    FindingType("pneumothorax", Code("36118008", "SCT", "Pneumothorax"), Step.BREATHING),
    FindingType("consolidation", Code("RID43255", "RADLEX", "Consolidation"), Step.BREATHING),
    FindingType("pulmonary_edema", Code("19242006", "SCT", "Pulmonary edema"), Step.BREATHING),
    FindingType("atelectasis", Code("RID28493", "RADLEX", "Atelectasis"), Step.BREATHING),
    FindingType("nodule", Code("27925004", "SCT", "Nodule"), Step.BREATHING),
    FindingType("mass", Code("4147007", "SCT", "Mass"), Step.BREATHING),
    FindingType(
        "endotracheal_tube",
        Code("26412008", "SCT", "Endotracheal tube"),
        Step.FOREIGN_MATERIAL,
        device=True,
    ),
    FindingType(
        "central_venous_catheter",
        Code("52124006", "SCT", "Central venous catheter"),
        Step.FOREIGN_MATERIAL,
        device=True,
    ),
    FindingType(
        "nasogastric_tube",
        Code("25062003", "SCT", "Feeding tube"),
        Step.FOREIGN_MATERIAL,
        device=True,
    ),
    FindingType(
        "pacemaker",
        Code("14106009", "SCT", "Cardiac pacemaker"),
        Step.FOREIGN_MATERIAL,
        device=True,
    ),
)

FINDINGS_BY_KEY: dict[str, FindingType] = {f.key: f for f in FINDING_TYPES}
FINDING_KEYS: tuple[str, ...] = tuple(FINDINGS_BY_KEY)
#: The lines, tubes and devices among the findings (reported present/absent, never as disease).
DEVICE_KEYS: tuple[str, ...] = tuple(k for k in FINDING_KEYS if FINDINGS_BY_KEY[k].device)
