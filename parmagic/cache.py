"""Resume (``--cache``): finished iterations kept on disk and replayed on a rerun.

Pure: no IPython. Two parts, over the fingerprints of :mod:`parmagic.fingerprint`:

- **Keys.** A loop's key is a sha256 over its body and target (as ``ast.unparse``
  writes them: comments and spacing do not count), and a fingerprint of each captured
  value (notebook functions by their code, through what they call). An iteration's entry
  is named by its index and a fingerprint of its item. The iterable's own expression is
  not in the key, so ``range(25)`` after ``range(20)`` finds the first twenty.
- **The store** (:class:`Store`). One file per iteration in ``<folder>/<loop key>/``,
  written to a temporary file in that folder then renamed (atomic), mode 0600 (folders
  0700). Each entry is a pickle behind an HMAC-SHA256 whose key lives in the user's own
  ``~/.cache/parmagic/key`` (0600): an entry is unpickled only when its HMAC checks, so a
  file someone else wrote is never executed. A folder owned by someone else, or writable
  by group or others, is refused (:class:`CacheError`). A damaged entry reads as missing
  and is computed again. Oldest entries go first past :data:`MAX_BYTES`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import pickle
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import CacheError
from .fingerprint import VERSION, Fingerprinter, Unhashable, loop_key

#: The folder ``--cache`` alone uses, in the kernel's working directory (the notebook's).
FOLDER_NAME = ".parmagic-cache"
#: Size limit of a cache folder; past it the oldest entries are removed (a module
#: constant: set ``parmagic.cache.MAX_BYTES`` to change it).
MAX_BYTES = 1 << 30
MAGIC = b"PMC1"
SUFFIX = ".pmc"
META = "loop.json"
_DIGEST = hashlib.sha256().digest_size


def entry_name(index: int, item: Any, fingerprinter: Fingerprinter) -> str:
    """The file name of iteration ``index`` with ``item`` (Unhashable: no entry)."""
    digest = hashlib.sha256(repr(index).encode() + fingerprinter.value(item, "item"))
    return f"{index:08d}-{digest.hexdigest()[:40]}{SUFFIX}"


# --------------------------------------------------------------------------- the store


def default_folder() -> str:
    """The folder ``--cache`` alone uses: in the kernel's working directory, the notebook's."""
    return os.path.join(os.getcwd(), FOLDER_NAME)


def resolve_folder(cache: str | None) -> str | None:
    """The option's value (None, "auto" or a folder) as a folder, or None when off."""
    if cache is None:
        return None
    return default_folder() if cache == "auto" else cache


def key_path() -> str:
    """Where the HMAC key lives: the user's own cache folder (``$XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "parmagic", "key")


def _check_private(path: str, what: str) -> os.stat_result:
    """Refuse ``path`` unless it is the user's own and not writable by group or others."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise CacheError(f"parmagic: the {what} {path} is a symbolic link; refusing to use it")
    if info.st_uid != os.getuid():
        raise CacheError(
            f"parmagic: the {what} {path} belongs to user id {info.st_uid}, not to you; "
            "refusing to use it (choose a folder of your own with --cache DIR)"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"parmagic: the {what} {path} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); refusing to use it (chmod 700 it)"
        )
    return info


def _private_folder(path: str, what: str = "cache folder") -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise CacheError(f"parmagic: the {what} {path} is not a folder") from None
    _check_private(path, what)


def load_key() -> bytes:
    """The user's HMAC key (made on first use: 32 random bytes, mode 0600)."""
    path = key_path()
    _private_folder(os.path.dirname(path), "key folder")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = _check_private(path, "cache key")
        if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            raise CacheError(
                f"parmagic: the cache key {path} is readable by others; refusing to use it "
                "(chmod 600 it)"
            ) from None
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 16:
            return key
        raise CacheError(f"parmagic: the cache key {path} is damaged; delete it") from None
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


@dataclass
class LoopInfo:
    """One loop's entries in a cache folder (``%parmagic cache``)."""

    key: str
    label: str
    entries: int
    size: int
    newest: float


class Store:
    """A cache folder: signed entries in one subfolder per loop."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        try:
            new = not os.path.isdir(self.folder)
            _private_folder(self.folder)
            if new:  # as pytest and ruff do with theirs: not for version control
                with open(os.path.join(self.folder, ".gitignore"), "w") as f:
                    f.write("# made by parmagic --cache\n*\n")
            self.key = load_key()
        except OSError as exc:  # a folder that cannot be made or read
            raise CacheError(
                f"parmagic: cannot use the cache folder {self.folder}: {exc}"
            ) from None

    def _loop_folder(self, loop: str) -> str:
        return os.path.join(self.folder, loop)

    def _sign(self, loop: str, name: str, body: bytes) -> bytes:
        # the entry's own key is signed too: an entry copied under another name is invalid
        return hmac.digest(self.key, f"{loop}/{name}\n".encode() + body, "sha256")

    def read(self, loop: str, name: str) -> Any:
        """The entry, or None when missing, damaged or not signed with the user's key."""
        try:
            with open(os.path.join(self._loop_folder(loop), name), "rb") as f:
                data = f.read()
        except OSError:
            return None
        head = len(MAGIC) + _DIGEST
        if len(data) < head or not data.startswith(MAGIC):
            return None
        mac, body = data[len(MAGIC) : head], data[head:]
        if not hmac.compare_digest(mac, self._sign(loop, name, body)):
            return None
        try:
            return pickle.loads(body)  # signed by us: written by this user's parmagic
        except Exception:  # a class it names is gone: compute it again
            return None

    def write(self, loop: str, name: str, body: bytes, label: str = "") -> int:
        """Write a pickled entry atomically (temp file in the same folder, then rename)."""
        folder = self._loop_folder(loop)
        if not os.path.isdir(folder):
            _private_folder(folder)
            self._write_meta(folder, label)
        data = MAGIC + self._sign(loop, name, body) + body
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.close(fd)
            fd = -1
            os.replace(tmp, os.path.join(folder, name))  # atomic: the whole entry or none
        except BaseException:
            if fd >= 0:
                os.close(fd)
            _remove(tmp)
            raise
        return len(data)

    def _write_meta(self, folder: str, label: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"label": label, "created": time.time(), "version": VERSION}, f)
        os.replace(tmp, os.path.join(folder, META))

    def _entries(self, loop: str) -> list[os.DirEntry]:
        try:
            with os.scandir(self._loop_folder(loop)) as it:
                return [e for e in it if e.name.endswith(SUFFIX) and not e.name.startswith(".")]
        except OSError:
            return []

    def loop_keys(self) -> list[str]:
        """The loops with a subfolder here (one that parmagic made: it holds loop.json)."""
        try:
            with os.scandir(self.folder) as it:
                found = [e for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
        return sorted(e.name for e in found if os.path.isfile(os.path.join(e.path, META)))

    def loops(self) -> list[LoopInfo]:
        """Each loop's label, entry count, size and newest entry, newest loop first."""
        found = []
        for loop in self.loop_keys():
            entries = self._entries(loop)
            stats = [e.stat(follow_symlinks=False) for e in entries]
            found.append(
                LoopInfo(
                    key=loop,
                    label=self._label(loop),
                    entries=len(entries),
                    size=sum(s.st_size for s in stats),
                    newest=max((s.st_mtime for s in stats), default=0.0),
                )
            )
        return sorted(found, key=lambda info: -info.newest)

    def _label(self, loop: str) -> str:
        try:
            with open(os.path.join(self._loop_folder(loop), META)) as f:
                return str(json.load(f).get("label", ""))
        except (OSError, ValueError, AttributeError):
            return ""

    def clear(self, prefix: str = "") -> int:
        """Remove the entries of every loop whose key starts with ``prefix``; their count."""
        removed = 0
        for loop in self.loop_keys():
            if not loop.startswith(prefix):
                continue
            folder = self._loop_folder(loop)
            with os.scandir(folder) as it:
                names = [e.name for e in it if e.is_file(follow_symlinks=False)]
            for name in names:  # only what parmagic writes there
                if name.endswith(SUFFIX) or name.startswith(".tmp-") or name == META:
                    removed += not name.startswith(".") and name != META
                    _remove(os.path.join(folder, name))
            try:
                os.rmdir(folder)
            except OSError:  # something else lives there: left as it is
                pass
        return removed

    def evict(self, max_bytes: int | None = None) -> int:
        """Remove the oldest entries until the folder holds at most ``max_bytes``; their count.

        Temporary files of writes cut short (a killed kernel) go once they are an hour old.
        """
        limit = MAX_BYTES if max_bytes is None else max_bytes
        entries = []
        for loop in self.loop_keys():
            _sweep_temporary(self._loop_folder(loop))
            for entry in self._entries(loop):
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append((info.st_mtime, info.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= limit:
                break
            _remove(path)
            total -= size
            removed += 1
        return removed


#: A temporary file this old is what a killed writer left behind, not a write under way.
STALE_SECONDS = 3600


def _sweep_temporary(folder: str) -> None:
    now = time.time()
    try:
        with os.scandir(folder) as it:
            stale = [e.path for e in it if e.name.startswith(".tmp-")]
    except OSError:
        return
    for path in stale:
        try:
            if now - os.lstat(path).st_mtime > STALE_SECONDS:
                _remove(path)
        except OSError:
            continue


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- one loop's run


@dataclass
class LoopCache:
    """One loop's run against a store: look iterations up, save committed ones."""

    store: Store
    key: str
    label: str
    fingerprinter: Fingerprinter = field(default_factory=Fingerprinter)
    source: str = ""  # what the key was made of, to check it again after the run
    captured: dict[str, Any] = field(default_factory=dict)
    written_names: list[str] = field(default_factory=list)
    hits: int = 0
    written: int = 0
    #: entry names of the iterations looked up and not found, until they are saved
    _names: dict[int, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _noted: set[str] = field(default_factory=set)

    def note(self, kind: str, text: str) -> None:
        """A reason an iteration was not cached, said once per kind."""
        if kind not in self._noted:
            self._noted.add(kind)
            self.notes.append(text)

    def name(self, index: int, item: Any) -> str | None:
        """The entry name of an iteration; None (noted) when its item cannot be fingerprinted."""
        try:
            return entry_name(index, item, self.fingerprinter)
        except Unhashable as exc:
            self.note(
                "item", f"an item cannot be fingerprinted ({exc}): its iteration is not cached"
            )
            return None

    def lookup(self, index: int, item: Any) -> dict | None:
        """The cached entry of iteration ``index`` with ``item``, or None."""
        name = self.name(index, item)
        entry = None if name is None else self.store.read(self.key, name)
        if not isinstance(entry, dict) or entry.get("index") != index:
            self._names[index] = name  # the item is fingerprinted once
            return None
        self.hits += 1
        return entry

    def save(self, index: int, item: Any, entry: dict) -> None:
        """Write one committed iteration's entry; a value that cannot be pickled: noted.

        An item that is not the same after its iteration (changed in place, as an in-kernel
        backend lets an iteration do) is not cached: replaying the entry would not change it.
        """
        from .worker.tracking import is_atomic

        looked = self._names.pop(index, _UNSEEN)
        name = looked if looked is not _UNSEEN and is_atomic(item) else self.name(index, item)
        if looked is not _UNSEEN and name != looked:
            self.note("changed", ITEM_CHANGED)
            return
        if name is None:
            return
        try:
            body = dumps(entry)
        except Exception as exc:
            self.note("value", f"an iteration's values cannot be pickled ({exc}): not cached")
            return
        try:
            self.store.write(self.key, name, body, self.label)
        except OSError as exc:
            self.note("write", f"cannot write to the cache folder ({exc})")
            return
        self.written += 1
        self.written_names.append(name)

    def key_still_holds(self) -> bool:
        """True when the captured values (and what reached functions read) are as they were
        when the run started: iterations that ran in the kernel may have changed them."""
        try:
            return loop_key(self.source, self.captured, Fingerprinter()) == self.key
        except Unhashable:
            return False

    def forget_written(self) -> None:
        """Remove the entries this run wrote (they were computed while the key changed)."""
        for name in self.written_names:
            _remove(os.path.join(self.store.folder, self.key, name))
        self.written_names.clear()
        self.written = 0


_UNSEEN = object()
ITEM_CHANGED = "iterations that change their loop item in place are not cached"


def dumps(value: Any) -> bytes:
    """The standard pickler where it can (classes by reference), else cloudpickle."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def open_loop(folder: str, source: str, captured: dict[str, Any], label: str) -> LoopCache | str:
    """The loop's cache in ``folder``, or the reason it cannot be cached (a message).

    Raises :class:`CacheError` for a folder that is not safe to use.
    """
    fingerprinter = Fingerprinter()
    try:
        key = loop_key(source, captured, fingerprinter)
    except Unhashable as exc:
        return f"a captured value cannot be fingerprinted: {exc}"
    return LoopCache(Store(folder), key, label, fingerprinter, source, dict(captured))


def format_size(size: float) -> str:
    """``1.2 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # not reached


def describe(folder: str) -> str:
    """``%parmagic cache``: the loops in ``folder`` with their entries and sizes."""
    if not os.path.isdir(folder):  # looking does not make one
        return f"parmagic cache {os.path.abspath(folder)}: no such folder yet"
    store = Store(folder)
    loops = store.loops()
    out = io.StringIO()
    total = sum(info.size for info in loops)
    out.write(
        f"parmagic cache {store.folder}: {len(loops)} loop(s), {format_size(total)} "
        f"(limit {format_size(MAX_BYTES)})\n"
    )
    for info in loops:
        out.write(
            f"  {info.key[:12]}  {info.entries:>6} entries  {format_size(info.size):>9}  "
            f"{info.label}\n"
        )
    return out.getvalue().rstrip("\n")
