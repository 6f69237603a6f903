"""Fixtures for the node tests: a real node on a free loopback port, on SQLite and on
PostgreSQL, with DCMTK as the sending PACS and as the destination."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodekit import RunningNode, free_port
from sqlalchemy import create_engine, text

from dicom_node import db
from dicom_node.dispatch import Dispatcher
from dicom_node.scp.server import Node
from dicom_node.settings import Settings, load_settings

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a private schema in PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gazex.sqlite3'}"
        db.upgrade(url)
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        db.upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "node__port": free_port(),
            "node__bind": "127.0.0.1",
            "http__port": free_port(),
            "http__bind": "127.0.0.1",
            "database__url": database_url,
            "completion__quiet_period": 0.3,
        }
        values.update(overrides)
        return load_settings(None, **values)

    return _make


@pytest.fixture
def start_node(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., RunningNode]]:
    """Start a node in-process with the real dispatcher (embedded folder broker by default)."""
    running: list[RunningNode] = []

    def _start(peers: bool = True, **overrides: Any) -> RunningNode:
        settings = make_settings(**overrides)
        dispatcher = Dispatcher(settings)
        node = Node.build(settings, dispatcher.analyze_study)
        if peers:
            node.peers.add("PACS", "STORESCU", "127.0.0.1", free_port(), ["source", "destination"])
        node.start()
        handle = RunningNode(node, dispatcher)
        running.append(handle)
        return handle

    yield _start
    for handle in running:
        handle.node.stop()
        handle.dispatcher.close()


@pytest.fixture(scope="session", autouse=True)
def _dcmtk_present() -> None:
    for tool in ("storescu", "echoscu", "storescp"):
        if shutil.which(tool) is None:
            pytest.fail(f"DCMTK tool {tool} is missing: run scripts/setup --dev")
