"""The review page in a real Chromium against a real node: a radiologist logs in, opens the
study from the worklist, sees the film drawn, replays the model's inspection (fixations
appear in order, the step bar follows), rejects a finding with a reason, adds a missed
one by drawing a box, and signs; the signed study reopens read-only with its history.

The node holds the film (C-STORE) and its analysis as a worker leaves it (result objects
and the result JSON in the spool); a signature is built by the worker's own function
(``workers.review.sign_review``) on a thread, as a Celery worker would. Screenshots and
report.json land in pytest's tmp folder (review-page*) and in ``$GAZEX_VIEWER_ARTEFACTS``.

The same signature is followed to the end: the node's outbox delivers the verified SR to
a DCMTK storescp (a destination peer with the AE title the films came from), where it
passes dciodvfy, dsrdump and PixelMed and carries the browser's decisions, and the
signature's ORU^R01 (chained after the build, as the Celery task does) reaches an MLLP
listener and is ACKed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hl7
import numpy as np
import pydicom
import pytest
from node_dicomweb import NodeDicomWeb
from nodekit import StoreSCP
from ohifkit import VIEWERS, chromium_path, copy_artefacts
from result_study import ResultStudy
from sqlalchemy import select

from dicom_node.db.models import Study, StudyState
from dicom_node.review.accounts import Accounts
from dicom_node.review.pages import APP_DIR
from dicom_node.review.worklist import study_key
from dicom_node.spool import Spool
from model.result import Box
from sr_templates.enum import ObjectKindValues
from sr_templates.review import Decision, FindingDecision, read_decisions
from workers.context import WorkerContext
from workers.hl7.mllp import MLLPListener
from workers.notification import notify_review
from workers.review import sign_review

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.viewer]

DRIVER = VIEWERS / "review.mjs"
NAME, PASSWORD = "rad1", "a long enough review password"
DRIVER_TIMEOUT = 300
#: The calling AE of the films (``NodeDicomWeb.upload_film``): results go back to it.
FILMS_AE = "PACS"

# The validators as tests/sr_templates/test_verified_sr.py runs them (its conftest's
# PIXELMED command line), with the findings it accepts (test_sr_validators'
# ACCEPTED_DCIODVFY_WARNINGS and ACCEPTED_PIXELMED_ERRORS, test_verified_sr's
# ACCEPTED_REVIEW_WARNINGS; the reasons are given there).
PIXELMED = [
    "java",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-cp",
    "/usr/share/java/pixelmed.jar",
    "com.pixelmed.validate.DicomSRValidator",
]
ACCEPTED_DCIODVFY_WARNINGS = (
    r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <99GAZEX>",
    r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <99GAZEXSTAFF>",
)
ACCEPTED_PIXELMED_ERRORS = (
    r'Code \(399208008,SCT,"Plain X-ray of chest"\) not found in context group 100',
)


@pytest.fixture(scope="module")
def browser_tools() -> None:
    """Skip unless Chromium, node, playwright-core and the built review page are here."""
    missing = []
    if chromium_path() is None:
        missing.append("chromium (Debian package chromium)")
    if shutil.which("node") is None:
        missing.append("node (Debian package nodejs)")
    if not (VIEWERS / "node_modules" / "playwright-core").is_dir():
        missing.append("tests/viewers/node_modules (npm ci in tests/viewers)")
    if not (APP_DIR / "index.html").is_file():
        missing.append("the built review page (dicom_node/review/static/app)")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}; scripts/setup --dev installs it")


#: result_study's names for the objects -> the Output kinds a worker records
WORKER_KINDS = {
    "findings_sr": ObjectKindValues.FINDINGS_SR,
    "trajectory_sr": ObjectKindValues.TRAJECTORY_SR,
    "seg_binary": ObjectKindValues.SEGMENTATION,
    "attention_map": ObjectKindValues.ATTENTION_MAP,
    "gsps": ObjectKindValues.GSPS,
}


def _worker_kinds(objects: dict[str, Path]) -> dict[str, Path]:
    return {str(WORKER_KINDS[kind]): path for kind, path in objects.items()}


def _with_pneumothorax(result: dict[str, Any]) -> dict[str, Any]:
    """The result with pneumothorax (a critical finding by default) called present."""
    box = {"x0": 60, "y0": 40, "x1": 140, "y1": 120}
    findings = [
        {**f, "present": True, "probability": 0.93, "box": box} if f["key"] == "pneumothorax" else f
        for f in result["findings"]
    ]
    return {**result, "findings": findings}


def _analysed(node: NodeDicomWeb, result: dict[str, Any]) -> None:
    """The analysis's result JSON where the worker writes it, and the study analysed."""
    StudyInstanceUID = result["source"]["StudyInstanceUID"]
    with node.node.sessions.begin() as session:
        row = session.scalar(select(Study).where(Study.StudyInstanceUID == StudyInstanceUID))
        assert row is not None
        row.state = StudyState.ANALYSED
        revision = row.revision
    node.node.spool.write(
        Spool.result_path(StudyInstanceUID, revision), json.dumps(result).encode("utf-8")
    )


@pytest.fixture(scope="module")
def destination(
    browser_tools: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreSCP]:
    """DCMTK storescp, answering to the films' calling AE title."""
    scp = StoreSCP(tmp_path_factory.mktemp("review-pacs"), ae_title=FILMS_AE).start()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture(scope="module")
def listener(browser_tools: None) -> Iterator[MLLPListener]:
    """An MLLP listener (ACKs AA) where the node's HL7 points."""
    server = MLLPListener(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def review_node(
    browser_tools: None,
    result_study: ResultStudy,
    quirky_study: ResultStudy,
    destination: StoreSCP,
    listener: MLLPListener,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeDicomWeb]:
    """A node with two analysed films (the DX; the same pixels as a MONOCHROME1 15-bit CR,
    its result calling pneumothorax present, a critical finding), a radiologist account,
    a destination peer (storescp) with the films' calling AE title, HL7 pointing at the
    MLLP listener, and signatures built by the worker's function on a thread, its ORU^R01
    sent after it as the Celery task chain does (``workers.tasks.sign_review``)."""
    node = NodeDicomWeb(
        tmp_path_factory.mktemp("review-node"),
        "http://127.0.0.1",
        hl7__host="127.0.0.1",
        hl7__port=listener.port,
        delivery__backoff_initial=0.2,
    )
    node.node.peers.add("DEST", FILMS_AE, "127.0.0.1", destination.port, ["destination"])
    worker = WorkerContext.build(node.settings)

    def sign_and_notify(review_id: int) -> None:
        if sign_review(worker, review_id).notify:
            notify_review(worker, review_id)

    def dispatch(review_id: int) -> None:
        threading.Thread(target=sign_and_notify, args=(review_id,), daemon=True).start()

    node.node.review_dispatch = dispatch
    Accounts(node.node.sessions).add(NAME, "radiologist", PASSWORD)
    try:
        with node:
            for study in (result_study, quirky_study):
                node.upload_film(study.film)
                node.add_results(_worker_kinds(study.objects))
            _analysed(node, result_study.result)
            _analysed(node, _with_pneumothorax(quirky_study.result))
            yield node
    finally:
        worker.close()


@pytest.fixture(scope="module")
def page_report(
    review_node: NodeDicomWeb,
    result_study: ResultStudy,
    quirky_study: ResultStudy,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One run of review.mjs through the whole review; its report.json."""
    out = tmp_path_factory.mktemp("review-page")
    result = result_study.result
    present = {
        f"{f['code']['scheme']}:{f['code']['value']}" for f in result["findings"] if f["present"]
    }
    missed = next(
        f"{f['code']['scheme']}:{f['code']['value']}"
        for f in result["findings"]
        if f"{f['code']['scheme']}:{f['code']['value']}" not in present
    )
    job = {
        "baseUrl": review_node.root.removesuffix("/dicom-web"),
        "name": NAME,
        "password": PASSWORD,
        "key": study_key(result["source"]["StudyInstanceUID"]),
        "addLabel": missed,
        "trajectoryLength": len(result["trajectory"]),
        "outDir": str(out),
        "chromium": chromium_path(),
        "sign": True,
        "monochrome1Key": study_key(quirky_study.result["source"]["StudyInstanceUID"]),
    }
    (out / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    done = subprocess.run(
        ["node", str(DRIVER), str(out / "job.json")],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        check=False,
        cwd=VIEWERS,
    )
    copy_artefacts(out, "review-page")
    report_file = out / "report.json"
    if not report_file.is_file():
        raise RuntimeError(f"review.mjs wrote no report:\n{done.stdout}\n{done.stderr}")
    report: dict[str, Any] = json.loads(report_file.read_text(encoding="utf-8"))
    report["out"] = str(out)
    report["returncode"] = done.returncode
    report["job"] = job
    return report


def _runs(steps: Iterable[str]) -> list[str]:
    """The steps with repeats in a row collapsed (A A B B A -> A B A)."""
    runs: list[str] = []
    for step in steps:
        if not runs or runs[-1] != step:
            runs.append(step)
    return runs


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(step in rest for step in part)


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = next((s for s in report["steps"] if s["name"] == name), None)
    where = f"(report {report['out']}/report.json: {report.get('error', '')[:2000]})"
    assert found is not None and found["ok"], f"step {name} did not complete {where}"
    return found


def test_login_and_worklist(page_report: dict[str, Any]) -> None:
    """Logging in through the form lands on the worklist: both studies, the one with a
    critical finding first and badged."""
    assert _step(page_report, "login")["login_url"] == "/review/login"
    rows = _step(page_report, "worklist")["rows"]
    job = page_report["job"]
    assert [(r["key"], r["critical"]) for r in rows] == [
        (job["monochrome1Key"], True),
        (job["key"], False),
    ], "the critical study first, with its badge"
    assert {r["state"] for r in rows} == {"awaiting_review"}
    assert not page_report["blocked_requests"]


def test_film_is_drawn(page_report: dict[str, Any]) -> None:
    """The study view draws the film (cornerstone3D from the node's WADO-RS) with grey levels."""
    opened = _step(page_report, "open")
    assert opened["pixels"]["canvas"] and opened["pixels"]["lit"] > 100, opened["pixels"]
    assert opened["pixels"]["distinct"] > 20, opened["pixels"]
    assert any("synthetic data" in n for n in opened["notices"]), opened["notices"]
    assert not page_report["page_errors"], page_report["page_errors"]


def test_monochrome1_displays_like_its_monochrome2_twin(page_report: dict[str, Any]) -> None:
    """The MONOCHROME1 15-bit copy of the film (inverted stored values, its own window) is
    drawn as the DX itself is, by default and with the lung preset: the two canvases' coarse
    grey grids correlate closely, where an inversion would correlate negatively."""
    dx = _step(page_report, "open")
    cr = _step(page_report, "monochrome1")
    assert (dx["photometric"], cr["photometric"]) == ("MONOCHROME2", "MONOCHROME1")
    assert cr["pixels"]["lit"] > 100, cr["pixels"]
    correlation = float(np.corrcoef(dx["grid"], cr["grid"])[0, 1])
    assert correlation > 0.95, correlation
    lung = _step(page_report, "display")["lung_grid"]
    correlation = float(np.corrcoef(lung, cr["lung_grid"])[0, 1])
    assert correlation > 0.95, f"the lung preset of the CR differs from the DX's: {correlation}"


def test_display_tools_and_links(page_report: dict[str, Any]) -> None:
    """The lung preset changes the drawing, the attention map draws its 8 x 8 grid, the
    overlay follows the wheel zoom, and a report sentence and its finding light each other
    (and the finding's fixations)."""
    display = _step(page_report, "display")
    assert display["lung_changed"], (display["before"], display["lung"])
    assert display["heatmap_cells"] == 64
    assert display["width_zoomed"] > display["width_before"] * 1.05, display
    assert display["finding_lit"] and display["sentence_lit"], display
    assert display["rings_lit"] > 0, display


def test_trajectory_replays_in_order(
    page_report: dict[str, Any], result_study: ResultStudy
) -> None:
    """Played, the fixations appear one after another in the model's order and the step bar
    follows the ABCDEF step of the latest one, to the end of the trajectory."""
    replay = _step(page_report, "replay")
    trajectory = result_study.result["trajectory"]
    counts = replay["counts"]
    assert counts == sorted(counts), counts
    assert len(set(counts)) >= len(trajectory) // 2, counts
    assert replay["last"]["indexes"] == list(range(len(trajectory)))
    assert replay["last"]["steps"] == [f["step"] for f in trajectory]
    shown = _runs(c for c in replay["currents"] if c)
    assert _is_subsequence(shown, _runs(f["step"] for f in trajectory)), shown
    assert len(shown) > 1 and shown[-1] == trajectory[-1]["step"], shown
    assert replay["screenshot"], "no screenshot mid-replay"


def test_reject_correct_and_add(page_report: dict[str, Any]) -> None:
    """A present finding is rejected with a reason from the API's list, another's box is
    corrected by dragging its corner, and a missed finding is added by drawing a box on the
    film and picking its label."""
    rejected = _step(page_report, "reject")
    assert rejected["reason"] and "reject" in rejected["classes"].split()
    assert rejected["box_classes"] and "reject" in rejected["box_classes"].split()
    corrected = _step(page_report, "correct")
    assert corrected["after"][0] > corrected["before"][0] + 20, corrected
    assert corrected["after"][1] > corrected["before"][1] + 15, corrected
    added = _step(page_report, "add")
    assert len(added["added"]) == 1 and added["drawn"] == 1


def test_sign_reopens_read_only(page_report: dict[str, Any], review_node: NodeDicomWeb) -> None:
    """Sign posts the decisions; once the worker built the verified SR the page reopens the
    study signed, read-only, with its history naming the reviewer."""
    signed = _step(page_report, "sign")
    assert signed["enabled"]
    assert signed["controls"] == 0
    assert any(NAME in line for line in signed["history"]), signed["history"]


def _received(destination: StoreSCP, modality: str, timeout: float = 20.0) -> Path:
    """The first file of ``modality`` storescp wrote, polled for until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in destination.received():
            if pydicom.dcmread(path, stop_before_pixels=True).get("Modality") == modality:
                return path
        time.sleep(0.1)
    raise AssertionError(f"no {modality} reached storescp: {destination.received()}")


def _validate(path: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """dciodvfy, dsrdump and PixelMed of ``path``, in parallel, as test_verified_sr runs them."""
    for tool in ("dciodvfy", "dsrdump", "java"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/setup --dev installs it)")
    if not Path(PIXELMED[5]).exists():
        pytest.fail("PixelMed is not installed (scripts/setup --dev installs libpixelmed-java)")
    jobs = {
        "dciodvfy": ["dciodvfy", "-new", str(path)],
        "dsrdump": ["dsrdump", "-v", "+Pt", str(path)],
        "pixelmed": [*PIXELMED, str(path)],
    }

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, errors="replace", check=False, timeout=120
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(jobs, pool.map(run, jobs.values()), strict=True))


def _final_oru(listener: MLLPListener, timeout: float = 20.0) -> tuple[hl7.Message, str]:
    """The first ORU^R01 with OBR-25 F the listener got, and the ACK code it answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text, verdict in listener.received:
            message = hl7.parse(text.replace("\n", "\r"))
            if str(message.segment("OBR")[25]) == "F":
                return message, verdict.code
        time.sleep(0.05)
    raise AssertionError(f"no final ORU^R01 reached the listener: {listener.received}")


def test_signature_is_delivered_validated_and_notified(
    page_report: dict[str, Any],
    result_study: ResultStudy,
    destination: StoreSCP,
    listener: MLLPListener,
) -> None:
    """The browser's signature, followed to the end: the node's outbox delivers the
    verified SR to storescp; the received file passes dciodvfy, dsrdump and PixelMed and
    carries exactly the decisions made on the page (the rejection with its reason, the
    dragged box, the drawn finding, the rest accepted); the final ORU^R01 is ACKed AA."""
    _step(page_report, "sign")
    path = _received(destination, "SR")
    runs = _validate(path)

    output = runs["dciodvfy"].stdout + runs["dciodvfy"].stderr
    lines = output.splitlines()
    assert not [line for line in lines if re.match(r"^Error\b", line)], output
    unexpected = [
        line
        for line in lines
        if re.match(r"^Warning\b", line)
        and not any(re.search(p, line) for p in ACCEPTED_DCIODVFY_WARNINGS)
    ]
    assert not unexpected, "\n".join(unexpected)
    assert runs["dsrdump"].returncode == 0, runs["dsrdump"].stderr
    assert not [line for line in runs["dsrdump"].stderr.splitlines() if line.startswith("E:")]
    assert "Verification Flag   : VERIFIED" in runs["dsrdump"].stdout
    pixelmed = runs["pixelmed"].stdout + runs["pixelmed"].stderr
    assert "Found Root Template TID_1500" in pixelmed, pixelmed[-2000:]
    errors = [
        line
        for line in pixelmed.splitlines()
        if line.startswith("Error")
        and not any(re.search(p, line) for p in ACCEPTED_PIXELMED_ERRORS)
    ]
    assert not errors, "\n".join(errors)

    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == result_study.result["source"]["StudyInstanceUID"]
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName).startswith(NAME)
    decisions: dict[str, FindingDecision] = {
        f"{d.code.scheme_designator}:{d.code.value}": d for d in read_decisions(sr)
    }
    rejected = _step(page_report, "reject")
    corrected = _step(page_report, "correct")
    accepted = _step(page_report, "accept-rest")["accepted"]
    added = page_report["job"]["addLabel"]
    assert {key: d.decision for key, d in decisions.items()} == {
        rejected["finding"]: Decision.REJECT,
        corrected["finding"]: Decision.CORRECT,
        **{key: Decision.ACCEPT for key in accepted},
        added: Decision.ADD,
    }
    reason = decisions[rejected["finding"]].reason
    assert reason is not None and reason.value == rejected["reason"]
    ai_box = next(
        f["box"]
        for f in result_study.result["findings"]
        if f"{f['code']['scheme']}:{f['code']['value']}" == corrected["finding"]
    )
    box = decisions[corrected["finding"]].box
    assert box is not None
    # the corner x1y1 was dragged right and down: the box grew that way, kept its origin
    assert (box.x0, box.y0) == pytest.approx((ai_box["x0"], ai_box["y0"]), abs=1.0), box
    assert box.x1 > ai_box["x1"] and box.y1 > ai_box["y1"], (box, ai_box)
    drawn = decisions[added].box
    assert isinstance(drawn, Box) and drawn.x1 > drawn.x0 and drawn.y1 > drawn.y0, drawn

    message, ack = _final_oru(listener)
    assert ack == "AA"
    rp = next(o for o in message.segments("OBX") if str(o[2]) == "RP")
    assert str(rp[5][0][0]) == sr.SOPInstanceUID
