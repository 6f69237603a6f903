"""Worker child processes of the embedded default (`gazex serve`).

The node starts `gazex worker` as separate processes, by command, so the SCP process never
imports the workers or torch; a child that dies is started again after a short pause.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_RESTART_PAUSE = 2.0
_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when `gazex serve` dies, even by SIGKILL,
    so no orphaned worker keeps consuming next to the ones a restart starts."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Child:
    queues: str
    #: offset from the node's HTTP port for this child's probes and metrics
    http_offset: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    died_at: float | None = None


@dataclass
class WorkerSupervisor:
    config: str | None
    #: Command-line settings of `serve` ("section__key": value) passed on to the children.
    overrides: dict[str, object]
    http_port: int | None = None
    children: list[_Child] = field(default_factory=lambda: [_Child("gpu", 1), _Child("io", 2)])

    def _command(self, child: _Child) -> list[str]:
        command = [sys.executable, "-m", "dicom_node.cli"]
        if self.config:
            command += ["--config", self.config]
        return [*command, "worker", "--queues", child.queues]

    def _env(self, child: _Child) -> dict[str, str]:
        env = dict(os.environ)
        for dotted, value in self.overrides.items():
            if value is not None:
                env[f"GAZEX_{dotted.upper()}"] = str(value)
        if self.http_port:
            env["GAZEX_HTTP__PORT"] = str(self.http_port + child.http_offset)
        return env

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(
            self._command(child),
            env=self._env(child),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        logger.info("worker for queue %s started (pid %d)", child.queues, child.process.pid)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def check(self) -> None:
        """Restart any child that exited."""
        now = time.monotonic()
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.died_at is None:
                child.died_at = now
                logger.error(
                    "worker for queue %s exited with %s; restarting",
                    child.queues,
                    child.process.returncode,
                )
            if now - child.died_at >= _RESTART_PAUSE:
                child.died_at = None
                child.restarts += 1
                self._spawn(child)

    def pids(self) -> dict[str, int]:
        return {c.queues: c.process.pid for c in self.children if c.process is not None}

    def stop(self, timeout: float = 30.0) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
