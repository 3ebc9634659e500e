from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from samdrop.errors import ImageTooLarge, InvalidImage
from samdrop.images import decode_image, is_image_name
from tests.helpers import encode

LIMIT = 10_000_000


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_becomes_rgb_uint8(mode):
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        image = Image.fromarray((rng.random((20, 30)) * 4000).astype(np.uint16)).convert(mode)
    else:
        image = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F") else "PNG"
    out = decode_image(encode(image, fmt), max_pixels=LIMIT)
    assert out.shape == (20, 30, 3)
    assert out.dtype == np.uint8


def test_sixteen_bit_range_is_stretched_not_clipped():
    ramp = np.linspace(1000, 3000, 50 * 4, dtype=np.uint16).reshape(4, 50)
    out = decode_image(encode(Image.fromarray(ramp), "TIFF"), max_pixels=LIMIT)
    assert out[..., 0].min() == 0
    assert out[..., 0].max() == 255


def test_exif_orientation_gives_displayed_size():
    image = Image.fromarray(np.zeros((20, 50, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(encode(image, "JPEG", exif=exif), max_pixels=LIMIT)
    assert out.shape == (50, 20, 3)


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=LIMIT)
    assert (out == 255).all()


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", encode(np.zeros((40, 40, 3), np.uint8), "JPEG")[:60]],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_bad_bytes_are_invalid_image(data):
    with pytest.raises(InvalidImage) as info:
        decode_image(data, max_pixels=LIMIT, name="upload.jpg")
    assert "upload.jpg" in info.value.message


def test_pixel_cap_refuses_before_decoding():
    data = encode(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(ImageTooLarge, match="SAMDROP_MAX_IMAGE_PIXELS"):
        decode_image(data, max_pixels=1_000_000)


def test_image_names():
    assert is_image_name("a/b/C.JPG")
    assert is_image_name("x.webp")
    assert not is_image_name("notes.txt")
    assert not is_image_name("batches/1/_READY")


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert out.shape == (8, 8, 3)
