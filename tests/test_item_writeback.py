"""Loop items changed in a worker reach the kernel's own objects; captured changes fail loudly.

SPEC §2: "Kernel objects reached through a local name" and "A captured object
changed in a worker". Unit tests of the in-place merge, then cells through a
real IPython shell on the process backends, plain cell against parallel cell.
"""

from __future__ import annotations

import pickle

import pytest

import parmagic
from parmagic.worker.writeback import WritebackError, merge_into

from .shell import fresh, run, shell

BACKENDS = ["loky", "multiprocessing"]


def changed_copy(obj, change):
    copy = pickle.loads(pickle.dumps(obj))
    change(copy)
    return pickle.loads(pickle.dumps(copy))


def test_merge_keeps_the_identity_of_the_object_and_its_parts() -> None:
    inner = [1]
    box = {"inner": inner, "n": 0}
    merge_into(box, changed_copy(box, lambda b: (b["inner"].append(2), b.update(n=1))))
    assert box == {"inner": [1, 2], "n": 1} and box["inner"] is inner


def test_merge_of_a_fitted_pipeline_fits_the_kernels_own_steps() -> None:
    np = pytest.importorskip("numpy")
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.arange(12.0).reshape(6, 2)
    scaler = StandardScaler()
    pipe = make_pipeline(scaler, LinearRegression())
    merge_into(pipe, changed_copy(pipe, lambda p: p.fit(X, X.sum(1))))
    assert pipe.steps[0][1] is scaler and hasattr(scaler, "mean_")


def test_an_array_that_changes_shape_cannot_be_updated_in_place() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(WritebackError):
        merge_into(np.zeros(3), np.zeros(4))


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(
        ip,
        "import numpy as np, pandas as pd\n"
        "from sklearn.linear_model import LinearRegression, Ridge\n"
        "X = np.arange(40.0).reshape(20, 2); y = X @ [1.0, 2.0]\n",
        capsys,
    )
    return ip


def magic(backend: str) -> str:
    return f"%%parallel -n 2 --no-progress --backend {backend}\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_estimators_fitted_in_the_loop_are_the_kernels_own(ip, capsys, backend: str) -> None:
    run(ip, "estimators = [LinearRegression(), Ridge()]", capsys)
    cell = "fitted = []\nfor est in estimators:\n    est.fit(X, y)\n    fitted.append(est)\n"
    result, _, _ = run(ip, magic(backend) + cell, capsys)
    assert result.error_in_exec is None
    ns = ip.user_ns
    assert all(hasattr(e, "coef_") for e in ns["estimators"])  # fitted in the kernel
    assert ns["est"] is ns["estimators"][-1]  # the loop target is the kernel's last item
    assert ns["fitted"][0] is ns["estimators"][0]  # an effect value that is the item


@pytest.mark.parametrize("backend", BACKENDS)
def test_estimators_that_draw_random_numbers_share_a_batch_and_are_fitted(
    ip, capsys, backend: str
) -> None:
    # SVC draws from numpy's global generator: a batch of several that drew runs again with
    # a stream per iteration, and must start again from the items as they came (it compared
    # the already-fitted copies, saw no change, and the kernel's estimators stayed unfitted)
    run(
        ip,
        "from sklearn.svm import SVC\nfrom sklearn.neighbors import KNeighborsClassifier",
        capsys,
    )
    run(ip, "labels = (X[:, 0] > 20).astype(int)", capsys)
    run(
        ip,
        "models = [KNeighborsClassifier(3), SVC(), SVC(C=10.0), KNeighborsClassifier(5)]",
        capsys,
    )
    cell = f"%%parallel -n 2 --no-progress --chunksize 2 --backend {backend}\n"
    cell += "for m in models:\n    m.fit(X, labels)\n"
    result, _, err = run(ip, cell, capsys)
    assert result.error_in_exec is None, err
    assert all(hasattr(m, "classes_") for m in ip.user_ns["models"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_and_dicts_edited_through_the_loop_variable(ip, capsys, backend: str) -> None:
    run(ip, "train = pd.DataFrame({'x': [1, 2]}); test = pd.DataFrame({'x': [3]})", capsys)
    run(ip, "ds = [{}, {}]; alias = ds[0]", capsys)
    cell = 'for df in (train, test):\n    df["x2"] = df["x"] ** 2\nfor d in ds:\n    d["t"] = 1\n'
    result, _, _ = run(ip, magic(backend) + cell, capsys)
    assert result.error_in_exec is None
    ns = ip.user_ns
    assert ns["train"]["x2"].tolist() == [1, 4] and ns["test"]["x2"].tolist() == [9]
    assert ns["df"] is ns["test"]
    assert ns["ds"] == [{"t": 1}, {"t": 1}] and ns["alias"] is ns["ds"][0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_captured_iterator_advanced_in_a_worker_fails_loudly(ip, capsys, backend: str) -> None:
    run(ip, "it = iter(range(100))", capsys)
    cell = "out = []\nfor i in range(6):\n    out.append(next(it))\n"
    result, _, _ = run(ip, magic(backend) + cell, capsys)
    error = result.error_in_exec
    assert isinstance(error, parmagic.CapturedChangeError)
    assert "'it'" in str(error) and "range_iterator" in str(error) and "line 3" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_function_changing_a_global_fails_the_iteration(ip, capsys, backend: str) -> None:
    run(ip, "memo = {}\ndef f(x):\n    memo[x] = x * x\n    return x\n", capsys)
    cell = "out = []\nfor i in range(4):\n    out.append(f(i))\n"
    result, _, _ = run(ip, magic(backend) + cell, capsys)
    error = result.error_in_exec
    assert isinstance(error, parmagic.CapturedChangeError)
    assert "global 'memo'" in str(error) and "f()" in str(error)
    assert ip.user_ns["memo"] == {}  # never a silent half-change


def test_the_same_object_changed_by_two_iterations_is_refused(ip, capsys) -> None:
    run(ip, "a = {'n': 0}", capsys)
    cell = "for d in [a, a]:\n    d['n'] += 1\n"
    result, _, _ = run(ip, "%%parallel -n 2 --no-progress --chunksize 1\n" + cell, capsys)
    assert isinstance(result.error_in_exec, parmagic.WritebackError)
    assert ip.user_ns["a"] == {"n": 1}  # the first iteration's change, as the plain loop had it


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_local_bound_to_an_element_of_a_kernel_container(ip, capsys, backend: str) -> None:
    """``m = models[name]; m.fit(X, y)``: the kernel's own models are fitted, ``m`` is one."""
    run(ip, "models = {'lr': LinearRegression(), 'ridge': Ridge()}; first = models['lr']", capsys)
    run(ip, "pair = [LinearRegression(), Ridge()]; scores = {}", capsys)
    cell = (
        "for name in models:\n    m = models[name]\n    m.fit(X, y)\n"
        "    scores[name] = round(m.score(X, y), 3)\n"
        "for i in range(2):\n    e = pair[i]\n    e.fit(X, y)\n"
    )
    result, _, _ = run(ip, magic(backend) + cell, capsys)
    assert result.error_in_exec is None
    ns = ip.user_ns
    assert all(hasattr(e, "coef_") for e in [*ns["models"].values(), *ns["pair"]])
    assert ns["first"] is ns["models"]["lr"] and ns["m"] is ns["models"]["ridge"]
    assert ns["e"] is ns["pair"][1] and ns["scores"] == {"lr": 1.0, "ridge": 1.0}


def test_an_element_changed_by_two_iterations_is_refused_by_name(ip, capsys) -> None:
    run(ip, "pair = [LinearRegression(), Ridge()]", capsys)
    cell = "for i in range(4):\n    e = pair[i % 2]\n    e.fit(X, y + i)\n"
    result, _, _ = run(ip, "%%parallel -n 2 --no-progress --chunksize 1\n" + cell, capsys)
    assert isinstance(result.error_in_exec, parmagic.WritebackError)
    assert "pair[0]" in str(result.error_in_exec)


def test_items_of_enumerate_are_written_back_each_to_its_own_row(ip, capsys) -> None:
    """enumerate recycles its tuples: an id seen twice is not one object changed twice."""
    run(ip, "rows = [[k, 0] for k in range(6)]", capsys)
    cell = "for i, row in enumerate(rows):\n    row.sort()\n    row.append(i)\n"
    result, _, _ = run(ip, "%%parallel -n 2 --no-progress --chunksize 1\n" + cell, capsys)
    assert result.error_in_exec is None
    assert ip.user_ns["rows"] == [sorted([k, 0]) + [k] for k in range(6)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_elements_changed_in_a_batch_of_several_iterations(ip, capsys, backend: str) -> None:
    """A batch whose iterations change captured elements runs again one by one; its effects
    and locals come back whole."""
    run(ip, "models = {k: LinearRegression() for k in 'abcd'}; out = []", capsys)
    cell = (
        "for name in models:\n    m = models[name]\n    m.fit(X, y)\n"
        "    out.append(round(m.score(X, y), 2))\n"
    )
    opts = f"%%parallel -n 2 --no-progress --no-auto-serial --chunksize 4 --backend {backend}\n"
    result, _, _ = run(ip, opts + cell, capsys)
    assert result.error_in_exec is None
    ns = ip.user_ns
    assert ns["out"] == [1.0] * 4 and all(hasattr(v, "coef_") for v in ns["models"].values())
    assert ns["m"] is ns["models"]["d"]


def test_a_local_that_is_an_effect_value_is_the_same_object(ip, capsys) -> None:
    """``forest.append(tree)``: afterwards ``forest[-1] is tree``, as in the plain loop."""
    cell = (
        "forest = []\nfor seed in range(3):\n    tree = {'seed': seed}\n    forest.append(tree)\n"
    )
    result, _, _ = run(ip, "%%parallel -n 2 --no-progress\n" + cell, capsys)
    assert result.error_in_exec is None
    assert ip.user_ns["forest"][-1] is ip.user_ns["tree"]


def test_subplots_drawn_through_the_loop_target_fail_naming_the_axes(ip, capsys) -> None:
    pytest.importorskip("matplotlib")
    run(ip, "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt", capsys)
    cell = (
        "fig, axes = plt.subplots(2, 2)\n"
        "for i, ax in enumerate(axes.flat):\n"
        "    ax.plot(np.arange(5) * i)\n"
    )
    result, _, _ = run(ip, "%%parallel -n 2 --no-progress\n" + cell, capsys)
    error = result.error_in_exec
    assert isinstance(error, parmagic.WritebackError), repr(error)  # not a raw TypeError
    assert "iteration 0 changed part 1 of its item, a matplotlib.axes" in str(error)
    assert [len(a.lines) for a in ip.user_ns["axes"].flat] == [0, 0, 0, 0]  # nothing half-done
