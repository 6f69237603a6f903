"""Durable storage of received and produced files.

A file is written to a temporary name in its final folder, fsynced, renamed over the final
name and the folder fsynced, so after a crash a path either holds the complete file or
nothing. Paths are built from sanitised UIDs only, never from patient data.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from dicom_node.errors import OutOfResources

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TMP_SUFFIX = ".partial"
_COMPARE_BLOCK = 1 << 20


def safe_uid(uid: str) -> str:
    """A UID usable as a path component; anything else becomes a hash of it."""
    uid = uid.strip().rstrip("\x00")
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:32]


def short_hash(value: str) -> str:
    """A short stable hash for log lines that must not carry identifiers."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:10]


class Spool:
    """The folder tree holding every instance: ``<root>/<study>/<series>/<sop>.dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study: str, series: str, sop: str, *, kind: str = "in") -> Path:
        return Path(kind, safe_uid(study), safe_uid(series), safe_uid(sop) + ".dcm")

    @staticmethod
    def result_path(study: str, revision: int) -> Path:
        """Where an analysis revision's model result (``gazex.result/1`` JSON) is kept."""
        return Path("out", safe_uid(study), f"rev{revision}", "result.json")

    def absolute(self, relative: str | Path) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError("spool path escapes the spool root")
        return path

    def write(self, relative: Path, *parts: bytes | memoryview) -> Path:
        """Write ``parts`` one after another, durably, at ``relative``; raise OutOfResources
        when the disk is full. Nothing is left behind on failure.

        Parts go out with one vectored write, so a received data set is never joined into
        a second copy in memory.
        """
        final = self.absolute(relative)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                views = [memoryview(part).cast("B") for part in parts]
                while views:
                    written = os.writev(fd, views)
                    while views and written >= len(views[0]):
                        written -= len(views.pop(0))
                    if views:
                        views[0] = views[0][written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(final)
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise disk_error(exc) from exc
        return final

    def staging_file(self, kind: str) -> Path:
        """A new, unique temporary name in the spool for a file that is being received
        (a STOW-RS part) before it is known where it goes; on the spool's file system, so
        ``adopt`` can rename it into place. Named like ``write``'s temporary files, so
        ``sweep_partials`` removes it after a crash."""
        folder = self.root / "staging"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc) from exc
        return folder / f".{kind}.{uuid.uuid4().hex}{_TMP_SUFFIX}"

    def adopt(self, staged: Path, relative: Path) -> Path:
        """Make the complete file ``staged`` (from ``staging_file``) durable at ``relative``:
        fsync it, rename it over the final name and fsync the folder, as ``write`` does.
        Raises OutOfResources; ``staged`` is then left for the caller to remove."""
        final = self.absolute(relative)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(staged, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            staged.replace(final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise disk_error(exc) from exc
        return final

    def same_file(self, relative: str | Path, other: Path) -> bool:
        """Whether the stored file at ``relative`` holds exactly the bytes of ``other``,
        compared a block at a time (a resend of the same instance)."""
        path = self.absolute(relative)
        try:
            if path.stat().st_size != other.stat().st_size:
                return False
            with path.open("rb") as stored, other.open("rb") as candidate:
                while True:
                    block = stored.read(_COMPARE_BLOCK)
                    if block != candidate.read(_COMPARE_BLOCK):
                        return False
                    if not block:
                        return True
        except FileNotFoundError:
            return False

    def same_bytes(self, relative: str | Path, *parts: bytes | memoryview) -> bool:
        """Whether the stored file holds exactly ``parts`` (a resend of the same instance)."""
        path = self.absolute(relative)
        try:
            if path.stat().st_size != sum(len(memoryview(p).cast("B")) for p in parts):
                return False
            with path.open("rb") as stored:
                return all(stored.read(len(memoryview(p).cast("B"))) == p for p in parts)
        except FileNotFoundError:
            return False

    def remove(self, relative: str | Path) -> None:
        self.absolute(relative).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def sweep_partials(self) -> int:
        """Delete temporary files a crash left behind; returns how many."""
        count = 0
        for path in self.root.rglob(f".*{_TMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            count += 1
        if count:
            logger.warning("removed %d partial file(s) left by an earlier crash", count)
        return count


def disk_error(exc: OSError) -> OutOfResources:
    """The OutOfResources for an OSError met while writing to the spool."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfResources("spool is out of disk space")
    return OutOfResources(f"cannot write to the spool: {exc.strerror}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def space_shortfall(root: Path, min_free_mb: int) -> str | None:
    """None when ``root`` has at least ``min_free_mb`` MiB free, else the reason why not
    (the SCP refuses new associations and /readyz fails on it)."""
    try:
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return f"spool {root} unusable: {exc.strerror}"
    if free < min_free_mb * 1024 * 1024:
        return f"spool nearly full: {free // (1024 * 1024)} MB free, minimum {min_free_mb} MB"
    return None
