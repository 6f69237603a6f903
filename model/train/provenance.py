"""Which films a checkpoint was trained on, and whether evaluation films overlap them.

``gazex train`` records its films in the checkpoint's ``gazex.json`` (``training_data``,
:func:`training_record`), small enough to read:

- ``films`` and ``readings``: how many (a film read twice counts once as a film);
- ``synthetic_seeds``: for films of ``gazex data synth`` (film id ``synth-<seed>``), the
  seed ranges as text, e.g. ``"0-2599"``. A gap of fewer than :data:`SEED_GAP` seeds (the
  films of a held-out reader) is bridged: the ranges say where the training films were drawn
  from;
- ``film_ids``: for any other film, a Bloom filter of its id (``dicom_id``, else the sample
  id), about 2.4 bytes a film, false positives about 1 in 10,000.

``gazex eval`` counts the evaluation films that fall in the record (:func:`training_overlap`)
and warns, since metrics on training films say nothing about held-out ones.

Importing this module is cheap (the standard library only).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: First seed of ``gazex data synth``'s default: no shipped checkpoint trained on seeds from
#: here on (the shipped one trained on 0-2599; ``model/MODEL_CARD.md``).
HELD_OUT_SEED = 100_000
#: Gaps in a training run's seeds shorter than this are bridged in ``synthetic_seeds``.
SEED_GAP = 32
#: False-positive rate of the ``film_ids`` Bloom filter.
FILTER_ERROR = 1e-4

SYNTHETIC_FILM = re.compile(r"synth-(\d+)")


class Reading(Protocol):
    """What this module reads of a :class:`model.train.gazedata.sample.GazeSample` (a
    protocol, so that ``gazex data``, which imports :data:`HELD_OUT_SEED`, and this module
    do not import each other)."""

    @property
    def sample_id(self) -> str: ...

    @property
    def meta(self) -> Mapping[str, str]: ...


def film_id(sample: Reading) -> str:
    """The id of the film a sample reads (several readings of one film share it)."""
    return sample.meta.get("dicom_id") or sample.sample_id


def synthetic_seed(identifier: str) -> int | None:
    """The seed of a ``gazex data synth`` film id (``synth-000123`` -> 123), else None."""
    match = SYNTHETIC_FILM.fullmatch(identifier)
    return int(match.group(1)) if match else None


def seed_ranges(seeds: Iterable[int], gap: int = SEED_GAP) -> list[tuple[int, int]]:
    """Sorted inclusive (first, last) ranges of ``seeds``, gaps shorter than ``gap`` bridged."""
    ranges: list[tuple[int, int]] = []
    for seed in sorted(set(seeds)):
        if ranges and seed - ranges[-1][1] <= gap:
            ranges[-1] = (ranges[-1][0], seed)
        else:
            ranges.append((seed, seed))
    return ranges


def format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    """``[(0, 2599), (5000, 5000)]`` -> ``"0-2599,5000"``."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """The inverse of :func:`format_ranges`; ValueError naming a malformed part."""
    ranges = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        try:
            a, b = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"seed range {part!r} is not N or N-M") from None
        if b < a:
            raise ValueError(f"seed range {part!r} ends before it starts")
        ranges.append((a, b))
    return ranges


@dataclass(frozen=True)
class FilmIdFilter:
    """A Bloom filter of film ids: no false negatives, about ``FILTER_ERROR`` false positives."""

    bits: int
    hashes: int
    data: bytes

    @classmethod
    def of(cls, ids: Iterable[str], error: float = FILTER_ERROR) -> FilmIdFilter:
        unique = sorted(set(ids))
        n = max(1, len(unique))
        bits = max(64, math.ceil(-n * math.log(error) / math.log(2) ** 2 / 8) * 8)
        hashes = max(1, round(bits / n * math.log(2)))
        data = bytearray(bits // 8)
        for identifier in unique:
            for position in _positions(identifier, bits, hashes):
                data[position // 8] |= 1 << (position % 8)
        return cls(bits, hashes, bytes(data))

    def __contains__(self, identifier: object) -> bool:
        if not isinstance(identifier, str):
            return False
        return all(
            self.data[p // 8] >> (p % 8) & 1 for p in _positions(identifier, self.bits, self.hashes)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "hashes": self.hashes,
            "bloom": base64.b64encode(self.data).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FilmIdFilter:
        raw = base64.b64decode(str(data["bloom"]))
        bits, hashes = int(data["bits"]), int(data["hashes"])
        if bits != 8 * len(raw) or hashes < 1:
            raise ValueError("film_ids: bits and hashes do not match the filter")
        return cls(bits, hashes, raw)


def _positions(identifier: str, bits: int, hashes: int) -> list[int]:
    digest = hashlib.sha256(identifier.encode("utf-8")).digest()
    h1 = int.from_bytes(digest[:8], "big")
    h2 = int.from_bytes(digest[8:16], "big") | 1
    return [(h1 + i * h2) % bits for i in range(hashes)]


def training_record(samples: Sequence[Reading]) -> dict[str, Any]:
    """What ``gazex.json`` records of the films a checkpoint trained on (module docstring)."""
    films = {film_id(s) for s in samples}
    seeds = [seed for f in films if (seed := synthetic_seed(f)) is not None]
    others = [f for f in films if synthetic_seed(f) is None]
    record: dict[str, Any] = {"films": len(films), "readings": len(samples)}
    if seeds:
        record["synthetic_seeds"] = format_ranges(seed_ranges(seeds))
    if others:
        record["film_ids"] = FilmIdFilter.of(others).to_json()
    return record


@dataclass(frozen=True)
class Overlap:
    """Evaluation films among a checkpoint's training films."""

    #: Evaluation films in the checkpoint's training record.
    films: int
    #: Evaluation films (distinct film ids).
    evaluated: int
    #: Whether the checkpoint records its training films at all (older ones do not).
    recorded: bool
    #: One line for stderr when ``films`` > 0, else None.
    warning: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "films": self.films,
            "evaluated_films": self.evaluated,
            "recorded": self.recorded,
            "warning": self.warning,
        }


def training_overlap(record: Mapping[str, Any], samples: Sequence[Reading]) -> Overlap:
    """How many of the films of ``samples`` the checkpoint with ``record`` trained on."""
    films = sorted({film_id(s) for s in samples})
    if not record:
        return Overlap(0, len(films), False, None)
    ranges = parse_ranges(str(record.get("synthetic_seeds", "")))
    id_filter = FilmIdFilter.from_json(record["film_ids"]) if "film_ids" in record else None
    seen_seeds: list[int] = []
    seen_ids = 0
    for identifier in films:
        seed = synthetic_seed(identifier)
        if seed is not None and any(a <= seed <= b for a, b in ranges):
            seen_seeds.append(seed)
        elif seed is None and id_filter is not None and identifier in id_filter:
            seen_ids += 1
    count = len(seen_seeds) + seen_ids
    if not count:
        return Overlap(0, len(films), True, None)
    parts = []
    advice = []
    if seen_seeds:
        trained = format_ranges(ranges)
        parts.append(f"{len(seen_seeds)} in the synthetic seeds its films came from, {trained}")
        default = (HELD_OUT_SEED, HELD_OUT_SEED + len(films) - 1)
        held_out = not any(a <= default[1] and default[0] <= b for a, b in ranges)
        hint = f" (the default seed, {HELD_OUT_SEED}, does)" if held_out else ""
        advice.append(
            f"write the test films with `gazex data synth --seed S` so that S..S+N-1 "
            f"avoids {trained}{hint}"
        )
    if seen_ids:
        parts.append(f"{seen_ids} training films by film id")
        advice.append("evaluate on films that the training did not read")
    warning = (
        f"warning: {count} of {len(films)} evaluation films overlap the checkpoint's training "
        f"data ({'; '.join(parts)}), so these metrics are not held out; for held-out data, "
        f"{' and '.join(advice)}"
    )
    return Overlap(count, len(films), True, warning)
