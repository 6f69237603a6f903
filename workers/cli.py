"""``gazex`` subcommands contributed by ``workers`` (see dicom_node.cli): ``worker``, and
``hl7`` (from ``workers.hl7.cli``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the ``gazex`` parser."""
    from workers.hl7 import cli as hl7_cli

    worker = subparsers.add_parser(
        "worker",
        help="run a Celery worker (analysis on the gpu queue, HL7 on io)",
        description="Run a Celery worker for distributed installs (`gazex serve` starts its "
        "own). The gpu queue analyses studies (the model is loaded once, on CUDA when "
        "present); the io queue sends the HL7 notifications. Probes and metrics on "
        "http.port.",
    )
    worker.add_argument(
        "--queues",
        default="gpu,io",
        help="comma-separated queues: gpu (analysis), io (HL7); default both",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        help="gpu: 1 process, or 2 x worker.max_batch threads when batching (the CUDA "
        "default); io: 4 threads",
    )
    worker.set_defaults(func=cmd_worker)
    hl7_cli.register(subparsers)


def cmd_worker(args: argparse.Namespace) -> int:
    from dicom_node.settings import load_settings
    from workers.worker import run_worker

    settings = load_settings(args.config)
    names = {"gpu": settings.broker.analysis_queue, "io": settings.broker.io_queue}
    queues = [names.get(q.strip(), q.strip()) for q in args.queues.split(",") if q.strip()]
    run_worker(settings, queues, args.concurrency)
    return 0
