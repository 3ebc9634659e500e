from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from samdrop import masks as m


@pytest.fixture
def blob() -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:20, 10:40] = True
    mask[25:30, 2:5] = True
    mask |= rng.random(mask.shape) > 0.97
    return mask


def test_rle_round_trip(blob):
    rle = m.mask_to_rle(blob)
    assert rle["size"] == [37, 53]
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(m.rle_to_mask(rle), blob)


def test_rle_of_empty_and_full_masks():
    for mask in (np.zeros((4, 6), bool), np.ones((4, 6), bool)):
        np.testing.assert_array_equal(m.rle_to_mask(m.mask_to_rle(mask)), mask)


def test_png_round_trip_is_binary_L_at_full_size(blob):
    data = m.mask_to_png(blob)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        assert image.size == (53, 37)
        assert set(np.unique(np.asarray(image))) <= {0, 255}
    np.testing.assert_array_equal(m.png_to_mask(data), blob)


def test_png_mode_1_is_read_too(blob):
    buffer = io.BytesIO()
    Image.fromarray(blob).convert("1").save(buffer, format="PNG")
    np.testing.assert_array_equal(m.png_to_mask(buffer.getvalue()), blob)


def test_mask_box_is_inclusive_xyxy(blob):
    only = np.zeros((10, 10), bool)
    only[2:5, 3:8] = True
    assert m.mask_box(only) == [3, 2, 7, 4]
    assert m.mask_box(np.zeros((3, 3), bool)) == [0, 0, 0, 0]


def test_overlay_tints_mask_pixels_only():
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:30] = True
    overlay = np.asarray(m.render_overlay(image, [mask], max_side=None))
    assert overlay.shape == image.shape
    assert (overlay[0, 0] == 100).all()
    assert not (overlay[20, 20] == 100).all()
    data = m.overlay_jpeg(image, [mask], note="random weights")
    assert data[:2] == b"\xff\xd8"


def test_overlay_shrinks_large_images():
    image = np.zeros((300, 2000, 3), np.uint8)
    assert max(m.render_overlay(image, [], max_side=500).size) == 500


def test_overlay_matches_a_plain_float_blend_exactly() -> None:
    """The bounding-box integer blend paints the same pixels as blending the whole image in float
    (masks at the image's edges, overlapping, speckled and empty included)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    masks = [rng.random((61, 83)) > 0.5, np.zeros((61, 83), bool), np.zeros((61, 83), bool)]
    masks[1][0:20, 60:83] = True
    masks[2][30:61, 0:25] = True
    masks.append(np.zeros((61, 83), bool))
    expected = image.astype(np.float32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for rank, index in enumerate(order):
        mask, colour = masks[index], m.PALETTE[rank % len(m.PALETTE)].astype(np.float32)
        expected[mask] = expected[mask] * 0.5 + colour * 0.5
        expected[mask & ~m._erode(mask)] = colour
    overlay = np.asarray(m.render_overlay(image, masks, max_side=None))
    np.testing.assert_array_equal(overlay, expected.astype(np.uint8))


@pytest.mark.parametrize("shape", [(120, 400), (12, 30)])  # the note whole, and clipped by a small image
def test_overlay_note_is_the_text_drawn_on_a_black_box(shape: tuple[int, int]) -> None:
    """The note is pasted from a patch rendered once per text: the same pixels as drawing it
    straight onto each overlay, and nothing outside its box changes."""
    image = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    note = "RANDOM WEIGHTS: masks are not meaningful"
    expected = Image.fromarray(image)
    draw = ImageDraw.Draw(expected)
    box = draw.textbbox((4, 4), note)
    draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 4), note, fill=(255, 255, 0))
    for _ in range(2):  # drawn, then from the cache
        overlay = np.asarray(m.render_overlay(image, [], max_side=None, note=note))
        np.testing.assert_array_equal(overlay, np.asarray(expected))
    assert (overlay[box[3] + 4 :] == image[box[3] + 4 :]).all()
