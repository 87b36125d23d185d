"""The answer store: one DuckDB file under the cache directory, shared safely between processes.

DuckDB lets one process at a time open a database file for writing (and no reader may open it
while a writer holds it). The store therefore never keeps the file open: every operation takes an
exclusive lock on a sibling lock file (``fcntl.flock``, released by the operating system if the
process dies), opens the database, runs one transaction, and closes it. Two processes sharing a
cache directory take turns; each write is one DuckDB transaction, so a process killed mid-write
leaves either the whole batch or none of it.

The store holds users' data: its directory is created ``0700`` and its files ``0600``, and it
holds plain values only (text, numbers, JSON text, float arrays) -- loading it never runs code.

Examples
--------
>>> import tempfile
>>> store = AnswerStore(tempfile.mkdtemp())
>>> with store.connect() as con:
...     con.execute("SELECT count(*) FROM exact").fetchone()
(0,)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from semframe.engines.base import Completion
from semframe.errors import SemframeError

#: Bump when the tables change; an older file is refused with a message saying how to clear it.
SCHEMA_VERSION = 1

DB_NAME = "answers.duckdb"
LOCK_NAME = "answers.lock"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    # One engine answer per (engine fingerprint, request key).
    """CREATE TABLE IF NOT EXISTS exact (
        fingerprint VARCHAR NOT NULL,
        request_key VARCHAR NOT NULL,
        model VARCHAR,
        value_json VARCHAR,
        raw_output VARCHAR,
        finish_reason VARCHAR,
        prompt_tokens BIGINT,
        output_tokens BIGINT,
        created_at DOUBLE,
        PRIMARY KEY (fingerprint, request_key))""",
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


def answer_columns(completions: Sequence[Completion]) -> dict[str, Any]:
    """The stored form of answers, as Arrow columns: the parsed value as JSON text, the raw
    output and the finish reason. Plain data only, so loading never runs code."""
    import pyarrow as pa

    return {
        "value_json": pa.array([json.dumps(c.value, ensure_ascii=False) for c in completions], pa.string()),
        "raw_output": pa.array([c.text for c in completions], pa.string()),
        "finish_reason": pa.array([c.finish_reason for c in completions], pa.string()),
    }


def stored_answer(value_json: str, raw_output: str | None, finish_reason: str, **usage: int) -> Completion:
    """A completion back from its stored form (see :func:`answer_columns`)."""
    return Completion(text=raw_output, value=json.loads(value_json), finish_reason=finish_reason, **usage)


class CacheError(SemframeError):
    """The cache directory cannot be used (locked too long, unwritable, or from another version)."""


class AnswerStore:
    """The DuckDB file that holds cached answers and embeddings.

    Parameters
    ----------
    directory
        Where the database and its lock file live (created ``0700`` if missing).
    lock_timeout
        Seconds to wait for another process to finish its operation before raising
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
        self._ready = False

    def __repr__(self) -> str:
        return f"AnswerStore({str(self.directory)!r})"

    # ------------------------------------------------------------------ files

    def _make_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache directory {self.directory}: {exc.strerror}; set another "
                "with sf.configure(cache_dir=...) or $SEMFRAME_CACHE_DIR, or pass cache=False"
            ) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (waits up to ``lock_timeout`` seconds)."""
        self._make_directory()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise CacheError(
                            f"the cache at {self.directory} stayed locked by another process for "
                            f"{self.lock_timeout:.0f} s; wait for it, or use another cache_dir"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.2)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A DuckDB connection inside one transaction, under the lock; committed on success."""
        import duckdb

        with self.locked():
            fresh = not self.path.exists()
            con = duckdb.connect(str(self.path))
            try:
                if fresh:
                    os.chmod(self.path, 0o600)
                if not self._ready:
                    self._prepare(con)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    def _prepare(self, con: Any) -> None:
        for statement in _SCHEMA:
            con.execute(statement)
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif row[0] != str(SCHEMA_VERSION):
            raise CacheError(
                f"the cache at {self.path} has format version {row[0]}, this semframe uses "
                f"{SCHEMA_VERSION}; clear it with semframe.cache.clear_cache() (or delete the file)"
            )
        self._ready = True

    # ------------------------------------------------------------------ maintenance

    def counts(self) -> dict[str, int]:
        """Rows per table: ``{"exact": ..., "semantic": ..., "embeddings": ...}``."""
        with self.connect() as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("exact", "semantic", "embeddings")}

    def clear(self) -> None:
        """Delete the database (and its write-ahead log) under the lock."""
        with self.locked():
            for name in (DB_NAME, DB_NAME + ".wal"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()
        self._ready = False
