"""Faults: disk full, database gone, node killed, broker down, and a real RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from factories import radiograph, study_files, write
from kombu import Connection, Queue
from kombu.message import Message
from nodekit import RunningNode, free_port, storescu
from pydicom import dcmread
from sqlalchemy import func, select, text

from dicom_node import db
from dicom_node.db.models import Instance, Study, StudyState

pytestmark = pytest.mark.integration

StartNode = Callable[..., RunningNode]
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "spool"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_answers_a700_and_keeps_acknowledged_instances(
    start_node: StartNode, tmp_path: Path, tiny_spool: Path
) -> None:
    """When the spool fills up the node answers 0xA700, leaves no partial file, and every
    instance it acknowledged before is intact and indexed."""
    # No free-space threshold: this pins the answer when the disk fills mid-association.
    node = start_node(spool__path=tiny_spool, spool__min_free_mb=0)
    files = study_files(tmp_path / "send", 40, rows=128, columns=64)  # ~16 KiB each
    result = storescu(node.port, files, extra=["--no-halt"])
    statuses = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert len(statuses) == len(files)
    succeeded = [line for line in statuses if "(Success)" in line]
    refused = [line for line in statuses if "Refused: OutOfResources" in line]
    assert succeeded and refused and len(succeeded) + len(refused) == len(files)
    assert not list(tiny_spool.rglob("*.partial"))
    with node.sessions() as session:
        rows = session.scalars(select(Instance)).all()
    assert len(rows) == len(succeeded)
    for row in rows:
        assert dcmread(node.node.spool.absolute(row.path)).SOPInstanceUID == row.SOPInstanceUID


def test_database_unavailable_answers_a700_and_leaves_no_file(
    start_node: StartNode, tmp_path: Path
) -> None:
    """With the instance table gone the node answers 0xA700 and writes nothing to the
    spool; once it is back, the same instance is stored."""
    node = start_node()
    path = write(radiograph(), tmp_path)
    with node.node.engine.begin() as conn:
        conn.execute(text("ALTER TABLE instance RENAME TO instance_away"))
    try:
        result = storescu(node.port, [path])
        assert "Refused: OutOfResources" in result.stderr, result.stderr
        assert not [p for p in node.node.spool.root.rglob("*") if p.is_file()]
    finally:
        with node.node.engine.begin() as conn:
            conn.execute(text("ALTER TABLE instance_away RENAME TO instance"))
    assert storescu(node.port, [path]).returncode == 0
    with node.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1


def _serve(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        # `node`: the SCP without the embedded workers, so the message stays in the queue
        # and no worker child outlives the SIGKILL below.
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "node"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        if "listening on" in line:
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError("gazex serve did not start")


def test_sigkill_after_success_loses_nothing(tmp_path: Path, database_url: str) -> None:
    """The node killed with SIGKILL right after answering success still has the instance
    after a restart, and then completes and dispatches its study."""
    port = free_port()
    config = tmp_path / "gazex.toml"
    config.write_text(
        f"""
home = "{tmp_path / "home"}"
[node]
bind = "127.0.0.1"
port = {port}
[database]
url = "{database_url}"
[completion]
quiet_period = 30.0

[[peers]]
name = "PACS"
ae_title = "STORESCU"
host = "127.0.0.1"
port = 104
roles = ["source", "destination"]
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
    ds = radiograph()
    path = write(ds, tmp_path / "send")

    first = _serve(config, env)
    try:
        result = storescu(port, [path])
        assert "(Success)" in result.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)

    # Restarted with a short quiet period: the study completes from the database state.
    config.write_text(config.read_text().replace("quiet_period = 30.0", "quiet_period = 0.2"))
    second = _serve(config, env)
    try:
        engine = db.make_engine(database_url)
        deadline = time.monotonic() + 30
        with engine.connect() as conn:
            while True:
                state = conn.execute(
                    select(Study.state).where(Study.StudyInstanceUID == ds.StudyInstanceUID)
                ).scalar_one()
                if state == StudyState.QUEUED or time.monotonic() > deadline:
                    break
                conn.rollback()
                time.sleep(0.1)
            stored = conn.execute(select(Instance.path)).scalar_one()
        engine.dispose()
        assert state == StudyState.QUEUED
        spool = tmp_path / "home" / "spool"
        assert dcmread(spool / stored).SOPInstanceUID == ds.SOPInstanceUID
        assert list((tmp_path / "home" / "broker" / "queue").glob("*.msg"))
    finally:
        second.terminate()
        second.wait(timeout=30)


def take_message(queue: str, timeout: float = 10.0) -> Message:
    """Take one message off a RabbitMQ queue declared by the node, then delete the queue."""
    with Connection(RABBITMQ) as conn:
        bound = Queue(queue, no_declare=True).bind(conn.channel())
        try:
            deadline = time.monotonic() + timeout
            while (message := bound.get(no_ack=True)) is None:
                assert time.monotonic() < deadline, f"no message in {queue}"
                time.sleep(0.05)
            return message
        finally:
            bound.delete()


def test_study_reaches_a_real_rabbitmq(start_node: StartNode, tmp_path: Path) -> None:
    """After completion the analysis message lands in RabbitMQ, named by task, with the id."""
    queue = f"gazex-test-{uuid.uuid4().hex[:8]}"
    node = start_node(broker__url=RABBITMQ, broker__analysis_queue=queue)
    ds = radiograph()
    assert storescu(node.port, [write(ds, tmp_path)]).returncode == 0
    study = node.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.QUEUED)
    message = take_message(queue)
    assert message.headers["task"] == "gazex.analyze_study"
    assert message.payload[0] == [study.id]


def test_broker_down_keeps_study_until_dispatch_succeeds(
    start_node: StartNode, tmp_path: Path
) -> None:
    """With the broker unreachable a complete study waits in the database; a node started
    with a working broker hands it on."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    node = start_node(broker__url=dead)
    ds = radiograph()
    assert storescu(node.port, [write(ds, tmp_path)]).returncode == 0
    study = node.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.COMPLETE)
    time.sleep(1.0)
    study = node.study(ds.StudyInstanceUID)  # type: ignore[assignment]
    assert study.state is StudyState.COMPLETE and study.dispatched_at is None
    node.node.stop()

    queue = f"gazex-test-{uuid.uuid4().hex[:8]}"
    again = start_node(peers=False, broker__url=RABBITMQ, broker__analysis_queue=queue)
    again.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.QUEUED)
    assert take_message(queue).headers["task"] == "gazex.analyze_study"
