"""The static summary, --compare and --sweep renderings, on hand-built run records."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from parmagic.record import DONE, FAILED, IterationRecord, RunRecord
from parmagic.summary import (
    BADGE_TEXT,
    MAX_TIMELINE_RECTS,
    NEUTRAL_COLOUR,
    OUTCOME_COLOURS,
    STATUS_COLOURS,
    Comparison,
    Summary,
    Sweep,
    is_compact,
    nice_ticks,
    overhead,
    startup_seconds,
    timeline_rows,
    timeline_svg,
    worker_stats,
)

T0 = 1_000_000.0


def two_worker_record(outcome: str = "success", failed: range = range(0)) -> RunRecord:
    """8 iterations of 0.5 s on two workers, back to back, after 0.1 s of start-up."""
    record = RunRecord("loop 1", "loky", 2, 8, started=T0, startup=0.1)
    for i in range(8):
        start = T0 + 0.1 + 0.5 * (i // 2)
        status, error = (FAILED, ZeroDivisionError("x")) if i in failed else (DONE, None)
        record.add_iteration(
            IterationRecord(i, status, start, 0.5, worker=100 + i % 2, error=error)
        )
    record.ended, record.outcome = T0 + 2.2, outcome
    return record


def svg_of(html_text: str) -> ET.Element:
    """Parse the first inline SVG of an HTML fragment."""
    match = re.search(r"<svg.*?</svg>", html_text, re.S)
    assert match, html_text
    return ET.fromstring(match.group(0))


def rects(svg: ET.Element) -> list[ET.Element]:
    return [el for el in svg.iter() if el.tag.endswith("rect")]


def test_numbers_of_a_synthetic_run():
    record = two_worker_record()
    assert record.wall == pytest.approx(2.2)
    assert record.task_time == pytest.approx(4.0)
    assert record.speedup == pytest.approx(4.0 / 2.2)
    assert overhead(record) == pytest.approx(0.2)
    assert worker_stats(record)[0].pid == 100
    assert [(w.iterations, w.busy) for w in worker_stats(record)] == [(4, 2.0), (4, 2.0)]


def test_plain_text_summary():
    text = Summary(two_worker_record()).text()
    assert text.splitlines()[0] == "loop 1 · loky · 2 workers · success"
    for expected in (
        "8 done, 0 failed (of 8)",
        "wall time   2.20s",
        "task time   4.00s summed",
        "speedup     1.82x",
        "efficiency  91% of 2 workers",
        "start-up 0.10s (until the first iteration started)",
        "dispatch and idle workers 0.10s",
        "pid 100: 4 iterations, 2.00s busy (91%)",
        "pid 101: 4 iterations",
    ):
        assert expected in text, (expected, text)
    assert "failures" not in text


def test_mimebundle_has_text_and_html():
    bundle = Summary(two_worker_record())._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"] == str(Summary(two_worker_record()))
    assert "<table>" in bundle["text/html"] and "speedup" in bundle["text/html"]


def test_timeline_has_a_row_per_worker_and_a_rect_per_iteration():
    record = two_worker_record()
    rows = timeline_rows(record)
    assert [name for name, _ in rows] == ["pid 100", "pid 101"]
    assert [len(segs) for _, segs in rows] == [4, 4]
    svg = svg_of(Summary(record).html())
    titles = [el.findtext("{http://www.w3.org/2000/svg}title") for el in rects(svg)]
    assert sum(1 for t in titles if t and t.startswith("iteration ")) == 8
    assert any(t and t.startswith("start-up") for t in titles)


def test_rect_positions_follow_start_and_duration():
    record = two_worker_record()
    svg = svg_of(timeline_svg(record))
    first = [r for r in rects(svg) if "iteration 0:" in (r.findtext("{*}title") or "")][0]
    last = [r for r in rects(svg) if "iteration 6:" in (r.findtext("{*}title") or "")][0]
    assert float(first.get("x")) < float(last.get("x"))
    assert float(first.get("width")) == pytest.approx(float(last.get("width")), abs=0.2)


def test_overlapping_tasks_of_one_pid_go_on_separate_lanes():
    record = RunRecord("threads", "threads", 2, 4, started=T0)
    for i in range(4):
        start = T0 + 0.5 * (i // 2)
        record.add_iteration(IterationRecord(i, DONE, start, 0.5, worker=42))
    record.ended = T0 + 1.0
    assert [name for name, _ in timeline_rows(record)] == ["pid 42", "pid 42 #2"]


def test_failures_are_named_and_drawn_red():
    record = two_worker_record("error", failed=range(1, 8))
    summary = Summary(record)
    assert "#1 ZeroDivisionError" in summary.text()
    assert "and 2 more" in summary.text()
    assert "background:#c62828" in summary.html()  # the outcome badge
    fills = [r.get("fill") for r in rects(svg_of(summary.html()))]
    assert fills.count(STATUS_COLOURS[FAILED]) == 7


def test_not_run_iterations_are_counted():
    record = two_worker_record("interrupted")
    record.total = 20
    assert "8 done, 0 failed, 12 not run (of 20)" in Summary(record).text()


def test_not_run_without_a_total():
    record = two_worker_record("interrupted")
    record.total = None
    assert Summary(record).rows()[0] == ("iterations", "8 done, 0 failed")
    record.cancelled.append(8)
    assert Summary(record).rows()[0] == ("iterations", "8 done, 0 failed, the rest not run")


def test_many_iterations_are_merged_into_few_rects():
    record = RunRecord("big", "loky", 2, 20_000, started=T0)
    for i in range(20_000):
        start = T0 + 0.0001 * (i // 2)
        record.add_iteration(IterationRecord(i, DONE, start, 0.0001, worker=7 + i % 2))
    record.ended = T0 + 1.0
    html_text = Summary(record).html()
    assert len(rects(svg_of(html_text))) < 50
    assert len(html_text) < 20_000
    assert len(record.iterations) > MAX_TIMELINE_RECTS


def test_empty_run_has_no_timeline_and_no_division_by_zero():
    record = RunRecord("empty", "loky", 2, 0, started=T0)
    record.ended, record.outcome = T0, "success"
    summary = Summary(record)
    assert "0 done, 0 failed (of 0)" in summary.text()
    assert "No iteration ran" in summary.html()


def test_labels_are_escaped():
    record = two_worker_record()
    record.label = "<script>alert(1)</script>"
    assert "<script>" not in Summary(record).html()


def test_comparison():
    record = two_worker_record()
    comparison = Comparison(4.4, record, estimated=True)
    assert comparison.speedup == pytest.approx(2.0)
    text = comparison.text()
    assert "4.40s (estimated from a sample)" in text
    assert "2.20s on 2 workers (loky)" in text and "2.00x" in text
    bundle = comparison._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    widths = [float(r.get("width")) for r in rects(svg_of(bundle["text/html"]))]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert "estimated" not in Comparison(4.4, record).text()


def test_sweep_against_one_worker():
    sweep = Sweep([(4, 1.25), (1, 4.0), (2, 2.0)], label="loop 1")
    assert sweep.speedups() == [(1, 4.0, 1.0), (2, 2.0, 2.0), (4, 1.25, 3.2)]
    lines = sweep.text().splitlines()
    assert lines[0] == "speedup sweep: loop 1"
    assert lines[-1].split() == ["4", "1.25s", "3.20x", "80%"]


def test_sweep_baselines():
    # without a serial time the smallest count is taken as scaling perfectly
    assert [s for _, _, s in Sweep([(2, 2.0), (4, 1.0)]).speedups()] == [2.0, 4.0]
    assert Sweep([(2, 2.0)], serial_seconds=3.0).speedups() == [(2, 2.0, 1.5)]


def test_sweep_svg_has_ideal_line_and_points():
    bundle = Sweep([(1, 4.0), (2, 2.2), (4, 1.4)])._repr_mimebundle_()
    svg = svg_of(bundle["text/html"])
    assert any(el.get("stroke-dasharray") for el in svg.iter() if el.tag.endswith("line"))
    legend = [el for el in svg.iter() if el.get("class") == "parmagic-legend"]
    # three points and the legend's dot
    assert sum(1 for el in svg.iter() if el.tag.endswith("circle")) == 3 + 1
    assert "No sweep point" in Sweep([]).html()
    assert len(legend) == 1
    names = [el.text for el in legend[0].iter() if el.tag.endswith("text")]
    assert names == ["measured", "ideal (speedup = workers)"]


def test_sweep_ideal_label_does_not_sit_on_the_last_point():
    # a perfect sweep: the last point is exactly where the ideal line ends
    svg = svg_of(Sweep([(1, 4.0), (2, 2.0), (4, 1.0)]).html())
    *_, (x, y) = [
        (float(c.get("cx")), float(c.get("cy")))
        for c in svg.iter()
        if c.tag.endswith("circle") and c.findtext("{*}title")
    ]
    for text in (el for el in svg.iter() if el.tag.endswith("text")):
        if "ideal" in (text.text or ""):
            assert abs(float(text.get("x")) - x) > 40 or abs(float(text.get("y")) - y) > 20


def test_sweep_has_more_than_two_y_ticks():
    svg = svg_of(Sweep([(1, 4.0), (2, 2.2), (4, 1.4)]).html())
    ticks = [el.text for el in svg.iter() if el.get("class") == "parmagic-ytick"]
    assert ticks == ["0x", "1x", "2x", "3x", "4x"]


@pytest.mark.parametrize(
    ("top", "ticks"),
    [
        (1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (2, [0, 1, 2]),
        (4.2, [0, 1, 2, 3, 4, 5]),
        (16, [0, 5, 10, 15, 20]),
        (100, [0, 20, 40, 60, 80, 100]),
    ],
)
def test_nice_ticks(top, ticks):
    assert nice_ticks(top) == pytest.approx(ticks)


# ------------------------------------------------------------------ start-up and compact


def test_startup_counts_until_the_first_iteration_started():
    # a cold pool: the engine's record.startup (until submit) is tiny, the workers
    # started their first iteration 0.8 s into the run
    record = RunRecord("cold", "loky", 2, 2, started=T0, startup=0.001)
    for i in range(2):
        record.add_iteration(IterationRecord(i, DONE, T0 + 0.8, 0.5, worker=100 + i))
    record.ended, record.outcome = T0 + 1.3, "success"
    assert startup_seconds(record) == pytest.approx(0.8)
    text = Summary(record).text()
    assert "start-up 0.80s" in text and "dispatch and idle workers 0.00s" in text
    # a remote clock ahead of ours cannot make start-up longer than the run
    record.tasks[0].start = T0 + 99
    record.tasks[1].start = T0 + 99
    assert startup_seconds(record) == pytest.approx(1.3)


def short_record(label: str = "for i in range(4):", wall: float = 0.2, outcome: str = "success"):
    record = RunRecord(label, "loky", 2, 4, started=T0)
    for i in range(4):
        record.add_iteration(IterationRecord(i, DONE, T0 + 0.01, 0.05, worker=100 + i % 2))
    record.ended, record.outcome = T0 + wall, outcome
    return record


def test_short_loops_and_pmap_get_one_line():
    assert is_compact(short_record())
    assert is_compact(short_record("pmap(slow)", wall=30.0))
    assert not is_compact(short_record(wall=2.0))
    assert not is_compact(short_record(outcome="error"))  # failures get the full summary
    summary = Summary(short_record(), compact=True)
    text = summary.text()
    assert "\n" not in text
    assert text == (
        "for i in range(4): 4/4 done in 0.20s on 2 workers (loky) · speedup 1.00x · "
        "start-up 0.01s · success"
    )
    html_text = summary.html()
    assert "parmagic-compact" in html_text and "<svg" not in html_text
    assert "Summary(parmagic.last_run())" in html_text


def test_full_summary_on_request():
    record = short_record()
    full = Summary(record)
    assert isinstance(full, Summary) and not full.compact
    assert "per worker" in full.text()


def test_record_reprs_are_one_short_line():
    record = short_record()
    assert repr(record) == (
        "RunRecord('for i in range(4):', success, 4/4 done, 2 workers (loky), 0.20s)"
    )
    assert str(record) == repr(record)
    assert repr(record.tasks[0]) == "TaskRecord(#0, 1 iteration on pid 100, 0.05s)"
    assert repr(record.iterations[1]) == "IterationRecord(#1 done on pid 101, 0.05s)"
    failed = two_worker_record("error", failed=range(1, 8))
    assert "7 failed" in repr(failed) and "\n" not in repr(failed)


# ------------------------------------------------------------------ colours (WCAG AA)

LIGHT, DARK = "#ffffff", "#111111"  # JupyterLab's light and dark backgrounds


def luminance(colour: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb``."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two colours."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)


@pytest.mark.parametrize("outcome", sorted(OUTCOME_COLOURS))
def test_badge_text_has_aa_contrast_on_every_theme(outcome):
    # text on a badge: the badge is its background whatever the page's theme
    assert contrast(BADGE_TEXT, OUTCOME_COLOURS[outcome]) >= 4.5


@pytest.mark.parametrize(
    "colour",
    sorted({*OUTCOME_COLOURS.values(), *STATUS_COLOURS.values(), NEUTRAL_COLOUR}),
)
@pytest.mark.parametrize("background", [LIGHT, DARK])
def test_graphics_have_aa_contrast_on_light_and_dark(colour, background):
    # bars, badges, rectangles, lines: WCAG 1.4.11 (non-text) asks 3:1
    assert contrast(colour, background) >= 3.0


def test_no_text_is_drawn_in_a_fixed_colour():
    # no colour has 4.5:1 on both #ffffff and #111111, so text keeps the theme's colour
    html_text = Summary(two_worker_record("error", failed=range(1, 3))).html()
    html_text += Sweep([(1, 4.0), (2, 2.2)]).html()
    html_text += Comparison(4.4, two_worker_record()).html()
    colours = set(re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", html_text))
    assert colours <= {BADGE_TEXT}, colours
    text_fills = set(re.findall(r"<text[^>]*fill=\"([^\"]+)\"", html_text))
    assert text_fills <= {"currentColor"}, text_fills
    used = set(re.findall(r"#[0-9a-fA-F]{6}", html_text))
    known = {*OUTCOME_COLOURS.values(), *STATUS_COLOURS.values(), NEUTRAL_COLOUR, BADGE_TEXT}
    assert used <= known, used - known


@pytest.mark.parametrize("outcome", [None, *sorted(OUTCOME_COLOURS)])
def test_the_progress_bar_uses_only_checked_colours(outcome):
    # the live bar and each final one: fills and badges from the checked colours above,
    # text in the theme's colour (the track's border too: currentColor)
    from parmagic.progress import Progress
    from parmagic.widgets import bar_html

    record = two_worker_record("error" if outcome == "error" else "success", failed=range(1, 2))
    progress = Progress.for_record(record, clock=lambda: 100.0)
    progress.observe(record, 1)
    html_text = bar_html(progress, "for i in range(8)", outcome)
    colours = set(re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", html_text))
    assert colours <= {BADGE_TEXT}, colours
    used = set(re.findall(r"#[0-9a-fA-F]{6}", html_text))
    assert used and used <= {*OUTCOME_COLOURS.values(), BADGE_TEXT}, used
