"""``gazex serve`` and ``gazex node``: run the node, with or without its workers."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from dicom_node import db
from dicom_node.settings import load_settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gazex serve`` (node and workers) and ``gazex node`` (the node alone)."""
    for name, doc in (("serve", _SERVE_DOC), ("node", _NODE_DOC)):
        serve = subparsers.add_parser(name, help=doc.split(".")[0], description=doc)
        serve.add_argument("--ae-title", help="local AE title (node.ae_title)")
        serve.add_argument("--port", type=int, help="listening port (node.port)")
        serve.add_argument("--bind", help="listening address (node.bind)")
        if name == "serve":
            serve.add_argument(
                "--no-worker",
                dest="worker",
                action="store_false",
                help="do not start workers (distributed: run `gazex worker` elsewhere)",
            )
        serve.set_defaults(func=cmd_serve, worker=name == "serve")


_SERVE_DOC = (
    "Run the whole node on one box: the DICOM SCP, the study-completion loop, the delivery "
    "loop and two worker processes (analysis, HL7), restarted if they die. On the "
    "embedded default (SQLite and a folder broker in GAZEX_HOME) the schema is migrated "
    "first and no server is needed."
)
_NODE_DOC = (
    "Run the DICOM node without workers (distributed installs: start `gazex worker "
    "--queues gpu` and `gazex worker --queues io` on other processes or hosts)."
)


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.cli.supervisor import WorkerSupervisor
    from dicom_node.dispatch import Dispatcher
    from dicom_node.scp.server import Node

    overrides = {"node__ae_title": args.ae_title, "node__port": args.port, "node__bind": args.bind}
    settings = load_settings(args.config, **overrides)
    db.migrate_embedded(settings.database_url)
    dispatcher = Dispatcher(settings)
    node = Node.build(settings, dispatcher.analyze_study)
    workers = (
        WorkerSupervisor(
            args.config,
            overrides,
            http_port=settings.http.port if settings.http.enabled and settings.http.port else None,
        )
        if args.worker
        else None
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    host, port = node.start()
    if workers is not None:
        workers.start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    print(f"GazeX node {settings.node.ae_title} listening on {host}:{port}", flush=True)
    print(f"  data folder: {settings.home}", flush=True)
    print(
        f"  send a study: storescu -aet YOUR_AE -aec {settings.node.ae_title} "
        f"{shown} {port} +sd +r STUDY_FOLDER",
        flush=True,
    )
    if not settings.node.accept_any_calling_ae:
        print(
            "  (add the sender first: gazex ae add PACS --ae-title YOUR_AE --host HOST "
            "--port PORT --role source,destination)",
            flush=True,
        )
    print(
        "  research use only: the model is trained on synthetic data, not for clinical use",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            if workers is not None:
                workers.check()
    finally:
        if workers is not None:
            workers.stop()
        node.stop()
        dispatcher.close()
    return 0
