"""Synthetic study generation throughput on N worker processes (default 2).

Prints one table row per stage, all measured in the same run:

- ``png only``: writing an already rendered 512 px image as PNG (the I/O floor),
- ``render``: anatomy + findings + exposure (no reader),
- ``sample``: a full GazeSample in memory (image, reader, report, VQA),
- ``sample+reflacx``: the full sample written in the REFLACX layout (PNG image),
- ``sample+egd``: the full sample written as EGD per-study files and table rows.

Usage: ``.venv/bin/python benchmarks/bench_synth.py [--n 200] [--size 512] [--workers 2]``.
The target is 5,000 studies at 512 px in under 5 minutes on 2 cores (>= 16.7 studies/s).

Columns: measured wall-clock rate with ``--workers`` processes (depends on what else runs on
the machine), CPU milliseconds per study (summed process time of the workers), and the
rate that CPU time gives on ``--workers`` otherwise idle cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _png_only(job: tuple[int, int, str]) -> int:
    import numpy as np

    from model.train.gazedata.images import write_png

    seed, size, out = job
    img = np.random.default_rng(0).random((size, size), dtype=np.float32)
    write_png(Path(out) / f"{seed}.png", img)
    return seed


def _render(job: tuple[int, int, str]) -> int:
    from model.train.gazedata.synth import render_case, sample_case

    seed, size, _ = job
    render_case(sample_case(seed), size, size)
    return seed


def _sample(job: tuple[int, int, str]) -> int:
    from model.train.gazedata.synth import generate_sample

    seed, size, _ = job
    generate_sample(seed, size=size)
    return seed


def _reflacx(job: tuple[int, int, str]) -> int:
    from model.train.gazedata import reflacx
    from model.train.gazedata.synth import generate_sample

    seed, size, out = job
    reflacx.write_case(generate_sample(seed, size=size), Path(out), ".png")
    return seed


def _egd(job: tuple[int, int, str]) -> int:
    from model.train.gazedata import egd
    from model.train.gazedata.synth import generate_sample

    seed, size, out = job
    s = generate_sample(seed, size=size)
    egd.write_study(s, Path(out), ".png")
    egd.study_rows(s, seed, ".png")
    return seed


def _timed(job: tuple[str, int, int, str]) -> float:
    """Run one stage job in a worker; return the CPU seconds it used."""
    name, seed, size, out = job
    t0 = time.process_time()
    STAGES[name]((seed, size, out))
    return time.process_time() - t0


STAGES = {
    "png only": _png_only,
    "render": _render,
    "sample": _sample,
    "sample+reflacx": _reflacx,
    "sample+egd": _egd,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(f"{args.n} studies per stage, {args.size} px, {args.workers} worker processes")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (the machine is shared)")
    print(
        f"{'stage':<16} {'studies/s':>10} {'5000 studies':>13} {'CPU ms/study':>13} "
        f"{'idle 2-core /s':>15} {'5000 idle':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(_sample, [(i, 64, tmp) for i in range(args.workers * 2)]))  # warm up
        for name in STAGES:
            out = Path(tmp) / name.replace(" ", "_").replace("+", "_")
            out.mkdir()
            jobs = [(name, 10_000 + i, args.size, str(out)) for i in range(args.n)]
            t0 = time.perf_counter()
            cpu = sum(pool.map(_timed, jobs, chunksize=4))
            dt = time.perf_counter() - t0
            rate = args.n / dt
            cpu_ms = 1000.0 * cpu / args.n
            idle = args.workers * 1000.0 / cpu_ms
            print(
                f"{name:<16} {rate:>10.1f} {5000 / rate / 60:>9.1f} min {cpu_ms:>13.1f} "
                f"{idle:>15.1f} {5000 / idle / 60:>6.1f} min"
            )


if __name__ == "__main__":
    main()
