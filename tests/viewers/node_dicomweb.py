"""The node as a viewer's DICOMweb server: a real node (SQLite, its own home) on loopback
ports, a source peer with a bearer token for the viewer, films received by C-STORE
and result objects recorded as a finished analysis's outputs, as a worker leaves them.

Use as a context manager; ``upload_film`` and ``add_results`` fill it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from nodekit import free_port
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select

from dicom_node import db
from dicom_node.db.models import Analysis, AnalysisState, Output, Study, utcnow
from dicom_node.dicomweb.auth import Credentials
from dicom_node.scp.server import Node
from dicom_node.settings import load_settings


class NodeDicomWeb:
    """A node whose ``/dicom-web`` a browser viewer on ``viewer_origin`` may call."""

    def __init__(self, folder: Path, viewer_origin: str, **overrides: Any) -> None:
        """``overrides``: more settings, as ``load_settings`` takes them (``hl7__port``...)."""
        self.folder = folder
        url = f"sqlite:///{folder / 'gazex.sqlite3'}"
        db.upgrade(url)
        self.settings = load_settings(
            None,
            home=folder / "home",
            database__url=url,
            node__bind="127.0.0.1",
            node__port=free_port(),
            http__bind="127.0.0.1",
            http__port=0,
            completion__quiet_period=0.2,
            dicomweb__cors_origins=[viewer_origin],
            **overrides,
        )
        # No broker: a complete study waits as queued, which is all a viewer needs.
        self.node = Node.build(self.settings, lambda study_id: None)
        self.node.peers.add("PACS", "PACS", "127.0.0.1", 1, ["source"])
        self.node.peers.add("VIEWER", "OHIF", None, None, ["source"], dicomweb_url=viewer_origin)
        _, self.token = Credentials(self.node.sessions).add_token("VIEWER")

    @property
    def root(self) -> str:
        assert self.node.http is not None
        return f"http://127.0.0.1:{self.node.http.port}/dicom-web"

    def __enter__(self) -> NodeDicomWeb:
        self.node.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.node.stop()

    def upload_film(self, path: Path) -> None:
        """C-STORE a film from the PACS peer, and wait until its study is complete."""
        ds = dcmread(path)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.settings.node.port, ae_title="GAZEX")
        assert assoc.is_established, "the node refused the association"
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == 0, f"C-STORE answered 0x{status.Status:04X}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self.node.sessions() as session:
                study = session.scalar(
                    select(Study).where(Study.StudyInstanceUID == str(ds.StudyInstanceUID))
                )
                if study is not None and study.state.value != "receiving":
                    return
            time.sleep(0.1)
        raise TimeoutError("the film's study did not complete")

    def add_results(self, paths: dict[str, Path]) -> None:
        """Record result objects (by kind) as the outputs of a finished analysis of their
        study, with their files in the spool where a worker writes them."""
        first = dcmread(next(iter(paths.values())), stop_before_pixels=True)
        with self.node.sessions.begin() as session:
            study = session.scalar(
                select(Study).where(Study.StudyInstanceUID == str(first.StudyInstanceUID))
            )
            assert study is not None, "upload the film first"
            # The node queued an analysis when the study completed; it finishes here.
            analysis = session.scalar(
                select(Analysis).where(
                    Analysis.study_id == study.id, Analysis.revision == study.revision
                )
            )
            if analysis is None:
                analysis = Analysis(study_id=study.id, revision=study.revision)
                session.add(analysis)
            analysis.state = AnalysisState.SUCCEEDED
            analysis.started_at = analysis.finished_at = utcnow()
            session.flush()
            for kind, path in paths.items():
                ds = dcmread(path, stop_before_pixels=True)
                relative = self.node.spool.relative_path(
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID),
                    kind="out",
                )
                target = self.node.spool.absolute(relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                session.add(
                    Output(
                        analysis_id=analysis.id,
                        kind=kind,
                        SOPInstanceUID=str(ds.SOPInstanceUID),
                        SOPClassUID=str(ds.SOPClassUID),
                        SeriesInstanceUID=str(ds.SeriesInstanceUID),
                        path=relative.as_posix(),
                    )
                )
