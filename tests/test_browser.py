"""The progress bar and the summary as a person sees them: JupyterLab in headless Chromium.

Starts its own ``jupyter lab`` (free loopback port, random token, throw-away
config/runtime/settings dirs), opens a notebook with a ``%%parallel`` cell in
Debian's Chromium through Playwright, runs it, and watches the DOM: the live
bar (an HTML widget) takes several widths over time, ends full as a static
output with the success badge, the static summary renders below it, and no
widget falls back to text or fails. Then the notebook is saved, its kernel shut
down and the page reloaded: the final bar is still there, with no "Error
displaying widget". The same in Jupyter Notebook 7 where it is installed.
Screenshots go
to ``artifacts/screenshots/``; with ``PARMAGIC_README_SHOTS=1`` they are also copied
to ``docs/img/`` for the README (so ordinary runs leave the checkout clean).

Skips where Chromium or Playwright is missing, except under CI (``CI`` set),
where a missing browser is a failure.

    apt-get install -y chromium          # no `playwright install`: we use this one
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
DOC_IMAGES = ROOT / "docs" / "img"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
NOTEBOOK = "parallel.ipynb"
CELLS = [
    "%load_ext parmagic\nimport time",
    "%%parallel -n 2\nsquares = []\nfor i in range(24):\n    time.sleep(0.25)\n"
    "    squares.append(i * i)",
    "sum(squares)",
    "def f(x):\n    return 1 / (x - 2)",
    "%%parallel -n 2 --compare\nfor i in range(16):\n    time.sleep(0.2)",
    "%%parallel -n 2\nfor i in range(4):\n    f(i)",  # last: "run all" stops at its error
]
#: The cells after the first loop: a function, a --compare loop, a loop that fails in f.
DEF_CELL, COMPARE_CELL, ERROR_CELL = 3, 4, 5
LIVE_BAR = ".jp-OutputArea-output .jupyter-widgets.widget-html .parmagic-bar"
STATIC_BAR = ".jp-RenderedHTMLCommon .parmagic-bar"  # an HTML output (same element as the output)


def missing(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where the browser tier must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test may not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} missing (apt-get install -y chromium)")
    return sync_api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_pids(kernel_ids: list[str]) -> list[int]:
    """PIDs of processes whose command line names one of these kernels."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(f"kernel-{k}.json" in cmd for k in kernel_ids):
            pids.append(int(proc.name))
    return pids


def write_notebook(root: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, root / NOTEBOOK)


def lab_command(port: int, token: str, root: Path, tmp: Path, app: str = "lab") -> list[str]:
    cmd = [
        str(Path(sys.executable).with_name("jupyter")),
        app,
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--expose-app-in-browser",
    ]
    if app == "lab":
        cmd += [
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--LabApp.user_settings_dir={tmp / 'settings'}",
            f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        ]
    else:  # Notebook 7 takes the same settings under its own app name
        cmd += [
            f"--JupyterNotebookApp.user_settings_dir={tmp / 'settings'}",
            f"--JupyterNotebookApp.workspaces_dir={tmp / 'workspaces'}",
        ]
    return cmd + (["--allow-root"] if os.geteuid() == 0 else [])


def wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # polling a server that gives no readiness event


def stop_server(proc: subprocess.Popen, base: str, token: str) -> None:
    """SIGTERM the server (it shuts its kernels), then check no kernel survived."""
    try:
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as r:
            kernel_ids = [k["id"] for k in json.load(r)]
    except OSError:
        kernel_ids = []
    pids = kernel_pids(kernel_ids)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own session only
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while kernel_pids(kernel_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = kernel_pids(kernel_ids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"kernel processes survived the server: {left}"
    wait_for_scratch_of(pids)


def wait_for_scratch_of(pids: list[int], timeout: float = 30) -> None:
    """Wait until the dead kernels' pool semaphores are gone from /dev/shm.

    A kernel that the server had to kill leaves them to loky's resource tracker,
    which unlinks them when it sees its parent gone (conftest checks the rest).
    """
    if not os.path.isdir("/dev/shm"):
        return
    names = tuple(f"loky-{pid}-" for pid in pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(any(k in n for k in names) for n in os.listdir("/dev/shm")):
            return
        time.sleep(0.2)  # no event to await: the tracker unlinks on its own


@pytest.fixture
def lab(tmp_path, playwright_api):
    """``jupyter lab`` serving the test notebook, with this checkout importable by kernels.

    Function-scoped so that the server and its kernels (and their pools) are gone
    before the leak check of ``conftest.no_leftovers`` looks.
    """
    yield from serve(tmp_path, "lab")


@pytest.fixture
def notebook7(tmp_path, playwright_api):
    """``jupyter notebook`` (Notebook 7) serving the test notebook; skips where not installed."""
    try:
        import notebook
    except ImportError:
        pytest.skip("Jupyter Notebook 7 is not installed (pip install 'notebook>=7')")
    if int(notebook.__version__.split(".")[0]) < 7:
        pytest.skip(f"notebook {notebook.__version__} is not Notebook 7")
    yield from serve(tmp_path, "notebook")


def serve(tmp_path: Path, app: str):
    """Start ``jupyter <app>`` on the test notebook; yield its address; stop it."""
    tmp = tmp_path
    root = tmp / "root"
    root.mkdir()
    write_notebook(root)
    notif = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True)
    (notif / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port, token = free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            lab_command(port, token, root, tmp, app),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{base}/api/status?token={token}", log_path)
        yield {"base": base, "token": token, "app": app}
    finally:
        stop_server(proc, base, token)


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


# Record every width the live bar's fill takes, in the page (MutationObserver), so that no
# intermediate state is missed by polling. The bar is an HTML widget: each redraw replaces
# its content, so watch the whole subtree and read the fill after each change.
RECORD_JS = """() => {
  window.__bars = [];
  new MutationObserver(() => {
    const cell = document.querySelectorAll('.jp-CodeCell')[1];
    const fill = cell && cell.querySelector('.widget-html .parmagic-bar-fill');
    if (fill) window.__bars.push({t: performance.now(), width: fill.style.width});
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""

BAR_WIDTH_JS = """() => { const c = document.querySelectorAll('.jp-CodeCell')[1];
                         const b = c && c.querySelector('.widget-html .parmagic-bar-fill');
                         return b ? parseFloat(b.style.width) : null; }"""


MID_RUN_JS = f"() => {{ const w = ({BAR_WIDTH_JS})(); return w >= 25 && w <= 75; }}"

#: The kernel is connected and idle: JupyterLab's status bar, or Notebook 7's indicator.
IDLE = {
    "lab": ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']",
    "notebook": ".jp-Notebook-ExecutionIndicator[data-status='idle']",
}


#: Page errors of the app itself, raised on loading the page before any cell runs.
#: Notebook 7.6's keyboard-shortcuts settings plugin reads the schema of a plugin it has
#: not loaded (SettingRegistry.pluginChanged, in notebook_core): seen on an empty page too.
KNOWN_PAGE_ERRORS = {"notebook": ["Cannot read properties of undefined (reading 'schema')"]}


def open_notebook(browser, server):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    known = KNOWN_PAGE_ERRORS.get(server["app"], [])
    page.on("pageerror", lambda e: None if str(e) in known else errors.append(str(e)))
    path = "lab/tree" if server["app"] == "lab" else "notebooks"
    if server["app"] == "notebook":
        start_session(server)  # else Notebook 7 may ask which kernel to start, in a dialog
    page.goto(f"{server['base']}/{path}/{NOTEBOOK}?token={server['token']}")
    page.wait_for_selector(IDLE[server["app"]], timeout=60_000)
    if server["app"] == "lab":
        page.get_by_text("| Idle").first.wait_for(timeout=60_000)
    return page, errors


def start_session(server) -> None:
    """Start the notebook's kernel through the REST API, as the page would."""
    body = {"path": NOTEBOOK, "type": "notebook", "name": "", "kernel": {"name": "python3"}}
    request = urllib.request.Request(
        f"{server['base']}/api/sessions?token={server['token']}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=60).close()


def distinct_widths(records: list[dict]) -> list[tuple[float, float]]:
    """(time ms, width %) each time the width changed."""
    widths: list[tuple[float, float]] = []
    for rec in records:
        if not rec["width"]:
            continue
        w = float(rec["width"].rstrip("%"))
        if not widths or widths[-1][1] != w:
            widths.append((rec["t"], w))
    return widths


#: The screenshots the README shows (docs/img/); the others stay in artifacts/ only.
README_SHOTS = {"progress-live.png", "summary.png", "compare-serial-run.png", "traceback.png"}


def save_shot(locator, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(SHOTS / name))
    if os.environ.get("PARMAGIC_README_SHOTS") and name in README_SHOTS:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHOTS / name, DOC_IMAGES / name)


def run_all_and_check(page, errors, shots: bool) -> None:
    """Run every cell; the live bar fills over time, then is the static final bar and summary."""
    page.evaluate(RECORD_JS)
    # (not awaited: the command's promise resolves only when every cell has run)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    loop_cell = page.locator(".jp-CodeCell").nth(1)

    # the widget view appears, or its text/plain fallback if widgets failed: fail fast then
    first = page.wait_for_selector(
        f"{LIVE_BAR}, .jp-OutputArea-output:has-text('[parmagic] for')", timeout=60_000
    )
    assert "parmagic-bar" in (first.get_attribute("class") or ""), (
        "widget did not render, got its text fallback: " + first.inner_text()
    )

    page.wait_for_function(MID_RUN_JS, polling=50, timeout=30_000)
    if shots:
        save_shot(loop_cell, "progress-live.png")

    # the end: the widget's output replaced by the static final state
    loop_cell.locator(f"{STATIC_BAR}.parmagic-success").wait_for(timeout=60_000)
    summary = loop_cell.locator(".parmagic-summary")
    summary.wait_for(timeout=30_000)
    page.locator(".jp-CodeCell").nth(2).locator(
        ".jp-OutputArea-output", has_text=str(sum(i * i for i in range(24)))
    ).wait_for(timeout=30_000)
    if shots:
        save_shot(loop_cell, "summary.png")

    widths = distinct_widths(page.evaluate("window.__bars"))
    seen = [w for _, w in widths]
    assert seen == sorted(seen), seen
    assert len({w for w in seen if 0 < w < 100}) >= 4, seen
    assert (widths[-1][0] - widths[0][0]) / 1000 > 1.0, widths  # spread over the run: live

    check_final_bar(page, loop_cell)
    assert loop_cell.locator(".jupyter-widgets").count() == 0  # no widget left in the output
    assert summary.locator("svg text", has_text="pid ").count() == 2  # a timeline row per worker
    assert summary.locator("svg rect").count() >= 2
    assert "speedup" in summary.inner_text()
    check_compare(page, shots)
    check_error(page, shots)
    assert not errors, errors


def check_compare(page, shots: bool) -> None:
    """--compare: a live bar during its serial timing run, before the parallel one."""
    cell = page.locator(".jp-CodeCell").nth(COMPARE_CELL)
    serial = cell.locator(".widget-html .parmagic-bar", has_text="serial timing")
    serial.wait_for(timeout=60_000)
    assert cell.locator(".parmagic-compare").count() == 0  # still the serial run
    if shots:
        save_shot(cell, "compare-serial-run.png")
    cell.locator(".parmagic-compare").wait_for(timeout=60_000)
    text = cell.locator(".jp-OutputArea").inner_text()
    assert text.index("serial timing") < text.index("serial vs parallel"), text


def check_error(page, shots: bool) -> None:
    """The failing cell's traceback: its own In[N], its line, then f's cell and line."""
    cell = page.locator(".jp-CodeCell").nth(ERROR_CELL)
    error = cell.locator(".jp-OutputArea-output[data-mime-type*='stderr']")
    error.wait_for(timeout=60_000)
    text = error.inner_text()
    n = number_of(page, ERROR_CELL)
    assert text.index(f"Cell In[{n}], line 3") < text.index("ZeroDivisionError: division"), text
    assert "----> 3     f(i)" in text, text
    assert f"Cell In[{number_of(page, DEF_CELL)}], line 2, in f(x)" in text, text
    assert "----> 2     return 1 / (x - 2)" in text, text
    for noise in ("run_cell_magic", "RemoteTraceback", "hidden", "ipykernel_", "parmagic/"):
        assert noise not in text, (noise, text)
    if shots:
        save_shot(cell, "traceback.png")


def number_of(page, index: int) -> int:
    """The In[N] number the page shows for a cell ("[N]:" in its prompt)."""
    prompt = page.locator(".jp-CodeCell").nth(index).locator(".jp-InputPrompt").inner_text()
    return int(prompt.strip().strip("[]:"))


def check_final_bar(page, loop_cell) -> None:
    """The static bar shows the final state: 24/24, full, the success badge; nothing failed."""
    final = loop_cell.locator(STATIC_BAR)
    assert final.count() == 1
    text = final.inner_text()
    assert "for i in range(24)" in text and "100%" in text and "24/24 [" in text, text
    assert "success" in final.locator(".parmagic-outcome").inner_text()
    width = final.locator(".parmagic-bar-fill").evaluate("el => parseFloat(el.style.width)")
    assert width == 100.0, width
    out_text = loop_cell.locator(".jp-OutputArea").inner_text()
    for fallback in ("[parmagic] for", "LoopBar(", "HTML(", "Loading widget", "24 iterations"):
        assert fallback not in out_text, out_text
    content = page.content()
    assert "Error displaying widget" not in content and "model not found" not in content


def reopen_without_kernel(page, server) -> None:
    """Save the notebook, shut its kernel down, reload the page: as reopening it later."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function(
        "() => !document.querySelector('.jp-mod-dirty')", polling=100, timeout=30_000
    )
    with urllib.request.urlopen(
        f"{server['base']}/api/kernels?token={server['token']}", timeout=5
    ) as r:
        kernel_ids = [k["id"] for k in json.load(r)]
    pids = kernel_pids(kernel_ids)
    for kid in kernel_ids:
        req = urllib.request.Request(
            f"{server['base']}/api/kernels/{kid}?token={server['token']}", method="DELETE"
        )
        urllib.request.urlopen(req, timeout=30).close()
    # the server forgets these kernels: wait here for their processes and pool scratch
    deadline = time.monotonic() + 30
    while kernel_pids(kernel_ids) and time.monotonic() < deadline:
        time.sleep(0.2)  # no event to await from another process tree
    wait_for_scratch_of(pids)
    page.reload()
    page.locator(".jp-CodeCell").nth(1).locator(STATIC_BAR).wait_for(timeout=60_000)


def check_reopened(page) -> None:
    """After the reload without a kernel: every bar is its static final state, the
    --compare cell's serial timing bar too, and the traceback is still there."""
    check_final_bar(page, page.locator(".jp-CodeCell").nth(1))
    compare = page.locator(".jp-CodeCell").nth(COMPARE_CELL)
    compare.locator(f"{STATIC_BAR}.parmagic-success", has_text="serial timing").wait_for()
    assert page.locator(".jupyter-widgets").count() == 0
    error = page.locator(".jp-CodeCell").nth(ERROR_CELL).locator(".jp-OutputArea")
    assert "----> 3     f(i)" in error.inner_text()


def test_parallel_cell_shows_live_bar_then_static_final_bar_and_summary(browser, lab):
    page, errors = open_notebook(browser, lab)
    run_all_and_check(page, errors, shots=True)
    reopen_without_kernel(page, lab)
    check_reopened(page)
    loop_cell = page.locator(".jp-CodeCell").nth(1)
    loop_cell.locator(".parmagic-summary svg").wait_for(timeout=30_000)
    save_shot(loop_cell, "reopened.png")
    assert not errors, errors
    page.close()


def test_notebook7_shows_live_bar_then_static_final_bar(browser, notebook7):
    page, errors = open_notebook(browser, notebook7)
    run_all_and_check(page, errors, shots=False)
    save_shot(page.locator(".jp-Notebook"), "notebook7.png")
    reopen_without_kernel(page, notebook7)
    check_reopened(page)
    assert not errors, errors
    page.close()
