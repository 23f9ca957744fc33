"""Rendering, kept apart from the maths: heatmaps back to the original geometry, colour, overlays, encodings.

Inputs are raw engine heatmaps (signed, at the model's resolution) or display-space images in [0, 1].
Display normalization is not redefined here: it is :func:`cxrexplain_render.normalize_for_display`
(negatives cast to zero, then divided by the per-map maximum), the one definition shared with the metrics.
Nothing here logs; DICOM attributes passed in are used only to build the derived object.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from cxrexplain.errors import InvalidInput, InvalidOption
from cxrexplain.preprocess import Geometry
from cxrexplain_imageio import dicom_info, dicom_patient_link
from cxrexplain_render import normalize_for_display

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
ArrayDType = Literal["float16", "float32"]
_DTYPES: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


# --------------------------------------------------------------------------------------------- colormap


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in [0, 1], unclipped (values outside [0, 1] are out of gamut)."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0
    delta = 6.0 / 29.0

    def finv(t: np.ndarray) -> np.ndarray:
        return np.where(t > delta, t**3, 3 * delta**2 * (t - 4.0 / 29.0))

    xyz = np.stack([0.95047 * finv(fx), finv(fy), 1.08883 * finv(fz)], axis=-1)
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    lin = xyz @ m.T
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.abs(lin) ** (1 / 2.4) - 0.055)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65); used to check the colormap's lightness ramp."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _build_lut(n: int = 256) -> np.ndarray:
    """A sequential colormap whose lightness L* rises linearly (perceptually uniform in L*).

    Built in CIELCh: L* from 8 to 94, hue turning from violet (300 deg) through red to yellow (95 deg),
    chroma as high as the sRGB gamut allows at each step (found by bisection) under a cap that rises from
    near-neutral black. Dark = no evidence, pale yellow = strongest evidence.
    """
    t = np.linspace(0.0, 1.0, n)
    lightness = 8.0 + 86.0 * t
    hue = np.deg2rad(300.0 + 155.0 * t)
    cap = 10.0 + 80.0 * np.sin(0.5 * np.pi * np.clip(2.5 * t, 0, 1))
    lo, hi = np.zeros(n), cap.copy()
    for _ in range(30):  # largest in-gamut chroma per entry
        mid = (lo + hi) / 2
        rgb = _lab_to_srgb(np.stack([lightness, mid * np.cos(hue), mid * np.sin(hue)], axis=-1))
        ok = ((rgb >= 0) & (rgb <= 1)).all(axis=-1)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    rgb = _lab_to_srgb(np.stack([lightness, lo * np.cos(hue), lo * np.sin(hue)], axis=-1))
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


COLORMAP_LUT: np.ndarray = _build_lut()
"""(256, 3) uint8: entry i is the colour of the normalized value i / 255."""


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float32).numpy()
    return np.asarray(a)


def _check_finite(a: np.ndarray, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InvalidInput(f"the {what} contains NaN or Inf values")


def normalize(heatmap: Any) -> np.ndarray:
    """Raw (H, W) heatmap -> [0, 1] float32 by :func:`cxrexplain_render.normalize_for_display`."""
    h = _as_numpy(heatmap).astype(np.float32)
    _check_finite(h, "heatmap")
    return np.asarray(_as_numpy(normalize_for_display(h)), dtype=np.float32)


def colorize(map01: Any) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB through :data:`COLORMAP_LUT` (clipped to [0, 1])."""
    m = _as_numpy(map01).astype(np.float32)
    _check_finite(m, "map")
    idx = np.rint(np.clip(m, 0.0, 1.0) * 255.0).astype(np.intp)
    return COLORMAP_LUT[idx]


# --------------------------------------------------------------------------------------------- geometry


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    down = size[0] < a.shape[0] or size[1] < a.shape[1]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=down)
    return out[0, 0].numpy()


def heatmap_to_original(heatmap: Any, geometry: Geometry) -> np.ndarray:
    """Model-space (S, S) map -> original-space (H, W) float32: the inverse of centre-crop + resize.

    The map is resized to the crop square and pasted at the crop offset into a zero canvas (the parts of
    the image the model never saw carry no evidence). With the stretch policy (``crop_size == 0``) the map
    is resized to the whole image.
    """
    h = _as_numpy(heatmap).astype(np.float32)
    if h.ndim != 2:
        raise InvalidInput(f"expected one (S, S) heatmap, got shape {h.shape}")
    H, W = geometry.original_height, geometry.original_width
    if geometry.crop_size == 0:
        return _resize(h, (H, W))
    c = geometry.crop_size
    if geometry.crop_top < 0 or geometry.crop_left < 0 or geometry.crop_top + c > H or geometry.crop_left + c > W:
        raise InvalidInput(f"geometry crop {geometry} lies outside the {H} x {W} image")
    canvas = np.zeros((H, W), dtype=np.float32)
    canvas[geometry.crop_top : geometry.crop_top + c, geometry.crop_left : geometry.crop_left + c] = _resize(
        h, (c, c)
    )
    return canvas


# --------------------------------------------------------------------------------------------- overlays


def _gray_rgb(image01: Any) -> np.ndarray:
    img = _as_numpy(image01).astype(np.float32)
    if img.ndim == 3 and img.shape[-1] == 3:
        return np.clip(img, 0, 1) * 255.0
    if img.ndim != 2:
        raise InvalidInput(f"expected an (H, W) gray image, got shape {img.shape}")
    return np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=-1) * 255.0


def overlay(image01: Any, heatmap: Any, alpha: float = 0.45, geometry: Geometry | None = None) -> Image.Image:
    """Blend a raw heatmap over a display-space image.

    Parameters
    ----------
    image01
        (H, W) gray (or (H, W, 3)) in [0, 1].
    heatmap
        Raw map: at the image's size, or at the model's size when ``geometry`` is given.
    alpha
        Opacity where the normalized map is 1; the opacity of a pixel is ``alpha * map``, so pixels
        without evidence show the radiograph unchanged.
    geometry
        Maps a model-space heatmap back with :func:`heatmap_to_original` first.

    Returns
    -------
    PIL.Image.Image
        RGB image of the original size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidOption(f"alpha {alpha} is outside [0, 1]")
    base = _gray_rgb(image01)
    m = normalize(heatmap)
    if geometry is not None:
        m = np.clip(heatmap_to_original(m, geometry), 0.0, 1.0)
    if m.shape != base.shape[:2]:
        raise InvalidInput(
            f"heatmap {m.shape} and image {base.shape[:2]} differ in size: pass the geometry to map it back"
        )
    w = (alpha * m)[..., None]
    out = (1.0 - w) * base + w * colorize(m).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


def save_overlay_png(
    path: str | Path, image01: Any, heatmap: Any, alpha: float = 0.45, geometry: Geometry | None = None
) -> Path:
    """Write :func:`overlay` as a PNG file; returns the path."""
    path = Path(path)
    overlay(image01, heatmap, alpha=alpha, geometry=geometry).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------- encodings


def encode_png(image: Any, bit_depth: Literal[8, 16] = 8) -> bytes:
    """Encode a display image as PNG.

    ``uint8`` arrays ((H, W) gray or (H, W, 3) RGB) are written as they are. Float arrays are taken as
    [0, 1] (clipped) and written as 8-bit gray, or as 16-bit gray with ``bit_depth=16`` (for maps that
    should keep more than 256 levels; value = round(x * 65535)).
    """
    a = _as_numpy(image)
    if isinstance(image, Image.Image):
        a = np.asarray(image)
    if a.dtype == np.uint8:
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
            raise InvalidInput(f"expected (H, W) or (H, W, 3) uint8, got shape {a.shape}")
        im = Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")
    else:
        a = a.astype(np.float64)
        if a.ndim != 2:
            raise InvalidInput(f"expected an (H, W) map in [0, 1], got shape {a.shape}")
        _check_finite(a, "map")
        a = np.clip(a, 0.0, 1.0)
        if bit_depth == 16:
            im = Image.fromarray(np.rint(a * 65535.0).astype(np.uint16))  # mode I;16
        elif bit_depth == 8:
            im = Image.fromarray(np.rint(a * 255.0).astype(np.uint8), mode="L")
        else:
            raise InvalidOption(f"PNG bit depth {bit_depth} is not supported: use 8 or 16")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def render_heatmap_png(heatmap: Any, bit_depth: Literal[8, 16] = 8) -> bytes:
    """Raw heatmap -> display-normalized gray PNG (the ``heatmap_format=png`` wire form)."""
    return encode_png(normalize(heatmap), bit_depth=bit_depth)


def encode_array(heatmap: Any, dtype: ArrayDType = "float16") -> bytes:
    """Raw (H, W) map -> little-endian bytes of ``dtype`` (row-major), the ``heatmap_format=array`` form.

    Raises
    ------
    InvalidOption
        Unknown dtype, or values too large for float16 (ask for float32).
    """
    if dtype not in _DTYPES:
        raise InvalidOption(f"heatmap dtype {dtype!r} is not supported: use 'float16' or 'float32'")
    a = _as_numpy(heatmap).astype(np.float64)
    _check_finite(a, "heatmap")
    if dtype == "float16" and a.size and np.abs(a).max() > float(np.finfo(np.float16).max):
        raise InvalidOption("heatmap values exceed the float16 range: request heatmap_dtype=float32")
    return np.ascontiguousarray(a.astype(_DTYPES[dtype])).tobytes()


def decode_array(data: bytes, height: int, width: int, dtype: ArrayDType = "float16") -> np.ndarray:
    """Inverse of :func:`encode_array`: bytes -> (height, width) float32."""
    if dtype not in _DTYPES:
        raise InvalidOption(f"heatmap dtype {dtype!r} is not supported: use 'float16' or 'float32'")
    dt = _DTYPES[dtype]
    if len(data) != height * width * dt.itemsize:
        raise InvalidInput(
            f"{len(data)} bytes do not hold a {height} x {width} {dtype} map ({height * width * dt.itemsize})"
        )
    return np.frombuffer(data, dtype=dt).reshape(height, width).astype(np.float32)


def frames_to_gif(
    frames: Any, duration_ms: int = 100, loop: int | None = 0, bounce: bool = True
) -> bytes:
    """(K, H, W) display-space frames in [0, 1] -> animated gray GIF.

    With ``bounce`` the frames play forward then backward without repeating the end frames
    (K + K - 2 frames), as the latent-shift videos of 003 do. ``loop=0`` repeats forever; None plays once.
    """
    f = _as_numpy(frames).astype(np.float32)
    if f.ndim != 3 or f.shape[0] < 1:
        raise InvalidInput(f"expected (K, H, W) frames, got shape {f.shape}")
    _check_finite(f, "frames")
    u8 = np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
    seq = list(u8)
    if bounce and len(seq) > 2:
        seq = seq + seq[-2:0:-1]
    images = [Image.fromarray(a, mode="L") for a in seq]
    kwargs: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": int(duration_ms)}
    if loop is not None:
        kwargs["loop"] = int(loop)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", optimize=False, **kwargs)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- DICOM


def burn_in_marking(rgb: np.ndarray, text: str = NOT_FOR_DIAGNOSTIC_USE) -> np.ndarray:
    """Write ``text`` in white on a black band across the top-left of an RGB uint8 image (a copy)."""
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    size = max(8, min(im.height // 32, im.width // (len(text) * 2 // 3 + 2)))  # fits the width
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((size // 2, size // 2), text, font=font)
    draw.rectangle((0, 0, box[2] + size // 2, box[3] + size // 2), fill=(0, 0, 0))
    draw.text((size // 2, size // 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def heatmap_to_dicom_secondary_capture(
    source: Any,
    overlay_rgb: Any,
    series_description: str,
    *,
    patient: Mapping[str, str] | None = None,
    series_number: int = 9901,
    instance_number: int = 1,
    derivation_description: str | None = None,
    burn_in: bool = True,
    manufacturer: str = "cxrexplain",
    software_version: str = "0.1.0",
) -> Any:
    """A derived RGB Secondary Capture (highdicom ``SCImage``) of an overlay, linked to its source image.

    Parameters
    ----------
    source
        The source ``pydicom.Dataset``, or the info dict of :func:`cxrexplain_imageio.dicom_info`
        (``DecodedImage.dicom``), which must hold the Study, Series and SOP Instance UIDs.
    overlay_rgb
        (H, W, 3) uint8 array or PIL RGB image, normally :func:`overlay` at the original geometry.
    series_description
        Series Description (e.g. "cxrexplain RAP Cardiomegaly"); truncated to 64 characters.
    patient
        Patient ID / Name (keys ``patient_id``, ``patient_name``) when ``source`` is an info dict, e.g.
        ``DecodedImage.patient``. Taken from the dataset when ``source`` is one. Only these two are copied:
        a PACS files a derived object under its patient and study, which is the standard behaviour of
        derived objects; nothing else about the patient is written.
    burn_in
        Burn "NOT FOR DIAGNOSTIC USE" into the pixels (Burned In Annotation = YES). Image Comments carries
        the same marking either way.

    Returns
    -------
    pydicom.Dataset
        Same Study Instance UID as the source; new Series and SOP Instance UIDs; Source Image Sequence and
        Referenced Series Sequence point at the source instance.
    """
    import highdicom as hd  # optional dependency: only this function needs it
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if isinstance(source, Dataset):
        info = dicom_info(source)
        link = dicom_patient_link(source)
    else:
        info = dict(source)
        link = dict(patient or {})
    for key in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"):
        if not info.get(key):
            raise InvalidInput(f"the source DICOM has no {key}: cannot link a derived object to it")
    rgb = np.asarray(overlay_rgb.convert("RGB") if isinstance(overlay_rgb, Image.Image) else overlay_rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InvalidInput(f"overlay must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if burn_in:
        rgb = burn_in_marking(rgb)
    spacing = info.get("pixel_spacing")
    same_grid = (rgb.shape[0], rgb.shape[1]) == (info.get("rows"), info.get("columns"))
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=info["study_instance_uid"],
        series_instance_uid=generate_uid(),
        series_number=int(series_number),
        sop_instance_uid=generate_uid(),
        instance_number=int(instance_number),
        manufacturer=manufacturer,
        manufacturer_model_name="cxrexplain explanation service",
        software_versions=software_version,
        series_description=series_description[:64],
        patient_id=link.get("patient_id"),
        patient_name=link.get("patient_name"),
        # highdicom demands an orientation for the PATIENT system; the source's (or none) is set below.
        patient_orientation=("L", "F"),
        pixel_spacing=tuple(spacing) if spacing and same_grid else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    orientation: Sequence[str] | None = info.get("patient_orientation")
    # Patient Orientation is Type 2 in the General Image module: empty when the source does not say.
    sc["PatientOrientation"].value = list(orientation) if orientation and len(orientation) == 2 else None
    sc.BurnedInAnnotation = "YES" if burn_in else "NO"
    sc.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. Machine-generated explanation heatmap overlay."
    sc.DerivationDescription = (
        derivation_description or "Explanation heatmap of an AI classifier overlaid on the source radiograph"
    )[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = info["sop_class_uid"]
    ref.ReferencedSOPInstanceUID = info["sop_instance_uid"]
    sc.SourceImageSequence = [ref]  # General Reference module
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = info["series_instance_uid"]
    inst = Dataset()
    inst.ReferencedSOPClassUID = info["sop_class_uid"]
    inst.ReferencedSOPInstanceUID = info["sop_instance_uid"]
    series_ref.ReferencedInstanceSequence = [inst]
    sc.ReferencedSeriesSequence = [series_ref]  # Common Instance Reference module
    return sc
