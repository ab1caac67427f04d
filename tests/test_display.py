"""Listener choice and the widget and text views, without a kernel or a frontend.

Widgets are built without being displayed (as tqdm's tests do); a fake clock
replaces sleeping.
"""

from __future__ import annotations

import io
import subprocess
import sys
import types

import pytest

from parmagic import display as display_mod
from parmagic.display import QuietListener, environment, make_listener
from parmagic.record import DONE, FAILED, IterationRecord, RunRecord
from parmagic.summary import Summary
from parmagic.textview import TextListener
from parmagic.widgets import (
    NAME_CHARS,
    WIDGET_VIEW_MIME,
    ProgressBar,
    WidgetListener,
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

    def __call__(self, obj: object, raw: bool = False) -> None:
        self.shown.append(obj)


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


def test_bar_is_built_without_display_and_has_a_stable_plain_text():
    bundle = ProgressBar(16, "loop 1").mimebundle()
    assert bundle["text/plain"] == "[parmagic] loop 1: 16 iterations"
    assert bundle["text/plain"] == ProgressBar(16, "loop 1").mimebundle()["text/plain"]
    assert len(bundle[WIDGET_VIEW_MIME]["model_id"]) == 32
    assert plain_heading("", None) == "[parmagic] parallel loop: iterations without a known total"


def started_widget(total: int | None = 16) -> tuple[WidgetListener, RunRecord, FakeClock, Recorder]:
    clock, shown = FakeClock(), Recorder()
    listener = WidgetListener(clock=clock, display=shown)
    record = record_of(total)
    listener.on_start(record)
    return listener, record, clock, shown


def test_start_displays_one_bar():
    listener, _, _, shown = started_widget()
    assert len(shown.shown) == 1
    assert WIDGET_VIEW_MIME in shown.shown[0]
    assert listener.view.bar.max == 16 and listener.view.bar.value == 0
    assert listener.view.status == "0/16 · starting"


def test_widget_redraws_at_most_ten_times_a_second():
    listener, record, clock, _ = started_widget(total=20_000)
    values: list[int] = []
    listener.view.bar.observe(lambda change: values.append(change["new"]), names="value")
    for _ in range(20_000):  # one commit every 0.1 ms: 2 s in all
        clock.now += 0.0001
        commit(record)
        listener.on_progress(record, busy=2)
    assert 15 <= len(values) <= 21
    assert values == sorted(values)
    listener.on_finish(record)
    assert listener.view.bar.value == 20_000


def test_first_redraw_waits_one_interval():
    # a loop of a few milliseconds shows its start and its end, nothing between
    listener, record, clock, _ = started_widget(total=4)
    commit(record)
    listener.on_progress(record, busy=2)
    assert listener.view.bar.value == 0 and listener.view.status == "0/4 · starting"
    clock.now += 0.1
    listener.on_progress(record, busy=2)
    assert listener.view.bar.value == 1 and listener.view.status.startswith("1/4")


def test_bar_description_names_the_loop_then_its_status():
    clock = FakeClock()
    listener = WidgetListener("for i in range(4):", clock=clock, display=Recorder())
    listener.on_start(record_of(4))
    assert listener.view.bar.description == "for i in range(4): 0/4 · starting"


def test_a_long_loop_header_is_cut_to_leave_room_for_the_bar():
    header = "for i, (left, right) in enumerate(zip(first_long_name, second_long_name)):"
    bar = ProgressBar(4, header)
    name, status = bar.bar.description.split(": ", 1)
    assert len(name) == NAME_CHARS and name.endswith("…") and header.startswith(name[:-1])
    assert status == "0/4 · starting"


def test_bars_share_layout_and_style_until_closed():
    first, second = ProgressBar(3), ProgressBar(4)
    assert first.bar.layout is second.bar.layout and first.bar.style is second.bar.style
    first.bar.layout.close()  # as Widget.close_all() would
    third = ProgressBar(5)
    assert third.bar.layout is not first.bar.layout and third.bar.layout.comm is not None


@pytest.mark.parametrize(
    ("outcome", "style"), [("success", "success"), ("error", "danger"), ("interrupted", "warning")]
)
def test_final_style_follows_outcome(outcome, style):
    listener, record, clock, shown = started_widget(total=4)
    commit(record)
    commit(record, FAILED if outcome == "error" else DONE)
    clock.now += 1.0
    record.outcome = outcome
    listener.on_finish(record)
    bar = listener.view.bar
    assert (bar.bar_style, bar.value) == (style, 2)
    assert "2/4 · 1.00s elapsed" in listener.view.status
    assert isinstance(shown.shown[-1], Summary)


def test_label_shows_busy_eta_and_failures():
    listener, record, clock, _ = started_widget(total=10)
    clock.now += 2.0
    commit(record)
    commit(record, FAILED)
    listener.on_progress(record, busy=2)
    assert listener.view.status == "2/10 · 2.00s elapsed · ETA 8.00s · 2/2 busy · 1 failed"


def test_unknown_total_counts_and_ends_full():
    listener, record, clock, _ = started_widget(total=None)
    assert listener.view.bar.bar_style == "info"
    for _ in range(5):
        commit(record)
    clock.now += 0.2
    listener.on_progress(record, busy=1)
    assert listener.view.status.startswith("5 done")
    record.outcome = "success"
    listener.on_finish(record)
    bar = listener.view.bar
    assert (bar.value, bar.max, bar.bar_style) == (5, 5, "success")


def test_each_run_gets_its_own_bar():
    listener, record, _, shown = started_widget()
    first = listener.view
    listener.on_finish(record)
    listener.on_start(record_of(3))
    assert listener.view is not first and listener.view.bar.max == 3
    assert sum(1 for obj in shown.shown if isinstance(obj, dict)) == 2


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


# ------------------------------------------------------------------ text view


def started_text(total: int | None = 16):
    clock, stream, shown = FakeClock(), io.StringIO(), []
    listener = TextListener("loop 1", clock=clock, show=shown.append, progress_stream=stream)
    record = record_of(total)
    listener.on_start(record)
    return listener, record, clock, stream, shown


def test_text_progress_at_most_one_line_a_second():
    listener, record, clock, stream, shown = started_text(total=3000)
    for _ in range(3000):  # 3 s of commits
        clock.now += 0.001
        commit(record)
        listener.on_progress(record, busy=2)
    record.outcome = "success"
    listener.on_finish(record)
    lines = stream.getvalue().splitlines()
    assert 3 <= len(lines) <= 4, lines
    assert all(line.startswith("[parmagic] loop 1: ") for line in lines)
    assert lines[-1].endswith("3000/3000 · 3.00s elapsed · 0 failed · success")
    assert isinstance(shown[-1], Summary)


def test_fast_run_prints_only_the_final_line():
    listener, record, clock, stream, _ = started_text(total=2)
    commit(record)
    clock.now += 0.3
    listener.on_progress(record, busy=1)
    record.outcome = "success"
    listener.on_finish(record)
    assert len(stream.getvalue().splitlines()) == 1


def test_text_output_in_order_never_split_by_progress(capsys):
    listener, record, clock, stream, _ = started_text()
    listener.on_output(0, "stdout", "partial ")
    clock.now += 5
    listener.on_progress(record, busy=1)  # would cut the open line: held back
    assert stream.getvalue() == ""
    listener.on_output(1, "stdout", "line\n")
    clock.now += 5
    listener.on_progress(record, busy=1)
    assert stream.getvalue().count("\n") == 1
    assert capsys.readouterr().out == "partial line\n"


def test_unfinished_output_line_is_ended_on_the_progress_stream(capsys):
    listener, record, _, stream, _ = started_text()
    listener.on_output(0, "stdout", "no newline")
    record.outcome = "success"
    listener.on_finish(record)
    assert capsys.readouterr().out == "no newline"  # stdout exactly as the serial loop's
    assert stream.getvalue().startswith("\n[parmagic] loop 1: ")


def test_default_text_summary_goes_to_stderr(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    listener = make_listener(label="loop 1")
    record = record_of(total=1)
    listener.on_start(record)
    commit(record)
    record.outcome = "success"
    listener.on_finish(record)
    out, err = capsys.readouterr()
    assert out == ""
    assert "loop 1 · loky · 2 workers · success" in err
    assert "<" not in err  # text, never HTML or a widget repr


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
