"""A study sent by a PACS comes back as SR, SEG and GSPS, and the RIS gets its ORU^R01:
DCMTK storescu -> node -> real Celery workers -> DCMTK storescp, MLLP listener."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pytest
from highdicom.sr.utils import find_content_items
from nodekit import free_port, send_raw, storescu, truncated_copy
from pydicom import dcmread
from stackkit import Stack, check_results, chest_study

from dicom_node.db.models import StudyState
from dicom_node.spool import short_hash
from sr_templates import codes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MakeStack = Callable[..., Stack]


@pytest.mark.parametrize("broker", ["embedded", "rabbitmq", "redis"])
def test_study_round_trip(make_stack: MakeStack, tmp_path: Path, broker: str) -> None:
    """storescu -> node -> workers -> storescp and the MLLP listener, on the embedded default
    (`gazex serve`) and distributed over RabbitMQ or Redis with PostgreSQL."""
    # The embedded node gives its analysis worker the next port for probes and metrics.
    http_port = free_port() if broker == "embedded" else None
    stack = make_stack(broker, http_port=http_port)
    if broker == "embedded":
        stack.start("serve", "serve")
    else:
        stack.start("node", "node")
        stack.start("gpu", "worker", "--queues", "gpu")
        stack.start("io", "worker", "--queues", "io")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study")
    result = storescu(stack.port, sent)
    assert result.returncode == 0, result.stderr

    check_results(stack, sent)
    pa = dcmread(sent[0])
    study = stack.wait_state(pa.StudyInstanceUID, {StudyState.DONE})
    assert study.revision == 1
    deadline = time.monotonic() + 30
    while not stack.listener.received and time.monotonic() < deadline:
        time.sleep(0.1)
    (message, verdict), *_ = stack.listener.received
    assert "ORU^R01" in message and str(pa.StudyInstanceUID) in message
    assert verdict.code == "AA"
    status = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(stack.config), "status"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "done        1" in status and "Recent failures:\n  none" in status
    log = "".join(path.read_text() for path in stack.logs.values())
    quiet = ("SecurityWarning", "-------------- gazex-", "succeeded in", "alembic", "study #")
    assert [noise for noise in quiet if noise in log] == []
    assert f"study {short_hash(str(pa.StudyInstanceUID))} done: results delivered" in log
    if http_port is not None:
        node_metrics = scrape(http_port)
        assert "gazex_instances_received_total 2.0" in node_metrics
        assert 'gazex_studies{state="done"} 1.0' in node_metrics
        worker_metrics = scrape(http_port + 1)
        assert "gazex_model_seconds_count 1.0" in worker_metrics
        assert 'gazex_stage_seconds_count{stage="analysed"} 1.0' in worker_metrics
        assert "gazex_model_info{version=" in worker_metrics


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_non_chest_study_is_skipped_and_corrupt_file_refused(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """A CT study is recorded as skipped with the reason; a corrupt file gets a failure
    status; the node keeps serving and nothing is sent to the destination."""
    from factories import radiograph, write

    stack = make_stack("embedded")
    stack.start("serve", "serve")
    stack.wait_listening()
    ct = radiograph(modality="CT", body_part="HEAD", rows=64, columns=64)
    assert storescu(stack.port, [write(ct, tmp_path / "ct")]).returncode == 0
    study = stack.wait_state(ct.StudyInstanceUID, {StudyState.SKIPPED})
    assert study.reason is not None and "CT/HEAD" in study.reason

    good = write(radiograph(), tmp_path / "good")
    corrupt = truncated_copy(good, tmp_path / "corrupt.dcm")
    assert send_raw(stack.port, corrupt) == 0xC000
    echo = subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "GAZEX", "127.0.0.1", str(stack.port)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0
    time.sleep(1.0)
    assert stack.destination.received() == []


def test_study_from_a_source_that_is_no_destination_says_undelivered(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """A chest study from an AE that may send but is no destination is analysed, and then
    said to be undelivered, not done: in its state and reason, `gazex status`, the audit
    trail and the studies metric; nothing reaches the destination peer."""
    http_port = free_port()
    stack = make_stack("embedded", http_port=http_port)
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study")
    assert storescu(stack.port, sent, calling="MODALITY").returncode == 0
    study_uid = dcmread(sent[0]).StudyInstanceUID
    study = stack.wait_state(study_uid, {StudyState.UNDELIVERED, StudyState.DONE})
    assert study.state is StudyState.UNDELIVERED
    assert study.reason is not None and study.reason.startswith("no destination")
    gazex = [sys.executable, "-m", "dicom_node.cli", "--config", str(stack.config)]
    run = {"env": stack.env, "capture_output": True, "text": True, "timeout": 60, "check": True}
    status = subprocess.run([*gazex, "status"], **run).stdout  # type: ignore[call-overload]
    assert "undelivered 1" in status and "went to no destination" in status
    audit = subprocess.run([*gazex, "audit", "--kind", "results"], **run).stdout  # type: ignore[call-overload]
    assert "undelivered" in audit and "no destination" in audit
    assert 'gazex_studies{state="undelivered"} 1.0' in scrape(http_port)
    assert stack.destination.received() == []


def test_a_worker_without_the_model_stack_is_not_ready_and_fails_the_study(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """Installed without the `[model]` extra (safetensors missing here), the analysis worker
    stays up, /readyz answers 503 naming the missing extra, and a study fails with that
    reason (before, it was re-queued in "analysing" for ever while /readyz said ready)."""
    without_extra = tmp_path / "without-model-extra"
    without_extra.mkdir()
    (without_extra / "sitecustomize.py").write_text(
        "import sys\nsys.modules['safetensors'] = None\n"
    )
    http_port = free_port()
    stack = make_stack("embedded", http_port=http_port)
    stack.env["PYTHONPATH"] = str(without_extra)
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study")
    assert storescu(stack.port, sent).returncode == 0
    study = stack.wait_state(dcmread(sent[0]).StudyInstanceUID, {StudyState.FAILED})
    assert study.reason is not None and "gazex-node[model]" in study.reason
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://127.0.0.1:{http_port + 1}/readyz", timeout=10)
    assert answer.value.code == 503
    assert "no module named 'safetensors'" in answer.value.read().decode()


def test_an_hl7_notification_that_cannot_be_sent_is_listed_as_failed(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """When the RIS stays unreachable until the retries are spent, the notification is
    recorded as failed with the reason and `gazex status` lists it (before, it stayed
    "pending" for ever and the study "analysed", with no failure shown)."""
    stack = make_stack("embedded")
    stack.listener.stop()
    stack.env["GAZEX_WORKER__MAX_RETRIES"] = "0"
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study")
    assert storescu(stack.port, sent).returncode == 0
    stack.wait_state(dcmread(sent[0]).StudyInstanceUID, {StudyState.ANALYSED})
    gazex = [sys.executable, "-m", "dicom_node.cli", "--config", str(stack.config), "status"]
    deadline = time.monotonic() + 90
    status = ""
    while time.monotonic() < deadline and "HL7 " not in status:
        time.sleep(1.0)
        status = subprocess.run(
            gazex, env=stack.env, capture_output=True, text=True, timeout=60, check=True
        ).stdout
    failures = status.split("Recent failures:")[1]
    assert "HL7 " in failures and "MLLPTransportError" in failures, status


def test_a_film_outside_the_training_domain_is_said_to_be(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """A chest film unlike the synthetic training films (here one inverted: the domain gate
    flags every such film) is analysed and delivered, but nothing is reported as if the
    model knew: the findings SR leads with the coded verdict and the notice, draws no box
    and assesses no finding; no SEG is sent; the ORU's first note is the notice; the study
    record, `gazex status` and the metrics count it."""
    http_port = free_port()
    stack = make_stack("embedded", http_port=http_port)
    stack.start("serve", "serve")
    stack.wait_listening()
    [film] = chest_study(tmp_path / "study", lateral=False)
    ds = dcmread(film)
    ds.PixelData = (ds.pixel_array.max() - ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(film)
    assert storescu(stack.port, [film]).returncode == 0
    study = stack.wait_state(ds.StudyInstanceUID, {StudyState.DONE})
    [analysis] = stack.analyses(study.id)
    assert analysis.out_of_domain is True and analysis.domain_score is not None
    objects = stack.received(4)
    modalities = sorted(str(o.Modality) for o in objects)
    assert "SEG" not in modalities, modalities
    [findings] = [o for o in objects if "findings" in str(o.SeriesDescription)]
    report = hd.sr.Comprehensive3DSR.from_dataset(findings).content
    assert report.get_planar_roi_measurement_groups() == []
    [evaluations] = find_content_items(report[0], name=codes.QUALITATIVE_EVALUATIONS)
    verdict, notice, *rest = evaluations.ContentSequence
    assert verdict.value == codes.OUT_OF_DOMAIN
    assert notice.TextValue.startswith("OUT OF DOMAIN:")
    assessed = [i for i in rest if i.ValueType == "CODE" and i.name.scheme_designator != "99GAZEX"]
    assert assessed and all(i.value == codes.NOT_ASSESSED for i in assessed)
    deadline = time.monotonic() + 30
    while not stack.listener.received and time.monotonic() < deadline:
        time.sleep(0.1)
    (message, _), *_ = stack.listener.received
    assert "NTE|1||OUT OF DOMAIN:" in message
    gazex = [sys.executable, "-m", "dicom_node.cli", "--config", str(stack.config), "status"]
    status = subprocess.run(
        gazex, env=stack.env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "1 analysed film(s) were outside the model's training domain" in status
    assert 'gazex_domain_verdicts_total{verdict="out_of_domain"} 1.0' in scrape(http_port + 1)
