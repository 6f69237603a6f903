"""Streaming a MIMIC-CXR-size reference manifest: open time, rate and memory vs a small one.

Writes four synthetic films (two DICOM, two JPG) in the MIMIC-CXR layout
(``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm|.jpg``), then two *reference* shard folders
with :func:`model.train.shards.write_reference_shards`: ``--small`` readings (the baseline,
default 2,318) and ``--readings`` (default 231,835, the MIMIC-CXR study count), every reading
distinct (its own ids, eye-tracking rows and labels) and pointing at one of the four films.
Each folder is then measured in a fresh process (so peak RSS is its own):

- ``open s``: ``ShardedSamples(folder)`` (reads the manifest, checks the shards exist),
- ``in-proc /s`` and ``traced MB``: the first ``--samples`` samples of epoch 0 with
  ``workers=0``, under tracemalloc (peak of Python allocations while opening + streaming),
- ``RSS MB``: the process's peak resident set (``base MB``: after imports and 5 warm-up
  samples, before opening),
- ``N wkr /s`` and ``wkr RSS MB``: the same samples through a DataLoader with ``--workers``
  processes, and the largest worker's peak RSS.

Usage: ``.venv/bin/python benchmarks/bench_shards.py [--readings 231835] [--small 2318]
[--samples 2000] [--workers 2] [--size 256]``. Needs ~0.4 GB of disk in the temp folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:  # noqa: PTH123 - a procfs read
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(folder: Path, samples: int, workers: int) -> dict[str, float]:
    """One folder in this process: open time, rate, traced peak, peak RSS."""
    import tracemalloc

    from model.train.shards import ShardedSamples

    sum(1 for _ in islice(ShardedSamples(folder, seed=1, workers=0).epoch(0), 5))  # imports
    out: dict[str, float] = {"base_rss_mb": _rss_mb()}
    tracemalloc.start()
    t0 = time.perf_counter()
    ds = ShardedSamples(folder, seed=0, workers=0)
    out["open_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in islice(ds.epoch(0), samples))
    out["inproc_per_s"] = n / (time.perf_counter() - t0)
    out["traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ds = ShardedSamples(folder, seed=0, workers=workers)
    t0 = time.perf_counter()
    n = sum(1 for _ in islice(ds.epoch(0), samples))
    out["workers_per_s"] = n / (time.perf_counter() - t0)
    out["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=231_835)
    parser.add_argument("--small", type=int, default=2_318)
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="film side, pixels")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.samples, args.workers)))
        return 0

    from model.train.gazedata.images import write_image
    from model.train.gazedata.synth import generate_sample
    from model.train.shards import write_reference_shards

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        root = Path(tmp) / "mimic-cxr"
        films = []
        for i, ext in enumerate((".dcm", ".jpg", ".dcm", ".jpg")):
            s = generate_sample(i, size=args.size)
            rel = f"files/p10/p1000000{i}/s5000000{i}/{s.sample_id}{ext}"
            write_image(root / rel, s.image, sample_id=s.sample_id)
            films.append(rel)
        for readings in (args.small, args.readings):
            folder = Path(tmp) / f"shards-{readings}"
            t0 = time.perf_counter()
            manifest = write_reference_shards(folder, root, films, readings)
            written = time.perf_counter() - t0
            disk = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            cmd = [sys.executable, __file__, "--measure", str(folder)]
            cmd += ["--samples", str(args.samples), "--workers", str(args.workers)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            rows.append((readings, len(manifest.shards), written, disk, res))
            print(f"measured {readings} readings", file=sys.stderr)
    w = args.workers
    head = (
        f"{'readings':>9} {'shards':>6} {'write s':>8} {'disk MB':>8} {'open s':>7} "
        f"{'in-proc /s':>10} {'traced MB':>9} {'base MB':>8} {'RSS MB':>7} "
        f"{f'{w} wkr /s':>9} {'wkr RSS MB':>10}"
    )
    print(f"first {args.samples} samples of epoch 0, films {args.size} px (2 DICOM, 2 JPG)")
    print(head)
    for readings, shards, written, disk, r in rows:
        print(
            f"{readings:>9} {shards:>6} {written:>8.1f} {disk:>8.0f} {r['open_s']:>7.3f} "
            f"{r['inproc_per_s']:>10.0f} {r['traced_mb']:>9.1f} {r['base_rss_mb']:>8.0f} "
            f"{r['rss_mb']:>7.0f} {r['workers_per_s']:>9.0f} {r['worker_rss_mb']:>10.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
