"""DICOM TLS: a CA made in the test, server and client certificates, DCMTK as the client;
and the same settings on the HTTP port (DICOMweb) with httpx as the client."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from nodekit import RunningNode

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name} test CA",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=folder,
    )


def make_cert(folder: Path, ca: str, name: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.crt",
        cwd=folder,
    )


def echo(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", "STORESCU", "-aec", "GAZEX", *tls, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_tls_association_with_client_certificate(
    start_node: Callable[..., RunningNode], tmp_path: Path
) -> None:
    """With TLS and client certificates required, a client holding a certificate from our CA
    associates; plain TCP and a certificate from another CA are refused."""
    make_ca(tmp_path, "ca")
    make_ca(tmp_path, "rogue")
    make_cert(tmp_path, "ca", "server")
    make_cert(tmp_path, "ca", "client")
    make_cert(tmp_path, "rogue", "intruder")
    node = start_node(
        tls={
            "enabled": True,
            "cert_file": tmp_path / "server.crt",
            "key_file": tmp_path / "server.key",
            "ca_file": tmp_path / "ca.crt",
            "require_client_cert": True,
        }
    )

    trusted = echo(
        node.port,
        "+tls",
        str(tmp_path / "client.key"),
        str(tmp_path / "client.crt"),
        "+cf",
        str(tmp_path / "ca.crt"),
    )
    assert trusted.returncode == 0, trusted.stderr

    assert echo(node.port).returncode != 0
    intruder = echo(
        node.port,
        "+tls",
        str(tmp_path / "intruder.key"),
        str(tmp_path / "intruder.crt"),
        "+cf",
        str(tmp_path / "ca.crt"),
    )
    assert intruder.returncode != 0


def test_the_http_port_speaks_tls_with_the_same_certificate_and_client_rules(
    start_node: Callable[..., RunningNode], tmp_path: Path
) -> None:
    """With TLS on, the HTTP port (DICOMweb, probes) answers over TLS with the node's
    certificate and asks for a client certificate from the CA as the DICOM port does; a
    plain HTTP request and a client without a certificate get nothing."""
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "ca", "server")
    make_cert(tmp_path, "ca", "client")
    node = start_node(
        tls={
            "enabled": True,
            "cert_file": tmp_path / "server.crt",
            "key_file": tmp_path / "server.key",
            "ca_file": tmp_path / "ca.crt",
            "require_client_cert": True,
        },
        dicomweb__allow_anonymous=True,
    )
    assert node.node.http is not None
    base = f"127.0.0.1:{node.node.http.port}"
    context = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    with httpx.Client(verify=context, timeout=10) as client:
        assert client.get(f"https://{base}/dicom-web/studies").json() == []
        assert client.get(f"https://{base}/healthz").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{base}/healthz", timeout=10)
    bare = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=bare, timeout=10) as client:
        client.get(f"https://{base}/healthz")
