"""Static analysis of a parallel loop body: which names are local, captured or effects.

Pure AST work: no IPython, no parmagic runtime. ``analyse_loop`` classifies the
names of one ``for`` loop's body as SPEC §2 describes and raises
:class:`~parmagic.errors.RefusedLoopError` for every construct whose parallel
run could differ from the serial one. Every refusal names the line, the name
and what to do instead.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from .errors import RefusedLoopError

#: Prefix of the names the rewriter introduces.
RESERVED = "__pm_"

#: Methods that change the object they are called on (lists, dicts, sets, deques, arrays).
MUTATING_METHODS = frozenset(
    """append extend insert pop remove clear sort reverse add discard update setdefault
    popitem difference_update intersection_update symmetric_difference_update appendleft
    extendleft popleft rotate put put_nowait fill resize itemset""".split()
)

#: Builtins whose result depends on the scope they run in.
DYNAMIC_SCOPE_CALLS = frozenset({"locals", "globals", "vars", "exec", "eval"})

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass
class EffectSite:
    """A body statement that changes a kernel object; the kernel replays it."""

    stmt: ast.stmt
    root: str  # the kernel name the statement changes
    eid: int = 0


@dataclass
class TypeCondition:
    """The loop may run only if kernel name ``name`` holds an instance of one of ``types``.

    The analysis is pure (no runtime types): where a body is safe for some types
    only, it says so here, and the engine checks before anything runs, refusing
    with ``error`` otherwise.
    """

    name: str
    types: tuple[str, ...]  # "module.QualName" of the classes (or their bases) allowed
    error: RefusedLoopError

    def holds(self, namespace: dict) -> bool:
        """True when ``namespace[name]`` is an instance of one of the types (by MRO name)."""
        if self.name not in namespace:
            return False
        mro = type(namespace[self.name]).__mro__
        return any(f"{c.__module__}.{c.__qualname__}" in self.types for c in mro)


@dataclass
class LoopAnalysis:
    """The classification of one loop body's names."""

    locals: set[str] = field(default_factory=set)
    captured: set[str] = field(default_factory=set)
    effects: list[EffectSite] = field(default_factory=list)
    #: conditions on the kernel's objects, checked by the engine before the loop runs
    conditions: list[TypeCondition] = field(default_factory=list)
    #: the body seeds a generator itself (``np.random.seed(i)``): its draws are the plain ones
    seeds_itself: bool = False


#: Classes whose column assignment (``df[key] = value``) leaves ``df.index`` as it was.
#: (pandas 3 names its public classes after the package: ``pandas.DataFrame``.)
FRAME_TYPES = ("pandas.core.frame.DataFrame", "pandas.DataFrame")

#: Calls that copy their argument at once: the loop then iterates over the copy.
COPYING_CALLS = frozenset({"list", "tuple", "sorted", "set", "frozenset", "len"})


def refuse(node: ast.AST, name: str | None, reason: str, fix: str) -> RefusedLoopError:
    """Build the refusal for ``node``: line, name, reason and what to do instead."""
    line = getattr(node, "lineno", None)
    where = f"line {line}" if line is not None else "the loop"
    subject = f" '{name}'" if name else ""
    return RefusedLoopError(
        f"%%parallel cannot run this loop ({where}{subject}): {reason}; {fix}", line, name
    )


def effect_path_root(node: ast.AST) -> str | None:
    """Root name of a plain path (``a``, ``a.b``, ``a[k].c``), or None if it holds a call."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def loose_root(node: ast.AST) -> str | None:
    """Root name of a path that may go through calls (``d.get(k).append``)."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def target_names(target: ast.AST) -> set[str]:
    """Names bound by an assignment or loop target."""
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _walk_scope(nodes: list[ast.AST]):
    """Yield nodes of the body's own scope, not entering nested functions, classes or lambdas."""
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, _SCOPES):
            # decorators, defaults and bases run in this scope; the body does not
            children = _scope_header(node)
        stack.extend(reversed(children))


def _scope_header(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Lambda):
        return list(node.args.defaults) + [d for d in node.args.kw_defaults if d]
    if isinstance(node, ast.ClassDef):
        return node.decorator_list + node.bases + [k.value for k in node.keywords]
    args = node.args
    return node.decorator_list + list(args.defaults) + [d for d in args.kw_defaults if d]


def bound_names(body: list[ast.stmt]) -> set[str]:
    """Names a body binds in its own scope (augmented assignment excluded: it may be an effect)."""
    names: set[str] = set()
    for node in _walk_scope(body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    # a name bound only by augmented assignment (``total += x``) is a kernel name: an effect
    return names - _aug_only(body)


def _aug_only(body: list[ast.stmt]) -> set[str]:
    aug_targets = {
        id(n.target): n.target.id
        for n in _walk_scope(body)
        if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)
    }
    plain = {
        n.id
        for n in _walk_scope(body)
        if isinstance(n, ast.Name)
        and isinstance(n.ctx, ast.Store | ast.Del)
        and id(n) not in aug_targets
    }
    return set(aug_targets.values()) - plain


def all_reads(nodes: list[ast.AST]) -> set[str]:
    """Every name loaded anywhere under ``nodes``, nested scopes included."""
    out: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                out.add(node.id)
    return out


def analyse_loop(
    loop: ast.For,
    module_names: frozenset[str] = frozenset(),
    hidden_roots: frozenset[str] = frozenset(),
) -> LoopAnalysis:
    """Classify the body of ``loop`` and refuse what cannot run in parallel.

    ``module_names`` are kernel names bound to modules: calls on them run in the
    worker (``time.sleep(1)``), not replayed. ``hidden_roots`` are names the
    rewriter introduced as effect targets (a comprehension's accumulator).
    """
    _check_target(loop.target)
    body = loop.body
    _check_reserved(body, hidden_roots)
    _check_forbidden_statements(body)
    local = bound_names(body) | target_names(loop.target)
    effects = _find_effects(body, local, module_names)
    _check_iterable_not_changed(loop, effects)
    conditions = _check_effect_roots_not_read(body, effects)
    _check_mutators_in_expressions(body, local, module_names, effects)
    _check_read_before_assignment(body, local, target_names(loop.target))
    captured = (all_reads(body) - local) | {e.root for e in effects}
    for i, effect in enumerate(effects):
        effect.eid = i
    return LoopAnalysis(
        locals=local,
        captured=captured - hidden_roots,
        effects=effects,
        conditions=conditions,
        seeds_itself=_seeds_itself(body),
    )


def _seeds_itself(body: list[ast.stmt]) -> bool:
    """Whether a top-level statement of the body calls a ``.seed(...)`` method
    (``np.random.seed(i)``, ``random.seed(k)``, ``rng.seed(i)``)."""
    for stmt in body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            if call.func.attr == "seed":
                return True
    return False


def _check_target(target: ast.AST) -> None:
    if not all(
        isinstance(n, ast.Name | ast.Tuple | ast.List | ast.Starred | ast.expr_context)
        for n in ast.walk(target)
    ):
        raise refuse(
            target,
            None,
            "the loop target is not a name or a tuple of names",
            "loop over a plain name and assign the attribute or item in the body",
        )


def _check_reserved(body: list[ast.stmt], hidden_roots: frozenset[str]) -> None:
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if (
            isinstance(node, ast.Name)
            and node.id.startswith(RESERVED)
            and node.id not in hidden_roots
        ):
            raise refuse(
                node, node.id, "names starting with __pm_ are reserved by parmagic", "rename it"
            )


def _check_forbidden_statements(body: list[ast.stmt]) -> None:
    for node in _walk_scope(body):
        if isinstance(node, ast.Return):
            raise refuse(
                node,
                "return",
                "'return' leaves the loop early",
                "compute a flag and test it after the loop",
            )
        if isinstance(node, ast.Global | ast.Nonlocal):
            kw = "global" if isinstance(node, ast.Global) else "nonlocal"
            raise refuse(
                node,
                ", ".join(node.names),
                f"'{kw}' rebinds a kernel name from a worker",
                "collect values with results.append(...) and combine them after the loop",
            )
        if isinstance(node, ast.Yield | ast.YieldFrom):
            raise refuse(
                node, "yield", "'yield' makes the cell a generator", "build a list instead"
            )
        if isinstance(node, ast.Await | ast.AsyncFor | ast.AsyncWith):
            raise refuse(
                node,
                "await",
                "asynchronous code cannot run in a worker",
                "run this loop without %%parallel",
            )
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in DYNAMIC_SCOPE_CALLS
        ):
            raise refuse(
                node,
                node.func.id,
                f"{node.func.id}() sees a different scope in a worker",
                "name the variables explicitly",
            )
    for node in _loop_level(body):
        if isinstance(node, ast.Break):
            raise refuse(
                node,
                "break",
                "'break' makes later iterations depend on earlier ones",
                "filter the items before the loop, or run it without %%parallel",
            )


def _loop_level(body: list[ast.stmt]):
    """Statements whose break/continue would act on the parallel loop itself."""
    stack = list(body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.For | ast.While | ast.AsyncFor):
            stack.extend(node.orelse)  # the inner loop's else belongs to our level
            continue
        if isinstance(node, _SCOPES):
            continue
        stack.extend(
            c
            for c in ast.iter_child_nodes(node)
            if isinstance(c, ast.stmt | ast.excepthandler | ast.match_case)
        )


def _statements(body: list[ast.stmt]):
    """Every statement of the body's own scope, nested blocks included."""
    for node in _walk_scope(body):
        if isinstance(node, ast.stmt):
            yield node


def _find_effects(
    body: list[ast.stmt], local: set[str], module_names: frozenset[str]
) -> list[EffectSite]:
    effects = []
    for stmt in _statements(body):
        root = _effect_root(stmt, local, module_names)
        if root is not None:
            effects.append(EffectSite(stmt=stmt, root=root))
    return effects


def _effect_root(stmt: ast.stmt, local: set[str], module_names: frozenset[str]) -> str | None:
    """The kernel name ``stmt`` changes, if it is an effect statement."""

    def kernel_root(node: ast.AST) -> str | None:
        root = effect_path_root(node)
        return root if root is not None and root not in local else None

    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        func = stmt.value.func
        if isinstance(func, ast.Attribute):
            root = kernel_root(func.value)
            if root is not None and root not in module_names:
                return root
        return None
    if isinstance(stmt, ast.AugAssign):
        return kernel_root(stmt.target)
    targets = _assign_targets(stmt)
    if targets is None:
        return None
    roots = [
        kernel_root(t) if isinstance(t, ast.Attribute | ast.Subscript) else None for t in targets
    ]
    if all(r is None for r in roots):
        return None
    if (
        any(r is None for r in roots)
        or any(r in module_names for r in roots)
        or len(set(roots)) > 1
    ):
        raise refuse(
            stmt,
            next((r for r in roots if r), None),
            "one statement assigns both to loop locals and to kernel objects",
            "split it into one assignment per target",
        )
    return roots[0]


def _assign_targets(stmt: ast.stmt) -> list[ast.AST] | None:
    if isinstance(stmt, ast.Assign):
        flat = []
        for t in stmt.targets:
            flat.extend(t.elts if isinstance(t, ast.Tuple | ast.List) else [t])
        return flat
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return [stmt.target]
    if isinstance(stmt, ast.Delete):
        return list(stmt.targets)
    return None


def effect_value_nodes(stmt: ast.stmt) -> list[ast.expr]:
    """The sub-expressions of an effect statement that the worker evaluates, in evaluation order."""
    if isinstance(stmt, ast.Expr):
        call = stmt.value
        return _path_indexes(call.func.value) + list(call.args) + [k.value for k in call.keywords]
    if isinstance(stmt, ast.AugAssign):
        return _path_indexes(stmt.target) + [stmt.value]
    if isinstance(stmt, ast.Delete):
        return [n for t in stmt.targets for n in _path_indexes(t)]
    value = [stmt.value]
    targets = _assign_targets(stmt) or []
    return value + [n for t in targets for n in _path_indexes(t)]


def _path_indexes(node: ast.AST) -> list[ast.expr]:
    """Subscript indexes along a path, from the root outwards."""
    out: list[ast.expr] = []
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Subscript):
            out.append(node.slice)
        node = node.value
    return list(reversed(out))


def _check_iterable_not_changed(loop: ast.For, effects: list[EffectSite]) -> None:
    """Refuse a body that changes the object the loop iterates over (``for x in xs: xs.append(x)``).

    The serial loop would see the change as it goes (more items, fewer, or a
    RuntimeError); the kernel draws items lazily while it commits effects. A
    copy made at once (``list(xs)``, ``sorted(d)``, ``len(xs)``) is fine when
    the body changes only the object itself, not what its items hold.
    """
    roots = {e.root for e in effects}
    if not roots:
        return
    copied = _copied_name_nodes(loop.iter)
    for node in ast.walk(loop.iter):
        if not (isinstance(node, ast.Name) and node.id in roots):
            continue
        own = [e.stmt for e in effects if e.root == node.id]
        if all(_item_assignment(stmt) for stmt in own):
            continue  # xs[i] = v, df.loc[i, "c"] = v: the items change, not what is iterated
        shallow = all(_changes_only_itself(stmt) for stmt in own)
        if id(node) in copied and shallow:
            continue
        raise refuse(
            node,
            node.id,
            "the body changes the object the loop iterates over, which the serial loop would "
            "see change as it goes",
            f"loop over a copy (for ... in list({node.id}):), or collect the changes and apply "
            "them after the loop",
        )


def _item_assignment(stmt: ast.stmt) -> bool:
    """``x[k] = v`` or ``x[k] += v``, also through ``.loc``/``.iloc``/``.at``/``.iat``: the
    iteration over ``x`` (its positions, a frame's rows) goes on as in the plain loop."""
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    for target in targets:
        if not isinstance(target, ast.Subscript):
            return False
        base = target.value
        if isinstance(base, ast.Attribute) and base.attr in ("loc", "iloc", "at", "iat"):
            base = base.value
        if not isinstance(base, ast.Name):
            return False
    return isinstance(stmt, ast.Assign | ast.AugAssign)


def _copied_name_nodes(expr: ast.AST) -> set[int]:
    """Names read only as the argument of a copying call: ``list(xs)``, ``sorted(d.items())``."""
    out = set()
    for node in ast.walk(expr):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in COPYING_CALLS
            and len(node.args) == 1
            and not node.keywords
        ):
            continue
        arg = node.args[0]
        if (
            isinstance(arg, ast.Call)
            and isinstance(arg.func, ast.Attribute)
            and arg.func.attr in ("keys", "values", "items")
            and not arg.args
        ):
            arg = arg.func.value
        if isinstance(arg, ast.Name):
            out.add(id(arg))
    return out


def _changes_only_itself(stmt: ast.stmt) -> bool:
    """The effect changes its root object itself (``xs.append``, ``d[k] = v``), not its items."""
    if isinstance(stmt, ast.Expr):
        return isinstance(stmt.value.func.value, ast.Name)
    if isinstance(stmt, ast.AugAssign):
        return isinstance(stmt.target, ast.Name)
    targets = _assign_targets(stmt) or []
    return all(
        isinstance(t, ast.Subscript | ast.Attribute) and isinstance(t.value, ast.Name)
        for t in targets
    )


def _check_effect_roots_not_read(
    body: list[ast.stmt], effects: list[EffectSite]
) -> list[TypeCondition]:
    """Refuse a kernel object the body both changes and reads; return the conditions of the
    reads that are safe for some types only (a DataFrame's new column from its index)."""
    roots = {e.root for e in effects}
    if not roots:
        return []
    allowed = set()
    for e in effects:
        allowed.update(id(n) for n in _root_name_nodes(e.stmt))
    module = ast.Module(body=body, type_ignores=[])
    parents = {id(c): p for p in ast.walk(module) for c in ast.iter_child_nodes(p)}
    read: dict[str, list[ast.Name]] = {}
    for node in ast.walk(module):
        if isinstance(node, ast.Name) and node.id in roots and id(node) not in allowed:
            read.setdefault(node.id, []).append(node)
    conditions = []
    for root, nodes in read.items():
        error = refuse(
            nodes[0],
            root,
            "the loop both changes and reads this kernel object, so each iteration would see "
            "the workers' stale copy",
            "read it after the loop, or run the loop without %%parallel",
        )
        if not _frame_columns_from_index(root, nodes, effects, parents):
            raise error
        conditions.append(TypeCondition(root, FRAME_TYPES, error))
    return conditions


def _frame_columns_from_index(
    root: str, reads: list[ast.Name], effects: list[EffectSite], parents: dict[int, ast.AST]
) -> bool:
    """True when the body only assigns items of ``root`` (``df[key] = value``) and only reads
    ``root.index`` (not calling it): safe for a DataFrame, whose columns are not its index."""
    for e in effects:
        if e.root != root:
            continue
        stmt = e.stmt
        if not (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Subscript)
            and isinstance(stmt.targets[0].value, ast.Name)
        ):
            return False
    for node in reads:
        attr = parents.get(id(node))
        if not (
            isinstance(attr, ast.Attribute)
            and attr.attr == "index"
            and isinstance(attr.ctx, ast.Load)
        ):
            return False
        call = parents.get(id(attr))
        if isinstance(call, ast.Call) and call.func is attr:
            return False
    return True


def check_conditions(analysis: LoopAnalysis, namespace: dict) -> None:
    """Refuse, with the refusal the analysis deferred, a loop whose condition does not hold."""
    for condition in analysis.conditions:
        if not condition.holds(namespace):
            raise condition.error


def check_plan_conditions(steps: list, namespace: dict) -> None:
    """Before a cell runs: check the loops' conditions on names no earlier step may rebind.

    ``steps`` are a cell plan's steps (loop steps carry ``analysis``, kernel steps
    ``code``). A name an earlier kernel step mentions is checked when its loop
    starts instead (the engine calls :func:`check_conditions` there too).
    """
    mentioned: set[str] = set()
    for step in steps:
        analysis = getattr(step, "analysis", None)
        if analysis is None:
            mentioned.update(_code_names(step.code))
            continue
        for condition in analysis.conditions:
            if condition.name not in mentioned and not condition.holds(namespace):
                raise condition.error
        mentioned.update(analysis.locals)


def _code_names(code: object) -> set[str]:
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(getattr(c, "co_names", ()))
        names.update(getattr(c, "co_varnames", ()))
        stack.extend(k for k in getattr(c, "co_consts", ()) if hasattr(k, "co_names"))
    return names


def _root_name_nodes(stmt: ast.stmt) -> list[ast.Name]:
    """The Name nodes at the root of each changed path of an effect statement."""
    if isinstance(stmt, ast.Expr):
        paths = [stmt.value.func.value]
    elif isinstance(stmt, ast.AugAssign):
        paths = [stmt.target]
    else:
        paths = _assign_targets(stmt) or []
    out = []
    for path in paths:
        while isinstance(path, ast.Attribute | ast.Subscript):
            path = path.value
        if isinstance(path, ast.Name):
            out.append(path)
    return out


def _check_mutators_in_expressions(
    body: list[ast.stmt], local: set[str], module_names: frozenset[str], effects: list[EffectSite]
) -> None:
    effect_calls = {id(e.stmt.value) for e in effects if isinstance(e.stmt, ast.Expr)}
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if id(node) in effect_calls or node.func.attr not in MUTATING_METHODS:
            continue
        root = loose_root(node.func.value)
        if root is None or root in local or root in module_names:
            continue
        raise refuse(
            node,
            root,
            f".{node.func.attr}() changes a kernel object inside an expression or a nested "
            "function, and the change would stay in the worker",
            f"call it as a statement of its own (e.g. {root}.{node.func.attr}(...)) or after the loop",
        )


def _check_read_before_assignment(
    body: list[ast.stmt], local: set[str], loop_targets: set[str]
) -> None:
    _FlowChecker(local).block(body, set(loop_targets))


class _FlowChecker:
    """Refuses a read of a loop local that may happen before this iteration assigns it."""

    def __init__(self, local: set[str]):
        self.local = local
        #: a body function's name -> the loop locals it reads when called (checked where the
        #: name is used: a call, or a hand-over to one, must not come before they are bound)
        self.functions: dict[str, list[tuple[str, ast.AST]]] = {}

    def block(self, stmts: list[ast.stmt], defined: set[str] | None) -> set[str] | None:
        """Return the names surely bound after ``stmts``, or None if control cannot fall through."""
        for stmt in stmts:
            if defined is None:
                return None
            defined = self.stmt(stmt, defined)
        return defined

    def reads(
        self, node: ast.AST | None, defined: set[str], extra_bound: set[str] = frozenset()
    ) -> set[str]:
        """Check the reads of an expression evaluated now; return the names it binds (walrus)."""
        if node is None:
            return set()
        walrus = {n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr)}
        for name, at in _immediate_reads(node):
            if (
                name in self.local
                and name not in defined
                and name not in walrus
                and name not in extra_bound
            ):
                raise refuse(
                    at,
                    name,
                    "it is read before this iteration assigns it, so it depends on the previous iteration",
                    "assign it at the start of the body, or run the loop without %%parallel",
                )
        now = defined | walrus | extra_bound
        for name, _ in _immediate_reads(node):
            self.used(name, now)
        for fn in _nested_functions(node):  # a lambda used where it is made
            self.used_reads(_local_reads(fn, self.local), now)
        return walrus

    def used(self, function: str, defined: set[str]) -> None:
        """A body function is used (called, or handed to a call) here."""
        self.used_reads(self.functions.get(function, []), defined)

    def used_reads(self, reads: list[tuple[str, ast.AST]], defined: set[str]) -> None:
        """A function that reads loop locals runs now: each must be bound in this iteration
        (the plain loop would read the previous iteration's value; a worker, none)."""
        for name, at in reads:
            if name not in defined:
                raise refuse(
                    at,
                    name,
                    "a function or lambda of the body reads it and is used before this "
                    "iteration assigns it, so it depends on the previous iteration",
                    "assign it before the function is used, or pass it as an argument",
                )

    def made(self, name: str, fn: ast.AST | None) -> None:
        """``name`` is bound to the body function ``fn`` (None: to something else)."""
        if fn is None:
            self.functions.pop(name, None)
        else:
            self.functions[name] = [(n, at) for n, at in _local_reads(fn, self.local) if n != name]

    def stmt(self, stmt: ast.stmt, defined: set[str]) -> set[str] | None:
        """Check one statement; return the names surely bound after it (None: no fall-through)."""
        handler = getattr(self, "_" + type(stmt).__name__, None)
        if handler is not None:
            return handler(stmt, defined)
        bound = set()
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.expr):
                bound |= self.reads(child, defined | bound)
        return defined | bound

    def _Continue(self, stmt: ast.Continue, defined: set[str]) -> None:
        return None

    def _Raise(self, stmt: ast.Raise, defined: set[str]) -> None:
        self.reads(stmt.exc, defined)
        self.reads(stmt.cause, defined)
        return None

    def _Assign(self, stmt: ast.Assign, defined: set[str]) -> set[str]:
        value = stmt.value
        if isinstance(value, ast.Lambda) and all(isinstance(t, ast.Name) for t in stmt.targets):
            for d in _scope_header(value):  # made now, run later: checked where it is used
                self.reads(d, defined)
            bound: set[str] = set()
        else:
            bound = self.reads(value, defined)
        for t in stmt.targets:
            self._store_target_reads(t, defined | bound)
            for name in target_names(t):
                self.made(name, value if isinstance(value, ast.Lambda) else None)
        return defined | bound | {n for t in stmt.targets for n in target_names(t)}

    def _AnnAssign(self, stmt: ast.AnnAssign, defined: set[str]) -> set[str]:
        bound = self.reads(stmt.value, defined)
        if stmt.value is None:
            return defined
        self._store_target_reads(stmt.target, defined | bound)
        return defined | bound | target_names(stmt.target)

    def _AugAssign(self, stmt: ast.AugAssign, defined: set[str]) -> set[str]:
        bound = self.reads(stmt.value, defined)
        target = stmt.target
        if isinstance(target, ast.Name):
            self.reads(
                ast.Name(id=target.id, ctx=ast.Load(), lineno=target.lineno, col_offset=0), defined
            )
            return defined | bound
        self._store_target_reads(target, defined | bound)
        return defined | bound

    def _Delete(self, stmt: ast.Delete, defined: set[str]) -> set[str]:
        for t in stmt.targets:
            if isinstance(t, ast.Name):
                self.reads(
                    ast.Name(id=t.id, ctx=ast.Load(), lineno=t.lineno, col_offset=0), defined
                )
            else:
                self._store_target_reads(t, defined)
        return defined - {t.id for t in stmt.targets if isinstance(t, ast.Name)}

    def _store_target_reads(self, target: ast.AST, defined: set[str]) -> None:
        """A store into ``x[i]`` or ``x.a`` reads ``x`` and ``i``."""
        if isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self._store_target_reads(elt, defined)
        elif isinstance(target, ast.Starred):
            self._store_target_reads(target.value, defined)
        elif isinstance(target, ast.Attribute):
            self.reads(target.value, defined)
        elif isinstance(target, ast.Subscript):
            self.reads(target.value, defined)
            self.reads(target.slice, defined)

    def _If(self, stmt: ast.If, defined: set[str]) -> set[str] | None:
        defined = defined | self.reads(stmt.test, defined)
        return _meet(self.block(stmt.body, set(defined)), self.block(stmt.orelse, set(defined)))

    def _While(self, stmt: ast.While, defined: set[str]) -> set[str]:
        defined = defined | self.reads(stmt.test, defined)
        self.block(stmt.body, set(defined))
        self.block(stmt.orelse, set(defined))
        return defined

    def _For(self, stmt: ast.For, defined: set[str]) -> set[str]:
        defined = defined | self.reads(stmt.iter, defined)
        self.block(stmt.body, defined | target_names(stmt.target))
        self.block(stmt.orelse, set(defined))
        return defined

    def _With(self, stmt: ast.With, defined: set[str]) -> set[str] | None:
        for item in stmt.items:
            defined = defined | self.reads(item.context_expr, defined)
            if item.optional_vars is not None:
                defined = defined | target_names(item.optional_vars)
        return self.block(stmt.body, defined)

    def _Try(self, stmt: ast.Try, defined: set[str]) -> set[str] | None:
        after_body = self.block(stmt.body, set(defined))
        after_else = self.block(stmt.orelse, after_body) if after_body is not None else None
        outs = [after_else]
        for h in stmt.handlers:
            self.reads(h.type, defined)
            outs.append(self.block(h.body, defined | ({h.name} if h.name else set())))
        merged = None
        for out in outs:
            merged = _meet(merged, out) if merged is not None else out
        if stmt.finalbody:
            self.block(stmt.finalbody, set(defined))
        return merged

    _TryStar = _Try

    def _FunctionDef(self, stmt: ast.FunctionDef, defined: set[str]) -> set[str]:
        for node in _scope_header(stmt):
            self.reads(node, defined)
        self.made(stmt.name, stmt)  # checked where it is used (it may call itself)
        return defined | {stmt.name}

    _AsyncFunctionDef = _FunctionDef

    def _ClassDef(self, stmt: ast.ClassDef, defined: set[str]) -> set[str]:
        for node in _scope_header(stmt):
            self.reads(node, defined)
        return defined | {stmt.name}

    def _Import(self, stmt: ast.Import, defined: set[str]) -> set[str]:
        return defined | {(a.asname or a.name).split(".")[0] for a in stmt.names}

    _ImportFrom = _Import

    def _Match(self, stmt: ast.Match, defined: set[str]) -> set[str] | None:
        defined = defined | self.reads(stmt.subject, defined)
        merged: set[str] | None = None
        first = True
        for case in stmt.cases:
            bound = {
                n.name
                for n in ast.walk(case.pattern)
                if isinstance(n, ast.MatchAs | ast.MatchStar) and n.name
            }
            self.reads(case.guard, defined | bound)
            out = self.block(case.body, defined | bound)
            merged = out if first else _meet(merged, out)
            first = False
        last = stmt.cases[-1] if stmt.cases else None
        irrefutable = (
            last is not None
            and last.guard is None
            and isinstance(last.pattern, ast.MatchAs)
            and last.pattern.pattern is None
        )
        return merged if irrefutable else _meet(merged, defined)


def _meet(a: set[str] | None, b: set[str] | None) -> set[str] | None:
    """Names bound on both paths; a path that cannot fall through does not count."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _nested_functions(node: ast.AST):
    """The lambdas that evaluating ``node`` makes (outermost ones; their own are theirs)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Lambda):
            yield current
            continue
        stack.extend(ast.iter_child_nodes(current))


def _local_reads(fn: ast.AST, local: set[str]) -> list[tuple[str, ast.AST]]:
    """The loop locals that a function or lambda of the body reads from outside itself."""
    return [(name, at) for name, at in _free_reads(fn) if name in local]


def _free_reads(fn: ast.AST):
    """Names a function or lambda reads from outside itself: loaded in its body, neither
    its parameters nor assigned in it (nested scopes counted as its own, a safe excess)."""
    args = fn.args
    params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    body = fn.body if isinstance(fn.body, list) else [fn.body]
    stored = {
        n.id
        for b in body
        for n in ast.walk(b)
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)
    }
    stored |= {
        n.name
        for b in body
        for n in ast.walk(b)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    for b in body:
        for n in ast.walk(b):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                if n.id not in params and n.id not in stored:
                    yield n.id, n


def _immediate_reads(node: ast.AST):
    """Names read when ``node`` is evaluated now: not inside lambdas; comprehension targets excluded."""
    stack: list[tuple[ast.AST, frozenset[str]]] = [(node, frozenset())]
    while stack:
        current, hidden = stack.pop()
        if isinstance(current, ast.Lambda):
            for d in _scope_header(current):
                stack.append((d, hidden))
            continue
        if isinstance(current, _COMPREHENSIONS):
            inner = hidden | {n for g in current.generators for n in target_names(g.target)}
            for g in current.generators:
                stack.append((g.iter, hidden if g is current.generators[0] else inner))
                stack.extend((c, inner) for c in g.ifs)
            elts = (
                [current.key, current.value] if isinstance(current, ast.DictComp) else [current.elt]
            )
            stack.extend((e, inner) for e in elts)
            continue
        if (
            isinstance(current, ast.Name)
            and isinstance(current.ctx, ast.Load)
            and current.id not in hidden
        ):
            yield current.id, current
        stack.extend((c, hidden) for c in ast.iter_child_nodes(current))
