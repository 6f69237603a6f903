"""One story per film: the report, the answers and the finding decisions agree (issue 16).

The finding head's decisions (probability at or above the checkpoint's threshold) are the
one state of a result. The language model writes the report and the VQA answers on its own,
after the gaze tokens, and can say otherwise ("Heart size is normal." beside cardiomegaly
0.574; "No lines or tubes." beside a feeding tube). This module reads what a text claims
about the findings and makes it agree with the decisions:

- :func:`claims` is the rule-based extractor with negation: per sentence, the findings it
  asserts or negates, including the template's normal statements ("Heart size is normal.")
  and group statements ("No lines or tubes.", "No acute cardiopulmonary abnormality.",
  "... support devices as described.");
- :func:`agree` keeps every sentence that agrees with the decisions or claims nothing, and
  replaces a sentence that contradicts them with the findings' own sentences for their
  decisions (:func:`own_sentences`);
- :func:`decided_answer` answers a presence or device-count question from the decisions;
- :func:`locate_text` makes the location words of a finding's sentences ("a nodule in the
  left upper lung zone", "small right pleural effusion") name the region where the finding's
  box lies (``model.anatomy_prior.box_regions``), and :func:`located_answer` answers "Where
  is the X?" and "Which side ...?" from it, so the text and the drawing tell one story.

Nothing here reads pixels or the model: it is plain text against a mapping of decisions, so
the same functions measure the contradictions (``benchmarks/bench_consistency.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from model.abcdef import STEPS, Step
from model.findings import DEVICE_KEYS, FINDING_KEYS, FINDINGS_BY_KEY

#: Findings that are disease, not lines and tubes.
DISEASE_KEYS: tuple[str, ...] = tuple(k for k in FINDING_KEYS if k not in DEVICE_KEYS)

#: Words that name each finding (lower case; a plural "s"/"es" also matches).
PHRASES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "cardiomegaly",
        "heart is enlarged",
        "enlarged heart",
        "enlarged cardiac",
        "cardiac enlargement",
    ),
    "pleural_effusion": ("pleural effusion", "effusion"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "consolidation": ("consolidation",),
    "pulmonary_edema": ("pulmonary edema", "edema", "oedema"),
    "atelectasis": ("atelectasis",),
    "nodule": ("nodule",),
    "mass": ("mass",),
    "endotracheal_tube": ("endotracheal tube", "et tube"),
    "central_venous_catheter": ("central venous catheter", "central line", "picc", "cvc"),
    "nasogastric_tube": ("nasogastric tube", "feeding tube", "ng tube", "enteric tube"),
    "pacemaker": ("pacemaker",),
}
#: Statements that a finding is absent without naming it.
NORMAL_STATEMENTS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("heart size is normal", "normal heart size", "heart is not enlarged"),
}
#: Group statements: (phrase, keys, positive). Positive: at least one of the keys is present;
#: negative: none of them is.
GROUP_STATEMENTS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("no lines or tubes", DEVICE_KEYS, False),
    ("no support devices", DEVICE_KEYS, False),
    ("no foreign material", DEVICE_KEYS, False),
    ("no acute cardiopulmonary abnormality", DISEASE_KEYS, False),
    ("no abnormality", DISEASE_KEYS, False),
    ("support devices as described", DEVICE_KEYS, True),
)
_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|no evidence of|resolved)\b")
#: A negation does not reach past these ("no effusion but a small pneumothorax").
_SCOPE_END = re.compile(r"\b(but|however|although)\b|[;:]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SUPPORT_CLAUSE = re.compile(r"[\s,]*\b(and\s+)?support devices as described", re.IGNORECASE)
#: The text of a section whose ABCDEF step the trajectory did not inspect.
NOT_INSPECTED = "Not inspected by the model's trajectory."
#: What step F says when it was inspected, no device is present and its text says nothing
#: about lines and tubes: the step is reported, not left blank.
NO_FOREIGN_MATERIAL = "No foreign material seen."


def _pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"\b" + re.escape(phrase) + r"(?:e?s)?\b")


_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    key: tuple(_pattern(p) for p in phrases) for key, phrases in PHRASES.items()
}


@dataclass(frozen=True)
class Claims:
    """What one text says about the findings."""

    #: Finding key -> True (asserted) or False (negated); a positive anywhere wins.
    findings: dict[str, bool]
    #: (keys, positive): "at least one of these is present" or "none of these is".
    groups: tuple[tuple[tuple[str, ...], bool], ...] = ()

    def contradictions(self, present: Mapping[str, bool]) -> tuple[str, ...]:
        """Finding keys the text contradicts: asserted but decided absent, negated but
        decided present; a group statement contradicts every key of the group it is wrong
        about (a positive group statement with no key present: all of them)."""
        out: list[str] = [k for k, said in self.findings.items() if said != present.get(k, False)]
        for keys, positive in self.groups:
            if positive and not any(present.get(k, False) for k in keys):
                out.extend(keys)
            elif not positive:
                out.extend(k for k in keys if present.get(k, False))
        return tuple(dict.fromkeys(out))

    @property
    def empty(self) -> bool:
        return not self.findings and not self.groups


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _negated(sentence: str, position: int) -> bool:
    """Whether a negation cue precedes ``position`` within its scope."""
    before = sentence[:position]
    cues = list(_NEGATION.finditer(before))
    if not cues:
        return False
    return _SCOPE_END.search(before, cues[-1].end()) is None


def claims(text: str) -> Claims:
    """The rule-based extractor with negation: findings ``text`` asserts or negates."""
    found: dict[str, bool] = {}
    groups: list[tuple[tuple[str, ...], bool]] = []
    for sentence in sentences(text.lower()):
        for phrase, keys, positive in GROUP_STATEMENTS:
            if phrase in sentence:
                groups.append((keys, positive))
        for key, statements in NORMAL_STATEMENTS.items():
            if any(s in sentence for s in statements):
                found[key] = found.get(key, False)
        for key, patterns in _PATTERNS.items():
            for pattern in patterns:
                for match in pattern.finditer(sentence):
                    found[key] = found.get(key, False) or not _negated(sentence, match.start())
    return Claims(found, tuple(groups))


def _display(key: str) -> str:
    return FINDINGS_BY_KEY[key].display


def _joined(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def own_sentences(keys: Iterable[str], present: Mapping[str, bool]) -> list[str]:
    """The findings' own sentences for their decisions: "X present." for each present one,
    then one "No a, b or c." for the absent ones."""
    keys = list(dict.fromkeys(keys))
    out = [f"{_display(k)} present." for k in keys if present.get(k, False)]
    absent = [_display(k).lower() for k in keys if not present.get(k, False)]
    if absent:
        out.append(f"No {_joined(absent)}.")
    return out


def agree(text: str, present: Mapping[str, bool], *, negatives: bool = True) -> str:
    """``text`` with every sentence that contradicts the decisions replaced by the own
    sentences of the findings it mentions (``negatives=False``: of the present ones only, as
    in an impression); sentences that agree or claim nothing are kept. "... and support
    devices as described" loses that clause when no device is present."""
    out: list[str] = []
    no_device = not any(present.get(k, False) for k in DEVICE_KEYS)
    for sentence in sentences(text):
        if no_device and _SUPPORT_CLAUSE.search(sentence):
            sentence = _SUPPORT_CLAUSE.sub("", sentence).strip(" ,")
            if not sentence.rstrip(".").strip():
                continue
        said = claims(sentence)
        if not said.contradictions(present):
            out.append(sentence)
            continue
        keys = [*said.findings, *(k for keys, _ in said.groups for k in keys)]
        if not negatives:
            keys = [k for k in keys if present.get(k, False)]
        out.extend(own_sentences(keys, present))
    return " ".join(dict.fromkeys(out))


def missing(text: str, present: Mapping[str, bool], keys: Iterable[str]) -> list[str]:
    """Present findings among ``keys`` that ``text`` does not assert."""
    said = claims(text)
    covered = {k for k, v in said.findings.items() if v}
    for group, positive in said.groups:
        if positive:
            covered |= set(group)
    return [k for k in keys if present.get(k, False) and k not in covered]


def agree_report(
    sections: Mapping[Step, str],
    impression: str,
    present: Mapping[str, bool],
    inspected: Iterable[Step],
) -> tuple[dict[Step, str], str]:
    """The report made to tell the decisions' story.

    A step the trajectory did not inspect says so (:data:`NOT_INSPECTED`), followed by the
    finding head's present findings of that step (the head reads the whole film), instead of
    the generated text as if the step had been reviewed; an inspected step F with no device
    present that says nothing about lines and tubes says :data:`NO_FOREIGN_MATERIAL`. Other
    sections and the impression keep the model's sentences that agree (:func:`agree`); a
    present finding the sections do not assert gets its own sentence in its step's section,
    and the impression names the present findings it does not ("Also found by the model:
    ..."). An empty impression stays empty (the caller writes one from the findings)."""
    visited = set(inspected)
    out: dict[Step, str] = {}
    for step in STEPS:
        if step not in visited:
            found = [
                k for k in FINDING_KEYS if FINDINGS_BY_KEY[k].step is step and present.get(k, False)
            ]
            out[step] = " ".join([NOT_INSPECTED, *own_sentences(found, present)])
        else:
            out[step] = agree(sections.get(step, ""), present)
    body = " ".join(out.values())
    for key in missing(body, present, FINDING_KEYS):
        step = FINDINGS_BY_KEY[key].step
        out[step] = " ".join(p for p in (out[step], *own_sentences([key], present)) if p)
    foreign = Step.FOREIGN_MATERIAL
    if foreign in visited and not any(present.get(k, False) for k in DEVICE_KEYS):
        said = claims(out[foreign])
        if not any(k in said.findings for k in DEVICE_KEYS) and not said.groups:
            out[foreign] = " ".join(p for p in (out[foreign], NO_FOREIGN_MATERIAL) if p)
    if not impression.strip():
        return out, ""
    text = agree(impression, present, negatives=False)
    left = missing(text, present, DISEASE_KEYS)
    if left:
        names = ", ".join(_display(k).lower() for k in left)
        text = f"{text} Also found by the model: {names}." if text else f"Model findings: {names}."
    if missing(text, present, DEVICE_KEYS):
        text = f"{text} Support devices as described.".strip()
    return out, text or "No abnormality detected by the model."


_PRESENCE = re.compile(r"^\s*(is|are|does|do|any)\b|\bpresent\?\s*$")
_DEVICE_COUNT = re.compile(r"\bhow many\b.*\b(support devices|devices|lines)\b")
_ABOUT_ONE = re.compile(r"^\s*(where|which side|how large|how severe|how many .* leads)\b")


def decided_answer(question: str, present: Mapping[str, bool]) -> str | None:
    """The answer the decisions give to ``question``, or None when they give none.

    Presence questions ("Is there a nodule or mass?") -> "yes" when any finding they name is
    present, else "no"; "How many support devices are present?" -> the number present;
    questions about one finding's site, side, size, severity or leads, when that finding is
    decided absent -> "none: no <finding> was found". Other questions are the model's own."""
    q = question.lower()
    if _DEVICE_COUNT.search(q):
        return str(sum(1 for k in DEVICE_KEYS if present.get(k, False)))
    said = claims(q)
    keys = list(said.findings)
    if not keys:
        return None
    if _PRESENCE.search(q):
        return "yes" if any(present.get(k, False) for k in keys) else "no"
    if _ABOUT_ONE.search(q) and not any(present.get(k, False) for k in keys):
        return f"none: no {_joined([_display(k).lower() for k in keys])} was found"
    return None


# -- where: the location words of a finding follow its box (issue 16, item 2) -------------

#: Findings whose sentence names a lung zone ("A 12 mm nodule in the left upper lung zone").
ZONE_KEYS: tuple[str, ...] = ("nodule", "mass", "consolidation")
#: Findings whose sentence names a side ("Small right pleural effusion ...").
SIDE_KEYS: tuple[str, ...] = ("pleural_effusion", "pneumothorax", "atelectasis")
_ZONE = re.compile(r"\b(right|left) (apical|upper lung|mid lung|lower lung) zone\b", re.IGNORECASE)
_SIDE = re.compile(r"\b(right|left)\b", re.IGNORECASE)
_BILATERAL = re.compile(r"\b(bilateral|both)\b", re.IGNORECASE)


def side_of(region: str) -> str | None:
    """ "right" or "left" for a sided region name (the patient's side), else None."""
    first = region.split(" ", 1)[0]
    return first if first in ("right", "left") else None


def named_location(sentence: str, key: str) -> str | None:
    """The location ``sentence`` gives a finding: the lung zone it names (nodule, mass,
    consolidation), the side (effusion, pneumothorax, atelectasis; None for "bilateral"),
    or None when it names none."""
    if key in ZONE_KEYS:
        match = _ZONE.search(sentence)
        return match.group(0).lower() if match else None
    if key in SIDE_KEYS and not _BILATERAL.search(sentence):
        match = _SIDE.search(sentence)
        return match.group(0).lower() if match else None
    return None


def locate_sentence(sentence: str, key: str, region: str) -> str:
    """``sentence`` with the location words of finding ``key`` made to name ``region``,
    where its box lies: a lung zone phrase becomes ``region`` (when it is a lung zone), a
    side word the region's side (not in a "bilateral" sentence). Other sentences are kept."""
    if key in ZONE_KEYS and region.endswith(" zone") and side_of(region):
        return _ZONE.sub(region, sentence)
    side = side_of(region)
    if key in SIDE_KEYS and side and not _BILATERAL.search(sentence):

        def keep_case(match: re.Match[str]) -> str:
            return side.capitalize() if match.group(0)[0].isupper() else side

        return _SIDE.sub(keep_case, sentence)
    return sentence


def locate_text(text: str, regions: Mapping[str, str]) -> str:
    """``text`` with each sentence that asserts exactly one located finding (a key of
    ``regions``: finding -> the region of its box) naming that region
    (:func:`locate_sentence`; a finding's own "X present." gains "in the <zone>" or "on the
    <side>"), clause by clause where a sentence asserts several; other sentences are kept."""
    out: list[str] = []
    for sentence in sentences(text):
        asserted = [k for k, said in claims(sentence).findings.items() if said and k in regions]
        if len(asserted) == 1 and sentence == own_sentences(asserted, {asserted[0]: True})[0]:
            sentence = _placed(asserted[0], regions[asserted[0]]) or sentence
        elif len(asserted) == 1:
            sentence = locate_sentence(sentence, asserted[0], regions[asserted[0]])
        elif asserted:  # several: clause by clause ("A left effusion and a right nodule.")
            parts = _CLAUSE.split(sentence)
            for i in range(0, len(parts), 2):
                said = claims(parts[i]).findings
                own = [k for k in asserted if said.get(k)]
                if len(own) == 1:
                    parts[i] = locate_sentence(parts[i], own[0], regions[own[0]])
            sentence = "".join(parts)
        out.append(sentence)
    return " ".join(out)


def _placed(key: str, region: str) -> str | None:
    """A finding's own sentence with where its box lies: "Nodule present in the right lower
    lung zone.", "Pleural effusion present on the left."; None for other findings."""
    side = side_of(region)
    if key in ZONE_KEYS and region.endswith(" zone") and side:
        return f"{_display(key)} present in the {region}."
    if key in SIDE_KEYS and side:
        return f"{_display(key)} present on the {side}."
    return None


_CLAUSE = re.compile(r"(,\s*|;\s*|\s+and\s+|\s+with\s+)")


_WHERE = re.compile(r"^\s*where is the\b(?!.*\btip\b)", re.IGNORECASE)
_WHICH_SIDE = re.compile(r"^\s*which side\b", re.IGNORECASE)


def located_answer(question: str, regions: Mapping[str, str]) -> str | None:
    """The answer the boxes give to "Where is the X?" (the region of X's box) and "Which side
    is the X on?" (its side) for a present, located finding X; None otherwise."""
    keys = [k for k, said in claims(question.lower()).findings.items() if k in regions]
    if len(keys) != 1:
        return None
    region = regions[keys[0]]
    if _WHERE.search(question):
        return region
    if _WHICH_SIDE.search(question):
        return side_of(region)
    return None
