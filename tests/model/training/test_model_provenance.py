"""What a checkpoint records of its training films, and the overlap check of `gazex eval`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dicom_node.cli import main
from model.architecture import SETTINGS_FILE, GazeXSettings
from model.predictor import Predictor, checkpoint_sha256, default_checkpoint
from model.train.datasets import iter_samples
from model.train.gazedata.sample import GazeSample
from model.train.provenance import (
    HELD_OUT_SEED,
    FilmIdFilter,
    format_ranges,
    parse_ranges,
    seed_ranges,
    training_overlap,
    training_record,
)


def _film(sample: GazeSample, film_id: str) -> GazeSample:
    """``sample`` as if read from a dataset whose film id is ``film_id``."""
    from dataclasses import replace

    return replace(sample, meta={**sample.meta, "dicom_id": film_id})


def test_seed_ranges_bridge_a_held_out_readers_gaps() -> None:
    """Seeds compress to ranges; gaps of a held-out reader (a few seeds) are bridged,
    separate folders are not, and the text form reads back."""
    seeds = [s for s in range(2600) if s % 5 != 3] + list(range(100000, 100200))
    ranges = seed_ranges(seeds)
    assert ranges == [(0, 2599), (100000, 100199)]
    assert format_ranges(ranges) == "0-2599,100000-100199"
    assert parse_ranges("0-2599,100000-100199") == ranges
    assert parse_ranges("7") == [(7, 7)] and parse_ranges("") == []
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_ranges("9-3")


def test_film_id_filter_has_no_false_negatives_and_few_false_positives() -> None:
    """The hash set of real films' ids finds every recorded id and almost no other one,
    at under three bytes a film."""
    trained = [f"{i:08x}-real-film" for i in range(3000)]
    other = [f"{i:08x}-other-film" for i in range(20000)]
    ids = FilmIdFilter.of(trained)
    assert all(i in ids for i in trained)
    assert sum(i in ids for i in other) <= 20  # expected 2 at 1e-4
    data = ids.to_json()
    assert len(json.dumps(data)) < 3000 * 4
    assert all(i in FilmIdFilter.from_json(data) for i in trained[:50])


def test_training_record_is_small(tiny_samples: list[GazeSample]) -> None:
    """Two thousand synthetic films record as one seed range; real film ids as a filter."""
    base = tiny_samples[0]
    synthetic = [_film(base, f"synth-{s:06d}") for s in range(2500) if s % 5 != 3]
    record = training_record(synthetic)
    assert record == {"films": 2000, "readings": 2000, "synthetic_seeds": "0-2499"}
    real = [_film(base, f"dicom-{i}") for i in range(500)] * 2  # each film read twice
    record = training_record(real)
    assert record["films"] == 500 and record["readings"] == 1000
    assert "synthetic_seeds" not in record and len(json.dumps(record)) < 2000


def test_overlap_counts_films_in_the_training_range(tiny_samples: list[GazeSample]) -> None:
    """Evaluation films inside the recorded seeds or ids are counted, once per film, and the
    warning says how many and how to get held-out films; other films pass silently."""
    base = tiny_samples[0]
    record = training_record(
        [_film(base, f"synth-{s:06d}") for s in range(0, 100)]
        + [_film(base, "real-a"), _film(base, "real-b")]
    )
    test = [_film(base, f"synth-{s:06d}") for s in (5, 5, 50, 500)] + [_film(base, "real-a")]
    overlap = training_overlap(record, test)
    assert (overlap.films, overlap.evaluated, overlap.recorded) == (3, 4, True)
    assert overlap.warning is not None
    assert overlap.warning.startswith("warning: 3 of 4 evaluation films overlap")
    assert "0-99" in overlap.warning and f"default seed, {HELD_OUT_SEED}" in overlap.warning
    assert "\n" not in overlap.warning
    held_out = [_film(base, f"synth-{s:06d}") for s in (100, 7000)] + [_film(base, "real-c")]
    assert training_overlap(record, held_out).warning is None
    assert not training_overlap({}, test).recorded  # a checkpoint older than the record


def test_shipped_checkpoint_records_its_training_seeds() -> None:
    """The shipped gazex.json records the model card's training films (seeds 0-2599 minus
    the held-out reader's: 2057), written by `gazex train` with everything it fits after
    the last epoch (thresholds, calibration, gate, anatomy prior), and still loads."""
    ckpt = default_checkpoint()
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    assert settings.training_data == {
        "films": 2057,
        "readings": 2057,
        "synthetic_seeds": "0-2599",
    }
    assert settings.mask_decoder and settings.anatomy_prior and len(settings.thresholds) == 12
    assert settings.domain_gate and settings.probability_calibration
    predictor = Predictor.from_checkpoint(device="cpu")
    assert predictor.model.settings.training_data == settings.training_data
    assert predictor.info.checkpoint_sha256 == checkpoint_sha256(ckpt)


def test_synth_default_seed_is_held_out_from_the_shipped_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex data synth` without --seed writes films the shipped checkpoint never trained on
    (it used to start at seed 0, inside its training range), and its --help says so."""
    out = tmp_path / "films"
    argv = ["data", "synth", "--out", str(out), "--n", "2", "--size", "64", "--workers", "1"]
    assert main([*argv, "--format", "mimic-eye"]) == 0
    films = list(iter_samples(out, "synthetic"))
    assert [f.meta["dicom_id"] for f in films] == ["synth-100000", "synth-100001"]
    record = GazeXSettings.from_json((default_checkpoint() / SETTINGS_FILE).read_text())
    assert training_overlap(record.training_data, films).films == 0

    from model.train.gazedata.cli import register

    parser = argparse.ArgumentParser(prog="gazex")
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {HELD_OUT_SEED}" in text and "0-2599" in text and "held out" in text
