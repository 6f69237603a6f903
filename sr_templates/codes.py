"""Coded concepts used in the result objects.

Standard codes (DCM, SCT, UCUM, UMLS) are only those listed in the DICOM content mapping
resource as shipped with pydicom 3 (``pydicom.sr.codedict``) or checked in
``shared/DICOM_OUTPUTS.md``; ``tests/sr_templates`` checks each DCM/SCT/UCUM code below
against pydicom's tables. Concepts with no standard code (the model's gaze fixations, their
order, onset and dwell, the ABCDEF review steps and the Chest ImaGenome regions) use the
private coding scheme ``99GAZEX``, declared in CodingSchemeIdentificationSequence of every
object that uses it. No SCT or DCM code is invented here.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from model.abcdef import Step
from model.findings import Code as ModelCode

#: Private coding scheme designator: starts with "99" as PS3.16 8.2 asks of local schemes.
GAZEX_SCHEME = "99GAZEX"


def gazex_coding_scheme() -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item declaring ``99GAZEX``."""
    return CodingSchemeIdentificationItem(
        designator=GAZEX_SCHEME,
        name="GazeX Node local concepts",
        version="1",
        responsible_organization="GazeX Node project",
    )


def _gazex(value: str, meaning: str) -> Code:
    return Code(value, GAZEX_SCHEME, meaning)


# -- DICOM (DCM) -------------------------------------------------------------------------
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
PRESENCE_OF_PROPERTY = Code("121052", "DCM", "Presence of property")
FINDING = Code("121071", "DCM", "Finding")
IMPRESSION = Code("121073", "DCM", "Impression")
CENTER = Code("111010", "DCM", "Center")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
SALIENCY = Code("130404", "DCM", "Saliency")
#: TID 300's $Purpose for the region a measurement is inferred from (TID 320).
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
#: Free text about a measurement group: OHIF takes it as the group's label when it loads
#: the SR into its measurement panel (see ``templates.finding_group``).
COMMENT = Code("121106", "DCM", "Comment")

# -- UMLS --------------------------------------------------------------------------------
#: TID 1500 row 12: the report-level container of CODE and TEXT evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# -- SNOMED CT (SCT) ---------------------------------------------------------------------
SOURCE = Code("260753009", "SCT", "Source")
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain X-ray of chest")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
SPATIAL_AND_RELATIONAL_CONCEPT = Code("309825002", "SCT", "Spatial and Relational Concept")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")

TRACHEA = Code("44567001", "SCT", "Trachea")
CARINA = Code("28700002", "SCT", "Carina")
APEX_OF_LUNG = Code("86598002", "SCT", "Apex of Lung")
LUNG = Code("39607008", "SCT", "Lung")
HILUM_OF_LUNG = Code("46750007", "SCT", "Hilum of lung")
HEART = Code("80891009", "SCT", "Heart")
MEDIASTINUM = Code("72410000", "SCT", "Mediastinum")
AORTIC_ARCH = Code("57034009", "SCT", "Aortic arch")
SUPERIOR_VENA_CAVA = Code("48345005", "SCT", "Superior vena cava")
RIGHT_ATRIUM = Code("73829009", "SCT", "Right atrium")
DIAPHRAGM = Code("5798000", "SCT", "Diaphragm")
PLEURA = Code("3120008", "SCT", "Pleura")
ABDOMEN = Code("818981001", "SCT", "Abdomen")
SPINE = Code("421060004", "SCT", "Spine")
CLAVICLE = Code("51299004", "SCT", "Clavicle")
CHEST = Code("816094009", "SCT", "Chest")

# -- UCUM --------------------------------------------------------------------------------
PERCENT = Code("%", "UCUM", "Percent")
SECOND = Code("s", "UCUM", "second")
MILLISECOND = Code("ms", "UCUM", "millisecond")
NO_UNITS = Code("1", "UCUM", "no units")

# -- 99GAZEX (private) -------------------------------------------------------------------
GAZE_FIXATION = _gazex("FIX", "Model gaze fixation")
FIXATION_ORDER = _gazex("FIXORDER", "Fixation order")
#: On the first fixation at a point, the order of each fixation there (itself included): the
#: label lines OHIF draws, one per visit, so repeated visits read as a list, not a pile.
FIXATION_VISIT = _gazex("FIXVISIT", "Fixation")
FIXATION_ONSET = _gazex("FIXONSET", "Fixation onset")
FIXATION_DWELL = _gazex("FIXDWELL", "Fixation dwell time")
GAZE_PATCH_INDEX = _gazex("PATCH", "Gaze token image patch index")
INSPECTION_PATH = _gazex("PATH", "Model inspection path")
ABCDEF_STEP = _gazex("STEP", "ABCDEF review step")
STEP_NOT_INSPECTED = _gazex("NOTINSPECTED", "ABCDEF step not inspected by the model")
CHEST_IMAGENOME_REGION = _gazex("REGION", "Chest ImaGenome region")
INTENDED_USE = _gazex("INTENDEDUSE", "Intended use statement")
DOMAIN_CHECK = _gazex("DOMAIN", "Training domain check")
IN_DOMAIN = _gazex("INDOMAIN", "Within the training domain")
OUT_OF_DOMAIN = _gazex("OUTOFDOMAIN", "Outside the training domain")
DOMAIN_SCORE = _gazex("DOMAINSCORE", "Domain distance score")
DOMAIN_THRESHOLD = _gazex("DOMAINLIMIT", "Domain distance threshold")
DOMAIN_NOTICE = _gazex("DOMAINNOTICE", "Out of domain notice")
#: A finding's presence on a film outside the training domain: the model's output is kept
#: (its probability), but no decision is claimed.
NOT_ASSESSED = _gazex("NOTASSESSED", "Not assessed: film outside the training domain")

STEP_CODES: dict[Step, Code] = {step: _gazex(f"STEP-{step.value}", step.title) for step in Step}
STEP_BY_CODE_VALUE: dict[str, Step] = {code.value: step for step, code in STEP_CODES.items()}

#: A fixation visit's unit: UCUM's dimensionless 1 with the step letter as its annotation
#: ("{B}" is a valid UCUM unit, equal to 1). OHIF draws a NUM as "meaning: value unit", so
#: a visit's label line reads "Fixation: 3.00 {B}".
STEP_UNITS: dict[Step, Code] = {
    step: Code(f"{{{step.value}}}", "UCUM", f"step {step.value}") for step in Step
}


@dataclass(frozen=True)
class RegionCodes:
    """How one Chest ImaGenome region is coded: a private code naming it exactly, and the
    standard anatomy (with laterality) that a finding site can carry."""

    region: Code
    anatomy: Code
    laterality: Code | None = None


def _region(index: int, name: str, anatomy: Code, laterality: Code | None = None) -> RegionCodes:
    return RegionCodes(_gazex(f"CIG{index:02d}", name), anatomy, laterality)


#: Chest ImaGenome region name -> codes, one for each of ``model.abcdef.REGIONS`` (a test
#: checks). Code values are fixed forever: never renumber.
REGION_CODES: dict[str, RegionCodes] = {
    "trachea": _region(1, "trachea", TRACHEA),
    "carina": _region(2, "carina", CARINA),
    "right apical zone": _region(3, "right apical zone", APEX_OF_LUNG, RIGHT),
    "left apical zone": _region(4, "left apical zone", APEX_OF_LUNG, LEFT),
    "right upper lung zone": _region(5, "right upper lung zone", LUNG, RIGHT),
    "left upper lung zone": _region(6, "left upper lung zone", LUNG, LEFT),
    "right mid lung zone": _region(7, "right mid lung zone", LUNG, RIGHT),
    "left mid lung zone": _region(8, "left mid lung zone", LUNG, LEFT),
    "right lower lung zone": _region(9, "right lower lung zone", LUNG, RIGHT),
    "left lower lung zone": _region(10, "left lower lung zone", LUNG, LEFT),
    "right lung": _region(11, "right lung", LUNG, RIGHT),
    "left lung": _region(12, "left lung", LUNG, LEFT),
    "right hilar structures": _region(13, "right hilar structures", HILUM_OF_LUNG, RIGHT),
    "left hilar structures": _region(14, "left hilar structures", HILUM_OF_LUNG, LEFT),
    "cardiac silhouette": _region(15, "cardiac silhouette", HEART),
    "mediastinum": _region(16, "mediastinum", MEDIASTINUM),
    "upper mediastinum": _region(17, "upper mediastinum", MEDIASTINUM),
    "aortic arch": _region(18, "aortic arch", AORTIC_ARCH),
    "svc": _region(19, "svc", SUPERIOR_VENA_CAVA),
    "cavoatrial junction": _region(20, "cavoatrial junction", SUPERIOR_VENA_CAVA),
    "right atrium": _region(21, "right atrium", RIGHT_ATRIUM),
    "right hemidiaphragm": _region(22, "right hemidiaphragm", DIAPHRAGM, RIGHT),
    "left hemidiaphragm": _region(23, "left hemidiaphragm", DIAPHRAGM, LEFT),
    "right costophrenic angle": _region(24, "right costophrenic angle", PLEURA, RIGHT),
    "left costophrenic angle": _region(25, "left costophrenic angle", PLEURA, LEFT),
    "abdomen": _region(26, "abdomen", ABDOMEN),
    "spine": _region(27, "spine", SPINE),
    "right clavicle": _region(28, "right clavicle", CLAVICLE, RIGHT),
    "left clavicle": _region(29, "left clavicle", CLAVICLE, LEFT),
}

REGION_BY_CODE_VALUE: dict[str, str] = {c.region.value: name for name, c in REGION_CODES.items()}


def finding_probability(code: ModelCode) -> Code:
    """The NUM concept of a finding's probability, "<finding> probability" (private: no
    standard concept names both; OHIF draws a NUM as "meaning: value unit", so the label of
    a finding's box reads "Nodule probability: 87.00 %")."""
    return _gazex(f"PROB-{code.value}", f"{code.meaning} probability")


def from_model(code: ModelCode) -> Code:
    """A finding code of ``model.findings`` as a pydicom ``Code``."""
    return Code(code.value, code.scheme, code.meaning)


# -- Review of the AI findings by a person (``sr_templates.review``) ---------------------
# Neither DICOM's content mapping resource as shipped with pydicom 3 nor the DICOM code
# tables checked in shared/DICOM_OUTPUTS.md has a concept for a person's verdict on an AI
# result (accepted, rejected, modified) or for the reasons of a rejection, so they are
# private. When DICOM publishes codes for AI result assessment, map these onto them.
#: Designator of a reviewer's identifier when the review page gives no scheme of its own
#: (VerifyingObserverIdentificationCodeSequence), declared like ``99GAZEX``.
REVIEWER_ID_SCHEME = "99GAZEXSTAFF"

#: The concept of a reviewer's verdict on one finding, and its values.
REVIEWER_ASSESSMENT = _gazex("ASSESSMENT", "Reviewer assessment")
REVIEW_ACCEPTED = _gazex("ACCEPTED", "Accepted by the reviewer")
REVIEW_REJECTED = _gazex("REJECTED", "Rejected by the reviewer")
REVIEW_CORRECTED = _gazex("CORRECTED", "Location corrected by the reviewer")
REVIEW_ADDED = _gazex("ADDED", "Added by the reviewer")
#: Why a reviewer rejected an AI finding: the concept and its short list of values.
REJECTION_REASON = _gazex("REJECTREASON", "Reason for rejection")
REJECT_NOT_PRESENT = _gazex("RJ-NOTPRESENT", "Finding not present")
REJECT_WRONG_LOCATION = _gazex("RJ-LOCATION", "Wrong location")
REJECT_WRONG_FINDING = _gazex("RJ-FINDING", "Wrong finding type")
REJECT_ARTEFACT = _gazex("RJ-ARTEFACT", "Artefact or normal variant")
REJECT_INSIGNIFICANT = _gazex("RJ-INSIGNIFICANT", "Clinically insignificant")
REJECTION_REASONS: tuple[Code, ...] = (
    REJECT_NOT_PRESENT,
    REJECT_WRONG_LOCATION,
    REJECT_WRONG_FINDING,
    REJECT_ARTEFACT,
    REJECT_INSIGNIFICANT,
)
#: The statement of a reviewed document: who signed it, and what the AI part was.
REVIEW_STATEMENT = _gazex("REVIEWSTATEMENT", "Review statement")


def reviewer_coding_scheme(designator: str) -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item declaring a reviewer identifier scheme."""
    return CodingSchemeIdentificationItem(
        designator=designator,
        name="Reviewer identifiers of the GazeX review page",
        responsible_organization="GazeX Node project",
    )
