"""Calibrated finding probabilities: temperature per finding, stored in the checkpoint,
applied by the predictor, measured by `gazex eval`."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset

from model.architecture import SETTINGS_FILE, WEIGHTS_FILE, GazeXModel, GazeXSettings
from model.calibration import (
    CALIBRATION_FILE,
    CalibrationError,
    ProbabilityCalibration,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    load_calibration,
    logits_of,
)
from model.predictor import Predictor, checkpoint_sha256
from model.train.evaluate import evaluate, format_per_finding
from model.train.gazedata.sample import GazeSample
from model.train.loop import write_probability_calibration


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_fit_recovers_a_known_temperature() -> None:
    """Labels drawn from sigmoid(z / 2.5) give back a temperature of about 2.5."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 4.0, 20000)
    labels = rng.random(z.size) < _sigmoid(z / 2.5)
    assert fit_temperature(z, labels) == pytest.approx(2.5, rel=0.05)


def test_separable_films_get_a_finite_temperature_and_one_class_none() -> None:
    """Perfectly separated labels do not drive the temperature to zero (smoothed targets),
    and a finding with one class only keeps temperature 1."""
    z = np.concatenate([np.linspace(-8, -2, 50), np.linspace(2, 8, 10)])
    labels = z > 0
    temperature = fit_temperature(z, labels)
    assert 0.2 < temperature < 5.0
    assert fit_temperature(z, np.zeros(z.size, dtype=bool)) == 1.0


def test_expected_calibration_error_by_hand() -> None:
    """ECE weights each bin's |fraction positive - mean probability| by its share of films."""
    probabilities = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error([0, 0, 1, 1], probabilities) == pytest.approx(0.1)
    assert expected_calibration_error([0, 1, 1, 1], probabilities) == pytest.approx(0.25)
    assert expected_calibration_error([1], [1.0]) == pytest.approx(0.0)  # last bin holds 1.0


def test_calibration_keeps_order_and_decisions() -> None:
    """Calibrated probabilities keep the ranking, and a raw threshold mapped through the
    same temperature makes the same present/absent calls on the calibrated scale."""
    rng = np.random.default_rng(1)
    raw = _sigmoid(rng.normal(0, 5, (200, 2)))
    calibration = ProbabilityCalibration(("a", "b"), (2.0, 0.5), films=200)
    calibrated = calibration.calibrate(raw)
    for i in range(2):
        assert (np.argsort(raw[:, i]) == np.argsort(calibrated[:, i])).all()
    thresholds = np.array([0.35, 0.7])
    mapped = calibration.thresholds(thresholds)
    assert ((raw >= thresholds) == (calibrated >= mapped)).all()
    assert calibrated[:, 0].max() < raw[:, 0].max()  # T > 1 softens


def test_fit_calibration_lowers_ece_of_over_confident_logits() -> None:
    """Logits twice as confident as the truth are softened (T about 2) and their ECE drops."""
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (4000, 2))
    labels = rng.random(z.shape) < _sigmoid(z)
    raw = _sigmoid(2.0 * z)
    calibration = fit_calibration(("a", "b"), raw, labels)
    assert calibration.temperatures == pytest.approx((2.0, 2.0), rel=0.1)
    assert all(a < b for a, b in zip(calibration.ece_after, calibration.ece_before, strict=True))
    inside = np.abs(2.0 * z) < 15  # probabilities are clipped 1e-7 from 0 and 1
    assert np.allclose(logits_of(raw)[inside], 2.0 * z[inside], atol=1e-3)


def test_calibration_round_trips_through_the_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Written into a checkpoint, the calibration is named in gazex.json, read back equal,
    covered by the checkpoint sha256 and refused when its findings are not the checkpoint's."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    keys = settings.finding_keys
    weights = (ckpt / WEIGHTS_FILE).read_bytes()
    calibration = ProbabilityCalibration(keys, tuple(1.0 + i / 10 for i in range(len(keys))), 7)
    write_probability_calibration(ckpt, calibration)
    assert json.loads((ckpt / SETTINGS_FILE).read_text())["probability_calibration"] == (
        CALIBRATION_FILE
    )
    assert (ckpt / WEIGHTS_FILE).read_bytes() == weights
    assert load_calibration(ckpt, CALIBRATION_FILE, keys) == calibration
    before = checkpoint_sha256(ckpt)
    write_probability_calibration(ckpt, replace(calibration, films=8))
    assert checkpoint_sha256(ckpt) != before
    with pytest.raises(CalibrationError, match="calibrates findings"):
        load_calibration(ckpt, CALIBRATION_FILE, keys[::-1])
    (ckpt / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(CalibrationError, match="not a probability calibration"):
        load_calibration(ckpt, CALIBRATION_FILE, keys)


def test_training_writes_a_calibration_the_predictor_applies(
    tiny_checkpoint: Path, tiny_samples: list[GazeSample], tmp_path: Path
) -> None:
    """`gazex train` fits the calibration on its threshold readings; the predictor reports
    calibrated probabilities and makes the same present/absent calls as without it."""
    settings = GazeXSettings.from_json((tiny_checkpoint / SETTINGS_FILE).read_text())
    assert settings.probability_calibration == CALIBRATION_FILE
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    keys = settings.finding_keys
    write_probability_calibration(ckpt, ProbabilityCalibration(keys, (3.0,) * len(keys), 1))
    calibrated = Predictor.from_checkpoint(ckpt, device="cpu")
    raw = Predictor.from_checkpoint(ckpt, device="cpu")
    raw.calibration = None
    image = tiny_samples[0].image
    with_cal = calibrated.predict_images([Dataset()], [image])[0]
    without = raw.predict_images([Dataset()], [image])[0]
    p_raw = np.array([f.probability for f in without.findings])
    p_cal = np.array([f.probability for f in with_cal.findings])
    assert p_cal == pytest.approx(_sigmoid(logits_of(p_raw) / 3.0), abs=1e-5)
    assert [f.present for f in with_cal.findings] == [f.present for f in without.findings]


def test_eval_reports_ece_and_writes_the_reliability_diagram(
    tiny_checkpoint: Path, tiny_samples: list[GazeSample], tmp_path: Path
) -> None:
    """`gazex eval`'s metrics hold the ECE per finding before and after calibration, and
    reliability.png is written beside metrics.json."""
    model = GazeXModel.load(tiny_checkpoint)
    calibration = load_calibration(
        tiny_checkpoint, model.settings.probability_calibration, model.settings.finding_keys
    )
    assert calibration is not None
    metrics = evaluate(model, tiny_samples[:4], tmp_path, torch.device("cpu"), None, calibration)
    for values in metrics["per_finding"].values():
        assert 0.0 <= values["ece_raw"] <= 1.0 and 0.0 <= values["ece_calibrated"] <= 1.0
    assert metrics["ece_bins"] == 15
    assert "ECE raw" in format_per_finding(metrics)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mean_ece_calibrated"] == pytest.approx(metrics["mean_ece_calibrated"])
    with Image.open(tmp_path / "reliability.png") as png:
        assert png.width >= 800 and png.height >= 600


def test_calibrate_probabilities_fits_an_existing_checkpoint_on_its_own_films(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex calibrate-probabilities` refuses films the checkpoint did not train on, and on
    its recorded films writes the temperatures beside the untouched weights and thresholds."""
    from dicom_node.cli import main
    from model.train.datasets import load_split
    from model.train.provenance import training_record

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / CALIBRATION_FILE).unlink()
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    settings = replace(settings, probability_calibration="")
    (ckpt / SETTINGS_FILE).write_text(settings.to_json())
    weights = (ckpt / WEIGHTS_FILE).read_bytes()
    data = tmp_path / "films"
    argv = ["data", "synth", "--out", str(data), "--n", "20", "--size", "64", "--workers", "1"]
    assert main([*argv, "--format", "mimic-eye", "--seed", "0", "--no-progress"]) == 0
    calibrate = ["calibrate-probabilities", "--ckpt", str(ckpt), "--data", str(data)]
    assert main([*calibrate, "--no-progress"]) == 2
    assert "the films read are not ckpt's training films" in capsys.readouterr().err
    assert not (ckpt / CALIBRATION_FILE).exists()
    films = load_split(data, "synthetic", "train")
    (ckpt / SETTINGS_FILE).write_text(
        replace(settings, training_data=training_record(films)).to_json()
    )
    assert main([*calibrate, "--no-progress"]) == 0
    assert "probability calibration fitted on 2 held-out training readings" in (
        capsys.readouterr().out
    )
    assert (ckpt / WEIGHTS_FILE).read_bytes() == weights
    after = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    assert after.thresholds == settings.thresholds
    assert Predictor.from_checkpoint(ckpt, device="cpu").calibration is not None
