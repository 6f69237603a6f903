"""The SCP against DCMTK and pynetdicom senders: storage, refusals, completion, re-opening."""

from __future__ import annotations

import copy
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from factories import radiograph, study_files, write
from nodekit import RunningNode, send_raw, storescu, truncated_copy
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_node.db.models import Analysis, AnalysisState, Instance, StudyState
from dicom_node.scp.server import AcceptorContext
from dicom_node.scu import no_delay

pytestmark = pytest.mark.integration

StartNode = Callable[..., RunningNode]


def instance_count(node: RunningNode) -> int:
    with node.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_storescu_study_is_stored_durably_and_completes(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Three instances sent by storescu are on disk byte for byte, indexed, and the study
    completes after the release and is handed to the analysis queue."""
    node = start_node()
    files = study_files(tmp_path / "send", 3)
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stderr
    study_uid = str(dcmread(files[0]).StudyInstanceUID)

    study = node.wait_for_study(study_uid, lambda s: s.state is StudyState.QUEUED)
    assert study.released_at is not None and study.completed_at is not None
    assert (study.completed_at - study.released_at).total_seconds() >= 0.3
    assert study.routing_rule == "chest-radiographs"
    with node.sessions() as session:
        rows = session.scalars(select(Instance)).all()
        analyses = session.scalars(select(Analysis)).all()
    assert len(rows) == 3
    assert [a.state for a in analyses] == [AnalysisState.QUEUED]
    for row in rows:
        stored = dcmread(node.node.spool.absolute(row.path))
        sent = dcmread(next(f for f in files if f.name.startswith(row.SOPInstanceUID)))
        assert stored.PixelData == sent.PixelData
        assert "SECRET" not in row.path and "Müller" not in row.path
    queue = node.settings.broker_folder / "queue"
    messages = list(queue.glob("*.msg"))
    assert len(messages) == 1 and "gazex.analyze_study" in messages[0].read_text()


@pytest.mark.parametrize(
    ("syntax", "option"),
    [
        (RLELossless, None),
        (JPEG2000Lossless, "-xv"),
        (JPEGLSLossless, "-xt"),
        (DeflatedExplicitVRLittleEndian, "-xd"),
    ],
)
def test_compressed_transfer_syntaxes_are_stored_as_received(
    start_node: StartNode, tmp_path: Path, syntax: str, option: str | None
) -> None:
    """Compressed and deflated instances are accepted and stored in the syntax they came in."""
    node = start_node()
    ds = radiograph(rows=32, columns=32)
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax)
    path = write(ds, tmp_path)
    ae = AE("STORESCU")
    ae.add_requested_context(ds.SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="GAZEX")
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0x0000
    with node.sessions() as session:
        row = session.scalars(select(Instance)).one()
    assert row.TransferSyntaxUID == syntax
    stored = dcmread(node.node.spool.absolute(row.path))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == dcmread(path).PixelData


def test_unknown_calling_ae_is_rejected(start_node: StartNode, tmp_path: Path) -> None:
    """An AE that is not an enabled source peer gets A-ASSOCIATE-RJ, and nothing is stored."""
    node = start_node()
    result = storescu(node.port, study_files(tmp_path, 1), calling="STRANGER")
    assert "Calling AE Title Not Recognized" in result.stderr
    wrong_called = storescu(node.port, study_files(tmp_path, 1), called="NOTGAZEX")
    assert "Called AE Title Not Recognized" in wrong_called.stderr
    assert instance_count(node) == 0


def test_accept_any_calling_ae_setting(start_node: StartNode, tmp_path: Path) -> None:
    """With accept_any_calling_ae on, an unknown AE may store."""
    node = start_node(peers=False, node__accept_any_calling_ae=True)
    result = storescu(node.port, study_files(tmp_path, 1), calling="ANYBODY")
    assert result.returncode == 0, result.stderr
    assert instance_count(node) == 1


def test_peer_changes_apply_without_restart(start_node: StartNode) -> None:
    """Adding, disabling and re-enabling a source peer changes who may associate at once."""
    node = start_node(peers=False)

    def echo(calling: str) -> bool:
        run = subprocess.run(
            ["echoscu", "-aet", calling, "-aec", "GAZEX", "127.0.0.1", str(node.port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return run.returncode == 0

    assert not echo("MODALITY1")
    node.node.peers.add("CR-ROOM", "MODALITY1", "127.0.0.1", 104, ["source"])
    assert echo("MODALITY1")
    node.node.peers.edit("CR-ROOM", enabled=False)
    assert not echo("MODALITY1")
    node.node.peers.edit("CR-ROOM", enabled=True, roles=["destination"])
    assert not echo("MODALITY1")


def test_data_set_that_does_not_match_its_sop_class_gets_a900(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A data set whose SOP Class differs from the negotiated one is refused with 0xA900."""
    node = start_node()
    ds = radiograph(modality="CR")
    path = write(ds, tmp_path)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # claims DX
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=False)
    assert dcmread(path).file_meta.MediaStorageSOPClassUID != dcmread(path).SOPClassUID
    assert send_raw(node.port, path) == 0xA900
    assert instance_count(node) == 0


def test_unparseable_data_set_gets_c000_and_node_keeps_serving(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A data set cut off inside a sequence item is refused with 0xC000 and the next
    store on a new association works."""
    node = start_node()
    good = write(radiograph(), tmp_path / "good")
    broken = truncated_copy(good, tmp_path / "broken.dcm")
    assert send_raw(node.port, broken) == 0xC000
    assert send_raw(node.port, good) == 0x0000
    assert instance_count(node) == 1


def test_resend_identical_is_noop_and_changed_bytes_reopen(
    start_node: StartNode, tmp_path: Path
) -> None:
    """The same instance again changes nothing; different bytes under the same SOP Instance
    UID replace the file and re-open the study as a new revision."""
    node = start_node()
    ds = radiograph()
    path = write(ds, tmp_path)
    assert storescu(node.port, [path]).returncode == 0
    study = node.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.QUEUED)
    assert study.revision == 1

    assert storescu(node.port, [path]).returncode == 0
    assert node.study(ds.StudyInstanceUID).state is StudyState.QUEUED  # type: ignore[union-attr]
    assert instance_count(node) == 1

    ds.ImageComments = "corrected"
    write(ds, tmp_path, path.name)
    assert storescu(node.port, [path]).returncode == 0
    study = node.wait_for_study(
        ds.StudyInstanceUID, lambda s: s.revision == 2 and s.state is StudyState.QUEUED
    )
    with node.sessions() as session:
        row = session.scalars(select(Instance)).one()
        states = sorted((a.revision, a.state) for a in session.scalars(select(Analysis)).all())
    assert dcmread(node.node.spool.absolute(row.path)).ImageComments == "corrected"
    assert states == [(1, AnalysisState.SUPERSEDED), (2, AnalysisState.QUEUED)]


def test_late_instance_reopens_completed_study(start_node: StartNode, tmp_path: Path) -> None:
    """An instance arriving after completion re-opens the study, supersedes the analysis and
    completes it again as revision 2 with all instances."""
    node = start_node()
    first = radiograph()
    assert storescu(node.port, [write(first, tmp_path)]).returncode == 0
    node.wait_for_study(first.StudyInstanceUID, lambda s: s.state is StudyState.QUEUED)
    late = radiograph(study=first.StudyInstanceUID, series=generate_uid(), view="LL")
    assert storescu(node.port, [write(late, tmp_path)]).returncode == 0
    study = node.wait_for_study(
        first.StudyInstanceUID, lambda s: s.revision == 2 and s.state is StudyState.QUEUED
    )
    assert study.completed_at is not None
    assert instance_count(node) == 2


def test_quiet_period_holds_completion_until_it_passes(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Right after the release the study is still receiving; it completes only after the
    quiet period (longest of the global, per-AE and per-modality values)."""
    node = start_node(
        completion__quiet_period=0.2,
        completion__quiet_period_by_modality={"DX": 1.5},
    )
    ds = radiograph()
    assert storescu(node.port, [write(ds, tmp_path)]).returncode == 0
    study = node.study(ds.StudyInstanceUID)
    assert study is not None and study.state is StudyState.RECEIVING
    study = node.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.QUEUED)
    assert study.completed_at is not None and study.released_at is not None
    assert (study.completed_at - study.released_at).total_seconds() >= 1.5


def test_non_chest_study_is_skipped_with_reason(start_node: StartNode, tmp_path: Path) -> None:
    """A CT study matches no routing rule: it is recorded as skipped, with the reason."""
    node = start_node()
    ds = radiograph(modality="CT", body_part="HEAD")
    assert storescu(node.port, [write(ds, tmp_path)]).returncode == 0
    study = node.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.SKIPPED)
    assert study.reason is not None and "CT/HEAD" in study.reason
    assert not list((node.settings.broker_folder / "queue").glob("*.msg"))


def test_force_complete_ceiling_without_release(start_node: StartNode, tmp_path: Path) -> None:
    """A sender that stores and then never releases still gets its study completed once the
    force-complete ceiling passes."""
    node = start_node(completion__force_complete_after=1.0)
    ds = radiograph()
    path = write(ds, tmp_path)
    ae = AE("STORESCU")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="GAZEX")
    try:
        assert assoc.send_c_store(path).Status == 0x0000
        study = node.wait_for_study(ds.StudyInstanceUID, lambda s: s.state is StudyState.QUEUED)
        assert study.released_at is None
        assert assoc.is_established
    finally:
        assoc.release()


def test_node_and_its_scu_turn_nagle_off(start_node: StartNode) -> None:
    """Both ends of an association with the node send without Nagle's delay: the node's
    accepted socket, and the socket of an association the node's SCU opens."""
    node = start_node()
    ae = AE("STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1", node.port, ae_title="GAZEX", evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]
    )
    assert assoc.is_established
    try:
        client = assoc.dul.socket.socket
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        accepted = [a.dul.socket.socket for a in node.node.ae.active_associations]
        assert accepted
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1 for s in accepted)
    finally:
        assoc.release()


def test_each_association_negotiates_on_its_own_copy_of_the_contexts(
    start_node: StartNode, tmp_path: Path
) -> None:
    """pynetdicom deep-copies the acceptor's contexts per association; the node's contexts
    copy cheaply and completely, so negotiating (results, chosen syntaxes) on one
    association leaves the node's own contexts as configured."""
    node = start_node()
    server = node.node._server
    assert server is not None
    assert all(isinstance(cx, AcceptorContext) for cx in server.contexts)
    configured = [(cx.abstract_syntax, list(cx.transfer_syntax)) for cx in server.contexts]
    assert len(configured) > 100 and all(len(ts) > 20 for _, ts in configured)
    copies = copy.deepcopy(server.contexts)
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in copies] == configured
    pairs = zip(copies, server.contexts, strict=True)
    assert all(a.transfer_syntax is not b.transfer_syntax for a, b in pairs)
    assert storescu(node.port, study_files(tmp_path, 2)).returncode == 0
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in server.contexts] == configured
    assert all(cx.result is None and cx.as_scp is None for cx in server.contexts)
