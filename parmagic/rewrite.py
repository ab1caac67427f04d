"""Pure rewriting: a cell's AST becomes kernel statements, parallel loops and replays.

No IPython and no runtime state. ``plan_cell`` splits a cell into segments that
run in order: :class:`KernelStep` (plain statements, run in the kernel) and
:class:`LoopStep` (a top-level ``for`` loop or comprehension, run in parallel).
Each loop step carries the worker's batch function (``__pm_batch``) as a code
object, and one replay statement per effect for the kernel to apply in
iteration order. Line numbers are those of the cell as the user sees it.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from .analysis import RESERVED, LoopAnalysis, analyse_loop, effect_value_nodes

ACC = RESERVED + "acc"  # a comprehension's accumulator, replayed in the kernel
VALUES = RESERVED + "v"  # the worker-evaluated values of one effect
SLICE = RESERVED + "slice"  # the builtin slice, under a name the user cannot shadow
ITEM = RESERVED + "item"  # --cache: a cached iteration's item, bound to the loop target
#: auto-serial: the items of the rest of the loop, run in the kernel as the plain cell runs them
REST = RESERVED + "rest"

_COMP_METHODS = {ast.ListComp: "append", ast.SetComp: "add"}


@dataclass
class KernelStep:
    """Statements that run in the kernel, as they would without the magic."""

    code: CodeType
    first_line: int


@dataclass
class LoopStep:
    """One parallel loop: iterable, worker batch code, effect replays, and what to bind after."""

    kind: str  # "for", "list", "set" or "dict"
    lineno: int
    source_line: str
    iterable: CodeType  # evaluated once, in the kernel
    batch_code: CodeType  # module code defining __pm_batch, run in the worker
    replays: list[ast.stmt]  # effect id -> statement reading __pm_v[i] (kernel side)
    analysis: LoopAnalysis
    orelse: CodeType | None = None  # the loop's else clause, run in the kernel after it
    assign: CodeType | None = None  # comprehension: `targets = __pm_v` run in the kernel
    is_last_expr: bool = False  # comprehension whose value the cell displays
    bind_locals: bool = True  # for loops leave their locals behind; comprehensions do not
    #: --cache: the loop's kind, target and body as ast.unparse writes them (not its iterable)
    key_source: str = ""
    #: --cache: the target's names, and `target = __pm_item` (None: a target that is not names)
    target_names: tuple[str, ...] = ()
    bind_target: CodeType | None = None
    #: auto-serial: the plain loop over ``__pm_rest`` (a for loop: module code run in the
    #: kernel's namespace; a comprehension: code defining ``__pm_rest_loop(__pm_rest,
    #: __pm_acc)``, its own scope as the comprehension's)
    kernel_loop: CodeType | None = None


@dataclass
class CellPlan:
    """A whole cell, analysed before any of it runs."""

    steps: list[KernelStep | LoopStep] = field(default_factory=list)
    last_expr: CodeType | None = None  # a plain last expression, evaluated for display

    @property
    def loops(self) -> list[LoopStep]:
        """The parallel steps of the cell."""
        return [s for s in self.steps if isinstance(s, LoopStep)]


def copy_tree(node: Any) -> Any:
    """A copy of an AST (a node, or a list of them) through its fields only.

    Not ``copy.deepcopy``: libraries attach attributes to nodes (IPython's tracebacks, through
    ``executing``, set ``parent`` on every node of a file they show, the ``Load()`` and
    ``Store()`` singletons that every parsed tree shares included), so a deep copy of a cell's
    loop dragged in a whole library module's tree: seconds per cell after any traceback.
    """
    if isinstance(node, list):
        return [copy_tree(n) for n in node]
    if not isinstance(node, ast.AST) or isinstance(node, ast.expr_context):
        return node  # strings, numbers, None; contexts are shared singletons in parsed trees
    new = type(node)()
    for name in node._fields:
        if hasattr(node, name):
            setattr(new, name, copy_tree(getattr(node, name)))
    for name in node._attributes:
        if hasattr(node, name):
            setattr(new, name, getattr(node, name))
    return new


def plan_cell(
    source: str,
    filename: str = "<cell>",
    line_offset: int = 0,
    module_names: frozenset[str] = frozenset(),
) -> CellPlan:
    """Analyse and rewrite a whole cell; raises RefusedLoopError before anything runs.

    A cell run again as it was (same source, file name and module names) gets the plan
    it got before: a plan is never changed once made, and making one takes about a
    millisecond, a fifth of a short loop's whole run.
    """
    return _plan_cell(source, filename, line_offset, module_names)


@functools.lru_cache(maxsize=64)
def _plan_cell(
    source: str, filename: str, line_offset: int, module_names: frozenset[str]
) -> CellPlan:
    tree = ast.parse("\n" * line_offset + source, filename)  # a syntax error names its line
    lines = ("\n" * line_offset + source).splitlines()
    modules = module_names | _imported_names(tree)
    plan = CellPlan()
    pending: list[ast.stmt] = []
    body = tree.body
    for i, stmt in enumerate(body):
        is_last = i == len(body) - 1
        step = _loop_step(stmt, filename, lines, modules, is_last)
        if step is None and is_last and isinstance(stmt, ast.Expr):
            _flush(plan, pending, filename)
            plan.last_expr = compile(ast.Expression(stmt.value), filename, "eval")
            continue
        if step is None:
            pending.append(stmt)
            continue
        _flush(plan, pending, filename)
        plan.steps.append(step)
    _flush(plan, pending, filename)
    return plan


def _imported_names(tree: ast.Module) -> frozenset[str]:
    """Names that the cell's own top-level imports bind (modules, most likely)."""
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
    return frozenset(names)


def _flush(plan: CellPlan, pending: list[ast.stmt], filename: str) -> None:
    if pending:
        module = ast.Module(body=list(pending), type_ignores=[])
        plan.steps.append(KernelStep(compile(module, filename, "exec"), pending[0].lineno))
        pending.clear()


def _loop_step(
    stmt: ast.stmt, filename: str, lines: list[str], modules: frozenset[str], is_last: bool
) -> LoopStep | None:
    if isinstance(stmt, ast.For):
        return _for_step(stmt, filename, lines, modules)
    if isinstance(stmt, ast.Assign) and _is_comprehension(stmt.value):
        return _comprehension_step(stmt.value, stmt.targets, filename, lines, modules, False)
    if is_last and isinstance(stmt, ast.Expr) and _is_comprehension(stmt.value):
        return _comprehension_step(stmt.value, None, filename, lines, modules, True)
    return None


def _is_comprehension(node: ast.AST) -> bool:
    return isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp)


def _for_step(loop: ast.For, filename: str, lines: list[str], modules: frozenset[str]) -> LoopStep:
    analysis = analyse_loop(loop, modules)
    orelse = None
    if loop.orelse:
        orelse = compile(ast.Module(body=loop.orelse, type_ignores=[]), filename, "exec")
    return _step("for", loop, analysis, filename, lines, orelse=orelse)


def _comprehension_step(
    comp: ast.ListComp | ast.SetComp | ast.DictComp,
    targets: list[ast.expr] | None,
    filename: str,
    lines: list[str],
    modules: frozenset[str],
    is_last: bool,
) -> LoopStep:
    loop = comprehension_to_loop(comp)
    analysis = analyse_loop(loop, modules, hidden_roots=frozenset({ACC}))
    kind = {ast.ListComp: "list", ast.SetComp: "set", ast.DictComp: "dict"}[type(comp)]
    assign = None
    if targets is not None:
        stmt = ast.Assign(targets=targets, value=ast.Name(VALUES, ast.Load()))
        ast.copy_location(stmt, comp)
        assign = compile(ast.fix_missing_locations(ast.Module([stmt], [])), filename, "exec")
    step = _step(kind, loop, analysis, filename, lines, assign=assign, is_last_expr=is_last)
    step.bind_locals = False
    step.kernel_loop = build_kernel_comprehension(comp, filename)
    return step


def build_kernel_comprehension(
    comp: ast.ListComp | ast.SetComp | ast.DictComp, filename: str
) -> CodeType:
    """A comprehension's rest in the kernel: the comprehension itself over ``__pm_rest``,
    its values added to ``__pm_acc`` (code defining ``__pm_rest_loop(__pm_rest, __pm_acc)``).

    The comprehension's own loop (its own scope, its fast appends), not the for loop that
    the workers run: as fast as the plain comprehension.
    """
    plain = copy_tree(comp)
    plain.generators[0].iter = ast.copy_location(ast.Name(REST, ast.Load()), comp)
    method = "extend" if isinstance(comp, ast.ListComp) else "update"
    add = ast.Attribute(ast.Name(ACC, ast.Load()), method, ast.Load())
    func = _rest_loop_function([ast.Expr(ast.Call(add, [plain], []))])
    module = ast.fix_missing_locations(ast.Module([func], []))
    _copy_locations_down(module, comp)
    return compile(module, filename, "exec")


def comprehension_to_loop(comp: ast.ListComp | ast.SetComp | ast.DictComp) -> ast.For:
    """``[e for x in xs if c for y in x]`` -> ``for x in xs: if c: for y in x: acc.append(e)``."""
    for node in ast.walk(comp):
        if isinstance(node, ast.NamedExpr):
            from .analysis import refuse

            raise refuse(
                node,
                node.target.id,
                "an assignment expression (:=) in a parallel "
                "comprehension would bind a kernel name from a worker",
                "write the loop as a for loop",
            )
    acc = ast.Name(ACC, ast.Load())
    if isinstance(comp, ast.DictComp):
        sub = ast.Subscript(value=acc, slice=comp.key, ctx=ast.Store())
        innermost: ast.stmt = ast.Assign(targets=[sub], value=comp.value)
    else:
        method = _COMP_METHODS[type(comp)]
        call = ast.Call(ast.Attribute(acc, method, ast.Load()), [comp.elt], [])
        innermost = ast.Expr(call)
    ast.copy_location(innermost, comp)
    body: list[ast.stmt] = [innermost]
    for gen in reversed(comp.generators[1:]):
        body = _guarded(gen.ifs, body, comp)
        body = [ast.copy_location(ast.For(gen.target, gen.iter, body, []), comp)]
    first = comp.generators[0]
    if first.is_async:
        from .analysis import refuse

        raise refuse(
            comp,
            "async for",
            "asynchronous comprehensions cannot run in a worker",
            "run this cell without %%parallel",
        )
    loop = ast.For(first.target, first.iter, _guarded(first.ifs, body, comp), [])
    return ast.fix_missing_locations(ast.copy_location(loop, comp))


def _guarded(ifs: list[ast.expr], body: list[ast.stmt], where: ast.AST) -> list[ast.stmt]:
    for test in reversed(ifs):
        body = [ast.copy_location(ast.If(test, body, []), where)]
    return body


def _step(
    kind: str, loop: ast.For, analysis: LoopAnalysis, filename: str, lines: list[str], **extra
) -> LoopStep:
    iterable = compile(ast.Expression(loop.iter), filename, "eval")
    batch_code, replays = build_batch_function(loop, analysis, filename)
    source_line = lines[loop.lineno - 1].strip() if 0 < loop.lineno <= len(lines) else ""
    step = LoopStep(
        kind, loop.lineno, source_line, iterable, batch_code, replays, analysis, **extra
    )
    step.key_source, step.target_names, step.bind_target = _cache_parts(kind, loop, filename)
    step.kernel_loop = build_kernel_loop(loop, kind, filename)
    return step


def build_kernel_loop(loop: ast.For, kind: str, filename: str) -> CodeType:
    """The loop as the plain cell would run it, over the items in ``__pm_rest``.

    Auto-serial runs the rest of a loop too cheap for workers with this: the user's own
    statements at their own lines, so effects, output, warnings and errors are the plain
    cell's, at the plain loop's speed. A comprehension's loop runs in a function (its
    names stay its own, as in the comprehension) that fills ``__pm_acc``.
    """
    rest = ast.Name(REST, ast.Load())
    plain = ast.For(copy_tree(loop.target), rest, copy_tree(loop.body), [])
    ast.copy_location(plain, loop)
    body: ast.stmt = plain
    if kind != "for":
        body = ast.copy_location(_rest_loop_function([plain]), loop)
    module = ast.fix_missing_locations(ast.Module([body], []))
    _copy_locations_down(module, loop)
    return compile(module, filename, "exec")


def _cache_parts(
    kind: str, loop: ast.For, filename: str
) -> tuple[str, tuple[str, ...], CodeType | None]:
    """What ``--cache`` keys a loop by (kind, target, body; not the iterable), the target's
    names, and the code that binds them to an item (None for a target that is not names)."""
    bare = ast.For(target=loop.target, iter=ast.Name("_", ast.Load()), body=loop.body, orelse=[])
    ast.copy_location(bare, loop)
    key_source = f"{kind}\n{ast.unparse(bare)}"
    leaves = [n for n in ast.walk(loop.target) if not isinstance(n, ast.expr_context)]
    names = tuple(n.id for n in leaves if isinstance(n, ast.Name))
    if not all(isinstance(n, ast.Name | ast.Tuple | ast.List | ast.Starred) for n in leaves):
        return key_source, names, None
    target = copy_tree(loop.target)
    assign = ast.Assign(targets=[target], value=ast.Name(ITEM, ast.Load()))
    module = ast.fix_missing_locations(ast.Module([ast.copy_location(assign, loop)], []))
    return key_source, names, compile(module, filename, "exec")


def build_batch_function(
    loop: ast.For, analysis: LoopAnalysis, filename: str
) -> tuple[CodeType, list[ast.stmt]]:
    """The worker's ``__pm_batch(items, rec, mark)`` and the kernel's replay statements.

    In the worker, each effect statement becomes ``rec((k, effect id, values))``;
    in the kernel, its replay is the same statement reading ``__pm_v[i]``.
    """
    body = copy_tree(loop.body)
    replays: list[ast.stmt] = [None] * len(analysis.effects)  # type: ignore[list-item]
    by_position = {_position(e.stmt): e for e in analysis.effects}
    body = _EffectRecorder(by_position, replays).visit_block(body)
    clock = ast.Call(ast.Name(RESERVED + "clock", ast.Load()), [], [])
    mark = ast.Expr(ast.Call(ast.Name(RESERVED + "mark", ast.Load()), [clock], []))
    target = copy_tree(loop.target)
    inner = ast.For(target, ast.Name(RESERVED + "items", ast.Load()), [mark, *body], [])
    ret = ast.Return(ast.Call(ast.Name("locals", ast.Load()), [], []))
    args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(RESERVED + n) for n in ("items", "rec", "mark")],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    func = _funcdef(RESERVED + "batch", args, [inner, ret])
    for node in (func, inner, mark, ret):
        ast.copy_location(node, loop)
    module = ast.fix_missing_locations(ast.Module([func], []))
    _copy_locations_down(module, loop)
    return compile(module, filename, "exec"), replays


def _rest_loop_function(body: list[ast.stmt]) -> ast.FunctionDef:
    """``def __pm_rest_loop(__pm_rest, __pm_acc): <body>``: a comprehension's rest, in a
    scope of its own as the comprehension's."""
    args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(REST), ast.arg(ACC)],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    return _funcdef(REST + "_loop", args, body)


def _copy_locations_down(tree: ast.AST, default: ast.AST) -> None:
    for node in ast.walk(tree):
        if hasattr(node, "lineno") and getattr(node, "lineno", None) is None:
            ast.copy_location(node, default)


def _position(node: ast.AST) -> tuple[int, int, int | None, int | None]:
    return (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)


class _EffectRecorder:
    """Replaces effect statements in a copied body by recorder calls, building their replays."""

    def __init__(self, by_position: dict, replays: list[ast.stmt]):
        self.by_position = by_position
        self.replays = replays
        self.single = len(replays) == 1

    def visit_block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out = []
        for stmt in stmts:
            effect = self.by_position.get(_position(stmt)) if isinstance(stmt, ast.stmt) else None
            if effect is not None and type(stmt) is type(effect.stmt):
                out.append(self.record(stmt, effect.eid))
                continue
            for name in ("body", "orelse", "finalbody"):
                block = getattr(stmt, name, None)
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    setattr(stmt, name, self.visit_block(block))
            for handler in getattr(stmt, "handlers", []):
                handler.body = self.visit_block(handler.body)
            for case in getattr(stmt, "cases", []):
                case.body = self.visit_block(case.body)
            out.append(stmt)
        return out

    def record(self, stmt: ast.stmt, eid: int) -> ast.stmt:
        """``__pm_rec((eid, (values...)))`` in the worker (bare values if it is the only
        effect of the loop); the replay statement for the kernel."""
        replay = copy_tree(stmt)
        worker_values = []
        for i, node in enumerate(effect_value_nodes(replay)):
            worker_values.append(_as_value(copy_tree(node)))
            _replace(replay, node, _placeholder(i, node))
        self.replays[eid] = replay
        values = ast.Tuple(worker_values, ast.Load())
        # a loop with one effect site records bare values (less to pickle)
        rec_arg = values if self.single else ast.Tuple([ast.Constant(eid), values], ast.Load())
        call = ast.Expr(ast.Call(ast.Name(RESERVED + "rec", ast.Load()), [rec_arg], []))
        return ast.copy_location(call, stmt)


def _as_value(node: ast.expr) -> ast.expr:
    """A worker-side expression for ``node``: slices become slice objects, *args a tuple."""
    if isinstance(node, ast.Slice):
        parts = [
            _as_value(p) if p is not None else ast.Constant(None)
            for p in (node.lower, node.upper, node.step)
        ]
        return ast.copy_location(ast.Call(ast.Name(SLICE, ast.Load()), parts, []), node)
    if isinstance(node, ast.Tuple):
        return ast.copy_location(ast.Tuple([_as_value(e) for e in node.elts], ast.Load()), node)
    if isinstance(node, ast.Starred):
        return ast.copy_location(ast.Call(ast.Name("tuple", ast.Load()), [node.value], []), node)
    return node


def _placeholder(i: int, original: ast.expr) -> ast.expr:
    value = ast.Subscript(ast.Name(VALUES, ast.Load()), ast.Constant(i), ast.Load())
    if isinstance(original, ast.Starred):
        value = ast.Starred(value, ast.Load())
    return ast.copy_location(value, original)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    """Put ``new`` where ``old`` is in ``tree`` (by identity)."""
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list):
                for j, item in enumerate(value):
                    if item is old:
                        value[j] = new
                        return


def replay_module(replays: list[ast.stmt], filename: str) -> CodeType:
    """Kernel code defining ``__pm_make(__pm_acc)`` that returns one replay function per effect.

    Each replay function takes the effect's values; names it rebinds are declared
    global, so ``total += v`` changes the kernel's ``total``.
    """
    makers = []
    for eid, stmt in enumerate(replays):
        rebinds = sorted({t.id for t in _rebound(stmt)} - {ACC})
        body: list[ast.stmt] = [ast.Global(rebinds)] if rebinds else []
        body.append(stmt)
        args = ast.arguments(
            posonlyargs=[], args=[ast.arg(VALUES)], kwonlyargs=[], kw_defaults=[], defaults=[]
        )
        makers.append(_funcdef(f"{RESERVED}r{eid}", args, body))
    ret = ast.Return(
        ast.List([ast.Name(f"{RESERVED}r{i}", ast.Load()) for i in range(len(replays))], ast.Load())
    )
    outer_args = ast.arguments(
        posonlyargs=[], args=[ast.arg(ACC)], kwonlyargs=[], kw_defaults=[], defaults=[]
    )
    outer = _funcdef(RESERVED + "make", outer_args, [*makers, ret])
    where = replays[0] if replays else None
    module = ast.Module([outer], [])
    if where is not None:
        for node in ast.walk(module):
            if "lineno" in node._attributes and not hasattr(node, "lineno"):
                ast.copy_location(node, where)
    return compile(ast.fix_missing_locations(module), filename, "exec")


def _funcdef(name: str, args: ast.arguments, body: list[ast.stmt]) -> ast.FunctionDef:
    extra = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    return ast.FunctionDef(
        name=name, args=args, body=body, decorator_list=[], returns=None, **extra
    )


def _rebound(stmt: ast.stmt) -> list[ast.Name]:
    if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target]
    if isinstance(stmt, ast.Assign):
        return [t for t in stmt.targets if isinstance(t, ast.Name)]
    return []
