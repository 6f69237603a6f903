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


def _cuda_missing() -> str | None:
    """Why tests marked ``gpu`` cannot run here, or None when a CUDA device is present."""
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA (torch is not installed)"
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is false)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is present; elsewhere they are skipped with
    the reason (torch is imported only when such a test was collected)."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    reason = _cuda_missing()
    if reason is None:
        return
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))
