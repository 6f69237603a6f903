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
from stackkit import _isolated_database

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


@pytest.mark.postgres
def test_a_second_node_on_the_same_postgresql_database_refuses_to_start(tmp_path: Path) -> None:
    """Two nodes with homes of their own but one PostgreSQL database (schema): the second
    stops at once naming the database (its password would be hidden)."""
    url, drop = _isolated_database("postgres", tmp_path)
    try:
        first = _env(tmp_path / "a", GAZEX_DATABASE__URL=url, GAZEX_HTTP__ENABLED="false")
        second = {**first, "GAZEX_HOME": str(tmp_path / "b")}
        with _running_node(first, free_port()):
            line = _one_line(_gazex(second, "node", "--port", str(free_port())), "node")
        assert "another node uses the database postgresql+psycopg://postgres@127.0.0.1" in line
    finally:
        drop()


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


def test_the_start_banner_names_the_settings_file_and_the_probes(tmp_path: Path) -> None:
    """The node's start lines say which settings file it read (found on its own in
    $XDG_CONFIG_HOME/gazex/gazex.toml, so no shell needs GAZEX_HOME) and where its health
    and metrics endpoints, its DICOMweb and its review page are."""
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "gazex" / "gazex.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config.write_text(
        f'home = "{tmp_path / "home"}"\n[http]\nbind = "127.0.0.1"\nport = {http_port}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
    node = subprocess.Popen(
        [*GAZEX, "node", "--port", str(free_port()), "--bind", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        banner = [node.stdout.readline() for _ in range(6)]
    finally:
        node.terminate()
        _, errors = node.communicate(timeout=30)
    assert banner[1].strip() == f"data folder: {tmp_path / 'home'}"
    assert banner[2].strip() == f"settings: {config}"
    assert banner[3].strip() == (
        f"health and metrics: http://127.0.0.1:{http_port}/healthz /readyz /metrics"
    )
    assert banner[4].strip().startswith(f"DICOMweb: http://127.0.0.1:{http_port}/dicom-web (")
    assert banner[5].strip().startswith(f"review page: http://127.0.0.1:{http_port}/review (")
    assert "alembic" not in errors  # migrating a new home is one line of ours


def test_version_and_help_for_every_admin_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`gazex --version` prints the version; every option of `ae add` and `ae edit` has a
    help text, and `status` and `worker` have a description."""
    from importlib.metadata import version

    from dicom_node.cli import build_parser, main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"gazex {version('gazex-node')}"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    ae = next(a for a in commands["ae"]._actions if a.dest == "ae_command").choices
    for sub in ("add", "edit"):
        missing = [a.dest for a in ae[sub]._actions if a.dest != "help" and not a.help]
        assert missing == [], sub
    assert commands["status"].description and commands["worker"].description
