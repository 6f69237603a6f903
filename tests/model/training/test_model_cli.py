"""`gazex train` and `gazex eval` end to end on a tiny synthetic MIMIC-Eye folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dicom_node.cli import main


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve 96-pixel synthetic studies written by `gazex data synth` (MIMIC-Eye layout)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    code = main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--n",
            "12",
            "--format",
            "mimic-eye",
            "--size",
            "96",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_train_then_eval_from_the_command_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex train` writes a loadable checkpoint and `gazex eval` prints the metric table
    and writes metrics.json and plots."""
    ckpt = tmp_path / "ckpt"
    code = main(
        [
            "train",
            "--data",
            str(tiny_dataset),
            "--format",
            "synthetic",
            "--out",
            str(ckpt),
            "--size",
            "tiny",
            "--epochs",
            "1",
            "--gaze-epochs",
            "1",
            "--gaze-tokens",
            "4",
            "--max-pixels",
            str(112 * 112),
            "--no-progress",
        ]
    )
    assert code == 0
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "gazex.json").is_file()
    report = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--ckpt",
            str(ckpt),
            "--data",
            str(tiny_dataset),
            "--out",
            str(report),
            "--max-samples",
            "4",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Macro AUROC" in printed and "MultiMatch vector" in printed
    assert "Mask IoU, what the SEG carries" in printed
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["mask_films_without_truth"] == 0  # every film's masks re-rendered
    assert metrics["samples"] == 4
    assert 0.0 <= metrics["coverage_mean"] <= 1.0
    assert (report / "roc.png").is_file()
    assert list(report.glob("trajectory_*.png"))


def test_unknown_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    """Training on a folder that holds no known dataset layout fails with exit code 2."""
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2


# -- progress bars (issue item 8) and the train/test trap (item 9) ---------------------

TRAIN_TINY = [
    "--format",
    "synthetic",
    "--size",
    "tiny",
    "--epochs",
    "1",
    "--gaze-epochs",
    "1",
    "--gaze-tokens",
    "4",
    "--max-pixels",
    str(112 * 112),
]
#: A whole-command tqdm bar at its end: "T/T [elapsed<remaining" (remaining is the ETA).
FINISHED_BAR = re.compile(r"(\d+)/\1 \[\d\d:\d\d<\d\d:\d\d")


@pytest.fixture(scope="module")
def cli_checkpoint(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint trained by `gazex train` on the twelve default-seed films."""
    ckpt = tmp_path_factory.mktemp("cli-ckpt") / "ckpt"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(ckpt), *TRAIN_TINY])
    assert code == 0
    return ckpt


def _finished_totals(err: str) -> list[int]:
    return [int(m.group(1)) for m in FINISHED_BAR.finditer(err)]


def test_train_progress_bar_spans_all_epochs(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex train --progress` draws one bar with an ETA over both stages and the threshold
    films (not one bar per epoch); `--no-progress` and a stderr that is no terminal draw none."""
    from model.train.loop import TrainConfig, work_units

    capsys.readouterr()
    argv = ["train", "--data", str(tiny_dataset), *TRAIN_TINY]
    assert main([*argv, "--out", str(tmp_path / "a"), "--progress"]) == 0
    err = capsys.readouterr().err
    # Twelve films: eleven to train (two batches of 8 per epoch) and one for the thresholds.
    total = work_units(11, 1, TrainConfig(gaze_epochs=1, multitask_epochs=1, batch_size=8))
    assert total == 5
    assert set(_finished_totals(err)) == {total}
    assert "train epoch 1/2 [gaze]" in err and "train epoch 2/2 [multitask]" in err
    for name, flags in (("b", ["--no-progress"]), ("c", [])):
        assert main([*argv, "--out", str(tmp_path / name), *flags]) == 0
        err = capsys.readouterr().err
        assert "%|" not in err and not _finished_totals(err)


def test_eval_progress_bar_and_no_progress(
    cli_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex eval --progress` draws a bar with an ETA over the test films; `--no-progress`
    and a stderr that is no terminal draw none."""
    argv = ["eval", "--ckpt", str(cli_checkpoint), "--data", str(tiny_dataset)]
    argv += ["--max-samples", "3"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a"), "--progress"]) == 0
    err = capsys.readouterr().err
    assert set(_finished_totals(err)) == {3} and "eval" in err
    for name, flags in (("b", ["--no-progress"]), ("c", [])):
        assert main([*argv, "--out", str(tmp_path / name), *flags]) == 0
        err = capsys.readouterr().err
        assert "%|" not in err and not _finished_totals(err)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # no-gaze model: no MultiMatch
def test_ablation_progress_bar_spans_every_model(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex eval --ablation --progress` draws one bar whose total is the training and the
    evaluation of every ablation model, so its ETA is the whole ablation's."""
    from model.train.loop import TrainConfig, work_units

    argv = ["eval", "--ablation", "--train-data", str(tiny_dataset), "--data", str(tiny_dataset)]
    argv += ["--out", str(tmp_path / "abl"), "--size", "tiny", "--max-samples", "2"]
    argv += ["--ablation-max-samples", "4", "--ablation-epochs", "1"]
    argv += ["--ablation-modes", "ordered,none", "--progress"]
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    # Per model: 4 films to train (one batch, two epochs; too few to hold any out for the
    # thresholds), then 2 test films.
    per_model = work_units(4, 0, TrainConfig(gaze_epochs=1, multitask_epochs=1)) + 2
    assert per_model == 4
    assert set(_finished_totals(captured.err)) == {2 * per_model}
    assert "ablation 1/2 ordered: epoch 1/2 [gaze]" in captured.err
    assert "ablation 2/2 none: eval" in captured.err
    assert "[ordered] macro AUROC" in captured.out and "[none] macro AUROC" in captured.out


def test_synth_progress_bar_only_when_asked_or_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex data synth` draws its bar with --progress, and none by default when stderr is
    no terminal (it used to draw one into logs)."""
    argv = ["data", "synth", "--n", "2", "--size", "64", "--workers", "1"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a"), "--progress"]) == 0
    assert set(_finished_totals(capsys.readouterr().err)) == {2}
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "%|" not in capsys.readouterr().err


def test_train_records_its_films_in_the_checkpoint(cli_checkpoint: Path) -> None:
    """`gazex train` writes the films it trained on (threshold films included) into
    gazex.json: counts and the synthetic seed range, a few bytes."""
    record = json.loads((cli_checkpoint / "gazex.json").read_text())["training_data"]
    assert record == {"films": 12, "readings": 12, "synthetic_seeds": "100000-100011"}


def test_eval_warns_once_when_test_films_are_training_films(
    cli_checkpoint: Path,
    tiny_dataset: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Evaluating a checkpoint on films it trained on prints one warning line to stderr
    (how many, and how to get held-out films) and records it in metrics.json; films it did
    not train on give neither."""
    argv = ["eval", "--data", str(tiny_dataset), "--max-samples", "3", "--no-progress"]
    capsys.readouterr()
    assert main([*argv, "--ckpt", str(cli_checkpoint), "--out", str(tmp_path / "seen")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1
    assert lines[0].startswith("warning: 3 of 3 evaluation films overlap")
    assert "100000-100011" in lines[0] and "gazex data synth --seed" in lines[0]
    overlap = json.loads((tmp_path / "seen" / "metrics.json").read_text())["training_overlap"]
    assert overlap["films"] == 3 and overlap["warning"] == lines[0]
    # The conftest checkpoint trained on seeds 0-15: the default-seed films are held out.
    assert main([*argv, "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "new")]) == 0
    assert "warning" not in capsys.readouterr().err
    overlap = json.loads((tmp_path / "new" / "metrics.json").read_text())["training_overlap"]
    assert overlap == {"films": 0, "evaluated_films": 3, "recorded": True, "warning": None}


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_ablation_warns_when_test_films_are_its_training_films(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex eval --ablation` warns before training when --data overlaps --train-data."""
    argv = ["eval", "--ablation", "--train-data", str(tiny_dataset), "--data", str(tiny_dataset)]
    argv += ["--out", str(tmp_path / "abl"), "--size", "tiny", "--max-samples", "2"]
    argv += ["--ablation-max-samples", "4", "--ablation-epochs", "1", "--ablation-gaze-epochs"]
    argv += ["0", "--ablation-modes", "none"]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning: 2 of 2 evaluation films overlap") == 1
