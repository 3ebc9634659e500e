"""Every JSON document a unit hands to another: one class each, with one ``to_json``/``from_json``.

* :class:`Prediction` / :class:`FailedPrediction` — one slot of the predictor's ``predictions``;
* :class:`MaskRecord` — one mask inside a prediction and inside ``masks.json``;
* :class:`MasksDocument` — ``results/<input path>/masks.json``;
* :class:`ErrorRecord` — ``results/<input path>/error.json``;
* :class:`ManifestLine` — one line of a batch's ``manifest.jsonl``.

The completion message lives in :mod:`samdrop.messages`. The classes are pydantic dataclasses: the
types below are the contract, checked when a document is built or read, and the JSON Schemas in
``schemas/`` are generated from them (:mod:`samdrop.schemas`). Reading is lax where Vertex AI needs
it: predictions pass through protobuf ``Value``, so every number may arrive as a float (``3.0`` is
read as the int 3, a box is rounded). An off-contract document raises ``pydantic.ValidationError``
(a ``ValueError``). See docs/design.md "Documents" and "Schemas".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, fields
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeVar, cast

from pydantic import ConfigDict, Field, TypeAdapter, computed_field, field_serializer, field_validator
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before Python 3.12

from samdrop.errors import ErrorInfo

JsonObject = dict[str, Any]
Mode = Literal["prompted", "automatic"]
# The version of every document below and of the completion message. Additive changes keep it; a
# removed or renamed field, or a changed type, bumps it (docs/design.md "Schemas").
SchemaVersion = Literal[1]
SCHEMA_VERSION: SchemaVersion = 1
# Lax reading (numbers as floats, generations as ints): see the module docstring. The schemas
# describe documents as written, so a field is required there unless it is left out when unset.
DOCUMENT = ConfigDict(coerce_numbers_to_str=True, json_schema_serialization_defaults_required=True)
T = TypeVar("T")


def absent_when_none() -> Any:
    """An optional field that is left out of the JSON when unset (its absence carries meaning)."""
    return Field(default=None, exclude_if=lambda value: value is None)


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[T]) -> TypeAdapter[T]:
    """The one validator and serializer of ``cls``, built on first use."""
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


class Document:
    """``to_json``/``from_json`` of the pydantic dataclasses below, through their one schema."""

    def to_json(self) -> JsonObject:
        return cast(JsonObject, _adapter(type(self)).dump_python(self, mode="json"))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        return _adapter(cls).validate_python(dict(raw))


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


@dataclass(frozen=True, config=DOCUMENT)
class MaskRecord(Document):
    """One mask. ``segmentation``: COCO RLE at the input's displayed size (a base64 PNG string only
    in a predictor answer asked for ``mask_format: "png"``); ``score``: predicted IoU; ``box``: XYXY
    int px, x1/y1 inclusive; ``area``: px; ``stability_score``; ``prompt_index`` (prompt mode: which
    prompt made it) or ``point_coords`` (automatic mode: the grid point(s) that made it, px XY);
    ``label``: the prompt's label, when the prompts named one; ``polygons``: only when asked for;
    ``tiles``: a tiled image's tiles the mask spans (indexes into its tile grid). Optional fields
    are left out when unset (their absence says which mode made the mask)."""

    segmentation: Rle | str
    score: float
    box: Annotated[list[int], Field(min_length=4, max_length=4)]  # [x0, y0, x1, y1]
    area: int
    stability_score: float | None = absent_when_none()
    prompt_index: int | None = absent_when_none()
    point_coords: list[list[float]] | None = absent_when_none()
    label: str | None = absent_when_none()
    polygons: Polygons | None = absent_when_none()
    tiles: list[int] | None = absent_when_none()

    @field_validator("box", mode="before")
    @classmethod
    def _round_box(cls, value: Any) -> Any:
        """A box read back through protobuf ``Value`` has float coordinates: whole pixels again."""
        return [round(float(v)) for v in value] if isinstance(value, list | tuple) else value

    @property
    def rle(self) -> Rle:
        if isinstance(self.segmentation, str):
            raise TypeError("segmentation must be a COCO RLE (ask the predictor for mask_format 'rle')")
        return self.segmentation


@dataclass(frozen=True, config=DOCUMENT)
class _MaskPlace:
    index: int
    png: str


@dataclass(frozen=True, config=DOCUMENT)
class IndexedMask(MaskRecord, _MaskPlace):
    """A mask as ``masks.json`` lists it: its ``index`` and its PNG's URI first, then the record."""

    @classmethod
    def of(cls, mask: MaskRecord, index: int, png: str) -> IndexedMask:
        values = {f.name: getattr(mask, f.name) for f in fields(MaskRecord)}
        return cls(index=index, png=png, **values)


@dataclass(frozen=True, config=DOCUMENT)
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


@dataclass(frozen=True, config=DOCUMENT)
class Prediction(Document):
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
    logits: list[JsonObject] | None = absent_when_none()
    tiling: TilingRecord | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def scores(self) -> list[float]:
        return [mask.score for mask in self.masks]

    @property
    def random_weights(self) -> bool:
        return bool(self.model.get("random_weights"))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        mode = raw.get("mode") or ("prompted" if raw.get("prompts") else "automatic")
        if mode == "prompts":  # the predictor's name for it before masks.json and it agreed
            mode = "prompted"
        return super().from_json({**raw, "mode": mode})


@dataclass(frozen=True, config=DOCUMENT)
class FailedPrediction(Document):
    """A predictor slot whose instance could not be segmented; it never fails its neighbours."""

    error: ErrorInfo
    file_path: str | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Self:
        error = raw["error"]
        if not isinstance(error, Mapping):
            return cls(ErrorInfo(code="invalid_input", message=str(error)), raw.get("file_path"))
        code = str(error.get("code") or "invalid_input")
        return cls(ErrorInfo(code=code, message=str(error.get("message") or error)), raw.get("file_path"))


def prediction_from_json(raw: Mapping[str, Any]) -> Prediction | FailedPrediction:
    """One slot of ``{"predictions": [...]}``: a failure when it carries ``error``."""
    return FailedPrediction.from_json(raw) if raw.get("error") else Prediction.from_json(raw)


@dataclass(frozen=True, kw_only=True, config=DOCUMENT)
class MasksDocument(Document):
    """``masks.json``: everything about one image's masks, the same from a single upload and a batch.

    ``generation``: the input's generation (a string: it exceeds JSON's safe integers);
    ``batch_id``: None for a single upload; ``masks``: written with their ``index`` and ``png`` URI;
    ``model``: what produced the masks (``type`` …, the shape completion messages carry too);
    ``note``: says when the masks come from random weights; ``predictor_timings_ms``: the model's
    stages; ``timings_ms``: the path's own stages (reading, endpoint or compute, writing);
    ``tiling``: how the image was tiled (None: it ran whole)."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    input: str
    generation: str
    batch_id: str | None = None
    width: int
    height: int
    mode: Mode
    prompts: PromptsRecord | None = None
    amg: JsonObject | None = None
    tiling: TilingRecord | None = None
    masks: list[MaskRecord]
    model: JsonObject = field(default_factory=dict)
    note: str | None = None
    predictor_timings_ms: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    outputs: MaskOutputs
    created: str = field(default_factory=lambda: now_iso())
    trace_id: str | None = absent_when_none()  # the image's OpenTelemetry trace, when traces are on

    @field_serializer("masks")
    def _indexed(self, masks: list[MaskRecord]) -> list[IndexedMask]:
        pngs = self.outputs["masks"]
        return [IndexedMask.of(mask, i, png) for i, (png, mask) in enumerate(zip(pngs, masks, strict=True))]

    @computed_field  # type: ignore[prop-decorator]
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


@dataclass(frozen=True, config=DOCUMENT)
class ErrorRecord(Document):
    """``error.json``: why an input could not be segmented (``code`` from ``samdrop.errors.ERROR_CODES``)."""

    schema_version: SchemaVersion = Field(default=SCHEMA_VERSION, kw_only=True)  # written first
    code: str
    message: str
    input: str
    generation: str

    @property
    def error(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message)


@dataclass(frozen=True, kw_only=True, config=DOCUMENT)
class ManifestLine(Document):
    """One image of a batch in ``manifest.jsonl``. ``status``: ``succeeded`` or ``failed``;
    ``resumed``: an earlier run had written its record; ``outputs``: the masks document's outputs, or
    ``{"error": uri}`` when ``error.json`` was written (none for a transient failure, which the next
    run retries); ``timings_ms``: this image's stages plus ``finished`` (a wall-clock timestamp, s);
    ``tiling``: the masks document's, for a tiled image."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    input: str
    file: str
    generation: str
    status: Literal["succeeded", "failed"]
    resumed: bool = False
    shard: int = 0
    mask_count: int | None = None
    scores: list[float] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    tiling: TilingRecord | None = None

    @computed_field  # type: ignore[prop-decorator]
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


def now_iso() -> str:
    """Now, UTC, to the second: the ``created`` stamp of documents."""
    return datetime.now(UTC).isoformat(timespec="seconds")
