"""Every result object of one analysed image, built by the pure builders of ``sr``, ``seg``,
``pm`` and ``gsps``, and their encoding as DICOM Part 10.

No I/O here: each builder returns a highdicom dataset (or ``None`` when the result has
nothing for that object) that the caller writes or sends. Every object lands in the source
study with the source's patient and study modules, in its own series (see ``enum``), with
UIDs derived from the result (see ``uids``). Raises ``ValueError`` when the source dataset
is not the image the result describes.

    objects = build_all(result, ds, revision=1)     # {ObjectKindValues: Dataset}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from io import BytesIO

from pydicom.dataset import Dataset

from model.result import InferenceResult
from sr_templates.enum import ObjectKindValues
from sr_templates.gsps import build_gsps
from sr_templates.pm import build_attention_map
from sr_templates.seg import build_segmentation
from sr_templates.sr import build_findings_sr, build_trajectory_sr

#: The builder of each kind, in series order.
BUILDERS: dict[ObjectKindValues, Callable[[InferenceResult, Dataset, int], Dataset | None]] = {
    ObjectKindValues.FINDINGS_SR: build_findings_sr,
    ObjectKindValues.TRAJECTORY_SR: build_trajectory_sr,
    ObjectKindValues.SEGMENTATION: build_segmentation,
    ObjectKindValues.ATTENTION_MAP: build_attention_map,
    ObjectKindValues.GSPS: build_gsps,
}


def build_all(
    result: InferenceResult,
    source: Dataset,
    revision: int = 1,
    kinds: Iterable[ObjectKindValues] = BUILDERS,
) -> dict[ObjectKindValues, Dataset]:
    """Every object of ``kinds`` the result yields, in series order (absent ones left out)."""
    wanted = set(kinds)
    built = {
        kind: build(result, source, revision) for kind, build in BUILDERS.items() if kind in wanted
    }
    return {kind: ds for kind, ds in built.items() if ds is not None}


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
