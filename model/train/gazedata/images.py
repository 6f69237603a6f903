"""Reading and writing radiograph pixel data: DICOM (CR/DX) and PNG/JPEG.

Writers take the display-ready float image of a :class:`~model.train.gazedata.sample.GazeSample`
(values in [0, 1], MONOCHROME2 sense) and store it as the datasets have it:

- DICOM CR (Computed Radiography Image Storage) or DX (Digital X-Ray Image Storage - For
  Presentation), 12 to 16 bits stored, MONOCHROME2 or MONOCHROME1, with
  ImagerPixelSpacing, a linear VOI window (WindowCenter/WindowWidth) that maps the stored
  values back to the display image, and Rescale Slope/Intercept 1/0.
- PNG (8 or 16 bit grey) and JPEG (8 bit), as MIMIC-CXR-JPG and the EGD-CXR preparation
  scripts have them.

:func:`read_image` reverses either: modality LUT, VOI window (DICOM PS3.3 C.11.2.1.2
linear function), MONOCHROME1 inversion, giving float32 in [0, 1]. UIDs are derived from
the sample id, and no dates or times of day are written, so the same sample always gives
the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: UID root for synthetic objects (2.25 = UUID-derived, PS3.5 B.2).
_UID_ROOT = "2.25."

#: Physical size of the synthetic square field (model.train.gazedata.pathology.FIELD_CM), mm.
FIELD_MM = 360.0


class ImageFormatError(ValueError):
    """An image file that cannot be read as a radiograph; ``reason`` omits the path."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def synthetic_uid(*parts: str) -> str:
    """A deterministic 2.25 UID from the given strings."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()[:16]
    return _UID_ROOT + str(int.from_bytes(digest, "big"))


def voi_linear(x: npt.NDArray[np.floating], center: float, width: float) -> F32:
    """DICOM linear VOI function (PS3.3 C.11.2.1.2.1) mapped to [0, 1]."""
    if width < 1:
        raise ImageFormatError(f"WindowWidth must be >= 1, got {width}")
    y = (x - (center - 0.5)) / (width - 1.0) + 0.5
    out: F32 = np.clip(y, 0.0, 1.0).astype(np.float32)
    return out


def _inverse_voi(y: F32, center: float, width: float) -> npt.NDArray[np.float64]:
    return (y.astype(np.float64) - 0.5) * (width - 1.0) + center - 0.5


def write_dicom(
    path: Path,
    image: F32,
    *,
    sample_id: str,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    view: str = "PA",
    pixel_spacing_mm: float | None = None,
) -> None:
    """Store a display image as a CR or DX DICOM file with a VOI window that restores it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be CR or DX, got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 10 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 10..16, got {bits_stored}")
    rows, cols = image.shape
    top = (1 << bits_stored) - 1
    # the window covers 80 % of the stored range, offset from zero like a real detector
    width = float(round(top * 0.8))
    center = float(round(top * 0.5))
    display = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    stored = np.clip(
        np.rint(_inverse_voi(display.astype(np.float32), center, width)), 0, top
    ).astype(np.uint16)
    spacing = pixel_spacing_mm if pixel_spacing_mm is not None else FIELD_MM / min(rows, cols)

    meta = FileMetaDataset()
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_PRESENTATION
    sop_uid = synthetic_uid(sample_id, "image", modality, photometric)
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    meta.ImplementationVersionName = "GAZEX_SYNTH"

    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = synthetic_uid(sample_id, "study")
    ds.SeriesInstanceUID = synthetic_uid(sample_id, "series", modality)
    ds.Modality = modality
    ds.PatientName = "Synthetic^Chest"
    ds.PatientID = "SYNTH-" + hashlib.sha256(sample_id.encode()).hexdigest()[:10]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "GazeX Node synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["A", "F"]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ConversionType = "SYN" if modality == "CR" else ""
    if modality == "DX":
        del ds.ConversionType
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.RescaleType = "US"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
    ds.ImagerPixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = f"{center:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    # No VOILUTFunction: LINEAR is the default, and OHIF 3.13.2 stops with "Invalid VOI LUT
    # function" on a film that states it.
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_png(path: Path, image: F32, bits: int = 8) -> None:
    """Store a display image as a grey PNG (8 or 16 bit)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.clip(image, 0.0, 1.0)
    if bits == 8:
        Image.fromarray(np.rint(img * 255).astype(np.uint8), mode="L").save(path, compress_level=1)
    elif bits == 16:
        Image.fromarray(np.rint(img * 65535).astype(np.uint16)).save(path)
    else:
        raise ValueError(f"PNG bits must be 8 or 16, got {bits}")


def write_jpeg(path: Path, image: F32, quality: int = 95) -> None:
    """Store a display image as an 8-bit grey JPEG (MIMIC-CXR-JPG style)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(
        path, quality=quality
    )


def write_image(path: Path, image: F32, *, sample_id: str, view: str = "PA") -> None:
    """Write by extension: ``.dcm`` (DX, MONOCHROME2, 12 bit), ``.png`` or ``.jpg``."""
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        write_dicom(path, image, sample_id=sample_id, view=view)
    elif suffix == ".png":
        write_png(path, image)
    elif suffix in (".jpg", ".jpeg"):
        write_jpeg(path, image)
    else:
        raise ValueError(f"unsupported image extension {suffix!r} (use .dcm, .png or .jpg)")


def read_dicom(path: Path) -> tuple[F32, dict[str, str]]:
    """Display-ready float image of a DICOM radiograph and a few header values."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array.astype(np.float64)
    except (InvalidDicomError, AttributeError, ValueError, OSError) as exc:
        reason = f"not a readable DICOM image ({type(exc).__name__})"
        raise ImageFormatError(f"{path}: {reason}", reason) from exc
    if raw.ndim != 2:
        raise ImageFormatError(
            f"{path}: expected one grey frame, got shape {raw.shape}",
            f"expected one grey frame, got shape {raw.shape}",
        )
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    x = raw * slope + intercept
    center = ds.get("WindowCenter")
    width = ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        img = voi_linear(x, c, w)
    else:
        lo, hi = float(x.min()), float(x.max())
        img = ((x - lo) / max(hi - lo, 1e-9)).astype(np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        img = (1.0 - img).astype(np.float32)
    elif photometric != "MONOCHROME2":
        reason = f"PhotometricInterpretation {photometric} is not a grey radiograph"
        raise ImageFormatError(f"{path}: {reason}", reason)
    info = {
        "Modality": str(ds.get("Modality", "")),
        "ViewPosition": str(ds.get("ViewPosition", "")),
        "PhotometricInterpretation": photometric,
        "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
    }
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    if spacing:
        info["ImagerPixelSpacing"] = f"{float(spacing[0])}\\{float(spacing[1])}"
    return img, info


def read_image(path: Path) -> F32:
    """Display-ready float32 image in [0, 1] from a DICOM, PNG or JPEG file."""
    if not path.is_file():
        raise ImageFormatError(f"{path}: image file not found", "image file not found")
    if path.suffix.lower() == ".dcm":
        return read_dicom(path)[0]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageFormatError(
            f"{path}: not a readable image ({type(exc).__name__})",
            f"not a readable image ({type(exc).__name__})",
        ) from exc
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    top = 65535.0 if mode.startswith("I") else 255.0
    return (arr.astype(np.float32) / top).clip(0.0, 1.0)
