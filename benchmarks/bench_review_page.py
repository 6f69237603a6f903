"""The review page's speed in a real Chromium (issue 19 item 7; not a test): from opening a
study to its film displayed at full resolution, and to the trajectory ready to play.

One 2048 x 2500 16-bit DX (a synthetic film, ``gazex data synth``, scaled up, 12 bits
stored), its prediction (``gazex predict``) and result objects (``gazex render``) in a node
on loopback (SQLite, the result JSON in the spool as a worker leaves it), and a radiologist.
``bench_review_page.mjs`` opens ``/review/studies/{key}`` ``--rounds`` times, each time in a
fresh browser profile from the tab that logged in and showed the worklist (the same app,
as a radiologist clicks through), and once more in a new tab of that profile (the scripts
cached, but a new renderer process, WebGL context and decoder workers), and reads the
page's Performance API marks ``gazex:film-displayed`` (after cornerstone3D drew the frame)
and ``gazex:trajectory-ready`` (the overlay drawn), in ms from the navigation start. The
baseline, measured in the same page: the same WADO-RS frame fetched alone.

Chromium renders WebGL with SwiftShader here (no GPU), as in the tests.

    .venv/bin/python benchmarks/bench_review_page.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "viewers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# The repository before tests/, whose dicom_node folder would shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from node_dicomweb import NodeDicomWeb
from ohifkit import chromium_path
from result_study import kind_of
from test_review_page import NAME, PASSWORD, _analysed, _worker_kinds

from dicom_node.review.accounts import Accounts
from dicom_node.review.worklist import study_key

DRIVER = Path(__file__).with_name("bench_review_page.mjs")
ROWS, COLUMNS = 2500, 2048


def _gazex(*args: str | Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *map(str, args)], check=True, capture_output=True
    )


def make_film(folder: Path) -> tuple[Path, dict[str, Any], dict[str, Path]]:
    """A 2048 x 2500 DX, its result JSON and its result objects."""
    _gazex(
        "data",
        "synth",
        "--out",
        folder / "synth",
        "--n",
        "1",
        "--seed",
        "100003",
        "--image-format",
        "dcm",
    )
    (small,) = (folder / "synth" / "images").glob("*.dcm")
    ds = dcmread(small)
    ds.pop("VOILUTFunction", None)
    scale = (COLUMNS / ds.Columns, ROWS / ds.Rows)
    pixels = ds.pixel_array.astype(np.float32)
    big = np.asarray(Image.fromarray(pixels).resize((COLUMNS, ROWS), Image.Resampling.BILINEAR))
    ds.PixelData = np.clip(big, 0, 2**ds.BitsStored - 1).astype(np.uint16).tobytes()
    ds.Rows, ds.Columns = ROWS, COLUMNS
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds:
            ds[keyword].value = [
                float(ds[keyword].value[0]) / scale[1],
                float(ds[keyword].value[1]) / scale[0],
            ]
    film = folder / "film.dcm"
    ds.save_as(film)
    result_json = folder / "result.json"
    _gazex("predict", film, "--json", result_json)
    _gazex("render", "--result", result_json, "--source", film, "--out", folder / "objects")
    objects = {kind_of(p): p for p in sorted((folder / "objects").glob("*.dcm"))}
    return film, json.loads(result_json.read_text(encoding="utf-8")), objects


def _row(name: str, values: list[float], baseline: list[float]) -> str:
    median = statistics.median(values)
    p95 = statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else median
    ratio = median / statistics.median(baseline)
    return f"| {name} | {len(values)} | {median:.0f} | {p95:.0f} | {ratio:.1f}x |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if chromium_path() is None or shutil.which("node") is None:
        raise SystemExit("needs chromium and node: scripts/setup --dev installs them")
    with tempfile.TemporaryDirectory(prefix="gazex-bench-review-") as tmp:
        folder = Path(tmp)
        film, result, objects = make_film(folder / "film")
        node = NodeDicomWeb(folder / "node", "http://127.0.0.1")
        Accounts(node.node.sessions).add(NAME, "radiologist", PASSWORD)
        with node:
            node.upload_film(film)
            node.add_results(_worker_kinds(objects))
            _analysed(node, result)
            job = {
                "baseUrl": node.root.removesuffix("/dicom-web"),
                "name": NAME,
                "password": PASSWORD,
                "key": study_key(str(result["source"]["StudyInstanceUID"])),
                "rounds": args.rounds,
                "chromium": chromium_path(),
            }
            job_file = folder / "job.json"
            job_file.write_text(json.dumps(job), encoding="utf-8")
            done = subprocess.run(
                ["node", str(DRIVER), str(job_file)], capture_output=True, text=True, check=True
            )
    samples = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"review page, {COLUMNS} x {ROWS} DX, {args.rounds} rounds (ms from navigation start)")
    print()
    print("| measure | n | median ms | p95 ms | vs the frame fetched alone |")
    print("|---|---|---|---|---|")
    for profile, label in (("from_worklist", "from the worklist"), ("new_tab", "new tab")):
        rows = samples[profile]
        frame = [s["frame"] for s in rows]
        print(_row(f"{label}: film displayed", [s["film"] for s in rows], frame))
        print(_row(f"{label}: trajectory ready", [s["trajectory"] for s in rows], frame))
        print(_row(f"{label}: the frame fetched alone (baseline)", frame, frame))


if __name__ == "__main__":
    main()
