"""A study to show in a viewer, made by the project's own CLI: a synthetic DX film
(``gazex data synth``), its prediction (``gazex predict``) and the five result objects
(``gazex render``), plus the same film under fresh UIDs as a study of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

#: the result objects of one film, by kind (see kind_of)
KINDS = ("findings_sr", "trajectory_sr", "seg_binary", "attention_map", "gsps")
#: SOP Class UID of the Parametric Map (the attention map)
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def kind_of(path: Path) -> str:
    """Which of KINDS a result object is, from its Modality and SeriesDescription."""
    ds = dcmread(path, stop_before_pixels=True)
    description = str(ds.get("SeriesDescription", "")).lower()
    if ds.Modality == "SR":
        return "trajectory_sr" if "trajectory" in description else "findings_sr"
    if ds.SOPClassUID == PARAMETRIC_MAP:
        return "attention_map"
    if ds.Modality == "SEG":
        return "seg_binary"
    if ds.Modality == "PR":
        return "gsps"
    raise ValueError(f"{path.name}: unexpected Modality {ds.Modality}")


def uids(path: Path) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a file."""
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


@dataclass(frozen=True)
class ResultStudy:
    #: the film the objects reference
    film: Path
    #: the same pixels under new Study/Series/SOP Instance UIDs (no result objects)
    film_alone: Path
    #: the result objects by kind
    objects: dict[str, Path]
    #: the prediction they encode (``gazex predict --json``)
    result: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.film_alone, self.film, *self.objects.values()]


def _gazex(*args: str | Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gazex {args[0]} failed:\n{done.stdout}\n{done.stderr}")


def make_result_study(folder: Path) -> ResultStudy:
    """Run the CLI in ``folder`` (no developer settings file, no GAZEX_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
    env["XDG_CONFIG_HOME"] = str(folder / "xdg-config")
    synth = folder / "synth"
    # Held-out seed 100003: the shipped model finds three findings on it (the test checks
    # that at least two are present, so a retrained model that does not is caught).
    _gazex(
        "data",
        "synth",
        "--out",
        synth,
        "--n",
        "1",
        "--seed",
        "100003",
        "--image-format",
        "dcm",
        env=env,
    )
    (generated,) = (synth / "images").glob("*.dcm")
    ds = dcmread(generated)
    # OHIF 3.13.2 crashes on VOILUTFunction LINEAR ("Invalid VOI LUT function"): drop it.
    ds.pop("VOILUTFunction", None)
    film = folder / "film.dcm"
    ds.save_as(film)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    film_alone = folder / "film-alone.dcm"
    ds.save_as(film_alone)
    result_json = folder / "result.json"
    _gazex("predict", film, "--json", result_json, env=env)
    rendered = folder / "objects"
    _gazex("render", "--result", result_json, "--source", film, "--out", rendered, env=env)
    objects = {kind_of(path): path for path in sorted(rendered.glob("*.dcm"))}
    if sorted(objects) != sorted(KINDS):
        raise RuntimeError(f"gazex render wrote {sorted(objects)}, expected {sorted(KINDS)}")
    result = json.loads(result_json.read_text(encoding="utf-8"))
    return ResultStudy(film, film_alone, objects, result)


#: SOP Class UID of Computed Radiography Image Storage
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


def make_quirky_study(study: ResultStudy, folder: Path) -> ResultStudy:
    """The film as a CR with the quirky header real ones come with: neither PixelSpacing nor
    ImagerPixelSpacing, MONOCHROME1, 15 bits stored; under new UIDs, with the objects the
    same prediction gives for it (``gazex render``). ``film_alone`` is the film itself."""
    from dataclasses import replace

    import numpy as np

    from model.result import InferenceResult
    from sr_templates.build import build_all
    from sr_templates.cli import write_objects

    ds = dcmread(study.film)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE
    ds.Modality = "CR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in (
        "PixelSpacing",
        "ImagerPixelSpacing",
        "PresentationIntentType",
        "PixelIntensityRelationship",
        "PixelIntensityRelationshipSign",
        "ImageLaterality",
    ):
        ds.pop(keyword, None)
    stored = ds.pixel_array.astype(np.int32)  # 12 bits, MONOCHROME2
    ds.PixelData = ((4095 - stored) * 8).astype(np.uint16).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsStored, ds.HighBit = 15, 14
    ds.WindowCenter, ds.WindowWidth = (4095 - 2048) * 8, 3276 * 8
    folder.mkdir(parents=True, exist_ok=True)
    film = folder / "film.dcm"
    ds.save_as(film)
    result = InferenceResult.from_dict(study.result)
    source = replace(
        result.source,
        StudyInstanceUID=str(ds.StudyInstanceUID),
        SeriesInstanceUID=str(ds.SeriesInstanceUID),
        SOPInstanceUID=str(ds.SOPInstanceUID),
        SOPClassUID=CR_IMAGE,
    )
    result = replace(result, source=source)
    paths = write_objects(build_all(result, ds), folder / "objects")
    objects = {kind_of(path): path for path in paths}
    return ResultStudy(film, film, objects, result.to_dict())
