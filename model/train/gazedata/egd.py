"""EGD-CXR (Karargyris et al., 2021, "Eye Gaze Data for Chest X-rays") layout: writer and loader.

Over 400 lines on purpose: the writer and the loader of one layout share its column tables
and are tested as a round trip, so they stay in one module (as in ``reflacx``).

Layout of the PhysioNet release (egd-cxr 1.0.0)::

    master_sheet.csv
    fixations.csv
    eye_gaze.csv
    bounding_boxes.csv
    audio_segmentation_transcripts/{dicom_id}/transcript.json

Sources, https://github.com/cxr-eye-gaze/eye-gaze-dataset:

- ``DataProcessing/DataPostProcessing/create_heatmap_images_and_or_videos.py`` and
  ``map_eye_gaze_from_screen_to_image_coordinates.py``: ``fixations.csv`` and
  ``eye_gaze.csv`` rows carry ``SESSION_ID``, ``DICOM_ID``, ``Time (in secs)``, Gazepoint
  ``FPOGX``/``FPOGY`` as fractions of the 1920 x 1080 screen, and ``X_ORIGINAL``/
  ``Y_ORIGINAL``, computed as ``int(W / (1920 - left - right) * (FPOGX * 1920 - left))``
  (likewise for y) when the gaze falls on the image, else the same formula with -1 in
  place of the screen offset (negative for real image sizes), with the padding
  ``image_top_pad``/``image_bottom_pad``/``image_left_pad``/``image_right_pad`` from
  ``master_sheet.csv`` (whose ``dicom_id`` and ``path`` columns the scripts also read).
- ``DataProcessing/DataPreparation/image_preparation.py``: images were resized keeping
  the aspect ratio and padded to the screen; the pads are stored per image.
- ``DataProcessing/DataPostProcessing/speech_to_text.py`` and ``Validation/validation.py``:
  ``transcript.json`` has ``full_text`` and ``time_stamped_text``, a list of
  ``{"phrase", "begin_time", "end_time"}`` in seconds; a sentence ends with a phrase that
  ends with ".".

The full column lists below follow the published file headers (Gazepoint fields
CNT ... RPMMV, then SACCADE_MAG, SACCADE_DIR, VID_FRAME, X_ORIGINAL, Y_ORIGINAL; the
59-column master sheet); ``eye_gaze.csv`` is written with the same columns as
``fixations.csv``. ``bounding_boxes.csv`` holds anatomical boxes ``dicom_id, bbox_name,
x1, x2, y1, y2`` named like Chest ImaGenome regions.

Quirks handled: screen-to-image mapping with the padding (fixations on the padding or off
the screen come out outside ``[0, W] x [0, H]`` and are kept); ``FPOGS``/``FPOGD`` give
fixation start and duration; phrases are joined into sentences at a final "."; CheXpert
label cells are 1, 0, -1 or empty (positive only for 1); ``lung_lesion__chx`` and
``support_devices__chx`` are split into our keys using the transcript. There is one
radiologist in EGD-CXR; synthetic data written here keeps its reader in an extra
``synthetic_reader.txt`` next to ``transcript.json`` (``reader_id`` is ``"egd"`` without it).
Fixation regions and ABCDEF steps are assigned from the anatomical boxes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from model.abcdef import REGION_STEP, REGIONS
from model.findings import DEVICE_KEYS, FINDING_KEYS
from model.train.gazedata.images import ImageFormatError, read_dicom, read_image, write_image
from model.train.gazedata.reports import finding_mentions, structure_report, vqa_from_labels
from model.train.gazedata.sample import (
    VIEWS,
    GazeFixation,
    GazeSample,
    LabeledBox,
    TranscriptSentence,
)
from model.train.gazedata.simulated_readers import region_of_point
from model.train.gazedata.tables import DataFormatError, Row, csv_text, read_table

logger = logging.getLogger(__name__)

SCREEN = (1920, 1080)

FIXATIONS_COLUMNS: tuple[str, ...] = (
    "SESSION_ID",
    "MEDIA_ID",
    "DICOM_ID",
    "CNT",
    "Time (in secs)",
    "TIMETICK(f=10000000)",
    "FPOGX",
    "FPOGY",
    "FPOGS",
    "FPOGD",
    "FPOGID",
    "FPOGV",
    "BPOGX",
    "BPOGY",
    "BPOGV",
    "LPCX",
    "LPCY",
    "LPD",
    "LPS",
    "LPV",
    "RPCX",
    "RPCY",
    "RPD",
    "RPS",
    "RPV",
    "BKID",
    "BKDUR",
    "BKPMIN",
    "LPMM",
    "LPMMV",
    "RPMM",
    "RPMMV",
    "SACCADE_MAG",
    "SACCADE_DIR",
    "VID_FRAME",
    "X_ORIGINAL",
    "Y_ORIGINAL",
)
EYE_GAZE_COLUMNS: tuple[str, ...] = FIXATIONS_COLUMNS

_DX = tuple(c for i in range(1, 10) for c in (f"dx{i}", f"dx{i}_icd"))
MASTER_SHEET_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "path",
    "study_id",
    "patient_id",
    "stay_id",
    "gender",
    "anchor_age",
    "image_top_pad",
    "image_bottom_pad",
    "image_left_pad",
    "image_right_pad",
    *_DX,
    "normal_reports",
    "Normal",
    "CHF",
    "pneumonia",
    "consolidation",
    "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis",
    "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__",
    "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity",
    "normal_anatomically",
    "elevated_hemidiaphragm",
    "hyperaeration",
    "vascular_redistribution",
    "atelectasis__chx",
    "cardiomegaly__chx",
    "consolidation__chx",
    "edema__chx",
    "enlarged_cardiomediastinum__chx",
    "fracture__chx",
    "lung_lesion__chx",
    "lung_opacity__chx",
    "no_finding__chx",
    "pleural_effusion__chx",
    "pleural_other__chx",
    "pneumonia__chx",
    "pneumothorax__chx",
    "support_devices__chx",
    "cxr_exam_indication",
)

BOUNDING_BOXES_COLUMNS: tuple[str, ...] = ("dicom_id", "bbox_name", "x1", "x2", "y1", "y2")

#: master sheet columns -> our keys (several keys: disambiguated from the transcript).
LABEL_KEYS: dict[str, tuple[str, ...]] = {
    "cardiomegaly__chx": ("cardiomegaly",),
    "enlarged_cardiac_silhouette": ("cardiomegaly",),
    "pleural_effusion__chx": ("pleural_effusion",),
    "pleural_effusion_or_thickening": ("pleural_effusion",),
    "pneumothorax__chx": ("pneumothorax",),
    "consolidation__chx": ("consolidation",),
    "consolidation": ("consolidation",),
    "edema__chx": ("pulmonary_edema",),
    "pulmonary_edema__hazy_opacity": ("pulmonary_edema",),
    "atelectasis__chx": ("atelectasis",),
    "linear__patchy_atelectasis": ("atelectasis",),
    "lung_lesion__chx": ("nodule", "mass"),
    "support_devices__chx": DEVICE_KEYS,
}

ImageResolver = Callable[[str, str], Path | None]


def screen_padding(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pads of an image fitted to the 1920 x 1080 screen."""
    sw, sh = SCREEN
    ratio = min(sw / width, sh / height)
    nw, nh = int(width * ratio), int(height * ratio)
    left, top = (sw - nw) // 2, (sh - nh) // 2
    return top, sh - nh - top, left, sw - nw - left


def image_to_screen(
    x: float, y: float, size: tuple[int, int], pads: tuple[int, int, int, int]
) -> tuple[float, float]:
    """Image pixel SCOORD -> (FPOGX, FPOGY) screen fractions."""
    width, height = size
    top, bottom, left, right = pads
    sw, sh = SCREEN
    ex = left + x * (sw - left - right) / width
    ey = top + y * (sh - top - bottom) / height
    return ex / sw, ey / sh


def screen_to_image(
    fx: float, fy: float, size: tuple[int, int], pads: tuple[int, int, int, int]
) -> tuple[float, float]:
    """(FPOGX, FPOGY) -> image pixel SCOORD (continuous, may fall outside the image)."""
    width, height = size
    top, bottom, left, right = pads
    sw, sh = SCREEN
    return (
        (fx * sw - left) * width / (sw - left - right),
        (fy * sh - top) * height / (sh - top - bottom),
    )


def _original(
    fx: float, fy: float, size: tuple[int, int], pads: tuple[int, int, int, int]
) -> tuple[int, int]:
    """X_ORIGINAL/Y_ORIGINAL exactly as map_eye_gaze_from_screen_to_image_coordinates.py."""
    width, height = size
    top, bottom, left, right = pads
    sw, sh = SCREEN
    ex, ey = fx * sw, fy * sh
    if left < ex < sw - right and top < ey < sh - bottom:
        xo, yo = ex - left, ey - top
    else:
        xo = yo = -1.0
    return int(width / (sw - left - right) * xo), int(height / (sh - top - bottom) * yo)


# ----------------------------------------------------------------------------- writer


def _path_for(sample: GazeSample, image_ext: str) -> str:
    digits = re.sub(r"\D", "", sample.sample_id).rjust(8, "0")[-8:]
    return f"files/p{digits[:2]}/p1{digits}/s5{digits}/{sample.sample_id}{image_ext}"


def fixation_rows(
    sample: GazeSample, session: int, media: int, cnt0: int = 0
) -> list[dict[str, object]]:
    """fixations.csv rows of one sample."""
    size = (sample.width, sample.height)
    pads = screen_padding(*size)
    rows: list[dict[str, object]] = []
    prev: tuple[float, float] | None = None
    for i, f in enumerate(sample.fixations):
        fx, fy = image_to_screen(f.x, f.y, size, pads)
        sx, sy = fx * SCREEN[0], fy * SCREEN[1]
        mag = 0.0 if prev is None else math.hypot(sx - prev[0], sy - prev[1])
        ang = 0.0 if prev is None else math.degrees(math.atan2(sy - prev[1], sx - prev[0]))
        prev = (sx, sy)
        xo, yo = _original(fx, fy, size, pads)
        rows.append(
            {
                "SESSION_ID": session,
                "MEDIA_ID": media,
                "DICOM_ID": sample.sample_id,
                "CNT": cnt0 + 10 * (i + 1),
                "Time (in secs)": repr(f.end_ms / 1000.0),
                "TIMETICK(f=10000000)": repr(float(696216388878 + int(f.end_ms * 10000))),
                "FPOGX": repr(fx),
                "FPOGY": repr(fy),
                "FPOGS": repr(f.start_ms / 1000.0),
                "FPOGD": repr(f.duration_ms / 1000.0),
                "FPOGID": i + 1,
                "FPOGV": 1,
                "BPOGX": repr(fx),
                "BPOGY": repr(fy),
                "BPOGV": 1,
                "LPCX": "0.378",
                "LPCY": "0.594",
                "LPD": "18.2",
                "LPS": "1.05",
                "LPV": 1,
                "RPCX": "0.637",
                "RPCY": "0.598",
                "RPD": "18.3",
                "RPS": "1.06",
                "RPV": 1,
                "BKID": 0,
                "BKDUR": "0.0",
                "BKPMIN": 18,
                "LPMM": "3.5",
                "LPMMV": 1,
                "RPMM": "3.6",
                "RPMMV": 1,
                "SACCADE_MAG": repr(mag),
                "SACCADE_DIR": repr(ang),
                "VID_FRAME": "0.0",
                "X_ORIGINAL": xo,
                "Y_ORIGINAL": yo,
            }
        )
    return rows


def master_row(sample: GazeSample, image_ext: str) -> dict[str, object]:
    pads = screen_padding(sample.width, sample.height)
    digits = re.sub(r"\D", "", sample.sample_id) or "0"
    row: dict[str, object] = {c: "" for c in MASTER_SHEET_COLUMNS}
    row.update(
        {
            "dicom_id": sample.sample_id,
            "path": _path_for(sample, image_ext),
            "study_id": f"5{int(digits):07d}",
            "patient_id": f"1{int(digits):07d}",
            "stay_id": f"3{int(digits):07d}",
            "gender": "",
            "anchor_age": "",
            "image_top_pad": pads[0],
            "image_bottom_pad": pads[1],
            "image_left_pad": pads[2],
            "image_right_pad": pads[3],
            "cxr_exam_indication": "Synthetic study.",
        }
    )
    any_positive = False
    for col, keys in LABEL_KEYS.items():
        positive = any(sample.labels.get(k, False) for k in keys)
        any_positive |= positive and not set(keys) <= set(DEVICE_KEYS)
        row[col] = 1 if positive else 0
    row["Normal"] = 0 if any_positive else 1
    row["no_finding__chx"] = "" if any_positive else 1
    row["normal_reports"] = row["Normal"]
    row["CHF"] = (
        1 if sample.labels.get("pulmonary_edema") and sample.labels.get("cardiomegaly") else 0
    )
    row["pneumonia"] = 1 if sample.labels.get("consolidation") else 0
    return row


def transcript_json(sample: GazeSample) -> dict[str, object]:
    return {
        "full_text": " ".join(s.text for s in sample.sentences),
        "time_stamped_text": [
            {"phrase": s.text, "begin_time": s.start_ms / 1000.0, "end_time": s.end_ms / 1000.0}
            for s in sample.sentences
        ],
    }


def write_study(
    sample: GazeSample, root: Path, image_ext: str = ".dcm", with_image: bool = True
) -> None:
    """Per-study files: the image and ``audio_segmentation_transcripts/{dicom_id}/``."""
    folder = root / "audio_segmentation_transcripts" / sample.sample_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transcript.json").write_text(
        json.dumps(transcript_json(sample), indent=4), encoding="utf-8"
    )
    (folder / "synthetic_reader.txt").write_text(sample.reader_id, encoding="utf-8")
    if with_image:
        write_image(
            root / _path_for(sample, image_ext),
            sample.image,
            sample_id=sample.sample_id,
            view=sample.view,
        )


def study_rows(sample: GazeSample, index: int, image_ext: str = ".dcm") -> dict[str, str]:
    """The shared-table rows of one study as CSV text (fixations, master sheet, boxes).

    ``eye_gaze.csv`` gets the fixation rows too (synthetic gaze is fixation-level). Text
    keeps the rows of thousands of studies small when they come back from workers.
    """
    session = 1 + index // 30  # EGD sessions held about 30 images each
    boxes: list[dict[str, object]] = [
        {
            "dicom_id": sample.sample_id,
            "bbox_name": b.key,
            "x1": repr(b.x0),
            "x2": repr(b.x1),
            "y1": repr(b.y0),
            "y2": repr(b.y1),
        }
        for b in sample.anatomy
    ]
    return {
        "fixations": csv_text(FIXATIONS_COLUMNS, fixation_rows(sample, session, index % 30)),
        "master": csv_text(MASTER_SHEET_COLUMNS, [master_row(sample, image_ext)]),
        "boxes": csv_text(BOUNDING_BOXES_COLUMNS, boxes),
    }


def write_tables(rows: Sequence[Mapping[str, str]], root: Path) -> None:
    """Write the four shared tables from per-study rows (in study order)."""
    root.mkdir(parents=True, exist_ok=True)
    tables = (
        ("fixations.csv", "fixations", FIXATIONS_COLUMNS),
        ("eye_gaze.csv", "fixations", EYE_GAZE_COLUMNS),
        ("master_sheet.csv", "master", MASTER_SHEET_COLUMNS),
        ("bounding_boxes.csv", "boxes", BOUNDING_BOXES_COLUMNS),
    )
    for name, part, columns in tables:
        with (root / name).open("w", newline="", encoding="utf-8") as f:
            f.write(csv_text(columns, [], header=True))
            for study in rows:
                f.write(study[part])


def write_egd(samples: Sequence[GazeSample], root: Path, image_ext: str = ".dcm") -> None:
    """Write samples as an EGD-CXR dataset under ``root``."""
    rows = []
    for i, s in enumerate(samples):
        write_study(s, root, image_ext)
        rows.append(study_rows(s, i, image_ext))
    write_tables(rows, root)


# ----------------------------------------------------------------------------- loader


def load_transcript(path: Path) -> tuple[TranscriptSentence, ...]:
    """Sentences of a transcript.json: phrases joined up to one ending with "."."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc})") from None
    items = data.get("time_stamped_text") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataFormatError(f"{path}: missing list 'time_stamped_text'")
    out: list[TranscriptSentence] = []
    parts: list[str] = []
    start = end = 0.0
    for i, item in enumerate(items, start=1):
        for key in ("phrase", "begin_time", "end_time"):
            if not isinstance(item, dict) or key not in item:
                raise DataFormatError(f"{path}: time_stamped_text item {i}, field {key!r}: missing")
        phrase = item["phrase"]
        if not isinstance(phrase, str):
            raise DataFormatError(f"{path}: time_stamped_text item {i}, field 'phrase': not text")
        try:
            a = round(float(item["begin_time"]) * 1000.0, 3)
            b = round(float(item["end_time"]) * 1000.0, 3)
        except (TypeError, ValueError):
            raise DataFormatError(
                f"{path}: time_stamped_text item {i}, field 'begin_time'/'end_time': not a number"
            ) from None
        if not parts:
            start = a
        parts.append(phrase.strip())
        end = b
        if phrase.strip().endswith("."):
            out.append(TranscriptSentence(" ".join(parts), start, end))
            parts = []
    if parts:
        out.append(TranscriptSentence(" ".join(parts), start, end))
    return tuple(out)


def _pads(row: Row) -> tuple[int, int, int, int]:
    out = []
    for c in ("image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad"):
        v = row.number(c)
        if v < 0 or v != int(v):
            raise row.error(c, f"padding must be a non-negative whole number, got {v:g}")
        out.append(int(v))
    return out[0], out[1], out[2], out[3]


def default_resolver(root: Path, images_root: Path | None) -> ImageResolver:
    def resolve(dicom_id: str, path: str) -> Path | None:
        rel = Path(path)
        candidates = [root / rel]
        if images_root is not None:
            candidates += [images_root / rel] + [
                images_root / f"{dicom_id}{e}" for e in (".dcm", ".png", ".jpg")
            ]
        for c in candidates:
            if c.is_file():
                return c
        return None

    return resolve


def load_egd(
    root: Path,
    *,
    images_root: Path | None = None,
    resolver: ImageResolver | None = None,
    load_images: bool = True,
    master_sheet: str = "master_sheet.csv",
) -> Iterator[GazeSample]:
    """Every image of an EGD-CXR copy at ``root`` that has fixations."""
    master = read_table(
        root / master_sheet,
        (
            "dicom_id",
            "path",
            *("image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad"),
        ),
    )
    fix_rows = read_table(root / "fixations.csv", ("DICOM_ID", "FPOGX", "FPOGY", "FPOGS", "FPOGD"))
    by_image: dict[str, list[Row]] = defaultdict(list)
    for r in fix_rows:
        by_image[r.text("DICOM_ID")].append(r)
    anatomy: dict[str, list[LabeledBox]] = defaultdict(list)
    bb_path = root / "bounding_boxes.csv"
    if bb_path.is_file():
        for r in read_table(bb_path, BOUNDING_BOXES_COLUMNS):
            x1, x2, y1, y2 = (r.number(c) for c in ("x1", "x2", "y1", "y2"))
            if x2 < x1 or y2 < y1:
                raise r.error("x2", "box is not ordered (x1 <= x2, y1 <= y2)")
            anatomy[r.text("dicom_id")].append(LabeledBox(r.text("bbox_name"), x1, y1, x2, y2))
    resolve = resolver or default_resolver(root, images_root)
    for m in master:
        dicom_id = m.text("dicom_id")
        if dicom_id not in by_image:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", dicom_id):
            raise m.error("dicom_id", "not a DICOM id")
        yield _load_one(
            root, m, dicom_id, by_image[dicom_id], anatomy.get(dicom_id, []), resolve, load_images
        )


def _load_one(
    root: Path,
    m: Row,
    dicom_id: str,
    rows: list[Row],
    anatomy: list[LabeledBox],
    resolve: ImageResolver,
    load_images: bool,
) -> GazeSample:
    pads = _pads(m)
    view = "PA"
    path = resolve(dicom_id, m.text("path"))
    if path is None:
        raise m.error("path", "image file not found (pass images_root)")
    try:
        if path.suffix.lower() == ".dcm":
            image, info = read_dicom(path)
            view = info["ViewPosition"] if info.get("ViewPosition") in VIEWS else view
        else:
            image = read_image(path)
    except ImageFormatError as exc:  # the image path holds the MIMIC patient folder
        raise m.error("path", f"image file unreadable ({exc.reason})") from None
    if not load_images:
        image = np.zeros_like(image)
    height, width = image.shape
    regions = {b.key: (b.x0, b.y0, b.x1, b.y1) for b in anatomy if b.key in REGIONS}
    fixations: list[GazeFixation] = []
    for r in rows:
        fx, fy = r.number("FPOGX"), r.number("FPOGY")
        x, y = screen_to_image(fx, fy, (width, height), pads)
        start = round(r.number("FPOGS") * 1000.0, 3)
        dur = round(r.number("FPOGD") * 1000.0, 3)
        if dur < 0:
            raise r.error("FPOGD", "negative fixation duration")
        region = region_of_point(x, y, regions) if 0 <= x < width and 0 <= y < height else None
        step = REGION_STEP.get(region) if region else None
        fixations.append(GazeFixation(round(x, 6), round(y, 6), start, dur, region, step))
    fixations.sort(key=lambda f: f.start_ms)
    folder = root / "audio_segmentation_transcripts" / dicom_id
    sentences = (
        load_transcript(folder / "transcript.json")
        if (folder / "transcript.json").is_file()
        else ()
    )
    mentions = finding_mentions(" ".join(s.text for s in sentences))
    labels = dict.fromkeys(FINDING_KEYS, False)
    for col, keys in LABEL_KEYS.items():
        if not m.has(col):
            continue
        value = m.optional_number(col)
        if value is not None and value >= 1.0:
            chosen = {k for k in keys if mentions.get(k)} if len(keys) > 1 else set(keys)
            for k in chosen:
                labels[k] = True
    reader_file = folder / "synthetic_reader.txt"
    reader_id = reader_file.read_text(encoding="utf-8").strip() if reader_file.is_file() else "egd"
    return GazeSample(
        sample_id=dicom_id,
        image=image,
        view=view,
        reader_id=reader_id,
        pixels_per_degree=None,
        fixations=tuple(fixations),
        sentences=sentences,
        labels=labels,
        boxes=(),
        masks=None,
        report=structure_report(sentences),
        vqa=vqa_from_labels(labels),
        meta={"dataset": "egd-cxr", "dicom_id": dicom_id, "source": str(root)},
        anatomy=tuple(anatomy),
    )
