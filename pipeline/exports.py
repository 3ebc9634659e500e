"""A batch's annotation exports, built from its images' ``masks.json`` (docs/design.md "Bucket layout").

* ``annotations.coco.json``: a COCO instances file (``pycocotools.coco.COCO`` loads it; CVAT, Label
  Studio and FiftyOne import it): one image per succeeded input (``file_name`` relative to the
  batch folder), one annotation per mask (COCO RLE ``segmentation``, ``bbox`` XYWH px, ``area`` px,
  ``score``), one category per label the prompts named (a batch's ``_READY`` ``text`` concepts
  first, in their order, each even without masks), ``object`` for masks without one.
* ``yolo/<file stem>.txt`` + ``yolo/data.yaml`` (``_READY`` ``"outputs": ["yolo"]``): YOLO-seg
  labels, one line per outer polygon ring, ``class x1 y1 x2 y2 ...`` normalised to [0, 1] by the
  image's width and height (holes cannot be expressed in YOLO-seg and are left out); class ``i`` is
  COCO category ``i + 1``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from samdrop.documents import JsonObject, MasksDocument, now_iso
from samdrop.masks import rle_to_mask

DEFAULT_CATEGORY = "object"
COCO_FILE = "annotations.coco.json"
YOLO_FOLDER = "yolo/"
YOLO_DECIMALS = 6  # normalised coordinates: 1e-6 of a 20,000-px side is 0.02 px


@dataclass(frozen=True)
class ExportImage:
    """One succeeded input: ``file`` relative to the batch folder, and its masks document."""

    file: str
    doc: MasksDocument


def categories(images: Sequence[ExportImage], concepts: Sequence[str] = ()) -> list[str]:
    """Category names in a stable order: the batch's ``concepts`` as given (each one, even if it
    found nothing), then the other labels used, sorted, then ``object`` if a mask has none."""
    named = {m.label for image in images for m in image.doc.masks if m.label is not None}
    unnamed = any(m.label is None for image in images for m in image.doc.masks)
    known = list(dict.fromkeys(concepts))
    rest = sorted(named - set(known))
    return known + rest + ([DEFAULT_CATEGORY] if unnamed or not (known or named) else [])


def label_counts(images: Sequence[ExportImage], concepts: Sequence[str] = ()) -> dict[str, int]:
    """Masks per category of :func:`categories` (in its order; a concept that found nothing: 0)."""
    counts = dict.fromkeys(categories(images, concepts), 0)
    for image in images:
        for mask in image.doc.masks:
            counts[mask.label or DEFAULT_CATEGORY] += 1
    return counts


def coco_instances(
    images: Sequence[ExportImage], *, description: str, concepts: Sequence[str] = ()
) -> JsonObject:
    """The COCO instances document of ``images`` (ids count from 1, in the order given; categories
    by :func:`categories`)."""
    names = categories(images, concepts)
    category_id = {name: index + 1 for index, name in enumerate(names)}
    coco_images: list[JsonObject] = []
    annotations: list[JsonObject] = []
    for image_id, image in enumerate(images, start=1):
        doc = image.doc
        coco_images.append(
            {"id": image_id, "file_name": image.file, "width": doc.width, "height": doc.height}
        )
        for mask in doc.masks:
            x0, y0, x1, y1 = mask.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[mask.label or DEFAULT_CATEGORY],
                    "segmentation": dict(mask.rle),
                    "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1] if mask.area else [0, 0, 0, 0],
                    "area": mask.area,
                    "iscrowd": 0,
                    "score": round(mask.score, 4),
                }
            )
    return {
        "info": {"description": description, "date_created": now_iso()},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": category_id[name], "name": name, "supercategory": ""} for name in names],
    }


def yolo_label_name(file: str) -> str:
    """``yolo/a/b.txt`` for ``a/b.jpg`` (the image's path, its extension replaced)."""
    stem, _ = posixpath.splitext(file)
    return f"{YOLO_FOLDER}{stem}.txt"


def yolo_labels(image: ExportImage, names: Sequence[str]) -> str:
    """One image's YOLO-seg label file: ``class x1 y1 ... xn yn`` per outer ring, normalised."""
    from predictor import mask_polygons  # OpenCV: only when YOLO labels are asked for

    class_of = {name: index for index, name in enumerate(names)}
    lines = []
    doc = image.doc
    for mask in doc.masks:
        polygons = mask.polygons or mask_polygons(rle_to_mask(mask.rle))
        cls = class_of[mask.label or DEFAULT_CATEGORY]
        for ring in polygons["outer"]:
            coords = [
                f"{min(1.0, max(0.0, value / (doc.width if i % 2 == 0 else doc.height))):.{YOLO_DECIMALS}f}"
                for i, value in enumerate(ring)
            ]
            lines.append(" ".join([str(cls), *coords]))
    return "\n".join(lines) + ("\n" if lines else "")


def yolo_data_yaml(names: Sequence[str], *, batch_uri: str) -> str:
    """``data.yaml`` for Ultralytics: the class names; images are the batch folder's inputs."""
    header = (
        f"# YOLO-seg labels written by samdrop for {batch_uri}\n"
        "# labels: yolo/<image path without extension>.txt, one line per polygon\n"
    )
    body = {"path": batch_uri, "nc": len(names), "names": dict(enumerate(names))}
    return header + str(yaml.safe_dump(body, sort_keys=False, allow_unicode=True))


def parse_yolo_line(line: str, width: int, height: int) -> tuple[int, list[float]]:
    """Inverse of one label line: ``(class, [x1, y1, ...] px)``."""
    cls, *values = line.split()
    ring = [float(v) * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
    return int(cls), ring
