"""Fixtures for the data-layer tests: a handful of small synthetic samples."""

from __future__ import annotations

import pytest

from model.train.gazedata.sample import GazeSample
from model.train.gazedata.simulated_readers import READERS


@pytest.fixture(scope="session")
def small_samples() -> list[GazeSample]:
    """Six 128-pixel samples, one per reader plus one AP, seeds fixed."""
    from model.train.gazedata.synth import generate_sample

    out = [generate_sample(seed, size=128, reader=r.reader_id) for seed, r in enumerate(READERS)]
    out.append(generate_sample(40, size=128, view="AP"))
    return out


@pytest.fixture(scope="session")
def nonsquare_samples() -> list[GazeSample]:
    """Three non-square samples (160 rows x 128 columns)."""
    from model.train.gazedata.synth import generate_sample

    return [generate_sample(seed, height=160, width=128) for seed in (3, 7, 11)]
