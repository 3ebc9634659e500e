"""SAM 2.1 automatic masks: Meta's ``SAM2AutomaticMaskGenerator`` on samdrop's engine.

Same grid, crop layers, thresholds, NMS and records as Meta's generator, including what sets it
apart from SAM 1's: ``mask_threshold`` (binarisation and stability), ``multimask_output`` and the
optional mask-to-mask refinement (``use_m2m``: each candidate decoded once more with its own low-res
logits, clamped to ±32, as the mask prompt, single-mask output). Its default ``pred_iou_thresh``
is 0.8 (SAM 1's 0.88); a request that names one gets its own.

Work saved without changing the result, as :mod:`predictor.automatic` does for SAM 1: crops are
embedded through the engine's cache; the predicted-IoU filter runs before any upsampling;
upsampling, stability, boxes and RLEs run on survivors only, in chunks of bounded memory; RLEs are
encoded in C. The grid, crop, NMS and small-region helpers are segment-anything's (Meta's SAM 2
ships identical copies) and :mod:`predictor.automatic`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import (
    MaskData,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    generate_crop_boxes,
)
from torchvision.ops.boxes import batched_nms, box_area

from predictor.automatic import (
    FastMaskGenerator,
    crop_data,
    iou_passed,
    kept_candidates,
)
from samdrop.models import PRED_IOU_THRESH

# Meta's SAM2AutomaticMaskGenerator defaults where they differ from SAM 1's.
SAM2_PRED_IOU_THRESH = PRED_IOU_THRESH["sam2.1"]
M2M_LOGIT_CLAMP = 32.0  # SAM2ImagePredictor clamps low-res logits before they become mask prompts

# (crop HxWx3 uint8) -> the crop's embedding, opaque to the generator.
EmbedCrop = Callable[[np.ndarray], Any]
# (embedding, points Bx1x2 in model-input pixels, low-res mask prompts Bx1xhxw or None, multimask,
#  min_iou: prompts with no IoU over it may come back with zero logits, or None)
#   -> (low-res logits BxMxhxw float32, predicted IoU BxM float32)
DecodePoints = Callable[
    [Any, torch.Tensor, torch.Tensor | None, bool, float | None], tuple[torch.Tensor, torch.Tensor]
]


class Sam2MaskGenerator:
    """Automatic masks for one image; ``generate`` returns records like segment-anything's
    (``segmentation`` COCO RLE with str counts, ``area``, ``bbox`` XYWH, ``predicted_iou``,
    ``point_coords``, ``stability_score``, ``crop_box``)."""

    def __init__(
        self,
        *,
        embed: EmbedCrop,
        decode: DecodePoints,
        input_size: int,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = SAM2_PRED_IOU_THRESH,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        use_m2m: bool = False,
        multimask_output: bool = True,
    ) -> None:
        self._embed = embed
        self._decode = decode
        self.input_size = input_size
        self.point_grids = build_all_layer_point_grids(
            points_per_side, crop_n_layers, crop_n_points_downscale_factor
        )
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.mask_threshold = mask_threshold
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output
        self.counts = {"candidates": 0, "upsampled": 0, "kept": 0}
        self.timings_ms = {"encoder": 0.0, "decoder": 0.0, "masks": 0.0}

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Records for an ``HxWx3 uint8`` RGB image."""
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = FastMaskGenerator.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return [
            {
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
            for i, rle in enumerate(data["rles"])
        ]

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))
        if len(crop_boxes) > 1 and len(data["rles"]):
            # Between crops, prefer the mask from the smaller crop (Meta's rule).
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(
                data["boxes"].float(), scores, torch.zeros_like(data["boxes"][:, 0]), self.crop_nms_thresh
            )
            data.filter(keep)
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer_idx: int, orig_size: tuple[int, ...]
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        started = time.perf_counter()
        embedding = self._embed(crop)
        self._clock("encoder", started)
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        parts = [
            self._process_batch(
                embedding, points[i : i + self.points_per_batch], crop_size, crop_box, orig_size
            )
            for i in range(0, len(points), self.points_per_batch)
        ]
        return crop_data(parts, crop_box, self.box_nms_thresh)

    def _process_batch(
        self,
        embedding: Any,
        points: np.ndarray,
        crop_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> dict[str, Any]:
        """Candidates of one point batch (``Px2`` XY in crop pixels) that pass every filter."""
        started = time.perf_counter()
        scale = np.array([self.input_size / crop_size[1], self.input_size / crop_size[0]])
        coords = torch.as_tensor(points * scale, dtype=torch.float)[:, None, :]
        # With m2m every candidate is refined before the IoU filter (Meta's order): all need logits.
        low_res, iou_preds = self._decode(
            embedding, coords, None, self.multimask_output, None if self.use_m2m else self._min_iou
        )
        per_point = low_res.shape[1]
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        point_rows = torch.as_tensor(points).repeat_interleave(per_point, dim=0)
        if self.use_m2m:
            low_res, iou_preds = self._refine(embedding, coords.repeat_interleave(per_point, dim=0), low_res)
        started = self._clock("decoder", started)
        self.counts["candidates"] += len(iou_preds)

        index = iou_passed(iou_preds, self.pred_iou_thresh)
        self.counts["upsampled"] += len(index)
        height, width = crop_size
        out = kept_candidates(
            index,
            iou_preds,
            point_rows,
            lambda rows: F.interpolate(
                low_res[rows][:, None], (height, width), mode="bilinear", align_corners=False
            )[:, 0],
            pixels_each=height * width,
            threshold=self.mask_threshold,
            stability_score_offset=self.stability_score_offset,
            stability_score_thresh=self.stability_score_thresh,
            crop_box=crop_box,
            orig_size=orig_size,
        )
        self.counts["kept"] += len(out["rles"])
        self._clock("masks", started)
        return out

    def _refine(
        self, embedding: Any, coords: torch.Tensor, low_res: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta's ``refine_with_m2m``: each candidate's own logits as its mask prompt, one mask out."""
        masks, ious = [], []
        for start in range(0, len(coords), self.points_per_batch):
            prompt = low_res[start : start + self.points_per_batch].clamp(-M2M_LOGIT_CLAMP, M2M_LOGIT_CLAMP)
            refined, iou = self._decode(
                embedding,
                coords[start : start + self.points_per_batch],
                prompt[:, None],
                False,
                self._min_iou,
            )
            masks.append(refined[:, 0])
            ious.append(iou[:, 0])
        return torch.cat(masks), torch.cat(ious)

    @property
    def _min_iou(self) -> float | None:
        """What the decoder may skip upscaling under: ``pred_iou_thresh`` when it filters."""
        return self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None

    def _clock(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.timings_ms[stage] += (now - started) * 1000
        return now
