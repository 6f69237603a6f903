"""Run a Celery worker process: bind the tasks' app to the settings, load the model in
the pool child that analyses, and serve that process's probes and metrics."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from celery import Celery, signals
from celery.platforms import SecurityWarning

from dicom_node.dispatch import celery_config
from dicom_node.errors import ModelUnavailable, StartError
from dicom_node.settings import Settings
from dicom_node.web.server import WebServer, start_http
from workers import tasks
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
    if gpu:

        @signals.worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
        def _load(**_: Any) -> None:
            # The pool child does the analyses: it loads and warms up the model, and
            # serves the probes and metrics that describe it.
            WorkerContext.bind(settings)  # never share an engine across a fork
            try:
                WorkerContext.current().predictor  # noqa: B018
            except ModelUnavailable as exc:
                # Stay up: /readyz says why, and each study fails with the reason.
                logger.error("the model cannot be loaded: %s", exc)
            probes.serve()

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
    if gpu:
        # One analysis at a time per GPU, in a child process so time limits apply.
        argv += ["--pool", "prefork", "--concurrency", str(concurrency or 1)]
    else:
        argv += ["--pool", "threads", "--concurrency", str(concurrency or 4)]
    app.worker_main(argv)
