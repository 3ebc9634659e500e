"""Automatic masks without segment-anything's Python-level RLE bottleneck.

``SamAutomaticMaskGenerator`` turns every candidate mask into an *uncompressed* RLE in Python
(``mask_to_rle_pytorch``) and deep-copies those lists as batches are concatenated; on a CPU that is
most of the time spent. :class:`FastMaskGenerator` keeps the reference algorithm (same grid, filters,
NMS and thresholds) but encodes candidates straight to COCO RLE with pycocotools' C code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    calculate_stability_score,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_masks,
)
from torchvision.ops.boxes import batched_nms


def encode_coco(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO RLEs (bytes counts) of ``NxHxW bool`` masks, encoded in C."""
    if len(masks) == 0:
        return []
    # NxWxH C-contiguous is HxWxN Fortran-ordered: what pycocotools wants, without another copy.
    fortran = masks.transpose(1, 2).to(torch.uint8).contiguous().cpu().numpy().transpose(2, 1, 0)
    return list(mask_utils.encode(fortran))


class FastMaskGenerator(SamAutomaticMaskGenerator):
    """Same results as the reference generator (``output_mode='coco_rle'``), encoded in C."""

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

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        # The reference's _process_batch, but with COCO RLE from pycocotools at the end.
        orig_h, orig_w = orig_size
        transformed = self.predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed, device=self.predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        masks, iou_preds, _ = self.predictor.predict_torch(
            in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True
        )
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)),
        )
        del masks
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.predictor.model.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > self.predictor.model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["rles"] = encode_coco(uncrop_masks(data["masks"], crop_box, orig_h, orig_w))
        del data["masks"]
        return data

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
