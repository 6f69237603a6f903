"""MLLP over loopback: the ORU^R01 is ACKed by a real listener; failures are told apart."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import hl7
import hl7_factories as f
import pytest

from dicom_node import errors
from workers.hl7 import mllp
from workers.hl7.messages import build_oru_r01, encode, to_er7


def _oru(message_control_id: str | None = None) -> bytes:
    ds = f.make_source(patient_name="Gómez^José", charset="ISO_IR 192")
    result = f.make_result(ds, findings=f.every_finding())
    return encode(build_oru_r01(result, ds, message_control_id=message_control_id, **f.PARTIES))


def test_round_trip_is_acknowledged(listener: mllp.MLLPListener) -> None:
    """A real listener receives the exact message and the client gets its AA."""
    message = _oru()
    ack = mllp.send(message, listener.host, listener.port)
    assert ack.accepted and ack.code == "AA"
    assert ack.control_id == mllp.message_control_id(message.decode())
    [(received, verdict)] = listener.received
    assert received == message.decode("utf-8")
    assert verdict.code == "AA"
    parsed = hl7.parse(ack.raw)
    assert str(parsed.segment("MSA")[2]) == ack.control_id
    assert str(parsed.segment("MSH")[9]) == "ACK^R01^ACK"
    assert str(parsed.segment("MSH")[5]) == "GAZEX"  # the ACK goes back to the sender


def test_listener_serves_several_messages(listener: mllp.MLLPListener) -> None:
    """Consecutive sends are each acknowledged with their own control id."""
    ids = [f"MSG-{n}" for n in range(3)]
    acks = [mllp.send(_oru(i), listener.host, listener.port) for i in ids]
    assert [a.control_id for a in acks] == ids
    assert len(listener.received) == 3


def test_dead_listener_is_retried_with_backoff_then_fails(dead_port: int) -> None:
    """Nothing listening: the client retries with doubling delays, then raises a transport
    error (an OSError, so the CLI exits 1)."""
    delays: list[float] = []
    with pytest.raises(errors.MLLPTransportError, match="after 3 attempts") as caught:
        mllp.send(_oru(), "127.0.0.1", dead_port, retries=2, backoff=0.25, sleep=delays.append)
    assert delays == [0.25, 0.5]
    assert isinstance(caught.value, OSError)


def test_a_transport_failure_then_a_listener_succeeds(dead_port: int) -> None:
    """When the listener comes up during the backoff, the retry is acknowledged."""
    started: list[mllp.MLLPListener] = []

    def bring_up(_delay: float) -> None:
        started.append(mllp.MLLPListener("127.0.0.1", dead_port).start())

    try:
        ack = mllp.send(_oru(), "127.0.0.1", dead_port, retries=1, sleep=bring_up)
        assert ack.code == "AA"
        assert len(started) == 1 and len(started[0].received) == 1
    finally:
        for listener in started:
            listener.stop()


@pytest.mark.parametrize(
    ("code", "error"),
    [("AR", errors.AckRejected), ("AE", errors.AckApplicationError), ("CR", errors.AckRejected)],
)
def test_negative_acks_fail_clearly_and_are_not_resent(
    code: str, error: type[errors.AckError]
) -> None:
    """AR (and AE) raise their own AckError with the peer's text; the message is sent once."""
    with mllp.MLLPListener(handler=lambda _m: mllp.Verdict(code, "unknown order")) as peer:
        with pytest.raises(error, match="unknown order") as caught:
            mllp.send(_oru(), peer.host, peer.port, retries=3, sleep=pytest.fail)
        assert len(peer.received) == 1
    assert caught.value.ack is not None and caught.value.ack.code == code
    assert isinstance(caught.value, ValueError)


@pytest.fixture
def canned_peer() -> Iterator[tuple[int, list[bytes]]]:
    """A raw peer that answers each connection with the next canned bytes, then closes."""
    answers: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                while mllp.END_BLOCK not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if answers:
                    answer = answers.pop(0)
                    if answer == b"SILENT":
                        time.sleep(1.0)
                    else:
                        conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], answers
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_ack_for_another_message_is_a_mismatch(canned_peer: tuple[int, list[bytes]]) -> None:
    """An ACK whose MSA-2 is not our MSH-10 raises AckMismatch."""
    port, answers = canned_peer
    answers.append(mllp.frame("MSH|^~\\&|RIS|H|GAZEX|N|20250101||ACK|1|P|2.5.1\rMSA|AA|OTHER-ID\r"))
    with pytest.raises(errors.AckMismatch, match="OTHER-ID"):
        mllp.send(_oru("MINE"), "127.0.0.1", port, retries=0)


def test_answer_without_msa_is_a_mismatch(canned_peer: tuple[int, list[bytes]]) -> None:
    """An answer that is no ACK raises AckMismatch."""
    port, answers = canned_peer
    answers.append(mllp.frame("MSH|^~\\&|RIS|H|GAZEX|N|20250101||ADT^A01|1|P|2.5.1\r"))
    with pytest.raises(errors.AckMismatch, match="no MSA"):
        mllp.send(_oru(), "127.0.0.1", port, retries=0)


def test_silent_peer_hits_the_read_timeout(canned_peer: tuple[int, list[bytes]]) -> None:
    """A peer that never answers is a transport error after the read timeout."""
    port, answers = canned_peer
    answers.append(b"SILENT")
    started = time.monotonic()
    with pytest.raises(errors.MLLPTransportError, match="timed out"):
        mllp.send(_oru(), "127.0.0.1", port, read_timeout=0.3, retries=0)
    assert time.monotonic() - started < 5


def test_peer_closing_without_ack_is_a_transport_error(
    canned_peer: tuple[int, list[bytes]],
) -> None:
    """A peer that closes the connection without a full ACK is retried, then fails."""
    port, answers = canned_peer
    answers += [b"\x0bMSH|^~\\&|half an ack", b"\x0bMSH|^~\\&|half an ack"]
    with pytest.raises(errors.MLLPTransportError):
        mllp.send(_oru(), "127.0.0.1", port, retries=1, sleep=lambda _d: None)


def test_ack_parsing_reads_err_text_and_enhanced_codes() -> None:
    """MSA-3 or, when empty, the ERR segment gives the reason; CA counts as accepted."""
    ack = mllp.parse_ack("MSH|^~\\&|A|B|C|D|1||ACK|9|P|2.5.1\rMSA|AE|X1\rERR|||207^bad^HL70357\r")
    assert (ack.code, ack.control_id) == ("AE", "X1")
    assert "207" in ack.text
    assert mllp.check_ack(mllp.parse_ack("MSH|^~\\&|A\rMSA|CA|X2"), "X2").accepted
    with pytest.raises(errors.AckMismatch, match="not an HL7"):
        mllp.parse_ack("garbage")


def test_frame_uses_cr_segment_separators() -> None:
    """Framing wraps in VT ... FS CR and turns LF/CRLF separators into CR."""
    assert mllp.frame("MSH|a\nPID|b\r\nOBX|c") == b"\x0bMSH|a\rPID|b\rOBX|c\x1c\r"


def test_encoded_message_round_trips_through_to_er7() -> None:
    """encode() is to_er7() in UTF-8."""
    ds = f.make_source(patient_name="Łukasz^Żółć", charset="ISO_IR 192")
    message = build_oru_r01(f.make_result(ds), ds, **f.PARTIES)
    assert encode(message).decode("utf-8") == to_er7(message)
