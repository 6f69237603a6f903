"""Fixtures for the HL7 and MLLP tests.

The helper module beside this file (hl7_factories) has a unique name and is put on sys.path
here, so the test modules import it the same way under any pytest import mode.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workers.hl7.mllp import MLLPListener


@pytest.fixture
def listener() -> Iterator[MLLPListener]:
    """A real MLLP listener on a free loopback port that accepts everything."""
    with MLLPListener("127.0.0.1", 0) as running:
        yield running


@pytest.fixture
def dead_port() -> int:
    """A loopback port where nothing listens (bound once, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
