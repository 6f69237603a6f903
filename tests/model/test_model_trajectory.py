"""The trajectory is a complete ABCDEF review (issue 16, item 3): the anatomy prior's
schedule, atlas and constrained pointer."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.abcdef import REGION_STEP, STEPS, Step
from model.anatomy_prior import AnatomyPrior, allocate_schedule, load_prior, step_regions
from model.architecture import SETTINGS_FILE, GazeXModel, GazeXSettings
from model.geometry import PatchGrid
from model.inference import InferenceEngine
from model.train.anatomy_prior import fit_anatomy_prior, write_anatomy_prior
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.supervision import locate_points


@pytest.fixture(scope="module")
def films() -> list[GazeSample]:
    """Sixty square synthetic films (256 px, the shipped checkpoint's training size)."""
    from model.train.gazedata.synth import generate_sample

    return [generate_sample(seed, height=256, width=256) for seed in range(60)]


@pytest.fixture(scope="module")
def prior(films: list[GazeSample]) -> AnatomyPrior:
    """A prior fitted on the first forty films."""
    return AnatomyPrior.from_json(fit_anatomy_prior(films[:40], GazeXSettings()))


def test_schedule_is_in_protocol_order_with_every_step() -> None:
    """Every step gets a token in ABCDEF order, the rest go by the shares; K < 6 keeps the
    largest shares, still in order."""
    shares = {Step.AIRWAYS: 1.0, Step.BREATHING: 6.0, Step.CIRCULATION: 2.0}
    schedule = allocate_schedule(shares, 12)
    assert len(schedule) == 12
    assert list(schedule) == sorted(schedule, key=STEPS.index)
    assert set(schedule) == set(STEPS)
    assert schedule.count(Step.BREATHING) == max(schedule.count(s) for s in STEPS)
    assert allocate_schedule(shares, 2) == (Step.BREATHING, Step.CIRCULATION)


def test_prior_round_trips_through_gazex_json(prior: AnatomyPrior) -> None:
    """The prior a checkpoint stores is the one it loads (percent precision)."""
    settings = GazeXSettings(anatomy_prior=prior.to_json())
    loaded = load_prior(GazeXSettings.from_json(settings.to_json()))
    assert loaded is not None
    assert loaded.schedule == prior.schedule and loaded.regions == prior.regions
    assert np.allclose(loaded.atlas, prior.atlas, atol=0.006)
    assert load_prior(GazeXSettings()) is None


def test_every_step_has_tokens_and_labels_of_its_own_regions(prior: AnatomyPrior) -> None:
    """On the 8 x 8 grid of a 256 px film each step may take some token, and the region a
    token labels for a step is one of the step's regions (F: where lines and tubes end)."""
    plan = prior.plan(PatchGrid(256, 256, 8, 8))
    for s, step in enumerate(STEPS):
        assert plan.allowed[s].any(), step
        labels = {prior.regions[r] for r in plan.regions[s][plan.allowed[s]]}
        assert labels <= step_regions(step), step
        inside = plan.points[s][plan.allowed[s]]
        tokens = np.flatnonzero(plan.allowed[s])
        rows, cols = np.floor(inside[:, 1] * 8), np.floor(inside[:, 0] * 8)
        assert np.array_equal(rows * 8 + cols, tokens)  # each point lies in its own token


def test_region_labels_match_held_out_anatomy(prior: AnatomyPrior, films: list[GazeSample]) -> None:
    """The points the plan can fixate carry the region their held-out film's true anatomy
    gives them (smallest containing box) in at least 90 % of cases."""
    plan = prior.plan(PatchGrid(256, 256, 8, 8))
    hits = total = 0
    for film in films[40:]:
        for s in range(len(STEPS)):
            tokens = np.flatnonzero(plan.allowed[s])
            points = [(u * film.width, v * film.height) for u, v in plan.points[s][tokens]]
            for t, (region, _) in zip(tokens, locate_points(film, points), strict=True):
                total += 1
                hits += region == prior.regions[plan.regions[s, t]]
    assert hits / total >= 0.9


def test_constrained_scanpath_is_a_complete_ordered_review(
    tiny_checkpoint: Path, films: list[GazeSample], tmp_path: Path
) -> None:
    """With a prior in gazex.json the free-running scanpath visits every step in ABCDEF
    order, each fixation labelled with its scheduled step and the atlas region where its
    point lies; the weights are untouched and without a prior nothing changes."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    write_anatomy_prior(ckpt, {})  # the training loop fitted one: start without
    cpu = torch.device("cpu")
    plain = InferenceEngine(GazeXModel.load(ckpt), cpu)
    images = [f.image for f in films[40:44]]
    unconstrained = plain.run(images, generate_text=False)
    assert all(not o.points for o in unconstrained)

    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    write_anatomy_prior(ckpt, fit_anatomy_prior(films[:40], settings))
    model = GazeXModel.load(ckpt)
    engine = InferenceEngine(model, cpu)
    prior = engine.prior
    assert prior is not None
    k = model.settings.num_gaze_tokens
    outputs = engine.run(images, generate_text=False)
    for out in outputs:
        steps = [STEPS[s] for s in out.steps]
        assert steps == [prior.schedule[j * len(prior.schedule) // k] for j in range(k)]
        assert list(steps) == sorted(steps, key=STEPS.index)
        for (u, v), p, r, step in zip(
            out.points, out.patch_indices, out.regions, steps, strict=True
        ):
            region = model.settings.regions[r]
            assert prior.region_at(u, v) == region
            assert region in step_regions(step)
            assert out.grid.patch_index(u * out.grid.Columns, v * out.grid.Rows) == p
    assert (ckpt / "model.safetensors").read_bytes() == (
        tiny_checkpoint / "model.safetensors"
    ).read_bytes()
    write_anatomy_prior(ckpt, {})
    again = InferenceEngine(GazeXModel.load(ckpt), cpu)
    assert [o.patch_indices for o in again.run(images, generate_text=False)] == [
        o.patch_indices for o in unconstrained
    ]


def test_a_step_the_atlas_has_no_token_for_is_still_visited(
    tiny_checkpoint: Path, films: list[GazeSample], tmp_path: Path
) -> None:
    """A film framed unlike the training films can leave a step without any confident atlas
    cell on its grid. The step keeps its place in the schedule (the review stays complete
    and ordered); its fixation is wherever the pointer looks, never the previous token
    again, at the token centre, labelled by the region head."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    write_anatomy_prior(ckpt, fit_anatomy_prior(films[:40], settings))
    model = GazeXModel.load(ckpt)
    engine = InferenceEngine(model, torch.device("cpu"))
    fitted = engine.prior
    assert fitted is not None
    e = STEPS.index(Step.EXTERNAL)
    atlas = fitted.atlas.copy()
    for i, region in enumerate(fitted.regions):
        if region in step_regions(Step.EXTERNAL):
            atlas[..., i] = 0.0
    engine.prior = replace(fitted, atlas=atlas)
    engine._plans.clear()
    outputs = engine.run([f.image for f in films[40:43]], generate_text=False)
    k = model.settings.num_gaze_tokens
    scheduled = [fitted.schedule[j * len(fitted.schedule) // k] for j in range(k)]
    assert Step.EXTERNAL in scheduled
    for out in outputs:
        assert [STEPS[s] for s in out.steps] == scheduled
        for j, (s, p) in enumerate(zip(out.steps, out.patch_indices, strict=True)):
            if s != e:
                continue
            r, c = divmod(p, out.grid.grid_w)
            u, v = out.points[j]
            assert (u, v) == pytest.approx(
                ((c + 0.5) / out.grid.grid_w, (r + 0.5) / out.grid.grid_h)
            )
            assert 0 <= out.regions[j] < len(model.settings.regions)
            assert j == 0 or p != out.patch_indices[j - 1]


def test_regions_of_the_default_steps_cover_every_region() -> None:
    """Every Chest ImaGenome region belongs to the regions of some step's mask."""
    assert set(REGION_STEP) == set().union(
        *(step_regions(s) for s in STEPS if s is not Step.FOREIGN_MATERIAL)
    )
    assert replace(GazeXSettings(), anatomy_prior={}).anatomy_prior == {}


def test_calibrate_anatomy_writes_the_prior_and_leaves_the_weights(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex calibrate-anatomy` fits the prior on a `gazex data synth` folder into the
    checkpoint's gazex.json; the weights' bytes do not change."""
    from dicom_node.cli import main

    data = tmp_path / "data"
    synth = ["data", "synth", "--out", str(data), "--n", "12", "--format", "mimic-eye"]
    assert main([*synth, "--size", "96", "--seed", "0", "--workers", "1"]) == 0
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = (ckpt / "model.safetensors").read_bytes()
    args = ["calibrate-anatomy", "--ckpt", str(ckpt), "--data", str(data), "--no-progress"]
    assert main([*args, "--format", "synthetic"]) == 0
    assert "anatomy prior fitted on 12 training films" in capsys.readouterr().out
    prior = load_prior(GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text()))
    assert prior is not None and set(prior.schedule) == set(STEPS)
    assert (ckpt / "model.safetensors").read_bytes() == weights


def test_ablation_gaze_modes_get_no_prior(films: list[GazeSample]) -> None:
    """Shuffled, random and no-gaze models are decoded as trained: no prior is fitted."""
    for mode in ("shuffled", "random", "none"):
        assert fit_anatomy_prior(films[:5], GazeXSettings(gaze_mode=mode)) == {}
