"""Rich output, warnings and logging of iterations, through a real Jupyter kernel.

Each case runs the same loop as a plain cell and as a ``%%parallel`` cell and
compares what the notebook receives: display_data bundles (their mime types and
content), stream text, and their order. The plain cell starts with a comment
line so that its line numbers are the ``%%parallel`` cell's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from .kernel import WIDGET_VIEW, Execution, execute, kernel

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

SETUP = """\
%load_ext parmagic
%matplotlib inline
import logging, warnings
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
"""

BACKENDS = ["loky", "multiprocessing"]


@pytest.fixture(scope="module")
def kc() -> Iterator[Any]:
    """A kernel with parmagic and matplotlib inline, started outside pytest's environment."""
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        with kernel() as (_, client):
            ex = execute(client, SETUP)
            assert ex.ok, ex.error()
            yield client
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved


def seen(ex: Execution) -> list[tuple[str, Any]]:
    """What the notebook shows, in order: ("stdout"/"stderr", text) and ("display", mime types).

    Consecutive text of one stream is joined (the kernel batches stream messages);
    parmagic's own summary is left out.
    """
    out: list[tuple[str, Any]] = []
    for _, m in ex.messages:
        if m["msg_type"] == "stream":
            name, text = m["content"]["name"], m["content"]["text"]
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1] + text)
            else:
                out.append((name, text))
        elif m["msg_type"] == "display_data":
            data = m["content"]["data"]
            if WIDGET_VIEW in data or _is_parmagics(data):
                continue  # the progress bar (live or its final static state), the summary
            out.append(("display", _bundle(data)))
    return out


def _is_parmagics(data: dict) -> bool:
    html = data.get("text/html", "")
    return 'class="parmagic-' in html or " done, " in data.get("text/plain", "")


def shown(ex: Execution) -> list[dict]:
    """The display bundles the cell's code made (not parmagic's summary)."""
    return [bundle for kind, bundle in seen(ex) if kind == "display"]


def _bundle(data: dict) -> dict:
    # images differ in bytes from run to run only by renderer details: compare that one is there
    return {k: (v if not k.startswith("image/") else "<image>") for k, v in data.items()}


def both(kc: Any, body: str, backend: str, setup: str = "") -> tuple[Execution, Execution]:
    """Run ``body`` as a plain cell and as a %%parallel cell (same line numbers)."""
    if setup:
        assert execute(kc, setup).ok
    plain = execute(kc, "# plain\n" + body)
    assert plain.ok, plain.error()
    if setup:
        assert execute(kc, setup).ok
    par = execute(kc, f"%%parallel -n 2 --backend {backend}\n" + body)
    assert par.ok, par.error()
    return plain, par


def _stdout_and_displays(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # in the plain cell stderr and stdout are flushed separately: their relative order is
    # the kernel's buffering, so compare each stream's order against the displays
    return [item for item in items if item[0] != "stderr"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_markdown_displays_interleave_with_prints(kc: Any, backend: str) -> None:
    body = (
        "for i in range(4):\n"
        "    print('before', i)\n"
        "    display(Markdown(f'**{i}**'))\n"
        "    print('after', i)\n"
    )
    plain, par = both(kc, body, backend)
    assert seen(par) == seen(plain)
    markdown = [d["text/markdown"] for d in shown(par) if "text/markdown" in d]
    assert markdown == [f"**{i}**" for i in range(4)]


def test_dataframe_displays_as_html(kc: Any) -> None:
    body = "for i in range(3):\n    display(pd.DataFrame({'a': [i, i + 1]}).head())\n"
    plain, par = both(kc, body, "loky")
    assert seen(par) == seen(plain)
    assert sum("text/html" in d for d in shown(par)) == 3


def test_shown_figures_one_image_per_iteration(kc: Any) -> None:
    body = "for i in range(3):\n    plt.plot([0, i])\n    plt.show()\n    print('shown', i)\n"
    plain, par = both(kc, body, "loky")
    assert seen(par) == seen(plain)
    assert sum("image/png" in d for d in shown(par)) == 3


def test_figure_left_open_is_shown_at_the_iteration_end(kc: Any) -> None:
    body = "for i in range(2):\n    fig, ax = plt.subplots()\n    ax.plot([i, 0])\n"
    plain, par = both(kc, body, "loky")
    images = [d for d in shown(par) if "image/png" in d]
    assert len(images) == 2 == sum("image/png" in d for d in shown(plain))
    # closed in the workers: a following cell shows nothing more
    after = execute(kc, "%%parallel -n 2 --no-progress\nfor i in range(2):\n    pass\n")
    assert not [d for d in shown(after) if "image/png" in d]


@pytest.mark.parametrize("backend", BACKENDS)
def test_warning_ignored_by_the_kernel_is_ignored(kc: Any, backend: str) -> None:
    body = "for i in range(4):\n    warnings.warn('quiet')\n    print(i)\n"
    plain, par = both(kc, body, backend, setup="warnings.filterwarnings('ignore')")
    assert "quiet" not in par.stream("stderr")
    assert seen(par) == seen(plain)
    assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_warning_shown_once_with_the_cells_line(kc: Any, backend: str) -> None:
    assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok
    body = "for i in range(6):\n    x = i * 2\n    warnings.warn('loud')\n"
    plain, par = both(kc, body, backend)
    err = par.stream("stderr")
    assert err.count("UserWarning: loud") == 1
    assert re.search(r":4: UserWarning: loud\n  warnings.warn\('loud'\)", err), err
    # the same text as the plain cell's, but for the cell's own file name
    strip = re.compile(r"\S+\.py:")
    assert strip.sub("", err) == strip.sub("", plain.stream("stderr"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_warnings_of_a_batch_that_drew_random_numbers_are_shown(kc: Any, backend: str) -> None:
    # a batch that drew runs again on its own streams: its warnings must be sent again too
    assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok
    body = (
        "import random\nfor i in range(4):\n    x = random.random()\n"
        "    warnings.warn(f'w{i}')\n    warnings.warn('same')\n"
    )
    plain = execute(kc, "# plain\n" + body)
    par = execute(kc, f"%%parallel -n 2 --chunksize 2 --no-auto-serial --backend {backend}\n{body}")
    assert par.ok, par.error()
    shown = re.findall(r"UserWarning: (\w+)", par.stream("stderr"))
    assert shown == ["w0", "same", "w1", "w2", "w3"], par.stream("stderr")
    assert shown == re.findall(r"UserWarning: (\w+)", plain.stream("stderr"))


@pytest.mark.parametrize("backend", [*BACKENDS, "threads"])
def test_a_warning_after_a_libraries_catch_warnings_shows_each_time(kc: Any, backend: str) -> None:
    # scikit-learn's fit enters catch_warnings: Python's registries start again, so the plain
    # loop shows its ConvergenceWarning once per fit, not once per cell
    assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok
    setup = (
        "def fit(i):\n"
        "    with warnings.catch_warnings():\n"
        "        warnings.simplefilter('ignore', DeprecationWarning)\n"
        "    warnings.warn('did not converge')\n"
        "    return i\n"
    )
    assert execute(kc, setup).ok
    body = "for i in range(5):\n    fit(i)\n    warnings.warn('once')\n"
    plain = execute(kc, "# plain\n" + body)
    par = execute(kc, f"%%parallel -n 2 --chunksize 2 --no-auto-serial --backend {backend}\n{body}")
    assert par.ok, par.error()
    shown = re.findall(r"UserWarning: (.+)", par.stream("stderr"))
    assert shown == re.findall(r"UserWarning: (.+)", plain.stream("stderr"))
    assert shown.count("did not converge") == 5 and shown.count("once") == 5, shown


@pytest.mark.parametrize("backend", ["loky", "threads"])
def test_pythons_own_default_filters_hold(kc: Any, backend: str) -> None:
    # Python's built-in filters name their module as a plain string, not a regex
    setup = (
        "warnings.filters[:] = [('default', None, DeprecationWarning, '__main__', 0),"
        " ('ignore', None, DeprecationWarning, None, 0)]"
    )
    body = (
        "for i in range(3):\n"
        "    warnings.warn_explicit('from a library', DeprecationWarning, 'lib.py', 3, module='lib')\n"
        "    warnings.warn('from main', DeprecationWarning)\n"
        "    print(i)\n"
    )
    plain, par = both(kc, body, backend, setup=setup)
    assert par.ok, par.error()
    assert "from a library" not in par.stream("stderr")
    assert par.stream("stderr").count("DeprecationWarning: from main") == 1
    assert plain.stream("stderr").count("DeprecationWarning: from main") == 1
    assert par.stream("stdout") == plain.stream("stdout") == "0\n1\n2\n"
    assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok


def test_warning_as_error_fails_the_iteration(kc: Any) -> None:
    assert execute(kc, "warnings.simplefilter('error')").ok
    ex = execute(
        kc, "%%parallel -n 2 --no-progress\nfor i in range(3):\n    warnings.warn('boom')\n"
    )
    assert not ex.ok and ex.error()["ename"] == "UserWarning"
    assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok


def test_log_records_go_through_the_kernels_handler_in_order(kc: Any) -> None:
    setup = (
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s|%(name)s|%(message)s',"
        " force=True)\nlog = logging.getLogger('demo')"
    )
    body = "for i in range(5):\n    log.info('step %d', i)\n    log.debug('hidden %d', i)\n"
    plain, par = both(kc, body, "loky", setup=setup)
    expected = "".join(f"INFO|demo|step {i}\n" for i in range(5))
    assert plain.stream("stderr") == expected
    assert par.stream("stderr") == expected


@pytest.mark.parametrize("backend", ["threads", "serial"])
def test_in_kernel_backends_commit_displays_and_records_in_order(kc: Any, backend: str) -> None:
    setup = (
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s|%(name)s|%(message)s',"
        " force=True)\nlog = logging.getLogger('demo')"
    )
    body = (
        "for i in range(4):\n"
        "    print('before', i)\n"
        "    display(Markdown(f'**{i}**'))\n"
        "    log.info('step %d', i)\n"
    )
    options = "-n 1" if backend == "serial" else "-n 2 --backend threads"
    assert execute(kc, setup).ok
    plain = execute(kc, "# plain\n" + body)
    par = execute(kc, f"%%parallel {options} --no-progress\n" + body)
    assert par.ok, par.error()
    summaries = [d["text/plain"] for d in par.displays() if _is_parmagics(d)]
    assert any(backend in text for text in summaries)
    assert _stdout_and_displays(seen(par)) == _stdout_and_displays(seen(plain))
    assert par.stream("stderr") == plain.stream("stderr")


@pytest.fixture(scope="module")
def on_dask(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``--backend`` words for a real 2-worker dask cluster on 127.0.0.1."""
    pytest.importorskip("distributed")
    from .test_dask import running_cluster

    with running_cluster(tmp_path_factory.mktemp("dask"), workers=2, threads=1) as cluster:
        yield f"dask --scheduler {cluster.address}"


@pytest.mark.dask
def test_displays_figures_and_warnings_on_dask(kc: Any, on_dask: str) -> None:
    body = (
        "for i in range(3):\n"
        "    print('before', i)\n"
        "    display(Markdown(f'**{i}**'))\n"
        "    plt.plot([0, i])\n"
        "    plt.show()\n"
        "    warnings.warn('quiet')\n"
    )
    try:
        plain, par = both(kc, body, on_dask, setup="warnings.filterwarnings('ignore')")
        assert seen(par) == seen(plain)
        assert [d.get("text/markdown") for d in shown(par) if "text/markdown" in d] == [
            f"**{i}**" for i in range(3)
        ]
        assert sum("image/png" in d for d in shown(par)) == 3
        assert "quiet" not in par.stream("stderr")
    finally:
        assert execute(kc, "warnings.resetwarnings(); warnings.simplefilter('default')").ok
        assert execute(kc, "%parmagic shutdown").ok  # the client goes before the cluster
