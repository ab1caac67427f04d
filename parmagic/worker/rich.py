"""Rich output, warnings and log records of iterations, captured for the kernel to replay.

A worker process has no IPython shell: ``display()`` would print an object's
repr, ``plt.show()`` nothing, warnings would be filtered by the worker's own
filters (and shown once per worker), log records would go to the worker's
handlers. During a batch this module captures each of them into the batch's
outputs, in the order they happen among the prints, as ``(k, stream, payload,
effects before)`` with ``stream`` one of :data:`STREAMS`; the kernel replays
them at commit (``parmagic.replay_output``) through its own display publisher,
warning registries and logging handlers, so that the kernel's settings decide.

``display`` is routed by swapping the code of IPython's ``display`` and
``publish_display_data`` functions for a trampoline into this module (the
captured ``display`` and the one in imported modules are the same function
objects, so every reference is routed). Making ``InteractiveShell.initialized()``
true instead would make ``get_ipython()`` return a shell that is not one, and
libraries that look for a notebook (tqdm, pandas) would take it for one.

Imports nothing of IPython or matplotlib unless the user's code did.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

#: Output streams that are not text: replayed by the kernel, not written.
DISPLAY, WARNING, LOG = "display", "warning", "log"
STREAMS = frozenset({DISPLAY, WARNING, LOG})

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
#: what matplotlib calls that backend (``%matplotlib inline`` sets "inline")
INLINE_NAMES = frozenset({INLINE_BACKEND, "inline"})
_DISPLAY_MODULE = "IPython.core.display_functions"


@dataclass
class RichSettings:
    """The kernel's settings a worker applies during a batch (shipped in the payload)."""

    #: warnings.filters, in order; categories not of builtins as :class:`CategoryRef`
    warning_filters: list = field(default_factory=list)
    warning_default: str = "default"  # warnings.defaultaction
    log_levels: dict[str, int] = field(default_factory=dict)  # logger name ("" root) -> level
    log_disable: int = 0  # logging.disable's level
    figure_formats: list[str] = field(default_factory=lambda: ["png"])  # InlineBackend's
    print_figure_kwargs: dict[str, Any] = field(default_factory=lambda: {"bbox_inches": "tight"})
    #: the kernel draws figures inline: so do the workers, whatever their own environment
    #: (loky's inherit MPLBACKEND from the kernel, a dask worker started elsewhere does not)
    figures_inline: bool = False


@dataclass(frozen=True)
class CategoryRef:
    """A warning category by name: unpickling the class itself would import its module in
    every worker (IPython's filters name ``IPython.core.completer``'s: 50 ms a worker)."""

    module: str
    qualname: str

    @classmethod
    def of(cls, category: Any) -> Any:
        """``category`` itself if it is a builtin, else a reference to it."""
        if getattr(category, "__module__", "builtins") == "builtins":
            return category
        return cls(category.__module__, category.__qualname__)

    def resolve(self) -> type | None:
        """The class, if its module is imported here (else no warning of it can be raised)."""
        found: Any = sys.modules.get(self.module)
        for part in self.qualname.split("."):
            found = getattr(found, part, None)
        return found if isinstance(found, type) else None


def _category(cat: Any) -> type | None:
    return cat.resolve() if isinstance(cat, CategoryRef) else cat


_local = threading.local()  # .capture: the RichCapture of the batch this thread runs
_lock = threading.Lock()


class _Process:
    """Process-wide state: the batches capturing now, and what they replaced."""

    captures: list[RichCapture] = []
    saved: dict[str, Any] = {}
    formatter: Any = None
    original: dict[str, Any] = {}  # IPython function name -> a copy with its own code
    #: times the warning filters changed while capturing (``catch_warnings``, ``simplefilter``)
    mutations = 0


def _active() -> RichCapture | None:
    """The capture of the batch running in this thread (or the only one in the process)."""
    capture = getattr(_local, "capture", None)
    if capture is None and len(_Process.captures) == 1:
        capture = _Process.captures[0]  # a thread the iteration started itself
    return capture


class RichCapture:
    """Captures one batch's displays, figures, warnings and log records into its outputs."""

    def __init__(self, state: Any, settings: RichSettings):
        self.state = state
        self.settings = settings
        self._seen: set[tuple] = set()  # warnings shown once per location: already sent
        self._seen_in: Any = state.result
        self._mutations = _Process.mutations  # the filters' changes when it last warned
        self.inline = False

    @property
    def seen(self) -> set[tuple]:
        """The once-per-location warnings already in this attempt's outputs: a batch that drew
        random numbers runs again (streams.py) with fresh outputs, so it sends them again."""
        if self._seen_in is not self.state.result:
            self._seen, self._seen_in = set(), self.state.result
        return self._seen

    def add(self, stream: str, payload: Any) -> None:
        """Append an output for the running iteration, after the effects recorded so far."""
        result = self.state.result
        result.outputs.append((self.state.current, stream, payload, len(result.effects)))

    # ------------------------------------------------------------------ display

    def display(self, data: dict, metadata: dict | None, **kwargs: Any) -> None:
        """A formatted bundle to publish in the kernel (``transient``, ``update`` kept)."""
        payload = {"data": data, "metadata": metadata or {}}
        if kwargs.get("transient"):
            payload["transient"] = kwargs["transient"]
        if kwargs.get("update"):
            payload["update"] = True
        self.add(DISPLAY, payload)

    def flush_figures(self) -> None:
        """Show the figures left open (as the inline backend does after a cell), close them."""
        inline = sys.modules.get("matplotlib_inline.backend_inline")
        pyplot = sys.modules.get("matplotlib.pyplot")
        if inline is None or pyplot is None or not _is_inline(pyplot):
            return
        if pyplot.get_fignums():
            inline.show(close=True)

    # ------------------------------------------------------------------ warnings

    def warning(self, message: Any, category: type, filename: str, lineno: int) -> None:
        """A warning the kernel's filters let through in the worker: send it once per location."""
        module = _warning_module(filename)
        text = str(message)
        action = _action(self.settings, text, category, module, lineno)
        # A change of the filters (a library's catch_warnings, as scikit-learn's fit has)
        # empties Python's per-location registries, so the plain loop shows such a warning
        # again: forget what was sent (but "once"), and have the kernel empty its own.
        mutated = self._mutations != _Process.mutations
        if mutated:
            self._mutations = _Process.mutations
            self._seen = {key for key in self.seen if len(key) == 2}
        key = {
            "once": (text, category),
            "module": (text, category, module),
            "default": (text, category, module, lineno),
        }.get(action)
        if key is not None:
            if key in self.seen:
                return
            self.seen.add(key)
        payload = {
            "message": text,
            "category": (category.__module__, category.__qualname__),
            "filename": filename,
            "lineno": lineno,
            "module": module,
            "filters_changed": mutated,
        }
        self.add(WARNING, payload)

    # ------------------------------------------------------------------ logging

    def log(self, record: logging.LogRecord) -> None:
        """A record that passed its logger's level and filters: send it as a dict."""
        self.add(LOG, record_dict(record))


def record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """``record`` as plain data: message formatted, no args, traceback as text."""
    d = dict(record.__dict__)
    d["msg"] = record.getMessage()
    d["args"] = None
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        d["exc_text"] = record.exc_text
    d["exc_info"] = None
    for name, value in d.items():  # extra= values that may not travel
        if name not in _RECORD_FIELDS and not isinstance(
            value, (str, int, float, bool, type(None))
        ):
            d[name] = repr(value)
    return d


_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def begin(state: Any, settings: RichSettings | None) -> RichCapture | None:
    """Start capturing for the batch of ``state`` (nothing without settings: in-kernel runs)."""
    if settings is None:
        return None
    with _lock:
        if not _Process.captures:
            _install(settings)
        capture = RichCapture(state, settings)
        _Process.captures.append(capture)
    _local.capture = capture
    _route_display()
    if settings.figures_inline:
        _draw_inline()
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and _is_inline(pyplot):
        capture.inline = True
        _import_inline()
        mark, figs = state.mark, pyplot._pylab_helpers.Gcf.figs

        def mark_and_flush(now: float) -> None:
            if figs and state.result.marks:  # figures the last iteration left open
                capture.flush_figures()
            mark(now)

        state.mark = mark_and_flush
    return capture


def end(capture: RichCapture | None) -> None:
    """Stop capturing: show the last iteration's open figures, restore what was replaced."""
    if capture is None:
        return
    try:
        capture.flush_figures()
    except Exception:  # a figure that fails to render: shown as the kernel shows it, on stderr
        import traceback

        sys.stderr.write(traceback.format_exc())
    finally:
        _local.capture = None
        with _lock:
            _Process.captures.remove(capture)
            if not _Process.captures:
                _uninstall()


def _install(settings: RichSettings) -> None:
    saved = _Process.saved
    # warnings: the kernel's filters; those that show once per location show every
    # time here, and the capture sends one per location (the kernel's registries dedupe)
    saved["filters"], saved["defaultaction"] = warnings.filters, warnings.defaultaction
    saved["showwarning"] = warnings.showwarning
    warnings.filters = [
        (_always(action), msg, cat, mod, ln)
        for action, msg, ref, mod, ln in settings.warning_filters
        if (cat := _category(ref)) is not None
    ]
    warnings.defaultaction = _always(settings.warning_default)
    warnings._filters_mutated()
    warnings.showwarning = _showwarning
    warnings._filters_mutated = _count_mutation
    # logging: the kernel's levels; records that pass go to the capture, not to handlers
    manager = logging.Logger.manager
    saved["disable"] = manager.disable
    saved["levels"] = {name: _logger(name).level for name in settings.log_levels}
    for name, level in settings.log_levels.items():
        _logger(name).setLevel(level)
    logging.disable(settings.log_disable)
    saved["callHandlers"] = logging.Logger.__dict__["callHandlers"]
    logging.Logger.callHandlers = _call_handlers


def _uninstall() -> None:
    saved = _Process.saved
    warnings._filters_mutated = _filters_mutated
    warnings.filters, warnings.defaultaction = saved["filters"], saved["defaultaction"]
    warnings._filters_mutated()
    warnings.showwarning = saved["showwarning"]
    logging.Logger.callHandlers = saved["callHandlers"]
    for name, level in saved["levels"].items():
        _logger(name).setLevel(level)
    logging.disable(saved["disable"])
    saved.clear()


_filters_mutated = warnings._filters_mutated


def _count_mutation() -> None:
    # warnings.py calls its module's _filters_mutated on every change of the filters
    _Process.mutations += 1
    _filters_mutated()


def _always(action: str) -> str:
    return "always" if action in ("default", "module", "once") else action


def _logger(name: str) -> logging.Logger:
    return logging.getLogger(name or None)


def _showwarning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    capture = _active()
    if capture is None:
        _Process.saved.get("showwarning", warnings._showwarning_orig)(
            message, category, filename, lineno, file, line
        )
        return
    capture.warning(message, category, filename, lineno)


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    capture = _active()
    if capture is None:
        _Process.saved["callHandlers"](self, record)
        return
    capture.log(record)


def _warning_module(filename: str) -> str | None:
    """The module of the code that warned: the innermost frame of ``filename``'s globals."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return frame.f_globals.get("__name__")
        frame = frame.f_back
    return None


def _action(settings: RichSettings, text: str, category: type, module: Any, lineno: int) -> str:
    """The action of the kernel's first filter that matches (as ``warnings`` chooses it)."""
    for action, msg, ref, mod, ln in settings.warning_filters:
        cat = _category(ref)
        if (
            cat is not None
            and _matches(msg, text)
            and issubclass(category, cat)
            and _matches(mod, module or "")
            and (ln == 0 or lineno == ln)
        ):
            return action
    return settings.warning_default


def _matches(pattern: Any, text: str) -> bool:
    """A filter's message or module against ``text``, as ``warnings`` checks it: None
    matches all, a plain string (Python's own default filters) only itself, else a regex."""
    if pattern is None:
        return True
    if isinstance(pattern, str):
        return pattern == text
    return bool(pattern.match(text))


# ---------------------------------------------------------------------- display


def _route_display() -> None:
    """Route IPython's display functions here, once they are imported (by the user's code)."""
    module = sys.modules.get(_DISPLAY_MODULE)
    if module is None:
        _watch_import()
        return
    if _Process.original:
        return
    with _lock:
        if _Process.original:
            return
        for name, router in (("display", _display), ("publish_display_data", _publish)):
            fn = getattr(module, name)
            copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__)
            copy.__kwdefaults__ = fn.__kwdefaults__
            _Process.original[name] = copy
            module.__dict__[f"_parmagic_{name}"] = router
            code = compile(
                f"def {name}(*a, **k):\n    return _parmagic_{name}(*a, **k)\n", "", "exec"
            )
            fn.__code__ = next(c for c in code.co_consts if isinstance(c, types.CodeType))


def _display(
    *objs: Any,
    include: Any = None,
    exclude: Any = None,
    metadata: dict | None = None,
    transient: dict | None = None,
    display_id: Any = None,
    raw: bool = False,
    clear: bool = False,
    **kwargs: Any,
) -> Any:
    capture = _active()
    if capture is None:
        return _Process.original["display"](
            *objs,
            include=include,
            exclude=exclude,
            metadata=metadata,
            transient=transient,
            display_id=display_id,
            raw=raw,
            clear=clear,
            **kwargs,
        )
    from IPython.core.display_functions import DisplayHandle, _merge, _new_id

    transient = dict(transient or {})
    if display_id:
        if display_id is True:
            display_id = _new_id()
        transient["display_id"] = display_id
    if kwargs.get("update") and "display_id" not in transient:
        raise TypeError("display_id required for update_display")
    if not objs and display_id:
        objs, raw = ({},), True
    for obj in objs:
        if raw:
            capture.display(obj, metadata, transient=transient, **kwargs)
            continue
        data, md = _formatter(capture.settings).format(obj, include=include, exclude=exclude)
        if not data:  # _ipython_display_ took over
            continue
        if metadata:
            _merge(md, metadata)
        capture.display(data, md, transient=transient, **kwargs)
    return DisplayHandle(display_id) if display_id else None


def _publish(data: dict, metadata: dict | None = None, source: Any = None, **kwargs: Any) -> None:
    capture = _active()
    if capture is None:
        return _Process.original["publish_display_data"](data, metadata, source, **kwargs)
    capture.display(data, metadata, **kwargs)
    return None


def _formatter(settings: RichSettings) -> Any:
    """IPython's formatters (no shell needed), figures rendered as the kernel's inline backend."""
    if _Process.formatter is None:
        from IPython.core.formatters import DisplayFormatter

        _Process.formatter = DisplayFormatter()
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and not getattr(_Process.formatter, "_parmagic_figures", False):
        from IPython.core.pylabtools import select_figure_formats

        holder = types.SimpleNamespace(display_formatter=_Process.formatter)
        select_figure_formats(holder, settings.figure_formats, **settings.print_figure_kwargs)
        _Process.formatter._parmagic_figures = True
    return _Process.formatter


def _is_inline(pyplot: Any) -> bool:
    import matplotlib

    return matplotlib.rcParams._get_backend_or_none() in INLINE_NAMES


def _draw_inline() -> None:
    """Make pyplot use the inline backend, as in the kernel (once per process)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        os.environ["MPLBACKEND"] = INLINE_BACKEND  # for a pyplot imported by an iteration
    elif not _is_inline(pyplot):
        pyplot.switch_backend(INLINE_BACKEND)


def _import_inline() -> None:
    # the inline backend's show() is what plt.show() calls; it imports IPython.display
    import matplotlib_inline.backend_inline  # noqa: F401

    _route_display()


class _DisplayImportWatch:
    """A meta-path finder that routes ``display`` as soon as an iteration imports IPython's."""

    installed = False

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _DISPLAY_MODULE:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_route(module: types.ModuleType) -> None:
            exec_module(module)
            sys.modules[name] = module
            _route_display()

        spec.loader.exec_module = exec_then_route
        return spec


def _watch_import() -> None:
    if not _DisplayImportWatch.installed:
        _DisplayImportWatch.installed = True
        sys.meta_path.insert(0, _DisplayImportWatch())
