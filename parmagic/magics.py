"""The magics: ``%%parallel``, ``%pmap`` and ``%parmagic``, thin layers over the API.

Their flags come from the one option table (:data:`parmagic.options.TABLE`); each magic
parses its line with :func:`parse_line` (which also answers ``-h``), turns bad values into
one-line ``UsageError``s, and calls :mod:`parmagic.api`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import shlex
import sys
import threading
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, needs_local_scope
from IPython.core.magic_arguments import MagicHelpFormatter, argument, kwds, magic_arguments
from IPython.utils.process import arg_split

from . import api, leftovers, pool
from .options import (
    BY_NAME,
    TABLE,
    Option,
    OptionError,
    defaults,
    format_options,
    set_defaults,
    spell,
)
from .tracebacks import show_from_cell


class _HelpFormatter(MagicHelpFormatter):
    """IPython's formatter without its reST markup (a ``::`` before the usage line, which
    ``%%parallel?`` showed, and ``<>`` around metavars)."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
        argparse.RawDescriptionHelpFormatter.add_usage(self, usage, actions, groups, "Usage: ")

    def _format_action_invocation(self, action: argparse.Action) -> str:
        # argparse's own "--cache [DIR]": IPython wraps it in <> only to keep reST valid
        return argparse.RawDescriptionHelpFormatter._format_action_invocation(self, action)


def _usage(*forms: str) -> kwds:
    # argparse %-formats the usage, so a magic's own % signs are doubled
    return kwds(
        usage="\n       ".join(f.replace("%", "%%") for f in forms), formatter_class=_HelpFormatter
    )


class _Toggle(argparse.Action):
    """``--progress`` sets True, ``--no-progress`` False; absent, nothing (the default applies).

    argparse.BooleanOptionalAction does the same, but some Python versions append a
    "(default: ...)" to its help that would show argparse.SUPPRESS.
    """

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, not option_string.startswith("--no-"))


def _arguments(option: Option) -> list[argument]:
    """The argparse declarations of one table entry; unset flags leave no attribute."""
    text = spell(option.help, magic=True)
    if option.alias_of is None:
        text += f"; default: {option.show(option.default)}"
    common = {"dest": option.name, "default": argparse.SUPPRESS, "help": text}
    off = "--no-" + option.flag[2:]
    if option.type is bool:
        return [argument(option.flag, off, action=_Toggle, nargs=0, **common)]
    flags = [option.short, option.flag] if option.short else [option.flag]
    if option.const is not None:
        found = [argument(*flags, nargs="?", const=option.const, metavar=option.metavar, **common)]
    else:
        found = [argument(*flags, metavar=option.metavar, **common)]
    if option.negatable:
        common["help"] = f"turn {option.flag} off"
        found.append(argument(off, action="store_const", const=option.off, **common))
    return found


_HELP = argument("-h", "--help", action="store_true", default=False, help="show this help")
_DECLARATIONS = [decl for option in TABLE for decl in _arguments(option)] + [_HELP]

#: Flags that take a value (as their long spelling), so that "--sweep -1,2" reaches the
#: option's check as a value instead of argparse reading "-1,2" as an unknown flag.
_VALUE_FLAGS = {
    flag: option.flag
    for option in TABLE
    if option.type is not bool and option.const is None
    for flag in filter(None, (option.short, option.flag))
}
_FLAGS = {s for decl in _DECLARATIONS for s in decl.args} | {"--"}
#: Flags whose value is optional, and what they mean alone (--cache: auto).
_CONST_FLAGS = {option.flag: option.const for option in TABLE if option.const is not None}


def _option_arguments(func: Any) -> Any:
    """The table's flags and ``-h``, on ``%%parallel``, ``%pmap`` and ``%parmagic``."""
    for declaration in reversed(_DECLARATIONS):  # IPython lists them in source order
        func = declaration(func)
    return func


def parse_line(magic: Any, line: str, *, expression: bool = False) -> Any:
    """``line`` parsed by ``magic``'s IPython parser; None when ``-h`` printed the help.

    With ``expression`` (``%pmap``), options come first and ``args.expression`` is the rest
    of the line, verbatim: IPython's partial parsing (``parse_known_args``) finds where the
    options end, and ``-`` or ``--`` later in the expression are the expression's.
    """
    try:
        tokens = arg_split(line, strict=not expression)
    except ValueError as exc:
        raise UsageError(f"cannot read the options: {exc}") from None
    argv, spans = _glue_values(tokens, expression)
    if expression:
        args, unknown = magic.parser.parse_known_args(argv)
        if unknown:
            raise UsageError(
                f"unrecognized option {unknown[0]!r}; options go before the expression "
                "(start an expression that begins with '-' after '--')"
            )
        args.expression = _rest_after(line, sum(spans[: len(argv) - len(args.expression)]))
    else:
        args = magic.parser.parse_args(argv)
    if args.help:
        print(magic.__doc__)
        return None
    return args


def _glue_values(tokens: list[str], expression: bool) -> tuple[list[str], list[int]]:
    """``["--sweep", "-1,2"]`` -> ``["--sweep=-1,2"]``; also how many tokens each one took.

    Before an expression, a flag whose value is optional (``--cache``) takes none: its value
    then needs ``=`` (``--cache=DIR``), so it cannot swallow the expression's first word.
    """
    argv: list[str] = []
    spans: list[int] = []
    i = 0
    while i < len(tokens):
        token, following = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in _VALUE_FLAGS and following.startswith("-") and following not in _FLAGS:
            argv.append(f"{_VALUE_FLAGS[token]}={following}")
            spans.append(2)
        else:
            argv.append(
                f"{token}={_CONST_FLAGS[token]}" if expression and token in _CONST_FLAGS else token
            )
            spans.append(1)
        i += spans[-1]
    return argv, spans


def _rest_after(line: str, n_tokens: int) -> str:
    """``line`` after its first ``n_tokens`` tokens (as ``arg_split`` splits), verbatim."""
    lexer = shlex.shlex(line, posix=False)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        for _ in range(n_tokens):
            lexer.get_token()
    except ValueError:  # an open quote among the options: nothing is left for an expression
        return ""
    rest = line[lexer.instream.tell() :].strip()
    if rest == "--" or rest.startswith("-- "):
        rest = rest[2:].strip()  # "--" ends the options: an expression may then begin with -
    return rest


def options_from_args(args: Any) -> dict[str, Any]:
    """Parsed magic arguments -> API keywords (only the options given), validated now.

    A bad value is a one-line ``UsageError`` naming the flag, raised before anything runs
    or changes.
    """
    given = {name: value for name, value in vars(args).items() if name in BY_NAME}
    try:
        options = {
            name: BY_NAME[name].from_text(value) if isinstance(value, str) else value
            for name, value in given.items()
        }
        api.resolve_options(**options)
    except OptionError as exc:
        raise UsageError(exc.for_magic()) from None
    return options


@magics_class
class ParallelMagics(Magics):
    """``%%parallel``, ``%pmap`` and ``%parmagic``."""

    @magic_arguments()
    @_usage("%%parallel [options]")
    @_option_arguments
    @cell_magic
    def parallel(self, line: str, cell: str) -> Any:
        """Run the cell with its top-level for loops and comprehensions in parallel.

        The cell ends as it would without the magic: statements outside the loops run
        in the kernel, in order; effects such as results.append(x), d[k] = v and
        total += x are replayed in iteration order; the loop variable and body locals
        end as the serial loop leaves them. The options below apply to this cell;
        %parmagic config sets them for later cells.
        """
        __tracebackhide__ = True
        _refuse_inside_a_worker("%%parallel")
        args = parse_line(self.parallel, line)
        if args is None:
            return None
        options = options_from_args(args)
        full = f"%%parallel {line}\n{cell}"
        source = self.shell.transform_cell(cell)
        filename = self.shell.compile.cache(full, cell_number(self.shell))
        if not _parses(self.shell, "\n" + source, filename):
            return None
        with shown_from_cell(filename):
            return api.run_cell(
                source,
                self.shell.user_ns,
                filename=filename,
                line_offset=1,
                display_source=full,
                **options,
            )

    @magic_arguments()
    @_usage("%pmap [options] f(x) for x in xs", "%pmap [options] func, xs[, ys ...]")
    @_option_arguments
    @argument(
        "expression",
        nargs=argparse.REMAINDER,
        help="f(x) for x in xs, or func, iterable[, iterable ...]",
    )
    @needs_local_scope
    @line_magic
    def pmap(self, line: str, local_ns: dict | None = None) -> Any:
        """Parallel map on one line; returns a list, in order.

        %pmap f(x) for x in xs runs the comprehension's iterations in parallel;
        %pmap func, xs, ys is list(map(func, xs, ys)). Options come first; put -- before
        an expression that begins with a minus sign. Here a cache folder is given as
        --cache=DIR (--cache alone: the folder beside the notebook).
        """
        __tracebackhide__ = True
        _refuse_inside_a_worker("%pmap")
        # inside a function, its local names are the ones the expression means
        names = self.shell.user_ns
        if local_ns is not None and local_ns is not names:
            names = {**names, **local_ns}
        args = parse_line(self.pmap, line, expression=True)
        if args is None:
            return None
        options = options_from_args(args)
        expression = args.expression
        if not expression:
            raise UsageError("%pmap needs an expression: %pmap f(x) for x in xs, or %pmap func, xs")
        if _is_comprehension(expression):
            source = f"[{expression}]"
            filename = self.shell.compile.cache(source, cell_number(self.shell))
            with shown_from_cell(filename):
                return api.run_cell(source, names, filename=filename, **options)
        func, iterables = self._func_and_iterables(expression, names)
        return api.pmap(func, *iterables, **options)

    def _func_and_iterables(self, expression: str, names: dict) -> tuple[Any, tuple]:
        try:
            values = eval(compile(f"({expression},)", "<pmap>", "eval"), names)
        except SyntaxError:
            raise UsageError(
                f"%pmap cannot read {expression!r}: write f(x) for x in xs, or func, xs"
            ) from None
        if len(values) < 2 or not callable(values[0]):
            raise UsageError("%pmap func, iterable: give a callable and at least one iterable")
        return values[0], values[1:]

    @magic_arguments()
    @_usage(
        "%parmagic [status]",
        "%parmagic config [options]",
        "%parmagic cache [clear [KEY]] [--cache DIR]",
        "%parmagic shutdown",
    )
    @_option_arguments
    @argument(
        "command", nargs="?", default="status", help="status (default), config, cache or shutdown"
    )
    @argument("words", nargs="*", help="cache: clear, then a loop's key (or its start)")
    @line_magic
    def parmagic(self, line: str) -> Any:
        """The kernel's pool, the session defaults and the --cache folder.

        %parmagic status shows the backend, workers, their pids and memory, and how many
        iterations ran. %parmagic config lists the defaults later cells get, and with
        options changes them (all or nothing: a bad value changes none).
        %parmagic cache lists the loops kept in the cache folder (the --cache default, or
        the folder beside the notebook; --cache DIR for another) with their entries and
        size; %parmagic cache clear removes them (clear KEY: one loop's).
        %parmagic shutdown stops the pools; the next parallel cell starts fresh ones.
        """
        args = parse_line(self.parmagic, line)
        if args is None:
            return None
        options = options_from_args(args)
        if args.command == "cache":
            return self._cache(args.words, options)
        if args.words:
            raise UsageError(f"%parmagic {args.command}: unexpected {' '.join(args.words)!r}")
        if options and args.command != "config":
            raise UsageError("options go with %parmagic config, e.g. %parmagic config -n 4")
        if args.command == "status":
            print(format_status(api.status()))
        elif args.command == "config":
            new = set_defaults(**options) if options else defaults()
            print(f"parmagic defaults for later cells:\n{format_options(new)}")
        elif args.command == "shutdown":
            api.shutdown()
            print("parmagic: pools shut down; the next parallel cell starts a fresh one")
        else:
            raise UsageError(
                f"%parmagic {args.command}: unknown command; use status, config, cache or shutdown"
            )
        return None

    def _cache(self, words: list[str], options: dict[str, Any]) -> None:
        """``%parmagic cache [clear [KEY]]``: list or clear the --cache folder's entries."""
        if set(options) - {"cache"}:
            raise UsageError("%parmagic cache takes one option: --cache DIR (the folder)")
        folder = options.get("cache")
        if not words:
            print(api.cache_info(folder))
        elif words[0] == "clear" and len(words) <= 2:
            count = api.clear_cache(folder, words[1] if len(words) == 2 else "")
            print(f"parmagic: cleared {count} entries from {api.cache_folder(folder)}")
        else:
            raise UsageError("%parmagic cache [clear [KEY]]: list the cache, or clear it")


def _refuse_inside_a_worker(magic: str) -> None:
    """A magic called from an iteration on ``--backend threads`` (a parmagic pool thread)."""
    if threading.current_thread().name.startswith("parmagic"):
        raise UsageError(
            f"{magic} cannot run inside an iteration of a parallel loop: a worker cannot start "
            "a parallel run of its own. Call a plain version there (a list comprehension "
            f"instead of %pmap), or make the outer loop a plain one and keep {magic} inside."
        )


def cell_number(shell: Any) -> int:
    """The ``In[N]`` number of the cell running now (what IPython's tracebacks call it).

    IPython counts a cell before it runs it (``execution_count`` is already the next
    one), so the number is read where IPython wrote it: the running cell's code file.
    """
    numbers = getattr(shell.compile, "_filename_map", {})
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in numbers:
            return numbers[frame.f_code.co_filename]
        frame = frame.f_back
    return shell.execution_count


def _parses(shell: Any, source: str, filename: str) -> bool:
    """Parse the cell first: a syntax error is shown as IPython shows a plain cell's.

    Raised out of the magic, IPython would list the magic's frames above it; shown here
    (``showsyntaxerror``, no frames) and noted on the cell's result, the cell still
    ends in error.
    """
    try:
        ast.parse(source, filename)
    except SyntaxError as exc:
        result = getattr(shell.displayhook, "exec_result", None)
        if result is None:  # not inside a cell IPython runs: raise it as it is
            raise
        shell.showsyntaxerror()
        result.error_in_exec = exc.with_traceback(None)
        return False
    return True


@contextlib.contextmanager
def shown_from_cell(filename: str) -> Iterator[None]:
    """An error out of the cell is shown from the cell's own frame on (no magic frames)."""
    __tracebackhide__ = True
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        show_from_cell(exc, filename)
        raise


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
    if info.get("thread_budget"):
        lines.append(f"thread budget: {info['thread_budget']}")
    if info["thread_pool"]:
        lines.append(f"thread pool: {info['thread_pool']} threads")
    for key, facts in info["other"].items():
        pids = ", ".join(map(str, facts.get("pids", []))) or "-"
        lines.append(f"{key} pool: {facts.get('workers', '?')} workers  pids: {pids}")
    return "\n".join(lines)


def load(ipython: Any) -> None:
    """Register the magics, sweep what dead kernels left in /dev/shm, warm the default pool in
    the background, import the display now."""
    ipython.register_magics(ParallelMagics)
    leftovers.sweep()
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
