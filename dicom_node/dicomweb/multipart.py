"""A streaming reader of ``multipart/related`` request bodies (RFC 2387), as STOW-RS sends.

The body is never held whole: chunks from the ASGI stream are gathered into batches of
about ``BATCH_BYTES`` and fed to python-multipart's low-level ``MultipartParser`` in a
worker thread, whose callbacks hand each part's bytes to a sink (``PartSink``) as they
arrive; the STOW-RS sink writes them to a temporary file in the spool. So at most one batch
is in memory per request, and disk writes never block the event loop.

Errors: ``MalformedBody`` (the body is not a well-formed multipart body: answer 400) and
``BodyTooLarge`` (a part or the whole body is over its limit: answer 413). Exceptions a
sink raises (``OutOfResources`` when the disk is full) come out of ``read_multipart``
unchanged. On any error the sink of the part being read is discarded; the parts that were
completed before belong to the caller, who removes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: Bytes gathered from the stream before the parser (and the disk) get them, in a thread.
BATCH_BYTES = 1 << 20
#: Header lines per part and the length of one (python-multipart's defaults are smaller
#: than a DICOMweb client with Content-Location and Content-Description may send).
MAX_PART_HEADERS = 16
MAX_HEADER_BYTES = 8192


class MalformedBody(ValueError):
    """Not a well-formed multipart body: no boundary, truncated, or no part at all."""


class BodyTooLarge(ValueError):
    """A part, or the whole body, exceeds its limit (``limit`` bytes)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class PartSink(Protocol):
    """Where one part's bytes go, in order; exactly one of ``close`` or ``discard`` ends it."""

    def write(self, data: memoryview) -> None:
        """Take ``data``; it is only valid during the call."""

    def close(self) -> None:
        """The part is complete."""

    def discard(self) -> None:
        """The part is abandoned: remove what was kept of it."""


#: Called with a part's headers (names lower-cased) once they are read; returns its sink.
OpenPart = Callable[[Mapping[str, str]], PartSink]


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """The media type of a Content-Type header (lower-cased) and its parameters (names
    lower-cased, values unquoted); ``("", {})`` when there is none."""
    if not value:
        return "", {}
    kind, params = parse_options_header(value)
    return kind.decode("latin-1").strip(), {
        k.decode("latin-1").strip().lower(): v.decode("latin-1") for k, v in params.items()
    }


class _Parser:
    """The parser's callbacks: part headers, limits, and the current part's sink."""

    def __init__(self, boundary: str, open_part: OpenPart, max_part_bytes: int) -> None:
        self._open_part = open_part
        self._max_part_bytes = max_part_bytes
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._sink: PartSink | None = None
        self._part_bytes = 0
        self.parts = 0
        self.ended = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(
                boundary,
                callbacks,
                max_header_count=MAX_PART_HEADERS,
                max_header_size=MAX_HEADER_BYTES,
            )
        except FormParserError as exc:
            raise MalformedBody(f"unusable boundary: {exc}") from exc

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (blocking: the sink writes to disk); run in a worker thread."""
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise MalformedBody(f"malformed multipart body: {exc}") from exc

    def abandon(self) -> None:
        """Discard the part being read, if any."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.discard()

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._part_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._sink = self._open_part(self._headers)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        if self._part_bytes > self._max_part_bytes:
            raise BodyTooLarge(
                f"part {self.parts + 1} exceeds {self._max_part_bytes} bytes",
                self._max_part_bytes,
            )
        if self._sink is not None:
            self._sink.write(memoryview(data)[start:end])

    def _on_part_end(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close()
        self.parts += 1

    def _on_end(self) -> None:
        self.ended = True


async def read_multipart(
    chunks: AsyncIterator[bytes],
    boundary: str,
    open_part: OpenPart,
    *,
    max_part_bytes: int,
    max_body_bytes: int,
) -> int:
    """Read a multipart body from ``chunks``, handing each part to a sink from
    ``open_part``; returns the number of parts. Raises MalformedBody, BodyTooLarge, or
    whatever a sink raised."""
    parser = _Parser(boundary, open_part, max_part_bytes)
    received = 0
    batch: list[bytes] = []
    batched = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body_bytes:
                raise BodyTooLarge(f"request body exceeds {max_body_bytes} bytes", max_body_bytes)
            if not chunk:
                continue
            batch.append(chunk)
            batched += len(chunk)
            if batched >= BATCH_BYTES:
                data = b"".join(batch)
                batch.clear()
                batched = 0
                await anyio.to_thread.run_sync(parser.feed, data)
        if batch:
            await anyio.to_thread.run_sync(parser.feed, b"".join(batch))
            batch.clear()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(parser.abandon)
        raise
    if not parser.ended:
        await anyio.to_thread.run_sync(parser.abandon)
        raise MalformedBody("truncated multipart body: no closing boundary")
    if parser.parts == 0:
        raise MalformedBody("multipart body holds no part")
    return parser.parts
