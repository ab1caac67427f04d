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

from .listener import PlainListener, RunListener
from .record import RunRecord
from .summary import Summary, is_compact
from .textview import TextListener, write_to_stderr

#: What :func:`environment` returns.
KERNEL, TERMINAL, PYTHON = "kernel", "terminal", "python"


def _shell() -> Any:
    """The running IPython shell, or None (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython() if get_ipython is not None else None


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
    from IPython.display import display

    display(obj)


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
    a second gets a one-line summary; ``parmagic.last_run().summary()`` shows the
    full one. ``label`` names the loop in the bar and the summary (default: the
    record's label).
    """
    if not progress:
        return QuietListener(show) if summary else PlainListener()
    if environment() == KERNEL and widgets_available():
        from .widgets import WidgetListener

        return WidgetListener(label, summary=summary)
    return TextListener(label, show=show, summary=summary)
