"""A real Jupyter kernel for tests (jupyter_client), and running code in it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import start_new_kernel


@dataclass
class Execution:
    """What one execute request produced."""

    reply: dict
    messages: list[tuple[float, dict]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reply["content"]["status"] == "ok"

    def stream(self, name: str = "stdout") -> str:
        return "".join(
            m["content"]["text"]
            for _, m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    def results(self) -> list[dict]:
        return [
            m["content"]["data"]
            for _, m in self.messages
            if m["msg_type"] in ("execute_result", "display_data")
        ]

    def error(self) -> dict | None:
        errors = [m["content"] for _, m in self.messages if m["msg_type"] == "error"]
        return errors[0] if errors else None


def execute(kc: Any, code: str, timeout: float = 120) -> Execution:
    """Run ``code``; collect its iopub messages (with arrival times) until the kernel is idle."""
    return collect(kc, kc.execute(code), timeout)


def collect(kc: Any, msg_id: str, timeout: float = 120) -> Execution:
    """Gather the iopub messages and the reply of request ``msg_id`` (sent already)."""
    execution = Execution(reply={})
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        execution.messages.append((time.monotonic(), msg))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:  # the reply to this request, not a stray one from an earlier cell
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            execution.reply = reply
            return execution


def value(kc: Any, expression: str) -> Any:
    """Evaluate ``expression`` in the kernel and return it (via repr/literal_eval)."""
    import ast

    ex = execute(kc, f"print(repr(({expression})))")
    assert ex.ok, ex.error()
    return ast.literal_eval(ex.stream().strip())


@contextmanager
def kernel() -> Iterator[tuple[Any, Any]]:
    """A fresh kernel (the test venv's Python) and its client; shut down afterwards."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
