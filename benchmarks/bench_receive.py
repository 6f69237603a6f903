"""Receive throughput of the GazeX DICOM node against DCMTK `storescp`, in the same run.

Sends 2048x2048 16-bit DX images with 1 and 4 parallel `storescu` associations (each
association one study) to DCMTK storescp (baseline: writes files, no fsync) and to
`gazex node` (the embedded default's node without its workers: SQLite, every file and row
fsynced before success).
Also reports the delay from A-RELEASE to "study complete" minus the quiet period.

Each comparison runs twice: with the DCMTK tools as they ship (Nagle's algorithm on: every
instance waits for a delayed ACK) and with TCP_NODELAY=1 (Nagle off, as the node's own
sockets are). The storescu sender is the same for both receivers in a row.

    .venv/bin/python benchmarks/bench_receive.py [--images 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import radiograph, write
from nodekit import DCMTK_ENV, free_port, wait_port

QUIET = 0.5


def make_studies(folder: Path, images: int, parallel: int) -> list[list[Path]]:
    groups: list[list[Path]] = []
    per = images // parallel
    for g in range(parallel):
        study, series = generate_uid(), generate_uid()
        groups.append(
            [
                write(
                    radiograph(
                        study=study, series=series, rows=2048, columns=2048, seed=g * 100 + i
                    ),
                    folder / f"s{g}",
                )
                for i in range(per)
            ]
        )
    return groups


#: DCMTK environments compared: as shipped, and with Nagle's algorithm off.
DCMTK_MODES = {
    "as shipped": {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"},
    "TCP_NODELAY=1": DCMTK_ENV,
}


def send(port: int, called: str, groups: list[list[Path]], env: dict[str, str]) -> float:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, g)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for g in groups
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-400:]}")
    return time.perf_counter() - started


def run_storescp(groups: list[list[Path]], out: Path, env: dict[str, str]) -> float:
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["storescp", "-aet", "BASE", "+xa", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_port(port)
        return send(port, "BASE", groups, env)
    finally:
        proc.terminate()
        proc.wait()


def run_gazex(
    groups: list[list[Path]], home: Path, sender_env: dict[str, str]
) -> tuple[float, list[float]]:
    port = free_port()
    config = home / "gazex.toml"
    home.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'home = "{home}"\n[node]\nbind = "127.0.0.1"\nport = {port}\n'
        f"accept_any_calling_ae = true\n[completion]\nquiet_period = {QUIET}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "node"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        elapsed = send(port, "GAZEX", groups, sender_env)
        engine = create_engine(f"sqlite:///{home / 'gazex.sqlite3'}")
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT released_at, completed_at FROM study WHERE completed_at IS NOT NULL"
                    )
                ).all()
            if len(rows) == len(groups) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        engine.dispose()
        delays = [
            (_ts(done) - _ts(released)) - QUIET for released, done in rows if released is not None
        ]
        return elapsed, delays
    finally:
        proc.terminate()
        proc.wait()


def _ts(value: object) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gazex-bench-"))
    try:
        rows = []
        all_delays: list[float] = []
        for parallel in (1, 4):
            groups = make_studies(work / f"in{parallel}", args.images, parallel)
            size_mb = sum(p.stat().st_size for g in groups for p in g) / 1e6
            count = sum(len(g) for g in groups)
            for mode, env in DCMTK_MODES.items():
                base, ours = [], []
                for r in range(args.rounds):
                    base.append(run_storescp(groups, work / f"base{parallel}-{r}", env))
                    elapsed, delays = run_gazex(groups, work / f"gz{parallel}-{r}", env)
                    ours.append(elapsed)
                    all_delays.extend(delays)
                    shutil.rmtree(work / f"base{parallel}-{r}")
                    shutil.rmtree(work / f"gz{parallel}-{r}")
                b, o = statistics.median(base), statistics.median(ours)
                rows.append((parallel, mode, count, size_mb, size_mb / b, size_mb / o, b / o))
        print(f"{args.images} images of 2048x2048x16 bit per run, median of {args.rounds} rounds\n")
        print("| assoc | DCMTK | images | MB | storescp MB/s | gazex MB/s | gazex/storescp |")
        print("|---|---|---|---|---|---|---|")
        for p, mode, n, mb, bm, om, ratio in rows:
            print(f"| {p} | {mode} | {n} | {mb:.0f} | {bm:.0f} | {om:.0f} | {ratio:.2f}x |")
        d = np.array(all_delays) * 1000
        print(
            f"\nA-RELEASE -> study complete, minus the {QUIET:.1f} s quiet period "
            f"({len(d)} studies): median {np.median(d):.0f} ms, p95 {np.percentile(d, 95):.0f} ms, "
            f"max {d.max():.0f} ms"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
