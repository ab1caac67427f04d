"""The live progress bar of a run in a Jupyter notebook.

The only module that imports ipywidgets, and only when a bar is built (as
tqdm's notebook view does), with an error that says what to install. Each run
(loop) gets one bar: an ``IntProgress`` and an ``HTML`` label in an ``HBox``,
redrawn at most ~10 times a second whatever the task rate. Iteration output
is written to the cell's own stdout/stderr streams in iteration order (so a
saved notebook keeps it without widget state), and at the end the static
:class:`~parmagic.summary.Summary` is displayed below the bar.
"""

from __future__ import annotations

import html
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


def plain_heading(label: str, total: int | None) -> str:
    """The bar's ``text/plain``: fixed when displayed, so saved notebooks compare equal."""
    size = f"{total} iterations" if total is not None else "iterations without a known total"
    return f"[parmagic] {loop_name(label)}: {size}"


class ProgressBar:
    """One bar: ``IntProgress`` + ``HTML`` label in an ``HBox``; built without being shown."""

    def __init__(self, total: int | None, label: str = "") -> None:
        """Build the widgets for a run of ``total`` iterations (None: unknown)."""
        widgets = import_ipywidgets()
        known = total is not None
        self.total = total
        self.heading = plain_heading(label, total)
        # Without a total the bar stays full in "info" style and the label counts (as tqdm).
        self.bar = widgets.IntProgress(
            value=0 if known else 1,
            min=0,
            max=max(total, 1) if known else 1,
            description=loop_name(label) if label else "",
            bar_style="" if known else "info",
            style={"description_width": "initial"},
            layout={"width": "40%", "min_width": "240px"},
        )
        self.label = widgets.HTML(value=html.escape(self._start_text()))
        self.box = widgets.HBox([self.bar, self.label])

    def _start_text(self) -> str:
        """The label before the first redraw (deterministic)."""
        return f"0/{self.total} · starting" if self.total is not None else "0 done · starting"

    def mimebundle(self) -> dict[str, Any]:
        """The widget view bundle, with :func:`plain_heading` as its ``text/plain``."""
        data = dict(self.box._repr_mimebundle_())
        data["text/plain"] = self.heading
        return data

    def update(self, progress: Progress) -> None:
        """Redraw from ``progress`` (unchanged traits send nothing)."""
        if self.total is not None:
            self.bar.value = min(progress.completed, self.bar.max)
        self.label.value = html.escape(progress.describe())

    def finish(self, progress: Progress, outcome: str) -> None:
        """Final state: value, label and the outcome's bar style."""
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
        self.throttle = Throttle()
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
