"""Prometheus metrics of the node and the workers.

Every process builds one ``Metrics`` (a private ``CollectorRegistry``, never the global
default one) and serves it on ``/metrics`` (see ``dicom_node.web.app``). The names are the
contract with ``deploy/grafana/gazex.json``:

    gazex_associations_total{outcome}   accepted, rejected, aborted, released
    gazex_instances_received_total      C-STOREs answered with success
    gazex_bytes_received_total          their encoded size
    gazex_studies{state}                studies per state, read from the database at scrape
    gazex_stage_seconds{stage}          first instance received -> complete, analysed,
                                        delivered, notified
    gazex_queue_depth{queue}            messages waiting per queue, read from the broker
    gazex_delivery_failures_total       failed result C-STOREs (each attempt counts)
    gazex_hl7_failures_total            ORU^R01 not acknowledged with AA
    gazex_model_seconds                 seconds per model prediction
    gazex_model_info{version}           1 for the loaded model version
    gazex_model_batch_size              films per model call of the analysis worker
    gazex_model_batch_seconds           seconds per model call (one batch)
    gazex_gpu_memory_allocated_bytes{device}, gazex_gpu_memory_reserved_bytes{device},
    gazex_gpu_memory_peak_bytes{device} the analysis worker's CUDA memory, read at scrape
    gazex_gpu_utilization_ratio{device} the GPU's busy fraction (needs nvidia-ml-py)

Collectors that read the database or the broker run with a short time limit, so a scrape
never hangs on a peer that is down: the metric is left out instead. Only the node registers
``StudiesCollector`` and ``QueueDepthCollector``: the dashboard sums over every process,
so a worker exporting them too would count each study and message twice.

A worker builds ``Metrics()``, calls ``set_model_version``, observes ``model_seconds``,
``stage_reached("analysed" | "notified", study.first_received_at)``, increments
``hl7_failures`` (and ``delivery_failures`` through ``Outbox``), and serves it with
``dicom_node.web.server.start_http(settings, engine, metrics, {"model": check})``. The
analysis worker observes ``model_batch(size, seconds)`` per model call and, on CUDA only,
adds a ``GPUCollector`` (on CPU the GPU metrics are absent, not zero); the node itself never
imports torch, so the collector reads the device through a function the worker hands it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import Study, StudyState, utcnow
from dicom_node.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

Outcome = Literal["accepted", "rejected", "aborted", "released"]
Stage = Literal["complete", "analysed", "delivered", "notified"]

#: Seconds from the first instance to a stage: a quiet period of seconds up to an hour.
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
#: Films per model call: 1 (no batching) up to ``worker.max_batch`` (at most 64).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

#: Time limit of one database or broker read made at scrape time.
COLLECT_TIMEOUT = 2.0


def call_with_timeout(func: Callable[[], T], timeout: float, name: str) -> T:
    """Run ``func`` in a daemon thread and return its result, or raise TimeoutError.

    The thread is left to finish on its own when it overruns (its sockets have timeouts
    of their own); the caller is never held longer than ``timeout``.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def _run() -> None:
        try:
            result.append(func())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=_run, name=f"gazex-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{name} did not answer within {timeout:g} s")
    if error:
        raise error[0]
    return result[0]


DOMAIN_VERDICTS = ("in_domain", "out_of_domain", "not_checked")


class Metrics:
    """The metrics of one process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds (Linux).
        ProcessCollector(registry=self.registry)
        self.associations = Counter(
            "gazex_associations",
            "DICOM associations by outcome (accepted, rejected, aborted, released).",
            ["outcome"],
            registry=self.registry,
        )
        self.instances_received = Counter(
            "gazex_instances_received",
            "Instances received with C-STORE and made durable.",
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "gazex_bytes_received",
            "Encoded bytes of the instances received.",
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "gazex_stage_seconds",
            "Seconds from the first instance of a study received to each stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "gazex_delivery_failures",
            "Result C-STOREs to a destination that failed (each attempt counts).",
            registry=self.registry,
        )
        self.hl7_failures = Counter(
            "gazex_hl7_failures",
            "HL7 ORU^R01 messages not acknowledged with AA (AE, AR, timeout, connection).",
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "gazex_model_seconds",
            "Seconds per model prediction.",
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.model_batch_size = Histogram(
            "gazex_model_batch_size",
            "Films per model call of the analysis worker (1: unbatched).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_batch_seconds = Histogram(
            "gazex_model_batch_seconds",
            "Seconds per model call (one batch of films).",
            buckets=MODEL_BUCKETS,
            registry=self.registry,
        )
        self.domain_verdicts = Counter(
            "gazex_domain_verdicts",
            "Films analysed, by the domain gate's verdict (in_domain, out_of_domain, "
            "not_checked: a checkpoint without a gate).",
            ["verdict"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "gazex_model_info",
            "The model version loaded by this process (value 1).",
            ["version"],
            registry=self.registry,
        )
        for outcome in ("accepted", "rejected", "aborted", "released"):
            self.associations.labels(outcome=outcome)
        for verdict in DOMAIN_VERDICTS:
            self.domain_verdicts.labels(verdict=verdict)

    # -- helpers the node and the workers call ---------------------------------------

    def association(self, outcome: Outcome) -> None:
        self.associations.labels(outcome=outcome).inc()

    def instance_received(self, size: int) -> None:
        self.instances_received.inc()
        self.bytes_received.inc(size)

    def domain_verdict(self, out_of_domain: bool | None) -> None:
        """Count one analysed film by its domain verdict (None: not checked)."""
        verdict = {None: "not_checked", True: "out_of_domain", False: "in_domain"}[out_of_domain]
        self.domain_verdicts.labels(verdict=verdict).inc()

    def stage_reached(
        self, stage: Stage, first_received_at: datetime, now: datetime | None = None
    ) -> None:
        """Observe the seconds between a study's first instance and ``stage``."""
        seconds = ((now or utcnow()) - first_received_at).total_seconds()
        self.stage_seconds.labels(stage=stage).observe(max(0.0, seconds))

    def model_batch(self, size: int, seconds: float) -> None:
        """Observe one model call of ``size`` films that took ``seconds``."""
        self.model_batch_size.observe(size)
        self.model_batch_seconds.observe(seconds)

    def set_model_version(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class GPUReading:
    """One CUDA device's state, as a worker reads it (``model.predictor.Predictor``)."""

    allocated_bytes: int
    reserved_bytes: int
    peak_bytes: int
    #: Busy fraction over the driver's last sample period; None without nvidia-ml-py.
    utilization: float | None = None


class GPUCollector(Collector):
    """``gazex_gpu_*{device}``: the analysis worker's CUDA memory and utilisation, read at
    scrape through ``read`` (None or an error: the metrics are left out of that scrape)."""

    def __init__(self, device: str, read: Callable[[], GPUReading | None]) -> None:
        self._device = device
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    @staticmethod
    def _families(reading: GPUReading | None) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "gazex_gpu_memory_allocated_bytes",
            "CUDA memory held by tensors of this process.",
            labels=["device"],
        )
        yield GaugeMetricFamily(
            "gazex_gpu_memory_reserved_bytes",
            "CUDA memory reserved by this process's caching allocator.",
            labels=["device"],
        )
        yield GaugeMetricFamily(
            "gazex_gpu_memory_peak_bytes",
            "Most CUDA memory held by tensors of this process since it started.",
            labels=["device"],
        )
        if reading is None or reading.utilization is not None:
            yield GaugeMetricFamily(
                "gazex_gpu_utilization_ratio",
                "Fraction of the last sample period the GPU was busy (all processes).",
                labels=["device"],
            )

    def collect(self) -> Iterator[Metric]:
        try:
            reading = self._read()
        except Exception as exc:  # noqa: BLE001 - leave the metrics out, never fail a scrape
            logger.warning("GPU metrics unavailable: %s", type(exc).__name__)
            return
        if reading is None:
            return
        values = [
            reading.allocated_bytes,
            reading.reserved_bytes,
            reading.peak_bytes,
            reading.utilization,
        ]
        for family, value in zip(self._families(reading), values, strict=False):
            assert value is not None
            family.add_metric([self._device], value)
            yield family


class StudiesCollector(Collector):
    """``gazex_studies{state}``: studies in the database per state, counted at scrape."""

    def __init__(self, sessions: sessionmaker[Session], timeout: float = COLLECT_TIMEOUT) -> None:
        self._sessions = sessions
        self._timeout = timeout

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("gazex_studies", "Studies per state.", labels=["state"])]

    def _count(self) -> dict[str, int]:
        with self._sessions() as session:
            rows = session.execute(select(Study.state, func.count()).group_by(Study.state)).all()
        return {StudyState(state).value: int(count) for state, count in rows}

    def collect(self) -> Iterator[Metric]:
        try:
            counts = call_with_timeout(self._count, self._timeout, "studies-metric")
        except Exception as exc:  # noqa: BLE001 - leave the metric out, never fail a scrape
            logger.warning("studies metric unavailable: %s", type(exc).__name__)
            return
        family = GaugeMetricFamily("gazex_studies", "Studies per state.", labels=["state"])
        for state in StudyState:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


def filesystem_queue_depth(folder: Path, queue: str) -> int:
    """Messages waiting in the embedded broker's folder: files ``<time>_<id>.<queue>.msg``."""
    suffix = f"{queue}.msg"
    try:
        return sum(1 for p in folder.iterdir() if p.name.partition(".")[2] == suffix)
    except FileNotFoundError:
        return 0


def broker_queue_depth(url: str, queue: str, timeout: float) -> int:
    """Messages waiting in ``queue`` on RabbitMQ (passive declare) or Redis (list length).

    A queue that does not exist yet holds nothing.
    """
    from kombu.connection import Connection
    from kombu.exceptions import ChannelError

    options = {
        "read_timeout": timeout,
        "write_timeout": timeout,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if url.startswith(("redis://", "rediss://")):
        options = {k: v for k, v in options.items() if k.startswith("socket")}
    elif url.startswith(("amqp://", "amqps://", "pyamqp://")):
        options = {k: v for k, v in options.items() if not k.startswith("socket")}
    else:
        options = {}
    with Connection(  # type: ignore[no-untyped-call]
        url, connect_timeout=timeout, transport_options=options
    ) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        channel = conn.channel()
        try:
            declared = channel.queue_declare(queue=queue, passive=True)
        except ChannelError:
            return 0
        except Exception as exc:
            # amqp reports a missing queue as NotFound (404), not a kombu ChannelError.
            if type(exc).__name__ == "NotFound":
                return 0
            raise
        finally:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - the channel may already be closed by a 404
                logger.debug("closing the channel after a passive declare failed")
        return int(declared.message_count)


class QueueDepthCollector(Collector):
    """``gazex_queue_depth{queue}``: messages waiting per Celery queue, read at scrape."""

    def __init__(self, settings: Settings, timeout: float = COLLECT_TIMEOUT) -> None:
        self._url = settings.broker_url
        self._folder = settings.broker_folder / "queue"
        self._queues = list(
            dict.fromkeys([settings.broker.analysis_queue, settings.broker.io_queue])
        )
        self._timeout = timeout

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("gazex_queue_depth", "Messages waiting.", labels=["queue"])]

    def depths(self) -> dict[str, int]:
        if self._url.startswith("filesystem://"):
            return {q: filesystem_queue_depth(self._folder, q) for q in self._queues}
        return {q: broker_queue_depth(self._url, q, self._timeout) for q in self._queues}

    def collect(self) -> Iterator[Metric]:
        try:
            depths = call_with_timeout(self.depths, self._timeout * 2, "queue-depth-metric")
        except Exception as exc:  # noqa: BLE001 - leave the metric out, never fail a scrape
            logger.warning("queue depth unavailable: %s", type(exc).__name__)
            return
        family = GaugeMetricFamily(
            "gazex_queue_depth", "Messages waiting per queue.", labels=["queue"]
        )
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        yield family
