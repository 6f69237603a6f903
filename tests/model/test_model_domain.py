"""The domain gate: fitted on training films alone, stored in the checkpoint, read by predict."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset

from dicom_node.cli import main
from model.architecture import SETTINGS_FILE, WEIGHTS_FILE, GazeXSettings
from model.calibration import CALIBRATION_FILE
from model.domain import GATE_FILE, DomainGate, DomainGateError, fit_gate, load_gate
from model.imaging import prepare_image
from model.overlay import layout
from model.predictor import Predictor, checkpoint_sha256, default_checkpoint
from model.result import DomainCheck, InferenceResult, ResultError
from model.train.datasets import load_split
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.synth import generate_sample
from model.train.loop import calibrate_domain_gate, prepare_samples, write_domain_gate
from model.train.provenance import HELD_OUT_SEED, training_record

#: The shipped weights' own sha256 (unchanged by the gate) and the checkpoint's identity,
#: which covers the gate file too.
SHIPPED_WEIGHTS_SHA256 = "b0614ad6c9ffe2824e7bcd6afeffa3439f50247c4f0a30d397b82cf68b59ec73"


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.from_checkpoint(device="cpu")


def _held_out_film(seed: int = HELD_OUT_SEED) -> npt.NDArray[np.float32]:
    """A film the shipped checkpoint never trained on, 8-bit like `gazex data synth`'s PNGs."""
    image = generate_sample(seed, size=256).image
    return (np.rint(image * 255) / 255).astype(np.float32)


def _scores(predictor: Predictor, images: list[npt.NDArray[np.float32]]) -> list[DomainCheck]:
    assert predictor.gate is not None
    spec = predictor.model.settings.patch_spec
    features = predictor.engine.image_features([prepare_image(im, spec) for im in images])
    return [predictor.gate.check(row) for row in features]


def test_shipped_gate_passes_held_out_films_and_flags_foreign_inputs(
    shipped: Predictor, phantom_image: Callable[..., npt.NDArray[np.float64]]
) -> None:
    """Held-out synthetic films are in domain; the same films inverted or rotated, a smooth
    phantom and noise are out of domain, by the threshold stored with the checkpoint."""
    films = [_held_out_film(HELD_OUT_SEED + i) for i in range(3)]
    foreign = [
        1.0 - films[0],
        np.rot90(films[1]).copy(),
        phantom_image(256, 256).astype(np.float32),
        np.random.default_rng(0).random((256, 256), dtype=np.float32),
    ]
    in_domain = _scores(shipped, films)
    out = _scores(shipped, foreign)
    assert all(c.in_domain for c in in_domain), in_domain
    assert not any(c.in_domain for c in out), out
    assert all(c.method == "mahalanobis-ledoit-wolf/1" for c in in_domain + out)
    assert shipped.gate is not None and shipped.gate.films == 2057


def test_predict_fills_the_verdict_and_prints_the_notice_first(
    shipped: Predictor,
    tmp_path: Path,
    dicom_factory: Callable[..., Dataset],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gazex predict` on a film unlike the training films prints OUT OF DOMAIN before any
    other line, the result JSON carries the verdict and the overlay draws the banner; on a
    held-out synthetic film it says the film is like the training films."""
    film = _held_out_film()
    paths = {}
    for name, image in (("held-out", film), ("inverted", 1.0 - film)):
        ds = dicom_factory(256, 256)
        ds.PixelData = np.round(image * 4095).astype(np.uint16).tobytes()
        paths[name] = tmp_path / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    for name in paths:
        out_json = tmp_path / f"{name}.json"
        assert main(["predict", str(paths[name]), "--json", str(out_json)]) == 0
        lines = capsys.readouterr().out.splitlines()
        result = InferenceResult.from_json(out_json.read_text())
        assert result.domain is not None
        if name == "inverted":
            assert lines[0].startswith("OUT OF DOMAIN: inverted.dcm is unlike the synthetic films")
            assert "not to be trusted" in lines[0]
            assert lines[1].startswith("== inverted.dcm")
            assert "findings (not to be trusted: out of domain):" in lines
            assert result.out_of_domain and result.domain.score > result.domain.threshold
        else:
            assert lines[0].startswith("== held-out.dcm")
            assert lines[1].startswith("domain: like the training films")
            assert not result.out_of_domain and result.domain_notice() is None
    image = 1.0 - film
    result = shipped.predict_images([Dataset()], [image])[0]
    plan = layout(image.shape, result)
    assert plan.banner is not None and plan.banner.text.startswith("OUT OF DOMAIN")
    assert plan.banner_rect is not None and plan.banner_rect[1] == 0.0


def test_fitted_threshold_passes_new_films_of_the_training_distribution() -> None:
    """The threshold is a high quantile of held-out-fold distances: about 0.5 % of fresh
    draws from the training distribution exceed it, and a shifted distribution is flagged."""
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(24, 24)) / 5 + np.eye(24)
    train = rng.normal(size=(2000, 24)) @ mixing
    gate = fit_gate(train)
    fresh = gate.distances(rng.normal(size=(20000, 24)) @ mixing)
    assert 0.001 < float(np.mean(fresh > gate.threshold)) < 0.012
    shifted = gate.distances(rng.normal(size=(200, 24)) @ mixing + 1.5)
    assert float(np.mean(shifted > gate.threshold)) > 0.95
    assert gate.films == 2000 and 0.0 <= gate.shrinkage <= 1.0
    with pytest.raises(ValueError, match="at least 20 training films"):
        fit_gate(train[:19])


def test_gate_round_trips_through_the_checkpoint_and_its_hash(tmp_path: Path) -> None:
    """The gate file reads back identically, is byte-for-byte the same when written twice,
    is named by gazex.json and is covered by the checkpoint sha256 (a checkpoint without a
    gate keeps its weights' hash)."""
    rng = np.random.default_rng(2)
    gate = fit_gate(rng.normal(size=(60, 8)))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / WEIGHTS_FILE).write_bytes(b"weights")
    (ckpt / SETTINGS_FILE).write_text(GazeXSettings().to_json())
    weights_only = hashlib.sha256(b"weights").hexdigest()
    assert checkpoint_sha256(ckpt) == weights_only
    path = gate.save(ckpt)
    first = path.read_bytes()
    assert gate.save(ckpt).read_bytes() == first
    assert checkpoint_sha256(ckpt) == weights_only  # not named by gazex.json: not part of it
    (ckpt / SETTINGS_FILE).write_text(GazeXSettings(domain_gate=GATE_FILE).to_json())
    assert checkpoint_sha256(ckpt) == hashlib.sha256(b"weights" + first).hexdigest()
    again = load_gate(ckpt, GATE_FILE)
    assert again is not None and load_gate(ckpt, "") is None
    probe = rng.normal(size=(5, 8))
    assert again.distances(probe) == pytest.approx(gate.distances(probe), rel=1e-5)
    assert (again.threshold, again.films, again.method) == (gate.threshold, 60, gate.method)
    path.write_bytes(first[:40])
    with pytest.raises(DomainGateError, match="not a domain gate"):
        DomainGate.load(path)


def test_shipped_checkpoint_carries_its_gate_and_keeps_its_weights() -> None:
    """The shipped gazex.json names the gate fitted on its 2057 training films; the weights
    are unchanged and the checkpoint sha256 covers weights, gate and probability
    calibration (model.calibration), in that order."""
    ckpt = default_checkpoint()
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    assert settings.domain_gate == GATE_FILE
    weights = hashlib.sha256((ckpt / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert weights == SHIPPED_WEIGHTS_SHA256
    assert settings.probability_calibration == CALIBRATION_FILE
    files = (WEIGHTS_FILE, GATE_FILE, CALIBRATION_FILE)
    covered = b"".join((ckpt / name).read_bytes() for name in files)
    assert checkpoint_sha256(ckpt) == hashlib.sha256(covered).hexdigest()
    gate = load_gate(ckpt, settings.domain_gate)
    assert gate is not None and gate.films == settings.training_data["films"] == 2057


def test_domain_verdict_serialises_and_old_json_reads_as_not_checked(
    shipped: Predictor,
) -> None:
    """The verdict travels in the result JSON; JSON written before it reads as "not
    checked"; a verdict that contradicts its score and threshold is refused."""
    result = shipped.predict_images([Dataset()], [_held_out_film()])[0]
    assert result.domain is not None
    again = InferenceResult.from_json(result.to_json())
    assert again.domain == result.domain
    data = json.loads(result.to_json())
    del data["domain"]
    old = InferenceResult.from_dict(data)
    assert old.domain is None and not old.out_of_domain and old.domain_notice() is None
    with pytest.raises(ResultError, match="contradicts"):
        DomainCheck(score=30.0, threshold=20.0, in_domain=True, method="m")
    check = DomainCheck(score=30.0, threshold=20.0, in_domain=False, method="m")
    notice = check.notice("film.dcm")
    assert notice is not None and notice.startswith("OUT OF DOMAIN: film.dcm is unlike")


def test_calibrate_domain_fits_an_existing_checkpoint_on_its_own_films(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex calibrate-domain` refuses films the checkpoint did not train on, and on its
    recorded films writes the gate beside the untouched weights; predict then checks."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = (ckpt / WEIGHTS_FILE).read_bytes()
    data = tmp_path / "films"
    argv = ["data", "synth", "--out", str(data), "--n", "24", "--size", "64", "--workers", "1"]
    assert main([*argv, "--format", "mimic-eye", "--seed", "0", "--no-progress"]) == 0
    calibrate = ["calibrate-domain", "--ckpt", str(ckpt), "--data", str(data), "--no-progress"]
    assert main(calibrate) == 2
    assert "the films read are not ckpt's training films" in capsys.readouterr().err
    assert not (ckpt / GATE_FILE).exists()
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    films = load_split(data, "synthetic", "train")
    (ckpt / SETTINGS_FILE).write_text(  # as if the checkpoint had trained on these films
        replace(settings, training_data=training_record(films)).to_json()
    )
    assert main(calibrate) == 0
    out = capsys.readouterr().out
    assert "domain gate fitted on 24 training films" in out
    assert (ckpt / WEIGHTS_FILE).read_bytes() == weights
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert predictor.gate is not None and predictor.gate.films == 24
    result = predictor.predict_images([Dataset()], [films[0].image])[0]
    assert result.domain is not None and result.domain.in_domain


def test_training_too_few_films_leaves_the_gate_out(
    tiny_checkpoint: Path, tiny_samples: list[GazeSample]
) -> None:
    """With fewer than 20 films there is nothing to calibrate on: no gate, and the tiny
    checkpoint's results say "not checked"."""
    import torch

    from model.architecture import GazeXModel

    model = GazeXModel.load(tiny_checkpoint)
    prepared = prepare_samples(tiny_samples, model.settings)
    assert calibrate_domain_gate(model, prepared, torch.device("cpu")) is None
    assert model.settings.domain_gate == ""
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    assert predictor.gate is None
    result = predictor.predict_images([Dataset()], [tiny_samples[0].image])[0]
    assert result.domain is None


def test_write_domain_gate_names_the_file(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Writing a gate into a checkpoint adds the file and its name in gazex.json only."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    write_domain_gate(ckpt, fit_gate(np.random.default_rng(3).normal(size=(40, 4))))
    after = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert set(after) - set(before) == {GATE_FILE}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {SETTINGS_FILE}
    assert json.loads(after[SETTINGS_FILE])["domain_gate"] == GATE_FILE


def test_train_fits_the_gate_after_its_last_epoch(tmp_path: Path) -> None:
    """`gazex train`'s loop fits the gate on every film it recorded (threshold films too),
    writes it beside the weights and names it in gazex.json."""
    from model.architecture import TINY
    from model.train.loop import TrainConfig, train

    films = [generate_sample(seed, height=112, width=96) for seed in range(200, 224)]
    settings = GazeXSettings(num_gaze_tokens=6, max_pixels=112 * 112, max_report_tokens=24)
    config = TrainConfig(
        gaze_epochs=1, multitask_epochs=1, batch_size=8, size=TINY, vocab_size=400, progress=False
    )
    out = tmp_path / "ckpt"
    train(films[:20], out, settings, config, val_samples=films[20:], device="cpu")
    saved = GazeXSettings.from_json((out / SETTINGS_FILE).read_text())
    assert saved.domain_gate == GATE_FILE
    gate = load_gate(out, saved.domain_gate)
    assert gate is not None and gate.films == saved.training_data["films"] == 24
    predictor = Predictor.from_checkpoint(out, device="cpu")
    result = predictor.predict_images([Dataset()], [films[0].image])[0]
    assert result.domain is not None and result.domain.method == gate.method
