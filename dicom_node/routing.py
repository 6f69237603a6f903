"""Routing rules: which studies are analysed, and which extra destinations get results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.settings import RoutingRule


@dataclass(frozen=True)
class InstanceFacts:
    """The attributes a rule can match, for one instance."""

    Modality: str
    SOPClassUID: str
    BodyPartExamined: str
    ViewPosition: str
    calling_ae: str


@dataclass(frozen=True)
class RoutingDecision:
    rule: RoutingRule | None
    reason: str

    @property
    def analyse(self) -> bool:
        return self.rule is not None


def _matches(allowed: Sequence[str], value: str) -> bool:
    return not allowed or value.strip().upper() in {a.strip().upper() for a in allowed}


def rule_matches(rule: RoutingRule, facts: InstanceFacts) -> bool:
    return (
        _matches(rule.modalities, facts.Modality)
        and _matches(rule.sop_classes, facts.SOPClassUID)
        and _matches(rule.body_parts, facts.BodyPartExamined)
        and _matches(rule.view_positions, facts.ViewPosition)
        and _matches(rule.calling_aes, facts.calling_ae)
    )


def route(rules: Sequence[RoutingRule], instances: Sequence[InstanceFacts]) -> RoutingDecision:
    """The first rule that matches any instance of the study wins."""
    for rule in rules:
        if any(rule_matches(rule, facts) for facts in instances):
            return RoutingDecision(rule, f"matched rule {rule.name!r}")
    seen = sorted({f"{f.Modality or '-'}/{f.BodyPartExamined or '-'}" for f in instances})
    return RoutingDecision(
        None, f"no routing rule matches modality/body part {', '.join(seen) or 'none'}"
    )
