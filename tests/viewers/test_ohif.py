"""OHIF v3 (the prebuilt npm dist) shows the node's output in a real Chromium reading a real
Orthanc over DICOMweb: the film displays, and each result object opens without crashing the
viewer and draws what it encodes.

Screenshots and report.json land in pytest's tmp folders (ohif-film*, ohif-results*) and in
``$GAZEX_VIEWER_ARTEFACTS`` when it is set. OHIF v3 has no presentation-state support: the
GSPS is refused cleanly here, and shown applied by DICOMscope in test_gsps_viewer.py.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from ohifkit import ViewerReport, coloured_fraction, viewport_pixels
from result_study import KINDS, ResultStudy

from sr_templates.content import fixation_radius

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.viewer]


def _present(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in result["findings"] if f["present"]]


def _mentions(label: str, name: str, probability: float) -> bool:
    """The label names the finding and gives its probability (as a percentage or a
    fraction, at whatever precision)."""
    numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", label)]
    return name.lower() in label.lower() and any(
        abs(n - 100 * probability) <= 0.5 or abs(n - probability) <= 0.005 for n in numbers
    )


def _lists_the_findings(report: ViewerReport, grounded: list[dict[str, Any]]) -> None:
    """OHIF offered to load the findings SR into its measurement panel ("Do you want to
    continue tracking measurements for this study?"), the driver answered Yes, and the panel
    lists one row per boxed finding, titled with its name and probability (the SR's
    Comment), with OHIF's own rectangle drawn for each on the film."""
    where = f"panel {report.panel_items} (steps {report.steps}; screenshot {report.screenshot})"
    assert "SR load offered: yes" in report.steps, where
    assert len(report.panel_items) == len(grounded), where
    for finding in grounded:
        name, probability = finding["code"]["meaning"], finding["probability"]
        rows = [row for row in report.panel_items if _mentions(row, name, probability)]
        assert len(rows) == 1, f"no single row with {name} {probability:.1%}: {where}"


def _each_fixation_labelled_once(result: dict[str, Any], labels: list[str], where: str) -> None:
    """One label per fixated spot (fixations within two circle radii of its first), one
    line "Fixation: <n>.00 {<step>}" per visit there: repeated or adjacent visits stack in
    one box instead of piling up at the same place."""
    trajectory = result["trajectory"]
    drawn = [label for label in labels if label]  # a group without a NUM draws an empty text
    lines = [line for label in drawn for line in label.splitlines()]
    expected = [f"Fixation: {n}.00 {{{f['step']}}}" for n, f in enumerate(trajectory, start=1)]
    assert sorted(lines) == sorted(expected), where
    source = result["source"]
    within = 2 * fixation_radius(source["Rows"], source["Columns"])
    spots: list[tuple[float, float]] = []
    for f in trajectory:
        if all(np.hypot(f["x"] - x, f["y"] - y) > within for x, y in spots):
            spots.append((f["x"], f["y"]))
    assert len(drawn) == len(spots), where


def _shows_cleanly(report: ViewerReport) -> None:
    where = f"(screenshot {report.screenshot}; steps {report.steps})"
    assert not report.page_errors, f"page errors {report.page_errors} {where}"
    assert not report.error_boundary, f"error boundary {report.boundary_errors} {where}"
    assert not report.unsupported, f"OHIF: unsupported {report.series_messages} {where}"
    errors = [notice for notice in report.notices if notice.startswith("error:")]
    assert not errors, f"OHIF says {errors} {where}"
    assert report.series_opened, f"the series is not in the active viewport {where}"
    assert report.rendered, f"no image drawn {where}"
    assert not report.timed_out, f"the page did not settle {where}"
    assert not report.blocked_requests, f"requests off loopback {report.blocked_requests}"


def test_film_displays(film_report: ViewerReport) -> None:
    """A synthetic DX film opens in OHIF without a page error or an error boundary, using
    nothing but loopback, and its viewport shows a grey-level image, not a black box."""
    _shows_cleanly(film_report)
    mean, spread = viewport_pixels(film_report)
    assert mean > 20 and spread > 10, f"viewport mean {mean:.1f}, sd {spread:.1f}"
    assert coloured_fraction(film_report) < 0.002
    assert film_report.annotations == 0


def test_ohif_refuses_the_gsps_cleanly(result_reports: dict[str, ViewerReport]) -> None:
    """OHIF v3 does not apply presentation states: it marks the GSPS series unsupported
    (UNSUPPORTED_SOP_CLASS_UID) and says so, without a crash; DICOMscope shows it applied
    (test_gsps_viewer.py)."""
    report = result_reports["gsps"]
    assert report.unsupported, report.series_messages
    assert not report.page_errors and not report.error_boundary, report.boundary_errors
    assert report.rendered and not report.timed_out


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "gsps"])
def test_result_object_displays(
    kind: str, result_reports: dict[str, ViewerReport], result_study: ResultStudy
) -> None:
    """Each result object's series, double-clicked in OHIF's study browser, opens on the film
    without a crash and draws what it encodes: one annotation per grounded present finding
    (SR) or per fixation plus the path (trajectory SR), labels that carry each present
    finding's name and probability, and once the findings SR is loaded, one row per grounded
    finding in the measurement panel, titled with its name and probability; a named segment
    per grounded finding over its box (SEG), a colour fusion that is red where the model
    attended most (attention map)."""
    report = result_reports[kind]
    _shows_cleanly(report)
    result = result_study.result
    present = _present(result)
    grounded = [f for f in present if f["box"] is not None]
    where = f"labels {report.labels} (screenshot {report.screenshot})"
    if kind == "trajectory_sr":
        assert report.annotations == len(result["trajectory"]) + 1, where
        _each_fixation_labelled_once(result, report.labels, where)
        # Fixations are evidence, not measurements to edit: OHIF has no tool for them and
        # does not offer to load this SR into its panel (docs/VIEWERS.md).
        assert "SR load offered: no" in report.steps and not report.panel_items, where
    elif kind == "findings_sr":
        assert len(grounded) >= 2, f"the film under test should show two findings at least: {where}"
        assert report.annotations == len(grounded), where
        for finding in present:
            name, probability = finding["code"]["meaning"], finding["probability"]
            assert any(_mentions(label, name, probability) for label in report.labels), (
                f"no label with {name} {probability:.1%}: {where}"
            )
        _lists_the_findings(report, grounded)
    elif kind == "seg_binary":
        _draws_the_segments(report, result, grounded)
    else:
        _draws_the_attention_map(report, result)


#: screenshot pixels at the top of the viewport that OHIF's prompt bar may cover
_PROMPT_BAND = 110


def _screen_point(report: ViewerReport, result: dict[str, Any], x: float, y: float) -> Any:
    """Where source point (x, y) (SCOORD: column, row) lies in the screenshot: OHIF fits the
    film to the viewport and centres it."""
    rows, columns = result["source"]["Rows"], result["source"]["Columns"]
    assert report.viewport_box is not None
    left, top, width, height = report.viewport_box
    scale = min(width / columns, height / rows)
    return (
        left + (width - columns * scale) / 2 + x * scale,
        top + (height - rows * scale) / 2 + y * scale,
    )


def _draws_the_segments(
    report: ViewerReport, result: dict[str, Any], grounded: list[dict[str, Any]]
) -> None:
    """The SEG's overlay: a segment per grounded finding, named after it, coloured pixels
    on the film, nearly all of them inside the findings' boxes."""
    from PIL import Image

    where = f"segments {report.segment_labels} (screenshot {report.screenshot})"
    names = sorted(f["code"]["meaning"] for f in grounded)
    assert sorted(report.segment_labels) == names, where
    assert coloured_fraction(report) > 0.01, f"no coloured overlay: {where}"
    with Image.open(report.screenshot) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    inside = np.zeros(coloured.shape, dtype=bool)
    for finding in grounded:
        box = finding["box"]
        x0, y0 = _screen_point(report, result, box["x0"], box["y0"])
        x1, y1 = _screen_point(report, result, box["x1"], box["y1"])
        inside[int(y0) - 2 : int(np.ceil(y1)) + 2, int(x0) - 2 : int(np.ceil(x1)) + 2] = True
    # The viewport less its top band, where OHIF puts its "Do you want to open this
    # Segmentation?" prompt and its SEG / LOAD buttons (blue, so coloured too).
    left, top, width, height = report.viewport_box or (0, 0, 0, 0)
    view = np.zeros(coloured.shape, dtype=bool)
    view[top + _PROMPT_BAND : top + height - 4, left + 4 : left + width - 4] = True
    drawn = coloured & view
    assert (drawn & inside).sum() > 0.9 * drawn.sum(), f"overlay outside the boxes: {where}"


def _draws_the_attention_map(report: ViewerReport, result: dict[str, Any]) -> None:
    """The attention map as OHIF draws a Parametric Map: a colour fusion over the film (its
    rainbow scale, low values violet, high ones red), red where the model looked most and
    violet where it looked least."""
    from PIL import Image

    where = f"(screenshot {report.screenshot}; steps {report.steps})"
    assert coloured_fraction(report) > 0.2, f"no colour fusion: {where}"
    attention = np.asarray(result["attention"], dtype=float)
    rows, columns = result["source"]["Rows"], result["source"]["Columns"]

    def warmth(index: int) -> float:
        """Red minus blue in the screenshot around the centre of attention cell ``index``."""
        r, c = np.unravel_index(index, attention.shape)
        x = (c + 0.5) * columns / attention.shape[1]
        y = (r + 0.5) * rows / attention.shape[0]
        px, py = _screen_point(report, result, x, y)
        patch = rgb[int(py) - 3 : int(py) + 4, int(px) - 3 : int(px) + 4].reshape(-1, 3)
        return float(patch[:, 0].mean() - patch[:, 2].mean())

    with Image.open(report.screenshot) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    hottest, coldest = warmth(int(attention.argmax())), warmth(int(attention.argmin()))
    assert hottest > 40 and hottest - coldest > 80, f"red {hottest}, violet {coldest}: {where}"


def test_no_attention_map_for_a_film_without_spacing(quirky_study: ResultStudy) -> None:
    """OHIF 3.13.2 fuses a parametric map onto a volume built from the film, with spacing
    [NaN, NaN, 1] when the film has none, and its viewer route crashes ('vtkMaximumNumber
    OfSamples NaN', then 'setContext' of null) whatever the map says: so a film without
    pixel spacing gets no map; its SR, SEG and GSPS are written."""
    assert "attention_map" not in quirky_study.objects
    assert {"findings_sr", "trajectory_sr", "seg_binary", "gsps"} <= set(quirky_study.objects)


@pytest.mark.parametrize("kind", ["findings_sr", "seg_binary"])
def test_objects_of_a_quirky_film_display(
    kind: str, quirky_reports: dict[str, ViewerReport], quirky_study: ResultStudy
) -> None:
    """A CR without pixel spacing, MONOCHROME1, 15 bits stored: its findings SR and SEG open
    on it and draw what they encode where they should, and the SR's findings load into the
    measurement panel, as on the tidy film (no spacing of 0 or NaN reaches the viewer from
    the objects: the SEG carries a nominal 1 mm)."""
    report = quirky_reports[kind]
    _shows_cleanly(report)
    result = quirky_study.result
    grounded = [f for f in _present(result) if f["box"] is not None]
    if kind == "seg_binary":
        _draws_the_segments(report, result, grounded)
    else:
        assert report.annotations == len(grounded), report.labels
        for finding in grounded:
            name, probability = finding["code"]["meaning"], finding["probability"]
            assert any(_mentions(label, name, probability) for label in report.labels)
        _lists_the_findings(report, grounded)
