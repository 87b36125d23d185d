"""A cluster-safe exact cache: answer segments in a shared directory (:class:`SegmentCache`).

The DuckDB exact cache (:mod:`semframe.cache.exact`) is one file that one process at a time holds
the lock of; workers on other machines cannot share it. A :class:`SegmentCache` has the same
interface (``get_many(fingerprint, keys)``, ``put_many(fingerprint, [(key, request,
completion)])``) over a directory that every worker can reach (a shared file system: NFS, a
mounted bucket):

- each ``put_many`` writes **one new file**, ``<dir>/segments/<name>.arrow`` (an Arrow IPC file
  of the batch's answers in the DuckDB store's stored form: fingerprint, request key, value JSON,
  raw output, finish reason, token counts, probabilities JSON), under a name no other writer can
  pick (time in ns, host, pid, a counter, a random suffix): it is written to ``<name>.arrow.tmp``,
  flushed to disk, then renamed into place with ``os.replace`` (atomic on POSIX), so a reader
  sees a whole segment or none. No file is ever modified after that, so writers never conflict.
- ``get_many`` first reads the segments it has not read yet (it remembers them by name) into an
  in-memory index, ``(fingerprint, key) -> answer``, then answers from it.
- :meth:`SegmentCache.compact` merges the segments into one (written the same way) and then
  deletes only the segments it merged; safe while others read and write.

Which answer wins: segments are read in name order (names start with the write time, so oldest
first) and the **first answer read for a key is kept** -- a later segment's answer for the same
key is ignored, except that one with the same value fills in label probabilities (as the DuckDB
cache does). Two different answers for one key only happen when two workers asked the same
request at once and the engine is not deterministic; each reader then returns one of them
(never a mix of the two), the same one for the rest of its life.

Examples
--------
>>> import tempfile
>>> from semframe.engines.base import Completion, Message, Request
>>> from semframe.plan.spec import ChoiceSpec
>>> d = tempfile.mkdtemp()
>>> req = Request((Message("user", "Is water wet?"),), ChoiceSpec(("YES", "NO")), max_tokens=3)
>>> SegmentCache(d).put_many("fp", [(req.key, req, Completion("YES", "YES", "stop"))])
>>> SegmentCache(d).get_many("fp", {req.key})[req.key].value   # another process would see it too
'YES'
>>> SegmentCache(d).get_many("another-model", {req.key})
{}
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from semframe.cache.store import loaded_probabilities, probabilities_json, storable_answers
from semframe.engines.base import Completion, Request

__all__ = ["SEGMENTS_DIR", "SegmentCache"]

logger = logging.getLogger("semframe")

#: Sub-directory of a segment cache's directory that holds the segment files.
SEGMENTS_DIR = "segments"

_SUFFIX = ".arrow"
_TMP = ".tmp"
_COLUMNS = ("fingerprint", "request_key", "value_json", "raw_output", "finish_reason", "prompt_tokens",
            "output_tokens", "probabilities_json", "model", "created_at")
_counter = itertools.count()
_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"

# One stored answer: value JSON, raw output, finish reason, prompt tokens, output tokens, probabilities JSON.
_Row = tuple[str, "str | None", "str | None", int, int, "str | None"]


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("fingerprint", pa.string()), ("request_key", pa.string()), ("value_json", pa.string()),
                      ("raw_output", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
                      ("output_tokens", pa.int64()), ("probabilities_json", pa.string()), ("model", pa.string()),
                      ("created_at", pa.float64())])


def segment_name() -> str:
    """A segment file name no other writer picks: write time (ns), host, pid, counter, random.

    Examples
    --------
    >>> a, b = segment_name(), segment_name()
    >>> a != b and a.endswith(".arrow")
    True
    """
    return (f"{time.time_ns():020d}-{_HOST}-{os.getpid()}-{next(_counter):06d}-{uuid.uuid4().hex[:12]}{_SUFFIX}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse it
        pass
    finally:
        os.close(fd)


def _add_rows(index: dict[str, dict[str, _Row]], table: Any) -> None:
    """A segment's rows into ``index``: the first answer of a key is kept; a later one with the
    same value and other (non-null) probabilities gives it those probabilities."""
    cols = [table.column(c).to_pylist() for c in _COLUMNS[:8]]
    for fp, key, val, raw, finish, prompt, output, probs in zip(*cols):
        known = index.get(fp)
        if known is None:
            known = index[fp] = {}
        row = known.get(key)
        if row is None:
            known[key] = (val, raw, finish, prompt or 0, output or 0, probs)
        elif probs is not None and row[0] == val and row[5] != probs:
            known[key] = row[:5] + (probs,)


class SegmentCache:
    """The exact cache's interface over a directory of immutable answer segments.

    Parameters
    ----------
    directory
        A directory every worker can read and write (created if missing); the segments go to
        ``<directory>/segments/``. A ``file://`` URL is taken as its path.
    model
        Recorded beside each answer, for people reading the segments (not part of the key).
    fsync
        Flush each segment (and the directory) to disk before it counts as written, so an answer
        also survives the machine's crash, not only the process's (a few ms a batch).

    Examples
    --------
    >>> import tempfile
    >>> cache = SegmentCache(tempfile.mkdtemp())
    >>> cache.count(), cache.segments()
    (0, [])
    """

    #: No DuckDB store: embeddings and the semantic cache stay in memory with a segment cache.
    store = None

    def __init__(self, directory: str | os.PathLike, *, model: str = "", fsync: bool = True):
        text = os.fspath(directory)
        if isinstance(text, str) and text.startswith("file://"):
            text = text[len("file://"):]
        self.directory = Path(text).expanduser()
        self.model = model
        self.fsync = fsync
        self._lock = threading.RLock()
        self._read: set[str] = set()  # segment names already in the index
        self._index: dict[str, dict[str, _Row]] = {}  # fingerprint -> key -> stored answer
        self.segments_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SegmentCache({str(self.directory)!r})"

    @property
    def path(self) -> Path:
        """The directory the segments live in."""
        return self.segments_dir

    @property
    def segments_dir(self) -> Path:
        return self.directory / SEGMENTS_DIR

    # ------------------------------------------------------------------ reading

    def segments(self) -> list[str]:
        """The names of the whole segments now in the directory, in name order (oldest first)."""
        try:
            names = os.listdir(self.segments_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(_SUFFIX) and not n.startswith("."))

    def refresh(self) -> int:
        """Read the segments not read yet into the index; returns how many were read.

        A segment deleted between the listing and the read was merged by :meth:`compact`, whose
        merged segment was in place before it deleted anything: the listing is taken again.
        """
        read = 0
        with self._lock:
            for _attempt in range(100):
                gone = False
                for name in self.segments():
                    if name in self._read:
                        continue
                    try:
                        table = self._load(name)
                    except FileNotFoundError:
                        gone = True
                        continue
                    _add_rows(self._index, table)
                    self._read.add(name)
                    read += 1
                if not gone:
                    break
        return read

    def _load(self, name: str) -> Any:
        import pyarrow as pa

        with pa.OSFile(str(self.segments_dir / name), "rb") as f:
            return pa.ipc.open_file(f).read_all()

    def get_many(self, fingerprint: str, keys: Iterable[str]) -> dict[str, Completion]:
        """The cached completions among ``keys`` for the engine ``fingerprint`` (after reading the
        segments written since the last call, by any process)."""
        keys = list(keys)
        if not keys:
            return {}
        self.refresh()
        with self._lock:
            known = self._index.get(fingerprint, {})
            rows = {k: known[k] for k in keys if k in known}
        return {key: Completion(text=raw, value=json.loads(val), finish_reason=finish, prompt_tokens=prompt,
                                output_tokens=output, probabilities=loaded_probabilities(probs))
                for key, (val, raw, finish, prompt, output, probs) in rows.items()}

    def count(self, fingerprint: str | None = None) -> int:
        """Cached answers (distinct keys; for one engine fingerprint, or in all)."""
        self.refresh()
        with self._lock:
            if fingerprint is not None:
                return len(self._index.get(fingerprint, {}))
            return sum(len(v) for v in self._index.values())

    # ------------------------------------------------------------------ writing

    def put_many(self, fingerprint: str, items: Iterable[tuple[str, Request, Completion]]) -> None:
        """Store answered requests as one new segment (answers with an error are not stored; an
        answer this cache already holds is not written again, unless it brings new probabilities).

        An answer whose value is not JSON data is skipped with a warning on the ``semframe``
        logger, as in the DuckDB cache.
        """
        done = {key: c for key, _request, c in items if c.ok}
        if not done:
            return
        keys, comps = list(done), list(done.values())
        keep, columns = storable_answers(comps)
        probs = probabilities_json([comps[i] for i in keep])
        keys = [keys[i] for i in keep]
        comps = [comps[i] for i in keep]
        with self._lock:
            known = self._index.get(fingerprint, {})
            fresh = [i for i, k in enumerate(keys)
                     if (row := known.get(k)) is None or (probs[i] is not None and row[0] == columns["value_json"][i]
                                                          and row[5] != probs[i])]
        if not fresh:
            return
        import pyarrow as pa

        n = len(fresh)
        table = pa.table({
            "fingerprint": pa.array([fingerprint] * n, pa.string()),
            "request_key": pa.array([keys[i] for i in fresh], pa.string()),
            "value_json": pa.array([columns["value_json"][i] for i in fresh], pa.string()),
            "raw_output": pa.array([columns["raw_output"][i] for i in fresh], pa.string()),
            "finish_reason": pa.array([columns["finish_reason"][i] for i in fresh], pa.string()),
            "prompt_tokens": pa.array([comps[i].prompt_tokens for i in fresh], pa.int64()),
            "output_tokens": pa.array([comps[i].output_tokens for i in fresh], pa.int64()),
            "probabilities_json": pa.array([probs[i] for i in fresh], pa.string()),
            "model": pa.array([self.model] * n, pa.string()),
            "created_at": pa.array([time.time()] * n, pa.float64()),
        }, schema=_schema())
        name = self._write(table)
        with self._lock:  # our own answers, without reading the file back
            _add_rows(self._index, table)
            self._read.add(name)

    def _write(self, table: Any, name: str | None = None) -> str:
        """``table`` as a new segment: ``<name>.tmp``, flushed, then renamed into place."""
        import pyarrow as pa

        name = name or segment_name()
        final = self.segments_dir / name
        tmp = final.with_name(name + _TMP)
        try:
            with open(tmp, "wb") as raw:
                with pa.ipc.new_file(raw, table.schema) as writer:
                    writer.write_table(table)
                raw.flush()
                if self.fsync:
                    os.fsync(raw.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(self.segments_dir)
        return name

    # ------------------------------------------------------------------ maintenance

    def compact(self, *, stale_tmp_seconds: float = 3600.0) -> int:
        """Merge every segment now in the directory into one; returns how many were merged.

        The merged segment keeps each key's winning answer (the same one a reader of the segments
        would keep) and is in place (atomically) before the segments it merged are deleted; only
        those are deleted, so segments written meanwhile are kept, readers never miss an answer,
        and two compactions at once waste work but lose nothing. ``.tmp`` files older than
        ``stale_tmp_seconds`` (left by a writer that died mid-write) are removed too.

        Examples
        --------
        >>> import tempfile
        >>> from semframe.engines.base import Completion, Message, Request
        >>> from semframe.plan.spec import ChoiceSpec
        >>> cache = SegmentCache(tempfile.mkdtemp(), fsync=False)
        >>> for text in ("a", "b", "c"):
        ...     req = Request((Message("user", text),), ChoiceSpec(("YES", "NO")), max_tokens=3)
        ...     cache.put_many("fp", [(req.key, req, Completion("NO", "NO", "stop"))])
        >>> cache.compact(), len(cache.segments()), SegmentCache(cache.directory).count()
        (3, 1, 3)
        """
        import pyarrow as pa

        self._remove_stale_tmp(stale_tmp_seconds)
        names = self.segments()
        if len(names) < 2:
            return 0
        merged: dict[str, dict[str, _Row]] = {}  # an index over just these segments
        used = []
        for name in names:
            try:
                _add_rows(merged, self._load(name))
            except FileNotFoundError:  # another compaction merged it: its content is in that one
                continue
            used.append(name)
        if len(used) < 2:
            return 0
        rows = [(fp, key) + row for fp, known in merged.items() for key, row in known.items()]
        n = len(rows)
        fps, keys, vals, raws, finishes, prompts, outputs, probs = (list(c) for c in zip(*rows)) if rows else ([],) * 8
        table = pa.table({"fingerprint": fps, "request_key": keys, "value_json": vals, "raw_output": raws,
                          "finish_reason": finishes, "prompt_tokens": prompts, "output_tokens": outputs,
                          "probabilities_json": probs, "model": [self.model] * n, "created_at": [time.time()] * n},
                         schema=_schema())
        # Named after the first segment merged, so a reader's name order puts the merged answers
        # where the oldest of them was.
        oldest = used[0][: -len(_SUFFIX)].split("~", 1)[0]  # a merged segment's name has one "~c..."
        name = self._write(table, f"{oldest}~c{uuid.uuid4().hex[:12]}{_SUFFIX}")
        for old in used:
            (self.segments_dir / old).unlink(missing_ok=True)
        if self.fsync:
            _fsync_dir(self.segments_dir)
        with self._lock:
            if self._read.issuperset(used):  # nothing in it this index does not hold already
                self._read.add(name)
        return len(used)

    def _remove_stale_tmp(self, seconds: float) -> None:
        now = time.time()
        for name in os.listdir(self.segments_dir):
            if name.endswith(_TMP):
                path = self.segments_dir / name
                try:
                    if now - path.stat().st_mtime > seconds:
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue

    def close(self) -> None:
        """Nothing to close (no file stays open); here for the exact cache's interface."""
