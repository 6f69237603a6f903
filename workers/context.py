"""What a worker process holds: settings, one database engine, the spool, the model.

Built once per process (after any fork: ``WorkerContext.bind`` then ``current``) and passed
to the stage functions. The model is loaded lazily on first use, through the backend that
``model.backend`` names in the ``gazex.model_backends`` entry-point group, on the best
device (``model.device``; default CUDA when present), behind a
:class:`~workers.batching.BatchingPredictor` (batches on CUDA, straight through on CPU), and
warmed up once. On CUDA the context also exports the GPU's memory and utilisation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import db
from dicom_node.audit import AuditLog
from dicom_node.errors import ConfigError, ModelUnavailable
from dicom_node.metrics import GPUCollector, GPUReading, Metrics
from dicom_node.outbox import Outbox
from dicom_node.peers import PeerDirectory
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from workers.batching import BatchingPredictor, BatchModel, BatchPolicy, batch_policy
from workers.builder import ObjectBuilder

if TYPE_CHECKING:
    from model.predictor import Predictor as ShippedPredictor
    from model.result import InferenceResult

logger = logging.getLogger(__name__)

BACKENDS = "gazex.model_backends"


class ModelInfo(Protocol):
    @property
    def version(self) -> str: ...


class Predictor(Protocol):
    """What the workers need of a model backend (``model.predictor.Predictor`` is one)."""

    @property
    def info(self) -> ModelInfo: ...

    def predict(self, ds: Dataset) -> InferenceResult: ...


class Backend(Protocol):
    """An entry point of ``gazex.model_backends``: a class that loads a checkpoint. Its
    ``predict`` takes one dataset (-> a result) or several (-> a list, same order), so that
    the analysis worker can batch (``workers.batching``)."""

    def from_checkpoint(
        self, path: str | Path | None = None, device: str | None = None, **options: Path
    ) -> BatchModel: ...


def load_backend(name: str) -> Backend:
    """The backend registered under ``name``; ConfigError naming the key if none is."""
    found = {e.name: e for e in entry_points(group=BACKENDS)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(f"model.backend: no model backend named {name!r} ({known})")
    backend: Backend = found[name].load()
    return backend


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    spool: Spool
    peers: PeerDirectory
    outbox: Outbox
    metrics: Metrics
    audit: AuditLog
    builder: ObjectBuilder = field(default_factory=ObjectBuilder)
    _predictor: BatchingPredictor | None = None
    #: why the model could not be loaded, for /readyz
    model_error: str | None = None
    _model_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        engine = db.make_engine(settings.database_url, echo=settings.database.echo)
        sessions = db.make_sessionmaker(engine)
        metrics = Metrics()
        audit = AuditLog(sessions, settings.audit_path)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            spool=Spool(settings.spool_path),
            peers=PeerDirectory(sessions, audit=audit),
            outbox=Outbox(settings, sessions, metrics=metrics, audit=audit),
            metrics=metrics,
            audit=audit,
        )

    @property
    def model_loaded(self) -> bool:
        return self._predictor is not None

    @property
    def predictor(self) -> Predictor:
        """The model, loaded on first use (torch is imported here, never in the node).

        Raises ModelUnavailable, with what to do, when the model stack is not installed or
        the checkpoint cannot be read; ``model_error`` keeps the reason for the probes.
        """
        with self._model_lock:
            if self._predictor is None:
                try:
                    self._predictor = self._load_model()
                except ModelUnavailable as exc:
                    self.model_error = str(exc)
                    raise
                self.model_error = None
            return self._predictor

    def _load_model(self) -> BatchingPredictor:
        model = self.settings.model
        try:
            backend = load_backend(model.backend)
            # ``base`` only when set: a backend of its own need not know LoRA checkpoints.
            options = {"base": model.base_model} if model.base_model is not None else {}
            predictor = backend.from_checkpoint(model.checkpoint, device=model.device, **options)
        except ModuleNotFoundError as exc:
            unavailable = ModelUnavailable.missing_extra(exc)
            if unavailable is None:
                raise
            raise unavailable from exc
        except ConfigError as exc:
            raise ModelUnavailable(str(exc)) from exc
        except (OSError, ValueError) as exc:
            where = model.checkpoint or "the shipped checkpoint"
            raise ModelUnavailable(f"model.checkpoint: cannot load {where}: {exc}") from exc
        batcher = BatchingPredictor(predictor, self._batch_policy(predictor), self.metrics)
        _warm_up(batcher, self.builder)
        self.metrics.set_model_version(predictor.info.version)
        return batcher

    def _batch_policy(self, predictor: BatchModel) -> BatchPolicy:
        """The batching the settings ask for on the device the model landed on; the
        shipped predictor also batches that many films per forward pass, logs its dtype and
        has its GPU's memory and utilisation exported."""
        from model.predictor import Predictor as ShippedPredictor

        if not isinstance(predictor, ShippedPredictor):
            policy = batch_policy(self.settings)
            logger.info("model batching: %s", policy)
            return policy
        cuda = predictor.device.type == "cuda"
        policy = batch_policy(self.settings, cuda=cuda)
        predictor.engine.max_batch = max(predictor.engine.max_batch, policy.max_batch)
        logger.info(
            "model on %s (%s): at most %d film(s) per call, window %g ms",
            predictor.device,
            predictor.dtype,
            policy.max_batch,
            policy.window_ms,
        )
        if cuda:
            self.metrics.add_collector(GPUCollector(str(predictor.device), _gpu_reader(predictor)))
            if predictor.gpu_utilization() is None:
                logger.warning(
                    "gazex_gpu_utilization_ratio not exported: install nvidia-ml-py (pynvml)"
                )
        return policy

    def close(self) -> None:
        if self._predictor is not None:
            self._predictor.close()
        self.builder.close()
        self.engine.dispose()

    @classmethod
    def bind(cls, settings: Settings) -> None:
        """Set this process's settings; the context is built anew on next use (call it
        again in a forked child: an engine must never be shared across a fork)."""
        global _settings, _current
        with _current_lock:
            _settings, _current = settings, None

    @classmethod
    def current(cls) -> WorkerContext:
        """This process's context, built on first use from the bound settings."""
        global _current
        with _current_lock:
            if _current is None:
                if _settings is None:
                    raise RuntimeError("WorkerContext.bind(settings) was not called")
                _current = cls.build(_settings)
            return _current


_settings: Settings | None = None
_current: WorkerContext | None = None
_current_lock = threading.Lock()


def _gpu_reader(predictor: ShippedPredictor) -> Callable[[], GPUReading | None]:
    def read() -> GPUReading | None:
        memory = predictor.gpu_memory()
        if memory is None:
            return None
        allocated, reserved, peak = memory
        return GPUReading(allocated, reserved, peak, predictor.gpu_utilization())

    return read


def _warm_up(predictor: Predictor, builder: ObjectBuilder) -> None:
    """Analyse a blank synthetic film and build its objects once, so that the first study
    does not pay for lazy set-up (measured: a process's first build takes 1.3 s, later
    ones 0.3 s) and the object builder's helper process is up and warm too."""
    import tempfile

    import numpy as np
    from pydicom import dcmread

    # The synthetic-data writer makes a film shaped like a real DX; only the warm-up uses it.
    from model.train.gazedata.images import write_dicom

    with tempfile.TemporaryDirectory(prefix="gazex-warm-up-") as folder:
        path = Path(folder, "blank.dcm")
        write_dicom(path, np.full((512, 512), 0.5, dtype=np.float32), sample_id="warm-up")
        source = dcmread(path)
    builder.build(predictor.predict(source), source, 1)
    logger.info("model warmed up")
