"""Readiness checks behind ``/readyz``: each returns None when fine, else a short reason.

The node checks the database (a real query), the broker and the spool's free space
against ``spool.min_free_mb``; a worker adds its own checks (e.g. "model loaded"). Checks
run in parallel with a short time limit, so the answer comes within the probe's timeout
even when a peer hangs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.settings import Settings
from dicom_node.spool import space_shortfall

logger = logging.getLogger(__name__)

#: A readiness check: returns None when fine, else a short reason (no secrets, no PHI).
Check = Callable[[], str | None]

CHECK_TIMEOUT = 2.0


def _reason(exc: BaseException) -> str:
    """A one-line reason from an exception: the driver's message, without SQL or URLs."""
    original = getattr(exc, "orig", None) or exc
    first = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {first}"[:200] if first else type(original).__name__


def database_check(engine: Engine) -> Check:
    """The database answers a query. SQLite opens the file afresh each time (read-write,
    never creating it), so a file that vanished or broke fails here for real."""
    url = engine.url
    sqlite_file = (
        Path(url.database).resolve()
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        else None
    )

    def _check() -> str | None:
        try:
            if sqlite_file is not None:
                uri = sqlite_file.as_uri() + "?mode=rw"
                raw = sqlite3.connect(uri, uri=True, timeout=CHECK_TIMEOUT)
                try:
                    raw.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    raw.close()
            else:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1")).scalar_one()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            return _reason(exc)
        return None

    return _check


def broker_check(settings: Settings) -> Check:
    """The broker accepts a connection (the embedded one: its folder is there)."""
    url = settings.broker_url

    def _check() -> str | None:
        if url.startswith("filesystem://"):
            folder = settings.broker_folder / "queue"
            return None if folder.is_dir() else f"broker folder {folder} is missing"
        from kombu.connection import Connection

        try:
            with Connection(url, connect_timeout=CHECK_TIMEOUT) as conn:  # type: ignore[no-untyped-call]
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        except Exception as exc:  # noqa: BLE001 - any transport error means unreachable
            return _reason(exc)
        return None

    return _check


def spool_check(settings: Settings) -> Check:
    """The spool has at least ``spool.min_free_mb`` free."""

    def _check() -> str | None:
        return space_shortfall(settings.spool_path, settings.spool.min_free_mb)

    return _check


def standard_checks(settings: Settings, engine: Engine) -> dict[str, Check]:
    """The checks every process shares: database, broker, spool."""
    return {
        "database": database_check(engine),
        "broker": broker_check(settings),
        "spool": spool_check(settings),
    }


def run_checks(checks: Mapping[str, Check], timeout: float = CHECK_TIMEOUT) -> dict[str, str]:
    """Run the checks in parallel; each maps to "ok" or what failed."""
    results: dict[str, str] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def _one(name: str, check: Check) -> None:
        try:
            problem = check()
        except Exception as exc:  # noqa: BLE001 - a failing check is a failed check
            problem = _reason(exc)
        with lock:
            results[name] = "ok" if problem is None else problem

    threads = [
        threading.Thread(target=_one, args=(name, check), name=f"gazex-ready-{name}", daemon=True)
        for name, check in checks.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return {name: results.get(name, f"no answer within {timeout:g} s") for name in checks}


class Probes:
    """The readiness checks of one process; ``add`` takes a worker's own (model loaded)."""

    def __init__(self, checks: Mapping[str, Check] | None = None) -> None:
        self.checks: dict[str, Check] = dict(checks or {})

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def readiness(self) -> tuple[list[str], dict[str, object]]:
        """The names of the failed checks, and the /readyz body."""
        results = run_checks(self.checks)
        failed = [name for name, result in results.items() if result != "ok"]
        body: dict[str, object] = {
            "status": "ready" if not failed else "unready",
            "failed": failed,
            "checks": results,
        }
        return failed, body
