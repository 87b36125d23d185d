"""The persistent exact cache: an engine answer per (engine fingerprint, request key).

The request key (:attr:`semframe.Request.key`) is a digest of the rendered messages, the output
spec (labels, JSON schema), ``max_tokens`` and the sampling settings; the engine fingerprint
(:meth:`semframe.Engine.fingerprint`) digests the model's identity (path, weights, config). An
answer is reused only when both match, so changing any of them asks the engine again.

Only answers without an error are stored. Values are stored as JSON text, never pickled; so are
a choice's label probabilities (``Completion.probabilities``), which are read back only when they
are a distribution (finite floats in [0, 1] summing to 1; the resolver checks again that they are
over the request's labels) -- anything else is dropped with a warning, and a step that shows
probabilities then asks the engine again.

Lookups and inserts are in bulk, with Arrow in and out, on the process's open connection (see
:mod:`semframe.cache.store`). To find a batch's keys without scanning the table, the cache keeps,
per engine fingerprint, an in-memory index of the table's rows: the 60-bit ``key_hash`` of each
(fingerprint, key) and its DuckDB row id, 16 bytes a row, read once when the file is opened and
then only the rows appended since (by this process or another). A lookup fetches the matching
rows by row id and checks their keys; an index that no longer matches the file (rows deleted by
hand) is rebuilt, and a key it misses is looked up in the table directly, so the index can make
a lookup faster, never wrong.

Examples
--------
>>> import tempfile
>>> from semframe.engines.base import Completion, Message, Request
>>> from semframe.plan.spec import ChoiceSpec
>>> cache = ExactCache(AnswerStore(tempfile.mkdtemp()))
>>> req = Request((Message("user", "Is water wet?"),), ChoiceSpec(("YES", "NO")), max_tokens=3)
>>> cache.put_many("fp", [(req.key, req, Completion("YES", "YES", "stop"))])
>>> cache.get_many("fp", {req.key})[req.key].value
'YES'
>>> cache.get_many("another-model", {req.key})
{}
>>> cache.close()
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from semframe.cache.store import AnswerStore, key_hash, loaded_probabilities, probabilities_json, storable_answers
from semframe.engines.base import Completion, Request

_ANSWER_COLUMNS = ("fingerprint, request_key, value_json, raw_output, finish_reason, prompt_tokens, output_tokens, "
                   "probabilities_json")


class _KeyIndex:
    """``key_hash -> rowid`` for one fingerprint's rows: a sorted array plus a small dict of the
    latest rows, merged into the array when it grows."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.int64)
        self.rowids = np.empty(0, dtype=np.int64)
        self.recent: dict[int, int] = {}
        self.next_rowid = 0  # rows below this have been read
        self.stale = False
        self.tenure = -1  # the handle's tenure when the index last read the table

    def __len__(self) -> int:
        return len(self.hashes) + len(self.recent)

    def refresh(self, con: Any, fingerprint: str, handle: Any) -> None:
        """Read the rows appended since the last refresh (all of them the first time)."""
        top = con.execute("SELECT max(rowid) FROM exact").fetchall()[0][0]
        top = -1 if top is None else int(top)
        handle.exact_end, handle.exact_end_tenure = top + 1, handle.tenure
        if top + 1 < self.next_rowid:
            self.stale = True  # rows were deleted: what this index holds is not the table any more
            return
        if top < self.next_rowid:
            return
        tail = con.execute(
            "SELECT rowid, key_hash FROM exact WHERE rowid >= $start AND rowid <= $top AND fingerprint = $fp",
            {"start": self.next_rowid, "top": top, "fp": fingerprint},
        ).fetchnumpy()
        self._add(np.asarray(tail["key_hash"], dtype=np.int64), np.asarray(tail["rowid"], dtype=np.int64))
        self.next_rowid = top + 1

    def appended(self, hashes: list[int], first_rowid: int) -> None:
        """Rows this process just appended (keys the index did not have): DuckDB numbers the rows
        of an insert in order, from one past the table's last (the process holds the lock, so no
        one else appended). Should that ever not hold, lookups notice (a row id's key is not the
        one asked for) and rebuild the index."""
        if len(hashes) > 4096 or len(hashes) + len(self.recent) > max(65536, len(self.hashes) // 8):
            self._merge(np.asarray(hashes, dtype=np.int64),
                        np.arange(first_rowid, first_rowid + len(hashes), dtype=np.int64))
        else:
            setdefault = self.recent.setdefault
            for i, h in enumerate(hashes):
                setdefault(h, first_rowid + i)
        self.next_rowid = max(self.next_rowid, first_rowid + len(hashes))

    def _add(self, hashes: np.ndarray, rowids: np.ndarray) -> None:
        """Rows read from the table, in row-id order (a key already known keeps its first row)."""
        if len(hashes) > 4096 or len(hashes) + len(self.recent) > max(65536, len(self.hashes) // 8):
            self._merge(hashes, rowids)
            return
        hashes_l = hashes.tolist()
        setdefault = self.recent.setdefault
        for h, r, known in zip(hashes_l, rowids.tolist(), self.find(hashes_l)):
            if known < 0:
                setdefault(h, r)

    def _merge(self, hashes: np.ndarray, rowids: np.ndarray) -> None:
        rec_h = np.fromiter(self.recent.keys(), dtype=np.int64, count=len(self.recent))
        rec_r = np.fromiter(self.recent.values(), dtype=np.int64, count=len(self.recent))
        all_h = np.concatenate([self.hashes, rec_h, hashes])
        all_r = np.concatenate([self.rowids, rec_r, rowids])
        order = np.lexsort((all_r, all_h))  # by hash, then row id: the first row of a key wins
        all_h, all_r = all_h[order], all_r[order]
        first = np.ones(len(all_h), dtype=bool)
        first[1:] = all_h[1:] != all_h[:-1]
        self.hashes, self.rowids = all_h[first], all_r[first]
        self.recent = {}

    def find(self, hashes: list[int]) -> list[int]:
        """The row id of each hash, -1 where the index has none."""
        out = [-1] * len(hashes)
        if len(self.hashes):
            arr = np.asarray(hashes, dtype=np.int64)
            pos = np.searchsorted(self.hashes, arr)
            pos[pos >= len(self.hashes)] = 0
            hit = self.hashes[pos] == arr
            rows = self.rowids[pos]
            out = np.where(hit, rows, -1).tolist()
        if self.recent:
            get = self.recent.get
            out = [r if r >= 0 else get(h, -1) for h, r in zip(hashes, out)]
        return out


def _rows_by_id(con: Any, ids: list[int]) -> Any:
    """The answer rows with these (sorted) row ids. Ids close together -- a rerun reads its
    answers in the order it wrote them -- are read as a few ``rowid BETWEEN`` ranges, which
    DuckDB answers from the row groups' zone maps (~1 ms for 512 rows); scattered ones with a
    join (~5 ms)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ranges: list[list[int]] = [[ids[0], ids[0]]]
    for i in ids[1:]:
        if i - ranges[-1][1] > 256:
            ranges.append([i, i])
        else:
            ranges[-1][1] = i
    if len(ranges) <= 8:
        where = " OR ".join(f"rowid BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in ranges)
        table = con.sql(f"SELECT rowid, {_ANSWER_COLUMNS} FROM exact WHERE {where}").to_arrow_table()
        if table.num_rows != len(ids):
            table = table.filter(pc.is_in(table.column("rowid"), value_set=pa.array(ids, pa.int64())))
        return table
    return con.sql(f"SELECT rowid, {_ANSWER_COLUMNS} FROM exact WHERE rowid IN (SELECT unnest($ids::BIGINT[]))",
                   params={"ids": ids}).to_arrow_table()


def _add_probabilities(con: Any, fingerprint: str, rows: list[tuple[int, str, str, str]]) -> None:
    """Give stored answers (row id, key, value JSON) these probabilities (JSON), where the row
    still holds that key and value and other probabilities (or none). One statement."""
    if not rows:
        return
    import pyarrow as pa

    rowids, keys, values, probs = (list(c) for c in zip(*rows))
    update = pa.table({"rid": pa.array(rowids, pa.int64()), "request_key": pa.array(keys, pa.string()),
                       "value_json": pa.array(values, pa.string()), "probabilities_json": pa.array(probs, pa.string())})
    name = "semframe_new_probabilities"
    con.register(name, update)
    try:
        con.execute(
            f"UPDATE exact SET probabilities_json = u.probabilities_json FROM {name} AS u "
            "WHERE exact.rowid = u.rid AND exact.fingerprint = $fp AND exact.request_key = u.request_key "
            "AND exact.value_json = u.value_json AND exact.probabilities_json IS DISTINCT FROM u.probabilities_json",
            {"fp": fingerprint})
    finally:
        con.unregister(name)


class ExactCache:
    """Answers keyed by engine fingerprint and request key, in an :class:`AnswerStore`.

    Parameters
    ----------
    store
        The database the answers live in.
    model
        Recorded beside each answer, for people reading the cache (not part of the key).

    Examples
    --------
    >>> import tempfile
    >>> ExactCache(AnswerStore(tempfile.mkdtemp())).count()
    0
    """

    def __init__(self, store: AnswerStore, *, model: str = ""):
        self.store = store
        self.model = model
        # The last lookup's key hashes: the put that follows a lookup has the same keys.
        self._last: tuple[str, dict[str, int]] = ("", {})

    def _hash_all(self, fingerprint: str, keys: Sequence[str]) -> list[int]:
        fp, known = self._last
        if fp != fingerprint:
            known = {}
        out = []
        for k in keys:
            h = known.get(k)
            out.append(key_hash(fingerprint, k) if h is None else h)
        return out

    def __repr__(self) -> str:
        return f"ExactCache({str(self.store.directory)!r})"

    @property
    def path(self):
        """The database file."""
        return self.store.path

    # ------------------------------------------------------------------ index

    @staticmethod
    def _index(con: Any, handle: Any, fingerprint: str) -> _KeyIndex:
        """The fingerprint's key index, up to date: read in full the first time (or when it no
        longer matches the file), then only what others appended since this process last held
        the lock -- nothing at all while it has held it since."""
        index = handle.indexes.get(fingerprint)
        if index is None or index.stale:
            index = handle.indexes[fingerprint] = _KeyIndex()
        if index.tenure != handle.tenure:
            index.refresh(con, fingerprint, handle)
            if index.stale:
                index = handle.indexes[fingerprint] = _KeyIndex()
                index.refresh(con, fingerprint, handle)
            index.tenure = handle.tenure
        return index

    # ------------------------------------------------------------------ lookups

    def get_table(self, fingerprint: str, keys: Iterable[str]) -> Any:
        """The cached answers among ``keys`` as an Arrow table with the columns
        ``request_key, value_json, raw_output, finish_reason, prompt_tokens, output_tokens,
        probabilities_json``."""
        import pyarrow as pa

        keys = list(dict.fromkeys(keys))
        empty = pa.table({"request_key": pa.array([], pa.string()), "value_json": pa.array([], pa.string()),
                          "raw_output": pa.array([], pa.string()), "finish_reason": pa.array([], pa.string()),
                          "prompt_tokens": pa.array([], pa.int64()), "output_tokens": pa.array([], pa.int64()),
                          "probabilities_json": pa.array([], pa.string())})
        if not keys:
            return empty
        hashes = [key_hash(fingerprint, k) for k in keys]
        self._last = (fingerprint, dict(zip(keys, hashes)))

        def lookup(con: Any, handle: Any) -> Any:
            index = self._index(con, handle, fingerprint)
            rowids = index.find(hashes)
            wanted = {r: k for r, k in zip(rowids, keys) if r >= 0}
            parts = []
            found: set[str] = set()
            if wanted:
                table = _rows_by_id(con, sorted(wanted))
                got_ids = table.column("rowid").to_pylist()
                got_fp = table.column("fingerprint").to_pylist()
                got_keys = table.column("request_key").to_pylist()
                ok = [wanted.get(r) == k and f == fingerprint for r, f, k in zip(got_ids, got_fp, got_keys)]
                if not all(ok):
                    table = table.filter(pa.array(ok, pa.bool_()))
                found = {k for k, good in zip(got_keys, ok) if good}
                if len(found) < len(wanted):
                    index.stale = True  # the index no longer matches the file: rebuild on next use
                parts.append(table.drop_columns(["rowid", "fingerprint"]))
            # Keys the index has no row for are absent -- unless it is stale; then ask the table.
            if index.stale:
                missing = [k for k in keys if k not in found]
                if missing:
                    table = con.sql(
                        f"SELECT {_ANSWER_COLUMNS} FROM exact WHERE fingerprint = $fp AND request_key IN "
                        "(SELECT unnest($keys::VARCHAR[])) QUALIFY row_number() OVER (PARTITION BY request_key "
                        "ORDER BY rowid) = 1",
                        params={"fp": fingerprint, "keys": missing},
                    ).to_arrow_table()
                    parts.append(table.drop_columns(["fingerprint"]))
            if not parts:
                return empty
            return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

        return self.store.run(lookup)

    def get_many(self, fingerprint: str, keys: Iterable[str]) -> dict[str, Completion]:
        """The cached completions among ``keys`` for the engine ``fingerprint``."""
        table = self.get_table(fingerprint, keys)
        if table.num_rows == 0:
            return {}
        loads = json.loads
        memo: dict[str, Any] = {}

        def value(text: str) -> Any:
            if text[:1] in ("{", "["):  # mutable: each answer its own
                return loads(text)
            v = memo.get(text, memo)
            if v is memo:
                v = memo[text] = loads(text)
            return v

        seen: dict[str, Any] = {}  # one parse and check per distinct stored text

        def probabilities(text: str | None) -> dict[str, float] | None:
            if text is None:
                return None
            p = seen.get(text, seen)
            if p is seen:
                p = seen[text] = loaded_probabilities(text)
            return p

        columns = ("request_key", "value_json", "raw_output", "finish_reason", "prompt_tokens", "output_tokens",
                   "probabilities_json")
        return {
            key: Completion(text=raw, value=value(val), finish_reason=finish,
                            prompt_tokens=prompt or 0, output_tokens=output or 0,
                            probabilities=probabilities(probs))
            for key, val, raw, finish, prompt, output, probs in zip(
                *(table.column(name).to_pylist() for name in columns))
        }

    # ------------------------------------------------------------------ inserts

    def put_many(self, fingerprint: str, items: Iterable[tuple[str, Request, Completion]]) -> None:
        """Store answered requests in one transaction (a key already present is left as it is).

        An answer that cannot be stored (a value that is not JSON data) is skipped with a warning
        on the ``semframe`` logger; the rest of the batch is stored. A lone surrogate in an
        answer's value is kept exactly (as a JSON ``\\udxxx`` escape); in its raw text it
        becomes U+FFFD.
        """
        done = {key: c for key, _request, c in items if c.ok}
        if not done:
            return
        keys = list(done)
        comps = list(done.values())
        keep, columns = storable_answers(comps)
        if len(keep) != len(keys):
            keys = [keys[i] for i in keep]
            comps = [comps[i] for i in keep]
        if not keys:
            return
        self.put_columns(fingerprint, keys, columns["value_json"], columns["raw_output"],
                         columns["finish_reason"], [c.prompt_tokens for c in comps],
                         [c.output_tokens for c in comps], probabilities_json(comps))

    def put_columns(self, fingerprint: str, keys: Sequence[str], value_json: Sequence[str],
                    raw_output: Sequence[str | None], finish_reason: Sequence[str | None],
                    prompt_tokens: Sequence[int], output_tokens: Sequence[int],
                    probabilities_json: Sequence[str | None] | None = None) -> int:
        """Store answers given as columns (already in stored form); returns how many were new.
        ``probabilities_json``: each answer's label probabilities as a JSON object (see
        :func:`semframe.cache.store.probabilities_json`), None for none. A key already present
        keeps its answer; it takes the new probabilities where its stored value is the same and
        its stored probabilities are missing or others (an answer cached before they were stored,
        or whose stored ones failed their check and were asked again), so the next run need not
        ask again."""
        import pyarrow as pa

        hashes = self._hash_all(fingerprint, keys)
        probs = [None] * len(keys) if probabilities_json is None else probabilities_json

        def insert(con: Any, handle: Any) -> int:
            index = self._index(con, handle, fingerprint)
            present = index.find(hashes)
            fresh = [i for i, r in enumerate(present) if r < 0]
            if len(fresh) < len(keys) and probabilities_json is not None:
                _add_probabilities(con, fingerprint, [(present[i], keys[i], value_json[i], probs[i])
                                                      for i in range(len(keys)) if present[i] >= 0 and probs[i]])
            if not fresh:
                return 0
            pick = (lambda col: col) if len(fresh) == len(keys) else (lambda col: [col[i] for i in fresh])
            n = len(fresh)
            batch = pa.table({
                "fingerprint": pa.array([fingerprint] * n, pa.string()),
                "request_key": pa.array(pick(keys), pa.string()),
                "key_hash": pa.array(pick(hashes), pa.int64()),
                "model": pa.array([self.model] * n, pa.string()),
                "value_json": pa.array(pick(value_json), pa.string()),
                "raw_output": pa.array(pick(raw_output), pa.string()),
                "finish_reason": pa.array(pick(finish_reason), pa.string()),
                "prompt_tokens": pa.array(pick(prompt_tokens), pa.int64()),
                "output_tokens": pa.array(pick(output_tokens), pa.int64()),
                "created_at": pa.array([time.time()] * n, pa.float64()),
                "probabilities_json": pa.array(pick(probs), pa.string()),
            })
            if handle.exact_end_tenure != handle.tenure or handle.exact_end is None:
                top = con.execute("SELECT max(rowid) FROM exact").fetchall()[0][0]
                handle.exact_end, handle.exact_end_tenure = (-1 if top is None else int(top)) + 1, handle.tenure
            first = handle.exact_end
            con.from_arrow(batch).insert_into("exact")  # one statement: atomic
            handle.exact_end = first + n
            index.appended(pick(hashes), first)
            return n

        return self.store.run(insert, write=True)

    # ------------------------------------------------------------------ maintenance

    def count(self, fingerprint: str | None = None) -> int:
        """Cached answers (for one engine fingerprint, or in all)."""
        if fingerprint is None:
            return self.store.run(lambda con, _h: con.execute("SELECT count(*) FROM exact").fetchall()[0][0])
        return self.store.run(lambda con, _h: con.execute(
            "SELECT count(*) FROM exact WHERE fingerprint = ?", [fingerprint]).fetchall()[0][0])

    def close(self) -> None:
        """Close the connection now (other processes may open the file; it reopens on next use)."""
        self.store.close()
