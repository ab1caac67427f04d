"""Analysis and rewriting from source strings: no kernel, no workers."""

from __future__ import annotations

import ast

import pytest

from parmagic.analysis import analyse_loop
from parmagic.errors import RefusedLoopError
from parmagic.rewrite import plan_cell


def loop_of(src: str) -> ast.For:
    return ast.parse(src).body[0]


def test_spec_worked_example_is_classified_as_the_spec_says() -> None:
    a = analyse_loop(
        loop_of(
            "for i in range(10):\n    v = slow_power(i, 5)\n    if v % 2:\n        print('odd', i)\n"
            "    results.append(v)\n    total += v\n"
        )
    )
    assert a.locals == {"i", "v"}
    assert {"slow_power", "results", "total"} <= a.captured
    assert [e.root for e in a.effects] == ["results", "total"]


@pytest.mark.parametrize(
    "stmt,root",
    [
        ("acc.append(x)", "acc"),
        ("acc.extend([x])", "acc"),
        ("d[x] = x", "d"),
        ("obj.attr = x", "obj"),
        ("d[x % 2].append(x)", "d"),
        ("total += x", "total"),
        ("d['k'] += x", "d"),
        ("del d[x]", "d"),
        ("obj.inner.items[x] = 1", "obj"),
    ],
)
def test_effect_statements(stmt: str, root: str) -> None:
    a = analyse_loop(loop_of(f"for x in xs:\n    {stmt}\n"))
    assert [e.root for e in a.effects] == [root]
    assert "x" in a.locals and root not in a.locals


def test_calls_on_modules_run_in_the_worker() -> None:
    a = analyse_loop(loop_of("for x in xs:\n    time.sleep(1)\n"), module_names=frozenset({"time"}))
    assert a.effects == []


def test_local_objects_are_not_effects() -> None:
    a = analyse_loop(
        loop_of("for x in xs:\n    row = []\n    row.append(x)\n    out.append(row)\n")
    )
    assert [e.root for e in a.effects] == ["out"]


REFUSALS = [
    ("break", "for x in xs:\n    if x:\n        break\n", 3, "break", "'break'"),
    ("return", "for x in xs:\n    return x\n", 2, "return", "'return'"),
    ("yield", "for x in xs:\n    yield x\n", 2, "yield", "'yield'"),
    ("await", "for x in xs:\n    await f(x)\n", 2, "await", "asynchronous"),
    ("global", "for x in xs:\n    global g\n    g = x\n", 2, "g", "'global'"),
    ("nonlocal", "for x in xs:\n    nonlocal g\n", 2, "g", "'nonlocal'"),
    (
        "read_before_assign",
        "for x in xs:\n    s = s + x\n",
        2,
        "s",
        "read before this iteration assigns it",
    ),
    (
        "conditional_assign_then_read",
        "for x in xs:\n    if x:\n        y = x\n    out.append(y)\n",
        4,
        "y",
        "depends on the previous iteration",
    ),
    ("aug_on_unassigned_local", "for x in xs:\n    n += 1\n    n = 0\n", 2, "n", "read before"),
    (
        "changed_and_read",
        "for x in xs:\n    if x not in seen:\n        seen.add(x)\n",
        2,
        "seen",
        "both changes and reads",
    ),
    (
        "aug_then_read",
        "for x in xs:\n    total += x\n    print(total)\n",
        3,
        "total",
        "both changes and reads",
    ),
    (
        "mutator_in_expression",
        "for x in xs:\n    y = acc.pop()\n",
        2,
        "acc",
        ".pop() changes a kernel object",
    ),
    (
        "mutator_through_call",
        "for x in xs:\n    y = d.get(x).append(1)\n",
        2,
        "d",
        ".append() changes",
    ),
    (
        "mutator_in_nested_function",
        "for x in xs:\n    def g():\n        acc.append(x)\n    g()\n",
        3,
        "acc",
        ".append() changes",
    ),
    ("dynamic_scope", "for x in xs:\n    print(locals())\n", 2, "locals", "different scope"),
    ("reserved_name", "for x in xs:\n    __pm_k = 1\n", 2, "__pm_k", "reserved"),
    ("attribute_loop_target", "for obj.x in xs:\n    pass\n", 1, None, "loop target"),
    (
        "mixed_targets",
        "for x in xs:\n    y = d[x] = 1\n",
        2,
        "d",
        "both to loop locals and to kernel objects",
    ),
    ("append_to_iterable", "for x in xs:\n    xs.append(x)\n", 1, "xs", "loop iterates over"),
    ("pop_from_iterable", "for k in d:\n    d.pop(k)\n", 1, "d", "loop iterates over"),
    ("remove_from_iterable", "for row in rows:\n    rows.remove(row)\n", 1, "rows", "iterates"),
    ("enumerate_iterable", "for i, x in enumerate(xs):\n    xs.append(i)\n", 1, "xs", "over"),
    ("copy_but_items_change", "for r in list(rows):\n    rows[0].append(r)\n", 1, "rows", "over"),
    (
        "frame_column_from_a_column",
        "for i in range(7):\n    daily[days[i]] = daily['x'] * i\n",
        2,
        "daily",
        "both changes and reads",
    ),
    (
        "frame_index_called",
        "for i in range(7):\n    daily[i] = daily.index(i)\n",
        2,
        "daily",
        "both changes and reads",
    ),
    (
        "frame_index_read_but_attribute_set",
        "for i in range(7):\n    daily.x = daily.index[i]\n",
        2,
        "daily",
        "both changes and reads",
    ),
]


@pytest.mark.parametrize(
    "src,line,name,reason", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusal_names_line_name_reason_and_fix(
    src: str, line: int, name: str | None, reason: str
) -> None:
    with pytest.raises(RefusedLoopError) as info:
        analyse_loop(loop_of(src))
    err = info.value
    message = str(err)
    assert err.lineno == line and f"line {line}" in message
    if name is not None:
        assert err.name == name and f"'{name}'" in message
    assert reason in message
    assert ";" in message  # reason; what to do instead
    assert "\n" not in message


def test_iterating_a_copy_that_the_body_changes_is_fine() -> None:
    for src in (
        "for x in list(xs):\n    xs.append(x)\n",
        "for k in sorted(d):\n    d.pop(k)\n",
        "for k, v in list(d.items()):\n    d[k + 'x'] = v\n",
        "for i in range(len(xs)):\n    xs.append(i)\n",
    ):
        a = analyse_loop(loop_of(src))
        assert a.effects and not a.conditions


DAILY = "for i in range(7):\n    daily[days[i]] = (daily.index.day_of_week == i).astype(float)\n"


class _Frame:
    """Stands in for a class by its MRO names (the analysis never imports pandas)."""


def test_new_frame_column_from_its_index_runs_only_for_a_dataframe() -> None:
    from parmagic.analysis import check_conditions

    a = analyse_loop(loop_of(DAILY))
    assert [e.root for e in a.effects] == ["daily"]
    assert [(c.name, c.types) for c in a.conditions] == [
        ("daily", ("pandas.core.frame.DataFrame", "pandas.DataFrame"))
    ]
    with pytest.raises(RefusedLoopError, match="both changes and reads") as info:
        check_conditions(a, {"daily": [1, 2]})
    assert info.value.lineno == 2 and info.value.name == "daily"
    with pytest.raises(RefusedLoopError):
        check_conditions(a, {})
    frame = type("DataFrame", (_Frame,), {"__module__": "pandas.core.frame"})
    sub = type("Mine", (frame,), {})  # a subclass of DataFrame is one
    check_conditions(a, {"daily": frame()})
    check_conditions(a, {"daily": sub()})


def test_frame_condition_is_checked_before_anything_runs() -> None:
    import parmagic

    ns = {"daily": [0] * 7, "days": list("abcdefg"), "ran": 0}
    with pytest.raises(RefusedLoopError, match="'daily'"):
        parmagic.run_cell("ran = 1\n" + DAILY, ns, backend="serial", progress=False)
    assert ns["ran"] == 0  # the kernel statement before the loop did not run either


def test_frame_column_from_its_index_matches_the_serial_loop() -> None:
    pd = pytest.importorskip("pandas")
    import parmagic

    def frame() -> object:
        return pd.DataFrame({"v": range(21)}, index=pd.date_range("2024-01-01", periods=21))

    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    serial = {"daily": frame(), "days": days}
    exec(DAILY, serial)
    ns = {"daily": frame(), "days": days}
    parmagic.run_cell(DAILY, ns, backend="threads", n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(ns["daily"], serial["daily"])


def test_continue_is_fine_and_inner_break_is_fine() -> None:
    a = analyse_loop(
        loop_of(
            "for x in xs:\n    if not x:\n        continue\n    for y in x:\n        if y:\n            break\n"
            "    out.append(x)\n"
        )
    )
    assert [e.root for e in a.effects] == ["out"]


def test_assigned_in_both_branches_is_fine() -> None:
    analyse_loop(
        loop_of(
            "for x in xs:\n    if x:\n        y = 1\n    else:\n        y = 2\n    out.append(y)\n"
        )
    )


def test_nested_function_may_read_a_later_local() -> None:
    analyse_loop(
        loop_of("for x in xs:\n    def g():\n        return y\n    y = x\n    out.append(g())\n")
    )
    analyse_loop(
        loop_of(
            "for x in xs:\n    def f(n):\n        return f(n - 1) if n else x\n    out.append(f(2))\n"
        )
    )


@pytest.mark.parametrize(
    "src",
    [
        "for i in xs:\n    g = lambda t: t + k\n    c = g(i)\n    k = c\n",
        "for x in xs:\n    def f():\n        return y\n    out.append(f())\n    y = x\n",
        "for x in xs:\n    out.append(sorted(x, key=lambda t: t + k))\n    k = 1\n",
        "for x in xs:\n    g = lambda t: t + k\n    out.append(list(map(g, x)))\n    k = 1\n",
    ],
    ids=["called", "def_called", "lambda_handed_over", "named_lambda_handed_over"],
)
def test_a_body_function_used_before_its_locals_are_bound_is_refused(src: str) -> None:
    """The plain loop's call would read the previous iteration's value (a worker has none)."""
    with pytest.raises(RefusedLoopError) as info:
        analyse_loop(loop_of(src))
    assert "used before this iteration assigns it" in str(info.value)


def test_plan_splits_kernel_statements_and_loops_in_order() -> None:
    plan = plan_cell("a = 1\nfor i in r:\n    out.append(i)\nb = 2\nsq = [i for i in r]\nb + 1\n")
    kinds = [type(s).__name__ for s in plan.steps]
    assert kinds == ["KernelStep", "LoopStep", "KernelStep", "LoopStep"]
    assert plan.loops[1].kind == "list" and not plan.loops[1].bind_locals
    assert plan.last_expr is not None


def test_whole_cell_is_analysed_before_running() -> None:
    with pytest.raises(RefusedLoopError) as info:
        plan_cell("ok = []\nfor i in r:\n    ok.append(i)\nfor j in r:\n    break\n")
    assert info.value.lineno == 5


def test_line_offset_counts_the_magic_line() -> None:
    with pytest.raises(RefusedLoopError) as info:
        plan_cell("for j in r:\n    break\n", line_offset=1)
    assert info.value.lineno == 3


def test_walrus_in_parallel_comprehension_is_refused() -> None:
    with pytest.raises(RefusedLoopError, match="assignment expression"):
        plan_cell("out = [(y := i) for i in r]\n")


def test_import_parmagic_does_not_import_ipython_or_ipywidgets() -> None:
    import subprocess
    import sys

    code = "import sys, parmagic; print('IPython' in sys.modules, 'ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
