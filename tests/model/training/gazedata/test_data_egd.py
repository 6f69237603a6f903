"""EGD-CXR layout: published columns, screen/image mapping, round trip, malformed files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from model.train.gazedata import egd
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.tables import DataFormatError

# Header of the published fixations.csv (Gazepoint fields + mapping columns).
PUBLISHED_FIXATIONS = [
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
]


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, nonsquare_samples: list[GazeSample]) -> Path:
    root = tmp_path_factory.mktemp("egd")
    egd.write_egd(nonsquare_samples, root, image_ext=".dcm")
    return root


def test_columns_match_published(written: Path) -> None:
    """The four EGD tables are written with the published columns."""
    assert _header(written / "fixations.csv") == PUBLISHED_FIXATIONS
    assert _header(written / "eye_gaze.csv") == PUBLISHED_FIXATIONS
    assert _header(written / "bounding_boxes.csv") == [
        "dicom_id",
        "bbox_name",
        "x1",
        "x2",
        "y1",
        "y2",
    ]
    master = _header(written / "master_sheet.csv")
    assert len(master) == 59
    assert master[:11] == [
        "dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age",
        "image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad",
    ]  # fmt: skip
    for needed in ("FPOGX", "FPOGY", "FPOGS", "FPOGD", "X_ORIGINAL", "Y_ORIGINAL"):
        assert needed in egd.FIXATIONS_COLUMNS


def test_round_trip(written: Path, nonsquare_samples: list[GazeSample]) -> None:
    """Synthetic -> EGD files -> loader gives the same fixations, sentences and anatomical boxes."""
    loaded = {s.sample_id: s for s in egd.load_egd(written)}
    for s in nonsquare_samples:
        back = loaded[s.sample_id]
        assert [(f.x, f.y, f.start_ms, f.duration_ms) for f in back.fixations] == [
            (f.x, f.y, f.start_ms, f.duration_ms) for f in s.fixations
        ]
        assert back.sentences == s.sentences
        assert back.anatomy == s.anatomy
        assert back.reader_id == s.reader_id
        assert back.image.shape == (160, 128)
        on = [f for f in back.fixations if 0 <= f.x < 128 and 0 <= f.y < 160]
        assert all((f.region is None) == (f.step is None) for f in on)
        assert sum(f.region is not None for f in on) >= 0.8 * len(on)


def test_padding_mapping_and_x_original(written: Path) -> None:
    """Screen fractions map back through the padding; off-image X_ORIGINAL follows the script."""
    pads = egd.screen_padding(128, 160)
    assert pads[0] == 0 and pads[2] > 0  # portrait image: side bars
    fx, fy = egd.image_to_screen(100.0, 40.0, (128, 160), pads)
    assert egd.screen_to_image(fx, fy, (128, 160), pads) == pytest.approx((100.0, 40.0))
    xo, yo = egd._original(0.01, 0.5, (128, 160), pads)  # on the left padding
    # the script stores int(W / resized_width * -1): 0 for this small image, < 0 for real ones
    assert (xo, yo) == (
        int(128 / (1920 - pads[2] - pads[3]) * -1),
        int(160 / (1080 - pads[0] - pads[1]) * -1),
    )
    assert egd._original(0.01, 0.5, (2544, 3056), egd.screen_padding(2544, 3056))[0] < 0
    with (written / "fixations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(int(r["X_ORIGINAL"]) >= -1 for r in rows)


def test_master_sheet_labels(written: Path, nonsquare_samples: list[GazeSample]) -> None:
    """Unambiguous labels come back from the CheXpert-style master sheet columns."""
    loaded = {s.sample_id: s for s in egd.load_egd(written)}
    for s in nonsquare_samples:
        for key in (
            "cardiomegaly",
            "pleural_effusion",
            "pneumothorax",
            "consolidation",
            "atelectasis",
        ):
            assert loaded[s.sample_id].labels[key] == s.labels[key]


def test_bad_transcript_named(tmp_path: Path, nonsquare_samples: list[GazeSample]) -> None:
    """A transcript phrase without end_time is refused, naming the file, item and field."""
    egd.write_egd(nonsquare_samples[:1], tmp_path, image_ext=".png")
    path = (
        tmp_path
        / "audio_segmentation_transcripts"
        / nonsquare_samples[0].sample_id
        / "transcript.json"
    )
    data = json.loads(path.read_text())
    del data["time_stamped_text"][1]["end_time"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError) as err:
        list(egd.load_egd(tmp_path))
    assert (
        str(path) in str(err.value) and "item 2" in str(err.value) and "end_time" in str(err.value)
    )


def test_bad_fixation_cell_named(tmp_path: Path, nonsquare_samples: list[GazeSample]) -> None:
    """A non-numeric FPOGX is refused with file, row and column."""
    egd.write_egd(nonsquare_samples[:1], tmp_path, image_ext=".png")
    path = tmp_path / "fixations.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[4].split(",")
    cells[header.index("FPOGX")] = "n/a"
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"row 4 .*'FPOGX'.*'n/a'") as err:
        list(egd.load_egd(tmp_path))
    assert str(path) in str(err.value)


def test_negative_padding_refused(tmp_path: Path, nonsquare_samples: list[GazeSample]) -> None:
    """A negative image_left_pad in master_sheet.csv is refused with its row and column."""
    egd.write_egd(nonsquare_samples[:1], tmp_path, image_ext=".png")
    path = tmp_path / "master_sheet.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["image_left_pad"] = "-3"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataFormatError, match=r"row 1 .*'image_left_pad'"):
        list(egd.load_egd(tmp_path))


def test_chexpert_uncertain_is_not_positive(
    tmp_path: Path, nonsquare_samples: list[GazeSample]
) -> None:
    """CheXpert -1 (uncertain) and blank cells do not make a label positive; 1 does."""
    sample = nonsquare_samples[0]
    egd.write_egd([sample], tmp_path, image_ext=".png")
    path = tmp_path / "master_sheet.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for value, expected in (("-1", False), ("", False), ("1", True)):
        rows[0]["pneumothorax__chx"] = value
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (back,) = egd.load_egd(tmp_path)
        assert back.labels["pneumothorax"] is expected
