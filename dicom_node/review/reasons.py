"""The short coded list of reasons a reviewer may give for rejecting an AI finding.

The same codes as ``sr_templates.codes.REJECTION_REASONS`` (private ``99GAZEX`` scheme),
kept here as data because the node may not import ``sr_templates`` (the layers contract in
pyproject.toml); a test checks that both lists are equal, value for value and in order.
The page offers them in this order; the worker turns the value back into the SR's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEME = "99GAZEX"


@dataclass(frozen=True)
class RejectionReason:
    value: str
    meaning: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.value, "scheme": SCHEME, "meaning": self.meaning}


REJECTION_REASONS: tuple[RejectionReason, ...] = (
    RejectionReason("RJ-NOTPRESENT", "Finding not present"),
    RejectionReason("RJ-LOCATION", "Wrong location"),
    RejectionReason("RJ-FINDING", "Wrong finding type"),
    RejectionReason("RJ-ARTEFACT", "Artefact or normal variant"),
    RejectionReason("RJ-INSIGNIFICANT", "Clinically insignificant"),
)
REASON_VALUES = frozenset(r.value for r in REJECTION_REASONS)
