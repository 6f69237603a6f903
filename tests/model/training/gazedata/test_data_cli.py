"""``gazex data synth`` and ``gazex data inspect`` through the real command entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli import main


@pytest.mark.parametrize("fmt", ["reflacx", "egd", "mimic-eye"])
def test_synth_then_inspect(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """synth writes a dataset that inspect loads, counts and draws."""
    out = tmp_path / "ds"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--n",
                "3",
                "--format",
                fmt,
                "--size",
                "96",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--png", str(tmp_path / "png")]) == 0
    text = capsys.readouterr().out
    expected = 6 if fmt == "mimic-eye" else 3
    assert f"{expected} samples" in text
    assert "cardiomegaly" in text and "reader" in text
    assert len(list((tmp_path / "png").glob("*.png"))) == expected


def test_synth_two_workers_same_files(tmp_path: Path) -> None:
    """Two worker processes write the same bytes as one."""
    for name, workers in (("a", "1"), ("b", "2")):
        assert (
            main(
                [
                    "data",
                    "synth",
                    "--out",
                    str(tmp_path / name),
                    "--n",
                    "4",
                    "--size",
                    "64",
                    "--workers",
                    workers,
                    "--no-progress",
                ]
            )
            == 0
        )
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid --n and an unknown folder layout give exit code 2 and a one-line message."""
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "inspect", str(tmp_path / "empty")]) == 2
    assert "not a REFLACX, EGD-CXR or MIMIC-Eye folder" in capsys.readouterr().err
