"""Dynamic batching in the analysis worker: films handed in together by several threads run
as one model call of the shipped checkpoint, and each caller gets its own result."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from factories import radiograph
from pydicom import dcmread
from pydicom.dataset import Dataset
from stackkit import Stack

from dicom_node.db.models import StudyState
from dicom_node.errors import ConfigError
from dicom_node.metrics import GPUCollector, GPUReading, Metrics
from dicom_node.settings import ModelSettings, Settings, WorkerSettings, load_settings
from model.predictor import Predictor
from model.result import InferenceResult, ModelInfo
from workers.batching import BatchingPredictor, BatchPolicy, batch_policy
from workers.context import WorkerContext
from workers.worker import TimeLimits


class CountingPredictor:
    """The real predictor, with each call's film count recorded (1 call = 1 model run)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        #: per call: the number of films, or None for a single Dataset (unbatched form)
        self.calls: list[int | None] = []
        self.threads: list[int] = []

    @property
    def info(self) -> ModelInfo:
        return self.predictor.info

    def predict(self, datasets: Any) -> Any:
        single = isinstance(datasets, Dataset)
        self.calls.append(None if single else len(datasets))
        self.threads.append(threading.get_ident())
        return self.predictor.predict(datasets)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The shipped checkpoint, loaded once on CPU."""
    return Predictor.from_checkpoint(device="cpu")


@pytest.fixture(scope="module")
def films() -> list[Dataset]:
    """Four chest films of the same size (one token grid), different pixels."""
    return [radiograph(rows=256, columns=208, seed=seed) for seed in range(4)]


@pytest.fixture(scope="module")
def singles(predictor: Predictor, films: list[Dataset]) -> list[InferenceResult]:
    """Each film predicted alone, the way the worker did before batching."""
    return [predictor.predict(ds) for ds in films]


def _broken(seed: int = 9) -> Dataset:
    ds = radiograph(rows=256, columns=208, seed=seed)
    ds.PixelData = ds.PixelData[:100]  # truncated: the model cannot read it
    return ds


def _together(
    batcher: BatchingPredictor, films: Sequence[Dataset]
) -> list[InferenceResult | BaseException]:
    """Hand every film in from its own thread, all released at the same moment."""
    outcomes: list[InferenceResult | BaseException | None] = [None] * len(films)
    barrier = threading.Barrier(len(films))

    def call(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = batcher.predict(films[i])
        except BaseException as exc:  # noqa: BLE001 - compared by the test
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(films))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def _assert_same(result: InferenceResult | BaseException, single: InferenceResult) -> None:
    assert isinstance(result, InferenceResult), result
    assert result.source == single.source
    assert [f.key for f in result.findings] == [f.key for f in single.findings]
    for got, want in zip(result.findings, single.findings, strict=True):
        assert got.probability == pytest.approx(want.probability, abs=1e-5)
        assert got.present == want.present
    assert [fx.patch_index for fx in result.trajectory] == [
        fx.patch_index for fx in single.trajectory
    ]
    assert [fx.step for fx in result.trajectory] == [fx.step for fx in single.trajectory]


def test_films_arriving_together_run_as_one_batched_model_call(
    predictor: Predictor, films: list[Dataset], singles: list[InferenceResult]
) -> None:
    """Four threads calling within the window make one model call of four films, and each
    gets its own film's result, equal to predicting that film alone."""
    counting = CountingPredictor(predictor)
    metrics = Metrics()
    batcher = BatchingPredictor(counting, BatchPolicy(max_batch=8, window_ms=1500), metrics)
    try:
        outcomes = _together(batcher, films)
    finally:
        batcher.close()
    assert counting.calls == [4]
    for outcome, single in zip(outcomes, singles, strict=True):
        _assert_same(outcome, single)
    assert metrics.model_batch_size._sum.get() == 4  # one observation of 4 films
    text = metrics.exposition().decode()
    assert "gazex_model_batch_size_count 1.0" in text
    assert 'gazex_model_batch_size_bucket{le="4.0"} 1.0' in text
    assert 'gazex_model_batch_size_bucket{le="3.0"} 0.0' in text
    assert "gazex_model_batch_seconds_count 1.0" in text


def test_a_full_batch_runs_without_waiting_for_the_window(
    predictor: Predictor, films: list[Dataset], singles: list[InferenceResult]
) -> None:
    """``max_batch`` films start the model at once; more are left for the next batch."""
    counting = CountingPredictor(predictor)
    batcher = BatchingPredictor(counting, BatchPolicy(max_batch=2, window_ms=60_000))
    start = time.monotonic()
    try:
        outcomes = _together(batcher, films)
    finally:
        batcher.close()
    assert time.monotonic() - start < 30  # far below the minute-long window
    assert counting.calls == [2, 2]
    for outcome, single in zip(outcomes, singles, strict=True):
        _assert_same(outcome, single)


def test_a_bad_film_fails_only_its_own_caller(
    predictor: Predictor, films: list[Dataset], singles: list[InferenceResult]
) -> None:
    """When the batched call raises, each film runs alone: the unreadable film's caller gets
    the model's error and the others their results."""
    counting = CountingPredictor(predictor)
    metrics = Metrics()
    batcher = BatchingPredictor(counting, BatchPolicy(max_batch=8, window_ms=1500), metrics)
    try:
        outcomes = _together(batcher, [films[0], _broken(), films[2]])
    finally:
        batcher.close()
    assert counting.calls == [3, None, None, None]
    _assert_same(outcomes[0], singles[0])
    assert isinstance(outcomes[1], ValueError)
    assert "cannot decode pixel data" in str(outcomes[1])
    _assert_same(outcomes[2], singles[2])
    assert metrics.model_batch_size._sum.get() == 3 + 1 + 1 + 1


def test_max_batch_one_passes_straight_through(
    predictor: Predictor, films: list[Dataset], singles: list[InferenceResult]
) -> None:
    """With ``max_batch`` 1 (the CPU default) each call is today's ``predict(ds)`` in the
    caller's own thread: no batching thread, no window."""
    counting = CountingPredictor(predictor)
    metrics = Metrics()
    batcher = BatchingPredictor(counting, BatchPolicy(max_batch=1, window_ms=5000), metrics)
    start = time.monotonic()
    result = batcher.predict(films[1])
    assert time.monotonic() - start < 5
    assert counting.calls == [None]
    assert counting.threads == [threading.get_ident()]
    assert batcher._thread is None
    _assert_same(result, singles[1])
    with pytest.raises(ValueError, match="cannot decode pixel data"):
        batcher.predict(_broken())
    assert "gazex_model_batch_size_count 2.0" in metrics.exposition().decode()


def test_a_caller_interrupted_while_waiting_leaves_its_film_out(
    predictor: Predictor, films: list[Dataset]
) -> None:
    """A soft time limit raised in a waiting thread cancels its film: the batch runs
    without it."""
    counting = CountingPredictor(predictor)
    batcher = BatchingPredictor(counting, BatchPolicy(max_batch=8, window_ms=2000))
    errors: list[BaseException] = []
    waiting = threading.Thread(target=lambda: _catch(errors, batcher.predict, films[0]))
    waiting.start()
    time.sleep(0.3)
    limits = TimeLimits(soft=0.1, hard=3600)
    assert waiting.ident is not None
    limits._running["t1"] = _running_entry(waiting.ident)
    assert limits.check() == ["t1"]
    waiting.join(10)
    other = batcher.predict(films[1])
    batcher.close()
    assert [type(e) for e in errors] == [SoftTimeLimitExceeded]
    assert counting.calls == [1]  # only the second film ran
    assert other.source.SOPInstanceUID == films[1].SOPInstanceUID


def _catch(errors: list[BaseException], func: Callable[[Dataset], object], ds: Dataset) -> None:
    try:
        func(ds)
    except BaseException as exc:  # noqa: BLE001 - compared by the test
        errors.append(exc)


def _running_entry(thread: int) -> Any:
    from workers.worker import _Running

    return _Running(thread, "gazex.analyze_study", time.monotonic() - 1.0)


def test_time_limits_raise_the_soft_limit_once_in_the_tasks_thread() -> None:
    """The thread pool's watchdog raises SoftTimeLimitExceeded in an overrunning task's
    thread, once, and leaves tasks within their limit alone."""
    limits = TimeLimits(soft=5, hard=3600)
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy() -> None:
        limits.started("slow", "gazex.analyze_study")
        try:
            while not stop.is_set():
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - compared by the test
            errors.append(exc)
        finally:
            limits.finished("slow")

    thread = threading.Thread(target=busy)
    thread.start()
    time.sleep(0.1)
    assert limits.check() == []
    assert limits.check(time.monotonic() + 10) == ["slow"]
    assert limits.check(time.monotonic() + 20) == []
    thread.join(5)
    stop.set()
    assert [type(e) for e in errors] == [SoftTimeLimitExceeded]


def test_batching_is_on_by_default_on_cuda_only(tmp_path: Path) -> None:
    """Defaults: 8 films within 20 ms on CUDA, straight through on CPU; the settings win."""
    plain = Settings(home=tmp_path)
    assert batch_policy(plain, cuda=False) == BatchPolicy(max_batch=1, window_ms=0.0)
    assert batch_policy(plain, cuda=True) == BatchPolicy(max_batch=8, window_ms=20.0)
    cpu = Settings(home=tmp_path, model=ModelSettings(device="cpu"))
    assert batch_policy(cpu) == BatchPolicy(max_batch=1, window_ms=0.0)
    chosen = Settings(home=tmp_path, worker=WorkerSettings(max_batch=4, batch_window_ms=50))
    assert batch_policy(chosen, cuda=False) == BatchPolicy(max_batch=4, window_ms=50.0)
    assert batch_policy(chosen, cuda=True) == BatchPolicy(max_batch=4, window_ms=50.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MAX_BATCH", "0", "invalid setting worker.max_batch: "),
        ("MAX_BATCH", "65", "invalid setting worker.max_batch: "),
        ("BATCH_WINDOW_MS", "-1", "invalid setting worker.batch_window_ms: "),
        ("BATCH_WINDOW_MS", "soon", "invalid setting worker.batch_window_ms: "),
    ],
)
def test_invalid_batching_settings_name_the_key(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    """A bad batching value stops the worker with one line naming the key."""
    monkeypatch.setenv(f"GAZEX_WORKER__{key}", value)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_gpu_metrics_are_exported_only_with_a_reading() -> None:
    """The GPU gauges carry the device's reading; without one (CPU) they are absent, and
    without nvidia-ml-py the utilisation alone is left out."""
    metrics = Metrics()
    reading: list[GPUReading | None] = [GPUReading(100, 200, 150, 0.25)]
    metrics.add_collector(GPUCollector("cuda:0", lambda: reading[0]))
    text = metrics.exposition().decode()
    assert 'gazex_gpu_memory_allocated_bytes{device="cuda:0"} 100.0' in text
    assert 'gazex_gpu_memory_reserved_bytes{device="cuda:0"} 200.0' in text
    assert 'gazex_gpu_memory_peak_bytes{device="cuda:0"} 150.0' in text
    assert 'gazex_gpu_utilization_ratio{device="cuda:0"} 0.25' in text
    reading[0] = GPUReading(100, 200, 150, None)
    text = metrics.exposition().decode()
    assert "gazex_gpu_memory_peak_bytes{" in text and "gazex_gpu_utilization" not in text
    reading[0] = None
    assert "gazex_gpu" not in metrics.exposition().decode()


def test_a_cpu_worker_context_predicts_straight_through_without_gpu_metrics(
    tmp_path: Path,
) -> None:
    """The worker's context on CPU loads the shipped model behind a pass-through batcher,
    records its calls as batches of one, and exports no GPU metric at all."""
    settings = Settings(home=tmp_path, model=ModelSettings(device="cpu"))
    context = WorkerContext.build(settings)
    try:
        batcher = context.predictor
        assert isinstance(batcher, BatchingPredictor)
        assert batcher.policy == BatchPolicy(max_batch=1, window_ms=0.0)
        result = batcher.predict(radiograph(rows=128, columns=96))
        assert result.findings
        text = context.metrics.exposition().decode()
        assert "gazex_model_batch_size_count 2.0" in text  # the warm-up and this film
        assert "gazex_gpu" not in text
    finally:
        context.close()


@pytest.mark.integration
@pytest.mark.slow
def test_e2e_studies_completing_together_share_a_batch_in_the_real_worker(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """`gazex serve` with `worker.max_batch` 4: three studies sent in one association
    complete together, the thread-pool analysis worker runs them through the model in
    fewer calls than studies, and all three come back."""
    from nodekit import free_port, storescu
    from stackkit import chest_study

    http_port = free_port()
    stack = make_stack("embedded", http_port=http_port)
    stack.env["GAZEX_WORKER__MAX_BATCH"] = "4"
    stack.env["GAZEX_WORKER__BATCH_WINDOW_MS"] = "1000"
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = [chest_study(tmp_path / f"study{i}", seed=7 + i, lateral=False)[0] for i in range(3)]
    assert storescu(stack.port, sent).returncode == 0
    for path in sent:
        uid = dcmread(path, stop_before_pixels=True).StudyInstanceUID
        stack.wait_state(uid, {StudyState.DONE})
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port + 1}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "gazex_model_batch_size_sum 4.0" in metrics  # warm-up 1 + the three studies
    calls = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("gazex_model_batch_size_count")
    )
    assert calls < 4, stack.tail()
