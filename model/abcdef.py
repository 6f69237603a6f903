"""The ABCDEF systematic review of a chest radiograph and the anatomy it walks over.

Region names are those of Chest ImaGenome (Wu et al., 2021), the scene-graph vocabulary
that REFLACX and MIMIC-Eye align to. Each region belongs by default to one ABCDEF step;
a fixation on a line or tube belongs to step F whatever region it lands in.
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    """One step of the ABCDEF review, in reading order."""

    AIRWAYS = "A"
    BREATHING = "B"
    CIRCULATION = "C"
    DIAPHRAGM = "D"
    EXTERNAL = "E"
    FOREIGN_MATERIAL = "F"

    @property
    def title(self) -> str:  # type: ignore[override]  # the step's name, not str.title()
        return STEP_TITLES[self]


STEP_TITLES: dict[Step, str] = {
    Step.AIRWAYS: "Airways",
    Step.BREATHING: "Breathing",
    Step.CIRCULATION: "Circulation",
    Step.DIAPHRAGM: "Diaphragm",
    Step.EXTERNAL: "External",
    Step.FOREIGN_MATERIAL: "Foreign material",
}

#: Canonical reading order.
STEPS: tuple[Step, ...] = tuple(Step)

#: Chest ImaGenome region name -> default ABCDEF step.
REGION_STEP: dict[str, Step] = {
    "trachea": Step.AIRWAYS,
    "carina": Step.AIRWAYS,
    "right apical zone": Step.BREATHING,
    "left apical zone": Step.BREATHING,
    "right upper lung zone": Step.BREATHING,
    "left upper lung zone": Step.BREATHING,
    "right mid lung zone": Step.BREATHING,
    "left mid lung zone": Step.BREATHING,
    "right lower lung zone": Step.BREATHING,
    "left lower lung zone": Step.BREATHING,
    "right lung": Step.BREATHING,
    "left lung": Step.BREATHING,
    "right hilar structures": Step.CIRCULATION,
    "left hilar structures": Step.CIRCULATION,
    "cardiac silhouette": Step.CIRCULATION,
    "mediastinum": Step.CIRCULATION,
    "upper mediastinum": Step.CIRCULATION,
    "aortic arch": Step.CIRCULATION,
    "svc": Step.CIRCULATION,
    "cavoatrial junction": Step.CIRCULATION,
    "right atrium": Step.CIRCULATION,
    "right hemidiaphragm": Step.DIAPHRAGM,
    "left hemidiaphragm": Step.DIAPHRAGM,
    "right costophrenic angle": Step.DIAPHRAGM,
    "left costophrenic angle": Step.DIAPHRAGM,
    "abdomen": Step.DIAPHRAGM,
    "spine": Step.EXTERNAL,
    "right clavicle": Step.EXTERNAL,
    "left clavicle": Step.EXTERNAL,
}

REGIONS: tuple[str, ...] = tuple(REGION_STEP)

#: Where lines and tubes end and are checked on every film (step F), devices or not:
#: endotracheal tube tip above the carina, central line tip at the cavoatrial junction /
#: SVC / right atrium (pacemaker leads too), feeding tube tip below the diaphragm.
DEVICE_CHECK_REGIONS: frozenset[str] = frozenset(
    {"carina", "svc", "cavoatrial junction", "right atrium", "abdomen"}
)


def inspected_steps(step: Step | None, region: str | None) -> frozenset[Step]:
    """ABCDEF steps one fixation inspects: its own step, the default step of its region,
    and F when the region is one where lines and tubes are checked.

    The one rule behind both the coverage of a trajectory (``model.predictor.visited_steps``)
    and the choice of the key fixations the model learns from (``model.train.batching``), so the
    training targets keep every step the coverage metric looks for.
    """
    out: set[Step] = set()
    if step is not None:
        out.add(step)
    if region is not None:
        if region in REGION_STEP:
            out.add(REGION_STEP[region])
        if region in DEVICE_CHECK_REGIONS:
            out.add(Step.FOREIGN_MATERIAL)
    return frozenset(out)
