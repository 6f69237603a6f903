"""``gazex hl7 send`` and ``gazex hl7 listen`` against real loopback peers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import hl7_factories as f
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.cli import main
from workers.hl7 import mllp


@pytest.fixture
def saved_result(tmp_path: Path) -> tuple[Path, Path]:
    """A result JSON and its source image on disk."""
    ds = f.make_source(patient_name="Gómez^José", charset="ISO_IR 192")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    image = tmp_path / "image.dcm"
    ds.save_as(image, enforce_file_format=True)
    result = tmp_path / "result.json"
    result.write_text(f.make_result(ds, findings=f.every_finding()).to_json(), encoding="utf-8")
    return result, image


def _send_args(port: int, saved: tuple[Path, Path], *extra: str) -> list[str]:
    result, image = saved
    return [
        "hl7",
        "send",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--result",
        str(result),
        "--source",
        str(image),
        *extra,
    ]


def test_send_prints_the_ack(
    listener: mllp.MLLPListener,
    saved_result: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``gazex hl7 send`` builds the ORU^R01 from a saved result and exits 0 on AA."""
    args = _send_args(listener.port, saved_result, "--receiving-facility", "XRAY")
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("AA ")
    [(message, _)] = listener.received
    assert "|RIS|XRAY|" in message
    assert json.loads(saved_result[0].read_text())["source"]["StudyInstanceUID"] in message


def test_send_exits_2_on_ar(
    saved_result: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An AR is a clear one-line failure with exit code 2."""
    with mllp.MLLPListener(handler=lambda _m: mllp.Verdict("AR", "closed order")) as peer:
        assert main(_send_args(peer.port, saved_result)) == 2
    assert "rejected" in capsys.readouterr().err


def test_send_exits_1_when_nobody_listens(
    dead_port: int, saved_result: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No listener: exit code 1 after the retries, with the peer named."""
    assert main(_send_args(dead_port, saved_result, "--retries", "0")) == 1
    assert f"127.0.0.1:{dead_port}" in capsys.readouterr().err


def test_send_a_message_file(listener: mllp.MLLPListener, tmp_path: Path) -> None:
    """``--message`` sends an ER7 file as it is (LF separators become CR)."""
    path = tmp_path / "msg.hl7"
    path.write_text("MSH|^~\\&|A|B|C|D|20250101||ADT^A01|F-1|P|2.5.1\nPID|1||X\n")
    args = [
        "hl7",
        "send",
        "--host",
        "127.0.0.1",
        "--port",
        str(listener.port),
        "--message",
        str(path),
    ]
    assert main(args) == 0
    assert listener.received[0][0] == "MSH|^~\\&|A|B|C|D|20250101||ADT^A01|F-1|P|2.5.1\rPID|1||X\r"


@pytest.mark.integration
def test_listen_command_prints_and_acks(dead_port: int) -> None:
    """``gazex hl7 listen`` in its own process prints the message and answers AA."""
    command = [sys.executable, "-m", "dicom_node.cli", "hl7", "listen", "--port", str(dead_port)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
    )
    try:
        assert process.stderr is not None
        assert "listening" in process.stderr.readline()
        ds = f.make_source(patient_name="Gómez^José", charset="ISO_IR 192")
        from workers.hl7.messages import build_oru_r01, encode

        message = encode(build_oru_r01(f.make_result(ds), ds, **f.PARTIES))
        ack = mllp.send(message, "127.0.0.1", dead_port, retries=5, backoff=0.2)
        assert ack.code == "AA"
        time.sleep(0.2)
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert "MSH|^~\\&|GAZEX|NODE-1|RIS|St. Elsewhere|" in out
    assert "PID|1||PID\\F\\42^^^HOSP||Gómez^José|" in out
