"""Workers run the kernel's current code; exceptions and values keep their class (SPEC §2).

The pools are persistent: a worker started cells ago must still import what the
notebook can import now (a module written beside it, a folder added to
``sys.path``) and use the module the kernel reloaded, not the copy it imported
in an earlier run. Values whose class the notebook defined come back as
instances of the kernel's own class, so ``except MyErr`` and ``isinstance``
work. Each test names its modules uniquely: the workers outlive the tests.
"""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parmagic.worker import environment
from parmagic.worker.protocol import FileRef

from .kernel import execute, value
from .shell import run, shell

BACKENDS = ["loky", "multiprocessing"]


def magic(backend: str) -> str:
    # the workers' environment is the point: no part of a loop moves into the kernel
    return f"%%parallel -n 2 --no-progress --no-auto-serial --backend {backend} --chunksize 1"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", autouse=True)
def _no_shell_afterwards():
    """Later modules may test behaviour outside IPython: drop the shell these tests made."""
    yield
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The shell, in a fresh folder that is on sys.path as '' (as a notebook kernel's is)."""
    ip = shell()
    ip.reset(new_session=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    return ip


def warm(ip, backend: str, capsys) -> list[int]:
    """Start the pool before the module exists; return its workers' pids.

    A worker that could not unpickle its task may break the pool, which is then rebuilt
    with fresh workers that see the kernel as it is now: so the tests check that the
    workers that ran the loop are the ones started before.
    """
    result, _, err = run(ip, f"{magic(backend)}\nfor i in range(4):\n    pass\n", capsys)
    assert result.success, err
    return workers(backend)


def workers(backend: str) -> list[int]:
    from parmagic import pool
    from parmagic.options import Options

    return pool.get_backend(Options(backend=backend, n_jobs=2)).worker_pids()


def ok(ip, code: str, capsys) -> None:
    result, _, err = run(ip, code, capsys)
    assert result.success, err


# -- imports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_beside_the_notebook_imports_in_the_workers(
    ip, backend: str, tmp_path: Path, capsys
) -> None:
    before = warm(ip, backend, capsys)
    name = unique("beside")
    (tmp_path / f"{name}.py").write_text("def f(x):\n    return x + 1\n")
    ok(ip, f"import {name}\nfrom {name} import f\n", capsys)
    ok(
        ip,
        f"{magic(backend)}\nout = []\nfor i in range(6):\n    out.append(({name}.f(i), f(i)))\n",
        capsys,
    )
    assert ip.user_ns["out"] == [(i + 1, i + 1) for i in range(6)]
    assert workers(backend) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_appended_to_sys_path_imports_in_the_workers(
    ip, backend: str, tmp_path: Path, capsys
) -> None:
    before = warm(ip, backend, capsys)
    folder = tmp_path / "lib"
    folder.mkdir()
    name = unique("appended")
    (folder / f"{name}.py").write_text(
        "class Thing:\n    def __init__(self, x):\n        self.x = x\n"
    )
    ok(ip, f"import sys\nsys.path.append({str(folder)!r})\nimport {name}\n", capsys)
    # the items themselves are instances of the module's class: unpickled before the body runs
    ok(
        ip,
        f"{magic(backend)}\nout = []\nfor t in [{name}.Thing(i) for i in range(6)]:\n"
        f"    out.append((t.x, type(t) is {name}.Thing))\n",
        capsys,
    )
    assert ip.user_ns["out"] == [(i, True) for i in range(6)]
    assert workers(backend) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_edited_and_reloaded_is_the_one_workers_use(
    ip, backend: str, tmp_path: Path, capsys
) -> None:
    name = unique("edited")
    path = tmp_path / f"{name}.py"
    path.write_text("def f(x):\n    return x + 1\n")
    loop = (
        f"{magic(backend)}\nout = []\npids = set()\nfor i in range(12):\n"
        f"    out.append({name}.f(i))\n    pids.add(os.getpid())\n"
    )
    ok(ip, f"import os, importlib\nimport {name}\n", capsys)
    ok(ip, loop, capsys)
    assert ip.user_ns["out"] == [i + 1 for i in range(12)]
    first_pids = ip.user_ns["pids"]
    before = workers(backend)
    path.write_text("def f(x):\n    return x * 100  # edited\n")
    ok(ip, f"importlib.reload({name})\n", capsys)
    ok(ip, loop, capsys)
    assert ip.user_ns["out"] == [i * 100 for i in range(12)]
    assert ip.user_ns["pids"] & first_pids  # the same workers, which had the old module
    assert workers(backend) == before


def test_a_module_version_changes_with_a_reload_or_its_file(tmp_path: Path) -> None:
    name = unique("sametime")
    path = tmp_path / f"{name}.py"
    path.write_text("x = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        module = importlib.import_module(name)
        before = environment.capture_environment("a").modules[name][1]
        stat = path.stat()
        path.write_text("x = 2\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert environment.capture_environment("b").modules[name][1] == before
        importlib.reload(module)
        after = environment.capture_environment("c").modules[name][1]
        assert after != before and after[0] == before[0]  # same mtime, one reload more
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # %autoreload's case
        assert environment.capture_environment("d").modules[name][1][0] != before[0]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_user_modules_exclude_the_standard_library_site_packages_and_parmagic() -> None:
    import json

    import cloudpickle

    env = environment.capture_environment("k")
    assert "json" not in env.modules and "cloudpickle" not in env.modules
    assert not any(n == "parmagic" or n.startswith("parmagic.") for n in env.modules)
    assert environment.is_user_file(__file__)
    assert not environment.is_user_file(json.__file__)
    assert not environment.is_user_file(cloudpickle.__file__)


def test_the_kernel_never_applies_its_own_environment(tmp_path: Path) -> None:
    """A ref unpickled in the kernel (tests, dask's in-process clusters) changes nothing."""
    env = environment.capture_environment(uuid.uuid4().hex)
    env.cwd = str(tmp_path)
    ref = pickle.loads(pickle.dumps(FileRef("k", "/nowhere", env)))
    assert ref.env.key == env.key and ref.path == "/nowhere"
    assert os.getcwd() != str(tmp_path)


def test_a_foreign_interpreter_keeps_its_own_libraries_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dask worker of another machine or venv: only the kernel's user folders are added."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    own = list(sys.path)
    env = environment.Environment(
        key=uuid.uuid4().hex,
        pid=-1,
        executable="/elsewhere/python",
        cwd="/does/not/exist",
        path=[str(tmp_path), "/does/not/exist/either", *own[::-1]],
    )
    here = os.getcwd()
    environment.apply_environment(env)
    assert sys.path == own + [str(tmp_path)]
    assert os.getcwd() == here


# -- the way back ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_notebook_exception_class_is_caught_by_its_except(ip, backend: str, capsys) -> None:
    ok(ip, "import sys\nclass MyErr(Exception):\n    pass\n", capsys)
    result, _, _ = run(
        ip,
        f"{magic(backend)}\nfor i in range(4):\n    if i == 2:\n        raise MyErr(i)\n",
        capsys,
    )
    assert type(result.error_in_exec) is ip.user_ns["MyErr"]
    ok(
        ip,
        "try:\n    raise sys.last_value\nexcept MyErr as e:\n"
        "    caught = (type(e) is MyErr, e.args)\n",
        capsys,
    )
    assert ip.user_ns["caught"] == (True, (2,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_that_cannot_travel_keeps_a_readable_stand_in(ip, backend: str, capsys) -> None:
    ok(
        ip,
        "class TwoArgs(Exception):\n    def __init__(self, a, b):\n"
        "        super().__init__(f'{a} and {b}')\n",
        capsys,
    )
    result, _, _ = run(
        ip, f"{magic(backend)}\nfor i in range(2):\n    raise TwoArgs(i, 'x')\n", capsys
    )
    assert type(result.error_in_exec) is RuntimeError
    assert str(result.error_in_exec) == "TwoArgs: 0 and x"


@pytest.mark.parametrize("backend", BACKENDS)
def test_notebook_class_instances_come_back_as_the_kernels_class(ip, backend: str, capsys) -> None:
    ok(ip, "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n", capsys)
    ok(
        ip,
        f"{magic(backend)}\nresults = []\nfor i in range(4):\n"
        "    results.append(Point(i, 2))\n    last = Point(i, 3)\n",
        capsys,
    )
    point = ip.user_ns["Point"]
    assert all(isinstance(p, point) for p in ip.user_ns["results"])
    assert [p.x for p in ip.user_ns["results"]] == [0, 1, 2, 3]
    assert type(ip.user_ns["last"]) is point and ip.user_ns["last"].x == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_file_local_is_not_brought_back(ip, backend: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data.txt"
    data.write_text("hello\n")
    ok(
        ip,
        f"{magic(backend)}\nfor i in range(3):\n    fh = open({str(data)!r})\n"
        "    first = fh.readline()\n",
        capsys,
    )
    assert "fh" not in ip.user_ns
    assert ip.user_ns["first"] == "hello\n" and ip.user_ns["i"] == 2


def test_unsendable_locals_are_files_and_sockets(tmp_path: Path) -> None:
    import io
    import socket

    with open(tmp_path / "f", "w") as f, socket.socket() as s:
        assert not environment.sendable_local(f)
        assert not environment.sendable_local(s)
    assert not environment.sendable_local(io.BytesIO())
    assert environment.sendable_local([1, 2])


# -- a real kernel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A kernel whose working directory is a fresh folder (a notebook's), and that folder.

    Module-scoped, like the other kernel tests' kernels: its pool lives as long as it does.
    """
    from jupyter_client.manager import start_new_kernel

    folder = tmp_path_factory.mktemp("notebook")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(folder), env=env)
    try:
        yield kc, folder
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.kernel
def test_kernel_imports_reloads_and_catches_as_the_notebook_does(
    notebook: tuple[Any, Path],
) -> None:
    """A notebook's folder: a module beside it, one in an added folder, an edit + %autoreload."""
    kc, tmp_path = notebook
    beside, added = unique("nb_beside"), unique("nb_added")
    folder = tmp_path / "extra"
    folder.mkdir()
    loop = (
        "%%parallel -n 2 --no-progress --chunksize 1\nout = []\n"
        f"for i in range(8):\n    out.append(({beside}.f(i), {added}.g(i)))\n"
    )
    setup = "%load_ext parmagic\n%load_ext autoreload\n%autoreload 2\nimport sys, os"
    assert execute(kc, setup).ok
    warm = execute(kc, "%%parallel -n 2 --no-progress\nfor i in range(4):\n    pass\n")
    assert warm.ok, warm.error()
    pool_pids = "sorted(__import__('parmagic').pool.status()['pids'])"
    before = value(kc, pool_pids)
    (tmp_path / f"{beside}.py").write_text("def f(x):\n    return x + 1\n")
    (folder / f"{added}.py").write_text("def g(x):\n    return -x\n")
    ex = execute(kc, f"sys.path.append({str(folder)!r})\nimport {beside}, {added}")
    assert ex.ok, ex.error()
    ex = execute(kc, loop)
    assert ex.ok, ex.error()
    assert value(kc, "out") == [(i + 1, -i) for i in range(8)]
    (tmp_path / f"{beside}.py").write_text("def f(x):\n    return x * 1000  # edited\n")
    ex = execute(kc, loop)  # %autoreload reloads it before the cell runs
    assert ex.ok, ex.error()
    assert value(kc, "out") == [(i * 1000, -i) for i in range(8)]
    assert value(kc, pool_pids) == before  # the workers that predate the modules
    assert execute(kc, "class MyErr(Exception):\n    pass\n").ok
    ex = execute(kc, "%%parallel -n 2 --no-progress\nfor i in range(4):\n    raise MyErr('nope')\n")
    assert not ex.ok and ex.error()["ename"] == "MyErr"
    ex = execute(
        kc,
        "try:\n    raise sys.last_value\nexcept MyErr as e:\n    caught = type(e) is MyErr\n",
    )
    assert ex.ok, ex.error()
    assert value(kc, "caught") is True


def test_packed_values_fall_back_to_cloudpickle_only_when_needed() -> None:
    plain = environment.dumps_by_value([1, "a"])
    assert b"cloudpickle" not in plain
    made = environment.dumps_by_value(lambda: 1)
    assert pickle.loads(made)() == 1
    assert environment.unpack(environment.dumps_by_value({"x": 1})) == {"x": 1}
