"""Options, %pmap, %parmagic and bad input, through a real IPython shell."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

import parmagic

from .shell import fresh, run, shell


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(ip, "import threading\ndef sq(x):\n    return x * x\n", capsys)
    yield ip
    parmagic.set_defaults(n_jobs=-1, backend="loky")


@pytest.mark.parametrize(
    "line,needle",
    [
        ("-n 0", "--n-jobs"),
        ("-n two", "--n-jobs"),
        ("--backend nope", "--backend"),
        ("--prefer gpu", "--prefer"),
        ("--timeout -1", "--timeout"),
        ("--on-error ignore", "--on-error"),
        ("--chunksize 0", "--chunksize"),
        ("--chunksize lots", "--chunksize"),
        ("--sweep a,b", "--sweep"),
        ("--scheduler tcp://127.0.0.1:1", "--scheduler needs --backend dask"),
        ("--no-such-option", "unrecognized"),
    ],
)
def test_bad_options_are_one_line_usage_errors_and_change_nothing(
    ip, capsys, line: str, needle: str
) -> None:
    run(ip, "x = 0", capsys)
    result, out, err = run(ip, f"%%parallel {line}\nx = 1\nfor i in range(3):\n    pass\n", capsys)
    assert isinstance(result.error_in_exec, UsageError)
    assert needle in str(result.error_in_exec)
    assert "\n" not in str(result.error_in_exec).strip()
    assert ip.user_ns["x"] == 0 and "i" not in ip.user_ns


def test_help_lists_every_option(ip, capsys) -> None:
    for magic in ("%%parallel -h\npass\n", "%pmap -h", "%parmagic -h"):
        result, out, _ = run(ip, magic, capsys)
        assert result.success
        for option in (
            "--n-jobs",
            "--backend",
            "--timeout",
            "--on-error",
            "--chunksize",
            "--no-progress",
            "--sweep",
        ):
            assert option in out, (magic, option)


def test_pmap_both_forms(ip, capsys) -> None:
    result, _, err = run(ip, "a = %pmap -n 2 --no-progress sq(x) for x in range(6)", capsys)
    assert result.success, err
    result, _, err = run(ip, "b = %pmap --no-progress pow, range(5), [2, 3, 2, 3, 2, 3]", capsys)
    assert result.success, err
    assert ip.user_ns["a"] == [0, 1, 4, 9, 16, 25]
    assert ip.user_ns["b"] == list(map(pow, range(5), [2, 3, 2, 3, 2, 3]))
    assert "x" not in ip.user_ns  # a comprehension binds nothing


def test_pmap_inside_a_function_means_its_local_names(ip, capsys) -> None:
    cell = (
        "xs = [100, 200]\n"
        "def helper(xs):\n"
        "    k = 3\n"
        "    a = %pmap -n 2 --no-progress sq, xs\n"
        "    b = %pmap -n 2 --no-progress sq(x) + k for x in xs\n"
        "    return a, b\n"
        "r = helper([1, 2, 3])\n"
    )
    result, _, err = run(ip, cell, capsys)
    assert result.success, err
    assert ip.user_ns["r"] == ([1, 4, 9], [4, 7, 12])  # the argument, not the global xs
    assert "k" not in ip.user_ns and ip.user_ns["xs"] == [100, 200]


@pytest.mark.parametrize(
    "line,needle",
    [
        ("%pmap", "needs an expression"),
        ("%pmap 3, [1, 2]", "callable"),
        ("%pmap sq", "callable and at least one iterable"),
        ("%pmap sq(x) for x in", "cannot read"),
    ],
)
def test_pmap_bad_input(ip, capsys, line: str, needle: str) -> None:
    result, _, _ = run(ip, line, capsys)
    assert isinstance(result.error_in_exec, UsageError)
    assert needle in str(result.error_in_exec)


def test_config_sets_defaults_for_later_cells(ip, capsys) -> None:
    result, out, _ = run(ip, "%parmagic config -n 1", capsys)
    assert result.success and re.search(r"^  n_jobs: +1$", out, re.M)
    run(ip, "%%parallel --no-progress\nr = []\nfor i in range(3):\n    r.append(i)\n", capsys)
    assert parmagic.last_run().backend == "serial"
    run(ip, "%parmagic config --backend threads -n 2", capsys)
    run(ip, "%%parallel --no-progress\nr = []\nfor i in range(3):\n    r.append(i)\n", capsys)
    assert parmagic.last_run().backend == "threads" and ip.user_ns["r"] == [0, 1, 2]


def test_config_context_manager_restores(ip) -> None:
    before = parmagic.defaults()
    with parmagic.config(backend="threads", n_jobs=2):
        assert parmagic.pmap(abs, [-1, -2], progress=False) == [1, 2]
        assert parmagic.last_run().backend == "threads"
    assert parmagic.defaults() == before


def test_bad_config_changes_nothing(ip, capsys) -> None:
    before = parmagic.defaults()
    result, _, _ = run(ip, "%parmagic config -n 2 --backend nope", capsys)
    assert isinstance(result.error_in_exec, UsageError)
    assert parmagic.defaults() == before


def test_unknown_parmagic_command(ip, capsys) -> None:
    result, _, _ = run(ip, "%parmagic restart", capsys)
    assert isinstance(result.error_in_exec, UsageError)
    assert "status, config, cache or shutdown" in str(result.error_in_exec)


def test_status_and_shutdown(ip, capsys) -> None:
    run(ip, "%%parallel -n 2 --no-progress\nr = []\nfor i in range(4):\n    r.append(i)\n", capsys)
    result, out, _ = run(ip, "%parmagic status", capsys)
    pids = parmagic.status()["pids"]
    assert result.success and len(pids) == 2 and all(str(p) in out for p in pids)
    assert "iterations run" in out
    run(ip, "%parmagic shutdown", capsys)
    assert parmagic.status()["pids"] == []
    result, _, err = run(
        ip, "%%parallel -n 2 --no-progress\nr = []\nfor i in range(4):\n    r.append(i)\n", capsys
    )
    assert result.success, err
    assert ip.user_ns["r"] == [0, 1, 2, 3]


def test_unsendable_value_is_refused_before_any_task_naming_it(ip, capsys) -> None:
    run(ip, "lock = threading.Lock()\nout = []", capsys)
    result, _, err = run(
        ip,
        "%%parallel -n 2 --no-progress\nfor i in range(4):\n    with lock:\n        out.append(i)\n",
        capsys,
    )
    exc = result.error_in_exec
    assert isinstance(exc, parmagic.UnsendableValueError)
    assert "'lock'" in str(exc) and "_thread.lock" in str(exc) and "--backend threads" in str(exc)
    assert ip.user_ns["out"] == [] and "i" not in ip.user_ns
    result, _, err = run(
        ip,
        "%%parallel -n 2 --no-progress --backend threads\nfor i in range(4):\n    with lock:\n        out.append(i)\n",
        capsys,
    )
    assert result.success, err
    assert ip.user_ns["out"] == [0, 1, 2, 3]


def test_pool_resizes_with_n_jobs(ip, capsys) -> None:
    cell = "%%parallel -n {n} --no-progress --no-auto-serial\nr = []\nfor i in range(8):\n    r.append(i)\n"
    run(ip, cell.format(n=2), capsys)
    assert len(parmagic.status()["pids"]) == 2
    run(ip, cell.format(n=3), capsys)
    assert len(parmagic.status()["pids"]) == 3
    run(ip, cell.format(n=2), capsys)
    assert len(parmagic.status()["pids"]) == 2


def test_unload_extension_shuts_the_pool(capsys) -> None:
    ip = shell()
    run(ip, "%%parallel -n 2 --no-progress\nr = []\nfor i in range(4):\n    r.append(i)\n", capsys)
    assert parmagic.status()["pids"]
    run(ip, "%unload_ext parmagic", capsys)
    assert parmagic.status()["pids"] == []
    run(ip, "%load_ext parmagic", capsys)


def test_compare_and_sweep_apply_effects_once_and_show_timings(ip, capsys) -> None:
    cell = (
        "%%parallel -n 2 --no-progress --compare --sweep 1,2\n"
        "out, total = [], 0\nfor i in range(6):\n    print('it', i)\n    out.append(sq(i))\n    total += i\n"
        "out[-1]\n"
    )
    result, out, err = run(ip, cell, capsys)
    assert result.success, err
    assert ip.user_ns["out"] == [0, 1, 4, 9, 16, 25] and ip.user_ns["total"] == 15
    assert result.result == 25
    assert [line for line in out.splitlines() if line.startswith("it ")] == [
        f"it {i}" for i in range(6)
    ]
    assert "serial" in err and "speedup" in err  # the comparison and the sweep, as text
