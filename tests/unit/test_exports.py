"""Polygons per mask, labels, and a batch's COCO instances file and YOLO-seg labels."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from pipeline.exports import parse_yolo_line, yolo_data_yaml, yolo_label_name
from pipeline.listing import plan_batch, write_plan
from pipeline.steps import Context, aggregate_step, shard_step
from predictor.instances import parse_instance
from predictor.polygons import POLYGON_TOLERANCE_PX, mask_polygons, with_exports
from samdrop.batches import BatchPaths
from samdrop.documents import MaskRecord
from samdrop.errors import InvalidPrompt
from samdrop.masks import mask_box, mask_to_rle
from samdrop.prompts import check_prompts
from samdrop.settings import Settings

from .pipeline_fakes import BUCKET, RESULTS, TreeStore, png

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET}, io_threads=2)


def _fill(shape: tuple[int, int], outer: list[list[float]], holes: list[list[float]]) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    for ring in outer:
        cv2.fillPoly(canvas, [np.round(np.array(ring).reshape(-1, 2)).astype(np.int32)], 1)
    for ring in holes:
        cv2.fillPoly(canvas, [np.round(np.array(ring).reshape(-1, 2)).astype(np.int32)], 0)
    return canvas.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_polygons_keep_outer_rings_and_holes_apart():
    mask = np.zeros((120, 160), dtype=bool)
    mask[10:90, 20:120] = True  # a frame with a hole ...
    mask[30:60, 50:80] = False
    yy, xx = np.mgrid[:120, :160]
    mask |= (yy - 100) ** 2 + (xx - 140) ** 2 < 12**2  # ... and a separate disc
    polygons = mask_polygons(mask)
    assert len(polygons["outer"]) == 2 and len(polygons["holes"]) == 1
    assert polygons["tolerance_px"] == POLYGON_TOLERANCE_PX
    for ring in polygons["outer"] + polygons["holes"]:
        assert len(ring) >= 6 and len(ring) % 2 == 0
    # The hole ring lies around the hole (pixel centres of its boundary: 29..60 x 49..80).
    hole = np.array(polygons["holes"][0]).reshape(-1, 2)
    assert hole[:, 0].min() >= 49 and hole[:, 0].max() <= 80 and hole[:, 1].min() >= 29
    assert _iou(_fill(mask.shape, polygons["outer"], polygons["holes"]), mask) > 0.95
    # The square's outline needs only its four corners at a 1-px tolerance.
    frame = np.array(polygons["outer"][0 if len(polygons["outer"][0]) == 8 else 1]).reshape(-1, 2)
    assert len(frame) == 4 and set(frame[:, 0]) == {20.0, 119.0}
    assert mask_polygons(np.zeros((5, 5), dtype=bool)) == {"outer": [], "holes": [], "tolerance_px": 1.0}


def test_labels_are_one_for_all_or_one_per_box():
    boxes = [[0, 0, 5, 5], [1, 1, 4, 4]]
    assert (check_prompts({"boxes": boxes, "label": "car"}, where="p") or {})["label"] == ["car"]
    entry = check_prompts({"boxes": boxes, "label": ["car", "tree"]}, where="p") or {}
    assert entry["label"] == ["car", "tree"]
    with pytest.raises(InvalidPrompt, match="3 names for 2 prompts"):
        check_prompts({"boxes": [[0, 0, 5, 5], [1, 1, 4, 4]], "label": ["a", "b", "c"]}, where="p")
    with pytest.raises(InvalidPrompt, match="outputs"):
        check_prompts({"outputs": ["svg"]}, where="p")
    instance = parse_instance(
        {"image": "AAAA", "boxes": [[0, 0, 5, 5]], "label": "car", "outputs": ["polygons"]}
    )
    assert instance.label == ["car"] and instance.outputs == ("polygons",)
    with pytest.raises(InvalidPrompt, match=r"instance\.outputs must be a list"):
        parse_instance({"image": "AAAA", "outputs": "polygons"})

    mask = np.zeros((20, 30), dtype=bool)
    mask[2:9, 3:12] = True
    record = MaskRecord(mask_to_rle(mask), 0.9, mask_box(mask), int(mask.sum()), prompt_index=1)
    (labelled,) = with_exports([record], labels=["car", "tree"], polygons=True)
    assert labelled.label == "tree" and labelled.polygons is not None
    assert MaskRecord.from_json(json.loads(json.dumps(labelled.to_json()))) == labelled


def _batch(store: TreeStore, ready: dict) -> BatchPaths:
    paths = BatchPaths.of(SETTINGS, "b1")
    files = {"a.png": png(96, 64, 1), "sub/b.png": png(80, 120, 2), "c.png": png(64, 64, 3)}
    for name, data in files.items():
        store.put(BUCKET, f"batches/b1/{name}", data, content_type="image/png")
    prompts = {
        "a.png": {"boxes": [[10, 10, 40, 30], [50, 5, 90, 60]], "label": ["car", "tree"]},
        "sub/b.png": {"points": [[20, 20]], "label": "car", "multimask": True},
    }
    store.put(BUCKET, "batches/b1/prompts.json", json.dumps(prompts).encode())
    marker = store.put(BUCKET, "batches/b1/_READY", json.dumps(ready).encode())
    write_plan(paths, plan_batch(paths, marker, store, default_shard_size=8), store)
    return paths


def test_a_batch_writes_a_coco_file_and_yolo_labels(fast_engine, tmp_path: Path):
    store = TreeStore()
    ready = {"amg": {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0}}
    paths = _batch(store, {**ready, "outputs": ["yolo", "polygons"]})
    ctx = Context(SETTINGS, store)
    shard_step(ctx, "b1", BUCKET, 0, engine_factory=lambda s: fast_engine)
    summary, _, _ = aggregate_step(ctx, "b1", BUCKET)
    assert summary["succeeded"] == 3
    manifest = [json.loads(line) for line in store.objects[(RESULTS, paths.manifest)].data.splitlines()]

    coco_file = tmp_path / "annotations.coco.json"
    coco_file.write_bytes(store.objects[(RESULTS, "results/batches/b1/annotations.coco.json")].data)
    coco = COCO(str(coco_file))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == ["a.png", "c.png", "sub/b.png"]
    assert len(coco.getAnnIds()) == sum(line["mask_count"] for line in manifest) > 0
    names = {cat["id"]: cat["name"] for cat in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == ["car", "object", "tree"]
    for image in coco.dataset["images"]:
        doc = store.json(f"results/batches/b1/{image['file_name']}/masks.json")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == doc["mask_count"]
        for ann, record in zip(anns, doc["masks"], strict=True):
            assert (
                coco.annToMask(ann).shape
                == (image["height"], image["width"])
                == (doc["height"], doc["width"])
            )
            assert names[ann["category_id"]] == record.get("label", "object")
            assert ann["area"] == int(coco.annToMask(ann).sum())
        if image["file_name"] == "a.png":
            assert {record["label"] for record in doc["masks"]} == {"car", "tree"}

        # YOLO labels parse back to the masks.json polygons, within the tolerance.
        classes = [name for _, name in sorted(names.items())]
        text = store.objects[(RESULTS, paths.report(yolo_label_name(image["file_name"])))].data.decode()
        lines = text.splitlines()
        expected = [
            (classes.index(record.get("label", "object")), ring)
            for record in doc["masks"]
            for ring in record["polygons"]["outer"]
        ]
        assert len(lines) == len(expected)
        for line, (cls, ring) in zip(lines, expected, strict=True):
            parsed_cls, parsed = parse_yolo_line(line, doc["width"], doc["height"])
            assert parsed_cls == cls and len(parsed) == len(ring)
            assert np.abs(np.array(parsed) - np.array(ring)).max() <= POLYGON_TOLERANCE_PX
    data_yaml = store.objects[(RESULTS, "results/batches/b1/yolo/data.yaml")].data.decode()
    parsed = yaml.safe_load(data_yaml)
    assert (
        parsed["nc"] == 3
        and parsed["names"][0] == "car"
        and parsed["path"] == "gs://samdrop-local/batches/b1/"
    )
    assert summary["exports"]["coco"] == "gs://samdrop-local-results/results/batches/b1/annotations.coco.json"


def test_without_yolo_only_the_coco_file_is_written(fast_engine):
    store = TreeStore()
    _batch(store, {"amg": {"points_per_side": 2}})
    ctx = Context(SETTINGS, store)
    shard_step(ctx, "b1", BUCKET, 0, engine_factory=lambda s: fast_engine)
    summary, _, _ = aggregate_step(ctx, "b1", BUCKET)
    assert set(summary["exports"]) == {"coco"}
    assert not [name for (_, name) in store.objects if "/yolo/" in name]
    doc = store.json("results/batches/b1/a.png/masks.json")
    assert "polygons" not in doc["masks"][0] and doc["masks"][0]["label"] in ("car", "tree")


def test_batch_concepts_are_the_categories_in_order_even_without_masks():
    from types import SimpleNamespace
    from typing import Any, cast

    from pipeline.exports import ExportImage, categories, coco_instances, label_counts

    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 2:6] = True
    record = MaskRecord.from_json(
        {"segmentation": mask_to_rle(mask), "score": 0.9, "box": mask_box(mask), "area": 12, "label": "tree"}
    )
    doc = SimpleNamespace(width=8, height=8, masks=[record])  # what the exports read of a masks.json
    images = [ExportImage("a.png", cast(Any, doc))]
    assert categories(images, ["tree", "car"]) == ["tree", "car"]
    assert categories(images, ["zebra", "tree"]) == ["zebra", "tree"]
    assert categories(images) == ["tree"]
    coco = coco_instances(images, description="t", concepts=["zebra", "tree"])
    assert [c["name"] for c in coco["categories"]] == ["zebra", "tree"]
    assert coco["annotations"][0]["category_id"] == 2
    assert label_counts(images, ["zebra", "tree"]) == {"zebra": 0, "tree": 1}


def test_data_yaml_keeps_every_class_name_as_written():
    names = ["car", "yes", "1", 'a "quoted": name #1', "ünïcode", "- dash"]
    text = yolo_data_yaml(names, batch_uri="gs://b/batches/x: y/")
    assert text.startswith("# YOLO-seg labels written by samdrop for gs://b/batches/x: y/\n")
    assert yaml.safe_load(text) == {"path": "gs://b/batches/x: y/", "nc": 6, "names": dict(enumerate(names))}
