"""The embedded default's folder broker loses no message to a reader polling mid-write."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import filesystem

from dicom_node import folder_broker
from dicom_node.folder_broker import Transport

MESSAGES = 1500


def _connection(folder: Path, transport: Any = Transport) -> Connection:
    return Connection(
        transport=transport,
        transport_options={
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0,
        },
    )


def test_reader_polling_while_messages_are_written_gets_every_message(tmp_path: Path) -> None:
    """A reader that lists the folder without pause, while another connection writes,
    receives each message once and whole (kombu's own writer lets it read empty files)."""
    (tmp_path / "queue").mkdir()
    received: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        with _connection(tmp_path) as conn:
            queue = conn.SimpleQueue("gpu")
            try:
                while len(received) < MESSAGES:
                    try:
                        message = queue.get(timeout=10)
                    except queue.Empty:
                        if done.is_set():
                            return
                        continue
                    received.append(message.payload["n"])
                    message.ack()
            except Exception as exc:  # noqa: BLE001 - an empty file fails to decode, say
                errors.append(exc)
            finally:
                queue.close()

    reader = threading.Thread(target=read)
    reader.start()
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("gpu")
        for n in range(MESSAGES):
            queue.put({"n": n})
        queue.close()
    done.set()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert errors == []
    assert sorted(received) == list(range(MESSAGES))
    assert not [p for p in (tmp_path / "queue").iterdir() if p.name.endswith(".msg")]


def test_publishing_while_a_queue_is_first_bound_never_reads_an_empty_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher that looks up the exchange table while a consumer binds the first queue
    never meets a half-written table. kombu creates the table file, then locks and writes
    it; the lock is slowed here so that a publisher always falls into that gap (kombu's own
    writer then fails it with JSONDecodeError)."""
    slow_lock = filesystem.lock

    def lock(handle: Any, flags: int) -> None:
        if flags == filesystem.LOCK_EX:
            time.sleep(0.3)
        slow_lock(handle, flags)

    monkeypatch.setattr(filesystem, "lock", lock)
    (tmp_path / "queue").mkdir()
    bound = threading.Event()

    def declare() -> None:
        with _connection(tmp_path) as conn:
            conn.SimpleQueue("gpu").close()
        bound.set()

    consumer = threading.Thread(target=declare)
    consumer.start()
    errors: list[BaseException] = []
    with _connection(tmp_path) as conn:
        producer = conn.Producer()
        while not bound.wait(0.01):
            try:
                producer.publish({"n": 1}, exchange="gpu", routing_key="gpu")
            except Exception as exc:  # noqa: BLE001 - the decode error, whatever wraps it
                errors.append(exc)
    consumer.join(timeout=10)
    assert errors == []


def test_a_queue_declared_while_another_connection_binds_it_gets_its_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two connections of one process declaring the same queue: the second one's messages
    are never dropped. kombu keeps bindings in a process-wide state and skips writing the
    binding file when that state has it, though the first connection may not have written
    it yet; its publisher then finds no table and drops the message (seen as a red CI run:
    the first 167 of 1500 messages gone)."""
    slow_bind = folder_broker.Channel._queue_bind
    first_binding = threading.Event()

    def bind(self: Any, *args: Any) -> None:
        if threading.current_thread().name == "slow-binder":
            first_binding.set()
            time.sleep(0.5)
        slow_bind(self, *args)

    monkeypatch.setattr(folder_broker.Channel, "_queue_bind", bind)
    (tmp_path / "queue").mkdir()

    def declare() -> None:
        with _connection(tmp_path) as conn:
            conn.SimpleQueue("gpu").close()

    binder = threading.Thread(target=declare, name="slow-binder")
    binder.start()
    assert first_binding.wait(10)
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("gpu")
        queue.put({"n": 1})
        queue.close()
    binder.join(timeout=10)
    assert [p.name.endswith(".gpu.msg") for p in (tmp_path / "queue").iterdir()] == [True]
