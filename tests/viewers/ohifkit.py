"""OHIF v3 in a real Chromium against a real Orthanc or the node: the pieces tests/viewers is
made of.

- :class:`Orthanc`: a private Orthanc on a free loopback port, DICOMweb plugin on, no auth,
  no DICOM port, storage in a temporary folder; files go in with REST ``POST /instances``.
- :class:`OhifServer`: OHIF's prebuilt ``dist/`` (npm ``@ohif/app``, installed by
  ``scripts/setup --dev`` into ``tests/viewers/node_modules``) served by a stdlib HTTP
  server that falls back to ``index.html`` for the SPA routes, writes its own
  ``app-config.js`` and forwards ``/dicom-web/...`` to Orthanc, so OHIF reads DICOMweb
  from its own origin (no CORS).
- :func:`drive`: runs ``drive.mjs`` (playwright-core with the Debian ``chromium``; nothing
  is downloaded, and the page may reach nothing but 127.0.0.1) over a list of
  :class:`Visit`; each visit gives a :class:`ViewerReport` and a screenshot.

Run as a script, it prints the per-series table for any files (the film and its result
objects)::

    .venv/bin/python tests/viewers/ohifkit.py FILM.dcm RESULTS_DIR/*.dcm --out /tmp/ohif
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from nodekit import free_port

VIEWERS = Path(__file__).resolve().parent
OHIF_DIST = VIEWERS / "node_modules" / "@ohif" / "app" / "dist"
DRIVER = VIEWERS / "drive.mjs"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SETUP_HINT = "scripts/setup --dev installs it"


def chromium_path() -> str | None:
    """The system Chromium (Debian package ``chromium``); ``GAZEX_CHROMIUM`` overrides."""
    return os.environ.get("GAZEX_CHROMIUM") or shutil.which("chromium")


def missing_tools() -> list[str]:
    """What the viewer harness needs and does not find, each with where it comes from."""
    missing = []
    if shutil.which("Orthanc") is None:
        missing.append("Orthanc (Debian package orthanc)")
    if not DICOMWEB_PLUGIN.is_file():
        missing.append(f"{DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb)")
    if chromium_path() is None:
        missing.append("chromium (Debian package chromium)")
    if shutil.which("node") is None:
        missing.append("node (Debian package nodejs)")
    if (
        not (OHIF_DIST / "index.html").is_file()
        or not (VIEWERS / "node_modules" / "playwright-core").is_dir()
    ):
        missing.append("tests/viewers/node_modules (npm ci in tests/viewers)")
    return missing


# --- Orthanc ----------------------------------------------------------------------------


class Orthanc:
    """A private Orthanc with the DICOMweb plugin; use as a context manager."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "gazex-viewer-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        config_file = self.folder / "orthanc.json"
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self._log = (self.folder / "orthanc.log").open("wb")
        self._process = subprocess.Popen(
            ["Orthanc", str(config_file)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/dicom-web/studies", timeout=2
                ):
                    return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    log = (self.folder / "orthanc.log").read_text(errors="replace")
                    raise RuntimeError(f"Orthanc did not start:\n{log[-2000:]}") from None
                time.sleep(0.1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def upload(self, path: Path) -> None:
        """Store one DICOM file (REST ``POST /instances``)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/instances",
            data=path.read_bytes(),
            headers={"Content-Type": "application/dicom"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            answer = json.load(response)
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc refused {path.name}: {answer}")


# --- OHIF's dist, same origin as DICOMweb -------------------------------------------------


def app_config(root: str, name: str = "GazeX test Orthanc") -> str:
    """OHIF's ``window.config``: one DICOMweb data source at ``root`` (the shape of OHIF's
    own config/local_orthanc.js, minus upload, reject and fuzzy match)."""
    config = {
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "strictZSpacingForVolumeViewport": True,
        "showErrorDetails": "always",
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "orthanc",
                "configuration": {
                    "friendlyName": name,
                    "name": "orthanc",
                    "wadoUriRoot": root,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(OHIF_DIST), **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/"):
            self._forward()
        elif path == "/app-config.js":
            self._send(200, "application/javascript", self.server.app_config)
        else:
            super().do_GET()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        # Host goes through, so the BulkDataURIs Orthanc writes point back at this server.
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "host")}
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=60)
        try:
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            content_type = response.getheader("Content-Type", "application/octet-stream")
            self._send(response.status, content_type, body)
        finally:
            connection.close()

    def translate_path(self, path: str) -> str:
        # SPA routes (/viewer, /segmentation, ...) are files nowhere: index.html serves them.
        translated = super().translate_path(path)
        return translated if os.path.exists(translated) else str(OHIF_DIST / "index.html")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    app_config: bytes
    orthanc_port: int


class OhifServer:
    """OHIF's dist on a free loopback port, DICOMweb forwarded to ``orthanc`` on the same
    origin; or, after ``point_at``, reading another server's DICOMweb straight (across
    origins, as a viewer served apart from the archive does)."""

    def __init__(self, orthanc: Orthanc | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.port = int(self._server.server_address[1])
        self._server.orthanc_port = orthanc.port if orthanc is not None else 0
        self._server.app_config = app_config(f"{self.url}/dicom-web").encode()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        #: which DICOMweb server OHIF reads: names the artefacts of each
        self.backend = "orthanc"
        #: appended to each viewer URL (the node's bearer token)
        self.query = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point_at(self, root: str, name: str, token: str, backend: str = "node") -> None:
        """Make OHIF read the DICOMweb service at ``root`` with a bearer ``token``: OHIF v3
        takes one from its URL (``?token=``) and sends it with every request (its data
        source has no place for HTTP basic credentials)."""
        self._server.app_config = app_config(root, name).encode()
        self.query = f"&token={token}"
        self.backend = backend

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# --- the browser --------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """One page load: a study, and the series to open in the viewport after it (None: the
    hanging protocol's choice)."""

    name: str
    StudyInstanceUID: str
    SeriesInstanceUID: str | None = None


@dataclass
class ViewerReport:
    """What ``drive.mjs`` saw on one visit (the fields of its JSON report)."""

    name: str
    url: str
    screenshot: str
    #: an image drawn in some viewport (its canvas has non-black pixels)
    rendered: bool
    #: the requested series is what the active viewport shows
    series_opened: bool
    #: uncaught exceptions in the page
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    #: OHIF's error boundary caught something (its "Something went wrong" notice)
    error_boundary: bool = False
    #: what the error boundary caught: "<context>: <stack>"
    boundary_errors: list[str] = field(default_factory=list)
    #: annotations drawn in the viewports' SVG layers: cornerstone3D tools draw one
    #: ``g[data-annotation-uid]`` label group per annotation
    annotations: int = 0
    #: SVG shapes (polyline, circle, ...) drawn outside those label groups
    shapes: int = 0
    #: text of every SVG ``text`` element in the viewports (the tool labels)
    labels: list[str] = field(default_factory=list)
    #: text of each row in the measurements / segmentation panel
    panel_items: list[str] = field(default_factory=list)
    #: labels of the segments OHIF holds (a SEG's, from its preview overlay on)
    segment_labels: list[str] = field(default_factory=list)
    #: OHIF's notices as "<kind>: text": toasts (kind success/info/warning/error), viewport
    #: prompts ("prompt: Do you want to open this Segmentation? / No / Yes"), dialogs, tours
    notices: list[str] = field(default_factory=list)
    #: (x, y, width, height) of the active viewport in the screenshot
    viewport_box: tuple[int, int, int, int] | None = None
    #: requests to anything but 127.0.0.1 (all refused by the driver)
    blocked_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    #: the page did not settle (network quiet, drawing stable) in time
    timed_out: bool = False
    #: OHIF marked the requested series unsupported, and its thumbnail's messages
    unsupported: bool = False
    series_messages: list[str] = field(default_factory=list)
    #: the driver's steps ("first image: yes", ...) and the visit's duration
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ViewerReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("viewport_box") is not None:
            values["viewport_box"] = tuple(values["viewport_box"])
        return cls(**values)

    @property
    def crashed(self) -> bool:
        return bool(self.page_errors) or self.error_boundary


def drive(
    base_url: str, visits: Iterable[Visit], out_dir: Path, query: str = ""
) -> list[ViewerReport]:
    """Visit each page in one Chromium (a fresh browser context per visit); screenshots and
    ``report.json`` go to ``out_dir``; ``query`` is appended to each viewer URL. Raises if
    the driver itself fails or overruns (it gives each visit at most a minute: a visit
    usually takes 4 to 8 s)."""
    visits = list(visits)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "baseUrl": base_url,
        "query": query,
        "outDir": str(out_dir),
        "chromium": chromium_path(),
        "visits": [
            {
                "name": v.name,
                "StudyInstanceUID": v.StudyInstanceUID,
                "SeriesInstanceUID": v.SeriesInstanceUID,
            }
            for v in visits
        ],
    }
    job_file = out_dir / "job.json"
    job_file.write_text(json.dumps(job, indent=2), encoding="utf-8")
    done = subprocess.run(
        ["node", str(DRIVER), str(job_file)],
        cwd=VIEWERS,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30 + 75 * len(visits),
        check=False,
    )
    (out_dir / "driver.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"drive.mjs exited {done.returncode}:\n{done.stderr[-3000:]}")
    reports = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    return [ViewerReport.from_json(r) for r in reports]


def _inside(report: ViewerReport, inset: int = 4) -> tuple[int, int, int, int]:
    """The viewport's box in the screenshot (left, top, right, bottom), less its outline
    (the active viewport has a coloured border)."""
    assert report.viewport_box is not None, f"{report.name}: no viewport on the page"
    x, y, width, height = report.viewport_box
    return x + inset, y + inset, x + width - inset, y + height - inset


def viewport_pixels(report: ViewerReport) -> tuple[float, float]:
    """(mean, standard deviation) of the grey levels inside the viewport in the screenshot."""
    from PIL import Image, ImageStat

    with Image.open(report.screenshot) as image:
        stat = ImageStat.Stat(image.convert("L").crop(_inside(report)))
    return float(stat.mean[0]), float(stat.stddev[0])


def coloured_fraction(report: ViewerReport, *, chroma: int = 60) -> float:
    """Share of the viewport's pixels in the screenshot that are clearly coloured (max - min
    of R, G, B above ``chroma``): a grey film has next to none (OHIF's few blue icons), an
    overlay or a tool drawing has some."""
    from PIL import Image, ImageChops

    with Image.open(report.screenshot) as image:
        r, g, b = image.convert("RGB").crop(_inside(report)).split()
    highest = ImageChops.lighter(ImageChops.lighter(r, g), b)
    lowest = ImageChops.darker(ImageChops.darker(r, g), b)
    histogram = ImageChops.subtract(highest, lowest).histogram()
    return sum(histogram[chroma + 1 :]) / sum(histogram)


def copy_artefacts(out_dir: Path, name: str) -> None:
    """Copy screenshots and reports to ``$GAZEX_VIEWER_ARTEFACTS/name`` when that is set."""
    target = os.environ.get("GAZEX_VIEWER_ARTEFACTS")
    if target:
        shutil.copytree(out_dir, Path(target) / name, dirs_exist_ok=True)


# --- script: the per-series table ---------------------------------------------------------


def _series(files: Iterable[Path]) -> tuple[str, list[tuple[str, str, str]]]:
    """The one StudyInstanceUID and each series' (uid, modality, description), in order."""
    from pydicom import dcmread

    studies, series = set(), {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        studies.add(str(ds.StudyInstanceUID))
        series.setdefault(
            str(ds.SeriesInstanceUID), (str(ds.Modality), str(ds.get("SeriesDescription", "")))
        )
    if len(studies) != 1:
        raise SystemExit(f"expected the files of one study, found {len(studies)}")
    return studies.pop(), [(uid, m, d) for uid, (m, d) in series.items()]


def table(reports: Iterable[ViewerReport]) -> str:
    """One line per visit: crash signs, what is drawn, the screenshot."""
    lines = []
    for r in reports:
        errors = "; ".join(e.splitlines()[0][:110] for e in r.page_errors + r.boundary_errors)
        errors = errors or "-"
        labels = " | ".join(label.replace("\n", " / ") for label in r.labels)[:160] or "-"
        lines.append(
            f"{r.name}\n  rendered={r.rendered} opened={r.series_opened} "
            f"error_boundary={r.error_boundary} timed_out={r.timed_out} "
            f"unsupported={r.unsupported} {' '.join(r.series_messages)}\n"
            f"  annotations={r.annotations} shapes={r.shapes} "
            f"blocked_requests={len(r.blocked_requests)}\n"
            f"  errors: {errors}\n  labels: {labels}\n"
            f"  panel: {' | '.join(r.panel_items)[:160] or '-'}\n"
            f"  segments: {' | '.join(r.segment_labels)[:160] or '-'}\n"
            f"  notices: {' | '.join(r.notices)[:160] or '-'}\n  screenshot: {r.screenshot}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load DICOM files into a private Orthanc, open the study and each of "
        "its series in OHIF v3 (headless Chromium) and print what was drawn."
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="the DICOM files of one study (default: a synthetic film and its result "
        "objects, made with gazex data synth, predict and render)",
    )
    parser.add_argument("--out", type=Path, help="screenshots and report.json (default: tmp)")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"missing: {', '.join(missing)}; {SETUP_HINT}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="gazex-ohif-"))
    files = args.files
    if not files:
        from result_study import make_result_study

        made = make_result_study(out / "study")
        files = [made.film, *made.objects.values()]
    StudyInstanceUID, series = _series(files)
    visits = [Visit("study", StudyInstanceUID)]
    visits += [Visit(f"{m} {d or uid}", StudyInstanceUID, uid) for uid, m, d in series]
    with tempfile.TemporaryDirectory() as work, Orthanc(Path(work)) as orthanc:
        for path in files:
            orthanc.upload(path)
        with OhifServer(orthanc) as server:
            reports = drive(server.url, visits, out)
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
