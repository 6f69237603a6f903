"""The attention map of a result as a Parametric Map, pixel-aligned with the source image, in
its own series.

A Parametric Map, not a FRACTIONAL SEG: OHIF 3.13.2 does not display FRACTIONAL SEG, and it
does lay a Parametric Map over the image it references (a colour fusion). The map holds the
model's attention in [0, 1] as 32-bit floats, with a Real World Value Mapping of the same
range (identity, no units) whose quantity is (130404, DCM, "Saliency"). Floats, because OHIF
ignores the mapping: it multiplies the stored values by 100 and draws them with a fixed
window of 0 to 100, so values in [0, 1] span its whole colour scale, where integers (say
0 to 1000 for the same map) would all saturate. The plane geometry comes from
``_geometry``.

No map is written for a film without a usable pixel spacing: OHIF 3.13.2 builds the film's
volume with spacing [NaN, NaN, 1] to fuse a map onto it, and its whole viewer route crashes,
whatever the map says. The SR, SEG and GSPS of such a film carry its findings.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from model.result import InferenceResult
from sr_templates import codes, content
from sr_templates._common import content_description, copy_image_attributes, equipment, series
from sr_templates._geometry import pixel_spacing, plane_geometry
from sr_templates.enum import ObjectKindValues

#: Name of the map: its LUT label (SH, 16 characters) and explanation.
ATTENTION_LABEL = "ATTENTION"
ATTENTION_EXPLANATION = "Model attention"
_LATERALITIES = frozenset({"R", "L", "B", "U"})


def attention_map(result: InferenceResult) -> npt.NDArray[np.float32] | None:
    """The attention map resampled (bilinear) to the source image size, in [0, 1]."""
    if result.attention is None:
        return None
    rows, columns = result.source.Rows, result.source.Columns
    attention = np.asarray(result.attention, dtype=np.float32)
    if attention.shape != (rows, columns):
        image = Image.fromarray(attention).resize(
            (columns, rows), resample=Image.Resampling.BILINEAR
        )
        attention = np.asarray(image, dtype=np.float32)
    return np.clip(attention, 0.0, 1.0)


def build_attention_map(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.pm.ParametricMap | None:
    """Parametric Map of the attention map; ``None`` when the result has none or the film
    has no usable pixel spacing (see the module's docstring)."""
    content.check_source(result, source)
    attention = attention_map(result)
    if attention is None or pixel_spacing(source) is None:
        return None
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=ATTENTION_LABEL,
        lut_explanation=ATTENTION_EXPLANATION,
        unit=codes.NO_UNITS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=codes.SALIENCY,
    )
    geometry = plane_geometry(result, source)
    pm = hd.pm.ParametricMap(
        source_images=[geometry.source],
        pixel_array=attention,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="GAZEX_ATTENTION",
        content_description=content_description(result.model),
        pixel_measures=geometry.pixel_measures,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **series(result, ObjectKindValues.ATTENTION_MAP, revision),
        **equipment(result),
    )
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_frame_anatomy(source)]
    # highdicom leaves these out: the image's directions, and the body part viewers list.
    copy_image_attributes(pm, source, "PatientOrientation", "BodyPartExamined")
    return pm


def _frame_anatomy(source: Dataset) -> Dataset:
    """Frame Anatomy (mandatory in a Parametric Map, which highdicom does not write): the
    image's anatomic region, else the chest (CID 4031), and its laterality, else unpaired."""
    item = Dataset()
    regions = source.get("AnatomicRegionSequence")
    if regions:
        region = Dataset()
        for keyword in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"):
            if keyword in regions[0]:
                region[keyword] = regions[0][keyword]
        item.AnatomicRegionSequence = [region]
    else:
        item.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(codes.CHEST)]
    laterality = str(source.get("ImageLaterality") or source.get("Laterality") or "U")
    item.FrameLaterality = laterality if laterality in _LATERALITIES else "U"
    return item
