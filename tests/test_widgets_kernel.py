"""The live progress bar and the summary, through a real Jupyter kernel (no browser).

One ipykernel (jupyter_client ``start_new_kernel``) runs ``%%parallel`` cells;
the tests read the iopub messages it sends: the widget's ``comm_open`` and
``comm_msg`` updates (with arrival times, to prove they streamed live), the
displayed outputs, and the final widget state. A last test runs the same
magic in terminal IPython, where only text may appear.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .kernel import WIDGET_VIEW, execute

jupyter_client = pytest.importorskip("jupyter_client.manager")

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]


def kernel_env() -> dict[str, str]:
    """The environment of the kernel and its workers: this checkout importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


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


def test_bar_updates_live_and_ends_in_success(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(16):\n    time.sleep(0.25)")
    assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
    (bar,) = cell.bar_ids()
    values = cell.updates(bar, "value")
    assert len(values) >= 4, values
    assert [v for _, v in values] == sorted({v for _, v in values}), values  # strictly rising
    shown_at = next(
        t for t, m in cell.of_type("display_data") if WIDGET_VIEW in m["content"]["data"]
    )
    end = values[-1][0]
    assert values[0][0] - shown_at < (end - shown_at) / 2, "first update not in the first half"
    assert cell.idle_at() - values[0][0] > 0.5, "updates were flushed at the end, not live"
    final = cell.final_state(bar)
    assert (final["value"], final["max"], final["bar_style"]) == (16, 16, "success")
    texts = [text for _, text in cell.updates(bar, "description")]
    assert any("ETA" in text and "busy" in text for text in texts), texts  # live status
    assert final["description"].startswith("for i in range(16): 16/16 · "), final


def test_a_bar_is_one_widget_shown_by_itself(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(4):\n    time.sleep(0.01)")
    # one comm per loop: the layout and style models are shared with earlier bars
    opened = [m["content"]["data"]["state"]["_model_name"] for _, m in cell.of_type("comm_open")]
    assert opened == ["IntProgressModel"], opened
    (view,) = [d[WIDGET_VIEW] for d in cell.displays() if WIDGET_VIEW in d]
    assert view["model_id"] == cell.bar_ids()[0]


def test_bar_plain_text_is_stable_and_summary_is_static_html(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(6):\n    time.sleep(0.01)")
    views = [d for d in cell.displays() if WIDGET_VIEW in d]
    assert len(views) == 1
    plain = views[0]["text/plain"]
    assert plain.startswith("[parmagic] ") and plain.endswith(": 6 iterations"), plain
    again = execute(kc, "%%parallel -n 2\nfor i in range(6):\n    time.sleep(0.01)")
    assert [d["text/plain"] for d in again.displays() if WIDGET_VIEW in d] == [plain]
    summaries = [d for d in cell.displays() if "parmagic-summary" in d.get("text/html", "")]
    assert len(summaries) == 1
    assert "<svg" in summaries[0]["text/html"] and "speedup" in summaries[0]["text/plain"]


def test_many_tiny_iterations_send_few_updates(kc):
    cell = execute(kc, "%%parallel -n 2\nfor i in range(20000):\n    x = i * 2")
    assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
    (bar,) = cell.bar_ids()
    assert len(cell.updates(bar, "value")) < 100
    assert cell.final_state(bar)["value"] == 20000


def test_iterable_failing_at_once_still_shows_a_red_bar(kc):
    execute(kc, "def items():\n    raise OSError('no data')\n    yield 1")
    cell = execute(kc, "%%parallel -n 2\nfor i in items():\n    x = i")
    assert cell.reply["content"]["ename"] == "OSError"
    (bar,) = cell.bar_ids()
    assert cell.final_state(bar)["bar_style"] == "danger"


def test_error_ends_in_danger_with_summary(kc):
    code = (
        "%%parallel -n 2\n"
        "for i in range(8):\n"
        "    time.sleep(0.05)\n"
        "    if i == 5:\n"
        "        raise ValueError('boom')\n"
    )
    cell = execute(kc, code)
    assert cell.reply["content"]["status"] == "error"
    assert cell.reply["content"]["ename"] == "ValueError"
    (bar,) = cell.bar_ids()
    assert cell.final_state(bar)["bar_style"] == "danger"
    summary = [d for d in cell.displays() if "parmagic-summary" in d.get("text/html", "")]
    assert len(summary) == 1 and "ValueError" in summary[0]["text/plain"]


def test_interrupt_ends_in_warning_with_summary(kernel):
    km, kc = kernel
    interrupted = []

    def interrupt_after_first_update(msg: dict) -> None:
        state = msg["content"].get("data", {}).get("state", {})
        value = state.get("value")  # the bar's count of iterations done
        if msg["msg_type"] == "comm_msg" and isinstance(value, int) and value and not interrupted:
            interrupted.append(True)
            km.interrupt_kernel()

    code = "%%parallel -n 2\nfor i in range(40):\n    time.sleep(0.2)"
    cell = execute(kc, code, on_msg=interrupt_after_first_update)
    assert interrupted and cell.reply["content"]["ename"] == "KeyboardInterrupt"
    (bar,) = cell.bar_ids()
    final = cell.final_state(bar)
    assert final["bar_style"] == "warning" and 0 < final["value"] < 40
    summary = [d for d in cell.displays() if "parmagic-summary" in d.get("text/html", "")]
    assert len(summary) == 1 and "interrupted" in summary[0]["text/plain"]
    after = execute(kc, "%%parallel -n 2\nfor i in range(4):\n    time.sleep(0.01)")
    assert after.reply["content"]["status"] == "ok"  # the next cell works without a restart


def test_compare_and_sweep_are_displayed(kc):
    code = "%%parallel -n 2 --compare --sweep 1,2\nfor i in range(6):\n    time.sleep(0.05)"
    cell = execute(kc, code)
    assert cell.reply["content"]["status"] == "ok", cell.reply["content"]
    html_outputs = [d.get("text/html", "") for d in cell.displays()]
    assert any("parmagic-compare" in h and "<svg" in h for h in html_outputs)
    assert any("parmagic-sweep" in h and "<svg" in h for h in html_outputs)
    assert len(cell.bar_ids()) == 1  # timing runs show no bar


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
    assert "· success" in cell.stderr and "speedup" in cell.stderr
    for fallback in ("LoopBar(", "IntProgress(", "<svg", "[parmagic] for"):
        assert fallback not in cell.stdout, cell.stdout
