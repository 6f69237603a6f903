"""Gaze to supervision: patch indices, key fixations, heatmaps, sentence clusters, steps."""

from __future__ import annotations

import numpy as np
import pytest

from model.abcdef import Step
from model.train.gazedata.sample import GazeFixation, GazeSample, LabeledBox, TranscriptSentence
from model.train.gazedata.supervision import (
    annotate_regions,
    gaze_heatmap,
    key_fixations,
    patch_indices,
    sentence_clusters,
)


def _fx(x: float, y: float, t: float = 0.0, d: float = 100.0) -> GazeFixation:
    return GazeFixation(x, y, t, d)


def test_patch_indices_exact_non_square() -> None:
    """On a 300 x 200 image cut into 14 x 14 patches, borders go to the right/lower patch."""
    fx = [
        _fx(150.0, 100.0),
        _fx(149.999, 99.999),
        _fx(0.0, 0.0),
        _fx(299.99, 199.99),
        _fx(300.0, 10.0),
        _fx(-1.0, 5.0),
    ]
    idx = patch_indices(fx, (200, 300), (224, 224), (14, 14))
    assert idx.tolist() == [7 * 14 + 7, 6 * 14 + 6, 0, 14 * 14 - 1, -1, -1]
    # a 6-pixel-wide image stretched to 9 input pixels, 3 columns: x = 2 is exactly a border
    idx = patch_indices(
        [_fx(2.0, 0.5), _fx(2.0 - 1e-12, 0.5), _fx(4.0, 0.5)], (1, 6), (1, 9), (1, 3)
    )
    assert idx.tolist() == [1, 0, 2]


def test_patch_indices_letterbox_padding() -> None:
    """Letterboxing a wide image into a square puts padding rows outside any fixation."""
    # 100 x 200 image into 200 x 200: scale 1, 50 rows of padding above and below
    idx = patch_indices(
        [_fx(0.5, 0.5), _fx(199.5, 99.5)], (100, 200), (200, 200), (4, 4), mode="letterbox"
    )
    assert idx.tolist() == [1 * 4 + 0, 2 * 4 + 3]
    with pytest.raises(ValueError, match="resize mode"):
        patch_indices([], (1, 1), (1, 1), (1, 1), mode="crop")


def test_key_fixations_by_dwell_ordered_by_first_visit() -> None:
    """The K largest-dwell patches come back in order of their first visit."""
    fx = [
        _fx(10, 10, 0, 100),  # patch 0, short
        _fx(90, 90, 200, 300),  # patch 3, long
        _fx(10, 90, 600, 250),  # patch 2
        _fx(90, 90, 900, 400),  # patch 3 again
    ]
    keys = key_fixations(fx, (100, 100), (100, 100), (2, 2), k=2)
    assert [k.patch for k in keys] == [3, 2]
    assert keys[0].dwell_ms == 700 and keys[0].first_ms == 200


def test_heatmap_sigma_one_degree() -> None:
    """The heatmap sums to 1, peaks at the longest fixation and spreads by 1 degree."""
    fx = [_fx(30.5, 40.5, 0, 500), _fx(80.5, 20.5, 600, 100)]
    h = gaze_heatmap(fx, (100, 120), pixels_per_degree=5.0)
    assert h.shape == (100, 120) and abs(float(h.sum()) - 1.0) < 1e-5
    assert np.unravel_index(int(np.argmax(h)), h.shape) == (40, 30)
    row = h[40, :60] / h[40, 30]
    assert abs(float(row[35]) - float(np.exp(-0.5))) < 0.02  # one sigma = 5 px
    small = gaze_heatmap(fx, (100, 120), out_hw=(50, 60), pixels_per_degree=5.0)
    assert np.unravel_index(int(np.argmax(small)), small.shape) == (20, 15)
    assert float(gaze_heatmap([_fx(-5, 5)], (10, 10)).sum()) == 0.0


def _sample(
    fixations: tuple[GazeFixation, ...], sentences: tuple[TranscriptSentence, ...]
) -> GazeSample:
    return GazeSample(
        sample_id="t",
        image=np.zeros((100, 100), dtype=np.float32),
        view="PA",
        reader_id="r",
        pixels_per_degree=4.0,
        fixations=fixations,
        sentences=sentences,
        labels={"endotracheal_tube": True},
        boxes=(LabeledBox("endotracheal_tube", 45, 0, 55, 30),),
        anatomy=(LabeledBox("trachea", 40, 0, 60, 40), LabeledBox("right lung", 0, 10, 45, 90)),
    )


def test_sentence_clusters_follow_dictation() -> None:
    """Each sentence gets the fixations around its dictation, clustered and time-ordered."""
    fx = (_fx(20, 50, 0, 300), _fx(22, 52, 350, 300), _fx(80, 80, 700, 300), _fx(50, 20, 3000, 400))
    sents = (
        TranscriptSentence("Lungs clear.", 900, 1500),
        TranscriptSentence("Tube in place.", 3200, 3800),
    )
    out = sentence_clusters(_sample(fx, sents), lead_ms=1000)
    assert out[0].fixation_indices == (0, 1, 2)
    assert len(out[0].clusters) == 2 and out[0].clusters[0].first_ms == 0
    assert out[1].fixation_indices == (3,)


def test_annotate_regions_and_device_step() -> None:
    """Regions come from the smallest anatomical box; a fixation on a device box is step F."""
    fx = (_fx(50, 20), _fx(20, 50), _fx(95, 95), _fx(-3, 3))
    out = annotate_regions(_sample(fx, ()))
    assert [f.region for f in out.fixations] == ["trachea", "right lung", None, None]
    assert [f.step for f in out.fixations] == [Step.FOREIGN_MATERIAL, Step.BREATHING, None, None]


def test_synthetic_steps_cover_abcdef() -> None:
    """A synthetic systematic reading visits all six ABCDEF steps."""
    from model.train.gazedata.synth import generate_sample

    s = generate_sample(0, size=96, reader="R1-systematic")
    assert set(Step) <= {f.step for f in s.fixations}
