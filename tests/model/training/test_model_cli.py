"""`gazex train` and `gazex eval` end to end on a tiny synthetic MIMIC-Eye folder."""

from __future__ import annotations

import json
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
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["samples"] == 4
    assert 0.0 <= metrics["coverage_mean"] <= 1.0
    assert (report / "roc.png").is_file()
    assert list(report.glob("trajectory_*.png"))


def test_unknown_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    """Training on a folder that holds no known dataset layout fails with exit code 2."""
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
