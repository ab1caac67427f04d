"""Pure rewriting, from source strings: a cell becomes kernel steps, loop steps and replays."""

from __future__ import annotations

import ast

from parmagic.rewrite import KernelStep, LoopStep, comprehension_to_loop, copy_tree, plan_cell


def test_a_cell_splits_into_kernel_and_loop_steps_in_order() -> None:
    plan = plan_cell("a = 1\nfor i in range(3):\n    print(i)\nb = 2\nb\n")
    kinds = [type(step) for step in plan.steps]
    assert kinds == [KernelStep, LoopStep, KernelStep]
    assert plan.last_expr is not None  # the trailing `b` is displayed, as in a plain cell


def test_line_numbers_are_the_cells_own_with_the_magic_line() -> None:
    plan = plan_cell("x = []\nfor i in range(3):\n    x.append(i)\n", line_offset=1)
    (loop,) = plan.loops
    assert loop.lineno == 3 and loop.source_line == "for i in range(3):"


def test_each_effect_gets_one_replay_that_reads_the_worker_values() -> None:
    plan = plan_cell("out, total = [], 0\nfor i in range(3):\n    out.append(i)\n    total += i\n")
    (loop,) = plan.loops
    replays = [ast.unparse(stmt) for stmt in loop.replays]
    assert replays == ["out.append(__pm_v[0])", "total += __pm_v[0]"]


def test_a_comprehension_is_a_loop_feeding_an_accumulator() -> None:
    comp = ast.parse("[x * 2 for x in xs if x]", mode="eval").body
    loop = comprehension_to_loop(comp)
    assert ast.unparse(loop) == "for x in xs:\n    if x:\n        __pm_acc.append(x * 2)"
    plan = plan_cell("ys = [x * 2 for x in xs if x]\n")
    (step,) = plan.loops
    assert step.kind == "list" and step.assign is not None and not step.bind_locals


def test_the_iterable_is_not_part_of_the_worker_code() -> None:
    plan = plan_cell("for i in range(10**12):\n    print(i)\n")
    (loop,) = plan.loops
    assert "range" not in loop.batch_code.co_consts[0].co_names  # evaluated once, in the kernel


def test_copies_of_a_loop_leave_out_what_libraries_hang_on_shared_nodes() -> None:
    """IPython's tracebacks (``executing``) set ``parent`` on every node of a file they show,
    the ``Load()`` singleton that every parsed tree shares included: copying a cell's loop
    must not drag that file's tree along (it made each cell take seconds after a traceback)."""
    import executing

    executing.Source.for_filename(executing.__file__)  # what showing a traceback there does
    cell = "out = []\nfor i in range(3):\n    out.append(i + 1)\n"
    loop = ast.parse(cell).body[1]
    shared = loop.body[0].value.func.value.ctx
    assert hasattr(shared, "parent")  # the premise: the singleton points into another tree
    body = copy_tree(loop.body)
    copied = [
        node for node in ast.walk(ast.Module(body, [])) if not isinstance(node, ast.expr_context)
    ]
    assert ast.unparse(ast.Module(body, [])) == "out.append(i + 1)"
    assert len(copied) == 9 and not any(hasattr(node, "parent") for node in copied)
    assert all(node.lineno == 3 for node in copied if isinstance(node, ast.stmt))
