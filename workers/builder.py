"""Builds and encodes a study's result objects on two cores.

Building the DICOM objects is pure Python (highdicom, pydicom), single-threaded, and on a
CPU it takes longer than the model. So the analysis process keeps a helper process and
hands it the trajectory SR and the attention map while it builds the findings SR, the SEG
and the GSPS itself; the two halves take about as long. The helper only saves time: when
it is missing, fails or hangs, the analysis process builds its half too.

The helper reads requests on its stdin and writes replies on its stdout, each a pickle
behind its length. It exits when its stdin closes, so it never outlives the worker.

    builder = ObjectBuilder()
    objects = builder.build(result, source, revision)    # [EncodedObject], series order
    builder.close()
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from pydicom.dataset import Dataset

from model.result import InferenceResult
from sr_templates.enum import ObjectKindValues

logger = logging.getLogger(__name__)

#: What the helper builds: half of the work, neither half needs the source's pixels.
HELPER_KINDS = frozenset({ObjectKindValues.TRAJECTORY_SR, ObjectKindValues.ATTENTION_MAP})
#: Far above a build's second; the analysis task's time limits still apply around it.
REPLY_TIMEOUT = 120.0
_PIXEL_DATA = 0x7FE00010
_LENGTH = struct.Struct(">Q")


@dataclass(frozen=True)
class EncodedObject:
    """One result object as the Part 10 file to store and send."""

    kind: ObjectKindValues
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    data: bytes


def build_and_encode(
    result: InferenceResult,
    source: Dataset,
    revision: int,
    kinds: Iterable[ObjectKindValues] = tuple(ObjectKindValues),
) -> list[EncodedObject]:
    """The objects of ``kinds`` that the result yields, built and encoded here."""
    from sr_templates.build import build_all, encode

    return [
        EncodedObject(
            kind,
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            str(ds.SeriesInstanceUID),
            encode(ds),
        )
        for kind, ds in build_all(result, source, revision, kinds).items()
    ]


class ObjectBuilder:
    """Builds a study's objects in this process and in one helper process it keeps."""

    def __init__(self) -> None:
        self._helper: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def helper_pid(self) -> int | None:
        return self._helper.pid if self._helper is not None else None

    def build(self, result: InferenceResult, source: Dataset, revision: int) -> list[EncodedObject]:
        """Every object the result yields, in series order; raises what the builders raise
        (``ValueError`` when ``source`` is not the image the result describes)."""
        with self._lock:
            handed = self._send((result, _without_pixels(source), revision))
            local = [k for k in ObjectKindValues if not (handed and k in HELPER_KINDS)]
            try:
                objects = build_and_encode(result, source, revision, local)
                reply = self._receive() if handed else []
            except BaseException:
                # A failed build or a time limit: the helper's late reply must not answer
                # the next request.
                if handed:
                    self._stop()
                raise
            if reply is None:
                reply = build_and_encode(result, source, revision, HELPER_KINDS)
            objects += reply
        order = list(ObjectKindValues)
        return sorted(objects, key=lambda o: order.index(o.kind))

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _send(self, request: tuple[Any, ...]) -> bool:
        """Hand ``request`` to the helper, started if needed; False when it cannot take it."""
        if self._helper is None or self._helper.poll() is not None:
            self._stop()
            try:
                self._helper = subprocess.Popen(
                    [sys.executable, "-m", "workers.builder"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                assert self._helper.stdin is not None and self._helper.stdout is not None
                # Read and written with deadlines (select), never blocking on the helper.
                os.set_blocking(self._helper.stdin.fileno(), False)
                os.set_blocking(self._helper.stdout.fileno(), False)
            except OSError as exc:
                logger.warning("object builder helper did not start (%s)", exc)
                return False
            logger.info("object builder helper started (pid %d)", self._helper.pid)
        assert self._helper.stdin is not None
        try:
            _write_all(self._helper.stdin.fileno(), _frame(request), REPLY_TIMEOUT)
        except (OSError, TimeoutError) as exc:  # it died or hangs
            logger.warning("object builder helper cannot take work (%r); building here", exc)
            self._stop()
            return False
        except BaseException:  # a time limit while half a request is in
            self._stop()
            raise
        return True

    def _receive(self) -> list[EncodedObject] | None:
        """The helper's objects, or None (and the helper stopped) when it has none to give."""
        assert self._helper is not None and self._helper.stdout is not None
        fd = self._helper.stdout.fileno()
        deadline = time.monotonic() + REPLY_TIMEOUT
        try:
            head = _read_exactly(fd, _LENGTH.size, deadline)
            data = _read_exactly(fd, _LENGTH.unpack(head)[0], deadline) if head else None
            reply = pickle.loads(data) if data is not None else None  # noqa: S301
            why = "it exited" if data is None else "unexpected reply"
        except TimeoutError:
            reply, why = None, "timed out"
        except (OSError, pickle.UnpicklingError, AttributeError, EOFError) as exc:
            reply, why = None, f"unreadable reply: {type(exc).__name__}"
        if isinstance(reply, list):
            return reply
        if isinstance(reply, str):  # its builders raised; it is fine and keeps serving
            logger.warning("object builder helper could not build (%s); building here", reply)
            return None
        logger.warning("object builder helper failed (%s); building its objects here", why)
        self._stop()
        return None

    def _stop(self) -> None:
        helper, self._helper = self._helper, None
        if helper is None:
            return
        helper.kill()
        helper.wait()
        for pipe in (helper.stdin, helper.stdout):
            if pipe is not None:
                pipe.close()


def _without_pixels(source: Dataset) -> Dataset:
    """The source's attributes without its pixel data (megabytes the helper never reads)."""
    tags = source.keys()  # iterating a Dataset yields its elements, decoded
    header = Dataset({tag: source.get_item(tag) for tag in tags if tag != _PIXEL_DATA})
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    return header


def _frame(value: object) -> bytes:
    """``value`` pickled, behind its length."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _write_all(fd: int, data: bytes, timeout: float) -> None:
    """Write ``data`` to a pipe, or raise TimeoutError when the reader stops taking it:
    a helper that hangs must not hang the worker with it."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
            raise TimeoutError("the reader takes nothing")
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # less room than select promised; wait again
            continue


def _read_exactly(fd: int, size: int, deadline: float) -> bytes | None:
    """``size`` bytes from a pipe, None at its end, TimeoutError past ``deadline``."""
    chunks: list[bytes] = []
    while size:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError("nothing to read")
        try:
            chunk = os.read(fd, min(size, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_frame(stream: IO[bytes], value: object) -> None:
    stream.write(_frame(value))
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    """The next value, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)  # noqa: S301 - written by our own parent process


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The helper's loop: build the helper's half of each request until stdin closes."""
    while (request := _read_frame(requests)) is not None:
        result, source, revision = request
        try:
            reply: list[EncodedObject] | str = build_and_encode(
                result, source, revision, HELPER_KINDS
            )
        except Exception as exc:  # noqa: BLE001 - the parent rebuilds and raises it itself
            reply = type(exc).__name__
        _write_frame(replies, reply)


def main() -> int:
    # Ctrl-C at a terminal reaches the whole process group: the worker decides when to
    # stop, and its exit closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies get a private copy of stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    # Run the module's own copy, so that replies pickle as workers.builder.EncodedObject.
    from workers import builder

    sys.exit(builder.main())
