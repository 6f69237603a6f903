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
- :func:`decided_answer` answers a presence or device-count question from the decisions.

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
    the generated text as if the step had been reviewed. Other sections and the impression
    keep the model's sentences that agree (:func:`agree`); a present finding the sections do
    not assert gets its own sentence in its step's section, and the impression names the
    present findings it does not ("Also found by the model: ..."). An empty impression stays
    empty (the caller writes one from the findings)."""
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
