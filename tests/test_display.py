"""Listener choice and the widget and text views, without a kernel or a frontend.

Widgets are built without being displayed (as tqdm's tests do); a fake clock
replaces sleeping.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import types

import pytest

from parmagic import display as display_mod
from parmagic.display import (
    QuietListener,
    TqdmFollower,
    environment,
    make_listener,
    unwrap_tqdm,
)
from parmagic.progress import NAME_WIDTH, Progress
from parmagic.record import DONE, FAILED, IterationRecord, RunRecord
from parmagic.summary import OUTCOME_COLOURS, Summary
from parmagic.textview import TextListener
from parmagic.widgets import (
    WIDGET_VIEW_MIME,
    ProgressBar,
    WidgetListener,
    bar_html,
    plain_heading,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 50.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for IPython's ``display``: keeps what would have been shown."""

    def __init__(self) -> None:
        self.shown: list[object] = []
        self.calls: list[dict] = []

    def __call__(
        self, obj: object, raw: bool = False, display_id: str | None = None, update: bool = False
    ) -> None:
        self.shown.append(obj)
        self.calls.append({"obj": obj, "raw": raw, "display_id": display_id, "update": update})


def record_of(total: int | None = 16, workers: int = 2) -> RunRecord:
    return RunRecord("loop 1", "loky", workers, total)


def commit(record: RunRecord, status: str = DONE, duration: float = 0.01) -> None:
    i = record.done + record.failed
    record.add_iteration(IterationRecord(i, status, record.started, duration, worker=1))


# ------------------------------------------------------------------ environment


def fake_ipython(monkeypatch, kernel: object | None) -> None:
    """Pretend to run in an IPython shell, with or without a kernel."""
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setattr(display_mod, "_shell", lambda: shell)


def test_plain_python_environment(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert environment() == "python"
    assert isinstance(make_listener(), TextListener)


def test_imported_but_inactive_ipython_is_plain_python(monkeypatch):
    import IPython  # noqa: F401  (imported, but no shell is running)
    from IPython.core.interactiveshell import InteractiveShell

    # an earlier test module may have left an in-process shell behind
    monkeypatch.setattr(InteractiveShell, "_instance", None)
    assert environment() == "python"


def test_terminal_ipython_environment(monkeypatch):
    fake_ipython(monkeypatch, kernel=None)
    assert environment() == "terminal"
    listener = make_listener(label="loop 1")
    assert isinstance(listener, TextListener) and listener.label == "loop 1"


def test_kernel_environment(monkeypatch):
    fake_ipython(monkeypatch, kernel=object())
    assert environment() == "kernel"
    assert isinstance(make_listener(label="x"), WidgetListener)


def test_kernel_without_ipywidgets_falls_back_to_text(monkeypatch):
    fake_ipython(monkeypatch, kernel=object())
    monkeypatch.setattr(display_mod, "widgets_available", lambda: False)
    assert isinstance(make_listener(), TextListener)


@pytest.mark.parametrize("kernel", [None, object()])
def test_no_progress_means_output_and_summary_only(monkeypatch, kernel):
    fake_ipython(monkeypatch, kernel=kernel)
    assert isinstance(make_listener(progress=False), QuietListener)


def test_import_does_not_import_ipython_or_ipywidgets():
    code = (
        "import sys, parmagic.display, parmagic.summary, parmagic.progress, parmagic.textview\n"
        "import parmagic.widgets\n"
        "parmagic.display.make_listener()\n"
        "print(sorted(m for m in ('IPython', 'ipywidgets') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


# ------------------------------------------------------------------ widget view


def progress_of(total: int | None = 16) -> Progress:
    return Progress(total=total, n_workers=2, clock=FakeClock())


def test_bar_is_built_without_display_and_has_a_stable_plain_text():
    bundle = ProgressBar(progress_of(16), "loop 1").mimebundle()
    assert bundle["text/plain"] == "[parmagic] loop 1: 16 iterations"
    assert bundle["text/plain"] == ProgressBar(progress_of(16), "loop 1").mimebundle()["text/plain"]
    assert len(bundle[WIDGET_VIEW_MIME]["model_id"]) == 32
    assert plain_heading("", None) == "[parmagic] parallel loop: iterations without a known total"


def started_widget(total: int | None = 16) -> tuple[WidgetListener, RunRecord, FakeClock, Recorder]:
    clock, shown = FakeClock(), Recorder()
    listener = WidgetListener(clock=clock, display=shown)
    record = record_of(total)
    listener.on_start(record)
    return listener, record, clock, shown


def shown_widget(total: int | None = 16) -> tuple[WidgetListener, RunRecord, FakeClock, Recorder]:
    """A run whose bar is on screen: one interval has passed."""
    listener, record, clock, shown = started_widget(total)
    clock.now += 0.1
    listener.on_progress(record, busy=2)
    return listener, record, clock, shown


def fill_width(value: str) -> float:
    """The fill's width in % from the bar's HTML."""
    return float(re.search(r"parmagic-bar-fill[^>]*width:([\d.]+)%", value).group(1))


def test_bar_appears_at_the_first_redraw_with_a_display_id():
    listener, record, clock, shown = started_widget()
    assert shown.calls == [] and listener.view is None  # nothing in the first interval
    clock.now += 0.06
    listener.on_progress(record, busy=2)
    assert shown.calls == []
    clock.now += 0.06
    listener.on_progress(record, busy=2)
    (call,) = shown.calls
    assert WIDGET_VIEW_MIME in call["obj"] and call["raw"] and not call["update"]
    assert call["display_id"] == listener.view.display_id
    value = listener.view.bar.value
    assert "0/16 [00:00&lt;?, ? it/s, 2/2 busy]" in value and fill_width(value) == 0.0


def test_a_run_shorter_than_one_interval_shows_only_its_static_final_bar():
    listener, record, clock, shown = started_widget(total=4)
    for _ in range(4):
        commit(record)
        clock.now += 0.01
        listener.on_progress(record, busy=2)
    record.outcome = "success"
    listener.on_finish(record)
    bar, summary = shown.calls
    assert set(bar["obj"]) == {"text/plain", "text/html"} and not bar["update"]
    assert "4/4 [00:00, " in bar["obj"]["text/plain"] and listener.view is None
    assert isinstance(summary["obj"], Summary)


def test_widget_redraws_at_most_ten_times_a_second():
    listener, record, clock, _ = shown_widget(total=20_000)
    values: list[str] = []
    listener.view.bar.observe(lambda change: values.append(change["new"]), names="value")
    for _ in range(20_000):  # one commit every 0.1 ms: 2 s in all
        clock.now += 0.0001
        commit(record)
        listener.on_progress(record, busy=2)
    assert 15 <= len(values) <= 21
    widths = [fill_width(v) for v in values]
    assert widths == sorted(widths)


def test_redraws_follow_the_count():
    listener, record, clock, _ = shown_widget(total=4)
    commit(record)
    listener.on_progress(record, busy=2)
    assert "0/4 " in listener.view.bar.value  # under one interval since the last redraw
    clock.now += 0.1
    listener.on_progress(record, busy=2)
    assert "1/4 " in listener.view.bar.value and fill_width(listener.view.bar.value) == 25.0


def test_bar_html_names_the_loop_in_a_fixed_width_area_then_the_bar():
    value = bar_html(progress_of(4), "for i in range(4):")
    name = re.search(r'class="parmagic-bar-name" style="([^"]*)"[^>]*>([^<]*)<', value)
    assert f"width:{NAME_WIDTH}ch" in name.group(1) and name.group(2) == "for i in range(4)"
    assert value.index("parmagic-bar-name") < value.index("parmagic-bar-track")
    assert value.index("parmagic-bar-track") < value.index("parmagic-bar-status")


def test_bar_html_escapes_the_label():
    assert "<script>" not in bar_html(progress_of(4), "<script>alert(1)</script>")


def test_bars_share_layout_and_style_until_closed():
    first, second = ProgressBar(progress_of(3)), ProgressBar(progress_of(4))
    assert first.bar.layout is second.bar.layout and first.bar.style is second.bar.style
    first.bar.layout.close()  # as Widget.close_all() would
    third = ProgressBar(progress_of(5))
    assert third.bar.layout is not first.bar.layout and third.bar.layout.comm is not None


@pytest.mark.parametrize("outcome", ["success", "error", "interrupted"])
def test_end_replaces_the_bar_by_its_static_final_state_and_closes_it(outcome):
    listener, record, clock, shown = shown_widget(total=30)
    for _ in range(5):
        commit(record)
    commit(record, FAILED if outcome == "error" else DONE)
    clock.now += 0.9
    record.outcome = outcome
    bar = listener.view.bar
    listener.on_finish(record)
    update = shown.calls[1]
    assert update["update"] and update["raw"]
    assert update["display_id"] == shown.calls[0]["display_id"]
    static = update["obj"]
    assert set(static) == {"text/plain", "text/html"}  # no widget view: renders anywhere
    assert "6/30" in static["text/plain"] and "30 iterations" not in static["text/plain"]
    assert static["text/plain"].endswith(outcome)
    assert "20%|████" in static["text/plain"] and "[00:01, 6.00 it/s" in static["text/plain"]
    html_text = static["text/html"]
    assert "6/30" in html_text and fill_width(html_text) == 20.0
    assert f"background:{OUTCOME_COLOURS[outcome]}" in html_text
    assert bar.comm is None  # closed: no model left for a reopened notebook to miss
    assert isinstance(shown.shown[-1], Summary)


def test_unknown_total_counts_and_shows_no_bar():
    listener, record, clock, _ = shown_widget(total=None)
    for _ in range(5):
        commit(record)
    clock.now += 0.2
    listener.on_progress(record, busy=1)
    assert "5 done [" in listener.view.bar.value
    assert "parmagic-bar-track" not in listener.view.bar.value
    record.outcome = "success"
    static = listener.view.static_bundle("success")
    assert "5 done" in static["text/plain"] and static["text/plain"].endswith("success")


def test_each_run_gets_its_own_bar():
    listener, record, clock, shown = shown_widget()
    first = listener.view
    listener.on_finish(record)
    second = record_of(3)
    listener.on_start(second)
    clock.now += 0.1
    listener.on_progress(second, busy=1)
    assert listener.view is not first and listener.view.display_id != first.display_id
    assert (
        sum(1 for c in shown.calls if isinstance(c["obj"], dict) and WIDGET_VIEW_MIME in c["obj"])
        == 2
    )


def test_widget_output_goes_to_streams_in_order(capsys):
    listener, _, _, _ = started_widget()
    listener.on_output(0, "stdout", "odd 1\n")
    listener.on_output(1, "stderr", "warn\n")
    listener.on_output(2, "stdout", "odd 3\n")
    out, err = capsys.readouterr()
    assert (out, err) == ("odd 1\nodd 3\n", "warn\n")


def test_finish_without_start_shows_nothing():
    shown = Recorder()
    WidgetListener(display=shown).on_finish(record_of())
    assert shown.shown == []


def test_widget_summary_is_compact_for_short_runs_and_off_on_request():
    listener, record, clock, shown = started_widget(total=2)
    commit(record)
    commit(record)
    record.ended, record.outcome = record.started + 0.1, "success"
    listener.on_finish(record)
    assert isinstance(shown.shown[-1], Summary) and shown.shown[-1].compact
    quiet, shown = WidgetListener(clock=clock, display=Recorder(), summary=False), None
    quiet.on_start(record_of(2))
    quiet.on_finish(record)
    assert not any(isinstance(obj, Summary) for obj in quiet.display.shown)


# ------------------------------------------------------------------ text view


def started_text(total: int | None = 16, live: bool | None = None):
    clock, stream, shown = FakeClock(), io.StringIO(), []
    listener = TextListener(
        "loop 1", clock=clock, show=shown.append, progress_stream=stream, live=live
    )
    record = record_of(total)
    listener.on_start(record)
    return listener, record, clock, stream, shown


def test_terminal_line_is_redrawn_in_place_then_one_final_line():
    listener, record, clock, stream, shown = started_text(total=3000, live=True)
    for _ in range(3000):  # 3 s of commits
        clock.now += 0.001
        commit(record)
        listener.on_progress(record, busy=2)
    record.outcome = "success"
    listener.on_finish(record)
    written = stream.getvalue()
    assert written.count("\n") == 1 and written.endswith("\n")  # ONE line in the end
    draws = written.split("\r")[1:]
    assert 25 <= len(draws) <= 31, len(draws)  # ~10 a second, plus the final one
    assert all(d.startswith("loop 1 ") for d in draws)
    final = draws[-1].rstrip("\n").rstrip()
    assert final.endswith("3000/3000 [00:03, 1,000 it/s] success"), final
    assert isinstance(shown[-1], Summary)


def test_not_a_terminal_writes_only_the_final_line():
    listener, record, clock, stream, _ = started_text(total=3000)  # StringIO: no tty
    for _ in range(3000):
        clock.now += 0.001
        commit(record)
        listener.on_progress(record, busy=2)
    record.outcome = "success"
    listener.on_finish(record)
    assert "\r" not in stream.getvalue()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("loop 1 ") and line.endswith("success")


def test_fast_run_prints_only_the_final_line():
    listener, record, clock, stream, _ = started_text(total=2, live=True)
    commit(record)
    clock.now += 0.05
    listener.on_progress(record, busy=1)
    record.outcome = "success"
    listener.on_finish(record)
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()


def test_output_wipes_the_live_line_and_is_never_split_by_it(capsys):
    listener, record, clock, stream, _ = started_text(live=True)
    clock.now += 0.5
    listener.on_progress(record, busy=1)
    assert stream.getvalue().startswith("\rloop 1 ")
    drawn = len(stream.getvalue()) - 1
    listener.on_output(0, "stdout", "partial ")
    assert stream.getvalue().endswith("\r" + " " * drawn + "\r")  # wiped before the output
    clock.now += 5
    before = stream.getvalue()
    listener.on_progress(record, busy=1)  # would cut the open line: held back
    assert stream.getvalue() == before
    listener.on_output(1, "stdout", "line\n")
    clock.now += 5
    listener.on_progress(record, busy=1)
    assert stream.getvalue() != before
    assert capsys.readouterr().out == "partial line\n"


def test_unfinished_output_line_is_ended_on_the_progress_stream(capsys):
    listener, record, _, stream, _ = started_text()
    listener.on_output(0, "stdout", "no newline")
    record.outcome = "success"
    listener.on_finish(record)
    assert capsys.readouterr().out == "no newline"  # stdout exactly as the serial loop's
    assert stream.getvalue().startswith("\nloop 1 ")


def test_default_text_summary_goes_to_stderr(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    listener = make_listener(label="loop 1")
    record = record_of(total=1)
    listener.on_start(record)
    commit(record)
    record.ended, record.outcome = record.started + 2.0, "success"  # long enough: full
    listener.on_finish(record)
    out, err = capsys.readouterr()
    assert out == ""
    assert "loop 1 · loky · 2 workers · success" in err
    assert "<" not in err  # text, never HTML or a widget repr


def test_text_summary_of_a_short_run_is_one_line(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    listener = make_listener(label="loop 1")
    record = record_of(total=1)
    listener.on_start(record)
    commit(record)
    record.ended, record.outcome = record.started + 0.1, "success"
    listener.on_finish(record)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 2, err  # the final bar line and the one-line summary
    assert err.splitlines()[1].startswith("loop 1: 1/1 done in 0.10s on 2 workers")


# ------------------------------------------------------------------ quiet


def test_quiet_listener_shows_output_and_summary_only(capsys):
    shown: list[object] = []
    listener = QuietListener(shown.append)
    record = record_of(total=1)
    listener.on_start(record)
    listener.on_progress(record, busy=1)
    listener.on_output(0, "stdout", "hello\n")
    listener.on_finish(record)
    assert capsys.readouterr().out == "hello\n"
    assert len(shown) == 1 and isinstance(shown[0], Summary)


@pytest.mark.parametrize("kernel", [None, object()])
def test_no_progress_and_no_summary_prints_nothing(monkeypatch, capsys, kernel):
    fake_ipython(monkeypatch, kernel=kernel)
    listener = make_listener(progress=False, summary=False)
    record = record_of(total=1)
    listener.on_start(record)
    commit(record)
    listener.on_progress(record, busy=1)
    listener.on_output(0, "stdout", "own output\n")
    record.outcome = "success"
    listener.on_finish(record)
    assert capsys.readouterr() == ("own output\n", "")


def test_summary_false_keeps_the_bar_but_no_summary(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    listener = make_listener(label="loop 1", summary=False)
    record = record_of(total=1)
    listener.on_start(record)
    commit(record)
    record.outcome = "success"
    listener.on_finish(record)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("loop 1 ") and line.endswith("success")


# ------------------------------------------------------------------ tqdm-wrapped iterables


def test_unwrap_tqdm_gives_the_wrapped_iterable_and_the_bar():
    tqdm = pytest.importorskip("tqdm")
    items = [1, 2, 3]
    bar = tqdm.tqdm(items, file=io.StringIO())
    assert unwrap_tqdm(bar) == (items, bar)
    assert unwrap_tqdm(items) == (items, None)
    manual = tqdm.tqdm(total=3, file=io.StringIO())  # no iterable: nothing to unwrap
    assert unwrap_tqdm(manual) == (manual, None)
    bar.close()
    manual.close()


def test_tqdm_follower_counts_completions_not_submissions(capsys):
    tqdm = pytest.importorskip("tqdm")
    out = io.StringIO()
    bar = tqdm.tqdm(range(4), file=out, mininterval=0)
    inner, user_bar = unwrap_tqdm(bar)
    shown: list[object] = []
    follower = TqdmFollower(user_bar, QuietListener(shown.append))
    record = record_of(total=4)
    follower.on_start(record)
    taken = list(inner)  # the engine takes every item at once...
    assert taken == [0, 1, 2, 3] and user_bar.n == 0  # ...which tqdm does not count
    commit(record)
    follower.on_progress(record, busy=2)
    assert user_bar.n == 1
    follower.on_output(0, "stdout", "it 0\n")
    commit(record)
    commit(record, FAILED)
    record.outcome = "error"
    follower.on_finish(record)
    assert user_bar.n == 3 and user_bar.disable  # closed at the run's own count
    assert capsys.readouterr().out == "it 0\n"
    assert len(shown) == 1 and isinstance(shown[0], Summary)
