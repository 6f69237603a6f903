"""The `make_stack` fixture: a node with real Celery workers and its peers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu import Connection, Queue
from nodekit import StoreSCP, free_port
from stackkit import RABBITMQ, REDIS, Stack, _isolated_database

from workers.hl7.mllp import MLLPListener


def _delete_queues(url: str, names: list[str]) -> None:
    """Leave the shared broker as we found it."""
    with Connection(url) as conn:
        channel = conn.channel()
        for name in names:
            Queue(name, no_declare=True).bind(channel).delete()


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a stack: broker 'embedded' | 'rabbitmq' | 'redis'; the database follows."""
    cleanups: list[Callable[[], None]] = []

    def _make(
        broker: str = "embedded",
        *,
        quiet_period: float = 0.5,
        destination_up: bool = True,
        http_port: int | None = None,
    ) -> Stack:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        database_url, drop = _isolated_database(
            "sqlite" if broker == "embedded" else "postgres", tmp_path
        )
        cleanups.append(drop)
        destination = StoreSCP(tmp_path / "pacs", ae_title="STORESCU")
        if destination_up:
            destination.start()
        cleanups.append(destination.stop)
        listener = MLLPListener(port=0).start()
        cleanups.append(listener.stop)
        suffix = uuid.uuid4().hex[:8]
        broker_lines = {
            "embedded": "",
            "rabbitmq": f'url = "{RABBITMQ}"',
            "redis": f'url = "{REDIS}"',
        }[broker]
        port = free_port()
        http_lines = f'bind = "127.0.0.1"\nport = {http_port}' if http_port else "enabled = false"
        config = tmp_path / "gazex.toml"
        config.write_text(
            f"""
home = "{home}"
[node]
bind = "127.0.0.1"
port = {port}
[http]
{http_lines}
[database]
url = "{database_url}"
[broker]
{broker_lines}
analysis_queue = "gpu-{suffix}"
io_queue = "io-{suffix}"
[completion]
quiet_period = {quiet_period}
[delivery]
backoff_initial = 1.0
backoff_max = 2.0
[hl7]
host = "127.0.0.1"
port = {listener.port}
[worker]
soft_time_limit = 100.0
time_limit = 110.0
stale_after = 120.0

[[peers]]
name = "PACS"
ae_title = "STORESCU"
host = "127.0.0.1"
port = {destination.port}
roles = ["source", "destination"]

[[peers]]
name = "MODALITY"
ae_title = "MODALITY"
host = "127.0.0.1"
port = 104
roles = ["source"]
""",
            encoding="utf-8",
        )
        if broker != "embedded":
            url = RABBITMQ if broker == "rabbitmq" else REDIS
            cleanups.append(lambda: _delete_queues(url, [f"gpu-{suffix}", f"io-{suffix}"]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
        stack = Stack(home, config, port, database_url, destination, listener, env)
        cleanups.append(stack.stop)
        return stack

    yield _make
    for cleanup in reversed(cleanups):
        cleanup()
