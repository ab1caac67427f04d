"""Real-notebook workloads: scikit-learn and pandas loops as notebooks write them.

- ``nb-estimators``: a list of estimators fitted in a loop (``for est in estimators:
  est.fit(X, y)``); parmagic's cell rows need the write-back of loop-target objects
  (SPEC section 2), the anchors and ``%pmap`` return the fitted models;
- ``nb-gmm``: ``GaussianMixture(n_components=k).fit(X).bic(X)`` over k = 1..20;
- ``nb-kmeans``: colour quantisation of a small synthetic image, KMeans inertia per k;
- ``nb-pandas``: a per-group computation over ``df.groupby(...)``;
- ``nb-cold``: a fresh interpreter that imports scikit-learn, runs the GMM loop plain,
  then ``%load_ext parmagic`` and the same loop under ``%%parallel`` (time from the
  pool's start to the loop's end), then joblib's first call (``bench.py --nb-cold-child``).

Data are small and synthetic (``sklearn.datasets``, a seeded numpy generator), sized so
the plain loop takes ~1-2 s on a 2-core machine (tiny with ``--quick``).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import harness as H
import runners as R
import workloads as W
from harness import Workload
from runners import (
    ALL_TOOLS,
    ENGINE_PMAP,
    JOBLIB,
    MAGIC_PAR,
    SERIAL,
    generic_runner,
    log,
    make_shell,
    quiet,
)

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
NB_REL_TOL = 1e-6  # kernel and workers run different BLAS/OpenMP thread counts
# --quick: one cell form and one map form of parmagic, joblib and the plain loop, so that the
# smoke run does not wait for scikit-learn to import in every anchor's workers (the other
# tools' code paths are the synthetic rows')
QUICK_TOOLS = [MAGIC_PAR, ENGINE_PMAP, JOBLIB, SERIAL]


def _memo(f: Callable[[int], Any]) -> Callable[[int], Any]:
    """``f`` computed once per size: the serial result the checks compare with is costly."""
    return functools.lru_cache(maxsize=None)(f)


def _workload(
    name: str, quick: bool, n_jobs: int, size: int, warm_size: int, run, note: str, **kw
) -> Workload:
    """A real-notebook workload: every tool, its serial result (once per size) as the expected."""
    digest = kw.pop("digest", None)

    @_memo
    def expected(n: int):
        out = run(SERIAL, n)
        return digest(out) if digest else list(out)

    return Workload(
        name=name,
        n_jobs=n_jobs,
        size=size,
        warm_size=warm_size,
        tools=list(QUICK_TOOLS if quick else ALL_TOOLS),
        runner=run,
        expected=expected,
        digest=digest,
        rel_tol=NB_REL_TOL,
        group="notebook",
        note=note,
        **kw,
    )


# --------------------------------------------------------------------------- estimators


def estimator_list(n: int) -> list:
    """The first ``n`` of a fixed mix of unfitted classifiers (cheap ones first, for warm-up)."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    mix = [
        lambda: LogisticRegression(C=1.0, max_iter=1000),
        lambda: DecisionTreeClassifier(random_state=0),
        lambda: KNeighborsClassifier(5),
        lambda: SVC(C=1.0),
        lambda: RandomForestClassifier(n_estimators=50, random_state=0),
        lambda: GradientBoostingClassifier(n_estimators=50, random_state=0),
        lambda: LogisticRegression(C=0.1, max_iter=1000),
        lambda: SVC(C=10.0),
        lambda: RandomForestClassifier(n_estimators=50, random_state=1),
        lambda: GradientBoostingClassifier(n_estimators=50, random_state=1),
        lambda: ExtraTreesClassifier(n_estimators=50, random_state=0),
        lambda: LogisticRegression(C=10.0, max_iter=1000),
    ]
    return [mix[i % len(mix)]() for i in range(n)]


def w_estimators(quick: bool, n_jobs: int) -> Workload:
    """``for est in estimators: est.fit(X, y)`` over a mix of classifiers."""
    from sklearn.datasets import make_classification

    samples, features = (200, 8) if quick else (2000, 20)
    X, y = make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=features // 2,
        random_state=0,
    )
    size = 4 if quick else 12
    run = generic_runner(
        n_jobs,
        functools.partial(W.fit_one, X=X, y=y),
        estimator_list,
        lambda n: "for est in estimators:\n    est.fit(X, y)\n",
        lambda n: "fit_one(est, X, y) for est in estimators",
        lambda n: {
            "estimators": estimator_list(n),
            "X": X,
            "y": y,
            "fit_one": W.fit_one,
        },
        result="estimators",
        iterable_items=True,
    )
    return _workload(
        "nb-estimators",
        quick,
        n_jobs,
        size,
        2,
        run,
        f"`for est in estimators: est.fit(X, y)`, {size} classifiers (logistic, tree, kNN, SVC, "
        f"forests, boosting) on make_classification {samples} x {features}; the cell rows "
        "need the write-back of fitted loop-target objects, the others return fitted models",
        digest=lambda out: [W.fitted_score(e, X, y) for e in out],
    )


# --------------------------------------------------------------------------- GMM


def gmm_data(quick: bool):
    """The blobs the GMM loop fits (also built in the ``nb-cold`` child)."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=200 if quick else 3000, n_features=4, centers=6, random_state=0)
    return X


def gmm_cell(k_max: int) -> str:
    """The GMM loop as a notebook writes it (also the ``nb-cold`` child's cell)."""
    return (
        "bics = []\n"
        f"for k in range(1, {k_max + 1}):\n"
        "    bics.append(GaussianMixture(n_components=k, random_state=0).fit(X).bic(X))\n"
    )


def w_gmm(quick: bool, n_jobs: int) -> Workload:
    """``GaussianMixture(n_components=k).fit(X).bic(X)`` over k = 1..20 (1..2 with --quick)."""
    from sklearn.mixture import GaussianMixture

    X = gmm_data(quick)
    size = 2 if quick else 20
    run = generic_runner(
        n_jobs,
        functools.partial(W.gmm_bic, X),
        lambda n: range(1, n + 1),
        gmm_cell,
        lambda n: (
            f"GaussianMixture(n_components=k, random_state=0).fit(X).bic(X) "
            f"for k in range(1, {n + 1})"
        ),
        {"GaussianMixture": GaussianMixture, "X": X},
        result="bics",
    )
    return _workload(
        "nb-gmm",
        quick,
        n_jobs,
        size,
        2,
        run,
        f"`GaussianMixture(n_components=k).fit(X).bic(X)` for k = 1..{size}, "
        f"make_blobs {len(X)} x 4",
    )


# --------------------------------------------------------------------------- KMeans


def w_kmeans(quick: bool, n_jobs: int) -> Workload:
    """Colour quantisation: ``KMeans(n_clusters=k).fit(pixels).inertia_`` per k."""
    import numpy as np
    from sklearn.cluster import KMeans

    side = 16 if quick else 128
    rng = np.random.default_rng(0)
    # an image of 8 x 8 flat colour blocks plus noise: a few real colours to find
    blocks = rng.random((8, 8, 3))
    img = np.kron(blocks, np.ones((side // 8, side // 8, 1))) + rng.normal(0, 0.03, (side, side, 3))
    pixels = np.clip(img, 0, 1).reshape(-1, 3)
    n_init = 1 if quick else 8
    size = 2 if quick else 16
    run = generic_runner(
        n_jobs,
        functools.partial(W.kmeans_inertia, pixels, n_init=n_init),
        lambda n: range(2, n + 2),
        lambda n: (
            "inertias = []\n"
            f"for k in range(2, {n + 2}):\n"
            f"    inertias.append(KMeans(n_clusters=k, n_init={n_init}, random_state=0)"
            ".fit(pixels).inertia_)\n"
        ),
        lambda n: (
            f"KMeans(n_clusters=k, n_init={n_init}, random_state=0).fit(pixels).inertia_ "
            f"for k in range(2, {n + 2})"
        ),
        {"KMeans": KMeans, "pixels": pixels},
        result="inertias",
    )
    return _workload(
        "nb-kmeans",
        quick,
        n_jobs,
        size,
        2,
        run,
        f"colour quantisation: `KMeans(n_clusters=k, n_init={n_init}).fit(pixels).inertia_` "
        f"for k = 2..{size + 1}, a {side} x {side} synthetic image",
    )


# --------------------------------------------------------------------------- pandas


def w_pandas(quick: bool, n_jobs: int) -> Workload:
    """``for key, sub in df.groupby("g"): stats[key] = group_stat(sub)``."""
    import numpy as np
    import pandas as pd

    rows, groups = (8_000, 4) if quick else (200_000, 40)
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "g": rng.integers(0, groups, rows),
            "h": rng.integers(0, 10, rows),
            "x": rng.normal(size=rows),
            "y": rng.random(rows),
        }
    )
    frames = _memo(lambda n: df if n == groups else df[df["g"] < n])
    run = generic_runner(
        n_jobs,
        W.group_stat,
        lambda n: [sub for _, sub in frames(n).groupby("g")],
        lambda n: (
            "stats = {}\nfor key, sub in df.groupby('g'):\n    stats[key] = group_stat(sub)\n"
        ),
        lambda n: "group_stat(sub) for key, sub in df.groupby('g')",
        lambda n: {"df": frames(n), "group_stat": W.group_stat},
        result="stats",
        iterable_items=True,
    )
    return _workload(
        "nb-pandas",
        quick,
        n_jobs,
        groups,
        2,
        run,
        f"`for key, sub in df.groupby('g'): stats[key] = group_stat(sub)`: {groups} groups of a "
        f"{rows:,}-row DataFrame; a rolling Python statistic and a per-group quantile",
        digest=lambda out: list(out.values()) if isinstance(out, dict) else list(out),
    )


# --------------------------------------------------------------------------- cold start


def nb_cold_child(quick: bool) -> None:
    """In a fresh interpreter that has imported scikit-learn: the GMM loop plain, then the
    same loop right after ``%load_ext parmagic`` (timed from the load, so the pool's start
    counts), warm, and joblib's first and warm calls for context."""
    out: dict[str, Any] = {}
    ip = make_shell()
    with quiet():
        ip.run_cell("x = 1", store_history=True)  # IPython's own first-cell costs
    t0 = time.perf_counter()
    from sklearn.mixture import GaussianMixture

    X = gmm_data(quick)
    out["import_s"] = time.perf_counter() - t0
    ip.user_ns.update(GaussianMixture=GaussianMixture, X=X)
    k_max = 2 if quick else 20
    src = gmm_cell(k_max)

    def cell(magic: str) -> float:
        t0 = time.perf_counter()
        with quiet() as buf:
            res = ip.run_cell(magic + src, store_history=True)
        if not res.success or len(ip.user_ns.get("bics", ())) != k_max:
            raise SystemExit(
                f"nb-cold cell failed: {res.error_in_exec!r}\n{buf.getvalue()[-1500:]}"
            )
        return time.perf_counter() - t0

    out["plain_first_s"] = cell("")
    out["plain_s"] = statistics.median(cell("") for _ in range(2))
    t0 = time.perf_counter()
    with quiet():
        res = ip.run_cell("%load_ext parmagic", store_history=True)
    if not res.success:
        raise SystemExit(f"%load_ext parmagic failed: {res.error_in_exec!r}")
    out["first_s"] = time.perf_counter() - t0 + cell("%%parallel -n 2\n")
    out["warm_s"] = statistics.median(cell("%%parallel -n 2\n") for _ in range(2))
    import parmagic

    parmagic.shutdown()
    from joblib import Parallel, delayed

    def jl() -> float:
        t0 = time.perf_counter()
        Parallel(n_jobs=2)(delayed(W.gmm_bic)(X, k) for k in range(1, k_max + 1))
        return time.perf_counter() - t0

    out["joblib_first_s"] = jl()
    out["joblib_warm_s"] = statistics.median(jl() for _ in range(2))
    print("NBCOLD " + json.dumps(out), flush=True)


def run_nb_cold(repeats: int, quick: bool) -> dict[str, Any]:
    """``nb_cold_child`` ``repeats`` times, each in a fresh interpreter."""
    rows: list[dict[str, float]] = []
    error = ""
    if R.PM is None or R.PM.mod is None:
        return {
            "rows": rows,
            "error": f"n/a: {R.PM.error if R.PM else 'parmagic not loaded'}",
        }
    for r in range(repeats):
        if H.QUIET_LOAD is not None:
            H.wait_quiet(H.QUIET_LOAD)
        cmd = [sys.executable, BENCH, "--nb-cold-child"] + (["--quick"] if quick else [])
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("NBCOLD ")]
        if p.returncode or not line:
            error = f"error: child exit {p.returncode}: {(p.stderr or p.stdout)[-300:]}"
            log(f"[nb-cold] {error}")
            break
        rows.append(json.loads(line[-1][7:]))
        d = rows[-1]
        log(
            f"[nb-cold] repeat {r + 1}/{repeats}: plain {d['plain_s']:.3f} first after load_ext "
            f"{d['first_s']:.3f} warm {d['warm_s']:.3f} joblib first {d['joblib_first_s']:.3f}"
        )
    return {"rows": rows, "error": error, "k_max": 2 if quick else 20}
