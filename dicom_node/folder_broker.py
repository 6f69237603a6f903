"""The embedded default's broker: kombu's folder transport with messages written atomically.

kombu writes a message file in place (create, lock, write) while its reader renames and
reads any ``*.msg`` file it lists, without the lock. A poll that falls between the create
and the write reads an empty file, and the message is gone: seen here as a study left
``queued`` with an empty queue folder. Here a message is written under a name the reader
skips and renamed into place, which is atomic, so a reader sees the whole message or none.
"""

from __future__ import annotations

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


class Transport(filesystem.Transport):
    Channel = Channel
