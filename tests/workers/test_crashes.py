"""Crash safety: whatever dies on the way, the results reach the destination exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nodekit import storescu
from pydicom import dcmread
from stackkit import Stack, check_results, chest_study

from dicom_node.db.models import StudyState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MakeStack = Callable[..., Stack]


def test_worker_killed_mid_analysis_results_arrive_once(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """SIGKILL of the analysis worker while it analyses: the study is re-queued from the
    database and its results arrive at the destination exactly once."""
    stack = make_stack("rabbitmq")
    stack.start("node", "node")
    stack.start("io", "worker", "--queues", "io")
    stack.start("gpu", "worker", "--queues", "gpu")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study", lateral=False)
    assert storescu(stack.port, sent).returncode == 0
    uid = dcmread(sent[0]).StudyInstanceUID
    stack.wait_state(uid, {StudyState.ANALYSING, StudyState.ANALYSED, StudyState.DONE})
    stack.kill("gpu")
    stack.start("gpu", "worker", "--queues", "gpu")
    check_results(stack, sent)
    stack.wait_state(uid, {StudyState.DONE})


def test_destination_down_gets_results_when_back(make_stack: MakeStack, tmp_path: Path) -> None:
    """With the destination down the results wait in the outbox with retries, and arrive
    once it comes back."""
    stack = make_stack("embedded", destination_up=False)
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study", lateral=False)
    assert storescu(stack.port, sent).returncode == 0
    uid = dcmread(sent[0]).StudyInstanceUID
    stack.wait_state(uid, {StudyState.ANALYSED})
    time.sleep(3.0)  # a few failed attempts
    assert stack.study(uid).state is StudyState.ANALYSED  # type: ignore[union-attr]
    stack.destination.start()
    check_results(stack, sent)
    stack.wait_state(uid, {StudyState.DONE})


def test_node_restarted_with_work_in_flight_finishes_it(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    """The embedded node killed with SIGKILL (workers and all) right after the study is
    received finishes it after a restart."""
    stack = make_stack("embedded", quiet_period=5.0)
    stack.start("serve", "serve")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study", lateral=False)
    assert storescu(stack.port, sent).returncode == 0
    stack.kill("serve")
    stack.start("serve", "serve")
    stack.wait_listening()
    check_results(stack, sent)
    stack.wait_state(dcmread(sent[0]).StudyInstanceUID, {StudyState.DONE})


def test_broker_restart_loses_no_job(make_stack: MakeStack, tmp_path: Path) -> None:
    """A study queued in RabbitMQ while no analysis worker runs survives a broker restart
    and is analysed when a worker comes."""
    stack = make_stack("rabbitmq")
    stack.start("node", "node")
    stack.start("io", "worker", "--queues", "io")
    stack.wait_listening()
    sent = chest_study(tmp_path / "study", lateral=False)
    assert storescu(stack.port, sent).returncode == 0
    uid = dcmread(sent[0]).StudyInstanceUID
    stack.wait_state(uid, {StudyState.QUEUED})
    for action in ("stop_app", "start_app"):
        subprocess.run(["rabbitmqctl", action], check=True, capture_output=True, timeout=120)
    stack.start("gpu", "worker", "--queues", "gpu")
    check_results(stack, sent)
    stack.wait_state(uid, {StudyState.DONE})


def test_serve_killed_leaves_no_worker_behind(make_stack: MakeStack) -> None:
    """SIGKILL of `gazex serve` alone takes its worker processes with it, so a restart
    never runs next to orphaned workers."""
    stack = make_stack("embedded")
    serve = stack.start("serve", "serve")
    stack.wait_listening()

    def workers() -> list[str]:
        found = subprocess.run(
            ["pgrep", "-f", f"{stack.config} worker"], capture_output=True, text=True, check=False
        )
        return found.stdout.split()

    deadline = time.monotonic() + 60
    while len(workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers()) >= 2
    os.kill(serve.pid, signal.SIGKILL)
    serve.wait(timeout=30)
    stack.processes.pop("serve")
    deadline = time.monotonic() + 90
    while workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert workers() == []
