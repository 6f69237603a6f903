"""End-to-end stacks: the node and real Celery worker processes, DCMTK peers, an MLLP
listener, on the embedded default or on RabbitMQ/Redis with PostgreSQL (fixture:
tests/workers/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodekit import StoreSCP, wait_port
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select, text

from dicom_node import db
from dicom_node.db.models import Analysis, Study, StudyState
from model.train.gazedata.images import write_dicom
from model.train.gazedata.synth import generate_sample
from workers.hl7.mllp import MLLPListener

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/0"


def chest_study(folder: Path, seed: int = 7, lateral: bool = True) -> list[Path]:
    """A synthetic PA chest radiograph written as DX by the data layer (seed 7 draws
    cardiomegaly and atelectasis, so the findings SEG is built too), and optionally a
    second image labelled lateral (the generator draws frontal films only; the label is
    what the pipeline's image selection reads)."""
    sample = generate_sample(seed, height=640, width=576, view="PA")
    paths = [folder / "pa.dcm"]
    write_dicom(paths[0], sample.image, sample_id=f"e2e-{seed}", modality="DX", view="PA")
    if lateral:
        side = generate_sample(seed + 1, height=640, width=576, view="AP")
        write_dicom(folder / "side.dcm", side.image, sample_id=f"e2e-{seed}-side", view="LL")
        ds = dcmread(folder / "side.dcm")
        pa = dcmread(paths[0], stop_before_pixels=True)
        ds.StudyInstanceUID = pa.StudyInstanceUID
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber = 2
        ds.save_as(folder / "lat.dcm", enforce_file_format=True)
        (folder / "side.dcm").unlink()
        paths.append(folder / "lat.dcm")
    return paths


@dataclass
class Stack:
    """A running node + workers and its peers; `processes` by role for crash tests."""

    home: Path
    config: Path
    port: int
    database_url: str
    destination: StoreSCP
    listener: MLLPListener
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, role: str, *args: str) -> subprocess.Popen[str]:
        log = self.home / f"{role}.log"
        self.logs[role] = log
        handle = log.open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--config", str(self.config), *args],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a kill reaches the worker's children too
        )
        self.processes[role] = process
        return process

    def kill(self, role: str) -> None:
        process = self.processes.pop(role)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # A worker child can hang in Celery's warm shutdown after its leader is gone
            # (seen under CPU load): nothing of the group may outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()

    def wait_listening(self, timeout: float = 60.0) -> None:
        try:
            wait_port(self.port, timeout)
        except AssertionError:
            raise AssertionError(f"node did not listen: {self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {role}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for role, path in self.logs.items()
        )

    def study(self, StudyInstanceUID: str) -> Study | None:
        engine = db.make_engine(self.database_url)
        try:
            with db.make_sessionmaker(engine)() as session:
                return session.scalar(
                    select(Study).where(Study.StudyInstanceUID == StudyInstanceUID)
                )
        finally:
            engine.dispose()

    def analyses(self, study_id: int) -> list[Analysis]:
        """The study's analyses, oldest first."""
        engine = db.make_engine(self.database_url)
        try:
            with db.make_sessionmaker(engine)() as session:
                return list(
                    session.scalars(
                        select(Analysis).where(Analysis.study_id == study_id).order_by(Analysis.id)
                    )
                )
        finally:
            engine.dispose()

    def wait_state(
        self, StudyInstanceUID: str, states: set[StudyState], timeout: float = 120.0
    ) -> Study:
        deadline = time.monotonic() + timeout
        study = None
        while time.monotonic() < deadline:
            study = self.study(StudyInstanceUID)
            if study is not None and study.state in states:
                return study
            time.sleep(0.2)
        raise AssertionError(
            f"study stuck in {None if study is None else study.state}\n{self.tail()}"
        )

    def received(self, expected: int, timeout: float = 120.0) -> list[Dataset]:
        """Wait until the destination holds ``expected`` objects; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.destination.received()
            if len(files) >= expected:
                time.sleep(0.5)  # a duplicate would show up now
                return [dcmread(p) for p in self.destination.received()]
            time.sleep(0.2)
        raise AssertionError(
            f"{len(self.destination.received())} of {expected} objects arrived\n{self.tail()}"
        )


def _isolated_database(kind: str, tmp_path: Path) -> tuple[str, Callable[[], None]]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'home' / 'gazex.sqlite3'}"
        db.upgrade(url)
        return url, lambda: None
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    db.upgrade(url)

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return url, drop


SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"

#: dciodvfy warnings accepted on our objects, each with its reason.
ACCEPTED_WARNINGS = (
    # Our private coding scheme for fixations and ABCDEF steps (no standard code exists).
    "99GAZEX",
    "Coding Scheme Designator",
)


def references(ds: Dataset, uid: str) -> bool:
    """Whether ``uid`` appears anywhere in the object (its evidence or references)."""
    found = False

    def visit(dataset: Dataset, element: object) -> None:
        nonlocal found
        if getattr(element, "value", None) == uid:
            found = True

    ds.walk(visit)
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(
        ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [line for line in run.stderr.splitlines() if line.startswith("Error")]


def check_results(stack: Stack, sent: list[Path]) -> list[Dataset]:
    """Results in the destination: two SRs, the findings SEG, the attention map and the
    GSPS in the study, valid, referencing the PA."""
    pa = dcmread(sent[0])
    objects = stack.received(expected=5)
    classes = sorted(str(ds.SOPClassUID) for ds in objects)
    assert classes.count(SR) == 2 and classes.count(SEG) == 1 and GSPS in classes, classes
    assert PARAMETRIC_MAP in classes, classes
    assert len({str(ds.SOPInstanceUID) for ds in objects}) == len(objects)
    for ds in objects:
        assert ds.StudyInstanceUID == pa.StudyInstanceUID
        assert references(ds, str(pa.SOPInstanceUID)), ds.SeriesDescription
    for path in stack.destination.received():
        assert dciodvfy_errors(path) == [], path.name
    return objects
