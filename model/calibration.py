"""Calibrated finding probabilities: per-finding temperature scaling.

The finding head's sigmoids are trained for ranking and thresholded decisions, not for
probabilities that mean what they say: a small network trained to near-zero loss on two
thousand films is over-confident on new ones (Guo et al., "On calibration of modern neural
networks", ICML 2017). The probabilities in the result (SR, HL7, ``gazex predict``) are
therefore mapped through a calibrator fitted on the checkpoint's own training films.

**Method** (:data:`METHOD`): temperature scaling per finding, ``p = sigmoid(z / T_f)`` for
the finding's logit ``z``: one parameter for each of the twelve sigmoid heads. Chosen over
Platt scaling (``sigmoid(a z + b)``, two parameters) and isotonic regression because the
calibration films are few (the 205 threshold readings of the shipped checkpoint, as few as
11 positives for a finding): one parameter per head is what such data can determine, and
a positive temperature is monotone, so it changes no ranking (AUROC) and no decision.

**Fit**: on the readings ``gazex train`` holds out of the gradient updates to tune the
finding thresholds (every tenth training reading, ``model.train.cli.split_validation``):
training films, in the checkpoint's ``training_data`` record, that the weights never fitted.
The films it trained on would teach nothing (their logits are as confident as training made
them). ``T_f`` maximises the posterior under a log-normal prior ``ln T_f ~ N(0, 0.5^2)``
(:data:`PRIOR_SIGMA`): it minimises the summed cross-entropy of ``sigmoid(z / T_f)``
against the labels plus ``(ln T_f)^2 / (2 * 0.5^2)``. Plain maximum likelihood drives
``T_f -> 0`` for every finding the calibration films happen to separate perfectly (7 of the
shipped checkpoint's 12: a probability of 0.999 would become 1 - 1e-60); Platt's smoothed
targets instead cap confidence near ``(N+ + 1) / (N+ + 2)`` and, tried here, raised the
test ECE from 0.0098 to 0.0171. The prior leaves ``T_f`` near 1 unless the films give real
evidence; the search is bounded to ``[1 / MAX_TEMPERATURE, MAX_TEMPERATURE]``.

**Thresholds**: ``gazex.json``'s thresholds were tuned on the raw probabilities. Decisions
keep using them on the raw probability, which is the same decision as the calibrated
probability against :meth:`ProbabilityCalibration.thresholds` (the threshold mapped through
the same temperature), so calibration changes no present/absent call.

**Storage**: ``probability_calibration.json`` in the checkpoint folder, named by
``gazex.json``'s ``probability_calibration`` and covered by the checkpoint sha256
(:func:`model.predictor.checkpoint_sha256`). Written byte for byte the same for the same fit.

Numpy only: no torch here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "probability_calibration.json"
METHOD = "temperature-scaling-per-finding/1"
#: Equal-width bins of the expected calibration error.
ECE_BINS = 15
#: The temperature search runs over ``[1 / MAX_TEMPERATURE, MAX_TEMPERATURE]``.
MAX_TEMPERATURE = 20.0
#: Standard deviation of the log-normal prior on each temperature (``ln T ~ N(0, 0.5^2)``):
#: a temperature beyond a factor ``e`` either way is a two-sigma claim the films must make.
PRIOR_SIGMA = 0.5
#: Probabilities are clipped this far from 0 and 1 before their logit is taken.
_EPS = 1e-7

F64 = npt.NDArray[np.float64]


class CalibrationError(ValueError):
    """A calibration file that cannot be used (missing, malformed, other findings)."""


def logits_of(probabilities: npt.ArrayLike) -> F64:
    """The logits of sigmoid probabilities (clipped to ``[1e-7, 1 - 1e-7]`` first)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    logits: F64 = np.log(p) - np.log1p(-p)
    return logits


def _sigmoid(z: F64) -> F64:
    out: F64 = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def _objective(u: float, z: F64, y: F64, prior: float) -> float:
    """Mean cross-entropy of ``sigmoid(z / e^u)`` plus the prior's ``u^2 / (2 sigma^2 n)``."""
    s = z * math.exp(-u)
    # -y log sigmoid(s) - (1 - y) log(1 - sigmoid(s)), stably
    return float(np.mean(np.logaddexp(0.0, s) - y * s)) + u * u / (2.0 * prior**2 * z.size)


def fit_temperature(
    logits: npt.ArrayLike, labels: npt.ArrayLike, prior: float = PRIOR_SIGMA
) -> float:
    """The temperature ``T`` maximising the posterior of ``sigmoid(z / T)`` under the
    log-normal prior ``ln T ~ N(0, prior^2)``; 1.0 when the labels are all one class.

    ``u = ln T`` is searched on a grid over ``[-ln MAX_TEMPERATURE, ln MAX_TEMPERATURE]``
    and refined by golden section around the grid's best point."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    yb = np.asarray(labels, dtype=bool).ravel()
    if z.shape != yb.shape:
        raise ValueError(f"logits {z.shape} and labels {yb.shape} differ in shape")
    if yb.all() or not yb.any():
        return 1.0
    y = yb.astype(np.float64)
    bound = math.log(MAX_TEMPERATURE)
    grid = np.linspace(-bound, bound, 241)
    best = int(np.argmin([_objective(float(u), z, y, prior) for u in grid]))
    lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, grid.size - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _objective(a, z, y, prior), _objective(b, z, y, prior)
    while hi - lo > 1e-7:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _objective(a, z, y, prior)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _objective(b, z, y, prior)
    return math.exp((lo + hi) / 2.0)


def expected_calibration_error(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = ECE_BINS
) -> float:
    """The usual ECE: ``sum_b |B_b| / n * |mean label - mean probability|`` over ``bins``
    equal-width bins of the probability (the last bin includes 1.0); NaN without samples."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.size == 0:
        return float("nan")
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            total += float(chosen.sum()) * abs(float(y[chosen].mean() - p[chosen].mean()))
    return total / y.size


def reliability_bins(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """(mean probability, fraction positive, count) of each non-empty equal-width bin."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    index = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            out.append((float(p[chosen].mean()), float(y[chosen].mean()), int(chosen.sum())))
    return out


@dataclass(frozen=True)
class ProbabilityCalibration:
    """A temperature per finding (``finding_keys`` order) and what it was fitted on."""

    finding_keys: tuple[str, ...]
    temperatures: tuple[float, ...]
    films: int
    method: str = METHOD
    #: ECE (:data:`ECE_BINS` bins) on the calibration films, before and after, per finding.
    ece_before: tuple[float, ...] = ()
    ece_after: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.temperatures) != len(self.finding_keys):
            raise CalibrationError(
                f"{len(self.temperatures)} temperatures for {len(self.finding_keys)} findings"
            )
        bad = [t for t in self.temperatures if not (math.isfinite(t) and t > 0)]
        if bad:
            raise CalibrationError(f"temperatures must be positive and finite, got {bad}")

    def calibrate(self, probabilities: npt.ArrayLike) -> F64:
        """Calibrated probabilities of raw ones (..., F): ``sigmoid(logit(p) / T)``."""
        z = logits_of(probabilities)
        if z.shape[-1] != len(self.temperatures):
            raise CalibrationError(
                f"{z.shape[-1]} probabilities, the calibration has {len(self.temperatures)}"
            )
        return _sigmoid(z / np.asarray(self.temperatures))

    def thresholds(self, raw_thresholds: npt.ArrayLike) -> F64:
        """Raw-probability thresholds mapped to the calibrated scale (the same decisions)."""
        return self.calibrate(raw_thresholds)

    # -- file -------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "films": self.films,
                "findings": {
                    key: {
                        "temperature": self.temperatures[i],
                        **({"ece_before": self.ece_before[i]} if self.ece_before else {}),
                        **({"ece_after": self.ece_after[i]} if self.ece_after else {}),
                    }
                    for i, key in enumerate(self.finding_keys)
                },
            },
            indent=1,
        )

    def save(self, directory: Path) -> Path:
        """Write :data:`CALIBRATION_FILE` into the checkpoint folder; its path."""
        path = directory / CALIBRATION_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> ProbabilityCalibration:
        """Read a calibration file; :class:`CalibrationError` saying what is wrong with it."""
        if not path.is_file():
            raise CalibrationError(f"probability calibration file not found: {path}")
        try:
            data = json.loads(path.read_text())
            findings = data["findings"]
            keys = tuple(findings)
            calibration = cls(
                finding_keys=keys,
                temperatures=tuple(float(findings[k]["temperature"]) for k in keys),
                films=int(data["films"]),
                method=str(data["method"]),
                ece_before=tuple(float(findings[k]["ece_before"]) for k in keys)
                if all("ece_before" in findings[k] for k in keys)
                else (),
                ece_after=tuple(float(findings[k]["ece_after"]) for k in keys)
                if all("ece_after" in findings[k] for k in keys)
                else (),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"{path}: not a probability calibration ({exc})") from exc
        if calibration.method != METHOD:
            raise CalibrationError(f"{path}: method {calibration.method!r}, expected {METHOD!r}")
        return calibration


def fit_calibration(
    finding_keys: tuple[str, ...], probabilities: npt.ArrayLike, labels: npt.ArrayLike
) -> ProbabilityCalibration:
    """Fit a temperature per finding on held-out training films' raw probabilities (n, F)
    and labels (n, F); the module docstring's rule."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(finding_keys):
        raise ValueError(
            f"probabilities {p.shape} and labels {y.shape} must both be "
            f"(films, {len(finding_keys)})"
        )
    if p.shape[0] == 0:
        raise ValueError("no films to calibrate on")
    z = logits_of(p)
    temperatures = tuple(fit_temperature(z[:, i], y[:, i]) for i in range(p.shape[1]))
    calibration = ProbabilityCalibration(
        finding_keys=tuple(finding_keys),
        temperatures=tuple(round(t, 6) for t in temperatures),
        films=int(p.shape[0]),
    )
    after = calibration.calibrate(p)
    calibration = ProbabilityCalibration(
        finding_keys=calibration.finding_keys,
        temperatures=calibration.temperatures,
        films=calibration.films,
        ece_before=tuple(
            round(expected_calibration_error(y[:, i], p[:, i]), 6) for i in range(p.shape[1])
        ),
        ece_after=tuple(
            round(expected_calibration_error(y[:, i], after[:, i]), 6) for i in range(p.shape[1])
        ),
    )
    logger.info(
        "probability calibration on %d films: temperatures %s",
        calibration.films,
        ", ".join(
            f"{k} {t:.2f}" for k, t in zip(finding_keys, calibration.temperatures, strict=True)
        ),
    )
    return calibration


def load_calibration(
    directory: Path, name: str, finding_keys: tuple[str, ...]
) -> ProbabilityCalibration | None:
    """The calibration a checkpoint folder names (``gazex.json``'s
    ``probability_calibration``), None when it names none; refused when its findings are
    not the checkpoint's."""
    if not name:
        return None
    if Path(name).name != name:
        raise CalibrationError(f"calibration {name!r} must be a file name in the checkpoint")
    calibration = ProbabilityCalibration.load(directory / name)
    if calibration.finding_keys != tuple(finding_keys):
        raise CalibrationError(
            f"{directory / name} calibrates findings {list(calibration.finding_keys)}, the "
            f"checkpoint has {list(finding_keys)}"
        )
    return calibration
