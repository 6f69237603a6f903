"""Training and inference throughput on the device present: CUDA when available, else CPU
(not a test; the header says which device and card it measured).

Four tables, each with its baseline measured in the same run:

1. training steps/s and peak memory of the gaze model (``--size``, synthetic samples through
   ``model.train.losses.compute_losses``, AdamW), float32 against bf16 autocast;
2. inference images/s of the shipped checkpoint (DICOM parse and decode included, as
   ``bench_inference.py``), one film per call against ``--batch`` films per call, float32
   against bf16 (bf16 on CUDA only: the CPU path computes in float32);
3. the analysis worker's ``BatchingPredictor``: ``--batch`` threads handing in a film each
   at once, against the same films one call at a time;
4. one process against DDP on every GPU (``torchrun ... gazex train``), on 2+ GPUs only.

Peak memory is ``torch.cuda.max_memory_allocated`` per case on CUDA; on CPU the process's
resident-set high-water mark (``ru_maxrss``, which only rises: read the first row's).

    .venv/bin/python benchmarks/bench_gpu.py [--quick] [--size small|tiny] [--batch 8]
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import film_bytes  # the same synthetic DX films


@dataclass
class Row:
    case: str
    times: list[float]  # seconds per timed unit
    per_unit: int  # images (or steps) per timed unit
    peak_bytes: int | None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        return float(np.percentile(self.times, 95))

    @property
    def rate(self) -> float:
        return self.per_unit / self.median


def peak_reset(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(func: Callable[[], object], runs: int, warmup: int, device: Any) -> list[float]:
    for _ in range(warmup):
        func()
    sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def autocast(device: Any, bf16: bool) -> AbstractContextManager[Any]:
    import torch

    if not bf16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def print_table(title: str, unit: str, rows: list[Row]) -> None:
    baseline = rows[0].rate
    print(f"\n{title}")
    header = (
        f"{'case':40}{'median ms':>11}{'p95 ms':>9}{unit + '/s':>12}{'x baseline':>12}"
        f"{'peak MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        peak = f"{row.peak_bytes / 2**20:10.0f}" if row.peak_bytes is not None else f"{'-':>10}"
        print(
            f"{row.case:40}{row.median * 1000:11.1f}{row.p95 * 1000:9.1f}{row.rate:12.2f}"
            f"{row.rate / baseline:12.2f}{peak}"
        )


# -- 1. training ---------------------------------------------------------------------


def bench_training(args: argparse.Namespace, device: Any) -> list[Row]:
    import torch

    from model.architecture import TINY, GazeXModel, GazeXSettings, ModelSize
    from model.tokenizer import TextCodec, train_tokenizer
    from model.train.batching import collate
    from model.train.gazedata.synth import generate_sample
    from model.train.loop import corpus, epoch_batches, prepare_samples, to_device
    from model.train.losses import compute_losses

    settings = GazeXSettings()
    samples = [generate_sample(seed, height=512, width=512) for seed in range(args.batch)]
    codec = TextCodec(train_tokenizer(corpus(samples), vocab_size=1024))
    prepared = prepare_samples(samples, settings)
    examples = epoch_batches(
        prepared, codec, settings, args.batch, random.Random(0), 1, shuffle=False
    )[0]
    batch = to_device(
        collate(examples, codec, settings.effective_gaze_tokens, settings.patch_spec), device
    )
    size = TINY if args.size == "tiny" else ModelSize()
    rows = []
    for bf16 in (False, True):
        model = GazeXModel.from_scratch(codec, settings, size, seed=0).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model: GazeXModel = model, optimizer: Any = optimizer, bf16: bool = bf16) -> None:
            with autocast(device, bf16):
                losses = compute_losses(model, batch, "multitask")
            loss = sum(losses.values(), torch.zeros((), device=device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

        peak_reset(device)
        times = timed(step, args.steps, warmup=2, device=device)
        name = f"{args.size}, batch {args.batch}, " + ("bf16 autocast" if bf16 else "float32")
        rows.append(Row(name, times, 1, peak_bytes(device)))
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# -- 2. inference --------------------------------------------------------------------


def bench_inference(args: argparse.Namespace, device: Any) -> list[Row]:
    import pydicom
    import torch

    from model.predictor import Predictor

    films = [film_bytes(args.rows, args.columns, 20 + i, jpeg2000=False) for i in range(args.batch)]

    def read(data: bytes) -> Any:
        return pydicom.dcmread(io.BytesIO(data))

    def measure(bf16: bool) -> list[Row]:
        predictor = Predictor.from_checkpoint(device=device, bf16=bf16, max_batch=args.batch)
        label = "bf16" if bf16 else "float32"
        peak_reset(device)
        one = timed(lambda: predictor.predict(read(films[0])), args.runs, 2, device)
        first = Row(f"{label}, 1 film per call", one, 1, peak_bytes(device))
        peak_reset(device)
        many = timed(
            lambda: predictor.predict([read(f) for f in films]),
            max(2, args.runs // args.batch),
            1,
            device,
        )
        name = f"{label}, {args.batch} films per call"
        return [first, Row(name, many, args.batch, peak_bytes(device))]

    rows = []
    for bf16 in (False, True) if device.type == "cuda" else (False,):
        rows += measure(bf16)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# -- 3. the worker's batching --------------------------------------------------------


def bench_worker(args: argparse.Namespace, device: Any) -> list[Row]:
    import pydicom

    from model.predictor import Predictor
    from workers.batching import CUDA_WINDOW_MS, BatchingPredictor, BatchPolicy

    predictor = Predictor.from_checkpoint(device=device, max_batch=args.batch)
    films = [
        pydicom.dcmread(io.BytesIO(film_bytes(args.rows, args.columns, 40 + i, jpeg2000=False)))
        for i in range(args.batch)
    ]
    rows = []
    for policy in (BatchPolicy(1, 0.0), BatchPolicy(args.batch, CUDA_WINDOW_MS)):
        batcher = BatchingPredictor(predictor, policy)

        def together(batcher: BatchingPredictor = batcher) -> None:
            threads = [threading.Thread(target=batcher.predict, args=(ds,)) for ds in films]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        peak_reset(device)
        times = timed(together, max(2, args.runs // args.batch), 1, device)
        batcher.close()
        name = f"{args.batch} threads, max_batch {policy.max_batch}, {policy.window_ms:g} ms" + (
            " (off)" if policy.max_batch == 1 else ""
        )
        rows.append(Row(name, times, args.batch, peak_bytes(device)))
    return rows


# -- 4. one process against DDP ------------------------------------------------------


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="gazex-bench-gpu-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_ddp(args: argparse.Namespace, gpus: int) -> list[Row] | str:
    """Wall seconds of one epoch of ``gazex train``: one process, then torchrun on every
    GPU; a sentence instead when it cannot run here."""
    if gpus < 2:
        return f"DDP: needs 2+ GPUs ({gpus} present)"
    gazex = shutil.which("gazex") or str(Path(sys.executable).parent / "gazex")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    with scratch() as folder:
        data = folder / "data"
        subprocess.run(
            [gazex, "data", "synth", "--out", str(data), "--n", str(args.ddp_samples),
             "--seed", "0", "--size", "256", "--workers", "4", "--no-progress"],
            check=True,
        )  # fmt: skip
        train = [
            "train", "--data", str(data), "--format", "reflacx", "--epochs", "1",
            "--gaze-epochs", "0", "--size", args.size, "--batch-size", str(args.batch * gpus),
            "--no-progress",
        ]  # fmt: skip
        rows = []
        for name, command in (
            ("1 process, 1 GPU", [gazex, *train, "--out", str(folder / "one")]),
            (
                f"DDP, {gpus} processes",
                [torchrun, "--standalone", "--nproc-per-node", str(gpus), "--no-python",
                 gazex, *train, "--out", str(folder / "ddp")],
            ),
        ):  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
                return f"DDP: `{' '.join(command[:4])} ...` failed: {' '.join(tail)}"
            rows.append(Row(name, [seconds], args.ddp_samples, None))
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and runs (~1 min)")
    parser.add_argument("--size", choices=("small", "tiny"), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--runs", type=int, default=16, help="timed single-film inferences")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--ddp-samples", type=int, default=256)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.runs, args.ddp_samples = 5, 4, 64
        args.rows = args.columns = 1024

    import torch

    from model.architecture import configure_threads, select_device

    device = select_device(args.device)
    configure_threads(device)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        card = f"CPU, {torch.get_num_threads()} thread(s), no CUDA device"
    print(f"torch {torch.__version__}; device {device} ({card}); {gpus} GPU(s)")
    print(
        f"training: {args.size} model, batch {args.batch}, {args.steps} timed steps; "
        f"inference: shipped checkpoint, {args.columns}x{args.rows} DX films, {args.runs} runs"
    )
    peak = "CUDA max_memory_allocated" if device.type == "cuda" else "process RSS high-water"
    print(f"peak MiB: {peak}")

    print_table("Training (baseline: float32)", "steps", bench_training(args, device))
    inference = bench_inference(args, device)
    print_table("Inference (baseline: float32, 1 film per call)", "images", inference)
    if device.type != "cuda":
        print("bf16 inference: CUDA only (the CPU path computes in float32)")
    print_table(
        "Worker batching, films handed in by threads at once (baseline: batching off)",
        "images",
        bench_worker(args, device),
    )
    ddp = bench_ddp(args, gpus)
    if isinstance(ddp, str):
        print(f"\n{ddp}")
    else:
        print_table("One epoch of gazex train (baseline: 1 process)", "samples", ddp)


if __name__ == "__main__":
    main()
