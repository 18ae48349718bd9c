"""A throughput chart drawn on the server as inline SVG: stacked bars of sent and failed
messages per time bucket, with a labelled axis. No chart library, nothing fetched."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dispatcher.web.dashboard.pages import number, vn_time

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 40
# At most this many bars: a longer campaign gets wider buckets.
MAX_BARS = 90
# Bucket widths in minutes, tried in order.
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    sent: int
    failed: int


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    sent_y: float
    sent_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(slots=True)
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: int = WIDTH - LEFT - RIGHT
    plot_height: int = HEIGHT - TOP - BOTTOM
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    unit: str = ""
    total_sent: int = 0
    total_failed: int = 0

    @property
    def empty(self) -> bool:
        return not self.bars

    @property
    def baseline(self) -> int:
        return self.top + self.plot_height


def _nice_ceiling(value: int) -> int:
    """The next round number at or above ``value`` (1, 2, 5 × a power of ten)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _unit(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "mỗi giờ" if hours == 1 else f"mỗi {hours} giờ"
    if seconds % 60 == 0:
        minutes = seconds // 60
        return "mỗi phút" if minutes == 1 else f"mỗi {minutes} phút"
    return f"mỗi {seconds} giây"


def per_minute_chart(minutes: Sequence[Bucket]) -> Chart:
    """The chart of a report's per-minute counts (only minutes with something in them, oldest
    first): the quiet minutes between are drawn as empty, and a long campaign's minutes are
    summed into wider buckets, aligned on round times, so that the bars stay readable."""
    if not minutes:
        return throughput_chart([], timedelta(minutes=1))
    first = int(minutes[0].start.timestamp() // 60)
    last = int(minutes[-1].start.timestamp() // 60)
    span = last - first + 1
    step = next((s for s in STEPS if span / s <= MAX_BARS - 1), math.ceil(span / (MAX_BARS - 1)))
    origin = first - first % step
    sums: dict[int, tuple[int, int]] = {}
    for m in minutes:
        index = (int(m.start.timestamp() // 60) - origin) // step
        sent, failed = sums.get(index, (0, 0))
        sums[index] = (sent + m.sent, failed + m.failed)
    epoch = datetime.fromtimestamp(0, UTC)
    buckets = [
        Bucket(
            start=epoch + timedelta(minutes=origin + i * step),
            sent=sums.get(i, (0, 0))[0],
            failed=sums.get(i, (0, 0))[1],
        )
        for i in range((last - origin) // step + 1)
    ]
    return throughput_chart(buckets, timedelta(minutes=step))


def throughput_chart(buckets: Sequence[Bucket], step: timedelta) -> Chart:
    """Bars for ``buckets`` (each ``step`` long, oldest first)."""
    chart = Chart(unit=_unit(step))
    if not buckets:
        return chart
    top = _nice_ceiling(max(b.sent + b.failed for b in buckets))
    slot = chart.plot_width / len(buckets)
    gap = min(2.0, slot * 0.15)
    scale = chart.plot_height / top
    seconds = step.total_seconds() < 60
    width = min(max(slot - gap, 0.5), 40.0)
    for i, b in enumerate(buckets):
        x = chart.left + i * slot + (slot - width) / 2
        sent_height = b.sent * scale
        failed_height = b.failed * scale
        chart.bars.append(
            Bar(
                x=round(x, 2),
                width=round(width, 2),
                sent_y=round(chart.baseline - sent_height, 2),
                sent_height=round(sent_height, 2),
                failed_y=round(chart.baseline - sent_height - failed_height, 2),
                failed_height=round(failed_height, 2),
                title=f"{vn_time(b.start, seconds=seconds)}: {number(b.sent)} đã gửi, "
                f"{number(b.failed)} thất bại",
            )
        )
        chart.total_sent += b.sent
        chart.total_failed += b.failed
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        value = top * fraction
        shown = number(round(value)) if value == int(value) else f"{value:g}".replace(".", ",")
        chart.y_ticks.append((round(chart.baseline - value * scale, 2), shown))
    # About six time labels along the bottom, whatever the number of bars.
    every = max(1, math.ceil(len(buckets) / 6))
    one_day = buckets[-1].start - buckets[0].start < timedelta(days=1)
    for i in range(0, len(buckets), every):
        day, clock = vn_time(buckets[i].start, seconds=seconds).split(" ", 1)
        text = clock if one_day else f"{day[:5]} {clock}"
        chart.x_labels.append((round(chart.left + (i + 0.5) * slot, 2), text))
    return chart
