"""The embedded default's folder broker loses no message to a reader polling mid-write."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kombu import Connection

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
