"""Decoding uploaded bytes into the RGB array SAM expects, with the guards bad input needs."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from samdrop.errors import ImageTooLarge, InvalidImage

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".ppm", ".pgm",
)  # fmt: skip


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image file extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_image_object(name: str, content_type: str | None) -> bool:
    """True when an uploaded object looks like an image: an ``image/*`` content type or an image
    file extension. The one check the function (single uploads) and the pipeline (batches) share."""
    main_type = (content_type or "").split(";")[0].strip().lower()
    return main_type.startswith("image/") or is_image_name(name)


def decode_image(data: bytes, *, max_pixels: int, name: str = "image") -> np.ndarray:
    """Decode image bytes to an ``HxWx3 uint8`` RGB array as the image is *displayed*.

    EXIF orientation is applied (so masks line up with what viewers show); any mode or bit depth
    (L, LA, P, RGBA, I;16, I, F, CMYK …) becomes 8-bit RGB; alpha is dropped; only the first frame
    of animations is used. Raises :class:`InvalidImage` for empty or undecodable bytes and
    :class:`ImageTooLarge` above ``max_pixels`` *before* the pixels are decoded.
    """
    if not data:
        raise InvalidImage(f"{name} is empty (0 bytes): upload the image file again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{name} has {width}x{height} = {width * height} pixels, above the limit of "
                    f"{max_pixels} (SAMDROP_MAX_IMAGE_PIXELS): downscale it before uploading"
                )
            image.load()
            displayed: Image.Image = ImageOps.exif_transpose(image) or image
            return _to_rgb(displayed)
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name} was refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage(
            f"{name} is not an image format Pillow can read ({len(data)} bytes starting {data[:8]!r}); "
            "upload a JPEG, PNG, WebP, TIFF, BMP or GIF"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(
            f"{name} could not be decoded as an image ({type(exc).__name__}: {exc}); "
            "supported: anything Pillow opens (JPEG, PNG, WebP, TIFF, BMP, GIF …)"
        ) from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit depth greyscale: stretch its actual range to 0..255 rather than clip.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        grey = scaled.round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Composite on white so transparent regions do not turn into arbitrary colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
