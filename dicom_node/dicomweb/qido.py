"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Resources, under ``dicomweb.base_path``::

    GET /studies                                       studies
    GET /studies/{study}/series        GET /series     series
    GET /studies/{study}/series/{series}/instances     instances
    GET /studies/{study}/instances     GET /instances  instances

Query keys are attribute keywords or tags (``PatientName``, ``00100010``), matched as
PS3.4 C.2.2.2 says: single value, ``*`` / ``?`` wildcards (case-insensitive for PN), UID
lists (comma separated), date/time ranges (``20240101-20241231``, ``20240101-``,
``-20241231``), an empty value matches all (and returns the attribute). Code strings take
a list too (``ModalitiesInStudy=CR,DX``). ``includefield`` (repeatable, comma lists,
``all``: every attribute of the entity's first header, binary values left out), ``limit``,
``offset``; ``fuzzymatching`` is accepted and ignored. Series and instance answers carry
the study's patient and study attributes when the study is not in the path (and instance
answers the series' when the series is not).

UIDs (and Modality / SOP Class at the instance level) are matched in SQL; everything else
on the headers of the spool files (``catalog``): the database holds no patient data.

The answer is ``application/dicom+json``: 200 with an array, ``[]`` when nothing matches
(OHIF and dicomweb-client both take it), at most ``dicomweb.max_results`` entries, with a
``Warning`` header when more matched than were returned. An unknown key, a bad date range
or a bad ``limit`` is answered 400 with one JSON line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag, Tag
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicom_node.dicomweb.catalog import Catalog, Record, answer_errors, base_url
from dicom_node.dicomweb.context import DicomWebContext, calling_ae, request_actor

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/dicom+json"
RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"}
#: Binary values longer than this are left out of search answers (WADO metadata has them).
INLINE_BINARY_MAX = 1024

STUDY, SERIES, INSTANCE = "study", "series", "instance"

#: Returned for every match at each level (PS3.18 Table 10.6.3-3, -4, -5), when present.
STUDY_ATTRIBUTES = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
#: Study attributes a series or instance answer carries (study not in the path).
STUDY_HEADER_ATTRIBUTES = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDescription",
)
SERIES_ATTRIBUTES = (
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "BodyPartExamined",
)
INSTANCE_ATTRIBUTES = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)

#: Computed for each level (others come from the header even if listed in COMPUTED).
LEVEL_COMPUTED = {
    STUDY: {
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "RetrieveURL",
        "InstanceAvailability",
        "StudyInstanceUID",
    },
    SERIES: {
        "NumberOfSeriesRelatedInstances",
        "RetrieveURL",
        "InstanceAvailability",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
    },
    INSTANCE: {
        "RetrieveURL",
        "InstanceAvailability",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
    },
}

NUMERIC_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}
BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?(\+\d{4})?$")


class BadQuery(ValueError):
    """A query parameter that cannot be understood (answered 400)."""


# -- the query ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    tag: BaseTag
    keyword: str
    VR: str


def attribute(name: str) -> Attribute:
    """The attribute a query key or includefield value names (keyword or 8 hex digits)."""
    if "." in name:
        raise BadQuery(f"matching on nested attributes ({name}) is not supported")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = Tag(int(name, 16))
        keyword = keyword_for_tag(tag)
    else:
        number = tag_for_keyword(name)
        if number is None:
            raise BadQuery(f"unknown attribute {name!r}")
        tag, keyword = Tag(number), name
    try:
        VR = dictionary_VR(tag)
    except KeyError:
        raise BadQuery(f"unknown attribute {name!r}") from None
    if not keyword:
        raise BadQuery(f"unknown attribute {name!r}")
    return Attribute(tag, keyword, VR.split(" or ")[0])


@dataclass
class Query:
    level: str
    #: Path UIDs (exact) and query keys, in the order given.
    path: dict[str, str]
    keys: list[tuple[Attribute, str]] = field(default_factory=list)
    include: list[Attribute] = field(default_factory=list)
    include_all: bool = False
    limit: int = 0
    offset: int = 0


def parse_query(
    level: str, path: dict[str, str], params: Iterable[tuple[str, str]], max_results: int
) -> Query:
    query = Query(level, path)
    limit: int | None = None
    for name, value in params:
        if name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item.lower() == "all":
                    query.include_all = True
                elif item:
                    query.include.append(attribute(item))
        elif name in ("limit", "offset"):
            if not value.isdigit():
                raise BadQuery(f"{name} must be a non-negative integer")
            if name == "limit":
                limit = int(value)
            else:
                query.offset = int(value)
        elif name in RESERVED:
            continue
        else:
            key = attribute(name)
            _check_value(key, value)
            query.keys.append((key, value))
    query.limit = max_results if not limit else min(limit, max_results)
    return query


def _check_value(key: Attribute, value: str) -> None:
    if key.VR == "SQ":
        raise BadQuery(f"matching on the sequence {key.keyword} is not supported")
    if key.VR in BINARY_VRS and value:
        raise BadQuery(f"{key.keyword} cannot be matched")
    if key.VR in ("DA", "TM", "DT") and value:
        pattern = {"DA": _DA, "TM": _TM, "DT": _DT}[key.VR]
        low, dash, high = value.partition("-")
        bounds = [low, high] if dash else [low]
        if (dash and not (low or high)) or any(b and not pattern.match(b) for b in bounds):
            raise BadQuery(f"{key.keyword}: {key.VR} value or range not understood")
        if not dash and not low:
            raise BadQuery(f"{key.keyword}: {key.VR} value or range not understood")
    if key.VR in NUMERIC_VRS and value:
        try:
            float(value)
        except ValueError:
            raise BadQuery(f"{key.keyword} takes a number") from None


# -- matching ------------------------------------------------------------------------------


def _text_values(element: DataElement | None) -> list[str]:
    if element is None or element.value is None or element.value == "":
        return []
    value = element.value
    if element.VR == "SQ":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [str(value)]


def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    pattern = re.sub(r"\*+", "*", pattern)  # "a***b" is "a*b", without the backtracking
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _pad(value: str, template: str) -> str:
    value = value.replace(":", "")
    return value + template[len(value) :] if len(value) < len(template) else value


def _range(VR: str, value: str, low: str, high: str) -> bool:
    if VR == "DA":
        return (not low or value >= low) and (not high or value <= high)
    if VR == "TM":
        value = _pad(value, "000000.000000")
        return (not low or value >= _pad(low, "000000.000000")) and (
            not high or value <= _pad(high, "235959.999999")
        )
    value = value.split("+")[0].split("-")[0] if VR == "DT" else value
    value = _pad(value, "00000101000000.000000")
    lo = _pad(low.split("+")[0], "00000101000000.000000") if low else ""
    hi = _pad(high.split("+")[0], "99991231235959.999999") if high else ""
    return (not lo or value >= lo) and (not hi or value <= hi)


def matches(key: Attribute, wanted: str, values: list[str]) -> bool:
    """Whether an entity whose attribute holds ``values`` matches ``wanted`` (PS3.4 C.2.2.2)."""
    if wanted == "" or (wanted == "*" and key.VR not in ("DA", "TM", "DT", "UI")):
        return True  # universal matching
    if not values:
        return False
    VR = key.VR
    if VR == "UI":
        listed = {v.strip() for v in re.split(r"[,\\]", wanted) if v.strip()}
        return any(v in listed for v in values)
    if VR in ("DA", "TM", "DT"):
        low, dash, high = wanted.partition("-")
        if not dash:
            return any(_range(VR, v, low, low) if VR != "DA" else v == low for v in values)
        return any(_range(VR, v, low, high) for v in values)
    if VR in NUMERIC_VRS:
        try:
            return any(float(v) == float(wanted) for v in values)
        except ValueError:
            return False
    alternatives = re.split(r"[,\\]", wanted) if VR == "CS" else [wanted]
    ignore_case = VR == "PN"
    for alternative in alternatives:
        if "*" in alternative or "?" in alternative:
            pattern = _wildcard(alternative, ignore_case)
            if any(pattern.fullmatch(v) for v in values):
                return True
        elif ignore_case:
            if any(v.casefold() == alternative.casefold() for v in values):
                return True
        elif any(v.strip() == alternative.strip() for v in values):
            return True
    return False


# -- entities (a study, a series or an instance) and their answers -------------------------


class Entity:
    """One study, series or instance found, with the records it is made of."""

    def __init__(self, level: str, records: list[Record], catalog: Catalog, base: str) -> None:
        self.level = level
        self.records = records
        self.first = records[0]
        self._catalog = catalog
        self._base = base
        self._computed: dict[str, tuple[str, list[Any]]] | None = None

    def header(self) -> Dataset:
        return self._catalog.header(self.first)

    def computed(self) -> dict[str, tuple[str, list[Any]]]:
        """keyword -> (VR, values) of what the node knows without reading a header (the
        outputs of a SOP Class with no fixed Modality excepted)."""
        if self._computed is not None:
            return self._computed
        r = self.first
        url = f"{self._base}/studies/{r.StudyInstanceUID}"
        values: dict[str, tuple[str, list[Any]]] = {
            "StudyInstanceUID": ("UI", [r.StudyInstanceUID]),
            "InstanceAvailability": ("CS", ["ONLINE"]),
        }
        if self.level == STUDY:
            modalities = sorted({m for m in (self._catalog.modality(x) for x in self.records) if m})
            values |= {
                "ModalitiesInStudy": ("CS", modalities),
                "SOPClassesInStudy": ("UI", sorted({x.SOPClassUID for x in self.records})),
                "NumberOfStudyRelatedSeries": (
                    "IS",
                    [len({x.SeriesInstanceUID for x in self.records})],
                ),
                "NumberOfStudyRelatedInstances": ("IS", [len(self.records)]),
                "RetrieveURL": ("UR", [url]),
            }
            self._computed = values
            return values
        url += f"/series/{r.SeriesInstanceUID}"
        modality = self._catalog.modality(r)
        values |= {
            "SeriesInstanceUID": ("UI", [r.SeriesInstanceUID]),
            "Modality": ("CS", [modality] if modality else []),
        }
        if self.level == SERIES:
            values |= {
                "NumberOfSeriesRelatedInstances": ("IS", [len(self.records)]),
                "RetrieveURL": ("UR", [url]),
            }
        else:
            values |= {
                "SOPInstanceUID": ("UI", [r.SOPInstanceUID]),
                "SOPClassUID": ("UI", [r.SOPClassUID]),
                "RetrieveURL": ("UR", [f"{url}/instances/{r.SOPInstanceUID}"]),
            }
        self._computed = values
        return values

    def knows(self, key: Attribute) -> bool:
        return key.keyword in LEVEL_COMPUTED[self.level]

    def values(self, key: Attribute) -> list[str]:
        if self.knows(key):
            return [str(v) for v in self.computed().get(key.keyword, ("", []))[1]]
        return _text_values(self.header().get(key.tag))

    def to_json(self, query: Query) -> dict[str, Any]:
        wanted = _return_attributes(query)
        header = self.header()
        computed = self.computed()
        answer: dict[str, Any] = {}
        if query.include_all:
            for element in header:
                if element.tag.group == 0x0002 or element.VR in BINARY_VRS:
                    continue
                answer[f"{element.tag:08X}"] = _element_json(element)
        for key in wanted:
            if key.keyword in LEVEL_COMPUTED[self.level]:
                VR, values = computed.get(key.keyword, (key.VR, []))
                answer[f"{key.tag:08X}"] = {"vr": VR, "Value": values} if values else {"vr": VR}
                continue
            element = header.get(key.tag)
            if element is not None and element.VR not in BINARY_VRS:
                answer[f"{key.tag:08X}"] = _element_json(element)
            elif key.explicit:
                answer[f"{key.tag:08X}"] = {"vr": key.VR}
        answer.pop("00080005", None)  # the answer is UTF-8 JSON
        return dict(sorted(answer.items()))


@dataclass(frozen=True)
class _Wanted:
    tag: BaseTag
    keyword: str
    VR: str
    #: Asked for by name (a query key or includefield): returned even when empty.
    explicit: bool


def _return_attributes(query: Query) -> list[_Wanted]:
    standard: tuple[str, ...]
    if query.level == STUDY:
        standard = STUDY_ATTRIBUTES
    elif query.level == SERIES:
        standard = SERIES_ATTRIBUTES
        if "StudyInstanceUID" not in query.path:
            standard += STUDY_HEADER_ATTRIBUTES
    else:
        standard = INSTANCE_ATTRIBUTES
        if "SeriesInstanceUID" not in query.path:
            standard += SERIES_ATTRIBUTES
        if "StudyInstanceUID" not in query.path:
            standard += STUDY_HEADER_ATTRIBUTES
    seen: dict[BaseTag, _Wanted] = {}
    for keyword in standard:
        if keyword == "SpecificCharacterSet":
            continue
        a = attribute(keyword)
        seen.setdefault(a.tag, _Wanted(a.tag, a.keyword, a.VR, False))
    for a in (*(k for k, _ in query.keys), *query.include):
        seen[a.tag] = _Wanted(a.tag, a.keyword, a.VR, True)
    return list(seen.values())


def _element_json(element: DataElement) -> dict[str, Any]:
    answer: dict[str, Any] = element.to_json_dict(None, INLINE_BINARY_MAX)
    return answer


# -- searching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    entities: list[dict[str, Any]]
    #: Matches beyond the ones returned (the client pages with ``offset``).
    more: bool
    total_seen: int


def search(catalog: Catalog, query: Query, base: str) -> Found:
    """Run ``query`` (blocking: database and spool files)."""
    keys = {k.keyword: v for k, v in query.keys}
    uid_filters: dict[str, list[str] | None] = {}
    db_keys = {
        STUDY: ("StudyInstanceUID",),
        SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
        INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"),
    }[query.level]
    for keyword in db_keys:
        wanted: set[str] | None = None
        if keyword in query.path:
            wanted = {query.path[keyword]}
        if keys.get(keyword):
            listed = {v.strip() for v in re.split(r"[,\\]", keys[keyword]) if v.strip()}
            wanted = listed if wanted is None else wanted & listed
        uid_filters[keyword] = None if wanted is None else sorted(wanted)
    modality = keys.get("Modality")
    if query.level == INSTANCE and modality and not any(c in modality for c in "*?"):
        uid_filters["Modality"] = [m for m in re.split(r"[,\\]", modality) if m]
    records = catalog.records(**uid_filters)

    groups: dict[tuple[str, ...], list[Record]] = {}
    for record in records:
        key: tuple[str, ...] = (record.StudyInstanceUID,)
        if query.level != STUDY:
            key += (record.SeriesInstanceUID,)
        if query.level == INSTANCE:
            key += (record.SOPInstanceUID,)
        groups.setdefault(key, []).append(record)
    entities = [Entity(query.level, group, catalog, base) for group in groups.values()]

    # What the database answers first, then what needs the headers.
    known: list[tuple[Attribute, str]] = []
    headers: list[tuple[Attribute, str]] = []
    for key_, value in query.keys:
        if key_.keyword in LEVEL_COMPUTED[query.level]:
            known.append((key_, value))
        else:
            headers.append((key_, value))

    def passes(entity: Entity, keys_: list[tuple[Attribute, str]]) -> bool:
        return all(matches(k, v, entity.values(k)) for k, v in keys_)

    selected = [e for e in entities if passes(e, known)]
    selected = [e for e in selected if passes(e, headers)] if headers else selected
    page = selected[query.offset : query.offset + query.limit]
    more = len(selected) > query.offset + len(page)
    return Found([e.to_json(query) for e in page], more, len(selected))


def routes(ctx: DicomWebContext) -> list[BaseRoute]:
    catalog = ctx.catalog
    max_results = ctx.settings.dicomweb.max_results
    base_path = ctx.settings.dicomweb.base_path

    def endpoint(level: str) -> Callable[[Request], Any]:
        @answer_errors
        async def handler(request: Request) -> Response:
            path = {
                {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}[name]: value
                for name, value in request.path_params.items()
            }
            try:
                query = parse_query(level, path, request.query_params.multi_items(), max_results)
            except BadQuery as exc:
                raise HTTPException(400, str(exc)) from None
            found = await run_in_threadpool(search, catalog, query, base_url(request, base_path))
            if ctx.audit is not None:
                keys = ",".join(k.keyword for k, _ in query.keys) or "none"
                await run_in_threadpool(
                    ctx.audit.record,
                    "dicomweb",
                    "search",
                    ae_title=calling_ae(request),
                    actor=request_actor(request),
                    StudyInstanceUID=path.get("StudyInstanceUID"),
                    detail=f"QIDO-RS {level} search on {keys}: {len(found.entities)} returned",
                )
            headers = {}
            if found.more:
                host = request.url.hostname or "gazex"
                headers["Warning"] = (
                    f'299 {host}: "The number of results exceeded the maximum supported '
                    f'by the server. Additional results can be requested."'
                )
            body = json.dumps(found.entities, ensure_ascii=False).encode("utf-8")
            return Response(body, media_type=MEDIA_TYPE, headers=headers)

        return handler

    return [
        Route("/studies", endpoint(STUDY), methods=["GET"]),
        Route("/series", endpoint(SERIES), methods=["GET"]),
        Route("/instances", endpoint(INSTANCE), methods=["GET"]),
        Route("/studies/{study}/series", endpoint(SERIES), methods=["GET"]),
        Route("/studies/{study}/instances", endpoint(INSTANCE), methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", endpoint(INSTANCE), methods=["GET"]),
    ]
