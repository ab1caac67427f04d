"""One validated options dataclass, the session defaults, and ``config``.

The magics parse strings into these fields; the Python API passes them as
keyword arguments. Every bad value raises :class:`OptionError` (a ValueError)
with one line that names the option and the fix; the magics turn it into a
``UsageError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

BACKENDS = ("loky", "threads", "multiprocessing", "serial", "dask")
PREFER = {"threads": "threads", "processes": "loky"}
ON_ERROR = ("raise", "collect")


class OptionError(ValueError):
    """A bad option value; the message is one line naming the option and the fix."""


@dataclass(frozen=True)
class Options:
    """Options shared by ``%%parallel``, ``%pmap`` and ``parmagic.pmap``."""

    n_jobs: int = -1
    backend: str = "loky"
    scheduler: str | None = None
    timeout: float | None = None
    on_error: str = "raise"
    chunksize: int | None = None  # None: automatic batching
    progress: bool = True
    compare: bool = False
    compare_sample: int | None = None  # --compare on a sample of this many iterations
    sweep: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    def with_changes(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied (None values are ignored), validated."""
        return replace(self, **normalise(changes))

    @property
    def n_workers(self) -> int:
        """The number of workers ``n_jobs`` asks for on this machine (joblib's meaning)."""
        return resolve_n_jobs(self.n_jobs)


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


def normalise(changes: dict[str, Any]) -> dict[str, Any]:
    """Turn user spellings into field values: prefer -> backend, chunksize 'auto' -> None."""
    out = {k: v for k, v in changes.items() if v is not None}
    prefer = out.pop("prefer", None)
    if prefer is not None:
        if prefer not in PREFER:
            raise OptionError(f"--prefer must be 'threads' or 'processes', not {prefer!r}")
        out.setdefault("backend", PREFER[prefer])
    if out.get("chunksize") == "auto":
        out["chunksize"] = None
    if "sweep" in out and isinstance(out["sweep"], str):
        out["sweep"] = parse_sweep(out["sweep"])
    unknown = set(out) - {f.name for f in fields(Options)}
    if unknown:
        raise OptionError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return out


def parse_sweep(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"--sweep takes worker counts like 1,2,4, not {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise OptionError(f"--sweep takes positive worker counts like 1,2,4, not {text!r}")
    return counts


def _validate(o: Options) -> None:
    if not isinstance(o.n_jobs, int) or isinstance(o.n_jobs, bool) or o.n_jobs == 0:
        raise OptionError(
            f"--n-jobs must be a non-zero integer (-1 all cores, -2 all but one), not {o.n_jobs!r}"
        )
    if o.backend not in BACKENDS:
        raise OptionError(f"--backend must be one of {', '.join(BACKENDS)}, not {o.backend!r}")
    if o.timeout is not None and not (isinstance(o.timeout, int | float) and o.timeout > 0):
        raise OptionError(f"--timeout must be a positive number of seconds, not {o.timeout!r}")
    if o.on_error not in ON_ERROR:
        raise OptionError(f"--on-error must be 'raise' or 'collect', not {o.on_error!r}")
    if o.chunksize is not None and (not isinstance(o.chunksize, int) or o.chunksize < 1):
        raise OptionError(f"--chunksize must be a positive integer or 'auto', not {o.chunksize!r}")
    if o.compare_sample is not None and o.compare_sample < 1:
        raise OptionError(f"--compare-sample must be a positive integer, not {o.compare_sample!r}")
    if o.scheduler is not None and o.backend != "dask":
        raise OptionError("--scheduler needs --backend dask")


class _Defaults:
    """The session's defaults, changed by ``%parmagic config`` and ``parmagic.config``."""

    current = Options()


def defaults() -> Options:
    """The options later cells get when they set none."""
    return _Defaults.current


def set_defaults(**changes: Any) -> Options:
    """Change the session defaults; all or nothing (a bad value changes nothing)."""
    new = _Defaults.current.with_changes(**changes)
    _Defaults.current = new
    return new


@contextmanager
def config(**changes: Any) -> Iterator[Options]:
    """Set defaults for a ``with`` block, like joblib's ``parallel_backend``; restored on exit.

    For a change that stays, use :func:`set_defaults` (what ``%parmagic config`` calls).
    """
    previous = _Defaults.current
    _Defaults.current = previous.with_changes(**changes)
    try:
        yield _Defaults.current
    finally:
        _Defaults.current = previous
