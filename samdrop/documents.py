"""Every JSON document a unit hands to another: one class each, with one ``to_json``/``from_json``.

* :class:`Prediction` / :class:`FailedPrediction` — one slot of the predictor's ``predictions``;
* :class:`MaskRecord` — one mask inside a prediction and inside ``masks.json``;
* :class:`MasksDocument` — ``results/<input path>/masks.json``;
* :class:`ErrorRecord` — ``results/<input path>/error.json``;
* :class:`ManifestLine` — one line of a batch's ``manifest.jsonl``.

The completion message lives in :mod:`samdrop.messages`. ``from_json`` coerces numbers, because
Vertex AI passes predictions through protobuf ``Value`` (every number arrives as a float), and raises
``KeyError``/``TypeError``/``ValueError`` on a document that is off-contract. See docs/design.md
"Documents".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, cast

from samdrop.errors import ErrorInfo

JsonObject = dict[str, Any]
Mode = Literal["prompted", "automatic"]
MODES: tuple[Mode, ...] = ("prompted", "automatic")


class Rle(TypedDict):
    """COCO RLE of an ``HxW`` mask: ``size`` is ``[H, W]``, ``counts`` the compressed string."""

    size: list[int]
    counts: str


class PromptsRecord(TypedDict, total=False):
    """The prompts a prediction used: points ``Nx2`` px XY (float), labels ``N`` of 1|0, boxes ``Mx4``
    px XYXY (float), and ``multimask`` as resolved (three masks per prompt or one); for SAM 3,
    ``text`` (the concepts, in order) with ``boxes`` as exemplars and ``box_labels`` (positive or not)."""

    points: list[list[float]]
    labels: list[int]
    boxes: list[list[float]]
    multimask: bool
    text: list[str]
    box_labels: list[bool]


class Polygons(TypedDict):
    """A mask's outline as COCO polygons: ``outer`` rings (a COCO polygon segmentation on its own)
    and ``holes`` kept apart, each ring ``[x1, y1, x2, y2, ...]`` px; simplified so the traced
    boundary lies within ``tolerance_px`` of each ring."""

    outer: list[list[float]]
    holes: list[list[float]]
    tolerance_px: float


class TilingRecord(TypedDict):
    """How a tiled image was cut: ``tile`` (side, px), ``overlap`` (px shared by neighbours),
    ``tiles`` (how many), ``grid`` (``[columns, rows]``). Tile ``i`` is at column ``i % columns``,
    row ``i // columns``."""

    tile: int
    overlap: int
    tiles: int
    grid: list[int]


class MaskOutputs(TypedDict):
    """``gs://`` URIs of one image's outputs: ``masks`` (PNG per mask, in order), ``metadata``
    (``masks.json``), ``overlay`` (``overlay.jpg``)."""

    masks: list[str]
    metadata: str
    overlay: str


@dataclass(frozen=True)
class MaskRecord:
    """One mask. ``segmentation``: COCO RLE at the input's displayed size (a base64 PNG string only
    in a predictor answer asked for ``mask_format: "png"``); ``score``: predicted IoU; ``box``: XYXY
    int px, x1/y1 inclusive; ``area``: px; ``stability_score``; ``prompt_index`` (prompt mode: which
    prompt made it) or ``point_coords`` (automatic mode: the grid point(s) that made it, px XY);
    ``label``: the prompt's label, when the prompts named one; ``polygons``: only when asked for;
    ``tiles``: a tiled image's tiles the mask spans (indexes into its tile grid)."""

    segmentation: Rle | str
    score: float
    box: list[int]
    area: int
    stability_score: float | None = None
    prompt_index: int | None = None
    point_coords: list[list[float]] | None = None
    label: str | None = None
    polygons: Polygons | None = None
    tiles: list[int] | None = None

    @property
    def rle(self) -> Rle:
        if isinstance(self.segmentation, str):
            raise TypeError("segmentation must be a COCO RLE (ask the predictor for mask_format 'rle')")
        return self.segmentation

    def to_json(self) -> JsonObject:
        """Optional fields are left out when unset (their absence says which mode made the mask)."""
        out: JsonObject = {
            "segmentation": self.segmentation,
            "score": self.score,
            "box": list(self.box),
            "area": self.area,
        }
        if self.stability_score is not None:
            out["stability_score"] = self.stability_score
        if self.prompt_index is not None:
            out["prompt_index"] = self.prompt_index
        if self.point_coords is not None:
            out["point_coords"] = [list(point) for point in self.point_coords]
        if self.label is not None:
            out["label"] = self.label
        if self.polygons is not None:
            out["polygons"] = self.polygons
        if self.tiles is not None:
            out["tiles"] = list(self.tiles)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MaskRecord:
        segmentation = raw["segmentation"]
        if not isinstance(segmentation, str):
            counts = segmentation["counts"]
            if not isinstance(counts, str):
                raise TypeError("segmentation.counts must be a COCO RLE string")
            segmentation = Rle(
                size=[int(segmentation["size"][0]), int(segmentation["size"][1])], counts=counts
            )
        box = [round(float(v)) for v in raw["box"]]
        if len(box) != 4:
            raise ValueError(f"box must be [x0, y0, x1, y1], got {raw['box']!r}")
        points = raw.get("point_coords")
        return cls(
            segmentation=segmentation,
            score=float(raw["score"]),
            box=box,
            area=int(raw["area"]),
            stability_score=_float_or_none(raw.get("stability_score")),
            prompt_index=int(raw["prompt_index"]) if raw.get("prompt_index") is not None else None,
            point_coords=[[float(c) for c in p] for p in points] if points is not None else None,
            label=str(raw["label"]) if raw.get("label") is not None else None,
            polygons=_polygons(raw.get("polygons")),
            tiles=[int(t) for t in raw["tiles"]] if raw.get("tiles") is not None else None,
        )


@dataclass(frozen=True)
class PredictInstance:
    """One ``:predict`` instance as the function sends it (docs/design.md "Predictor request and
    response"): the image by ``gs://`` reference, never its bytes, pinned to ``generation`` (a
    decimal string) so the endpoint reads exactly the uploaded version; ``file_path`` is echoed back;
    ``prompts``: a checked prompts entry (:func:`samdrop.prompts.check_prompts`), its keys sent as
    the instance's own; none means automatic masks."""

    gcs_uri: str
    generation: str | None
    file_path: str
    prompts: Mapping[str, Any] | None = None
    mask_format: Literal["rle", "png"] = "rle"

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "gcs_uri": self.gcs_uri,
            "generation": self.generation,
            "file_path": self.file_path,
            "mask_format": self.mask_format,
        }
        out.update(self.prompts or {})
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PredictInstance:
        own = ("gcs_uri", "generation", "file_path", "mask_format")
        prompts = {key: value for key, value in raw.items() if key not in own}
        generation = raw.get("generation")
        return cls(
            gcs_uri=str(raw["gcs_uri"]),
            generation=str(generation) if generation is not None else None,
            file_path=str(raw.get("file_path", "")),
            prompts=prompts or None,
            mask_format="png" if raw.get("mask_format") == "png" else "rle",
        )


@dataclass(frozen=True)
class Prediction:
    """One image's masks as the predictor answers them (and as the pipeline's engine gives them).

    ``width``/``height``: the input as displayed, px; ``mode``: ``prompted`` (``prompts`` set) or
    ``automatic`` (``amg``: the automatic-mask parameters used); ``model``: what produced the masks
    (``type``, ``device``, ``random_weights`` …); ``timings_ms``: the predictor's stages;
    ``logits``: ``{"shape", "dtype", "b64"}`` per mask, only when asked for; ``tiling``: how the
    image was tiled, None when it ran whole."""

    width: int
    height: int
    masks: list[MaskRecord]
    mode: Mode
    prompts: PromptsRecord | None = None
    amg: JsonObject | None = None
    model: JsonObject = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    file_path: str | None = None
    mask_format: str = "rle"
    logits: list[JsonObject] | None = None
    tiling: TilingRecord | None = None

    @property
    def random_weights(self) -> bool:
        return bool(self.model.get("random_weights"))

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "file_path": self.file_path,
            "width": self.width,
            "height": self.height,
            "masks": [mask.to_json() for mask in self.masks],
            "scores": [mask.score for mask in self.masks],
            "mask_format": self.mask_format,
            "mode": self.mode,
            "prompts": self.prompts,
            "amg": self.amg,
            "model": self.model,
            "timings_ms": self.timings_ms,
            "tiling": self.tiling,
        }
        if self.logits is not None:
            out["logits"] = self.logits
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Prediction:
        mode = raw.get("mode") or ("prompted" if raw.get("prompts") else "automatic")
        if mode == "prompts":  # the predictor's name for it before masks.json and it agreed
            mode = "prompted"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return cls(
            width=int(raw["width"]),
            height=int(raw["height"]),
            masks=[MaskRecord.from_json(m) for m in raw.get("masks") or []],
            mode=cast(Mode, mode),
            prompts=_prompts_record(raw.get("prompts")),
            amg=dict(raw["amg"]) if raw.get("amg") is not None else None,
            model=dict(raw.get("model") or {}),
            timings_ms={key: float(value) for key, value in (raw.get("timings_ms") or {}).items()},
            file_path=raw.get("file_path"),
            mask_format=str(raw.get("mask_format") or "rle"),
            logits=list(raw["logits"]) if raw.get("logits") is not None else None,
            tiling=tiling_record(raw.get("tiling")),
        )


@dataclass(frozen=True)
class FailedPrediction:
    """A predictor slot whose instance could not be segmented; it never fails its neighbours."""

    error: ErrorInfo
    file_path: str | None = None

    def to_json(self) -> JsonObject:
        return {"file_path": self.file_path, "error": self.error}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FailedPrediction:
        error = raw["error"]
        if not isinstance(error, Mapping):
            return cls(ErrorInfo(code="invalid_input", message=str(error)), raw.get("file_path"))
        code = str(error.get("code") or "invalid_input")
        return cls(ErrorInfo(code=code, message=str(error.get("message") or error)), raw.get("file_path"))


def prediction_from_json(raw: Mapping[str, Any]) -> Prediction | FailedPrediction:
    """One slot of ``{"predictions": [...]}``: a failure when it carries ``error``."""
    return FailedPrediction.from_json(raw) if raw.get("error") else Prediction.from_json(raw)


@dataclass(frozen=True)
class MasksDocument:
    """``masks.json``: everything about one image's masks, the same from a single upload and a batch.

    ``generation``: the input's generation (a string: it exceeds JSON's safe integers);
    ``batch_id``: None for a single upload; ``masks``: written with their ``index`` and ``png`` URI;
    ``note``: says when the masks come from random weights; ``predictor_timings_ms``: the model's
    stages; ``timings_ms``: the path's own stages (reading, endpoint or compute, writing);
    ``tiling``: how the image was tiled (None: it ran whole)."""

    input: str
    generation: str
    width: int
    height: int
    mode: Mode
    masks: list[MaskRecord]
    outputs: MaskOutputs
    batch_id: str | None = None
    prompts: PromptsRecord | None = None
    amg: JsonObject | None = None
    model: JsonObject = field(default_factory=dict)
    note: str | None = None
    predictor_timings_ms: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tiling: TilingRecord | None = None
    created: str = field(default_factory=lambda: now_iso())
    trace_id: str | None = None  # the image's OpenTelemetry trace, when traces are on

    @property
    def mask_count(self) -> int:
        return len(self.masks)

    @property
    def label_counts(self) -> dict[str, int] | None:
        """Masks per label: the concepts asked (``prompts.text``) in order, a concept that found
        nothing with 0, then any other label; None when no mask has a label and no text was asked."""
        counts = dict.fromkeys((self.prompts or {}).get("text") or [], 0)
        for mask in self.masks:
            if mask.label is not None:
                counts[mask.label] = counts.get(mask.label, 0) + 1
        return counts or None

    @property
    def model_type(self) -> str | None:
        value = self.model.get("type")
        return str(value) if value else None

    def to_json(self) -> JsonObject:
        return {
            "input": self.input,
            "generation": self.generation,
            "batch_id": self.batch_id,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "prompts": self.prompts,
            "amg": self.amg,
            "tiling": self.tiling,
            "mask_count": self.mask_count,
            "masks": [
                {"index": i, "png": uri, **mask.to_json()}
                for i, (uri, mask) in enumerate(zip(self.outputs["masks"], self.masks, strict=True))
            ],
            "model": self.model,
            "note": self.note,
            "predictor_timings_ms": self.predictor_timings_ms,
            "timings_ms": self.timings_ms,
            "outputs": self.outputs,
            "created": self.created,
            **({"trace_id": self.trace_id} if self.trace_id else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MasksDocument:
        outputs = raw["outputs"]
        return cls(
            input=str(raw["input"]),
            generation=str(raw["generation"]),
            width=int(raw["width"]),
            height=int(raw["height"]),
            mode=cast(Mode, raw["mode"]),
            masks=[MaskRecord.from_json(m) for m in raw["masks"]],
            outputs=MaskOutputs(
                masks=[str(uri) for uri in outputs["masks"]],
                metadata=str(outputs["metadata"]),
                overlay=str(outputs["overlay"]),
            ),
            batch_id=raw.get("batch_id"),
            prompts=_prompts_record(raw.get("prompts")),
            amg=dict(raw["amg"]) if raw.get("amg") is not None else None,
            model=dict(raw.get("model") or {}),
            note=raw.get("note"),
            predictor_timings_ms=dict(raw.get("predictor_timings_ms") or {}),
            timings_ms=dict(raw.get("timings_ms") or {}),
            tiling=tiling_record(raw.get("tiling")),
            created=str(raw.get("created") or ""),
            trace_id=raw.get("trace_id"),
        )


@dataclass(frozen=True)
class ErrorRecord:
    """``error.json``: why an input could not be segmented (``code`` from ``samdrop.errors.ERROR_CODES``)."""

    code: str
    message: str
    input: str
    generation: str

    @property
    def error(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message)

    def to_json(self) -> JsonObject:
        return {
            "code": self.code,
            "message": self.message,
            "input": self.input,
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ErrorRecord:
        return cls(str(raw["code"]), str(raw["message"]), str(raw["input"]), str(raw["generation"]))


@dataclass(frozen=True)
class ManifestLine:
    """One image of a batch in ``manifest.jsonl``. ``status``: ``succeeded`` or ``failed``;
    ``resumed``: an earlier run had written its record; ``outputs``: the masks document's outputs, or
    ``{"error": uri}`` when ``error.json`` was written (none for a transient failure, which the next
    run retries); ``timings_ms``: this image's stages plus ``finished`` (a wall-clock timestamp, s);
    ``tiling``: the masks document's, for a tiled image."""

    input: str
    file: str
    generation: str
    status: Literal["succeeded", "failed"]
    resumed: bool
    shard: int
    mask_count: int | None
    scores: list[float]
    outputs: dict[str, Any]
    error: ErrorInfo | None
    timings_ms: dict[str, float]
    tiling: TilingRecord | None = None

    @property
    def mean_score(self) -> float | None:
        return round(sum(self.scores) / len(self.scores), 4) if self.scores else None

    @classmethod
    def succeeded(
        cls, doc: MasksDocument, *, file: str, shard: int, resumed: bool, timings_ms: Mapping[str, float]
    ) -> ManifestLine:
        return cls(
            input=doc.input,
            file=file,
            generation=doc.generation,
            status="succeeded",
            resumed=resumed,
            shard=shard,
            mask_count=doc.mask_count,
            scores=[round(mask.score, 4) for mask in doc.masks],
            outputs=dict(doc.outputs),
            error=None,
            timings_ms=dict(timings_ms),
            tiling=doc.tiling,
        )

    @classmethod
    def failed(
        cls,
        error: ErrorInfo,
        *,
        input_uri: str,
        file: str,
        generation: int | str,
        shard: int,
        resumed: bool,
        error_uri: str | None,
        timings_ms: Mapping[str, float],
    ) -> ManifestLine:
        return cls(
            input=input_uri,
            file=file,
            generation=str(generation),
            status="failed",
            resumed=resumed,
            shard=shard,
            mask_count=None,
            scores=[],
            outputs={"error": error_uri} if error_uri else {},
            error=ErrorInfo(code=error["code"], message=error["message"]),
            timings_ms=dict(timings_ms),
        )

    def to_json(self) -> JsonObject:
        return {
            "input": self.input,
            "file": self.file,
            "generation": self.generation,
            "status": self.status,
            "resumed": self.resumed,
            "shard": self.shard,
            "mask_count": self.mask_count,
            "scores": self.scores,
            "mean_score": self.mean_score,
            "outputs": self.outputs,
            "error": self.error,
            "timings_ms": self.timings_ms,
            "tiling": self.tiling,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ManifestLine:
        error = raw.get("error")
        return cls(
            input=str(raw["input"]),
            file=str(raw["file"]),
            generation=str(raw["generation"]),
            status="succeeded" if raw["status"] == "succeeded" else "failed",
            resumed=bool(raw.get("resumed")),
            shard=int(raw.get("shard") or 0),
            mask_count=int(raw["mask_count"]) if raw.get("mask_count") is not None else None,
            scores=[float(s) for s in raw.get("scores") or []],
            outputs=dict(raw.get("outputs") or {}),
            error=ErrorInfo(code=str(error["code"]), message=str(error["message"])) if error else None,
            timings_ms=dict(raw.get("timings_ms") or {}),
            tiling=tiling_record(raw.get("tiling")),
        )


def now_iso() -> str:
    """Now, UTC, to the second: the ``created`` stamp of documents."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None else None


def _prompts_record(raw: Any) -> PromptsRecord | None:
    if not raw:
        return None
    record = PromptsRecord()
    if raw.get("points") is not None:
        record["points"] = [[float(c) for c in point] for point in raw["points"]]
        record["labels"] = [int(label) for label in raw.get("labels") or []]
    if raw.get("boxes") is not None:
        record["boxes"] = [[float(c) for c in box] for box in raw["boxes"]]
    if raw.get("multimask") is not None:
        record["multimask"] = bool(raw["multimask"])
    if raw.get("text") is not None:
        record["text"] = [str(name) for name in raw["text"]]
    if raw.get("box_labels") is not None:
        record["box_labels"] = [bool(label) for label in raw["box_labels"]]
    return record


def _polygons(raw: Any) -> Polygons | None:
    if raw is None:
        return None
    return Polygons(
        outer=[[float(c) for c in ring] for ring in raw["outer"]],
        holes=[[float(c) for c in ring] for ring in raw["holes"]],
        tolerance_px=float(raw["tolerance_px"]),
    )


def tiling_record(raw: Any) -> TilingRecord | None:
    """A ``tiling`` entry from JSON (numbers back to ints), or None."""
    if raw is None:
        return None
    return TilingRecord(
        tile=int(raw["tile"]),
        overlap=int(raw["overlap"]),
        tiles=int(raw["tiles"]),
        grid=[int(raw["grid"][0]), int(raw["grid"][1])],
    )
