"""Signing on the review page's server side: the study's details (image UIDs, the model's
result, reasons, history) without patient data, its film through WADO-RS under the same
session, a signature checked and recorded as the session user's with an audit event and a
task handed on by name, and `gazex feedback export`. A real node (``Node.build``) on
loopback, httpx as the browser; the worker side is tests/workers/test_review_task.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
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

from dicom_node.audit import query
from dicom_node.cli import main
from dicom_node.db.models import ReviewState, SignedReview
from dicom_node.review.reasons import REJECTION_REASONS
from dicom_node.scp.server import Node
from dicom_node.settings import Settings
from sr_templates import codes

pytestmark = pytest.mark.integration


@dataclass
class Site:
    node: Node
    url: str
    dispatched: list[int]


@pytest.fixture
def site(make_settings: Callable[..., Settings]) -> Iterator[Site]:
    """A node with its review page; signatures handed on are collected, not run."""
    dispatched: list[int] = []
    settings = make_settings(review__login_failure_delay=0.0)
    node = Node.build(settings, lambda study_id: None, dispatched.append)
    node.start()
    assert node.http is not None
    host, port = node.http.address
    add_user(node.sessions)
    add_user(node.sessions, "bob")
    yield Site(node, f"http://{host}:{port}", dispatched)
    node.stop()


def _study(site: Site, **kwargs: Any) -> Analysed:
    return analysed_study(site.node.sessions, site.node.spool, **kwargs)


def test_rejection_reasons_are_the_sr_templates_list() -> None:
    """The node's table of rejection reasons is sr_templates' coded list, in its order."""
    assert [(r.value, r.meaning) for r in REJECTION_REASONS] == [
        (c.value, c.meaning) for c in codes.REJECTION_REASONS
    ]
    assert {c.scheme_designator for c in codes.REJECTION_REASONS} == {"99GAZEX"}


def test_study_details_and_film_come_under_the_session_without_patient_data(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The detail API gives the analysed image's UIDs and size, the result JSON as stored,
    the reasons and an empty history, and no patient name or ID; the film's metadata and
    frames come through /review/dicom-web with the session cookie only; an unknown key is
    a one-line 404."""
    caplog.set_level("DEBUG")
    study = _study(site)
    client, _ = login(site.url)
    answer = client.get(f"/review/api/studies/{study.key}")
    assert answer.status_code == 200, answer.text
    detail = answer.json()
    assert detail["state"] == "awaiting_review"
    assert detail["read_only"] is False
    assert detail["accession"] == "ACC0001"
    assert detail["study_date"] == "2026-11-23"
    ds = study.source
    assert detail["image"] == {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
        "Rows": 64,
        "Columns": 48,
    }
    assert detail["wado_root"] == "/review/dicom-web"
    assert detail["result"] == json.loads(study.result.to_json())
    assert detail["review"] is None and detail["history"] == []
    assert [r["code"] for r in detail["reasons"]] == [c.value for c in codes.REJECTION_REASONS]
    for secret in PATIENT:
        assert secret not in answer.text
    missing = client.get("/review/api/studies/0000000000000000")
    assert missing.status_code == 404 and list(missing.json()) == ["error"]

    instance = (
        f"/review/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    metadata = client.get(f"{instance}/metadata")
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()[0]["00280010"]["Value"] == [64]
    frame = metadata.json()[0]["7FE00010"]["BulkDataURI"]
    assert frame.startswith(f"{site.url}/review/dicom-web/")
    frames = client.get(
        f"{instance}/frames/1",
        headers={"Accept": "multipart/related; type=application/octet-stream"},
    )
    assert frames.status_code == 200
    assert len(frames.content) >= 64 * 48 * 2
    # Image requests are audited as the signed-in reader's, not as an anonymous peer's.
    series = f"/review/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    assert client.get(f"{series}/metadata").status_code == 200
    [fetched] = [e for e in query(site.node.sessions, kind="dicomweb") if e.action == "metadata"]
    assert (fetched.actor, fetched.StudyInstanceUID) == ("alice", ds.StudyInstanceUID)
    with httpx.Client(base_url=site.url, timeout=10) as anonymous:
        assert anonymous.get(f"{instance}/metadata").status_code == 401
        assert anonymous.get(f"/review/api/studies/{study.key}").status_code == 401
    for secret in PATIENT:
        assert secret not in caplog.text


def test_a_signature_is_checked_recorded_as_the_session_user_audited_and_handed_on(
    site: Site,
) -> None:
    """Bad bodies are one-line 400s (undecided, unknown reason, box outside, a field naming
    a signer); no CSRF token is 403, no session 401; a valid signature is 202 with review
    revision 1 pending, signed by the session user, audited without patient data and
    handed to the workers after its commit; a second while it is pending is 409."""
    study = _study(site)
    client, csrf = login(site.url)
    url = f"/review/api/studies/{study.key}/sign"
    headers = {"X-CSRF-Token": csrf}
    good = reject_nodule_add_effusion()

    def refused(body: Any) -> str:
        answer = client.post(url, json=body, headers=headers)
        assert answer.status_code == 400, answer.text
        error: str = answer.json()["error"]
        assert "\n" not in error
        return error

    assert "undecided" in refused({"decisions": good["decisions"][:1]})  # type: ignore[index]
    wrong_reason = json.loads(json.dumps(good))
    wrong_reason["decisions"][1]["reason"] = "BECAUSE"
    assert "reason" in refused(wrong_reason)
    outside = json.loads(json.dumps(good))
    outside["added"][0]["box"]["x1"] = 48.5
    assert "outside" in refused(outside)
    assert "signer" in refused({**good, "signed_by": "bob"})
    twice = {"decisions": [*good["decisions"], good["decisions"][0]]}  # type: ignore[list-item]
    assert "twice" in refused(twice)

    assert client.post(url, json=good).status_code == 403
    with httpx.Client(base_url=site.url, timeout=10) as anonymous:
        assert anonymous.post(url, json=good, headers=headers).status_code == 401
    assert site.dispatched == []

    answer = client.post(url, json=good, headers=headers)
    assert answer.status_code == 202, answer.text
    record = answer.json()
    assert record["revision"] == 1
    assert record["signed_by"] == "alice"
    assert record["state"] == "pending"
    assert record["changes"] == [
        f"rejected Nodule ({code_key('nodule')}): artefact or normal variant",
        f"added Pleural effusion ({code_key('pleural_effusion')})",
    ]
    assert site.dispatched == [record["id"]]
    with site.node.sessions() as session:
        row = session.scalars(select(SignedReview)).one()
        assert row.user.name == "alice" and row.state is ReviewState.PENDING
    [event] = [e for e in query(site.node.sessions, kind="review") if e.action == "signed"]
    assert (event.action, event.actor, event.StudyInstanceUID) == (
        "signed",
        "alice",
        study.StudyInstanceUID,
    )
    for secret in PATIENT:
        assert secret not in (event.detail or "")
    again = client.post(url, json=good, headers=headers)
    assert again.status_code == 409
    detail = client.get(f"/review/api/studies/{study.key}").json()
    assert detail["state"] == "awaiting_review"
    assert detail["pending"]["revision"] == 1


def test_out_of_domain_studies_cannot_be_signed(site: Site) -> None:
    """A film the domain gate put outside the training domain answers 409 to a signature."""
    study = _study(site, in_domain=False)
    client, csrf = login(site.url)
    answer = client.post(
        f"/review/api/studies/{study.key}/sign",
        json=reject_nodule_add_effusion(),
        headers={"X-CSRF-Token": csrf},
    )
    assert answer.status_code == 409
    assert client.get(f"/review/api/studies/{study.key}").json()["state"] == "out_of_domain"


def test_a_built_signature_makes_the_study_signed_read_only_and_exported(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the worker marked the review built, the worklist and the details say signed
    (read only, with the review and its history); `gazex feedback export` writes one JSON
    line with the model's findings, the decisions and the reviewer's role, no name unless
    --with-names, and no patient data."""
    study = _study(site)
    client, csrf = login(site.url)
    answer = client.post(
        f"/review/api/studies/{study.key}/sign",
        json=reject_nodule_add_effusion(),
        headers={"X-CSRF-Token": csrf},
    )
    assert answer.status_code == 202
    with site.node.sessions.begin() as session:
        row = session.scalars(select(SignedReview)).one()
        row.state = ReviewState.BUILT  # what workers.review does once the SR is stored
        row.SOPInstanceUID = "1.2.3.4"
    items = client.get("/review/api/worklist").json()["items"]
    assert [(i["key"], i["state"]) for i in items] == [(study.key, "signed")]
    assert items[0]["signed_at"] is not None
    detail = client.get(f"/review/api/studies/{study.key}").json()
    assert detail["state"] == "signed" and detail["read_only"] is True
    assert detail["review"]["signed_by"] == "alice"
    assert [h["revision"] for h in detail["history"]] == [1]

    settings = site.node.settings
    monkeypatch.setenv("GAZEX_HOME", str(settings.home))
    monkeypatch.setenv("GAZEX_DATABASE__URL", settings.database_url)
    out = tmp_path / "feedback.jsonl"
    assert main(["feedback", "export", "--out", str(out)]) == 0
    [line] = out.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["StudyInstanceUID"] == study.StudyInstanceUID
    assert record["analysis_revision"] == 1 and record["review_revision"] == 1
    assert record["model"]["name"] == "GazeX-CXR" and record["model"]["version"] == "0.3.1"
    present = {f["code"]["value"]: f for f in record["findings"] if f["present"]}
    assert set(present) == {"36118008", "27925004"}
    assert present["27925004"]["probability"] == 0.72
    assert present["27925004"]["box"] == {"x0": 30.0, "y0": 10.0, "x1": 40.0, "y1": 20.0}
    assert [d["decision"] for d in record["decisions"]] == ["accept", "reject"]
    assert record["added"][0]["finding"] == code_key("pleural_effusion")
    assert record["reviewer"] == {"role": "radiologist"}
    assert record["signed_at"]
    for secret in PATIENT:
        assert secret not in line
    named = tmp_path / "named.jsonl"
    assert main(["feedback", "export", "--with-names", "--out", str(named)]) == 0
    assert json.loads(named.read_text(encoding="utf-8"))["reviewer"]["name"] == "alice"
    later = tmp_path / "later.jsonl"
    assert main(["feedback", "export", "--since", "2999-01-01", "--out", str(later)]) == 0
    assert later.read_text(encoding="utf-8") == ""
