"""The kernel's side of rich output: its settings for the workers, and replaying what they sent.

Workers capture displays, warnings and log records (``parmagic.worker.rich``);
at commit the engine hands each to :func:`replay`, in iteration order among the
prints: a display goes to the listener's ``on_display``, a warning through
``warnings.warn_explicit`` against the kernel's own registries (its filters and
once-per-location rule decide, as for the plain cell), a log record through the
kernel's logger of that name and its handlers.

In-kernel backends (serial, threads) share the kernel's shell, filters and
handlers; :func:`routed_in_kernel` only captures their displays and log records
per thread so that they commit in iteration order like their prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from .listener import PlainListener
from .worker.rich import DISPLAY, INLINE_NAMES, LOG, STREAMS, WARNING, CategoryRef, RichSettings

__all__ = ["STREAMS", "replay", "routed_in_kernel", "settings"]

#: Warning registries of modules the kernel has not imported (only workers did).
_registries: dict[str, dict] = {}


def settings() -> RichSettings:
    """The kernel's warning filters, logging levels and inline-figure settings, now."""
    manager = logging.Logger.manager
    levels = {"": logging.getLogger().level}
    for name, logger in list(manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    found = RichSettings(
        warning_filters=[
            (a, m, CategoryRef.of(c), mod, ln) for a, m, c, mod, ln in warnings.filters
        ],
        warning_default=warnings.defaultaction,
        log_levels=levels,
        log_disable=manager.disable,
    )
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    if inline is not None:  # only when the kernel has it: never import IPython here
        config = inline.InlineBackend.instance()
        found.figure_formats = sorted(config.figure_formats)
        found.print_figure_kwargs = dict(config.print_figure_kwargs)
    matplotlib = sys.modules.get("matplotlib")
    backend = matplotlib.rcParams._get_backend_or_none() if matplotlib is not None else None
    found.figures_inline = (backend or os.environ.get("MPLBACKEND")) in INLINE_NAMES
    return found


def replay(listener: Any, index: int, stream: str, payload: Any, namespace: dict) -> None:
    """Show one captured display, warning or log record of iteration ``index`` in the kernel."""
    if stream == DISPLAY:
        # a listener without on_display (one written before it existed) shows it plainly
        on_display = getattr(listener, "on_display", None) or PlainListener().on_display
        on_display(
            index,
            payload["data"],
            payload.get("metadata") or {},
            transient=payload.get("transient"),
            update=payload.get("update", False),
        )
    elif stream == WARNING:
        replay_warning(payload, namespace)
    elif stream == LOG:
        if isinstance(payload, logging.LogRecord):  # in-kernel: the record itself
            record = payload
        else:
            record = logging.makeLogRecord(payload)
        name = record.name
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        logger.handle(record)


def replay_warning(w: dict[str, Any], namespace: dict) -> None:
    """Warn in the kernel as the worker's code did, against the registry its module has here.

    Cell code (and functions defined in the notebook) warn from ``__main__``: the
    cell's namespace holds their registry, as it does for the plain cell.
    """
    module = w["module"]
    if module is not None and module == namespace.get("__name__", "__main__"):
        module_globals = namespace
    elif module in sys.modules:
        module_globals = vars(sys.modules[module])
    else:
        module_globals = None
    if module_globals is not None:
        registry = module_globals.setdefault("__warningregistry__", {})
    else:
        registry = _registries.setdefault(module or w["filename"], {})
    if w.get("filters_changed"):  # as the iteration's own change did: registries start again
        warnings._filters_mutated()
    warnings.warn_explicit(
        w["message"],
        _category(*w["category"]),
        w["filename"],
        w["lineno"],
        module=module,
        registry=registry,
        module_globals=module_globals,
    )


def _category(module: str, qualname: str) -> type[Warning]:
    """The kernel's warning class of that name (a notebook's own class is the kernel's)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, Warning):
        return obj
    return type(qualname.rsplit(".", 1)[-1], (UserWarning,), {"__module__": module})


@contextlib.contextmanager
def routed_in_kernel(in_kernel: bool) -> Iterator[None]:
    """For in-kernel backends: displays and log records of batches captured per thread.

    The kernel's display publisher and ``Logger.callHandlers`` are wrapped for the run:
    a call from a thread running a batch goes to that batch's outputs (committed in
    order); any other passes through.
    """
    if not in_kernel:
        yield
        return
    from .worker.batch import _thread_capture

    def current() -> Any:
        return getattr(_thread_capture, "state", None)

    original_call = logging.Logger.__dict__["callHandlers"]

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        state = current()
        if state is None:
            return original_call(self, record)
        state.result.outputs.append((state.current, LOG, record, len(state.result.effects)))
        return None

    pub = _display_publisher()
    publish = pub.publish if pub is not None else None

    def routed_publish(data: dict, metadata: dict | None = None, *args: Any, **kwargs: Any) -> Any:
        state = current()
        if state is None:
            return publish(data, metadata, *args, **kwargs)
        payload = {"data": data, "metadata": metadata or {}}
        if kwargs.get("transient"):
            payload["transient"] = kwargs["transient"]
        if kwargs.get("update"):
            payload["update"] = True
        state.result.outputs.append((state.current, DISPLAY, payload, len(state.result.effects)))
        return None

    patched_before = pub is not None and "publish" in vars(pub)
    logging.Logger.callHandlers = call_handlers
    if pub is not None:
        pub.publish = routed_publish
    try:
        yield
    finally:
        logging.Logger.callHandlers = original_call
        if pub is not None:
            if patched_before:
                pub.publish = publish
            else:
                del pub.publish


def _display_publisher() -> Any:
    """The running shell's display publisher, or None (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return getattr(shell, "display_pub", None)
