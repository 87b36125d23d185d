"""The persistent exact cache: an engine answer per (engine fingerprint, request key).

The request key (:attr:`semframe.Request.key`) is a digest of the rendered messages, the output
spec (labels, JSON schema), ``max_tokens`` and the sampling settings; the engine fingerprint
(:meth:`semframe.Engine.fingerprint`) digests the model's identity (path, weights, config). An
answer is reused only when both match, so changing any of them asks the engine again.

Only answers without an error are stored. Values are stored as JSON text, never pickled.

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
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from semframe.cache.store import AnswerStore, answer_columns, stored_answer
from semframe.engines.base import Completion, Request


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

    def __repr__(self) -> str:
        return f"ExactCache({str(self.store.directory)!r})"

    def get_many(self, fingerprint: str, keys: Iterable[str]) -> dict[str, Completion]:
        """The cached completions among ``keys`` for the engine ``fingerprint``."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        with self.store.connect() as con:
            rows = con.execute(
                "SELECT request_key, value_json, raw_output, finish_reason, prompt_tokens, output_tokens "
                "FROM exact WHERE fingerprint = ? AND request_key IN (SELECT unnest(?::VARCHAR[]))",
                [fingerprint, keys],
            ).fetchall()
        return {
            key: stored_answer(value, raw, finish, prompt_tokens=prompt or 0, output_tokens=output or 0)
            for key, value, raw, finish, prompt, output in rows
        }

    def put_many(self, fingerprint: str, items: Iterable[tuple[str, Request, Completion]]) -> None:
        """Store answered requests in one transaction (a key already present is left as it is)."""
        import pyarrow as pa

        done = list({key: c for key, _request, c in items if c.ok}.items())
        if not done:
            return
        n = len(done)
        batch = pa.table({
            "fingerprint": pa.array([fingerprint] * n, pa.string()),
            "request_key": pa.array([k for k, _ in done], pa.string()),
            "model": pa.array([self.model] * n, pa.string()),
            **answer_columns([c for _, c in done]),
            "prompt_tokens": pa.array([c.prompt_tokens for _, c in done], pa.int64()),
            "output_tokens": pa.array([c.output_tokens for _, c in done], pa.int64()),
            "created_at": pa.array([time.time()] * n, pa.float64()),
        })
        with self.store.connect() as con:
            con.register("new_answers", batch)
            con.execute("INSERT INTO exact SELECT * FROM new_answers ON CONFLICT DO NOTHING")
            con.unregister("new_answers")

    def count(self, fingerprint: str | None = None) -> int:
        """Cached answers (for one engine fingerprint, or in all)."""
        with self.store.connect() as con:
            if fingerprint is None:
                return con.execute("SELECT count(*) FROM exact").fetchone()[0]
            return con.execute("SELECT count(*) FROM exact WHERE fingerprint = ?", [fingerprint]).fetchone()[0]
