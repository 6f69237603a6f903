"""The radiologist's signed review of the AI findings SR, as a verified SR revision.

``build_verified_sr(ai_sr, source, review)`` turns the findings SR that ``sr.build_findings_sr``
wrote (read back as a pydicom Dataset), the source image and the reviewer's decisions into a
new Comprehensive 3D SR, TID 1500 "Imaging Measurement Report", in its own series of the same
study (``enum.ReviewedObjectKindValues``). ``read_decisions`` reads the decisions back. Pure:
no I/O.

The document
------------
- Header: VerificationFlag VERIFIED with the reviewer in VerifyingObserverSequence (name,
  organisation, the signing time with its zone, and the identifier as a code when given),
  CompletionFlag COMPLETE, PreliminaryFlag FINAL, PredecessorDocumentsSequence listing the
  AI findings SR (and, from revision 2, the previous revision of this review: it replaces
  it). UIDs are derived like the other objects' (``uids.derive_uid``) from the source study
  and image, the model name and version, the kind ``findings-sr-verified`` and the review
  revision: a re-sign of the same revision overwrites, a new revision is a new instance of
  the same series (OHIF shows the newest).
- Observation context (TID 1001): the reviewer as person observer (TID 1003, role in
  procedure (121098, DCM, "Verifying")), then the model as device observer exactly as the
  AI SR has it.
- Content, per AI finding (a TID 1410 group of the AI SR, or a report-level
  "<finding> = Present" evaluation of it):

  - accept: as in the AI SR (the group with its tracking identifier and UID, probability
    NUM, ...) plus the CODE "Reviewer assessment = Accepted by the reviewer";
  - correct: the same with the reviewer's box as the closed POLYLINE (SELECTED FROM the
    source image) and "Reviewer assessment = Location corrected by the reviewer";
  - reject: not drawn; a report-level CODE "<finding> = Rejected by the reviewer" with
    HAS PROPERTIES the reason (a short coded list), the model's probability, step, region,
    sentence, and the AI group's Tracking Unique Identifier when it had one;
  - add (a finding the model did not claim): a new TID 1410 group with the reviewer's box,
    the finding code, presence Present and "Reviewer assessment = Added by the reviewer";
    no probability and no algorithm identification. The AI SR's "<finding> = Absent" for
    it is dropped (the document would contradict itself).

  The tracking identifier (what OHIF's panel lists; OHIF does not show CODE items) says
  the verdict too: "Nodule (accepted)", "Nodule (corrected)", "Nodule (added by
  reviewer)". Everything else of the AI SR (domain check, absent findings, the model's
  ABCDEF draft text, impression, steps not inspected) is kept; its intended-use statement,
  which says "not reviewed by a radiologist", is replaced by a review statement that names
  the reviewer and still says what the AI part was (trained on synthetic data where the AI
  SR says so) and that it is not for clinical use.

Codes
-----
No standard code was found for a person's verdict on an AI result or for the reasons of a
rejection: not in DICOM's content mapping resource as shipped with pydicom 3 (the nearest
rows, (122748, DCM, "False Positive defect finding") and (113001, DCM, "Rejected for
Quality Reasons"), belong to nuclear cardiology and to key-object rejection notes), not in
shared/DICOM_OUTPUTS.md, and IHE's AI result assessment work gave no code table that could
be checked here. So, as the project does for the gaze concepts, they are private
``99GAZEX`` codes (``codes.REVIEWER_ASSESSMENT`` and its values, ``codes.REJECTION_REASON``
and ``codes.REJECTION_REASONS``), declared in CodingSchemeIdentificationSequence. Standard
codes are used where they exist: (121098, DCM, "Verifying") as the reviewer's role,
(121071, DCM, "Finding"), (121052, DCM, "Presence of property") = (52101004, SCT,
"Present").

Errors
------
Every broken rule raises ``ValueError`` with one line: an input that is not an unverified
GazeX findings SR of this source image, a decision for a finding the AI SR does not claim
(or an "add" for one it does), an AI finding left undecided (a VERIFIED document vouches for
all of them), two decisions for one finding, a box outside the image, a rejection without a
reason from the list, a box or reason where the decision takes none, a signing time without
a zone, a revision below 1, a reviewer without a family name or without an organisation.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from enum import StrEnum

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DataElementSequence
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from model.findings import FINDING_TYPES
from model.result import Box
from sr_templates import codes, content, templates, uids
from sr_templates.enum import ReviewedObjectKindValues

KIND = ReviewedObjectKindValues.VERIFIED_FINDINGS_SR

#: SeriesDescription when the AI SR says its model was trained on synthetic data (64 chars).
SYNTHETIC_SERIES_DESCRIPTION = "GazeX findings reviewed by a person; synthetic-data AI, research"

_TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
_TRACKING_UID = Code("112040", "DCM", "Tracking Unique Identifier")
#: As highdicom writes it in TID 1410 (row "Finding Category").
_FINDING_CATEGORY = Code("276214006", "SCT", "Finding category")
_SUFFIX = {"accept": "accepted", "correct": "corrected", "add": "added by reviewer"}


class Decision(StrEnum):
    """What the reviewer did with one finding."""

    ACCEPT = "accept"
    REJECT = "reject"
    CORRECT = "correct"
    ADD = "add"


_ASSESSMENT = {
    Decision.ACCEPT: codes.REVIEW_ACCEPTED,
    Decision.CORRECT: codes.REVIEW_CORRECTED,
    Decision.ADD: codes.REVIEW_ADDED,
}
_DECISION_BY_ASSESSMENT = {code.value: decision for decision, code in _ASSESSMENT.items()}
_REASON_BY_VALUE = {code.value: code for code in codes.REJECTION_REASONS}


def _key(code: Code | hd.sr.CodedConcept) -> tuple[str, str]:
    scheme = code.scheme_designator
    return ("SCT" if scheme == "SRT" else scheme, code.value)


@dataclass(frozen=True)
class Reviewer:
    """The person who signs: the name as DICOM PN components, the organisation
    (VerifyingOrganization, type 1: when missing, the source image's InstitutionName is
    used) and an optional identifier (VerifyingObserverIdentificationCodeSequence), a code
    value of ``identifier_scheme``."""

    family_name: str
    given_name: str = ""
    middle_name: str = ""
    name_prefix: str = ""
    name_suffix: str = ""
    organization: str | None = None
    identifier: str | None = None
    identifier_scheme: str = codes.REVIEWER_ID_SCHEME

    def __post_init__(self) -> None:
        if not self.family_name.strip():
            raise ValueError("a reviewer needs a family name")
        for part in (
            self.family_name,
            self.given_name,
            self.middle_name,
            self.name_prefix,
            self.name_suffix,
        ):
            if len(part) > 64 or any(c in part for c in "^=\\") or not part.isprintable():
                raise ValueError(f"reviewer name component {part!r} is not a valid PN component")
        if self.organization is not None and not 0 < len(self.organization) <= 64:
            raise ValueError("reviewer organisation must be 1 to 64 characters (LO)")
        if self.identifier is not None and (
            not 0 < len(self.identifier) <= 16 or "\\" in self.identifier
        ):
            raise ValueError("reviewer identifier must be 1 to 16 characters (SH)")
        if not 0 < len(self.identifier_scheme) <= 16:
            raise ValueError("reviewer identifier scheme must be 1 to 16 characters (SH)")

    @property
    def display_name(self) -> str:
        """The name as read aloud: "Dr Ana Gómez"."""
        parts = (self.name_prefix, self.given_name, self.middle_name, self.family_name)
        return " ".join(p for p in parts if p.strip()) + (
            f", {self.name_suffix}" if self.name_suffix.strip() else ""
        )

    @property
    def person_name(self) -> PersonName:
        """The PN; a family name alone (an account name) keeps a trailing ``^`` so that it
        reads as a family name, not as the retired free-form name (PS3.5 6.2.1.2)."""
        name = PersonName.from_named_components(
            family_name=self.family_name,
            given_name=self.given_name,
            middle_name=self.middle_name,
            name_prefix=self.name_prefix,
            name_suffix=self.name_suffix,
        )
        return name if "^" in str(name) else PersonName(f"{name}^")


@dataclass(frozen=True)
class FindingDecision:
    """The reviewer's decision on one finding, named by its code as in the AI SR.

    ``reason`` (one of ``codes.REJECTION_REASONS``) only and always for a rejection;
    ``box`` (source pixels, (column, row), SCOORD convention) only and always for a
    correction or an addition. Boxes are stored as FL (float32) in the SR.
    """

    code: Code
    decision: Decision
    reason: Code | None = None
    box: Box | None = None

    def __post_init__(self) -> None:
        name = self.code.meaning
        if self.decision is Decision.REJECT:
            if self.reason is None:
                raise ValueError(f"rejecting {name} needs a reason from codes.REJECTION_REASONS")
            if _key(self.reason) not in {_key(r) for r in codes.REJECTION_REASONS}:
                raise ValueError(f"{self.reason} is not one of codes.REJECTION_REASONS")
        elif self.reason is not None:
            raise ValueError(f"a reason only goes with a rejection, not with {self.decision}")
        needs_box = self.decision in (Decision.CORRECT, Decision.ADD)
        if needs_box and self.box is None:
            raise ValueError(f"{self.decision} {name} needs the reviewer's box")
        if not needs_box and self.box is not None:
            raise ValueError(f"{self.decision} {name} takes no box")


@dataclass(frozen=True)
class Review:
    """A signed review: who, when (a datetime with its zone), the decisions and the
    revision of the review (1 for the first signature; a re-sign of the same revision
    overwrites it, a new revision replaces it)."""

    reviewer: Reviewer
    signed_at: datetime.datetime
    decisions: tuple[FindingDecision, ...] = field(default=())
    revision: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "decisions", tuple(self.decisions))
        if self.signed_at.tzinfo is None or self.signed_at.utcoffset() is None:
            raise ValueError("signed_at needs a time zone (VerificationDateTime carries it)")
        if self.revision < 1:
            raise ValueError(f"review revision must be 1 or more, got {self.revision}")
        seen: set[tuple[str, str]] = set()
        for decision in self.decisions:
            if _key(decision.code) in seen:
                raise ValueError(f"two decisions for {decision.code.meaning}")
            seen.add(_key(decision.code))


# -- the AI findings SR, as read --------------------------------------------------------


@dataclass(frozen=True)
class _AIFinding:
    """A finding the AI SR claims: its TID 1410 group, or its report-level evaluation."""

    code: Code
    group: Dataset | None
    evaluation: Dataset | None


@dataclass(frozen=True)
class _AIDocument:
    ds: Dataset
    items: list[Dataset]
    groups: list[Dataset]
    evaluations: list[Dataset]
    claimed: dict[tuple[str, str], _AIFinding]
    model_name: str
    model_version: str
    synthetic: bool


def _name(item: Dataset) -> tuple[str, str] | None:
    if "ConceptNameCodeSequence" not in item:
        return None
    concept = item.ConceptNameCodeSequence[0]
    return _key(Code(concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning))


def _code_value(item: Dataset) -> Code:
    concept = item.ConceptCodeSequence[0]
    return Code(concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning)


def _concept(item: Dataset) -> Code:
    concept = item.ConceptNameCodeSequence[0]
    return Code(concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning)


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def _child(item: Dataset, name: Code, value_type: str | None = None) -> Dataset | None:
    for child in _children(item):
        if _name(child) == _key(name) and (value_type is None or child.ValueType == value_type):
            return child
    return None


def _is_finding_evaluation(item: Dataset) -> bool:
    """A report-level "<finding> = Present | Absent | Not assessed" of the AI SR."""
    name = _name(item)
    return item.ValueType == "CODE" and name is not None and name[0] != codes.GAZEX_SCHEME


def _read_ai_sr(ai_sr: Dataset, source: Dataset) -> _AIDocument:
    if ai_sr.get("SOPClassUID") != Comprehensive3DSRStorage:
        raise ValueError("the AI findings SR must be a Comprehensive 3D SR")
    if ai_sr.get("VerificationFlag") != "UNVERIFIED":
        raise ValueError(
            f"the AI findings SR is {ai_sr.get('VerificationFlag')!r}: a review signs a "
            "revision of the unverified AI SR, not of a signed one"
        )
    if _name(ai_sr) != _key(codes.IMAGING_MEASUREMENT_REPORT):
        raise ValueError("the AI SR's root is not (126000, DCM, 'Imaging Measurement Report')")
    if ai_sr.get("StudyInstanceUID") != source.get("StudyInstanceUID"):
        raise ValueError("the AI SR and the source image are not of the same study")
    try:  # typed content items (a copy), so that copies of them go into new items
        tree = Dataset()
        tree.ContentSequence = hd.sr.ContentSequence.from_sequence(
            copy.deepcopy(ai_sr.ContentSequence)
        )
    except (AttributeError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"the AI SR's content tree does not parse: {error}") from error
    items = _children(tree)
    library = next((i for i in items if _name(i) == _key(dcm_codes.DCM.ImageLibrary)), None)
    images = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in (_children(library) if library is not None else [])
        for i in _children(group)
        if i.ValueType == "IMAGE"
    ]
    if images != [source.get("SOPInstanceUID")]:
        raise ValueError("the AI SR's Image Library does not hold exactly the source image")
    if not any(i.get("RelationshipType") == "HAS OBS CONTEXT" for i in items):
        raise ValueError("the AI SR has no observation context (the model as device observer)")
    model_name = str(ai_sr.get("ManufacturerModelName", ""))
    model_version = str(ai_sr.get("SoftwareVersions", ""))
    if not model_name or not model_version:
        raise ValueError("the AI SR names no model (ManufacturerModelName, SoftwareVersions)")
    measurements = _child(tree, dcm_codes.DCM.ImagingMeasurements)
    groups = _children(measurements) if measurements is not None else []
    container = _child(tree, codes.QUALITATIVE_EVALUATIONS)
    evaluations = _children(container) if container is not None else []
    claimed: dict[tuple[str, str], _AIFinding] = {}
    for group in groups:
        finding = _child(group, codes.FINDING, "CODE")
        if finding is not None:
            code = _code_value(finding)
            claimed[_key(code)] = _AIFinding(code, group, None)
    for item in evaluations:
        if _is_finding_evaluation(item) and _key(_code_value(item)) == _key(codes.PRESENT):
            claimed.setdefault(_key(_concept(item)), _AIFinding(_concept(item), None, item))
    use = _child(container, codes.INTENDED_USE, "TEXT") if container is not None else None
    synthetic = use is not None and "synthetic data" in str(use.TextValue)
    return _AIDocument(
        ai_sr, items, groups, evaluations, claimed, model_name, model_version, synthetic
    )


# -- the checks --------------------------------------------------------------------------


def _check_review(ai: _AIDocument, review: Review, source: Dataset) -> None:
    rows, columns = int(source.Rows), int(source.Columns)
    for decision in review.decisions:
        name = decision.code.meaning
        claimed = _key(decision.code) in ai.claimed
        if decision.decision is Decision.ADD and claimed:
            raise ValueError(f"the AI SR already claims {name}: correct it rather than add it")
        if decision.decision is not Decision.ADD and not claimed:
            raise ValueError(f"the AI SR has no finding {name} to {decision.decision}")
        box = decision.box
        if box is not None and (box.x0 < 0 or box.y0 < 0 or box.x1 > columns or box.y1 > rows):
            raise ValueError(f"box of {name} {box} is outside the {columns}x{rows} source image")
    decided = {_key(d.code) for d in review.decisions}
    undecided = [f.code.meaning for k, f in ai.claimed.items() if k not in decided]
    if undecided:
        raise ValueError(
            f"AI findings left undecided: {', '.join(undecided)} (a VERIFIED document needs a "
            "decision for each)"
        )


# -- the content -------------------------------------------------------------------------


def _box_data(box: Box) -> list[float]:
    return [float(v) for v in content.box_polyline(box).ravel()]


def _assessment(decision: Decision) -> hd.sr.CodeContentItem:
    return content.code(codes.REVIEWER_ASSESSMENT, _ASSESSMENT[decision])


def _set_tracking_identifier(group: Dataset, suffix: str) -> None:
    item = _child(group, _TRACKING_IDENTIFIER, "TEXT")
    if item is not None:
        item.TextValue = f"{item.TextValue} ({suffix})"


def _reviewed_group(ai_group: Dataset, decision: FindingDecision) -> Dataset:
    """The AI group, copied, with the reviewer's verdict (and box, for a correction): the
    box the group draws and the one its probability is INFERRED FROM both become the
    reviewer's (OHIF restores the latter into its measurement panel), and the label
    (Comment) says the verdict: "Nodule 87 % (corrected)"."""
    group = copy.deepcopy(ai_group)
    suffix = _SUFFIX[decision.decision]
    _set_tracking_identifier(group, suffix)
    if decision.box is not None:
        nested = [c for i in _children(group) if i.ValueType == "NUM" for c in _children(i)]
        for scoord in [*_children(group), *nested]:
            if scoord.ValueType == "SCOORD":
                scoord.GraphicType = "POLYLINE"
                scoord.GraphicData = _box_data(decision.box)
    label = _child(group, codes.COMMENT, "TEXT")
    if label is not None:
        label.TextValue = f"{label.TextValue} ({suffix})"
    group.ContentSequence.append(_assessment(decision.decision))
    return group


def _category(code: Code) -> Code:
    for finding_type in FINDING_TYPES:
        if _key(codes.from_model(finding_type.code)) == _key(code) and finding_type.device:
            return codes.PHYSICAL_OBJECT
    return codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE


def _new_group(
    ai: _AIDocument,
    source: Dataset,
    decision: FindingDecision,
    evaluation: Dataset | None,
) -> Dataset:
    """A TID 1410 group drawn from the reviewer's box: an added finding, or an image-level
    AI finding (``evaluation``) the reviewer located. The tracking UID is keyed on the code,
    so it is stable across review revisions."""
    assert decision.box is not None
    scheme, value = _key(decision.code)
    measurements: list[hd.sr.Measurement] = []
    evaluations = [
        content.presence_evaluation(True),
        hd.sr.QualitativeEvaluation(
            name=codes.REVIEWER_ASSESSMENT, value=_ASSESSMENT[decision.decision]
        ),
    ]
    sentence: str | None = None
    for child in _children(evaluation) if evaluation is not None else []:
        if child.ValueType == "NUM":
            number = child.MeasuredValueSequence[0]
            unit = number.MeasurementUnitsCodeSequence[0]
            measurements.append(
                content.number(
                    _concept(child),
                    float(number.NumericValue),
                    Code(unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning),
                )
            )
        elif child.ValueType == "CODE":
            evaluations.append(
                hd.sr.QualitativeEvaluation(name=_concept(child), value=_code_value(child))
            )
        elif child.ValueType == "TEXT" and _name(child) == _key(codes.FINDING):
            sentence = str(child.TextValue)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.derive_uid(
                str(source.StudyInstanceUID),
                str(source.SOPInstanceUID),
                ai.model_name,
                "tracking",
                f"review-{scheme}-{value}",
            ),
            identifier=f"{decision.code.meaning} ({_SUFFIX[decision.decision]})",
        ),
        referenced_region=content.image_region(
            hd.sr.GraphicTypeValues.POLYLINE, content.box_polyline(decision.box), source
        ),
        finding_type=decision.code,
        finding_category=_category(decision.code),
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    container: Dataset = group[0]
    # The label a viewer lists it by (OHIF's measurement panel reads the Comment).
    container.ContentSequence.append(
        content.text(codes.COMMENT, f"{decision.code.meaning} ({_SUFFIX[decision.decision]})")
    )
    if sentence:
        container.ContentSequence.append(content.text(codes.FINDING, sentence))
    return container


def _rejection(finding: _AIFinding, reason: Code) -> hd.sr.CodeContentItem:
    """ "<finding> = Rejected by the reviewer", HAS PROPERTIES the reason, the model's
    probability, step, region and sentence, and the AI group's tracking UID."""
    properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    item = hd.sr.CodeContentItem(
        name=finding.code,
        value=codes.REVIEW_REJECTED,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    children: list[Dataset] = [
        hd.sr.CodeContentItem(
            name=codes.REJECTION_REASON, value=reason, relationship_type=properties
        )
    ]
    origin = finding.group if finding.group is not None else finding.evaluation
    assert origin is not None
    dropped = {
        _key(codes.PRESENCE_OF_PROPERTY),
        _key(codes.FINDING),  # the finding is the item's name
        _key(_FINDING_CATEGORY),
    }
    for child in _children(origin):
        if child.ValueType not in ("NUM", "CODE", "TEXT"):
            continue  # the box: a rejected finding is not drawn
        if child.get("RelationshipType") in ("HAS OBS CONTEXT", "HAS CONCEPT MOD"):
            continue  # tracking (its UID follows) and algorithm identification
        if child.ValueType == "CODE" and _name(child) in dropped:
            continue
        moved = copy.deepcopy(child)
        moved.RelationshipType = "HAS PROPERTIES"
        children.append(moved)
    if finding.group is not None:
        tracking = _child(finding.group, _TRACKING_UID, "UIDREF")
        if tracking is not None:
            children.append(
                hd.sr.UIDRefContentItem(
                    name=_TRACKING_UID, value=tracking.UID, relationship_type=properties
                )
            )
    item.ContentSequence = DataElementSequence(children)
    return item


def _review_statement(ai: _AIDocument, review: Review, organization: str) -> str:
    who = review.reviewer.display_name
    trained = "trained on synthetic data only, " if ai.synthetic else ""
    return (
        f"Reviewed and signed by {who} ({organization}) at {review.signed_at.isoformat()}, "
        f"revision {review.revision}: each finding is marked accepted, corrected, rejected or "
        f"added by the reviewer. The findings were proposed by the AI model {ai.model_name} "
        f"{ai.model_version} ({trained}research software); the ABCDEF text and impression "
        "are the model's draft, not edited by the reviewer. Not for clinical use."
    )


def _evaluations(
    ai: _AIDocument, review: Review, rejected: list[hd.sr.CodeContentItem], statement: str
) -> list[Dataset]:
    """The AI SR's report-level items with the decisions applied, rejections of drawn AI
    findings after the domain verdict, and the review statement instead of the AI's."""
    by_code = {_key(d.code): d for d in review.decisions}
    out: list[Dataset] = []
    domain = {_key(codes.DOMAIN_CHECK), _key(codes.DOMAIN_NOTICE)}
    leading = 0
    for item in ai.evaluations:
        name = _name(item)
        if name in domain and leading == len(out):
            out.append(copy.deepcopy(item))
            leading += 1
            continue
        if name == _key(codes.INTENDED_USE):
            out.append(content.text(codes.REVIEW_STATEMENT, statement))
            continue
        decision = by_code.get(name) if _is_finding_evaluation(item) and name else None
        if decision is None:
            out.append(copy.deepcopy(item))
        elif decision.decision is Decision.ACCEPT:
            kept = copy.deepcopy(item)
            kept.ContentSequence.append(
                hd.sr.CodeContentItem(
                    name=codes.REVIEWER_ASSESSMENT,
                    value=codes.REVIEW_ACCEPTED,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                )
            )
            out.append(kept)
        elif decision.decision is Decision.REJECT:
            assert decision.reason is not None
            finding = ai.claimed[_key(decision.code)]
            out.append(_rejection(finding, decision.reason))
        # CORRECT and ADD: the finding is now a group; its evaluation goes.
    out[leading:leading] = rejected
    return out


def _person_observer(reviewer: Reviewer, organization: str) -> list[Dataset]:
    return list(
        hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=str(reviewer.person_name),
                organization_name=organization,
                role_in_procedure=dcm_codes.DCM.Verifying,
            ),
        )
    )


def _predecessors(ai: _AIDocument, source: Dataset, review: Review) -> list[Dataset]:
    ai_ref = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(ai_ref, keyword, ai.ds[keyword].value)
    refs = [ai_ref]
    if review.revision > 1:
        previous = Dataset()
        previous.StudyInstanceUID = source.StudyInstanceUID
        previous.SeriesInstanceUID, previous.SOPInstanceUID = verified_sr_uids(
            ai.ds, source, review.revision - 1
        )
        previous.SOPClassUID = Comprehensive3DSRStorage
        refs.append(previous)
    return refs


def verified_sr_uids(ai_sr: Dataset, source: Dataset, revision: int) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of revision ``revision`` of the review of
    ``ai_sr``: keyed like ``uids.object_uids`` on (source study, source image, model name
    and version, kind), plus the revision for the instance."""
    if revision < 1:
        raise ValueError(f"review revision must be 1 or more, got {revision}")
    series_key = (
        str(source.StudyInstanceUID),
        str(source.SOPInstanceUID),
        str(ai_sr.ManufacturerModelName),
        str(ai_sr.SoftwareVersions),
        KIND.value,
    )
    return (
        uids.derive_uid(*series_key, "series"),
        uids.derive_uid(*series_key, "instance", str(revision)),
    )


def build_verified_sr(ai_sr: Dataset, source: Dataset, review: Review) -> hd.sr.Comprehensive3DSR:
    """The signed review of ``ai_sr`` (the findings SR of ``source``) as a verified
    Comprehensive 3D SR, TID 1500 (see the module docstring)."""
    ai = _read_ai_sr(ai_sr, source)
    _check_review(ai, review, source)
    organization = review.reviewer.organization or str(source.get("InstitutionName", ""))
    if not organization:
        raise ValueError(
            "VerifyingOrganization is required: give the reviewer's organisation (the source "
            "image has no InstitutionName)"
        )
    decisions = {_key(d.code): d for d in review.decisions}
    groups: list[Dataset] = []
    for ai_group in ai.groups:
        finding = _child(ai_group, codes.FINDING, "CODE")
        decision = decisions.get(_key(_code_value(finding))) if finding is not None else None
        if decision is None:
            groups.append(copy.deepcopy(ai_group))  # not a finding group: kept as it is
        elif decision.decision is not Decision.REJECT:
            groups.append(_reviewed_group(ai_group, decision))
    for decision in review.decisions:
        claimed = ai.claimed.get(_key(decision.code))
        if decision.decision is Decision.ADD or (
            decision.decision is Decision.CORRECT and claimed and claimed.group is None
        ):
            evaluation = claimed.evaluation if claimed is not None else None
            groups.append(_new_group(ai, source, decision, evaluation))
    rejected = [
        _rejection(ai.claimed[_key(d.code)], d.reason)
        for d in review.decisions
        if d.decision is Decision.REJECT
        and d.reason is not None
        and ai.claimed[_key(d.code)].group is not None
    ]
    statement = _review_statement(ai, review, organization)
    evaluations = _evaluations(ai, review, rejected, statement)

    items: list[Dataset] = []
    for item in ai.items:
        name = _name(item)
        if item.get("RelationshipType") == "HAS OBS CONTEXT" and not any(
            i.get("RelationshipType") == "HAS OBS CONTEXT" for i in items
        ):
            items += _person_observer(review.reviewer, organization)
        if name == _key(dcm_codes.DCM.ImageLibrary):
            items.append(templates.image_library(source))
            if groups:  # where TID 1500 has them, whether or not the AI SR drew anything
                items.append(_container(dcm_codes.DCM.ImagingMeasurements, groups))
        elif name == _key(codes.QUALITATIVE_EVALUATIONS):
            items.append(_container(codes.QUALITATIVE_EVALUATIONS, evaluations))
        elif name != _key(dcm_codes.DCM.ImagingMeasurements):
            items.append(copy.deepcopy(item))
    return _document(ai, source, review, organization, items)


def _container(name: Code, items: list[Dataset]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = DataElementSequence(items)
    return container


def _coding_schemes(reviewer: Reviewer) -> list[CodingSchemeIdentificationItem]:
    schemes = [codes.gazex_coding_scheme()]
    if reviewer.identifier is not None and reviewer.identifier_scheme.startswith("99"):
        schemes.append(codes.reviewer_coding_scheme(reviewer.identifier_scheme))
    return schemes


def _document(
    ai: _AIDocument,
    source: Dataset,
    review: Review,
    organization: str,
    items: list[Dataset],
) -> hd.sr.Comprehensive3DSR:
    """The SR document holding ``items`` under the TID 1500 root, built like
    ``sr._document``: highdicom's constructor gets the root with the Image Library only,
    then the whole tree goes in and ``from_dataset`` parses and checks it."""
    library = next(
        i
        for i in items
        if isinstance(i, hd.sr.ContainerContentItem)
        and _name(i) == _key(dcm_codes.DCM.ImageLibrary)
    )
    root = hd.sr.ContainerContentItem(name=codes.IMAGING_MEASUREMENT_REPORT, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence([library])
    series_uid, instance_uid = verified_sr_uids(ai.ds, source, review.revision)
    reviewer = review.reviewer
    shell = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=root,
        series_instance_uid=series_uid,
        series_number=KIND.series_number,
        sop_instance_uid=instance_uid,
        instance_number=review.revision,
        series_description=SYNTHETIC_SERIES_DESCRIPTION
        if ai.synthetic
        else KIND.series_description,
        manufacturer=str(ai.ds.get("Manufacturer", "")) or None,
        manufacturer_model_name=ai.model_name,
        software_versions=ai.model_version,
        device_serial_number=str(ai.ds.get("DeviceSerialNumber", "")) or None,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=str(reviewer.person_name),
        verifying_organization=organization,
        previous_versions=_predecessors(ai, source, review),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        coding_schemes=_coding_schemes(reviewer),
    )
    observer = shell.VerifyingObserverSequence[0]
    observer.VerificationDateTime = _dt(review.signed_at)
    if reviewer.identifier is not None:
        identifier = Dataset()
        identifier.CodeValue = reviewer.identifier
        identifier.CodingSchemeDesignator = reviewer.identifier_scheme
        identifier.CodeMeaning = reviewer.display_name[:64]
        observer.VerifyingObserverIdentificationCodeSequence = [identifier]
    _fit_character_set(
        shell, [str(reviewer.person_name), organization, reviewer.display_name, *_texts(items)]
    )
    shell.ContentSequence = DataElementSequence(items)
    return hd.sr.Comprehensive3DSR.from_dataset(shell, copy=False)


def _texts(items: list[Dataset]) -> list[str]:
    return [
        str(item.get("TextValue", item.get("PersonName", "")))
        for item in items
        if item.get("ValueType") in ("TEXT", "PNAME")
    ] + [text for item in items for text in _texts(_children(item))]


def _fit_character_set(ds: Dataset, texts: list[str]) -> None:
    """Switch to UTF-8 (ISO_IR 192) when the source image's character set, which highdicom
    copied, cannot encode what the reviewer brought (a name outside ASCII on an ASCII film)."""
    charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    if isinstance(charset, str) and charset not in ("ISO_IR 6", ""):
        codec = python_encoding.get(charset, "ascii")
    else:  # the default repertoire, or ISO 2022 code extensions: keep to ASCII
        codec = "ascii"
    try:
        for text in texts:
            text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        ds.SpecificCharacterSet = "ISO_IR 192"


def _dt(moment: datetime.datetime) -> str:
    """A DT value with the zone offset: YYYYMMDDHHMMSS.FFFFFF&ZZXX."""
    return moment.strftime("%Y%m%d%H%M%S.%f%z")


# -- reading back ------------------------------------------------------------------------


def _box_of(group: Dataset) -> Box:
    scoord = next(i for i in _children(group) if i.ValueType == "SCOORD")
    points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
    return Box(
        float(points[:, 0].min()),
        float(points[:, 1].min()),
        float(points[:, 0].max()),
        float(points[:, 1].max()),
    )


def read_decisions(ds: Dataset) -> list[FindingDecision]:
    """The decisions a verified findings SR (``build_verified_sr``) carries, in document
    order: the drawn groups first, then the report-level ones. Boxes are read from the
    SCOORD (FL, float32) of corrected and added findings."""
    if ds.get("VerificationFlag") != "VERIFIED":
        raise ValueError("not a verified SR: VerificationFlag is not VERIFIED")
    decisions: list[FindingDecision] = []
    measurements = _child(ds, dcm_codes.DCM.ImagingMeasurements)
    for group in _children(measurements) if measurements is not None else []:
        finding = _child(group, codes.FINDING, "CODE")
        assessment = _child(group, codes.REVIEWER_ASSESSMENT, "CODE")
        if finding is None:
            continue
        if assessment is None:
            raise ValueError(f"group of {_code_value(finding).meaning} has no reviewer assessment")
        decision = _DECISION_BY_ASSESSMENT.get(_code_value(assessment).value)
        if decision is None:
            raise ValueError(f"unknown reviewer assessment {_code_value(assessment)}")
        box = None if decision is Decision.ACCEPT else _box_of(group)
        decisions.append(FindingDecision(_code_value(finding), decision, box=box))
    container = _child(ds, codes.QUALITATIVE_EVALUATIONS)
    for item in _children(container) if container is not None else []:
        if not _is_finding_evaluation(item):
            continue
        if _key(_code_value(item)) == _key(codes.REVIEW_REJECTED):
            reason = _child(item, codes.REJECTION_REASON, "CODE")
            if reason is None:
                raise ValueError(f"rejection of {_concept(item).meaning} gives no reason")
            coded = _REASON_BY_VALUE.get(_code_value(reason).value, _code_value(reason))
            decisions.append(FindingDecision(_concept(item), Decision.REJECT, reason=coded))
        elif _child(item, codes.REVIEWER_ASSESSMENT, "CODE") is not None:
            decisions.append(FindingDecision(_concept(item), Decision.ACCEPT))
    return decisions
