"""``gazex serve`` and ``gazex node``: run the node, with or without its workers."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from dicom_node import db
from dicom_node.errors import StartError, port_error
from dicom_node.settings import Settings, config_path, load_settings

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


def writable_home(home: Path) -> None:
    """StartError naming ``home`` unless this process can create files in it."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        raise StartError(
            f"home {home}: not writable ({exc.strerror}); set GAZEX_HOME (or `home` in the "
            "settings file) to a folder this user can write"
        ) from None


class SingleNode:
    """One node per home and per database: a lock file holding the pid in ``home`` (and,
    on PostgreSQL, a session advisory lock on the schema), held while the node runs. Both
    go with the process, however it ends. Two nodes on one home completed and dispatched
    every study twice."""

    LOCK_FILE = "node.lock"
    #: pg_try_advisory_lock key: "GAZX" in ASCII
    ADVISORY_KEY = 0x47415A58

    def __init__(self, settings: Settings) -> None:
        self._path = settings.home / self.LOCK_FILE
        self._url = settings.database_url
        self._file: IO[str] | None = None
        self._connection: Connection | None = None

    def __enter__(self) -> SingleNode:
        handle = self._path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            handle.close()
            raise StartError(
                f"another node runs on home {self._path.parent} (pid {pid}): stop it, or give "
                "this one its own GAZEX_HOME"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        if make_url(self._url).get_backend_name() == "postgresql":
            self._lock_database()
        return self

    def _lock_database(self) -> None:
        engine = db.make_engine(self._url)
        with db.reachable(self._url):
            self._connection = engine.connect()
            # One lock per schema: installs that share a database keep apart by schema.
            locked = self._connection.scalar(
                text("SELECT pg_try_advisory_lock(:key, hashtext(current_schema()))"),
                {"key": self.ADVISORY_KEY},
            )
            self._connection.commit()
        if not locked:
            self.__exit__()
            shown = make_url(self._url).render_as_string(hide_password=True)
            raise StartError(f"another node uses the database {shown}: stop it first")

    def __exit__(self, *_: object) -> None:
        if self._connection is not None:
            self._connection.close()  # ends the session, and with it the advisory lock
            self._connection = None
        if self._file is not None:
            self._file.close()  # releases the flock
            self._file = None


def _ports_free(settings: Settings, with_workers: bool) -> None:
    """StartError naming the first port the node or its workers could not bind, before any
    of them starts (a worker child on a taken port would be restarted for ever)."""
    wanted = [("node.port", settings.node.bind, settings.node.port)]
    http = settings.http
    if http.enabled and http.port:
        offsets = (0, 1, 2) if with_workers else (0,)
        wanted += [("http.port", http.bind, http.port + offset) for offset in offsets]
    for key, bind, port in wanted:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((bind, port))
            except OSError as exc:
                raise port_error(key, bind, port, exc) from None


def cmd_serve(args: argparse.Namespace) -> int:

    overrides = {"node__ae_title": args.ae_title, "node__port": args.port, "node__bind": args.bind}
    settings = load_settings(args.config, **overrides)
    writable_home(settings.home)
    with SingleNode(settings):
        _ports_free(settings, args.worker)
        db.migrate_embedded(settings.database_url)
        return _run(args, settings, overrides)


def _run(args: argparse.Namespace, settings: Settings, overrides: dict[str, Any]) -> int:
    from dicom_node.cli.supervisor import WorkerSupervisor
    from dicom_node.dispatch import Dispatcher
    from dicom_node.scp.server import Node

    dispatcher = Dispatcher(settings)
    node = Node.build(settings, dispatcher.analyze_study, dispatcher.sign_review)
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
    try:
        host, port = node.start()
    except BaseException:
        node.stop()
        dispatcher.close()
        raise
    if workers is not None:
        workers.start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    print(f"GazeX node {settings.node.ae_title} listening on {host}:{port}", flush=True)
    print(f"  data folder: {settings.home}", flush=True)
    source = config_path(args.config)
    print(
        f"  settings: {source or 'defaults and GAZEX_* variables (no settings file)'}", flush=True
    )
    if node.http is not None:
        http_host, http_port = node.http.address
        probes = f"http://{http_host}:{http_port}/healthz /readyz /metrics"
        if workers is not None and settings.http.port:
            probes += f" (workers on ports {http_port + 1} and {http_port + 2})"
        print(f"  health and metrics: {probes}", flush=True)
        scheme = "https" if node.http.tls else "http"
        web_host = "127.0.0.1" if http_host in ("0.0.0.0", "::") else http_host  # noqa: S104
        web = f"{scheme}://{web_host}:{http_port}"
        if settings.dicomweb.enabled:
            print(
                f"  DICOMweb: {web}{settings.dicomweb.base_path} (a peer's credential: "
                "gazex ae credential add PEER --token)",
                flush=True,
            )
        print(
            f"  review page: {web}/review (an account: gazex user add NAME --role radiologist)",
            flush=True,
        )
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
