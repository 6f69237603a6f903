"""WebDataset shards (model/train/shards.py): converter round trip, rank/worker split, scale."""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
import time
import tracemalloc
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from dicom_node.cli import main
from model.train.datasets import iter_samples
from model.train.gazedata import egd, reflacx
from model.train.gazedata.images import write_image
from model.train.gazedata.mimic_eye import write_mimic_eye
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.synth import generate_sample
from model.train.shards import (
    MANIFEST_NAME,
    ShardedSamples,
    ShardError,
    ShardWriter,
    read_manifest,
    write_reference_shards,
)

MIMIC_CXR_STUDIES = 231_835


def assert_same_sample(a: GazeSample, b: GazeSample) -> None:
    """Every field equal; the film equal pixel for pixel, float32 both."""
    for f in dataclasses.fields(GazeSample):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "image":
            assert vb.dtype == np.float32 and np.array_equal(va, vb), a.sample_id
        elif f.name == "masks" and va is not None:
            assert vb is not None and list(va) == list(vb)
            assert all(np.array_equal(va[k], vb[k]) for k in va)
        else:
            assert va == vb, (a.sample_id, f.name)


def write_layout(root: Path, fmt: str, ext: str, n: int = 3) -> None:
    """A small synthetic folder in one real layout (what `gazex data synth` writes)."""
    samples = [generate_sample(200 + i, size=64) for i in range(n)]
    if fmt == "reflacx":
        reflacx.write_reflacx(samples, root, ext)
    elif fmt == "egd":
        egd.write_egd(samples, root, ext)
    else:
        write_mimic_eye(samples, root, ext)


def write_films(root: Path) -> list[str]:
    """Four synthetic films in the MIMIC-CXR layout, two DICOM and two JPG."""
    films = []
    for i, ext in enumerate((".dcm", ".jpg", ".dcm", ".jpg")):
        s = generate_sample(300 + i, size=64)
        rel = f"files/p10/p1000000{i}/s5000000{i}/{s.sample_id}{ext}"
        write_image(root / rel, s.image, sample_id=s.sample_id)
        films.append(rel)
    return films


@pytest.mark.parametrize(
    ("fmt", "ext", "codec"),
    [("reflacx", ".png", "png"), ("egd", ".dcm", "npy"), ("mimic-eye", ".jpg", "png")],
)
def test_converter_round_trip_each_layout(tmp_path: Path, fmt: str, ext: str, codec: str) -> None:
    """Embedded and referenced shards of each layout give back the loader's samples exactly."""
    src = tmp_path / "src"
    write_layout(src, fmt, ext)
    expected = list(iter_samples(src, fmt))
    with ShardWriter(tmp_path / "emb", shard_size=2, source_format=fmt) as writer:
        for s in expected:
            writer.add(s)
    assert writer.codecs == Counter({codec: len(expected)})  # lossless choice per film
    with ShardWriter(tmp_path / "ref", image_root=src) as writer:
        for s in expected:
            writer.add(s)
    for folder in ("emb", "ref"):
        got = list(ShardedSamples(tmp_path / folder, seed=0, workers=0).ordered())
        assert len(got) == len(expected)
        for a, b in zip(expected, got, strict=True):
            assert_same_sample(a, b)
    manifest = read_manifest(tmp_path / "emb")
    assert manifest.readings == len(expected) and len(manifest.shards) == 2
    assert manifest.images == "embedded" and manifest.source_format == fmt
    assert read_manifest(tmp_path / "ref").images == "referenced"


def test_generator_samples_with_masks_round_trip(tmp_path: Path) -> None:
    """A generator sample (unquantised film, masks, report, VQA, anatomy) comes back equal."""
    samples = [generate_sample(s, size=64) for s in (1, 2)]
    assert all(s.masks for s in samples) and all(s.report for s in samples)
    with ShardWriter(tmp_path / "out") as writer:
        for s in samples:
            writer.add(s)
    got = list(ShardedSamples(tmp_path / "out", seed=0, workers=0).ordered())
    for a, b in zip(samples, got, strict=True):
        assert_same_sample(a, b)


def test_png16_codec_is_close(tmp_path: Path) -> None:
    """--image-codec png16 stores every film as 16-bit PNG, at most half a step off."""
    sample = generate_sample(5, size=64)
    with ShardWriter(tmp_path / "out", image_codec="png16") as writer:
        writer.add(sample)
    assert writer.codecs == Counter({"png": 1})
    got = next(ShardedSamples(tmp_path / "out", seed=0, workers=0).ordered())
    assert np.abs(got.image - sample.image).max() <= 0.5 / 65535 + 1e-7


def test_writer_holds_one_reading_not_a_shard(tmp_path: Path) -> None:
    """Writing a shard of 30 readings with 1 MiB films peaks at a few films, not 30."""
    sample = generate_sample(9, size=64)
    film = np.random.default_rng(0).random((512, 512), dtype=np.float32)  # 1 MiB as .npy
    big = dataclasses.replace(sample, image=film, masks=None)
    tracemalloc.start()
    try:
        with ShardWriter(tmp_path / "out", shard_size=30) as writer:
            for _ in range(30):
                writer.add(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert writer.codecs == Counter({"npy": 30})
    assert peak < 6 * film.nbytes, peak


def test_shards_are_plain_webdataset_tars(tmp_path: Path) -> None:
    """tarfile lists the members, and webdataset reads the same keys and JSON."""
    import webdataset as wds

    src = tmp_path / "src"
    write_layout(src, "reflacx", ".png", n=2)
    with ShardWriter(tmp_path / "out") as writer:
        for s in iter_samples(src, "reflacx"):
            writer.add(s)
    shard = tmp_path / "out" / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        names = tar.getnames()
    assert names == ["000000000.json", "000000000.png", "000000001.json", "000000001.png"]
    samples = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001"]
    assert json.loads(samples[0]["json"])["image"] == {"member": "png"}


def test_cli_shard_then_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gazex data shard` converts a `gazex data synth` folder; bad input is one line, exit 2."""
    src, out = tmp_path / "synth", tmp_path / "shards"
    common = ["--n", "3", "--size", "64", "--workers", "1", "--no-progress"]
    assert main(["data", "synth", "--out", str(src), "--format", "egd", *common]) == 0
    args = ["data", "shard", "--format", "synthetic", "--data", str(src), "--out", str(out)]
    assert main([*args, "--shard-size", "2", "--no-progress"]) == 0
    assert "wrote 3 readings in 2 shards" in capsys.readouterr().out
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert doc["readings"] == 3 and doc["source_format"] == "synthetic"
    assert [s["readings"] for s in doc["shards"]] == [2, 1]
    assert len((out / doc["films"]).read_text().splitlines()) == 1 + 3
    expected = list(iter_samples(src, "synthetic"))
    for a, b in zip(expected, ShardedSamples(out, seed=0, workers=0).ordered(), strict=True):
        assert_same_sample(a, b)

    assert main(args) == 2  # the folder is not empty now
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    bad = ["data", "shard", "--format", "reflacx", "--data", str(src), "--out", str(tmp_path / "x")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(src) in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # a failed conversion leaves nothing behind


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """23 referenced readings in shards of 4 (the last one short): an uneven split."""
    root = tmp_path_factory.mktemp("split")
    films = write_films(root / "images")
    write_reference_shards(root / "shards", root / "images", films, 23, shard_size=4)
    return root / "shards"


def _epoch_ids(folder: Path, *, seed: int, epoch: int, rank: int, world: int) -> list[str]:
    ds = ShardedSamples(folder, seed=seed, rank=rank, world=world, workers=2, shuffle_buffer=3)
    return [s.sample_id for s in ds.epoch(epoch)]


def test_ranks_and_workers_split_each_epoch(split_shards: Path) -> None:
    """2 ranks x 2 workers: equal counts per rank, each reading at most once, one dropped;
    another epoch reorders, the same seed repeats, another seed differs."""
    runs = {
        (epoch, rank): _epoch_ids(split_shards, seed=7, epoch=epoch, rank=rank, world=2)
        for epoch in (0, 1)
        for rank in (0, 1)
    }
    for epoch in (0, 1):
        a, b = runs[epoch, 0], runs[epoch, 1]
        assert len(a) == len(b) == 11  # 23 // 2; the 23rd reading of the epoch is dropped
        assert len(set(a) | set(b)) == 22
    assert runs[0, 0] != runs[1, 0]
    assert set(runs[0, 0]) != set(runs[1, 0])  # shards move between ranks across epochs
    assert _epoch_ids(split_shards, seed=7, epoch=0, rank=0, world=2) == runs[0, 0]
    assert _epoch_ids(split_shards, seed=8, epoch=0, rank=0, world=2) != runs[0, 0]
    everything = ShardedSamples(split_shards, seed=7, world=1, workers=2)
    assert len(everything) == 23 and everything.per_rank == 23
    assert sorted(s.sample_id for s in everything.epoch(0)) == sorted(
        s.sample_id for s in everything.ordered()
    )


def test_in_process_order_equals_one_worker(split_shards: Path) -> None:
    """workers=0 (no DataLoader processes) streams the same order as one worker process."""
    zero = ShardedSamples(split_shards, seed=3, workers=0)
    one = ShardedSamples(split_shards, seed=3, workers=1)
    assert [s.sample_id for s in zero.epoch(2)] == [s.sample_id for s in one.epoch(2)]


def test_missing_and_corrupt_shards_are_one_line_errors(split_shards: Path, tmp_path: Path) -> None:
    """A missing shard fails at open, a garbled or short one while streaming (also in a
    DataLoader worker): one line naming it."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(split_shards, folder)
    (folder / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000002\.tar: shard listed in manifest") as exc:
        ShardedSamples(folder, seed=0)
    assert "\n" not in str(exc.value)

    shutil.rmtree(folder)
    shutil.copytree(split_shards, folder)
    data = bytearray((folder / "shard-000001.tar").read_bytes())
    data[600:1400] = b"\x07" * 800  # the first JSON and the second header
    (folder / "shard-000001.tar").write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar") as exc:
        list(ShardedSamples(folder, seed=0, workers=2).epoch(0))
    assert "\n" not in str(exc.value)

    with tarfile.open(split_shards / "shard-000001.tar") as tar:  # a valid but short shard
        first = tar.getmembers()[0]
        with tarfile.open(folder / "shard-000001.tar", "w") as short:
            short.addfile(first, tar.extractfile(first))
    with pytest.raises(ShardError, match=r"shard-000001\.tar: holds 1 readings, manifest"):
        list(ShardedSamples(folder, seed=0, workers=0).ordered())
    (folder / "shard-000001.tar").write_bytes(b"")
    with pytest.raises(ShardError, match=r"shard-000001\.tar: not a readable tar shard"):
        list(ShardedSamples(folder, seed=0, workers=0).ordered())
    with pytest.raises(ShardError, match="not a shard folder"):
        ShardedSamples(tmp_path, seed=0)


def _linked_reference_folder(root: Path, films: list[str], readings: int) -> Path:
    """A reference shard folder of ``readings`` readings in shards of 1000, cheaply: three
    distinct shards are written by write_reference_shards and the rest hard-link them."""
    seed_dir = root / f"distinct{readings}"
    write_reference_shards(seed_dir, root / "images", films, 2000 + readings % 1000)
    doc = json.loads((seed_dir / MANIFEST_NAME).read_text())
    full, rest = divmod(readings, 1000)
    out = root / f"m{readings}"
    out.mkdir()
    shards = []
    for i in range(full + (1 if rest else 0)):
        source = doc["shards"][2 if i == full else i % 2]
        name = f"shard-{i:06d}.tar"
        os.link(seed_dir / source["name"], out / name)
        shards.append({**source, "name": name})
    doc.update(readings=readings, shards=shards)
    (out / MANIFEST_NAME).write_text(json.dumps(doc))
    return out


def _open_and_stream(folder: Path, n: int) -> tuple[float, int]:
    """Seconds to open the folder, and the traced peak (bytes) of opening + n samples."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        ds = ShardedSamples(folder, seed=0, workers=0, shuffle_buffer=64)
        opened = time.perf_counter() - t0
        got = sum(1 for _ in islice(ds.epoch(0), n))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == n
    return opened, peak


def test_mimic_cxr_size_manifest_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A 231,835-reading reference manifest opens and streams with the memory (and about
    the open time) of a 2,318-reading one, far below holding its readings."""
    films = write_films(tmp_path / "images")
    small = _linked_reference_folder(tmp_path, films, 2_318)
    big = _linked_reference_folder(tmp_path, films, MIMIC_CXR_STUDIES)
    assert read_manifest(big).readings == MIMIC_CXR_STUDIES
    json_bytes = sum(s.stat().st_size for s in big.glob("shard-*.tar"))  # the readings' text
    _open_and_stream(small, 20)  # warm imports and caches
    small_open, small_peak = _open_and_stream(small, 300)
    big_open, big_peak = _open_and_stream(big, 300)
    assert big_peak < 8 * 2**20, big_peak
    assert big_peak < 1.5 * small_peak + 2**20, (big_peak, small_peak)
    assert big_peak * 100 < json_bytes  # under 1 % of the readings it streams from
    assert big_open < max(10 * small_open, 0.5), (big_open, small_open)  # O(shards)
