"""Fixtures for the result-object tests: each case's objects are built and written once per
session, and the validators run once over all written files.

The helper modules beside this file (sr_factories, sr_cases) get unique names and are put on
sys.path here, so the test modules import them the same way under any pytest import mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sr_cases import Case, all_paths, build_cases

from sr_templates.enum import ObjectKindValues


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """Every scenario, built and written once per session."""
    return build_cases(tmp_path_factory.mktemp("result-objects"))


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, errors="replace", check=False, timeout=120
    )


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (scripts/setup --dev installs dcmtk and dicom3tools)")
    return path


@pytest.fixture(scope="session")
def dciodvfy_reports(cases: dict[str, Case]) -> dict[Path, subprocess.CompletedProcess[str]]:
    """``dciodvfy -new`` of every written object, run in parallel once."""
    tool = _require("dciodvfy")
    paths = [path for _, _, path in all_paths(cases)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda p: _run([tool, "-new", str(p)]), paths))
    return dict(zip(paths, runs, strict=True))


@pytest.fixture(scope="session")
def dsrdump_reports(cases: dict[str, Case]) -> dict[Path, subprocess.CompletedProcess[str]]:
    """``dsrdump -v +Pt`` (strict by default) of every SR."""
    tool = _require("dsrdump")
    paths = [
        path
        for _, kind, path in all_paths(cases)
        if kind in (ObjectKindValues.FINDINGS_SR, ObjectKindValues.TRAJECTORY_SR)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda p: _run([tool, "-v", "+Pt", str(p)]), paths))
    return dict(zip(paths, runs, strict=True))


@pytest.fixture(scope="session")
def dcmpschk_reports(cases: dict[str, Case]) -> dict[Path, subprocess.CompletedProcess[str]]:
    tool = _require("dcmpschk")
    paths = [path for _, kind, path in all_paths(cases) if kind is ObjectKindValues.GSPS]
    return {p: _run([tool, str(p)]) for p in paths}


#: PixelMed's SR validator on JDK 17 stops on the JDK's XPath limits unless they are lifted.
PIXELMED = [
    "java",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-cp",
    "/usr/share/java/pixelmed.jar",
    "com.pixelmed.validate.DicomSRValidator",
]


@pytest.fixture(scope="session")
def pixelmed_reports(cases: dict[str, Case]) -> dict[Path, subprocess.CompletedProcess[str]]:
    """PixelMed's ``DicomSRValidator`` (template checks) of every SR but the huge-text case's
    (one JVM per file, seconds each; the huge text adds time, not structure)."""
    _require("java")
    if not Path(PIXELMED[5]).exists():
        pytest.fail("PixelMed is not installed (scripts/setup --dev installs libpixelmed-java)")
    paths = [
        path
        for name, kind, path in all_paths(cases)
        if kind in (ObjectKindValues.FINDINGS_SR, ObjectKindValues.TRAJECTORY_SR)
        and name != "huge_text"
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda p: _run([*PIXELMED, str(p)]), paths))
    return dict(zip(paths, runs, strict=True))
