"""Destinations of kind DICOMweb: the outbox delivers results by STOW-RS to a real Orthanc
(DICOMweb plugin, basic auth) on loopback, with the same retries, backoff and audit as
C-STORE, and a DICOMweb destination that is down never holds up a DIMSE one."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import study_files
from nodekit import OrthancDicomWeb, RunningNode, StoreSCP
from pydicom import dcmread
from sqlalchemy import select

from dicom_node import stow_client
from dicom_node.db.models import AuditEvent, OutboxItem, OutboxState
from dicom_node.peers import PeerInfo
from dicom_node.scu import Timeouts

pytestmark = pytest.mark.integration

StartNode = Callable[..., RunningNode]
USERS = {"gazex": "s3cret"}
AUTH = "basic:gazex:s3cret"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancDicomWeb]:
    """An Orthanc with its DICOMweb plugin, asking for basic auth; not started."""
    server = OrthancDicomWeb(tmp_path / "orthanc", USERS)
    yield server
    server.stop()


def enqueue(node: RunningNode, peer: PeerInfo, files: list[Path]) -> None:
    with node.sessions.begin() as session:
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            node.node.outbox.enqueue(session, peer.id, ds.SOPInstanceUID, ds.SOPClassUID, path)


def rows(node: RunningNode, peer: PeerInfo) -> list[OutboxItem]:
    with node.sessions() as session:
        return list(session.scalars(select(OutboxItem).where(OutboxItem.peer_id == peer.id)))


def wait_rows(
    node: RunningNode,
    peer: PeerInfo,
    predicate: Callable[[OutboxItem], bool],
    timeout: float = 15.0,
) -> list[OutboxItem]:
    """The peer's outbox rows once every one satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        items = rows(node, peer)
        if items and all(predicate(i) for i in items):
            return items
        if time.monotonic() > deadline:
            states = [(i.state, i.attempts, i.last_error) for i in items]
            raise AssertionError(f"outbox rows of {peer.name}: {states}")
        time.sleep(0.05)


def results_audit(node: RunningNode) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.kind == "results").order_by(AuditEvent.id)
            )
        )


def uids(files: list[Path]) -> dict[str, bytes]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f.read_bytes() for f in files}


def test_results_go_by_stow_rs_to_a_dicomweb_destination(
    start_node: StartNode, orthanc: OrthancDicomWeb, tmp_path: Path
) -> None:
    """Rows for a peer with a DICOMweb URL are sent by STOW-RS with its basic credentials:
    Orthanc keeps every file byte for byte, the rows are SENT after one attempt, and each
    is audited as sent with the peer's DICOMweb URL as its address."""
    orthanc.start()
    node = start_node()
    peer = node.node.peers.add(
        "WEB-ARCHIVE",
        "ORTHANC",
        None,
        None,
        ["destination"],
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_auth=AUTH,
    )
    files = study_files(tmp_path / "results", 3)
    enqueue(node, peer, files)

    items = wait_rows(node, peer, lambda i: i.state is OutboxState.SENT)

    assert [(i.attempts, i.last_error) for i in items] == [(1, None)] * 3
    assert orthanc.stored() == uids(files)
    audit = results_audit(node)
    assert {(r.action, r.ae_title, r.address, r.detail) for r in audit} == {
        ("sent", "ORTHANC", orthanc.dicomweb_url, "to WEB-ARCHIVE")
    }
    assert sorted(str(r.SOPInstanceUID) for r in audit) == sorted(uids(files))


def test_a_batch_goes_in_several_requests_of_bounded_size(
    orthanc: OrthancDicomWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch larger than one request's budget is split into several STOW-RS requests,
    and every file still gets its own stored result, in the order given."""
    orthanc.start()
    files = study_files(tmp_path / "results", 5)
    monkeypatch.setattr(stow_client, "MAX_REQUEST_BYTES", 2 * files[0].stat().st_size)
    requests: list[int] = []
    real_post = stow_client._post

    def counted_post(*args: Any) -> Any:
        requests.append(len(args[2]))
        return real_post(*args)

    monkeypatch.setattr(stow_client, "_post", counted_post)
    peer = PeerInfo(
        1, "WEB", "ORTHANC", None, None, ("destination",), True, orthanc.dicomweb_url, AUTH
    )

    results = stow_client.send(peer, files, Timeouts())

    assert [(r.path, r.ok, r.status) for r in results] == [(f, True, 0) for f in files]
    assert orthanc.stored() == uids(files)
    assert requests == [2, 2, 1]


def test_wrong_password_fails_for_good_after_one_attempt(
    start_node: StartNode, orthanc: OrthancDicomWeb, tmp_path: Path
) -> None:
    """Orthanc's 401 to a wrong password is permanent: the rows are FAILED after a single
    attempt, saying HTTP 401, audited as failed, and the password appears nowhere."""
    orthanc.start()
    node = start_node()
    peer = node.node.peers.add(
        "WEB-ARCHIVE",
        "ORTHANC",
        None,
        None,
        ["destination"],
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_auth="basic:gazex:not-the-password",
    )
    files = study_files(tmp_path / "results", 2)
    enqueue(node, peer, files)

    items = wait_rows(node, peer, lambda i: i.state is OutboxState.FAILED)

    assert [(i.attempts, i.last_error) for i in items] == [(1, "HTTP 401 Unauthorized")] * 2
    assert orthanc.stored() == {}
    audit = results_audit(node)
    assert {(r.action, r.address, r.detail) for r in audit} == {
        ("failed", orthanc.dicomweb_url, "to WEB-ARCHIVE: HTTP 401 Unauthorized")
    }
    assert not any("not-the-password" in repr(vars(r)) for r in audit)


def test_dicomweb_destination_down_delays_only_itself(
    start_node: StartNode, orthanc: OrthancDicomWeb, tmp_path: Path
) -> None:
    """While Orthanc is down its rows stay PENDING with a backoff and a DIMSE destination
    (DCMTK storescp) gets its files at once; once Orthanc is up, a retry delivers them."""
    node = start_node(delivery__backoff_initial=0.3, delivery__backoff_max=0.6)
    web = node.node.peers.add(
        "WEB-ARCHIVE",
        "ORTHANC",
        None,
        None,
        ["destination"],
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_auth=AUTH,
    )
    destination = StoreSCP(tmp_path / "received").start()
    try:
        dimse = node.node.peers.add(
            "PACS-DIMSE", "DEST", "127.0.0.1", destination.port, ["destination"]
        )
        files = study_files(tmp_path / "results", 2)
        enqueue(node, web, files)
        enqueue(node, dimse, files)

        wait_rows(node, dimse, lambda i: i.state is OutboxState.SENT, timeout=10)
        assert len(destination.received()) == 2
    finally:
        destination.stop()
    pending = wait_rows(node, web, lambda i: i.attempts >= 2)
    assert all(i.state is OutboxState.PENDING for i in pending)
    assert all(str(i.last_error).startswith("cannot reach http://127.0.0.1:") for i in pending)

    orthanc.start()
    wait_rows(node, web, lambda i: i.state is OutboxState.SENT)

    assert orthanc.stored() == uids(files)
    sent = {(r.ae_title, r.address) for r in results_audit(node) if r.action == "sent"}
    assert sent == {
        ("DEST", f"127.0.0.1:{destination.port}"),
        ("ORTHANC", orthanc.dicomweb_url),
    }


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every STOW-RS request with the server's ``answer`` (status, DICOM JSON)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.authorization = self.headers["Authorization"]  # type: ignore[attr-defined]
        status, body = self.server.answer  # type: ignore[attr-defined]
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _sop_item(SOPInstanceUID: str, tag: str | None = None, value: int | None = None) -> Any:
    item = {"00081155": {"vr": "UI", "Value": [SOPInstanceUID]}}
    if tag is not None:
        item[tag] = {"vr": "US", "Value": [value]}
    return item


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (200, "stored-with-warning", (True, 0xB000, None)),
        (409, "failed-A700", (False, 0xA700, True)),
        (409, "failed-C000", (False, 0xC000, False)),
        (202, "not-named", (False, None, True)),
        (503, None, (False, None, True)),
        (429, None, (False, None, True)),
        (408, None, (False, None, True)),
        (403, None, (False, None, False)),
        (413, None, (False, None, False)),
    ],
)
def test_store_instances_response_to_per_file_results(
    tmp_path: Path, status: int, answer: str | None, expected: tuple[bool, int | None, bool | None]
) -> None:
    """Each file's result comes from the Store Instances Response (Warning Reason, Failure
    Reason as a DIMSE status) or, for a request refused as a whole, from the HTTP status:
    408, 429 and 5xx may pass, any other 4xx will not. A bearer token is presented as such."""
    [path] = study_files(tmp_path / "results", 1)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    bodies: dict[str | None, Any] = {
        None: None,
        "stored-with-warning": {
            "00081199": {"vr": "SQ", "Value": [_sop_item(uid, "00081196", 0xB000)]}
        },
        "failed-A700": {"00081198": {"vr": "SQ", "Value": [_sop_item(uid, "00081197", 0xA700)]}},
        "failed-C000": {"00081198": {"vr": "SQ", "Value": [_sop_item(uid, "00081197", 0xC000)]}},
        "not-named": {"00081199": {"vr": "SQ", "Value": [_sop_item("1.2.3.4")]}},
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.answer = (status, bodies[answer])  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        peer = PeerInfo(1, "WEB", "WEB", None, None, ("destination",), True, url, "bearer:t0k3n")
        [result] = stow_client.send(peer, [path], Timeouts())
    finally:
        server.shutdown()
        server.server_close()

    assert server.authorization == "Bearer t0k3n"  # type: ignore[attr-defined]
    ok, code, transient = expected
    assert (result.ok, result.status) == (ok, code)
    if transient is not None:
        assert result.transient is transient
    if code is None:
        assert result.error is not None and result.error.startswith(f"HTTP {status}")


def test_a_dicomweb_destination_that_hangs_delays_only_itself(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A DICOMweb destination that takes the connection and never answers holds only its
    own rows, until the network timeout makes them PENDING for a retry; a DIMSE
    destination gets its files while that request still waits."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; no one reads
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        node = start_node(node__network_timeout=3.0)
        web = node.node.peers.add(
            "WEB-SILENT", "SILENT", None, None, ["destination"], dicomweb_url=url
        )
        destination = StoreSCP(tmp_path / "received").start()
        try:
            dimse = node.node.peers.add(
                "PACS-DIMSE", "DEST", "127.0.0.1", destination.port, ["destination"]
            )
            files = study_files(tmp_path / "results", 2)
            enqueue(node, web, files)
            enqueue(node, dimse, files)

            wait_rows(node, dimse, lambda i: i.state is OutboxState.SENT, timeout=10)
            assert [i.attempts for i in rows(node, web)] == [0, 0]  # still waiting
            assert len(destination.received()) == 2
        finally:
            destination.stop()
        items = wait_rows(node, web, lambda i: i.attempts >= 1)
    assert all(i.state is OutboxState.PENDING for i in items)
    assert {i.last_error for i in items} == {f"no answer from {url}: ReadTimeout"}


def test_echo_and_send_commands_speak_dicomweb_to_a_dicomweb_peer(
    orthanc: OrthancDicomWeb,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gazex ae echo` checks a DICOMweb-only peer with a QIDO-RS search under its
    credentials (HTTP 200, or 401 with a wrong password), and `gazex send` STOW-RSes files
    to it; a peer that is down is one line, exit 1."""
    from dicom_node.cli import main

    monkeypatch.delenv("GAZEX_CONFIG", raising=False)
    monkeypatch.setenv("GAZEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GAZEX_DATABASE__URL", database_url)
    secret = tmp_path / "orthanc.secret"
    secret.write_text(AUTH)
    add = ["ae", "add", "WEB", "--ae-title", "ORTHANC", "--role", "destination"]
    url = ["--dicomweb-url", orthanc.dicomweb_url, "--dicomweb-auth-file", str(secret)]
    assert main([*add, *url]) == 0
    assert main(["ae", "echo", "WEB"]) == 1  # not started yet
    assert "cannot reach" in capsys.readouterr().err
    orthanc.start()
    assert main(["ae", "echo", "WEB"]) == 0
    assert "HTTP 200" in capsys.readouterr().out
    files = study_files(tmp_path / "results", 2)
    assert main(["send", "WEB", *map(str, files)]) == 0
    assert "2 sent, 0 failed" in capsys.readouterr().out
    assert orthanc.stored() == uids(files)
    secret.write_text("basic:gazex:wrong")
    assert main(["ae", "edit", "WEB", "--dicomweb-auth-file", str(secret)]) == 0
    assert main(["ae", "echo", "WEB"]) == 1
    assert "HTTP 401" in capsys.readouterr().out
