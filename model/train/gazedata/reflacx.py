"""REFLACX (Bigolin Lanfredi et al., 2022) file layout: writer and loader.

Over 400 lines on purpose: the writer and the loader of one layout share its column tables
and are tested as a round trip, so they stay in one module (as in ``egd``).

Layout (as built by ``post_processing_and_dataset_generation/create_main_table.py`` in
https://github.com/ricbl/eyetracking, commit 498726c)::

    main_data/metadata_phase_{N}.csv
    main_data/{id}/fixations.csv
    main_data/{id}/timestamps_transcription.csv
    main_data/{id}/transcription.txt
    main_data/{id}/anomaly_location_ellipses.csv
    main_data/{id}/chest_bounding_box.csv
    gaze_data/{id}/gaze.csv

Column lists, taken from that script:

- metadata: ``id, split, eye_tracking_data_discarded, image, dicom_id, subject_id,
  image_size_x, image_size_y`` + the label columns (sorted label names);
- fixations.csv: the renamed ``columns_fixations`` dict (``timestamp_start_fixation`` ...
  ``ymax_in_screen_coordinates``), times in seconds from the start of the audio recording,
  positions already in image pixel coordinates (``convert_screen_to_image_coordinates`` in
  ``ASC2MAT.py``), rounded to whole pixels;
- gaze.csv: the sample dict written by ``ASC2MAT.py`` (``timestamp_sample``, then the
  fixation columns without start/end), ``zoom_level`` dropped by create_main_table.py;
- timestamps_transcription.csv: ``word, timestamp_start_word, timestamp_end_word`` with
  punctuation as separate tokens (the script asserts
  ``transcription.replace('.', ' .').replace(',', ' ,') == ' '.join(words)``);
- anomaly_location_ellipses.csv: ``xmin, ymin, xmax, ymax, certainty`` + label columns;
- chest_bounding_box.csv: ``xmin, ymin, xmax, ymax``.

The phase-3 label set is ``labels_list`` of ``interface_src/interface/xray_et.m`` without
"Normal radiograph" (the same list as ``analyze_interrater_phase_3.py``).

Quirks handled by the loader: fixations outside the image are kept (coordinates outside
``[0, W] x [0, H]``); punctuation tokens are glued back to the words and sentences end at
"." tokens; metadata label cells may be booleans or certainties (positive from 3,
"Possibly", up); "Lung nodule or mass" and "Support devices" are split into our keys using
the transcription (then, for nodule/mass, the ellipse size: < 2.7 cm is a nodule, with
the chest box taken as 28 cm wide); cases with ``eye_tracking_data_discarded`` are skipped.
REFLACX does not publish which radiologist read a case; synthetic data written here keeps
its reader in an extra ``synthetic_reader.txt`` and its anatomical boxes in
``synthetic_anatomy.csv`` next to the case files, which real data lacks (``reader_id`` is
then ``"reflacx"`` and ``anatomy`` empty).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model.findings import DEVICE_KEYS, FINDING_KEYS, FINDINGS_BY_KEY
from model.train.gazedata.images import ImageFormatError, read_dicom, read_image, write_image
from model.train.gazedata.reports import finding_mentions, structure_report, vqa_from_labels
from model.train.gazedata.sample import (
    VIEWS,
    GazeFixation,
    GazeSample,
    LabeledBox,
    TranscriptSentence,
)
from model.train.gazedata.tables import DataFormatError, Row, read_table, write_table

logger = logging.getLogger(__name__)

#: Phase-3 labels (ricbl/eyetracking interface_src/interface/xray_et.m, sorted).
LABELS: tuple[str, ...] = tuple(
    sorted(
        [
            "Support devices",
            "Abnormal mediastinal contour",
            "Enlarged cardiac silhouette",
            "Enlarged hilum",
            "Hiatal hernia",
            "Pneumothorax",
            "Pleural abnormality",
            "Consolidation",
            "Groundglass opacity",
            "Atelectasis",
            "Lung nodule or mass",
            "Pulmonary edema",
            "High lung volume / emphysema",
            "Interstitial lung disease",
            "Acute fracture",
            "Other",
        ]
    )
)

METADATA_COLUMNS: tuple[str, ...] = (
    "id",
    "split",
    "eye_tracking_data_discarded",
    "image",
    "dicom_id",
    "subject_id",
    "image_size_x",
    "image_size_y",
    *LABELS,
)

#: create_main_table.py ``columns_fixations`` values, in order.
FIXATIONS_COLUMNS: tuple[str, ...] = (
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",
    "y_position",
    "pupil_area_normalized",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
    "window_width",
    "window_level",
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
    "xmin_in_screen_coordinates",
    "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
)

#: ASC2MAT.py sample row keys without ``zoom_level``.
GAZE_COLUMNS: tuple[str, ...] = ("timestamp_sample", *FIXATIONS_COLUMNS[2:])

TRANSCRIPTION_COLUMNS: tuple[str, ...] = ("word", "timestamp_start_word", "timestamp_end_word")
CHEST_BOX_COLUMNS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax")
ELLIPSE_COLUMNS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax", "certainty", *LABELS)

#: Synthetic-only sidecar with the anatomical boxes (EGD bounding_boxes.csv columns).
ANATOMY_COLUMNS: tuple[str, ...] = ("bbox_name", "x1", "x2", "y1", "y2")

#: REFLACX label -> our finding keys (several keys: disambiguated from the transcription).
LABEL_KEYS: dict[str, tuple[str, ...]] = {
    "Enlarged cardiac silhouette": ("cardiomegaly",),
    "Pleural abnormality": ("pleural_effusion",),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation",),
    "Pulmonary edema": ("pulmonary_edema",),
    "Atelectasis": ("atelectasis",),
    "Lung nodule or mass": ("nodule", "mass"),
    "Support devices": DEVICE_KEYS,
    # phase 1 and 2 label names
    "Pleural effusion": ("pleural_effusion",),
    "Nodule": ("nodule",),
    "Mass": ("mass",),
}
KEY_LABEL: dict[str, str] = {
    k: label for label, keys in LABEL_KEYS.items() if label in LABELS for k in keys
}

#: Screen of the REFLACX reading room (3840 x 2160 monitor, ASC2MAT.py calibration targets).
SCREEN = (3840, 2160)
NODULE_MAX_CM = 2.7
CHEST_BOX_CM = 28.0
POSITIVE_CERTAINTY = 3.0

ImageResolver = Callable[[str, str], Path | None]


# ----------------------------------------------------------------------------- writer


def reflacx_id(sample: GazeSample) -> str:
    """A REFLACX-style id (``P300R`` + 6 digits) derived from the sample id."""
    digits = re.sub(r"\D", "", sample.sample_id)[-6:].rjust(6, "0")
    return f"P300R{digits}"


def _tokens(text: str) -> list[str]:
    return text.replace(".", " .").replace(",", " ,").split()


def _word_rows(sentence: TranscriptSentence) -> list[dict[str, object]]:
    """Spread a sentence's time over its tokens (integer ms, punctuation gets a short slot)."""
    toks = _tokens(sentence.text)
    weights = [1.0 if t in ".," else 2.0 + len(t) for t in toks]
    total = sum(weights)
    span = sentence.end_ms - sentence.start_ms
    rows: list[dict[str, object]] = []
    acc = 0.0
    for tok, wgt in zip(toks, weights, strict=True):
        a = sentence.start_ms + round(span * acc / total)
        acc += wgt
        b = sentence.start_ms + round(span * acc / total)
        rows.append(
            {
                "word": tok,
                "timestamp_start_word": f"{a / 1000:.3f}",
                "timestamp_end_word": f"{b / 1000:.3f}",
            }
        )
    return rows


def _screen_rect(width: int, height: int) -> tuple[int, int, int, int]:
    sw, sh = SCREEN
    scale = min(sw / width, sh / height)
    w, h = round(width * scale), round(height * scale)
    x0, y0 = (sw - w) // 2, (sh - h) // 2
    return x0, y0, x0 + w, y0 + h


def gaze_samples(sample: GazeSample, hz: float = 60.0) -> npt.NDArray[np.float64]:
    """Raw gaze samples (t seconds, x, y): jitter around each fixation, linear saccades."""
    fx = sample.fixations
    if not fx:
        return np.zeros((0, 3))
    rng = np.random.default_rng(len(fx) * 7919 + int(fx[0].start_ms))
    times = np.arange(0.0, fx[-1].end_ms, 1000.0 / hz)
    starts = np.array([f.start_ms for f in fx])
    ends = np.array([f.end_ms for f in fx])
    xs = np.array([f.x for f in fx])
    ys = np.array([f.y for f in fx])
    idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(fx) - 1)
    in_fix = times < ends[idx]
    nxt = np.clip(idx + 1, 0, len(fx) - 1)
    gap = np.maximum(starts[nxt] - ends[idx], 1.0)
    a = np.clip((times - ends[idx]) / gap, 0.0, 1.0)
    gx = np.where(in_fix, xs[idx], xs[idx] + a * (xs[nxt] - xs[idx]))
    gy = np.where(in_fix, ys[idx], ys[idx] + a * (ys[nxt] - ys[idx]))
    jitter = 0.15 * (sample.pixels_per_degree or 10.0)
    gx = gx + jitter * rng.standard_normal(times.size)
    gy = gy + jitter * rng.standard_normal(times.size)
    return np.stack([times / 1000.0, np.rint(gx), np.rint(gy)], axis=1)


def write_case(
    sample: GazeSample,
    root: Path,
    image_ext: str = ".dcm",
    gaze_hz: float = 60.0,
    with_image: bool = True,
) -> dict[str, object]:
    """Write one case's files (and its image, unless ``with_image`` is False) under ``root``
    and return its metadata row."""
    cid = reflacx_id(sample)
    case = root / "main_data" / cid
    case.mkdir(parents=True, exist_ok=True)
    h, w = sample.height, sample.width
    ppd = round(sample.pixels_per_degree or 10.0)
    sx0, sy0, sx1, sy1 = _screen_rect(w, h)
    common = {
        "angular_resolution_x_pixels_per_degree": str(ppd),
        "angular_resolution_y_pixels_per_degree": str(ppd),
        "window_width": "1",
        "window_level": "0.5",
        "xmin_shown_from_image": "0",
        "ymin_shown_from_image": "0",
        "xmax_shown_from_image": str(w),
        "ymax_shown_from_image": str(h),
        "xmin_in_screen_coordinates": str(sx0),
        "ymin_in_screen_coordinates": str(sy0),
        "xmax_in_screen_coordinates": str(sx1),
        "ymax_in_screen_coordinates": str(sy1),
    }
    fix_rows = []
    for i, f in enumerate(sample.fixations):
        if (
            f.x != round(f.x)
            or f.y != round(f.y)
            or f.start_ms != round(f.start_ms)
            or f.duration_ms != round(f.duration_ms)
        ):
            raise ValueError(
                f"sample {sample.sample_id}: REFLACX stores whole pixels and milliseconds"
            )
        fix_rows.append(
            {
                "timestamp_start_fixation": f"{f.start_ms / 1000:.3f}",
                "timestamp_end_fixation": f"{f.end_ms / 1000:.3f}",
                "x_position": str(int(f.x)),
                "y_position": str(int(f.y)),
                "pupil_area_normalized": f"{1.0 + 0.05 * math.sin(i):.3f}",
                **common,
            }
        )
    write_table(case / "fixations.csv", FIXATIONS_COLUMNS, fix_rows)
    tail = ",".join(["1.000", *(common[c] for c in GAZE_COLUMNS[4:])])
    lines = [",".join(GAZE_COLUMNS)]
    lines += [f"{t:.3f},{x:.0f},{y:.0f},{tail}" for t, x, y in gaze_samples(sample, gaze_hz)]
    gaze_path = root / "gaze_data" / cid / "gaze.csv"
    gaze_path.parent.mkdir(parents=True, exist_ok=True)
    gaze_path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    words = [r for s in sample.sentences for r in _word_rows(s)]
    write_table(case / "timestamps_transcription.csv", TRANSCRIPTION_COLUMNS, words)
    (case / "transcription.txt").write_text(
        " ".join(s.text for s in sample.sentences), encoding="utf-8"
    )
    ellipses = []
    for b in sample.boxes:
        if FINDINGS_BY_KEY[b.key].device:  # ellipses are optional for support devices
            continue
        row: dict[str, object] = {
            "xmin": str(round(b.x0)),
            "ymin": str(round(b.y0)),
            "xmax": str(round(b.x1)),
            "ymax": str(round(b.y1)),
            "certainty": "5",
        }
        row.update({lab: str(lab == KEY_LABEL.get(b.key)) for lab in LABELS})
        ellipses.append(row)
    write_table(case / "anomaly_location_ellipses.csv", ELLIPSE_COLUMNS, ellipses)
    chest = _chest_box(sample)
    write_table(
        case / "chest_bounding_box.csv",
        CHEST_BOX_COLUMNS,
        [dict(zip(CHEST_BOX_COLUMNS, map(str, chest), strict=True))],
    )
    (case / "synthetic_reader.txt").write_text(sample.reader_id, encoding="utf-8")
    write_table(
        case / "synthetic_anatomy.csv",
        ANATOMY_COLUMNS,
        [
            {
                "bbox_name": b.key,
                "x1": repr(b.x0),
                "x2": repr(b.x1),
                "y1": repr(b.y0),
                "y2": repr(b.y1),
            }
            for b in sample.anatomy
        ],
    )
    image_rel = Path("images") / f"{sample.sample_id}{image_ext}"
    if with_image:
        write_image(root / image_rel, sample.image, sample_id=sample.sample_id, view=sample.view)
    meta: dict[str, object] = {
        "id": cid,
        "split": "train",
        "eye_tracking_data_discarded": "False",
        "image": image_rel.as_posix(),
        "dicom_id": sample.sample_id,
        "subject_id": re.sub(r"\D", "", sample.sample_id) or "0",
        "image_size_x": str(w),
        "image_size_y": str(h),
    }
    for lab in LABELS:
        keys = LABEL_KEYS.get(lab, ())
        positive = any(sample.labels.get(k, False) for k in keys)
        meta[lab] = str(positive) if lab == "Support devices" else ("5" if positive else "0")
    meta["Other"] = ""
    return meta


def _chest_box(sample: GazeSample) -> tuple[int, int, int, int]:
    lungs = [b for b in sample.anatomy if b.key in ("right lung", "left lung")]
    if not lungs:
        return (0, 0, sample.width, sample.height)
    return (
        math.floor(min(b.x0 for b in lungs)),
        math.floor(min(b.y0 for b in lungs)),
        math.ceil(max(b.x1 for b in lungs)),
        math.ceil(max(b.y1 for b in lungs)),
    )


def write_metadata(rows: list[dict[str, object]], root: Path, phase: int = 3) -> Path:
    path = root / "main_data" / f"metadata_phase_{phase}.csv"
    write_table(path, METADATA_COLUMNS, sorted(rows, key=lambda r: str(r["id"])))
    return path


def write_reflacx(samples: list[GazeSample], root: Path, image_ext: str = ".dcm") -> Path:
    """Write samples as a REFLACX phase-3 dataset under ``root``; returns the metadata path."""
    return write_metadata([write_case(s, root, image_ext) for s in samples], root)


# ----------------------------------------------------------------------------- loader


def metadata_files(root: Path) -> list[Path]:
    found = sorted(root.glob("main_data/metadata_phase_*.csv")) + sorted(
        root.glob("metadata_phase_*.csv")
    )
    found += sorted(root.glob("metadata.csv"))  # MIMIC-Eye per-patient REFLACX folders
    return found


def _label_positive(row: Row, label: str) -> bool:
    raw = row.text(label).strip()
    if raw.lower() in ("true", "false", ""):
        return raw.lower() == "true"
    value = row.number(label)
    return value >= POSITIVE_CERTAINTY


def load_sentences(path: Path) -> tuple[TranscriptSentence, ...]:
    """Sentences from timestamps_transcription.csv: tokens up to each "." token."""
    rows = read_table(path, TRANSCRIPTION_COLUMNS)
    out: list[TranscriptSentence] = []
    words: list[str] = []
    start = end = 0.0
    for r in rows:
        word = r.text("word").strip()
        a = r.number("timestamp_start_word") * 1000.0
        b = r.number("timestamp_end_word") * 1000.0
        if b < a:
            raise r.error(
                "timestamp_end_word", f"ends before it starts ({b / 1000:.3f} < {a / 1000:.3f})"
            )
        if not words:
            start = a
        words.append(word)
        end = b
        if word == ".":
            out.append(TranscriptSentence(_join(words), float(round(start)), float(round(end))))
            words = []
    if words:
        out.append(TranscriptSentence(_join(words), float(round(start)), float(round(end))))
    return tuple(out)


def _join(tokens: list[str]) -> str:
    return re.sub(r" ([.,])", r"\1", " ".join(tokens)).strip()


def load_fixations(path: Path) -> tuple[tuple[GazeFixation, ...], float | None]:
    """Fixations (image pixels, ms) and the median pixels-per-degree of fixations.csv."""
    rows = read_table(path, FIXATIONS_COLUMNS)
    fixations: list[GazeFixation] = []
    ppd: list[float] = []
    for r in rows:
        a = r.number("timestamp_start_fixation") * 1000.0
        b = r.number("timestamp_end_fixation") * 1000.0
        if b < a:
            raise r.error("timestamp_end_fixation", "fixation ends before it starts")
        x = r.number("x_position")
        y = r.number("y_position")
        fixations.append(GazeFixation(x, y, float(round(a)), float(round(b) - round(a))))
        ax = r.optional_number("angular_resolution_x_pixels_per_degree")
        ay = r.optional_number("angular_resolution_y_pixels_per_degree")
        if ax is not None and ay is not None:
            ppd.append((ax + ay) / 2.0)
    return tuple(fixations), (float(np.median(ppd)) if ppd else None)


def load_ellipses(path: Path, transcript: str, chest_width_px: float) -> list[LabeledBox]:
    rows = read_table(path, ("xmin", "ymin", "xmax", "ymax", "certainty"))
    mentions = finding_mentions(transcript)
    boxes: list[LabeledBox] = []
    for r in rows:
        x0, y0, x1, y1 = (r.number(c) for c in ("xmin", "ymin", "xmax", "ymax"))
        if x1 < x0 or y1 < y0:
            raise r.error("xmax", "ellipse box is not ordered (xmin <= xmax, ymin <= ymax)")
        for label, keys in LABEL_KEYS.items():
            if not r.has(label) or not r.flag(label):
                continue
            for key in _resolve(keys, mentions, (x1 - x0, y1 - y0), chest_width_px):
                boxes.append(LabeledBox(key, x0, y0, x1, y1))
    return boxes


def _resolve(
    keys: tuple[str, ...],
    mentions: dict[str, bool],
    size: tuple[float, float] | None,
    chest_width_px: float,
) -> tuple[str, ...]:
    if len(keys) == 1:
        return keys
    said = tuple(k for k in keys if mentions.get(k))
    if len(said) == 1 or (said and size is None):
        return said
    if keys == ("nodule", "mass") and size is not None:
        cm = max(size) * CHEST_BOX_CM / max(chest_width_px, 1.0)
        return ("nodule",) if cm < NODULE_MAX_CM else ("mass",)
    return said


def default_resolver(root: Path, images_root: Path | None) -> ImageResolver:
    """Find an image by the metadata ``image`` path: as given, under root, or its
    ``files/pXX/...`` tail under ``images_root`` (a MIMIC-CXR copy)."""

    def resolve(dicom_id: str, image: str) -> Path | None:
        p = Path(image)
        candidates = [p, root / p]
        parts = p.parts
        if images_root is not None:
            candidates.append(images_root / p)
            if "files" in parts:
                candidates.append(images_root / Path(*parts[parts.index("files") :]))
            candidates += [images_root / f"{dicom_id}{ext}" for ext in (".dcm", ".png", ".jpg")]
        for c in candidates:
            if c.is_file():
                return c
        return None

    return resolve


def load_case(
    root: Path,
    meta: Row,
    resolver: ImageResolver,
    *,
    load_image: bool = True,
) -> GazeSample:
    """One REFLACX case from its metadata row."""
    cid = meta.text("id")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", cid):
        raise meta.error("id", "not a REFLACX case id")
    case = root / "main_data" / cid
    if not case.is_dir():
        case = root / cid
    if not case.is_dir():
        raise meta.error("id", f"case folder main_data/{cid} not found")
    width = int(meta.number("image_size_x"))
    height = int(meta.number("image_size_y"))
    if width <= 0 or height <= 0:
        raise meta.error("image_size_x", "image size must be positive")
    fixations, ppd = load_fixations(case / "fixations.csv")
    sentences = load_sentences(case / "timestamps_transcription.csv")
    transcript = " ".join(s.text for s in sentences)
    chest = read_table(case / "chest_bounding_box.csv", CHEST_BOX_COLUMNS)
    chest_box = (
        tuple(chest[0].number(c) for c in CHEST_BOX_COLUMNS) if chest else (0.0, 0.0, width, height)
    )
    boxes = load_ellipses(
        case / "anomaly_location_ellipses.csv", transcript, chest_box[2] - chest_box[0]
    )
    mentions = finding_mentions(transcript)
    labels = dict.fromkeys(FINDING_KEYS, False)
    for label, keys in LABEL_KEYS.items():
        if meta.has(label) and _label_positive(meta, label):
            chosen = {k for k in keys if mentions.get(k)} if len(keys) > 1 else set(keys)
            chosen |= {b.key for b in boxes if b.key in keys}
            for k in chosen:
                labels[k] = True
    image_ref = meta.text("image")
    dicom_id = meta.text("dicom_id")
    view = "PA"
    if load_image:
        path = resolver(dicom_id, image_ref)
        if path is None:
            raise meta.error("image", "image file not found (pass images_root)")
        try:
            if path.suffix.lower() == ".dcm":
                image, info = read_dicom(path)
                position = info.get("ViewPosition", "")
                view = position if position in VIEWS else view
            else:
                image = read_image(path)
        except ImageFormatError as exc:  # the image path holds the MIMIC patient folder
            raise meta.error("image", f"image file unreadable ({exc.reason})") from None
        if image.shape != (height, width):
            raise meta.error(
                "image_size_x",
                f"image is {image.shape[1]} x {image.shape[0]}, metadata says {width} x {height}",
            )
    else:
        image = np.zeros((height, width), dtype=np.float32)
    anatomy: list[LabeledBox] = []
    if (case / "synthetic_anatomy.csv").is_file():
        for r in read_table(case / "synthetic_anatomy.csv", ANATOMY_COLUMNS):
            x1, x2, y1, y2 = (r.number(c) for c in ("x1", "x2", "y1", "y2"))
            if x2 < x1 or y2 < y1:
                raise r.error("x2", "box is not ordered (x1 <= x2, y1 <= y2)")
            anatomy.append(LabeledBox(r.text("bbox_name"), x1, y1, x2, y2))
    reader_file = case / "synthetic_reader.txt"
    reader_id = (
        reader_file.read_text(encoding="utf-8").strip() if reader_file.is_file() else "reflacx"
    )
    report = structure_report(sentences)
    return GazeSample(
        sample_id=cid,
        image=image,
        view=view,
        reader_id=reader_id,
        pixels_per_degree=ppd,
        fixations=fixations,
        sentences=sentences,
        labels=labels,
        boxes=tuple(boxes),
        masks=None,
        report=report,
        vqa=vqa_from_labels(labels),
        meta={
            "dataset": "reflacx",
            "dicom_id": dicom_id,
            "chest_box": ",".join(f"{v:g}" for v in chest_box),
            "source": str(case),
        },
        anatomy=tuple(anatomy),
    )


def load_reflacx(
    root: Path,
    *,
    images_root: Path | None = None,
    resolver: ImageResolver | None = None,
    load_images: bool = True,
) -> Iterator[GazeSample]:
    """Every non-discarded case of a REFLACX copy at ``root`` (all phases found)."""
    files = metadata_files(root)
    if not files:
        raise DataFormatError(f"{root}: no main_data/metadata_phase_N.csv found")
    resolve = resolver or default_resolver(root, images_root)
    base = root
    for path in files:
        rows = read_table(path, METADATA_COLUMNS[:8])
        for meta in rows:
            if meta.flag("eye_tracking_data_discarded"):
                continue
            yield load_case(base, meta, resolve, load_image=load_images)
