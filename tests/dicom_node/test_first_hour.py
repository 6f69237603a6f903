"""What goes wrong in an admin's first hour says so in one line naming the setting or
resource, with a non-zero exit and no traceback: a second node on one home, a port in use,
a home that cannot be written, a database that cannot be reached."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import free_port, wait_port

pytestmark = pytest.mark.integration

GAZEX = [sys.executable, "-m", "dicom_node.cli"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
    env.update(GAZEX_HOME=str(home), GAZEX_HTTP__BIND="127.0.0.1", **extra)
    return env


def _gazex(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GAZEX, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _one_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("gazex")]
    assert len(errors) == 1 and errors[0].startswith(f"gazex {command}: error: "), done.stderr
    return errors[0]


@contextlib.contextmanager
def _running_node(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[str]]:
    node = subprocess.Popen(
        [*GAZEX, "node", "--port", str(port), "--bind", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_port(port, timeout=60)
        yield node
    finally:
        node.terminate()
        node.wait(timeout=30)


def test_a_second_node_on_the_same_home_refuses_to_start(tmp_path: Path) -> None:
    """A second node on a home where one runs stops at once, naming the home and the pid
    of the running one (before, both completed and dispatched every study)."""
    env = _env(tmp_path / "home", GAZEX_HTTP__PORT=str(free_port()))
    with _running_node(env, free_port()) as first:
        env["GAZEX_HTTP__PORT"] = str(free_port())
        line = _one_line(_gazex(env, "node", "--port", str(free_port())), "node")
    assert f"another node runs on home {tmp_path / 'home'} (pid {first.pid})" in line


def test_ports_in_use_are_named(tmp_path: Path) -> None:
    """A DICOM port or an HTTP port that another program holds stops the node with the
    setting and the port (before, a second node's probes silently answered for the first)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        env = _env(tmp_path / "a", GAZEX_HTTP__PORT=str(free_port()))
        line = _one_line(_gazex(env, "node", "--port", str(busy), "--bind", "127.0.0.1"), "node")
        assert f"node.port: port {busy} on 127.0.0.1 is in use" in line
        env = _env(tmp_path / "b", GAZEX_HTTP__PORT=str(busy))
        line = _one_line(_gazex(env, "node", "--port", str(free_port())), "node")
        assert f"http.port: port {busy} on 127.0.0.1 is in use" in line


def test_a_home_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    """A home the node cannot write (here below a file, as a read-only mount would be) is
    named with the reason and what to set (before: 100 lines ending in sqlite3's 'unable
    to open database file')."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = _env(blocker / "home", GAZEX_HTTP__ENABLED="false")
    line = _one_line(_gazex(env, "node", "--port", str(free_port())), "node")
    assert f"home {blocker / 'home'}: not writable" in line and "GAZEX_HOME" in line
    line = _one_line(_gazex(env, "status"), "status")
    assert "database.url sqlite:///" in line


def test_a_database_that_cannot_be_reached_is_named_without_its_password(
    tmp_path: Path,
) -> None:
    """PostgreSQL down at start is one line naming database.url with the password hidden
    and the driver's reason (before: 129 lines of traceback)."""
    url = f"postgresql+psycopg://gazex:s3cret@127.0.0.1:{free_port()}/gazex"
    env = _env(tmp_path / "home", GAZEX_DATABASE__URL=url, GAZEX_HTTP__ENABLED="false")
    for command in (["node", "--port", str(free_port())], ["status"], ["ae", "list"]):
        line = _one_line(_gazex(env, *command), command[0])
        assert "database.url postgresql+psycopg://gazex:***@127.0.0.1" in line
        assert "s3cret" not in line and "Connection refused" in line
