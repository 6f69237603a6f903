"""Inference latency of the shipped checkpoint on this machine (not a test).

Per PA image, DICOM decode included: a synthetic 2500 x 2048 12-bit PA film (from
``model.train.gazedata.synth``) is serialised once, then each timed run parses it with pydicom,
decodes the pixels (Modality LUT, VOI window, MONOCHROME handling), runs the model (scanpath,
findings, boxes, report) and builds the ``InferenceResult``. Batched throughput sends
several films in one ``predict`` call. The baseline, measured in the same run, is the
DICOM parse + decode + resize alone (what any model would pay before its first layer).

    .venv/bin/python benchmarks/bench_inference.py [--runs 20] [--batch 4] [--ckpt DIR]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)


def film_bytes(rows: int, columns: int, seed: int, jpeg2000: bool) -> bytes:
    """A synthetic PA film as DICOM bytes (12 bit stored, window in the header)."""
    from model.train.gazedata.synth import generate_sample

    image = generate_sample(seed, height=rows, width=columns, view="PA").image
    stored = np.round(image * 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    if jpeg2000:
        ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def timed(func: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        func()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--ckpt", type=Path)
    args = parser.parse_args()

    import torch

    from model.imaging import prepare_image
    from model.pixels import display_image
    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt)
    spec = predictor.model.settings.patch_spec
    plain = film_bytes(args.rows, args.columns, 11, jpeg2000=False)
    j2k = film_bytes(args.rows, args.columns, 11, jpeg2000=True)
    batch = [film_bytes(args.rows, args.columns, 20 + i, jpeg2000=False) for i in range(args.batch)]

    def read(data: bytes) -> Dataset:
        return pydicom.dcmread(io.BytesIO(data))

    rows: list[tuple[str, list[float], int]] = [
        (
            "decode + resize only (baseline)",
            timed(lambda: prepare_image(display_image(read(plain)), spec), args.runs),
            1,
        ),
        (
            "predict 1 film, uncompressed",
            timed(lambda: predictor.predict(read(plain)), args.runs),
            1,
        ),
        ("predict 1 film, JPEG 2000", timed(lambda: predictor.predict(read(j2k)), args.runs), 1),
        (
            f"predict batch of {args.batch}",
            timed(
                lambda: predictor.predict([read(b) for b in batch]), max(3, args.runs // args.batch)
            ),
            args.batch,
        ),
    ]
    baseline = statistics.median(rows[0][1])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
        f"{predictor.device}, film {args.columns}x{args.rows}, runs {args.runs}"
    )
    header = f"{'case':34}{'median ms':>11}{'p95 ms':>9}{'images/s':>10}{'x baseline':>12}"
    print(header)
    print("-" * len(header))
    for name, times, images in rows:
        median = statistics.median(times)
        p95 = float(np.percentile(times, 95))
        print(
            f"{name:34}{median * 1000:11.1f}{p95 * 1000:9.1f}{images / median:10.2f}"
            f"{median / baseline:12.2f}"
        )
    per_image = statistics.median(rows[1][1]) * 1000
    print(f"\nmedian per PA film incl. decode: {per_image:.0f} ms (target <= 300 ms)")


if __name__ == "__main__":
    main()
