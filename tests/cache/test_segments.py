"""The segment cache (semframe.cache.segments): many writer processes into one directory lose no
answer and never show a reader a partial segment; a writer killed mid-batch loses only that batch;
compaction while others write loses nothing; answers round-trip exactly as the DuckDB cache's."""

from __future__ import annotations

import multiprocessing
import os
import time

from semframe.cache import SegmentCache, open_exact_cache
from semframe.engines.base import Completion, Message, Request
from semframe.plan.spec import ChoiceSpec

WRITERS, BATCHES, PER_BATCH = 4, 50, 5


def _request(text: str) -> Request:
    return Request((Message("user", text),), ChoiceSpec(("YES", "NO")), max_tokens=3)


def _label(text: str) -> str:
    return "YES" if sum(map(ord, text)) % 2 else "NO"


def _batch(writer: int, batch: int) -> list[tuple[str, Request, Completion]]:
    items = []
    for i in range(PER_BATCH):
        req = _request(f"writer {writer} batch {batch} item {i}")
        label = _label(req.messages[0].content)
        items.append((req.key, req, Completion(label, label, "stop", prompt_tokens=7, output_tokens=1)))
    return items


def _writer(directory: str, writer: int, batches: int, die_at: int | None) -> None:
    """A worker process: one segment per batch; ``die_at``: os._exit in the middle of that batch
    (its segment written to ``.tmp`` but not yet renamed into place)."""
    cache = SegmentCache(directory, fsync=False)
    for b in range(batches):
        if b == die_at:
            os.replace = lambda *_a, **_k: os._exit(3)  # type: ignore[assignment]
        cache.put_many("fp", _batch(writer, b))
    os._exit(0)


def _start(directory, writer: int, batches: int = BATCHES, die_at: int | None = None):
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(str(directory), writer, batches, die_at))
    proc.start()
    return proc


def _expected(writers: int, batches: int) -> dict[str, str]:
    return {key: c.value for w in range(writers) for b in range(batches) for key, _r, c in _batch(w, b)}


def test_many_writers_one_reader_sees_every_answer_and_never_a_partial_segment(tmp_path):
    procs = [_start(tmp_path, w) for w in range(WRITERS)]
    reader = SegmentCache(tmp_path)
    seen = [0]
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in procs):  # poll while they write: only whole segments appear
        reader.refresh()
        n = reader.count("fp")
        assert n % PER_BATCH == 0, f"a partial segment was read ({n} answers)"
        assert n >= seen[-1]
        seen.append(n)
        assert time.monotonic() < deadline
    for p in procs:
        p.join()
        assert p.exitcode == 0
    expected = _expected(WRITERS, BATCHES)
    assert len(expected) == WRITERS * BATCHES * PER_BATCH
    for cache in (reader, SegmentCache(tmp_path)):  # the poller, and a reader from scratch
        got = cache.get_many("fp", expected)
        assert {k: c.value for k, c in got.items()} == expected
    assert len(SegmentCache(tmp_path).segments()) == WRITERS * BATCHES  # one segment per batch
    assert not [n for n in os.listdir(tmp_path / "segments") if n.endswith(".tmp")]


def test_a_writer_killed_mid_batch_loses_only_that_batch(tmp_path):
    proc = _start(tmp_path, 0, batches=10, die_at=4)
    proc.join()
    assert proc.exitcode == 3
    cache = SegmentCache(tmp_path)
    got = cache.get_many("fp", _expected(1, 10))
    assert set(got) == set(_expected(1, 4))  # batches 0-3 kept, batch 4 (in flight) lost, no more
    left = [n for n in os.listdir(tmp_path / "segments") if n.endswith(".tmp")]
    assert len(left) == 1  # the dying batch's file, never renamed: invisible to readers
    # A half-written segment (a writer that died inside the write) is invisible too.
    whole = (tmp_path / "segments" / cache.segments()[0]).read_bytes()
    (tmp_path / "segments" / "x.arrow.tmp").write_bytes(whole[: len(whole) // 2])
    assert SegmentCache(tmp_path).count() == 4 * PER_BATCH
    cache.compact(stale_tmp_seconds=0)  # removes what dead writers left
    assert not [n for n in os.listdir(tmp_path / "segments") if n.endswith(".tmp")]
    assert SegmentCache(tmp_path).count() == 4 * PER_BATCH


def test_compaction_while_others_write_loses_nothing(tmp_path):
    procs = [_start(tmp_path, w, batches=20) for w in range(2)]
    compactor = SegmentCache(tmp_path, fsync=False)
    merged = 0
    while any(p.is_alive() for p in procs):
        merged += compactor.compact()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    merged += compactor.compact()
    assert merged >= 2 * 20  # every segment was merged at least once
    assert len(compactor.segments()) == 1
    assert len(compactor.segments()[0]) < 100  # merging merged segments does not grow the name
    expected = _expected(2, 20)
    for cache in (compactor, SegmentCache(tmp_path)):
        assert {k: c.value for k, c in cache.get_many("fp", expected).items()} == expected


def check_the_first_answer_of_a_key_wins(where) -> None:
    """Two writers that had not read each other: a reader from scratch keeps the older answer, a
    reader keeps what it gave; the same answer with probabilities fills them in (as the DuckDB
    cache does), through a compaction too. ``where``: a directory or an object-store URL."""
    req = _request("one question")
    first, second = SegmentCache(where), SegmentCache(where)
    first.put_many("fp", [(req.key, req, Completion("YES", "YES", "stop"))])
    second.put_many("fp", [(req.key, req, Completion("NO", "NO", "stop"))])  # had not read the first
    assert len(first.segments()) == 2
    for cache in (first, second, SegmentCache(where)):
        assert cache.get_many("fp", [req.key])[req.key].value in ("YES", "NO")
    assert SegmentCache(where).get_many("fp", [req.key])[req.key].value == "YES"  # from scratch: the older
    assert second.get_many("fp", [req.key])[req.key].value == "NO"  # a reader keeps what it gave
    probs = {"YES": 0.75, "NO": 0.25}
    first.put_many("fp", [(req.key, req, Completion("YES", "YES", "stop", probabilities=probs))])
    assert len(first.segments()) == 3
    assert SegmentCache(where).get_many("fp", [req.key])[req.key].probabilities == probs
    assert first.compact() == 3 and len(first.segments()) == 1
    got = SegmentCache(where).get_many("fp", [req.key])[req.key]
    assert (got.value, got.probabilities) == ("YES", probs)


def test_the_first_answer_of_a_key_wins(tmp_path):
    check_the_first_answer_of_a_key_wins(tmp_path)


def _fields(c: Completion) -> tuple:
    return (c.text, c.value, c.finish_reason, c.prompt_tokens, c.output_tokens, c.probabilities)


def test_round_trip_equals_the_duckdb_exact_cache(tmp_path):
    reqs = [_request(f"q{i}") for i in range(6)]
    comps = [
        Completion("YES", "YES", "stop", prompt_tokens=12, output_tokens=1, probabilities={"YES": 0.6, "NO": 0.4}),
        Completion(' {"place": "Wien"}', {"place": "Wien", "year": 1815, "n": [1, 2.5, None]}, "stop", 30, 9),
        Completion("naïve — ünïcödé 😀", "naïve — ünïcödé 😀", "length", 5, 64),
        Completion("\ud800x", "\ud800x", "stop", 1, 1),  # a lone surrogate, as the store keeps it
        Completion(None, None, "error", error="boom"),  # not stored by either
        Completion("NO", "NO", "stop", probabilities={"YES": 1.5, "NO": -0.5}),  # not a distribution
    ]
    items = [(r.key, r, c) for r, c in zip(reqs, comps)]
    duck = open_exact_cache(tmp_path / "duck")
    duck.put_many("fp", items)
    SegmentCache(tmp_path / "seg").put_many("fp", items)
    keys = [r.key for r in reqs]
    from_duck = open_exact_cache(tmp_path / "duck").get_many("fp", keys)
    from_seg = SegmentCache(tmp_path / "seg").get_many("fp", keys)
    duck.close()
    assert set(from_seg) == set(from_duck) == {r.key for r in reqs[:4]} | {reqs[5].key}
    for key in from_duck:
        assert _fields(from_seg[key]) == _fields(from_duck[key])
    assert from_seg[reqs[0].key].probabilities == {"YES": 0.6, "NO": 0.4}
    assert from_seg[reqs[5].key].probabilities is None  # dropped on read, as the DuckDB cache does

