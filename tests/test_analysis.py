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
