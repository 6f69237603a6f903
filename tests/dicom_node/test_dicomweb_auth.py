"""Every DICOMweb request carries a peer's credential, kept as an argon2 hash; the probes
need none; refusals are audited; secrets never reach the audit trail or the logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from nodekit import RunningNode
from sqlalchemy import select

from dicom_node.audit import query
from dicom_node.cli import main
from dicom_node.db.models import Credential
from dicom_node.dicomweb.auth import Credentials

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def _url(handle: RunningNode, path: str = "/studies") -> str:
    assert handle.node.http is not None
    return f"http://127.0.0.1:{handle.node.http.port}/dicom-web{path}"


def _web_peer(handle: RunningNode, name: str = "VIEWER", roles: list[str] | None = None) -> None:
    handle.node.peers.add(
        name,
        name,
        None,
        None,
        roles or ["source"],
        dicomweb_url="http://127.0.0.1:9/dicom-web",
    )


def test_requests_without_a_valid_credential_get_401_and_an_audit_record(
    start_node: Callable[..., RunningNode], caplog: pytest.LogCaptureFixture
) -> None:
    """No credential, a wrong password, a malformed header and an unknown token all get 401
    with a challenge naming both schemes, each audited with the caller's address; the probes
    answer without one."""
    handle = start_node()
    _web_peer(handle)
    Credentials(handle.sessions).add_basic("VIEWER", "viewer", PASSWORD)
    refused = [
        httpx.get(_url(handle)),
        httpx.get(_url(handle), auth=("viewer", "not the password at all")),
        httpx.get(_url(handle), auth=("nobody", PASSWORD)),
        httpx.get(_url(handle), headers={"Authorization": "Basic !!!"}),
        httpx.get(_url(handle), headers={"Authorization": "Bearer gzx_0000_nothing"}),
        httpx.post(_url(handle), content=b"x", headers={"Content-Type": "text/plain"}),
    ]
    for response in refused:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert "authentication required" in response.json()["error"]
    audited = query(handle.sessions, kind="dicomweb")
    assert [e.action for e in audited] == ["unauthorized"] * len(refused)
    assert all(e.address and e.address.startswith("127.0.0.1:") for e in audited)
    assert audited[0].detail == "GET /dicom-web/studies: no credential"
    assert audited[1].detail == "GET /dicom-web/studies: unknown credential"
    assert httpx.get(_url(handle).replace("/dicom-web/studies", "/healthz")).status_code == 200
    assert PASSWORD not in caplog.text


def test_basic_and_bearer_credentials_act_as_their_peer(
    start_node: Callable[..., RunningNode],
) -> None:
    """A basic credential and a bearer token each open the services; the hash, not the
    secret, is stored; a removed credential and a disabled peer are refused from the next
    request on, though the verification is remembered for speed."""
    handle = start_node()
    _web_peer(handle)
    credentials = Credentials(handle.sessions)
    credentials.add_basic("VIEWER", "viewer", PASSWORD)
    _, token = credentials.add_token("VIEWER")
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(_url(handle), auth=("viewer", PASSWORD)).status_code == 200
    assert httpx.get(_url(handle), headers=bearer).status_code == 200
    with handle.sessions() as session:
        hashes = list(session.scalars(select(Credential.secret_hash)))
    assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(PASSWORD in h or token.split("_")[2] in h for h in hashes)
    assert credentials.list("VIEWER")[0].last_used_at is not None

    credentials.remove("VIEWER", "viewer")
    assert httpx.get(_url(handle), auth=("viewer", PASSWORD)).status_code == 401
    handle.node.peers.edit("VIEWER", enabled=False)
    assert httpx.get(_url(handle), headers=bearer).status_code == 401
    handle.node.peers.edit("VIEWER", enabled=True)
    assert httpx.get(_url(handle), headers=bearer).status_code == 200


def test_a_peer_without_the_source_role_is_refused(
    start_node: Callable[..., RunningNode],
) -> None:
    """Only a source peer may read or store: a destination's credential opens nothing."""
    handle = start_node()
    _web_peer(handle, "ARCHIVE", ["destination"])
    Credentials(handle.sessions).add_basic("ARCHIVE", "archive", PASSWORD)
    assert httpx.get(_url(handle), auth=("archive", PASSWORD)).status_code == 401


def test_anonymous_access_only_when_the_setting_says_so(
    start_node: Callable[..., RunningNode],
) -> None:
    """With dicomweb.allow_anonymous a request without credentials is served; a request
    with a wrong one is still refused."""
    handle = start_node(dicomweb__allow_anonymous=True)
    assert httpx.get(_url(handle)).status_code == 200
    assert httpx.get(_url(handle), auth=("viewer", PASSWORD)).status_code == 401


def test_credential_commands(
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`gazex ae add` takes a DICOMweb peer with its outgoing secret from a file, `gazex ae
    credential add` a password from standard input or a token it prints once; `list` shows
    no secret, and neither the audit trail nor the log holds one; bad input is one line."""
    for key in ("GAZEX_CONFIG",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GAZEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GAZEX_DATABASE__URL", database_url)
    outgoing = tmp_path / "orthanc.secret"
    outgoing.write_text("basic:gazex:outgoing-secret-value\n")
    add = ["ae", "add", "WEB", "--ae-title", "WEBPACS", "--role", "source,destination"]
    url = ["--dicomweb-url", "http://127.0.0.1:8042/dicom-web/"]
    caplog.set_level(logging.DEBUG)
    assert main([*add, *url, "--dicomweb-auth-file", str(outgoing)]) == 0
    assert "http://127.0.0.1:8042/dicom-web " in capsys.readouterr().out

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["ae", "credential", "add", "WEB", "--basic", "ohif", "--password-file", "-"]) == 0
    assert main(["ae", "credential", "add", "WEB", "--token"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("gzx_")
    assert main(["ae", "credential", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ohif" in listing and token.split("_")[1] in listing
    assert PASSWORD not in listing and token.split("_")[2] not in listing

    audit = (tmp_path / "home" / "logs" / "audit.jsonl").read_text()
    assert "credential-add" in audit
    for secret in (PASSWORD, token.split("_")[2], "outgoing-secret-value"):
        assert secret not in audit and secret not in caplog.text

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["ae", "credential", "add", "WEB", "--basic", "x", "--password-file", "-"]) == 2
    assert main(["ae", "credential", "add", "NOPE", "--token"]) == 2
    assert main(["ae", "add", "X", "--ae-title", "X", "--role", "source"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    assert "12 characters" in errors[0] and "NOPE" in errors[1] and "DICOMweb URL" in errors[2]
    assert main(["ae", "credential", "remove", "WEB", "ohif"]) == 0


def test_a_viewer_on_an_allowed_origin_gets_its_preflight_answered(
    start_node: Callable[..., RunningNode],
) -> None:
    """A browser viewer served from an origin in dicomweb.cors_origins has its preflight
    answered without a credential, then sends one; another origin gets no CORS grant."""
    origin = "https://ohif.hospital.example"
    handle = start_node(dicomweb__cors_origins=[origin])
    _web_peer(handle)
    Credentials(handle.sessions).add_basic("VIEWER", "viewer", PASSWORD)
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = httpx.options(_url(handle), headers={"Origin": origin, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == origin
    assert allowed.headers["access-control-allow-credentials"] == "true"
    other = httpx.options(_url(handle), headers={"Origin": "https://evil.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    answer = httpx.get(_url(handle), auth=("viewer", PASSWORD), headers={"Origin": origin})
    assert answer.status_code != 401
    assert answer.headers["access-control-allow-origin"] == origin
