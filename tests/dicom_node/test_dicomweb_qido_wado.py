"""QIDO-RS and WADO-RS on a running node: studies received by C-STORE (DCMTK storescu and
pynetdicom), and the analysis outputs of the latest revision, are found and retrieved
with dicomweb-client (the client OHIF's data sources resemble) and plain httpx."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from factories import radiograph, write
from nodekit import RunningNode, send_raw, storescu
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dicom_node.db.models import Analysis, AnalysisState, Output, Study
from dicom_node.dicomweb import qido, rendering, wado
from dicom_node.spool import Spool

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
DICOM = "application/dicom"
ICC_PROFILE = bytes(range(256)) * 8
IMPLICIT = str(ImplicitVRLittleEndian)


@dataclass
class Served:
    node: RunningNode
    url: str
    client: DICOMwebClient
    #: The files sent, by SOP Instance UID.
    sent: dict[str, Path]
    study_a: str
    series_a: str
    study_b: str

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def _serve(start_node: Callable[..., RunningNode], folder: Path) -> Served:
    """A node holding study A (two DX films of Müller^Zoë, 2026-11-23) and study B (one CR
    film of Smith^John, 2025-01-01), both received with DCMTK storescu."""
    node = start_node(dicomweb__allow_anonymous=True)
    study_a, series_a, study_b = generate_uid(), generate_uid(), generate_uid()
    films = [radiograph(study=study_a, series=series_a, seed=i) for i in range(2)]
    other = radiograph(study=study_b, modality="CR", seed=7)
    other.PatientName = "Smith^John"
    other.PatientID = "PID-B"
    other.StudyDate = "20250101"
    films.append(other)
    files = [write(ds, folder) for ds in films]
    done = storescu(node.port, files)
    assert done.returncode == 0, done.stderr
    url = f"http://127.0.0.1:{node.node.http.port}/dicom-web"  # type: ignore[union-attr]
    return Served(
        node,
        url,
        DICOMwebClient(url=url),
        {ds.SOPInstanceUID: path for ds, path in zip(films, files, strict=True)},
        study_a,
        series_a,
        study_b,
    )


@pytest.fixture
def served(start_node: Callable[..., RunningNode], tmp_path: Path) -> Served:
    return _serve(start_node, tmp_path / "sent")


def _value(entity: dict[str, dict[str, object]], tag: str) -> object:
    values = entity[tag].get("Value")
    assert isinstance(values, list)
    return values[0]


def _parts(answer: httpx.Response) -> list[tuple[str, bytes]]:
    """The (Content-Type, body) of each part of a multipart/related answer."""
    assert answer.status_code == 200, answer.text
    boundary = answer.headers["content-type"].split("boundary=")[1].strip('"').encode()
    found = []
    for chunk in answer.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        content_type = head.decode().strip().partition(":")[2].strip()
        found.append((content_type, body[:-2]))
    return found


def _without_meta(ds: Dataset) -> Dataset:
    copy = Dataset(ds)
    copy.file_meta = FileMetaDataset()
    return copy


@pytest.mark.integration
def test_search_for_studies_by_patient_name_wildcard_and_date_range(served: Served) -> None:
    """PatientName wildcards match case-insensitively and StudyDate ranges (closed and
    open) select by the headers of the spool files; the required study attributes and the
    computed counts come back."""
    found = served.client.search_for_studies(search_filters={"PatientName": "müller*"})
    assert [_value(s, "0020000D") for s in found] == [served.study_a]
    study = found[0]
    assert _value(study, "00100010") == {"Alphabetic": "Müller^Zoë"}
    assert _value(study, "00100020") == "SECRET-PID-4711"
    assert _value(study, "00080020") == "20261123"
    assert _value(study, "00201206") == 1  # NumberOfStudyRelatedSeries
    assert _value(study, "00201208") == 2  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["DX"]  # ModalitiesInStudy
    # dicomweb-client sends a Host header without the port: the path is what it can check
    assert str(_value(study, "00081190")).endswith(f"/dicom-web/studies/{served.study_a}")

    in_2026 = served.client.search_for_studies(search_filters={"StudyDate": "20260101-20261231"})
    assert [_value(s, "0020000D") for s in in_2026] == [served.study_a]
    before = served.client.search_for_studies(search_filters={"StudyDate": "-20251231"})
    assert [_value(s, "0020000D") for s in before] == [served.study_b]
    by_modality = served.client.search_for_studies(search_filters={"ModalitiesInStudy": "CR"})
    assert [_value(s, "0020000D") for s in by_modality] == [served.study_b]
    assert served.client.search_for_studies(search_filters={"PatientName": "Nobody*"}) == []


@pytest.mark.integration
def test_search_limit_offset_includefield_and_warning(served: Served) -> None:
    """limit and offset page through the matches, a truncated page carries a Warning
    header, and includefield adds attributes by keyword or tag."""
    with served.http() as http:
        first = http.get("/studies", params={"limit": "1", "includefield": "00080090,Manufacturer"})
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("application/dicom+json")
        assert first.headers["warning"].startswith("299 ")
        second = http.get("/studies", params={"limit": "1", "offset": "1"})
        assert "warning" not in second.headers
        uids = {_value(first.json()[0], "0020000D"), _value(second.json()[0], "0020000D")}
        assert uids == {served.study_a, served.study_b}
        assert "00080090" in first.json()[0]  # ReferringPhysicianName, asked for
        retrieve_url = _value(first.json()[0], "00081190")
        assert retrieve_url == f"{served.url}/studies/{_value(first.json()[0], '0020000D')}"
        everything = http.get("/studies", params={"includefield": "all", "PatientID": "PID-B"})
        assert _value(everything.json()[0], "00080070") == "GazeX tests"  # Manufacturer


@pytest.mark.integration
def test_search_for_series_and_instances(served: Served) -> None:
    """Series and instances are found under a study, across all studies, and by UID lists."""
    series = served.client.search_for_series(served.study_a)
    assert len(series) == 1
    assert _value(series[0], "0020000E") == served.series_a
    assert _value(series[0], "00080060") == "DX"
    assert _value(series[0], "00201209") == 2  # NumberOfSeriesRelatedInstances

    all_cr = served.client.search_for_series(search_filters={"Modality": "CR"})
    assert [_value(s, "0020000D") for s in all_cr] == [served.study_b]
    assert _value(all_cr[0], "00100010") == {"Alphabetic": "Smith^John"}

    instances = served.client.search_for_instances(served.study_a, served.series_a)
    sops = [_value(i, "00080018") for i in instances]
    assert sorted(sops) == sorted(s for s in served.sent if s not in _study_b_sops(served))
    assert _value(instances[0], "00280010") == 64  # Rows
    listed = served.client.search_for_instances(
        search_filters={"SOPInstanceUID": ",".join([*sops[:1], "1.2.3.4"])}
    )
    assert [_value(i, "00080018") for i in listed] == sops[:1]
    assert len(served.client.search_for_instances(served.study_b)) == 1


def _study_b_sops(served: Served) -> set[str]:
    return {
        sop for sop, path in served.sent.items() if dcmread(path).StudyInstanceUID == served.study_b
    }


@pytest.mark.integration
def test_retrieve_instance_study_metadata_and_frames(served: Served) -> None:
    """An instance comes back with the data set it was sent with, a study with all its
    instances, metadata as DICOM JSON pointing at the frames, and frames as the stored
    pixel bytes."""
    sop = next(s for s in served.sent if s not in _study_b_sops(served))
    original = dcmread(served.sent[sop])
    retrieved = served.client.retrieve_instance(served.study_a, served.series_a, sop)
    assert _without_meta(retrieved) == _without_meta(original)

    study = served.client.retrieve_study(served.study_a)
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(
        s for s in served.sent if s not in _study_b_sops(served)
    )

    metadata = served.client.retrieve_instance_metadata(served.study_a, served.series_a, sop)
    assert _value(metadata, "00100010") == {"Alphabetic": "Müller^Zoë"}
    assert metadata["7FE00010"]["BulkDataURI"].endswith(f"/instances/{sop}/frames/1")
    series_metadata = served.client.retrieve_series_metadata(served.study_a, served.series_a)
    assert len(series_metadata) == 2

    frames = served.client.retrieve_instance_frames(
        served.study_a, served.series_a, sop, frame_numbers=[1]
    )
    assert frames == [original.PixelData]


@pytest.mark.integration
def test_transcoding_and_frames_of_compressed_instances(
    start_node: Callable[..., RunningNode], tmp_path: Path
) -> None:
    """An RLE-compressed instance goes as stored, or decompressed to Explicit VR Little
    Endian when asked; its frames are decoded; a syntax the node cannot produce is 406."""
    node = start_node(dicomweb__allow_anonymous=True)
    ds = radiograph(seed=3)
    ds.ICCProfile = ICC_PROFILE  # a binary value big enough to go as bulk data
    pixels = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    path = write(ds, tmp_path)
    assert send_raw(node.port, path) == 0
    url = f"http://127.0.0.1:{node.node.http.port}/dicom-web"  # type: ignore[union-attr]
    client = DICOMwebClient(url=url)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    as_stored = client.retrieve_instance(*uids)
    assert as_stored.file_meta.TransferSyntaxUID == RLELossless
    decoded = client.retrieve_instance(
        *uids, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(decoded.pixel_array, pixels)

    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.get(
            "/studies/{}/series/{}/instances/{}".format(*uids),
            headers={"Accept": f"multipart/related; type={DICOM}; transfer-syntax={IMPLICIT}"},
        )
    [(content_type, body)] = _parts(answer)
    assert content_type == f"{DICOM}; transfer-syntax={ImplicitVRLittleEndian}"
    implicit = dcmread(io.BytesIO(body))
    assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(implicit.pixel_array, pixels)

    frames = client.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frames == [pixels.astype("<u2").tobytes()]

    metadata = client.retrieve_instance_metadata(*uids)
    assert _value(metadata, "00083002") == RLELossless  # AvailableTransferSyntaxUID
    icc_uri = metadata["00282000"]["BulkDataURI"]
    assert icc_uri.endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/00282000")
    # dicomweb-client's Host header has no port: reach the same path on the right one
    assert client.retrieve_bulkdata(url + icc_uri.split("/dicom-web", 1)[1]) == [ICC_PROFILE]
    whole = "/studies/{}/series/{}/instances/{}/bulkdata/7FE00010".format(*uids)
    assert client.retrieve_bulkdata(url + whole) == [pixels.astype("<u2").tobytes()]

    with httpx.Client(base_url=url, timeout=30) as http:
        refused = http.get(
            "/studies/{}/series/{}/instances/{}".format(*uids),
            headers={
                "Accept": f'multipart/related; type="{DICOM}"; transfer-syntax={JPEG2000Lossless}'
            },
        )
        assert refused.status_code == 406
        assert set(refused.json()) == {"error"}


@pytest.mark.integration
def test_rendered_jpeg_png_monochrome1_and_thumbnails(
    start_node: Callable[..., RunningNode], tmp_path: Path
) -> None:
    """Rendered frames are JPEG by default and PNG when asked; a MONOCHROME1 film renders
    as the inverse of the same pixels in MONOCHROME2; thumbnails are small."""
    node = start_node(dicomweb__allow_anonymous=True)
    study, series = generate_uid(), generate_uid()
    mono2 = radiograph(study=study, series=series, seed=5, rows=64, columns=48)
    mono1 = radiograph(study=study, series=series, seed=5, rows=64, columns=48)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    multi = radiograph(study=study, series=series, seed=6, rows=8, columns=6)
    frames = np.arange(3 * 8 * 6, dtype=np.uint16).reshape(3, 8, 6) * 10
    multi.NumberOfFrames, multi.PixelData = 3, frames.tobytes()
    files = [write(mono2, tmp_path), write(mono1, tmp_path), write(multi, tmp_path)]
    assert storescu(node.port, files).returncode == 0
    url = f"http://127.0.0.1:{node.node.http.port}/dicom-web"  # type: ignore[union-attr]
    client = DICOMwebClient(url=url)

    jpeg = client.retrieve_instance_rendered(study, series, mono2.SOPInstanceUID)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (48, 64)

    def png(sop: str) -> np.ndarray:
        data = client.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
        return np.asarray(Image.open(io.BytesIO(data)))

    grey2, grey1 = png(mono2.SOPInstanceUID), png(mono1.SOPInstanceUID)
    assert grey2.std() > 10
    assert np.array_equal(grey1.astype(int), 255 - grey2.astype(int))

    with httpx.Client(base_url=url, timeout=30) as http:
        thumb = http.get(f"/studies/{study}/thumbnail", params={"viewport": "24,24"})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) == 24
        windowed = http.get(
            f"/studies/{study}/series/{series}/instances/{mono2.SOPInstanceUID}/rendered",
            params={"window": "2048,4096"},
            headers={"Accept": "image/png"},
        )
        assert windowed.headers["content-type"] == "image/png"

        base = f"/studies/{study}/series/{series}/instances/{multi.SOPInstanceUID}"
        ohif = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
        [(content_type, second)] = _parts(http.get(f"{base}/frames/2", headers=ohif))
        assert content_type.startswith("application/octet-stream")
        assert second == frames[1].astype("<u2").tobytes()
        third = http.get(f"{base}/frames/3/rendered", headers={"Accept": "image/png"})
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(third.content))),
            rendering.to_display(multi, frames[2]),
        )
        metadata = http.get(f"{base}/metadata").json()[0]
        assert metadata["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
        [(_, whole)] = _parts(http.get(f"{base}/bulkdata/7FE00010"))
        assert whole == frames.astype("<u2").tobytes()


def _sr(source: Dataset) -> Dataset:
    """A minimal Comprehensive 3D SR of ``source``'s study (as the workers write one)."""
    sr = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(sr, keyword, source.get(keyword))
    sr.SpecificCharacterSet = "ISO_IR 192"
    sr.SOPClassUID = COMPREHENSIVE_3D_SR
    sr.SOPInstanceUID = generate_uid()
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.SeriesNumber = 99
    sr.InstanceNumber = 1
    sr.ValueType = "CONTAINER"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return sr


def _seg(source: Dataset) -> tuple[Dataset, np.ndarray]:
    """A binary highdicom Segmentation of ``source`` and its mask."""
    mask = np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)
    mask[10:30, 5:20] = True
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="finding",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Nodule,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="tests", version="1", family=codes.cid7162.ArtificialIntelligence
                ),
            )
        ],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="GazeX tests",
        manufacturer_model_name="tests",
        software_versions="1",
        device_serial_number="1",
    )
    return seg, mask


def _add_analysis(
    node: RunningNode, revision: int, state: AnalysisState, outputs: dict[str, Dataset]
) -> None:
    """An analysis row with its outputs written into the spool, as the workers would."""
    spool = Spool(node.settings.spool_path)
    with node.sessions.begin() as session:
        StudyInstanceUID = next(iter(outputs.values())).StudyInstanceUID
        study = session.query(Study).filter_by(StudyInstanceUID=StudyInstanceUID).one()
        analysis = Analysis(study_id=study.id, revision=revision, state=state)
        session.add(analysis)
        session.flush()
        for kind, ds in outputs.items():
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            relative = spool.relative_path(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, kind="out"
            )
            spool.write(relative, buffer.getvalue())
            session.add(
                Output(
                    analysis_id=analysis.id,
                    kind=kind,
                    SOPInstanceUID=ds.SOPInstanceUID,
                    SOPClassUID=ds.SOPClassUID,
                    SeriesInstanceUID=ds.SeriesInstanceUID,
                    path=str(relative),
                )
            )


@pytest.mark.integration
def test_outputs_of_the_latest_analysis_are_listed_and_retrieved(served: Served) -> None:
    """The SR and SEG of the latest succeeded analysis are series of their study (counted
    in it), retrievable, with metadata and SEG frames (1-bit, packed); a superseded
    revision's SR is not listed; SR and SEG have no rendered image (406)."""
    source = dcmread(next(p for s, p in served.sent.items() if s not in _study_b_sops(served)))
    old = _sr(source)
    _add_analysis(served.node, 101, AnalysisState.SUPERSEDED, {"sr": old})
    sr = _sr(source)
    seg, mask = _seg(source)
    _add_analysis(served.node, 102, AnalysisState.SUCCEEDED, {"sr": sr, "seg": seg})

    study = served.client.search_for_studies(search_filters={"StudyInstanceUID": served.study_a})
    assert study[0]["00080061"]["Value"] == ["DX", "SEG", "SR"]
    assert _value(study[0], "00201208") == 4
    listed = {_value(s, "0020000E"): s for s in served.client.search_for_series(served.study_a)}
    assert _value(listed[sr.SeriesInstanceUID], "00080060") == "SR"
    assert _value(listed[seg.SeriesInstanceUID], "00080060") == "SEG"
    sops = [_value(i, "00080018") for i in served.client.search_for_instances(served.study_a)]
    assert sr.SOPInstanceUID in sops and old.SOPInstanceUID not in sops
    only_sr = served.client.search_for_instances(served.study_a, search_filters={"Modality": "SR"})
    assert [_value(i, "00080018") for i in only_sr] == [sr.SOPInstanceUID]

    retrieved = served.client.retrieve_instance(
        served.study_a, sr.SeriesInstanceUID, sr.SOPInstanceUID
    )
    assert _without_meta(retrieved) == _without_meta(sr)
    sr_metadata = served.client.retrieve_instance_metadata(
        served.study_a, sr.SeriesInstanceUID, sr.SOPInstanceUID
    )
    assert "7FE00010" not in sr_metadata and _value(sr_metadata, "00080060") == "SR"
    uids = (served.study_a, seg.SeriesInstanceUID, seg.SOPInstanceUID)
    seg_metadata = served.client.retrieve_instance_metadata(*uids)
    assert seg_metadata["7FE00010"]["BulkDataURI"].endswith("/frames/1")
    frames = served.client.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frames == [np.packbits(mask.ravel(), bitorder="little").tobytes()]

    with served.http() as http:
        for series, sop in ((sr.SeriesInstanceUID, sr.SOPInstanceUID), uids[1:]):
            base = f"/studies/{served.study_a}/series/{series}/instances/{sop}"
            refused = http.get(f"{base}/rendered")
            assert refused.status_code == 406, refused.text
            assert "no rendered image" in refused.json()["error"]
        gone = http.get(
            f"/studies/{served.study_a}/series/{old.SeriesInstanceUID}/instances/{old.SOPInstanceUID}"
        )
        assert gone.status_code == 404


@pytest.mark.integration
def test_errors_are_one_json_line(served: Served) -> None:
    """Unknown query keys, bad date ranges and bad paging are 400; unknown UIDs 404; media
    types the node cannot produce 406: each one JSON line, never a traceback."""
    study_path = f"/studies/{served.study_a}/series/{served.series_a}"
    sop = next(s for s in served.sent if s not in _study_b_sops(served))
    cases: list[tuple[str, dict[str, str], dict[str, str], int]] = [
        ("/studies", {"NoSuchKey": "1"}, {}, 400),
        ("/studies", {"StudyDate": "2024-01-01-2024-12-31"}, {}, 400),
        ("/studies", {"StudyDate": "2024"}, {}, 400),
        ("/studies", {"limit": "ten"}, {}, 400),
        ("/studies", {"includefield": "NotAnAttribute"}, {}, 400),
        ("/studies/1.2.3.4/metadata", {}, {}, 404),
        ("/studies/1.2.3.4", {}, {}, 404),
        (f"{study_path}/instances/1.2.3.4", {}, {}, 404),
        (f"{study_path}/instances/{sop}/frames/0", {}, {}, 400),
        (f"{study_path}/instances/{sop}/frames/2", {}, {}, 404),
        (f"{study_path}/instances/{sop}/rendered", {}, {"Accept": "image/gif"}, 406),
        (f"{study_path}/instances/{sop}/rendered", {"viewport": "0,x"}, {}, 400),
        (
            f"{study_path}/instances/{sop}/frames/1",
            {},
            {"Accept": 'multipart/related; type="image/jp2"'},
            406,
        ),
    ]
    with served.http() as http:
        for path, params, headers, status in cases:
            answer = http.get(path, params=params, headers=headers)
            assert answer.status_code == status, (path, params, answer.text)
            assert len(answer.text.splitlines()) == 1
            body = json.loads(answer.text)
            assert list(body) == ["error"] and "Traceback" not in body["error"]
            assert "Müller" not in answer.text and "SECRET-PID" not in answer.text


# -- the pure parts: matching, Accept, rendering ---------------------------------------------


def _key(name: str) -> qido.Attribute:
    return qido.attribute(name)


def test_matching_follows_ps3_4() -> None:
    """PN wildcards are case-insensitive, other strings are not; UID lists, code string
    lists, date and time ranges (open at either end) and universal matching hold."""
    name = _key("PatientName")
    assert qido.matches(name, "müller*", ["Müller^Zoë"])
    assert qido.matches(name, "M?ller^Zo?", ["Müller^Zoë"])
    assert not qido.matches(name, "Smith*", ["Müller^Zoë"])
    assert qido.matches(_key("AccessionNumber"), "ACC*", ["ACC0001"])
    assert not qido.matches(_key("AccessionNumber"), "acc*", ["ACC0001"])
    assert qido.matches(_key("StudyInstanceUID"), "1.2.3,1.2.4", ["1.2.4"])
    assert not qido.matches(_key("StudyInstanceUID"), "1.2.3", ["1.2.30"])
    assert qido.matches(_key("ModalitiesInStudy"), "CR,DX", ["SR", "DX"])
    date = _key("StudyDate")
    assert qido.matches(date, "20240101-20241231", ["20240615"])
    assert qido.matches(date, "20240101-", ["20991231"])
    assert qido.matches(date, "-20240101", ["20240101"])
    assert not qido.matches(date, "20240101-20241231", ["20250101"])
    assert qido.matches(_key("StudyTime"), "0900-1030", ["101500"])
    assert not qido.matches(_key("StudyTime"), "0900-1014", ["101500"])
    assert qido.matches(name, "", [])  # universal: matches and returns the attribute
    assert not qido.matches(_key("AccessionNumber"), "ACC0001", [])


def test_bad_queries_are_refused() -> None:
    """Unknown keys, malformed dates and sequence matching raise BadQuery (400)."""
    for params in (
        [("NoSuchKey", "1")],
        [("StudyDate", "2024-01-01")],
        [("StudyDate", "20240101-2024")],
        [("StudyTime", "25x")],
        [("limit", "-1")],
        [("ReferencedStudySequence", "1")],
        [("00081110.00081155", "1")],
    ):
        with pytest.raises(qido.BadQuery):
            qido.parse_query(qido.STUDY, {}, params, 100)
    query = qido.parse_query(
        qido.STUDY, {}, [("limit", "5000"), ("fuzzymatching", "true")], max_results=100
    )
    assert query.limit == 100


def test_accept_negotiation() -> None:
    """Accept lists give transfer syntaxes in preference order; * and none mean as stored."""
    ranges = wado.parse_accept(
        [
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1;'
            ' q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*'
        ]
    )
    assert wado.dicom_syntaxes(ranges) == [None, "1.2.840.10008.1.2.1"]
    assert wado.dicom_syntaxes([]) == [None]
    assert wado.dicom_syntaxes(wado.parse_accept(["image/jpeg"])) == []


def test_rendering_windows_and_inverts() -> None:
    """The header's window is applied (values below it black, above white), MONOCHROME1 is
    inverted, and sizes fit the viewport keeping the aspect ratio."""
    header = radiograph(rows=4, columns=2)
    del header.PixelData
    header.WindowCenter, header.WindowWidth = 1000, 200
    pixels = np.array([[0, 4000], [900, 1100], [1000, 1000], [850, 1200]], dtype=np.uint16)
    grey = rendering.to_display(header, pixels)
    assert grey[0, 0] == 0 and grey[0, 1] == 255 and 120 <= grey[2, 0] <= 135
    header.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(rendering.to_display(header, pixels), 255 - grey)
    png = rendering.render(
        header, pixels, rendering.RenderOptions(media_type=rendering.PNG, viewport=(10, 10))
    )
    assert Image.open(io.BytesIO(png)).size == (5, 10)
    header.SOPClassUID = COMPREHENSIVE_3D_SR
    with pytest.raises(rendering.NotRenderable):
        rendering.check_renderable(header)
