"""Synthetic radiographs: determinism, the finding catalogue, readers and reports."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from model.abcdef import REGIONS, STEPS, Step
from model.findings import FINDING_KEYS, FINDINGS_BY_KEY
from model.train.gazedata.pathology import sample_finding
from model.train.gazedata.reports import build_report, finding_mentions
from model.train.gazedata.sample import GazeSample, LabeledBox
from model.train.gazedata.simulated_readers import READERS, ReaderStyle
from model.train.gazedata.synth import CaseSpec, generate_sample, render_case, sample_case


def test_same_seed_same_sample() -> None:
    """Two calls with the same seed give bit-identical images, fixations and text."""
    a = generate_sample(5, size=96)
    b = generate_sample(5, size=96)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.fixations == b.fixations
    assert a.sentences == b.sentences
    assert a.boxes == b.boxes


def test_different_seeds_differ() -> None:
    """Different seeds give different images."""
    assert (
        generate_sample(1, size=96).image.tobytes() != generate_sample(2, size=96).image.tobytes()
    )


def test_sample_contract(small_samples: list[GazeSample]) -> None:
    """Images are float32 in [0, 1], labels cover every finding key, steps come from ABCDEF."""
    for s in small_samples:
        assert s.image.dtype == np.float32
        assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0
        assert set(s.labels) == set(FINDING_KEYS)
        assert {b.key for b in s.boxes} == {k for k, v in s.labels.items() if v}
        assert {b.key for b in s.anatomy} == set(REGIONS)
        assert all(f.step in (*STEPS, None) for f in s.fixations)
        assert s.report is not None and s.report.impression
        assert any(q == "Which region was inspected first?" for q, _ in s.vqa)


def test_nonsquare_boxes_inside_image(nonsquare_samples: list[GazeSample]) -> None:
    """Non-square images keep every box and region inside the image."""
    for s in nonsquare_samples:
        assert s.image.shape == (160, 128)
        for b in (*s.boxes, *s.anatomy):
            assert 0 <= b.x0 < b.x1 <= 128 and 0 <= b.y0 < b.y1 <= 160


def _case_with(key: str) -> CaseSpec:
    for seed in range(50):
        base = sample_case(seed, view="AP")
        spec = sample_finding(np.random.default_rng(seed), base.anatomy, key)
        if spec is not None:
            return CaseSpec(seed, base.anatomy, (spec,))
    raise AssertionError(f"could not place {key}")


@pytest.mark.parametrize("key", FINDING_KEYS)
def test_finding_visible_inside_box_absent_outside(key: str) -> None:
    """Each finding changes the image inside its box (clear contrast) and nowhere else."""
    spec = _case_with(key)
    with_f = render_case(spec, 192, 192)
    without = render_case(dataclasses.replace(spec, findings=()), 192, 192)
    assert with_f.boxes and {b.key for b in with_f.boxes} == {key}
    diff = np.abs(with_f.image - without.image)
    inside = np.zeros(diff.shape, dtype=bool)
    for box in with_f.boxes:  # bilateral findings have one box per side
        inside[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = True
    assert float(diff[~inside].max(initial=0.0)) == 0.0
    mask = with_f.masks[key]
    assert mask[~inside].sum() == 0
    changed = diff[inside & mask]
    assert changed.size > 0
    assert float(np.mean(changed)) > 0.02, f"{key} contrast {float(np.mean(changed)):.4f}"


def test_case_mix_has_normals_and_cooccurrence() -> None:
    """Across 120 cases some are normal, some have several findings, every key occurs."""
    cases = [sample_case(seed) for seed in range(120)]
    counts = [len(c.findings) for c in cases]
    assert counts.count(0) >= 10
    assert sum(1 for c in counts if c >= 2) >= 10
    assert {f.key for c in cases for f in c.findings} == set(FINDING_KEYS)


def test_right_hemidiaphragm_higher() -> None:
    """The right hemidiaphragm (image left) sits higher than the left in every case."""
    for seed in range(30):
        an = sample_case(seed).anatomy
        assert an.right_dome < an.left_dome


def test_five_distinct_readers() -> None:
    """At least five readers with distinct ids and styles."""
    assert len(READERS) >= 5
    assert len({r.reader_id for r in READERS}) == len(READERS)
    assert len({dataclasses.astuple(r)[2:] for r in READERS}) == len(READERS)


def _fixation_steps(s: GazeSample) -> list[Step]:
    return [f.step for f in s.fixations if f.step is not None]


def test_devices_first_reader_starts_with_lines() -> None:
    """R2 looks at lines and tubes first when the image has any."""
    for seed in range(200):
        s = generate_sample(seed, size=96, reader="R2-devices-first")
        if any(FINDINGS_BY_KEY[k].device and v for k, v in s.labels.items()):
            assert _fixation_steps(s)[0] == Step.FOREIGN_MATERIAL
            return
    raise AssertionError("no case with a device among 200 seeds")


def test_systematic_reader_follows_abcdef() -> None:
    """R1's fixation steps never go back to an earlier step before the impression."""
    s = generate_sample(3, size=96, reader="R1-systematic")
    impression_start = s.sentences[-1].start_ms
    steps = [
        f.step for f in s.fixations if f.step is not None and f.start_ms < impression_start - 500
    ]
    order = [STEPS.index(st) for st in steps]
    assert order == sorted(order)


def test_comparer_alternates_sides() -> None:
    """R3 alternates right and left lung zones during the B step."""
    s = generate_sample(4, size=96, reader="R3-comparer")
    zones = [
        f.region
        for f in s.fixations
        if f.step == Step.BREATHING and f.region and "zone" in f.region
    ]
    sides = [z.split()[0] for z in zones]
    switches = sum(1 for a, b in itertools.pairwise(sides) if a != b)
    assert switches >= 5


def test_sentences_time_aligned_with_their_step() -> None:
    """Every dictated step sentence overlaps fixations of that same ABCDEF step."""
    from model.train.gazedata.reports import sentence_step

    s = generate_sample(8, size=128, reader="R1-systematic")
    for sent in s.sentences[:-1]:
        step = sentence_step(sent.text)
        if step is None:
            continue
        during = [
            f.step for f in s.fixations if f.start_ms < sent.end_ms and f.end_ms > sent.start_ms
        ]
        assert step in during, sent.text


def test_fixation_durations_lognormal_and_abnormal_dwell() -> None:
    """Durations are positive with a right-skewed spread; abnormal regions get more dwell."""
    dur = np.array(
        [f.duration_ms for seed in range(6) for f in generate_sample(seed, size=96).fixations]
    )
    assert dur.min() >= 60 and np.median(dur) < dur.mean()
    logs = np.log(dur)
    assert 0.25 < float(logs.std()) < 0.9


def test_miss_rate_one_skips_regions_and_their_sentence() -> None:
    """A reader with miss rate 1 skips every A-E region and does not dictate the findings there."""
    from model.train.gazedata.pathology import FindingSpec
    from model.train.gazedata.simulated_readers import read_case
    from model.train.gazedata.synth import pixels_per_degree

    spec = _case_with("nodule")
    case = render_case(spec, 128, 128)
    report = build_report(case.findings, spec.anatomy)
    blind = ReaderStyle("blind", "skips everything", miss_rate=1.0, off_image_rate=0.0)
    reading = read_case(
        blind,
        np.random.default_rng(0),
        case.regions,
        case.boxes,
        report,
        (128, 128),
        pixels_per_degree(128, 128),
    )
    assert all(f.step in (Step.FOREIGN_MATERIAL, None) for f in reading.fixations)
    assert "nodule" in reading.missed
    assert not any("nodule" in s.text for s in reading.sentences[:-1])
    assert isinstance(spec.findings[0], FindingSpec)


def test_report_positive_negative_laterality() -> None:
    """Reports state positives with side and grade and negate absent findings."""
    spec = _case_with("pleural_effusion")
    f = spec.findings[0]
    text = " ".join(s.text for s in build_report(spec.findings, spec.anatomy).sentences)
    assert f.grade in text.lower()
    assert ("bilateral" if f.side == "bilateral" else f.side or "") in text
    assert "No pneumothorax." in text
    mentions = finding_mentions(text)
    assert mentions["pleural_effusion"] is True and mentions["pneumothorax"] is False


def test_generate_rejects_bad_arguments() -> None:
    """Unknown readers, views and tiny images are refused with ValueError."""
    with pytest.raises(ValueError, match="unknown reader"):
        generate_sample(0, size=96, reader="nobody")
    with pytest.raises(ValueError, match="view"):
        generate_sample(0, size=96, view="LATERAL")
    with pytest.raises(ValueError, match="at least 32"):
        generate_sample(0, size=16)


def test_sample_validation() -> None:
    """GazeSample refuses unknown keys, 3-D images and unknown views; boxes must be ordered."""
    img = np.zeros((8, 8), dtype=np.float32)
    ok = dict(
        sample_id="x",
        image=img,
        view="PA",
        reader_id="r",
        pixels_per_degree=None,
        fixations=(),
        sentences=(),
        boxes=(),
    )
    with pytest.raises(ValueError, match="unknown finding"):
        GazeSample(labels={"fracture": True}, **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        GazeSample(labels={}, **{**ok, "image": np.zeros((2, 2, 2), dtype=np.float32)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="view"):
        GazeSample(labels={}, **{**ok, "view": "OBLIQUE"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not ordered"):
        LabeledBox("nodule", 5, 0, 1, 1)


def test_bilateral_finding_has_one_box_per_side() -> None:
    """Pulmonary edema (always bilateral) gets a box on each side of the midline."""
    spec = _case_with("pulmonary_edema")
    boxes = render_case(spec, 160, 160).boxes
    assert len(boxes) == 2
    left, right = sorted(boxes, key=lambda b: b.x0)
    assert left.x1 <= right.x0


def test_vqa_and_grounding_pairs() -> None:
    """VQA answers follow the labels and every positive sentence is paired with its box."""
    from model.train.gazedata.reports import grounding_pairs

    for seed in range(60):
        s = generate_sample(seed, size=96)
        if s.labels["nodule"] or s.labels["mass"]:
            break
    else:
        raise AssertionError("no nodule or mass in 60 seeds")
    qa = dict(s.vqa)
    for key in FINDING_KEYS:
        word = FINDINGS_BY_KEY[key].display.lower()
        q = f"Is there {word}?" if key == "pulmonary_edema" else f"Is there a {word}?"
        assert qa[q] == ("yes" if s.labels[key] else "no")
    devices = sum(1 for k in FINDING_KEYS if FINDINGS_BY_KEY[k].device and s.labels[k])
    assert qa["How many support devices are present?"] == str(devices)
    pairs = grounding_pairs(s)
    lesion = "nodule" if s.labels["nodule"] else "mass"
    assert any(box.key == lesion and lesion in text for text, box in pairs)
    assert all(box in s.boxes for _, box in pairs)
