"""End-to-end latency of the product: A-RELEASE -> last result object at the destination.

Runs the embedded default (`gazex serve`: SQLite, folder broker, one analysis worker) or the
distributed set-up with two analysis workers (RabbitMQ + PostgreSQL), sends N synthetic
2048x2048 DX chest studies one after another (each once the previous one's results have
arrived) and then all at once (the queue's share shows), after one unmeasured study that
waits for the model to load. It reads per study the release time and each pipeline step
(database) and the arrival time of the last result object at a DCMTK storescp, and prints
where the time goes. The transport floor is measured in the same run: the same result
files sent by DCMTK storescu to DCMTK storescp. Every DCMTK tool runs with TCP_NODELAY=1
(Nagle off), as the node's own sockets do.

    .venv/bin/python benchmarks/bench_pipeline.py [--studies 6] [--checkpoint DIR]
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
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from model.train.gazedata.images import write_dicom
from model.train.gazedata.synth import generate_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodekit import DCMTK_ENV, free_port, wait_port

QUIET = 0.5
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def studies(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        sample = generate_sample(1000 + i, height=2048, width=2048, view="PA")
        path = folder / f"study{i}.dcm"
        write_dicom(path, sample.image, sample_id=f"bench-{uuid.uuid4().hex}", modality="DX")
        paths.append(path)
    return paths


class Run:
    def __init__(self, work: Path, workers: int, checkpoint: str | None) -> None:
        self.work = work
        self.home = work / "home"
        self.port = free_port()
        self.dest_port = free_port()
        self.dest = work / "pacs"
        self.dest.mkdir(parents=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        distributed = workers > 1
        if distributed:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(POSTGRES)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            admin.dispose()
            self.db_url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
        else:
            self.db_url = f"sqlite:///{self.home / 'gazex.sqlite3'}"
        suffix = uuid.uuid4().hex[:6]
        self.config = work / "gazex.toml"
        self.config.write_text(
            f'home = "{self.home}"\n[node]\nbind = "127.0.0.1"\nport = {self.port}\n'
            f'[http]\nenabled = false\n[database]\nurl = "{self.db_url}"\n'
            + (
                f'[broker]\nurl = "amqp://guest:guest@127.0.0.1:5672//"\n'
                f'analysis_queue = "gpu-{suffix}"\nio_queue = "io-{suffix}"\n'
                if distributed
                else ""
            )
            + f"[completion]\nquiet_period = {QUIET}\n"
            + (f'[model]\ncheckpoint = "{checkpoint}"\n' if checkpoint else "")
            + f'[[peers]]\nname = "PACS"\nae_title = "BENCH"\nhost = "127.0.0.1"\n'
            f'port = {self.dest_port}\nroles = ["source", "destination"]\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
        gazex = [sys.executable, "-m", "dicom_node.cli", "--config", str(self.config)]
        self.procs.append(
            subprocess.Popen(
                ["storescp", "-aet", "BENCH", "+xa", "-od", str(self.dest), str(self.dest_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=DCMTK_ENV,
            )
        )

        def spawn(*args: str) -> None:
            self.procs.append(
                subprocess.Popen(
                    [*gazex, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
                )
            )

        if distributed:
            subprocess.run([*gazex, "db", "upgrade"], check=True, env=env, capture_output=True)
            spawn("node")
            for _ in range(workers):
                spawn("worker", "--queues", "gpu")
            spawn("worker", "--queues", "io")
        else:
            spawn("serve")
        wait_port(self.port)
        wait_port(self.dest_port)

    def send(self, paths: list[Path], parallel: bool, done_before: int = 0) -> None:
        command = ["storescu", "-aet", "BENCH", "-aec", "GAZEX", "127.0.0.1", str(self.port)]
        if parallel:
            procs = [subprocess.Popen([*command, str(p)], env=DCMTK_ENV) for p in paths]
            for proc in procs:
                proc.wait()
        else:
            # One after another: the next study is sent once the previous one's results
            # are at the destination, so the latency is not the queue's.
            for count, path in enumerate(paths, start=done_before + 1):
                subprocess.run([*command, str(path)], check=True, env=DCMTK_ENV)
                self.wait_done(count)

    def wait_done(self, studies: int, timeout: float = 900) -> None:
        """Until every study is delivered (state done); the object count varies, e.g. no
        binary SEG for a film without a positive finding."""
        engine = create_engine(self.db_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    done = conn.execute(
                        text("SELECT count(*) FROM study WHERE state = 'done'")
                    ).scalar_one()
                if done >= studies:
                    return
                time.sleep(0.2)
        finally:
            engine.dispose()
        raise RuntimeError("results did not all arrive")

    def one_study_results(self) -> list[Path]:
        from pydicom import dcmread

        by_study: dict[str, list[Path]] = {}
        for path in sorted(self.dest.iterdir()):
            uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            by_study.setdefault(uid, []).append(path)
        return next(iter(by_study.values()))

    def measurements(self, exclude: Path) -> list[dict[str, float]]:
        """Per study but the one in ``exclude``, in seconds: release -> last result at the
        destination ("e2e"), the model's predict step ("model") and the stages between,
        from the database."""
        from pydicom import dcmread

        excluded = str(dcmread(exclude, stop_before_pixels=True).StudyInstanceUID)
        arrival: dict[str, float] = {}
        for path in self.dest.iterdir():
            uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            arrival[uid] = max(arrival.get(uid, 0.0), path.stat().st_mtime)
        engine = create_engine(self.db_url)
        with engine.connect() as conn:
            studies = conn.execute(
                text(
                    'SELECT s."StudyInstanceUID", a.id, s.released_at, s.completed_at, '
                    "a.finished_at FROM study s JOIN analysis a ON a.study_id = s.id"
                )
            ).all()
            steps = conn.execute(
                text("SELECT analysis_id, name, started_at, finished_at FROM step")
            ).all()
        engine.dispose()
        by_analysis: dict[int, dict[str, tuple[float, float]]] = {}
        for analysis_id, name, started, finished in steps:
            by_analysis.setdefault(analysis_id, {})[name] = (_ts(started), _ts(finished))
        rows = []
        for uid, analysis_id, released, completed, analysed in studies:
            if uid not in arrival or uid == excluded:
                continue
            stage = by_analysis[analysis_id]
            rows.append(
                {
                    "e2e": arrival[uid] - _ts(released),
                    "model": stage["predict"][1] - stage["predict"][0],
                    "quiet period": _ts(completed) - _ts(released),
                    "to the worker": stage["select"][0] - _ts(completed),
                    "select + read": stage["select"][1] - stage["select"][0],
                    "build objects": stage["build"][1] - stage["build"][0],
                    "store objects": stage["store"][1] - stage["store"][0],
                    "index + outbox": _ts(analysed) - stage["store"][1],
                    "delivery": arrival[uid] - _ts(analysed),
                }
            )
        return rows

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)


def _ts(value: object) -> float:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def transport_floor(results: list[Path], work: Path) -> float:
    """DCMTK alone: storescu -> storescp of one study's result objects (median of 5)."""
    port = free_port()
    out = work / "floor"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "FLOOR", "+xa", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )
    try:
        wait_port(port)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(
                # -R: propose only the files' SOP classes, as the node's own SCU does
                ["storescu", "-R", "-aet", "BENCH", "-aec", "FLOOR", "127.0.0.1", str(port)]
                + [str(p) for p in results],
                check=True,
                env=DCMTK_ENV,
            )
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        scp.terminate()
        scp.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--checkpoint", help="default: the shipped checkpoint")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gazex-pipe-"))
    rows: list[str] = []
    try:
        floor = None
        breakdown: list[dict[str, float]] = []
        for workers in (1, 2):
            for parallel in (False, True):
                run_dir = work / f"w{workers}-{'par' if parallel else 'seq'}"
                run = Run(run_dir, workers, args.checkpoint)
                try:
                    # Fresh copies: new UIDs per run so nothing is a resend.
                    batch = studies(run_dir / "in", args.studies + 1)
                    # The first study is not measured: it waits for the workers to load
                    # and warm up the model after start-up.
                    warm_up, batch = batch[0], batch[1:]
                    run.send([warm_up], parallel=False)
                    started = time.perf_counter()
                    run.send(batch, parallel, done_before=1)
                    run.wait_done(len(batch) + 1)
                    wall = time.perf_counter() - started
                    measured = run.measurements(exclude=warm_up)
                    if floor is None:
                        floor = transport_floor(run.one_study_results(), run_dir)
                finally:
                    run.stop()
                if workers == 1 and not parallel:
                    breakdown = measured
                e2e = np.array([m["e2e"] for m in measured])
                model = np.array([m["model"] for m in measured])
                overhead = e2e - model - floor - QUIET
                rows.append(
                    f"| {workers} | {'parallel' if parallel else 'one by one'} | {len(e2e)} "
                    f"| {np.median(e2e):.2f} | {np.percentile(e2e, 95):.2f} "
                    f"| {3600 * len(batch) / wall:.0f} | {np.median(model):.2f} "
                    f"| {np.median(model / e2e) * 100:.0f}% | {np.median(overhead) * 1000:.0f} |"
                )
        print(f"transport floor (DCMTK storescu -> storescp, one study's results): {floor:.3f} s")
        print(f"quiet period: {QUIET} s\n")
        print(
            "| analysis workers | sending | studies | release->results median s | p95 s "
            "| studies/hour | model median s | model share | overhead median ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print("\nWhere the time goes (1 analysis worker, one by one; medians, ms):\n")
        print("| stage | median ms |")
        print("|---|---|")
        for name in breakdown[0]:
            if name != "e2e":
                value = np.median([m[name] for m in breakdown]) * 1000
                print(f"| {name} | {value:.0f} |")
        total = np.median([m["e2e"] for m in breakdown]) * 1000
        print(f"| release -> results (e2e) | {total:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
