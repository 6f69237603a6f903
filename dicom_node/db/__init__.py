"""Engine, sessions and migrations. One engine per process, created at start-up.

``models`` holds the tables; ``migrations`` the Alembic scripts that create them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.errors import StartError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the process's engine. SQLite runs in WAL mode with full fsync: an instance
    is only acknowledged once its row is on disk."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with sessions.begin() as session:
        yield session


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would read '%' in passwords as a placeholder.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``gazex db upgrade``); one log line when that
    changed anything, none when it was there already."""
    engine = make_engine(url)  # creates the SQLite folder when needed
    try:
        before = _revision(engine)
        command.upgrade(alembic_config(url), revision)
        after = _revision(engine)
    finally:
        engine.dispose()
    if before != after:
        logger.info("database schema migrated from %s to %s", before or "empty", after)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate_embedded(url: str) -> None:
    """The embedded SQLite default migrates itself; other databases use `gazex db upgrade`.

    Raises StartError naming the database when it cannot be opened or reached."""
    with reachable(url):
        if make_url(url).get_backend_name() == "sqlite":
            upgrade(url)
        else:
            make_engine(url).dispose()


def open_sessions(url: str) -> sessionmaker[Session]:
    """Sessions for a command: the embedded default is migrated first, and a database that
    cannot be reached is one line (StartError), not a traceback."""
    migrate_embedded(url)
    engine = make_engine(url)
    with reachable(url), engine.connect():
        pass
    return make_sessionmaker(engine)


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """Turn a database that cannot be opened or reached into StartError naming it (the URL
    without its password) and saying why in the driver's first line."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc) else ""
        hint = ""
        if make_url(url).get_backend_name() == "sqlite":
            hint = " (is its folder there and writable?)"
        raise StartError(f"database.url {shown}: {reason}{hint}") from None
    except OSError as exc:  # the SQLite file's folder cannot be created
        shown = make_url(url).render_as_string(hide_password=True)
        where = exc.filename or "its folder"
        raise StartError(f"database.url {shown}: cannot create {where}: {exc.strerror}") from None
