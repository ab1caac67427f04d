"""Captured values reach the workers once per run, as aligned views, with the serial result."""

from __future__ import annotations

import numpy as np

import parmagic

BODY = (
    "out = []\nseen = []\n"
    "for i in range(8):\n"
    "    out.append(arr[i * 1000:(i + 1) * 300000].sum())\n"
    "    seen.append((arr.ctypes.data % 64, arr.flags.aligned, arr.flags.writeable))\n"
)


def test_captured_array_is_aligned_and_sums_exactly_as_serial() -> None:
    for size in (3_000_001, 1_000_003):  # pickle stream lengths that would misalign
        arr = np.random.default_rng(size).random(size)
        ns = {"arr": arr}
        parmagic.run_cell(BODY, ns, n_jobs=2, progress=False, auto_serial=False)  # workers
        assert ns["out"] == [arr[i * 1000 : (i + 1) * 300000].sum() for i in range(8)]
        # a read-only view of the shared map in every worker, not a copy
        assert set(ns["seen"]) == {(0, True, False)}


def test_payload_is_sent_once_per_run_not_per_task() -> None:
    """Tasks carry only a reference: a big captured value does not slow small batches down."""
    arr = np.zeros(20_000_000)  # 160 MB
    ns = {"arr": arr}
    parmagic.run_cell(
        "n = []\nfor i in range(200):\n    n.append(arr.shape[0])\n",
        ns,
        n_jobs=2,
        chunksize=1,
        progress=False,
        auto_serial=False,  # every batch goes to a worker
    )
    assert ns["n"] == [20_000_000] * 200
    assert len(parmagic.last_run().tasks) == 200


def test_warning_filters_travel_without_importing_their_categories_modules() -> None:
    # IPython's own filters name IPython.core.completer's category: unpickling the class
    # imported all of IPython in each worker, 50 ms at its first batch
    import subprocess
    import sys
    import warnings

    import cloudpickle
    from IPython.core.completer import ProvisionalCompleterWarning

    from parmagic.replay_output import settings
    from parmagic.worker.rich import CategoryRef

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ProvisionalCompleterWarning)
        found = settings()
    refs = [f[2] for f in found.warning_filters if isinstance(f[2], CategoryRef)]
    assert refs[0].resolve() is ProvisionalCompleterWarning  # here, where it is imported
    code = (
        "import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
        "print('IPython' in sys.modules, s.warning_filters[0][2].resolve())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=cloudpickle.dumps(found), capture_output=True
    )
    assert out.stdout.decode().split() == ["False", "None"], out.stderr.decode()[-500:]
