"""A real PACS: Orthanc runs deploy/orthanc/route-chest.lua, routes a stable chest study to
the node, and the node's SR, SEG and GSPS come back into the same Orthanc study."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import free_port, wait_port, write_orthanc_config
from pydicom import dcmread
from stackkit import chest_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(port: int, uri: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{uri}", timeout=10) as response:
        return json.load(response)


@pytest.fixture
def orthanc_and_node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Orthanc (HTTP port yielded) routing to a `gazex serve` that sends results back."""
    if shutil.which("Orthanc") is None:
        pytest.skip("needs Orthanc (Debian package orthanc; scripts/setup --dev installs it)")
    node_port, http_port, dicom_port = free_port(), free_port(), free_port()
    orthanc_config = write_orthanc_config(
        tmp_path, "gazex-e2e", node_port=node_port, http_port=http_port, dicom_port=dicom_port
    )
    config = tmp_path / "gazex.toml"
    config.write_text(
        f'home = "{tmp_path / "home"}"\n[node]\nbind = "127.0.0.1"\nport = {node_port}\n'
        "[http]\nenabled = false\n[completion]\nquiet_period = 0.5\n"
        + '[[peers]]\nname = "ORTHANC"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f'port = {dicom_port}\nroles = ["source", "destination"]\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEX_")}
    logs = (tmp_path / "orthanc.log").open("w"), (tmp_path / "node.log").open("w")
    orthanc = subprocess.Popen(
        ["Orthanc", str(orthanc_config)], stdout=logs[0], stderr=subprocess.STDOUT
    )
    node = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"],
        stdout=logs[1],
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_port(http_port)
        wait_port(node_port)
        yield http_port, tmp_path
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        orthanc.terminate()
        for process in (node, orthanc):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # A worker child can hang in Celery's warm shutdown when its pool process was
        # terminated with it (seen under CPU load, orphaned for good): end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        for log in logs:
            log.close()


def test_orthanc_routes_study_and_receives_results(
    orthanc_and_node: tuple[int, Path], tmp_path: Path
) -> None:
    """A chest DX uploaded to Orthanc is routed by the recipe to the node, and the node's
    findings SR, trajectory SR, SEG and GSPS appear in the same Orthanc study."""
    http_port, folder = orthanc_and_node
    [image] = chest_study(tmp_path / "study", lateral=False)
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/instances", data=image.read_bytes(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        study_id = json.load(response)["ParentStudy"]

    deadline = time.monotonic() + 180
    modalities: list[str] = []
    while time.monotonic() < deadline:
        series = _get(http_port, f"/studies/{study_id}/series")
        assert isinstance(series, list)
        modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
        if len(modalities) >= 6:
            break
        time.sleep(0.5)
    logs = "\n".join((folder / name).read_text(errors="replace")[-3000:] for name in ("node.log",))
    # OT: the attention map (a Parametric Map, whose Modality highdicom writes as OT)
    assert modalities == ["DX", "OT", "PR", "SEG", "SR", "SR"], logs
    study = _get(http_port, f"/studies/{study_id}")
    assert isinstance(study, dict)
    assert study["MainDicomTags"]["StudyInstanceUID"] == dcmread(image).StudyInstanceUID
