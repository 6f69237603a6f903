"""One story per film: how often the result contradicts itself (issue 16; not a test).

Runs the checkpoint on held-out synthetic films (seeds from 100000, ``gazex data synth``'s
default, disjoint from the shipped checkpoint's 0-2599; 256 px, 8-bit like the training
PNGs), asks the presence questions of the training VQA set plus the device count, and
counts, for the model's raw text (``build_result(..., consistent=False)``: the baseline,
what ``predict`` returned before the guard) and for what ``Predictor.to_result`` returns:

- report vs finding head: (film, finding) pairs where the report (ABCDEF sections and
  impression) asserts a finding the head decided absent or negates one it decided present,
  by the rule-based extractor with negation of ``model.consistency.claims`` (it knows the
  template's "Heart size is normal." and "No lines or tubes.");
- the same by the evaluation's extractor (``model.train.metrics.extract_findings``, the one
  behind clinical-efficacy F1; written independently of the guard): pairs where "the
  report asserts it" differs from "the head decided it present", silence counting as absent;
- finding sentences: each finding's ``sentence`` (the SR's TEXT beside its coded finding)
  against that finding's decision;
- "not inspected" vs sections written: ABCDEF steps the trajectory did not inspect whose
  section carries text as if reviewed (neither the not-inspected notice nor "Not described");
- location words vs the box: present nodules, masses and consolidations whose text (the
  finding's sentence, and the report's sentences asserting it) names a lung zone, and
  effusions, pneumothoraces and atelectases whose text names a side, other than where the
  finding's drawn box lies on the film's true anatomy (the generator's region boxes: the
  smallest lung zone, or sided region, containing the box's centre; the nearest one when
  none does). Issue 16's "nodule in the left upper lung zone" drawn in the right lower zone;
- VQA vs decisions: presence answers that are not the decision's "yes"/"no", and device
  counts that are not the number of devices decided present (the first word is read; the
  expected answers are the training generator's, ``vqa_from_labels`` of the decisions).

The SR's text is these strings (sections, impression, finding sentences: see
``sr_templates/templates.py``) beside codes made from the same decisions, so the SR agrees
when the result does.

    .venv/bin/python benchmarks/bench_consistency.py [--films 200] [--ckpt DIR]
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from model.result import InferenceResult

HELD_OUT_SEED = 100_000
DEVICE_COUNT = "How many support devices are present?"
#: Asked beside the training set's questions: the wording of the report in issue 16.
EXTRA_QUESTIONS = ("Is there a lung nodule or mass?",)


Anatomy = dict[str, tuple[float, float, float, float]]


def film(seed: int) -> npt.NDArray[np.float32]:
    """A held-out synthetic film, quantised to 8 bits like ``gazex data synth``'s PNGs."""
    return film_and_anatomy(seed)[0]


def film_and_anatomy(seed: int) -> tuple[npt.NDArray[np.float32], Anatomy]:
    """:func:`film` and its true anatomical boxes (region name -> x0, y0, x1, y1)."""
    from model.train.gazedata.synth import generate_sample

    sample = generate_sample(seed, height=256, width=256)
    image = (np.rint(np.clip(sample.image, 0, 1) * 255) / 255).astype(np.float32)
    return image, {b.key: (b.x0, b.y0, b.x1, b.y1) for b in sample.anatomy}


def true_location(key: str, centre: tuple[float, float], anatomy: Anatomy) -> str | None:
    """Where a point lies on the film's true anatomy, in the words a finding's text uses: a
    lung zone (nodule, mass, consolidation) or a side (effusion, pneumothorax, atelectasis);
    the smallest such region containing the point, else the nearest by centre distance."""
    from model.anatomy_prior import LUNG_ZONES
    from model.consistency import SIDE_KEYS, ZONE_KEYS, side_of

    if key in ZONE_KEYS:
        names = [n for n in LUNG_ZONES if n in anatomy]
    elif key in SIDE_KEYS:
        names = [n for n in anatomy if side_of(n)]
    else:
        return None
    x, y = centre
    inside = [
        n
        for n in names
        if anatomy[n][0] <= x <= anatomy[n][2] and anatomy[n][1] <= y <= anatomy[n][3]
    ]

    def area(n: str) -> float:
        x0, y0, x1, y1 = anatomy[n]
        return (x1 - x0) * (y1 - y0)

    def distance(n: str) -> float:
        x0, y0, x1, y1 = anatomy[n]
        return ((x0 + x1) / 2 - x) ** 2 + ((y0 + y1) / 2 - y) ** 2

    if not names:
        return None
    region = min(inside, key=area) if inside else min(names, key=distance)
    return region if key in ZONE_KEYS else side_of(region)


def questions() -> list[str]:
    """The training VQA set's presence questions, the device count and the extra ones."""
    from model.train.gazedata.reports import vqa_from_labels

    return [q for q, _ in vqa_from_labels({})] + list(EXTRA_QUESTIONS)


@dataclass
class Count:
    """Units checked and units that contradict, and films with at least one."""

    units: int = 0
    bad: int = 0
    films: int = 0
    bad_films: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, units: int, bad: list[str]) -> None:
        self.units += units
        self.bad += len(bad)
        self.films += 1
        self.bad_films += bool(bad)
        if bad and len(self.examples) < 2:
            self.examples.append(bad[0])

    def cells(self) -> str:
        unit = 100.0 * self.bad / max(self.units, 1)
        film_share = 100.0 * self.bad_films / max(self.films, 1)
        return f"{self.bad:6d}/{self.units:<6d}{unit:6.1f} %{self.bad_films:6d}{film_share:6.1f} %"


def _first_word(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def check(
    result: InferenceResult, not_described: str, anatomy: Anatomy | None = None
) -> dict[str, tuple[int, list[str]]]:
    """Per check: the units checked in one result, and what contradicts (``anatomy``: the
    film's true anatomical boxes, for the location check)."""
    from model.consistency import NOT_INSPECTED, claims, named_location, sentences
    from model.train.gazedata.reports import vqa_from_labels
    from model.train.metrics import extract_findings

    present = {f.key: f.present for f in result.findings}
    report = result.report
    text = " ".join([*(s.text for s in report.sections), report.impression])
    n = len(result.findings)
    out: dict[str, tuple[int, list[str]]] = {}
    out["report vs head (guard's extractor)"] = (
        n,
        [f"{k}: head {present[k]}, report {text!r}" for k in claims(text).contradictions(present)],
    )
    extracted = extract_findings(text)
    out["report vs head (evaluation's extractor)"] = (
        n,
        [
            f"{k}: head {present[k]}, report {text!r}"
            for k in present
            if extracted.get(k, False) != present[k]
        ],
    )
    out["finding sentence vs its decision"] = (
        n,
        [
            f"{f.key} {f.present}: {f.sentence!r}"
            for f in result.findings
            if f.key in claims(f.sentence).contradictions({f.key: f.present})
        ],
    )
    out["not inspected vs section written"] = (
        len(result.skipped_steps),
        [
            f"{s.step.value} not inspected: {s.text!r}"
            for s in report.sections
            if s.step in result.skipped_steps
            and not s.text.startswith(NOT_INSPECTED)
            and s.text != not_described
        ],
    )
    if anatomy is not None:
        units = 0
        wrong = []
        for f in result.findings:
            if not f.present or f.box is None:
                continue
            truth = true_location(f.key, f.box.centre, anatomy)
            if truth is None:
                continue
            texts = [f.sentence] + [
                s for s in sentences(text) if claims(s).findings.get(f.key) is True
            ]
            named = {n for n in (named_location(t, f.key) for t in texts) if n is not None}
            if not named:
                continue
            units += 1
            if named != {truth}:
                wrong.append(f"{f.key}: box in the {truth}, text says {sorted(named)}")
        out["location words vs the box"] = units, wrong
    expected_answers = dict(vqa_from_labels(present))
    expected_answers[EXTRA_QUESTIONS[0]] = "yes" if present["nodule"] or present["mass"] else "no"
    vqa = []
    for answer in result.answers:
        expected = expected_answers.get(answer.question)
        if expected is not None and _first_word(answer.answer) != _first_word(expected):
            vqa.append(f"{answer.question} {answer.answer!r}, decisions: {expected}")
    out["VQA vs decisions"] = len(result.answers), vqa
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="default: the shipped checkpoint")
    parser.add_argument("--films", type=int, default=200, help="held-out films")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--examples", action="store_true", help="print examples per check")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    import torch
    from pydicom.dataset import Dataset

    from model.predictor import _NOT_REPORTED, Predictor, build_result, source_image

    predictor = Predictor.from_checkpoint(args.ckpt, device="cpu")
    qs = questions()
    before: dict[str, Count] = {}
    after: dict[str, Count] = {}
    t0 = time.perf_counter()
    seeds = [HELD_OUT_SEED + i for i in range(args.films)]
    for start in range(0, len(seeds), args.batch):
        films = [film_and_anatomy(s) for s in seeds[start : start + args.batch]]
        images = [image for image, _ in films]
        for raw, (_, anatomy) in zip(
            predictor.engine.run(images, questions=qs), films, strict=True
        ):
            source = source_image(Dataset(), raw.grid.Rows, raw.grid.Columns)
            raw_result = build_result(
                raw, source, predictor.model, predictor.info, qs, consistent=False
            )
            result = predictor.to_result(raw, source, qs)
            for counts, res in ((before, raw_result), (after, result)):
                for name, (n, bad) in check(res, _NOT_REPORTED, anatomy).items():
                    counts.setdefault(name, Count()).add(n, bad)
    seconds = time.perf_counter() - t0

    print(
        f"checkpoint {predictor.checkpoint.name} (sha256 {predictor.info.checkpoint_sha256[:12]}); "
        f"{args.films} held-out synthetic films, seeds {seeds[0]}-{seeds[-1]}, 256 px; "
        f"{len(qs)} questions a film; torch {torch.__version__}, device cpu"
    )
    header = (
        f"{'check':42}{'':9}{'contradicting units':>22}{'films':>14}\n"
        f"{'':42}{'':9}{'n/units':>15}{'%':>7}{'n':>7}{'%':>7}"
    )
    print(header)
    print("-" * 86)
    for name in before:
        for label, counts in (("raw model", before), ("result", after)):
            print(f"{name if label == 'raw model' else '':42}{label:9}  {counts[name].cells()}")
            if args.examples:
                for example in counts[name].examples:
                    print(f"    e.g. {example[:200]}")
    print(f"\n{seconds:.0f} s for {args.films} films (model once, both results from its output)")


if __name__ == "__main__":
    main()
