"""Every option, declared once; the ``Options`` dataclass, the session defaults and ``config``.

:data:`TABLE` holds one :class:`Option` per option: its name (the ``Options`` field and
the API keyword), type, default, help, validation and magic spelling. From it come the
``Options`` fields, the magics' flags (``parmagic.magics``), the API keywords and their
documentation (:func:`takes_options`), and the ``%parmagic config`` listing
(:func:`format_options`). Every bad value raises :class:`OptionError` (a ValueError) with
one line that names the option and what it takes; the magics turn it into a
``UsageError`` that spells the option as a flag.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, make_dataclass, replace
from typing import Any

BACKENDS = ("loky", "threads", "multiprocessing", "serial", "dask")
PREFER = {"threads": "threads", "processes": "loky"}
ON_ERROR = ("raise", "collect")

#: ``cache="auto"`` (``--cache`` alone): the default folder beside the notebook.
CACHE_AUTO = "auto"

#: Most workers a backend takes per CPU of this machine: a typo such as ``-n 100000`` is
#: refused before it starts that many processes. Threads cost far less than processes.
WORKERS_PER_CPU = {"loky": 8, "multiprocessing": 8, "threads": 64}
#: Most workers ``--backend dask`` takes: they are the cluster's, not this machine's, but
#: each one keeps tasks in flight in the kernel.
MAX_DASK_WORKERS = 10_000


class OptionError(ValueError):
    """A bad option value; the message is one line naming the option and what it takes.

    ``str(exc)`` spells options as API keywords (``timeout``); :meth:`for_magic` as the
    magics' flags (``--timeout``).
    """

    def __init__(self, option: str | None, problem: str):
        self.option = option
        self.template = f"{{{option}}} {problem}" if option else problem
        super().__init__(spell(self.template, magic=False))

    def for_magic(self) -> str:
        """The message with options spelled as the magics' flags."""
        return spell(self.template, magic=True)


@dataclass(frozen=True)
class Option:
    """One option: the ``Options`` field, the API keyword and the magic flag(s).

    ``coerce`` checks and normalises a value from the API or from ``parse`` (the magic's
    text); it raises ValueError or TypeError for a bad one, which becomes an
    :class:`OptionError` saying "``{name} {expect}, not {value!r}``".
    """

    name: str
    type: Any
    default: Any
    help: str
    expect: str
    coerce: Callable[[Any], Any]
    parse: Callable[[str], Any] = str
    show: Callable[[Any], str] = str
    short: str | None = None  # a short flag beside --name, e.g. -n
    metavar: str | None = None
    const: Any = None  # not None: the flag may come alone and then means this (--cache)
    negatable: bool = False  # --no-NAME sets the option off (False, or None)
    alias_of: str | None = None  # not an Options field: its value sets that option

    @property
    def flag(self) -> str:
        """The magics' long flag: ``--n-jobs`` for ``n_jobs``."""
        return "--" + self.name.replace("_", "-")

    @property
    def off(self) -> Any:
        """The value ``--no-NAME`` sets."""
        return False if self.type is bool else None

    def check(self, value: Any) -> Any:
        """``value`` validated and normalised, or OptionError."""
        try:
            return self.coerce(value)
        except OptionError:  # a check with its own message
            raise
        except (ValueError, TypeError):
            raise OptionError(self.name, f"{self.expect}, not {value!r}") from None

    def from_text(self, text: str) -> Any:
        """The magic's text for this option as an API value; a bad one is named as typed."""
        try:
            value = self.parse(text)
            self.coerce(value)
        except OptionError:
            raise
        except (ValueError, TypeError):
            raise OptionError(self.name, f"{self.expect}, not {text!r}") from None
        return value


# -- value checks: each returns the normalised value or raises ValueError/TypeError --


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _n_jobs(value: Any) -> int:
    if _int(value) == 0:
        raise ValueError(value)
    return value


def _one_of(choices: Any) -> Callable[[Any], Any]:
    def coerce(value: Any) -> Any:
        if value not in choices:
            raise ValueError(value)
        return value

    return coerce


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _none_or(coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else coerce(value)


def _text_none_or(parse: Callable[[str], Any], none: str = "none") -> Callable[[str], Any]:
    return lambda text: None if text.lower() == none else parse(text)


def _positive_int(value: Any) -> int:
    if _int(value) < 1:
        raise ValueError(value)
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(value)
    return float(value)


def _address(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    return value.strip()


def _chunksize(value: Any) -> int | None:
    return None if value in (None, "auto") else _positive_int(value)


def _sweep(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = _sweep_text(value)
    return tuple(_positive_int(n) for n in value)


def _sweep_text(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "none":
        return ()
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ValueError(text)  # "1,,2" or "": a count is missing
    return tuple(int(part) for part in parts)


def _cache(value: Any) -> str | None:
    if value is None or value == CACHE_AUTO:
        return value
    if isinstance(value, bool):
        raise TypeError(value)
    path = os.fspath(value)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(value)
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OptionError("cache", f"must be a folder; {path!r} is a file")
    return path


def _show_none(word: str) -> Callable[[Any], str]:
    return lambda value: word if value is None else str(value)


def _show_flag(value: bool) -> str:
    return "on" if value else "off"


def _show_n_jobs(value: int) -> str:
    if value == -1:
        return f"-1 (all {cpu_count()} cores)"
    if value < 0:
        return f"{value} ({resolve_n_jobs(value)} of {cpu_count()} cores)"
    return str(value)


#: Every option, in the order ``-h`` and ``%parmagic config`` list them.
TABLE: tuple[Option, ...] = (
    Option(
        "n_jobs",
        int,
        -1,
        "workers: -1 all cores, -2 all but one, 1 runs in the kernel",
        "must be a non-zero integer (-1 all cores, -2 all but one)",
        _n_jobs,
        parse=int,
        show=_show_n_jobs,
        short="-n",
        metavar="N",
    ),
    Option(
        "backend",
        str,
        "loky",
        "where iterations run: " + ", ".join(BACKENDS),
        "must be one of " + ", ".join(BACKENDS),
        _one_of(BACKENDS),
        metavar="NAME",
    ),
    Option(
        "prefer",
        str | None,
        None,
        "joblib's alias: threads ({backend} threads) or processes ({backend} loky)",
        "must be 'threads' or 'processes'",
        lambda value: PREFER[_one_of(PREFER)(value)],
        metavar="KIND",
        alias_of="backend",
    ),
    Option(
        "scheduler",
        str | None,
        None,
        "dask scheduler address, e.g. tcp://127.0.0.1:8786, with {backend} dask "
        "(none: the kernel's current Client)",
        "must be a dask scheduler address such as tcp://127.0.0.1:8786",
        _none_or(_address),
        parse=_text_none_or(str),
        show=_show_none("none"),
        metavar="ADDRESS",
    ),
    Option(
        "timeout",
        float | None,
        None,
        "seconds an iteration may run before it fails; none: no limit",
        "must be a positive, finite number of seconds (or none)",
        _none_or(_seconds),
        parse=_text_none_or(float),
        show=lambda value: "none" if value is None else f"{value:g} s",
        metavar="SECONDS",
    ),
    Option(
        "on_error",
        str,
        "raise",
        "raise: stop at the first failing iteration; "
        "collect: run them all, then raise one error listing the failures",
        "must be 'raise' or 'collect'",
        _one_of(ON_ERROR),
        metavar="raise|collect",
    ),
    Option(
        "chunksize",
        int | None,
        None,
        "iterations per task: a positive integer, or auto (each task ~50 ms)",
        "must be a positive integer or 'auto'",
        _chunksize,
        parse=_text_none_or(int, none="auto"),
        show=_show_none("auto"),
        metavar="N|auto",
    ),
    Option(
        "progress",
        bool,
        True,
        "show the live progress bar",
        "must be True or False",
        _flag,
        show=_show_flag,
        negatable=True,
    ),
    Option(
        "summary",
        bool,
        True,
        "show the timing summary when the loop ends (no progress and no summary: silent)",
        "must be True or False",
        _flag,
        show=_show_flag,
        negatable=True,
    ),
    Option(
        "auto_serial",
        bool,
        True,
        "run a loop too cheap to gain from workers in the kernel instead",
        "must be True or False",
        _flag,
        show=_show_flag,
        negatable=True,
    ),
    Option(
        "compare",
        bool,
        False,
        "also time the loop serially and show both",
        "must be True or False",
        _flag,
        show=_show_flag,
        negatable=True,
    ),
    Option(
        "compare_sample",
        int | None,
        None,
        "compare on only this many iterations and extrapolate (turns {compare} on)",
        "must be a positive number of iterations (or none)",
        _none_or(_positive_int),
        parse=_text_none_or(int),
        show=_show_none("none (the whole loop)"),
        metavar="N",
    ),
    Option(
        "sweep",
        tuple[int, ...],
        (),
        "also time the loop at each worker count, e.g. 1,2,4, and plot the speedup",
        "takes positive worker counts like 1,2,4 (or none)",
        _sweep,
        show=lambda value: ",".join(map(str, value)) or "none",
        metavar="N,N,...",
    ),
    Option(
        "cache",
        str | None,
        None,
        "keep finished iterations on disk and replay them on a rerun: auto (what "
        "--cache alone means) uses a folder beside the notebook",
        "takes a folder, or 'auto' for the one beside the notebook",
        _cache,
        show=_show_none("off"),
        metavar="DIR",
        const=CACHE_AUTO,
        negatable=True,
    ),
)

BY_NAME: dict[str, Option] = {option.name: option for option in TABLE}
FIELDS: tuple[Option, ...] = tuple(option for option in TABLE if option.alias_of is None)


def spell(template: str, magic: bool) -> str:
    """Fill ``{name}`` placeholders with the option's keyword, or its magic flag."""

    def spelling(match: re.Match) -> str:
        option = BY_NAME.get(match.group(1))
        if option is None:
            return match.group(0)
        return option.flag if magic else option.name

    return re.sub(r"\{(\w+)\}", spelling, template)


def cpu_count() -> int:
    """Usable CPUs (cgroup and affinity aware, like loky)."""
    try:
        from loky import cpu_count as loky_cpu_count

        return max(1, loky_cpu_count())
    except Exception:  # loky missing or confused: fall back to the OS count
        return max(
            1,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
        )


def resolve_n_jobs(n_jobs: int) -> int:
    """joblib's meaning: -1 all cores, -2 all but one, ...; never below 1."""
    if n_jobs < 0:
        return max(1, cpu_count() + 1 + n_jobs)
    return n_jobs


def max_workers(backend: str) -> int | None:
    """The most workers ``backend`` takes on this machine (None: no limit, n is unused)."""
    if backend == "dask":
        return MAX_DASK_WORKERS
    per_cpu = WORKERS_PER_CPU.get(backend)
    return None if per_cpu is None else per_cpu * cpu_count()


class _OptionsBase:
    """Methods of :class:`Options`; its fields come from :data:`TABLE`."""

    def __post_init__(self) -> None:
        for option in FIELDS:
            # frozen: the validated, normalised value replaces the given one
            object.__setattr__(self, option.name, option.check(getattr(self, option.name)))
        _check_together(self)

    def with_changes(self, **changes: Any) -> Options:
        """A copy with ``changes`` (API keywords) applied, validated; unknown names refused."""
        return replace(self, **normalise(changes))

    @property
    def n_workers(self) -> int:
        """The number of workers ``n_jobs`` asks for on this machine (joblib's meaning)."""
        return resolve_n_jobs(self.n_jobs)

    def __repr__(self) -> str:
        changed = [
            f"{o.name}={getattr(self, o.name)!r}"
            for o in FIELDS
            if getattr(self, o.name) != o.default
        ]
        return f"Options({', '.join(changed)})"


def _check_together(o: Any) -> None:
    """Rules between options, after each one's own check."""
    if o.scheduler is not None and o.backend != "dask":
        raise OptionError("scheduler", "needs {backend} dask")
    biggest = max((o.n_jobs, *o.sweep))
    if biggest <= min(WORKERS_PER_CPU.values()):
        return  # within every limit on any machine: no need to count CPUs
    limit = max_workers(o.backend)
    if limit is None or biggest <= limit:
        return
    if o.backend == "dask":
        where = ""
    else:
        per_cpu = WORKERS_PER_CPU[o.backend]
        where = f" on {cpu_count()} CPUs ({per_cpu} per CPU)"
    name = "n_jobs" if o.n_jobs == biggest else "sweep"
    raise OptionError(
        name,
        f"{biggest}: {{backend}} {o.backend} takes at most {limit} workers{where}"
        + ("; -1 uses every core" if name == "n_jobs" and o.backend != "dask" else ""),
    )


def _options_doc() -> str:
    lines = ["Options shared by ``%%parallel``, ``%pmap`` and ``parmagic.pmap``.", ""]
    lines += [f"{o.name}: {spell(o.help, magic=False)}" for o in FIELDS]
    return "\n".join(lines)


Options = make_dataclass(
    "Options",
    [(o.name, o.type, field(default=o.default)) for o in FIELDS],
    bases=(_OptionsBase,),
    frozen=True,
    repr=False,
    namespace={"__module__": __name__, "__doc__": _options_doc()},
)


def normalise(changes: dict[str, Any]) -> dict[str, Any]:
    """API keywords -> ``Options`` field values: unknown names refused, aliases and rules applied.

    Rules: ``prefer`` sets ``backend`` (an explicit ``backend`` wins, as in joblib); a
    ``compare_sample`` turns ``compare`` on (refused beside ``compare=False``). ``Options(...)``
    itself takes its fields as given; only these user-facing paths apply the rules.
    """
    unknown = sorted(set(changes) - set(BY_NAME))
    if unknown:
        raise OptionError(None, _unknown(unknown[0]))
    out = dict(changes)
    for option in TABLE:
        if option.alias_of and option.name in out:
            out.setdefault(option.alias_of, option.check(out.pop(option.name)))
    if out.get("compare_sample") is not None:
        if out.get("compare") is False:
            raise OptionError("compare_sample", "turns {compare} on; do not also turn it off")
        out["compare"] = True
    return out


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(BY_NAME), n=1)
    hint = f"did you mean {close[0]}?" if close else "the options are " + ", ".join(BY_NAME)
    return f"unknown option {name!r}: {hint}"


def format_options(options: Any) -> str:
    """One option a line, ``name: value`` as the magics spell it (``chunksize: auto``)."""
    width = max(len(o.name) for o in FIELDS) + 1
    return "\n".join(
        f"  {o.name + ':':<{width}} {o.show(getattr(options, o.name))}" for o in FIELDS
    )


class _SessionDefault:
    """The default shown in the API's signatures: an option left out keeps the session's."""

    def __repr__(self) -> str:
        return "<session default>"


def takes_options(func: Callable) -> Callable:
    """Give ``func(..., **options)`` the table's keywords in its signature and docstring."""
    signature = inspect.signature(func)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [
        inspect.Parameter(
            o.name, inspect.Parameter.KEYWORD_ONLY, default=_SessionDefault(), annotation=o.type
        )
        for o in TABLE
    ]
    func.__signature__ = signature.replace(parameters=params)
    listing = "\n".join(f"    {o.name}: {spell(o.help, magic=False)}" for o in TABLE)
    func.__doc__ = (
        f"{inspect.cleandoc(func.__doc__ or '')}\n\nOptions (keywords; an option left out "
        f"takes the session default, see set_defaults):\n{listing}\n"
    )
    return func


class _Defaults:
    """The session's defaults, changed by ``%parmagic config`` and ``parmagic.config``."""

    current = Options()


def defaults() -> Options:
    """The options later cells get when they set none."""
    return _Defaults.current


@takes_options
def set_defaults(**changes: Any) -> Options:
    """Change the session defaults; all or nothing (a bad value changes nothing)."""
    new = _Defaults.current.with_changes(**changes)
    _Defaults.current = new
    return new


@contextmanager
def _config(**changes: Any) -> Iterator[Options]:
    previous = _Defaults.current
    _Defaults.current = previous.with_changes(**changes)
    try:
        yield _Defaults.current
    finally:
        _Defaults.current = previous


@takes_options
def config(**changes: Any) -> Any:
    """Set defaults for a ``with`` block, like joblib's ``parallel_backend``; restored on exit.

    For a change that stays, use :func:`set_defaults` (what ``%parmagic config`` calls).
    """
    return _config(**changes)


__all__ = [
    "BACKENDS",
    "CACHE_AUTO",
    "TABLE",
    "Option",
    "OptionError",
    "Options",
    "config",
    "cpu_count",
    "defaults",
    "format_options",
    "max_workers",
    "resolve_n_jobs",
    "set_defaults",
    "takes_options",
]
