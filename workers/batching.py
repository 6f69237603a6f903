"""Dynamic batching of the analysis worker's model calls.

On a GPU one forward pass of eight films costs little more than one of a single film, so the
analysis worker runs several studies at once in one process (Celery's thread pool) and hands
every film to one :class:`BatchingPredictor`. It waits up to ``worker.batch_window_ms`` from
the first film for others (at most ``worker.max_batch``), runs them through the model in one
``predict([...])`` call and gives each caller its own result, or its own exception: when the
batched call fails, each film is run alone, so one bad film fails only its own study.

Why threads and not prefork on a GPU: a CUDA context belongs to a process (each prefork
child would hold its own copy of the weights and its own context, and films in different
children can never share a batch), while threads of one process share the model, and torch
releases the GIL inside its kernels, so the other threads decode, build and store meanwhile.
On a CPU the default is ``max_batch`` 1: each call goes straight to the model in the
caller's thread, in a prefork child, as before batching existed. Batching does help the
model there too when studies queue up (``benchmarks/bench_gpu.py`` on the 2-core CI machine,
8 films handed in at once by 8 threads: 1.96x the images/s of batching off for 2048x2048
films, 2.75x for 1024x1024), but the rest of an analysis (building the
objects, about 200 ms of single-threaded Python a study) then shares one process and its
GIL, so a CPU node that wants it sets ``worker.max_batch`` (e.g. 4) with
``worker.batch_window_ms = 0``: no film waits, and films that arrive while the model is busy
run together in the next call.

>>> batcher = BatchingPredictor(predictor, BatchPolicy(max_batch=8, window_ms=20), metrics)
>>> result = batcher.predict(ds)        # from any thread; blocks until its batch has run
>>> batcher.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, overload

from pydicom.dataset import Dataset

from dicom_node.metrics import Metrics
from dicom_node.settings import Settings

if TYPE_CHECKING:
    from model.result import InferenceResult

logger = logging.getLogger(__name__)

#: Defaults on a CUDA device: a batch of 8 of this model fits any GPU with room to spare,
#: and 20 ms is short beside a study's second from release to results.
CUDA_MAX_BATCH = 8
CUDA_WINDOW_MS = 20.0
#: How often a caller waiting for its batch wakes up, so that a soft time limit (raised in
#: its thread by the worker's watchdog) interrupts the wait.
_WAKE_S = 0.25


class ModelInfo(Protocol):
    @property
    def version(self) -> str: ...


class BatchModel(Protocol):
    """A model backend that takes one dataset or several (``model.predictor.Predictor``)."""

    @property
    def info(self) -> ModelInfo: ...

    @overload
    def predict(self, datasets: Dataset) -> InferenceResult: ...

    @overload
    def predict(self, datasets: Sequence[Dataset]) -> list[InferenceResult]: ...


@dataclass(frozen=True)
class BatchPolicy:
    """How the analysis worker batches: at most ``max_batch`` films per model call, waiting
    at most ``window_ms`` from the first."""

    max_batch: int = 1
    window_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"worker.max_batch must be at least 1, not {self.max_batch}")
        if self.window_ms < 0:
            raise ValueError(f"worker.batch_window_ms must not be negative, not {self.window_ms}")

    @property
    def batching(self) -> bool:
        return self.max_batch > 1


def cuda_present() -> bool:
    """Whether an NVIDIA driver is loaded, without importing torch (the Celery parent
    chooses its pool before any model exists; initialising CUDA there would break a fork)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def batch_policy(settings: Settings, cuda: bool | None = None) -> BatchPolicy:
    """The policy the settings ask for; the defaults depend on the device: batches of
    ``CUDA_MAX_BATCH`` within ``CUDA_WINDOW_MS`` on CUDA, none on CPU. ``cuda``: whether the
    model runs on CUDA (default: ``model.device`` says so, or it is unset and a driver is
    loaded)."""
    if cuda is None:
        device = settings.model.device
        cuda = device.startswith("cuda") if device else cuda_present()
    worker = settings.worker
    max_batch = worker.max_batch or (CUDA_MAX_BATCH if cuda else 1)
    window = worker.batch_window_ms
    if window is None:
        window = CUDA_WINDOW_MS if cuda and max_batch > 1 else 0.0
    return BatchPolicy(max_batch=max_batch, window_ms=window)


@dataclass
class _Pending:
    ds: Dataset
    future: Future[InferenceResult]


class BatchingPredictor:
    """Collects ``predict(ds)`` calls from the threads of one process into batched model
    calls (see the module docstring); with ``max_batch`` 1 each call goes straight to the
    model in the caller's thread. Model calls never overlap: the model is not re-entrant.
    """

    def __init__(
        self, predictor: BatchModel, policy: BatchPolicy, metrics: Metrics | None = None
    ) -> None:
        self.predictor = predictor
        self.policy = policy
        self._metrics = metrics
        self._model_lock = threading.Lock()
        self._queue: deque[_Pending] = deque()
        self._arrived = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def info(self) -> ModelInfo:
        return self.predictor.info

    def predict(self, ds: Dataset) -> InferenceResult:
        """This film's result (or its exception), run in a batch with the films other
        threads hand in within the window."""
        if not self.policy.batching:
            with self._model_lock:
                start = time.perf_counter()
                try:
                    return self.predictor.predict(ds)
                finally:
                    self._observe(1, time.perf_counter() - start)
        pending = _Pending(ds, Future())
        with self._arrived:
            if self._closed:
                raise RuntimeError("the batching predictor is closed")
            self._start()
            self._queue.append(pending)
            self._arrived.notify()
        try:
            while not wait([pending.future], timeout=_WAKE_S).done:
                pass
        except BaseException:
            # Interrupted (a soft time limit): the batch need not run this film any more.
            pending.future.cancel()
            raise
        return pending.future.result()

    def close(self) -> None:
        """Stop the batching thread once the films handed in so far have run."""
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    # -- the batching thread -----------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="gazex-batcher", daemon=True)
            self._thread.start()

    def _next_batch(self) -> list[_Pending] | None:
        """Wait for a first film, then up to the window for more; None once closed."""
        with self._arrived:
            while not self._queue:
                if self._closed:
                    return None
                self._arrived.wait()
            deadline = time.monotonic() + self.policy.window_ms / 1000.0
            while len(self._queue) < self.policy.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            count = min(len(self._queue), self.policy.max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                self._run(live)
            except BaseException as exc:
                # Not an error of a film (the interpreter is stopping): fail the callers
                # still waiting, and end this thread; the next call starts a new one.
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                raise

    def _run(self, batch: list[_Pending]) -> None:
        with self._model_lock:
            start = time.perf_counter()
            try:
                results = self.predictor.predict([p.ds for p in batch])
            except Exception as exc:  # noqa: BLE001 - each film is retried alone below
                self._observe(len(batch), time.perf_counter() - start)
                if len(batch) == 1:
                    batch[0].future.set_exception(exc)
                    return
                logger.warning(
                    "a batch of %d films failed (%s): running each alone",
                    len(batch),
                    type(exc).__name__,
                )
                self._run_alone(batch)
                return
            self._observe(len(batch), time.perf_counter() - start)
        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)

    def _run_alone(self, batch: list[_Pending]) -> None:
        """Each film on its own (the model lock held), so that only a bad one fails."""
        for pending in batch:
            start = time.perf_counter()
            try:
                result = self.predictor.predict(pending.ds)
            except Exception as exc:  # noqa: BLE001 - handed to its own caller
                pending.future.set_exception(exc)
            else:
                pending.future.set_result(result)
            finally:
                self._observe(1, time.perf_counter() - start)

    def _observe(self, size: int, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.model_batch(size, seconds)
