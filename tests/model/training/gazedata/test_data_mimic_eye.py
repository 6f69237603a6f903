"""MIMIC-Eye per-patient folders read with the REFLACX and EGD loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.train.gazedata.mimic_eye import load_mimic_eye, write_mimic_eye
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.tables import DataFormatError


def test_patient_folders_give_both_readings(
    tmp_path: Path, small_samples: list[GazeSample]
) -> None:
    """Each patient folder yields its REFLACX and its EGD reading, images from CXR-DICOM."""
    write_mimic_eye(small_samples[:2], tmp_path)
    assert sorted(p.name for p in (tmp_path / next(iter(tmp_path.iterdir())).name).iterdir()) == [
        "CXR-DICOM",
        "EyeGaze",
        "REFLACX",
    ]
    loaded = list(load_mimic_eye(tmp_path))
    assert sorted(s.meta["dataset"] for s in loaded) == ["egd-cxr", "egd-cxr", "reflacx", "reflacx"]
    for s in small_samples[:2]:
        twins = [b for b in loaded if b.meta["dicom_id"] == s.sample_id]
        assert len(twins) == 2
        for b in twins:
            assert b.sentences == s.sentences
            assert [(f.x, f.y, f.start_ms) for f in b.fixations] == [
                (f.x, f.y, f.start_ms) for f in s.fixations
            ]
            assert float(abs(b.image - s.image).max()) < 2e-3


def test_empty_root_refused(tmp_path: Path) -> None:
    """A folder without patient_* folders is refused."""
    with pytest.raises(DataFormatError, match="patient_"):
        list(load_mimic_eye(tmp_path))


def test_errors_name_the_file_without_the_subject_id(
    tmp_path: Path, small_samples: list[GazeSample]
) -> None:
    """A broken file inside a patient folder is named, but its subject id is hashed."""
    write_mimic_eye(small_samples[:1], tmp_path)
    patient = next(tmp_path.glob("patient_*"))
    subject_id = patient.name.removeprefix("patient_")
    fixations = next(patient.glob("EyeGaze/fixations.csv"))
    fixations.write_text("not,the,columns\n1,2,3\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as caught:
        list(load_mimic_eye(tmp_path))
    message = str(caught.value)
    assert "fixations.csv" in message
    assert "patient_#" in message
    assert subject_id not in message
