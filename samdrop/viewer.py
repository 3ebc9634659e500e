"""One self-contained page of an image and its masks (docs/design.md "Viewer").

``samdrop view`` writes it for any input; a batch's report step writes one per image it lists.
Everything is inlined (the image as a JPEG, each mask as a transparent PNG, script and style), so
the page opens from a file, a bucket or an attachment without any network. The browser tints each
mask layer through CSS ``mask-image``: colours, opacity and toggles change styles, no script
touches pixels.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from samdrop.documents import MasksDocument
from samdrop.errors import InputNotFound, PermanentError, SamdropError
from samdrop.html_pages import render_page
from samdrop.images import decode_image
from samdrop.masks import PALETTE, rle_to_mask
from samdrop.storage import ObjectStore, split_uri

TEMPLATE = "viewer.html.j2"
JPEG_QUALITY = 90
UNLABELLED = "(no label)"


def viewer_page(doc: MasksDocument, image: np.ndarray, *, max_side: int | None = None) -> str:
    """The page's HTML. image: ``HxWx3 uint8`` RGB as displayed, ``doc.height`` x ``doc.width``
    (the pixels the masks were made on). ``max_side``: inline the image shrunk to this longest side
    (px; the page still lays it out at full size, and the masks stay at full resolution)."""
    height, width = image.shape[:2]
    if (height, width) != (doc.height, doc.width):
        raise PermanentError(
            f"{doc.input} is {width}x{height} px but its masks.json says {doc.width}x{doc.height}",
            code="size_mismatch",
        )
    concepts = list((doc.prompts or {}).get("text") or [])
    found = [mask.label for mask in doc.masks if mask.label is not None]
    labels = list(dict.fromkeys([*concepts, *found]))
    if any(mask.label is None for mask in doc.masks) and labels:
        labels.append(UNLABELLED)
    masks = [
        {
            "index": index,
            "score": round(mask.score, 4),
            "area": mask.area,
            "box": mask.box,
            "label": mask.label,
            "colour": _hex(index),
            "png": _data_uri("image/png", _layer_png(rle_to_mask(mask.rle))),
        }
        for index, mask in enumerate(doc.masks)
    ]
    data = {
        "masks": masks,
        "labels": [{"name": label, "colour": _hex(i)} for i, label in enumerate(labels)],  # in order
        "unlabelled": UNLABELLED,
    }
    return render_page(
        "samdrop",
        TEMPLATE,
        doc=doc,
        model=doc.model.get("type", "?"),
        image=_data_uri("image/jpeg", _jpeg(image, max_side)),
        data=data,
    )


def read_image(store: ObjectStore, doc: MasksDocument, *, max_pixels: int) -> np.ndarray:
    """The input ``doc`` was made from, at the generation it names, decoded as displayed."""
    bucket, name = split_uri(doc.input)
    try:
        data = store.read(bucket, name, generation=int(doc.generation))
    except SamdropError as exc:
        if exc.code != "not_found":
            raise
        raise InputNotFound(
            f"{doc.input} generation {doc.generation}, the image these masks were made from, is gone "
            "(replaced or deleted since); its newer upload gets its own masks"
        ) from exc
    return decode_image(data, max_pixels=max_pixels, name=doc.input)


def page_from_store(
    store: ObjectStore, doc: MasksDocument, *, max_pixels: int, max_side: int | None = None
) -> str:
    """:func:`viewer_page` for ``doc``, its image read from the bucket."""
    return viewer_page(doc, read_image(store, doc, max_pixels=max_pixels), max_side=max_side)


def _layer_png(mask: np.ndarray) -> bytes:
    """A 1-bit PNG, opaque where ``mask`` (HxW bool) is set and transparent elsewhere: the alpha
    that CSS ``mask-image`` reads."""
    layer = Image.fromarray(mask.astype(np.uint8), mode="L")
    layer.putpalette([0, 0, 0, 255, 255, 255])  # mode P: index 1 is the mask
    buffer = io.BytesIO()
    layer.save(buffer, format="PNG", bits=1, transparency=0, compress_level=6)
    return buffer.getvalue()


def _jpeg(image: np.ndarray, max_side: int | None) -> bytes:
    picture = Image.fromarray(image, mode="RGB")
    if max_side is not None:
        picture.thumbnail((max_side, max_side))  # keeps the aspect ratio; never enlarges
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _data_uri(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _hex(index: int) -> str:
    red, green, blue = (int(v) for v in PALETTE[index % len(PALETTE)])
    return f"#{red:02x}{green:02x}{blue:02x}"
