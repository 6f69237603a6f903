"""The object builder: half of a study's objects built in a helper process, the same
objects as built in one process, and a helper that dies or is left with a stale request
never costs a study its objects."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator
from io import BytesIO

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from model.predictor import Predictor
from model.result import InferenceResult
from model.train.gazedata.images import write_dicom
from model.train.gazedata.synth import generate_sample
from workers import builder as builder_module
from workers.builder import (
    HELPER_KINDS,
    EncodedObject,
    ObjectBuilder,
    _read_exactly,
    _without_pixels,
    _write_all,
    build_and_encode,
)

#: Attributes that differ between any two builds: creation times and random UIDs.
_VOLATILE = (
    "InstanceCreationTime",
    "ContentTime",
    "PresentationCreationTime",
    "ContributingEquipmentSequence",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence",
)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[InferenceResult, Dataset]]:
    folder = tmp_path_factory.mktemp("builder")
    predictor = Predictor.from_checkpoint()
    cases = []
    for seed in (7, 8):
        sample = generate_sample(seed, height=384, width=320, view="PA")
        path = folder / f"study{seed}.dcm"
        write_dicom(path, sample.image, sample_id=f"builder-{seed}", modality="DX")
        source = dcmread(path)
        cases.append((predictor.predict(source), source))
    return cases


@pytest.fixture
def builder() -> Iterator[ObjectBuilder]:
    made = ObjectBuilder()
    yield made
    made.close()


@pytest.fixture
def running(
    builder: ObjectBuilder, studies: list[tuple[InferenceResult, Dataset]]
) -> ObjectBuilder:
    """A builder whose helper has answered once."""
    result, source = studies[0]
    builder.build(result, source, 1)
    assert builder.helper_pid is not None
    return builder


def _stable(obj: EncodedObject) -> Dataset:
    ds = dcmread(BytesIO(obj.data))
    for keyword in _VOLATILE:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _same(built: list[EncodedObject], expected: list[EncodedObject]) -> None:
    assert [o.kind for o in built] == [o.kind for o in expected]
    assert [o.sop_instance_uid for o in built] == [o.sop_instance_uid for o in expected]
    for ours, theirs in zip(built, expected, strict=True):
        assert _stable(ours) == _stable(theirs), ours.kind


def test_helper_builds_the_same_objects(
    builder: ObjectBuilder, studies: list[tuple[InferenceResult, Dataset]]
) -> None:
    result, source = studies[0]
    built = builder.build(result, source, 1)
    assert builder.helper_pid is not None and builder.helper_pid != os.getpid()
    expected = build_and_encode(result, source, 1)
    assert {o.kind for o in expected} >= HELPER_KINDS  # both halves have work here
    _same(built, expected)


def test_a_killed_helper_costs_no_object(
    running: ObjectBuilder, studies: list[tuple[InferenceResult, Dataset]]
) -> None:
    result, source = studies[0]
    first = running.helper_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    expected = build_and_encode(result, source, 1)
    _same(running.build(result, source, 1), expected)  # built here if the helper was gone
    _same(running.build(result, source, 1), expected)
    assert running.helper_pid not in (None, first)  # a new helper took over


def test_a_hung_helper_costs_no_object(
    running: ObjectBuilder,
    studies: list[tuple[InferenceResult, Dataset]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A helper that stops answering is given up after the reply timeout and replaced."""
    result, source = studies[0]
    hung = running.helper_pid
    assert hung is not None
    monkeypatch.setattr(builder_module, "REPLY_TIMEOUT", 1.0)
    os.kill(hung, signal.SIGSTOP)
    _same(running.build(result, source, 1), build_and_encode(result, source, 1))
    assert running.helper_pid is None  # killed; the next study starts a new one
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)


def test_a_failed_build_leaves_no_stale_reply(
    builder: ObjectBuilder, studies: list[tuple[InferenceResult, Dataset]]
) -> None:
    """The local half fails while the helper still works on its half: the next study gets
    its own objects, not the helper's late reply for the failed one."""
    (result, _), (other_result, other_source) = studies
    with pytest.raises(ValueError, match="does not match"):
        builder.build(result, other_source, 1)
    _same(
        builder.build(other_result, other_source, 2),
        build_and_encode(other_result, other_source, 2),
    )


def test_helper_exits_when_its_parent_is_gone(running: ObjectBuilder) -> None:
    """A worker killed with SIGKILL closes the helper's stdin; the helper then exits."""
    helper = running._helper
    assert helper is not None and helper.stdin is not None
    helper.stdin.close()
    assert helper.wait(timeout=10) == 0


def test_helper_is_sent_no_pixel_data(studies: list[tuple[InferenceResult, Dataset]]) -> None:
    """What the helper is sent leaves the megabytes of pixels out and the source intact."""
    _, source = studies[0]
    header = _without_pixels(source)
    assert "PixelData" not in header and "PixelData" in source
    assert header.SOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(source.pixel_array, dcmread(source.filename).pixel_array)


def test_pipe_io_gives_up_on_a_peer_that_stops() -> None:
    """Writing to a pipe nobody reads and reading one nobody writes end at the deadline
    instead of blocking the worker."""
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        os.set_blocking(read_end, False)
        with pytest.raises(TimeoutError):
            _write_all(write_end, b"x" * 1_000_000, timeout=0.5)  # a pipe holds 64 KiB
        assert _read_exactly(read_end, 10, time.monotonic() + 0.5) == b"x" * 10
        while os.read(read_end, 1 << 20):
            if not select.select([read_end], [], [], 0)[0]:
                break
        with pytest.raises(TimeoutError):
            _read_exactly(read_end, 1, time.monotonic() + 0.5)
        os.close(write_end)
        write_end = -1
        assert _read_exactly(read_end, 1, time.monotonic() + 0.5) is None  # its end
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
