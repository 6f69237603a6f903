"""STOW-RS into a running node on loopback: the same contract as C-STORE (durable, indexed,
routed and completed), the PS3.18 answers, and a body that is streamed, never held."""

from __future__ import annotations

import io
import logging
import os
import struct
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from factories import radiograph, write
from nodekit import RunningNode
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, text

from dicom_node.db.models import Instance, StudyState
from dicom_node.dicomweb.auth import Credentials

pytestmark = pytest.mark.integration

StartNode = Callable[..., RunningNode]
BOUNDARY = "gazex-test-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
PREAMBLE = b"\x00" * 128 + b"DICM"
MIB = 1 << 20

REFERENCED = "00081199"
FAILED = "00081198"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"
SOP_INSTANCE = "00081155"


def _base(handle: RunningNode) -> str:
    assert handle.node.http is not None
    return f"http://127.0.0.1:{handle.node.http.port}/dicom-web"


def _encoded(ds: Dataset) -> bytes:
    """A Part 10 file with preamble, as a PACS keeps it."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _body(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    out = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
        for kind, data in parts
    )
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _post(handle: RunningNode, body: bytes, path: str = "/studies") -> httpx.Response:
    return httpx.post(
        _base(handle) + path, content=body, headers={"Content-Type": RELATED}, timeout=30
    )


def _items(response: httpx.Response, sequence: str) -> list[dict[str, dict[str, list[object]]]]:
    value: list[dict[str, dict[str, list[object]]]] = (
        response.json().get(sequence, {}).get("Value", [])
    )
    return value


def _failure_reasons(response: httpx.Response) -> list[object]:
    return [item[FAILURE_REASON]["Value"][0] for item in _items(response, FAILED)]


def _instances(handle: RunningNode) -> list[Instance]:
    with handle.sessions() as session:
        return list(session.scalars(select(Instance)))


def _left_behind(handle: RunningNode) -> list[Path]:
    """Every file in the spool: instances and temporary files alike."""
    return [p for p in handle.node.spool.root.rglob("*") if p.is_file()]


def _received(handle: RunningNode) -> float:
    value = handle.node.metrics.registry.get_sample_value("gazex_instances_received_total")
    return value or 0.0


def test_dicomweb_client_study_is_stored_indexed_and_dispatched(start_node: StartNode) -> None:
    """A study sent with dicomweb-client is in the spool and the database before the answer,
    lists every instance with its RetrieveURL, and completes and is dispatched like a
    C-STORE association's study."""
    handle = start_node(dicomweb__allow_anonymous=True)
    study, series = generate_uid(), generate_uid()
    datasets = [radiograph(study=study, series=series, seed=i) for i in range(3)]
    sent = {}
    for ds in datasets:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds)  # what dicomweb-client sends: file meta, no preamble
        sent[ds.SOPInstanceUID] = buffer.getvalue()

    answer = DICOMwebClient(url=_base(handle)).store_instances(datasets)

    # dicomweb-client sends a Host header without the port: the URL follows the Host.
    assert answer.RetrieveURL.endswith(f"/dicom-web/studies/{study}")
    assert "FailedSOPSequence" not in answer
    assert {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence} == set(sent)
    for item in answer.ReferencedSOPSequence:
        assert item.RetrieveURL.endswith(
            f"/studies/{study}/series/{series}/instances/{item.ReferencedSOPInstanceUID}"
        )
    rows = _instances(handle)
    assert {row.SOPInstanceUID for row in rows} == set(sent)
    for row in rows:
        assert row.calling_ae == "DICOMWEB"
        assert row.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (row.Modality, row.BodyPartExamined, row.ViewPosition) == ("DX", "CHEST", "PA")
        stored = handle.node.spool.absolute(row.path).read_bytes()
        # A Part 10 stream without preamble gets one; the rest is kept as sent.
        assert stored == PREAMBLE + sent[row.SOPInstanceUID]
        assert row.size == len(stored)
        assert pydicom.dcmread(handle.node.spool.absolute(row.path)).SOPInstanceUID == (
            row.SOPInstanceUID
        )
    assert _received(handle) == 3
    queued = handle.wait_for_study(study, lambda s: s.state is StudyState.QUEUED)
    assert queued.calling_ae == "DICOMWEB"


def test_stored_file_is_byte_identical_and_a_resend_is_a_no_op(
    start_node: StartNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Part 10 file stored by STOW-RS is byte for byte the file sent, and the same file
    sent again is answered as stored without a second row; the peer's AE is the caller,
    and no log line names the patient."""
    caplog.set_level(logging.DEBUG)
    handle = start_node()
    Credentials(handle.sessions).add_basic("PACS", "pacs", "correct horse battery")
    path = write(radiograph(), tmp_path)
    original = path.read_bytes()
    auth = ("pacs", "correct horse battery")

    for _ in range(2):
        response = httpx.post(
            _base(handle) + "/studies",
            content=_body(("application/dicom", original)),
            headers={"Content-Type": RELATED},
            auth=auth,
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom+json"
        assert len(_items(response, REFERENCED)) == 1

    (row,) = _instances(handle)
    assert row.calling_ae == "STORESCU"
    assert handle.node.spool.absolute(row.path).read_bytes() == original
    assert not list(handle.node.spool.root.rglob("*.partial"))
    assert "SECRET-PID-4711" not in caplog.text and "Müller" not in caplog.text
    assert "STOW-RS from STORESCU: 1 stored, 0 failed" in caplog.text


def test_wrong_content_types_get_415(start_node: StartNode) -> None:
    """A body that is not multipart/related, or whose type is not application/dicom, is
    refused with 415 before it is read."""
    handle = start_node(dicomweb__allow_anonymous=True)
    data = _encoded(radiograph())
    for content_type in (
        "application/dicom",
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
    ):
        response = httpx.post(
            _base(handle) + "/studies",
            content=_body(("application/dicom", data)),
            headers={"Content-Type": content_type},
        )
        assert response.status_code == 415, content_type
        assert "error" in response.json()
    assert _instances(handle) == []


def test_malformed_bodies_get_400_and_leave_nothing(start_node: StartNode) -> None:
    """No boundary, a body cut off before its closing boundary, and a body without parts
    get 400 with a one-line JSON error; no file, temporary file or row is left."""
    handle = start_node(dicomweb__allow_anonymous=True)
    good = _encoded(radiograph())

    no_boundary = httpx.post(
        _base(handle) + "/studies",
        content=_body(("application/dicom", good)),
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert no_boundary.status_code == 400
    assert "boundary" in no_boundary.json()["error"]

    # Two complete parts, then a third cut off: none of the three is stored.
    whole = _body(("application/dicom", good), ("application/dicom", _encoded(radiograph())))
    truncated = _post(
        handle,
        whole[: -len(f"--{BOUNDARY}--\r\n")]
        + _body(("application/dicom", _encoded(radiograph())))[:3000],
    )
    assert truncated.status_code == 400
    assert "truncated" in truncated.json()["error"]

    empty = _post(handle, f"--{BOUNDARY}--\r\n".encode())
    assert empty.status_code == 400

    assert _instances(handle) == []
    assert _left_behind(handle) == []


def test_oversized_part_gets_413_and_leaves_nothing(start_node: StartNode) -> None:
    """A part over dicomweb.max_instance_mb refuses the whole request with 413, and nothing
    of it or of the parts before it is kept."""
    handle = start_node(dicomweb__allow_anonymous=True, dicomweb__max_instance_mb=1)
    small = _encoded(radiograph())
    big = _encoded(radiograph(rows=1024, columns=1024))  # 2 MiB of pixel data
    assert len(big) > 2 * MIB

    response = _post(handle, _body(("application/dicom", small), ("application/dicom", big)))

    assert response.status_code == 413
    assert "max_instance_mb" in response.json()["error"]
    assert _instances(handle) == []
    assert _left_behind(handle) == []


def test_request_over_max_request_mb_gets_413(start_node: StartNode) -> None:
    """A body over dicomweb.max_request_mb gets 413, whether its length is declared or it
    is streamed in chunks."""
    handle = start_node(dicomweb__allow_anonymous=True, dicomweb__max_request_mb=1)
    body = _body(*[("application/dicom", _encoded(radiograph(rows=256, columns=256)))] * 10)
    assert len(body) > MIB

    declared = _post(handle, body)
    streamed = httpx.post(
        _base(handle) + "/studies",
        content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
        headers={"Content-Type": RELATED},
    )

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert _instances(handle) == []
    assert _left_behind(handle) == []


def test_parts_that_are_not_dicom_fail_with_409(start_node: StartNode) -> None:
    """A request whose parts are all unusable (bytes that are not DICOM, a data set without
    file meta, a part of another media type) gets 409 with a FailedSOPSequence item
    for each, reason 0xC000, and nothing is stored."""
    handle = start_node(dicomweb__allow_anonymous=True)
    ds = radiograph()
    del ds.file_meta
    bare = io.BytesIO()
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)

    response = _post(
        handle,
        _body(
            ("application/dicom", b"this is not DICOM at all" * 20),
            ("application/dicom", bare.getvalue()),
            ("text/plain", b"hello"),
        ),
    )

    assert response.status_code == 409, response.text
    assert _failure_reasons(response) == [0xC000, 0xC000, 0xC000]
    assert REFERENCED not in response.json()
    assert _instances(handle) == []
    assert _left_behind(handle) == []


def test_a_sop_class_the_node_does_not_store_fails_with_0122(start_node: StartNode) -> None:
    """An instance of a SOP class that the DICOM port would not accept either (not a storage
    SOP class) fails with 0x0122 and is not stored."""
    handle = start_node(dicomweb__allow_anonymous=True)
    ds = radiograph()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"  # Verification

    response = _post(handle, _body(("application/dicom", _encoded(ds))))

    assert response.status_code == 409, response.text
    assert _failure_reasons(response) == [0x0122]
    assert _instances(handle) == []
    assert _left_behind(handle) == []


def test_good_and_bad_parts_get_202(start_node: StartNode) -> None:
    """Good parts are stored and listed, bad ones listed as failed, and the answer is 202."""
    handle = start_node(dicomweb__allow_anonymous=True)
    good = radiograph()
    response = _post(
        handle,
        _body(("application/dicom", _encoded(good)), ("application/dicom", b"\x00" * 400)),
    )

    assert response.status_code == 202, response.text
    assert _failure_reasons(response) == [0xC000]
    (stored,) = _items(response, REFERENCED)
    assert stored[SOP_INSTANCE]["Value"] == [good.SOPInstanceUID]
    assert [row.SOPInstanceUID for row in _instances(handle)] == [good.SOPInstanceUID]


def test_instance_of_another_study_than_the_url_fails_with_a900(start_node: StartNode) -> None:
    """POST /studies/{study}: an instance of another study fails with 0xA900, one of that
    study is stored, and the answer's RetrieveURL is the URL's study."""
    handle = start_node(dicomweb__allow_anonymous=True)
    study = generate_uid()
    ours, theirs = radiograph(study=study), radiograph()

    response = _post(
        handle,
        _body(("application/dicom", _encoded(ours)), ("application/dicom", _encoded(theirs))),
        path=f"/studies/{study}",
    )

    assert response.status_code == 202, response.text
    assert _failure_reasons(response) == [0xA900]
    (failed,) = _items(response, FAILED)
    assert failed[SOP_INSTANCE]["Value"] == [theirs.SOPInstanceUID]
    assert response.json()[RETRIEVE_URL]["Value"] == [f"{_base(handle)}/studies/{study}"]
    assert [row.SOPInstanceUID for row in _instances(handle)] == [ours.SOPInstanceUID]

    alone = _post(handle, _body(("application/dicom", _encoded(theirs))), f"/studies/{study}")
    assert alone.status_code == 409
    assert _failure_reasons(alone) == [0xA900]


def _huge_instance(pixel_bytes: int) -> tuple[Dataset, Iterator[bytes]]:
    """A radiograph with ``pixel_bytes`` of pixel data, as a lazily generated multipart
    body: the header, then the pixel data a MiB at a time (always the same block)."""
    ds = radiograph(rows=1, columns=1)
    side = int((pixel_bytes // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    del ds.PixelData
    length = side * side * 2
    header = _encoded(ds) + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", length)

    def chunks() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + header
        block = b"\x5a" * MIB
        left = length
        while left:
            yield block[: min(left, MIB)]
            left -= min(left, MIB)
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return ds, chunks()


@pytest.mark.slow
def test_a_200_mb_body_is_streamed_to_disk_not_held_in_memory(start_node: StartNode) -> None:
    """A 200 MiB instance is stored whole while the peak of memory the process allocates
    (client, server and parser together, traced by tracemalloc) stays under 16 MiB."""
    handle = start_node(dicomweb__allow_anonymous=True, dicomweb__max_instance_mb=512)
    ds, chunks = _huge_instance(200 * MIB)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = httpx.post(
            _base(handle) + "/studies",
            content=chunks,
            headers={"Content-Type": RELATED},
            timeout=120,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert response.status_code == 200, response.text
    (row,) = _instances(handle)
    assert row.SOPInstanceUID == ds.SOPInstanceUID
    assert row.size > 200 * MIB
    assert handle.node.spool.absolute(row.path).stat().st_size == row.size
    assert peak < 16 * MIB, f"peak traced allocation {peak / MIB:.1f} MiB for a 200 MiB body"
    handle.node.spool.absolute(row.path).unlink()  # 200 MiB less for tmp_path to keep


def test_database_unavailable_answers_503_and_leaves_nothing(start_node: StartNode) -> None:
    """With the instance table gone the answer is 503 with Retry-After, and nothing is left
    in the spool; once it is back, the same request stores the instance."""
    handle = start_node(dicomweb__allow_anonymous=True)
    body = _body(("application/dicom", _encoded(radiograph())))
    with handle.node.engine.begin() as conn:
        conn.execute(text("ALTER TABLE instance RENAME TO instance_away"))
    try:
        response = _post(handle, body)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        assert "database" in response.json()["error"]
        assert _left_behind(handle) == []
    finally:
        with handle.node.engine.begin() as conn:
            conn.execute(text("ALTER TABLE instance_away RENAME TO instance"))
    assert _post(handle, body).status_code == 200
    assert len(_instances(handle)) == 1


@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "spool"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_answers_503_and_leaves_nothing(start_node: StartNode, tiny_spool: Path) -> None:
    """When the spool fills up while a body is read, the answer is 503 with Retry-After and
    no temporary file or row is left; a request that fits is stored afterwards."""
    handle = start_node(
        dicomweb__allow_anonymous=True, spool__path=tiny_spool, spool__min_free_mb=0
    )
    parts = [("application/dicom", _encoded(radiograph(rows=256, columns=256)))] * 3  # 384 KiB

    response = _post(handle, _body(*parts))

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert _instances(handle) == []
    assert _left_behind(handle) == []
    assert _post(handle, _body(parts[0])).status_code == 200
