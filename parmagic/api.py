"""The Python API that the magics are thin layers over.

``run_cell`` is the engine under ``%%parallel``; ``pmap`` is ``%pmap``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from typing import Any

from . import engine, pool
from .listener import PlainListener, RunListener
from .options import Options, defaults, takes_options
from .rewrite import CellPlan, plan_cell


def listener_factory(options: Options, label: str) -> RunListener:
    """The display for one run: live widget in a kernel, text in a terminal (parmagic.display)."""
    try:
        from .display import make_listener
    except ImportError:  # display layer not available: output only
        return PlainListener()
    return make_listener(progress=options.progress, label=label, summary=options.summary)


@takes_options
def resolve_options(**options: Any) -> Options:
    """The session defaults with ``options`` applied (validated; unknown names refused).

    An option given is the value, None included (``timeout=None``: no limit even where the
    session default has one); a bad value raises OptionError before anything runs.
    """
    return defaults().with_changes(**options)


@takes_options
def run_cell(
    source: str,
    namespace: dict[str, Any] | None = None,
    *,
    filename: str = "<parallel-cell>",
    line_offset: int = 0,
    display_source: str | None = None,
    **options: Any,
) -> Any:
    """Run a cell's source with its top-level loops in parallel; return its last expression.

    ``namespace`` plays the notebook's globals (a new dict if omitted). The whole
    cell is analysed first: a refused loop raises ``RefusedLoopError`` and
    nothing runs. ``line_offset`` shifts line numbers (1 for a ``%%parallel`` line).
    """
    __tracebackhide__ = True
    opts = resolve_options(**options)
    namespace = {} if namespace is None else namespace
    plan = plan_cell(source, filename, line_offset, module_names(namespace))
    if not plan.loops:
        print(
            "parmagic: no top-level loop (for loop or comprehension) in this cell; ran it as a plain cell",
            file=sys.stderr,
        )
    full_source = display_source if display_source is not None else "\n" * line_offset + source
    if plan.loops:
        pool.get_backend(opts)  # a missing backend (no dask Client) fails before the cell runs
    cell = engine.CellRun(
        namespace, opts, pool.get_backend, listener_factory, filename, full_source
    )
    if opts.compare or opts.sweep:
        from .compare import run_plan_compared

        return run_plan_compared(plan, cell)
    return engine.run_plan(plan, cell)


def module_names(namespace: dict[str, Any]) -> frozenset[str]:
    """Names in ``namespace`` bound to modules: calls on them run in the worker."""
    return frozenset(k for k, v in namespace.items() if isinstance(v, types.ModuleType))


@takes_options
def pmap(func: Any, *iterables: Any, **options: Any) -> list:
    """Parallel ``list(map(func, *iterables))`` on the kernel's pool, in order.

    With several iterables it stops at the shortest, as ``map`` does. For a script,
    ``progress=False, summary=False`` makes it silent.
    """
    __tracebackhide__ = True
    if not iterables:
        raise TypeError("pmap() needs at least one iterable, as map() does")
    opts = resolve_options(**options)
    if len(iterables) == 1:
        namespace = {"func": func, "items": iterables[0]}
        source = "[func(item) for item in items]"
    else:
        namespace = {"func": func, "items": _Zipped(iterables)}
        source = "[func(*item) for item in items]"
    step = plan_cell(source, "<pmap>").loops[0]  # a plan is shared: named in a copy
    step = dataclasses.replace(step, source_line=f"pmap({getattr(func, '__name__', 'func')})")
    plan = CellPlan(steps=[step])
    cell = engine.CellRun(namespace, opts, pool.get_backend, listener_factory, "<pmap>", source)
    if opts.compare or opts.sweep:  # as run_cell does: the timing runs, then the real one
        from .compare import run_plan_compared

        return run_plan_compared(plan, cell)
    return engine.run_plan(plan, cell)


class _Zipped:
    """``zip(*iterables)`` that keeps a length when every iterable has one (for progress)."""

    def __init__(self, iterables: tuple):
        self.iterables = iterables

    def __iter__(self) -> Any:
        return zip(*self.iterables, strict=False)

    def __len__(self) -> int:
        return min(len(it) for it in self.iterables)


def status() -> dict[str, Any]:
    """Pool facts (backend, workers, pids, memory) plus tasks run by this kernel."""
    info = pool.status()
    info["iterations_run"] = engine.iterations_run()
    info["defaults"] = defaults()
    return info


def cache_folder(folder: str | None = None) -> str:
    """The folder ``%parmagic cache`` looks at: ``folder``, the session's ``--cache`` default,
    or the one beside the notebook."""
    from . import cache

    if folder is not None:
        return cache.resolve_folder(folder)
    return cache.resolve_folder(defaults().cache) or cache.default_folder()


def cache_info(folder: str | None = None) -> str:
    """The loops kept in a ``--cache`` folder: key, first line, entries and size, as text."""
    from . import cache

    return cache.describe(cache_folder(folder))


def clear_cache(folder: str | None = None, loop: str = "") -> int:
    """Remove the entries of a ``--cache`` folder (of the loops whose key starts with
    ``loop``); returns how many were removed."""
    from . import cache

    where = cache_folder(folder)
    return cache.Store(where).clear(loop) if os.path.isdir(where) else 0


def shutdown() -> None:
    """Shut the kernel's pools down now; the next run starts fresh ones."""
    pool.shutdown()
