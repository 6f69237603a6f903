"""Inference of the shipped checkpoint on CUDA: bf16 autocast against float32, batched
against one film at a time, and the GPU metrics of the analysis worker. Skipped without a
CUDA device (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from model.predictor import Predictor
from model.result import InferenceResult

pytestmark = pytest.mark.gpu

#: bf16 keeps 8 bits of mantissa: a probability moves by a few hundredths at most.
BF16_PROBABILITY_TOLERANCE = 0.05
#: float32 on the GPU: batched and single runs differ only in summation order.
FP32_PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bf16() -> Predictor:
    return Predictor.from_checkpoint(device="cuda", bf16=True)


@pytest.fixture(scope="module")
def fp32() -> Predictor:
    return Predictor.from_checkpoint(device="cuda", bf16=False)


@pytest.fixture
def films(dicom_factory: Callable[..., Dataset]) -> list[Dataset]:
    """Four chest-like films of one size (one token grid)."""
    return [dicom_factory(rows=512, columns=448, seed=seed) for seed in range(4)]


def _probabilities(result: InferenceResult) -> list[float]:
    return [f.probability for f in result.findings]


def _path(result: InferenceResult) -> list[int]:
    return [fx.patch_index for fx in result.trajectory]


def test_the_predictor_says_which_dtype_it_computes_in(bf16: Predictor, fp32: Predictor) -> None:
    """On CUDA the default is bf16 autocast; ``bf16=False`` computes in float32."""
    assert bf16.device.type == "cuda" and bf16.dtype == "bfloat16"
    assert fp32.dtype == "float32"


def test_bf16_agrees_with_fp32_within_tolerance(
    bf16: Predictor, fp32: Predictor, films: list[Dataset]
) -> None:
    """bf16 autocast gives each finding's probability within 0.05 of float32's, and a
    trajectory of the same length that starts at the same patch."""
    for ds in films:
        low, full = bf16.predict(ds), fp32.predict(ds)
        assert _probabilities(low) == pytest.approx(
            _probabilities(full), abs=BF16_PROBABILITY_TOLERANCE
        )
        assert len(low.trajectory) == len(full.trajectory)
        assert _path(low)[:1] == _path(full)[:1]


def test_batched_equals_single_on_cuda(fp32: Predictor, films: list[Dataset]) -> None:
    """A batch of four films gives each film the result it gets alone (float32)."""
    batched = fp32.predict(films)
    for ds, result in zip(films, batched, strict=True):
        single = fp32.predict(ds)
        assert _probabilities(result) == pytest.approx(
            _probabilities(single), abs=FP32_PROBABILITY_TOLERANCE
        )
        assert _path(result) == _path(single)


def test_batched_bf16_stays_within_the_bf16_tolerance(
    bf16: Predictor, films: list[Dataset]
) -> None:
    """In bf16, batching moves no probability further than bf16 itself does."""
    batched = bf16.predict(films)
    for ds, result in zip(films, batched, strict=True):
        assert _probabilities(result) == pytest.approx(
            _probabilities(bf16.predict(ds)), abs=BF16_PROBABILITY_TOLERANCE
        )


def test_the_cuda_worker_batches_and_exports_gpu_memory(tmp_path: Path) -> None:
    """On CUDA the worker's context batches by default (8 films, 20 ms) and its metrics
    carry the GPU's memory."""
    from dicom_node.settings import ModelSettings, Settings
    from workers.batching import BatchPolicy
    from workers.context import WorkerContext

    context = WorkerContext.build(Settings(home=tmp_path, model=ModelSettings(device="cuda")))
    try:
        assert context.predictor.policy == BatchPolicy(max_batch=8, window_ms=20.0)  # type: ignore[attr-defined]
        text = context.metrics.exposition().decode()
        assert 'gazex_gpu_memory_allocated_bytes{device="cuda' in text
        assert 'gazex_gpu_memory_peak_bytes{device="cuda' in text
        assert "gazex_model_batch_size_count 1.0" in text  # the warm-up
    finally:
        context.close()
