"""The text progress line on a real terminal (a pty, no tmux): one line redrawn in place.

A loop runs in a child process whose stderr and stdout are a pseudo-terminal, in plain
Python (the API) and in terminal IPython (``%%parallel``). What it wrote is replayed
on a tiny screen model (``\\r`` back to the left edge, ``\\n`` a new line): the screen
must hold ONE bar line, in its final state, after the iterations' own lines, which
are clean and in order; while it ran, the bar was redrawn with ``\\r``, never on a
new line.
"""

from __future__ import annotations

import os
import pty
import re
import select
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BODY = "for i in range(24):\n    time.sleep(0.06)\n    if i % 6 == 5:\n        print('it', i)\n"
PYTHON = f"""
import time, parmagic
parmagic.run_cell({BODY!r}, {{"time": time}}, n_jobs=2)
"""
IPYTHON = f"""
import time
get_ipython().run_line_magic("load_ext", "parmagic")
get_ipython().run_cell_magic("parallel", "-n 2", {BODY!r})
"""
BAR = re.compile(r"\d+%\|")


def run_in_pty(argv: list[str], timeout: float = 120) -> str:
    """Run ``argv`` with a pty as its terminal; everything it wrote, as text."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.update(TERM="xterm", COLUMNS="120", LINES="40")
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the pty
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            os.kill(pid, 9)
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def screen(raw: str) -> list[str]:
    """The lines a terminal would show for ``raw`` (``\\r`` and ``\\n`` only; colours dropped)."""
    raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    lines: list[list[str]] = [[]]
    col = 0
    for ch in raw:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return ["".join(line).rstrip() for line in lines]


@pytest.mark.parametrize("shell", ["python", "ipython"])
def test_one_line_redrawn_in_place_and_one_final_line(shell: str) -> None:
    python = sys.executable
    if shell == "python":
        argv = [python, "-c", PYTHON]
    else:
        ipython = str(Path(python).with_name("ipython"))
        argv = [ipython, "--quick", "--no-banner", "--colors=nocolor", "-c", IPYTHON]
    raw = run_in_pty(argv)
    shown = screen(raw)
    bars = [line for line in shown if BAR.search(line)]
    assert len(bars) == 1, shown  # one line, not one per redraw, no near-duplicate
    assert re.search(r"100%\|█+\| 24/24 \[.*\] success$", bars[0]), bars[0]
    # redrawn in place: several states of the line, each after a \r, no \n between them
    states = re.findall(r"\r[^\r\n]*\d+%\|[^\r\n]*", raw)
    assert len(states) >= 3, raw
    assert len({BAR.search(s).group() for s in states}) >= 2, states  # it moved
    # the iterations' own lines: whole, clean (no bar left on them), in order, above the bar
    own = [line for line in shown if line.startswith("it ")]
    assert own == [f"it {i}" for i in (5, 11, 17, 23)], shown
    assert shown.index(own[-1]) < shown.index(bars[0])
    after = shown[shown.index(bars[0]) + 1 :]
    assert after and "success" in after[0] and not BAR.search(after[0]), after  # the summary
