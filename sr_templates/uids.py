"""Deterministic UIDs for the result objects.

Every UID is a ``2.25`` UID (PS3.5 B.2) whose UUID is a name-based (version 5) UUID of the
inputs that identify the object. So the same result rendered twice gets the same UIDs, and
a retried delivery overwrites in the PACS instead of duplicating.

- series: (source study, source image, model name and version, object kind). Revisions of
  an object share its series, so viewers that show the newest instance of a series (OHIF)
  show the newest revision.
- instance: the series key plus the revision; a re-analysis is a new revision, and the
  findings SR of revision n > 1 lists revision n - 1 in PredecessorDocumentsSequence.
- tracking: (source study, source image, model name, finding key), stable across versions
  and revisions, so a finding can be tracked across re-analyses; shared by the SR group,
  the SEG segment and the GSPS graphic of the same finding.
- frame of reference: (source study, source image), the frame that the SEG and the
  Parametric Map share when the source image has none of its own (see ``_geometry``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from highdicom import UID

from model.result import InferenceResult, ModelInfo, SourceImage
from sr_templates.enum import ObjectKindValues

#: Namespace of every name-based UUID this module makes. Never change it.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:gazex-node:result-objects")


def derive_uid(*parts: str) -> UID:
    """A ``2.25`` UID from the name-based UUID of ``parts`` (order matters)."""
    if not parts:
        raise ValueError("a derived UID needs at least one part")
    name = "\x1f".join(parts)
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def _source_key(source: SourceImage) -> tuple[str, str]:
    return (source.StudyInstanceUID, source.SOPInstanceUID)


def _model_key(model: ModelInfo) -> tuple[str, str]:
    return (model.name, model.version)


@dataclass(frozen=True)
class ObjectUIDs:
    """The UIDs and numbers of one object of one revision."""

    kind: ObjectKindValues
    revision: int
    SeriesInstanceUID: UID
    SOPInstanceUID: UID

    @property
    def SeriesNumber(self) -> int:  # noqa: N802 - named after the DICOM keyword
        return self.kind.series_number

    @property
    def InstanceNumber(self) -> int:  # noqa: N802 - named after the DICOM keyword
        return self.revision


def object_uids(result: InferenceResult, kind: ObjectKindValues, revision: int = 1) -> ObjectUIDs:
    """The UIDs of object ``kind`` of ``revision`` (1 for the first analysis)."""
    if revision < 1:
        raise ValueError(f"revision must be 1 or more, got {revision}")
    series_key = (*_source_key(result.source), *_model_key(result.model), kind.value)
    return ObjectUIDs(
        kind=kind,
        revision=revision,
        SeriesInstanceUID=derive_uid(*series_key, "series"),
        SOPInstanceUID=derive_uid(*series_key, "instance", str(revision)),
    )


def tracking_uid(result: InferenceResult, key: str) -> UID:
    """Tracking Unique Identifier of finding ``key`` (or of a fixation, ``fixation-<n>``)."""
    return derive_uid(*_source_key(result.source), result.model.name, "tracking", key)


def frame_of_reference_uid(result: InferenceResult) -> UID:
    """Frame of Reference UID of the source image's pixel grid, for the derived images of a
    source that has no frame of reference (the same for every model and revision)."""
    return derive_uid(*_source_key(result.source), "frame-of-reference")


def device_observer_uid(model: ModelInfo) -> UID:
    """Device Observer UID of the algorithm: one per model checkpoint."""
    return derive_uid("device", *_model_key(model), model.checkpoint_sha256)
