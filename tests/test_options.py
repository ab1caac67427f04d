"""The option table: every option through the API, the magics' flags and ``%parmagic config``,
and every bad value refused in one line before anything runs (no kernel; a real IPython shell).
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re

import pytest
from IPython.core.error import UsageError

import parmagic
from parmagic import api
from parmagic.magics import ParallelMagics, options_from_args, parse_line
from parmagic.options import FIELDS, TABLE, OptionError, Options, format_options, max_workers

from .shell import fresh, run, shell

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

#: option -> (flag text that sets it, the value set, flag text that unsets it, the value then)
SAMPLES = {
    "n_jobs": ("-n 2", 2, "-n -1", -1),
    "backend": ("--backend threads", "threads", "--backend loky", "loky"),
    "scheduler": (
        "--backend dask --scheduler tcp://127.0.0.1:8786",
        "tcp://127.0.0.1:8786",
        "--backend loky --scheduler none",
        None,
    ),
    "timeout": ("--timeout 2.5", 2.5, "--timeout none", None),
    "on_error": ("--on-error collect", "collect", "--on-error raise", "raise"),
    "chunksize": ("--chunksize 3", 3, "--chunksize auto", None),
    "progress": ("--no-progress", False, "--progress", True),
    "summary": ("--no-summary", False, "--summary", True),
    "auto_serial": ("--no-auto-serial", False, "--auto-serial", True),
    "compare": ("--compare", True, "--no-compare", False),
    "compare_sample": ("--compare-sample 2", 2, "--compare-sample none", None),
    "sweep": ("--sweep 1,2", (1, 2), "--sweep none", ()),
    "cache": ("--cache", "auto", "--no-cache", None),
}

#: (flag text, the flag its one-line message must name)
BAD = [
    ("--timeout inf", "--timeout"),
    ("--timeout nan", "--timeout"),
    ("--timeout -inf", "--timeout"),
    ("--timeout -1", "--timeout"),
    ("--timeout 0", "--timeout"),
    ("--timeout soon", "--timeout"),
    ("-n 0", "--n-jobs"),
    ("-n two", "--n-jobs"),
    ("-n 1.5", "--n-jobs"),
    ("-n 100000", "--n-jobs"),
    ("--backend threads -n 100000", "--n-jobs"),
    ("--sweep -1,2", "--sweep"),
    ("--sweep 1,,2", "--sweep"),
    ("--sweep 0,2", "--sweep"),
    ("--sweep 1,2,1000000", "--sweep"),
    ("--sweep a,b", "--sweep"),
    ("--chunksize 0", "--chunksize"),
    ("--chunksize -3", "--chunksize"),
    ("--chunksize abc", "--chunksize"),
    ("--compare-sample 0", "--compare-sample"),
    ("--compare-sample -2", "--compare-sample"),
    ("--compare-sample 2 --no-compare", "--compare-sample"),
    ("--backend nope", "--backend"),
    ("--prefer gpu", "--prefer"),
    ("--on-error ignore", "--on-error"),
    ("--scheduler tcp://127.0.0.1:1", "--scheduler needs --backend dask"),
]


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(ip, "def sq(x):\n    return x * x\n", capsys)
    before = parmagic.defaults()
    yield ip
    parmagic.set_defaults(**{f.name: getattr(before, f.name) for f in dataclasses.fields(before)})


def test_options_fields_are_the_table() -> None:
    fields = dataclasses.fields(Options)
    assert [f.name for f in fields] == [o.name for o in FIELDS]
    assert all(f.default == o.default for f, o in zip(fields, FIELDS, strict=True))
    assert set(SAMPLES) == {o.name for o in FIELDS}  # a new option needs a sample here


def test_every_option_is_a_keyword_a_flag_and_a_config_line() -> None:
    listing = format_options(Options())
    readme = README.read_text()
    readme = readme[readme.index("Options (shared by") : readme.index("The same engine")]
    for func in (parmagic.pmap, parmagic.run_cell, parmagic.set_defaults, parmagic.config):
        params = inspect.signature(func).parameters
        assert all(o.name in params for o in TABLE), func
        assert all(o.name in func.__doc__ for o in TABLE), func
    for magic in (ParallelMagics.parallel, ParallelMagics.pmap, ParallelMagics.parmagic):
        assert all(o.flag in magic.__doc__ for o in TABLE), magic
    for option in TABLE:
        assert option.flag in readme and f"`{option.name}=" in readme, option.name
        if option.alias_of is None:
            assert re.search(rf"^  {option.name}: +\S", listing, re.M), option.name
    assert "None" not in listing and re.search(r"chunksize: +auto$", listing, re.M)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_option_set_and_unset_through_every_spelling(ip, capsys, name: str) -> None:
    set_text, value, unset_text, unset_value = SAMPLES[name]
    for args in (
        parse_line(ParallelMagics.parallel, set_text),
        parse_line(ParallelMagics.pmap, f"{set_text} f(x) for x in xs", expression=True),
    ):
        assert getattr(api.resolve_options(**options_from_args(args)), name) == value
    result, out, err = run(ip, f"%parmagic config {set_text}", capsys)
    assert result.success, err
    assert getattr(parmagic.defaults(), name) == value
    result, out, err = run(ip, f"%parmagic config {unset_text}", capsys)
    assert result.success, err
    assert getattr(parmagic.defaults(), name) == unset_value
    extra = {"backend": "dask"} if name == "scheduler" else {}
    assert getattr(parmagic.set_defaults(**{name: value}, **extra), name) == value
    assert getattr(api.resolve_options(**{name: unset_value}), name) == unset_value


def test_prefer_is_the_backend_alias(ip, capsys) -> None:
    assert api.resolve_options(prefer="threads").backend == "threads"
    assert api.resolve_options(prefer="processes", backend="threads").backend == "threads"
    run(ip, "%parmagic config --prefer threads", capsys)
    assert parmagic.defaults().backend == "threads"


def test_cache_folder(tmp_path: pathlib.Path) -> None:
    assert api.resolve_options(cache=tmp_path).cache == str(tmp_path)
    args = parse_line(ParallelMagics.parallel, f"--cache {tmp_path}")
    assert options_from_args(args) == {"cache": str(tmp_path)}
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match="cache must be a folder"):
        api.resolve_options(cache=tmp_path / "file")


@pytest.mark.parametrize("line,needle", BAD)
@pytest.mark.parametrize("magic", ["%%parallel", "%pmap", "%parmagic config"])
def test_bad_values_are_one_line_and_change_nothing(
    ip, capsys, magic: str, line: str, needle: str
) -> None:
    run(ip, "x = 0", capsys)
    before = parmagic.defaults()
    cell = {
        "%%parallel": f"%%parallel {line}\nx = 1\nfor i in range(3):\n    pass\n",
        "%pmap": f"x = %pmap {line} sq(i) for i in range(3)",
        "%parmagic config": f"%parmagic config -n 1 {line}",  # -n 1 is not half-applied
    }[magic]
    result, out, err = run(ip, cell, capsys)
    exc = result.error_in_exec
    assert isinstance(exc, UsageError), (cell, exc)
    message = str(exc)
    assert needle in message and "\n" not in message.strip(), message
    assert f"UsageError: {message}" in out + err and "Traceback" not in out + err
    assert ip.user_ns["x"] == 0 and "i" not in ip.user_ns
    assert parmagic.defaults() == before


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"timeout": float("inf")}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"n_jobs": 10**5}, "n_jobs 100000: backend loky takes at most"),
        ({"sweep": "1,,2"}, "sweep takes"),
        ({"sweep": [1, 2, 10**6]}, "sweep 1000000"),
        ({"chunksize": "abc"}, "chunksize must be"),
        ({"compare_sample": 0}, "compare_sample must be"),
        ({"progress": None}, "progress must be True or False"),
        ({"n_job": 2}, "did you mean n_jobs?"),
    ],
)
def test_api_bad_values_are_option_errors(options: dict, needle: str) -> None:
    before = parmagic.defaults()
    for call in (api.resolve_options, parmagic.set_defaults):
        with pytest.raises(OptionError) as info:
            call(**options)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OptionError):
        parmagic.pmap(abs, [1], **options)
    assert parmagic.defaults() == before


def test_worker_limit_is_per_backend() -> None:
    limit = max_workers("loky")
    assert limit == 8 * parmagic.options.cpu_count()
    assert api.resolve_options(n_jobs=limit).n_jobs == limit
    assert max_workers("threads") == 64 * parmagic.options.cpu_count()
    assert api.resolve_options(backend="serial", n_jobs=10**6).n_jobs == 10**6  # n unused
    assert api.resolve_options(backend="dask", n_jobs=5000).n_jobs == 5000


def test_compare_sample_implies_compare_through_the_api(capsys) -> None:
    opts = api.resolve_options(compare_sample=2)
    assert opts.compare and opts.compare_sample == 2
    ns: dict = {}
    cell = "out = []\nfor i in range(6):\n    out.append(i * i)\n"
    parmagic.run_cell(cell, ns, compare_sample=2, backend="threads", n_jobs=2, progress=False)
    assert ns["out"] == [i * i for i in range(6)]
    assert "serial vs parallel" in capsys.readouterr().err


def test_config_listing_and_short_repr(ip, capsys) -> None:
    result, out, _ = run(ip, "%parmagic config --chunksize 4 --no-progress", capsys)
    assert result.success
    assert re.search(r"^  chunksize: +4$", out, re.M) and re.search(r"progress: +off$", out, re.M)
    assert "Options(" not in out
    assert repr(Options()) == "Options()"
    assert repr(Options(n_jobs=2, backend="threads")) == "Options(n_jobs=2, backend='threads')"


@pytest.mark.parametrize(
    "line,expected",
    [
        ("-n 1 sq(x - 1) for x in range(4)", [1, 0, 1, 4]),
        ("-n 1 sq(-x) for x in range(3)", [0, 1, 4]),
        ("-n 1 -- -x for x in range(3)", [0, -1, -2]),
        ("-n 1 --no-progress sq, range(3)", [0, 1, 4]),
        ("--n-jobs=1 x for x in range(3) if str(x) != '-- a  b'", [0, 1, 2]),
    ],
)
def test_pmap_expression_after_the_options_verbatim(ip, capsys, line: str, expected: list) -> None:
    result, _, err = run(ip, f"r = %pmap {line}", capsys)
    assert result.success, err
    assert ip.user_ns["r"] == expected


def test_help_is_plain_text(ip, capsys) -> None:
    for cell, usage in [
        ("%%parallel -h\npass\n", "Usage: %%parallel [options]"),
        ("%pmap -h", "Usage: %pmap [options] f(x) for x in xs"),
        ("%parmagic -h", "Usage: %parmagic [status]"),
    ]:
        result, out, _ = run(ip, cell, capsys)
        assert result.success and out.startswith(usage), out[:80]
        assert "::" not in out and "``" not in out and "<" not in out
    result, out, _ = run(ip, "%%parallel?", capsys)
    assert "Usage: %%parallel" in out and "::" not in out


def test_options_only_with_config(ip, capsys) -> None:
    result, _, _ = run(ip, "%parmagic status -n 2", capsys)
    assert isinstance(result.error_in_exec, UsageError)
    assert "%parmagic config" in str(result.error_in_exec)
