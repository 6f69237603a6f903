"""Shared fixtures. Package-specific fixtures live in each test folder's conftest."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_user_settings_file(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI finds ~/.config/gazex/gazex.toml on its own: a developer's file must not leak
    into the tests (they and their subprocesses see an empty config folder)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
