"""Batch summary, manifest, report and plots (pure), and the aggregate/publish steps over fakes."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
from PIL import Image

from pipeline.listing import BatchOptions, PlanSummary, plan_batch, write_plan
from pipeline.plots import bar_chart, histogram, line_chart
from pipeline.report import PLOTS, build_report, summarize, thumbnail
from pipeline.steps import Context, aggregate_step, publish_step, shard_step
from samdrop.batches import BatchPaths
from samdrop.settings import Settings

from .function_fakes import FakePublisher
from .pipeline_fakes import BUCKET, RESULTS, TreeStore, png

SETTINGS = Settings.from_env({"SAMDROP_BUCKET": BUCKET}, io_threads=2)
PLAN = PlanSummary(
    batch_id="b1",
    input="gs://b/batches/b1/",
    marker_generation=9,
    options=BatchOptions(),
    images=3,
    shards=1,
    shard_size=3,
    warnings=[],
    error=None,
    created="2026-12-03T00:00:00+00:00",
)


def _line(
    file: str, status: str = "succeeded", masks: int = 2, resumed: bool = False, finished: float = 100.0
):
    ok = status == "succeeded"
    return {
        "input": f"gs://b/batches/b1/{file}",
        "file": file,
        "generation": "1",
        "status": status,
        "resumed": resumed,
        "shard": 0,
        "mask_count": masks if ok else None,
        "scores": [0.9, 0.5][:masks] if ok else [],
        "mean_score": 0.7 if ok else None,
        "outputs": {"overlay": f"gs://b/results/batches/b1/{file}/overlay.jpg"} if ok else {},
        "error": None if ok else {"code": "invalid_image", "message": "not | an image"},
        "timings_ms": {"read": 5.0, "decode": 2.0, "compute": 300.0, "write": 20.0, "finished": finished},
    }


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["succeeded"] * 3, "succeeded"),
        (["succeeded", "failed", "succeeded"], "partial"),
        (["failed"] * 3, "failed"),
    ],
)
def test_summary_status_follows_the_counts(statuses, expected):
    lines = [_line(f"{i}.png", s) for i, s in enumerate(statuses)]
    summary = summarize(PLAN, lines, [{"compute": 900.0, "wall": 1000.0}, {"compute": 100.0, "wall": 50.0}])
    assert summary["status"] == expected
    assert summary["succeeded"] + summary["failed"] == 3
    assert summary["timings_ms"]["compute"] == 1000.0 and summary["timings_ms"]["wall"] == 1050.0


def test_missing_shard_reports_count_as_failed_and_a_plan_error_fails_the_batch():
    assert summarize(PLAN, [_line("a.png")], [])["status"] == "partial"
    broken = summarize(replace(PLAN, images=0, error={"code": "empty_batch", "message": "m"}), [], [])
    assert broken["status"] == "failed" and broken["error"]["code"] == "empty_batch"


def test_report_files_hold_thumbnails_scores_and_plots():
    lines = [
        _line("a.png", finished=100.0),
        _line("b b.png", masks=1, finished=101.0),
        _line("c.png", "failed"),
    ]
    lines.append(_line("d.png", resumed=True))
    summary = summarize(replace(PLAN, images=4), lines, [{"compute": 900.0}])
    overlay = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 10, 10)).save(overlay, format="JPEG")
    thumbs = {"a.png": thumbnail(overlay.getvalue())}
    report = build_report(summary, lines, thumbs, note="RANDOM weights", views={"a.png", "b b.png"})
    files = {f.name: f for f in report}
    assert set(files) == {"manifest.jsonl", "report.md", "report.html", *PLOTS}
    manifest = [json.loads(line) for line in files["manifest.jsonl"].data.decode().splitlines()]
    assert [m["file"] for m in manifest] == ["a.png", "b b.png", "c.png", "d.png"]
    md = files["report.md"].data.decode()
    assert '<img src="a.png/overlay.jpg"' in md and "b%20b.png/overlay.jpg" in md
    assert "| 2 | 0.700 | 0.900, 0.500 |" in md and "not \\| an image" in md and "RANDOM weights" in md
    assert "(earlier run)" in md and "partial" in md.splitlines()[0]
    assert "[view masks](view/b%20b.png.html)" in md and md.count("[view masks]") == 2
    page = files["report.html"].data.decode()
    assert '<a href="view/a.png.html">' in page and page.count("view masks") == 2
    assert "not | an image" in page and "<b>invalid_image</b>" in page
    assert page.count("data:image/jpeg;base64,") == 1 and page.count("data:image/png;base64,") == 3
    for name in PLOTS:
        with Image.open(io.BytesIO(files[name].data)) as image:
            assert image.format == "PNG" and image.size == (640, 400)
    with Image.open(io.BytesIO(thumbs["a.png"])) as small:
        assert max(small.size) == 160


def test_histogram_and_charts():
    labels, counts = histogram([1.0, 1.0, 2.0, 3.0, 9.0], bins=4)
    assert counts == [3.0, 1.0, 0.0, 1.0] and labels[0] == "1"
    assert histogram([], bins=3) == ([], [])
    assert histogram([2.0, 2.0]) == (["2"], [2.0])
    for data in (
        line_chart({"a": [(0, 1), (1, 3)], "b": [(0, 2)]}, title="t", x_label="x", y_label="y"),
        bar_chart(["1", "2"], [3.0, 0.0], title="t", x_label="x", y_label="y"),
        line_chart({"empty": []}, title="t", x_label="x", y_label="y"),
    ):
        assert data.startswith(b"\x89PNG")


def _planned_batch(store: TreeStore) -> tuple[BatchPaths, int]:
    paths = BatchPaths.of(SETTINGS, "b1")
    for i, name in enumerate(["a.png", "b.png", "bad.png"]):
        data = b"broken" if name == "bad.png" else png(seed=i)
        store.put(BUCKET, f"batches/b1/{name}", data, content_type="image/png")
    store.put(BUCKET, "batches/b1/prompts.json", json.dumps({"a.png": {"points": [[5, 5]]}}).encode())
    marker = store.put(BUCKET, "batches/b1/_READY", b'{"shard_size": 2, "amg": {"points_per_side": 2}}')
    write_plan(paths, plan_batch(paths, marker, store, default_shard_size=8), store)
    return paths, marker


def test_aggregate_fills_in_shards_that_never_reported_and_publish_sends_once(fast_engine):
    store, publisher = TreeStore(), FakePublisher()
    ctx = Context(SETTINGS, store, publisher)
    paths, marker = _planned_batch(store)
    report = shard_step(ctx, "b1", BUCKET, 0, engine_factory=lambda s: fast_engine)  # shard 1 never runs
    assert report["images"] == 2 and report["succeeded"] == 2
    summary, markdown, page = aggregate_step(ctx, "b1", BUCKET)
    assert (summary["status"], summary["succeeded"], summary["failed"]) == ("partial", 2, 1)
    manifest = store.objects[(RESULTS, paths.manifest)].data.decode().splitlines()
    assert json.loads(manifest[2])["error"]["code"] == "not_processed"
    assert "# Batch b1: partial" in markdown and "<html>" in page
    assert "tiny model with random weights" in markdown
    views = sorted(n for (b, n) in store.objects if b == RESULTS and "/view/" in n)
    assert views == [paths.report("view/a.png.html"), paths.report("view/b.png.html")]
    assert 'href="view/a.png.html"' in page

    body = publish_step(ctx, "b1", BUCKET, marker)
    assert body["status"] == "partial" and body["images"] == 3 and body["failed"] == 1
    assert body["outputs"]["manifest"] == "gs://samdrop-local-results/results/batches/b1/manifest.jsonl"
    assert publish_step(ctx, "b1", BUCKET, marker) == body
    assert len(publisher.messages) == 1
    (_, _, attributes) = publisher.messages[0]
    assert attributes == {"schema_version": "1", "kind": "batch", "status": "partial", "batch_id": "b1"}


def test_a_batch_where_every_image_fails_publishes_failed(fast_engine):
    store, publisher = TreeStore(), FakePublisher()
    ctx = Context(SETTINGS, store, publisher)
    paths = BatchPaths.of(SETTINGS, "b2")
    store.put(BUCKET, "batches/b2/x.png", b"junk", content_type="image/png")
    marker = store.put(BUCKET, "batches/b2/_READY", b"")
    write_plan(paths, plan_batch(paths, marker, store, default_shard_size=8), store)
    shard_step(ctx, "b2", BUCKET, 0, engine_factory=lambda s: fast_engine)
    aggregate_step(ctx, "b2", BUCKET)
    body = publish_step(ctx, "b2", BUCKET, marker)
    assert body["status"] == "failed" and body["error"]["code"] == "all_failed"


def test_a_failed_run_then_a_resumed_one_publishes_the_real_outcome_once(fast_engine):
    store, publisher = TreeStore(), FakePublisher()
    ctx = Context(SETTINGS, store, publisher)
    _, marker = _planned_batch(store)
    failed = publish_step(ctx, "b1", BUCKET, marker, run_error="FAILED: shard 0 was preempted")
    assert failed["status"] == "failed" and "preempted" in failed["error"]["message"]
    for shard in (0, 1):
        shard_step(ctx, "b1", BUCKET, shard, engine_factory=lambda s: fast_engine)
    aggregate_step(ctx, "b1", BUCKET)
    resumed = publish_step(ctx, "b1", BUCKET, marker)
    assert (resumed["status"], resumed["succeeded"], resumed["failed"]) == ("partial", 2, 1)
    assert publish_step(ctx, "b1", BUCKET, marker) == resumed
    assert [body["status"] for body in publisher.bodies] == ["failed", "partial"]
