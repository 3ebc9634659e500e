"""Step 3 of a batch: the manifest, a static visual report (Markdown + HTML) and plots.

``build_report`` is pure: manifest lines and overlay thumbnails in, file bodies out. Thumbnails are
embedded in ``report.html`` (it is self-contained, also as a KFP HTML artifact); ``report.md`` links
each overlay relatively, so it renders beside the outputs in the bucket or a downloaded copy.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.listing import PlanSummary
from pipeline.plots import bar_chart, histogram, line_chart

MAX_THUMBNAILS = 200  # overlays embedded in report.html; the manifest lists every image
MAX_ROWS = 2000  # rows in the report tables
THUMBNAIL_SIDE = 160  # px
STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    "figure{display:inline-block;margin:0 1em 1em 0}.note{background:#fff3b0;padding:.5em}"
)
PLOTS = {
    "throughput.png": "Images per second over the run",
    "time_per_image.png": "Time per image (read + decode + compute + write)",
    "masks_per_image.png": "Masks per image",
}


@dataclass(frozen=True)
class ReportFile:
    name: str
    data: bytes
    content_type: str


def summarize(
    plan: PlanSummary, lines: Sequence[Mapping[str, Any]], shard_timings: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Counts, status and time split of a batch. ``status``: ``succeeded`` when every image has masks,
    ``failed`` when none has (or the batch itself is invalid), ``partial`` otherwise."""
    succeeded = sum(1 for line in lines if line["status"] == "succeeded")
    failed = len(lines) - succeeded
    missing = plan.images - len(lines)  # shards that never reported
    failed += max(0, missing)
    if plan.error:
        status = "failed"
    elif failed == 0:
        status = "succeeded"
    else:
        status = "partial" if succeeded else "failed"
    split = {"list": plan.list_ms or 0.0}
    split.update(
        {
            key: round(sum(t.get(key, 0.0) for t in shard_timings), 1)
            for key in ("load_model", "read", "decode", "compute", "write", "wall")
        }
    )
    return {
        "batch_id": plan.batch_id,
        "input": plan.input,
        "marker_generation": str(plan.marker_generation),
        "status": status,
        "images": plan.images,
        "succeeded": succeeded,
        "failed": failed,
        "not_reported": max(0, missing),
        "resumed": sum(1 for line in lines if line.get("resumed")),
        "masks": sum(line.get("mask_count") or 0 for line in lines),
        "errors": dict(Counter(line["error"]["code"] for line in lines if line.get("error"))),
        "warnings": list(plan.warnings),
        "error": plan.error,
        "timings_ms": split,
        "shards": len(shard_timings),
    }


def manifest_body(lines: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n" for line in lines).encode(
        "utf-8"
    )


def build_report(
    summary: Mapping[str, Any],
    lines: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, bytes],
    *,
    note: str | None = None,
) -> list[ReportFile]:
    """``manifest.jsonl``, ``report.md``, ``report.html`` and the plots. ``thumbnails``: overlay JPEG
    bytes by manifest ``file``; ``note`` is shown on top (e.g. that the model has random weights)."""
    plots = {name: _plot(name, lines) for name in PLOTS}
    files = [ReportFile("manifest.jsonl", manifest_body(lines), "application/x-ndjson")]
    files += [ReportFile(name, data, "image/png") for name, data in plots.items()]
    files.append(ReportFile("report.md", _markdown(summary, lines, note).encode("utf-8"), "text/markdown"))
    page = _html(summary, lines, thumbnails, plots, note)
    files.append(ReportFile("report.html", page.encode("utf-8"), "text/html"))
    return files


def thumbnail(jpeg: bytes) -> bytes:
    """A small JPEG of an overlay, longest side ``THUMBNAIL_SIDE`` px."""
    with Image.open(io.BytesIO(jpeg)) as opened:
        small = opened.convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


# --- plots -------------------------------------------------------------------------------------


def _computed(lines: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [line for line in lines if not line.get("resumed") and "finished" in line.get("timings_ms", {})]


def _plot(name: str, lines: Sequence[Mapping[str, Any]]) -> bytes:
    title = PLOTS[name]
    computed = _computed(lines)
    if name == "throughput.png":
        return line_chart(
            {"images/s": _throughput(computed)},
            title=title,
            x_label="seconds since the first image",
            y_label="images/s",
        )
    if name == "time_per_image.png":
        seconds = [_image_seconds(line) for line in computed]
        labels, counts = histogram(seconds)
        return bar_chart(labels, counts, title=title, x_label="seconds", y_label="images")
    counts_by_masks = Counter(int(line["mask_count"]) for line in lines if line.get("mask_count") is not None)
    if len(counts_by_masks) <= 24:
        keys = sorted(counts_by_masks)
        return bar_chart(
            [str(k) for k in keys],
            [float(counts_by_masks[k]) for k in keys],
            title=title,
            x_label="masks",
            y_label="images",
        )
    labels, counts = histogram([float(k) for k, n in counts_by_masks.items() for _ in range(n)])
    return bar_chart(labels, counts, title=title, x_label="masks", y_label="images")


def _image_seconds(line: Mapping[str, Any]) -> float:
    timings = line.get("timings_ms", {})
    return sum(float(timings.get(key, 0.0)) for key in ("read", "decode", "compute", "write")) / 1000.0


def _throughput(lines: Sequence[Mapping[str, Any]], bins: int = 12) -> list[tuple[float, float]]:
    """``(seconds since start, images/s)`` per time bin, from each image's ``finished`` time."""
    finished = sorted(float(line["timings_ms"]["finished"]) for line in lines)
    if not finished:
        return []
    start = finished[0] - min((_image_seconds(line) for line in lines), default=0.0)
    span = finished[-1] - start
    if span <= 0:
        return [(0.0, float(len(finished)))]
    width = span / bins
    counts = [0] * bins
    for t in finished:
        counts[min(bins - 1, int((t - start) / width))] += 1
    return [(round((i + 0.5) * width, 2), round(c / width, 3)) for i, c in enumerate(counts)]


# --- documents ---------------------------------------------------------------------------------


def _markdown(summary: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], note: str | None) -> str:
    out = [f"# Batch {summary['batch_id']}: {summary['status']}", ""]
    if note:
        out += [f"> **{note}**", ""]
    out += [
        f"Input `{summary['input']}`: {summary['images']} images, {summary['succeeded']} with masks, "
        f"{summary['failed']} failed, {summary['resumed']} taken from an earlier run; "
        f"{summary['masks']} masks in all.",
        "",
    ]
    if summary.get("error"):
        out += [f"**Batch error** `{summary['error']['code']}`: {summary['error']['message']}", ""]
    out += [f"- warning: {w}" for w in summary.get("warnings", [])] + [""]
    split = summary["timings_ms"]
    out += ["| stage | seconds (summed over shards) |", "|---|---:|"]
    out += [f"| {key} | {value / 1000:.2f} |" for key, value in split.items()]
    out += [""] + [f"![{title}]({name})" for name, title in PLOTS.items()] + [""]
    out += ["| overlay | file | status | masks | mean score | top scores |", "|---|---|---|---:|---:|---|"]
    for line in lines[:MAX_ROWS]:
        file = line["file"]
        if line["status"] == "succeeded":
            cell = f'<img src="{_md_path(file)}/overlay.jpg" width="{THUMBNAIL_SIDE}">'
            status = "succeeded" + (" (earlier run)" if line.get("resumed") else "")
            top = ", ".join(f"{s:.3f}" for s in line["scores"][:5])
            masks = f"{line['mask_count']}{_tiles(line)}"
            out.append(f"| {cell} | `{file}` | {status} | {masks} | {_score(line)} | {top} |")
        else:
            error = line["error"]
            message = error["message"].replace("|", "\\|")
            out.append(f"| | `{file}` | failed: `{error['code']}` {message} | | | |")
    if len(lines) > MAX_ROWS:
        out.append(f"\n{len(lines) - MAX_ROWS} more images: see manifest.jsonl")
    return "\n".join(out) + "\n"


def _html(
    summary: Mapping[str, Any],
    lines: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, bytes],
    plots: Mapping[str, bytes],
    note: str | None,
) -> str:
    e = html.escape
    rows = []
    for line in lines[:MAX_ROWS]:
        file = line["file"]
        thumb = thumbnails.get(file)
        cell = f'<img src="data:image/jpeg;base64,{_b64(thumb)}" alt="overlay">' if thumb else ""
        if line["status"] == "succeeded":
            detail = f"{line['mask_count']} masks{_tiles(line)}, mean score {_score(line)}"
            scores = ", ".join(f"{s:.3f}" for s in line["scores"][:5])
        else:
            detail = f"<b>{e(line['error']['code'])}</b>: {e(line['error']['message'])}"
            scores = ""
        status = line["status"] + (" (earlier run)" if line.get("resumed") else "")
        cells = [cell, f"<code>{e(file)}</code>", e(status), detail, scores]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    images = "".join(
        f'<figure><img src="data:image/png;base64,{_b64(data)}" alt="{e(PLOTS[name])}"></figure>'
        for name, data in plots.items()
    )
    split = "".join(
        f"<tr><td>{e(k)}</td><td>{v / 1000:.2f}</td></tr>" for k, v in summary["timings_ms"].items()
    )
    warnings = "".join(f"<li>{e(w)}</li>" for w in summary.get("warnings", []))
    error = summary.get("error")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Batch {e(summary["batch_id"])}</title>
<style>{STYLE}</style></head><body>
<h1>Batch {e(summary["batch_id"])}: {e(summary["status"])}</h1>
{f'<p class="note">{e(note)}</p>' if note else ""}
<p>Input <code>{e(summary["input"])}</code>: {summary["images"]} images, {summary["succeeded"]} with masks,
{summary["failed"]} failed, {summary["resumed"]} from an earlier run; {summary["masks"]} masks in all.</p>
{f"<p><b>Batch error {e(error['code'])}</b>: {e(error['message'])}</p>" if error else ""}
<ul>{warnings}</ul>
<table><tr><th>stage</th><th>seconds (summed over shards)</th></tr>{split}</table>
<div>{images}</div>
<table><tr><th>overlay</th><th>file</th><th>status</th><th>masks</th><th>top scores</th></tr>
{"".join(rows)}</table>
{f"<p>{len(lines) - MAX_ROWS} more images: see manifest.jsonl</p>" if len(lines) > MAX_ROWS else ""}
</body></html>
"""


def _tiles(line: Mapping[str, Any]) -> str:
    """`` from 20 tiles (5x4, 1024 px / 128 overlap)`` for a tiled image, else ``""``."""
    tiling = line.get("tiling")
    if not tiling:
        return ""
    columns, rows = tiling["grid"]
    return (
        f" from {tiling['tiles']} tiles ({columns}x{rows}, {tiling['tile']} px / {tiling['overlap']} overlap)"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _score(line: Mapping[str, Any]) -> str:
    return f"{line['mean_score']:.3f}" if line.get("mean_score") is not None else "-"


def _md_path(file: str) -> str:
    return file.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
