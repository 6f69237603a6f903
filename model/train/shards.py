"""Sharded gaze data for large runs: WebDataset tar shards, written in one pass, streamed back.

A shard folder written by :class:`ShardWriter` (``gazex data shard``)::

    DIR/manifest.json       counts, readers, finding keys, the shard list, the source
    DIR/shard-000000.tar    one WebDataset sample per reading, KEY = 9-digit reading index:
        KEY.json            everything of the GazeSample but the pixels (encode_record)
        KEY.png | KEY.npy   the film, embedded: 16-bit grey PNG when that holds the float
                            image exactly, else float32 .npy (``--image-codec png16``
                            forces PNG: at most 1/131070 off); absent for a reference
        KEY.masks.npz       the synthetic masks, when the sample has them
    DIR/films.tsv           provenance: shard, key, sample id, film (dicom_id), reader, one
                            line per reading; no reader opens it, so opening a folder costs
                            O(shards), not O(readings)

The shards are plain POSIX (ustar) tar files, read sequentially; ``tar tf`` lists them and
``webdataset.WebDataset`` reads them. A *reference* sample's JSON holds ``image.path``, a
path relative to the manifest's ``image_root`` (MIMIC-CXR's ``files/pXX/pXXXXXXXX/
sXXXXXXXX/<dicom_id>.dcm`` or its JPG layout); the film is decoded when the sample is
consumed, so a 231k-study manifest is a few hundred MB of JSON, not a copy of the images.
Embedded and referenced films go through the same reader.

:class:`ShardedSamples` streams one rank's part of an epoch through a
``torch.utils.data.DataLoader`` whose worker processes read and decode. The epoch's order
is a shuffle of the shard list seeded by ``(seed, epoch)`` (the same on every rank); that
order, read as one sequence of ``N`` readings, is cut into ``world`` contiguous parts of
``N // world`` readings (the last ``N % world`` readings of the epoch's order are dropped,
so every DDP rank steps the same number of times; which readings those are changes with
the epoch), and each rank's part into ``workers`` contiguous parts. Each worker shuffles
through a bounded buffer seeded by ``(seed, epoch, rank, worker)``. The order is therefore
a function of ``(seed, epoch, rank, world, workers, shuffle_buffer)`` alone.

Memory: the writer holds one reading (each is appended to its shard file as it comes);
the manifest and the epoch plan are O(shards); a worker holds at most ``shuffle_buffer``
encoded samples and decodes one at a time. torch is imported when an epoch is streamed,
not with this module (``gazex`` registers ``data shard`` from here).

Errors: :class:`ShardError` (a ``ValueError``), one line naming the shard or folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt

from model.abcdef import Step
from model.train.gazedata.sample import (
    GazeFixation,
    GazeSample,
    LabeledBox,
    Report,
    TranscriptSentence,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_CODECS",
    "MANIFEST_NAME",
    "FilmReading",
    "Manifest",
    "Piece",
    "ShardError",
    "ShardInfo",
    "ShardWriter",
    "ShardedSamples",
    "decode_record",
    "encode_record",
    "epoch_plan",
    "index_images",
    "read_manifest",
    "register_data_command",
    "run_shard",
    "write_reference_shards",
]

MANIFEST_NAME = "manifest.json"
FILMS_NAME = "films.tsv"
SHARD_PATTERN = "shard-{:06d}.tar"
FORMAT_NAME = "gazex-shards"
FORMAT_VERSION = 1
#: ``auto``: lossless (16-bit PNG when exact, else float32 .npy); ``png16``: always PNG.
IMAGE_CODECS = ("auto", "png16")
#: Film file extensions a reference may point at, in order of preference for one dicom_id.
IMAGE_EXTENSIONS = (".dcm", ".jpg", ".jpeg", ".png")
_U16 = np.float32(65535.0)


class ShardError(ValueError):
    """A shard folder, shard or shard sample that cannot be written or read; one line."""


# ----------------------------------------------------------------------------- records


def _f(x: float | None) -> float | None:
    return None if x is None else float(x)


def encode_record(sample: GazeSample, image: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON record of a sample: every field but the pixels and masks.

    ``image`` says where the film is: ``{"member": "png"}`` / ``{"member": "npy"}`` for an
    embedded film, ``{"path": "files/p10/..."}`` for a reference under the image root.
    """
    report = sample.report
    return {
        "v": FORMAT_VERSION,
        "sample_id": sample.sample_id,
        "view": sample.view,
        "reader_id": sample.reader_id,
        "pixels_per_degree": _f(sample.pixels_per_degree),
        "height": sample.height,
        "width": sample.width,
        "image": dict(image),
        "fixations": [
            [
                float(f.x),
                float(f.y),
                float(f.start_ms),
                float(f.duration_ms),
                f.region,
                None if f.step is None else str(f.step),
            ]
            for f in sample.fixations
        ],
        "sentences": [[s.text, float(s.start_ms), float(s.end_ms)] for s in sample.sentences],
        "labels": {k: bool(v) for k, v in sample.labels.items()},
        "boxes": [
            [b.key, float(b.x0), float(b.y0), float(b.x1), float(b.y1)] for b in sample.boxes
        ],
        "anatomy": [
            [b.key, float(b.x0), float(b.y0), float(b.x1), float(b.y1)] for b in sample.anatomy
        ],
        "report": None
        if report is None
        else {
            "sections": {str(k): v for k, v in report.sections.items()},
            "impression": report.impression,
        },
        "vqa": [[q, a] for q, a in sample.vqa],
        "meta": dict(sample.meta),
        "masks": None if sample.masks is None else list(sample.masks),
    }


def _boxes(rows: Iterable[Sequence[Any]]) -> tuple[LabeledBox, ...]:
    return tuple(
        LabeledBox(str(k), float(x0), float(y0), float(x1), float(y1)) for k, x0, y0, x1, y1 in rows
    )


def decode_record(
    record: Mapping[str, Any],
    members: Mapping[str, bytes],
    image_root: Path | None = None,
) -> GazeSample:
    """A GazeSample from its JSON record and tar members; the film is decoded here.

    Raises ``ValueError`` (or ``KeyError``/``TypeError`` on a malformed record) without
    the shard's name; :class:`ShardedSamples` adds it.
    """
    if record.get("v") != FORMAT_VERSION:
        raise ValueError(f"record version {record.get('v')!r}, expected {FORMAT_VERSION}")
    height, width = int(record["height"]), int(record["width"])
    image = _decode_image(record["image"], members, image_root)
    if image.shape != (height, width):
        raise ValueError(
            f"film of {record['sample_id']} is {image.shape[1]} x {image.shape[0]}, "
            f"record says {width} x {height}"
        )
    masks: dict[str, npt.NDArray[np.bool_]] | None = None
    if record.get("masks") is not None:
        with np.load(io.BytesIO(members["masks.npz"]), allow_pickle=False) as z:
            masks = {k: z[k].astype(bool) for k in record["masks"]}
    rep = record.get("report")
    report = (
        None
        if rep is None
        else Report(
            sections={Step(k): str(v) for k, v in rep["sections"].items()},
            impression=str(rep["impression"]),
        )
    )
    ppd = record.get("pixels_per_degree")
    return GazeSample(
        sample_id=str(record["sample_id"]),
        image=image,
        view=str(record["view"]),
        reader_id=str(record["reader_id"]),
        pixels_per_degree=None if ppd is None else float(ppd),
        fixations=tuple(
            GazeFixation(
                float(x), float(y), float(t), float(d), region, None if step is None else Step(step)
            )
            for x, y, t, d, region, step in record["fixations"]
        ),
        sentences=tuple(
            TranscriptSentence(str(text), float(a), float(b)) for text, a, b in record["sentences"]
        ),
        labels={str(k): bool(v) for k, v in record["labels"].items()},
        boxes=_boxes(record["boxes"]),
        masks=masks,
        report=report,
        vqa=tuple((str(q), str(a)) for q, a in record["vqa"]),
        meta={str(k): str(v) for k, v in record["meta"].items()},
        anatomy=_boxes(record["anatomy"]),
    )


def _encode_image(image: npt.NDArray[np.float32], codec: str) -> tuple[str, bytes]:
    """``("png", bytes)`` (16-bit grey) when exact or forced, else ``("npy", bytes)``."""
    from PIL import Image

    q = np.rint(np.clip(image, 0.0, 1.0) * _U16).astype(np.uint16)
    if codec == "png16" or np.array_equal(q.astype(np.float32) / _U16, image):
        buf = io.BytesIO()
        Image.fromarray(q).save(buf, format="PNG")
        return "png", buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image, dtype=np.float32), allow_pickle=False)
    return "npy", buf.getvalue()


def _decode_image(
    ref: Mapping[str, Any], members: Mapping[str, bytes], image_root: Path | None
) -> npt.NDArray[np.float32]:
    from model.train.gazedata.images import read_dicom, read_image

    if "member" in ref:
        kind = str(ref["member"])
        if kind not in members:
            raise ValueError(f"image member .{kind} missing")
        if kind == "npy":
            arr = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
            return np.asarray(arr, dtype=np.float32)
        if kind == "png":
            from PIL import Image

            with Image.open(io.BytesIO(members["png"])) as im:
                raw = np.asarray(im)
            if raw.dtype != np.uint16:  # an 8-bit PNG written by another tool
                return raw.astype(np.float32) / np.float32(255.0)
            out: npt.NDArray[np.float32] = raw.astype(np.float32) / _U16
            return out
        raise ValueError(f"unknown image member .{kind}")
    rel = Path(str(ref["path"]))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"image path {rel} must be relative to the image root, without '..'")
    if image_root is None:
        raise ValueError("the film is a reference and no image root is known (pass image_root)")
    path = image_root / rel
    if path.suffix.lower() == ".dcm":
        return read_dicom(path)[0]
    return read_image(path)


# ----------------------------------------------------------------------------- tar writing

_TAR_BLOCK = 512


def _tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header of a regular file (mode 0644, uid/gid 0, mtime 0)."""
    raw = name.encode()
    if len(raw) > 100:
        raise ShardError(f"tar member name too long: {name}")
    head = bytearray(_TAR_BLOCK)
    head[0 : len(raw)] = raw
    head[100:108] = b"0000644\0"
    head[108:116] = b"0000000\0"
    head[116:124] = b"0000000\0"
    head[124:136] = f"{size:011o}\0".encode()
    head[136:148] = b"00000000000\0"
    head[148:156] = b"        "
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = f"{sum(head):06o}\0 ".encode()
    return bytes(head)


def _tar_member(name: str, data: bytes) -> bytes:
    pad = -len(data) % _TAR_BLOCK
    return _tar_header(name, len(data)) + data + b"\0" * pad


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its file, how many readings it holds, and its manifest's image root."""

    path: Path
    readings: int
    image_root: Path | None = None


@dataclass(frozen=True)
class Manifest:
    """A shard folder's ``manifest.json``: O(shards) in memory, whatever the reading count."""

    directory: Path
    readings: int
    shards: tuple[ShardInfo, ...]
    images: str
    image_root: Path | None
    source_format: str
    source: str
    readers: Mapping[str, int] = field(default_factory=dict)
    findings: Mapping[str, int] = field(default_factory=dict)


def read_manifest(directory: Path, image_root: Path | None = None) -> Manifest:
    """Read and check ``directory/manifest.json``; every listed shard must exist."""
    path = directory / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{directory}: no {MANIFEST_NAME} (not a shard folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: unreadable ({type(exc).__name__})") from None
    try:
        if doc.get("format") != FORMAT_NAME or doc.get("version") != FORMAT_VERSION:
            raise ShardError(
                f"{path}: not a {FORMAT_NAME} v{FORMAT_VERSION} manifest "
                f"(format {doc.get('format')!r}, version {doc.get('version')!r})"
            )
        stored_root = doc.get("image_root")
        root = image_root or (Path(stored_root) if stored_root else None)
        shards = []
        for entry in doc["shards"]:
            shard = directory / str(entry["name"])
            if Path(str(entry["name"])).name != str(entry["name"]):
                raise ShardError(f"{path}: shard name {entry['name']!r} is not a file name")
            if not shard.is_file():
                raise ShardError(f"{shard}: shard listed in {MANIFEST_NAME} is missing")
            shards.append(ShardInfo(shard, int(entry["readings"]), root))
        manifest = Manifest(
            directory=directory,
            readings=int(doc["readings"]),
            shards=tuple(shards),
            images=str(doc["images"]),
            image_root=root,
            source_format=str(doc.get("source_format", "")),
            source=str(doc.get("source", "")),
            readers={str(k): int(v) for k, v in doc.get("readers", {}).items()},
            findings={str(k): int(v) for k, v in doc.get("findings", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ShardError):
            raise
        raise ShardError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    if sum(s.readings for s in manifest.shards) != manifest.readings:
        raise ShardError(f"{path}: shard counts do not add up to {manifest.readings} readings")
    return manifest


# ----------------------------------------------------------------------------- writer


def index_images(root: Path) -> dict[str, str]:
    """``dicom_id -> path relative to root`` of every film under ``root`` (one walk).

    Prefers ``.dcm`` over ``.jpg`` over ``.png`` for the same id. Holds one short string
    per film (MIMIC-CXR: ~377k films, some tens of MB), not the films.
    """
    if not root.is_dir():
        raise ShardError(f"{root}: image root is not a directory")
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stem, dot, ext = name.rpartition(".")
            r = rank.get("." + ext.lower()) if dot else None
            if r is None:
                continue
            if stem not in best or r < best[stem][0]:
                best[stem] = (r, Path(folder, name).relative_to(root).as_posix())
    return {k: v for k, (_, v) in best.items()}


class ShardWriter:
    """Write samples into ``out/shard-NNNNNN.tar`` + ``manifest.json``, one sample in memory.

    With ``image_root``, films are references (``image_index`` maps a film id, the
    sample's ``meta["dicom_id"]`` else its ``sample_id``, to its path under the root;
    built by :func:`index_images` when not given); without, they are embedded. A shard is
    written as ``.partial`` and renamed when full; the manifest is written last, so a
    folder with a manifest is complete.
    """

    def __init__(
        self,
        out: Path,
        *,
        shard_size: int = 1000,
        image_root: Path | None = None,
        image_index: Mapping[str, str] | None = None,
        image_codec: str = "auto",
        source_format: str = "",
        source: str = "",
    ) -> None:
        if shard_size < 1:
            raise ShardError(f"shard size must be at least 1, got {shard_size}")
        if image_codec not in IMAGE_CODECS:
            raise ShardError(f"image codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ShardError(f"{out}: output folder exists and is not empty")
        self._made_folder = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.shard_size = shard_size
        self.image_root = image_root.resolve() if image_root is not None else None
        self.image_codec = image_codec
        self.source_format = source_format
        self.source = source
        self._index: Mapping[str, str] | None = image_index
        if self.image_root is not None and self._index is None:
            self._index = index_images(self.image_root)
        self.readings = 0
        self.readers: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.codecs: Counter[str] = Counter()
        self._shards: list[dict[str, Any]] = []
        self._shard: IO[bytes] | None = None  # the open .partial shard
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._in_shard = 0
        self._films: IO[str] = (out / FILMS_NAME).open("w", encoding="utf-8", newline="\n")
        self._films.write("shard\tkey\tsample_id\tdicom_id\treader_id\n")
        self._closed = False

    def add(self, sample: GazeSample) -> None:
        """Add one reading (its film embedded, or referenced when writing references)."""
        members: dict[str, bytes] = {}
        if self.image_root is not None:
            film = sample.meta.get("dicom_id") or sample.sample_id
            assert self._index is not None
            rel = self._index.get(film)
            if rel is None:
                raise ShardError(
                    f"{self.image_root}: no film {film}.dcm/.jpg/.png for sample {sample.sample_id}"
                )
            image: dict[str, Any] = {"path": rel}
        else:
            kind, data = _encode_image(sample.image, self.image_codec)
            members[kind] = data
            image = {"member": kind}
        if sample.masks is not None:
            buf = io.BytesIO()
            arrays: dict[str, Any] = {k: np.asarray(v, dtype=bool) for k, v in sample.masks.items()}
            np.savez_compressed(buf, **arrays)
            members["masks.npz"] = buf.getvalue()
        self.add_record(encode_record(sample, image), members)

    def add_record(self, record: Mapping[str, Any], members: Mapping[str, bytes]) -> None:
        """Add one encoded reading (:func:`encode_record`) with its extra tar members."""
        if self._closed:
            raise ShardError(f"{self.out}: writer is closed")
        key = f"{self.readings:09d}"
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
        self._write(_tar_member(f"{key}.json", text))
        for ext, data in members.items():
            self._write(_tar_member(f"{key}.{ext}", data))
        image = record.get("image", {})
        self.codecs["reference" if "path" in image else str(image.get("member"))] += 1
        reader = str(record["reader_id"])
        self.readers[reader] += 1
        self.findings.update(k for k, v in record["labels"].items() if v)
        film = record["meta"].get("dicom_id") or record["sample_id"]
        self._films.write(
            f"{SHARD_PATTERN.format(len(self._shards))}\t{key}\t{record['sample_id']}\t"
            f"{film}\t{reader}\n"
        )
        self.readings += 1
        self._in_shard += 1
        if self._in_shard >= self.shard_size:
            self._flush()

    def _partial(self) -> Path:
        return self.out / (SHARD_PATTERN.format(len(self._shards)) + ".partial")

    def _write(self, chunk: bytes) -> None:
        """Append to the open shard (opened on its first member): one sample in memory."""
        if self._shard is None:
            self._shard = self._partial().open("wb")
            self._digest = hashlib.sha256()
            self._bytes = 0
        self._shard.write(chunk)
        self._digest.update(chunk)
        self._bytes += len(chunk)

    def _flush(self) -> None:
        if self._shard is None:
            return
        self._write(b"\0" * (2 * _TAR_BLOCK))  # the end-of-archive marker
        self._shard.close()
        self._shard = None
        name = SHARD_PATTERN.format(len(self._shards))
        self._partial().replace(self.out / name)
        self._shards.append(
            {
                "name": name,
                "readings": self._in_shard,
                "bytes": self._bytes,
                "sha256": self._digest.hexdigest(),
            }
        )
        self._in_shard = 0

    def close(self) -> Manifest:
        """Write the last shard and the manifest; return the manifest."""
        if not self._closed:
            self._flush()
            self._films.close()
            self._closed = True
            doc = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "source_format": self.source_format,
                "source": self.source,
                "images": "referenced" if self.image_root is not None else "embedded",
                "image_root": None if self.image_root is None else str(self.image_root),
                "image_members": dict(sorted(self.codecs.items())),
                "readings": self.readings,
                "readers": dict(sorted(self.readers.items())),
                "findings": dict(sorted(self.findings.items())),
                "films": FILMS_NAME,
                "shards": self._shards,
            }
            tmp = self.out / (MANIFEST_NAME + ".partial")
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
            tmp.replace(self.out / MANIFEST_NAME)
        return read_manifest(self.out)

    def abort(self) -> None:
        """Stop without a manifest and remove what this writer wrote."""
        self._films.close()
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        self._closed = True
        names = [FILMS_NAME, *(s["name"] for s in self._shards)]
        names.append(self._partial().name)
        for name in names:
            (self.out / name).unlink(missing_ok=True)
        if self._made_folder and not any(self.out.iterdir()):
            self.out.rmdir()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_reference_shards(
    out: Path,
    image_root: Path,
    films: Sequence[str],
    readings: int,
    *,
    shard_size: int = 1000,
    fixations: int = 8,
    seed: int = 0,
) -> Manifest:
    """A synthetic *reference* shard folder of ``readings`` readings, for scale tests.

    Each reading is a MIMIC-CXR-like study (subject, study, dicom ids derived from its
    index) with its own seeded eye-tracking rows (``fixations`` per reading, joined into
    the reading's record) and labels, whose film is one of ``films`` (paths relative to
    ``image_root``, cycled): the same writer and reader as real data, a few real files.
    """
    from model.findings import FINDING_KEYS
    from model.train.gazedata.images import read_image

    sizes = [read_image(image_root / f).shape for f in films]
    stems = [Path(f).stem for f in films]
    rng = np.random.default_rng(seed)
    readers = ("synthetic-reader-a", "synthetic-reader-b", "synthetic-reader-c")
    with ShardWriter(
        out,
        shard_size=shard_size,
        image_root=image_root,
        image_index=dict(zip(stems, films, strict=True)),
        source_format="synthetic-reference",
        source=f"write_reference_shards(readings={readings}, seed={seed})",
    ) as writer:
        block = 4096
        for start in range(0, readings, block):
            n = min(block, readings - start)
            f_of = [(start + j) % len(films) for j in range(n)]
            scale = np.array([[sizes[f][1], sizes[f][0]] for f in f_of], dtype=np.float64)
            xy = (rng.random((n, fixations, 2)) * scale[:, None, :]).round(1).tolist()
            ends = np.cumsum(rng.integers(150, 600, (n, fixations)), axis=1)
            durations = rng.integers(100, 150, (n, fixations))
            starts = (ends - durations).tolist()
            durations_l = durations.tolist()
            positive = (rng.random((n, len(FINDING_KEYS))) < 0.1).tolist()
            for j in range(n):
                i, f = start + j, f_of[j]
                study = 50000000 + i
                record = {
                    "v": FORMAT_VERSION,
                    "sample_id": f"s{study}",
                    "view": "PA",
                    "reader_id": readers[i % len(readers)],
                    "pixels_per_degree": 30.0,
                    "height": sizes[f][0],
                    "width": sizes[f][1],
                    "image": {"path": films[f]},
                    "fixations": [
                        [x, y, float(t), float(d), None, None]
                        for (x, y), t, d in zip(xy[j], starts[j], durations_l[j], strict=True)
                    ],
                    "sentences": [],
                    "labels": dict(zip(FINDING_KEYS, positive[j], strict=True)),
                    "boxes": [],
                    "anatomy": [],
                    "report": None,
                    "vqa": [],
                    "meta": {
                        "dataset": "synthetic-mimic-cxr",
                        "dicom_id": stems[f],
                        "subject_id": str(10000000 + i // 3),
                        "study_id": str(study),
                    },
                    "masks": None,
                }
                writer.add_record(record, {})
    return read_manifest(out)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Piece:
    """Readings ``start <= i < stop`` (in file order) of one shard."""

    shard: ShardInfo
    start: int
    stop: int


def _cut(order: Sequence[ShardInfo], begin: int, end: int) -> list[Piece]:
    """Readings ``begin..end`` of the shards read one after the other, as pieces."""
    out: list[Piece] = []
    offset = 0
    for shard in order:
        lo, hi = max(begin, offset), min(end, offset + shard.readings)
        if lo < hi:
            out.append(Piece(shard, lo - offset, hi - offset))
        offset += shard.readings
        if offset >= end:
            break
    return out


def _split(total: int, parts: int, index: int) -> tuple[int, int]:
    """The ``index``-th of ``parts`` contiguous near-equal ranges of ``0..total``."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def epoch_plan(
    shards: Sequence[ShardInfo],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    workers: int,
    shuffle: bool = True,
) -> list[list[Piece]]:
    """The pieces each of this rank's ``workers`` reads in ``epoch`` (see module docstring).

    Every rank gets ``N // world`` readings; the last ``N % world`` of the epoch's order are
    dropped. ``workers`` 0 plans for one stream.
    """
    if world < 1 or not 0 <= rank < world:
        raise ShardError(f"rank {rank} of world {world}: need 0 <= rank < world")
    order = list(shards)
    if shuffle:
        perm = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in perm]
    total = sum(s.readings for s in order)
    per_rank = total // world
    begin = rank * per_rank
    streams = max(workers, 1)
    plan = []
    for w in range(streams):
        lo, hi = _split(per_rank, streams, w)
        plan.append(_cut(order, begin + lo, begin + hi))
    return plan


@dataclass(frozen=True)
class _Failure:
    """A worker's error, carried to the main process as data so it stays one line."""

    message: str


_Encoded = tuple[bytes, dict[str, bytes], "Path | None", str]


def _read_piece(piece: Piece) -> Iterator[_Encoded | _Failure]:
    """The encoded samples of one piece, in file order; a failure ends the piece."""
    shard = piece.shard
    name = shard.path
    try:
        with tarfile.open(name, mode="r:") as tar:
            index = -1
            key: str | None = None
            group: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                mkey, dot, ext = base.partition(".")
                if not dot:
                    continue
                if mkey != key:
                    if key is not None and piece.start <= index < piece.stop:
                        yield _encoded(group, shard, key)
                    index += 1
                    key, group = mkey, {}
                    if index >= piece.stop:
                        return
                if index >= piece.start:  # before the piece: skip without reading
                    f = tar.extractfile(member)
                    if f is None:
                        raise tarfile.ReadError(f"member {member.name} has no data")
                    group[ext] = f.read()
            if key is not None and piece.start <= index < piece.stop:
                yield _encoded(group, shard, key)
            if index + 1 < piece.stop:
                yield _Failure(
                    f"{name}: holds {index + 1} readings, {MANIFEST_NAME} says {shard.readings}"
                )
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield _Failure(f"{name}: not a readable tar shard ({type(exc).__name__}: {exc})")


def _encoded(group: dict[str, bytes], shard: ShardInfo, key: str) -> _Encoded | _Failure:
    text = group.pop("json", None)
    if text is None:
        return _Failure(f"{shard.path}: sample {key} has no .json member")
    return (text, group, shard.image_root, f"{shard.path}#{key}")


def _decode(item: _Encoded) -> GazeSample | _Failure:
    text, members, image_root, where = item
    try:
        record = json.loads(text)
        return decode_record(record, members, image_root)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return _Failure(f"{where}: {type(exc).__name__}: {reason}".replace("\n", " "))


def _stream(
    pieces: Sequence[Piece], rng: np.random.Generator | None, buffer: int
) -> Iterator[GazeSample | _Failure]:
    """Decoded samples of the pieces, through a shuffle buffer of encoded samples."""
    held: list[_Encoded] = []
    for piece in pieces:
        for item in _read_piece(piece):
            if isinstance(item, _Failure):
                yield item
                return
            if rng is None or buffer <= 1:
                yield _decode(item)
                continue
            if len(held) < buffer:
                held.append(item)
                continue
            j = int(rng.integers(len(held)))
            out, held[j] = held[j], item
            yield _decode(out)
    if rng is not None:
        rng.shuffle(held)
    for item in held:
        yield _decode(item)


def _identity(x: Any) -> Any:
    return x


class _EpochStreamBody:
    """One rank's epoch: each DataLoader worker streams its own pieces of the plan.

    The torch ``IterableDataset`` subclass is made on first use (:func:`_epoch_stream`),
    so importing this module (the CLI's registration) does not import torch.
    """

    def __init__(
        self,
        plan: list[list[Piece]],
        seed: int,
        epoch: int,
        rank: int,
        buffer: int,
        shuffle: bool,
    ) -> None:
        self.plan = plan
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.buffer = buffer
        self.shuffle = shuffle

    def __iter__(self) -> Iterator[GazeSample | _Failure]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = (
            np.random.default_rng([self.seed, self.epoch, self.rank, worker])
            if self.shuffle
            else None
        )
        return _stream(self.plan[worker], rng, self.buffer)


def _epoch_stream() -> type[_EpochStreamBody]:
    """``_EpochStream``: the body as a torch IterableDataset (module-level, so picklable)."""
    cls = globals().get("_EpochStream")
    if cls is None:
        from torch.utils.data import IterableDataset

        cls = type("_EpochStream", (_EpochStreamBody, IterableDataset), {"__module__": __name__})
        globals()["_EpochStream"] = cls
    return cast("type[_EpochStreamBody]", cls)


def __getattr__(name: str) -> Any:
    """Unpickling ``_EpochStream`` in a spawned DataLoader worker creates the class."""
    if name == "_EpochStream":
        return _epoch_stream()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class FilmReading:
    """A reading's ids from ``films.tsv`` (the shape of :class:`GazeSample` that
    :func:`model.train.provenance.film_id` reads)."""

    sample_id: str
    meta: Mapping[str, str]


class ShardedSamples:
    """One rank's stream of GazeSamples from shard folders or shard files (see module doc).

    ``shards``: a shard folder, or a list of folders and/or ``shard-*.tar`` files (each
    counted by the manifest of its folder); several datasets' folders can be mixed.
    ``image_root`` overrides the manifests' root of referenced films (another machine).
    ``workers`` DataLoader worker processes read and decode (0: in this process, the same
    order as 1). ``len()`` is the manifest's total; :attr:`per_rank` what one epoch yields.
    """

    def __init__(
        self,
        shards: Path | Sequence[Path],
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 2,
        shuffle_buffer: int = 256,
        shuffle: bool = True,
        image_root: Path | None = None,
    ) -> None:
        if workers < 0:
            raise ShardError(f"workers must be >= 0, got {workers}")
        if world < 1 or not 0 <= rank < world:
            raise ShardError(f"rank {rank} of world {world}: need 0 <= rank < world")
        if shuffle_buffer < 0:
            raise ShardError(f"shuffle buffer must be >= 0, got {shuffle_buffer}")
        paths = [shards] if isinstance(shards, Path) else list(shards)
        if not paths:
            raise ShardError("no shard folders or shard files given")
        manifests: dict[Path, Manifest] = {}
        selected: list[ShardInfo] = []
        for p in paths:
            if p.name == MANIFEST_NAME:
                p = p.parent
            folder = p if p.is_dir() else p.parent
            if not p.is_dir() and not p.is_file():
                raise ShardError(f"{p}: no such shard folder or shard file")
            if folder not in manifests:
                manifests[folder] = read_manifest(folder, image_root)
            listed = manifests[folder].shards
            if p.is_dir():
                selected.extend(listed)
            else:
                match = [s for s in listed if s.path.name == p.name]
                if not match:
                    raise ShardError(f"{p}: not listed in {folder / MANIFEST_NAME}")
                selected.extend(match)
        self.manifests = tuple(manifests.values())
        self.shards = tuple(selected)
        self.seed = seed
        self.rank = rank
        self.world = world
        self.workers = workers
        self.shuffle_buffer = shuffle_buffer
        self.shuffle = shuffle
        self.readings = sum(s.readings for s in self.shards)

    def __len__(self) -> int:
        return self.readings

    @property
    def per_rank(self) -> int:
        """Samples this rank yields each epoch (``len(self) // world``; the rest dropped)."""
        return self.readings // self.world

    def plan(self, epoch: int) -> list[list[Piece]]:
        """Which readings each worker of this rank reads in ``epoch``."""
        return epoch_plan(
            self.shards,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world,
            workers=self.workers,
            shuffle=self.shuffle,
        )

    def epoch(self, epoch: int) -> Iterator[GazeSample]:
        """This rank's samples of ``epoch``, decoded in the DataLoader's workers."""
        dataset = _epoch_stream()(
            self.plan(epoch), self.seed, epoch, self.rank, self.shuffle_buffer, self.shuffle
        )
        items: Iterable[GazeSample | _Failure]
        if self.workers == 0:
            items = iter(dataset)
        else:
            from torch.utils.data import DataLoader, IterableDataset

            stream = cast("IterableDataset[GazeSample | _Failure]", dataset)  # made by torch
            items = DataLoader(
                stream, batch_size=None, num_workers=self.workers, collate_fn=_identity
            )
        for item in items:
            if isinstance(item, _Failure):
                raise ShardError(item.message)
            yield item

    def film_readings(self) -> list[FilmReading]:
        """Which film each reading of these shards reads (``films.tsv``, no film decoded):
        what the checkpoint's training record (:mod:`model.train.provenance`) lists."""
        wanted = {(s.path.parent, s.path.name) for s in self.shards}
        out: list[FilmReading] = []
        for manifest in self.manifests:
            path = manifest.directory / FILMS_NAME
            try:
                with path.open(encoding="utf-8") as lines:
                    next(lines, None)  # the header
                    for line in lines:
                        shard, _, sample_id, film, _ = line.rstrip("\n").split("\t")
                        if (manifest.directory, shard) in wanted:
                            out.append(FilmReading(sample_id, {"dicom_id": film}))
            except (OSError, ValueError) as exc:
                raise ShardError(f"{path}: unreadable ({type(exc).__name__})") from None
        return out

    def ordered(self) -> Iterator[GazeSample]:
        """Every reading in manifest order, all ranks', decoded in this process (eval)."""
        pieces = [Piece(s, 0, s.readings) for s in self.shards]
        for item in _stream(pieces, None, 0):
            if isinstance(item, _Failure):
                raise ShardError(item.message)
            yield item


# ----------------------------------------------------------------------------- CLI


def register_data_command(data: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gazex data shard`` to the ``data`` subcommands (cheap: nothing heavy imported)."""
    from model.train.progress import add_progress_argument

    shard = data.add_parser(
        "shard",
        help="convert a REFLACX, EGD-CXR, MIMIC-Eye or synthetic folder into tar shards",
        description="Stream a dataset folder through its loader into WebDataset tar shards "
        "(one sample per reading: the reading as JSON plus the film, embedded or as a "
        "path under an image root) and a manifest.json, one reading in memory at a time.",
    )
    shard.add_argument(
        "--format",
        required=True,
        choices=("synthetic", "reflacx", "egd", "mimic-eye"),
        help="source layout (synthetic: a `gazex data synth` folder, layout detected)",
    )
    shard.add_argument("--data", required=True, type=Path, metavar="SRC", help="source folder")
    shard.add_argument("--out", required=True, type=Path, metavar="DIR", help="new, empty folder")
    shard.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="readings per shard (1000)"
    )
    films = shard.add_mutually_exclusive_group()
    films.add_argument(
        "--embed-images",
        action="store_true",
        default=True,
        help="store each film in the shard (default)",
    )
    films.add_argument(
        "--image-root",
        type=Path,
        metavar="DIR",
        help="store each film as a path under DIR (e.g. a MIMIC-CXR or MIMIC-CXR-JPG copy, "
        "files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm|.jpg), read when consumed",
    )
    shard.add_argument(
        "--image-codec",
        choices=IMAGE_CODECS,
        default="auto",
        help="embedded films: auto = lossless (16-bit PNG when exact, else float32 .npy); "
        "png16 = always 16-bit PNG (at most 1/131070 off)",
    )
    add_progress_argument(shard)
    shard.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    """``gazex data shard``: stream ``--data`` through its loader into ``--out``."""
    from model.train.datasets import iter_samples
    from model.train.progress import Progress

    src: Path = args.data
    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {args.shard_size}")
    if not src.is_dir():
        raise ValueError(f"{src}: dataset folder not found")
    if args.image_root is not None and not args.image_root.is_dir():
        raise ValueError(f"{args.image_root}: image root is not a directory")
    writer = ShardWriter(
        args.out,
        shard_size=args.shard_size,
        image_root=args.image_root,
        image_codec=args.image_codec,
        source_format=args.format,
        source=str(src),
    )
    with writer, Progress(0, "reading", args.progress, prefix="shard") as bar:
        for sample in iter_samples(src, args.format):
            writer.add(sample)
            bar.update()
    manifest = writer.close()
    films = f"references under {manifest.image_root}" if manifest.image_root else "embedded"
    print(
        f"wrote {manifest.readings} readings in {len(manifest.shards)} shards to {args.out} "
        f"(films {films}; {len(manifest.readers)} readers)"
    )
    return 0
