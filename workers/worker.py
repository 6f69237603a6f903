"""Run a Celery worker process: bind the tasks' app to the settings, load the model in
the process that analyses, and serve that process's probes and metrics.

The analysis worker has two shapes (``workers.batching`` says why):

- no batching (``worker.max_batch`` 1, the CPU default): a prefork pool, by default one
  child, which loads the model and analyses one study at a time; Celery enforces the time
  limits by signalling or killing the child;
- batching (the CUDA default): one process with a thread pool of ``2 * max_batch`` threads
  (prefetching as many messages), so that one batch gathers while another runs; the
  threads share one model and one CUDA context. Celery's thread pool has no time limits, so
  :class:`TimeLimits` keeps them: past ``soft_time_limit`` it raises
  ``SoftTimeLimitExceeded`` in the task's thread, past ``time_limit`` it ends the process,
  whose unacknowledged messages (late acks) the broker hands out again.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.platforms import SecurityWarning

from dicom_node.dispatch import celery_config
from dicom_node.errors import ModelUnavailable, StartError
from dicom_node.settings import Settings
from dicom_node.web.server import WebServer, start_http
from workers import tasks
from workers.batching import batch_policy
from workers.context import WorkerContext

logger = logging.getLogger(__name__)


def configure(settings: Settings) -> Celery:
    """Bind the tasks' app (and this process's worker context) to ``settings``."""
    app = tasks.app
    app.conf.update(celery_config(settings))
    app.conf.update(
        worker_prefetch_multiplier=1,
        # A child loads the model before it reports "up": Celery's 4 s default would
        # kill it mid-load on a busy CPU (and the task it was handed with it).
        worker_proc_alive_timeout=300,
        task_soft_time_limit=settings.worker.soft_time_limit,
        task_time_limit=settings.worker.time_limit,
        task_annotations={"*": {"max_retries": settings.worker.max_retries}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    WorkerContext.bind(settings)
    return app


@dataclass
class _Running:
    thread: int
    name: str
    started: float
    soft_sent: bool = False


class TimeLimits:
    """The tasks' soft and hard time limits in a thread pool, which Celery does not enforce.

    Past ``soft`` seconds the task's thread gets ``SoftTimeLimitExceeded`` (raised at its
    next Python instruction: a torch kernel finishes first, and a film waiting for its batch
    wakes within a quarter second); past ``hard`` seconds the process ends with status 70,
    as Celery's prefork pool kills a child, and the supervisor (``gazex serve``, systemd,
    Kubernetes) starts it again. ``check`` is public for the tests.
    """

    EXIT_STATUS = 70

    def __init__(self, soft: float, hard: float, interval: float = 1.0) -> None:
        self.soft = soft
        self.hard = hard
        self.interval = interval
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()

    def started(self, task_id: str, name: str) -> None:
        with self._lock:
            self._running[task_id] = _Running(threading.get_ident(), name, time.monotonic())

    def finished(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def check(self, now: float | None = None) -> list[str]:
        """Raise the soft limit in overrunning tasks' threads; the ids it was raised in.
        Past the hard limit: end the process."""
        now = time.monotonic() if now is None else now
        raised = []
        with self._lock:
            for task_id, task in self._running.items():
                elapsed = now - task.started
                if elapsed > self.hard:
                    logger.critical(
                        "task %s[%s] ran past its hard time limit (%g s): ending the worker",
                        task.name,
                        task_id,
                        self.hard,
                    )
                    logging.shutdown()
                    os._exit(self.EXIT_STATUS)
                if elapsed > self.soft and not task.soft_sent:
                    logger.error(
                        "task %s[%s] ran past its soft time limit (%g s)",
                        task.name,
                        task_id,
                        self.soft,
                    )
                    task.soft_sent = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(task.thread), ctypes.py_object(SoftTimeLimitExceeded)
                    )
                    raised.append(task_id)
        return raised

    def watch(self) -> threading.Thread:
        """Check every ``interval`` seconds in a daemon thread; connect the task signals."""

        @signals.task_prerun.connect(weak=False)  # type: ignore[untyped-decorator]
        def _prerun(task_id: str, task: Any, **_: Any) -> None:
            self.started(task_id, str(task.name))

        @signals.task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
        def _postrun(task_id: str, **_: Any) -> None:
            self.finished(task_id)

        def loop() -> None:
            while True:
                time.sleep(self.interval)
                self.check()

        thread = threading.Thread(target=loop, name="gazex-time-limits", daemon=True)
        thread.start()
        return thread


class _Probes:
    """/healthz, /readyz (with "model loaded" on analysis workers) and /metrics of the
    process that does the work."""

    def __init__(self, settings: Settings, analysis: bool) -> None:
        self._settings = settings
        self._analysis = analysis
        self.server: WebServer | None = None

    def serve(self) -> None:
        context = WorkerContext.current()

        def model_check() -> str | None:
            if context.model_loaded:
                return None
            return context.model_error or "model not loaded"

        checks = {"model": model_check} if self._analysis else {}
        try:
            self.server = start_http(self._settings, context.engine, context.metrics, checks)
        except StartError as exc:
            # The worker still works; its probes are missing, and the log says why.
            logger.error("no /healthz, /readyz, /metrics for this worker: %s", exc)


def run_worker(settings: Settings, queues: list[str], concurrency: int | None = None) -> None:
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown)."""
    app = configure(settings)
    gpu = settings.broker.analysis_queue in queues
    probes = _Probes(settings, analysis=gpu)
    # Batching analyses share one model in one process: threads, not prefork children.
    batching = gpu and batch_policy(settings).batching

    def load_model() -> None:
        try:
            WorkerContext.current().predictor  # noqa: B018
        except ModelUnavailable as exc:
            # Stay up: /readyz says why, and each study fails with the reason.
            logger.error("the model cannot be loaded: %s", exc)
        probes.serve()

    if batching:
        TimeLimits(settings.worker.soft_time_limit, settings.worker.time_limit).watch()

        @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
        def _load_here(**_: Any) -> None:
            # The threads of this process do the analyses: it loads the model once.
            load_model()

    elif gpu:

        @signals.worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
        def _load(**_: Any) -> None:
            # The pool child does the analyses: it loads and warms up the model, and
            # serves the probes and metrics that describe it.
            WorkerContext.bind(settings)  # never share an engine across a fork
            load_model()

    else:

        @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
        def _ready(**_: Any) -> None:
            probes.serve()

    if os.geteuid() == 0:
        # Celery says this in a ten-line SecurityWarning from every worker process.
        warnings.filterwarnings("ignore", category=SecurityWarning)
        logger.warning("workers run as root: give them a user of their own (see deploy/)")
    argv = [
        "--quiet",  # no banner: the node's own start lines say where it listens
        "worker",
        "--queues",
        ",".join(queues),
        "--hostname",
        f"gazex-{'-'.join(queues)}@%h",
        "--loglevel",
        settings.log.level,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if batching:
        # Threads share the model and its CUDA context; twice the batch keeps one batch
        # gathering while the other runs (prefetch: one message per thread).
        threads = concurrency or 2 * batch_policy(settings).max_batch
        argv += ["--pool", "threads", "--concurrency", str(threads)]
    elif gpu:
        # One analysis at a time per GPU, in a child process so time limits apply.
        argv += ["--pool", "prefork", "--concurrency", str(concurrency or 1)]
    else:
        argv += ["--pool", "threads", "--concurrency", str(concurrency or 4)]
    app.worker_main(argv)
