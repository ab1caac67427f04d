"""Random numbers (SPEC §2): one stream per iteration, the same on every run, through IPython."""

from __future__ import annotations

import random

import numpy as np
import pytest

from .shell import fresh, run, shell

PROCESS_BACKENDS = ["loky", "multiprocessing"]
NOTICE = "parmagic: iterations drew random numbers from"

GLOBAL_NUMPY = """np.random.seed(42)
xs = []
for i in range(20):
    xs.append(np.random.normal())
after = np.random.random()
"""


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(ip, "import random\nimport numpy as np", capsys)
    return ip


def cell(ip, capsys, magic: str, body: str, *names: str) -> tuple[list, str]:
    """Run ``body`` under ``%%parallel magic``; return the values of ``names`` and stderr."""
    result, _, err = run(ip, f"%%parallel --no-progress {magic}\n{body}", capsys)
    assert result.success, err
    return [ip.user_ns[n] for n in names], err


def plain_normals(seed: int, n: int) -> tuple[list[float], float]:
    """What the plain loop of GLOBAL_NUMPY gives (on a private generator, not the shell's)."""
    rs = np.random.RandomState(seed)
    return [rs.normal() for _ in range(n)], rs.random()


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_global_numpy_same_on_every_run_for_any_n_and_chunksize(ip, capsys, backend) -> None:
    runs = [
        f"-n 2 --backend {backend}",
        f"-n 3 --backend {backend}",
        f"-n 2 --chunksize 1 --backend {backend}",
        f"-n 2 --chunksize 7 --backend {backend}",
        f"-n 2 --backend {backend}",
    ]
    seen = [cell(ip, capsys, magic, GLOBAL_NUMPY, "xs", "after") for magic in runs]
    (xs, after), err = seen[0]
    for (other_xs, other_after), _ in seen[1:]:
        assert other_xs == xs
        assert other_after == after
    assert len(set(xs)) == len(xs)  # no two iterations share draws
    plain_xs, plain_after = plain_normals(42, 20)
    assert xs != plain_xs
    assert after != plain_after and after not in xs  # the kernel's generator moved on
    assert err.count(NOTICE) == 1 and "np.random" in err


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_captured_generator_and_random_module(ip, capsys, backend) -> None:
    body = (
        "rng = np.random.default_rng(0)\nrandom.seed(0)\nys = []\nfor i in range(12):\n"
        "    ys.append((rng.normal(), random.random()))\nafter = (rng.random(), random.random())\n"
    )
    first, err = cell(ip, capsys, f"-n 2 --chunksize 1 --backend {backend}", body, "ys", "after")
    again, _ = cell(ip, capsys, f"-n 2 --chunksize 5 --backend {backend}", body, "ys", "after")
    assert again == first
    ys, after = first
    assert len({y for pair in ys for y in pair}) == 2 * len(ys)
    rng, r = np.random.default_rng(0), random.Random(0)
    plain = [(rng.normal(), r.random()) for _ in range(12)]
    assert [a for a, _ in ys] != [a for a, _ in plain]
    assert [b for _, b in ys] != [b for _, b in plain]
    assert after != (rng.random(), r.random())
    assert NOTICE in err and "rng" in err and "random" in err


@pytest.mark.parametrize("backend", PROCESS_BACKENDS)
def test_iterations_that_seed_themselves_give_the_plain_numbers(ip, capsys, backend) -> None:
    body = (
        "out = []\nfor i in range(8):\n    np.random.seed(i)\n    random.seed(i)\n"
        "    rng = np.random.default_rng(i)\n"
        "    out.append((np.random.normal(), random.random(), rng.normal()))\n"
    )
    (out,), _ = cell(ip, capsys, f"-n 2 --chunksize 4 --backend {backend}", body, "out")
    plain = []
    for i in range(8):
        rs, r, g = np.random.RandomState(i), random.Random(i), np.random.default_rng(i)
        plain.append((rs.normal(), r.random(), g.normal()))
    assert out == plain


@pytest.mark.parametrize("backend", [*PROCESS_BACKENDS, "threads"])
def test_a_loop_that_never_draws_leaves_the_generators_alone(ip, capsys, backend) -> None:
    body = (
        "np.random.seed(5)\nrandom.seed(5)\nys = []\nfor i in range(30):\n    ys.append(i * i)\n"
        "after = (np.random.random(), random.random())\n"
    )
    (after,), err = cell(ip, capsys, f"-n 2 --backend {backend}", body, "after")
    assert after == (np.random.RandomState(5).random(), random.Random(5).random())
    assert NOTICE not in err


def test_serial_draws_what_the_workers_draw(ip, capsys) -> None:
    """SPEC: the same numbers for any -n, -n 1 (in the kernel) included."""
    (xs1, after1), err = cell(ip, capsys, "-n 1", GLOBAL_NUMPY, "xs", "after")
    (xs2, after2), _ = cell(ip, capsys, "-n 2", GLOBAL_NUMPY, "xs", "after")
    assert (xs1, after1) == (xs2, after2) and xs1 != plain_normals(42, 20)[0]
    assert NOTICE in err


def test_threads_share_the_kernels_generator_and_say_so(ip, capsys) -> None:
    (xs, after), err = cell(ip, capsys, "-n 2 --backend threads", GLOBAL_NUMPY, "xs", "after")
    plain_xs, plain_after = plain_normals(42, 20)
    # one generator, shared: the same draws in some order, and it ends where the plain loop's does
    assert sorted(xs) == sorted(plain_xs)
    assert after == plain_after
    assert NOTICE in err and "--backend threads" in err


def test_library_code_drawing_from_the_global_generator(ip, capsys) -> None:
    pytest.importorskip("sklearn")
    body = (
        "from sklearn.cluster import KMeans\nnp.random.seed(0)\nX = np.random.rand(60, 2)\n"
        "inertia = []\nfor k in range(6):\n"
        "    inertia.append(KMeans(n_clusters=3, n_init=1).fit(X).inertia_)\n"
    )
    first, err = cell(ip, capsys, "-n 2 --chunksize 1", body, "inertia")
    again, _ = cell(ip, capsys, "-n 2 --chunksize 4", body, "inertia")
    assert again == first
    assert NOTICE in err and "np.random" in err


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Two single-threaded dask workers (threads of one worker would share its generators)."""
    pytest.importorskip("distributed")
    from .test_dask import running_cluster

    with running_cluster(tmp_path_factory.mktemp("dask"), workers=2, threads=1) as found:
        yield found


def test_every_process_backend_gives_the_same_numbers(ip, capsys) -> None:
    (xs, after), _ = cell(ip, capsys, "-n 2 --backend loky", GLOBAL_NUMPY, "xs", "after")
    other, _ = cell(ip, capsys, "-n 3 --backend multiprocessing", GLOBAL_NUMPY, "xs", "after")
    assert other == [xs, after]


@pytest.mark.dask
def test_dask_gives_the_same_numbers(ip, capsys, dask_cluster) -> None:
    (xs, after), _ = cell(ip, capsys, "-n 2 --chunksize 3", GLOBAL_NUMPY, "xs", "after")
    magic = f"--backend dask --scheduler {dask_cluster.address}"
    for chunks in ("--chunksize 1", "--chunksize 7"):
        other, err = cell(ip, capsys, f"{magic} {chunks}", GLOBAL_NUMPY, "xs", "after")
        assert other == [xs, after]
        assert NOTICE in err


@pytest.mark.dask
def test_on_dask_the_clusters_own_draws_are_not_the_loops(ip, capsys, dask_cluster) -> None:
    # dask's threads draw from the random module (heartbeat jitter, peer choice) while
    # the batches run: neither the notice nor the iterations' numbers may follow them
    run(ip, "import random, time", capsys)
    quiet = "for i in range(4):\n    time.sleep(0.6)\n"
    magic = f"--backend dask --scheduler {dask_cluster.address}"
    _, err = cell(ip, capsys, magic, quiet)
    assert NOTICE not in err
    draws = "random.seed(1)\nys = []\nfor i in range(4):\n    time.sleep(0.6)\n    ys.append(random.random())\n"
    (on_dask,), err = cell(ip, capsys, magic, draws, "ys")
    (on_loky,), _ = cell(ip, capsys, "-n 2 --backend loky", draws, "ys")
    assert on_dask == on_loky and NOTICE in err


def test_failing_iterations_keep_the_streams_of_the_rest(ip, capsys) -> None:
    body = (
        "np.random.seed(1)\nxs = []\nfor i in range(10):\n    v = np.random.normal()\n"
        "    if i % 4 == 1:\n        raise ValueError(i)\n    xs.append(v)\n"
    )
    seen = []
    for chunks in ("--chunksize 1", "--chunksize 5"):
        magic = f"%%parallel --no-progress -n 2 --on-error collect {chunks}\n"
        result, _, err = run(ip, magic + body, capsys)
        assert [k for k, _, _ in result.error_in_exec.failures] == [1, 5, 9]
        seen.append((ip.user_ns["xs"], ip.user_ns["v"]))
    assert seen[0] == seen[1]
    assert len(set(seen[0][0])) == 7


def test_an_effect_failing_in_the_kernel_leaves_the_locals_of_its_stream(ip, capsys) -> None:
    body = (
        "np.random.seed(3)\nd = {}\nfor i in range(6):\n    v = np.random.normal()\n    d[i] += v\n"
    )
    seen = []
    for chunks in ("--chunksize 1", "--chunksize 3", "--chunksize 6"):
        result, _, _ = run(ip, f"%%parallel --no-progress -n 2 {chunks}\n{body}", capsys)
        assert isinstance(result.error_in_exec, KeyError)
        seen.append((ip.user_ns["i"], ip.user_ns["v"]))
    assert seen[0][0] == 0 and seen[1:] == seen[:1] * 2
