"""Functions the benchmark's workers call.

They live in a module of their own (``bench/`` is put on ``sys.path`` by
``bench/bench.py``, and worker processes inherit it) so that every tool pickles
them by reference, the same way, and none pays for shipping a function by value.
Nothing heavy is imported here: workers import this module.
"""

from __future__ import annotations

import time
from typing import Any


def inc(x):
    """The trivial iteration: almost no work, so only the tool's overhead shows."""
    return x + 1


def spin(loops):
    """Pure-Python CPU work: ``loops`` turns of a small-integer loop (holds the GIL throughout).

    Every turn costs the same (the values stay small), so time is linear in ``loops``.
    """
    acc = 0
    for i in range(loops):
        acc = (acc * 31 + i) & 0xFFFF
    return acc


def spin_loops_for(ms: float, trials: int = 5) -> int:
    """How many ``spin`` loops take about ``ms`` milliseconds here (median of ``trials``)."""
    loops = 100_000
    for _ in range(2):  # probe, then re-measure at the size found
        times = []
        for _ in range(trials):
            t0 = time.perf_counter()
            spin(loops)
            times.append(time.perf_counter() - t0)
        times.sort()
        loops = max(1, int(loops * (ms / 1000.0) / times[len(times) // 2]))
    return loops


def sleep(seconds):
    """``time.sleep`` as a module function (the seed example's iteration)."""
    time.sleep(seconds)


def slice_sum(arr, i, parts=40):
    """Sum slice ``i`` of ``parts`` equal slices of ``arr`` (the big-argument iteration)."""
    k = len(arr) // parts
    return float(arr[i * k : (i + 1) * k].sum())


def slice_sum_shared(arr, i):
    """``slice_sum`` with mpire's argument order (shared objects first)."""
    return slice_sum(arr, i)


# Real-notebook iterations (scikit-learn, pandas). They import inside, so that a worker
# that never runs them never pays for the import.


def fit_one(est, X, y=None):
    """``est.fit(X, y)``, returning the fitted estimator (the anchors' form of the fit loop)."""
    return est.fit(X, y)


def fitted_score(est, X, y) -> tuple[str, Any]:
    """What the benchmark compares of a fitted estimator: its class and training score.

    Estimators compare by identity, so the fit loop's results are compared through
    this; an estimator the loop left unfitted reads ``"not fitted"``.
    """
    from sklearn.exceptions import NotFittedError

    try:
        return type(est).__name__, float(est.score(X, y))
    except NotFittedError:
        return type(est).__name__, "not fitted"


def gmm_bic(X, k: int) -> float:
    """``GaussianMixture(n_components=k).fit(X).bic(X)`` (fixed seed, so every run agrees)."""
    from sklearn.mixture import GaussianMixture

    return float(GaussianMixture(n_components=k, random_state=0).fit(X).bic(X))


def kmeans_inertia(pixels, k: int, n_init: int = 4) -> float:
    """Colour quantisation: ``KMeans(n_clusters=k).fit(pixels).inertia_`` (fixed seed)."""
    from sklearn.cluster import KMeans

    return float(KMeans(n_clusters=k, n_init=n_init, random_state=0).fit(pixels).inertia_)


def _mean_abs_dev(a) -> float:
    return float(abs(a - a.mean()).mean())


def group_stat(sub) -> float:
    """A per-group computation on a DataFrame slice: a rolling custom statistic and a quantile.

    ``rolling().apply`` with a Python function is the slow, GIL-holding part, as in
    many notebooks.
    """
    rolled = sub["x"].rolling(20).apply(_mean_abs_dev, raw=True)
    return float(rolled.mean()) + float(sub.groupby("h")["y"].quantile(0.9).sum())
