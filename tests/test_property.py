"""Property: ``%%parallel`` leaves what the plain cell leaves, or refuses it before anything runs.

Hypothesis generates loop cells from a small grammar: locals, effects on kernel
objects (append, extend, item and attribute assignment, ``op=``, nested paths),
prints, conditionals, nested loops, ``continue``, an occasional failing iteration,
and now and then a construct that must be refused (``break``, ``global``, a name
read before the body assigns it, a mutating method inside an expression, an
object both changed and read). Each cell runs plainly and under ``%%parallel`` in
one in-process IPython shell, each time in a fresh namespace built by the same
setup. Either the namespace (user variables), the cell's value, its stdout and
its exception type all match, or ``%%parallel`` raised ``RefusedLoopError`` and
the namespace is exactly as the setup left it.

The generator also makes loops over a kernel container of small lists or dicts
that change the loop target (``row.append(..)``, ``rec['v'] = ..``), draw random
numbers (``draws.append(random.random())`` after ``random.seed(0)``), call
``display`` and warn. For draws the property is SPEC's, not the plain draws: as many
as the plain cell drew, no two iterations alike, and on process backends the same
numbers when the cell runs again. Warnings are shown on stderr as in a notebook
(``default`` action: once per message and line) and must read as the plain cell's.
Each of these is a feature in :data:`FEATURES`; those in :data:`FAILING` (SPEC
promises not kept today) are left out of the main property and run alone, forced
into every loop, as strict xfails: remove a feature from :data:`FAILING` when its
xfail starts passing.

Half the examples use ``--backend threads``, half the loky pool, with a random
``--chunksize`` so batch boundaries fall everywhere. IPython shows errors in its
one-line mode meanwhile: formatting the frames of a traceback costs ~50 ms.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from parmagic import RefusedLoopError, RemoteTraceback

from .shell import run, shell, snapshot

pytestmark = pytest.mark.slow

EXAMPLES = 300
#: Examples of each failing feature's own (xfail) property; no shrinking, a failure is expected.
FEATURE_EXAMPLES = 40

#: Generated constructs beyond the original grammar (SPEC §2, issue 11).
FEATURES = ("mutate_target", "random", "display", "warn")
#: Features whose SPEC promise is broken today -> what differs (each a strict xfail test).
FAILING: dict[str, str] = {
    # random, display and warn hold since the third landing
    "mutate_target": "--backend threads only: the threads change the kernel's own items as "
    "they run, so when an effect fails in the kernel at iteration k (acc[0] = ... on an empty "
    "list), items of iterations after k were already changed; the plain loop never ran them "
    "(process backends merge item changes at commit and hold)",
}

SETUP = """\
class Box:
    def __init__(self):
        self.n = 0
        self.last = None

def f(x):
    return 3 * x + 1

K = 4
a = 0
y = 0
data = [5, 3, 8, 1, 9, 2, 7, 4, 6, 0]
acc = []
d = {}
total = 0
box = Box()
grid = {0: [], 1: [], 2: []}
seen = set()
rows = [[k] for k in range(10)]
recs = [{'k': k} for k in range(10)]
draws = []
import random
import warnings
from IPython.display import display
random.seed(0)
"""

#: Every name the generated loop bodies assign.
#: Statements that may run in the kernel before a loop (they must not run if it is refused).
PRELUDES = ["acc = [100]", "total = 1", "d = {'x': 1}", "z = 5", "box.n = 2"]
LAST_EXPRESSIONS = ["(len(acc), total)", "acc", "sorted(d.items(), key=repr)", "box.n", "i"]
HEADERS = [
    "for i in range({n}):",
    "for i, z in enumerate(data[:{n}]):",
    "for i in data[:{n}]:",
    "for i in reversed(range({n})):",
    "for i in [x * 2 for x in range({n})]:",
    "for i in (x + 1 for x in range({n})):",
    "for i, z in zip(range({n}), data):",
]
#: Constructs the analysis must refuse (or, at least, run with the serial result).
REFUSABLE = [
    "if i == 2:\n    break",
    "global total",
    "acc.append(y)\ny = i",
    "total = total + i",
    "a = acc.pop() if acc else 0",
    "if i not in seen:\n    seen.add(i)",
    "print(len(acc))",
    "acc.append(i)\nprint(acc[-1])",
]


@dataclass
class Ctx:
    """What a statement may read: names surely assigned before it in this iteration."""

    readable: set[str]
    inner: bool = False  # inside the nested loop
    depth: int = 0
    locals_: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    features: frozenset[str] = frozenset()
    target: str = ""  # the loop target when it is an item of rows (row) or recs (rec)

    def child(self, **changes: Any) -> Ctx:
        keep = {"inner": self.inner, "features": self.features, "target": self.target}
        return Ctx(set(self.readable), **{**keep, "depth": self.depth + 1, **changes})


def expr(draw: Any, ctx: Ctx, depth: int = 0) -> str:
    atoms = sorted(ctx.readable) + ["K", "1", "2", "7"]
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(atoms))
    a, b = expr(draw, ctx, depth + 1), expr(draw, ctx, depth + 1)
    form = draw(
        st.sampled_from(
            [
                "({a} + {b})",
                "({a} * {b})",
                "({a} % 3)",
                "f({a})",
                "data[{a} % len(data)]",
                "abs({a} - {b})",
            ]
        )
    )
    return form.format(a=a, b=b)


def condition(draw: Any, ctx: Ctx) -> str:
    e = expr(draw, ctx, 1)
    return draw(
        st.sampled_from(["{e} % 2 == 0", "{e} > 5", "{e} in (1, 3, 8)", "not {e} % 3"])
    ).format(e=e)


EFFECTS = [
    "acc.append({a})",
    "acc.extend([{a}, {b}])",
    "acc.insert(0, {a})",
    "acc.sort()",
    "d[{a}] = {b}",
    "d[({a}, {b})] = {a}",
    "d.update({{{a}: {b}}})",
    "total += {a}",
    "total -= {a} % 5",
    "box.n += {a}",
    "box.last = {a}",
    "grid[{a} % 3].append({b})",
    "grid[{a} % 3] += [{b}]",
    "acc.append(str({a}) * 2)",
    "acc[0] = {a}",
    "del d[{a}]",
    "box.last += {a}",
    "acc.extend(lst)",
]


def statement(draw: Any, ctx: Ctx) -> list[str]:
    kinds = ["local"] * 3 + ["effect"] * 4 + ["print"] * 2 + ["continue"]
    kinds += ["maybe", "while", "try", "walrus", "lambda", "unpack", "container", "shadow", "aug"]
    kinds += [k for k in ("random", "display", "warn") if k in ctx.features]
    if ctx.target:
        kinds += ["target"] * 2
    if ctx.depth < 2:
        kinds += ["if"] * 2 + ([] if ctx.inner else ["for"])
    kind = draw(st.sampled_from(kinds))
    e1, e2 = expr(draw, ctx), expr(draw, ctx)
    new = feature_statement(draw, ctx, kind, e1, e2)
    if new:
        return new
    if kind == "local":
        name = draw(st.sampled_from(ctx.locals_))
        ctx.readable.add(name)
        return [f"{name} = {e1}"]
    if kind == "shadow":  # a local that shadows a kernel name read elsewhere
        ctx.readable.add("K")
        return [f"K = {e1}"]
    if kind == "aug":  # op= on a local: reads it first
        return [f"{draw(st.sampled_from(ctx.locals_))} += {e1}"]
    if kind == "maybe":  # reads a local this iteration may not have assigned yet
        return [f"acc.append({draw(st.sampled_from(ctx.locals_))})"]
    if kind == "effect":
        return [draw(st.sampled_from(EFFECTS)).format(a=e1, b=e2)]
    if kind == "print":
        forms = ["print({a})", "print('v', {a}, {b}, sep=':')", "print({a}, end=' ')"]
        return [draw(st.sampled_from(forms)).format(a=e1, b=e2)]
    if kind == "continue":
        return [f"if {condition(draw, ctx)}:", "    continue"]
    if kind == "while":
        ctx.readable.add("w")
        return ["w = 0", f"while w < {e1} % 3:", "    w += 1"]
    if kind == "try":
        ctx.readable.add("b")
        body = indent(block(draw, ctx.child())) if ctx.depth < 2 and draw(st.booleans()) else []
        return [
            "try:",
            f"    b = 10 // ({e1} - 4)",
            *body,
            "except ZeroDivisionError:",
            "    b = -1",
        ]
    if kind == "walrus":
        return [f"if (v := {e1}) > 4:", "    acc.append(v)"]
    if kind == "lambda":
        ctx.readable.add("c")
        return [f"g = lambda t: t + {e1}", "c = g(i)"]
    if kind == "unpack":
        ctx.readable.update({"a", "b"})
        return [f"a, b = {e1}, {e2}"]
    if kind == "container":
        ctx.readable.add("c")
        return ["lst = []", f"lst.append({e1})", "lst.append(i)", "c = sum(lst)"]
    if kind == "for":
        inner = ctx.child(inner=True)
        inner.readable.add("j")
        body = block(draw, inner)
        if draw(st.integers(0, 4)) == 0:
            body += ["if j == 1:", "    break"]  # leaves the inner loop only
        return [f"for j in range({draw(st.integers(0, 3))}):"] + indent(body)
    then = block(draw, ctx.child())
    lines = [f"if {condition(draw, ctx)}:"] + indent(then)
    if draw(st.booleans()):
        lines += ["else:"] + indent(block(draw, ctx.child()))
    return lines


TARGET_EFFECTS = {
    "row": ["row.append({a})", "row[0] = {a}", "row.extend([{a}, {b}])", "row.sort()"],
    "rec": [
        "rec['v'] = {a}",
        "rec.update(w={a})",
        "rec.setdefault('s', {a})",
        "rec.pop('k', None)",
    ],
}


def feature_statement(draw: Any, ctx: Ctx, kind: str, e1: str, e2: str) -> list[str]:
    """A statement of one of :data:`FEATURES` (empty for the original grammar's kinds)."""
    if kind == "target":
        return [draw(st.sampled_from(TARGET_EFFECTS[ctx.target])).format(a=e1, b=e2)]
    if kind == "random":
        form = draw(
            st.sampled_from(
                ["draws.append(random.random())", "draws.append(random.randint(0, 10**9))"]
            )
        )
        return [form]
    if kind == "display":
        return [draw(st.sampled_from(["display({a})", "display({a}, {b})"])).format(a=e1, b=e2)]
    if kind == "warn":
        form = draw(st.sampled_from(["warnings.warn('w' + str({a}))", "warnings.warn('hush')"]))
        return [form.format(a=e1)]
    return []


def block(draw: Any, ctx: Ctx) -> list[str]:
    return [line for stmt in statements(draw, ctx) for line in stmt]


def statements(draw: Any, ctx: Ctx) -> list[list[str]]:
    """A block as a list of statements, each a list of lines."""
    return [statement(draw, ctx) for _ in range(draw(st.integers(1, 4 if ctx.depth == 0 else 2)))]


def indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def loop(draw: Any, features: frozenset[str], forced: str = "") -> list[str]:
    n = draw(st.integers(2 if forced else 0, 9))  # a forced feature runs, more than once
    target = ""
    if "mutate_target" in features and (forced == "mutate_target" or draw(st.integers(0, 3)) == 0):
        target = draw(st.sampled_from(["row", "rec"]))
        header = f"for i, {target} in enumerate({target}s[:{n}]):"
    else:
        header = draw(st.sampled_from(HEADERS)).format(n=n)
    ctx = Ctx(readable={"i"}, features=features, target=target)
    body = statements(draw, ctx)
    if forced:  # the feature under test in every loop, at its top level
        kind = "target" if forced == "mutate_target" else forced
        at = draw(st.integers(0, len(body)))
        body.insert(at, feature_statement(draw, ctx, kind, expr(draw, ctx), expr(draw, ctx)))
    if draw(st.integers(0, 9)) == 0:  # now and then an iteration fails
        body.append([f"if i == {draw(st.integers(0, 6))}:", "    raise ValueError(i)"])
    if draw(st.integers(0, 5)) == 0:
        body.insert(draw(st.integers(0, len(body))), draw(st.sampled_from(REFUSABLE)).splitlines())
    lines = [header] + indent([line for stmt in body for line in stmt])
    if draw(st.integers(0, 7)) == 0:
        lines += ["else:", "    acc.append('else')"]
    return lines


def comprehension(draw: Any) -> list[str]:
    ctx = Ctx(readable={"x"})
    value, key = expr(draw, ctx), expr(draw, ctx)
    source = draw(st.sampled_from(["range({n})", "data[:{n}]"])).format(n=draw(st.integers(0, 9)))
    guard = draw(st.sampled_from(["", f" if {condition(draw, ctx)}"]))
    form = draw(
        st.sampled_from(["sq = [{v} for x in {s}{g}]", "sq = {{{k}: {v} for x in {s}{g}}}"])
    )
    return [form.format(v=value, k=key, s=source, g=guard)]


@st.composite
def cells(draw: Any, features: frozenset[str] = frozenset(), forced: str = "") -> tuple[str, str]:
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(PRELUDES)))
    for _ in range(draw(st.integers(1, 2))):
        comp = not forced and draw(st.integers(0, 4)) == 0
        lines += comprehension(draw) if comp else loop(draw, features, forced)
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(LAST_EXPRESSIONS)))
    backend = draw(st.sampled_from(["threads", "loky"]))
    chunks = draw(st.sampled_from(["auto", "1", "2", "3"]))
    return "\n".join(lines) + "\n", f"--backend {backend} --chunksize {chunks}"


_TRACEBACK = re.compile(r"^-{20,}$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_PROMPT = re.compile(r"Out\[\d+\]: ")


def before_traceback(out: str) -> str:
    """Stdout up to the traceback IPython prints for an error (its frames differ by design)."""
    out = _PROMPT.sub("Out: ", _ANSI.sub("", out))
    found = _TRACEBACK.search(out)
    return out[: found.start()] if found else out


def fresh(ip: Any) -> None:
    """The user's namespace as the setup leaves it (cheaper than ``%reset``, which collects)."""
    hidden = ip.user_ns_hidden
    for name in [n for n in ip.user_ns if n not in hidden]:
        del ip.user_ns[name]
    exec(SETUP, ip.user_ns)


_WARNING_LINE = re.compile(r"(\w+Warning): (.*)$", re.M)


def shown_warnings(err: str) -> list[str]:
    """The warnings a cell showed on stderr, in order (``UserWarning: w5``)."""
    return [f"{cat}: {msg}" for cat, msg in _WARNING_LINE.findall(err)]


def _show_on_stderr(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))


def compare(cell: str, options: str, capsys: Any) -> str:
    """Run ``cell`` plainly and under %%parallel; assert the property; say which case held."""
    with warnings.catch_warnings():
        # as in a notebook: shown on stderr (pytest records them), once per message and line
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", message="hush")
        # IPython's own, once a long run of cells fills its output cache
        warnings.filterwarnings("ignore", message="Output cache limit")
        warnings.showwarning = _show_on_stderr
        return _compare(cell, options, capsys)


def _compare(cell: str, options: str, capsys: Any) -> str:
    ip = shell()
    fresh(ip)
    plain, plain_out, plain_err = run(ip, cell, capsys)
    plain_ns, plain_value = snapshot(ip.user_ns), plain.result
    plain_draws = list(ip.user_ns["draws"])
    fresh(ip)
    untouched = snapshot(ip.user_ns)
    par, par_out, par_err = run(ip, f"%%parallel -n 2 --no-progress {options}\n{cell}", capsys)
    if isinstance(par.error_in_exec, RefusedLoopError):
        assert snapshot(ip.user_ns) == untouched, "a refused cell changed the namespace"
        shown = before_traceback(par_out).strip().splitlines()
        assert len(shown) <= 1 and "RefusedLoopError" in par_out, f"refused cell printed {shown}"
        return "refused"
    where = f"\n--- cell ({options}):\n{cell}--- stderr:\n{par_err}"
    assert type(par.error_in_exec) is type(plain.error_in_exec), (
        f"plain: {plain.error_in_exec!r}, parallel: {par.error_in_exec!r}{where}"
    )
    draws = list(ip.user_ns["draws"])
    now, outcome = snapshot(ip.user_ns), "same" if plain.error_in_exec is None else "same error"
    if plain_draws or draws:  # SPEC's promise for draws, not the plain numbers
        assert len(draws) == len(plain_draws), f"plain {plain_draws}, parallel {draws}{where}"
        assert len(set(draws)) == len(draws), f"iterations share draws: {draws}{where}"
        if "--backend threads" not in options:
            fresh(ip)
            run(ip, f"%%parallel -n 2 --no-progress {options}\n{cell}", capsys)
            again = list(ip.user_ns["draws"])
            assert again == draws, f"a second run drew {again}, the first {draws}{where}"
            ip.user_ns["draws"] = draws  # (the rest of the namespace is the first run's)
        now["draws"] = plain_ns["draws"]
    par_shown, plain_shown = before_traceback(par_out), before_traceback(plain_out)
    if applying_an_effect_failed(par.error_in_exec):
        # the kernel failed to apply an effect (acc.sort() on mixed types, total += "x"):
        # the output before it and the loop's locals at that statement must still match
        outcome = "same error, applying an effect"
    assert now == plain_ns, where
    assert par_shown == plain_shown, where
    assert shown_warnings(par_err) == shown_warnings(plain_err), where
    if plain.error_in_exec is None:
        assert repr(par.result) == repr(plain_value), where
    return outcome


def applying_an_effect_failed(exc: BaseException | None) -> bool:
    """The error came from replaying an effect in the kernel, not from the body in a worker."""
    return exc is not None and not isinstance(exc.__cause__, RemoteTraceback)


def test_parallel_cell_matches_plain_cell_or_is_refused(capsys: pytest.CaptureFixture) -> None:
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=False,
        # no "explain" phase: on Python 3.11 it traces every line and ran past the timeout,
        # so that the failing cell was never shown
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cells(frozenset(FEATURES) - set(FAILING)))
    def check(case: tuple[str, str]) -> None:
        cell, options = case
        outcomes[compare(cell, options, capsys)] += 1

    ip = shell()
    mode = ip.InteractiveTB.mode
    ip.InteractiveTB.set_mode("Minimal")  # one line per error: formatting frames costs ~50 ms
    try:
        check()
    finally:
        ip.InteractiveTB.set_mode(mode)
    total = sum(outcomes.values())
    assert total >= EXAMPLES, outcomes
    # the grammar mostly makes runnable loops: a property that only ever refuses proves nothing
    # (seen over random seeds: 45-60 % end "same", 5-10 % in the same error)
    ran = total - outcomes["refused"]
    assert ran >= total // 2 and outcomes["same"] >= total // 3, outcomes
    assert outcomes["refused"] >= 10, outcomes


@pytest.mark.parametrize(
    "feature",
    [
        pytest.param(
            f, marks=[pytest.mark.xfail(strict=False, reason=FAILING[f])] if f in FAILING else []
        )
        for f in FEATURES
    ],
)
def test_feature_in_every_loop(feature: str, capsys: pytest.CaptureFixture) -> None:
    """The property on cells whose every loop has ``feature`` (the only new feature on)."""

    @settings(
        max_examples=FEATURE_EXAMPLES,
        deadline=None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: failing is known
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cells(frozenset({feature}), forced=feature))
    def check(case: tuple[str, str]) -> None:
        compare(*case, capsys)

    ip = shell()
    mode = ip.InteractiveTB.mode
    ip.InteractiveTB.set_mode("Minimal")
    try:
        check()
    finally:
        ip.InteractiveTB.set_mode(mode)
