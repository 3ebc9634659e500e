"""FastDecoder against segment-anything's MaskDecoder, on the same weights and prompts."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import Sam

from predictor.decoder import FastDecoder
from predictor.registry import build_sam

# bf16 against fp32 (stated tolerance): at least 99% of low-resolution mask pixels on the same side
# of the threshold, and IoU predictions within 0.02. tiny's random weights give logits below 1, the
# hardest case for bf16's 8-bit mantissa; trained weights give larger margins.
BF16_PIXEL_AGREEMENT = 0.99
BF16_IOU_ATOL = 0.02


@pytest.fixture(scope="module")
def sam() -> Sam:
    torch.manual_seed(7)
    return build_sam("tiny").eval()


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    torch.manual_seed(8)
    return torch.randn(1, 256, 64, 64)


def prompts(kind: str, count: int = 6) -> dict[str, object]:
    generator = torch.Generator().manual_seed(9)
    if kind == "points":
        coords = torch.rand(count, 1, 2, generator=generator) * 1024
        return {"points": (coords, torch.ones(count, 1, dtype=torch.int)), "boxes": None}
    if kind == "points+labels":
        coords = torch.rand(count, 3, 2, generator=generator) * 1024
        labels = torch.tensor([[1, 0, 1]] * count, dtype=torch.int)
        return {"points": (coords, labels), "boxes": None}
    corners = torch.rand(count, 2, 2, generator=generator) * 1024
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    if kind == "boxes":
        return {"points": None, "boxes": boxes}
    coords = torch.rand(count, 1, 2, generator=generator) * 1024
    return {"points": (coords, torch.ones(count, 1, dtype=torch.int)), "boxes": boxes}


def reference(sam: Sam, features: torch.Tensor, kind: str, multimask: bool = True):
    sparse, dense = sam.prompt_encoder(masks=None, **prompts(kind))
    masks, iou = sam.mask_decoder(features, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
    return sparse, masks, iou


@pytest.mark.parametrize("kind", ["points", "points+labels", "boxes", "points+boxes"])
@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_fp32_matches_mask_decoder(sam, features, kind, multimask):
    sparse, masks, iou = reference(sam, features, kind, multimask)
    decoder = FastDecoder(sam)
    fast_masks, fast_iou = decoder(decoder.context(features), sparse, multimask)
    assert fast_masks.shape == masks.shape == (6, 3 if multimask else 1, 256, 256)
    torch.testing.assert_close(fast_masks, masks, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_iou, iou, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_one_context_serves_every_batch(sam, features):
    sparse, masks, _ = reference(sam, features, "points")
    decoder = FastDecoder(sam)
    context = decoder.context(features)
    first, _ = decoder(context, sparse[:2], True)
    rest, _ = decoder(context, sparse[2:], True)
    torch.testing.assert_close(torch.cat([first, rest]), masks, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_bf16_stays_within_tolerance_of_fp32(sam, features):
    sparse, masks, iou = reference(sam, features, "points")
    decoder = FastDecoder(sam, torch.bfloat16)
    fast_masks, fast_iou = decoder(decoder.context(features), sparse, True)
    assert fast_masks.dtype == torch.float32  # logits come back as fp32 for upsampling
    agreement = ((fast_masks > 0) == (masks > 0)).float().mean().item()
    assert agreement >= BF16_PIXEL_AGREEMENT
    torch.testing.assert_close(fast_iou, iou, atol=BF16_IOU_ATOL, rtol=0)
    # ...and bf16 is really in use: the outputs are not bit-identical to fp32.
    assert not torch.equal(fast_masks, masks)
    assert next(decoder.decoder.parameters()).dtype == torch.bfloat16
    assert next(sam.mask_decoder.parameters()).dtype == torch.float32  # the model itself is untouched


@pytest.mark.slow
@torch.no_grad()
def test_compiled_decoder_matches_eager(sam, features, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    sparse, masks, _ = reference(sam, features, "points", True)
    decoder = FastDecoder(sam)
    compiled = torch.compile(lambda context, points: decoder(context, points, True), dynamic=False)
    out, _ = compiled(decoder.context(features), sparse)
    torch.testing.assert_close(out, masks, atol=1e-4, rtol=1e-3)
