"""MIMIC-Eye (Hsieh et al., 2023) per-patient folders, loaded with the REFLACX and EGD loaders.

MIMIC-Eye regroups REFLACX and EGD-CXR by MIMIC patient::

    patient_{subject_id}/CXR-DICOM/s{study_id}/{dicom_id}.dcm
    patient_{subject_id}/CXR-JPG/s{study_id}/{dicom_id}.jpg
    patient_{subject_id}/REFLACX/metadata.csv, main_data/{id}/..., gaze_data/{id}/gaze.csv
    patient_{subject_id}/EyeGaze/master_sheet*.csv, fixations.csv, eye_gaze.csv,
        bounding_boxes.csv, audio_segmentation_transcripts/{dicom_id}/transcript.json

The files inside ``REFLACX/`` and ``EyeGaze/`` have the layouts of
:mod:`model.train.gazedata.reflacx` and :mod:`model.train.gazedata.egd`, so
:func:`load_mimic_eye` runs those loaders on each patient folder with an image resolver that
looks in the patient's ``CXR-DICOM`` (preferred) and ``CXR-JPG`` folders.
:func:`write_mimic_eye` lays synthetic samples out the same way (each sample as both a
REFLACX and an EGD reading).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from model.train.gazedata import egd, reflacx
from model.train.gazedata.images import write_image
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.tables import DataFormatError, write_table

logger = logging.getLogger(__name__)


def patient_resolver(patient: Path) -> reflacx.ImageResolver:
    """Find ``{dicom_id}.dcm`` under CXR-DICOM, else ``{dicom_id}.jpg`` under CXR-JPG."""

    def resolve(dicom_id: str, image: str) -> Path | None:
        for folder, ext in (("CXR-DICOM", ".dcm"), ("CXR-JPG", ".jpg"), ("CXR-JPG", ".png")):
            hits = sorted((patient / folder).glob(f"*/{dicom_id}{ext}")) + sorted(
                (patient / folder).glob(f"{dicom_id}{ext}")
            )
            if hits:
                return hits[0]
        return None

    return resolve


def load_mimic_eye(root: Path, *, load_images: bool = True) -> Iterator[GazeSample]:
    """Every REFLACX and EGD reading in the ``patient_*`` folders under ``root``."""
    patients = sorted(p for p in root.glob("patient_*") if p.is_dir())
    if not patients:
        raise DataFormatError(f"{root}: no patient_* folders found")
    for patient in patients:
        resolve = patient_resolver(patient)
        rx = patient / "REFLACX"
        if rx.is_dir() and reflacx.metadata_files(rx):
            yield from reflacx.load_reflacx(rx, resolver=resolve, load_images=load_images)
        eg = patient / "EyeGaze"
        if (eg / "fixations.csv").is_file():
            sheets = sorted(eg.glob("master_sheet*.csv"))
            if not sheets:
                raise DataFormatError(f"{eg}: no master_sheet*.csv next to fixations.csv")
            yield from egd.load_egd(
                eg, resolver=resolve, load_images=load_images, master_sheet=sheets[0].name
            )


def write_mimic_eye(samples: Sequence[GazeSample], root: Path, image_ext: str = ".dcm") -> None:
    """Lay out synthetic samples as MIMIC-Eye patient folders."""
    for i, s in enumerate(samples):
        digits = re.sub(r"\D", "", s.sample_id) or str(i)
        patient = root / f"patient_{10000000 + int(digits) % 10000000}"
        folder = "CXR-DICOM" if image_ext == ".dcm" else "CXR-JPG"
        write_image(
            patient / folder / f"s5{int(digits):07d}" / f"{s.sample_id}{image_ext}",
            s.image,
            sample_id=s.sample_id,
            view=s.view,
        )
        rx = patient / "REFLACX"
        meta = reflacx.write_case(s, rx, image_ext, with_image=False)
        write_table(rx / "metadata.csv", reflacx.METADATA_COLUMNS, [meta])
        eg = patient / "EyeGaze"
        egd.write_study(s, eg, image_ext, with_image=False)
        egd.write_tables([egd.study_rows(s, i, image_ext)], eg)
