"""The live progress bar of a run in a Jupyter notebook, and its static final picture.

The only module that imports ipywidgets, and only when a bar is built (as
tqdm's notebook view does), with an error that says what to install.

Each run (loop) gets one widget: an ``HTML`` model whose value is the bar
drawn as HTML (:func:`bar_html`: the loop's name in a fixed-width area, the
percentage, the bar, done/total, elapsed<ETA, rate, busy workers, failures),
redrawn at most ~10 times a second whatever the task rate. The same HTML,
with the outcome, is the bar's final static output: at the end the bar's
display is updated (``update_display_data``) with a ``text/plain`` +
``text/html`` bundle of the final state and the widget's comm is closed, so a
notebook reopened without its kernel, nbconvert and GitHub show the final bar,
never "Error displaying widget: model not found".

A bar must cost nothing a user can measure, even on a loop of a few
milliseconds. Widgets are expensive to make (traitlets and one comm per
model), so a bar is a single lean widget rather than tqdm's bar and labels in
a box, its layout and style models are made once per kernel and shared
(ipywidgets allows it), and each redraw is one message.

Iteration output is written to the cell's own stdout/stderr streams in
iteration order (so a saved notebook keeps it without widget state), and at
the end the static :class:`~parmagic.summary.Summary` is displayed below the bar.
"""

from __future__ import annotations

import functools
import html
import time
import uuid
from collections.abc import Callable
from typing import Any

from .listener import PlainListener
from .progress import BAR_CELLS, NAME_WIDTH, Clock, Progress, Throttle, loop_name
from .record import RunRecord
from .summary import OUTCOME_COLOURS, Summary, is_compact, outcome_badge

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

#: ``display(obj, raw=..., display_id=..., update=...)`` as in ``IPython.display``.
DisplayFn = Callable[..., Any]

#: The whole bar on one line in the notebook's code font; the name area has a fixed
#: width, so the bar's left edge stays where it is whatever the loop's name.
_LINE_STYLE = (
    "font-family:var(--jp-code-font-family,monospace);font-size:var(--jp-code-font-size,13px);"
    "white-space:nowrap;display:flex;align-items:center;gap:1ch;line-height:1.7"
)
_NAME_STYLE = f"flex:none;width:{NAME_WIDTH}ch;overflow:hidden;text-overflow:ellipsis"
_PERCENT_STYLE = "flex:none;width:4ch;text-align:right"
# the track's border is the text colour (currentColor): visible on any theme
_TRACK_STYLE = (
    f"flex:none;width:{BAR_CELLS}ch;height:1.1em;border:1px solid;border-radius:2px;"
    "box-sizing:border-box;overflow:hidden"
)


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


def _kernel_display(
    obj: Any, raw: bool = False, display_id: str | None = None, update: bool = False
) -> None:
    """Show a bundle (``raw``) or one of parmagic's renderables in the kernel (``display.publish``)."""
    from .kernel_output import publish

    publish(obj if raw else obj._repr_mimebundle_(), display_id=display_id, update=update)


def bar_html(progress: Progress, label: str, outcome: str | None = None) -> str:
    """The bar as one line of HTML; with ``outcome`` (finished), its colour and badge."""
    colour = OUTCOME_COLOURS.get(outcome or "running", OUTCOME_COLOURS["running"])
    name = loop_name(label)
    parts = [
        f'<span class="parmagic-bar-name" style="{_NAME_STYLE}" title="{html.escape(name)}">'
        f"{html.escape(name)}</span>"
    ]
    fraction = progress.fraction
    if fraction is not None:
        total = progress.total or 0
        parts.append(
            f'<span class="parmagic-bar-percent" style="{_PERCENT_STYLE}">'
            f"{progress.percent_text().strip()}</span>"
            f'<span class="parmagic-bar-track" style="{_TRACK_STYLE}" role="progressbar" '
            f'aria-valuemin="0" aria-valuemax="{total}" aria-valuenow="{progress.completed}">'
            f'<span class="parmagic-bar-fill" style="display:block;height:100%;'
            f'width:{fraction * 100:.1f}%;background:{colour}"></span></span>'
        )
    parts.append(f'<span class="parmagic-bar-status">{html.escape(progress.describe())}</span>')
    if outcome:
        parts.append(outcome_badge(outcome))
    state = f"parmagic-{outcome}" if outcome else "parmagic-running"
    return f'<div class="parmagic-bar {state}" style="{_LINE_STYLE}">{"".join(parts)}</div>'


@functools.cache
def bar_widget() -> type:
    """The widget class of a bar: the frontend's ``HTML`` model, lean.

    ``ipywidgets.HTML`` carries more synced traits than a bar sets; making one
    and sending it costs more than a loop of a few milliseconds may spend on its
    bar. This ``Widget`` uses the same frontend model and view
    (``HTMLModel``/``HTMLView``) with only the traits a bar sets: the frontend
    fills in the rest from its defaults. Being an ``ipywidgets.Widget``, it
    answers state requests (a page reload) and closes like any other widget.
    """
    widgets = import_ipywidgets()
    from ipywidgets._version import __jupyter_widgets_controls_version__ as version
    from ipywidgets.widgets.trait_types import InstanceDict
    from ipywidgets.widgets.widget import widget_serialization
    from ipywidgets.widgets.widget_string import HTMLStyle
    from traitlets import Unicode

    controls = "@jupyter-widgets/controls"

    class LoopBar(widgets.Widget):
        """A progress bar drawn as HTML (``HTMLModel``) with parmagic's few traits."""

        _model_module = Unicode(controls).tag(sync=True)
        _model_module_version = Unicode(version).tag(sync=True)
        _model_name = Unicode("HTMLModel").tag(sync=True)
        _view_module = Unicode(controls).tag(sync=True)
        _view_module_version = Unicode(version).tag(sync=True)
        _view_name = Unicode("HTMLView").tag(sync=True)
        value = Unicode("").tag(sync=True)
        style = InstanceDict(HTMLStyle).tag(sync=True, **widget_serialization)
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


def plain_heading(label: str, total: int | None) -> str:
    """The live bar's ``text/plain``: fixed when displayed, so saved notebooks compare equal.

    Replaced by the final state's line when the run ends.
    """
    size = f"{total} iterations" if total is not None else "iterations without a known total"
    return f"[parmagic] {loop_name(label)}: {size}"


def static_bundle(progress: Progress, label: str, outcome: str) -> dict[str, str]:
    """The final state as ``text/plain`` (tqdm's line) and ``text/html`` (the bar)."""
    return {
        "text/plain": progress.line(label, outcome),
        "text/html": bar_html(progress, label, outcome),
    }


class ProgressBar:
    """One bar: a lean ``HTML`` widget showing :func:`bar_html`; not yet shown."""

    def __init__(self, progress: Progress, label: str = "") -> None:
        """Build the widget for ``progress`` (its total may be None: unknown)."""
        widgets = import_ipywidgets()
        from ipywidgets.widgets.widget_string import HTMLStyle

        self.progress = progress
        self.label = label
        self.heading = plain_heading(label, progress.total)
        self.display_id = uuid.uuid4().hex
        self.bar = bar_widget()(
            value=bar_html(progress, label),
            style=_shared("html-style", HTMLStyle),
            layout=_shared("html-layout", lambda: widgets.Layout(width="100%")),
        )

    def mimebundle(self) -> dict[str, Any]:
        """The widget view bundle, with :func:`plain_heading` as its ``text/plain``.

        Built here rather than by ``_repr_mimebundle_``, whose ``repr`` of the
        widget we would throw away and which costs as much as the widget.
        """
        return {WIDGET_VIEW_MIME: self.bar.get_view_spec(), "text/plain": self.heading}

    def update(self) -> None:
        """Redraw from the progress: one message (an unchanged value sends nothing)."""
        self.bar.value = bar_html(self.progress, self.label)

    def static_bundle(self, outcome: str) -> dict[str, str]:
        """The final state as ``text/plain`` (tqdm's line) and ``text/html`` (the bar)."""
        return static_bundle(self.progress, self.label, outcome)

    def close(self) -> None:
        """Close the widget's comm: the static output has replaced its view."""
        self.bar.close()


class WidgetListener:
    """A ``RunListener`` drawing a live :class:`ProgressBar` per run, then the summary.

    The bar appears at the first redraw, 0.1 s into the run (as tqdm's
    ``delay``): a loop that ends sooner shows only its static final bar, one
    message instead of a widget's four (open, display, update, close), which on
    a busy machine cost a millisecond or more. At the end the bar's display
    becomes the static final state and the widget is closed. ``summary`` False
    shows no summary; a ``%pmap`` run or a short loop gets the one-line summary.
    ``display`` and ``clock`` are injectable so tests build the widgets without
    a frontend and without sleeping.
    """

    def __init__(
        self,
        label: str = "",
        clock: Clock = time.monotonic,
        display: DisplayFn | None = None,
        summary: bool = True,
    ) -> None:
        """``label`` names the bar (default: the record's label)."""
        import_ipywidgets()
        self.label = label
        self.clock = clock
        self.display = display or _kernel_display
        self.summary = summary
        self.view: ProgressBar | None = None
        self.progress: Progress | None = None
        self.throttle = Throttle()
        self._name = label
        self._output = PlainListener()

    def on_start(self, record: RunRecord) -> None:
        """Start counting; the bar is shown at the first redraw, one interval later."""
        self.progress = Progress.for_record(record, clock=self.clock)
        self.throttle = Throttle(last=self.progress.started)
        self.view = None
        self._name = self.label or record.label

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Redraw (showing the bar the first time), unless the last redraw was under 0.1 s ago."""
        if self.progress is None:
            return
        if self.throttle.should_render(self.clock()):
            self.progress.observe(record, busy)
            if self.view is None:
                self.view = ProgressBar(self.progress, self._name)
                self.display(self.view.mimebundle(), raw=True, display_id=self.view.display_id)
            else:
                self.view.update()

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Write the committed iteration's output to the cell's stream, whole."""
        self._output.on_output(index, stream, text)

    def on_finish(self, record: RunRecord) -> None:
        """The bar's display becomes its static final state; the widget closes; the summary."""
        if self.progress is None:
            return
        self.progress.finish(record)
        bundle = static_bundle(self.progress, self._name, record.outcome)
        if self.view is None:  # ended before its first redraw: the final state only
            self.display(bundle, raw=True)
        else:
            # update first, then close: the view is replaced before its model goes away
            self.display(bundle, raw=True, display_id=self.view.display_id, update=True)
            self.view.close()
        self.progress = None
        if self.summary:
            self.display(Summary(record, compact=is_compact(record)))
