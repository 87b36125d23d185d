"""A cluster-safe exact cache: answer segments in a shared directory (:class:`SegmentCache`).

The DuckDB exact cache (:mod:`semframe.cache.exact`) is one file that one process at a time holds
the lock of; workers on other machines cannot share it. A :class:`SegmentCache` has the same
interface (``get_many(fingerprint, keys)``, ``put_many(fingerprint, [(key, request,
completion)])``) over a directory that every worker can reach (a shared file system: NFS, a
mounted bucket) or an object store by URL (``s3://bucket/prefix``, ``gs://bucket/prefix``: any
URL ``pyarrow.fs.FileSystem.from_uri`` opens; see "On an object store" below):

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

On an object store (a URL other than ``file://``) the layout, the names and the rules above are
the same; what differs is how a segment is published and what the store promises:

- a segment is serialized in memory and uploaded as one object
  (``fs.open_output_stream(<prefix>/segments/<name>.arrow)``, one write, then close). An S3 or
  GCS object becomes visible only when its upload completes, so there is no ``.tmp`` object and
  no rename (S3 has no atomic rename): a reader lists a whole segment or none. A writer that
  dies mid-upload leaves nothing visible (an incomplete multipart upload is not an object; a
  bucket lifecycle rule "abort incomplete multipart uploads" removes its parts). One exception
  pyarrow cannot rule out: a stream pyarrow drops is *closed*, not aborted (it has no abort), so
  an upload interrupted by an exception in this process could publish a prefix of the file; the
  writer deletes it at once, and any reader skips an object that is not a whole Arrow file (its
  footer is missing) with a warning; :meth:`SegmentCache.compact` deletes such objects once they
  are older than ``stale_tmp_seconds``.
- S3 (since December 2020) and GCS give strong read-after-write and list-after-write
  consistency: once ``put_many`` returns, every reader's next listing has the segment. A segment
  a compaction deletes between a reader's opening and reading it (S3 answers ``NO_SUCH_KEY``, a
  plain error) counts as merged, as a file deleted on a disk does: the listing is taken again.
- the URL may carry credentials (``s3://KEY:SECRET@bucket/...``); the cache keeps it privately
  and shows only :func:`redact_url`'s form (in ``repr``, ``directory``, messages and logs).
  Prefer the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN``, an instance role, ``GOOGLE_APPLICATION_CREDENTIALS``).

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

import contextlib
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from semframe.cache.store import loaded_probabilities, probabilities_json, storable_answers
from semframe.engines.base import Completion, Request

__all__ = ["SEGMENTS_DIR", "SegmentCache", "check_url", "redact_url"]

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

#: Query parameters of a URL whose values are credentials (shown as ``***``).
_SECRET_PARAMS = frozenset({"access_key", "secret_key", "session_token", "password", "token", "account_key",
                            "sas_token", "client_secret"})


def _split_url(url: str) -> tuple[str, str, str, str]:
    """``scheme://[userinfo@]rest``: (scheme, userinfo, rest up to the query, "?query#fragment")."""
    scheme, _sep, rest = url.partition("://")
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    userinfo, at, host = head.rpartition("@")  # the last "@" before the query ends the userinfo
    return scheme, userinfo if at else "", host if at else head, tail


def redact_url(url: str) -> str:
    """``url`` as it may be shown: userinfo (``KEY:SECRET@``) dropped, the values of credential
    query parameters (``access_key``, ``secret_key``, ``session_token``, ...) replaced by ``***``.

    Examples
    --------
    >>> redact_url("s3://AKIDEXAMPLE:wJalrXUtn/K7MDENG@bucket/answers?region=eu-west-1")
    's3://bucket/answers?region=eu-west-1'
    >>> redact_url("s3://bucket/answers?access_key=AKID&secret_key=abc%2Fdef&scheme=http")
    's3://bucket/answers?access_key=***&secret_key=***&scheme=http'
    >>> redact_url("/mnt/shared/answers")
    '/mnt/shared/answers'
    """
    if "://" not in url:
        return url
    scheme, _userinfo, rest, tail = _split_url(url)
    query, hash_, fragment = tail[1:].partition("#") if tail.startswith("?") else ("", "", tail[1:])
    pieces = []
    for piece in query.split("&") if query else []:
        key, eq, value = piece.partition("=")
        pieces.append(f"{key}=***" if eq and value and unquote(key).lower() in _SECRET_PARAMS else piece)
    shown = f"{scheme}://{rest}"
    if tail.startswith("?"):
        shown += "?" + "&".join(pieces)
        if hash_:
            shown += "#" + fragment
    elif tail:
        shown += "#" + fragment
    return shown


def _secrets(url: str) -> list[str]:
    """The credential strings in ``url`` (raw and percent-decoded), longest first."""
    if "://" not in url:
        return []
    _scheme, userinfo, _rest, tail = _split_url(url)
    found = {userinfo, *userinfo.split(":")}
    query = tail[1:].partition("#")[0] if tail.startswith("?") else ""
    for piece in query.split("&") if query else []:
        key, eq, value = piece.partition("=")
        if eq and unquote(key).lower() in _SECRET_PARAMS:
            found.add(value)
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    """``text`` (an error message) with ``url`` redacted and any credential in it replaced."""
    text = text.replace(url, redact_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def _open_url(url: str, what: str = "SegmentCache") -> tuple[Any, str]:
    """``pyarrow.fs.FileSystem.from_uri(url)``: (filesystem, path); a ValueError naming ``what``,
    with the URL redacted, when pyarrow cannot open it."""
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(url)
    except Exception as exc:  # ArrowInvalid (bad URL, unknown scheme or option), OSError (a lookup)
        message = _scrub(str(exc), url).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what}={redact_url(url)!r}: pyarrow cannot open this URL ({message}); give a "
                         "directory, or an object-store URL such as 's3://bucket/prefix' or "
                         "'gs://bucket/prefix'") from None
    if not isinstance(filesystem, pafs.LocalFileSystem) and not path.strip("/"):
        raise ValueError(f"{what}={redact_url(url)!r}: the URL names no bucket (s3://bucket/prefix)")
    return filesystem, path


def check_url(url: str, what: str = "SegmentCache") -> None:
    """Raise a ValueError naming ``what`` (credentials redacted) when ``url`` is not one pyarrow
    opens -- without touching the network: an ``s3://`` URL with neither ``region=`` nor
    ``endpoint_override=`` is checked as if it had ``region=`` (pyarrow would otherwise ask S3
    for the bucket's region).

    Examples
    --------
    >>> check_url("s3://bucket/answers?region=eu-west-1")
    >>> check_url("nosuch://x", what="shared_cache")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: shared_cache='nosuch://x': pyarrow cannot open this URL (Unrecognized filesystem type...
    """
    probe = url
    if url.split("://", 1)[0].lower() == "s3":
        tail = _split_url(url)[3]
        query = tail[1:].partition("#")[0] if tail.startswith("?") else ""
        names = {unquote(p.partition("=")[0]) for p in query.split("&") if p}
        if not names & {"region", "endpoint_override"}:
            head, hash_, fragment = url.partition("#")
            probe = head + ("&" if "?" in head else "?") + "region=us-east-1" + hash_ + fragment
    try:
        _open_url(probe, what)
    except ValueError as exc:  # name the URL as given (redacted), not the probe
        raise ValueError(str(exc).replace(redact_url(probe), redact_url(url))) from None


class _Unreadable(Exception):
    """A listed object-store segment that is not a whole Arrow file (an upload published part-way)."""


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("fingerprint", pa.string()), ("request_key", pa.string()), ("value_json", pa.string()),
                      ("raw_output", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()),
                      ("output_tokens", pa.int64()), ("probabilities_json", pa.string()), ("model", pa.string()),
                      ("created_at", pa.float64())])


def _segment_table(rows: list[tuple[Any, ...]], model: str) -> Any:
    """One segment's Arrow table from ``(fingerprint, request key) + stored answer`` rows (the
    answer as :data:`_Row` holds it), each stamped with ``model`` and the time now."""
    import pyarrow as pa

    n = len(rows)
    columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(8)]
    return pa.table(dict(zip(_COLUMNS, [*columns, [model] * n, [time.time()] * n])), schema=_schema())


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
        ``<directory>/segments/``. A ``file://`` URL is taken as its path. Any other URL is an
        object store opened with ``pyarrow.fs.FileSystem.from_uri`` (``s3://bucket/prefix``,
        ``s3://bucket/prefix?region=eu-west-1``, ``s3://bucket/prefix?endpoint_override=host:9000
        &scheme=http`` for MinIO and the like, ``gs://bucket/prefix``); the segments go to
        ``<prefix>/segments/`` (nothing to create: a prefix exists once an object is under it).
        Credentials come from the environment (``AWS_ACCESS_KEY_ID`` ...; recommended) or the
        URL (``s3://KEY:SECRET@bucket/...``), which is then never shown: ``repr``,
        :attr:`directory` and messages give :func:`redact_url`'s form. Without ``region=`` (or an
        ``endpoint_override=``) pyarrow asks S3 for the bucket's region when the cache opens.
    model
        Recorded beside each answer, for people reading the segments (not part of the key).
    fsync
        Flush each segment (and the directory) to disk before it counts as written, so an answer
        also survives the machine's crash, not only the process's (a few ms a batch). On an
        object store a segment is durable once its upload completes; ``fsync`` does nothing.

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
        self._fs: Any = None  # a pyarrow FileSystem for an object store; None: a local directory
        self._url = ""  # the URL as given (it may hold credentials): never shown
        self._root = ""  # the segments' "directory" on self._fs
        if isinstance(text, str) and text.startswith("file://"):
            text = text[len("file://"):]
        elif isinstance(text, str) and "://" in text:
            from pyarrow import fs as pafs

            filesystem, prefix = _open_url(text)
            if isinstance(filesystem, pafs.LocalFileSystem):  # a local path after all: rename, fsync
                text = prefix
            else:
                self._fs, self._url = filesystem, text
                self._root = f"{prefix.rstrip('/')}/{SEGMENTS_DIR}"
        self.model = model
        self.fsync = fsync
        self._lock = threading.RLock()
        self._read: set[str] = set()  # segment names already in the index
        self._index: dict[str, dict[str, _Row]] = {}  # fingerprint -> key -> stored answer
        if self._fs is not None:
            #: The cache's place: a local directory, or an object store's URL with its credentials
            #: redacted (:func:`redact_url`; enough to open it again when they come from the environment).
            self.directory: Path | str = redact_url(text)
            return
        self.directory = Path(text).expanduser()
        Path(self.segments_dir).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SegmentCache({str(self.directory)!r})"

    @property
    def path(self) -> Path | str:
        """The directory the segments live in (on an object store: its redacted URL)."""
        return self.segments_dir

    @property
    def segments_dir(self) -> Path | str:
        if self._fs is None:
            return Path(self.directory) / SEGMENTS_DIR
        scheme, _userinfo, rest, tail = _split_url(str(self.directory))
        return f"{scheme}://{rest.rstrip('/')}/{SEGMENTS_DIR}{tail}"

    @contextlib.contextmanager
    def _scrubbed(self) -> Iterator[None]:
        """Object-store calls: an error whose message holds the URL's credentials is raised again
        (same type) with them replaced."""
        try:
            yield
        except Exception as exc:
            message = str(exc)
            if not self._url or _scrub(message, self._url) == message:
                raise
            try:
                clean = type(exc)(_scrub(message, self._url))
            except Exception:  # an exception type that wants other arguments
                clean = OSError(_scrub(message, self._url))
            raise clean from None

    # ------------------------------------------------------------------ reading

    def segments(self) -> list[str]:
        """The names of the whole segments now in the directory, in name order (oldest first)."""
        if self._fs is not None:
            from pyarrow import fs as pafs

            with self._scrubbed():
                infos = self._fs.get_file_info(pafs.FileSelector(self._root, allow_not_found=True))
            names = [i.base_name for i in infos if i.type == pafs.FileType.File]
        else:
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
                    except _Unreadable:  # never whole: skipped for good (objects do not change)
                        logger.warning("semframe: segment %s under %s is not a whole Arrow file (an upload "
                                       "cut short); ignored", name, self.segments_dir)
                        self._read.add(name)
                        continue
                    _add_rows(self._index, table)
                    self._read.add(name)
                    read += 1
                if not gone:
                    break
        return read

    def _load(self, name: str) -> Any:
        import pyarrow as pa

        if self._fs is None:
            with pa.OSFile(str(Path(self.segments_dir) / name), "rb") as f:
                return pa.ipc.open_file(f).read_all()
        from pyarrow import fs as pafs

        path = f"{self._root}/{name}"
        with self._scrubbed():
            try:
                with self._fs.open_input_file(path) as f:
                    try:
                        return pa.ipc.open_file(f).read_all()
                    except pa.ArrowInvalid as exc:  # no footer: a prefix of a segment, from a cut upload
                        raise _Unreadable(name) from exc
            except FileNotFoundError:
                raise
            except OSError:  # deleted between opening and reading (S3: NO_SUCH_KEY, a plain OSError)?
                if self._fs.get_file_info(path).type == pafs.FileType.NotFound:
                    raise FileNotFoundError(f"segment {name} was deleted while it was read") from None
                raise

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
        table = _segment_table([(fingerprint, keys[i], columns["value_json"][i], columns["raw_output"][i],
                                 columns["finish_reason"][i], comps[i].prompt_tokens, comps[i].output_tokens,
                                 probs[i]) for i in fresh], self.model)
        name = self._write(table)
        with self._lock:  # our own answers, without reading the file back
            _add_rows(self._index, table)
            self._read.add(name)

    def _write(self, table: Any, name: str | None = None) -> str:
        """``table`` as a new segment: ``<name>.tmp``, flushed, then renamed into place (on an
        object store: one object, uploaded whole)."""
        import pyarrow as pa

        name = name or segment_name()
        if self._fs is not None:
            self._upload(table, name)
            return name
        final = Path(self.segments_dir) / name
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
            _fsync_dir(Path(self.segments_dir))
        return name

    def _upload(self, table: Any, name: str) -> None:
        """``table`` as the object ``<root>/<name>``: serialized in memory, then one write and the
        close that completes the upload (the object appears then, whole, or never)."""
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue()
        target = f"{self._root}/{name}"
        with self._scrubbed():
            out = self._fs.open_output_stream(target)
            try:
                out.write(data)
                out.close()
            except BaseException:
                # pyarrow cannot abort an upload: the stream is closed (now, rather than whenever
                # it is collected), which may publish what it got; delete that. Readers skip it
                # anyway (not a whole Arrow file).
                with contextlib.suppress(Exception):
                    out.close()
                with contextlib.suppress(Exception):
                    self._fs.delete_file(target)
                raise

    def _delete(self, name: str) -> None:
        """Delete a segment; one already gone is fine (another compaction merged it)."""
        if self._fs is None:
            (Path(self.segments_dir) / name).unlink(missing_ok=True)
            return
        try:
            with self._scrubbed():
                self._fs.delete_file(f"{self._root}/{name}")
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ maintenance

    def compact(self, *, stale_tmp_seconds: float = 3600.0) -> int:
        """Merge every segment now in the directory into one; returns how many were merged.

        The merged segment keeps each key's winning answer (the same one a reader of the segments
        would keep) and is in place (atomically) before the segments it merged are deleted; only
        those are deleted, so segments written meanwhile are kept, readers never miss an answer,
        and two compactions at once waste work but lose nothing. ``.tmp`` files older than
        ``stale_tmp_seconds`` (left by a writer that died mid-write) are removed too; on an object
        store (no ``.tmp`` objects) so are listed objects older than that which are not whole Arrow
        files (an upload cut short).

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
            except _Unreadable:
                self._remove_if_stale(name, stale_tmp_seconds)
                continue
            used.append(name)
        if len(used) < 2:
            return 0
        table = _segment_table([(fp, key) + row for fp, known in merged.items() for key, row in known.items()],
                               self.model)
        # Named after the first segment merged, so a reader's name order puts the merged answers
        # where the oldest of them was.
        oldest = used[0][: -len(_SUFFIX)].split("~", 1)[0]  # a merged segment's name has one "~c..."
        name = self._write(table, f"{oldest}~c{uuid.uuid4().hex[:12]}{_SUFFIX}")
        for old in used:
            self._delete(old)
        if self.fsync and self._fs is None:
            _fsync_dir(Path(self.segments_dir))
        with self._lock:
            if self._read.issuperset(used):  # nothing in it this index does not hold already
                self._read.add(name)
        return len(used)

    def _remove_stale_tmp(self, seconds: float) -> None:
        if self._fs is not None:  # an upload is never visible before it completes: no .tmp objects
            return
        now = time.time()
        for name in os.listdir(self.segments_dir):
            if name.endswith(_TMP):
                path = Path(self.segments_dir) / name
                try:
                    if now - path.stat().st_mtime > seconds:
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue

    def _remove_if_stale(self, name: str, seconds: float) -> None:
        """Delete the object-store segment ``name`` (not a whole Arrow file) when it is older than
        ``seconds``."""
        with self._scrubbed():
            info = self._fs.get_file_info(f"{self._root}/{name}")
        if info.mtime is not None and time.time() - info.mtime.timestamp() > seconds:
            self._delete(name)

    def close(self) -> None:
        """Nothing to close (no file stays open); here for the exact cache's interface."""
