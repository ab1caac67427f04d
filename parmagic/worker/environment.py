"""The kernel's environment in the workers, and values that travel back by value.

Workers run the kernel's current code (SPEC §2). A process worker was started
once, perhaps cells ago: the notebook may since have changed directory, added
a folder to ``sys.path``, written a module beside itself or reloaded an edited
module (``importlib.reload``, ``%autoreload``). So every run carries a small
:class:`Environment` (the kernel's ``sys.path``, working directory and, for
each *user* module, a version that changes when its file changes or the kernel
reloads it).
A worker applies it, once per run, before it unpickles anything of the run:
captured functions of user modules and the items themselves are pickled by
reference, so they must find the folders and the reloaded modules first. The
references (:class:`~parmagic.worker.protocol.FileRef`) and the payload
unpickle through :func:`apply_environment`, which is how "first" is ensured.

A user module is one whose source file is outside the standard library and
the site-packages folders (and is not parmagic). Only those are reloaded: the
libraries are whatever the worker's interpreter has.

The other half is the way back. Exceptions, effect values and locals whose
class the notebook defined (``class MyErr(Exception)`` in a cell) cannot be
pickled by the standard pickler in a worker (``__main__.MyErr`` is not there);
cloudpickle sends them by value, and since cloudpickle tracks the classes it
sent by value, the kernel gets back its own class object (``except MyErr``
catches). :func:`pack_result` prepares a batch's result that way.

Imported by worker processes: standard library only (cloudpickle when packing).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

#: A user module's version: (its file's mtime in ns, reloads the kernel made of it).
Version = tuple[int, int]


@dataclass
class Environment:
    """What a worker needs to import as the kernel does, for one run."""

    key: str  # the run's key: applied once per run per worker
    pid: int  # the kernel's pid: the kernel itself never applies its own environment
    executable: str  # the kernel's interpreter: another one keeps its own library folders
    cwd: str
    path: list[str]
    #: user module name -> (its file, its version in the kernel), in import order
    modules: dict[str, tuple[str, Version]] = field(default_factory=dict)


# -- kernel side ----------------------------------------------------------------------------

#: module name -> (the module's __spec__ when last seen, reloads seen): a reload makes a new spec
_seen: dict[str, tuple[Any, int]] = {}
#: file -> whether it is a user module's source (cached: the kernel has thousands of modules)
_user_files: dict[str, bool] = {}
#: id(module) -> (module, name, its user source file or None): a kernel has thousands of
#: modules, and each run looks at all of them
_modules: dict[int, tuple[Any, str, str | None]] = {}
_library_dirs: list[str] = []


def capture_environment(key: str) -> Environment:
    """The kernel's environment now, for the run ``key`` (cheap: one stat per user module)."""
    try:
        cwd = os.getcwd()
    except OSError:  # the kernel's folder was deleted: nothing to follow
        cwd = ""
    return Environment(
        key=key,
        pid=os.getpid(),
        executable=sys.executable,
        cwd=cwd,
        path=list(sys.path),
        modules=_user_module_versions(),
    )


def _user_module_versions() -> dict[str, tuple[str, Version]]:
    out: dict[str, tuple[str, Version]] = {}
    for name, module in list(sys.modules.items()):
        known = _modules.get(id(module))
        if known is None or known[0] is not module or known[1] != name:
            known = (module, name, _user_file_of(name, module))
            _modules[id(module)] = known
        file = known[2]
        if file is None:
            continue
        try:
            mtime = os.stat(file).st_mtime_ns
        except OSError:
            continue
        # importlib.reload makes a new spec: a new version even if the mtime did not move
        # (two writes within the file system's time resolution). %autoreload may patch the
        # module in place instead (IPython's deduperreload), so the file's mtime counts too.
        spec = getattr(module, "__spec__", None)
        seen = _seen.get(name)
        reloads = seen[1] if seen is not None else 0
        if seen is not None and seen[0] is not spec:
            reloads += 1
        _seen[name] = (spec, reloads)
        out[name] = (file, (mtime, reloads))
    return out


def _user_file_of(name: str, module: Any) -> str | None:
    """The source file of a user module (None for a library's, parmagic's, a built-in)."""
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or name.startswith("__") or not is_user_file(file):
        return None
    if name == "parmagic" or name.startswith("parmagic."):
        return None  # never reload parmagic under a running batch
    return file


def is_user_file(file: str) -> bool:
    """True for a Python source file outside the standard library and site-packages."""
    known = _user_files.get(file)
    if known is not None:
        return known
    user = file.endswith(".py")
    if user:
        libraries = _libraries()
        # most files lie under a library folder as named: no realpath (a few lstat calls
        # each, 60 ms for a kernel's thousand modules); only the others are resolved
        user = not any(file.startswith(d) for d in libraries)
        if user:
            real = os.path.realpath(file)
            user = not any(real.startswith(d) for d in libraries)
    _user_files[file] = user
    return user


def _libraries() -> list[str]:
    if not _library_dirs:
        import site
        import sysconfig

        paths = sysconfig.get_paths()
        dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        try:
            dirs.update(site.getsitepackages())
            dirs.add(site.getusersitepackages())
        except AttributeError:  # a virtualenv's old site.py
            pass
        named = {os.path.join(os.path.abspath(d), "") for d in dirs if d}
        resolved = {os.path.join(os.path.realpath(d), "") for d in dirs if d}
        _library_dirs.extend(sorted(named | resolved))
    return _library_dirs


# -- worker side ----------------------------------------------------------------------------


class _Applied:
    """What this worker process has applied so far."""

    key: str | None = None
    #: user module name -> the kernel version this process's copy of it is
    loaded: dict[str, Version] = {}
    #: the module versions of the last run applied (a module imported during that run is that)
    previous: dict[str, tuple[str, Version]] = {}
    #: (module, error) of reloads that failed, latest last; the module stays as it was
    failed: list[tuple[str, str]] = []


_applied = _Applied()
_lock = threading.Lock()  # dask workers unpickle in several threads


def apply_environment(env: Environment | None) -> None:
    """Make this process import as the kernel does (once per run; a no-op in the kernel)."""
    if env is None or env.key == _applied.key or env.pid == os.getpid():
        return
    with _lock:
        if env.key == _applied.key:
            return
        _follow_cwd(env.cwd)
        _follow_path(env)
        importlib.invalidate_caches()  # a module written since the last run is found
        _reload_stale(env.modules)
        _applied.previous = env.modules
        _applied.key = env.key


def _follow_cwd(cwd: str) -> None:
    # dask workers may be on other machines: follow only a folder that exists here
    if not cwd or not os.path.isdir(cwd):
        return
    try:
        here = os.getcwd()
    except OSError:  # this worker's folder was deleted
        here = None
    if here != cwd:
        os.chdir(cwd)


def _follow_path(env: Environment) -> None:
    wanted = [p for p in env.path if p == "" or os.path.isdir(p)]
    if env.executable == sys.executable:
        # the same interpreter: the kernel's order, then what only this worker has
        known = set(wanted)
        new = wanted + [p for p in sys.path if p not in known]
    else:
        # another interpreter (a remote dask worker): its libraries stay its own; the
        # kernel's user folders come after them
        have = set(sys.path)
        new = sys.path + [p for p in wanted if p not in have and not _is_library_dir(p)]
    if new != sys.path:
        sys.path[:] = new


def _is_library_dir(path: str) -> bool:
    real = os.path.join(os.path.realpath(path), "")
    return any(real.startswith(d) for d in _libraries()) or "-packages" in real


def _reload_stale(modules: dict[str, tuple[str, Version]]) -> None:
    stale = []
    for name, (file, version) in modules.items():
        module = sys.modules.get(name)
        if module is None:
            continue  # imported on demand, from the file as it is now
        have = _applied.loaded.get(name)
        if have is None:
            # imported since the last run applied: it is that run's version, else current
            earlier = _applied.previous.get(name)
            have = earlier[1] if earlier is not None else version
            _applied.loaded[name] = have
        if have != version and _same_file(getattr(module, "__file__", None), file):
            stale.append((name, module, version))
    # later imports first: a module is reloaded after the modules it imports
    for name, module, version in reversed(stale):
        try:
            importlib.reload(module)
        except Exception as exc:  # the kernel has a working version; keep ours, say why
            _applied.failed.append((name, f"{type(exc).__name__}: {exc}"))
            continue
        _applied.loaded[name] = version


def _same_file(mine: str | None, kernels: str) -> bool:
    if not mine or not os.path.exists(kernels):
        return False
    try:
        return os.path.samefile(mine, kernels)
    except OSError:
        return False


def reloads_failed() -> list[tuple[str, str]]:
    """(module, error) of the reloads that failed in this worker, for diagnostics."""
    return list(_applied.failed)


# -- the way back ---------------------------------------------------------------------------

#: Locals of these types stay in the worker: a copy in the kernel would be another object
#: (cloudpickle turns an open file into a StringIO of its content) or none at all.
UNSENDABLE_TYPES: tuple[type, ...] = (io.IOBase, socket.socket)


def sendable_local(value: Any) -> bool:
    """False for a local that must not be brought back (open files, sockets)."""
    return not isinstance(value, UNSENDABLE_TYPES)


class Packed:
    """A value pickled in the worker, by value where the standard pickler cannot.

    It unpickles in the kernel to the value itself; an exception that cannot be
    unpickled there becomes a ``RuntimeError`` with its readable text.
    """

    __slots__ = ("data", "fallback")

    def __init__(self, data: bytes, fallback: str | None = None):
        self.data = data
        self.fallback = fallback

    def __reduce__(self) -> tuple[Any, tuple]:
        return (unpack, (self.data, self.fallback))


def unpack(data: bytes, fallback: str | None = None) -> Any:
    """Kernel side of :class:`Packed`: the value, or for an exception its readable stand-in."""
    if fallback is None:
        return pickle.loads(data)
    try:
        return pickle.loads(data)
    except Exception:
        return RuntimeError(fallback)


def dumps_by_value(value: Any) -> bytes:
    """The standard pickler where it can (fast), else cloudpickle (notebook classes by value)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def pack_exception(exc: BaseException) -> BaseException | Packed:
    """An exception ready to travel with its class; a readable stand-in if it cannot."""
    fallback = f"{type(exc).__name__}: {exc}"
    try:
        data = dumps_by_value(exc)
        pickle.loads(data)  # an exception whose __init__ wants other arguments fails here
    except Exception:
        return RuntimeError(fallback)
    return Packed(data, fallback)


def pack_locals(names: dict[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """Locals as cloudpickle bytes one by one; the names of those that cannot travel."""
    import cloudpickle

    packed, unsent = {}, []
    for name, value in names.items():
        try:
            if not sendable_local(value):
                raise TypeError(f"{type(value).__name__} stays in the worker")
            packed[name] = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            unsent.append(name)
    return packed, unsent


def pack_result(result: Any) -> None:
    """Prepare a batch's result (a ``BatchResult``) for the trip to the kernel, in place.

    Locals become cloudpickle bytes one by one (those that cannot, or must not,
    travel stay behind and are named in ``unsent_locals``); effect values and
    exceptions travel by value where needed.
    """
    result.locals, unsent = pack_locals(result.locals)
    result.unsent_locals += unsent
    result.splits = [(k, n, pack_locals(names)[0]) for k, n, names in result.splits]
    if result.effects:
        try:
            result.effects = Packed(dumps_by_value(result.effects))
        except Exception:  # left as it is: the transport names the value that cannot travel
            pass
    result.errors = [(k, pack_exception(exc), tb) for k, exc, tb in result.errors]
