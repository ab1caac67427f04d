"""Resume (``--cache``, SPEC §6): keys, fingerprints and the store without a kernel; the
engine on the in-kernel and process backends; then real kernels stopped, killed and
failed part-way, rerun.

Calls are counted through a side channel: the loop's function appends a line to a file
per iteration, so a rerun that replays an iteration leaves its file as it was.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import parmagic
from parmagic import cache as disk
from parmagic import fingerprint
from parmagic.errors import CacheError
from parmagic.progress import Progress
from parmagic.rewrite import plan_cell
from parmagic.summary import Summary

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test signs its entries with a key of its own (never the user's)."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


# --------------------------------------------------------------------------- fingerprints


def define(source: str, filename: str = "<cell-1>") -> dict[str, Any]:
    """Run notebook-like definitions in a fresh namespace (as a new kernel would)."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), filename, "exec"), ns)
    return ns


def fp(obj: Any) -> bytes:
    return fingerprint.Fingerprinter().value(obj)


HELPERS = """
    import math
    SCALE = 3
    def g(x):
        return x * SCALE
    def f(x):
        return g(x) + math.floor(0.5)
"""


def test_a_function_defined_again_elsewhere_matches_its_fingerprint() -> None:
    one = define(HELPERS, "<cell-1>")
    two = define("\n\n\n" + textwrap.dedent(HELPERS), "<cell-9>")  # other file, other lines
    assert fp(one["f"]) == fp(two["f"])


@pytest.mark.parametrize(
    "change",
    [
        ("return x * SCALE", "return x * SCALE + 1"),  # a function reached through another
        ("SCALE = 3", "SCALE = 4"),  # a global a reached function reads
        ("return g(x) + math", "return g(x) - math"),  # the function itself
    ],
)
def test_a_change_in_what_a_function_reaches_changes_its_fingerprint(change: tuple) -> None:
    before = define(HELPERS)
    after = define(HELPERS.replace(*change))
    assert fp(before["f"]) != fp(after["f"])


def test_classes_count_by_their_methods_and_recursion_ends() -> None:
    source = """
        class Model:
            scale = 2
            def predict(self, x):
                return helper(x) * self.scale
        def helper(x):
            return Model.scale + again(x)
        def again(x):
            return helper(x - 1) if x > 0 else 0
    """
    one, two = define(source), define(source)
    assert fp(one["Model"]) == fp(two["Model"]) and fp(one["helper"]) == fp(two["helper"])
    changed = define(source.replace("* self.scale", "+ self.scale"))
    assert fp(changed["Model"]) != fp(one["Model"])
    assert fp(one["Model"]()) == fp(two["Model"]())  # an instance: its class by its code


FINGERPRINTS = '''
from parmagic import fingerprint
ns = {"__name__": "__main__"}
exec("""
import abc, dataclasses, enum
@dataclasses.dataclass
class Point:
    x: int = 1
    tags: list = dataclasses.field(default_factory=list)
class Shape(abc.ABC):
    @abc.abstractmethod
    def area(self): ...
class Square(Shape):
    def area(self):
        return 4
class Colour(enum.Enum):
    RED = 1
def known(word):
    return word in {"alpha", "beta", "gamma", "delta"}
""", ns)
values = [ns[n] for n in ("Point", "Shape", "Square", "Colour", "known")]
values += [ns["Point"](2, ["a"]), ns["Square"](), {"x", "y", "z"}]
print(" ".join(fingerprint.Fingerprinter().value(v).hex() for v in values))
'''


def test_fingerprints_hold_in_another_process_whatever_its_string_hashes() -> None:
    """Dataclasses, ABCs, enums and set constants: no hash-ordered or unpicklable part."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = [
        subprocess.run(
            [sys.executable, "-c", FINGERPRINTS],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] and len(runs[0].split()) == 8


def test_values_sets_and_arrays() -> None:
    assert fp({"b", "a", "c"}) == fp({"c", "b", "a"})
    words = [f"w{i}" for i in range(50)]
    assert fp(set(words)) == fp(set(reversed(words)))
    a = np.arange(100_000, dtype=float)
    assert fp(a) == fp(a.copy()) and fp(a) != fp(a + 1)
    assert fp([1, 2]) != fp([2, 1])
    with pytest.raises(fingerprint.Unhashable, match="lock"):
        fingerprint.Fingerprinter().value(threading.Lock(), "lock")


def key_source(cell: str) -> str:
    return plan_cell(textwrap.dedent(cell)).loops[0].key_source


def test_the_loop_key_holds_body_and_target_not_the_iterable() -> None:
    base = key_source("for i in range(20):\n    out.append(f(i))\n")
    assert key_source("for i in range(25):  # grown\n    out.append(f( i ))\n") == base
    assert key_source("for j in range(20):\n    out.append(f(j))\n") != base
    assert key_source("for i in range(20):\n    out.append(f(i) + 1)\n") != base


# --------------------------------------------------------------------------- the store


def entry(k: int) -> bytes:
    return pickle.dumps({"index": k, "effects": [(k,)], "outputs": [], "locals": {}})


def test_entries_are_private_signed_and_named(tmp_path: Path) -> None:
    store = disk.Store(str(tmp_path / "c"))
    store.write("loop", "00000001-a.pmc", entry(1), "for i in xs:")
    path = tmp_path / "c" / "loop" / "00000001-a.pmc"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(Path(disk.key_path()).stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "c" / ".gitignore").read_text().endswith("*\n")
    assert store.read("loop", "00000001-a.pmc")["index"] == 1
    # an entry copied under another name, or into another loop, does not read as valid
    (path.parent / "00000002-b.pmc").write_bytes(path.read_bytes())
    assert store.read("loop", "00000002-b.pmc") is None
    # an entry written with someone else's key does not either
    other = disk.Store.__new__(disk.Store)
    other.folder, other.key = store.folder, b"k" * 32
    other.write("loop", "00000003-c.pmc", entry(3))
    assert store.read("loop", "00000003-c.pmc") is None


@pytest.mark.parametrize("damage", ["truncated", "garbled", "empty", "not ours"])
def test_a_damaged_entry_reads_as_missing(tmp_path: Path, damage: str) -> None:
    store = disk.Store(str(tmp_path))
    store.write("loop", "e.pmc", entry(0))
    path = tmp_path / "loop" / "e.pmc"
    data = path.read_bytes()
    path.write_bytes(
        {
            "truncated": data[: len(data) - 3],
            "garbled": data[:-5] + bytes(5),
            "empty": b"",
            "not ours": b"PMC1" + bytes(32) + pickle.dumps({"index": 0}),
        }[damage]
    )
    assert store.read("loop", "e.pmc") is None


def test_a_folder_of_someone_else_or_writable_by_others_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o700)
    loose.chmod(0o777)
    with pytest.raises(CacheError, match="writable by group or others"):
        disk.Store(str(loose))
    with pytest.raises(CacheError, match="writable by group or others"):
        parmagic.run_cell(
            "for i in range(3):\n    pass\n",
            {},
            backend="threads",
            cache=str(loose),
            progress=False,
        )
    if os.getuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(CacheError, match="belongs to user id 65534"):
        disk.Store(str(foreign))


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    disk.Store(str(tmp_path / "c"))
    Path(disk.key_path()).chmod(0o644)
    with pytest.raises(CacheError, match="readable by others"):
        disk.Store(str(tmp_path / "c"))


WRITER = """
import pickle, sys
from parmagic import cache as disk
store = disk.Store(sys.argv[1])
big = b"x" * 8_000_000
k = 0
while True:
    store.write("loop", f"{k:08d}.pmc", pickle.dumps({"index": k, "blob": big}))
    k += 1
"""


def test_a_writer_killed_mid_write_leaves_no_entry_that_reads_as_valid(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list((folder / "loop").glob("0*.pmc"))) < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = disk.Store(str(folder))
    names = sorted(p.name for p in (folder / "loop").iterdir())
    entries = [n for n in names if n.endswith(".pmc") and not n.startswith(".")]
    assert len(entries) >= 3
    for name in entries:  # every entry under its own name is whole
        assert store.read("loop", name)["index"] == int(name[:8])
    for name in [n for n in names if n.startswith(".tmp-")]:  # a write cut short
        assert store.read("loop", name) is None
    assert store.loops()[0].entries == len(entries)


def test_oldest_entries_are_evicted_past_the_limit_and_clear_empties(tmp_path: Path) -> None:
    store = disk.Store(str(tmp_path))
    for k in range(6):
        store.write("loop", f"{k:08d}.pmc", pickle.dumps(b"x" * 1000))
        os.utime(tmp_path / "loop" / f"{k:08d}.pmc", (1000 + k, 1000 + k))
    stale, fresh = tmp_path / "loop" / ".tmp-old.pmc", tmp_path / "loop" / ".tmp-new.pmc"
    stale.write_bytes(b"cut short")
    fresh.write_bytes(b"being written")
    os.utime(stale, (1000, 1000))
    assert store.evict(max_bytes=3500) == 3
    assert not stale.exists() and fresh.exists()  # a write under way is left alone
    left = sorted(p.name for p in (tmp_path / "loop").glob("0*.pmc"))
    assert left == ["00000003.pmc", "00000004.pmc", "00000005.pmc"]
    assert "3 entries" in disk.describe(str(tmp_path))
    assert store.clear() == 3 and store.loops() == []


# --------------------------------------------------------------------------- the engine

CELL = """\
results = []
total = 0
for i in range(N):
    v = f(i)
    print("it", i)
    results.append(v)
    total += v
"""

DEFS = """
import os
def g(x):
    if not os.path.exists(NEEDED):
        raise FileNotFoundError(NEEDED)
    return x * x
def f(i):
    with open(os.path.join(CALLS, str(i)), "a") as out:
        out.write("x")
    return g(i) if i >= 3 else i
"""


def namespace(tmp_path: Path, n: int, defs: str = DEFS) -> dict[str, Any]:
    calls = tmp_path / "calls"
    calls.mkdir(exist_ok=True)
    needed = tmp_path / "needed"
    needed.touch()
    ns = {"N": n, "CALLS": str(calls), "NEEDED": str(needed)}
    exec(defs, ns)
    return ns


def calls(tmp_path: Path) -> dict[int, int]:
    return {int(p.name): len(p.read_text()) for p in (tmp_path / "calls").iterdir()}


def expected(n: int) -> tuple[list[int], int]:
    values = [i if i < 3 else i * i for i in range(n)]
    return values, sum(values)


def run(ns: dict, tmp_path: Path, backend: str, source: str = CELL, **options: Any) -> Any:
    return parmagic.run_cell(
        source,
        ns,
        backend=backend,
        n_jobs=2,
        cache=str(tmp_path / "cache"),
        progress=False,
        **options,
    )


@pytest.mark.parametrize("backend", ["serial", "threads", "multiprocessing"])
def test_a_rerun_replays_in_order_and_a_grown_range_runs_only_the_new_items(
    tmp_path: Path, backend: str, capsys: pytest.CaptureFixture
) -> None:
    ns = namespace(tmp_path, 8)
    run(ns, tmp_path, backend)
    first = capsys.readouterr().out
    ns["N"] = 11
    run(ns, tmp_path, backend)
    again = capsys.readouterr().out
    assert calls(tmp_path) == {i: 1 for i in range(11)}
    values, total = expected(11)
    assert (ns["results"], ns["total"], ns["i"], ns["v"]) == (values, total, 10, 100)
    record = parmagic.last_run()
    assert (record.done, record.from_cache) == (11, 8)
    assert "11/11 done, 8 from cache" in repr(record)
    assert [it.status for it in record.iterations] == ["done"] * 11
    assert "".join(f"it {i}\n" for i in range(8)) in first
    assert "".join(f"it {i}\n" for i in range(11)) in again  # replayed output, in order
    assert "11 done (8 from cache)" in Summary(record).text()
    assert "8 from cache" in Summary(record, compact=True).text()
    bar = Progress.for_record(record)
    bar.finish(record)
    assert "8 from cache" in bar.describe()
    ns["N"] = 9  # the last iteration comes from the cache: locals as a plain run leaves them
    ns.pop("v")
    run(ns, tmp_path, backend)
    assert (ns["results"], ns["i"], ns["v"]) == (expected(9)[0], 8, 64)
    assert calls(tmp_path) == {i: 1 for i in range(11)}


def test_what_invalidates_an_entry(tmp_path: Path) -> None:
    ns = namespace(tmp_path, 6)
    run(ns, tmp_path, "threads")
    assert parmagic.last_run().from_cache == 0

    def rerun(source: str = CELL) -> int:
        run(ns, tmp_path, "threads", source=source)
        assert ns["results"] == expected(6)[0] or source != CELL
        return parmagic.last_run().from_cache

    assert rerun() == 6  # nothing changed
    exec(DEFS, ns)  # the same functions defined again
    assert rerun() == 6
    exec(DEFS.replace("return x * x", "return x * x  # a comment"), ns)
    assert rerun() == 6
    exec(DEFS.replace("return x * x", "return x ** 2 + 0"), ns)  # g, reached through f
    assert rerun() == 0
    assert rerun(CELL.replace("print(", "print('iteration', ")) == 0  # the body
    ns["NEEDED"] = str(tmp_path / "needed")  # same value, a new string: still a hit
    assert rerun() == 6
    other = tmp_path / "needed2"
    other.touch()
    ns["NEEDED"] = str(other)  # a global the reached function reads
    assert rerun() == 0
    items = CELL.replace("range(N)", "xs")  # a changed item: only its iteration
    ns["xs"] = [0, 1, 2, 3]
    run(ns, tmp_path, "threads", source=items)
    ns["xs"] = [0, 1, 7, 3]
    run(ns, tmp_path, "threads", source=items)
    assert parmagic.last_run().from_cache == 3 and ns["results"] == [0, 1, 49, 9]


def test_a_failure_outside_the_key_resumes_from_where_it_stopped(tmp_path: Path) -> None:
    ns = namespace(tmp_path, 8)
    source = CELL.replace("v = f(i)", "v = f(i) if i < 5 else f(i) + len(open(DATA).read())")
    ns["DATA"] = str(tmp_path / "data")
    with pytest.raises(FileNotFoundError):
        run(ns, tmp_path, "threads", source=source)
    assert ns["results"] == expected(5)[0]
    (tmp_path / "data").write_text("")
    run(ns, tmp_path, "threads", source=source)
    assert ns["results"] == expected(8)[0]
    assert parmagic.last_run().from_cache == 5
    counts = calls(tmp_path)  # 5 and later ran twice (the failing one, others in flight)
    assert [counts[i] for i in range(5)] == [1] * 5 and sorted(counts) == list(range(8))


@pytest.mark.parametrize("backend", ["serial", "multiprocessing"])
def test_random_draws_resume_as_a_full_run_draws_them(tmp_path: Path, backend: str) -> None:
    source = (
        "np.random.seed(0)\nout = []\nfor i in range(N):\n"
        "    x = np.random.rand()\n    out.append(x)\nafter = np.random.rand()\n"
    )

    def draws(n: int, cache: bool) -> tuple:
        ns = {"np": np, "N": n}
        folder = str(tmp_path / "cache") if cache else None
        parmagic.run_cell(source, ns, backend=backend, n_jobs=2, cache=folder, progress=False)
        names = sorted(k for k in ns if not k.startswith("__"))
        return ns["out"], ns["after"], ns["x"], names, parmagic.last_run().from_cache

    full = draws(8, cache=False)
    draws(5, cache=True)
    assert draws(8, cache=True) == (*full[:4], 5)  # 5 replayed, 3 on their own streams
    assert draws(8, cache=True) == (*full[:4], 8)  # the generator moves on after a replay


def test_collect_keeps_the_iterations_that_succeeded(tmp_path: Path) -> None:
    ns = namespace(tmp_path, 6)
    os.unlink(ns["NEEDED"])  # g fails from iteration 3 on (0-2 do not call it)
    with pytest.raises(parmagic.CollectedErrors):
        run(ns, tmp_path, "threads", on_error="collect")
    assert ns["results"] == [0, 1, 2]
    Path(ns["NEEDED"]).touch()
    run(ns, tmp_path, "threads", on_error="collect")
    assert ns["results"] == expected(6)[0] and parmagic.last_run().from_cache == 3


def test_iterations_before_a_captured_change_are_kept(tmp_path: Path) -> None:
    """A process worker that changed a captured object runs its batch again one iteration
    at a time; the iterations before the one that did are kept one by one too."""
    ns = define("""
        def note(i):
            if i == 2:
                seen.append(i)  # a global of the function, changed in the worker
            return i * 10
    """)
    ns["seen"] = []
    source = "out = []\nfor i in range(4):\n    v = note(i)\n    out.append(v)\n"
    states = []
    for _ in range(2):
        with pytest.raises(parmagic.CapturedChangeError):
            run(ns, tmp_path, "multiprocessing", source=source, chunksize=4)
        states.append((ns["out"], ns["v"]))
    assert states[0] == states[1] and states[0][0][:2] == [0, 10]
    assert parmagic.last_run().from_cache == 2


def test_a_comprehension_is_replayed_into_its_list(tmp_path: Path) -> None:
    ns = namespace(tmp_path, 0)
    source = "squares = [f(x) for x in range(5)]\n"
    for _ in range(2):
        run(ns, tmp_path, "threads", source=source)
    assert ns["squares"] == expected(5)[0] and parmagic.last_run().from_cache == 5
    assert calls(tmp_path) == {i: 1 for i in range(5)}


def test_an_unhashable_item_or_value_is_not_cached_and_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ns = {"locks": [threading.Lock() for _ in range(3)]}
    source = "out = []\nfor lock in locks:\n    out.append(lock.locked())\n"
    run(ns, tmp_path, "threads", source=source)
    run(ns, tmp_path, "threads", source=source)
    err = capsys.readouterr().err
    assert ns["out"] == [False] * 3 and parmagic.last_run().from_cache == 0
    assert err.count("cannot be fingerprinted") == 2  # once per run, not per iteration
    ns = {"lock": threading.Lock()}
    run(ns, tmp_path, "threads", source="out = []\nfor i in range(3):\n    out.append(lock)\n")
    assert "a captured value cannot be fingerprinted: 'lock'" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["threads", "multiprocessing"])
def test_an_iteration_that_changes_its_item_is_not_cached(
    tmp_path: Path, backend: str, capsys: pytest.CaptureFixture
) -> None:
    source = "for box in boxes:\n    box.append(len(box))\n"
    ns = {"boxes": [[], [7]]}
    run(ns, tmp_path, backend, source=source)
    assert ns["boxes"] == [[0], [7, 1]]
    assert "change their loop item in place are not cached" in capsys.readouterr().err
    ns["boxes"] = [[], [7]]
    run(ns, tmp_path, backend, source=source)  # runs again: the items change as in a full run
    assert ns["boxes"] == [[0], [7, 1]] and parmagic.last_run().from_cache == 0


def test_a_loop_that_changes_what_its_key_holds_is_not_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ns = define("""
        def register(x):
            seen[x] = True
            return x
    """)
    source = "seen.clear()\nout = []\nfor i in range(4):\n    out.append(register(i))\n"
    ns["seen"] = {}
    for _ in range(2):  # threads change `seen` itself: no entry may skip that
        run(ns, tmp_path, "threads", source=source)
        assert ns["seen"] == dict.fromkeys(range(4), True) and ns["out"] == [0, 1, 2, 3]
        assert parmagic.last_run().from_cache == 0
    assert "changed a captured value" in capsys.readouterr().err


def test_the_api_shows_and_clears_the_cache(tmp_path: Path) -> None:
    ns = namespace(tmp_path, 4)
    run(ns, tmp_path, "serial")
    folder = str(tmp_path / "cache")
    text = parmagic.cache_info(folder)
    assert "1 loop(s)" in text and "4 entries" in text and "for i in range(N):" in text
    assert parmagic.clear_cache(folder) == 4
    assert "0 loop(s)" in parmagic.cache_info(folder)
    missing = str(tmp_path / "none")
    assert "no such folder yet" in parmagic.cache_info(missing)
    assert parmagic.clear_cache(missing) == 0 and not os.path.exists(missing)


def test_pmap_and_a_session_default(tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    f = namespace(tmp_path, 0)["f"]  # counts its calls in files (a closure over a list
    # that grows would change its own fingerprint)
    for _ in range(2):
        assert parmagic.pmap(f, range(5), backend="threads", cache=folder) == expected(5)[0]
    assert calls(tmp_path) == {i: 1 for i in range(5)} and parmagic.last_run().from_cache == 5
    saved = parmagic.defaults()
    parmagic.set_defaults(cache=folder)
    try:
        assert parmagic.pmap(f, range(6), backend="threads") == expected(6)[0]
    finally:
        parmagic.set_defaults(cache=saved.cache)
    assert calls(tmp_path) == {i: 1 for i in range(6)} and parmagic.last_run().from_cache == 5


def test_the_magics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from IPython.core.error import UsageError

    from .shell import fresh, run
    from .shell import shell as make_shell

    ip = make_shell()
    fresh(ip, f"CALLS = {str(tmp_path / 'calls')!r}\n", capsys)
    (tmp_path / "calls").mkdir()
    folder = tmp_path / "cache"
    run(ip, DEFS.replace("os.path.exists(NEEDED)", "True"), capsys)
    for _ in range(2):
        cell = f"%%parallel --backend threads --no-progress --cache {folder}\nN = 5\n{CELL}"
        result, _, _ = run(ip, cell, capsys)
        assert result.success, result.error_in_exec
    assert ip.user_ns["results"] == expected(5)[0] and parmagic.last_run().from_cache == 5
    result, _, _ = run(
        ip, f"squares = %pmap --backend threads --cache={folder} f(x) for x in range(3)", capsys
    )
    assert result.success and ip.user_ns["squares"] == [0, 1, 2]
    assert parmagic.last_run().from_cache == 0  # another loop: its own key
    _, out, _ = run(ip, f"%parmagic cache --cache {folder}", capsys)
    assert "2 loop(s)" in out and "5 entries" in out and "for i in range(N):" in out
    _, out, _ = run(ip, f"%parmagic cache clear --cache {folder}", capsys)
    assert "cleared 8 entries" in out
    result, _, _ = run(ip, "%parmagic cache --n-jobs 2", capsys)
    assert isinstance(result.error_in_exec, UsageError)
    assert calls(tmp_path) == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1}  # the loop's once, %pmap's once


@pytest.mark.dask
def test_on_dask_the_kernel_writes_the_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    # an IPython shell made by an earlier test leaves a __main__ without __spec__, which
    # multiprocessing's spawn (the cluster's worker) reads
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)

    environ = dict(os.environ)  # the cluster's nanny sets OMP_NUM_THREADS=1 & co. here
    cluster = LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0")
    try:
        with Client(cluster):
            ns = namespace(tmp_path, 6)
            run(ns, tmp_path, "dask")
            ns["N"] = 8
            run(ns, tmp_path, "dask")
    finally:
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)
    assert ns["results"] == expected(8)[0] and parmagic.last_run().from_cache == 6
    assert calls(tmp_path) == {i: 1 for i in range(8)}


# --------------------------------------------------------------------------- real kernels

SETUP = """\
%load_ext parmagic
import os, time
import parmagic
CALLS = {calls!r}
def slow(x):
    time.sleep(0.05)
    return x * x
def f(i):
    with open(os.path.join(CALLS, str(i)), "a") as out:
        out.write("x")
    return slow(i) + 1
"""

LOOP = """\
%%parallel -n 2 --no-progress --cache {cache}
results = []
total = 0
for i in range(40):
    v = f(i)
    print("it", i)
    results.append(v)
    total += v
"""

PLAIN = LOOP.split("\n", 1)[1]


def kernel_env(xdg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["XDG_CACHE_HOME"] = str(xdg)
    return env


def start_kernel(tmp_path: Path, xdg: Path) -> tuple[Any, Any]:
    from jupyter_client.manager import start_new_kernel

    return start_new_kernel(kernel_name="python3", env=kernel_env(xdg), cwd=str(tmp_path))


def stop_kernel(km: Any, kc: Any) -> None:
    """A clean shutdown: the kernel shuts its pool and the pool's semaphores go with it."""
    kc.stop_channels()
    km.shutdown_kernel(now=False)


@pytest.fixture(scope="module")
def shared_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """One kernel (parmagic loaded, a key of its own) for the tests that need no new one."""
    from .kernel import execute

    home = tmp_path_factory.mktemp("kernel")
    km, kc = start_kernel(home, home / "xdg")
    try:
        assert execute(kc, SETUP.format(calls="")).ok
        yield km, kc
    finally:
        stop_kernel(km, kc)


@pytest.fixture
def kernel_in(tmp_path: Path, shared_kernel: tuple[Any, Any]) -> tuple[Any, Any]:
    """The shared kernel, counting calls in this test's own folder."""
    from .kernel import execute

    (tmp_path / "calls").mkdir()
    assert execute(shared_kernel[1], f"CALLS = {str(tmp_path / 'calls')!r}").ok
    return shared_kernel


def wait_for_calls(tmp_path: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "calls").iterdir())) < n:
        assert time.monotonic() < deadline, "the loop did not start"
        time.sleep(0.01)


def plain_state(kc: Any) -> tuple[Any, str]:
    """The namespace and output of the same loop without the magic (counted apart)."""
    from .kernel import execute, value

    assert execute(kc, "CALLS_SAVED, CALLS = CALLS, CALLS + '-plain'; os.makedirs(CALLS)").ok
    ex = execute(kc, PLAIN)
    assert ex.ok, ex.error()
    state = value(kc, "(results, total, i, v)")
    assert execute(kc, "CALLS = CALLS_SAVED").ok
    return state, ex.stream()


@pytest.mark.kernel
@pytest.mark.slow
def test_stopped_then_rerun_runs_only_the_rest(tmp_path: Path, kernel_in: tuple) -> None:
    from .kernel import collect, execute, value

    km, kc = kernel_in
    loop = LOOP.format(cache=tmp_path / "cache")
    msg_id = kc.execute(loop)
    wait_for_calls(tmp_path, 6)
    km.interrupt_kernel()
    stopped = collect(kc, msg_id)
    assert stopped.reply["content"]["ename"] == "KeyboardInterrupt"
    done = len(value(kc, "results"))
    assert 0 < done < 40
    ex = execute(kc, loop)
    assert ex.ok, ex.error()
    counts = calls(tmp_path)
    assert sorted(counts) == list(range(40))
    again = [i for i, n in counts.items() if n > 1]
    assert all(i >= done for i in again), f"iterations {again} ran twice; {done} were committed"
    assert value(kc, "parmagic.last_run().from_cache") == done  # committed = cached
    state, output = plain_state(kc)
    assert value(kc, "(results, total, i, v)") == state
    assert ex.stream() == output  # cached iterations' output shown again, in order


@pytest.mark.kernel
@pytest.mark.slow
def test_a_failure_outside_the_key_reruns_from_the_failed_iteration(
    tmp_path: Path, kernel_in: tuple
) -> None:
    from .kernel import execute, value

    _, kc = kernel_in
    data = tmp_path / "data"
    loop = (
        f"%%parallel -n 2 --no-progress --cache {tmp_path / 'cache'}\n"
        "out = []\n"
        "for i in range(12):\n"
        "    v = f(i)\n"
        "    if i == 7:\n"
        f"        v += len(open({str(data)!r}).read())\n"
        "    out.append(v)\n"
    )
    failed = execute(kc, loop)
    assert failed.error()["ename"] == "FileNotFoundError"
    assert value(kc, "out") == [i * i + 1 for i in range(7)]
    data.write_text("ab")  # the missing input, supplied
    assert execute(kc, loop).ok
    assert value(kc, "out") == [i * i + 1 + 2 * (i == 7) for i in range(12)]
    assert value(kc, "parmagic.last_run().from_cache") == 7
    counts = calls(tmp_path)
    assert [counts[i] for i in range(7)] == [1] * 7 and sorted(counts) == list(range(12))
    assert execute(kc, "def slow(x):\n    time.sleep(0.05)\n    return x * x").ok
    assert execute(kc, loop).ok  # defined again, identically: still a hit
    assert value(kc, "parmagic.last_run().from_cache") == 12


@pytest.mark.kernel
@pytest.mark.slow
def test_after_the_kernel_is_killed_a_new_kernel_resumes(tmp_path: Path, own_key: Path) -> None:
    from .kernel import execute, value

    (tmp_path / "calls").mkdir()
    setup = SETUP.format(calls=str(tmp_path / "calls"))
    loop = LOOP.format(cache="")  # the folder beside the notebook: the kernel's cwd
    km, kc = start_kernel(tmp_path, own_key)
    try:
        assert execute(kc, setup).ok
        kc.execute(loop)
        wait_for_calls(tmp_path, 12)
        dead = km.provisioner.pid
        group = os.getpgid(dead)
        assert group != os.getpgid(0)  # the kernel's own process group, never ours
        os.killpg(group, signal.SIGKILL)  # the kernel and its pool at once
    finally:
        stop_kernel(km, kc)
    # the group's loky resource tracker died too, before it could remove the pool's
    # semaphores (a kernel killed alone leaves it to do so): that clean-up is loky's
    for path in Path("/dev/shm").glob(f"sem.loky-{dead}-*"):
        path.unlink(missing_ok=True)
    written = len(list((tmp_path / ".parmagic-cache").glob("*/*.pmc")))
    assert written > 0
    km, kc = start_kernel(tmp_path, own_key)
    try:
        assert execute(kc, setup).ok  # the same functions, defined again in a new kernel
        ex = execute(kc, loop)
        assert ex.ok, ex.error()
        assert value(kc, "parmagic.last_run().from_cache") == written
        counts = calls(tmp_path)
        assert sorted(counts) == list(range(40))
        state, output = plain_state(kc)
        assert value(kc, "(results, total, i, v)") == state
        assert ex.stream() == output
        # a function reached through another, redefined: everything runs again
        assert execute(kc, "def slow(x):\n    return x * x + 0").ok
        assert execute(kc, loop).ok
        assert value(kc, "parmagic.last_run().from_cache") == 0
        assert all(n >= 2 for n in calls(tmp_path).values())
        listing = execute(kc, "%parmagic cache")
        assert "2 loop(s)" in listing.stream() and "for i in range(40):" in listing.stream()
        cleared = execute(kc, "%parmagic cache clear")
        assert "cleared 80 entries" in cleared.stream(), cleared.stream()
        assert "0 loop(s)" in execute(kc, "%parmagic cache").stream()
    finally:
        stop_kernel(km, kc)
