"""The ORU^R01: strict HL7 v2.5.1, and the independent ``hl7`` parser reads the same."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from typing import Any

import hl7
import hl7_factories as f
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from model.abcdef import Step
from model.result import DomainCheck
from sr_templates import codes
from sr_templates.content import intended_use_statement
from sr_templates.enum import ObjectKindValues
from sr_templates.uids import object_uids
from workers.hl7.messages import (
    MAX_VALUE_LENGTH,
    HL7BuildError,
    build_oru_r01,
    control_id,
    encode,
    escape,
    to_er7,
)

NOW = datetime.datetime(2025, 3, 14, 11, 0, 5, tzinfo=datetime.UTC)
DELIMITERS = "Pipes | carets ^ ampersands & tildes ~ backslashes \\ and \\H\\ fake escapes"


def _build(ds: object, result: object, **kwargs: object) -> str:
    message = build_oru_r01(result, ds, now=NOW, **f.PARTIES, **kwargs)  # type: ignore[arg-type]
    return to_er7(message)


@pytest.fixture(scope="module")
def many() -> tuple[object, object, str]:
    """Every label, a UTF-8 name with an ideographic group, delimiters everywhere."""
    ds = f.make_source(patient_name="Gómez^José=山田^太郎", charset="ISO_IR 192")
    result = f.make_result(
        ds,
        findings=f.every_finding(),
        sections={Step.BREATHING: DELIMITERS + "\nSecond line.\r\nThird line."},
        impression="Impression with | and ^.",
        skipped=(Step.EXTERNAL, Step.FOREIGN_MATERIAL),
    )
    return ds, result, _build(ds, result, revision=3)


def _obx(message: hl7.Message) -> list[hl7.Segment]:
    return list(message.segments("OBX"))


def _text(message: hl7.Message, obx: hl7.Segment) -> list[str]:
    """OBX-5 repetitions, unescaped."""
    return [message.unescape(str(rep)) for rep in obx[5]]


def test_hl7apy_strict_validation_passes_on_reparse(many: tuple[object, object, str]) -> None:
    """The encoded message re-parses and validates with hl7apy at STRICT level."""
    _, _, er7 = many
    parsed = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_12.to_er7() == "2.5.1"


def _segments(element: Any) -> Iterator[Any]:
    """hl7apy's segments in message order, out of their groups."""
    for child in element.children:
        if child.classname == "Segment":
            yield child
        else:
            yield from _segments(child)


def test_both_parsers_see_the_same_fields(many: tuple[object, object, str]) -> None:
    """hl7apy and the independent hl7 package split the message into the same segments and
    the same field texts."""
    _, _, er7 = many
    theirs = hl7.parse(er7)
    ours = list(_segments(parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT)))
    assert [s.name for s in ours] == [str(s[0]) for s in theirs]
    for segment, other in zip(ours, theirs, strict=True):
        fields: dict[int, list[str]] = {}
        for fld in segment.children:  # repetitions are separate children in hl7apy
            fields.setdefault(int(fld.name.split("_")[1]), []).append(fld.to_er7())
        start = 3 if segment.name == "MSH" else 1  # MSH-1/MSH-2 are kept apart by hl7apy
        for index in range(start, max(len(other), max(fields, default=0) + 1)):
            mine = "~".join(fields.get(index, []))
            assert mine == (str(other[index]) if index < len(other) else ""), (
                f"{segment.name}-{index}"
            )


def test_header_patient_and_order(many: tuple[object, object, str]) -> None:
    """MSH parties and charset, PID from the DICOM patient module, OBR-18 accession, P."""
    ds, result, er7 = many
    m = hl7.parse(er7)
    msh = m.segment("MSH")
    assert [str(msh[i]) for i in (3, 4, 5, 6)] == ["GAZEX", "NODE-1", "RIS", "St. Elsewhere"]
    assert str(msh[9]) == "ORU^R01^ORU_R01"
    assert str(msh[10]) == control_id(result, 3)  # type: ignore[arg-type]
    assert str(msh[7]) == "20250314110005+0000"
    assert str(msh[18]) == "UNICODE UTF-8"
    pid = m.segment("PID")
    assert m.unescape(str(pid[3][0][0])) == "PID|42"
    assert str(pid[3][0][3]) == "HOSP"
    assert (str(pid[5][0][0]), str(pid[5][0][1])) == ("Gómez", "José")
    assert str(pid[7]) == "19800229"
    assert str(pid[8]) == "F"
    obr = m.segment("OBR")
    assert str(obr[4]) == "399208008^Plain X-ray of chest^SCT"
    assert str(obr[7]) == "20250314101500"
    assert str(obr[18]) == ds.AccessionNumber  # type: ignore[attr-defined]
    assert str(obr[25]) == "P"
    assert str(m.segment("ORC")[1]) == "RE"
    assert "synthetic data" in m.unescape(str(m.segment("NTE")[3]))


def test_one_coded_obx_per_finding_with_probability(many: tuple[object, object, str]) -> None:
    """Each finding is one NM OBX: its code, probability in percent, A/N presence."""
    _, result, er7 = many
    m = hl7.parse(er7)
    numeric = [o for o in _obx(m) if str(o[2]) == "NM"]
    assert len(numeric) == len(result.findings)  # type: ignore[attr-defined]
    by_code = {str(o[3][0][0]): o for o in numeric}
    for finding in result.findings:  # type: ignore[attr-defined]
        obx = by_code[finding.code.value]
        assert str(obx[3][0][2]) == finding.code.scheme
        assert float(str(obx[5])) == pytest.approx(100 * finding.probability, abs=0.05)
        assert str(obx[6]) == "%^percent^UCUM"
        assert str(obx[8]) == ("A" if finding.present else "N")


def test_study_uid_sr_reference_sections_and_status(many: tuple[object, object, str]) -> None:
    """The Study Instance UID (HD), the findings SR reference (RP), one TX per ABCDEF
    section with its text intact, the impression, skipped steps, the intended use, and
    status P on every OBX with consecutive set ids."""
    _, result, er7 = many
    m = hl7.parse(er7)
    rows = _obx(m)
    assert [str(o[1]) for o in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert {str(o[11]) for o in rows} == {"P"}
    by_id = {}
    for o in rows:
        by_id.setdefault(str(o[3][0][0]), []).append(o)
    [study] = by_id["110180"]
    assert (str(study[2]), str(study[5][0][1]), str(study[5][0][2])) == (
        "HD",
        result.source.StudyInstanceUID,
        "ISO",  # type: ignore[attr-defined]
    )
    [sr] = by_id["SR"]
    expected_sr = object_uids(result, ObjectKindValues.FINDINGS_SR, 3).SOPInstanceUID  # type: ignore[arg-type]
    assert str(sr[2]) == "RP" and str(sr[5][0][0]) == expected_sr
    assert str(sr[5][0][3]) == "DICOM"
    for section in result.report.sections:  # type: ignore[attr-defined]
        [obx] = by_id[f"STEP-{section.step.value}"]
        assert str(obx[2]) == "TX"
        assert _text(m, obx) == section.text.splitlines()
    [impression] = by_id["121073"]
    assert _text(m, impression) == ["Impression with | and ^."]
    skipped = [str(o[5][0][0]) for o in by_id["NOTINSPECTED"]]
    assert skipped == ["STEP-E", "STEP-F"]
    [use] = by_id["INTENDEDUSE"]
    assert " ".join(_text(m, use)) == intended_use_statement(result.model)  # type: ignore[attr-defined]


def test_non_ascii_names_travel_as_utf8(many: tuple[object, object, str]) -> None:
    """The encoded bytes are UTF-8 and decode to the same name."""
    ds, result, _ = many
    data = encode(build_oru_r01(result, ds, now=NOW, **f.PARTIES))  # type: ignore[arg-type]
    assert "Gómez^José".encode() in data
    assert b"\r" in data and b"\n" not in data


def test_huge_report_is_wrapped_into_valid_repetitions() -> None:
    """A 170 kB section becomes OBX-5 repetitions that each fit hl7apy's limit, wrapped at
    spaces only, and reads back word for word."""
    text = " ".join(f"word{i} | ^ & ~ \\" for i in range(10_000))
    assert len(text) > 150_000
    ds = f.make_source()
    result = f.make_result(ds, sections={Step.CIRCULATION: text})
    er7 = _build(ds, result)
    m = hl7.parse(er7)
    [obx] = [o for o in _obx(m) if str(o[3][0][0]) == "STEP-C"]
    assert len(obx[5]) > 300
    assert max(len(str(rep)) for rep in obx[5]) <= MAX_VALUE_LENGTH
    assert " ".join(_text(m, obx)) == text
    parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()


def test_a_word_longer_than_a_line_is_split() -> None:
    """Only a word longer than a repetition is cut, at the limit."""
    ds = f.make_source()
    result = f.make_result(ds, sections={Step.AIRWAYS: "a " + "x" * 500 + " b"})
    m = hl7.parse(_build(ds, result))
    [obx] = [o for o in _obx(m) if str(o[3][0][0]) == "STEP-A"]
    assert _text(m, obx) == ["a", "x" * 199, "x" * 199, "x" * 102 + " b"]


def test_no_finding_and_minimal_patient() -> None:
    """No finding present gives only N flags; a patient without issuer, birth date or sex
    still builds a valid message (sex U)."""
    ds = f.make_source(issuer=None, sex="")
    del ds.PatientBirthDate
    result = f.make_result(ds, findings=tuple(f.finding(k, 0.01) for k in ("mass", "nodule")))
    m = hl7.parse(_build(ds, result))
    assert {str(o[8]) for o in _obx(m) if str(o[2]) == "NM"} == {"N"}
    pid = m.segment("PID")
    assert m.unescape(str(pid[3])) == "PID|42"
    assert str(pid[8]) == "U"


def test_escape_covers_every_delimiter() -> None:
    """escape() turns each default delimiter into its escape sequence, the escape
    character first, and control characters into spaces."""
    assert escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("\\F\\") == "\\E\\F\\E\\"
    assert escape("x\ry\nz\tw") == "x y z\tw"


def test_control_id_is_deterministic_and_overridable() -> None:
    """The default MSH-10 is derived from the result revision; the caller may set one."""
    ds = f.make_source()
    result = f.make_result(ds)
    assert control_id(result, 1) == control_id(result, 1) != control_id(result, 2)
    assert len(control_id(result, 1)) <= 20
    m = hl7.parse(_build(ds, result, message_control_id="MSG-1"))
    assert str(m.segment("MSH")[10]) == "MSG-1"


def test_source_of_another_study_is_refused() -> None:
    """A dataset from another study is an HL7BuildError (a ValueError)."""
    result = f.make_result(f.make_source())
    with pytest.raises(HL7BuildError):
        build_oru_r01(result, f.make_source(), **f.PARTIES)
    assert issubclass(HL7BuildError, ValueError)


@pytest.mark.parametrize("in_domain", [True, False])
def test_domain_verdict_travels_and_out_of_domain_makes_no_call(in_domain: bool) -> None:
    """The domain gate's verdict is a CWE OBX; out of domain its notice is the first NTE and
    a TX OBX, and no finding carries an abnormal flag (A/N): no call is made."""
    ds = f.make_source()
    result = dataclasses.replace(
        f.make_result(ds, findings=f.every_finding()),
        domain=DomainCheck(
            score=12.0 if in_domain else 90.0, threshold=40.0, in_domain=in_domain, method="m"
        ),
    )
    message = hl7.parse(_build(ds, result))
    [verdict] = [o for o in _obx(message) if str(o[3][0][0]) == codes.DOMAIN_CHECK.value]
    expected = codes.IN_DOMAIN if in_domain else codes.OUT_OF_DOMAIN
    assert str(verdict[5][0][0]) == expected.value
    notes = [message.unescape(str(n[3])) for n in message.segments("NTE")]
    numeric = [o for o in _obx(message) if str(o[2]) == "NM"]
    notices = [o for o in _obx(message) if str(o[3][0][0]) == codes.DOMAIN_NOTICE.value]
    if in_domain:
        assert notes == [intended_use_statement(result.model)]
        assert notices == []
        assert {str(o[8]) for o in numeric} == {"A", "N"}
    else:
        assert notes[0].startswith("OUT OF DOMAIN:")
        assert notes[1] == intended_use_statement(result.model)
        assert " ".join(_text(message, notices[0])) == result.domain_notice()
        assert {str(o[8]) for o in numeric} == {""}
