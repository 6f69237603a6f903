"""The review page's server side: accounts managed by `gazex user`, login sessions behind
an HttpOnly cookie whose token only the browser holds, CSRF on every state change, nothing
answered without a session, and the worklist in triage order without patient data in any
URL or log line. A real HTTP server on loopback, httpx as the browser."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import radiograph
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import db
from dicom_node.audit import AuditLog, os_user, query
from dicom_node.cli import main
from dicom_node.db.models import (
    Analysis,
    AnalysisState,
    Instance,
    Study,
    StudyState,
    User,
    WebSession,
    utcnow,
)
from dicom_node.metrics import Metrics
from dicom_node.review.accounts import Accounts
from dicom_node.review.web import NOTICE, ReviewContext, review_routes
from dicom_node.settings import ReviewSettings
from dicom_node.spool import Spool
from dicom_node.web.app import build_app
from dicom_node.web.probes import Probes
from dicom_node.web.server import WebServer
from model.abcdef import STEPS
from model.findings import FINDINGS_BY_KEY
from model.result import (
    DomainCheck,
    Finding,
    Fixation,
    InferenceResult,
    ModelInfo,
    Report,
    ReportSection,
    SourceImage,
)

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
PATIENT = ("Müller", "SECRET-PID-4711")  # what tests/factories.radiograph writes
FAST = ReviewSettings(login_failure_delay=0.0)


@dataclass
class Site:
    """A review app on a real loopback server, with its database and spool."""

    url: str
    sessions: sessionmaker[Session]
    spool: Spool
    audit_file: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=10)


@pytest.fixture
def database(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The migrated database of conftest (SQLite, and PostgreSQL where marked), also for
    the CLI."""
    monkeypatch.setenv("GAZEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GAZEX_DATABASE__URL", database_url)
    return database_url


@pytest.fixture
def sessions(database: str) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(database)
    yield db.make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def serve(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> Iterator[Callable[[ReviewSettings], Site]]:
    servers: list[WebServer] = []
    spool = Spool(tmp_path / "spool")
    audit_file = tmp_path / "audit.jsonl"

    def _serve(settings: ReviewSettings = FAST) -> Site:
        ctx = ReviewContext(settings, sessions, spool, AuditLog(sessions, audit_file))
        app = build_app(Probes(), Metrics(), routes=review_routes(ctx))
        server = WebServer(app, "127.0.0.1", 0).start()
        servers.append(server)
        return Site(f"http://127.0.0.1:{server.port}", sessions, spool, audit_file)

    yield _serve
    for server in servers:
        server.stop()


def _add_user(
    sessions: sessionmaker[Session], name: str = "alice", role: str = "radiologist"
) -> None:
    Accounts(sessions).add(name, role, PASSWORD)


def _login_form(client: httpx.Client) -> str:
    page = client.get("/review/login")
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def _login(client: httpx.Client, name: str = "alice", password: str = PASSWORD) -> httpx.Response:
    token = _login_form(client)
    return client.post("/review/login", data={"name": name, "password": password, "csrf": token})


def _csrf(client: httpx.Client) -> str:
    me = client.get("/review/api/me")
    assert me.status_code == 200
    csrf: str = me.json()["csrf"]
    return csrf


# -- accounts ------------------------------------------------------------------------------


def test_user_commands_manage_accounts_with_argon2id_hashes_and_audit_them(
    tmp_path: Path,
    database: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gazex user add/list/passwd/disable/enable` read the password from standard input,
    keep only an argon2id hash, audit each change with the OS user and never the password;
    a short password, a bad role and an unknown name are one-line errors with exit 2."""

    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(list(argv))

    assert (
        run(
            "user",
            "add",
            "alice",
            "--role",
            "radiologist",
            "--password-file",
            "-",
            stdin=PASSWORD + "\n",
        )
        == 0
    )
    assert (
        run("user", "add", "root", "--role", "admin", "--password-file", "-", stdin=PASSWORD + "\n")
        == 0
    )
    capsys.readouterr()
    assert run("user", "list") == 0
    listing = capsys.readouterr().out
    assert re.search(r"alice\s+radiologist\s+yes", listing)
    assert re.search(r"root\s+admin\s+yes", listing)

    assert (
        run("user", "add", "bob", "--role", "radiologist", "--password-file", "-", stdin="short\n")
        == 2
    )
    error = capsys.readouterr().err
    assert error == "gazex user: error: a password needs at least 12 characters\n"
    assert (
        run(
            "user",
            "add",
            "alice",
            "--role",
            "radiologist",
            "--password-file",
            "-",
            stdin=PASSWORD + "\n",
        )
        == 2
    )
    assert "exists already" in capsys.readouterr().err
    assert run("user", "disable", "nobody") == 2
    assert capsys.readouterr().err.count("\n") == 1

    with sessions() as session:
        row = session.scalar(select(User).where(User.name == "alice"))
        assert row is not None and row.password_hash.startswith("$argon2id$")
        first_hash = row.password_hash
    new_password = "another long passphrase"
    assert run("user", "passwd", "alice", "--password-file", "-", stdin=new_password + "\n") == 0
    assert run("user", "disable", "alice") == 0
    with sessions() as session:
        row = session.scalar(select(User).where(User.name == "alice"))
        assert row is not None and not row.enabled and row.password_hash != first_hash
    assert run("user", "enable", "alice") == 0

    events = query(sessions, kind="review")
    assert [e.action for e in events] == [
        "user-add",
        "user-add",
        "user-passwd",
        "user-disable",
        "user-enable",
    ]
    assert all(e.actor == os_user() for e in events)
    assert events[0].detail == "user alice: added with role radiologist"
    audit_file = tmp_path / "home" / "logs" / "audit.jsonl"
    written = audit_file.read_text(encoding="utf-8") + capsys.readouterr().out
    for secret in (PASSWORD, new_password):
        assert secret not in written
        assert all(secret not in (e.detail or "") for e in events)


# -- sessions ------------------------------------------------------------------------------


def test_login_sets_a_strict_httponly_cookie_whose_token_is_stored_only_hashed(
    serve: Callable[..., Site],
) -> None:
    """The login page says what the node is for; its POST answers 303 to the review page
    with gazex_session (HttpOnly, SameSite=Strict, Path=/review, not Secure over http);
    the database holds the token's SHA-256, not the token; /api/me names the account."""
    site = serve()
    _add_user(site.sessions)
    with site.client() as client:
        page = client.get("/review/login")
        assert NOTICE in page.text
        assert "<script" not in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert client.get("/review/static/review.css").status_code == 200
        response = _login(client)
        assert response.status_code == 303
        assert response.headers["location"] == "/review/"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("gazex_session=")
        )
        attributes = [a.strip() for a in cookie.split(";")]
        token = attributes[0].partition("=")[2]
        assert {"HttpOnly", "SameSite=Strict", "Path=/review"} <= set(attributes)
        assert "Secure" not in attributes
        assert not any(a.lower().startswith(("max-age", "expires")) for a in attributes)

        me = client.get("/review/api/me")
        assert me.status_code == 200
        assert me.json()["name"] == "alice" and me.json()["role"] == "radiologist"
        assert len(me.json()["csrf"]) >= 32
        home = client.get("/review/")
        assert home.status_code == 200 and 'id="app"' in home.text
        assert _login(client).status_code == 303  # again: a new token, the old one ends
        assert client.cookies["gazex_session"] != token
    with httpx.Client(base_url=site.url, cookies={"gazex_session": token}) as old:
        assert old.get("/review/api/me").status_code == 401
    with site.sessions() as session:
        rows = list(session.scalars(select(WebSession)))
        user = session.scalar(select(User).where(User.name == "alice"))
    first = next(r for r in rows if r.id == hashlib.sha256(token.encode()).hexdigest())
    assert first.revoked_at is not None and len(rows) == 2
    assert first.address is not None and rows[0].address.startswith("127.0.0.1:")
    assert user is not None and user.last_login_at is not None
    assert [e.action for e in query(site.sessions, kind="review")] == [
        "user-add",
        "login",
        "login",
    ]


def test_a_secure_cookie_when_the_settings_say_so(serve: Callable[..., Site]) -> None:
    """cookie_secure marks the session cookie Secure even on a plain-HTTP hop (a proxy that
    terminates TLS)."""
    site = serve(FAST.model_copy(update={"cookie_secure": True}))
    _add_user(site.sessions)
    with site.client() as client:
        token = _login_form(client)  # its cookie is Secure too: httpx keeps it off http
        response = client.post(
            "/review/login",
            data={"name": "alice", "password": PASSWORD, "csrf": token},
            headers={"Cookie": f"gazex_login_csrf={token}"},
        )
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("gazex_session=")
    )
    assert "Secure" in [a.strip() for a in cookie.split(";")]


def test_failed_logins_answer_alike_and_are_audited_with_the_address(
    serve: Callable[..., Site], caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown name, a wrong password and a disabled account get the same status and
    the same page; each is audited with the caller's address, the typed name of an unknown
    account only as a hash; a login form without its token is refused (403)."""
    site = serve()
    _add_user(site.sessions)
    _add_user(site.sessions, "carol")
    Accounts(site.sessions).set_enabled("carol", False)
    with site.client() as client:
        token = _login_form(client)
        answers = [
            client.post("/review/login", data={"name": n, "password": p, "csrf": token})
            for n, p in (
                ("alice", "not the password at all"),
                ("mallory", PASSWORD),
                ("carol", PASSWORD),
            )
        ]
        assert {a.status_code for a in answers} == {401}
        assert len({a.text for a in answers}) == 1
        assert "Name or password is wrong." in answers[0].text
        assert all("gazex_session" not in a.headers.get("set-cookie", "") for a in answers)
        forged = client.post(
            "/review/login", data={"name": "alice", "password": PASSWORD, "csrf": "forged"}
        )
        assert forged.status_code == 403
    with httpx.Client(base_url=site.url) as other:  # no login cookie at all
        token_only = other.post(
            "/review/login", data={"name": "alice", "password": PASSWORD, "csrf": token}
        )
        assert token_only.status_code == 403
    events = [e for e in query(site.sessions, kind="review") if e.action == "login-failed"]
    assert len(events) == 3
    assert all(e.address and e.address.startswith("127.0.0.1:") for e in events)
    assert events[0].detail == "user alice: wrong password"
    assert events[1].detail is not None and events[1].detail.startswith("unknown user name")
    assert "mallory" not in events[1].detail
    assert events[2].detail == "user carol: disabled"
    assert PASSWORD not in caplog.text


def test_repeated_failures_lock_the_address_out(serve: Callable[..., Site]) -> None:
    """After login_max_failures failures from one host, its logins get 429 with Retry-After
    even with the right password, and the lock-out is audited."""
    site = serve(FAST.model_copy(update={"login_max_failures": 3}))
    _add_user(site.sessions)
    with site.client() as client:
        for _ in range(3):
            assert _login(client, password="not the password at all").status_code == 401
        locked = _login(client)
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 0
    actions = [e.action for e in query(site.sessions, kind="review")]
    assert actions == ["user-add", *["login-failed"] * 3, "login-locked"]


def test_nothing_under_review_answers_without_a_valid_session(
    serve: Callable[..., Site],
) -> None:
    """Without a session, or with a made-up one, API routes answer 401 with a one-line JSON
    error and pages 303 to the login page; the probes outside /review are untouched."""
    site = serve()
    for cookies in ({}, {"gazex_session": "made-up-token"}):
        with httpx.Client(base_url=site.url, cookies=cookies) as client:
            for method, path in (
                ("GET", "/review/api/me"),
                ("GET", "/review/api/worklist"),
                ("GET", "/review/api/unknown"),
                ("POST", "/review/api/me"),
            ):
                response = client.request(method, path)
                assert response.status_code == 401, path
                assert response.json() == {"error": "login required (no valid session)"}
            for method, path in (
                ("GET", "/review/"),
                ("POST", "/review/logout"),
                ("GET", "/review/anything"),
                ("GET", "/review/studies/0123456789abcdef"),
                ("GET", "/review/static/app/index.html"),
            ):
                response = client.request(method, path)
                assert response.status_code == 303, path
                assert response.headers["location"] == "/review/login"
            assert client.get("/healthz").status_code == 200
            landing = client.get("/review", follow_redirects=True)
            assert landing.url.path == "/review/login" and NOTICE in landing.text


def test_logout_needs_the_csrf_token_and_revokes_the_session(
    serve: Callable[..., Site],
) -> None:
    """Logout without the session's CSRF token, or with a forged one (header or form
    field), is 403 with a one-line JSON error and leaves the session open; with it (header
    or form field) the session is revoked and its cookie no longer opens anything."""
    site = serve()
    _add_user(site.sessions)
    with site.client() as client:
        assert _login(client).status_code == 303
        csrf = _csrf(client)
        for kwargs in (
            {},
            {"headers": {"X-CSRF-Token": "forged"}},
            {"data": {"csrf": "forged"}},
            {"data": {"other": csrf}},
        ):
            refused = client.post("/review/logout", **kwargs)  # type: ignore[arg-type]
            assert refused.status_code == 403
            assert refused.json() == {"error": "missing or wrong CSRF token"}
        assert client.get("/review/api/me").status_code == 200
        session_cookie = client.cookies["gazex_session"]
        done = client.post("/review/logout", headers={"X-CSRF-Token": csrf})
        assert done.status_code == 303 and done.headers["location"] == "/review/login"
    with httpx.Client(base_url=site.url, cookies={"gazex_session": session_cookie}) as stale:
        assert stale.get("/review/api/me").status_code == 401
    with site.client() as client:  # the page's logout form carries the token as a field
        assert _login(client).status_code == 303
        done = client.post("/review/logout", data={"csrf": _csrf(client)})
        assert done.status_code == 303
        assert client.get("/review/api/me").status_code == 401
    with site.sessions() as session:
        assert all(r.revoked_at is not None for r in session.scalars(select(WebSession)))
    actions = [e.action for e in query(site.sessions, kind="review")]
    assert actions.count("csrf-refused") == 4 and actions.count("logout") == 2


def test_sessions_end_after_their_lifetime_idle_time_or_when_disabled(
    serve: Callable[..., Site],
) -> None:
    """A session past its absolute lifetime, or idle past the idle timeout, gets 401, as
    does one whose account was disabled."""
    lifetime = serve(FAST.model_copy(update={"session_lifetime": 0.6}))
    idle = serve(FAST.model_copy(update={"idle_timeout": 0.6}))
    _add_user(lifetime.sessions)
    with lifetime.client() as a, idle.client() as b, lifetime.client() as c:
        for client in (a, b, c):
            assert _login(client).status_code == 303
            assert client.get("/review/api/me").status_code == 200
        Accounts(lifetime.sessions).set_enabled("alice", False)
        assert c.get("/review/api/me").status_code == 401
        time.sleep(0.8)
        assert a.get("/review/api/me").status_code == 401
        assert b.get("/review/api/me").status_code == 401


# -- worklist ------------------------------------------------------------------------------

MODEL = ModelInfo("GazeX-CXR", "0.3.1", "3f2a" * 16, True)


def _result(ds: Any, present: dict[str, float], in_domain: bool = True) -> InferenceResult:
    findings = tuple(
        Finding(
            key=key,
            code=kind.code,
            probability=present.get(key, 0.05),
            present=key in present,
            step=kind.step,
            sentence=f"{kind.display} is seen." if key in present else "",
        )
        for key, kind in FINDINGS_BY_KEY.items()
    )
    return InferenceResult(
        source=SourceImage(
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            str(ds.SOPClassUID),
            int(ds.Rows),
            int(ds.Columns),
        ),
        model=MODEL,
        findings=findings,
        trajectory=(Fixation(10.0, 10.0, 0.0, 200.0, "trachea", STEPS[0], 0),),
        report=Report(tuple(ReportSection(step, "Normal.") for step in STEPS), "Normal."),
        coverage=tuple((step, True) for step in STEPS),
        domain=DomainCheck(2.0 if in_domain else 9.0, 5.0, in_domain, "test"),
    )


def _study(
    site: Site,
    state: StudyState,
    *,
    finished_minutes_ago: float,
    present: dict[str, float] | None = None,
    in_domain: bool = True,
    accession: str = "ACC0001",
) -> str:
    """A received study with its analysis row and result JSON, as the worker leaves them."""
    ds = radiograph(study=generate_uid())
    ds.AccessionNumber = accession
    relative = site.spool.relative_path(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    site.spool.write(relative, buffer.getvalue())
    finished = utcnow() - timedelta(minutes=finished_minutes_ago)
    failed = state is StudyState.FAILED
    with site.sessions.begin() as session:
        study = Study(StudyInstanceUID=ds.StudyInstanceUID, state=state, Modality="DX")
        session.add(study)
        session.flush()
        session.add(
            Instance(
                study_id=study.id,
                SeriesInstanceUID=ds.SeriesInstanceUID,
                SOPInstanceUID=ds.SOPInstanceUID,
                SOPClassUID=ds.SOPClassUID,
                TransferSyntaxUID=ds.file_meta.TransferSyntaxUID,
                Modality="DX",
                path=str(relative),
                size=len(buffer.getvalue()),
                calling_ae="STORESCU",
            )
        )
        if state is not StudyState.ANALYSING:
            session.add(
                Analysis(
                    study_id=study.id,
                    revision=1,
                    state=AnalysisState.FAILED if failed else AnalysisState.SUCCEEDED,
                    finished_at=finished,
                    error="the model cannot read the image: test" if failed else None,
                    domain_score=None if failed else (2.0 if in_domain else 9.0),
                    out_of_domain=None if failed else not in_domain,
                )
            )
    if not failed:
        result = _result(ds, present or {}, in_domain)
        site.spool.write(Spool.result_path(ds.StudyInstanceUID, 1), result.to_json().encode())
    return str(ds.StudyInstanceUID)


def test_worklist_puts_critical_studies_first_then_the_longest_waiting(
    serve: Callable[..., Site], caplog: pytest.LogCaptureFixture
) -> None:
    """A pneumothorax analysed after a non-critical study comes first; then the oldest
    waiting; out-of-domain studies withhold their findings and failed ones say why; the
    accession number and study date come from the instance header; states filter, q
    searches, limit/offset page; no patient name or ID reaches a URL, the JSON or a log."""
    caplog.set_level("DEBUG")
    site = serve()
    _add_user(site.sessions)
    plain = _study(
        site,
        StudyState.DONE,
        finished_minutes_ago=30,
        present={"cardiomegaly": 0.81, "pleural_effusion": 0.66},
        accession="ACC-PLAIN",
    )
    critical = _study(
        site,
        StudyState.ANALYSED,
        finished_minutes_ago=5,
        present={"pneumothorax": 0.92},
        accession="ACC-PTX",
    )
    odd = _study(
        site,
        StudyState.UNDELIVERED,
        finished_minutes_ago=20,
        present={"pneumothorax": 0.7},
        in_domain=False,
    )
    failed = _study(site, StudyState.FAILED, finished_minutes_ago=10)
    _study(site, StudyState.ANALYSING, finished_minutes_ago=1)  # not analysed yet

    with site.client() as client:
        assert _login(client).status_code == 303
        listing = client.get("/review/api/worklist")
        assert listing.status_code == 200
        body = listing.json()
        assert body["total"] == 4
        items = body["items"]
        assert [i["StudyInstanceUID"] for i in items] == [critical, plain, odd, failed]
        first = items[0]
        assert first["critical"] is True and first["state"] == "awaiting_review"
        assert first["AccessionNumber"] == "ACC-PTX"
        assert (first["StudyDate"], first["StudyTime"]) == ("2026-11-23", "10:15:00")
        assert first["findings"] == [
            {
                "key": "pneumothorax",
                "code": {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"},
                "probability": 0.92,
            }
        ]
        assert first["model"] == "GazeX-CXR 0.3.1" and first["trained_on_synthetic_data"]
        assert first["signed_at"] is None
        assert re.fullmatch(r"[0-9a-f]{16}", first["key"])
        assert [f["key"] for f in items[1]["findings"]] == ["cardiomegaly", "pleural_effusion"]
        assert items[1]["critical"] is False
        assert items[2]["state"] == "out_of_domain"
        assert items[2]["findings"] == [] and items[2]["findings_withheld"] is True
        assert items[2]["critical"] is False
        assert items[3]["state"] == "failed"
        assert items[3]["error"] == "the model cannot read the image: test"

        failed_only = client.get("/review/api/worklist", params={"state": "failed"}).json()
        assert [i["StudyInstanceUID"] for i in failed_only["items"]] == [failed]
        awaiting = client.get("/review/api/worklist", params={"state": "awaiting_review"})
        assert [i["StudyInstanceUID"] for i in awaiting.json()["items"]] == [critical, plain]
        assert client.get("/review/api/worklist", params={"state": "signed"}).json()["total"] == 0
        searched_response = client.get("/review/api/worklist", params={"q": "acc-plain"})
        searched = searched_response.json()
        assert [i["StudyInstanceUID"] for i in searched["items"]] == [plain]
        by_key = client.get("/review/api/worklist", params={"q": first["key"]}).json()
        assert [i["StudyInstanceUID"] for i in by_key["items"]] == [critical]
        paged = client.get("/review/api/worklist", params={"limit": 1, "offset": 1}).json()
        assert paged["total"] == 4
        assert [i["StudyInstanceUID"] for i in paged["items"]] == [plain]
        for params in ({"state": "bogus"}, {"limit": 0}, {"offset": -1}, {"limit": "x"}):
            bad = client.get("/review/api/worklist", params=params)
            assert bad.status_code == 400 and list(bad.json()) == ["error"]
        urls = [str(r.url) for r in (listing, searched_response)]

        lost = _study(site, StudyState.ANALYSED, finished_minutes_ago=1, present={"mass": 0.9})
        site.spool.absolute(Spool.result_path(lost, 1)).unlink()
        shown = client.get("/review/api/worklist", params={"q": lost}).json()["items"]
        assert [(i["state"], i["result_missing"], i["findings"]) for i in shown] == [
            ("awaiting_review", True, [])
        ]

    seen = "\n".join(
        [caplog.text, json.dumps(body, ensure_ascii=False), *urls, site.audit_file.read_text()]
    )
    for identifier in PATIENT:
        assert identifier not in seen
