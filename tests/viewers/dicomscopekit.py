"""DICOMscope 3.6.0, OFFIS' reference viewer for Grayscale Softcopy Presentation States
(Debian package ``dicomscope``), run under Xvfb and driven with xdotool as a user would:
the pieces test_gsps_viewer.py is made of.

- :class:`Xvfb`: a private X server on a free display (``-displayfd``), no TCP listener.
- :class:`DicomScope`: DICOMscope in its own working folder. Its ``DICOMscope.cfg`` is
  Debian's ``/etc/dcmtk/DICOMscope.cfg`` with the DCMTK index database, logs and spool in
  that folder, no notification port, no query/retrieve server and no network peers; the
  film and its GSPS go into the database with DCMTK's ``dcmqridx`` before it starts.
- :func:`open_film_and_gsps`: what a user does: in the study browser, open the image with
  the ``<default>`` presentation, then open the GSPS; a screenshot of each. Their
  difference is exactly what the GSPS draws (the image is rendered the same both times).
- :func:`sr_geometry` (the boxes, fixations and path the SRs carry) and
  :func:`dcmp2pgm_layers` (DCMTK's independent parse of the GSPS, ``dcmp2pgm -v``).

Seen with DICOMscope 3.6.0-25 (Debian 12), JDK 17, Xvfb 1280x1024x24:

- It draws every layer in white: it reads no Graphic Layer Recommended Display CIELab
  Value (nor does DCMTK 3.6.7: ``dcmp2pgm -v`` says "Recomm. display value: none").
- It draws PIXEL graphics 2 image pixels up and left of where PS3.3 C.10.5.1.2 puts them
  (0\\0 is the top left corner of the top left pixel): measured on the box edges at zoom
  1.0 and 1.73, the same shift in image pixels (:data:`SHIFT`). One pixel of it is in its
  bytecode (``PresentationStateGraphicObject.buildPolyline`` subtracts 1 from each
  coordinate: 1-based pixels); the other was not traced. Text is placed the same way,
  as far as a fixed-size font lets one tell.
- It draws text in its own fixed-size font from the top left corner of the bounding box,
  however large the box.
- Without a window manager its dialogs never get the keyboard focus: the harness clicks.

Run as a script, it opens a film and its GSPS and writes the screenshots::

    .venv/bin/python tests/viewers/dicomscopekit.py FILM.dcm GSPS.dcm --out /tmp/dscope
"""

from __future__ import annotations

import argparse
import math
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageGrab
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

JAR = Path("/usr/share/java/DICOMscope.jar")
CONFIG_TEMPLATE = Path("/etc/dcmtk/DICOMscope.cfg")
SETUP_HINT = "scripts/setup --dev installs it"
WINDOW_TITLE = "DICOMscope 3.6.0"
SCREEN = (1280, 1024)

#: DICOMscope's placement of PIXEL graphics, in image pixels added to each coordinate
SHIFT = -2.0

# Where a user clicks: the tabs of the main window (its layout is fixed for a given screen
# size and the Debian fonts; every step checks that the click did what it should).
BROWSER_TAB = (37, 41)
VIEWER_TAB = (104, 41)
# Swing's selection colour in the study browser and lists; the dialog buttons' fill and
# border.
SELECTION_RGB = (184, 207, 229)
BUTTON_RGB = (192, 192, 192)
BUTTON_BORDER_RGB = (122, 138, 153)

Rgb = npt.NDArray[np.uint8]
T = TypeVar("T")


class DicomScopeError(RuntimeError):
    """DICOMscope did not do what a step of the harness waited for."""


def missing_tools(*, viewer: bool = True) -> list[str]:
    """What the harness needs and does not find, each with where it comes from: DCMTK's
    presentation state tools, and unless ``viewer`` is false, DICOMscope under Xvfb."""
    needed = [("dcmp2pgm", "dcmtk"), ("dcmpschk", "dcmtk")]
    if viewer:
        needed += [("dcmqridx", "dcmtk"), ("Xvfb", "xvfb"), ("xdotool", "xdotool")]
        needed += [("dicomscope", "dicomscope")]
    missing = [
        f"{tool} (Debian package {package})"
        for tool, package in needed
        if shutil.which(tool) is None
    ]
    if viewer and (not JAR.is_file() or not CONFIG_TEMPLATE.is_file()):
        missing.append(f"{JAR} and {CONFIG_TEMPLATE} (Debian package dicomscope)")
    return missing


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process started in its own session, and whatever it started in it."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- the X server -----------------------------------------------------------------------


class Xvfb:
    """A private Xvfb on the first free display; use as a context manager."""

    def __init__(self, folder: Path, size: tuple[int, int] = SCREEN) -> None:
        self.folder = folder
        self.size = size
        self.display = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Xvfb:
        self.folder.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        with (self.folder / "xvfb.log").open("wb") as log:
            self._process = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_fd), "-screen", "0",
                 f"{self.size[0]}x{self.size[1]}x24", "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        os.close(write_fd)
        try:
            number = b""
            deadline = time.monotonic() + 30
            while not number.endswith(b"\n"):
                ready, _, _ = select.select(
                    [read_fd], [], [], max(0.0, deadline - time.monotonic())
                )
                chunk = os.read(read_fd, 16) if ready else b""
                if not chunk:
                    self.__exit__(None, None, None)
                    log_text = (self.folder / "xvfb.log").read_text(errors="replace")
                    raise DicomScopeError(f"Xvfb did not start:\n{log_text[-2000:]}")
                number += chunk
        finally:
            os.close(read_fd)
        self.display = f":{int(number)}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _stop(self._process)
        self._process = None


# --- DICOMscope -------------------------------------------------------------------------


def dicomscope_config(template: str, folder: Path) -> str:
    """Debian's DICOMscope.cfg made private to ``folder``: database, logs and print spool
    there; no notification port (0), no query/retrieve server, and none of the
    ``[[COMMUNICATION]]`` peers (their receivers would listen on fixed ports)."""
    general = template.split("[[COMMUNICATION]]", 1)[0]
    wanted = {
        ("APPLICATION", "LogDirectory"): str(folder / "log"),
        ("APPLICATION", "MessagePort"): "0",
        ("PRINT", "Directory"): str(folder / "spool"),
        ("DATABASE", "Directory"): str(folder / "db"),
    }
    lines, section, seen = [], "", set()
    for line in general.splitlines():
        header = re.fullmatch(r"\s*\[([A-Z_]+)\]\s*", line)
        if header:
            section = header.group(1)
        if section == "QUERY_RETRIEVE":
            continue
        setting = re.fullmatch(r"\s*(\w+)\s*=.*", line)
        if setting and (section, setting.group(1)) in wanted:
            key = (section, setting.group(1))
            line = f"{key[1]} = {wanted[key]}"
            seen.add(key)
        lines.append(line)
    if seen != set(wanted):
        raise DicomScopeError(f"{CONFIG_TEMPLATE} lacks {sorted(set(wanted) - seen)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Row:
    """The selected row of a tree or list on screen (its highlight's box)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def centre(self) -> tuple[int, int]:
        return ((self.left + self.right) // 2, (self.top + self.bottom) // 2)


class DicomScope:
    """DICOMscope on ``display`` with ``files`` in its database; use as a context manager."""

    def __init__(self, folder: Path, display: str, files: Sequence[Path]) -> None:
        self.folder = folder
        self.display = display
        self.files = list(files)
        self._process: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "DISPLAY": display}
        self.last_screenshot: Rgb | None = None

    def __enter__(self) -> DicomScope:
        for name in ("db", "log", "spool"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        config = dicomscope_config(CONFIG_TEMPLATE.read_text(encoding="latin-1"), self.folder)
        (self.folder / "DICOMscope.cfg").write_text(config, encoding="latin-1")
        stored = []
        for number, path in enumerate(self.files, start=1):
            target = self.folder / "db" / f"{number:02d}-{path.name}"
            shutil.copyfile(path, target)
            stored.append(str(target))
        subprocess.run(
            ["dcmqridx", str(self.folder / "db"), *stored],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with (self.folder / "dicomscope.log").open("wb") as log:
            # DICOMscope reads DICOMscope.cfg from its working folder.
            self._process = subprocess.Popen(
                ["dicomscope"],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _stop(self._process)
        self._process = None

    # -- what a user does --

    def xdotool(self, *args: str) -> str:
        done = subprocess.run(
            ["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        return done.stdout

    def click(self, x: int, y: int, *, double: bool = False) -> None:
        repeat = ["--repeat", "2", "--delay", "80"] if double else []
        self.xdotool("mousemove", "--sync", str(x), str(y), "click", *repeat, "1")

    def keys(self, *names: str) -> None:
        self.xdotool("key", "--delay", "120", *names)

    def screenshot(self) -> Rgb:
        image = ImageGrab.grab(xdisplay=self.display)
        self.last_screenshot = np.asarray(image.convert("RGB"))
        return self.last_screenshot

    def window(self, title: str) -> tuple[int, int, int, int] | None:
        """(x, y, width, height) of the visible window called ``title``, if there is one."""
        ids = self.xdotool("search", "--onlyvisible", "--name", f"^{re.escape(title)}$").split()
        if not ids:
            return None
        shell = self.xdotool("getwindowgeometry", "--shell", ids[0])
        geometry = dict(line.split("=", 1) for line in shell.split() if "=" in line)
        x, y, width, height = (int(geometry[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
        return (x, y, width, height)

    # -- waiting --

    def wait(self, probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
        """Poll ``probe`` until it returns something; fail naming ``what`` after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise DicomScopeError(f"DICOMscope exited while waiting for {what}: {self.log()}")
            found = probe()
            if found is not None and found is not False:
                return found
            if time.monotonic() > deadline:
                if self.last_screenshot is not None:
                    name = re.sub(r"\W+", "-", what).strip("-")
                    Image.fromarray(self.last_screenshot).save(self.folder / f"timeout-{name}.png")
                raise DicomScopeError(f"no {what} within {timeout:.0f} s ({self.folder})")
            time.sleep(0.2)

    def settled(self) -> Rgb:
        """A screenshot once two taken 0.3 s apart are the same."""

        def probe() -> Rgb | None:
            first = self.screenshot()
            time.sleep(0.3)
            second = self.screenshot()
            return second if np.array_equal(first, second) else None

        return self.wait(probe, "settled screen", 30)

    def log(self) -> str:
        return (self.folder / "dicomscope.log").read_text(errors="replace")[-2000:]


# --- reading the screen -----------------------------------------------------------------


def _colour(shot: Rgb, rgb: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    same: npt.NDArray[np.bool_] = np.all(shot == np.array(rgb, dtype=np.uint8), axis=2)
    return same


def black_canvas(shot: Rgb) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the empty image viewer: the largest black rectangle,
    when it covers at least a third of the screen."""
    black = np.all(shot == 0, axis=2)
    rows = np.nonzero(black.mean(axis=1) > 0.3)[0]
    cols = np.nonzero(black.mean(axis=0) > 0.3)[0]
    if rows.size == 0 or cols.size == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = black[top:bottom, left:right]
    if box.mean() < 0.999 or box.size < shot.shape[0] * shot.shape[1] / 3:
        return None
    return (int(left), int(top), int(right), int(bottom))


def selected_row(shot: Rgb, region: tuple[int, int, int, int]) -> Row | None:
    """The one highlighted row inside ``region`` (left, top, right, bottom), if exactly
    one band of rows carries Swing's selection colour."""
    left, top, right, bottom = region
    selected = _colour(shot[top:bottom, left:right], SELECTION_RGB)
    rows = np.nonzero(selected.sum(axis=1) >= 20)[0]
    if rows.size == 0 or rows[-1] - rows[0] + 1 != rows.size:
        return None
    # the widest run of columns: Metal draws the tree's lines in the same colour
    band = selected[rows[0] : rows[-1] + 1].mean(axis=0) >= 0.5
    start, end = max(_runs(band), key=lambda run: run[1] - run[0], default=(0, 0))
    if end - start < 10:
        return None
    return Row(left + start, top + int(rows[0]), left + end - 1, top + int(rows[-1]))


def _runs(line: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()
    return list(zip(starts, ends, strict=True))


def tree_region(shot: Rgb) -> tuple[int, int, int, int] | None:
    """The study browser's tree (left, top, right, bottom), when the Browser tab shows:
    a white panel under the tabs."""
    white = np.all(shot == 255, axis=2)
    height, width = white.shape
    if white[height // 3 : 2 * height // 3, width // 4 : 3 * width // 4].mean() < 0.99:
        return None
    rows = np.nonzero(white[:, width // 2])[0]
    return (0, int(rows[0]), width, int(rows[-1]))


def buttons(shot: Rgb, window: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """Centres of the buttons in a dialog, left to right: on the row of the dialog with
    the most button fill, each pair of button borders encloses one button."""
    x, y, width, height = window
    dialog = shot[y : y + height, x : x + width]
    row = int(np.argmax(_colour(dialog, BUTTON_RGB).sum(axis=1)))
    borders = np.nonzero(_colour(dialog[row : row + 1], BUTTON_BORDER_RGB)[0])[0].tolist()
    return [(x + (a + b) // 2, y + row) for a, b in zip(borders[::2], borders[1::2], strict=False)]


# --- image <-> screen -------------------------------------------------------------------


def displayed_film(film: Dataset, gsps: Dataset) -> npt.NDArray[np.float64]:
    """The film as the GSPS asks it to be shown, 0..255: modality LUT, the GSPS's VOI
    window (linear), its presentation LUT shape."""
    values = apply_modality_lut(film.pixel_array, film).astype(np.float64)
    [voi] = gsps.SoftcopyVOILUTSequence
    centre, width = float(voi.WindowCenter), float(voi.WindowWidth)
    shown = np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    if gsps.get("PresentationLUTShape") == "INVERSE":
        shown = 1.0 - shown
    return shown * 255.0


@dataclass(frozen=True)
class Mapping:
    """Where DICOMscope shows the image: screen = origin + scale * image coordinate."""

    scale: float
    x0: float
    y0: float
    rows: int
    columns: int
    #: correlation of the screenshot with the film at this mapping
    correlation: float = 0.0

    def screen(self, x: float, y: float, shift: float = 0.0) -> tuple[float, float]:
        """Screen position of the image point (x, y), 0\\0 the top left corner of the top
        left pixel; ``shift`` is added to both image coordinates first."""
        return (self.x0 + self.scale * (x + shift), self.y0 + self.scale * (y + shift))

    @property
    def image_box(self) -> tuple[int, int, int, int]:
        right, bottom = self.screen(self.columns, self.rows)
        return (round(self.x0), round(self.y0), round(right), round(bottom))


def film_correlation(shot: Rgb, shown: npt.NDArray[np.float64], mapping: Mapping) -> float:
    """Pearson correlation of the screenshot with the displayed film, sampled at pixel
    centres on a 64 x 64 grid."""
    rows, columns = shown.shape
    ii, jj = np.meshgrid(
        np.linspace(2, rows - 3, 64).astype(int), np.linspace(2, columns - 3, 64).astype(int)
    )
    xs = np.floor(mapping.x0 + mapping.scale * (jj + 0.5)).astype(int)
    ys = np.floor(mapping.y0 + mapping.scale * (ii + 0.5)).astype(int)
    if xs.min() < 0 or ys.min() < 0 or xs.max() >= shot.shape[1] or ys.max() >= shot.shape[0]:
        return -1.0
    grey = shot[ys, xs].mean(axis=-1).ravel()
    expected = shown[ii, jj].ravel()
    if grey.std() == 0:
        return 0.0
    return float(np.corrcoef(grey, expected)[0, 1])


def fit_mapping(
    shot: Rgb, shown: npt.NDArray[np.float64], canvas: tuple[int, int, int, int]
) -> Mapping:
    """The mapping that best explains the screenshot: DICOMscope's "scale to fit" (the
    image at the canvas' top left corner, scaled to fit it) refined over +-3 px and +-1 %."""
    rows, columns = shown.shape
    left, top, right, bottom = canvas
    scale = min((right - left) / columns, (bottom - top) / rows)
    best = Mapping(scale, left, top, rows, columns, -2.0)
    for factor in np.linspace(0.99, 1.01, 9):
        for dx in range(-3, 4):
            for dy in range(-3, 4):
                candidate = Mapping(scale * factor, left + dx, top + dy, rows, columns)
                r = film_correlation(shot, shown, candidate)
                if r > best.correlation:
                    best = Mapping(candidate.scale, candidate.x0, candidate.y0, rows, columns, r)
    return best


# --- the user's path through DICOMscope -----------------------------------------------


@dataclass
class Views:
    """Screenshots of the film alone and with the GSPS applied, and where the image is."""

    film: Rgb
    gsps: Rgb
    mapping: Mapping
    canvas: tuple[int, int, int, int]
    steps: list[str] = field(default_factory=list)

    @property
    def ink(self) -> npt.NDArray[np.bool_]:
        """Pixels of the image viewer the GSPS changed (the film is rendered the same in
        both views; the panels beside it show the layers and other details)."""
        changed: npt.NDArray[np.bool_] = np.any(self.film != self.gsps, axis=2)
        left, top, right, bottom = self.canvas
        inside = np.zeros_like(changed)
        inside[top:bottom, left:right] = True
        return changed & inside


def _walk(
    scope: DicomScope, keys: Sequence[str], after: Row, what: str, *, deeper: bool = True
) -> Row:
    """Press ``keys`` in the study browser and wait for the selection to land on a row
    below ``after`` and, when ``deeper``, indented further (a child)."""
    scope.keys(*keys)

    def probe() -> Row | None:
        shot = scope.screenshot()
        region = tree_region(shot)
        row = selected_row(shot, region) if region else None
        if row and row.top > after.top and (row.left > after.left or not deeper):
            return row
        return None

    return scope.wait(probe, what, 30)


def _browser(scope: DicomScope) -> tuple[int, int, int, int]:
    scope.click(*BROWSER_TAB)
    region = scope.wait(lambda: tree_region(scope.screenshot()), "study browser", 30)
    # a click on the empty part of the tree gives it the keyboard focus
    scope.click(region[2] // 2, (region[1] + region[3]) * 2 // 3)
    return region


def open_film_and_gsps(scope: DicomScope, film: Dataset, gsps: Dataset, out: Path) -> Views:
    """Open the film with its ``<default>`` presentation, then the GSPS, in the study
    browser, as a user would; screenshots ``film.png``, ``gsps.png`` and ``graphics.png``
    (what the GSPS changed) go to ``out``."""
    steps: list[str] = []
    scope.wait(lambda: scope.window(WINDOW_TITLE), "DICOMscope main window", 120)
    steps.append("main window up")

    scope.click(*VIEWER_TAB)
    canvas = scope.wait(lambda: black_canvas(scope.screenshot()), "empty image viewer", 30)
    steps.append(f"empty viewer canvas {canvas}")

    region = _browser(scope)
    scope.keys("Home")
    root = scope.wait(
        lambda: selected_row(scope.screenshot(), region), "selected root of the tree", 30
    )
    study = _walk(scope, ["Down"], root, "study row", deeper=False)
    series = _walk(scope, ["Right", "Right"], study, "image series row")
    image = _walk(scope, ["Right", "Right"], series, "image row")
    steps.append(f"browser: image row at {image.centre}")
    scope.click(*image.centre, double=True)
    dialog = scope.wait(
        lambda: scope.window("Select Presentation State"), "presentation state dialog", 30
    )
    shot = scope.settled()
    listed = selected_row(shot, (dialog[0], dialog[1], dialog[0] + dialog[2], dialog[1] + 40))
    if listed is None:
        raise DicomScopeError("the dialog does not preselect its first entry, <default>")
    ok, *_ = buttons(shot, dialog)
    steps.append(f"dialog at {dialog[:2]}: <default> selected, Ok at {ok}")
    scope.click(*ok)
    scope.wait(lambda: scope.window("Select Presentation State") is None, "dialog closed", 30)

    shown = displayed_film(film, gsps)

    def film_on_screen() -> tuple[Rgb, Mapping] | None:
        shot = scope.settled()
        mapping = fit_mapping(shot, shown, canvas)
        return (shot, mapping) if mapping.correlation > 0.98 else None

    film_shot, mapping = scope.wait(film_on_screen, "film in the viewer", 60)
    steps.append(f"film shown: {mapping}")
    Image.fromarray(film_shot).save(out / "film.png")

    region = _browser(scope)
    scope.keys("End")
    pr_series = scope.wait(
        lambda: _below(selected_row(scope.screenshot(), region), image), "GSPS series row", 30
    )
    pr_row = _walk(scope, ["Right", "Right"], pr_series, "GSPS row")
    steps.append(f"browser: GSPS row at {pr_row.centre}")
    scope.click(*pr_row.centre, double=True)

    left, top, right, bottom = canvas

    def gsps_on_screen() -> Rgb | None:
        shot = scope.settled()
        viewer, before = shot[top:bottom, left:right], film_shot[top:bottom, left:right]
        if np.array_equal(viewer, before) or film_correlation(shot, shown, mapping) < 0.9:
            return None
        return shot

    gsps_shot = scope.wait(gsps_on_screen, "film with the GSPS applied", 60)
    steps.append("GSPS applied")
    views = Views(film_shot, gsps_shot, mapping, canvas, steps)
    Image.fromarray(gsps_shot).save(out / "gsps.png")
    Image.fromarray((views.ink * 255).astype(np.uint8)).save(out / "graphics.png")
    return views


def _below(row: Row | None, after: Row) -> Row | None:
    return row if row is not None and row.top > after.top else None


# --- what the SRs say -------------------------------------------------------------------

TRACKING_IDENTIFIER = ("112039", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")


def _concept(item: Dataset) -> tuple[str, str]:
    if "ConceptNameCodeSequence" not in item:
        return ("", "")
    code = item.ConceptNameCodeSequence[0]
    return (str(code.CodeValue), str(code.CodingSchemeDesignator))


def _groups(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "CONTAINER" and _concept(item) == MEASUREMENT_GROUP:
            yield item
        else:
            yield from _groups(item)


@dataclass(frozen=True)
class Scoord:
    """One SCOORD of a measurement group: its group's Tracking Identifier and points."""

    tracking_id: str
    graphic_type: str
    points: npt.NDArray[np.float64]


def scoords(path: Path) -> list[Scoord]:
    """Every SCOORD of the SR's measurement groups, in document order."""
    found = []
    for group in _groups(dcmread(path)):
        tracking = next(
            (str(i.TextValue) for i in group.ContentSequence if _concept(i) == TRACKING_IDENTIFIER),
            "",
        )
        for item in _items(group):
            if item.ValueType == "SCOORD":
                points = np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2)
                found.append(Scoord(tracking, str(item.GraphicType), points))
    return found


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


@dataclass(frozen=True)
class SrGeometry:
    """What the findings and trajectory SRs put on the image."""

    #: closed POLYLINE boxes of the findings SR, by Tracking Identifier
    boxes: dict[str, npt.NDArray[np.float64]]
    #: fixation circles of the trajectory SR in reading order: (x, y, radius)
    fixations: list[tuple[float, float, float]]
    #: the open POLYLINE inspection path of the trajectory SR
    path: npt.NDArray[np.float64]


def sr_geometry(findings_sr: Path, trajectory_sr: Path) -> SrGeometry:
    boxes = {s.tracking_id: s.points for s in scoords(findings_sr) if s.graphic_type == "POLYLINE"}
    trajectory = scoords(trajectory_sr)
    fixations = [
        (float(s.points[0, 0]), float(s.points[0, 1]), float(math.dist(*s.points[:2])))
        for s in trajectory
        if s.graphic_type == "CIRCLE"
    ]
    [path] = [s.points for s in trajectory if s.graphic_type == "POLYLINE"]
    return SrGeometry(boxes, fixations, path)


# --- DCMTK's parse of the GSPS ------------------------------------------------------------


@dataclass
class ParsedGraphic:
    graphic_type: str
    points: npt.NDArray[np.float64]


@dataclass
class ParsedText:
    value: str
    #: (x0, y0, x1, y1): TLHC and BRHC of the bounding box
    box: tuple[float, float, float, float]


@dataclass
class ParsedLayer:
    name: str
    graphics: list[ParsedGraphic] = field(default_factory=list)
    texts: list[ParsedText] = field(default_factory=list)


def dcmp2pgm_layers(output: str) -> dict[str, ParsedLayer]:
    """The graphic layers of ``dcmp2pgm -v -p GSPS IMAGE``'s dump, by name."""
    layers: dict[str, ParsedLayer] = {}
    layer: ParsedLayer | None = None
    kind = ""
    for raw in output.splitlines():
        line = raw.removeprefix("I:").strip()
        if match := re.fullmatch(r"Graphic Layer #\d+ \[(.*)\]", line):
            layer = layers.setdefault(match.group(1), ParsedLayer(match.group(1)))
        elif layer is None:
            continue
        elif match := re.fullmatch(r"graphic \d+: points=\d+ type=(\w+).*", line):
            kind = match.group(1)
        elif line.startswith("coordinates:"):
            pairs = re.findall(r"(-?[\d.e+-]+)\\(-?[\d.e+-]+)", line)
            points = np.array([[float(x), float(y)] for x, y in pairs], dtype=np.float64)
            layer.graphics.append(ParsedGraphic(kind, points))
        elif match := re.fullmatch(r'text \d+: "(.*)"', line):
            layer.texts.append(ParsedText(match.group(1), (math.nan,) * 4))
        elif match := re.fullmatch(
            r"bounding box: TLHC=([\d.e+-]+)\\([\d.e+-]+) BRHC=([\d.e+-]+)\\([\d.e+-]+).*", line
        ):
            box = tuple(float(v) for v in match.groups())
            layer.texts[-1].box = box  # type: ignore[assignment]
    return layers


def run_dcmp2pgm(gsps: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(gsps), str(image)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )


# --- pixel checks -----------------------------------------------------------------------


def dilate(mask: npt.NDArray[np.bool_], radius: int) -> npt.NDArray[np.bool_]:
    """``mask`` grown by ``radius`` pixels (a square neighbourhood)."""
    grown = mask.copy()
    padded = np.pad(mask, radius)
    height, width = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def segment_points(
    start: Sequence[float], end: Sequence[float], step: float
) -> list[tuple[float, float]]:
    """Points every ``step`` along start -> end, both ends included."""
    length = math.dist(start, end)
    count = max(1, math.ceil(length / step))
    return [
        (start[0] + (end[0] - start[0]) * k / count, start[1] + (end[1] - start[1]) * k / count)
        for k in range(count + 1)
    ]


def hits(near_ink: npt.NDArray[np.bool_], points: Sequence[tuple[float, float]]) -> float:
    """The fraction of screen points that fall on (dilated) ink."""
    height, width = near_ink.shape
    inside = [(int(x), int(y)) for x, y in points if 0 <= int(x) < width and 0 <= int(y) < height]
    if len(inside) < len(points):
        return 0.0
    return sum(bool(near_ink[y, x]) for x, y in inside) / max(1, len(inside))


def annotate(views: Views, shapes: Sequence[Any], path: Path) -> None:
    """The GSPS screenshot with what the test expects drawn over it in red: for a person
    looking at a failure. ``shapes`` are ("line", points) or ("box", (x0, y0, x1, y1)) in
    screen coordinates."""
    image = Image.fromarray(views.gsps).convert("RGB")
    draw = ImageDraw.Draw(image)
    for kind, data in shapes:
        if kind == "line":
            draw.line([tuple(p) for p in data], fill=(255, 0, 0), width=1)
        else:
            draw.rectangle(tuple(data), outline=(255, 0, 0), width=1)
    image.save(path)


# --- script ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("film", type=Path)
    parser.add_argument("gsps", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        raise SystemExit(f"needs {', '.join(missing)}; {SETUP_HINT}")
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        Xvfb(args.out / "x") as xvfb,
        DicomScope(args.out / "dicomscope", xvfb.display, [args.film, args.gsps]) as scope,
    ):
        views = open_film_and_gsps(scope, dcmread(args.film), dcmread(args.gsps), args.out)
    for step in views.steps:
        print(step)
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
