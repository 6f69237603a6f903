"""Helpers for tests that run a node: free ports, DCMTK peers, waiting on study states."""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import Study
from dicom_node.dispatch import Dispatcher
from dicom_node.scp.server import Node

#: DCMTK peers with Nagle's algorithm off, as the node has it (see dicom_node.scu.no_delay):
#: with it on, each C-STORE waits twice for a delayed ACK.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port from ``bind(0)`` is
    ephemeral: between this call and the node's bind, an outgoing connection (the node's own
    to PostgreSQL or RabbitMQ) could take it as its source port, which a loaded CI run did."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, max(_ephemeral_low(), 10001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free loopback port below the ephemeral range")


def wait_port(port: int, timeout: float = 60.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class RunningNode:
    def __init__(self, node: Node, dispatcher: Dispatcher) -> None:
        self.node = node
        self.dispatcher = dispatcher
        self.settings = node.settings
        self.port = node.settings.node.port

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.node.sessions

    def study(self, StudyInstanceUID: str) -> Study | None:
        with self.sessions() as session:
            return session.scalar(select(Study).where(Study.StudyInstanceUID == StudyInstanceUID))

    def wait_for_study(
        self, StudyInstanceUID: str, predicate: Callable[[Study], bool], timeout: float = 15.0
    ) -> Study:
        deadline = time.monotonic() + timeout
        while True:
            study = self.study(StudyInstanceUID)
            if study is not None and predicate(study):
                return study
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"study did not reach the expected state; last: "
                    f"{None if study is None else study.state}"
                )
            time.sleep(0.05)


def storescu(
    port: int,
    files: list[Path],
    *,
    calling: str = "STORESCU",
    called: str = "GAZEX",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu as the sending PACS (verbose, so statuses can be read)."""
    return subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            calling,
            "-aec",
            called,
            *(extra or []),
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=DCMTK_ENV,
    )


class StoreSCP:
    """DCMTK storescp as a destination PACS, writing what it receives to ``folder``."""

    def __init__(self, folder: Path, port: int | None = None, ae_title: str = "DEST") -> None:
        self.folder = folder
        self.port = port or free_port()
        self.ae_title = ae_title
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            ["storescp", "-aet", self.ae_title, "+xa", "-od", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=DCMTK_ENV,
        )
        wait_port(self.port, timeout=10)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


def send_raw(port: int, path: Path, calling: str = "STORESCU", called: str = "GAZEX") -> int:
    """C-STORE a file's bytes as they are, under the SOP class its file meta claims (DCMTK
    storescu refuses to send a file it cannot parse); returns the response status."""
    meta = read_file_meta_info(path)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are, unparsed
    ae = AE(calling)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def truncated_copy(good: Path, broken: Path) -> Path:
    """``good`` with its data set cut off inside a sequence item: valid file meta, data set
    that no parser can read."""
    raw = good.read_bytes()
    meta_end = 132 + int.from_bytes(raw[140:144], "little") + 12
    cut_sequence = b"\x08\x00\x18\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00"
    broken.write_bytes(raw[:meta_end] + cut_sequence + b"\x01" * 4)
    return broken


ORTHANC_ROUTE_SCRIPT = (
    Path(__file__).resolve().parents[1] / "deploy" / "orthanc" / "route-chest.lua"
)


def write_orthanc_config(
    folder: Path, name: str, *, node_port: int, http_port: int, dicom_port: int
) -> Path:
    """An Orthanc configuration on loopback that runs deploy/orthanc/route-chest.lua and
    routes to the "gazex" modality at ``node_port`` once a study is stable for 1 s."""
    config = {
        "Name": name,
        "StorageDirectory": str(folder / "orthanc-db"),
        "IndexDirectory": str(folder / "orthanc-db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "LuaScripts": [str(ORTHANC_ROUTE_SCRIPT)],
        "DicomModalities": {"gazex": ["GAZEX", "127.0.0.1", node_port]},
        "UserMetadata": {"GazexRouted": 4242},
        "StableAge": 1,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancDicomWeb:
    """A private Orthanc (Debian packages orthanc, orthanc-dicomweb) as a DICOMweb
    destination: its plugin at ``/dicom-web``, HTTP basic auth for ``users``, no DICOM port.
    ``stop`` and ``start`` again keep the port and the storage: a destination that goes
    down and comes back."""

    def __init__(self, folder: Path, users: dict[str, str], port: int | None = None) -> None:
        self.folder = folder
        self.users = users
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> OrthancDicomWeb:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "gazex-dicomweb-destination",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": self.users,
            "HttpCompressionEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        with (self.folder / "orthanc.log").open("ab") as log:
            self._process = subprocess.Popen(
                ["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log_text = (self.folder / "orthanc.log").read_text(errors="replace")
                    raise AssertionError(f"Orthanc did not start:\n{log_text[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def get(self, path: str) -> bytes:
        """GET Orthanc's REST API as its first user."""
        user, password = next(iter(self.users.items()))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return bytes(response.read())

    def stored(self) -> dict[str, bytes]:
        """SOP Instance UID -> the file Orthanc keeps, for every instance it holds."""
        files: dict[str, bytes] = {}
        for orthanc_id in json.loads(self.get("/instances")):
            tags = json.loads(self.get(f"/instances/{orthanc_id}/simplified-tags"))
            files[tags["SOPInstanceUID"]] = self.get(f"/instances/{orthanc_id}/file")
        return files
