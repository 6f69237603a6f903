"""The embedded default's broker: kombu's folder transport with messages written atomically.

kombu writes a message file in place (create, lock, write) while its reader renames and
reads any ``*.msg`` file it lists, without the lock. A poll that falls between the create
and the write reads an empty file, and the message is gone: seen here as a study left
``queued`` with an empty queue folder. Here a message is written under a name the reader
skips and renamed into place, which is atomic, so a reader sees the whole message or none.

Its exchange tables have the same hole: a new table file is created, then locked, then
written, and a publisher that opens it in between reads an empty file and fails
(``JSONDecodeError``; seen as a red CI run). A new table is written aside and linked into
place, which is atomic and fails when another binder got there first.

And kombu keeps bindings in a state shared by every connection of a process: a second
connection that declares a queue the first is still binding skips the table file, which
the first may not have written yet, and its messages find no queue and vanish (the first
167 of 1500 in a red CI run). Every bind here writes the table file itself; it is
idempotent.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

#: What ``celery_config`` passes as ``broker_transport`` for ``filesystem://`` URLs.
TRANSPORT = f"{__name__}:Transport"


class Channel(filesystem.Channel):
    # kombu names the second parameter "payload" here and "message" in its base class.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = Path(self.data_folder_out)
        # The reader takes only names whose text after the first "." is "<queue>.msg".
        partial = folder / f".{name}.partial"
        try:
            partial.write_bytes(dumps(payload).encode("utf-8"))  # type: ignore[no-untyped-call]
            partial.replace(folder / name)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ChannelError(f"cannot add a message to {self.data_folder_out!r}") from exc

    def queue_bind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)  # type: ignore[no-untyped-call]
        exchange = exchange or "amq.direct"
        entry = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)  # type: ignore[no-untyped-call]
        self._queue_bind(exchange, *entry)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        table: Path = self._exchange_file(exchange)  # type: ignore[no-untyped-call]
        if not table.exists():
            table.parent.mkdir(parents=True, exist_ok=True)
            partial = table.with_name(f".{table.name}.{uuid.uuid4().hex}.partial")
            entry = [[routing_key or "", pattern or "", queue or ""]]
            try:
                partial.write_bytes(dumps(entry).encode("utf-8"))  # type: ignore[no-untyped-call]
                os.link(partial, table)
                return
            except FileExistsError:
                pass  # another connection created it meanwhile: add to it below
            except OSError as exc:
                raise ChannelError(f"cannot write the exchange table {table}") from exc
            finally:
                partial.unlink(missing_ok=True)
        super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[no-untyped-call]


class Transport(filesystem.Transport):
    Channel = Channel
