"""Small PNG charts for the batch report and the benchmarks, drawn by matplotlib: lines and bars.

Each chart is its own ``Figure`` on the Agg canvas (no pyplot: no global state, safe in threads, no
display needed), 640x400 px. matplotlib loads on the first chart (a second of start-up that the
pipeline's other tasks, which import this module through the steps, do not pay).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH, HEIGHT, DPI = 640, 400, 100
COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00"]  # Okabe-Ito


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str
) -> bytes:
    """PNG bytes of one line (with dots) per named series of ``(x, y)`` points, with a legend."""
    figure, axes = _figure(title, x_label, y_label)
    for index, (name, values) in enumerate(series.items()):
        points = sorted(values)
        axes.plot([x for x, _ in points], [y for _, y in points], "o-", color=COLOURS[index % 5], label=name)
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left")
    return _png(figure)


def bar_chart(
    labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str, y_label: str
) -> bytes:
    """PNG bytes of one bar per label (e.g. a histogram's bins)."""
    figure, axes = _figure(title, x_label, y_label)
    axes.bar(range(len(values)), values, color=COLOURS[0])
    step = max(1, len(labels) // 10)
    axes.set_xticks(range(0, len(labels), step), labels[::step])
    return _png(figure)


def histogram(values: Sequence[float], *, bins: int = 12) -> tuple[list[str], list[float]]:
    """Bin labels (lower edges) and counts of ``values`` over ``bins`` equal-width bins."""
    if not values:
        return [], []
    if min(values) == max(values):
        return [_short(values[0])], [float(len(values))]
    counts, edges = np.histogram(values, bins=bins)
    return [_short(float(edge)) for edge in edges[:-1]], [float(count) for count in counts]


def _figure(title: str, x_label: str, y_label: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.grid(axis="y", color="#e1e1e1")
    axes.set_axisbelow(True)
    return figure, axes


def _short(value: float) -> str:
    if abs(value) >= 100 or value == int(value):
        return str(round(value))
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
