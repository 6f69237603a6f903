"""What the node can serve over DICOMweb: which files exist for which UIDs, and their headers.

Two tables hold what a viewer may see: ``instance`` (what peers sent) and ``output`` (what
the model produced: SR, SEG, GSPS, Parametric Map), the outputs of each study's latest
succeeded analysis only (a superseded revision's objects are not listed). Both become
``Record`` rows, found in SQL by UID (and by Modality / SOP Class where the table has it).

The database holds no patient name, ID or birth date by design: patient- and study-level
attributes are read from the spool files' headers (``dcmread(stop_before_pixels=True)``),
kept in an in-process LRU cache keyed by (path, mtime, size), so a file rewritten in place
is read again. Headers are shared between threads: callers must not modify them.

Errors raised here (translated to HTTP answers by ``answer_errors``)::

    CatalogError
    ├── NotFound        no such study / series / instance here (404)
    └── FileMissing     the database names a spool file that is gone or unreadable (500)
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from dicom_node.db.models import Analysis, AnalysisState, Instance, Output, Study
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

#: Headers kept in memory (without pixel data: a few kB each).
HEADER_CACHE_SIZE = 4096

#: The Modality of the objects the model writes, by SOP Class (the Output table has none).
OUTPUT_MODALITIES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1": "PR",  # Grayscale Softcopy Presentation State
}


class CatalogError(Exception):
    """Something asked of the catalog that it cannot answer."""


class NotFound(CatalogError):
    """No such study, series or instance on this node."""


class FileMissing(CatalogError):
    """The database names a spool file that is gone or not DICOM."""


@dataclass(frozen=True)
class Record:
    """One object the node can serve: a received instance or an analysis output."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    SOPClassUID: str
    #: As stored (None for outputs: their file meta says; see ``Catalog.transfer_syntax``).
    TransferSyntaxUID: str | None
    #: None for outputs of a SOP Class not in OUTPUT_MODALITIES (the header says).
    Modality: str | None
    #: Relative to the spool root.
    path: str
    is_output: bool


class HeaderCache:
    """An LRU of headers keyed by (path, mtime, size); safe to share between threads."""

    def __init__(self, size: int = HEADER_CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, int, int], Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Dataset:
        try:
            stat = path.stat()
        except OSError as exc:
            raise FileMissing("a spool file is missing") from exc
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            header = self._entries.get(key)
            if header is not None:
                self._entries.move_to_end(key)
                return header
        header = _read_header(path)
        with self._lock:
            self._entries[key] = header
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return header

    def __len__(self) -> int:
        return len(self._entries)


def _read_header(path: Path) -> Dataset:
    try:
        header = dcmread(path, stop_before_pixels=True)
        for _ in header.iterall():
            pass  # parse every element now: the header is then only read, never converted
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise FileMissing(f"a spool file cannot be read ({type(exc).__name__})") from exc
    return header


class Catalog:
    """The one place that knows which files exist for which UIDs, and what they hold."""

    def __init__(
        self, sessions: sessionmaker[Session], spool: Spool, cache: HeaderCache | None = None
    ) -> None:
        self._sessions = sessions
        self._spool = spool
        self._cache = cache if cache is not None else HeaderCache()

    # -- which objects -------------------------------------------------------------------

    def records(
        self,
        *,
        StudyInstanceUID: Sequence[str] | None = None,
        SeriesInstanceUID: Sequence[str] | None = None,
        SOPInstanceUID: Sequence[str] | None = None,
        SOPClassUID: Sequence[str] | None = None,
        Modality: Sequence[str] | None = None,
    ) -> list[Record]:
        """Received instances, then the latest analysis outputs, matching every filter
        given (each a list of values, any of which matches). Blocking."""
        received = (
            select(
                Study.StudyInstanceUID,
                Instance.SeriesInstanceUID,
                Instance.SOPInstanceUID,
                Instance.SOPClassUID,
                Instance.TransferSyntaxUID,
                Instance.Modality,
                Instance.path,
            )
            .join(Study, Instance.study_id == Study.id)
            .where(
                *_any_of(Study.StudyInstanceUID, StudyInstanceUID),
                *_any_of(Instance.SeriesInstanceUID, SeriesInstanceUID),
                *_any_of(Instance.SOPInstanceUID, SOPInstanceUID),
                *_any_of(Instance.SOPClassUID, SOPClassUID),
                *_any_of(Instance.Modality, Modality),
            )
            .order_by(Study.id, Instance.SeriesInstanceUID, Instance.id)
        )
        latest = (
            select(Analysis.study_id, func.max(Analysis.revision).label("revision"))
            .where(Analysis.state == AnalysisState.SUCCEEDED)
            .group_by(Analysis.study_id)
            .subquery()
        )
        produced = (
            select(
                Study.StudyInstanceUID,
                Output.SeriesInstanceUID,
                Output.SOPInstanceUID,
                Output.SOPClassUID,
                Output.path,
            )
            .join(Analysis, Output.analysis_id == Analysis.id)
            .join(
                latest,
                and_(
                    latest.c.study_id == Analysis.study_id, latest.c.revision == Analysis.revision
                ),
            )
            .join(Study, Analysis.study_id == Study.id)
            .where(
                Analysis.state == AnalysisState.SUCCEEDED,
                *_any_of(Study.StudyInstanceUID, StudyInstanceUID),
                *_any_of(Output.SeriesInstanceUID, SeriesInstanceUID),
                *_any_of(Output.SOPInstanceUID, SOPInstanceUID),
                *_any_of(Output.SOPClassUID, SOPClassUID),
            )
            .order_by(Study.id, Output.SeriesInstanceUID, Output.id)
        )
        with self._sessions() as session:
            found = [
                Record(*row[:6], path=row[6], is_output=False) for row in session.execute(received)
            ]
            outputs = [
                Record(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    None,
                    OUTPUT_MODALITIES.get(row[3]),
                    row[4],
                    is_output=True,
                )
                for row in session.execute(produced)
            ]
        if Modality is not None:
            wanted = set(Modality)
            outputs = [r for r in outputs if self.modality(r) in wanted]
        return _study_order(found, outputs)

    def one(self, StudyInstanceUID: str, SeriesInstanceUID: str, SOPInstanceUID: str) -> Record:
        """The instance these UIDs name, or NotFound."""
        found = self.records(
            StudyInstanceUID=[StudyInstanceUID],
            SeriesInstanceUID=[SeriesInstanceUID],
            SOPInstanceUID=[SOPInstanceUID],
        )
        if not found:
            raise NotFound("no such instance here")
        return found[0]

    def some(self, StudyInstanceUID: str, SeriesInstanceUID: str | None = None) -> list[Record]:
        """The instances of a study (or one of its series); NotFound when there are none."""
        found = self.records(
            StudyInstanceUID=[StudyInstanceUID],
            SeriesInstanceUID=None if SeriesInstanceUID is None else [SeriesInstanceUID],
        )
        if not found:
            raise NotFound("no such series here" if SeriesInstanceUID else "no such study here")
        return found

    # -- what they hold ------------------------------------------------------------------

    def file(self, record: Record) -> Path:
        """The spool file of ``record`` (FileMissing when it is gone)."""
        try:
            path = self._spool.absolute(record.path)
        except ValueError as exc:
            raise FileMissing("a spool path is not valid") from exc
        if not path.is_file():
            logger.error(
                "instance %s is indexed but its spool file is missing", record.SOPInstanceUID
            )
            raise FileMissing("an instance's file is missing from the spool")
        return path

    def header(self, record: Record) -> Dataset:
        """The header of ``record``'s file (file meta included, pixel data not); cached and
        shared: do not modify it."""
        try:
            return self._cache.get(self._spool.absolute(record.path))
        except ValueError as exc:
            raise FileMissing("a spool path is not valid") from exc
        except FileMissing:
            logger.error(
                "instance %s is indexed but its spool file cannot be read", record.SOPInstanceUID
            )
            raise

    def modality(self, record: Record) -> str | None:
        if record.Modality is not None:
            return record.Modality
        value = self.header(record).get("Modality")
        return str(value) if value else None

    def transfer_syntax(self, record: Record) -> str:
        if record.TransferSyntaxUID is not None:
            return record.TransferSyntaxUID
        meta = getattr(self.header(record), "file_meta", None)
        syntax = None if meta is None else meta.get("TransferSyntaxUID")
        return str(syntax) if syntax else "1.2.840.10008.1.2.1"


def _any_of(
    column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None],
    values: Sequence[str] | None,
) -> list[ColumnElement[bool]]:
    return [] if values is None else [column.in_(list(values))]


def _study_order(received: list[Record], outputs: list[Record]) -> list[Record]:
    """Received instances first within each study (their headers are the study's),
    studies in the order they were first received."""
    order: dict[str, int] = {}
    for record in (*received, *outputs):
        order.setdefault(record.StudyInstanceUID, len(order))
    merged = [*received, *outputs]
    merged.sort(key=lambda r: order[r.StudyInstanceUID])  # stable: received stay first
    return merged


# -- HTTP answers for the catalog's errors (the one translation for the read side) ----------

P = ParamSpec("P")


def answer_errors(
    handler: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """Wrap a DICOMweb endpoint: catalog errors, a database that does not answer and
    unreadable files become one-line JSON answers, never a traceback."""

    @functools.wraps(handler)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except FileMissing as exc:
            raise HTTPException(500, str(exc)) from None
        except (OSError, InvalidDicomError) as exc:
            logger.error("DICOMweb request failed: a spool file: %s", type(exc).__name__)
            raise HTTPException(500, "an instance's file cannot be read") from None
        except SQLAlchemyError as exc:
            logger.error("DICOMweb request failed: database error %s", type(exc).__name__)
            raise HTTPException(
                503, "the node's database is unavailable", headers={"Retry-After": "10"}
            ) from None

    return wrapped


def base_url(request: Request, base_path: str) -> str:
    """The URL of the DICOMweb root as the client reached it (RetrieveURL, BulkDataURI)."""
    url = request.url
    at = url.path.find(base_path.rstrip("/") + "/")
    prefix = url.path[: at + len(base_path.rstrip("/"))] if at >= 0 else base_path
    return f"{url.scheme}://{url.netloc}{prefix}"
