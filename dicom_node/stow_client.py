"""The node as a STOW-RS client: results to a DICOMweb destination (PS3.18 10.5).

A peer with a DICOMweb base URL gets its files by ``POST <url>/studies``, a
``multipart/related; type="application/dicom"`` body of the files' bytes as they are
stored (never decoded and re-encoded: what the archive gets is byte for byte what we
wrote, as with C-STORE). A batch goes in as few requests as fit ``MAX_REQUEST_BYTES``
each, so a big batch never sits in memory whole.

The Store Instances Response says per instance what happened; it becomes one
:class:`~dicom_node.scu.SendResult` per file, read by the outbox exactly as a C-STORE
response:

- in the Referenced SOP Sequence: stored (status 0x0000, or its Warning Reason);
- in the Failed SOP Sequence: its Failure Reason, a DIMSE status (0xA7xx: retry);
- a request refused as a whole: HTTP 408, 429, 5xx, a refused connection or a timeout may
  pass (retry); any other 4xx (401 wrong credentials, 403, 413, 415...) will not, so the
  row fails at once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import requests
from dicomweb_client import session_utils
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dicom_node.errors import DeliveryError
from dicom_node.peers import PeerInfo
from dicom_node.scu import SendResult, Timeouts

logger = logging.getLogger(__name__)

#: The most file bytes one STOW-RS request carries (a single larger file goes alone).
MAX_REQUEST_BYTES = 50 * 2**20
#: 4xx answers to a whole request that a later try may not get again (a busy server).
_RETRY_HTTP = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
_RESPONSE_TYPES = ("application/dicom+json", "application/json")
#: Processing failure: an instance the server names as failed without saying why.
_PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class StowResult(SendResult):
    """A file whose request the server refused as a whole (no status of its own):
    ``retry`` says whether that refusal may pass (HTTP 5xx, 408, 429, no connection)."""

    retry: bool = True

    @property
    def transient(self) -> bool:
        return self.retry and super().transient


def send(peer: PeerInfo, paths: Sequence[Path], timeouts: Timeouts) -> list[SendResult]:
    """STOW-RS ``paths`` to ``peer``'s DICOMweb service; one result per path, in order.

    Stops at the first request refused as a whole: the files not yet sent get the same
    result (a destination that is down is not tried once per request).
    """
    if peer.dicomweb_url is None:
        raise ValueError(f"{peer.name} has no DICOMweb URL")
    url = f"{peer.dicomweb_url.rstrip('/')}/studies"
    results: dict[Path, SendResult] = {}
    sendable: list[tuple[Path, str, int]] = []
    for path in paths:
        try:
            meta = read_file_meta_info(path)
            sendable.append((path, str(meta.MediaStorageSOPInstanceUID), path.stat().st_size))
        except (InvalidDicomError, OSError, AttributeError) as exc:
            results[path] = SendResult(path, None, f"unreadable: {type(exc).__name__}")
    refusal: str | None = None
    retry = True
    with _session(peer) as session:
        for batch in _batches(sendable):
            if refusal is not None:
                results.update((p, StowResult(p, None, refusal, retry=retry)) for p, _, _ in batch)
                continue
            try:
                parts = [p.read_bytes() for p, _, _ in batch]
            except OSError as exc:
                error = f"unreadable: {type(exc).__name__}"
                results.update((p, SendResult(p, None, error)) for p, _, _ in batch)
                continue
            try:
                response = _post(session, url, parts, timeouts)
            except (requests.RequestException, OSError) as exc:
                what = (
                    "cannot reach"
                    if isinstance(exc, requests.ConnectionError)
                    else "no answer from"
                )
                refusal = f"{what} {peer.dicomweb_url}: {type(exc).__name__}"
                results.update((p, StowResult(p, None, refusal)) for p, _, _ in batch)
                continue
            finally:
                del parts  # one batch in memory at a time, not two
            answered = _results(response, batch)
            results.update(answered)
            if all(isinstance(r, StowResult) for r in answered.values()):
                refusal = _describe(response)  # refused as a whole: send no more
                retry = _retryable(response.status_code)
    for result in results.values():
        if not result.ok:
            logger.warning(
                "STOW-RS to %s failed: %s",
                peer.name,
                f"status 0x{result.status:04X}" if result.status is not None else result.error,
            )
    return [results[path] for path in paths]


def echo(peer: PeerInfo, timeouts: Timeouts) -> tuple[int, float]:
    """The DICOMweb counterpart of C-ECHO: a QIDO-RS search for one study with the peer's
    credentials; returns (HTTP status, round trip in ms). Raises DeliveryError when the
    URL cannot be reached."""
    if peer.dicomweb_url is None:
        raise ValueError(f"{peer.name} has no DICOMweb URL")
    url = f"{peer.dicomweb_url.rstrip('/')}/studies"
    started = time.monotonic()
    with _session(peer) as session:
        try:
            response = session.get(
                url,
                params={"limit": "1"},
                timeout=(timeouts.connect, timeouts.network),
                allow_redirects=False,
            )
        except (requests.RequestException, OSError) as exc:
            raise DeliveryError(f"cannot reach {peer.dicomweb_url}: {type(exc).__name__}") from None
    return response.status_code, (time.monotonic() - started) * 1000


def _session(peer: PeerInfo) -> requests.Session:
    """A session that presents the peer's credentials (never logged)."""
    kind, _, secret = (peer.dicomweb_auth or "").partition(":")
    if kind == "basic":
        user, _, password = secret.partition(":")
        session = session_utils.create_session_from_user_pass(user, password)
    else:
        session = session_utils.create_session()
        if kind == "bearer":
            session.headers["Authorization"] = f"Bearer {secret}"
    session.headers["Accept"] = "application/dicom+json"
    return session


def _batches(sendable: list[tuple[Path, str, int]]) -> Iterator[list[tuple[Path, str, int]]]:
    """Consecutive files of at most MAX_REQUEST_BYTES together (a larger one alone)."""
    batch: list[tuple[Path, str, int]] = []
    size = 0
    for entry in sendable:
        if batch and size + entry[2] > MAX_REQUEST_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry[2]
    if batch:
        yield batch


def _post(
    session: requests.Session, url: str, parts: list[bytes], timeouts: Timeouts
) -> requests.Response:
    """One STOW-RS request of ``parts``, each a DICOM file as stored (PS3.18 8.6.1.2)."""
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in part for part in parts):  # RFC 2046: not in any part
        boundary = uuid.uuid4().hex
    delimiter = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return session.post(
        url,
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=(timeouts.connect, timeouts.network),
        allow_redirects=False,
    )


def _answered(response: requests.Response) -> bool:
    """Whether the server took the request (it may still have failed some instances).

    409 Conflict is how PS3.18 says "none of them stored": an answer, with reasons.
    """
    return response.ok or response.status_code == HTTPStatus.CONFLICT


def _retryable(status_code: int) -> bool:
    return status_code >= 500 or status_code in _RETRY_HTTP or status_code < 400


def _describe(response: requests.Response) -> str:
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason or ""
    return f"HTTP {response.status_code} {phrase}".rstrip()


def _store_response(response: requests.Response) -> Dataset | None:
    """The Store Instances Response, when the body carries one in DICOM JSON."""
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type not in _RESPONSE_TYPES or not response.content:
        return None
    try:
        return Dataset.from_json(response.content.decode("utf-8"))
    except (ValueError, TypeError, KeyError, json.JSONDecodeError):
        logger.warning("unreadable Store Instances Response (%s)", _describe(response))
        return None


def _results(
    response: requests.Response, batch: list[tuple[Path, str, int]]
) -> dict[Path, SendResult]:
    """One result per file of a request, from the instances the response names."""
    answer = _store_response(response)
    stored: dict[str, int] = {}
    failed: dict[str, int] = {}
    if answer is not None:
        for item in answer.get("ReferencedSOPSequence", []):
            warning = item.get("WarningReason")
            stored[str(item.get("ReferencedSOPInstanceUID", ""))] = int(warning or 0)
        for item in answer.get("FailedSOPSequence", []):
            reason = item.get("FailureReason")
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = int(
                reason if reason is not None else _PROCESSING_FAILURE
            )
    results: dict[Path, SendResult] = {}
    for path, SOPInstanceUID, _ in batch:
        if SOPInstanceUID in failed:
            results[path] = SendResult(path, failed[SOPInstanceUID])
        elif SOPInstanceUID in stored:
            results[path] = SendResult(path, stored[SOPInstanceUID])
        elif _answered(response):
            results[path] = SendResult(
                path, None, f"{_describe(response)}: not in the Store Instances Response"
            )
        else:
            results[path] = StowResult(
                path, None, _describe(response), retry=_retryable(response.status_code)
            )
    return results
