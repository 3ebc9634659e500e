"""What each pipeline component does, with its clients passed in (the component bodies are the edge).

``list_step`` → ``shard_step`` (one per shard) → ``aggregate_step`` → ``publish_step``. Every step can run
again for the same batch: the plan is reused, finished images are skipped, the report is rebuilt
and the completion is published once (``completion.json`` records it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.completion import completion_from_summary
from pipeline.exports import (
    COCO_FILE,
    YOLO_FOLDER,
    ExportImage,
    categories,
    coco_instances,
    label_counts,
    yolo_data_yaml,
    yolo_label_name,
    yolo_labels,
)
from pipeline.listing import (
    BatchOptions,
    TreeStore,
    existing_plan,
    plan_batch,
    read_plan,
    read_shard,
    write_plan,
)
from pipeline.report import MAX_ROWS, MAX_THUMBNAILS, build_report, summarize, thumbnail, view_name
from samdrop.batches import BatchPaths, failed_completion
from samdrop.documents import ManifestLine, MasksDocument
from samdrop.errors import ErrorInfo, SamdropError
from samdrop.layout import input_generation, json_record, write_output
from samdrop.messages import Publisher, publish_completion
from samdrop.settings import Settings
from samdrop.storage import ObjectStore, split_uri
from samdrop.viewer import page_from_store

if TYPE_CHECKING:  # torch is imported by the shard task only: the other tasks start in 0.5 s, not 4
    from predictor import Engine

EngineFactory = Callable[[Settings], "Engine"]
log = logging.getLogger(__name__)
# Longest side of the image inlined in a batch's viewer pages (px): a 4000x3000 photo keeps 26% of
# its pixels, for up to MAX_ROWS pages; `samdrop view` inlines it whole.
VIEW_IMAGE_SIDE = 2048


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: TreeStore
    publisher: Publisher | None = None


def context_from_env(
    env: Mapping[str, str], config: Mapping[str, str], *, publisher: bool = False
) -> Context:
    """Settings from the task's environment overlaid with ``config``, and real clients (emulators
    when ``STORAGE_EMULATOR_HOST`` / ``PUBSUB_EMULATOR_HOST`` are set)."""
    from google.cloud import storage

    from samdrop.messages import PubsubPublisher
    from samdrop.storage import GcsStore

    settings = Settings.from_env({**env, **config})
    store = GcsStore(storage.Client(project=settings.project), timeout_s=settings.request_timeout_s)
    pubsub = None
    if publisher:
        from google.cloud import pubsub_v1

        pubsub = PubsubPublisher(
            pubsub_v1.PublisherClient(), settings.project, timeout_s=settings.request_timeout_s
        )
    return Context(settings, store, pubsub)


def list_step(ctx: Context, batch_id: str, bucket: str, marker_generation: int) -> list[int]:
    """Plan the batch (or reuse the plan of this marker generation); returns the shard indexes."""
    paths = BatchPaths.of(ctx.settings, batch_id, bucket)
    existing = existing_plan(paths, marker_generation, ctx.store)
    if existing is not None:
        return list(range(existing.shards))
    started = time.perf_counter()
    plan = plan_batch(
        paths,
        marker_generation,
        ctx.store,
        default_shard_size=ctx.settings.shard_size,
        workers=ctx.settings.pipeline_parallelism,
        model_type=ctx.settings.model_type,
    )
    write_plan(paths, plan, ctx.store, list_ms=round((time.perf_counter() - started) * 1000, 1))
    return list(range(len(plan.shards)))


def shard_step(
    ctx: Context,
    batch_id: str,
    bucket: str,
    shard: int,
    *,
    requested: Mapping[str, Any] | None = None,
    engine_factory: EngineFactory | None = None,
) -> dict[str, Any]:
    """Segment shard ``shard`` and record what it did; returns its counts and time split (ms).
    ``engine_factory`` defaults to :func:`predictor.load_engine`."""
    from pipeline.shard import ShardWorker
    from predictor import load_engine

    started = time.perf_counter()
    paths = BatchPaths.of(ctx.settings, batch_id, bucket)
    plan = read_plan(paths, ctx.store)
    items = read_shard(paths, shard, ctx.store)
    options = plan.options
    loading = time.perf_counter()
    engine = (engine_factory or load_engine)(ctx.settings)
    load_ms = round((time.perf_counter() - loading) * 1000, 1)
    worker = ShardWorker(
        paths=paths, shard=shard, settings=ctx.settings, store=ctx.store, engine=engine, options=options
    )
    result = worker.run(items)
    timings = {
        "load_model": load_ms,
        **result.timings_ms,
        "wall": round((time.perf_counter() - started) * 1000, 1),
    }
    report = {
        "index": shard,
        "model": engine.description,
        "requested": dict(requested or {}),
        "timings_ms": timings,
        "lines": result.lines,
    }
    _write_json(ctx.store, paths.output_bucket, paths.shard_report(shard), report, plan.marker_generation)
    succeeded = sum(1 for line in result.lines if line["status"] == "succeeded")
    return {"shard": shard, "images": len(result.lines), "succeeded": succeeded, "timings_ms": timings}


def aggregate_step(ctx: Context, batch_id: str, bucket: str) -> tuple[dict[str, Any], str, str]:
    """Write manifest, report and plots from the shard reports; returns (summary, report.md, report.html).

    An image whose shard never reported gets a ``not_processed`` line: the manifest always has one
    line per image of the plan.
    """
    paths = BatchPaths.of(ctx.settings, batch_id, bucket)
    plan = read_plan(paths, ctx.store)
    marker_generation = plan.marker_generation
    lines: list[dict[str, Any]] = []
    timings: list[dict[str, float]] = []
    model: dict[str, Any] = {}
    for index in range(plan.shards):
        info = ctx.store.stat(paths.output_bucket, paths.shard_report(index))
        if info is not None:
            report = json.loads(ctx.store.read(paths.output_bucket, info.name, generation=info.generation))
            lines += report["lines"]
            timings.append(report["timings_ms"])
            model = model or report.get("model", {})
            continue
        for item in read_shard(paths, index, ctx.store):
            error = ErrorInfo(
                code="not_processed",
                message=f"shard {index} did not finish: run the pipeline again to resume",
            )
            lines.append(
                ManifestLine.failed(
                    error,
                    input_uri=paths.input(item.name),
                    file=paths.relative(item.name),
                    generation=item.generation,
                    shard=index,
                    resumed=False,
                    error_uri=None,
                    timings_ms={},
                ).to_json()
            )
    summary = summarize(plan, lines, timings)
    summary["model"] = model
    thumbnails = _thumbnails(ctx.store, lines)
    note = model.get("note") if model.get("random_weights") else None
    images = _masks_documents(ctx.store, lines)
    listed = {line["file"] for line in lines[:MAX_ROWS]}
    views = write_viewer_pages(
        ctx.store, paths, [image for image in images if image.file in listed], ctx.settings, marker_generation
    )
    files = build_report(summary, lines, thumbnails, note=note, views=views)
    for file in files:
        _write(
            ctx.store,
            paths.output_bucket,
            paths.report(file.name),
            file.data,
            file.content_type,
            marker_generation,
        )
    exports, counts = write_exports(ctx.store, paths, images, plan.options, marker_generation)
    summary["exports"] = exports
    summary["label_counts"] = counts
    _write_json(ctx.store, paths.output_bucket, paths.summary, summary, marker_generation)
    bodies = {
        file.name: file.data.decode("utf-8") for file in files if file.name in ("report.md", "report.html")
    }
    return summary, bodies["report.md"], bodies["report.html"]


def publish_step(
    ctx: Context, batch_id: str, bucket: str, marker_generation: int, run_error: str | None = None
) -> dict[str, Any]:
    """Publish the batch completion once per marker generation; returns the message.

    Without ``summary.json`` (the run failed before its report) the completion is ``failed`` and
    says why (``run_error``: the pipeline's own error message, when known). A later run that
    resumes and writes the report publishes the real outcome once more, replacing that record.
    """
    assert ctx.publisher is not None, "publish_step needs a publisher"
    paths = BatchPaths.of(ctx.settings, batch_id, bucket)
    store, bucket_out = ctx.store, paths.output_bucket
    info = store.stat(bucket_out, paths.summary)
    has_summary = info is not None and input_generation(info.metadata) == marker_generation
    done = store.stat(bucket_out, paths.completion)
    if done is not None and input_generation(done.metadata) == marker_generation:
        previous = dict(json.loads(store.read(bucket_out, paths.completion, generation=done.generation)))
        if not (has_summary and (previous.get("error") or {}).get("code") == "pipeline_failed"):
            return previous
    if info is not None and has_summary:
        summary = json.loads(store.read(bucket_out, paths.summary, generation=info.generation))
        message = completion_from_summary(summary, paths)
    else:
        message = failed_completion(
            paths,
            "pipeline_failed",
            f"the pipeline run for batch {batch_id} failed before writing its report"
            + (f" ({run_error})" if run_error else "")
            + "; outputs written so far are kept and a new run resumes from them",
        )
    message_id = publish_completion(ctx.publisher, ctx.settings.completions_topic, message)
    body = message.to_record(message_id)
    _write_json(ctx.store, paths.output_bucket, paths.completion, body, marker_generation)
    return body


def write_exports(
    store: ObjectStore,
    paths: BatchPaths,
    images: list[ExportImage],
    options: BatchOptions,
    marker_generation: int,
) -> tuple[dict[str, str], dict[str, int]]:
    """Write ``annotations.coco.json`` (always) and the YOLO-seg labels (``"outputs": ["yolo"]``)
    from the succeeded images' ``masks.json``; returns ``{"coco": uri[, "yolo": data.yaml uri]}``
    and the masks per label (:func:`pipeline.exports.label_counts`)."""
    bucket = paths.output_bucket
    concepts = options.text or ()
    coco = coco_instances(images, description=f"samdrop batch {paths.batch_id}", concepts=concepts)
    _write_json(store, bucket, paths.report(COCO_FILE), coco, marker_generation)
    written = {"coco": paths.uri(paths.report(COCO_FILE))}
    if "yolo" in options.outputs:
        names = categories(images, concepts)
        for image in images:
            label = yolo_labels(image, names).encode("utf-8")
            _write(
                store,
                bucket,
                paths.report(yolo_label_name(image.file)),
                label,
                "text/plain",
                marker_generation,
            )
        data_yaml = paths.report(YOLO_FOLDER + "data.yaml")
        body = yolo_data_yaml(names, batch_uri=paths.input_uri).encode("utf-8")
        _write(store, bucket, data_yaml, body, "application/yaml", marker_generation)
        written["yolo"] = paths.uri(data_yaml)
    return written, label_counts(images, concepts)


def write_viewer_pages(
    store: ObjectStore,
    paths: BatchPaths,
    images: list[ExportImage],
    settings: Settings,
    marker_generation: int,
) -> set[str]:
    """Write one viewer page (:mod:`samdrop.viewer`) per image as ``view/<file>.html`` in the batch's
    report folder, the image at most ``VIEW_IMAGE_SIDE`` px; returns the files that have one. A page
    that cannot be made (its input was replaced meanwhile, say) only leaves its row without a link."""

    def one(image: ExportImage) -> str | None:
        try:
            page = page_from_store(
                store, image.doc, max_pixels=settings.max_image_pixels, max_side=VIEW_IMAGE_SIDE
            )
            name = paths.report(view_name(image.file))
            _write(store, paths.output_bucket, name, page.encode("utf-8"), "text/html", marker_generation)
        except SamdropError as exc:
            log.warning("no viewer page for %s: %s", image.file, exc.message)
            return None
        return image.file

    with ThreadPoolExecutor(settings.io_threads, thread_name_prefix="samdrop-view") as pool:
        return {file for file in pool.map(one, images) if file is not None}


def _masks_documents(store: ObjectStore, lines: list[dict[str, Any]]) -> list[ExportImage]:
    """The ``masks.json`` of every succeeded image, read once for the viewer pages and the exports."""
    succeeded = [line for line in lines if line["status"] == "succeeded" and line["outputs"].get("metadata")]

    def one(line: Mapping[str, Any]) -> ExportImage:
        bucket, name = split_uri(str(line["outputs"]["metadata"]))
        return ExportImage(line["file"], MasksDocument.from_json(json.loads(store.read(bucket, name))))

    with ThreadPoolExecutor(8, thread_name_prefix="samdrop-export") as pool:
        return list(pool.map(one, succeeded))


def _thumbnails(store: ObjectStore, lines: list[dict[str, Any]]) -> dict[str, bytes]:
    wanted = [line for line in lines if line["status"] == "succeeded"][:MAX_THUMBNAILS]

    def one(line: Mapping[str, Any]) -> tuple[str, bytes | None]:
        bucket, name = split_uri(line["outputs"]["overlay"])
        try:
            return line["file"], thumbnail(store.read(bucket, name))
        except (SamdropError, OSError):
            return line["file"], None  # a missing preview only leaves a gap in the report

    with ThreadPoolExecutor(8, thread_name_prefix="samdrop-thumb") as pool:
        return {file: data for file, data in pool.map(one, wanted) if data is not None}


def _write(
    store: ObjectStore, bucket: str, name: str, data: bytes, content_type: str, generation: int
) -> None:
    """Create or replace the batch file ``name`` (replacing exactly the version seen)."""
    write_output(
        store, bucket, name, data, content_type, seen=store.stat(bucket, name), generation=generation
    )


def _write_json(store: ObjectStore, bucket: str, name: str, doc: Mapping[str, Any], generation: int) -> None:
    _write(store, bucket, name, json_record(doc), "application/json", generation)
