"""What an IT admin does: settings, `gazex ae ...`, `gazex send`, and the outbox retrying."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from factories import study_files
from nodekit import StoreSCP, free_port
from pydicom import dcmread
from sqlalchemy import select

from dicom_node import db, scu
from dicom_node.cli import main
from dicom_node.db.models import OutboxItem, OutboxState, utcnow
from dicom_node.outbox import Outbox
from dicom_node.peers import PeerDirectory, PeerInfo
from dicom_node.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    for key in ("GAZEX_CONFIG", "GAZEX_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GAZEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GAZEX_DATABASE__URL", database_url)
    return tmp_path


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "received").start()
    yield scp
    scp.stop()


def test_ae_commands_manage_peers(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """add, list, edit, remove work and a bad AE title fails with one line naming it."""
    assert (
        main(
            [
                "ae",
                "add",
                "PACS",
                "--ae-title",
                "ORTHANC",
                "--host",
                "10.0.0.5",
                "--port",
                "4242",
                "--role",
                "source,destination",
            ]
        )
        == 0
    )
    assert main(["ae", "edit", "PACS", "--port", "4243", "--disable"]) == 0
    capsys.readouterr()
    assert main(["ae", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ORTHANC" in listing and "4243" in listing and " no" in listing
    assert (
        main(
            [
                "ae",
                "add",
                "BAD",
                "--ae-title",
                "BACK\\SLASH",
                "--host",
                "h",
                "--port",
                "1",
                "--role",
                "source",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "BACK" in error and "backslash" in error
    assert (
        main(
            ["ae", "add", "X", "--ae-title", "X", "--host", "h", "--port", "1", "--role", "printer"]
        )
        == 2
    )
    assert main(["ae", "remove", "PACS"]) == 0
    assert main(["ae", "remove", "PACS"]) == 2


def add_destination(name: str, port: int) -> None:
    """`gazex ae add NAME` for a destination on loopback whose AE title is its name."""
    args = ["--ae-title", name, "--host", "127.0.0.1", "--port", str(port)]
    assert main(["ae", "add", name, *args, "--role", "destination"]) == 0


def test_ae_echo_reports_status_and_round_trip(
    env: Path, destination: StoreSCP, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex ae echo` prints the C-ECHO status and round-trip time; a dead peer exits 1."""
    add_destination("DEST", destination.port)
    add_destination("GONE", free_port())
    capsys.readouterr()
    assert main(["ae", "echo", "DEST"]) == 0
    out = capsys.readouterr().out
    assert "status 0x0000" in out and " ms" in out
    assert main(["ae", "echo", "GONE"]) == 1
    assert "cannot reach GONE" in capsys.readouterr().err


def test_send_command_stores_files_at_destination(
    env: Path, destination: StoreSCP, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gazex send` C-STOREs each file and the destination receives them unchanged."""
    files = study_files(env / "send", 2)
    add_destination("DEST", destination.port)
    assert main(["send", "DEST", *map(str, files)]) == 0
    assert "2 sent, 0 failed" in capsys.readouterr().out
    received = {str(dcmread(p).SOPInstanceUID) for p in destination.received()}
    assert received == {str(dcmread(f).SOPInstanceUID) for f in files}


def test_outbox_retries_down_destination_without_blocking_others(
    env: Path, database_url: str, destination: StoreSCP, caplog: pytest.LogCaptureFixture
) -> None:
    """A destination that is down gets attempts and backoff recorded (and a log line saying
    when the next try is) while another one receives at once; when it comes up, the next
    due try delivers."""
    settings = load_settings(None, home=env / "home", database__url=database_url)
    sessions = db.make_sessionmaker(db.make_engine(database_url))
    peers = PeerDirectory(sessions)
    up = peers.add("UP", "DEST", "127.0.0.1", destination.port, ["destination"])
    down_port = free_port()
    down = peers.add("DOWN", "LATER", "127.0.0.1", down_port, ["destination"])
    outbox = Outbox(settings, sessions)
    files = study_files(env / "send", 2)
    with sessions.begin() as session:
        for peer in (up, down):
            for path in files:
                ds = dcmread(path, stop_before_pixels=True)
                outbox.enqueue(session, peer.id, ds.SOPInstanceUID, ds.SOPClassUID, path)

    with caplog.at_level(logging.WARNING, logger="dicom_node.outbox"):
        assert outbox.deliver_due() == 2
    retries = [r.getMessage() for r in caplog.records if r.name == "dicom_node.outbox"]
    assert len(retries) == 2 and all("to DOWN failed" in m and "retry in" in m for m in retries)
    with sessions() as session:
        rows = {(r.peer_id, r.SOPInstanceUID): r for r in session.scalars(select(OutboxItem))}
    assert all(r.state is OutboxState.SENT for (p, _), r in rows.items() if p == up.id)
    waiting = [r for (p, _), r in rows.items() if p == down.id]
    assert all(r.state is OutboxState.PENDING and r.attempts == 1 for r in waiting)
    assert all("cannot reach DOWN" in (r.last_error or "") for r in waiting)
    assert all(r.next_attempt_at >= utcnow() + timedelta(seconds=3) for r in waiting)
    assert outbox.backoff(10) == timedelta(seconds=settings.delivery.backoff_max)

    later = StoreSCP(env / "later", port=down_port, ae_title="LATER").start()
    try:
        assert outbox.deliver_due() == 0  # not due yet
        assert outbox.deliver_due(now=utcnow() + timedelta(hours=1)) == 2
    finally:
        later.stop()
    assert len(later.received()) == 2


def test_many_small_files_back_to_back_under_cpu_load(
    tmp_path: Path, destination: StoreSCP
) -> None:
    """A hundred small files on one association all arrive while two busy processes load the
    CPU and two busy threads the GIL: the association's reactor never takes a C-STORE
    response from the sender (pynetdicom's pause race; before the fix 42 to 96 of the 100
    were lost, see dicom_node.scu._ReactorCheckpoint)."""
    files = study_files(tmp_path / "send", 100)
    peer = PeerInfo(1, "DEST", "STORESCP", "127.0.0.1", destination.port, ("destination",), True)
    stop = threading.Event()

    def busy() -> None:
        count = 0
        while not stop.is_set():
            count += 1

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    burners = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\nend = time.time() + 60\nwhile time.time() < end: pass",
            ]
        )
        for _ in range(2)
    ]
    try:
        for thread in threads:
            thread.start()
        results = scu.send(peer, files, "GAZEX", scu.Timeouts(dimse=5.0))
    finally:
        stop.set()
        for burner in burners:
            burner.kill()
            burner.wait()
    failed = [(r.path.name, r.status, r.error) for r in results if not r.ok]
    assert failed == []
    assert len(destination.received()) == 100


def test_delivery_loop_sends_to_others_while_a_peer_hangs(
    env: Path, database_url: str, destination: StoreSCP
) -> None:
    """The node's delivery loop sends each peer's rows on a thread of its own: a destination
    that accepts the connection but never answers holds only its own rows, and another
    destination gets its results meanwhile."""
    settings = load_settings(
        None, home=env / "home", database__url=database_url, node__acse_timeout=4.0
    )
    sessions = db.make_sessionmaker(db.make_engine(database_url))
    peers = PeerDirectory(sessions)
    with socket.socket() as hung_socket:
        hung_socket.bind(("127.0.0.1", 0))
        hung_socket.listen(8)  # the kernel completes the handshake; nobody ever answers
        hung = peers.add("HUNG", "HUNG", "127.0.0.1", hung_socket.getsockname()[1], ["destination"])
        up = peers.add("UP", "DEST", "127.0.0.1", destination.port, ["destination"])
        outbox = Outbox(settings, sessions)
        files = study_files(env / "send", 2)
        with sessions.begin() as session:
            for peer in (hung, up):
                for path in files:
                    ds = dcmread(path, stop_before_pixels=True)
                    outbox.enqueue(session, peer.id, ds.SOPInstanceUID, ds.SOPClassUID, path)
        stop = threading.Event()
        loop = threading.Thread(target=outbox.run, args=(stop,))
        loop.start()
        try:
            deadline = time.monotonic() + 3.5  # before the hung association times out
            while True:
                with sessions() as session:
                    items = session.scalars(select(OutboxItem)).all()
                rows = {(r.peer_id, r.SOPInstanceUID): r for r in items}
                sent = [
                    r for (p, _), r in rows.items() if p == up.id and r.state is OutboxState.SENT
                ]
                if len(sent) == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            loop.join(timeout=30)
    assert not loop.is_alive()
    assert len(destination.received()) == 2
    assert all(r.state is OutboxState.SENT for (p, _), r in rows.items() if p == up.id)
    assert all(
        r.state is OutboxState.PENDING and r.attempts == 0
        for (p, _), r in rows.items()
        if p == hung.id
    )


def test_settings_file_environment_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TOML file sets values, GAZEX_* variables override it, and a bad value fails
    with one line naming the key."""
    config = tmp_path / "gazex.toml"
    config.write_text(
        '[node]\nae_title = "FROMFILE"\nport = 4000\n[completion]\n'
        "quiet_period_by_ae = { SLOWPACS = 10.0 }\n"
    )
    monkeypatch.setenv("GAZEX_NODE__PORT", "4001")
    settings = load_settings(config)
    assert settings.node.ae_title == "FROMFILE" and settings.node.port == 4001
    assert settings.quiet_period_for("SLOWPACS", "DX") == 10.0
    assert load_settings(config, node__port=4002).node.port == 4002
    monkeypatch.setenv("GAZEX_NODE__MAX_ASSOCIATIONS", "0")
    with pytest.raises(ValueError, match=r"node\.max_associations"):
        load_settings(config)
    monkeypatch.delenv("GAZEX_NODE__MAX_ASSOCIATIONS")
    config.write_text("[node\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_settings(config)


def test_db_upgrade_command_is_idempotent(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gazex db upgrade` on an up-to-date database succeeds and says so."""
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0
    assert "up to date" in capsys.readouterr().out
