"""Automatic masks: segment-anything's algorithm without the work that cannot change its result.

:class:`FastMaskGenerator` keeps ``SamAutomaticMaskGenerator``'s grid, crop layers, thresholds,
NMS and outputs, and changes how the work is done:

* the decoder is :class:`~predictor.decoder.FastDecoder`: the image's half of the decoder runs once
  per crop, not once per point, optionally compiled, in the engine's precision;
* point batches have a fixed size (the last one is padded), so kernels and compiled graphs are reused;
* candidates are filtered by predicted IoU *before* they are upsampled to full resolution; stability
  scores, binarisation, boxes and RLEs are computed for survivors only, in chunks of bounded memory;
* masks become COCO RLE in pycocotools' C code (the reference builds uncompressed RLE in Python and
  deep-copies it batch after batch), and NMS is torchvision's C++ kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    calculate_stability_score,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops.boxes import batched_nms

from predictor.decoder import DecoderContext, FastDecoder

# Float pixels (the 1024x1024 intermediate plus the full-resolution logits) upsampled at once. On a
# quiet CPU, chunks of 2-4 masks (intermediate in cache) run 2x faster than chunks of 64; but each
# chunk costs a dozen multi-threaded ops, and when the cores are shared (the local stack, a busy
# node) every op waits for its threads: 1-mask chunks then ran 10x slower than 16-mask ones. About
# 12 masks of 512x512 per chunk keeps most of the cache gain and few ops. A GPU wants fewer, larger
# launches. Either way memory stays bounded.
UPSAMPLE_BUDGET_PIXELS = {"cpu": 16 * 1024 * 1024, "cuda": 256 * 1024 * 1024}

# (features 1xCx64x64, input_size (H, W) after resize) for an HxWx3 uint8 crop.
EmbedCrop = Callable[[np.ndarray], tuple[torch.Tensor, tuple[int, int]]]
# The decoder call: (context, sparse BxSxC) -> (low-res logits Bx3x256x256, IoU predictions Bx3).
DecodePoints = Callable[[DecoderContext, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def encode_coco(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO RLEs (bytes counts) of ``NxHxW bool`` masks, encoded in C."""
    if len(masks) == 0:
        return []
    # NxWxH C-contiguous is HxWxN Fortran-ordered: what pycocotools wants, without another copy.
    fortran = masks.transpose(1, 2).to(torch.uint8).contiguous().cpu().numpy().transpose(2, 1, 0)
    return list(mask_utils.encode(fortran))


class FastMaskGenerator(SamAutomaticMaskGenerator):
    """Same algorithm and records as the reference generator (``output_mode='coco_rle'``), faster.

    ``embed`` gives a crop's encoder features (the engine's cache and batched encoder);
    ``decoder`` and ``decode`` run the mask decoder (``decode`` may be a compiled ``decoder``).
    """

    def __init__(
        self,
        model: Sam,
        *,
        embed: EmbedCrop,
        decoder: FastDecoder,
        decode: DecodePoints | None = None,
        **params: Any,
    ) -> None:
        super().__init__(model, output_mode="coco_rle", **params)
        self._embed = embed
        self._decoder = decoder
        self._decode = decode or (lambda context, sparse: decoder(context, sparse, True))
        self._transform = ResizeLongestSide(model.image_encoder.img_size)
        self.counts = {"candidates": 0, "upsampled": 0, "kept": 0}
        self.timings_ms = {"encoder": 0.0, "decoder": 0.0, "masks": 0.0}

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Records like the reference's: ``segmentation`` (COCO RLE, str counts), ``area``, ``bbox``
        (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``."""
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        records = []
        for idx, rle in enumerate(data["rles"]):
            records.append(
                {
                    "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                    "area": int(mask_utils.area(rle)),
                    "bbox": box_xyxy_to_xywh(data["boxes"][idx]).tolist(),
                    "predicted_iou": data["iou_preds"][idx].item(),
                    "point_coords": [data["points"][idx].tolist()],
                    "stability_score": data["stability_score"][idx].item(),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][idx]).tolist(),
                }
            )
        return records

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, ...],
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        started = time.perf_counter()
        features, input_size = self._embed(crop)
        self._clock("encoder", started)
        context = self._decoder.context(features)
        points = self.point_grids[crop_layer_idx] * np.array(crop_size)[None, ::-1]

        parts: list[dict[str, Any]] = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            parts.append(self._process_points(batch, context, input_size, crop_size, crop_box, orig_size))
        return crop_data(parts, crop_box, self.box_nms_thresh)

    def _process_points(
        self,
        points: np.ndarray,
        context: DecoderContext,
        input_size: tuple[int, int],
        crop_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> dict[str, Any]:
        """Candidates of one point batch (``Px2`` XY in the crop's pixels) that pass every filter."""
        device = self.predictor.model.device
        count = len(points)
        padded = np.concatenate([points, np.repeat(points[-1:], self.points_per_batch - count, axis=0)])
        coords = torch.as_tensor(self._transform.apply_coords(padded, crop_size), dtype=torch.float)
        coords = coords.to(device)[:, None, :]
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=device)
        sparse, _ = self.predictor.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        started = time.perf_counter()
        low_res, iou_preds = self._decode(context, sparse)
        low_res, iou_preds = low_res[:count].flatten(0, 1), iou_preds[:count].flatten(0, 1)
        started = self._clock("decoder", started)
        point_rows = torch.as_tensor(points.repeat(3, axis=0))
        self.counts["candidates"] += len(iou_preds)

        index = iou_passed(iou_preds, self.pred_iou_thresh)
        self.counts["upsampled"] += len(index)
        height, width = crop_size
        out = kept_candidates(
            index,
            iou_preds,
            point_rows,
            lambda rows: upsample(low_res[rows], input_size, (height, width)),
            pixels_each=1024 * 1024 + height * width,  # the padded square, then the crop
            threshold=self.predictor.model.mask_threshold,
            stability_score_offset=self.stability_score_offset,
            stability_score_thresh=self.stability_score_thresh,
            crop_box=crop_box,
            orig_size=orig_size,
        )
        self.counts["kept"] += len(out["rles"])
        self._clock("masks", started)
        return out

    def _clock(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.timings_ms[stage] += (now - started) * 1000
        return now

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """The reference's hole/island removal, on COCO RLEs."""
        if len(mask_data["rles"]) == 0:
            return mask_data
        new_masks, scores = [], []
        for rle in mask_data["rles"]:
            mask = mask_utils.decode(rle).astype(bool)
            mask, holes_changed = remove_small_regions(mask, min_area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(torch.as_tensor(mask).unsqueeze(0))
            # Unchanged masks score 1 so NMS prefers them over ones that needed cleaning.
            scores.append(float(not (holes_changed or islands_changed)))
        masks = torch.cat(new_masks, dim=0)
        boxes = batched_mask_to_box(masks)
        keep = batched_nms(
            boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), iou_threshold=nms_thresh
        )
        for i in keep:
            if scores[i] == 0.0:
                mask_data["rles"][i] = encode_coco(masks[i].unsqueeze(0))[0]
                mask_data["boxes"][i] = boxes[i]
        mask_data.filter(keep)
        return mask_data


CANDIDATE_KEYS = ("boxes", "iou_preds", "points", "stability_score")  # MaskData's tensors


def crop_data(parts: Sequence[dict[str, Any]], crop_box: list[int], box_nms_thresh: float) -> MaskData:
    """One crop's candidates (:func:`kept_candidates` per point batch) joined, de-duplicated by the
    reference's NMS (same scores and threshold) and moved from crop to image coordinates."""
    data = MaskData(
        rles=[rle for part in parts for rle in part["rles"]],
        **{key: torch.cat([part[key] for part in parts]) for key in CANDIDATE_KEYS},
    )
    keep = batched_nms(
        data["boxes"].float(),
        data["iou_preds"],
        torch.zeros(len(data["boxes"])),
        iou_threshold=box_nms_thresh,
    )
    data.filter(keep)
    data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = uncrop_points(data["points"], crop_box)
    data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))])
    return data


def iou_passed(iou_preds: torch.Tensor, pred_iou_thresh: float) -> torch.Tensor:
    """Indexes of the candidates over ``pred_iou_thresh`` (all when it is 0): a filter that needs
    no pixels, so it runs before anything is upsampled."""
    if pred_iou_thresh <= 0.0:
        return torch.arange(len(iou_preds), device=iou_preds.device)
    return torch.nonzero(iou_preds > pred_iou_thresh)[:, 0]


def kept_candidates(
    index: torch.Tensor,
    iou_preds: torch.Tensor,
    point_rows: torch.Tensor,
    upsampled: Callable[[torch.Tensor], torch.Tensor],
    *,
    pixels_each: int,
    threshold: float,
    stability_score_offset: float,
    stability_score_thresh: float,
    crop_box: list[int],
    orig_size: tuple[int, ...],
) -> dict[str, Any]:
    """The candidates ``index`` (rows of ``iou_preds`` past the IoU filter) that pass the stability
    and crop-edge filters, upsampled ``chunk`` at a time by ``upsampled(rows)`` (``NxHxW`` float logits
    at the crop's size): their RLEs at ``orig_size`` and the :data:`CANDIDATE_KEYS` tensors (on CPU).
    ``pixels_each``: float pixels one candidate's upsampling holds, against the device's budget."""
    budget = UPSAMPLE_BUDGET_PIXELS.get(iou_preds.device.type, UPSAMPLE_BUDGET_PIXELS["cpu"])
    chunk = max(1, budget // pixels_each)
    out: dict[str, Any] = {"rles": [], **{key: [] for key in CANDIDATE_KEYS}}
    for start in range(0, len(index), chunk):
        rows = index[start : start + chunk]
        logits = upsampled(rows)
        stability = calculate_stability_score(logits, threshold, stability_score_offset)
        if stability_score_thresh > 0.0:
            passed = stability >= stability_score_thresh
            rows, logits, stability = rows[passed], logits[passed], stability[passed]
        masks = logits > threshold
        del logits
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
        rows, masks, boxes, stability = rows[inside], masks[inside], boxes[inside], stability[inside]
        out["rles"].extend(encode_coco(uncrop_masks(masks, crop_box, *orig_size)))
        out["boxes"].append(boxes.cpu())
        out["iou_preds"].append(iou_preds[rows].cpu())
        out["points"].append(point_rows[rows.cpu()])
        out["stability_score"].append(stability.cpu())
    for key in CANDIDATE_KEYS:
        out[key] = torch.cat(out[key]) if out[key] else empty_candidates(key)
    return out


def upsample(low_res: torch.Tensor, input_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``Sam.postprocess_masks`` for ``Nx256x256`` logits: to the padded 1024 square, crop the
    resized image, then to ``size`` (H, W). Returns ``NxHxW`` float32 logits."""
    logits = F.interpolate(low_res[:, None].float(), (1024, 1024), mode="bilinear", align_corners=False)
    logits = logits[..., : input_size[0], : input_size[1]]
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)[:, 0]


def empty_candidates(key: str) -> torch.Tensor:
    """No candidates: the empty tensor of ``key`` (one of :data:`CANDIDATE_KEYS`)."""
    if key == "boxes":
        return torch.zeros((0, 4), dtype=torch.long)
    if key == "points":
        return torch.zeros((0, 2), dtype=torch.float64)
    return torch.zeros((0,))
