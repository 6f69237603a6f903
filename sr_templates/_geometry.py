"""Where the derived images (the SEG and the Parametric Map) lie: their plane geometry.

Both are pixel-aligned with the source radiograph: one frame (per segment) of its Rows x
Columns, each frame naming the source image in its Derivation Image Sequence. Viewers still
place the frames by the Multi-frame Functional Groups' plane geometry, and OHIF 3.13.2 needs
all of it: without a shared Pixel Measures item the page crashes, without Plane Orientation
and Plane Position the SEG does not load, and a Parametric Map needs a Frame of Reference.

- A source with patient geometry of its own (FrameOfReferenceUID, ImageOrientationPatient
  and ImagePositionPatient, as some DX have) lends it: highdicom copies it.
- A projection radiograph without it (the usual CR and DX) gets a frame of reference of its
  own pixel grid (``uids.frame_of_reference_uid``, shared by the SEG and the map of that
  image only): along a row is +x, down a column is +y, orientation
  1\\0\\0\\0\\1\\0, position 0\\0\\0. That is exactly the plane viewers assume for an image
  without geometry (cornerstone3D's defaults), so OHIF lays the overlay on the film pixel
  for pixel. It says nothing about the patient beyond the pixel grid; PatientOrientation,
  copied from the image, still gives the anatomical directions.
- Pixel Measures: the image's spacing when it has a usable one (PixelSpacing, else
  ImagerPixelSpacing: two finite values above 0), else a nominal 1 mm, the unit viewers
  assume; never a 0 copied from a quirky header (a viewer would place the frame at NaN).
  Slice Thickness: the image's when above 0, else a nominal 1 mm (a projection has no
  slice; highdicom's reader needs the value).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from model.result import InferenceResult
from sr_templates import uids

#: What a viewer assumes for an image without a usable spacing (mm).
NOMINAL_SPACING = 1.0
#: The plane of an image without patient geometry: along a row +x, down a column +y.
PIXEL_GRID_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PIXEL_GRID_POSITION = (0.0, 0.0, 0.0)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GEOMETRY_KEYWORDS = ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient")


@dataclass(frozen=True)
class PlaneGeometry:
    """What highdicom's SEG and Parametric Map constructors take for the plane geometry."""

    #: the source image as highdicom's ``source_images`` item (its header, with the pixel
    #: grid's frame of reference when the image has none)
    source: Dataset
    pixel_measures: hd.PixelMeasuresSequence


def pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; ``None``
    when neither holds two finite values above 0."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _positive_values(source, keyword)
        if values is not None and len(values) == 2:
            return values[0], values[1]
    return None


def has_patient_geometry(source: Dataset) -> bool:
    """Whether the image places itself in a patient frame of reference."""
    return all(source.get(keyword) for keyword in _GEOMETRY_KEYWORDS)


def plane_geometry(result: InferenceResult, source: Dataset) -> PlaneGeometry:
    """The plane geometry of the images derived from ``source`` (see the module docstring)."""
    row_spacing, column_spacing = pixel_spacing(source) or (NOMINAL_SPACING, NOMINAL_SPACING)
    thickness = _positive_values(source, "SliceThickness")
    slice_thickness = thickness[0] if thickness and len(thickness) == 1 else NOMINAL_SPACING
    # The header highdicom reads: it takes the spacing from the image even when it is given
    # Pixel Measures, so the header carries the same values.
    patient = has_patient_geometry(source)
    header = Dataset()
    for element in source:
        if element.keyword in _PIXEL_KEYWORDS or (
            not patient and element.keyword in _GEOMETRY_KEYWORDS
        ):
            continue
        # A copy: setting the header's values below must not change the caller's image
        # (seen: its PixelSpacing 0\0 became 1\1).
        header.add(copy.deepcopy(element))
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    header.PixelSpacing = [row_spacing, column_spacing]
    header.SliceThickness = slice_thickness
    if not patient:
        header.FrameOfReferenceUID = uids.frame_of_reference_uid(result)
        header.PositionReferenceIndicator = ""
        header.ImageOrientationPatient = list(PIXEL_GRID_ORIENTATION)
        header.ImagePositionPatient = list(PIXEL_GRID_POSITION)
    pixel_measures = hd.PixelMeasuresSequence(
        pixel_spacing=[row_spacing, column_spacing], slice_thickness=slice_thickness
    )
    return PlaneGeometry(header, pixel_measures)


def _positive_values(source: Dataset, keyword: str) -> list[float] | None:
    """The attribute's values as floats when there are some and each is finite and above 0."""
    try:
        raw = source.get(keyword)
        items = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
        values = [float(value) for value in items if value is not None and value != ""]
    except (TypeError, ValueError):  # a DS that is not a number
        return None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values
