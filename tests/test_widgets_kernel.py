"""The live progress bar and the summary, through a real Jupyter kernel (no browser).

One ipykernel (jupyter_client ``start_new_kernel``) runs ``%%parallel`` cells;
the tests read the iopub messages it sends: the bar widget's ``comm_open`` and
``comm_msg`` updates (with arrival times, to prove they streamed live), the
``update_display_data`` that replaces the bar by its static final state, the
``comm_close`` after it, and the displayed summary. nbclient and nbconvert run a
notebook as a saved notebook keeps it; terminal IPython and a plain script on a
pty show text only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .kernel import WIDGET_VIEW, Execution, execute

jupyter_client = pytest.importorskip("jupyter_client.manager")

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]


def kernel_env() -> dict[str, str]:
    """The environment of the kernel and its workers: this checkout importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def bar_ids(cell: Execution) -> list[str]:
    """Comm ids of the bars (HTML widgets drawing a parmagic bar) a request opened."""
    return [
        m["content"]["comm_id"]
        for _, m in cell.of_type("comm_open")
        if m["content"]["data"]["state"].get("_model_name") == "HTMLModel"
        and "parmagic-bar" in m["content"]["data"]["state"].get("value", "")
    ]


def fill(value: str) -> float:
    """The bar's fill in % from its HTML."""
    return float(re.search(r"parmagic-bar-fill[^>]*width:([\d.]+)%", value).group(1))


def final_bar(cell: Execution) -> dict:
    """The static bundle of the (one) bar's final state: asserted to be well formed.

    A bar shown live (a widget view) is replaced by an update_display_data of the
    same display id, and its comm closes after it; a run that ended before the
    first redraw (0.1 s) shows its final bar as one static display_data.
    """
    bars = bar_ids(cell)
    shown = [m for _, m in cell.of_type("display_data") if WIDGET_VIEW in m["content"]["data"]]
    updates = [m for _, m in cell.of_type("update_display_data")]
    if not bars:
        assert not shown and not updates
        (static,) = [d for d in cell.displays() if "parmagic-bar" in d.get("text/html", "")]
        assert set(static) == {"text/plain", "text/html"}, static
        return static
    (bar,), (shown,), (update,) = bars, shown, updates
    assert (
        update["content"]["transient"]["display_id"] == shown["content"]["transient"]["display_id"]
    )
    data = update["content"]["data"]
    assert set(data) == {"text/plain", "text/html"}, data  # no widget view left
    closes = [t for t, m in cell.of_type("comm_close") if m["content"]["comm_id"] == bar]
    updated_at = next(t for t, m in cell.of_type("update_display_data"))
    assert len(closes) == 1 and closes[0] >= updated_at, "the widget must close after the update"
    return data


def summaries(cell: Execution) -> list[dict]:
    """The summaries a request displayed."""
    return [d for d in cell.displays() if "parmagic-summary" in d.get("text/html", "")]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """(manager, client) of a kernel with parmagic loaded and its pool warm."""
    km, client = jupyter_client.start_new_kernel(
        kernel_name="python3", env=kernel_env(), cwd=str(tmp_path_factory.mktemp("kernel"))
    )
    try:
        cell = execute(client, "%load_ext parmagic\nimport time")
        assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
        warm = execute(client, "%%parallel -n 2\nfor i in range(4):\n    time.sleep(0.01)")
        assert warm.reply["content"]["status"] == "ok", warm.reply["content"]
        yield km, client
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture
def kc(kernel):
    """The kernel's client."""
    return kernel[1]


def test_bar_updates_live_and_ends_as_static_output(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(16):\n    time.sleep(0.25)")
    assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
    (bar,) = bar_ids(cell)
    values = cell.updates(bar, "value")
    assert len(values) >= 4, values
    widths = [fill(v) for _, v in values]
    assert widths == sorted(widths) and len(set(widths)) >= 4, widths
    shown_at = next(
        t for t, m in cell.of_type("display_data") if WIDGET_VIEW in m["content"]["data"]
    )
    end = values[-1][0]
    assert values[0][0] - shown_at < (end - shown_at) / 2, "first update not in the first half"
    assert cell.idle_at() - values[0][0] > 0.5, "updates were flushed at the end, not live"
    assert all("&lt;" in v and " busy" in v for _, v in values)  # elapsed<ETA, busy workers
    final = final_bar(cell)
    plain = final["text/plain"]
    assert plain.startswith("for i in range(16) ") and "100%|" in plain, plain
    assert re.search(r"\| 16/16 \[\d\d:\d\d, [\d.]+ it/s\] success$", plain), plain
    assert "parmagic-success" in final["text/html"] and fill(final["text/html"]) == 100.0
    assert ">16/16 [" in final["text/html"]


def test_a_bar_is_one_widget_shown_by_itself(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(8):\n    time.sleep(0.05)")
    # one comm per loop: the layout and style models are shared with earlier bars
    opened = [m["content"]["data"]["state"]["_model_name"] for _, m in cell.of_type("comm_open")]
    assert opened == ["HTMLModel"], opened
    (view,) = [d[WIDGET_VIEW] for d in cell.displays() if WIDGET_VIEW in d]
    assert view["model_id"] == bar_ids(cell)[0]


def test_short_run_shows_its_static_final_bar_and_a_one_line_summary(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(6):\n    x = i")
    assert not bar_ids(cell)  # over before the first redraw: no widget at all
    final = final_bar(cell)
    assert "| 6/6 [" in final["text/plain"] and final["text/plain"].endswith(" success")
    (summary,) = summaries(cell)
    assert "parmagic-compact" in summary["text/html"] and "\n" not in summary["text/plain"]
    assert summary["text/plain"].startswith("for i in range(6): 6/6 done in ")
    full = execute(
        kc,
        "import parmagic\nfrom parmagic.summary import Summary\nprint(Summary(parmagic.last_run()))",
    )
    assert "per worker:" in full.stream() and "speedup" in full.stream()
    short = execute(kc, "print(parmagic.last_run())")
    assert re.fullmatch(
        r"RunRecord\('for i in range\(6\):', success, 6/6 done, 2 workers \(loky\), "
        r"[\d.]+s\)\n",
        short.stream(),
    ), short.stream()


def test_live_bar_plain_text_is_stable(kc):
    code = "%%parallel -n 2\nfor i in range(6):\n    time.sleep(0.05)"
    plains = []
    for _ in range(2):
        views = [d for d in execute(kc, code).displays() if WIDGET_VIEW in d]
        assert len(views) == 1
        plains.append(views[0]["text/plain"])
    assert plains[0] == plains[1] == "[parmagic] for i in range(6): 6 iterations"


def test_long_run_gets_the_full_summary(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(6):\n    time.sleep(0.25)")
    (summary,) = summaries(cell)
    assert "<svg" in summary["text/html"] and "speedup" in summary["text/plain"]
    assert "parmagic-compact" not in summary["text/html"]


def test_many_tiny_iterations_send_few_updates(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(20000):\n    x = i * 2")
    assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
    for bar in bar_ids(cell):  # none if it ended within 0.1 s
        assert len(cell.updates(bar, "value")) < 100
    assert "20000/20000" in final_bar(cell)["text/plain"]


def test_iterable_failing_at_once_still_ends_in_a_red_bar(kc):
    execute(kc, "def items():\n    raise OSError('no data')\n    yield 1")
    cell = execute(kc, "%%parallel -n 2\nfor i in items():\n    x = i")
    assert cell.reply["content"]["ename"] == "OSError"
    final = final_bar(cell)
    assert "parmagic-error" in final["text/html"] and final["text/plain"].endswith(" error")


def test_error_ends_in_its_final_count_with_summary(kc):
    code = (
        "%%parallel -n 2\n"
        "for i in range(30):\n"
        "    time.sleep(0.05)\n"
        "    if i == 5:\n"
        "        raise ValueError('boom')\n"
    )
    cell = execute(kc, code)
    assert cell.reply["content"]["status"] == "error"
    assert cell.reply["content"]["ename"] == "ValueError"
    final = final_bar(cell)
    count = re.search(r"\| (\d+)/30 \[", final["text/plain"])
    assert count and int(count.group(1)) < 30 and final["text/plain"].endswith(" error"), final
    assert "1 failed" in final["text/plain"] and "30 iterations" not in final["text/plain"]
    (summary,) = summaries(cell)  # a failed run gets the full summary, however short
    assert "ValueError" in summary["text/plain"] and "<svg" in summary["text/html"]


def test_interrupt_ends_in_its_count_with_summary(kernel):
    km, kc = kernel
    interrupted = []

    def interrupt_after_first_update(msg: dict) -> None:
        value = msg["content"].get("data", {}).get("state", {}).get("value", "")
        # the bar's count of iterations done is past zero
        if msg["msg_type"] == "comm_msg" and re.search(r">[1-9]\d*/40 ", value):
            if not interrupted:
                interrupted.append(True)
                km.interrupt_kernel()

    code = "%%parallel -n 2\nfor i in range(40):\n    time.sleep(0.2)"
    cell = execute(kc, code, on_msg=interrupt_after_first_update)
    assert interrupted and cell.reply["content"]["ename"] == "KeyboardInterrupt"
    final = final_bar(cell)
    count = int(re.search(r"\| (\d+)/40 \[", final["text/plain"]).group(1))
    assert 0 < count < 40 and final["text/plain"].endswith(" interrupted")
    assert "parmagic-interrupted" in final["text/html"]
    (summary,) = summaries(cell)
    assert "interrupted" in summary["text/plain"]
    after = execute(kc, "%%parallel -n 2\nfor i in range(4):\n    time.sleep(0.01)")
    assert after.reply["content"]["status"] == "ok"  # the next cell works without a restart


def test_compare_and_sweep_are_displayed(kc):
    code = "%%parallel -n 2 --compare --sweep 1,2\nfor i in range(6):\n    time.sleep(0.05)"
    cell = execute(kc, code)
    assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
    html_outputs = [d.get("text/html", "") for d in cell.displays()]
    assert any("parmagic-compare" in h and "<svg" in h for h in html_outputs)
    assert any("parmagic-sweep" in h and "parmagic-legend" in h for h in html_outputs)
    assert len(bar_ids(cell)) == 4  # the serial run, the runs at -n 1 and 2, the real run


def test_output_shown_in_iteration_order(kc):
    code = "%%parallel -n 2\nfor i in range(8):\n    time.sleep(0.01 * (8 - i))\n    print('it', i)"
    cell = execute(kc, code)
    assert cell.stream() == "".join(f"it {i}\n" for i in range(8))


def test_terminal_ipython_shows_text_only(tmp_path):
    ipython = Path(sys.executable).with_name("ipython")
    cell_code = "%%parallel -n 2\nfor i in range(4):\n    print('it', i)"
    code = (
        f"ip = get_ipython(); ip.run_line_magic('load_ext', 'parmagic'); ip.run_cell({cell_code!r})"
    )
    cell = subprocess.run(
        [str(ipython), "--no-banner", "--colors=nocolor", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=kernel_env(),
        cwd=tmp_path,
    )
    assert cell.returncode == 0, cell.stderr
    assert "".join(f"it {i}\n" for i in range(4)) in cell.stdout
    assert "4/4 [" in cell.stderr and "speedup" in cell.stderr
    assert "\r" not in cell.stderr  # stderr is a pipe here: no redraws, only the final line
    for fallback in ("LoopBar(", "HTML(", "<svg", "<div", "[parmagic] for"):
        assert fallback not in cell.stdout + cell.stderr, cell.stdout


# ------------------------------------------------------------------ saved notebooks


def test_nbclient_keeps_the_final_bar_and_nbconvert_shows_the_final_state(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nbconvert = pytest.importorskip("nbconvert")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    stop_at_6 = (
        "%%parallel -n 2\n"
        "for i in range(30):\n"
        "    time.sleep(0.02)\n"
        "    if i == 5:\n"
        "        raise ValueError('stop')\n"
    )
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext parmagic\nimport time"),
        nbformat.v4.new_code_cell("%%parallel -n 2\nfor i in range(8):\n    time.sleep(0.01)"),
        nbformat.v4.new_code_cell(stop_at_6),
    ]
    client = nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=kernel_env())
    for cell in nb.cells[1:]:
        bars = [o for o in cell.outputs if "parmagic-bar" in o.get("data", {}).get("text/html", "")]
        assert len(bars) == 1, cell.outputs
        assert WIDGET_VIEW not in bars[0]["data"]  # the static bundle replaced the widget view
    assert "8/8 [" in nb.cells[1].outputs[0]["data"]["text/plain"]
    saved = tmp_path / "run.ipynb"
    nbformat.write(nb, saved)
    for exporter in (nbconvert.MarkdownExporter(), nbconvert.HTMLExporter()):
        body, _ = exporter.from_filename(str(saved))
        assert "model not found" not in body and "Error displaying widget" not in body
        assert "30 iterations" not in body and "8 iterations" not in body
        assert re.search(r"[1-6]/30 \[", body), body[-3000:]


# ------------------------------------------------------------------ terminal on a pty


PTY_SCRIPT = """
import time
import parmagic

def slow(x):
    time.sleep(0.05)
    return x

result = parmagic.pmap(slow, range(40), n_jobs=2)
print("result", sum(result))
"""


def run_on_pty(script: str, cwd: Path) -> str:
    """Run ``script`` in a child whose stdout and stderr are a pty; return all it wrote."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: replace this process at once
        env = kernel_env()
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-c", script], env)
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_terminal_line_is_redrawn_with_carriage_returns_and_ends_in_one_line(tmp_path):
    written = run_on_pty(PTY_SCRIPT, tmp_path).replace("\r\n", "\n")  # the pty's newlines
    lines = written.split("\n")
    bar_lines = [line for line in lines if "pmap(slow)" in line and "|" in line]
    assert len(bar_lines) == 1, lines  # redraws stay on one line
    draws = [d for d in bar_lines[0].split("\r") if d.strip()]
    assert len(draws) >= 3, draws  # redrawn in place (~1 s at up to 10 a second)
    assert all(d.startswith("pmap(slow) ") for d in draws), draws
    final = draws[-1].rstrip()
    assert re.search(r"100%\|█+\| 40/40 \[\d\d:\d\d, [\d.]+ it/s\] success$", final), final
    assert "result 780" in written
    summary = [line for line in lines if line.startswith("pmap(slow): 40/40 done in ")]
    assert len(summary) == 1, lines  # pmap: the one-line summary
