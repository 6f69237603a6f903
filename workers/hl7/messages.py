"""HL7 v2.5.1 ORU^R01 for a model result: the preliminary AI result sent to the RIS.

A pure builder (no I/O, no Celery, no torch): ``build_oru_r01`` returns an hl7apy message
that passed hl7apy's strict validation, ``encode`` turns it into the bytes to frame with
MLLP (``workers.hl7.mllp``).

Layout (one order, every OBX with result status P):

- MSH  sending/receiving application and facility from the caller's settings;
  MSH-18 ``UNICODE UTF-8`` (the message is encoded as UTF-8).
- PID  from the DICOM patient module: PID-3 PatientID (with IssuerOfPatientID),
  PID-5 the alphabetic PatientName group, PID-7 birth date, PID-8 sex.
- ORC  RE, placer/filler order numbers; OBR  universal service (399208008, SCT,
  "Plain X-ray of chest"), OBR-7 study date/time, OBR-18 accession number, OBR-25 P.
- NTE  out of domain, the domain gate's notice first; then the intended-use statement
  (trained on synthetic data, not for clinical use).
- OBX HD   (110180, DCM, "Study Instance UID"), ``^<uid>^ISO`` (DICOM_OUTPUTS.md).
- OBX RP   the findings SR: ``<SOP Instance UID>^<application>^Application^DICOM``.
- OBX CWE  the domain gate's verdict (within / outside the training domain), when checked;
  out of domain, an OBX TX with its notice.
- OBX NM   one per finding: OBX-3 the finding code, OBX-5 its probability in %,
  OBX-8 ``A`` when the model calls it present, ``AA`` (critical abnormal, HL7 table 0078)
  when it is also one of the caller's ``critical_codes``, ``N`` when absent (empty out of
  domain: no call is made on a film unlike the training films).

A radiologist's signature (``workers.review``) sends the same message with result status
F (OBR-25, every OBX-11), C for a later signature (a correction), the verified SR in the
RP OBX, and the reviewer's verdicts as the present/absent calls (``reviewed``: a rejected
finding is absent, an added one present; the probability stays the model's).
- OBX TX   one per ABCDEF section and one for the impression; lines are OBX-5 repetitions.
- OBX CWE  one per ABCDEF step the trajectory skipped ("not inspected").
- OBX TX   the intended-use statement.

Text is escaped here (``escape``) before hl7apy sees it, because hl7apy leaves ``^`` and
``&`` unescaped in OBX-5 and keeps sequences such as ``\\H\\`` that it takes for escapes.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Iterator

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message, Segment
from hl7apy.exceptions import HL7apyException
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from dicom_node.errors import HL7BuildError
from model.findings import Code
from model.result import Finding, InferenceResult
from sr_templates import codes
from sr_templates.content import intended_use_statement
from sr_templates.enum import ObjectKindValues
from sr_templates.uids import object_uids

VERSION = "2.5.1"
CHARSET = "UNICODE UTF-8"
ENCODING = "utf-8"
#: hl7apy (strict) checks each OBX-5 repetition of varies type as ST: at most 199 characters.
MAX_VALUE_LENGTH = 199

STUDY_INSTANCE_UID = ("110180", "Study Instance UID", "DCM")
FINDINGS_SR = ("SR", "AI findings structured report", codes.GAZEX_SCHEME)
IMPRESSION = ("121073", "Impression", "DCM")
PERCENT = ("%", "percent", "UCUM")

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_SEX = {"M": "M", "F": "F", "O": "O"}


def escape(text: str) -> str:
    """HL7 escaping of the default delimiters (``\\`` first, so nothing is escaped twice).
    Control characters other than tab become spaces: a CR would end the segment."""
    for char, sequence in _ESCAPES:
        text = text.replace(char, sequence)
    return re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", text)


def _coded(value: str, meaning: str, scheme: str) -> str:
    """A CE/CWE value ``code^text^coding system``."""
    return "^".join(escape(part) for part in (value, meaning, scheme))


def _text_lines(text: str, width: int = MAX_VALUE_LENGTH) -> list[str]:
    """Escaped OBX-5 repetitions of ``text``: one per line, long lines wrapped at spaces
    (hard-split only inside a word longer than a line), each at most ``width`` escaped
    characters, never cutting an escape sequence."""
    lines: list[str] = []
    for raw in text.splitlines() or [""]:
        current = ""
        for word in raw.split(" "):
            piece = escape(word)
            candidate = f"{current} {piece}" if current else piece
            if len(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            for char in word:  # a word longer than a line: split it by characters
                escaped = escape(char)
                if len(current) + len(escaped) > width:
                    lines.append(current)
                    current = ""
                current += escaped
        lines.append(current)
    return [line for line in lines if line] or [""]


def _timestamp(moment: datetime.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.strftime("%Y%m%d%H%M%S%z")


def _dicom_datetime(ds: Dataset) -> str:
    date = str(ds.get("StudyDate", "") or "")
    time = str(ds.get("StudyTime", "") or "").split(".")[0]
    return f"{date}{time}" if date else ""


def _person_name(value: object) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) -> HL7 XPN (family^given^middle^suffix^
    prefix), from the alphabetic group, else the first group that has a value."""
    name = value if isinstance(value, PersonName) else PersonName(str(value or ""))
    groups = [name.alphabetic, name.ideographic, name.phonetic]
    group = next((g for g in groups if g), "")
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    xpn = [escape(p) for p in (family, given, middle, suffix, prefix)]
    return "^".join(xpn).rstrip("^")


def control_id(result: InferenceResult, revision: int) -> str:
    """A deterministic MSH-10 (at most 20 characters) for this result revision, so a
    resend of the same revision carries the same control id."""
    sr_uid = object_uids(result, ObjectKindValues.FINDINGS_SR, revision).SOPInstanceUID
    return "GX" + hashlib.sha256(str(sr_uid).encode()).hexdigest()[:18].upper()


def review_control_id(SOPInstanceUID: str) -> str:
    """The MSH-10 of a signed review's ORU^R01: derived from its verified SR revision."""
    return "GR" + hashlib.sha256(SOPInstanceUID.encode()).hexdigest()[:18].upper()


def build_oru_r01(
    result: InferenceResult,
    source: Dataset,
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    revision: int = 1,
    message_control_id: str | None = None,
    processing_id: str = "P",
    now: datetime.datetime | None = None,
    critical_codes: frozenset[str] = frozenset(),
    result_status: str = "P",
    findings_sr_uid: str | None = None,
    reviewed: dict[str, bool] | None = None,
) -> Message:
    """The ORU^R01 for ``result`` computed on ``source`` (the analysed image's dataset).

    ``critical_codes`` ("SCHEME:VALUE") flag a present finding ``AA``; ``result_status``
    is P (the AI result), F (signed) or C (a correction); ``findings_sr_uid`` replaces the
    AI findings SR in the RP OBX and ``reviewed`` ("SCHEME:VALUE" -> present) the model's
    calls, for a signed review.

    Raises ``HL7BuildError`` (a ``ValueError``) when the source does not match the result
    or when the message fails hl7apy's strict validation.
    """
    if result_status not in ("P", "F", "C"):
        raise HL7BuildError(f"result status {result_status!r} is not P, F or C")
    if str(source.get("StudyInstanceUID", "")) != result.source.StudyInstanceUID:
        raise HL7BuildError("source dataset is not from the result's study")
    moment = now or datetime.datetime.now(datetime.UTC)
    try:
        message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
        _msh(
            message.msh,
            sending=(sending_application, sending_facility),
            receiving=(receiving_application, receiving_facility),
            timestamp=_timestamp(moment),
            control=message_control_id or control_id(result, revision),
            processing_id=processing_id,
        )
        patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
        _pid(patient_result.add_group("ORU_R01_PATIENT").add_segment("PID"), source)
        order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
        _orc_obr(order, source, _timestamp(moment), result_status)
        notes = [result.domain_notice(), intended_use_statement(result.model)]
        for set_id, note in enumerate((n for n in notes if n), start=1):
            nte = order.add_segment("NTE")
            nte.nte_1 = str(set_id)
            nte.nte_3 = escape(note)
        for set_id, (value_type, identifier, values, flag) in enumerate(
            _observations(
                result,
                sending_application,
                revision,
                critical_codes,
                findings_sr_uid,
                reviewed,
            ),
            start=1,
        ):
            obx = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
            obx.obx_1 = str(set_id)
            obx.obx_2 = value_type
            obx.obx_3 = identifier
            obx.obx_5 = values[0]
            for value in values[1:]:
                obx.add_field("OBX_5").value = value
            if value_type == "NM":
                obx.obx_6 = _coded(*PERCENT)
            if flag:
                obx.obx_8 = flag
            obx.obx_11 = result_status
        message.validate()
    except HL7apyException as exc:
        raise HL7BuildError(f"ORU^R01 not valid HL7 {VERSION}: {exc}") from exc
    return message


def _msh(
    msh: Segment,
    *,
    sending: tuple[str, str],
    receiving: tuple[str, str],
    timestamp: str,
    control: str,
    processing_id: str,
) -> None:
    msh.msh_3 = escape(sending[0])
    msh.msh_4 = escape(sending[1])
    msh.msh_5 = escape(receiving[0])
    msh.msh_6 = escape(receiving[1])
    msh.msh_7 = timestamp
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = escape(control)
    msh.msh_11 = processing_id
    msh.msh_12 = VERSION
    msh.msh_18 = CHARSET


def _pid(pid: Segment, ds: Dataset) -> None:
    pid.pid_1 = "1"
    patient_id = escape(str(ds.get("PatientID", "") or ""))
    issuer = escape(str(ds.get("IssuerOfPatientID", "") or ""))
    pid.pid_3 = f"{patient_id}^^^{issuer}" if issuer else patient_id
    name = _person_name(ds.get("PatientName"))
    if name:
        pid.pid_5 = name
    birth_date = str(ds.get("PatientBirthDate", "") or "")
    if birth_date:
        pid.pid_7 = birth_date
    pid.pid_8 = _SEX.get(str(ds.get("PatientSex", "") or "").upper(), "U")


def _orc_obr(order: Group, ds: Dataset, timestamp: str, result_status: str = "P") -> None:
    accession = escape(str(ds.get("AccessionNumber", "") or ""))
    placer = ""
    for request in ds.get("RequestAttributesSequence", []) or []:
        placer = escape(str(request.get("PlacerOrderNumberImagingServiceRequest", "") or ""))
        if placer:
            break
    filler = escape(str(ds.get("FillerOrderNumberImagingServiceRequest", "") or "")) or accession
    orc = order.add_segment("ORC")
    orc.orc_1 = "RE"
    if placer:
        orc.orc_2 = placer
    if filler:
        orc.orc_3 = filler
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    if filler:
        obr.obr_3 = filler
    obr.obr_4 = _coded(
        codes.PLAIN_CHEST_XRAY.value,
        codes.PLAIN_CHEST_XRAY.meaning,
        codes.PLAIN_CHEST_XRAY.scheme_designator,
    )
    observed = _dicom_datetime(ds)
    if observed:
        obr.obr_7 = observed
    if accession:
        obr.obr_18 = accession
    obr.obr_22 = timestamp
    obr.obr_24 = "RAD"
    obr.obr_25 = result_status


Observation = tuple[str, str, list[str], str]


def _observations(
    result: InferenceResult,
    application: str,
    revision: int,
    critical_codes: frozenset[str] = frozenset(),
    findings_sr_uid: str | None = None,
    reviewed: dict[str, bool] | None = None,
) -> Iterator[Observation]:
    """(value type, OBX-3, OBX-5 repetitions, OBX-8) in message order."""
    study = escape(result.source.StudyInstanceUID)
    yield ("HD", _coded(*STUDY_INSTANCE_UID), [f"^{study}^ISO"], "")
    sr_uid = (
        findings_sr_uid
        or object_uids(result, ObjectKindValues.FINDINGS_SR, revision).SOPInstanceUID
    )
    yield (
        "RP",
        _coded(*FINDINGS_SR),
        [f"{escape(str(sr_uid))}^{escape(application)}^Application^DICOM"],
        "",
    )
    yield from _domain_observations(result)

    def present(finding: Finding) -> bool:
        if reviewed is None:
            return finding.present
        return reviewed.get(finding_key(finding.code), finding.present)

    for finding in sorted(result.findings, key=lambda f: (not present(f), -f.probability)):
        code = finding.code
        # Out of domain the model's probability is reported, but no normal/abnormal call.
        flag = (
            ""
            if result.out_of_domain
            else ("AA" if finding_key(code) in critical_codes else "A")
            if present(finding)
            else "N"
        )
        yield (
            "NM",
            _coded(code.value, code.meaning, code.scheme),
            [f"{100.0 * finding.probability:.1f}"],
            flag,
        )
    for section in result.report.sections:
        section_code = codes.STEP_CODES[section.step]
        if section.text.strip():
            yield (
                "TX",
                _coded(section_code.value, section_code.meaning, section_code.scheme_designator),
                _text_lines(section.text),
                "",
            )
    if result.report.impression.strip():
        yield ("TX", _coded(*IMPRESSION), _text_lines(result.report.impression), "")
    not_inspected = codes.STEP_NOT_INSPECTED
    for step in result.skipped_steps:
        value = codes.STEP_CODES[step]
        yield (
            "CWE",
            _coded(not_inspected.value, not_inspected.meaning, not_inspected.scheme_designator),
            [_coded(value.value, value.meaning, value.scheme_designator)],
            "",
        )
    use = codes.INTENDED_USE
    yield (
        "TX",
        _coded(use.value, use.meaning, use.scheme_designator),
        _text_lines(intended_use_statement(result.model)),
        "",
    )


def _domain_observations(result: InferenceResult) -> Iterator[Observation]:
    """The domain gate's verdict as a CWE OBX and, out of domain, its notice as TX."""
    if result.domain is None:
        return
    check = codes.DOMAIN_CHECK
    verdict = codes.IN_DOMAIN if result.domain.in_domain else codes.OUT_OF_DOMAIN
    yield (
        "CWE",
        _coded(check.value, check.meaning, check.scheme_designator),
        [_coded(verdict.value, verdict.meaning, verdict.scheme_designator)],
        "",
    )
    notice = result.domain_notice()
    if notice:
        code = codes.DOMAIN_NOTICE
        yield (
            "TX",
            _coded(code.value, code.meaning, code.scheme_designator),
            _text_lines(notice),
            "",
        )


def finding_key(code: Code) -> str:
    """ "SCHEME:VALUE" of a finding code, as ``ReviewSettings.critical_codes`` names it."""
    return f"{'SCT' if code.scheme == 'SRT' else code.scheme}:{code.value}"


def to_er7(message: Message) -> str:
    """The message text with CR segment separators."""
    text: str = message.to_er7()
    return text


def encode(message: Message) -> bytes:
    """The message as bytes in the MSH-18 character set (UTF-8), ready for MLLP framing."""
    return to_er7(message).encode(ENCODING)
