"""Choose how a run is shown: widget, text, or output and summary only.

Environment detection lives here, apart from the views (as tqdm's
``autonotebook``). IPython is never imported by this module: if it is not
already in ``sys.modules`` we are not inside IPython, and ``import parmagic``
stays free of IPython and ipywidgets.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from .kernel_output import _shell, publish
from .listener import PlainListener, RunListener
from .record import RunRecord
from .summary import Summary, is_compact
from .textview import TextListener, write_to_stderr

#: What :func:`environment` returns.
KERNEL, TERMINAL, PYTHON = "kernel", "terminal", "python"


def environment() -> str:
    """``"kernel"`` inside a Jupyter kernel, ``"terminal"`` in terminal IPython, else ``"python"``."""
    shell = _shell()
    if shell is None:
        return PYTHON
    return KERNEL if getattr(shell, "kernel", None) is not None else TERMINAL


def widgets_available() -> bool:
    """True when ipywidgets can be imported."""
    return importlib.util.find_spec("ipywidgets") is not None


def show(obj: Any) -> None:
    """Display ``obj`` in a notebook (HTML and text), else write it as text on stderr.

    Outside a kernel stdout keeps only what the loop itself printed.
    """
    if environment() != KERNEL:
        write_to_stderr(obj)
        return
    bundle = getattr(obj, "_repr_mimebundle_", None)
    if bundle is None:
        from IPython.display import display

        display(obj)
        return
    publish(bundle())


class QuietListener(PlainListener):
    """No progress: each iteration's output in order, then the summary."""

    def __init__(self, show_summary: Any = show) -> None:
        """``show_summary`` presents the final :class:`Summary`."""
        self.show_summary = show_summary
        self._started = False

    def on_start(self, record: RunRecord) -> None:
        """Remember that the run started (a summary follows)."""
        self._started = True

    def on_finish(self, record: RunRecord) -> None:
        """Show the summary of a run that started (one line for ``%pmap`` and short loops)."""
        if self._started:
            self.show_summary(Summary(record, compact=is_compact(record)))


def make_listener(progress: bool = True, label: str = "", summary: bool = True) -> RunListener:
    """The listener for this environment.

    In a Jupyter kernel with ipywidgets: a live widget bar that ends as a static
    picture of its final state, then the summary (HTML + text). In terminal
    IPython, plain Python, or a kernel without ipywidgets: a text line on stderr
    (redrawn in place on a terminal, only the final line elsewhere), then the
    summary. ``progress=False``: no bar; ``summary=False``: no summary; both
    False: only the iterations' own output. A ``%pmap`` run or a loop under half
    a second gets a one-line summary; ``parmagic.summary.Summary(parmagic.last_run())`` shows the
    full one. ``label`` names the loop in the bar and the summary (default: the
    record's label).
    """
    if not progress:
        return QuietListener(show) if summary else PlainListener()
    if environment() == KERNEL and widgets_available():
        from .widgets import WidgetListener

        return WidgetListener(label, summary=summary)
    return TextListener(label, show=show, summary=summary)


def unwrap_tqdm(iterable: Any) -> tuple[Any, Any]:
    """``(what a tqdm bar wraps, the bar)`` for a ``tqdm(...)``-wrapped iterable, else ``(it, None)``.

    A loop over ``tqdm(items)`` would have tqdm count the items the engine *takes*
    (submissions, far ahead of the work) beside parmagic's count of completions.
    The engine iterates the wrapped iterable itself and lets :class:`TqdmFollower`
    drive the user's bar. tqdm is never imported here: an object can only be a
    tqdm bar if tqdm is loaded already.
    """
    std = sys.modules.get("tqdm.std")
    if std is None or not isinstance(iterable, std.tqdm):
        return iterable, None
    inner = getattr(iterable, "iterable", None)
    return (iterable, None) if inner is None else (inner, iterable)


class TqdmFollower:
    """A ``RunListener`` that moves a user's tqdm bar with committed iterations, then passes on.

    The user asked for tqdm's bar, so it is the one shown (give ``listener``
    without progress); it counts iterations as they commit, and closes at the
    end (tqdm.notebook turns it red if the run stopped early, as for a plain
    loop that raised). Output is written in tqdm's ``external_write_mode`` so a
    terminal bar is not cut by it.
    """

    def __init__(self, bar: Any, listener: RunListener) -> None:
        """``bar`` is the tqdm object; ``listener`` shows output and the summary."""
        self.bar = bar
        self.listener = listener

    def _advance(self, record: RunRecord) -> None:
        """Move the bar to the committed count (tqdm throttles its own redraws)."""
        ended = record.done + record.failed
        if ended > self.bar.n:
            self.bar.update(ended - self.bar.n)

    def on_start(self, record: RunRecord) -> None:
        """Pass on."""
        self.listener.on_start(record)

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Advance the user's bar; pass on."""
        self._advance(record)
        self.listener.on_progress(record, busy)

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Write the iteration's output with the bar out of the way."""
        with self.bar.external_write_mode():
            self.listener.on_output(index, stream, text)

    def on_display(self, index: int, data: dict, metadata: dict, **kwargs: Any) -> None:
        """Pass on (a rich output of an iteration)."""
        self.listener.on_display(index, data, metadata, **kwargs)

    def on_finish(self, record: RunRecord) -> None:
        """Final count, close the bar, then the listener's end (the summary)."""
        self._advance(record)
        self.bar.close()
        self.listener.on_finish(record)
