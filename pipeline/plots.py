"""Small PNG charts drawn with Pillow (no plotting library in the serving image): lines and bars."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 640, 400
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 55
COLOURS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0)]
TICKS = 5


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str
) -> bytes:
    """PNG bytes of one line (with dots) per named series of ``(x, y)`` points, with a legend."""
    points = [p for values in series.values() for p in values]
    x_max = max((x for x, _ in points), default=1.0) or 1.0
    x_min = min((x for x, _ in points), default=0.0)
    x_min = min(x_min, 0.0)
    y_max = _nice_max(max((y for _, y in points), default=1.0))
    image, draw, frame = _canvas(title, x_label, y_label, (x_min, x_max), y_max)
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        xy = [frame.at(x, y) for x, y in sorted(values)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        legend_y = MARGIN_TOP + 6 + 16 * index
        draw.rectangle((MARGIN_LEFT + 10, legend_y + 3, MARGIN_LEFT + 22, legend_y + 11), fill=colour)
        draw.text((MARGIN_LEFT + 28, legend_y), name, fill=(0, 0, 0))
    return _png(image)


def bar_chart(
    labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str, y_label: str
) -> bytes:
    """PNG bytes of one bar per label (e.g. a histogram's bins)."""
    y_max = _nice_max(max(values, default=1.0))
    count = max(len(values), 1)
    image, draw, frame = _canvas(title, x_label, y_label, (0.0, float(count)), y_max, x_ticks=False)
    step = max(1, count // 10)
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0, y0 = frame.at(index + 0.1, value)
        x1, y1 = frame.at(index + 0.9, 0.0)
        if value > 0:
            draw.rectangle((x0, y0, x1, y1), fill=COLOURS[0])
        if index % step == 0:
            draw.text((x0, y1 + 4), label, fill=(0, 0, 0))
    return _png(image)


def histogram(values: Sequence[float], *, bins: int = 12) -> tuple[list[str], list[float]]:
    """Bin labels (lower edges) and counts of ``values`` over ``bins`` equal-width bins."""
    if not values:
        return [], []
    low, high = min(values), max(values)
    if high == low:
        return [_short(low)], [float(len(values))]
    width = (high - low) / bins
    counts = [0.0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    return [_short(low + i * width) for i in range(bins)], counts


class _Frame:
    def __init__(self, x_range: tuple[float, float], y_max: float) -> None:
        self.x_min, self.x_max = x_range
        self.y_max = y_max

    def at(self, x: float, y: float) -> tuple[float, float]:
        span = (self.x_max - self.x_min) or 1.0
        px = MARGIN_LEFT + (x - self.x_min) / span * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)
        py = HEIGHT - MARGIN_BOTTOM - y / (self.y_max or 1.0) * (HEIGHT - MARGIN_TOP - MARGIN_BOTTOM)
        return px, py


def _canvas(
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float],
    y_max: float,
    *,
    x_ticks: bool = True,
) -> tuple[Image.Image, ImageDraw.ImageDraw, _Frame]:
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    frame = _Frame(x_range, y_max)
    left, bottom = MARGIN_LEFT, HEIGHT - MARGIN_BOTTOM
    draw.text((left, 12), title, fill=(0, 0, 0))
    draw.line((left, MARGIN_TOP, left, bottom), fill=(0, 0, 0))
    draw.line((left, bottom, WIDTH - MARGIN_RIGHT, bottom), fill=(0, 0, 0))
    for i in range(TICKS + 1):
        value = y_max * i / TICKS
        _, py = frame.at(0.0, value)
        draw.line((left - 4, py, WIDTH - MARGIN_RIGHT, py), fill=(225, 225, 225))
        draw.text((6, py - 6), _short(value), fill=(0, 0, 0))
        if x_ticks:
            x = x_range[0] + (x_range[1] - x_range[0]) * i / TICKS
            px, _ = frame.at(x, 0.0)
            draw.line((px, bottom, px, bottom + 4), fill=(0, 0, 0))
            draw.text((px - 10, bottom + 8), _short(x), fill=(0, 0, 0))
    draw.text((left + (WIDTH - left) // 2 - 4 * len(x_label), HEIGHT - 20), x_label, fill=(0, 0, 0))
    draw.text((6, MARGIN_TOP - 18), y_label, fill=(0, 0, 0))
    return image, draw, frame


def _nice_max(value: float) -> float:
    return value * 1.1 if value > 0 else 1.0


def _short(value: float) -> str:
    if abs(value) >= 100 or value == int(value):
        return str(round(value))
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
