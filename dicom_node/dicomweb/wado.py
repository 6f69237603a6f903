"""WADO-RS (PS3.18 10.4): retrieve studies, series, instances, metadata, frames and
rendered images.

Resources, under ``dicomweb.base_path`` (``{i}`` is ``/studies/{study}/series/{series}/
instances/{sop}``)::

    GET /studies/{study}[/series/{series}[/instances/{sop}]]   multipart/related; application/dicom
    GET .../metadata                                           application/dicom+json
    GET {i}/frames/{list}                                      multipart/related; octet-stream
    GET {i}/bulkdata/{tag}                                     multipart/related; octet-stream
    GET {i}/rendered, {i}/frames/{n}/rendered                  image/jpeg or image/png
    GET .../thumbnail (study, series, instance)                image/jpeg or image/png

Instances stream from their spool files in chunks, as stored (``transfer-syntax=*`` or no
transfer syntax asked), or transcoded one at a time when the client asks for Explicit or
Implicit VR Little Endian (compressed pixel data decoded with pydicom's decoders); any
other transfer syntax, or one that cannot be decoded here, is answered 406 before anything
is sent. Metadata is each header as DICOM JSON: binary values over 1 kB as ``BulkDataURI``
(``{i}/bulkdata/{tag}``), Pixel Data as ``{i}/frames/1,...,n`` (what OHIF reads through).

Frames are sent uncompressed (``application/octet-stream``), decoded when stored
compressed, unless the client names the stored compressed media type (``image/jp2``,
``image/jls``, ``image/jpeg``, ``image/dicom-rle``): then the stored fragments go as they
are. Rendered images and thumbnails are drawn by ``rendering``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicom_node.dicomweb import rendering
from dicom_node.dicomweb.catalog import FileMissing, Record, answer_errors, base_url
from dicom_node.dicomweb.context import DicomWebContext, calling_ae, request_actor

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
#: Binary values longer than this go as BulkDataURI in metadata.
BULK_DATA_THRESHOLD = 1024

UNCOMPRESSED = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
}
#: Transfer syntaxes the node transcodes to.
TRANSCODE_TO = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: The media type of a compressed frame, by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


# -- Accept ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The type of a multipart range's parts (``type=...``); the type itself else."""
        if self.type.startswith("multipart/"):
            return self.params.get("type")
        return self.type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_PARAM_SPLIT = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


def parse_accept(values: Sequence[str]) -> list[MediaRange]:
    """The media ranges of the Accept header(s), most preferred first (q=0 left out)."""
    ranges: list[MediaRange] = []
    for value in values:
        for item in _SPLIT.split(value):
            pieces = [p.strip() for p in _PARAM_SPLIT.split(item) if p.strip()]
            if not pieces:
                continue
            params: dict[str, str] = {}
            for piece in pieces[1:]:
                name, _, v = piece.partition("=")
                params[name.strip().lower()] = v.strip().strip('"').strip()
            try:
                q = float(params.pop("q", "1"))
            except ValueError:
                q = 1.0
            if q > 0:
                ranges.append(MediaRange(pieces[0].lower(), params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _accepts(request: Request) -> list[MediaRange]:
    asked = request.query_params.getlist("accept")
    return parse_accept(asked or request.headers.getlist("accept"))


def dicom_syntaxes(ranges: list[MediaRange]) -> list[str | None]:
    """The transfer syntaxes a retrieve may answer in, preferred first; None: as stored."""
    if not ranges:
        return [None]
    syntaxes: list[str | None] = []
    for r in ranges:
        if r.type in ("*/*", "multipart/*", DICOM) or (
            r.type == "multipart/related" and r.part_type in (None, DICOM, "application/*")
        ):
            wanted = r.transfer_syntax
        else:
            continue
        syntaxes.append(None if wanted in (None, "*") else wanted)
    return syntaxes


def not_acceptable(what: str) -> HTTPException:
    return HTTPException(406, what)


# -- what can be sent how ----------------------------------------------------------------------


def has_pixels(header: Dataset) -> bool:
    return (
        "Rows" in header
        and "Columns" in header
        and ("BitsAllocated" in header or "FloatPixelData" in header)
    )


def can_send(stored: str, target: str | None, header: Callable[[], Dataset]) -> bool:
    """Whether an instance stored as ``stored`` can go as ``target`` (None: as stored)."""
    if target is None or target == stored:
        return True
    if target not in TRANSCODE_TO:
        return False
    if stored in UNCOMPRESSED or not has_pixels(header()):
        return True
    try:
        return bool(get_decoder(stored).is_available)
    except NotImplementedError:
        return False


def transcoded(path: Path, target: str) -> bytes:
    """The file re-encoded in ``target`` (one instance in memory at a time)."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID not in UNCOMPRESSED and "PixelData" in ds:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _transcoded_chunks(path: Path, target: str) -> Iterator[bytes]:
    yield transcoded(path, target)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def multipart_body(
    boundary: str, parts: Sequence[tuple[str, Callable[[], Iterator[bytes]]]]
) -> Iterator[bytes]:
    """A multipart/related body, one part at a time (each part's bytes as they come)."""
    try:
        for content_type, chunks in parts:
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
            yield from chunks()
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")
    except (OSError, ValueError, RuntimeError, FileMissing) as exc:
        # The status line is gone already: the client sees a body that does not end.
        logger.error("WADO-RS answer cut short: %s", type(exc).__name__)


def multipart_response(
    part_type: str, parts: Sequence[tuple[str, Callable[[], Iterator[bytes]]]]
) -> StreamingResponse:
    boundary = uuid.uuid4().hex
    return StreamingResponse(
        multipart_body(boundary, parts),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


# -- the service -------------------------------------------------------------------------------


class Wado:
    def __init__(self, ctx: DicomWebContext) -> None:
        self.ctx = ctx
        self.catalog = ctx.catalog

    # retrieve ----------------------------------------------------------------------------------

    def _plan_retrieve(
        self, records: list[Record], syntaxes: list[str | None]
    ) -> list[tuple[str, Callable[[], Iterator[bytes]]]]:
        stored = [self.catalog.transfer_syntax(r) for r in records]
        for target in syntaxes:
            if all(
                can_send(s, target, lambda r=r: self.catalog.header(r))  # type: ignore[misc]
                for s, r in zip(stored, records, strict=True)
            ):
                break
        else:
            raise not_acceptable(
                "the instances cannot be sent in the transfer syntax asked for "
                "(the node sends them as stored, or as Explicit / Implicit VR Little Endian)"
            )
        parts: list[tuple[str, Callable[[], Iterator[bytes]]]] = []
        for record, syntax in zip(records, stored, strict=True):
            path = self.catalog.file(record)
            if target is None or target == syntax:
                parts.append(
                    (f"{DICOM}; transfer-syntax={syntax}", functools.partial(_file_chunks, path))
                )
            else:
                parts.append(
                    (
                        f"{DICOM}; transfer-syntax={target}",
                        functools.partial(_transcoded_chunks, path, target),
                    )
                )
        return parts

    async def retrieve(self, request: Request) -> Response:
        records = await run_in_threadpool(self._records, request)
        syntaxes = dicom_syntaxes(_accepts(request))
        if not syntaxes:
            raise not_acceptable('this resource is multipart/related; type="application/dicom"')
        parts = await run_in_threadpool(self._plan_retrieve, records, syntaxes)
        await self._audit(request, "retrieve", records)
        return multipart_response(DICOM, parts)

    def _records(self, request: Request) -> list[Record]:
        p = request.path_params
        if "sop" in p:
            return [self.catalog.one(p["study"], p["series"], p["sop"])]
        return self.catalog.some(p["study"], p.get("series"))

    async def _audit(self, request: Request, action: str, records: list[Record]) -> None:
        if self.ctx.audit is None:
            return
        p = request.path_params
        level = "instance" if "sop" in p else "series" if "series" in p else "study"
        await run_in_threadpool(
            self.ctx.audit.record,
            "dicomweb",
            action,
            ae_title=calling_ae(request),
            actor=request_actor(request),
            StudyInstanceUID=p["study"],
            SOPInstanceUID=p.get("sop"),
            detail=f"WADO-RS {level} {action}: {len(records)} instance(s)",
        )

    # metadata ----------------------------------------------------------------------------------

    def _metadata_json(self, record: Record, base: str) -> dict[str, Any]:
        header = self.catalog.header(record)
        url = _instance_url(base, record)

        def bulk(element: DataElement) -> str:
            return f"{url}/bulkdata/{element.tag:08X}"

        answer: dict[str, Any] = header.to_json_dict(BULK_DATA_THRESHOLD, bulk)
        syntax = self.catalog.transfer_syntax(record)
        answer["00083002"] = {"vr": "UI", "Value": [syntax]}  # AvailableTransferSyntaxUID
        if has_pixels(header) and "FloatPixelData" not in header:
            frames = _number_of_frames(header)
            native = syntax in UNCOMPRESSED
            answer["7FE00010"] = {
                "vr": "OW" if native and int(header.get("BitsAllocated", 8) or 8) > 8 else "OB",
                # One frame: its frame (what OHIF reads); more: the whole value in one part.
                "BulkDataURI": f"{url}/frames/1" if frames == 1 else f"{url}/bulkdata/7FE00010",
            }
        return dict(sorted(answer.items()))

    async def metadata(self, request: Request) -> Response:
        records = await run_in_threadpool(self._records, request)
        base = base_url(request, self.ctx.settings.dicomweb.base_path)
        body = await run_in_threadpool(
            lambda: json.dumps(
                [self._metadata_json(r, base) for r in records], ensure_ascii=False
            ).encode("utf-8")
        )
        if "sop" not in request.path_params:
            await self._audit(request, "metadata", records)
        return Response(body, media_type=DICOM_JSON)

    # frames and bulk data ----------------------------------------------------------------------

    async def frames(self, request: Request) -> Response:
        numbers = _frame_numbers(request.path_params["frames"])
        record = await run_in_threadpool(self._records, request)
        return await run_in_threadpool(self._frames, record[0], numbers, _accepts(request))

    def _frames(
        self,
        record: Record,
        numbers: list[int] | None,
        ranges: list[MediaRange],
        whole: bool = False,
    ) -> Response:
        """The frames ``numbers`` (None: all), one part each; ``whole``: the Pixel Data
        value, uncompressed, in one part (its bulk data)."""
        header = self.catalog.header(record)
        if not has_pixels(header):
            raise HTTPException(404, "the instance has no pixel data")
        count = _number_of_frames(header)
        numbers = numbers if numbers is not None else list(range(1, count + 1))
        beyond = [n for n in numbers if n > count]
        if beyond:
            raise HTTPException(404, f"frame {beyond[0]} is beyond the instance's {count}")
        stored = self.catalog.transfer_syntax(record)
        compressed_type = FRAME_MEDIA_TYPES.get(stored)
        as_stored = compressed_type is not None and any(
            r.part_type == compressed_type and r.transfer_syntax in (None, "*", stored)
            for r in ranges
        )
        uncompressed = not ranges or any(
            r.type in ("*/*", "multipart/*")
            or (
                r.part_type in (None, OCTET_STREAM, "application/*", "*/*")
                and r.transfer_syntax in (None, "*", ExplicitVRLittleEndian)
            )
            for r in ranges
        )
        if whole or stored in UNCOMPRESSED or stored not in FRAME_MEDIA_TYPES:
            as_stored = False
        if not as_stored and not uncompressed:
            raise not_acceptable(
                "frames go as application/octet-stream (uncompressed)"
                + (f" or {compressed_type} (as stored)" if compressed_type else "")
            )
        if (
            not as_stored
            and stored not in UNCOMPRESSED
            and not can_send(stored, ExplicitVRLittleEndian, lambda: header)
        ):
            raise not_acceptable("the stored frames cannot be decoded here")
        ds = dcmread(self.catalog.file(record))
        with _decoding(record):
            if as_stored:
                content_type = f"{compressed_type}; transfer-syntax={stored}"
                parts = [get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in numbers]
            else:
                content_type = f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}"
                parts = [_uncompressed_frame(ds, stored, n - 1) for n in numbers]
                if whole:
                    parts = [_joined(ds, parts)]
        return multipart_response(
            content_type.split(";")[0],
            [(content_type, functools.partial(iter, (b,))) for b in parts],
        )

    async def bulkdata(self, request: Request) -> Response:
        tag_text = request.path_params["tag"]
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag_text):
            raise HTTPException(400, "bulk data is named by its tag (8 hex digits)")
        tag = int(tag_text, 16)
        records = await run_in_threadpool(self._records, request)
        if tag == 0x7FE00010:
            return await run_in_threadpool(self._frames, records[0], None, _accepts(request), True)

        def find() -> bytes:
            for element in self.catalog.header(records[0]).iterall():
                if element.tag == tag and isinstance(element.value, bytes):
                    return element.value
            raise HTTPException(404, "the instance has no such bulk data")

        value = await run_in_threadpool(find)
        return multipart_response(OCTET_STREAM, [(OCTET_STREAM, lambda: iter((value,)))])

    # rendered and thumbnails -------------------------------------------------------------------

    async def rendered(self, request: Request) -> Response:
        options = _render_options(request, thumbnail=False)
        frame = 1
        if "frames" in request.path_params:
            numbers = _frame_numbers(request.path_params["frames"])
            if numbers is None or len(numbers) != 1:
                raise HTTPException(400, "a rendered frame is one frame number")
            frame = numbers[0]
        records = await run_in_threadpool(self._records, request)
        body = await run_in_threadpool(self._render, records[0], frame, options)
        return Response(body, media_type=options.media_type)

    async def thumbnail(self, request: Request) -> Response:
        options = _render_options(request, thumbnail=True)
        records = await run_in_threadpool(self._records, request)
        body = await run_in_threadpool(self._thumbnail, records, options)
        return Response(body, media_type=options.media_type)

    def _thumbnail(self, records: list[Record], options: rendering.RenderOptions) -> bytes:
        if len(records) > 1:
            chosen = self._representative(records)
            if chosen is None:
                raise not_acceptable("none of these instances has an image to draw")
            records = [chosen]
        return self._render(records[0], 1, options)

    def _representative(self, records: list[Record]) -> Record | None:
        """The first received image (then the first output image) of a study or series."""
        for record in sorted(records, key=lambda r: r.is_output):
            try:
                rendering.check_renderable(self.catalog.header(record))
            except rendering.NotRenderable:
                continue
            return record
        return None

    def _render(self, record: Record, frame: int, options: rendering.RenderOptions) -> bytes:
        header = self.catalog.header(record)
        try:
            rendering.check_renderable(header)
        except rendering.NotRenderable as exc:
            raise not_acceptable(str(exc)) from None
        count = _number_of_frames(header)
        if frame > count:
            raise HTTPException(404, f"frame {frame} is beyond the instance's {count}")
        stored = self.catalog.transfer_syntax(record)
        if not can_send(stored, ExplicitVRLittleEndian, lambda: header):
            raise not_acceptable("the stored pixel data cannot be decoded here")
        with _decoding(record):
            pixels = pixel_array(self.catalog.file(record), index=frame - 1)
            return rendering.render(header, pixels, options)


def _number_of_frames(header: Dataset) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _frame_numbers(text: str) -> list[int] | None:
    items = [t.strip() for t in text.split(",")]
    if not items or not all(t.isdigit() and int(t) > 0 for t in items):
        raise HTTPException(400, "frames are a comma-separated list of numbers from 1")
    return [int(t) for t in items]


@contextlib.contextmanager
def _decoding(record: Record) -> Iterator[None]:
    """Pixel data that does not decode (corrupt, or a decoder that fails): a 500 that says
    so, with the instance's UID in the log."""
    try:
        yield
    except (RuntimeError, ValueError, NotImplementedError, KeyError, AttributeError) as exc:
        logger.error(
            "pixel data of instance %s cannot be decoded: %s",
            record.SOPInstanceUID,
            type(exc).__name__,
        )
        raise HTTPException(500, "the instance's pixel data cannot be decoded") from None


def _uncompressed_frame(ds: Dataset, stored: str, index: int) -> bytes:
    bits = int(ds.BitsAllocated)
    if stored in UNCOMPRESSED and stored != ExplicitVRBigEndian and bits % 8 == 0:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        data: bytes = ds.PixelData
        return data[index * size : (index + 1) * size]
    pixels = pixel_array(ds, index=index, raw=stored in UNCOMPRESSED)
    if bits == 1:
        return np.packbits(pixels.astype(np.uint8).ravel(), bitorder="little").tobytes()
    return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def _joined(ds: Dataset, frames: list[bytes]) -> bytes:
    """Frames as one Pixel Data value (1-bit frames packed across frame boundaries)."""
    if int(ds.BitsAllocated) != 1:
        return b"".join(frames)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    bits = [np.unpackbits(np.frombuffer(f, np.uint8), bitorder="little")[:pixels] for f in frames]
    return np.packbits(np.concatenate(bits), bitorder="little").tobytes()


def _render_options(request: Request, *, thumbnail: bool) -> rendering.RenderOptions:
    media_type: str | None = None
    ranges = _accepts(request)
    if not ranges:
        media_type = rendering.JPEG
    for r in ranges:
        if r.type in rendering.MEDIA_TYPES:
            media_type = r.type
        elif r.type in ("*/*", "image/*"):
            media_type = rendering.JPEG
        if media_type is not None:
            break
    if media_type is None:
        raise not_acceptable("rendered images are image/jpeg or image/png")
    q = request.query_params
    try:
        quality = rendering.parse_size(q["quality"], "quality") if "quality" in q else 90
        return rendering.RenderOptions(
            media_type=media_type,
            window=rendering.parse_window(q["window"]) if "window" in q else None,
            viewport=rendering.parse_viewport(q["viewport"]) if "viewport" in q else None,
            rows=rendering.parse_size(q["rows"], "rows") if "rows" in q else None,
            columns=rendering.parse_size(q["columns"], "columns") if "columns" in q else None,
            quality=min(quality, 100),
            thumbnail=thumbnail,
        )
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _instance_url(base: str, record: Record) -> str:
    return (
        f"{base}/studies/{record.StudyInstanceUID}/series/{record.SeriesInstanceUID}"
        f"/instances/{record.SOPInstanceUID}"
    )


def routes(ctx: DicomWebContext) -> list[BaseRoute]:
    wado = Wado(ctx)
    study = "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{sop}"

    def get(path: str, handler: Callable[[Request], Any]) -> Route:
        return Route(path, answer_errors(handler), methods=["GET"])

    return [
        get(study, wado.retrieve),
        get(study + "/metadata", wado.metadata),
        get(study + "/thumbnail", wado.thumbnail),
        get(series, wado.retrieve),
        get(series + "/metadata", wado.metadata),
        get(series + "/thumbnail", wado.thumbnail),
        get(instance, wado.retrieve),
        get(instance + "/metadata", wado.metadata),
        get(instance + "/rendered", wado.rendered),
        get(instance + "/thumbnail", wado.thumbnail),
        get(instance + "/frames/{frames}", wado.frames),
        get(instance + "/frames/{frames}/rendered", wado.rendered),
        get(instance + "/bulkdata/{tag}", wado.bulkdata),
    ]
