"""Static pictures of finished runs: the timing summary, ``--compare`` and ``--sweep``.

Each object renders as ``text/plain`` and ``text/html`` through
``_repr_mimebundle_`` (as rich's renderables do), so a saved notebook stays
readable where no widget renders (GitHub, nbviewer, nbconvert) and a terminal
gets the same facts as text. Pictures are inline SVG; no widgets, no IPython.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .progress import format_seconds, loop_name
from .record import DONE, FAILED, RunRecord, TaskRecord

#: Above this many iterations the timeline merges touching rectangles of a row.
MAX_TIMELINE_RECTS = 1000
#: Failed iterations listed by name in the summary before "and N more".
MAX_LISTED_FAILURES = 5

#: Runs shorter than this (wall seconds) get the one-line summary.
SHORT_RUN_SECONDS = 0.5

# Colours. No colour has 4.5:1 contrast (WCAG AA, text) against both JupyterLab's light
# (#ffffff) and dark (#111111) backgrounds: it would need a relative luminance <= 0.183 and
# >= 0.200. So text keeps the theme's colour (``inherit``/``currentColor``) and an outcome's
# colour is the background of a badge with white text (>= 4.5:1 whatever the theme); bars,
# rectangles and lines are graphics and have >= 3:1 (WCAG 1.4.11) against both backgrounds.
# tests/test_summary.py computes every ratio.
#: Badge and bar colour of each run outcome (``running`` while it runs).
OUTCOME_COLOURS = {
    "running": "#1f6fb2",
    "success": "#2e7d32",
    "error": "#c62828",
    "interrupted": "#b45309",
}
#: Text colour on an outcome badge.
BADGE_TEXT = "#ffffff"
#: Timeline rectangles by iteration status.
STATUS_COLOURS = {DONE: "#4c78a8", FAILED: "#d03b3b"}
#: Anything else drawn in a fixed colour: other statuses, serial bars, the ideal line.
NEUTRAL_COLOUR = "#767676"
_COLOURS = STATUS_COLOURS
_OTHER_COLOUR = NEUTRAL_COLOUR
_FONT = 'font-family="sans-serif" font-size="11" fill="currentColor"'


def outcome_badge(outcome: str) -> str:
    """The outcome as a small coloured badge (white text), as HTML."""
    colour = OUTCOME_COLOURS.get(outcome, NEUTRAL_COLOUR)
    return (
        f'<span class="parmagic-outcome" style="background:{colour};color:{BADGE_TEXT};'
        f'border-radius:3px;padding:0 0.4em;font-weight:bold">{html.escape(outcome)}</span>'
    )


def _mimebundle(text: str, html_text: str) -> dict[str, str]:
    """The bundle every renderable here returns."""
    return {"text/plain": text, "text/html": html_text}


def _table(rows: list[tuple[str, str]]) -> str:
    """An HTML two-column table; values are already HTML."""
    cells = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{html.escape(k)}</th>'
        f'<td style="text-align:left">{v}</td></tr>'
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def _text_rows(rows: list[tuple[str, str]]) -> str:
    """Aligned ``key  value`` lines for text/plain."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class WorkerStats:
    """What one worker process did in a run."""

    pid: int
    iterations: int
    busy: float  # summed duration of its iterations, seconds


def worker_stats(record: RunRecord) -> list[WorkerStats]:
    """Per worker pid: iteration count and busy seconds, in order of first start."""
    by_pid: dict[int, list[TaskRecord]] = defaultdict(list)
    for task in record.ran_tasks:
        by_pid[task.worker].append(task)
    order = sorted(by_pid, key=lambda pid: min(t.start for t in by_pid[pid]))
    return [
        WorkerStats(pid, sum(t.count for t in by_pid[pid]), sum(t.duration for t in by_pid[pid]))
        for pid in order
    ]


def startup_seconds(record: RunRecord) -> float:
    """Seconds from the run's start until its first iteration started on a worker.

    The engine's ``record.startup`` ends when the first task is submitted; a pool
    that starts with the run (loky spawns its workers on the first submit) is
    still starting then. The first iteration's start, on the worker's wall clock,
    covers both; clamped to the wall time (a remote clock may be off).
    """
    first = min((t.start for t in record.ran_tasks), default=None)
    measured = record.startup if first is None else max(record.startup, first - record.started)
    return max(0.0, min(measured, record.wall))


def is_compact(record: RunRecord) -> bool:
    """True when a one-line summary will do: ``%pmap``/``pmap()`` runs and short loops, on success.

    A failed or interrupted run gets the full summary (failures, where it stopped).
    """
    short = record.wall < SHORT_RUN_SECONDS or record.label.startswith("pmap(")
    return short and record.outcome == "success"


def overhead(record: RunRecord) -> float:
    """Wall time beyond a perfect split of the task time over the workers (≥ 0)."""
    ideal = record.task_time / record.n_workers if record.n_workers else record.task_time
    return max(0.0, record.wall - ideal)


def failure_text(record: RunRecord) -> str:
    """``#3 ZeroDivisionError, #7 TimeoutError`` for the first failed iterations."""
    failed = record.failures
    named = [
        f"#{it.index} {type(it.error).__name__ if it.error is not None else 'failed'}"
        for it in failed[:MAX_LISTED_FAILURES]
    ]
    more = len(failed) - len(named)
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


def in_kernel_text(record: RunRecord) -> str:
    """Auto-serial's choice in words: which iterations ran in the kernel, and why."""
    k = record.ran_in_kernel_from
    which = "all iterations" if k == 0 else f"iterations from #{k} on"
    why = f" ({record.auto_serial_note})" if record.auto_serial_note else ""
    return f"{which} ran in the kernel, as the plain loop: faster than workers{why}"


def iteration_counts(record: RunRecord) -> str:
    """``7 done, 1 failed, 8 not run (of 16)``; without a total, ``the rest not run``."""
    parts = [f"{record.done} done", f"{record.failed} failed"]
    if record.from_cache:
        parts[0] += f" ({record.from_cache} from cache)"
    if record.total is None:
        # record.cancelled holds dropped batches, not iterations: no count to give
        return ", ".join(parts + (["the rest not run"] if record.cancelled else []))
    not_run = record.total - record.done - record.failed
    if not_run > 0:
        parts.append(f"{not_run} not run")
    return ", ".join(parts) + f" (of {record.total})"


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Segment:
    """A rectangle of the timeline: seconds from the run's start, status, iterations in it."""

    start: float
    end: float
    status: str
    count: int
    first_index: int


def timeline_rows(record: RunRecord) -> list[tuple[str, list[Segment]]]:
    """Rows of the timeline: one per worker pid (more if its tasks overlapped, as threads do)."""
    rows: list[tuple[str, list[Segment]]] = []
    for stats in worker_stats(record):
        mine = [t for t in record.ran_tasks if t.worker == stats.pid]
        for lane_no, lane in enumerate(_lanes(record, mine)):
            name = f"pid {stats.pid}" + (f" #{lane_no + 1}" if lane_no else "")
            rows.append((name, lane))
    return rows


def _lanes(record: RunRecord, tasks: list[TaskRecord]) -> list[list[Segment]]:
    """Put overlapping batches on separate lanes (greedy, in start order)."""
    lanes: list[list[Segment]] = []
    for task in sorted(tasks, key=lambda t: t.start):
        start = task.start - record.started
        seg = Segment(start, start + task.duration, task.status, task.count, task.index)
        lane = next((lane for lane in lanes if lane[-1].end <= seg.start + 1e-4), None)
        if lane is None:
            lanes.append([seg])
        else:
            lane.append(seg)
    return lanes


def _merge(segments: list[Segment], gap: float) -> list[Segment]:
    """Join consecutive segments of one status closer than ``gap`` seconds."""
    merged: list[Segment] = []
    for seg in segments:
        last = merged[-1] if merged else None
        if last and last.status == seg.status and seg.start - last.end < gap:
            merged[-1] = Segment(
                last.start,
                max(last.end, seg.end),
                last.status,
                last.count + seg.count,
                last.first_index,
            )
        else:
            merged.append(seg)
    return merged


def _segment_title(seg: Segment) -> str:
    """Tooltip of one rectangle."""
    span = format_seconds(seg.end - seg.start)
    if seg.count == 1:
        return f"iteration {seg.first_index}: {seg.status}, {span}"
    return f"{seg.count} iterations from {seg.first_index}: {seg.status}, {span}"


@dataclass(frozen=True)
class _Frame:
    """Geometry of the timeline picture."""

    span: float
    width: int = 640
    left: int = 100
    right: int = 12
    row: int = 16
    gap: int = 4
    top: int = 4

    def x(self, seconds: float) -> float:
        """Horizontal position of a time in seconds from the start."""
        return self.left + max(0.0, seconds) / self.span * (self.width - self.left - self.right)

    def y(self, row_no: int) -> int:
        """Top of a row."""
        return self.top + row_no * (self.row + self.gap)


def timeline_svg(record: RunRecord) -> str:
    """Per-worker timeline as inline SVG: one row per worker, a rectangle per iteration."""
    rows = timeline_rows(record)
    if not rows:
        return "<p><i>No iteration ran, so there is no timeline.</i></p>"
    ends = [seg.end for _, segs in rows for seg in segs]
    frame = _Frame(span=max(record.wall, max(ends), 1e-6))
    many = len(record.tasks) > MAX_TIMELINE_RECTS
    pixel = frame.span / (frame.width - frame.left - frame.right)
    parts = [_startup_rect(frame, startup_seconds(record), len(rows))]
    for row_no, (name, segs) in enumerate(rows):
        parts.append(_row_svg(frame, row_no, name, _merge(segs, pixel) if many else segs))
    height = frame.y(len(rows)) + 22
    parts.append(_axis_svg(frame, frame.y(len(rows))))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{frame.width}" height="{height}" '
        f'viewBox="0 0 {frame.width} {height}" role="img" aria-label="per-worker timeline">'
        + "".join(parts)
        + "</svg>"
    )


def _startup_rect(frame: _Frame, startup: float, n_rows: int) -> str:
    """A light band over the start-up time, behind the rows."""
    if startup <= 0:
        return ""
    width = frame.x(startup) - frame.left
    return (
        f'<rect x="{frame.left}" y="{frame.top}" width="{width:.1f}" '
        f'height="{frame.y(n_rows) - frame.top}" fill="currentColor" fill-opacity="0.12">'
        f"<title>start-up {format_seconds(startup)}</title></rect>"
    )


def _row_svg(frame: _Frame, row_no: int, name: str, segs: list[Segment]) -> str:
    """The label and rectangles of one row."""
    y = frame.y(row_no)
    out = [f'<text x="4" y="{y + frame.row - 4}" {_FONT}>{html.escape(name)}</text>']
    for seg in segs:
        x0, x1 = frame.x(seg.start), frame.x(seg.end)
        colour = _COLOURS.get(seg.status, _OTHER_COLOUR)
        out.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0 - 0.5):.1f}" '
            f'height="{frame.row}" fill="{colour}"><title>{_segment_title(seg)}</title></rect>'
        )
    return "".join(out)


def _axis_svg(frame: _Frame, y: int) -> str:
    """Time axis with ticks at 0, half and the end."""
    line = (
        f'<line x1="{frame.left}" y1="{y}" x2="{frame.width - frame.right}" y2="{y}" '
        'stroke="currentColor" stroke-width="1"/>'
    )
    ticks = []
    for t, anchor in ((0.0, "start"), (frame.span / 2, "middle"), (frame.span, "end")):
        x = frame.x(t)
        ticks.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="currentColor"/>'
            f'<text x="{x:.1f}" y="{y + 15}" text-anchor="{anchor}" {_FONT}>'
            f"{format_seconds(t)}</text>"
        )
    return line + "".join(ticks)


# --------------------------------------------------------------------------- Summary


class Summary:
    """The timing summary of a finished run (``text/plain`` + ``text/html``).

    ``compact`` gives one line (what ``%pmap`` runs and short loops show); the full
    summary of the last run stays at hand: ``parmagic.summary.Summary(parmagic.last_run())``.
    """

    def __init__(self, record: RunRecord, compact: bool = False) -> None:
        """Summarise ``record``; it is read at render time."""
        self.record = record
        self.compact = compact

    def title(self) -> str:
        """``loop 1 · loky · 2 workers · success``."""
        return " · ".join((self._heading(), self.record.outcome))

    def _heading(self) -> str:
        """``loop 1 · loky · 2 workers`` (the title without the outcome)."""
        r = self.record
        workers = f"{r.n_workers} worker" + ("s" if r.n_workers != 1 else "")
        return " · ".join(p for p in (loop_name(r.label), r.backend, workers))

    def rows(self) -> list[tuple[str, str]]:
        """The summary's facts as (name, text) pairs."""
        r = self.record
        rows = [
            ("iterations", iteration_counts(r)),
            ("wall time", format_seconds(r.wall)),
            ("task time", f"{format_seconds(r.task_time)} summed over iterations"),
            ("speedup", f"{r.speedup:.2f}x (task time / wall time)"),
            ("efficiency", f"{r.efficiency:.0%} of {r.n_workers} workers"),
            ("overhead", self._overhead_text()),
        ]
        if r.failed:
            rows.append(("failures", failure_text(r)))
        if r.ran_in_kernel_from is not None:
            rows.append(("in the kernel", in_kernel_text(r)))
        return rows

    def _overhead_text(self) -> str:
        """Start-up and dispatch/idle time, the parts of the wall time beyond the ideal."""
        total = overhead(self.record)
        startup = startup_seconds(self.record)
        rest = max(0.0, total - startup)
        return (
            f"{format_seconds(total)} beyond ideal: start-up {format_seconds(startup)} "
            f"(until the first iteration started), dispatch and idle workers "
            f"{format_seconds(rest)}"
        )

    def line(self) -> str:
        """The one-line summary: counts, wall time, workers, speedup, start-up."""
        r = self.record
        counts = f"{r.done}/{r.total}" if r.total is not None else f"{r.done}"
        failed = f", {r.failed} failed" if r.failed else ""
        failed += f", {r.from_cache} from cache" if r.from_cache else ""
        kernel = f" · {in_kernel_text(r)}" if r.ran_in_kernel_from is not None else ""
        return (
            f"{loop_name(r.label)}: {counts} done{failed} in {format_seconds(r.wall)} on "
            f"{r.n_workers} worker{'s' if r.n_workers != 1 else ''} ({r.backend}) · "
            f"speedup {r.speedup:.2f}x · start-up {format_seconds(startup_seconds(r))} · "
            f"{r.outcome}{kernel}"
        )

    def worker_lines(self) -> list[str]:
        """``pid 4711: 8 iterations, 2.01s busy (94%)`` per worker."""
        wall = self.record.wall
        return [
            f"pid {w.pid}: {w.iterations} iterations, {format_seconds(w.busy)} busy"
            + (f" ({w.busy / wall:.0%})" if wall > 0 else "")
            for w in worker_stats(self.record)
        ]

    def text(self) -> str:
        """The summary as plain text (one line when compact)."""
        if self.compact:
            return self.line()
        lines = [self.title(), _text_rows(self.rows())]
        workers = self.worker_lines()
        if workers:
            lines.append("  per worker:")
            lines.extend(f"    {line}" for line in workers)
        return "\n".join(lines)

    def html(self) -> str:
        """The summary as HTML with the per-worker timeline as inline SVG (one line when compact)."""
        badge = outcome_badge(self.record.outcome)
        if self.compact:
            line = self.line().rsplit(" · ", 1)[0]
            return (
                '<div class="parmagic-summary parmagic-compact" '
                f'title="Summary(parmagic.last_run()) shows the full summary">'
                f"{html.escape(line)} {badge}</div>"
            )
        rows = [(k, html.escape(v)) for k, v in self.rows()]
        return (
            '<div class="parmagic-summary">'
            f'<div style="font-weight:bold">{html.escape(self._heading())} {badge}</div>'
            f"{_table(rows)}{timeline_svg(self.record)}</div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """text/plain and text/html, for IPython's display."""
        return _mimebundle(self.text(), self.html())

    def __str__(self) -> str:
        """The plain-text summary."""
        return self.text()

    def __repr__(self) -> str:
        """Short, stable repr."""
        return f"<parmagic.Summary {loop_name(self.record.label)!r}>"


# --------------------------------------------------------------------------- Comparison


class Comparison:
    """``--compare``: the serial time beside the parallel run, and the speedup."""

    def __init__(
        self, serial_seconds: float, parallel_record: RunRecord, estimated: bool = False
    ) -> None:
        """``estimated`` says the serial time was extrapolated from a sample."""
        self.serial_seconds = serial_seconds
        self.record = parallel_record
        self.estimated = estimated

    @property
    def speedup(self) -> float:
        """Serial wall time over parallel wall time."""
        wall = self.record.wall
        return self.serial_seconds / wall if wall > 0 else 0.0

    def rows(self) -> list[tuple[str, str]]:
        """(name, text) pairs for both renderings."""
        serial_note = " (estimated from a sample)" if self.estimated else ""
        r = self.record
        return [
            ("serial", f"{format_seconds(self.serial_seconds)}{serial_note}"),
            ("parallel", f"{format_seconds(r.wall)} on {r.n_workers} workers ({r.backend})"),
            ("speedup", f"{self.speedup:.2f}x (efficiency {self._efficiency():.0%})"),
        ]

    def _efficiency(self) -> float:
        """Speedup per worker."""
        return self.speedup / self.record.n_workers if self.record.n_workers else 0.0

    def text(self) -> str:
        """Plain text: both times and the speedup."""
        return f"serial vs parallel: {loop_name(self.record.label)}\n" + _text_rows(self.rows())

    def html(self) -> str:
        """HTML: the table and two bars drawn to scale."""
        rows = [(k, html.escape(v)) for k, v in self.rows()]
        title = html.escape(f"serial vs parallel: {loop_name(self.record.label)}")
        return (
            f'<div class="parmagic-compare"><div style="font-weight:bold">{title}</div>'
            f"{_table(rows)}{self._bars_svg()}</div>"
        )

    def _bars_svg(self) -> str:
        """Two horizontal bars: serial and parallel wall time."""
        longest = max(self.serial_seconds, self.record.wall, 1e-9)
        bars = [
            ("serial", self.serial_seconds, NEUTRAL_COLOUR),
            ("parallel", self.record.wall, STATUS_COLOURS[DONE]),
        ]
        parts = []
        for i, (name, secs, colour) in enumerate(bars):
            y, w = 4 + i * 22, max(1.0, secs / longest * 440)
            parts.append(
                f'<text x="4" y="{y + 13}" {_FONT}>{name}</text>'
                f'<rect x="70" y="{y}" width="{w:.1f}" height="16" fill="{colour}"/>'
                f'<text x="{74 + w:.1f}" y="{y + 13}" {_FONT}>{format_seconds(secs)}</text>'
            )
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" width="580" height="52" role="img" '
            'aria-label="serial and parallel wall time">' + "".join(parts) + "</svg>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """text/plain and text/html, for IPython's display."""
        return _mimebundle(self.text(), self.html())

    def __str__(self) -> str:
        """The plain-text comparison."""
        return self.text()


# --------------------------------------------------------------------------- Sweep


class Sweep:
    """``--sweep 1,2,4``: speedup against worker count, with the ideal line.

    The speedup at ``n`` workers is ``serial_seconds / wall(n)`` when a serial
    time is given, else ``n0 * wall(n0) / wall(n)`` for the smallest count
    ``n0`` measured (exact when ``n0`` is 1: the run on one worker is the base).
    """

    def __init__(
        self,
        points: list[tuple[int, float]],
        serial_seconds: float | None = None,
        label: str = "",
    ) -> None:
        """``points`` are (workers, wall seconds) pairs, in any order."""
        self.points = sorted(points)
        self.serial_seconds = serial_seconds
        self.label = label

    def baseline(self) -> float:
        """The one-worker time the speedups are measured against."""
        if self.serial_seconds is not None:
            return self.serial_seconds
        if not self.points:
            return 0.0
        n0, wall0 = self.points[0]
        return n0 * wall0

    def speedups(self) -> list[tuple[int, float, float]]:
        """(workers, wall, speedup) for each point."""
        base = self.baseline()
        return [(n, wall, base / wall if wall > 0 else 0.0) for n, wall in self.points]

    def text(self) -> str:
        """Plain text table: workers, wall, speedup, efficiency."""
        lines = [f"speedup sweep: {loop_name(self.label)}"]
        lines.append(f"  {'workers':>7}  {'wall':>8}  {'speedup':>7}  {'efficiency':>10}")
        for n, wall, s in self.speedups():
            eff = f"{s / n:.0%}" if n else "-"
            lines.append(f"  {n:>7}  {format_seconds(wall):>8}  {s:>6.2f}x  {eff:>10}")
        return "\n".join(lines)

    def html(self) -> str:
        """HTML: the plot (SVG) and the table."""
        rows = [
            (
                f"{n} worker{'s' if n != 1 else ''}",
                html.escape(f"{format_seconds(wall)} · {s:.2f}x"),
            )
            for n, wall, s in self.speedups()
        ]
        title = html.escape(f"speedup sweep: {loop_name(self.label)}")
        return (
            f'<div class="parmagic-sweep"><div style="font-weight:bold">{title}</div>'
            f"{sweep_svg(self.speedups())}{_table(rows)}</div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """text/plain and text/html, for IPython's display."""
        return _mimebundle(self.text(), self.html())

    def __str__(self) -> str:
        """The plain-text table."""
        return self.text()


def nice_ticks(top: float, most: int = 6) -> list[float]:
    """Ticks 0, step, 2 step ... to the first at or above ``top``; step 1, 2 or 5 x 10^k; >= 3."""
    top = max(top, 1e-9)
    step = 10 ** math.floor(math.log10(top / 2))
    for factor in (1, 2, 5, 10):
        if top / (step * factor) <= most - 1:
            step *= factor
            break
    ticks = [round(i * step, 9) for i in range(math.ceil(top / step - 1e-9) + 1)]
    if len(ticks) < 3:  # a top of exactly one step: halve the step
        ticks = [round(i * step / 2, 9) for i in range(len(ticks) * 2 - 1)]
    return ticks


def _tick_label(value: float) -> str:
    """``0x``, ``2x``, ``0.5x``, ``2.5x``."""
    return f"{value:g}x"


def sweep_svg(points: list[tuple[int, float, float]]) -> str:
    """Speedup (y) against workers (x): measured points joined, ideal y = x dashed, a legend.

    The y axis has a tick every 1, 2 or 5 (times a power of ten); the legend sits in
    the upper left, the half above the ideal line that measured points rarely reach,
    so no label covers the last point.
    """
    if not points:
        return "<p><i>No sweep point was measured.</i></p>"
    ticks = nice_ticks(max(max(n for n, _, _ in points), max(s for _, _, s in points), 1.0))
    top = max(ticks[-1], max(n for n, _, _ in points), max(s for _, _, s in points))
    size, left, upper = 240, 40, 12

    def xy(n: float, s: float) -> tuple[float, float]:
        return left + n / top * size, upper + size - s / top * size

    (x0, y0), (x1, y1) = xy(0, 0), xy(top, top)
    measured, ideal = STATUS_COLOURS[DONE], NEUTRAL_COLOUR
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{xy(top, 0)[0]}" y2="{y0}" stroke="currentColor"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{xy(0, top)[1]}" stroke="currentColor"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="{ideal}" stroke-width="1.5" '
        'stroke-dasharray="4 3"><title>ideal: speedup = workers</title></line>',
    ]
    for value in ticks:
        y = xy(0, value)[1]
        parts.append(
            f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0}" y2="{y:.1f}" stroke="currentColor"/>'
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" class="parmagic-ytick" '
            f"{_FONT}>{_tick_label(value)}</text>"
        )
    coords = [xy(n, s) for n, _, s in points]
    parts.append(
        f'<polyline fill="none" stroke="{measured}" stroke-width="2" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        + '"/>'
    )
    for (n, wall, s), (x, y) in zip(points, coords, strict=True):
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{measured}">'
            f"<title>{n} workers: {s:.2f}x ({format_seconds(wall)})</title></circle>"
            f'<text x="{x:.1f}" y="{y0 + 14}" text-anchor="middle" {_FONT}>{n}</text>'
        )
    lx, ly = x0 + 10, upper + 8
    parts.append(
        f'<g class="parmagic-legend">'
        f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{measured}" stroke-width="2"/>'
        f'<circle cx="{lx + 9}" cy="{ly}" r="3" fill="{measured}"/>'
        f'<text x="{lx + 24}" y="{ly + 4}" {_FONT}>measured</text>'
        f'<line x1="{lx}" y1="{ly + 16}" x2="{lx + 18}" y2="{ly + 16}" stroke="{ideal}" '
        'stroke-width="1.5" stroke-dasharray="4 3"/>'
        f'<text x="{lx + 24}" y="{ly + 20}" {_FONT}>ideal (speedup = workers)</text></g>'
        f'<text x="{x0 + size / 2}" y="{y0 + 28}" text-anchor="middle" {_FONT}>workers</text>'
        f'<text x="{x0}" y="{upper - 2}" text-anchor="middle" {_FONT}>speedup</text>'
    )
    width, height = left + size + 16, upper + size + 36
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'role="img" aria-label="speedup against workers">' + "".join(parts) + "</svg>"
    )
