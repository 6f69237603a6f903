"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}`` with a
``multipart/related; type="application/dicom"`` body, under the C-STORE contract.

How a request goes:

1. The body is read as a stream (``dicomweb.multipart``): each part is written, as it
   arrives, to a temporary file in the spool (``Spool.staging_file``), never held whole in
   memory. A part that is not ``application/dicom`` is not written at all (it fails with
   0xC000). A Part 10 stream sent without its 128-byte preamble and ``DICM`` prefix (as
   dicomweb-client and pydicom's ``dcmwrite`` send it) gets them in front, so every file
   in the spool is a Part 10 file that ``dcmread`` opens without ``force``; otherwise the
   bytes are kept exactly as sent.
2. Only once the whole body has arrived well-formed is anything stored: a malformed or
   truncated body (400), a part over ``dicomweb.max_instance_mb`` or a body over
   ``dicomweb.max_request_mb`` (413) store nothing and leave nothing behind. (A request is
   all-or-nothing up to here; a client resends it whole anyway.)
3. Each part in turn: its header is read (``dcmread``, up to the pixel data) and checked
   (file meta with a Transfer Syntax UID, SOP Class and Instance, Study and Series UIDs;
   the study the URL names), then ``Receiver.store_file`` adopts the temporary file by
   rename (fsync, rename, folder fsync) and indexes it, before the answer, with the same
   duplicate / replace rules, routing (calling AE = the peer's), audit and completion as a
   C-STORE. Each request counts as one association for completion: its studies start
   their quiet period when it ends.
4. The answer is the Store Instances Response Module as ``application/dicom+json``: 200
   when all parts were stored, 202 when some failed, 409 when all failed. Out of disk or
   database (0xA700) stops the request: the parts not yet stored fail, and when none was
   stored the answer is 503 with Retry-After.

Errors that are not about a part answer a one-line JSON ``{"error": ...}``: 415 (not
``multipart/related``, or a ``type`` other than ``application/dicom``), 400, 413, 503.
Disk, database and pydicom work runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AllStoragePresentationContexts
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_node.dicomweb.context import DicomWebContext, calling_ae
from dicom_node.dicomweb.multipart import BodyTooLarge, MalformedBody, media_type, read_multipart
from dicom_node.errors import OutOfResources
from dicom_node.logs import bind
from dicom_node.receiver import ReceivedInstance, StoreOutcome
from dicom_node.spool import Spool, disk_error, short_hash, space_shortfall

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
RELATED = "multipart/related"
#: Seconds a client is asked to wait after a 503 (out of disk or database).
RETRY_AFTER = "30"
#: After a 413 the rest of the body is read and dropped, up to this many bytes, so the
#: client is reading when the answer comes; beyond it the connection is closed.
DRAIN_BYTES = 64 << 20
MIB = 1 << 20

#: FailureReason (0008,1197) values (PS3.18 table 10.5.3-1, PS3.4 annex GG).
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122

#: What the DICOM port accepts (the node's storage presentation contexts), STOW-RS too.
STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)

_PREAMBLE = b"\x00" * 128 + b"DICM"
_HEAD = len(_PREAMBLE)
_FILE_META_GROUP = b"\x02\x00"


class _StagedPart:
    """One part's bytes, written to a temporary file in the spool as they arrive (a
    ``multipart.PartSink``). Runs in the reader's worker thread."""

    def __init__(self, spool: Spool, headers: Mapping[str, str]) -> None:
        self.media_type = media_type(headers.get("content-type"))[0]
        self.is_dicom = self.media_type == DICOM
        self.path: Path | None = None
        self.complete = False
        self._spool = spool
        self._fd: int | None = None
        self._head = bytearray()

    def write(self, data: memoryview) -> None:
        if not self.is_dicom:
            return  # not kept: it fails whatever it holds
        if self._fd is None:
            take = _HEAD - len(self._head)
            self._head += data[:take]
            if len(self._head) < _HEAD:
                return
            self._open()
            data = data[take:]
        if data:
            self._write(data)

    def close(self) -> None:
        if self.is_dicom and self._fd is None:
            self._open()  # shorter than a preamble: kept, to fail when it is read
        self._close_fd()
        self.complete = True

    def discard(self) -> None:
        self._close_fd()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self.complete = False

    def _open(self) -> None:
        self.path = self._spool.staging_file("stow")
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise disk_error(exc) from exc
        head = bytes(self._head)
        self._head.clear()
        # A Part 10 stream without preamble (it starts with the file meta group): add one.
        if head[128:132] != b"DICM" and head.startswith(_FILE_META_GROUP):
            self._write(memoryview(_PREAMBLE))
        self._write(memoryview(head))

    def _write(self, data: memoryview) -> None:
        assert self._fd is not None
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            raise disk_error(exc) from exc

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


@dataclass(frozen=True)
class _Result:
    """What became of one part: stored (``outcome``) or failed (``failure``, ``why``)."""

    SOPClassUID: str = ""
    SOPInstanceUID: str = ""
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str = ""
    outcome: StoreOutcome | None = None
    failure: int | None = None
    why: str = ""


class _Refused(ValueError):
    """A part that is not stored; ``failure`` is its FailureReason."""

    def __init__(self, failure: int, why: str, result: _Result | None = None) -> None:
        super().__init__(why)
        self.failure = failure
        self.result = result if result is not None else _Result()


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def describe(path: Path, study_in_url: str | None) -> ReceivedInstance:
    """The facts of the Part 10 file at ``path`` (its header only); raises _Refused when it
    cannot be read or does not fit."""
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True)
        meta = ds.file_meta
        TransferSyntaxUID = _text(meta, "TransferSyntaxUID") if meta is not None else ""
        uids = {
            k: _text(ds, k)
            for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        }
        facts = {k: _text(ds, k).upper() for k in ("Modality", "BodyPartExamined", "ViewPosition")}
        media_class = _text(meta, "MediaStorageSOPClassUID") if meta is not None else ""
        media_instance = _text(meta, "MediaStorageSOPInstanceUID") if meta is not None else ""
    except Exception as exc:  # untrusted bytes: pydicom raises many kinds on them
        raise _Refused(CANNOT_UNDERSTAND, f"cannot be parsed ({type(exc).__name__})") from exc
    known = _Result(
        SOPClassUID=uids["SOPClassUID"],
        SOPInstanceUID=uids["SOPInstanceUID"],
        StudyInstanceUID=uids["StudyInstanceUID"],
        SeriesInstanceUID=uids["SeriesInstanceUID"],
    )
    if not TransferSyntaxUID:
        raise _Refused(CANNOT_UNDERSTAND, "not a Part 10 file (no file meta)", known)
    if not all(uids.values()):
        raise _Refused(DATA_SET_MISMATCH, "lacks SOP Class/Instance, Study or Series UID", known)
    if (media_class and media_class != uids["SOPClassUID"]) or (
        media_instance and media_instance != uids["SOPInstanceUID"]
    ):
        raise _Refused(DATA_SET_MISMATCH, "file meta and data set name other instances", known)
    if uids["SOPClassUID"] not in STORAGE_SOP_CLASSES:
        raise _Refused(SOP_CLASS_NOT_SUPPORTED, "not a storage SOP class", known)
    if study_in_url is not None and uids["StudyInstanceUID"] != study_in_url:
        raise _Refused(DATA_SET_MISMATCH, "belongs to another study than the URL names", known)
    return ReceivedInstance(**uids, TransferSyntaxUID=TransferSyntaxUID, **facts)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class StowService:
    """The STOW-RS endpoint, built once per node with its context."""

    def __init__(self, ctx: DicomWebContext) -> None:
        self.ctx = ctx
        # Completion keys of requests: negative, so never the id() of an association.
        self._requests = itertools.count(1)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/studies", self.store, methods=["POST"]),
            Route("/studies/{study}", self.store, methods=["POST"]),
        ]

    async def store(self, request: Request) -> Response:
        study_in_url: str | None = request.path_params.get("study")
        kind, params = media_type(request.headers.get("content-type"))
        if kind != RELATED or media_type(params.get("type", DICOM))[0] != DICOM:
            return _error(415, f'STOW-RS takes {RELATED}; type="{DICOM}"')
        boundary = params.get("boundary")
        if not boundary:
            return _error(400, "multipart/related without a boundary")
        settings = self.ctx.settings.dicomweb
        max_body = settings.max_request_mb * MIB
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            return _error(413, f"request body exceeds {settings.max_request_mb} MB")
        shortfall = space_shortfall(self.ctx.spool.root, self.ctx.settings.spool.min_free_mb)
        if shortfall is not None:
            logger.error("STOW-RS refused (503): %s", shortfall)
            return _error(503, "the node is out of disk space", {"Retry-After": RETRY_AFTER})

        parts: list[_StagedPart] = []

        def open_part(headers: Mapping[str, str]) -> _StagedPart:
            part = _StagedPart(self.ctx.spool, headers)
            parts.append(part)
            return part

        key = -next(self._requests)
        stream = request.stream()
        try:
            try:
                await read_multipart(
                    stream,
                    boundary,
                    open_part,
                    max_part_bytes=settings.max_instance_mb * MIB,
                    max_body_bytes=max_body,
                )
            except MalformedBody as exc:
                logger.warning("STOW-RS refused (400): %s", exc)
                return _error(400, str(exc))
            except BodyTooLarge as exc:
                logger.warning("STOW-RS refused (413): %s", exc)
                await _drain(stream)
                return _error(413, f"{exc} (dicomweb.max_instance_mb / max_request_mb)")
            except OutOfResources as exc:
                logger.error("STOW-RS refused (503): %s", exc)
                return _error(503, str(exc), {"Retry-After": RETRY_AFTER})
            except ClientDisconnect:
                logger.warning("STOW-RS client disconnected before the body was complete")
                return _error(400, "client disconnected")
            results = await anyio.to_thread.run_sync(
                self._store_parts, parts, calling_ae(request), key, study_in_url
            )
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._finish, parts, key)
        return self._answer(request, results, study_in_url)

    def _store_parts(
        self, parts: list[_StagedPart], calling: str, key: int, study_in_url: str | None
    ) -> list[_Result]:
        results: list[_Result] = []
        out_of_resources: str | None = None
        for part in parts:
            if out_of_resources is not None:
                results.append(_Result(failure=OUT_OF_RESOURCES, why=out_of_resources))
                continue
            try:
                results.append(self._store_part(part, calling, key, study_in_url))
            except OutOfResources as exc:
                out_of_resources = str(exc)
                logger.error("STOW-RS from %s stopped (0xA700): %s", calling, exc)
                results.append(_Result(failure=OUT_OF_RESOURCES, why=out_of_resources))
        return results

    def _store_part(
        self, part: _StagedPart, calling: str, key: int, study_in_url: str | None
    ) -> _Result:
        if not part.is_dicom or part.path is None:
            why = f"part is {part.media_type or 'untyped'}, not {DICOM}"
            logger.warning("STOW-RS part from %s failed (0xC000): %s", calling, why)
            return _Result(failure=CANNOT_UNDERSTAND, why=why)
        try:
            instance = describe(part.path, study_in_url)
        except _Refused as exc:
            logger.warning(
                "STOW-RS instance %s from %s failed (0x%04X): %s",
                short_hash(exc.result.SOPInstanceUID) if exc.result.SOPInstanceUID else "-",
                calling,
                exc.failure,
                exc,
            )
            return replace(exc.result, failure=exc.failure, why=str(exc))
        size = part.path.stat().st_size
        with bind(study=short_hash(instance.StudyInstanceUID)):
            outcome = self.ctx.receiver.store_file(part.path, instance, calling, key)
            if outcome is not StoreOutcome.DUPLICATE:
                part.path = None  # adopted into the spool
            logger.debug(
                "instance %s %s by STOW-RS (%d bytes)",
                short_hash(instance.SOPInstanceUID),
                outcome.value,
                size,
            )
        self.ctx.metrics.instance_received(size)
        return _Result(
            SOPClassUID=instance.SOPClassUID,
            SOPInstanceUID=instance.SOPInstanceUID,
            StudyInstanceUID=instance.StudyInstanceUID,
            SeriesInstanceUID=instance.SeriesInstanceUID,
            outcome=outcome,
        )

    def _finish(self, parts: list[_StagedPart], key: int) -> None:
        """Remove every temporary file not adopted, and end the request's "association"."""
        for part in parts:
            part.discard()
        try:
            self.ctx.completion.association_ended(key)
        except (SQLAlchemyError, OSError):
            # Studies stay receiving and the force-complete ceiling still completes them.
            logger.exception("could not start the quiet period after a STOW-RS request")

    def _answer(
        self, request: Request, results: list[_Result], study_in_url: str | None
    ) -> Response:
        stored = [r for r in results if r.outcome is not None]
        failed = [r for r in results if r.failure is not None]
        calling = calling_ae(request)
        logger.info("STOW-RS from %s: %d stored, %d failed", calling, len(stored), len(failed))
        short = [r for r in failed if r.failure == OUT_OF_RESOURCES]
        if short and not stored:
            return _error(503, short[0].why, {"Retry-After": RETRY_AFTER})
        base = f"{request.url.scheme}://{request.url.netloc}{self.ctx.settings.dicomweb.base_path}"
        studies = {r.StudyInstanceUID for r in stored}
        if study_in_url is not None:
            studies = {study_in_url}
        ds = Dataset()
        ds.RetrieveURL = f"{base}/studies/{next(iter(studies))}" if len(studies) == 1 else None
        if failed:
            ds.FailedSOPSequence = [_failed_item(r) for r in failed]
        if stored:
            ds.ReferencedSOPSequence = [_referenced_item(r, base) for r in stored]
        headers: dict[str, str] = {}
        if short:
            headers["Retry-After"] = RETRY_AFTER
        status = 200 if not failed else 202 if stored else 409
        return Response(
            json.dumps(ds.to_json_dict()),
            status_code=status,
            media_type=DICOM_JSON,
            headers=headers,
        )


def _referenced_item(result: _Result, base: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = result.SOPClassUID
    item.ReferencedSOPInstanceUID = result.SOPInstanceUID
    item.RetrieveURL = (
        f"{base}/studies/{result.StudyInstanceUID}/series/{result.SeriesInstanceUID}"
        f"/instances/{result.SOPInstanceUID}"
    )
    return item


def _failed_item(result: _Result) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = result.SOPClassUID or None
    item.ReferencedSOPInstanceUID = result.SOPInstanceUID or None
    item.FailureReason = result.failure
    return item


async def _drain(stream: AsyncIterator[bytes]) -> None:
    """Read and drop the rest of a refused body, up to DRAIN_BYTES."""
    drained = 0
    try:
        async for chunk in stream:
            drained += len(chunk)
            if drained > DRAIN_BYTES:
                return
    except ClientDisconnect:
        return


def routes(ctx: DicomWebContext) -> list[BaseRoute]:
    return StowService(ctx).routes()
