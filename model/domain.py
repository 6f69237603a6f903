"""The domain gate: is a film like the films the checkpoint was trained on?

A model trained on synthetic films has no business reporting findings on a real radiograph,
an MRI slice or a photograph, yet it will: its heads output probabilities whatever the input.
The gate measures how far the film lies from the training films in the model's own
representation and says so (:class:`model.result.DomainCheck`), so that every output can
lead with "out of domain" instead of reporting findings as if the model knew.

**Features** (:data:`FEATURES`): the channel-wise maximum and mean over the image tokens of
the language model's final hidden states at the image tokens (2 x 128 values for the shipped
checkpoint): the pooled image representation the finding head's global logit reads
(``GazeXModel.finding_outputs``), computed by :class:`model.inference.InferenceEngine` on
every film at no extra cost. Simple pixel statistics of the model's input (quantiles, an
8 x 8 thumbnail, fine-detail energy) were tried beside them and left out: they flagged half
of the held-out synthetic films rendered at 512 px and every film whose contrast changed by
20 %, on which the model scores as well as on its training size, while the model's own
features already flag every kind of foreign input (``model/MODEL_CARD.md``, "Domain gate").

**Score** (:data:`METHOD`): the Mahalanobis distance of the features from the training films'
mean, under one Gaussian fitted to them, as in Lee et al., "A simple unified framework for
detecting out-of-distribution samples and adversarial attacks" (NeurIPS 2018), class-agnostic
since the findings are multi-label. The features are standardised and the covariance is
shrunk towards the identity by the Ledoit-Wolf rule (Ledoit and Wolf, "A well-conditioned
estimator for large-dimensional covariance matrices", J. Multivariate Anal. 2004): 256
dimensions from two thousand films give a sample covariance whose smallest eigenvalues are
noise, and inverting it unshrunk would turn that noise into distance.

**Threshold**: from the training films alone. Distances of the films a Gaussian was fitted
on are biased low, so the films are split into :data:`FOLDS` folds by position, each fold is
scored by the Gaussian of the others, and the threshold is the :data:`QUANTILE` quantile of
those held-out distances (about 0.5 % of new films from the training distribution fall above
it). The stored Gaussian is then fitted on all the films. No real film takes part.

**Storage**: ``domain_gate.safetensors`` in the checkpoint folder (mean, scale and precision
as float32 tensors; method, features, threshold and calibration figures in its metadata),
named by ``gazex.json``'s ``domain_gate`` and covered by the checkpoint sha256
(:func:`model.predictor.checkpoint_sha256`). ``gazex train`` writes it after the last epoch;
``gazex calibrate-domain`` fits it for an existing checkpoint from its training films.

Numpy and safetensors only: no torch here.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model.result import DomainCheck

logger = logging.getLogger(__name__)

GATE_FILE = "domain_gate.safetensors"
#: What the features are; a gate fitted on other features is refused at load.
FEATURES = "lm-image-tokens-max-mean/1"
#: How the score is computed (reported in every :class:`DomainCheck`).
METHOD = "mahalanobis-ledoit-wolf/1"
FOLDS = 10
QUANTILE = 0.995
#: Fewest films a gate can be fitted on (each fold keeps at least two).
MIN_FILMS = 2 * FOLDS

F64 = npt.NDArray[np.float64]


class DomainGateError(ValueError):
    """A gate file that cannot be used (missing, malformed, other features or size)."""


def ledoit_wolf(z: F64) -> tuple[F64, float]:
    """(shrunk covariance, shrinkage) of centred rows ``z`` (n, p): the Ledoit-Wolf
    estimate (1 - a) S + a mu I, with S the sample covariance and mu its mean eigenvalue."""
    n, p = z.shape
    sample = z.T @ z / n
    mu = float(np.trace(sample)) / p
    delta = float(np.sum((sample - mu * np.eye(p)) ** 2)) / p
    beta = (float(np.sum(np.sum(z * z, axis=1) ** 2)) / n - float(np.sum(sample**2))) / (n * p)
    shrinkage = 1.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(p), shrinkage


@dataclass(frozen=True)
class _Gaussian:
    mean: F64
    scale: F64
    precision: F64
    shrinkage: float

    @classmethod
    def fit(cls, features: F64) -> _Gaussian:
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-12), scale, 1.0)
        z = (features - mean) / scale
        covariance, shrinkage = ledoit_wolf(z)
        precision = np.asarray(np.linalg.inv(covariance), dtype=np.float64)
        return cls(mean, scale, precision, shrinkage)

    def distances(self, features: F64) -> F64:
        z = (features - self.mean) / self.scale
        squared = np.einsum("ij,jk,ik->i", z, self.precision, z)
        clipped = np.clip(np.nan_to_num(squared, nan=np.inf), 0.0, np.finfo(np.float64).max)
        distances: F64 = np.sqrt(clipped)
        return distances


@dataclass(frozen=True)
class DomainGate:
    """A fitted gate: the training films' Gaussian and the distance threshold."""

    mean: F64
    scale: F64
    precision: F64
    threshold: float
    films: int
    shrinkage: float
    quantile: float = QUANTILE
    folds: int = FOLDS
    features: str = FEATURES
    method: str = METHOD
    #: Median and maximum held-out distance of the training films (calibration figures).
    median_distance: float = 0.0
    max_distance: float = 0.0

    def __post_init__(self) -> None:
        d = self.mean.shape[0]
        if self.mean.shape != (d,) or self.scale.shape != (d,) or self.precision.shape != (d, d):
            raise DomainGateError(
                f"gate shapes do not match: mean {self.mean.shape}, scale {self.scale.shape}, "
                f"precision {self.precision.shape}"
            )
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise DomainGateError(f"gate threshold must be positive, got {self.threshold}")

    @property
    def dims(self) -> int:
        return int(self.mean.shape[0])

    def distances(self, features: npt.ArrayLike) -> F64:
        """Distances of feature rows (n, dims) from the training films (0 = their mean)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.dims:
            raise DomainGateError(f"features have {x.shape[1]} values, the gate {self.dims}")
        return _Gaussian(self.mean, self.scale, self.precision, self.shrinkage).distances(x)

    def check(self, features: npt.ArrayLike) -> DomainCheck:
        """The verdict on one film's features (``dims`` values)."""
        score = float(self.distances(features)[0])
        score = min(score, np.finfo(np.float64).max)
        return DomainCheck(
            score=round(score, 3),
            threshold=round(self.threshold, 3),
            in_domain=round(score, 3) <= round(self.threshold, 3),
            method=self.method,
        )

    # -- file -------------------------------------------------------------------------

    def save(self, directory: Path) -> Path:
        """Write :data:`GATE_FILE` into the checkpoint folder ``directory``; its path."""
        path = directory / GATE_FILE
        tensors = {
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "precision": self.precision.astype(np.float32),
        }
        metadata = {
            "method": self.method,
            "features": self.features,
            "threshold": repr(self.threshold),
            "films": str(self.films),
            "shrinkage": repr(self.shrinkage),
            "quantile": repr(self.quantile),
            "folds": str(self.folds),
            "median_distance": repr(self.median_distance),
            "max_distance": repr(self.max_distance),
        }
        path.write_bytes(_safetensors_bytes(tensors, metadata))
        return path

    @classmethod
    def load(cls, path: Path) -> DomainGate:
        """Read a gate file; :class:`DomainGateError` saying what is wrong with it."""
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            raise DomainGateError(f"domain gate file not found: {path}")
        try:
            with safe_open(str(path), framework="np") as fh:
                meta = dict(fh.metadata() or {})
                arrays = {
                    k: np.asarray(fh.get_tensor(k), dtype=np.float64)
                    for k in ("mean", "scale", "precision")
                }
            gate = cls(
                mean=arrays["mean"],
                scale=arrays["scale"],
                precision=arrays["precision"],
                threshold=float(meta["threshold"]),
                films=int(meta["films"]),
                shrinkage=float(meta["shrinkage"]),
                quantile=float(meta["quantile"]),
                folds=int(meta["folds"]),
                features=meta["features"],
                method=meta["method"],
                median_distance=float(meta.get("median_distance", 0.0)),
                max_distance=float(meta.get("max_distance", 0.0)),
            )
        except (KeyError, ValueError, SafetensorError) as exc:
            if isinstance(exc, DomainGateError):
                raise
            raise DomainGateError(f"{path}: not a domain gate ({exc})") from exc
        if gate.features != FEATURES:
            raise DomainGateError(
                f"{path} was fitted on features {gate.features!r}; this code computes "
                f"{FEATURES!r}: refit it with `gazex calibrate-domain`"
            )
        return gate


def _safetensors_bytes(
    tensors: dict[str, npt.NDArray[np.float32]], metadata: dict[str, str]
) -> bytes:
    """The safetensors serialisation of float32 ``tensors``, byte for byte the same for the
    same content: keys sorted (the library writes its metadata in hash order, so refitting
    the same gate would change the checkpoint sha256). Read back with ``safe_open``."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def fit_gate(
    features: npt.ArrayLike, *, folds: int = FOLDS, quantile: float = QUANTILE
) -> DomainGate:
    """Fit a gate on the training films' features (n, dims), module docstring's rule."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (films, values), got shape {x.shape}")
    if x.shape[0] < max(MIN_FILMS, 2 * folds):
        raise ValueError(
            f"a domain gate needs at least {max(MIN_FILMS, 2 * folds)} training films, "
            f"got {x.shape[0]}"
        )
    if not np.isfinite(x).all():
        raise ValueError("training features hold NaN or infinite values")
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0.5, 1), got {quantile}")
    fold = np.arange(x.shape[0]) % folds
    held_out = np.empty(x.shape[0])
    for f in range(folds):
        held_out[fold == f] = _Gaussian.fit(x[fold != f]).distances(x[fold == f])
    gaussian = _Gaussian.fit(x)
    gate = DomainGate(
        mean=gaussian.mean,
        scale=gaussian.scale,
        precision=gaussian.precision,
        threshold=float(np.quantile(held_out, quantile)),
        films=int(x.shape[0]),
        shrinkage=gaussian.shrinkage,
        quantile=quantile,
        folds=folds,
        median_distance=float(np.median(held_out)),
        max_distance=float(held_out.max()),
    )
    logger.info(
        "domain gate: %d films, %d features, shrinkage %.4f, threshold %.2f "
        "(held-out median %.2f, max %.2f)",
        gate.films,
        gate.dims,
        gate.shrinkage,
        gate.threshold,
        gate.median_distance,
        gate.max_distance,
    )
    return gate


def load_gate(directory: Path, name: str) -> DomainGate | None:
    """The gate a checkpoint folder names (``gazex.json``'s ``domain_gate``), None when it
    names none."""
    if not name:
        return None
    if Path(name).name != name:
        raise DomainGateError(f"domain gate {name!r} must be a file name in the checkpoint")
    return DomainGate.load(directory / name)
