"""The signing stage (``workers.review`` and ``notification.notify_review``): a signature
made on the review page of a real node becomes a verified findings SR revision that passes
dciodvfy and dsrdump, carries each decision, reaches a DCMTK storescp destination through
the node's outbox, and whose ORU^R01 (F, AA on a critical finding) a real MLLP listener
ACKs; a second signature is revision 2, sent with status C, and DICOMweb lists only it.
The stage functions run here directly, as the tasks call them."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hl7
import pydicom
import pytest
from nodekit import StoreSCP, free_port, storescu
from reviewkit import (
    PATIENT,
    Analysed,
    add_user,
    analysed_study,
    code_key,
    login,
    reject_nodule_add_effusion,
)
from sqlalchemy import select
from stackkit import Stack, chest_study

from dicom_node import db
from dicom_node.db.models import (
    OutboxItem,
    OutboxState,
    Output,
    ReviewState,
    SignedReview,
    StudyState,
)
from dicom_node.errors import AnalysisRefused
from dicom_node.review.signing import finding_key
from dicom_node.scp.server import Node
from dicom_node.settings import load_settings
from model.result import Box
from sr_templates import codes
from sr_templates.review import Decision, read_decisions
from workers import notification, review
from workers.context import WorkerContext
from workers.hl7.messages import build_oru_r01, to_er7
from workers.hl7.mllp import MLLPListener

pytestmark = pytest.mark.integration

#: dciodvfy warnings about our private, declared coding scheme (as in tests/sr_templates).
ACCEPTED_WARNINGS = (r"Unrecognized defined term = <99GAZEX>",)


@dataclass
class Rig:
    node: Node
    ctx: WorkerContext
    url: str
    destination: StoreSCP
    listener: MLLPListener
    dispatched: list[int]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A node (review page, outbox) with a storescp destination and an MLLP listener; the
    workers' context on the same database and spool."""
    url = f"sqlite:///{tmp_path / 'gazex.sqlite3'}"
    db.upgrade(url)
    destination = StoreSCP(tmp_path / "pacs", ae_title="STORESCU").start()
    listener = MLLPListener(port=0).start()
    settings = load_settings(
        None,
        home=tmp_path / "home",
        node__port=free_port(),
        node__bind="127.0.0.1",
        http__port=free_port(),
        http__bind="127.0.0.1",
        database__url=url,
        hl7__host="127.0.0.1",
        hl7__port=listener.port,
        delivery__backoff_initial=0.2,
        review__login_failure_delay=0.0,
    )
    dispatched: list[int] = []
    node = Node.build(settings, lambda study_id: None, dispatched.append)
    node.peers.add("PACS", "STORESCU", "127.0.0.1", destination.port, ["source", "destination"])
    node.start()
    assert node.http is not None
    host, port = node.http.address
    ctx = WorkerContext.build(settings)
    add_user(node.sessions)
    try:
        yield Rig(node, ctx, f"http://{host}:{port}", destination, listener, dispatched)
    finally:
        ctx.close()
        node.stop()
        listener.stop()
        destination.stop()


def _sign(rig: Rig, study: Analysed, body: dict[str, object]) -> int:
    client, csrf = login(rig.url)
    answer = client.post(
        f"/review/api/studies/{study.key}/sign", json=body, headers={"X-CSRF-Token": csrf}
    )
    assert answer.status_code == 202, answer.text
    review_id: int = answer.json()["id"]
    assert rig.dispatched[-1] == review_id
    return review_id


def _received(rig: Rig, SOPInstanceUID: str, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in rig.destination.received():
            if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == SOPInstanceUID:
                return path
        time.sleep(0.1)
    with rig.node.sessions() as session:
        states = [(i.state, i.last_error) for i in session.scalars(select(OutboxItem))]
    raise AssertionError(f"{SOPInstanceUID} never reached storescp; outbox: {states}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/setup --dev installs it)")
    return path


def _message(rig: Rig, index: int) -> hl7.Message:
    deadline = time.monotonic() + 10
    while len(rig.listener.received) <= index and time.monotonic() < deadline:
        time.sleep(0.05)
    text, _ = rig.listener.received[index]
    for secret in PATIENT[1:]:
        assert secret in text  # the ORU carries the patient (PID), as the P message does
    return hl7.parse(text.replace("\n", "\r"))


def _flags(message: hl7.Message) -> dict[str, tuple[str, str]]:
    """OBX-3 code -> (OBX-8, OBX-11) of the finding observations."""
    return {
        str(obx[3][0][0]): (str(obx[8]), str(obx[11]))
        for obx in message.segments("OBX")
        if str(obx[2]) == "NM"
    }


def test_a_signature_becomes_a_delivered_verified_sr_and_a_final_oru(rig: Rig) -> None:
    """Sign (accept the critical pneumothorax, reject the nodule, add an effusion), run
    the stage: the verified SR is built, stored, routed and received by storescp; it
    passes dciodvfy and dsrdump and carries the decisions; the ORU^R01 says F with AA on
    the pneumothorax, N on the rejected nodule, A on the added effusion, and is ACKed;
    the study is signed. A second signature is revision 2, status C, and the only
    verified SR DICOMweb lists."""
    study = analysed_study(rig.node.sessions, rig.node.spool)
    review_id = _sign(rig, study, reject_nodule_add_effusion())

    outcome = review.sign_review(rig.ctx, review_id)
    assert (outcome.status, outcome.notify) == ("built", True)
    assert review.sign_review(rig.ctx, review_id).status == "already built"  # idempotent
    assert notification.notify_review(rig.ctx, review_id) == "AA"
    with rig.node.sessions() as session:
        row = session.get(SignedReview, review_id)
        assert row is not None and row.state is ReviewState.BUILT
        assert row.hl7_state is not None and row.hl7_state.value == "accepted"
        first_uid = row.SOPInstanceUID
    assert first_uid is not None

    path = _received(rig, first_uid)
    runs = {
        name: subprocess.run(
            command, capture_output=True, text=True, errors="replace", check=False, timeout=120
        )
        for name, command in {
            "dciodvfy": [_tool("dciodvfy"), "-new", str(path)],
            "dsrdump": [_tool("dsrdump"), "-v", "+Pt", str(path)],
        }.items()
    }
    output = runs["dciodvfy"].stdout + runs["dciodvfy"].stderr
    errors = [line for line in output.splitlines() if re.match(r"^Error\b", line)]
    warnings = [
        line
        for line in output.splitlines()
        if re.match(r"^Warning\b", line) and not any(re.search(p, line) for p in ACCEPTED_WARNINGS)
    ]
    assert not errors and not warnings, output
    assert runs["dsrdump"].returncode == 0, runs["dsrdump"].stderr
    assert "Error" not in runs["dsrdump"].stderr
    sr = pydicom.dcmread(path)
    assert sr.VerificationFlag == "VERIFIED"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "alice^"
    assert sr.VerifyingObserverSequence[0].VerifyingOrganization == "St Elsewhere Radiology"
    decisions = {(d.code.value, d.decision): d for d in read_decisions(sr)}
    assert set(decisions) == {
        ("36118008", Decision.ACCEPT),
        ("27925004", Decision.REJECT),
        ("60046008", Decision.ADD),
    }
    assert decisions[("27925004", Decision.REJECT)].reason == codes.REJECT_ARTEFACT
    assert decisions[("60046008", Decision.ADD)].box == Box(2.0, 40.0, 30.0, 60.0)

    final = _message(rig, 0)
    assert str(final.segment("OBR")[25]) == "F"
    flags = _flags(final)
    assert flags["36118008"] == ("AA", "F")  # pneumothorax: present and critical
    assert flags["27925004"] == ("N", "F")  # the nodule, rejected
    assert flags["60046008"] == ("A", "F")  # the effusion, added
    rp = next(o for o in final.segments("OBX") if str(o[2]) == "RP")
    assert str(rp[5][0][0]) == first_uid
    assert rig.listener.received[0][1].code == "AA"

    client, _ = login(rig.url)
    detail = client.get(f"/review/api/studies/{study.key}").json()
    assert detail["state"] == "signed" and detail["read_only"] is True
    assert detail["review"]["hl7"] == {
        "control_id": detail["review"]["hl7"]["control_id"],
        "result_status": "F",
        "state": "accepted",
        "ack": "AA",
    }

    accept_all = {
        "decisions": [
            {"finding": code_key("pneumothorax"), "decision": "accept"},
            {
                "finding": code_key("nodule"),
                "decision": "correct",
                "box": {"x0": 28.0, "y0": 8.0, "x1": 42.0, "y1": 22.0},
            },
        ]
    }
    second = _sign(rig, study, accept_all)
    assert review.sign_review(rig.ctx, second).status == "built"
    assert notification.notify_review(rig.ctx, second) == "AA"
    with rig.node.sessions() as session:
        row = session.get(SignedReview, second)
        assert row is not None and row.revision == 2
        second_uid = row.SOPInstanceUID
    assert second_uid is not None and second_uid != first_uid
    correction = _message(rig, 1)
    assert str(correction.segment("OBR")[25]) == "C"
    assert _flags(correction)["27925004"] == ("A", "C")
    revised = pydicom.dcmread(_received(rig, second_uid))
    assert revised.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
    listed = client.get(
        f"/review/dicom-web/studies/{study.StudyInstanceUID}/instances",
        params={"SOPClassUID": str(sr.SOPClassUID)},
    ).json()
    uids = {item["00080018"]["Value"][0] for item in listed}
    assert second_uid in uids and first_uid not in uids
    history = client.get(f"/review/api/studies/{study.key}").json()["history"]
    assert [(h["revision"], h["hl7"]["result_status"]) for h in history] == [(1, "F"), (2, "C")]
    with rig.node.sessions() as session:
        sent = session.scalars(select(OutboxItem)).all()
        assert {i.SOPInstanceUID for i in sent} == {first_uid, second_uid}
        assert all(i.state is OutboxState.SENT for i in sent)


def test_the_preliminary_oru_flags_a_present_critical_finding_aa() -> None:
    """The AI result's ORU^R01 (status P) flags a present finding named in the critical
    codes AA, other present findings A, absent ones N."""
    from factories import radiograph
    from reviewkit import result_of

    ds = radiograph()
    result = result_of(ds)
    message = build_oru_r01(
        result,
        ds,
        sending_application="GAZEX",
        sending_facility="GAZEX",
        receiving_application="RIS",
        receiving_facility="HOSPITAL",
        critical_codes=frozenset({"SCT:36118008"}),
    )
    flags = _flags(hl7.parse(to_er7(message)))
    assert flags["36118008"] == ("AA", "P")
    assert flags["27925004"] == ("A", "P")
    assert flags["60046008"] == ("N", "P")


def test_a_signature_through_gazex_serve_reaches_the_pacs_and_the_ris(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """On the embedded default (`gazex serve`: node, folder broker, real Celery workers) a
    study analysed by the shipped model is signed on the review page: the node hands the
    signature on by task name, the io worker builds the verified SR, the outbox delivers
    it to storescp and the RIS gets the ORU^R01 with status F, ACKed."""
    http_port = free_port()
    stack = make_stack("embedded", http_port=http_port)
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study", lateral=False)
    assert storescu(stack.port, sent).returncode == 0
    uid = str(pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    stack.wait_state(uid, {StudyState.DONE})
    engine = db.make_engine(stack.database_url)
    try:
        add_user(db.make_sessionmaker(engine))
    finally:
        engine.dispose()
    url = f"http://127.0.0.1:{http_port}"
    client, csrf = login(url)
    [item] = client.get("/review/api/worklist").json()["items"]
    detail = client.get(f"/review/api/studies/{item['key']}").json()
    assert detail["state"] == "awaiting_review", detail["state"]
    findings = detail["result"]["findings"]
    present = [finding_key(f["code"]) for f in findings if f["present"]]
    absent = next(finding_key(f["code"]) for f in findings if not f["present"])
    rows, columns = detail["image"]["Rows"], detail["image"]["Columns"]
    body = {
        "decisions": [{"finding": key, "decision": "accept"} for key in present],
        "added": [
            {"finding": absent, "box": {"x0": 1.0, "y0": 1.0, "x1": columns / 4, "y1": rows / 4}}
        ],
    }
    before = len(stack.listener.received)
    answer = client.post(
        f"/review/api/studies/{item['key']}/sign", json=body, headers={"X-CSRF-Token": csrf}
    )
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        detail = client.get(f"/review/api/studies/{item['key']}").json()
        if detail["state"] == "signed" and detail["review"]["hl7"]["ack"] == "AA":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"not signed: {detail['history']}\n{stack.tail()}")
    verified = detail["review"]["SOPInstanceUID"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = [pydicom.dcmread(p, stop_before_pixels=True) for p in stack.destination.received()]
        if any(ds.SOPInstanceUID == verified for ds in got):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the verified SR never reached storescp\n{stack.tail()}")
    final = hl7.parse(stack.listener.received[before][0].replace("\n", "\r"))
    assert str(final.segment("OBR")[25]) == "F"


def test_a_signature_that_cannot_be_built_is_failed_and_the_next_takes_its_revision(
    rig: Rig,
) -> None:
    """When the AI findings SR is gone from the spool the stage records the review failed
    with the reason (shown in the history) and does not retry; the next signature takes
    revision 1 again, so its ORU says F, not C."""
    study = analysed_study(rig.node.sessions, rig.node.spool)
    review_id = _sign(rig, study, reject_nodule_add_effusion())
    with rig.node.sessions() as session:
        ai_sr = session.scalars(select(Output).where(Output.kind == "findings-sr")).one()
    saved = rig.node.spool.absolute(ai_sr.path).read_bytes()
    rig.node.spool.absolute(ai_sr.path).unlink()
    with pytest.raises(AnalysisRefused, match="AI findings SR cannot be read"):
        review.sign_review(rig.ctx, review_id)
    client, _ = login(rig.url)
    detail = client.get(f"/review/api/studies/{study.key}").json()
    assert detail["state"] == "awaiting_review"
    [failed] = detail["history"]
    assert failed["state"] == "failed" and "AI findings SR" in failed["error"]

    rig.node.spool.write(Path(ai_sr.path), saved)
    again = _sign(rig, study, reject_nodule_add_effusion())
    assert again == review_id
    assert review.sign_review(rig.ctx, again).status == "built"
    assert notification.notify_review(rig.ctx, again) == "AA"
    assert str(_message(rig, 0).segment("OBR")[25]) == "F"
