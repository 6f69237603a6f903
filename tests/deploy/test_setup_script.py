"""scripts/setup says what it is doing and leaves a `gazex` launcher, so an admin needs
neither patience with a silent minute nor `.venv/bin/` in front of every command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_setup_reports_each_step_and_links_the_launcher(tmp_path: Path) -> None:
    """Each step is one `setup:` line on stderr, and ~/.local/bin/gazex runs the venv's
    gazex (here with HOME in a temporary folder)."""
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        ["scripts/setup"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("setup: ")]
    assert any("installing torch" in s for s in steps)
    assert any("installing gazex-node[model]" in s for s in steps)
    assert steps[-1].startswith("setup: ready:")
    launcher = tmp_path / ".local" / "bin" / "gazex"
    assert launcher.resolve() == (REPO / ".venv" / "bin" / "gazex").resolve()
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("gazex ")
