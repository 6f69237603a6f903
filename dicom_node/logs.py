"""Logging set-up for the entry points: text or JSON lines, with context ids on each line.

``bind(association=..., study=..., task=...)`` is a context manager that adds ids to every
line logged inside it (in this thread or task: the ids live in a ``contextvars`` variable).
Only ids and short hashes belong there, never patient data::

    with bind(association=assoc_id, study=short_hash(StudyInstanceUID)):
        logger.info("stored")   # {"msg": "stored", "association": "3f2a9c1b", ...}

Modules only ever call ``logging.getLogger(__name__)``; ``configure_logging`` is called once
by an entry point (``gazex``, a worker) with the ``log`` settings section.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any

from dicom_node.settings import LogSettings

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("gazex_log_context", default=_EMPTY)

#: The keys ``bind`` accepts, in the order text lines show them.
CONTEXT_KEYS = ("association", "study", "task")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


@contextmanager
def bind(**ids: str | int | None) -> Iterator[None]:
    """Add ids (``association``, ``study``, ``task``) to every line logged inside."""
    unknown = set(ids) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"cannot bind {', '.join(sorted(unknown))}: use {CONTEXT_KEYS}")
    merged = dict(_context.get())
    merged.update({k: str(v) for k, v in ids.items() if v is not None})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_thread(**ids: str | int | None) -> None:
    """Bind ids for the rest of the current thread, with no end: only for a thread that
    belongs to one job, like a pynetdicom association's own thread (then the library's
    own lines in it carry the association id too)."""
    unknown = set(ids) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"cannot bind {', '.join(sorted(unknown))}: use {CONTEXT_KEYS}")
    _context.set({**_context.get(), **{k: str(v) for k, v in ids.items() if v is not None}})


def current() -> Mapping[str, str]:
    """The ids bound here (``bind``); empty outside any binding."""
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (``record.gazex``, and ``record.context`` as
    text) so any formatter can show them."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = dict(_context.get())
        record.gazex = ids
        record.context = (
            " [" + " ".join(f"{k}={ids[k]}" for k in CONTEXT_KEYS if k in ids) + "]" if ids else ""
        )
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the bound ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ids = getattr(record, "gazex", None)
        if ids is None:
            ids = dict(_context.get())
        entry.update(ids)
        if record.threadName and record.threadName != "MainThread":
            entry["thread"] = record.threadName
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


#: Libraries that log at INFO per PDU, per C-STORE or per copied DICOM module.
#: Libraries whose INFO lines repeat what our own lines say once: an association and each
#: object (pynetdicom, highdicom), every migration step on every command (alembic), every
#: task's "succeeded in 0.44157477799990374s" (celery.app.trace).
_CHATTY_LIBRARIES = ("pynetdicom", "highdicom", "alembic", "celery.app.trace")


def configure_logging(
    log: LogSettings | None = None,
    *,
    verbose: bool = False,
    stream: IO[str] | None = None,
    force: bool = False,
) -> logging.Handler | None:
    """Install one handler on the root logger, in the format and level of ``log``.

    Like ``logging.basicConfig``, nothing changes when the root logger already has handlers
    installed by someone else (a test runner, a host application) unless ``force``; calling
    it again replaces the handler it installed before. ``verbose`` means DEBUG. Returns the
    handler installed, or None.
    """
    log = log or LogSettings()
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_gazex", False)]
    if not force and len(ours) < len(root.handlers):
        return None
    for handler in ours:
        root.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._gazex = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    if log.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else log.level)
    for name in _CHATTY_LIBRARIES:
        # Our own lines already say what matters once per association and per object.
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    return handler


def remove_handler(handler: logging.Handler | None) -> None:
    """Undo ``configure_logging`` (tests)."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
