"""Operating the node: Prometheus metrics, /healthz and /readyz, refusing associations when
the spool is nearly full, the audit trail with `gazex audit`, and JSON logs."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from factories import radiograph, study_files, write
from kombu import Connection, Exchange, Queue
from nodekit import RunningNode, StoreSCP, free_port, storescu
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from dicom_node.audit import os_user
from dicom_node.cli import main
from dicom_node.db.models import Analysis, AuditEvent, Instance, OutboxItem, StudyState
from dicom_node.logs import configure_logging, remove_handler
from dicom_node.metrics import Metrics, QueueDepthCollector, broker_queue_depth
from dicom_node.settings import LogSettings, load_settings
from dicom_node.web.app import build_app
from dicom_node.web.probes import Probes, broker_check
from dicom_node.web.server import WebServer

pytestmark = pytest.mark.integration

StartNode = Callable[..., RunningNode]
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/0"
PHI = ("Müller", "Zoë", "Muller", "SECRET-PID-4711")


def http_get(node: RunningNode, path: str) -> tuple[int, bytes]:
    assert node.node.http is not None
    return get(node.node.http.port, path)


def get(port: int, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def readyz(node: RunningNode) -> tuple[int, dict[str, object]]:
    status, body = http_get(node, "/readyz")
    return status, json.loads(body)


def scrape(node: RunningNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    status, body = http_get(node, "/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def audit_rows(node: RunningNode) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def wait_for_audit(node: RunningNode, action: str, timeout: float = 10.0) -> list[AuditEvent]:
    """The audit rows once one with ``action`` is there: pynetdicom runs the rejection
    handler after the A-ASSOCIATE-RJ has gone out, so storescu may return first."""
    deadline = time.monotonic() + timeout
    while True:
        rows = audit_rows(node)
        if any(r.action == action for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


class TCPProxy:
    """A TCP forwarder to a real server; ``stop`` cuts every connection, like a server
    going down, and ``start`` brings it back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TCPProxy:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()


@dataclass(frozen=True)
class JsonLog:
    stream: io.StringIO
    verbose: bool


@pytest.fixture(params=[False, True], ids=["default", "verbose"])
def json_log(request: pytest.FixtureRequest) -> Iterator[JsonLog]:
    """The root logger writing JSON lines (log.format = json) into a buffer, at the
    configured level and with --verbose."""
    stream = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("", "pynetdicom", "highdicom")]
    levels = [logger.level for logger in loggers]
    handler = configure_logging(
        LogSettings(format="json"), verbose=request.param, stream=stream, force=True
    )
    yield JsonLog(stream, request.param)
    remove_handler(handler)
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_metrics_after_a_study(start_node: StartNode, tmp_path: Path) -> None:
    """After storescu sends a study, /metrics shows the instances and bytes received, the
    associations by outcome, the studies by state, the queue depth and a non-empty
    "complete" stage histogram; /healthz answers 200."""
    node = start_node()
    files = study_files(tmp_path / "send", 3)
    assert storescu(node.port, files).returncode == 0
    assert storescu(node.port, files[:1], calling="INTRUDER").returncode != 0
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    node.wait_for_study(study_uid, lambda s: s.state is StudyState.QUEUED)
    wait_for_audit(node, "rejected")

    assert http_get(node, "/healthz")[0] == 200
    metrics = scrape(node)
    with node.sessions() as session:
        stored_bytes = session.scalar(select(func.sum(Instance.size)))
    assert metrics[("gazex_instances_received_total", ())] == 3
    assert metrics[("gazex_bytes_received_total", ())] == stored_bytes
    assert metrics[("gazex_associations_total", (("outcome", "accepted"),))] == 1
    assert metrics[("gazex_associations_total", (("outcome", "released"),))] == 1
    assert metrics[("gazex_associations_total", (("outcome", "rejected"),))] == 1
    assert metrics[("gazex_associations_total", (("outcome", "aborted"),))] == 0
    assert metrics[("gazex_studies", (("state", "queued"),))] == 1
    assert metrics[("gazex_studies", (("state", "receiving"),))] == 0
    complete = (("stage", "complete"),)
    assert metrics[("gazex_stage_seconds_count", complete)] == 1
    assert metrics[("gazex_stage_seconds_sum", complete)] >= 0.3  # the quiet period
    assert metrics[("gazex_queue_depth", (("queue", "gpu"),))] == 1
    assert metrics[("gazex_queue_depth", (("queue", "io"),))] == 0
    for name in ("gazex_delivery_failures_total", "gazex_hl7_failures_total"):
        assert metrics[(name, ())] == 0
    assert ("gazex_model_seconds_count", ()) in metrics


def test_readyz_unready_when_database_stopped(
    start_node: StartNode, database_url: str, tmp_path: Path
) -> None:
    """/readyz answers 503 naming the database while it is really unreachable (the SQLite
    file gone; PostgreSQL behind a cut connection) and 200 again once it is back."""
    proxy = TCPProxy(("127.0.0.1", 5432))
    database = Path(database_url.removeprefix("sqlite:///"))
    away = database.with_name("moved-away.sqlite3")
    sqlite = database_url.startswith("sqlite")

    def stop_database() -> None:
        if sqlite:
            database.rename(away)  # the volume holding the file is gone
        else:
            proxy.stop()  # the server is unreachable: every connection cut

    def start_database() -> None:
        if sqlite:
            away.rename(database)
        else:
            proxy.start()

    if sqlite:
        node = start_node()
    else:
        proxy.start()
        node = start_node(database__url=database_url.replace(":5432/", f":{proxy.port}/"))
    try:
        assert readyz(node) == (
            200,
            {
                "status": "ready",
                "failed": [],
                "checks": {"database": "ok", "broker": "ok", "spool": "ok"},
            },
        )
        stop_database()
        status, body = readyz(node)
        assert status == 503
        assert body["failed"] == ["database"]
        checks = body["checks"]
        assert isinstance(checks, dict) and checks["database"] != "ok"
        assert "password" not in json.dumps(body)
        start_database()
        assert readyz(node)[0] == 200
    finally:
        proxy.stop()


def test_spool_nearly_full_refuses_associations(
    start_node: StartNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Below spool.min_free_mb /readyz names the spool, and a new association is refused
    with A-ASSOCIATE-RJ transient (so the PACS retries later), logged and audited with the
    reason; nothing is stored."""
    node = start_node(spool__min_free_mb=10**9)
    status, body = readyz(node)
    assert status == 503 and body["failed"] == ["spool"]
    checks = body["checks"]
    assert isinstance(checks, dict) and "spool nearly full" in checks["spool"]

    caplog.set_level(logging.INFO)
    result = storescu(node.port, [write(radiograph(), tmp_path)])
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr and "Transient" in result.stderr
    assert "Reason: Local Limit Exceeded" in result.stderr
    assert "spool nearly full" in caplog.text
    [rejected] = [r for r in wait_for_audit(node, "rejected") if r.kind == "association"]
    assert rejected.action == "rejected" and rejected.ae_title == "STORESCU"
    assert rejected.detail is not None and "spool nearly full" in rejected.detail
    assert rejected.address is not None and rejected.address.startswith("127.0.0.1:")
    with node.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert scrape(node)[("gazex_associations_total", (("outcome", "rejected"),))] == 1


def test_audit_trail_and_gazex_audit(
    start_node: StartNode,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The audit records a rejected association from an unknown AE (calling AE, address,
    reason), the studies received and complete, and a peer edit with who and what, in the
    table and the JSON lines file, without any patient name or ID; `gazex audit` filters
    them."""
    caplog.set_level(logging.DEBUG)
    node = start_node()
    files = study_files(tmp_path / "send", 2)
    assert storescu(node.port, files).returncode == 0
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    node.wait_for_study(study_uid, lambda s: s.state is StudyState.QUEUED)
    assert storescu(node.port, files[:1], calling="INTRUDER").returncode != 0
    wait_for_audit(node, "rejected")
    node.node.peers.edit("PACS", port=4242, enabled=False)

    rows = audit_rows(node)
    [rejected] = [r for r in rows if r.action == "rejected"]
    assert (rejected.kind, rejected.ae_title) == ("association", "INTRUDER")
    assert rejected.detail == "calling AE title not recognised (not an enabled source peer)"
    assert rejected.address is not None and rejected.address.startswith("127.0.0.1:")
    accepted = [r for r in rows if r.kind == "association" and r.action == "accepted"]
    assert [r.ae_title for r in accepted] == ["STORESCU"]
    study = [(r.action, r.StudyInstanceUID) for r in rows if r.kind == "study"]
    assert study == [("received", study_uid), ("complete", study_uid)]
    [received] = [r for r in rows if r.action == "received"]
    assert received.association == accepted[0].association  # the same association
    [edit] = [r for r in rows if r.action == "peer-edit"]
    assert edit.kind == "config" and edit.actor == os_user()
    assert edit.detail is not None and edit.detail.startswith("peer PACS: port ")
    assert edit.detail.endswith(" -> 4242, enabled True -> False")
    assert [r.action for r in rows if r.kind == "config"] == ["peer-add", "peer-edit"]

    # The same events as JSON lines in GAZEX_HOME/logs/audit.jsonl.
    audit_file = node.settings.home / "logs" / "audit.jsonl"
    lines = [json.loads(line) for line in audit_file.read_text(encoding="utf-8").splitlines()]
    assert [(e["kind"], e["action"]) for e in lines] == [(r.kind, r.action) for r in rows]

    # Nothing that identifies the patient, in the table, the file or the logs.
    with node.sessions() as session:
        table = session.execute(text("SELECT * FROM audit_event")).all()
    dump = "\n".join(" ".join(map(str, row)) for row in table)
    assert study_uid in dump
    for secret in PHI:
        assert secret not in dump
        assert secret not in audit_file.read_text(encoding="utf-8")
        assert secret not in caplog.text

    # The table is append-only.
    with pytest.raises(DBAPIError, match="append-only"), node.sessions.begin() as session:
        session.execute(text("UPDATE audit_event SET detail = 'x'"))

    monkeypatch.delenv("GAZEX_CONFIG", raising=False)
    monkeypatch.setenv("GAZEX_HOME", str(node.settings.home))
    monkeypatch.setenv("GAZEX_DATABASE__URL", database_url)
    capsys.readouterr()
    assert main(["audit", "--kind", "association"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["TIME", "(UTC)", "KIND", "ACTION"]
    assert all(line.split()[2] == "association" for line in listing[1:])
    assert any("rejected" in line and "INTRUDER" in line for line in listing)
    assert len(listing) - 1 == sum(r.kind == "association" for r in rows)

    assert main(["audit", "--ae", "INTRUDER", "--json", "--since", "2000-01-01"]) == 0
    [entry] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["action"] == "rejected" and "not recognised" in entry["detail"]
    assert main(["audit", "--kind", "config", "--limit", "1", "--json"]) == 0
    [entry] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["action"] == "peer-edit" and entry["actor"] == os_user()


def test_json_logs_carry_the_association_id(
    start_node: StartNode, tmp_path: Path, json_log: JsonLog
) -> None:
    """With log.format = json every line is a JSON object, and lines logged during an
    association (pynetdicom's too, which appear only with --verbose) carry its id (the one
    in the audit) and, while an instance is stored, the study's short hash."""
    node = start_node()
    files = study_files(tmp_path / "send", 1)
    assert storescu(node.port, files).returncode == 0
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    node.wait_for_study(study_uid, lambda s: s.state is StudyState.QUEUED)  # released
    entries = [json.loads(line) for line in json_log.stream.getvalue().splitlines()]
    [accepted] = [e for e in entries if e["msg"].startswith("association accepted")]
    [audited] = [r for r in audit_rows(node) if r.action == "accepted"]
    assert accepted["association"] == audited.association
    assert accepted["level"] == "INFO" and accepted["logger"] == "dicom_node.scp.handlers"
    [receiving] = [e for e in entries if " receiving " in e["msg"]]
    assert receiving["association"] == audited.association
    assert len(receiving["study"]) == 10 and receiving["study"] in receiving["msg"]
    library = [e for e in entries if e["logger"].startswith("pynetdicom")]
    if json_log.verbose:
        [accepting] = [e for e in library if e["msg"] == "Accepting Association"]
        assert accepting["association"] == audited.association  # pynetdicom's, in the thread
    else:
        assert library == []  # its per-PDU and per-C-STORE INFO lines stay out
    released = [e for e in entries if e["msg"].startswith("association released")]
    assert [e["association"] for e in released] == [audited.association]


@pytest.mark.parametrize("url", [RABBITMQ, REDIS], ids=["rabbitmq", "redis"])
def test_queue_depth_read_from_a_real_broker(url: str, tmp_path: Path) -> None:
    """gazex_queue_depth reads the messages waiting on RabbitMQ and Redis, a queue not
    declared yet counts 0, and a broker that is down leaves the metric out quickly and
    fails the readiness check instead of hanging."""
    queue = f"gazex-test-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        None,
        home=tmp_path,
        broker__url=url,
        broker__analysis_queue=queue,
        broker__io_queue=f"{queue}-io",
    )
    assert broker_queue_depth(url, queue, 2.0) == 0
    # RabbitMQ takes a publish asynchronously: without confirms, the count read over a
    # second connection can come before the message is queued.
    confirm = {"confirm_publish": True} if url.startswith("amqp") else {}
    with Connection(url, transport_options=confirm) as conn:
        producer = conn.Producer()
        declared = Queue(queue, Exchange(queue, "direct"), routing_key=queue)
        for n in range(2):
            producer.publish(
                {"n": n},
                exchange=declared.exchange,
                routing_key=queue,
                declare=[declared],
                retry=True,
            )
        try:
            collector = QueueDepthCollector(settings)
            [family] = list(collector.collect())
            depths = {s.labels["queue"]: s.value for s in family.samples}
            assert depths == {queue: 2, f"{queue}-io": 0}
            assert broker_check(settings)() is None
        finally:
            bound = declared.bind(conn.default_channel)
            bound.delete()
            bound.exchange.delete()

    down = load_settings(
        None,
        home=tmp_path,
        broker__url=url.replace(":5672/" if "amqp" in url else ":6379/", f":{free_port()}/"),
    )
    assert list(QueueDepthCollector(down, timeout=1.0).collect()) == []
    assert broker_check(down)() is not None


def test_results_sent_are_audited_and_measured(start_node: StartNode, tmp_path: Path) -> None:
    """Objects the outbox delivers to a real storescp are audited as results sent (UIDs and
    destination), the study's "delivered" stage is observed once all its objects are sent,
    and each failed attempt to a destination that is down counts as a delivery failure."""
    node = start_node()
    files = study_files(tmp_path / "send", 2)
    assert storescu(node.port, files).returncode == 0
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    node.wait_for_study(study_uid, lambda s: s.state is StudyState.QUEUED)
    destination = StoreSCP(tmp_path / "received").start()
    try:
        up = node.node.peers.add("ARCHIVE", "DEST", "127.0.0.1", destination.port, ["destination"])
        down = node.node.peers.add("DOWN", "LATER", "127.0.0.1", free_port(), ["destination"])
        with node.sessions.begin() as session:
            [analysis] = session.scalars(select(Analysis)).all()
            for path in files:
                ds = dcmread(path, stop_before_pixels=True)
                item = node.node.outbox.enqueue(
                    session, up.id, ds.SOPInstanceUID, ds.SOPClassUID, path
                )
                item.analysis_id = analysis.id
            ds = dcmread(files[0], stop_before_pixels=True)
            node.node.outbox.enqueue(session, down.id, ds.SOPInstanceUID, ds.SOPClassUID, files[0])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the outbox loop runs every second
            with node.sessions() as session:
                attempted = session.scalars(select(OutboxItem.attempts)).all()
            if len(attempted) == 3 and all(attempted):
                break
            time.sleep(0.05)
        rows = audit_rows(node)
    finally:
        destination.stop()

    sent = [r for r in rows if r.kind == "results"]
    assert len(destination.received()) == 2
    assert {(r.action, r.ae_title, r.StudyInstanceUID, r.detail) for r in sent} == {
        ("sent", "DEST", study_uid, "to ARCHIVE")
    }
    assert {r.SOPInstanceUID for r in sent} == {str(dcmread(f).SOPInstanceUID) for f in files}
    assert all(r.address == f"127.0.0.1:{destination.port}" for r in sent)
    metrics = scrape(node)
    assert metrics[("gazex_stage_seconds_count", (("stage", "delivered"),))] == 1
    assert metrics[("gazex_delivery_failures_total", ())] >= 1


def test_health_server_on_port_zero_with_a_worker_check() -> None:
    """The HTTP server binds port 0 to a free port it reports, and a caller-supplied check
    (a worker's "model loaded") makes /readyz answer 503 naming it until it passes."""
    loaded = threading.Event()
    probes = Probes({"model": lambda: None if loaded.is_set() else "model not loaded"})
    server = WebServer(build_app(probes, Metrics()), "127.0.0.1", 0, probes=probes).start()
    try:
        assert server.port > 0
        assert get(server.port, "/healthz")[0] == 200
        status, body = get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"] == {"model": "model not loaded"}
        loaded.set()
        assert get(server.port, "/readyz")[0] == 200
        status, body = get(server.port, "/metrics")
        assert status == 200 and b"gazex_model_seconds_bucket" in body
        assert get(server.port, "/nowhere")[0] == 404
    finally:
        server.stop()
