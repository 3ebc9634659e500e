"""Step 1 of a batch: list ``batches/<id>/``, apply ``_READY`` options and ``prompts.json``, shard.

Pure parsing (``parse_ready``, ``parse_prompts_file``, ``build_plan``) is separate from storage
(``plan_batch``, ``write_plan``, ``read_shard``). A batch-level problem (malformed ``_READY`` or
``prompts.json``, no images) becomes ``BatchPlan.error``; a problem of one image (bad prompt
entry, not an image) becomes that item's ``error`` and never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from samdrop.batches import PROMPTS_FILE, READY, BatchPaths
from samdrop.budgets import loads_limited
from samdrop.errors import ErrorInfo, InputNotFound, InvalidPrompt, InvalidRequest, PermanentError
from samdrop.images import is_image_object
from samdrop.layout import input_generation, json_record, write_output
from samdrop.models import model_info, text_refused
from samdrop.prompts import check_amg, check_prompts, check_tiling
from samdrop.storage import ObjectInfo, ObjectStore

READY_KEYS = ("prompts", "amg", "shard_size", "multimask", "outputs", "tiling", "text")
# What a _READY body's "outputs" may add: polygons in every mask record, YOLO-seg labels for the batch.
BATCH_OUTPUTS = ("polygons", "yolo")
MAX_SHARD_SIZE = 10_000
# Automatic shard size: no shard under this many images, because a worker's start-up (minutes for a
# GPU node on Vertex AI, seconds for a kfp.local task) would outweigh its work.
MIN_AUTO_SHARD_SIZE = 64
READY_EXAMPLE = '{"prompts": "prompts.json", "amg": {"points_per_side": 16}, "shard_size": 64}'


class TreeStore(ObjectStore, Protocol):
    def list_tree(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under ``prefix``, sub-folders included."""
        ...


@dataclass(frozen=True)
class BatchOptions:
    """``_READY`` body: ``prompts`` file name (in the batch folder), automatic-mask parameters for
    images without prompts, ``shard_size`` (0: automatic, see :func:`shard_size_for`), a default
    ``multimask``, extra ``outputs`` (``polygons`` per mask, ``yolo`` labels for the batch), the
    images' ``tiling`` (see :func:`samdrop.prompts.check_tiling`) and ``text``: SAM 3 concepts for
    every image without its own ``prompts.json`` entry (one line for a whole drop); they are the
    batch's COCO categories and YOLO classes, in this order, even those that found nothing."""

    prompts: str = PROMPTS_FILE
    prompts_named: bool = False  # the body named the file: then it must exist
    amg: dict[str, Any] = field(default_factory=dict)
    shard_size: int = 0
    multimask: bool | None = None
    outputs: list[str] = field(default_factory=list)
    tiling: bool | dict[str, int] | None = None  # every image's, unless its prompts entry says
    text: list[str] | None = None

    def prompts_for(self, entry: dict[str, Any] | None) -> dict[str, Any]:
        """An image's checked prompts: its own ``prompts.json`` entry, else the batch's ``text``
        concepts, else none (automatic masks)."""
        if entry:
            return entry
        return {"text": list(self.text)} if self.text else {}


@dataclass(frozen=True)
class PlanItem:
    """One input: object ``name`` at ``generation``; ``prompts`` (JSON entry) or None for automatic
    masks; ``error`` (``{"code", "message"}``) when it is known bad before being read."""

    name: str
    generation: int
    prompts: dict[str, Any] | None = None
    error: ErrorInfo | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PlanItem:
        return cls(raw["name"], int(raw["generation"]), raw.get("prompts"), raw.get("error"))


@dataclass(frozen=True)
class BatchPlan:
    batch_id: str
    input: str
    marker_generation: int
    options: BatchOptions
    shards: list[list[PlanItem]]
    warnings: list[str] = field(default_factory=list)
    error: ErrorInfo | None = None

    @property
    def images(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def summary(self, *, list_ms: float | None = None) -> PlanSummary:
        """What ``plan.json`` holds: everything but the items (those live in one file per shard)."""
        return PlanSummary(
            batch_id=self.batch_id,
            input=self.input,
            marker_generation=self.marker_generation,
            options=self.options,
            images=self.images,
            shards=len(self.shards),
            shard_size=max((len(shard) for shard in self.shards), default=0),
            warnings=list(self.warnings),
            error=self.error,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            list_ms=list_ms,
        )


@dataclass(frozen=True)
class PlanSummary:
    """``plan.json``: a batch plan without its items. ``marker_generation`` is written as a decimal
    string, as Cloud Storage writes generations; ``list_ms``: how long listing and planning took."""

    batch_id: str
    input: str
    marker_generation: int
    options: BatchOptions
    images: int
    shards: int
    shard_size: int
    warnings: list[str]
    error: ErrorInfo | None
    created: str
    list_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "marker_generation": str(self.marker_generation),
            "options": asdict(self.options),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PlanSummary:
        return cls(
            batch_id=str(raw["batch_id"]),
            input=str(raw["input"]),
            marker_generation=int(raw["marker_generation"]),
            options=BatchOptions(**raw["options"]),
            images=int(raw["images"]),
            shards=int(raw["shards"]),
            shard_size=int(raw["shard_size"]),
            warnings=[str(w) for w in raw.get("warnings") or []],
            error=raw.get("error"),
            created=str(raw.get("created", "")),
            list_ms=float(raw["list_ms"]) if raw.get("list_ms") is not None else None,
        )


def parse_ready(body: bytes, *, default_shard_size: int, where: str = READY) -> BatchOptions:
    """Options from the marker's body; an empty body means defaults. Raises ``InvalidRequest``."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return BatchOptions(shard_size=default_shard_size)
    try:
        raw = loads_limited(text)  # nesting beyond SAMDROP_MAX_JSON_DEPTH's default is refused too
    except ValueError as exc:
        raise InvalidRequest(
            f"{where} is not valid JSON ({exc}); leave it empty or use {READY_EXAMPLE}"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must hold a JSON object like {READY_EXAMPLE}")
    unknown = sorted(set(raw) - set(READY_KEYS))
    if unknown:
        raise InvalidRequest(f"{where} has unknown key(s) {unknown}; allowed: {', '.join(READY_KEYS)}")
    prompts = raw.get("prompts", PROMPTS_FILE)
    if not isinstance(prompts, str) or not prompts or prompts.startswith("/"):
        raise InvalidRequest(
            f'{where}: "prompts" must be a file name in the batch folder, like "prompts.json"'
        )
    shard_size = raw.get("shard_size", default_shard_size)
    if "shard_size" in raw and (
        isinstance(shard_size, bool)
        or not isinstance(shard_size, int)
        or not 1 <= shard_size <= MAX_SHARD_SIZE
    ):
        raise InvalidRequest(f'{where}: "shard_size" must be an integer within 1..{MAX_SHARD_SIZE}')
    multimask = raw.get("multimask")
    if multimask is not None and not isinstance(multimask, bool):
        raise InvalidRequest(f'{where}: "multimask" must be true or false')
    amg = raw.get("amg") or {}
    try:
        check_amg(amg, where=f"{where}: amg")  # checked now; kept as given so the defaults stay the engine's
    except PermanentError as exc:
        raise InvalidRequest(exc.message) from None
    outputs = raw.get("outputs", [])
    if not isinstance(outputs, list) or any(o not in BATCH_OUTPUTS for o in outputs):
        raise InvalidRequest(f'{where}: "outputs" must be a list of {list(BATCH_OUTPUTS)}')
    tiling = raw.get("tiling")
    if tiling is not None:
        try:
            tiling = check_tiling(tiling, where=f"{where}: tiling")
        except PermanentError as exc:
            raise InvalidRequest(exc.message) from None
    concepts: list[str] | None = None
    if "text" in raw:
        try:
            concepts = (check_prompts({"text": raw["text"]}, where=where) or {})["text"]
        except PermanentError as exc:
            raise InvalidRequest(exc.message) from None
    return BatchOptions(
        prompts, "prompts" in raw, dict(amg), shard_size, multimask, list(outputs), tiling, concepts
    )


def parse_prompts_file(data: bytes, *, where: str) -> dict[str, dict[str, Any] | PermanentError]:
    """``{"<file>": {"points": Nx2 px XY, "labels": N of 1|0, "boxes": Mx4 px XYXY, "multimask"?}}``.

    Returns each file's entry (labels default to 1 per point), or the ``InvalidPrompt`` that entry
    earns. Raises ``InvalidRequest`` when the file as a whole is malformed.
    """
    try:
        raw = loads_limited(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"{where} is not valid JSON ({exc}); fix it and upload _READY again") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f'{where} must be an object {{"<file>": {{"points": [[x, y]], "labels": [1]}}}}')
    entries: dict[str, dict[str, Any] | PermanentError] = {}
    for file, entry in raw.items():
        try:
            entries[file] = _prompt_entry(entry, f"{where} entry {file!r}")
        except PermanentError as exc:
            entries[file] = exc
    return entries


def _prompt_entry(entry: Any, where: str) -> dict[str, Any]:
    """One file's prompts, in the shape every prompt source shares, checked here once by
    :func:`samdrop.prompts.check_prompts` (the shard only converts it and checks it fits the image)."""
    prompts = check_prompts(entry, where=where)
    if prompts and "amg" in prompts:
        raise InvalidPrompt(f"{where}: automatic-mask parameters go in the _READY body's amg, not per file")
    if not prompts or not {"points", "boxes", "text", "outputs", "label", "tiling"} & set(prompts):
        raise InvalidPrompt(
            f"{where} has neither points, boxes nor text (leave the file out for automatic masks)"
        )
    return prompts


def shard_size_for(images: int, requested: int, workers: int) -> int:
    """``requested`` images per shard; 0 means automatic: ``images`` split evenly over at most
    ``workers`` shards (one wave of parallel workers, each loading the model once) of at least
    ``MIN_AUTO_SHARD_SIZE`` and at most ``MAX_SHARD_SIZE`` images. Resuming works per image, so a
    large shard loses nothing when its task is retried."""
    if requested > 0:
        return requested
    count = max(1, min(workers, images // MIN_AUTO_SHARD_SIZE), -(-images // MAX_SHARD_SIZE))
    return max(1, -(-images // count))


def build_plan(
    paths: BatchPaths,
    marker_generation: int,
    objects: Mapping[str, ObjectInfo],
    options: BatchOptions,
    prompts: Mapping[str, dict[str, Any] | PermanentError],
    *,
    workers: int = 1,
) -> BatchPlan:
    """Sort the inputs by name, attach their prompts, split them into shards (see
    :func:`shard_size_for`; ``workers``: shard tasks the pipeline runs at once)."""
    prompts_name = paths.input_folder + options.prompts
    items: list[PlanItem] = []
    for name in sorted(objects):
        if name in (paths.marker, prompts_name) or name.endswith("/"):
            continue
        info = objects[name]
        relative = paths.relative(name)
        entry = prompts.get(relative)
        error: ErrorInfo | None = None
        if isinstance(entry, PermanentError):
            error, entry = entry.to_json(), None
        elif not is_image_object(info.name, info.content_type):
            error = ErrorInfo(
                code="unsupported_format",
                message=(
                    f"{relative} is not an image (content type {info.content_type or 'unknown'}, no image "
                    "extension): upload JPEG, PNG, WebP, TIFF, BMP or GIF files"
                ),
            )
        items.append(PlanItem(name, info.generation, entry, error))
    listed = {paths.relative(item.name) for item in items}
    missing = sorted(set(prompts) - listed)
    warnings = []
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        warnings.append(f"{options.prompts} has prompts for {len(missing)} file(s) not in the batch: {shown}")
    plan_error: ErrorInfo | None = None
    if not items:
        plan_error = ErrorInfo(
            code="empty_batch",
            message=f"{paths.input_uri} holds no images: upload the images first, then {READY} last",
        )
    size = shard_size_for(len(items), options.shard_size, workers)
    shards = [items[start : start + size] for start in range(0, len(items), size)]
    return BatchPlan(
        paths.batch_id, paths.input_uri, marker_generation, options, shards, warnings, plan_error
    )


def failed_plan(paths: BatchPaths, marker_generation: int, error: PermanentError) -> BatchPlan:
    return BatchPlan(
        paths.batch_id, paths.input_uri, marker_generation, BatchOptions(), [], [], error.to_json()
    )


def plan_batch(
    paths: BatchPaths,
    marker_generation: int,
    store: TreeStore,
    *,
    default_shard_size: int,
    workers: int = 1,
    model_type: str | None = None,
) -> BatchPlan:
    """Read the marker, ``prompts.json`` and the listing; never raises for bad input (see ``error``).
    ``default_shard_size`` (0: automatic) applies unless the marker sets one; ``workers``: shard
    tasks the pipeline runs at once; ``model_type``: the model the batch will run on (None or
    ``auto``: not known yet), so batch-wide text concepts it cannot take fail the batch before any
    image is read.

    Raises ``TransientError``/``ConfigError`` when storage cannot be read at all.
    """
    try:
        body = store.read(paths.bucket, paths.marker, generation=marker_generation or None)
        options = parse_ready(body, default_shard_size=default_shard_size, where=paths.input(paths.marker))
        if options.text and model_type not in (None, "auto") and not model_info(model_type).text:
            raise InvalidRequest(f"{paths.input(paths.marker)}: {text_refused(model_type)}")
        objects = store.list_tree(paths.bucket, paths.input_folder)
        prompts_name = paths.input_folder + options.prompts
        prompts: Mapping[str, dict[str, Any] | PermanentError] = {}
        if prompts_name in objects:
            data = store.read(paths.bucket, prompts_name, generation=objects[prompts_name].generation)
            prompts = parse_prompts_file(data, where=paths.input(prompts_name))
        elif options.prompts_named:
            raise InputNotFound(
                f"{READY} names {options.prompts} but {paths.input(prompts_name)} does not exist"
            )
    except PermanentError as exc:
        return failed_plan(paths, marker_generation, exc)
    return build_plan(paths, marker_generation, objects, options, prompts, workers=workers)


# --- the plan in storage ----------------------------------------------------------------------


def write_plan(
    paths: BatchPaths, plan: BatchPlan, store: ObjectStore, *, list_ms: float | None = None
) -> None:
    """Shard files first, ``plan.json`` last (its presence means the plan is complete). ``list_ms``:
    how long listing and planning took, kept in ``plan.json`` for the report's time split."""
    existing = store.list(paths.output_bucket, paths.plan.rsplit("/", 1)[0] + "/")

    def write(name: str, doc: Mapping[str, Any]) -> None:
        write_output(
            store,
            paths.output_bucket,
            name,
            json_record(doc),
            "application/json",
            seen=existing.get(name),
            generation=plan.marker_generation,
        )

    for index, shard in enumerate(plan.shards):
        write(paths.shard_plan(index), {"index": index, "items": [asdict(item) for item in shard]})
    write(paths.plan, plan.summary(list_ms=list_ms).to_json())


def existing_plan(paths: BatchPaths, marker_generation: int, store: ObjectStore) -> PlanSummary | None:
    """``plan.json`` already written for this marker generation (a resumed run reuses it), else None.

    Tag and body must both name it: a local stack's restore rewrites the tag to the restored
    marker's new generation but leaves the body, whose items name the inputs' old generations
    (deploy/store_snapshot.py); such a plan is made again from the objects stored now."""
    info = store.stat(paths.output_bucket, paths.plan)
    if info is None or input_generation(info.metadata) != marker_generation:
        return None
    plan = PlanSummary.from_json(
        json.loads(store.read(paths.output_bucket, paths.plan, generation=info.generation))
    )
    return plan if plan.marker_generation == marker_generation else None


def read_plan(paths: BatchPaths, store: ObjectStore) -> PlanSummary:
    return PlanSummary.from_json(json.loads(store.read(paths.output_bucket, paths.plan)))


def read_shard(paths: BatchPaths, index: int, store: ObjectStore) -> list[PlanItem]:
    raw = json.loads(store.read(paths.output_bucket, paths.shard_plan(index)))
    return [PlanItem.from_dict(item) for item in raw["items"]]
