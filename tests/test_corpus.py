"""Corpus: notebook-style loop cells leave what the plain cell leaves (SPEC §2), in a real kernel.

Each case (tests/corpus_cells.py) runs plainly, then, after the same setup, under
``%%parallel -n 2``; the user-visible picture must match: the values of the names the
cell touches (normalised in the kernel: DataFrames by their text, estimators by
fitted-ness and coefficients), identity checks (``estimators[-1] is est``), the cell's
stdout and rich outputs in order (display mime types and text, image count), its
stderr (warnings, logging; cell line numbers as the notebook numbers them), its error
class and its ``Out[]``.

Random-number cells cannot match a plain run's draws (SPEC §2 "Random numbers"); for
them each promise is its own test: the same numbers on every run after the same seed,
the same for ``-n 1``, ``-n 2`` and ``--chunksize 1`` on process backends, no two
iterations sharing draws, the kernel's generator moving on, and a one-line notice.

Every case runs on loky; one per category also on threads and multiprocessing. One
kernel per module, its working directory a temporary folder (modules written beside
the notebook go there), matplotlib on the inline backend.

Cases that fail today are strict xfails (:data:`FAILS`) whose reason names the broken
promise and what differs, so a fix shows up as an unexpected pass.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from .corpus_cells import CASES, COMMON, SUBSET, Case
from .kernel import Execution, execute

pytestmark = pytest.mark.kernel

BACKENDS = ["loky", "threads", "multiprocessing"]
PROCESS_BACKENDS = {"loky", "multiprocessing"}
RANDOM_PROMISES = ["repeatable", "same_for_n_and_chunks", "distinct", "moves_on", "notice"]

RICH = "§2 rich output: "

#: (case, backend or "*", promise or "") -> what fails today (a strict xfail).
FAILS: dict[tuple[str, str, str], str] = {
    ("plot_per_group_show", "threads", ""): RICH + "threads share pyplot's state: an extra "
    "empty figure and a figure of the wrong size among the images",
}


@pytest.fixture(scope="module")
def kc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One kernel for the module: cwd a temp folder, inline matplotlib, parmagic loaded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    cwd = tmp_path_factory.mktemp("notebook")
    km, client = start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env)
    try:
        ex = execute(client, "%load_ext parmagic")
        assert ex.ok, ex.error()
        # the pool starts here, not inside the first test (whose leak check would see it)
        ex = execute(client, "%%parallel -n 2 --no-progress\n_pm_warm = [i for i in range(4)]\n")
        assert ex.ok, ex.error()
        yield client
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def reset(kc: Any, case: Case) -> None:
    """An empty namespace, the common imports and data, then the case's setup cells."""
    for code in ("%reset -f", COMMON, *case.setup):
        if code:
            ex = execute(kc, code)
            assert ex.ok, f"setup of {case.name} failed: {ex.error()}"


def snap(kc: Any, exprs: tuple[str, ...]) -> dict[str, Any]:
    """The normalised values of ``exprs`` in the kernel (in order: a draw moves a generator)."""
    ex = execute(kc, f"_pm_snap({list(exprs)!r})")
    assert ex.ok, ex.error()
    return json.loads(ex.stream())


_CELL_FILE = re.compile(r"\S*ipykernel_\d+/\d+\.py:(\d+)")
_CELL_IN = re.compile(r"Cell In\[\d+\], line (\d+)")


def normalise(text: str, offset: int) -> str:
    """Cell file names and line numbers as the plain cell would number them."""
    text = _CELL_FILE.sub(lambda m: f"CELL:{int(m.group(1)) - offset}", text)
    return _CELL_IN.sub(lambda m: f"Cell line {int(m.group(1)) - offset}", text)


def own_display(data: dict) -> bool:
    """parmagic's own progress bar or timing summary (not part of the cell's output)."""
    return (
        "application/vnd.jupyter.widget-view+json" in data
        or "parmagic" in data.get("text/html", "")
        or data.get("text/plain", "").startswith("[parmagic]")
    )


def outputs(ex: Execution, offset: int) -> dict[str, Any]:
    """What the user sees: stdout and displays in order, stderr, error class, Out[]."""
    shown: list[Any] = []
    text, result = "", None
    stderr = ""
    for _, m in ex.messages:
        kind, content = m["msg_type"], m["content"]
        if kind == "stream" and content["name"] == "stdout":
            text += content["text"]
        elif kind == "stream":
            stderr += content["text"]
        elif kind == "display_data" and not own_display(content["data"]):
            if text:
                shown.append(text)
                text = ""
            data = content["data"]
            shown.append(
                {
                    mime: ("<image>" if mime.startswith("image/") else normalise(str(v), offset))
                    for mime, v in sorted(data.items())
                }
            )
        elif kind == "execute_result":
            result = content["data"].get("text/plain")
    if text:
        shown.append(text)
    error = ex.error()
    return {
        "stdout and displays": shown,
        "stderr": normalise(stderr, offset),
        "error": error and error["ename"],
        "Out": result,
    }


def parallel(cell: str, backend: str, extra: str = "-n 2") -> str:
    return f"%%parallel {extra} --no-progress --backend {backend}\n{cell}"


def run_case(kc: Any, case: Case, code: str, offset: int, exprs: tuple[str, ...]) -> tuple:
    """Reset, run ``code`` (and the case's ``after`` cell); its snapshot and outputs."""
    reset(kc, case)
    ex = execute(kc, code)
    if case.after:
        assert execute(kc, case.after).ok
    return snap(kc, exprs), outputs(ex, offset), ex


def marked(case: Case, backend: str, promise: str = "") -> Any:
    reason = FAILS.get((case.name, backend, promise)) or FAILS.get((case.name, "*", promise))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    ident = f"{case.name}-{backend}" + (f"-{promise}" if promise else "")
    return pytest.param(case, backend, *([promise] if promise else []), marks=marks, id=ident)


def for_backends(case: Case) -> list[str]:
    return BACKENDS if case.name in SUBSET else ["loky"]


SAME = [marked(c, b) for c in CASES if not c.draws for b in for_backends(c)]
RANDOM = [
    marked(c, b, p)
    for c in CASES
    if c.draws
    for b in for_backends(c)
    for p in RANDOM_PROMISES
    # threads share one generator: SPEC promises repeatable draws on process backends only
    if b in PROCESS_BACKENDS or p not in ("repeatable", "same_for_n_and_chunks")
]


def test_corpus_size() -> None:
    assert len({c.cell for c in CASES}) >= 35
    assert len({c.name for c in CASES}) == len(CASES)
    assert set(SUBSET) <= {c.name for c in CASES}


@pytest.mark.parametrize("case,backend", SAME)
def test_same_as_plain(kc: Any, case: Case, backend: str) -> None:
    """Namespace, identities, output and error class as the plain cell left them."""
    plain_ns, plain_out, plain = run_case(kc, case, case.cell, 0, case.snap)
    assert plain.ok != case.error, f"the plain cell itself: {plain.error()}"
    par_ns, par_out, _ = run_case(kc, case, parallel(case.cell, backend), 1, case.snap)
    differ = {
        key: {"plain": plain_ns[key], "parallel": par_ns[key]}
        for key in plain_ns
        if plain_ns[key] != par_ns[key]
    }
    differ.update(
        {
            key: {"plain": plain_out[key], "parallel": par_out[key]}
            for key in plain_out
            if plain_out[key] != par_out[key]
        }
    )
    assert not differ, json.dumps(differ)[:2500]


_RANDOM_RUNS: dict[tuple[str, str], dict[str, Any]] = {}


def random_runs(kc: Any, case: Case, backend: str) -> dict[str, Any]:
    """The plain run and the parallel runs a random case's promises are judged on (cached)."""
    key = (case.name, backend)
    if key in _RANDOM_RUNS:
        return _RANDOM_RUNS[key]
    exprs = (case.draws, case.next_draw)
    runs: dict[str, Any] = {}
    reset(kc, case)
    runs["fresh next draw"] = snap(kc, (case.next_draw,))[case.next_draw]
    runs["plain"] = run_case(kc, case, case.cell, 0, exprs)
    variants = {"n2": "-n 2", "n2 again": "-n 2", "n1": "-n 1", "chunksize 1": "-n 2 --chunksize 1"}
    if backend not in PROCESS_BACKENDS:
        variants = {"n2": "-n 2"}
    for name, extra in variants.items():
        ns, out, ex = run_case(kc, case, parallel(case.cell, backend, extra), 1, exprs)
        assert ex.ok, ex.error()
        runs[name] = (ns, out, ex)
    _RANDOM_RUNS[key] = runs
    return runs


def numbers(ns: dict[str, Any], case: Case) -> list[Any]:
    value = ns[case.draws]
    return value["list"] if isinstance(value, dict) else value


def text_lines(out: dict[str, Any]) -> list[str]:
    lines = out["stderr"].splitlines()
    for item in out["stdout and displays"]:
        lines += (
            item.splitlines() if isinstance(item, str) else item.get("text/plain", "").split("\n")
        )
    return [line for line in lines if line.strip()]


@pytest.mark.parametrize("case,backend,promise", RANDOM)
def test_random_numbers_promise(kc: Any, case: Case, backend: str, promise: str) -> None:
    """What SPEC promises for a loop that draws random numbers."""
    runs = random_runs(kc, case, backend)
    draws = numbers(runs["n2"][0], case)
    plain = numbers(runs["plain"][0], case)
    if promise == "repeatable":
        again = numbers(runs["n2 again"][0], case)
        assert draws == again, {"first run": draws, "second run": again}
    elif promise == "same_for_n_and_chunks":
        seen = {name: numbers(runs[name][0], case) for name in ("n2", "n1", "chunksize 1")}
        assert len({json.dumps(v) for v in seen.values()}) == 1, seen
    elif promise == "distinct":
        assert len(draws) == len(plain), {"plain": plain, "parallel": draws}
        assert len(set(map(json.dumps, draws))) == len(draws), {"parallel draws": draws}
    elif promise == "moves_on":
        after = runs["n2"][0][case.next_draw]
        fresh = runs["fresh next draw"]
        assert after != fresh and after not in draws, {
            "next draw after the cell": after,
            "next draw right after the seed": fresh,
            "draws in the cell": draws,
        }
    elif promise == "notice":
        extra = [
            line for line in text_lines(runs["n2"][1]) if line not in text_lines(runs["plain"][1])
        ]
        notices = [line for line in extra if re.search(r"random|draw", line, re.I)]
        assert len(notices) == 1, {"lines the parallel cell added": extra}
        if backend == "threads":
            assert "thread" in notices[0].lower(), notices
