"""The live progress bar of a run in a Jupyter notebook.

The only module that imports ipywidgets, and only when a bar is built (as
tqdm's notebook view does), with an error that says what to install. Each run
(loop) gets one widget: an ``IntProgress`` whose description carries the
loop's name and its live status (done/total, elapsed, ETA, busy workers,
failures), redrawn at most ~10 times a second whatever the task rate.

A bar must cost nothing a user can measure, even on a loop of a few
milliseconds. Widgets are expensive to make (traitlets and one comm per
model), so a bar is a single widget rather than tqdm's bar and labels in a
box, its layout and style models are made once per kernel and shared
(ipywidgets allows it), and each redraw is one message.

Iteration output is written to the cell's own stdout/stderr streams in
iteration order (so a saved notebook keeps it without widget state), and at
the end the static :class:`~parmagic.summary.Summary` is displayed below the bar.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from .listener import PlainListener
from .progress import Clock, Progress, Throttle, loop_name
from .record import RunRecord
from .summary import Summary

#: ``bar_style`` of the bar for each run outcome.
OUTCOME_STYLES = {"success": "success", "error": "danger", "interrupted": "warning"}

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

#: ``display(obj, raw=...)`` as in ``IPython.display``.
DisplayFn = Callable[..., Any]


def import_ipywidgets() -> Any:
    """Import ipywidgets, or say how to get it (or how to do without it)."""
    try:
        import ipywidgets
    except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency
        raise ImportError(
            "parmagic's live progress bar needs ipywidgets: `pip install ipywidgets` "
            "(or run with --no-progress)"
        ) from exc
    return ipywidgets


def _ipython_display(obj: Any, raw: bool = False) -> None:
    """``IPython.display.display``, imported only when something is shown."""
    from IPython.display import display

    display(obj, raw=raw)


@functools.cache
def bar_widget() -> type:
    """The widget class of a bar: the frontend's ``IntProgress`` model, lean.

    ``ipywidgets.IntProgress`` carries 19 synced traits and validates its
    bounds against each other; making one and sending it costs more than a
    loop of a few milliseconds may spend on its bar. This ``Widget`` uses the
    same frontend model and view (``IntProgressModel``/``ProgressView``) with
    only the traits a bar sets: the frontend fills in the rest from its
    defaults. Being an ``ipywidgets.Widget``, it answers state requests (a
    page reload) and closes like any other widget.
    """
    widgets = import_ipywidgets()
    from ipywidgets._version import __jupyter_widgets_controls_version__ as version
    from ipywidgets.widgets.trait_types import InstanceDict
    from ipywidgets.widgets.widget import widget_serialization
    from ipywidgets.widgets.widget_int import ProgressStyle
    from traitlets import CInt, Unicode

    controls = "@jupyter-widgets/controls"

    class LoopBar(widgets.Widget):
        """A progress bar (``IntProgressModel``) with parmagic's few traits."""

        _model_module = Unicode(controls).tag(sync=True)
        _model_module_version = Unicode(version).tag(sync=True)
        _model_name = Unicode("IntProgressModel").tag(sync=True)
        _view_module = Unicode(controls).tag(sync=True)
        _view_module_version = Unicode(version).tag(sync=True)
        _view_name = Unicode("ProgressView").tag(sync=True)
        value = CInt(0).tag(sync=True)
        min = CInt(0).tag(sync=True)
        max = CInt(100).tag(sync=True)
        description = Unicode("").tag(sync=True)
        bar_style = Unicode("").tag(sync=True)
        style = InstanceDict(ProgressStyle).tag(sync=True, **widget_serialization)
        layout = InstanceDict(widgets.Layout).tag(sync=True, **widget_serialization)

    return LoopBar


#: Layout and style models shared by every bar, made on first use (see ``_shared``).
_SHARED: dict[str, Any] = {}


def _shared(name: str, make: Callable[[], Any]) -> Any:
    """The shared model ``name``; made again if it was closed (``Widget.close_all()``)."""
    model = _SHARED.get(name)
    if model is None or model.comm is None:
        model = _SHARED[name] = make()
    return model


#: Longest loop name the bar shows (a long header would leave no room for the bar).
NAME_CHARS = 48


def _shortened(name: str) -> str:
    """``name``, cut to NAME_CHARS with an ellipsis."""
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def plain_heading(label: str, total: int | None) -> str:
    """The bar's ``text/plain``: fixed when displayed, so saved notebooks compare equal."""
    size = f"{total} iterations" if total is not None else "iterations without a known total"
    return f"[parmagic] {loop_name(label)}: {size}"


class ProgressBar:
    """One bar: an ``IntProgress`` with the loop's status as its description; not yet shown."""

    def __init__(self, total: int | None, label: str = "") -> None:
        """Build the widget for a run of ``total`` iterations (None: unknown)."""
        widgets = import_ipywidgets()
        from ipywidgets.widgets.widget_int import ProgressStyle

        known = total is not None
        self.total = total
        self.name = _shortened(loop_name(label)) if label else ""
        self.heading = plain_heading(label, total)
        self.status = f"0/{total} · starting" if known else "0 done · starting"
        # Without a total the bar stays full in "info" style and the text counts (as tqdm).
        self.bar = bar_widget()(
            value=0 if known else 1,
            min=0,
            max=max(total, 1) if known else 1,
            description=self._description(),
            bar_style="" if known else "info",
            style=_shared("style", lambda: ProgressStyle(description_width="initial")),
            layout=_shared("layout", lambda: widgets.Layout(width="100%", max_width="72em")),
        )

    def _description(self) -> str:
        """What the bar says left of itself: the loop's name and its status."""
        return f"{self.name}: {self.status}" if self.name else self.status

    def mimebundle(self) -> dict[str, Any]:
        """The widget view bundle, with :func:`plain_heading` as its ``text/plain``.

        Built here rather than by ``_repr_mimebundle_``, whose ``repr`` of the
        widget we would throw away and which costs as much as the widget.
        """
        return {WIDGET_VIEW_MIME: self.bar.get_view_spec(), "text/plain": self.heading}

    def update(self, progress: Progress) -> None:
        """Redraw from ``progress``: one message (unchanged traits send nothing)."""
        self.status = progress.describe()
        with self.bar.hold_sync():
            if self.total is not None:
                self.bar.value = min(progress.completed, self.bar.max)
            self.bar.description = self._description()

    def finish(self, progress: Progress, outcome: str) -> None:
        """Final state: value, text and the outcome's bar style, in one message."""
        with self.bar.hold_sync():
            if self.total is None:
                self.bar.max = max(progress.completed, 1)
                self.bar.value = progress.completed
            self.update(progress)
            self.bar.bar_style = OUTCOME_STYLES.get(outcome, "")


class WidgetListener:
    """A ``RunListener`` drawing a live :class:`ProgressBar` per run, then the summary.

    ``display`` and ``clock`` are injectable so tests build the widgets
    without a frontend and without sleeping.
    """

    def __init__(
        self,
        label: str = "",
        clock: Clock = time.monotonic,
        display: DisplayFn | None = None,
    ) -> None:
        """``label`` names the bar (default: the record's label)."""
        import_ipywidgets()
        self.label = label
        self.clock = clock
        self.display = display or _ipython_display
        self.view: ProgressBar | None = None
        self.progress: Progress | None = None
        self.throttle = Throttle()
        self._output = PlainListener()

    def on_start(self, record: RunRecord) -> None:
        """Build and show a fresh bar for this run."""
        self.progress = Progress.for_record(record, clock=self.clock)
        # the new bar shows its start; the first redraw waits one interval
        self.throttle = Throttle(last=self.progress.started)
        self.view = ProgressBar(record.total, self.label or record.label)
        self.display(self.view.mimebundle(), raw=True)

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Redraw, unless the last redraw was under 0.1 s ago."""
        if self.view is None or self.progress is None:
            return
        if self.throttle.should_render(self.clock()):
            self.progress.observe(record, busy)
            self.view.update(self.progress)

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Write the committed iteration's output to the cell's stream, whole."""
        self._output.on_output(index, stream, text)

    def on_finish(self, record: RunRecord) -> None:
        """Final bar state and style, then the static summary below it."""
        if self.view is None or self.progress is None:
            return
        self.throttle.should_render(self.clock(), final=True)
        self.progress.finish(record)
        self.view.finish(self.progress, record.outcome)
        self.display(Summary(record))
