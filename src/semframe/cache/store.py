"""The answer store: one DuckDB file under the cache directory, shared safely between processes.

DuckDB lets one process at a time open a database file for writing (and no reader may open it
while a writer holds it). Opening and closing the file for every lookup cost ~20 ms each, so a
process now *keeps* the file open while it uses it, and hands it over as soon as another process
asks for it:

- ``answers.lock``: whoever holds an exclusive ``flock`` on it may open the database. The lock
  is released by the operating system if the process dies (``kill -9`` included).
- ``answers.wait``: a process that wants the database holds a shared ``flock`` on it while it
  waits. The holder checks it before every operation and every 20 ms in a background thread;
  when someone waits, it closes the database and releases the lock (within ~20 ms, or after the
  operation in progress). A holder that has been idle for a second releases it too.

All :class:`AnswerStore` objects of one directory in a process share one connection (a
process-wide handle), so a process never waits for itself. Each write is one DuckDB transaction,
committed before the call returns, so a process killed mid-write leaves either the whole batch
or none of it.

What the store assumes of nothing (see docs/failure-modes-cache.md for each case):

- the tables are never assumed to exist: they are created (if missing) every time the file is
  opened, and the file is re-opened when it was deleted or replaced (``clear_cache()``,
  ``rm -rf``) under a running process;
- the file is opened with ``enable_external_access=false`` and ``lock_configuration=true``, and
  its catalog is checked before use: its tables must be base tables with exactly the expected
  columns, types and defaults, and it may hold no views, macros, user types, CHECK constraints
  or foreign indexes -- otherwise :class:`CacheError`; loading it never runs code;
- a file DuckDB cannot read (truncated, random bytes, another format) is moved aside as
  ``answers.duckdb.corrupt-<timestamp>`` with a warning on the ``semframe`` logger, and the run
  continues with an empty cache; a file held open by another program (the ``duckdb`` shell) is
  waited for (10 s at most), then :class:`CacheError` names the program and its PID;
- the directory is made ``0700`` and its files ``0600`` (write-ahead log included), also when
  they already existed with looser permissions (a warning says so); a directory or file owned
  by another user (unless semframe runs as root), or a file in it that is a symbolic link, is
  refused.

Examples
--------
>>> import tempfile
>>> store = AnswerStore(tempfile.mkdtemp())
>>> with store.connect() as con:
...     con.execute("SELECT count(*) FROM exact").fetchone()
(0,)
>>> store.close()
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from semframe.engines.base import Completion
from semframe.errors import SemframeError

logger = logging.getLogger("semframe")

T = TypeVar("T")

#: Bump when the tables change. Older files are migrated in place: version 1 (``exact`` with a
#: primary key, no ``key_hash``) and version 2 (no ``probabilities_json``); a file from a newer
#: version is refused with a message saying how to clear it.
SCHEMA_VERSION = 3

DB_NAME = "answers.duckdb"
LOCK_NAME = "answers.lock"
WAIT_NAME = "answers.wait"

#: A holder that has not used the database for this long closes it.
IDLE_RELEASE_S = 1.0
#: How often a holder's background thread looks for waiting processes.
POLL_S = 0.02
#: A holder hands the database to a waiting process only after holding it this long (so that two
#: busy processes do a few operations per turn, not one).
MIN_HOLD_S = 0.05
#: How long to wait for a program that is not semframe (the duckdb shell) to close the file.
FOREIGN_LOCK_TIMEOUT_S = 10.0

#: DuckDB settings of every connection: no file, network or extension access beyond the database
#: file itself (a planted view over ``read_text('/etc/passwd')`` fails), and no way to turn that
#: back on from SQL.
SAFE_CONFIG = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "threads": 1,
    "lock_configuration": True,
}

_EXACT_COLUMNS = (
    ("fingerprint", "VARCHAR NOT NULL"),
    ("request_key", "VARCHAR NOT NULL"),
    ("key_hash", "BIGINT NOT NULL"),
    ("model", "VARCHAR"),
    ("value_json", "VARCHAR"),
    ("raw_output", "VARCHAR"),
    ("finish_reason", "VARCHAR"),
    ("prompt_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("created_at", "DOUBLE"),
    # A choice's label probabilities (``Completion.probabilities``) as a JSON object, label ->
    # float; NULL where the engine gave none. Last, so that migrating a version 2 file is one
    # ``ADD COLUMN``. Checked when read back (:func:`loaded_probabilities`), never trusted.
    ("probabilities_json", "VARCHAR"),
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    # One engine answer per (engine fingerprint, request key). No primary key: keeping one made
    # every insert 3x slower; uniqueness is kept by the writers (see ExactCache.put_many), which
    # look the keys up under the lock, through ``key_hash`` (md5 of fingerprint, 0x1f, key; 60 bits).
    "CREATE TABLE IF NOT EXISTS exact (" + ", ".join(f"{n} {t}" for n, t in _EXACT_COLUMNS) + ")",
    "CREATE SEQUENCE IF NOT EXISTS semantic_seq START 1",
    # Answers a semantic step got from the engine, with the embedding of the row's input text.
    """CREATE TABLE IF NOT EXISTS semantic (
        seq BIGINT DEFAULT nextval('semantic_seq'),
        step_key VARCHAR NOT NULL,
        text_hash VARCHAR NOT NULL,
        embedding FLOAT[] NOT NULL,
        value_json VARCHAR,
        raw_output VARCHAR,
        finish_reason VARCHAR,
        created_at DOUBLE)""",
    "CREATE INDEX IF NOT EXISTS semantic_step ON semantic (step_key)",
    # Sentence embeddings, by embedding model and text digest.
    """CREATE TABLE IF NOT EXISTS embeddings (
        model VARCHAR NOT NULL,
        text_hash VARCHAR NOT NULL,
        embedding FLOAT[] NOT NULL,
        PRIMARY KEY (model, text_hash))""",
)

# What the catalog must hold: table -> accepted column lists [(name, type, default)].
_V = "VARCHAR"
_EXPECTED: dict[str, tuple[tuple[tuple[str, str, str | None], ...], ...]] = {
    "meta": ((("key", _V, None), ("value", _V, None)),),
    "exact": (
        tuple((n, t.split()[0], None) for n, t in _EXACT_COLUMNS),
        # version 2 (migrated on open)
        tuple((n, t.split()[0], None) for n, t in _EXACT_COLUMNS if n != "probabilities_json"),
        # version 1 (migrated on open)
        tuple((n, t.split()[0], None) for n, t in _EXACT_COLUMNS if n not in ("key_hash", "probabilities_json")),
    ),
    "semantic": ((("seq", "BIGINT", "nextval('semantic_seq')"), ("step_key", _V, None), ("text_hash", _V, None),
                  ("embedding", "FLOAT[]", None), ("value_json", _V, None), ("raw_output", _V, None),
                  ("finish_reason", _V, None), ("created_at", "DOUBLE", None)),),
    "embeddings": ((("model", _V, None), ("text_hash", _V, None), ("embedding", "FLOAT[]", None)),),
}
_EXPECTED_INDEXES = {("semantic_step", "semantic")}

#: Columns each older format version lacks (filled with NULL when it is migrated).
_ADDED_IN = {"key_hash": 2, "probabilities_json": 3}

#: DuckDB's SQL for :func:`key_hash` (used to migrate version 1 files).
KEY_HASH_SQL = "('0x' || md5(fingerprint || chr(31) || request_key)[1:15])::BIGINT"


def key_hash(fingerprint: str, request_key: str) -> int:
    """The 60-bit digest the exact cache finds a key by (the same as :data:`KEY_HASH_SQL`).

    Examples
    --------
    >>> key_hash("fp", "k") == key_hash("fp", "k") != key_hash("fp", "k2")
    True
    """
    blob = f"{fingerprint}\x1f{request_key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.md5(blob, usedforsecurity=False).digest()[:8], "big") >> 4


# --------------------------------------------------------------------------- stored answers


_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(text: str | None) -> str | None:
    """``text`` as valid UTF-8: a lone surrogate, which no UTF-8 text can hold, becomes U+FFFD."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def _value_json(value: Any) -> str:
    """The JSON text of a value; lone surrogates are kept exactly as ``\\udxxx`` escapes."""
    out = json.dumps(value, ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = json.dumps(value, ensure_ascii=True)  # same value, every non-ASCII char escaped
    return out


def storable_answers(completions: Sequence[Completion]) -> tuple[list[int], dict[str, list]]:
    """The positions of the answers that can be stored, and their stored columns.

    An answer whose value is not JSON data is left out (logged on the ``semframe`` logger);
    the rest of the batch is stored.
    """
    memo: dict[Any, str] = {}  # labels repeat: one json.dumps per distinct text value
    keep: list[int] = []
    values: list[str] = []
    for i, c in enumerate(completions):
        v = c.value
        try:
            if type(v) is str:
                text = memo.get(v)
                if text is None:
                    text = memo[v] = json.dumps(v, ensure_ascii=False)
            else:
                text = json.dumps(v, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            logger.warning("cache: an answer was not stored (its value is not JSON data: %s: %s)",
                           type(exc).__name__, exc)
            continue
        keep.append(i)
        values.append(text)
    kept = [completions[i] for i in keep] if len(keep) != len(completions) else completions
    raws = [c.text for c in kept]
    finishes = [c.finish_reason for c in kept]
    if not _all_utf8(values):
        values = [v if _all_utf8([v]) else _value_json(c.value) for v, c in zip(values, kept)]
    if not _all_utf8(raws):
        raws = [_storable(t) for t in raws]
    if not _all_utf8(finishes):
        finishes = [_storable(t) for t in finishes]
    return keep, {"value_json": values, "raw_output": raws, "finish_reason": finishes}


def _all_utf8(texts: Sequence[str | None]) -> bool:
    """Whether every text can be written as UTF-8 (one check for the whole batch)."""
    try:
        joined = "".join(texts)  # type: ignore[arg-type]
    except TypeError:  # a None among them
        joined = "".join(t for t in texts if t is not None)
    try:
        joined.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def answer_columns(completions: Sequence[Completion]) -> dict[str, Any]:
    """The stored form of answers, as Arrow columns: the parsed value as JSON text, the raw
    output and the finish reason. Plain data only, so loading never runs code.

    Every answer must be storable (see :func:`storable_answers` for a batch that may not be).

    Examples
    --------
    >>> answer_columns([Completion("\\ud800", "\\ud800", "stop")])["value_json"].to_pylist()
    ['"\\\\ud800"']
    """
    import pyarrow as pa

    keep, cols = storable_answers(completions)
    if len(keep) != len(completions):
        raise ValueError("some answers cannot be stored (see the warnings)")
    return {name: pa.array(col, pa.string()) for name, col in cols.items()}


def stored_answer(value_json: str, raw_output: str | None, finish_reason: str, **usage: int) -> Completion:
    """A completion back from its stored form (see :func:`answer_columns`)."""
    return Completion(text=raw_output, value=json.loads(value_json), finish_reason=finish_reason, **usage)


def probabilities_json(completions: Sequence[Completion]) -> list[str | None]:
    """Each answer's label probabilities in stored form: a JSON object (label -> float, in the
    labels' order, ASCII only so any label can be written), or None where there are none or they
    are not finite numbers.

    Examples
    --------
    >>> probabilities_json([Completion("A", "A", "stop", probabilities={"A": 0.75, "B": 0.25}),
    ...                     Completion("A", "A", "stop")])
    ['{"A":0.75,"B":0.25}', None]
    """
    out: list[str | None] = []
    for c in completions:
        probs = c.probabilities
        if probs is None:
            out.append(None)
            continue
        try:
            out.append(json.dumps({str(k): float(v) for k, v in probs.items()}, ensure_ascii=True,
                                  allow_nan=False, separators=(",", ":")))
        except (TypeError, ValueError, AttributeError) as exc:
            logger.warning("cache: an answer's label probabilities were not stored (%s: %s)", type(exc).__name__, exc)
            out.append(None)
    return out


#: How far from 1 stored probabilities may sum (the engines renormalise in float64).
PROBABILITY_SUM_TOLERANCE = 1e-6


def checked_probabilities(probs: Any, labels: Sequence[str] | None = None) -> dict[str, float] | None:
    """``probs`` if it is a distribution over ``labels``, else None (the reason on the logger).

    A distribution: a dict whose keys are exactly ``labels`` (any strings when ``labels`` is
    None), whose values are finite floats in [0, 1] summing to 1 (within
    :data:`PROBABILITY_SUM_TOLERANCE`). The result is a new dict in ``labels``' order. What a
    cache file says is never trusted on its own: the exact cache checks stored probabilities
    with this when it reads them, and the resolver again against the request's labels.

    Examples
    --------
    >>> checked_probabilities({"NO": 0.25, "YES": 0.75}, ("YES", "NO"))
    {'YES': 0.75, 'NO': 0.25}
    >>> checked_probabilities({"YES": 0.9, "NO": 0.9}, ("YES", "NO")) is None
    True
    """
    why = _probabilities_problem(probs, labels)
    if why is not None:
        logger.warning("cache: stored label probabilities were not used (%s)", why)
        return None
    if labels is None:
        return {k: float(v) for k, v in probs.items()}
    return {label: float(probs[label]) for label in labels}


def _probabilities_problem(probs: Any, labels: Sequence[str] | None) -> str | None:
    if type(probs) is not dict or not probs:
        return f"not a non-empty object but {type(probs).__name__}"
    if labels is not None:
        if len(probs) != len(labels) or any(label not in probs for label in labels):
            return f"labels {sorted(map(str, probs))[:8]} are not the request's {list(labels)[:8]}"
    elif any(type(k) is not str for k in probs):
        return "a key that is not a label"
    total = 0.0
    for v in probs.values():
        # (NaN and infinities fail the range test; True and False are not numbers here)
        if (type(v) is not float and type(v) is not int) or not 0.0 <= v <= 1.0:
            return f"{v!r:.40} is not a probability"
        total += v
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        return f"they sum to {total!r}, not 1"
    return None


def loaded_probabilities(text: str | None) -> dict[str, float] | None:
    """Label probabilities back from their stored form (None: none stored, or not a valid
    distribution -- then with a warning; see :func:`checked_probabilities`).

    >>> loaded_probabilities('{"A":0.75,"B":0.25}')
    {'A': 0.75, 'B': 0.25}
    >>> loaded_probabilities('{"A":1.5,"B":-0.5}') is None
    True
    """
    if text is None:
        return None
    try:
        probs = json.loads(text)
    except (ValueError, RecursionError) as exc:
        logger.warning("cache: stored label probabilities were not used (not JSON: %s)", exc)
        return None
    return checked_probabilities(probs)


class CacheError(SemframeError):
    """The cache directory cannot be used (locked too long, unwritable, tampered with, or from
    another version); the message names the file and how to fix it."""


# --------------------------------------------------------------------------- DuckDB errors

_FOREIGN_LOCK = re.compile(r"Could not set lock on file|Conflicting lock", re.I)
_NEWER = re.compile(r"version number|storage version|newer version|older version", re.I)
_CORRUPT = re.compile(
    r"not a valid DuckDB database file|Could not read enough bytes|Corrupt database file|checksum|"
    r"Failed to read database header|replaying WAL|Loading external extensions is disabled|"
    r"Serialization Error|database file is corrupt", re.I)
_VANISHED = re.compile(r"No such file or directory|Table with name .* does not exist|"
                       r"database has been invalidated|Cannot open file", re.I)


def _holder_of(exc: BaseException) -> str:
    m = re.search(r"held in (.+?) \(PID (\d+)\)", str(exc))
    return f"{m.group(1)} (PID {m.group(2)})" if m else "another program"


# --------------------------------------------------------------------------- the shared handle


class _Handle:
    """One process's access to one store directory: the lock, the connection, the key indexes."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / DB_NAME
        self.lock_path = directory / LOCK_NAME
        self.wait_path = directory / WAIT_NAME
        self.mutex = threading.RLock()
        self.pid = os.getpid()
        self.con: Any = None
        self.lock_fd: int | None = None
        self.wait_fd: int | None = None
        self.db_ident: tuple[int, int] | None = None
        self.last_used = 0.0
        self.acquired_at = 0.0
        self.depth = 0
        self.reaper: threading.Thread | None = None
        #: fingerprint -> _KeyIndex, valid for the file whose ``file_id`` is ``index_ident``.
        self.indexes: dict[str, Any] = {}
        self.index_ident: str | None = None
        #: The open file's random id (``meta.file_id``, written when the file is created).
        self.file_id: str | None = None
        self.opens = 0  # how many times the database was opened (for tests and benchmarks)
        #: Counts acquisitions: while it is unchanged, no other process has written the file.
        self.tenure = 0
        #: One past the last row id of ``exact``, as of ``exact_end_tenure`` (None: unknown).
        self.exact_end: int | None = None
        self.exact_end_tenure = -1
        #: The file whose macros were checked (they are checked once per file and process).
        self.macros_checked: tuple[int, int] | None = None
        #: This process was forked while its parent had the file open: it may not open it.
        self.inherited = False

    # ------------------------------------------------------------------ directory and files

    def make_directory(self) -> None:
        d = self.directory
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache directory {d}: {exc.strerror}; set another "
                "with sf.configure(cache_dir=...) or $SEMFRAME_CACHE_DIR, or pass cache=False"
            ) from None
        self._private(d, 0o700, follow=True)

    def _private(self, p: Path, mode: int, *, warn: bool = True, follow: bool = False) -> None:
        """Make ``p`` owner-only (``mode``), or refuse it when it is not ours to change. ``warn``:
        say so on the logger (not for files DuckDB just created with the process's umask).
        ``follow``: ``p`` may be a symbolic link (the directory may; the files in it may not)."""
        try:
            st = os.stat(p) if follow else os.lstat(p)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise CacheError(f"{p} is a symbolic link; semframe does not follow links in its cache "
                             f"directory. Remove it, or use another cache_dir")
        euid = os.geteuid()
        if euid != 0 and st.st_uid != euid:
            raise CacheError(f"{p} belongs to another user (uid {st.st_uid}); semframe keeps its cache "
                             f"private. Use another cache_dir (sf.configure(cache_dir=...))")
        if stat.S_IMODE(st.st_mode) & 0o077:
            try:
                os.chmod(p, mode)
            except OSError as exc:
                raise CacheError(f"{p} is open to other users (mode {stat.S_IMODE(st.st_mode):o}) and "
                                 f"cannot be made private: {exc.strerror}; fix its permissions "
                                 f"(chmod {mode:o}) or use another cache_dir") from None
            if warn:
                logger.warning("cache: %s was open to other users (mode %o); made it %o",
                               p, stat.S_IMODE(st.st_mode), mode)

    def tighten_files(self, *, warn: bool = False) -> None:
        """Every file of the directory ``0600`` (DuckDB creates its WAL with the umask)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                self._private(Path(entry.path), 0o700 if stat.S_ISDIR(st.st_mode) else 0o600, warn=warn)

    def _open_aux(self, path: Path) -> int:
        """Open (create) a lock file: private, never through a symbolic link."""
        self._private(path, 0o600)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise CacheError(f"cannot open the lock file {path}: {exc.strerror}; use another cache_dir "
                             "(sf.configure(cache_dir=...)) or pass cache=False") from None

    def _ident(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    # ------------------------------------------------------------------ fork

    def check_pid(self) -> None:
        """After a fork the child must not touch the parent's connection or lock. (The parent
        closes its connections before forking -- see ``_before_fork`` -- so there is none to
        inherit, unless the fork came in the middle of an operation.)"""
        if self.pid == os.getpid():
            return
        if self.con is not None:
            # Closing it here would crash (DuckDB's threads did not survive the fork) or
            # checkpoint the parent's file from the child; and while it lives, DuckDB would hand
            # it out again for this path. So it is kept forever, and this process may not use the
            # cache directory at all.
            _leak(self.con)
            self.inherited = True
        for fd in (self.lock_fd, self.wait_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's lock stays: it holds its own descriptor
        self.con = self.lock_fd = self.wait_fd = None
        self.db_ident = None
        self.indexes = {}
        self.index_ident = None
        self.depth = 0
        self.reaper = None
        self.pid = os.getpid()

    # ------------------------------------------------------------------ the lock

    def someone_waits(self) -> bool:
        if self.wait_fd is None:
            return False
        try:
            fcntl.flock(self.wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(self.wait_fd, fcntl.LOCK_UN)
        return False

    def still_ours(self) -> bool:
        """The lock file and the database are still the ones we hold (not deleted or replaced)."""
        try:
            if self.lock_fd is None:
                return False
            held, there = os.fstat(self.lock_fd), os.stat(self.lock_path)
            if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
                return False
            db = os.stat(self.path)
            return (db.st_dev, db.st_ino) == self.db_ident
        except OSError:
            return False

    def _take_lock(self, timeout: float) -> None:
        self.make_directory()
        if self.wait_fd is None:
            self.wait_fd = self._open_aux(self.wait_path)
        deadline = time.monotonic() + timeout
        _announce(self.wait_fd, deadline, self.directory)  # "I am waiting" (the holder sees it)
        try:
            delay = 0.002
            while True:
                fd = self._open_aux(self.lock_path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise CacheError(
                            f"the cache at {self.directory} stayed locked by another process for "
                            f"{timeout:.0f} s; wait for it, or use another cache_dir"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.005)
                    continue
                held = os.fstat(fd)
                try:
                    there = os.stat(self.lock_path)
                    same = (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
                except FileNotFoundError:
                    same = False
                if same:
                    self.lock_fd = fd
                    return
                os.close(fd)  # the file was deleted or replaced after we opened it: again
                self.make_directory()
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self.wait_fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ open and close

    def ensure_open(self, timeout: float) -> Any:
        """The connection, opened (and the lock taken) if needed. A holder that another process
        waits for hands the database over first (after holding it ``MIN_HOLD_S`` at least)."""
        self.check_pid()
        if self.inherited:
            raise CacheError(
                f"this process was forked while its parent was using the cache at {self.directory}; "
                "it cannot open it safely. Start processes with multiprocessing's 'spawn' or "
                "'forkserver' method, fork outside of semframe calls, or pass cache=False")
        if self.con is not None:
            if not self.still_ours():
                self.release(keep_index=True)
            elif time.monotonic() - self.acquired_at >= MIN_HOLD_S and self.someone_waits():
                self.release(keep_index=True)
                self._let_waiter_in()
        if self.con is None:
            self._take_lock(timeout)
            try:
                self._open_database()
            except BaseException:
                self.release(keep_index=True)
                raise
            self.acquired_at = time.monotonic()
            self._start_reaper()
        return self.con

    def _let_waiter_in(self, limit_s: float = 0.1) -> None:
        """After handing over: wait (briefly) until the waiter has taken the lock, so that this
        process does not take it straight back."""
        deadline = time.monotonic() + limit_s
        while self.someone_waits() and time.monotonic() < deadline:
            time.sleep(0.001)

    def _open_database(self) -> None:
        import duckdb

        foreign_deadline: float | None = None
        quarantined = False
        vanished = 0
        self.tighten_files(warn=True)  # files that were there before this process opened them
        while True:
            self._private(self.path, 0o600)
            try:
                existed = self.path.stat().st_size > 0
            except FileNotFoundError:
                existed = False
            try:
                con = duckdb.connect(str(self.path), config=SAFE_CONFIG)
            except duckdb.Error as exc:
                message = str(exc)
                if _FOREIGN_LOCK.search(message):
                    now = time.monotonic()
                    if foreign_deadline is None:
                        foreign_deadline = now + FOREIGN_LOCK_TIMEOUT_S
                        logger.warning("cache: %s is open in %s; waiting up to %.0f s for it to close",
                                       self.path, _holder_of(exc), FOREIGN_LOCK_TIMEOUT_S)
                    if now > foreign_deadline:
                        raise CacheError(
                            f"the cache file {self.path} is open in {_holder_of(exc)}, which is not a "
                            f"semframe run (DuckDB lets one program at a time open it). Close it there "
                            f"(.exit in the duckdb shell), or run with cache=False or another cache_dir"
                        ) from None
                    time.sleep(0.1)
                    continue
                if _NEWER.search(message) and not _CORRUPT.search(message):
                    raise CacheError(
                        f"the cache file {self.path} was written by another DuckDB version ({message}); "
                        f"use the duckdb version that wrote it, or clear it with "
                        f"semframe.cache.clear_cache() (or delete the file)"
                    ) from None
                if "No such file or directory" in message and vanished < 5:
                    # The directory was removed (clear_cache, rm -rf) between making it and opening
                    # the file: make it again and retry.
                    vanished += 1
                    self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                if not quarantined and (_CORRUPT.search(message) or isinstance(exc, duckdb.InternalException)):
                    self.quarantine(message)
                    quarantined = True
                    continue
                raise CacheError(f"cannot open the cache file {self.path}: {message}; "
                                 f"clear it with semframe.cache.clear_cache() or pass cache=False") from None
            try:
                self._prepare(con, existed=existed)
            except CacheError:
                with contextlib.suppress(Exception):
                    con.close()
                raise
            except duckdb.Error as exc:
                with contextlib.suppress(Exception):
                    con.close()
                if not quarantined and (_CORRUPT.search(str(exc)) or isinstance(exc, duckdb.InternalException)):
                    self.quarantine(str(exc))
                    quarantined = True
                    continue
                raise CacheError(f"cannot use the cache file {self.path}: {exc}; clear it with "
                                 f"semframe.cache.clear_cache() or pass cache=False") from None
            break
        self.con = con
        self.opens += 1
        self.tenure += 1
        st = os.stat(self.path)
        self.db_ident = (st.st_dev, st.st_ino)
        if self.index_ident != self.file_id:  # another file (an inode number can be reused: not that)
            self.indexes = {}
            self.index_ident = self.file_id
        self.tighten_files()

    def quarantine(self, reason: str) -> Path:
        """Move the unreadable database (and its WAL) aside; the caller opens a fresh one."""
        if self.con is not None:
            with contextlib.suppress(Exception):
                self.con.close()
            self.con = None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.directory / f"{DB_NAME}.corrupt-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{DB_NAME}.corrupt-{stamp}-{n}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, target)
        with contextlib.suppress(FileNotFoundError):
            os.rename(str(self.path) + ".wal", str(target) + ".wal")
        self.indexes = {}
        self.index_ident = self.file_id = None
        logger.warning("cache: %s could not be read (%s); moved it to %s and started an empty cache "
                       "(delete that file once you do not need it)", self.path, reason.splitlines()[0][:300],
                       target.name)
        return target

    def release(self, *, keep_index: bool = False) -> None:
        """Close the database and release the lock (the caller holds ``mutex``)."""
        if self.pid != os.getpid():
            self.check_pid()
            return
        if self.con is not None:
            with contextlib.suppress(Exception):
                self.con.close()
            self.con = None
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)  # closing the descriptor releases the lock
            self.lock_fd = None
        if not keep_index:
            self.indexes = {}
            self.index_ident = None
            if self.wait_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.wait_fd)
                self.wait_fd = None
        self.db_ident = None

    def _start_reaper(self) -> None:
        if self.reaper is not None and self.reaper.is_alive():
            return
        self.reaper = threading.Thread(target=self._reap, name=f"semframe-cache-{self.directory.name}", daemon=True)
        self.reaper.start()

    def _reap(self) -> None:
        """Release the database when another process waits for it, or after a second unused."""
        me = threading.current_thread()
        while True:
            time.sleep(POLL_S)
            if not self.mutex.acquire(blocking=False):
                continue
            try:
                if self.reaper is not me or self.pid != os.getpid() or self.con is None:
                    return
                if self.depth:
                    continue
                idle = time.monotonic() - self.last_used > IDLE_RELEASE_S
                if idle or self.someone_waits() or not self.still_ours():
                    self.release(keep_index=not idle)
                    self.reaper = None
                    return
            finally:
                self.mutex.release()

    # ------------------------------------------------------------------ schema

    def _prepare(self, con: Any, *, existed: bool) -> None:
        """Check the catalog (refuse what semframe did not create), create what is missing,
        migrate a version 1 or 2 file."""
        ident = self._ident()
        if existed:
            self._check_catalog(con, macros=ident is None or ident != self.macros_checked)
        self.macros_checked = ident  # (not reached when the check refused the file)
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in _SCHEMA:
                con.execute(statement)
            meta = dict(con.execute(
                "SELECT key, value FROM meta WHERE key IN ('schema_version', 'file_id')").fetchall())
            version = meta.get("schema_version")
            if version is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif version in ("1", "2"):
                self._migrate(con, int(version))
            elif version != str(SCHEMA_VERSION):
                raise CacheError(
                    f"the cache at {self.path} has format version {version}, this semframe uses "
                    f"{SCHEMA_VERSION}; clear it with semframe.cache.clear_cache() (or delete the file)"
                )
            exact = [tuple(r) for r in con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
                "AND schema_name = 'main' AND table_name = 'exact' ORDER BY column_index").fetchall()]
            if exact != [(n, t.split()[0]) for n, t in _EXACT_COLUMNS]:
                raise CacheError(
                    f"the cache file {self.path} says format version {SCHEMA_VERSION} but its table exact has "
                    f"the columns {exact}; clear it with semframe.cache.clear_cache() (or delete the file)")
            self.file_id = meta.get("file_id")
            if self.file_id is None:
                self.file_id = uuid.uuid4().hex
                con.execute("INSERT INTO meta VALUES ('file_id', ?)", [self.file_id])
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            raise

    def _migrate(self, con: Any, version: int) -> None:
        """Bring a version 1 or 2 file to :data:`SCHEMA_VERSION` (in the caller's transaction).

        Version 1 (no ``key_hash``, a primary key) is copied into a new table; version 2 gains the
        ``probabilities_json`` column (NULL: its answers have no stored probabilities)."""
        columns = [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = 'exact' ORDER BY column_index").fetchall()]
        if "key_hash" not in columns:
            names = [n for n, _ in _EXACT_COLUMNS]
            con.execute("CREATE TABLE exact_new (" + ", ".join(f"{n} {t}" for n, t in _EXACT_COLUMNS) + ")")
            select = ", ".join(KEY_HASH_SQL if n == "key_hash" else n if n in columns else f"NULL AS {n}"
                               for n in names)
            con.execute(f"INSERT INTO exact_new SELECT {select} FROM exact")
            con.execute("DROP TABLE exact")
            con.execute("ALTER TABLE exact_new RENAME TO exact")
        else:
            for n, t in _EXACT_COLUMNS:
                if n not in columns and _ADDED_IN.get(n, 0) > version:
                    con.execute(f"ALTER TABLE exact ADD COLUMN {n} {t}")
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        logger.info("cache: migrated %s from format version %d to %d", self.path, version, SCHEMA_VERSION)

    def _check_catalog(self, con: Any, *, macros: bool) -> None:
        """Refuse a file with objects semframe did not create: views, user types, CHECK
        constraints, indexes other than its own, its tables with other columns, types or
        defaults -- and, when ``macros``, macros (which can shadow built-in functions: a planted
        ``max`` macro would answer every ``max()``). The macro check costs ~30 ms (DuckDB lists
        every built-in function to find them), so it runs when this process first opens a file;
        the rest (~3 ms) every time."""
        db = "database_name = current_database()"
        rows = con.execute(f"""
            SELECT 'view', schema_name || '.' || view_name FROM duckdb_views() WHERE NOT internal AND {db}
            UNION ALL SELECT 'user type', schema_name || '.' || type_name FROM duckdb_types()
                WHERE NOT internal AND {db}
            UNION ALL SELECT 'index', schema_name || '.' || index_name || ' on ' || table_name FROM duckdb_indexes()
                WHERE {db} AND NOT (schema_name = 'main' AND (index_name, table_name) IN ({
                    ', '.join(f"('{i}', '{t}')" for i, t in sorted(_EXPECTED_INDEXES))}))
            UNION ALL SELECT 'CHECK constraint', schema_name || '.' || table_name FROM duckdb_tables()
                WHERE check_constraint_count > 0 AND {db}
            """).fetchall()
        problems = [f"a {kind} {name}" for kind, name in rows]
        if macros:
            problems += [f"a {kind.replace('_', ' ')} {schema}.{name}" for schema, name, kind in con.execute(
                f"SELECT schema_name, function_name, function_type FROM duckdb_functions() WHERE NOT internal AND {db}"
            ).fetchall()]
        columns: dict[str, list[tuple[str, str, str | None]]] = {}
        for table, column, dtype, default in con.execute(
                f"SELECT table_name, column_name, data_type, column_default FROM duckdb_columns() "
                f"WHERE {db} AND schema_name = 'main' AND table_name IN "
                f"({', '.join(repr(t) for t in _EXPECTED)}) ORDER BY table_name, column_index").fetchall():
            columns.setdefault(table, []).append((column, dtype, default))
        for table, accepted in _EXPECTED.items():
            found = columns.get(table)
            if found is not None and tuple(found) not in accepted:
                problems.append(f"a table {table} with columns {found}")
        if problems:
            raise CacheError(
                f"the cache file {self.path} holds objects semframe did not create ({'; '.join(problems)}); "
                f"semframe refuses to use it. If you did not put them there, someone else may have: delete "
                f"the file (semframe.cache.clear_cache(), or rm {self.path}) and semframe starts a new cache"
            )


def _announce(wait_fd: int, deadline: float, directory: Path) -> None:
    """Take the shared lock on ``answers.wait`` (a holder only ever holds it exclusively for a
    moment, to look for waiters)."""
    while True:
        try:
            fcntl.flock(wait_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() > deadline:
                raise CacheError(f"the cache at {directory} stayed locked by another process; wait for it, "
                                 "or use another cache_dir") from None
            time.sleep(0.001)


_handles: dict[str, _Handle] = {}
_handles_lock = threading.Lock()
_INHERITED: list[Any] = []  # connections inherited over a fork: kept alive, never closed in the child


def _handle_for(directory: Path) -> _Handle:
    key = os.path.realpath(directory)  # one handle per directory, however it is spelled
    with _handles_lock:
        handle = _handles.get(key)
        if handle is None:
            handle = _handles[key] = _Handle(Path(key))
        return handle


@atexit.register
def _close_all() -> None:
    for handle in list(_handles.values()):
        if handle.mutex.acquire(timeout=1.0):
            try:
                handle.release()
            finally:
                handle.mutex.release()


def _leak(obj: Any) -> None:
    """Keep ``obj`` alive until the process ends, its destructor never run (not even at exit)."""
    import ctypes

    _INHERITED.append(obj)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _before_fork() -> None:
    """Close this process's connections before it forks: a child must not inherit an open DuckDB
    database (it could neither close it nor open the file again). The parent reopens on next use."""
    for handle in list(_handles.values()):
        if handle.pid != os.getpid() or handle.con is None:
            continue
        if handle.mutex.acquire(timeout=5.0):
            try:
                if handle.depth == 0:  # not in the middle of an operation (of the forking thread)
                    handle.release(keep_index=True)
            finally:
                handle.mutex.release()


def _after_fork_in_child() -> None:
    global _handles_lock
    _handles_lock = threading.Lock()
    for handle in _handles.values():
        handle.mutex = threading.RLock()
        handle.check_pid()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class AnswerStore:
    """The DuckDB file that holds cached answers and embeddings.

    Parameters
    ----------
    directory
        Where the database and its lock files live (created ``0700`` if missing, made ``0700`` if
        looser).
    lock_timeout
        Seconds to wait for another process to hand the database over before raising
        :class:`CacheError`.

    Examples
    --------
    >>> import tempfile
    >>> store = AnswerStore(tempfile.mkdtemp())
    >>> store.path.name
    'answers.duckdb'
    """

    def __init__(self, directory: str | os.PathLike, *, lock_timeout: float = 120.0):
        self.directory = Path(directory).expanduser()
        self.path = self.directory / DB_NAME
        self.lock_path = self.directory / LOCK_NAME
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"AnswerStore({str(self.directory)!r})"

    @property
    def _handle(self) -> _Handle:
        return _handle_for(self.directory)

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock without opening the database (waits up to
        ``lock_timeout`` seconds; this process's own connection is closed first)."""
        handle = self._handle
        with handle.mutex:
            handle.check_pid()
            handle.release()
            handle.make_directory()
            wait_fd = handle._open_aux(handle.wait_path)
            deadline = time.monotonic() + self.lock_timeout
            fd = None
            try:
                _announce(wait_fd, deadline, self.directory)
                delay = 0.002
                while True:
                    fd = handle._open_aux(self.lock_path)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        os.close(fd)
                        fd = None
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        if time.monotonic() > deadline:
                            raise CacheError(
                                f"the cache at {self.directory} stayed locked by another process for "
                                f"{self.lock_timeout:.0f} s; wait for it, or use another cache_dir"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.005)
                with contextlib.suppress(OSError):
                    fcntl.flock(wait_fd, fcntl.LOCK_UN)
                yield
            finally:
                if fd is not None:
                    os.close(fd)  # closing the descriptor releases the lock
                os.close(wait_fd)

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A DuckDB connection (a cursor of the process's shared one) inside one transaction;
        committed on success. Do not keep it past the ``with`` block."""
        handle = self._handle
        with handle.mutex:
            con = self._enter(handle)
            cur = con.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    yield cur
                except BaseException:
                    with contextlib.suppress(Exception):
                        cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
                handle.tighten_files()
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
                self._leave(handle)
                if handle.depth == 0:
                    # Raw SQL may have changed anything (tables, rows, the format version): close,
                    # so that the next use re-checks the file and re-reads it.
                    handle.release()

    def _enter(self, handle: _Handle) -> Any:
        if handle.depth:
            handle.depth += 1
            return handle.con
        con = handle.ensure_open(self.lock_timeout)
        handle.depth = 1
        return con

    def _leave(self, handle: _Handle) -> None:
        handle.depth -= 1
        handle.last_used = time.monotonic()

    def run(self, operation: Callable[[Any, _Handle], T], *, write: bool = False,
            transaction: bool = False) -> T:
        """``operation(cursor, handle)`` on the open database; run once more on a fresh
        connection when the file was deleted, replaced or found corrupt under it.

        ``write``: the operation writes (the files' permissions are checked afterwards: DuckDB
        creates its WAL with the umask). ``transaction``: run it in one transaction (an operation
        that writes with one statement need not: a statement is atomic on its own).
        """
        import duckdb

        handle = self._handle
        for attempt in (1, 2):
            with handle.mutex:
                con = self._enter(handle)
                cur = con.cursor()
                try:
                    try:
                        if transaction:
                            cur.execute("BEGIN TRANSACTION")
                        out = operation(cur, handle)
                        if transaction:
                            cur.execute("COMMIT")
                    except duckdb.Error as exc:
                        if transaction:
                            with contextlib.suppress(Exception):
                                cur.execute("ROLLBACK")
                        message = str(exc)
                        corrupt = bool(_CORRUPT.search(message)) or isinstance(exc, duckdb.InternalException)
                        vanished = bool(_VANISHED.search(message)) or not handle.still_ours()
                        if attempt == 2 or not (corrupt or vanished):
                            raise CacheError(f"the cache file {self.path} failed: {message}; clear it with "
                                             "semframe.cache.clear_cache() or pass cache=False") from exc
                        with contextlib.suppress(Exception):
                            cur.close()
                        if corrupt and not vanished:
                            handle.quarantine(message)
                        handle.release()
                        continue
                    except BaseException:
                        if transaction:
                            with contextlib.suppress(Exception):
                                cur.execute("ROLLBACK")
                        raise
                    if write:
                        handle.tighten_files()
                    return out
                finally:
                    with contextlib.suppress(Exception):
                        cur.close()
                    self._leave(handle)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ maintenance

    def counts(self) -> dict[str, int]:
        """Rows per table: ``{"exact": ..., "semantic": ..., "embeddings": ...}``."""
        return self.run(lambda con, _h: {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                                          for t in ("exact", "semantic", "embeddings")})

    def close(self) -> None:
        """Close this process's connection to the database now (it reopens on next use)."""
        handle = self._handle
        with handle.mutex:
            handle.check_pid()
            handle.release()

    def clear(self) -> None:
        """Delete the database (and its write-ahead log) under the lock."""
        with self.locked():
            for name in (DB_NAME, DB_NAME + ".wal"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()
