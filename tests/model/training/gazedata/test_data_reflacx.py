"""REFLACX layout: published columns, write/load round trip, quirks and malformed files."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from model.findings import FINDINGS_BY_KEY
from model.train.gazedata import reflacx
from model.train.gazedata.sample import GazeFixation, GazeSample
from model.train.gazedata.tables import DataFormatError

# Column lists as published in ricbl/eyetracking create_main_table.py / ASC2MAT.py.
PUBLISHED_FIXATIONS = [
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
    "pupil_area_normalized", "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree", "window_width", "window_level",
    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
    "ymax_shown_from_image", "xmin_in_screen_coordinates", "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates", "ymax_in_screen_coordinates",
]  # fmt: skip
PUBLISHED_GAZE = ["timestamp_sample", *PUBLISHED_FIXATIONS[2:]]
PUBLISHED_METADATA_HEAD = [
    "id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
    "image_size_x", "image_size_y",
]  # fmt: skip
PUBLISHED_PHASE3_LABELS = sorted([
    "Support devices", "Abnormal mediastinal contour", "Enlarged cardiac silhouette",
    "Enlarged hilum", "Hiatal hernia", "Pneumothorax", "Pleural abnormality", "Consolidation",
    "Groundglass opacity", "Atelectasis", "Lung nodule or mass", "Pulmonary edema",
    "High lung volume / emphysema", "Interstitial lung disease", "Acute fracture", "Other",
])  # fmt: skip


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


def _fix(s: GazeSample) -> list[tuple[float, float, float, float]]:
    return [(f.x, f.y, f.start_ms, f.duration_ms) for f in s.fixations]


def _boxes(s: GazeSample) -> list[tuple[str, float, float, float, float]]:
    return sorted(
        (b.key, b.x0, b.y0, b.x1, b.y1) for b in s.boxes if not FINDINGS_BY_KEY[b.key].device
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, small_samples: list[GazeSample]) -> Path:
    root = tmp_path_factory.mktemp("reflacx")
    reflacx.write_reflacx(small_samples, root, image_ext=".dcm")
    return root


def test_columns_match_published(written: Path) -> None:
    """Every written file has exactly the published REFLACX columns."""
    case = sorted((written / "main_data").glob("P300R*"))[0]
    assert list(reflacx.FIXATIONS_COLUMNS) == PUBLISHED_FIXATIONS
    assert _header(case / "fixations.csv") == PUBLISHED_FIXATIONS
    assert _header(written / "gaze_data" / case.name / "gaze.csv") == PUBLISHED_GAZE
    assert _header(case / "timestamps_transcription.csv") == [
        "word",
        "timestamp_start_word",
        "timestamp_end_word",
    ]
    assert _header(case / "chest_bounding_box.csv") == ["xmin", "ymin", "xmax", "ymax"]
    assert _header(case / "anomaly_location_ellipses.csv") == [
        "xmin",
        "ymin",
        "xmax",
        "ymax",
        "certainty",
        *PUBLISHED_PHASE3_LABELS,
    ]
    assert (
        _header(written / "main_data" / "metadata_phase_3.csv")
        == PUBLISHED_METADATA_HEAD + PUBLISHED_PHASE3_LABELS
    )


def test_round_trip(written: Path, small_samples: list[GazeSample]) -> None:
    """Synthetic -> REFLACX files -> loader gives back fixations, sentences, boxes, labels."""
    loaded = {s.meta["dicom_id"]: s for s in reflacx.load_reflacx(written)}
    assert len(loaded) == len(small_samples)
    for s in small_samples:
        back = loaded[s.sample_id]
        assert _fix(back) == _fix(s)
        assert back.sentences == s.sentences
        assert _boxes(back) == _boxes(s)
        assert dict(back.labels) == dict(s.labels)
        assert back.reader_id == s.reader_id
        assert back.view == s.view
        assert back.pixels_per_degree == s.pixels_per_degree
        assert back.anatomy == s.anatomy
        assert float(abs(back.image - s.image).max()) < 2e-3


def test_punctuation_tokens(written: Path) -> None:
    """Periods and commas are separate transcription tokens, glued back on load."""
    case = sorted((written / "main_data").glob("P300R*"))[0]
    with (case / "timestamps_transcription.csv").open() as f:
        words = [r["word"] for r in csv.DictReader(f)]
    assert "." in words
    text = (case / "transcription.txt").read_text()
    assert text.replace(".", " .").replace(",", " ,").split() == words
    sentences = reflacx.load_sentences(case / "timestamps_transcription.csv")
    assert all(s.text.endswith(".") and " ." not in s.text for s in sentences)


def test_off_image_fixations_kept(tmp_path: Path, small_samples: list[GazeSample]) -> None:
    """A fixation left of the image (dictation window) survives the round trip outside the image."""
    s = small_samples[0]
    extra = GazeFixation(-57.0, 30.0, s.fixations[-1].end_ms + 50, 200.0)
    s2 = dataclasses.replace(s, fixations=(*s.fixations, extra))
    reflacx.write_reflacx([s2], tmp_path, image_ext=".png")
    (back,) = reflacx.load_reflacx(tmp_path)
    assert back.fixations[-1].x == -57.0
    assert len(back.on_image_fixations()) == len(back.fixations) - 1 - sum(
        1 for f in s.fixations if f.x < 0 or f.x >= s.width
    )


def _corrupt(path: Path, row: int, column: str, value: str) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
        header = list(rows[0].keys())
    rows[row - 1][column] = value
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)


def test_malformed_cell_names_file_row_column(
    tmp_path: Path, small_samples: list[GazeSample]
) -> None:
    """A non-numeric fixation cell is refused with the file, row and column in the message."""
    reflacx.write_reflacx(small_samples[:1], tmp_path, image_ext=".png")
    path = next((tmp_path / "main_data").glob("P300R*")) / "fixations.csv"
    _corrupt(path, 3, "x_position", "left")
    with pytest.raises(DataFormatError) as err:
        list(reflacx.load_reflacx(tmp_path))
    msg = str(err.value)
    assert str(path) in msg and "row 3" in msg and "'x_position'" in msg


def test_missing_column_named(tmp_path: Path, small_samples: list[GazeSample]) -> None:
    """A transcription file without its end-time column is refused, naming file and column."""
    reflacx.write_reflacx(small_samples[:1], tmp_path, image_ext=".png")
    path = next((tmp_path / "main_data").glob("P300R*")) / "timestamps_transcription.csv"
    text = path.read_text().replace("timestamp_end_word", "end")
    path.write_text(text)
    with pytest.raises(DataFormatError, match="timestamp_end_word") as err:
        list(reflacx.load_reflacx(tmp_path))
    assert str(path) in str(err.value)


def test_unordered_ellipse_refused(tmp_path: Path, small_samples: list[GazeSample]) -> None:
    """An ellipse whose xmax is left of xmin is refused with its row and column."""
    sample = next(
        s for s in small_samples if any(not FINDINGS_BY_KEY[b.key].device for b in s.boxes)
    )
    reflacx.write_reflacx([sample], tmp_path, image_ext=".png")
    path = next((tmp_path / "main_data").glob("P300R*")) / "anomaly_location_ellipses.csv"
    _corrupt(path, 1, "xmax", "-5")
    with pytest.raises(DataFormatError, match=r"row 1 .*'xmax'"):
        list(reflacx.load_reflacx(tmp_path))


def test_discarded_cases_skipped(tmp_path: Path, small_samples: list[GazeSample]) -> None:
    """Cases flagged eye_tracking_data_discarded are not loaded."""
    reflacx.write_reflacx(small_samples[:2], tmp_path, image_ext=".png")
    meta = tmp_path / "main_data" / "metadata_phase_3.csv"
    _corrupt(meta, 1, "eye_tracking_data_discarded", "True")
    assert len(list(reflacx.load_reflacx(tmp_path))) == 1


def test_no_metadata_is_an_error(tmp_path: Path) -> None:
    """A folder without metadata_phase_N.csv is refused."""
    with pytest.raises(DataFormatError, match="metadata_phase"):
        list(reflacx.load_reflacx(tmp_path))


def test_certainty_labels(tmp_path: Path, small_samples: list[GazeSample]) -> None:
    """Metadata certainties count as positive from 3 ("Possibly") up; "Unlikely" (1) does not."""
    sample = next(s for s in small_samples if not s.labels["pneumothorax"])
    reflacx.write_reflacx([sample], tmp_path, image_ext=".png")
    meta = tmp_path / "main_data" / "metadata_phase_3.csv"
    _corrupt(meta, 1, "Pneumothorax", "1")
    (back,) = reflacx.load_reflacx(tmp_path)
    assert back.labels["pneumothorax"] is False
    _corrupt(meta, 1, "Pneumothorax", "4")
    (back,) = reflacx.load_reflacx(tmp_path)
    assert back.labels["pneumothorax"] is True
    _corrupt(meta, 1, "Pneumothorax", "maybe")
    with pytest.raises(DataFormatError, match=r"row 1 .*'Pneumothorax'"):
        list(reflacx.load_reflacx(tmp_path))


def test_unreadable_image_named_by_metadata(
    tmp_path: Path, small_samples: list[GazeSample]
) -> None:
    """A corrupt image is reported by metadata file, row and column, not by its own path."""
    reflacx.write_reflacx(small_samples[:1], tmp_path, image_ext=".dcm")
    next((tmp_path / "images").glob("*.dcm")).write_bytes(b"broken")
    with pytest.raises(DataFormatError) as err:
        list(reflacx.load_reflacx(tmp_path))
    msg = str(err.value)
    assert "metadata_phase_3.csv" in msg and "row 1" in msg and "'image'" in msg
    assert "images/" not in msg
