"""Helpers for running cells through a real in-process IPython shell."""

from __future__ import annotations

import re
import types
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

_OUT_PROMPT = re.compile(r"^Out\[\d+\]: ", re.M)
_SKIP = {"In", "Out", "exit", "quit", "get_ipython"}


def shell() -> InteractiveShell:
    """The process's IPython shell with parmagic loaded."""
    ip = InteractiveShell.instance()
    if "parallel" not in ip.magics_manager.magics["cell"]:
        ip.run_line_magic("load_ext", "parmagic")
    return ip


def normalise(value: Any, depth: int = 0) -> Any:
    """A comparable picture of a value: containers by content, plain objects by their __dict__."""
    if depth > 6:
        return repr(value)
    if isinstance(value, dict):
        return (
            "dict",
            [(normalise(k, depth + 1), normalise(v, depth + 1)) for k, v in value.items()],
        )
    if isinstance(value, list | tuple):
        return (type(value).__name__, [normalise(v, depth + 1) for v in value])
    if isinstance(value, set | frozenset):
        return (type(value).__name__, sorted(repr(v) for v in value))
    if isinstance(value, int | float | str | bytes | bool | type(None) | complex):
        return value
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return (type(value).__name__, normalise(vars(value), depth + 1))
    return repr(value)


def snapshot(ns: dict[str, Any]) -> dict[str, Any]:
    """The user's variables (not modules, functions or classes, which cannot compare equal)."""
    out = {}
    for name, value in ns.items():
        if name.startswith("_") or name in _SKIP:
            continue
        if isinstance(
            value, types.ModuleType | types.FunctionType | type | types.BuiltinFunctionType
        ):
            continue
        out[name] = normalise(value)
    return out


def run(ip: InteractiveShell, code: str, capsys: Any) -> tuple[Any, str, str]:
    """Run ``code``; return (result, stdout, stderr) with Out[] prompts made comparable."""
    capsys.readouterr()
    result = ip.run_cell(code, store_history=True)
    captured = capsys.readouterr()
    return result, _OUT_PROMPT.sub("Out: ", captured.out), captured.err


def fresh(ip: InteractiveShell, setup: str, capsys: Any) -> None:
    """Empty the namespace and run ``setup``."""
    ip.reset(new_session=False)
    result, _, err = run(ip, setup, capsys)
    assert result.success, err
