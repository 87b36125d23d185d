"""The semantic cache: reuse an answer for a row whose input text is nearly the same as one
already answered by the same step.

"The same step" is the step key (:func:`semantic_step_key`): operator, shared instruction text,
template, output spec, ``max_tokens``, temperature, prompt layout, the engine's fingerprint and
the embedding model. The similarity is the cosine similarity of the rows' rendered *input texts*
(the template filled with the row's values), not of the whole prompt.

For each batch of rows that the in-run memo and the exact cache could not answer, the runner asks
:meth:`SemanticCache.plan`, which

1. embeds the rows' texts (in batches; embeddings are cached),
2. matches each against the answers this step already has -- from this run, and from earlier runs
   when the cache is persistent -- and reuses the best one at or above the threshold,
3. clusters the rest greedily: a row becomes a *representative* unless it is within the
   threshold of an earlier representative of the batch, whose answer it will then reuse.

Only representatives go to the engine; :meth:`SemanticCache.add` then records their answers.
Each reuse is within the threshold of the answer's own row (no chains of reuse).

Examples
--------
>>> import numpy as np
>>> from semframe.engines.base import Completion
>>> cache = SemanticCache("step", threshold=0.9, embedder=None)
>>> vecs = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]], dtype=np.float32)
>>> plan = cache.plan(vecs)
>>> plan.representatives, plan.members
([0, 2], {1: (0, 0.99)})
>>> cache.add(vecs[[0, 2]], [Completion("A", "A", "stop"), Completion("B", "B", "stop")], [10, 12])
>>> cache.plan(np.array([[0.995, 0.1]], dtype=np.float32)).hits[0].source_row_id
10
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from semframe.cache.index import VectorIndex
from semframe.cache.store import storable_answers, stored_answer
from semframe.engines.base import Completion

if TYPE_CHECKING:
    from semframe.cache.embed import Embedder
    from semframe.cache.store import AnswerStore
    from semframe.engines.base import Request


def semantic_step_key(parts: dict[str, Any], embedding_model: str) -> str:
    """A digest of everything that makes two rows' answers comparable (see module docs).

    Examples
    --------
    >>> semantic_step_key({"operator": "classify"}, "m") == semantic_step_key({"operator": "classify"}, "m")
    True
    """
    blob = json.dumps({**parts, "embedding_model": embedding_model}, sort_keys=True, ensure_ascii=False,
                      default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SemanticHit:
    """A reused answer: its completion, the similarity, and the row it came from (None: earlier run)."""

    completion: Completion
    similarity: float
    source_row_id: int | None


@dataclass
class SemanticPlan:
    """What to do with one batch of texts (positions refer to the batch).

    ``hits``: position -> reused answer; ``representatives``: positions to send to the engine;
    ``members``: position -> (representative position, similarity).
    """

    hits: dict[int, SemanticHit] = field(default_factory=dict)
    representatives: list[int] = field(default_factory=list)
    members: dict[int, tuple[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedHit:
    """One semantic reuse, kept by the run that made it (``RunResult.semantic_hits``, for audits)."""

    step_key: str
    request: Request
    text: str
    value: Any
    similarity: float
    source_row_id: int | None
    row_id: int | None


class SemanticCache:
    """The answers one semantic step has, searchable by input-text embedding.

    Parameters
    ----------
    step_key
        :func:`semantic_step_key` of the step.
    threshold
        Minimum cosine similarity for reuse, in (0, 1].
    embedder
        Turns texts into unit vectors (an :class:`~semframe.cache.embed.Embedder`).
    store
        Where answers persist across runs; None keeps them for this run only.
    hits
        A list of the run's that each reuse is appended to (as a :class:`RecordedHit`).
    """

    def __init__(self, step_key: str, threshold: float, embedder: Embedder | None,
                 store: AnswerStore | None = None, hits: list[RecordedHit] | None = None):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.step_key = step_key
        self.threshold = threshold
        self.embedder = embedder
        self.store = store
        self.hits = hits
        self._index: VectorIndex | None = None
        self._answers: list[Completion] = []
        self._row_ids: list[int | None] = []
        self._loaded = store is None

    def __repr__(self) -> str:
        return f"SemanticCache(threshold={self.threshold}, entries={len(self._answers)})"

    def __len__(self) -> int:
        self._load()
        return len(self._answers)

    # ------------------------------------------------------------------ embedding

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors for ``texts`` (cached in the store when there is one)."""
        if self.embedder is None:
            raise ValueError("this SemanticCache has no embedder; pass vectors to plan() directly")
        return self.embedder.embed(texts, self.store)

    # ------------------------------------------------------------------ lookups

    def plan(self, vectors: np.ndarray) -> SemanticPlan:
        """Match ``vectors`` against known answers, then cluster the rest (see module docs)."""
        self._load()
        out = SemanticPlan()
        n = len(vectors)
        if n == 0:
            return out
        rest = list(range(n))
        if self._index is not None and len(self._index):
            sims, ids = self._index.search(vectors)
            rest = []
            for i in range(n):
                if ids[i] >= 0 and sims[i] >= self.threshold:
                    j = int(ids[i])
                    out.hits[i] = SemanticHit(self._answers[j], round(min(float(sims[i]), 1.0), 4), self._row_ids[j])
                else:
                    rest.append(i)
        if rest:
            sub = vectors[rest]
            sims_sub = sub @ sub.T
            close = sims_sub >= self.threshold
            assigned = np.full(len(rest), -1)
            for a in range(len(rest)):
                if assigned[a] >= 0:
                    continue
                assigned[a] = a
                out.representatives.append(rest[a])
                followers = np.nonzero(close[a, a + 1:] & (assigned[a + 1:] < 0))[0] + a + 1
                assigned[followers] = a
                for b in followers:
                    out.members[rest[b]] = (rest[a], round(min(float(sims_sub[a, b]), 1.0), 4))
        return out

    def add(self, vectors: np.ndarray, completions: Sequence[Completion], row_ids: Sequence[int | None],
            text_hashes: Sequence[str] | None = None) -> None:
        """Record engine answers (errors are skipped) for later rows, and persist them."""
        self._load()
        keep = [i for i, c in enumerate(completions) if c.ok]
        if not keep:
            return
        vecs = np.ascontiguousarray(vectors[keep], dtype=np.float32)
        self._append(vecs, [completions[i] for i in keep], [row_ids[i] for i in keep])
        if self.store is not None:
            hashes = [text_hashes[i] if text_hashes is not None else "" for i in keep]
            _save_entries(self.store, self.step_key, vecs, [completions[i] for i in keep], hashes)

    def note_hit(self, request: Request, text: str, hit: SemanticHit, row_id: int | None) -> None:
        """Record one reuse in the run's list of hits (if it keeps one)."""
        if self.hits is not None:
            self.hits.append(RecordedHit(self.step_key, request, text, hit.completion.value, hit.similarity,
                                         hit.source_row_id, row_id))

    # ------------------------------------------------------------------ internals

    def _append(self, vecs: np.ndarray, completions: list[Completion], row_ids: list[int | None]) -> None:
        if self._index is None:
            self._index = VectorIndex(vecs.shape[1])
        self._index.add(vecs)
        self._answers.extend(completions)
        self._row_ids.extend(row_ids)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        vecs, completions = _load_entries(self.store, self.step_key)  # type: ignore[arg-type]
        if len(completions):
            self._append(vecs, completions, [None] * len(completions))


def _load_entries(store: AnswerStore, step_key: str) -> tuple[np.ndarray, list[Completion]]:
    from semframe.cache.arrow import vectors_from

    table = store.run(lambda con, _h: con.sql(
        "SELECT embedding, value_json, raw_output, finish_reason FROM semantic "
        "WHERE step_key = ? ORDER BY seq", params=[step_key],
    ).to_arrow_table())
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32), []
    values = table.column("value_json").to_pylist()
    raws = table.column("raw_output").to_pylist()
    finishes = table.column("finish_reason").to_pylist()
    completions = [stored_answer(v, r, f) for v, r, f in zip(values, raws, finishes)]
    return vectors_from(table.column("embedding")), completions


def _save_entries(store: AnswerStore, step_key: str, vecs: np.ndarray, completions: list[Completion],
                  text_hashes: list[str]) -> None:
    import pyarrow as pa

    from semframe.cache.arrow import vectors_array

    keep, columns = storable_answers(completions)  # an answer that cannot be stored is skipped
    if not keep:
        return
    if len(keep) != len(completions):
        vecs = vecs[keep]
        text_hashes = [text_hashes[i] for i in keep]
    n = len(keep)
    batch = pa.table({
        "step_key": pa.array([step_key] * n, pa.string()),
        "text_hash": pa.array(text_hashes, pa.string()),
        "embedding": vectors_array(vecs),
        **{name: pa.array(col, pa.string()) for name, col in columns.items()},
        "created_at": pa.array([time.time()] * n, pa.float64()),
    })

    def insert(con, _handle):
        con.register("new_entries", batch)
        con.execute(
            "INSERT INTO semantic (step_key, text_hash, embedding, value_json, raw_output, finish_reason, "
            "created_at) SELECT * FROM new_entries"
        )

    store.run(insert, write=True)
