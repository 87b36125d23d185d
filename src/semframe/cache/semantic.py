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

Calibrated thresholds
---------------------
``semantic_cache=True`` (or ``semantic_cache=sf.Target(...)``) does not trust a fixed number: the
step calibrates its own threshold on its first batch before it reuses anything
(``AnswerResolver._calibrate_semantic`` runs it; the pieces that need no engine are here):

1. the batch's distinct texts are embedded, and a random half of them (seeded by
   ``Target.seed``) is the *pool*: asked of the engine (through the memo and the exact cache, so
   a rerun asks nothing);
2. every other text gets its nearest pool text (:func:`nearest`); the texts whose nearest pool
   text is at least :data:`CALIBRATION_FLOOR` similar are the *candidates* -- the rows the cache
   could answer;
3. a random sample of the candidates (:func:`calibration_sample_size`; ``Target.sample`` to
   choose) is asked of the engine too, and for each one it is known whether the pool answer the
   cache would reuse equals the engine's own answer for the row;
4. the threshold is the lowest similarity, in a fixed sequence from 1.0 down to the floor, at
   which the fixed-sequence test of :func:`semframe.execution.calibration.certify_threshold`
   certifies the target (default ``accuracy=0.95, confidence=0.95``; the exact hypergeometric
   bound over this batch's candidates, the sample being drawn from them without replacement);
5. the batch's other candidates at or above it reuse their nearest pool answer; every other row
   goes to the engine. No threshold certified: the step reuses nothing, in this batch or later
   ones, and its notes say so (:class:`SemanticCalibration`).

What is guaranteed: with probability at least ``confidence`` over the random sample, the rows the
first batch answers by reuse -- its candidates at or above the threshold that were neither sampled
nor answered otherwise -- get the engine's own answer for them in at least an ``accuracy`` share
(the bound is about that finite set of rows, not an imagined population). Later batches reuse at
the same threshold from every answer so far (and cluster within the batch as above): that they are like the first batch
(the table's order unrelated to its content) is an assumption, which
:func:`~semframe.cache.audit.audit_semantic_cache` checks.

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
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from semframe.cache.index import VectorIndex
from semframe.cache.store import storable_answers, stored_answer
from semframe.engines.base import Completion
from semframe.plan.approx import CalibratedThreshold  # re-exported: plan files save it, so it lives there

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


#: The lowest similarity a calibrated threshold may have: texts less alike than this are never
#: candidates for reuse (fixed before any data is seen, like the sequence of thresholds tested).
CALIBRATION_FLOOR = 0.8


def calibration_target(value: Any) -> Any:
    """The :class:`~semframe.plan.approx.Target` of a calibrated ``semantic_cache`` setting
    (a :class:`CalibratedThreshold` or a ``Target``); None for a fixed threshold."""
    if isinstance(value, CalibratedThreshold):
        return value.target
    from semframe.plan.approx import Target

    return value if isinstance(value, Target) else None


def calibration_sample_size(candidates: int, accuracy: float, confidence: float, sample: int | None = None) -> int:
    """How many candidates a calibration asks the engine about: ``sample`` if given, else twice
    the fewest that could certify ``accuracy`` at all (``accuracy ** n <= 1 - confidence``) or a
    fifth of the candidates, whichever is more, at most 2,000; never more than there are.

    >>> calibration_sample_size(1000, 0.95, 0.95), calibration_sample_size(40, 0.95, 0.95)
    (200, 40)
    >>> calibration_sample_size(1000, 0.9, 0.95, sample=50)
    50
    """
    if sample is None:
        fewest = max(1, math.ceil(math.log(1.0 - confidence) / math.log(accuracy)))
        sample = min(2000, max(2 * fewest, math.ceil(0.2 * candidates)))
    return max(0, min(candidates, sample))


def nearest(queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's most similar pool vector: (similarity, pool position) per query (unit
    vectors; an empty pool gives similarity -1 and position -1).

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> sims, where = nearest(q, np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32))
    >>> [round(float(x), 2) for x in sims], where.tolist()
    ([1.0, 0.8], [1, 0])
    """
    best = np.full(len(queries), -1.0, dtype=np.float32)
    where = np.full(len(queries), -1, dtype=np.int64)
    if len(queries) == 0 or len(pool) == 0:
        return best, where
    for start in range(0, len(queries), 256):  # exact search; bounds the temporary (256 x pool) matrix
        sims = queries[start:start + 256] @ pool.T
        at = sims.argmax(axis=1)
        where[start:start + 256] = at
        best[start:start + 256] = np.minimum(sims[np.arange(len(at)), at], 1.0)
    return best, where


@dataclass(frozen=True)
class SemanticCalibration:
    """What a calibrated step found on its first batch (see the module docs).

    Attributes
    ----------
    accuracy, confidence
        The target.
    texts
        Distinct texts of the batch.
    pool
        Of them, the pool asked of the engine (a random half).
    candidates
        Other texts whose nearest pool text is at least :data:`CALIBRATION_FLOOR` similar.
    sampled, agreeing
        Candidates asked of the engine, and how many of those got the engine's own answer from
        their nearest pool text.
    threshold
        The certified threshold; None: nothing certified (the step reuses nothing).
    rows_above, correct_above, lower_bound
        At the threshold: sampled candidates at or above it, how many agreed, the certified lower
        bound of the agreement (None when nothing certified).
    needed
        The fewest sampled candidates above a threshold that could certify it (all agreeing).
    reused
        Rows of the batch answered from their nearest pool text.
    """

    accuracy: float
    confidence: float
    texts: int
    pool: int
    candidates: int
    sampled: int
    agreeing: int
    threshold: float | None
    rows_above: int = 0
    correct_above: int = 0
    lower_bound: float | None = None
    needed: int = 0
    reused: int = 0

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    def describe(self) -> str:
        """One paragraph for notes and logs.

        >>> SemanticCalibration(0.95, 0.95, 300, 150, 12, 12, 7, None, needed=59).describe()
        ... # doctest: +NORMALIZE_WHITESPACE
        'semantic cache calibration on the first batch (300 distinct texts, 150 asked as the pool):
        12 candidates (nearest pool text >= 0.8), 12 asked, 7 agreed with their nearest pool answer;
        no threshold certified accuracy >= 0.95 at confidence 0.95 (59 agreeing candidates above a
        threshold are the fewest that could): the step reuses no near-duplicate answers'
        """
        head = (f"semantic cache calibration on the first batch ({self.texts} distinct texts, {self.pool} asked "
                f"as the pool): {self.candidates} candidates (nearest pool text >= {CALIBRATION_FLOOR:g}), "
                f"{self.sampled} asked, {self.agreeing} agreed with their nearest pool answer; ")
        if self.threshold is None:
            return head + (f"no threshold certified accuracy >= {self.accuracy:g} at confidence {self.confidence:g} "
                           f"({self.needed} agreeing candidates above a threshold are the fewest that could): "
                           "the step reuses no near-duplicate answers")
        return head + (f"threshold {self.threshold:.4g} certified ({self.correct_above}/{self.rows_above} sampled "
                       f"candidates at or above it agreed, agreement >= {self.lower_bound:.3f} at confidence "
                       f"{self.confidence:g}, target {self.accuracy:g}); {self.reused} rows of the batch reused "
                       "their nearest pool answer")

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data, with ``mode``, ``certified`` and ``summary`` (step notes)."""
        from dataclasses import asdict

        return {"mode": "calibrated", **asdict(self), "certified": self.certified, "floor": CALIBRATION_FLOOR,
                "summary": self.describe()}


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
        Minimum cosine similarity for reuse, in (0, 1]; None: reuse nothing (a calibrated step
        before its calibration, or one whose calibration certified no threshold).
    embedder
        Turns texts into unit vectors (an :class:`~semframe.cache.embed.Embedder`).
    store
        Where answers persist across runs; None keeps them for this run only.
    hits
        A list of the run's that each reuse is appended to (as a :class:`RecordedHit`).
    target
        For a calibrated step, its :class:`~semframe.plan.approx.Target` (the threshold is then
        set by the calibration, recorded in :attr:`calibration`).
    """

    def __init__(self, step_key: str, threshold: float | None, embedder: Embedder | None,
                 store: AnswerStore | None = None, hits: list[RecordedHit] | None = None, *, target: Any = None):
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.step_key = step_key
        self.threshold = threshold
        self.embedder = embedder
        self.store = store
        self.hits = hits
        self.target = target
        #: What the calibration found (a calibrated step, once it has run; else None).
        self.calibration: SemanticCalibration | None = None
        self._index: VectorIndex | None = None
        self._answers: list[Completion] = []
        self._row_ids: list[int | None] = []
        self._loaded = store is None

    def __repr__(self) -> str:
        return f"SemanticCache(threshold={self.threshold}, entries={len(self._answers)})"

    @property
    def calibrating(self) -> bool:
        """True for a calibrated step that has not calibrated yet (its next batch does)."""
        return self.target is not None and self.calibration is None

    def describe_threshold(self) -> str:
        """How the threshold was set, for lineage notes: calibrated (with the target) or fixed.

        >>> SemanticCache("k", 0.9, None).describe_threshold()
        'fixed threshold 0.9 (not calibrated)'
        """
        if self.target is None:
            return f"fixed threshold {self.threshold:g} (not calibrated)"
        return (f"calibrated threshold {self.threshold:.4g} (accuracy >= {self.target.accuracy:g} "
                f"at confidence {self.target.confidence:g})")

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
        if self.threshold is None:  # nothing may be reused: every text is its own representative
            out.representatives = list(range(n))
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
            text_hashes: Sequence[str] | None = None, *, persist: bool = True) -> None:
        """Record engine answers (errors are skipped) for later rows, and persist them (unless
        ``persist=False``: answers that came from the exact cache, already stored)."""
        self._load()
        keep = [i for i, c in enumerate(completions) if c.ok]
        if not keep:
            return
        vecs = np.ascontiguousarray(vectors[keep], dtype=np.float32)
        self._append(vecs, [completions[i] for i in keep], [row_ids[i] for i in keep])
        if self.store is not None and persist:
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
