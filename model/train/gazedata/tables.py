"""CSV reading and writing shared by the dataset loaders, with precise error messages.

Every loader reads through :func:`read_table`, which checks the header against the
columns the loader needs, and :class:`Row`, whose typed getters raise
:class:`DataFormatError` naming the file, the data row (1-based, the header is not
counted; the file line is row + 1) and the column. Nothing here logs cell values, so no
patient identifier reaches a log or a message beyond the offending cell of a malformed
file the user owns. MIMIC-Eye keeps each patient's files in a ``patient_<subject_id>``
folder: a message shows that folder as ``patient_#<hash>``, the first 10 hex digits of the
SHA-256 of the subject id (see docs/DATA.md for finding the folder again).

Exceptions::

    ValueError
     └── DataFormatError      a dataset file that does not have the promised layout
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


_PATIENT_FOLDER = re.compile(r"patient_(\d+)")


def _hide_subject(match: re.Match[str]) -> str:
    return "patient_#" + hashlib.sha256(match.group(1).encode("ascii")).hexdigest()[:10]


class DataFormatError(ValueError):
    """A dataset file that does not have the layout its loader expects (no subject id in
    the message: see the module docstring)."""

    def __init__(self, message: str) -> None:
        super().__init__(_PATIENT_FOLDER.sub(_hide_subject, message))


class Row:
    """One CSV data row with typed accessors that name file, row and column on error."""

    __slots__ = ("_cells", "index", "path")

    def __init__(self, path: Path, number: int, cells: Mapping[str, str]) -> None:
        self.path = path
        self.index = number
        self._cells = cells

    def _where(self, column: str) -> str:
        return f"{self.path}: row {self.index} (line {self.index + 1}), column {column!r}"

    def has(self, column: str) -> bool:
        """Whether the file has this column."""
        return column in self._cells

    def text(self, column: str) -> str:
        value = self._cells.get(column)
        if value is None:
            raise DataFormatError(f"{self._where(column)}: missing value")
        return value

    def optional_number(self, column: str) -> float | None:
        """The cell as a finite float, or None when empty."""
        raw = self.text(column).strip()
        if raw == "":
            return None
        try:
            value = float(raw)
        except ValueError:
            raise DataFormatError(
                f"{self._where(column)}: expected a number, got {raw!r}"
            ) from None
        if not math.isfinite(value):
            raise DataFormatError(f"{self._where(column)}: expected a finite number, got {raw!r}")
        return value

    def number(self, column: str) -> float:
        """The cell as a finite float (an empty cell is an error)."""
        value = self.optional_number(column)
        if value is None:
            raise DataFormatError(f"{self._where(column)}: expected a number, got ''")
        return value

    def flag(self, column: str) -> bool:
        raw = self.text(column).strip().lower()
        if raw in ("true", "1", "1.0"):
            return True
        if raw in ("false", "0", "0.0", "", "-1", "-1.0"):
            return False
        raise DataFormatError(f"{self._where(column)}: expected True/False, got {raw!r}")

    def error(self, column: str, problem: str) -> DataFormatError:
        return DataFormatError(f"{self._where(column)}: {problem}")


def read_table(path: Path, required: Sequence[str]) -> list[Row]:
    """All data rows of a CSV file whose header must contain ``required`` columns."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataFormatError(f"{path}: row 0 (header), missing column(s) {missing}")
            rows: list[Row] = []
            for i, cells in enumerate(reader, start=1):
                if None in cells:
                    raise DataFormatError(
                        f"{path}: row {i} (line {i + 1}), column {None!r}: "
                        "more cells than header columns"
                    )
                short = [c for c in required if cells.get(c) is None]
                if short:
                    raise DataFormatError(
                        f"{path}: row {i} (line {i + 1}), column {short[0]!r}: "
                        "fewer cells than header columns"
                    )
                rows.append(Row(path, i, cells))
            return rows
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataFormatError(f"{path}: malformed CSV ({exc})") from None


def write_table(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write a CSV with exactly ``columns`` (missing cells empty), CRLF line ends like REFLACX."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\r\n", extrasaction="raise")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(v) for k, v in row.items()})


def csv_text(
    columns: Sequence[str], rows: Iterable[Mapping[str, object]], header: bool = False
) -> str:
    """CSV text of ``rows`` (with the header line first if ``header``), CRLF line ends."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\r\n", extrasaction="raise")
    if header:
        w.writeheader()
    for row in rows:
        w.writerow({k: _fmt(v) for k, v in row.items()})
    return buf.getvalue()


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return (
            repr(value)
            if not value.is_integer()
            else str(int(value))
            if abs(value) < 1e15
            else repr(value)
        )
    return value
