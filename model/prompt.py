"""The token sequence around the image: its common prefix and the report text format.

Every sequence starts with :func:`prefix_ids`; the generated report (one ``Title: text``
line per ABCDEF step, then ``Impression: text``, as :func:`model.train.batching.report_text`
writes the targets) is read back by :func:`parse_report`.
"""

from __future__ import annotations

from model.abcdef import STEPS, Step
from model.tokenizer import GAZE_START, IMAGE_PAD, VISION_END, VISION_START, TextCodec


def parse_report(text: str) -> tuple[dict[Step, str], str]:
    """Split generated report text into ABCDEF sections and an impression."""
    sections: dict[Step, str] = {}
    impression = ""
    titles = {s.title.lower(): s for s in STEPS}
    for line in text.splitlines():
        head, sep, body = line.partition(":")
        if not sep:
            continue
        key = head.strip().lower()
        if key in titles:
            sections[titles[key]] = body.strip()
        elif key == "impression":
            impression = body.strip()
    return sections, impression


def prefix_ids(codec: TextCodec, num_image_tokens: int) -> list[int]:
    """Vision block and the gaze opener: what every sequence starts with."""
    return [
        codec.id(VISION_START),
        *([codec.id(IMAGE_PAD)] * num_image_tokens),
        codec.id(VISION_END),
        codec.id(GAZE_START),
    ]
