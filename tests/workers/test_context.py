"""The model backend a worker loads is looked up by name in the gazex.model_backends
entry-point group."""

from __future__ import annotations

import pytest

from dicom_node.errors import ConfigError
from model.predictor import Predictor
from workers.context import load_backend


def test_the_default_backend_is_the_shipped_predictor() -> None:
    """`model.backend = "default"` loads model.predictor.Predictor through its entry point."""
    assert load_backend("default") is Predictor


def test_an_unknown_backend_names_the_key_and_the_known_ones() -> None:
    """An unknown name fails with one line naming model.backend and the installed names."""
    with pytest.raises(
        ConfigError, match=r"model\.backend: no model backend named 'nope' \(default"
    ):
        load_backend("nope")
