"""Progress bars of the long commands (``gazex data synth``, ``train``, ``eval``): tqdm on stderr.

A bar is on by default only when stderr is a terminal (a log file or a pipe gets no bar);
``--progress`` forces it on, ``--no-progress`` off. ``gazex train`` and ``gazex eval`` draw
one bar over the whole command, every stage and epoch (and, with ``--ablation``, every
model), so its ETA is the command's, not the epoch's.

Importing this module is cheap (tqdm is imported when a bar is made).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``; the default (None) means "when stderr is a terminal"."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with ETA on stderr (default: only when stderr is a terminal)",
    )


class Progress:
    """One tqdm bar over a whole command; ``enabled`` None means "when stderr is a terminal".

    ``stage`` names what runs now (the bar's description after ``prefix``); ``skip`` takes
    work off the total that will not run (epochs a resumed training already did), so the
    rate, and with it the ETA, only counts work done in this run.
    """

    def __init__(self, total: int, unit: str, enabled: bool | None, prefix: str = "") -> None:
        from tqdm import tqdm

        self.prefix = prefix
        self.bar: tqdm[Any] = tqdm(
            total=total,
            desc=prefix.rstrip() or None,
            unit=unit,
            # None: tqdm switches itself off when stderr is not a terminal.
            disable=None if enabled is None else not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._logging: ExitStack | None = None
        if not self.bar.disable:  # log lines go above the bar, not through it
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._logging = ExitStack()
            self._logging.enter_context(logging_redirect_tqdm())

    def stage(self, text: str) -> None:
        """Name what runs now; drawn at once (a stage changes once an epoch at most)."""
        self.bar.set_postfix_str("", refresh=False)
        self.bar.set_description_str(f"{self.prefix}{text}", refresh=True)

    def update(self, count: int = 1) -> None:
        self.bar.update(count)

    def postfix(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def skip(self, count: int) -> None:
        if count > 0 and self.bar.total is not None:
            self.bar.total = max(self.bar.n, self.bar.total - count)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
        if self._logging is not None:
            self._logging.close()
            self._logging = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
