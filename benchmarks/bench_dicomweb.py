"""DICOMweb throughput of the GazeX node against DICOM and Orthanc, in the same run.

1. Ingest: the same 2048x2048 16-bit DX images into the node by STOW-RS (httpx, one
   ``POST /dicom-web/studies`` per client, the files' bytes as stored in a
   ``multipart/related; type="application/dicom"`` body) and by C-STORE (DCMTK
   ``/usr/bin/storescu``, Nagle off as the node has it), with 1 and 4 concurrent clients,
   each client one study. Every sample gets fresh UIDs, so nothing is a re-send. The
   baseline is C-STORE with the same clients.
2. Retrieve: WADO-RS ``GET /studies/{StudyInstanceUID}`` (``multipart/related;
   type="application/dicom"``, read to the end) of one study from the node and from
   Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) holding the same files. The
   baseline is Orthanc.

The node runs in a child process (its HTTP and DICOM ports, SQLite, every file and row
fsynced, no workers, anonymous DICOMweb allowed), so the clients never share its
interpreter.

    .venv/bin/python benchmarks/bench_dicomweb.py [--images 16] [--rounds 5] [--retrievals 7]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# The repository before tests/, whose dicom_node folder would shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from factories import radiograph, write
from nodekit import DCMTK_ENV, free_port, wait_port

#: DCMTK's storescu, not the pynetdicom app of the same name in the virtual environment.
STORESCU = "/usr/bin/storescu"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


# --- the node, in a child process ---------------------------------------------------------


def serve_node(home: str, port: int, http_port: int, ready: Event, stop: Event) -> None:
    """Child process: build and start the node as the tests do, until ``stop`` is set."""
    from dicom_node import db
    from dicom_node.scp.server import Node
    from dicom_node.settings import load_settings

    url = f"sqlite:///{Path(home) / 'gazex.sqlite3'}"
    Path(home).mkdir(parents=True, exist_ok=True)
    db.upgrade(url)
    settings = load_settings(
        None,
        home=Path(home),
        node__port=port,
        node__bind="127.0.0.1",
        node__accept_any_calling_ae=True,
        http__port=http_port,
        http__bind="127.0.0.1",
        database__url=url,
        completion__quiet_period=0.5,
        dicomweb__allow_anonymous=True,
    )
    node = Node.build(settings, lambda study_id: None)  # no workers: analysis is not measured
    node.start()
    ready.set()
    stop.wait()
    node.stop()


class NodeProcess:
    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.http_port = free_port()
        context = multiprocessing.get_context("spawn")
        self._ready = context.Event()
        self._stop = context.Event()
        self._process = context.Process(
            target=serve_node,
            args=(str(home), self.port, self.http_port, self._ready, self._stop),
            daemon=True,
        )

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def __enter__(self) -> NodeProcess:
        self._process.start()
        if not self._ready.wait(120):
            self._process.kill()
            raise RuntimeError("the node did not start")
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(60)
        if self._process.is_alive():
            self._process.kill()


class Orthanc:
    """Orthanc with its DICOMweb plugin on a free loopback port, no auth, no DICOM port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def __enter__(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "gazex-bench",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
        self._process = subprocess.Popen(
            ["Orthanc", str(self.folder / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/system", timeout=2).raise_for_status()
                return self
            except httpx.HTTPError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(30)


# --- clients ------------------------------------------------------------------------------


def stow(base: str, files: Sequence[Path]) -> None:
    """One STOW-RS request of ``files``; raises unless every instance is stored."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + f.read_bytes() + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(
            f"{base}/studies",
            content=body,
            headers={
                "Content-Type": f"{DICOM_MULTIPART}; boundary={boundary}",
                "Accept": "application/dicom+json",
            },
        )
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:300]}")
    stored = response.json().get("00081199", {}).get("Value", [])
    if len(stored) != len(files):
        raise RuntimeError(f"STOW-RS stored {len(stored)} of {len(files)} instances")


def storescu(port: int, files: Sequence[Path]) -> None:
    result = subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", "GAZEX", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        timeout=600,
        check=False,
        env=DCMTK_ENV,
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr.decode()[-400:]}")


def retrieve(base: str, StudyInstanceUID: str) -> int:
    """WADO-RS of a whole study, read to the end; returns the bytes received."""
    received = 0
    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream(
            "GET",
            f"{base}/studies/{StudyInstanceUID}",
            headers={"Accept": f"{DICOM_MULTIPART}; transfer-syntax=*"},
        ) as response,
    ):
        if response.status_code != 200:
            raise RuntimeError(
                f"WADO-RS answered {response.status_code}: {response.read()[:300]!r}"
            )
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
    return received


def concurrently(send: Callable[[Sequence[Path]], None], groups: list[list[Path]]) -> float:
    """Seconds until every client has sent its group (one thread per client)."""
    with ThreadPoolExecutor(len(groups)) as pool:
        started = time.perf_counter()
        futures = [pool.submit(send, group) for group in groups]
        for future in futures:
            future.result()
        return time.perf_counter() - started


# --- data ---------------------------------------------------------------------------------


def templates(count: int, size: int) -> list[Dataset]:
    return [radiograph(rows=size, columns=size, seed=i) for i in range(count)]


def fresh_studies(images: list[Dataset], clients: int, folder: Path) -> list[list[Path]]:
    """The images as ``clients`` studies with new UIDs, written to ``folder``."""
    groups: list[list[Path]] = [[] for _ in range(clients)]
    study = [(generate_uid(), generate_uid()) for _ in range(clients)]
    for i, ds in enumerate(images):
        g = i % clients
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study[g]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        groups[g].append(write(ds, folder / f"c{g}"))
    return groups


def summary(times: list[float], megabytes: float) -> tuple[float, float, float]:
    """(median MB/s, p95 seconds, median seconds)."""
    median = statistics.median(times)
    return megabytes / median, float(np.percentile(times, 95)), median


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images per sample (default 16)")
    parser.add_argument("--size", type=int, default=2048, help="rows = columns (default 2048)")
    parser.add_argument("--rounds", type=int, default=5, help="ingest samples per row")
    parser.add_argument("--retrievals", type=int, default=7, help="retrieve samples per server")
    args = parser.parse_args(argv)
    if not Path(STORESCU).is_file():
        raise SystemExit(f"{STORESCU} is missing (Debian package dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="gazex-bench-dicomweb-"))
    images = templates(args.images, args.size)
    rows: list[tuple[str, int, int, float, float, float, float]] = []
    try:
        with NodeProcess(work / "node") as node, Orthanc(work / "orthanc") as orthanc:
            senders: dict[str, Callable[[Sequence[Path]], None]] = {
                "C-STORE (storescu)": lambda files: storescu(node.port, files),
                "STOW-RS (httpx)": lambda files: stow(node.dicomweb, files),
            }
            last: list[list[Path]] = []
            for clients in (1, 4):
                times: dict[str, list[float]] = {name: [] for name in senders}
                megabytes = 0.0
                for r in range(args.rounds):
                    for name, send in senders.items():  # alternate, so drift hits both
                        folder = work / "send" / f"{clients}-{r}-{len(times[name])}"
                        groups = fresh_studies(images, clients, folder / name[:4])
                        megabytes = sum(p.stat().st_size for g in groups for p in g) / 1e6
                        times[name].append(concurrently(send, groups))
                        if clients == 1 and r == args.rounds - 1 and name.startswith("STOW"):
                            last = groups
                        else:
                            shutil.rmtree(folder / name[:4])
                baseline = statistics.median(times["C-STORE (storescu)"])
                for name, samples in times.items():
                    rate, p95, median = summary(samples, megabytes)
                    rows.append(
                        (name, clients, len(images), megabytes, rate, p95, baseline / median)
                    )
            # Retrieve: the last study sent by STOW-RS, also into Orthanc (by STOW-RS).
            study_files = last[0]
            stow(orthanc.dicomweb, study_files)
            StudyInstanceUID = str(
                dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID
            )
            megabytes = sum(p.stat().st_size for p in study_files) / 1e6
            retrieved: dict[str, list[float]] = {"Orthanc DICOMweb": [], "gazex WADO-RS": []}
            bases = {"Orthanc DICOMweb": orthanc.dicomweb, "gazex WADO-RS": node.dicomweb}
            for _ in range(args.retrievals):
                for name, base in bases.items():
                    started = time.perf_counter()
                    received = retrieve(base, StudyInstanceUID)
                    retrieved[name].append(time.perf_counter() - started)
                    if received < megabytes * 1e6:
                        raise RuntimeError(f"{name} returned {received} bytes of {megabytes} MB")
            baseline = statistics.median(retrieved["Orthanc DICOMweb"])
            retrieve_rows = [
                (name, *summary(samples, megabytes), baseline / statistics.median(samples))
                for name, samples in retrieved.items()
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"Ingest: {args.images} images of {args.size}x{args.size}x16 bit per sample, "
        f"{args.rounds} samples per row; ratio = C-STORE time / this time (>1: faster)\n"
    )
    print("| protocol | clients | images | MB | median MB/s | p95 s | vs C-STORE |")
    print("|---|---|---|---|---|---|---|")
    for name, clients, count, mb, rate, p95, ratio in rows:
        print(
            f"| {name} | {clients} | {count} | {mb:.0f} | {rate:.0f} | {p95:.2f} | {ratio:.2f}x |"
        )
    print(
        f"\nRetrieve: WADO-RS of one study ({len(study_files)} instances, {megabytes:.0f} MB), "
        f"{args.retrievals} samples; ratio = Orthanc time / this time\n"
    )
    print("| server | median MB/s | p95 s | median s | vs Orthanc |")
    print("|---|---|---|---|---|")
    for name, rate, p95, median, ratio in retrieve_rows:
        print(f"| {name} | {rate:.0f} | {p95:.2f} | {median:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
