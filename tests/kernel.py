"""A real Jupyter kernel for tests (jupyter_client), and running code in it.

An :class:`Execution` holds every iopub message of one request with its
arrival time, and reads from them what a user would see: streams, outputs,
errors, and the progress bar's widget messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import start_new_kernel

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROGRESS_MODELS = {"IntProgressModel", "FloatProgressModel"}


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

    def of_type(self, msg_type: str) -> list[tuple[float, dict]]:
        """(arrival, message) of each message of one type."""
        return [(t, m) for t, m in self.messages if m["msg_type"] == msg_type]

    def displays(self) -> list[dict]:
        """The data bundles of display_data outputs."""
        return [m["content"]["data"] for _, m in self.of_type("display_data")]

    def idle_at(self) -> float:
        """When the kernel went idle after this request."""
        return self.of_type("status")[-1][0]

    def bar_ids(self) -> list[str]:
        """Comm ids of the progress bars this request opened, in order."""
        return [
            m["content"]["comm_id"]
            for _, m in self.of_type("comm_open")
            if m["content"]["data"]["state"].get("_model_name") in PROGRESS_MODELS
        ]

    def updates(self, comm_id: str, key: str) -> list[tuple[float, Any]]:
        """(arrival, value) of each update of ``key`` on one widget."""
        return [
            (t, m["content"]["data"]["state"][key])
            for t, m in self.of_type("comm_msg")
            if m["content"]["comm_id"] == comm_id
            and m["content"]["data"].get("method") == "update"
            and key in m["content"]["data"].get("state", {})
        ]

    def final_state(self, comm_id: str) -> dict[str, Any]:
        """A widget's state after all messages: the open state with every update applied."""
        state: dict[str, Any] = {}
        for _, m in self.messages:
            if m["content"].get("comm_id") == comm_id:
                state.update(m["content"].get("data", {}).get("state", {}))
        return state


def execute(
    kc: Any, code: str, timeout: float = 120, on_msg: Callable[[dict], None] | None = None
) -> Execution:
    """Run ``code``; collect its iopub messages (with arrival times) until the kernel is idle.

    ``on_msg`` sees each message as it arrives (to act in the middle of a run).
    """
    return collect(kc, kc.execute(code), timeout, on_msg)


def collect(
    kc: Any, msg_id: str, timeout: float = 120, on_msg: Callable[[dict], None] | None = None
) -> Execution:
    """Gather the iopub messages and the reply of request ``msg_id`` (sent already)."""
    execution = Execution(reply={})
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        execution.messages.append((time.monotonic(), msg))
        if on_msg is not None:
            on_msg(msg)
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
