"""MLLP (HL7 v2 Minimal Lower Layer Protocol): a client with ACK checking and a threaded
listener. Plain functions and classes (no Celery, no torch): a task calls ``send``.

Framing: ``0x0B`` message ``0x1C 0x0D``. An ACK's MSA-1 is AA (accepted), AE (error) or AR
(rejected) (CA/CE/CR in enhanced mode), and MSA-2 must echo the sent MSH-10.

Its exceptions (``MLLPError`` and below) live in the project's one tree,
``dicom_node.errors``; ``send`` retries transport errors with backoff before raising them.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dicom_node.errors import (
    AckApplicationError,
    AckMismatch,
    AckRejected,
    MLLPTransportError,
)

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: A frame larger than this is refused (a peer that never sends the end block).
MAX_FRAME_BYTES = 64 * 1024 * 1024

ACCEPT_CODES = frozenset({"AA", "CA"})
ERROR_CODES = frozenset({"AE", "CE"})
REJECT_CODES = frozenset({"AR", "CR"})


@dataclass(frozen=True)
class Ack:
    """The parts of an ACK that matter to the sender."""

    code: str
    control_id: str
    text: str
    raw: str

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPT_CODES


# -- framing and parsing -----------------------------------------------------------------


def frame(message: bytes | str, encoding: str = "utf-8") -> bytes:
    """Wrap one message in MLLP start and end blocks (segments separated by CR)."""
    data = message.encode(encoding) if isinstance(message, str) else message
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return START_BLOCK + data + END_BLOCK


def _read_frame(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """The next frame's payload; ``None`` when the peer closed between frames."""
    while True:
        start = buffer.find(START_BLOCK)
        if start >= 0:
            end = buffer.find(END_BLOCK, start + 1)
            if end >= 0:
                payload = bytes(buffer[start + 1 : end])
                del buffer[: end + len(END_BLOCK)]
                return payload
        if len(buffer) > MAX_FRAME_BYTES:
            raise MLLPTransportError(f"MLLP frame over {MAX_FRAME_BYTES} bytes")
        chunk = sock.recv(65536)
        if not chunk:
            if buffer.strip(b"\r\n\x00 "):
                raise MLLPTransportError("peer closed the connection inside a frame")
            return None
        buffer.extend(chunk)


def _segments(text: str) -> list[str]:
    return [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]


def msh_fields(text: str) -> list[str]:
    """MSH split so that ``fields[n]`` is MSH-n (MSH-1, the field separator, included)."""
    segments = _segments(text)
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise AckMismatch(f"not an HL7 message: {text[:40]!r}")
    separator = segments[0][3]
    parts = segments[0].split(separator)
    return ["MSH", separator, *parts[1:]]


def message_control_id(text: str) -> str:
    fields = msh_fields(text)
    return fields[10] if len(fields) > 10 else ""


def parse_ack(text: str) -> Ack:
    """MSA-1, MSA-2 and MSA-3 (or ERR text) of an ACK; ``AckMismatch`` if there is no MSA."""
    separator = msh_fields(text)[1]
    msa = next((s for s in _segments(text) if s.startswith("MSA")), None)
    if msa is None:
        raise AckMismatch(f"answer has no MSA segment: {text[:60]!r}")
    fields = msa.split(separator)
    code = fields[1].strip() if len(fields) > 1 else ""
    control = fields[2].strip() if len(fields) > 2 else ""
    detail = fields[3] if len(fields) > 3 else ""
    if not detail:
        err = next((s for s in _segments(text) if s.startswith("ERR")), "")
        detail = err.split(separator, 1)[1] if separator in err else ""
    return Ack(code=code, control_id=control, text=detail, raw=text)


def check_ack(ack: Ack, expected_control_id: str) -> Ack:
    """Return ``ack`` if it accepts the message with ``expected_control_id``, else raise."""
    if ack.control_id != expected_control_id:
        raise AckMismatch(
            f"ACK acknowledges control id {ack.control_id!r}, we sent {expected_control_id!r}",
            ack,
        )
    if ack.code in ACCEPT_CODES:
        return ack
    if ack.code in REJECT_CODES:
        raise AckRejected(f"peer rejected the message ({ack.code}): {ack.text}", ack)
    if ack.code in ERROR_CODES:
        raise AckApplicationError(
            f"peer failed to process the message ({ack.code}): {ack.text}", ack
        )
    raise AckMismatch(f"unknown acknowledgment code {ack.code!r}", ack)


# -- client ----------------------------------------------------------------------------


def send(
    message: bytes | str,
    host: str,
    port: int,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 10.0,
    encoding: str = "utf-8",
    sleep: Callable[[float], None] = time.sleep,
) -> Ack:
    """Send one message and return its accepting ACK.

    Transport failures (refused, unreachable, timeouts, reset, closed before an ACK) are
    retried ``retries`` times, waiting ``backoff`` seconds doubled each time (at most
    ``max_backoff``), then raised as ``MLLPTransportError``. An answer is never retried
    here: AR raises ``AckRejected``, AE ``AckApplicationError``, and an ACK for another
    control id ``AckMismatch``.
    """
    text = message.decode(encoding) if isinstance(message, bytes) else message
    expected = message_control_id(text)
    payload = frame(text, encoding)
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = _exchange(payload, host, port, connect_timeout, read_timeout)
        except MLLPTransportError as exc:
            if attempt > retries:
                raise MLLPTransportError(
                    f"no ACK from {host}:{port} after {attempt} attempts: {exc}"
                ) from exc
            delay = min(max_backoff, backoff * 2 ** (attempt - 1))
            logger.warning(
                "MLLP to %s:%s failed (%s); retry %d/%d in %.1fs",
                host,
                port,
                exc,
                attempt,
                retries,
                delay,
            )
            sleep(delay)
            continue
        ack = parse_ack(answer.decode(encoding, errors="replace"))
        logger.info("MLLP %s:%s acknowledged %s with %s", host, port, expected, ack.code)
        return check_ack(ack, expected)


def _exchange(
    payload: bytes, host: str, port: int, connect_timeout: float, read_timeout: float
) -> bytes:
    try:
        with socket.create_connection((host, port), timeout=connect_timeout) as sock:
            sock.settimeout(read_timeout)
            sock.sendall(payload)
            answer = _read_frame(sock, bytearray())
    except TimeoutError as exc:
        raise MLLPTransportError(f"timed out talking to {host}:{port}") from exc
    except MLLPTransportError:
        raise
    except OSError as exc:
        raise MLLPTransportError(f"{host}:{port}: {exc}") from exc
    if answer is None:
        raise MLLPTransportError(f"{host}:{port} closed the connection without an ACK")
    return answer


# -- listener --------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the listener answers to one message."""

    code: str = "AA"
    text: str = ""


Handler = Callable[[str], Verdict]


def accept_all(_message: str) -> Verdict:
    return Verdict("AA")


def build_ack(message: str, verdict: Verdict, now: datetime | None = None) -> str:
    """An ACK (v2.5.1) for ``message``: sender and receiver swapped, MSA-2 echoing its
    MSH-10, MSA-3 the verdict's text."""
    fields = msh_fields(message)
    separator, encoding_chars = fields[1], fields[2] if len(fields) > 2 else "^~\\&"

    def get(n: int) -> str:
        return fields[n] if len(fields) > n else ""

    control = get(10)
    trigger = get(9).split(encoding_chars[0])[1] if encoding_chars[0] in get(9) else ""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    msh = separator.join(
        [
            "MSH",
            encoding_chars,
            get(5),
            get(6),
            get(3),
            get(4),
            stamp,
            "",
            f"ACK{encoding_chars[0]}{trigger}{encoding_chars[0]}ACK" if trigger else "ACK",
            f"ACK{control}"[:20],
            get(11) or "P",
            get(12) or "2.5.1",
        ]
    )
    text = verdict.text.replace(separator, " ").replace("\r", " ").replace("\n", " ")
    msa = separator.join(["MSA", verdict.code, control, text]).rstrip(separator)
    return f"{msh}\r{msa}\r"


class _ConnectionHandler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.idle_timeout)
        buffer = bytearray()
        while True:
            try:
                payload = _read_frame(sock, buffer)
            except (OSError, MLLPTransportError) as exc:
                logger.debug("MLLP connection from %s ended: %s", self.client_address, exc)
                return
            if payload is None:
                return
            text = payload.decode(self.server.encoding, errors="replace")
            try:
                verdict = self.server.handler(text)
                ack = build_ack(text, verdict)
            except AckMismatch as exc:  # not HL7 at all: nothing to acknowledge
                logger.warning("MLLP listener got a non-HL7 frame: %s", exc)
                continue
            self.server.record(text, verdict)
            sock.sendall(frame(ack, self.server.encoding))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: Handler, encoding: str, idle_timeout: float
    ) -> None:
        super().__init__(address, _ConnectionHandler)
        self.handler = handler
        self.encoding = encoding
        self.idle_timeout = idle_timeout
        self.lock = threading.Lock()
        self.received: list[tuple[str, Verdict]] = []

    def record(self, text: str, verdict: Verdict) -> None:
        with self.lock:
            self.received.append((text, verdict))


class MLLPListener:
    """A threaded MLLP listener that answers every message with the handler's verdict
    (default: AA). Several messages may share a connection; each connection has its own
    thread. Use as a context manager, or ``start()`` / ``stop()``.

        with MLLPListener(port=0) as listener:
            send(message, "127.0.0.1", listener.port)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: Handler = accept_all,
        *,
        encoding: str = "utf-8",
        idle_timeout: float = 60.0,
    ) -> None:
        self._server = _Server((host, port), handler, encoding, idle_timeout)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def received(self) -> list[tuple[str, Verdict]]:
        """The messages received so far with the verdict each got (a copy)."""
        with self._server.lock:
            return list(self._server.received)

    def start(self) -> MLLPListener:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"mllp-listener-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` (from another thread) or Ctrl-C."""
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving (if started with ``start()``) and close the listening socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MLLPListener:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
