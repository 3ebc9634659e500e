"""Masks land on the objects, through the real local stack with its default model on a machine
without weights (``auto`` → ``classic``): synthetic scenes with known objects go up as EXIF-rotated
JPEG, CMYK JPEG, 16-bit PNG, RGBA PNG and WebP, with box prompts, a point prompt and no prompts, one
by one and as a batch through the pipeline; every mask PNG, every RLE in ``masks.json`` and the
overlay's tint must match its object (IoU >= 0.85) in the coordinates of the image as displayed.
``samdrop view`` of such an upload opens in headless Chromium with each mask's layer on its object.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import google.cloud.storage as storage
import numpy as np
import pytest
from google.cloud.storage import Blob
from PIL import Image

from deploy.local import LocalStack, emulator_storage_client, pubsub_clients
from samdrop.images import decode_image
from samdrop.masks import png_to_mask, rle_to_mask
from samdrop.settings import Settings
from tests.chromium import headless_page
from tests.scenes import ENCODINGS, best_iou, encode_as, iou, shapes_scene
from tests.schema_check import check_document

from .local_stack_support import Completions, key_of, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIN_IOU = 0.85
SCENE = shapes_scene()
SUFFIX = {"exif_jpeg": "jpg", "cmyk_jpeg": "jpg", "png16": "png", "rgba_png": "png", "webp": "webp"}
CONTENT_TYPE = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass
class Stack:
    settings: Settings
    storage: storage.Client
    completions: Completions

    def upload(self, name: str, data: bytes, prompts: dict[str, Any] | None) -> Blob:
        blob = self.storage.bucket(self.settings.bucket).blob(name)
        if prompts is not None:
            blob.metadata = {"samdrop-prompts": json.dumps(prompts)}
        blob.upload_from_string(data, content_type=CONTENT_TYPE[name.rsplit(".", 1)[1]])
        return blob

    def await_completion(self, blob: Blob, timeout_s: float = 120) -> dict[str, Any]:
        return self.completions.first(key_of(blob, any_generation=True), timeout_s=timeout_s)

    def outputs(self, name: str) -> dict[str, bytes]:
        folder = f"{self.settings.results_prefix}{name}/"
        blobs = self.storage.list_blobs(self.settings.output_bucket, prefix=folder)
        return {b.name.removeprefix(folder): b.download_as_bytes() for b in blobs}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("samdrop-geometry")
    # The defaults, as `samdrop local up` runs them, on an empty weights cache.
    settings = stack_settings(state_dir, cache_dir=state_dir / "cache")
    assert settings.model_type == "auto"
    local = LocalStack(settings)
    local.up()
    env = local.client_env()
    client = emulator_storage_client(settings.project, env["STORAGE_EMULATOR_HOST"])
    publisher, subscriber = pubsub_clients(env["PUBSUB_EMULATOR_HOST"])
    try:
        yield Stack(settings, client, Completions.of(subscriber, settings))
    finally:
        subscriber.close()
        publisher.transport.close()
        local.down()


def segment(stack: Stack, kind: str, label: str, prompts: dict[str, Any] | None) -> tuple[dict, dict, bytes]:
    """Upload the scene encoded as ``kind``; return (completion, masks.json, uploaded bytes)."""
    data = encode_as(SCENE, kind)
    name = f"{stack.settings.incoming_prefix}{uuid.uuid4().hex[:8]}/{label}.{SUFFIX[kind]}"
    started = time.monotonic()
    message = stack.await_completion(stack.upload(name, data, prompts))
    assert message["status"] == "succeeded", message
    assert message["model"]["type"] == "classic"
    outputs = stack.outputs(name)
    doc = check_document("masks", json.loads(outputs["masks.json"]))
    assert doc["model"]["type"] == "classic" and "samdrop models pull" in doc["model"]["note"]
    assert (doc["height"], doc["width"]) == SCENE.image.shape[:2], f"{kind} not in display coordinates"
    for record in doc["masks"]:
        png = png_to_mask(outputs[record["png"].rsplit("/", 1)[1]])
        np.testing.assert_array_equal(png, rle_to_mask(record["segmentation"]))  # PNG == RLE, pixel for pixel
    doc["_outputs"] = outputs
    doc["_seconds"] = time.monotonic() - started
    return message, doc, data


def masks(doc: dict) -> list[np.ndarray]:
    return [rle_to_mask(record["segmentation"]) for record in doc["masks"]]


@pytest.mark.parametrize("kind", ENCODINGS)
def test_box_prompts_mask_their_objects(stack, kind):
    boxes = [list(o.box) for o in SCENE.objects]
    _, doc, data = segment(stack, kind, "boxes", {"boxes": boxes})
    assert [m["prompt_index"] for m in doc["masks"]] == [0, 1, 2]
    for target, mask in zip(SCENE.objects, masks(doc), strict=True):
        assert iou(mask, target.mask) >= MIN_IOU, target.name
    # The overlay tints exactly the masks: where it differs from the displayed image is the objects.
    displayed = decode_image(data, max_pixels=10_000_000).astype(np.int32)
    overlay = np.asarray(Image.open(io.BytesIO(doc["_outputs"]["overlay.jpg"])).convert("RGB"), np.int32)
    assert overlay.shape == displayed.shape
    # Tints move a pixel by >= 50 levels summed over RGB; the JPEG's own noise on the texture is
    # smaller and scattered, which a 5x5 median removes.
    difference = np.abs(overlay - displayed).sum(axis=2).clip(0, 255).astype(np.uint8)
    tinted = cv2.medianBlur(difference, 5) > 50
    objects = np.logical_or.reduce([o.mask for o in SCENE.objects])
    assert iou(tinted, objects) >= MIN_IOU


@pytest.mark.parametrize("kind", ENCODINGS)
def test_a_point_prompt_masks_its_object(stack, kind):
    triangle = SCENE.objects[2]
    _, doc, _ = segment(stack, kind, "point", {"points": [list(triangle.point)], "labels": [1]})
    assert iou(masks(doc)[0], triangle.mask) >= MIN_IOU  # the best-scored of the multimask answers


@pytest.mark.parametrize("kind", ENCODINGS)
def test_automatic_masks_find_every_object(stack, kind):
    _, doc, _ = segment(stack, kind, "automatic", None)
    assert doc["mode"] == "automatic"
    found = masks(doc)
    for target in SCENE.objects:
        assert best_iou(target.mask, found) >= MIN_IOU, target.name


def test_a_batch_through_the_pipeline_masks_the_objects(stack):
    batch_id = f"geometry-{uuid.uuid4().hex[:6]}"
    folder = f"{stack.settings.batches_prefix}{batch_id}/"
    boxes = {"boxes": [list(o.box) for o in SCENE.objects]}
    prompts = {f"{kind}.{SUFFIX[kind]}": boxes for kind in ENCODINGS if kind != "webp"}  # webp: automatic
    for kind in ENCODINGS:
        stack.upload(f"{folder}{kind}.{SUFFIX[kind]}", encode_as(SCENE, kind), None)
    bucket = stack.storage.bucket(stack.settings.bucket)
    bucket.blob(folder + "prompts.json").upload_from_string(
        json.dumps(prompts), content_type="application/json"
    )
    bucket.blob(folder + "_READY").upload_from_string(b"", content_type="application/json")

    message = stack.await_completion(bucket.blob(folder), timeout_s=400)

    assert message["kind"] == "batch" and message["status"] == "succeeded", message
    for kind in ENCODINGS:
        outputs = stack.outputs(f"batches/{batch_id}/{kind}.{SUFFIX[kind]}")
        doc = check_document("masks", json.loads(outputs["masks.json"]))
        assert doc["model"]["type"] == "classic"
        found = [rle_to_mask(r["segmentation"]) for r in doc["masks"]]
        for index, mask in enumerate(found):
            np.testing.assert_array_equal(png_to_mask(outputs[f"mask_{index:03d}.png"]), mask)
        if kind == "webp":
            assert all(best_iou(o.mask, found) >= MIN_IOU for o in SCENE.objects), kind
        else:
            for target, mask in zip(SCENE.objects, found, strict=True):
                assert iou(mask, target.mask) >= MIN_IOU, (kind, target.name)
    report = stack.outputs(f"batches/{batch_id}")  # the report folder
    for kind in ENCODINGS:
        file = f"{kind}.{SUFFIX[kind]}"
        assert f'href="view/{file}.html"' in report["report.html"].decode(), file
        page = report[f"view/{file}.html"].decode()
        assert f"<h1>gs://{stack.settings.bucket}/{folder}{file}</h1>" in page, file


def test_samdrop_view_shows_each_mask_on_its_object_in_chromium(stack, chromium, tmp_path):
    """The page ``samdrop view`` writes for an EXIF-rotated upload, opened in headless Chromium: each
    mask's layer tints its object in the layer's colour at the slider's opacity, nothing else is
    tinted, and a real click on the disc's row removes its layer (and only it)."""
    labels = [o.name for o in SCENE.objects]
    message, doc, _ = segment(
        stack, "exif_jpeg", "view", {"boxes": [list(o.box) for o in SCENE.objects], "label": labels}
    )
    page = tmp_path / "view.html"
    env = {**os.environ, **stack.settings.to_env()}
    for found_by_the_command in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        env.pop(found_by_the_command, None)  # `samdrop view` finds the running stack by its state dir
    done = subprocess.run(
        [sys.executable, "-m", "deploy.command", "view", message["input"], "--out", str(page), "--no-open"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(page)
    html = page.read_text()
    assert not re.findall(r"""(?:src|href)=["'](?!data:)""", html) and "url(http" not in html  # no network

    with headless_page(chromium, width=900, height=420) as browser:
        browser.open(page)
        left, top, width = browser.evaluate(
            "(() => { const r = document.getElementById('image').getBoundingClientRect();"
            " return [r.x, r.y, r.width]; })()"
        )
        assert width == doc["width"], "the page must show the image at 1:1 in this window"
        colours = browser.evaluate(
            "[...document.querySelectorAll('.layer')].map((l) => getComputedStyle(l).backgroundColor)"
        )
        alpha = browser.evaluate("Number(document.getElementById('opacity').value) / 100")
        shown_png, shown = browser.screenshot()
        browser.click('#masks tr[data-index="0"]')
        browser.move_away()
        _, toggled = browser.screenshot()

    height = doc["height"]
    shown = shown[top : top + height, left : left + width].astype(np.float64)
    toggled = toggled[top : top + height, left : left + width].astype(np.float64)
    scene = SCENE.image.astype(np.float64)
    for index, target in enumerate(SCENE.objects):
        inside = cv2.erode(target.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        colour = np.array([int(v) for v in re.findall(r"\d+", colours[index])[:3]], np.float64)
        tinted = (1 - alpha) * scene[inside] + alpha * colour
        assert np.abs(shown[inside] - tinted).mean() < 12, f"{target.name}: not its layer's colour"
    objects = np.logical_or.reduce([o.mask for o in SCENE.objects])
    outside = ~cv2.dilate(objects.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.abs(shown[outside] - scene[outside]).mean() < 8, "the page tints what no mask covers"
    changed = np.abs(shown - toggled).sum(axis=2) > 30
    assert iou(changed, SCENE.objects[0].mask) >= MIN_IOU, "the click did not remove exactly the disc's layer"
    disc = cv2.erode(SCENE.objects[0].mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.abs(toggled[disc] - scene[disc]).mean() < 8, "the disc is still tinted after the toggle"
    if os.environ.get("SAMDROP_VIEWER_SCREENSHOT"):  # docs/viewer.png is made this way (docs/viewer.md)
        with open(os.environ["SAMDROP_VIEWER_SCREENSHOT"], "wb") as out:
            out.write(shown_png)
