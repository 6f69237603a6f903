"""Fixtures for the real-viewer tests: a synthetic film and its result objects made by the
project's own CLI, a private Orthanc holding them, OHIF's dist served beside it, and one
Chromium run per group of visits (each once per session).

The helper modules beside this file (ohifkit, result_study) are put on sys.path here, so the
test module imports them the same way under any pytest import mode.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_dicomweb import NodeDicomWeb
from ohifkit import (
    SETUP_HINT,
    OhifServer,
    Orthanc,
    ViewerReport,
    Visit,
    copy_artefacts,
    drive,
    missing_tools,
)
from result_study import ResultStudy, make_quirky_study, make_result_study, uids


@pytest.fixture(scope="session")
def viewer_tools() -> None:
    """Skip unless Orthanc, its DICOMweb plugin, Chromium, node and OHIF are installed."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}; {SETUP_HINT}")


@pytest.fixture(scope="session")
def result_study(tmp_path_factory: pytest.TempPathFactory) -> ResultStudy:
    """One synthetic film, its prediction and its five result objects."""
    return make_result_study(tmp_path_factory.mktemp("result-study"))


@pytest.fixture(scope="session")
def quirky_study(
    result_study: ResultStudy, tmp_path_factory: pytest.TempPathFactory
) -> ResultStudy:
    """The film as a CR without pixel spacing, MONOCHROME1, 15 bits, and its objects."""
    return make_quirky_study(result_study, tmp_path_factory.mktemp("quirky-study"))


@pytest.fixture(scope="session", params=["orthanc", "node"])
def ohif(
    request: pytest.FixtureRequest,
    viewer_tools: None,
    result_study: ResultStudy,
    quirky_study: ResultStudy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OhifServer]:
    """The three studies in a DICOMweb server, and OHIF reading them: Orthanc's DICOMweb
    plugin on OHIF's own origin; or the node's /dicom-web straight, across origins, with
    the viewer's bearer token (films received by C-STORE, results as an analysis's outputs).
    """
    if request.param == "orthanc":
        with Orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
            for path in [*result_study.files, quirky_study.film, *quirky_study.objects.values()]:
                orthanc.upload(path)
            with OhifServer(orthanc) as server:
                yield server
        return
    with (
        OhifServer() as server,
        NodeDicomWeb(tmp_path_factory.mktemp("node"), server.url) as node,
    ):
        for film in (result_study.film_alone, result_study.film, quirky_study.film):
            node.upload_film(film)
        node.add_results(result_study.objects)
        node.add_results(quirky_study.objects)
        server.point_at(node.root, "GazeX node", node.token)
        yield server


def _drive(
    server: OhifServer, visits: list[Visit], out_dir: Path, name: str
) -> dict[str, ViewerReport]:
    name = f"{name}-{server.backend}"
    try:
        reports = drive(server.url, visits, out_dir, server.query)
    finally:
        copy_artefacts(out_dir, name)
    return {report.name: report for report in reports}


@pytest.fixture(scope="session")
def film_report(
    ohif: OhifServer, result_study: ResultStudy, tmp_path_factory: pytest.TempPathFactory
) -> ViewerReport:
    """OHIF opened on the study that holds only the film."""
    StudyInstanceUID, _ = uids(result_study.film_alone)
    out_dir = tmp_path_factory.mktemp("ohif-film")
    return _drive(ohif, [Visit("film", StudyInstanceUID)], out_dir, "film")["film"]


@pytest.fixture(scope="session")
def result_reports(
    ohif: OhifServer, result_study: ResultStudy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ViewerReport]:
    """OHIF opened on the film's study once per result object, that object's series
    double-clicked in the study browser; keyed by kind."""
    visits = [Visit(kind, *uids(path)) for kind, path in result_study.objects.items()]
    out_dir = tmp_path_factory.mktemp("ohif-results")
    return _drive(ohif, visits, out_dir, "results")


@pytest.fixture(scope="session")
def quirky_reports(
    ohif: OhifServer, quirky_study: ResultStudy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ViewerReport]:
    """OHIF opened on the quirky CR's study once for its findings SR and once for its SEG
    (it has no attention map: none is written for a film without pixel spacing)."""
    kinds = ("findings_sr", "seg_binary")
    visits = [Visit(kind, *uids(quirky_study.objects[kind])) for kind in kinds]
    out_dir = tmp_path_factory.mktemp("ohif-quirky")
    return _drive(ohif, visits, out_dir, "quirky")
