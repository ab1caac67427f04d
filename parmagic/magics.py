"""The magics: ``%%parallel``, ``%pmap`` and ``%parmagic``, thin layers over the API.

Each magic parses its options (shared declarations below; ``-h`` prints the
help), turns bad values into one-line ``UsageError``s, and calls
:mod:`parmagic.api`.
"""

from __future__ import annotations

import ast
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import api, pool
from .options import OptionError, defaults, set_defaults


def _shared_options(func: Any) -> Any:
    """The options of ``%%parallel``, ``%pmap`` and ``%parmagic config``, declared once."""
    decorators = [
        argument("-h", "--help", action="store_true", help="show this help and do nothing"),
        argument(
            "--sweep",
            help="also time the loop at each worker count, e.g. 1,2,4, and plot the speedup",
        ),
        argument(
            "--compare-sample",
            type=int,
            help="with --compare: time only this many iterations serially and extrapolate",
        ),
        argument(
            "--compare",
            action="store_true",
            default=None,
            help="also time the loop serially and show both",
        ),
        argument("--no-progress", action="store_true", default=None, help="no live progress bar"),
        argument("--chunksize", help="iterations per task: a positive integer or 'auto' (default)"),
        argument(
            "--on-error",
            help="raise (default): stop at the first failing iteration; collect: run all, then raise one error listing the failures",
        ),
        argument("--timeout", type=float, help="seconds an iteration may run before it fails"),
        argument(
            "--scheduler",
            help="dask scheduler address, e.g. tcp://127.0.0.1:8786 (with --backend dask)",
        ),
        argument("--prefer", help="joblib alias: threads or processes"),
        argument("--backend", help="loky (default), threads, multiprocessing, serial or dask"),
        argument(
            "-n",
            "--n-jobs",
            type=int,
            help="workers: -1 all cores (default), -2 all but one, 1 runs in the kernel",
        ),
    ]
    for decorate in decorators:
        func = decorate(func)
    return func


def options_from_args(args: Any) -> dict[str, Any]:
    """Parsed magic arguments -> keyword options for the API (unset ones left out)."""
    options = {
        "n_jobs": args.n_jobs,
        "backend": args.backend,
        "prefer": args.prefer,
        "scheduler": args.scheduler,
        "timeout": args.timeout,
        "on_error": args.on_error,
        "chunksize": _chunksize(args.chunksize),
        "compare": args.compare,
        "compare_sample": args.compare_sample,
        "sweep": args.sweep,
    }
    if args.no_progress:
        options["progress"] = False
    if args.compare_sample is not None:
        options["compare"] = True
    options = {k: v for k, v in options.items() if v is not None}
    try:
        api.resolve_options(**options)  # validate now: a bad value changes nothing
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    return options


def _chunksize(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"--chunksize must be a positive integer or 'auto', not {value!r}"
        ) from None


#: Options of %pmap that take a value (the rest are flags); the expression follows them.
_VALUE_OPTIONS = {
    "-n",
    "--n-jobs",
    "--backend",
    "--prefer",
    "--scheduler",
    "--timeout",
    "--on-error",
    "--chunksize",
    "--sweep",
    "--compare-sample",
}


def split_options(line: str) -> tuple[str, str]:
    """``"-n 2 --no-progress f(x) for x in xs"`` -> ``("-n 2 --no-progress", "f(x) for x in xs")``."""
    rest = line.lstrip()
    taken = []
    while rest.startswith("-") and len(rest) > 1 and (rest[1].isalpha() or rest[1] == "-"):
        token, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        taken.append(token)
        if "=" not in token and token in _VALUE_OPTIONS:
            value, _, rest = rest.partition(" ")
            rest = rest.lstrip()
            taken.append(value)
    return " ".join(taken), rest


@magics_class
class ParallelMagics(Magics):
    """``%%parallel``, ``%pmap`` and ``%parmagic``."""

    @magic_arguments()
    @_shared_options
    @cell_magic
    def parallel(self, line: str, cell: str) -> Any:
        """Run the cell's top-level for loops and comprehensions in parallel, with the serial result.

        Statements outside the loops run in the kernel, in order; effects such as
        results.append(x), d[k] = v and total += x are replayed in iteration order;
        the loop variable and body locals end as the serial loop leaves them.
        """
        __tracebackhide__ = True
        args = parse_argstring(self.parallel, line)
        if args.help:
            print(self.parallel.__doc__)
            return None
        options = options_from_args(args)
        full = f"%%parallel {line}\n{cell}"
        source = self.shell.transform_cell(cell)
        filename = self.shell.compile.cache(full, self.shell.execution_count)
        return api.run_cell(
            source,
            self.shell.user_ns,
            filename=filename,
            line_offset=1,
            display_source=full,
            **options,
        )

    @magic_arguments()
    @_shared_options
    @argument("expression", nargs="*", help="f(x) for x in xs   or   func, iterable[, iterable...]")
    @line_magic
    def pmap(self, line: str) -> Any:
        """Parallel map on one line: ``%pmap f(x) for x in xs`` or ``%pmap func, xs[, ys]``; returns a list."""
        __tracebackhide__ = True
        option_text, expression = split_options(line)
        args = parse_argstring(self.pmap, option_text)
        if args.help:
            print(self.pmap.__doc__)
            return None
        if not expression.strip():
            raise UsageError("%pmap needs an expression: %pmap f(x) for x in xs, or %pmap func, xs")
        options = options_from_args(args)
        if _is_comprehension(expression):
            source = f"[{expression}]"
            filename = self.shell.compile.cache(source, self.shell.execution_count)
            return api.run_cell(source, self.shell.user_ns, filename=filename, **options)
        func, iterables = self._func_and_iterables(expression)
        return api.pmap(func, *iterables, **options)

    def _func_and_iterables(self, expression: str) -> tuple[Any, tuple]:
        try:
            values = eval(compile(f"({expression},)", "<pmap>", "eval"), self.shell.user_ns)
        except SyntaxError:
            raise UsageError(
                f"%pmap cannot read {expression!r}: write f(x) for x in xs, or func, xs"
            ) from None
        if len(values) < 2 or not callable(values[0]):
            raise UsageError("%pmap func, iterable: give a callable and at least one iterable")
        return values[0], values[1:]

    @magic_arguments()
    @_shared_options
    @argument("command", nargs="?", default="status", help="status (default), config or shutdown")
    @line_magic
    def parmagic(self, line: str) -> Any:
        """Pool status and settings: ``%parmagic status``, ``%parmagic config -n 4 ...``, ``%parmagic shutdown``."""
        args = parse_argstring(self.parmagic, line)
        if args.help:
            print(self.parmagic.__doc__)
            return None
        if args.command == "status":
            print(format_status(api.status()))
        elif args.command == "config":
            options = options_from_args(args)
            new = set_defaults(**options) if options else defaults()
            print(f"parmagic defaults: {new}")
        elif args.command == "shutdown":
            api.shutdown()
            print("parmagic: pools shut down; the next parallel cell starts a fresh one")
        else:
            raise UsageError(
                f"%parmagic {args.command}: unknown command; use status, config or shutdown"
            )
        return None


def _is_comprehension(expression: str) -> bool:
    try:
        tree = ast.parse(f"[{expression}]", mode="eval")
    except SyntaxError:
        return False
    return isinstance(tree.body, ast.ListComp)


def format_status(info: dict[str, Any]) -> str:
    """``%parmagic status`` as text."""
    lines = [
        f"backend: {info['defaults'].backend} (n_jobs={info['defaults'].n_jobs})",
        f"loky workers: {info['workers']}  pids: {', '.join(map(str, info['pids'])) or '-'}",
    ]
    for pid, mb in info["memory_mb"].items():
        lines.append(f"  worker {pid}: {mb} MB")
    lines.append(f"iterations run: {info['iterations_run']}")
    if info["thread_pool"]:
        lines.append(f"thread pool: {info['thread_pool']} threads")
    for key, facts in info["other"].items():
        pids = ", ".join(map(str, facts.get("pids", []))) or "-"
        lines.append(f"{key} pool: {facts.get('workers', '?')} workers  pids: {pids}")
    return "\n".join(lines)


def load(ipython: Any) -> None:
    """Register the magics, warm the default pool in the background, import the display now."""
    ipython.register_magics(ParallelMagics)
    _import_display()
    options = defaults()
    if options.backend == "loky" and options.n_workers > 1:
        pool.start_in_background(options.n_workers)
    # idle workers import what the kernel imported (parmagic.preimport): now, and after
    # each cell; registered once even if the extension is loaded again
    from . import preimport

    events = getattr(ipython, "events", None)
    if events is not None:
        hooks = events.callbacks.get("post_run_cell", [])
        if preimport.post_run_cell not in hooks:
            events.register("post_run_cell", preimport.post_run_cell)
    preimport.schedule()


def _import_display() -> None:
    """Import the display modules (and ipywidgets in a kernel) now, not in the first cell."""
    from . import display, summary  # noqa: F401

    if display.environment() == display.KERNEL and display.widgets_available():
        from . import widgets

        widgets.import_ipywidgets()


def unload(ipython: Any) -> None:
    """Shut the pools down (the magics stay registered until the kernel restarts)."""
    api.shutdown()
    sys.stdout.flush()
