"""Step 3 of a batch: the manifest, a static visual report (Markdown + HTML) and plots.

``build_report`` is pure: manifest lines and overlay thumbnails in, file bodies out. Thumbnails are
embedded in ``report.html`` (it is self-contained, also as a KFP HTML artifact); ``report.md`` links
each overlay relatively, so it renders beside the outputs in the bucket or a downloaded copy.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from PIL import Image

from pipeline.listing import PlanSummary
from pipeline.plots import bar_chart, histogram, line_chart
from samdrop.html_pages import render_page

MAX_THUMBNAILS = 200  # overlays embedded in report.html; the manifest lists every image
MAX_ROWS = 2000  # rows in the report tables
THUMBNAIL_SIDE = 160  # px
VIEW_FOLDER = "view/"  # one viewer page per listed image (samdrop/viewer.py), beside the report
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
    views: Collection[str] = (),
) -> list[ReportFile]:
    """``manifest.jsonl``, ``report.md``, ``report.html`` and the plots. ``thumbnails``: overlay JPEG
    bytes by manifest ``file``; ``note`` is shown on top (e.g. that the model has random weights);
    ``views``: the files whose viewer page (:func:`view_name`) was written, which the rows link."""
    plots = {name: _plot(name, lines) for name in PLOTS}
    files = [ReportFile("manifest.jsonl", manifest_body(lines), "application/x-ndjson")]
    files += [ReportFile(name, data, "image/png") for name, data in plots.items()]
    markdown = _markdown(summary, lines, note, views)
    files.append(ReportFile("report.md", markdown.encode("utf-8"), "text/markdown"))
    page = _html(summary, lines, thumbnails, plots, note, views)
    files.append(ReportFile("report.html", page.encode("utf-8"), "text/html"))
    return files


def view_name(file: str) -> str:
    """``view/a/b.jpg.html``: the viewer page of ``file``, relative to the batch's report folder."""
    return f"{VIEW_FOLDER}{file}.html"


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


def _markdown(
    summary: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], note: str | None, views: Collection[str]
) -> str:
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
            view = f" [view masks]({quote(view_name(file))})" if file in views else ""
            out.append(f"| {cell} | `{file}`{view} | {status} | {masks} | {_score(line)} | {top} |")
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
    views: Collection[str],
) -> str:
    thumbs = {file: _data_uri("image/jpeg", data) for file, data in thumbnails.items()}
    rows = [
        {
            "line": line,
            "thumbnail": thumbs.get(line["file"]),
            "view": quote(view_name(line["file"])) if line["file"] in views else None,
            "tiles": _tiles(line),
            "score": _score(line),
        }
        for line in lines[:MAX_ROWS]
    ]
    return render_page(
        "pipeline",
        "report.html.j2",
        summary=summary,
        note=note,
        plots=[(PLOTS[name], _data_uri("image/png", data)) for name, data in plots.items()],
        rows=rows,
        more=max(0, len(lines) - MAX_ROWS),
    )


def _tiles(line: Mapping[str, Any]) -> str:
    """`` from 20 tiles (5x4, 1024 px / 128 overlap)`` for a tiled image, else ``""``."""
    tiling = line.get("tiling")
    if not tiling:
        return ""
    columns, rows = tiling["grid"]
    return (
        f" from {tiling['tiles']} tiles ({columns}x{rows}, {tiling['tile']} px / {tiling['overlap']} overlap)"
    )


def _data_uri(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _score(line: Mapping[str, Any]) -> str:
    return f"{line['mean_score']:.3f}" if line.get("mean_score") is not None else "-"


def _md_path(file: str) -> str:
    return file.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
