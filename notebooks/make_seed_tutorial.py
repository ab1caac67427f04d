"""Regenerate notebooks/seed_tutorial.ipynb: joblib's parallel-for-loops tutorial in parmagic form.

    python notebooks/make_seed_tutorial.py

The notebook is stored without outputs; ``pytest --nbval-lax notebooks/`` runs it.
Timing cells carry ``# NBVAL_IGNORE_OUTPUT``; the one cell that fails on purpose
carries ``# NBVAL_RAISES_EXCEPTION``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("seed_tutorial.ipynb")

CELLS = [
    (
        "md",
        """# joblib's tutorial, in parmagic form

Every example of joblib's *embarrassingly parallel for loops* tutorial, written as the
plain `for` loop it parallelises plus one line on top. Where joblib wants
`Parallel(n_jobs=4)(delayed(f)(i) for i in ...)`, parmagic keeps the loop and its
`results.append(...)`, runs the iterations on a pool, and leaves the namespace exactly as the
serial loop would.""",
    ),
    ("code", "%load_ext parmagic"),
    (
        "code",
        """import os
import time


def slow_power(x, p):
    time.sleep(1)
    return x ** p""",
    ),
    ("md", "## 1. The serial loop\n\nTen iterations of one second each: ten seconds."),
    (
        "code",
        """%%time
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    ("code", "serial = results\nserial"),
    (
        "md",
        """## 2. Four workers

joblib: `Parallel(n_jobs=4)(delayed(slow_power)(i, 5) for i in range(10))`. The same loop
under `%%parallel -n 4` takes about three seconds (three rounds of four), shows a live progress
bar while it runs, and a timing summary at the end.""",
    ),
    (
        "code",
        """%%parallel -n 4
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    ("code", "assert results == serial\nresults, i"),
    (
        "md",
        """From here on the examples sleep 0.2 s per iteration, to keep the notebook quick.
Redefining the function is enough: the next cell ships the new one to the workers.""",
    ),
    (
        "code",
        """def slow_power(x, p):
    time.sleep(0.2)
    return x ** p


def slow_add(a, b):
    time.sleep(0.2)
    return a + b


def slow_subtract(a, b):
    time.sleep(0.2)
    return a - b""",
    ),
    (
        "md",
        """## 3. Every core: `-n -1`

joblib's meaning: `-1` is all cores, `-2` all but one. `--compare` also times the loop serially
(a dry run: no effect is applied twice) and shows both.""",
    ),
    (
        "code",
        """%%parallel -n -1 --compare
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    ("code", "results"),
    (
        "md",
        """## 4. A different function per item

joblib builds a list of `delayed(slow_add)` or `delayed(slow_subtract)` calls. Here it is the
`if`/`else` it stands for.""",
    ),
    (
        "code",
        """%%parallel -n 4 --compare
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    if i % 2 == 0:
        results.append(slow_add(i, 1))
    else:
        results.append(slow_subtract(i, 1))""",
    ),
    ("code", "results"),
    (
        "md",
        """## 5. Verbose output

joblib's `verbose=10` prints a line per finished task to the server's log. parmagic shows one
live widget per loop instead (done/total, elapsed, ETA, busy workers, failures) and the summary
when it ends; `--no-progress` turns the widget off. What the loop prints itself comes back from
the workers in iteration order, whatever order they finished in.""",
    ),
    (
        "code",
        """%%parallel -n 4
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(8):
    time.sleep(0.05 * (8 - i))  # later items finish first
    print("item", i, "done")
    results.append(slow_power(i, 2))""",
    ),
    (
        "md",
        """## 6. `prefer="threads"` and `prefer="processes"`

joblib's alias works as an option: threads run in the kernel (no pickling, shared objects; good
for sleeping, I/O and code that releases the GIL), processes are the default loky pool.""",
    ),
    (
        "code",
        """%%parallel -n 4 --prefer threads --compare
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    (
        "code",
        """%%parallel -n 4 --prefer processes --compare
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    (
        "md",
        """## 7. Reusing the pool

joblib reuses its workers inside `with Parallel(n_jobs=2) as parallel:`. parmagic's pool lives
as long as the kernel: every cell reuses it, and a new worker count resizes it.
`%parmagic config` sets the defaults of later cells.""",
    ),
    ("code", "%parmagic config -n 2"),
    (
        "code",
        """%%parallel
# NBVAL_IGNORE_OUTPUT
first = []
for i in range(6):
    first.append((slow_power(i, 2), os.getpid()))""",
    ),
    (
        "code",
        """%%parallel
# NBVAL_IGNORE_OUTPUT
second = []
for i in range(6):
    second.append((slow_power(i, 3), os.getpid()))""",
    ),
    (
        "code",
        """two = {pid for _, pid in first + second}
assert len(two) <= 2 and os.getpid() not in two  # the same two workers served both cells
len(two)""",
    ),
    ("code", "%parmagic config -n 3"),
    (
        "code",
        """%%parallel
# NBVAL_IGNORE_OUTPUT
third = []
for i in range(6):
    third.append((slow_power(i, 2), os.getpid()))""",
    ),
    ("code", "# NBVAL_IGNORE_OUTPUT\n%parmagic status"),
    ("code", "%parmagic config -n -1"),
    (
        "md",
        """## 8. Backends

joblib's `backend="loky" | "threading" | "multiprocessing" | "sequential"`, and dask through
`parallel_backend("dask")`. parmagic has the same five behind `--backend`.""",
    ),
    (
        "code",
        """%%parallel -n 2 --backend loky --compare
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    (
        "code",
        """%%parallel -n 2 --backend threads
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    (
        "code",
        """%%parallel -n 2 --backend multiprocessing
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    (
        "code",
        """%%parallel --backend serial
# NBVAL_IGNORE_OUTPUT
results = []
for i in range(10):
    results.append(slow_power(i, 5))""",
    ),
    ("code", "assert results == [i ** 5 for i in range(10)]"),
    (
        "md",
        """With dask, the loop runs on the cluster of the kernel's `Client` (or of
`--scheduler tcp://host:port`): here a local cluster of two worker processes.""",
    ),
    (
        "code",
        """# NBVAL_IGNORE_OUTPUT
from dask.distributed import Client, LocalCluster

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
client = Client(cluster)""",
    ),
    (
        "code",
        """%%parallel --backend dask --compare
# NBVAL_IGNORE_OUTPUT
results = []
pids = []
for i in range(10):
    results.append(slow_power(i, 5))
    pids.append(os.getpid())""",
    ),
    (
        "code",
        """dask_pids = set(client.run(os.getpid).values())
assert set(pids) <= dask_pids
results""",
    ),
    ("code", "client.close()\ncluster.close()"),
    (
        "md",
        """## 9. Timeouts

joblib's `timeout=` raises once a task runs too long, and every result is lost with it. Here an
iteration over `--timeout` fails alone; with `--on-error collect` every other iteration still
commits, and one error at the end lists what failed. The pool stays usable.""",
    ),
    (
        "code",
        """%%parallel -n 2 --timeout 0.5 --on-error collect
# NBVAL_RAISES_EXCEPTION
results = []
for i in range(6):
    if i == 3:
        time.sleep(5)
    results.append(i * 10)""",
    ),
    ("code", "assert results == [0, 10, 20, 40, 50]\nresults"),
    (
        "code",
        "%%parallel -n 2\nresults = []\nfor i in range(4):\n    results.append(slow_power(i, 2))",
    ),
    ("code", "results"),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    nbformat.write(build(), NOTEBOOK)
    print("wrote", NOTEBOOK)
