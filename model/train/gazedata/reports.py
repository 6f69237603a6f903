"""ABCDEF-structured reports, VQA pairs and sentence-box grounding pairs.

Reports are built from the ground truth of a synthetic case: one or more sentences per
ABCDEF step with positive and negated findings, laterality and severity, then an
impression. Sentences end with a period and contain no other period or semicolon, so
they survive the REFLACX token layout (punctuation as separate tokens) unchanged.

:func:`finding_mentions` reads finding keys back from free text (with simple negation
handling); loaders use it where a dataset label is coarser than ours (REFLACX "Support
devices", "Lung nodule or mass"), and :func:`grounding_pairs` pairs report sentences with
boxes for any :class:`~model.train.gazedata.sample.GazeSample`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model.abcdef import STEPS, Step
from model.findings import FINDING_KEYS, FINDINGS_BY_KEY
from model.train.gazedata.anatomy import Anatomy
from model.train.gazedata.pathology import FindingSpec
from model.train.gazedata.sample import GazeSample, LabeledBox, Report, TranscriptSentence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSentence:
    """One report sentence, the step it belongs to and the finding it asserts (if any)."""

    step: Step
    text: str
    key: str | None = None
    positive: bool = False


@dataclass(frozen=True)
class StructuredReport:
    sentences: tuple[ReportSentence, ...]
    impression: str

    def to_report(self) -> Report:
        sections = {
            step: " ".join(s.text for s in self.sentences if s.step == step) for step in STEPS
        }
        return Report(sections=sections, impression=self.impression)

    def by_step(self, step: Step) -> tuple[ReportSentence, ...]:
        return tuple(s for s in self.sentences if s.step == step)


def _side_word(side: str | None) -> str:
    return {"right": "right", "left": "left", "bilateral": "bilateral"}.get(side or "", "")


def _mm(spec: FindingSpec) -> int:
    return round(spec.size_cm * 10)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def finding_sentence(spec: FindingSpec) -> str:
    """The positive report sentence for one finding."""
    k = spec.key
    if k == "cardiomegaly":
        ctr = round(spec.size * 100)
        return f"The heart is enlarged with a cardiothoracic ratio of about {ctr} percent."
    if k == "pleural_effusion":
        if spec.side == "bilateral":
            return (
                f"{_cap(spec.grade)} bilateral pleural effusions blunting the costophrenic angles."
            )
        return (
            f"{_cap(spec.grade)} {spec.side} pleural effusion blunting the costophrenic angle "
            "with a meniscus."
        )
    if k == "pneumothorax":
        return (
            f"{_cap(spec.grade)} {spec.side} apical pneumothorax with a visible visceral "
            "pleural line."
        )
    if k == "consolidation":
        return f"{_cap(spec.grade)} consolidation in the {spec.region} with air bronchograms."
    if k == "pulmonary_edema":
        return f"{_cap(spec.grade)} pulmonary edema with perihilar haziness and Kerley B lines."
    if k == "atelectasis":
        return f"Plate-like atelectasis at the {spec.side} lung base."
    if k == "nodule":
        return f"A {_mm(spec)} mm nodule in the {spec.region}."
    if k == "mass":
        return f"A {_mm(spec)} mm lobulated mass in the {spec.region}."
    if k == "endotracheal_tube":
        cm = int(float(spec.detail or "4"))
        low = " and should be withdrawn" if cm <= 2 else ""
        return f"Endotracheal tube with the tip {cm} cm above the carina{low}."
    if k == "central_venous_catheter":
        where = "svc" if spec.grade == "svc" else spec.grade
        where = "superior vena cava" if where == "svc" else where
        return f"{_cap(spec.detail)} central venous catheter with the tip at the {where}."
    if k == "nasogastric_tube":
        return f"Nasogastric tube with the tip in the {spec.grade}."
    if k == "pacemaker":
        n = int(spec.size)
        leads = "one lead" if n == 1 else f"{n} leads"
        return f"{_cap(spec.side or 'left')}-sided pacemaker with {leads} in the right heart."
    raise ValueError(f"no sentence for {k!r}")  # pragma: no cover


_NEGATIVES: dict[Step, tuple[tuple[str, tuple[str, ...]], ...]] = {
    Step.BREATHING: (
        ("No focal consolidation.", ("consolidation", "atelectasis")),
        ("No pneumothorax.", ("pneumothorax",)),
        ("No pulmonary edema.", ("pulmonary_edema",)),
        ("No suspicious pulmonary nodule or mass.", ("nodule", "mass")),
    ),
    Step.CIRCULATION: (("Heart size is normal.", ("cardiomegaly",)),),
    Step.DIAPHRAGM: (
        ("No pleural effusion and the costophrenic angles are sharp.", ("pleural_effusion",)),
    ),
}


def build_report(findings: Sequence[FindingSpec], an: Anatomy) -> StructuredReport:
    """ABCDEF report with positives, negatives and an impression."""
    present = {f.key for f in findings}
    out: list[ReportSentence] = []
    rotated = abs(an.tilt) > 0.035
    out.append(
        ReportSentence(
            Step.AIRWAYS,
            "The trachea is midline and the patient is slightly rotated."
            if rotated
            else "The trachea is midline and the carina is normal.",
        )
    )
    for step in (Step.BREATHING, Step.CIRCULATION, Step.DIAPHRAGM):
        for f in findings:
            if FINDINGS_BY_KEY[f.key].step == step:
                out.append(ReportSentence(step, finding_sentence(f), f.key, True))
        for text, keys in _NEGATIVES.get(step, ()):
            if not present & set(keys):
                out.append(ReportSentence(step, text, keys[0], False))
        if step == Step.CIRCULATION:
            out.append(ReportSentence(step, "The mediastinal contours and hila are unremarkable."))
        if step == Step.DIAPHRAGM:
            out.append(ReportSentence(step, "The hemidiaphragms are well defined."))
    out.append(
        ReportSentence(
            Step.EXTERNAL, "No acute osseous abnormality and the soft tissues are unremarkable."
        )
    )
    devices = [f for f in findings if FINDINGS_BY_KEY[f.key].device]
    for f in devices:
        out.append(ReportSentence(Step.FOREIGN_MATERIAL, finding_sentence(f), f.key, True))
    if not devices:
        out.append(ReportSentence(Step.FOREIGN_MATERIAL, "No lines or tubes."))
    diseases = [f for f in findings if not FINDINGS_BY_KEY[f.key].device]
    if diseases:
        parts = []
        for f in diseases:
            word = FINDINGS_BY_KEY[f.key].display.lower()
            side = _side_word(f.side) if f.key not in ("cardiomegaly", "pulmonary_edema") else ""
            parts.append(
                " ".join(p for p in (f.grade if f.key != "atelectasis" else "", side, word) if p)
            )
        impression = _cap(", ".join(parts)) + "."
    else:
        impression = "No acute cardiopulmonary abnormality."
    if devices:
        impression = impression[:-1] + " and support devices as described."
    return StructuredReport(tuple(out), impression)


def build_vqa(
    findings: Sequence[FindingSpec], first_region: str | None
) -> tuple[tuple[str, str], ...]:
    """Question-answer pairs: presence, location, laterality, size/severity, devices, first look."""
    qa: list[tuple[str, str]] = []
    by_key = {f.key: f for f in findings}
    for key in FINDING_KEYS:
        word = FINDINGS_BY_KEY[key].display.lower()
        qa.append(
            (
                f"Is there a {word}?" if key != "pulmonary_edema" else f"Is there {word}?",
                "yes" if key in by_key else "no",
            )
        )
    for f in findings:
        word = FINDINGS_BY_KEY[f.key].display.lower()
        if f.region:
            qa.append((f"Where is the {word}?", f.region))
        if f.side in ("right", "left", "bilateral") and not FINDINGS_BY_KEY[f.key].device:
            qa.append(
                (f"Which side is the {word} on?", "both" if f.side == "bilateral" else f.side)
            )
        if f.key in ("pleural_effusion", "pneumothorax", "nodule", "mass"):
            qa.append((f"How large is the {word}?", f.grade))
        elif f.key in ("consolidation", "pulmonary_edema", "cardiomegaly"):
            qa.append((f"How severe is the {word}?", f.grade))
    devices = [f for f in findings if FINDINGS_BY_KEY[f.key].device]
    qa.append(("How many support devices are present?", str(len(devices))))
    for f in devices:
        if f.key == "endotracheal_tube":
            qa.append(
                (
                    "Where is the tip of the endotracheal tube?",
                    f"{int(float(f.detail))} cm above the carina",
                )
            )
        elif f.key == "central_venous_catheter":
            qa.append(("Where is the tip of the central venous catheter?", f.grade))
        elif f.key == "nasogastric_tube":
            qa.append(("Where is the tip of the nasogastric tube?", f.grade))
        elif f.key == "pacemaker":
            qa.append(("How many pacemaker leads are there?", str(int(f.size))))
    if first_region:
        qa.append(("Which region was inspected first?", first_region))
    return tuple(qa)


#: Words that name each finding in free text (lower case).
MENTIONS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "heart is enlarged", "enlarged cardiac", "enlarged heart"),
    "pleural_effusion": ("pleural effusion",),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation",),
    "pulmonary_edema": ("edema",),
    "atelectasis": ("atelectasis",),
    "nodule": ("nodule",),
    "mass": ("mass",),
    "endotracheal_tube": ("endotracheal tube", "et tube"),
    "central_venous_catheter": ("central venous catheter", "central line", "picc"),
    "nasogastric_tube": ("nasogastric tube", "feeding tube", "ng tube", "enteric tube"),
    "pacemaker": ("pacemaker",),
}

_NEGATION = re.compile(r"\b(no|without|negative for|resolved)\b")


def finding_mentions(text: str) -> dict[str, bool]:
    """Finding keys mentioned in ``text``: True when asserted, False when negated."""
    out: dict[str, bool] = {}
    for sentence in re.split(r"(?<=[.!?])\s+", text.lower()):
        negated = bool(_NEGATION.search(sentence))
        for key, words in MENTIONS.items():
            if any(w in sentence for w in words):
                # "no nodule or mass" negates both; a positive anywhere wins
                out[key] = out.get(key, False) or not negated
    return out


def grounding_pairs(sample: GazeSample) -> tuple[tuple[str, LabeledBox], ...]:
    """(sentence, box) pairs: each positive report sentence with the boxes of its findings."""
    if sample.report is None:
        return ()
    pairs: list[tuple[str, LabeledBox]] = []
    for step in STEPS:
        text = sample.report.sections.get(step, "")
        for sentence in re.split(r"(?<=\.)\s+", text):
            for key, positive in finding_mentions(sentence).items():
                if positive:
                    pairs.extend((sentence, b) for b in sample.boxes if b.key == key)
    return tuple(pairs)


_STEP_WORDS: tuple[tuple[Step, re.Pattern[str]], ...] = (
    (
        Step.FOREIGN_MATERIAL,
        re.compile(
            r"\b(tubes?|catheters?|pacemaker|devices?|wires?|leads?|central line|picc|port)\b"
        ),
    ),
    (Step.AIRWAYS, re.compile(r"\b(trachea|carina|airways?)\b")),
    (Step.DIAPHRAGM, re.compile(r"(effusion|costophrenic|diaphragm|subdiaphragmatic)")),
    (
        Step.BREATHING,
        re.compile(
            r"(lung|pneumothorax|consolidation|opacit|edema|atelectasis|nodule|mass|airspace)"
        ),
    ),
    (Step.CIRCULATION, re.compile(r"(heart|cardi|mediastin|hil|aort|vascular)")),
    (Step.EXTERNAL, re.compile(r"(bone|osseous|rib|fracture|soft tissue|spine|clavicle)")),
)


def sentence_step(text: str) -> Step | None:
    """The ABCDEF step a free-text sentence is about, from its words."""
    low = text.lower()
    for step, pattern in _STEP_WORDS:
        if pattern.search(low):
            return step
    return None


def structure_report(sentences: Sequence[TranscriptSentence]) -> Report | None:
    """ABCDEF-structure a dictation: last sentence is the impression, others by topic."""
    if not sentences:
        return None
    body, impression = sentences[:-1], sentences[-1].text
    parts: dict[Step, list[str]] = {s: [] for s in STEPS}
    current = Step.BREATHING
    for s in body:
        current = sentence_step(s.text) or current
        parts[current].append(s.text)
    return Report(sections={k: " ".join(v) for k, v in parts.items()}, impression=impression)


def vqa_from_labels(labels: Mapping[str, bool]) -> tuple[tuple[str, str], ...]:
    """Presence questions and the device count, from labels alone (real datasets)."""
    qa = []
    for key in FINDING_KEYS:
        word = FINDINGS_BY_KEY[key].display.lower()
        q = f"Is there {word}?" if key == "pulmonary_edema" else f"Is there a {word}?"
        qa.append((q, "yes" if labels.get(key) else "no"))
    n = sum(1 for k in FINDING_KEYS if FINDINGS_BY_KEY[k].device and labels.get(k))
    qa.append(("How many support devices are present?", str(n)))
    return tuple(qa)
