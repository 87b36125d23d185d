"""The cache as a shared, hostile-environment file (issue 10, items 8-12): cleared under a run,
held by another program, truncated, random bytes, planted views and macros, loose permissions,
answers that are not valid UTF-8. Each test failed before the fix."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

import semframe as sf
import semframe.cache.store as store_module
from semframe.cache import AnswerStore, CacheError, clear_cache, open_exact_cache
from semframe.cache.store import DB_NAME
from semframe.engines.base import Completion

FP = "f" * 64


def _keys(n: int, tag: str = "k") -> list[str]:
    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(n)]


def _put(cache, keys, value="A"):
    cache.put_many(FP, [(k, None, Completion(value, value, "stop", 3, 0, 1)) for k in keys])


def _classify(df: pl.DataFrame):
    return df.lazy().semantic.classify("t", ["A", "B"], name="c")


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(20)]})


# --------------------------------------------------------------------------- item 8: cleared mid-run


def test_a_cache_cleared_by_another_process_is_recreated(tmp_path):
    cache = open_exact_cache(tmp_path)
    _put(cache, _keys(5))
    other = AnswerStore(tmp_path / "answers")  # another process's view of the same directory
    other.clear()
    assert cache.get_many(FP, _keys(5)) == {}  # was: CatalogException: Table with name exact does not exist!
    _put(cache, _keys(3, "new"))
    assert cache.count() == 3


def test_a_cache_directory_deleted_under_a_run_is_recreated(tmp_path):
    cache = open_exact_cache(tmp_path)
    _put(cache, _keys(5))
    shutil.rmtree(tmp_path / "answers")
    _put(cache, _keys(4, "new"))  # was: CatalogException
    assert cache.count() == 4
    assert set(cache.get_many(FP, _keys(4, "new"))) == set(_keys(4, "new"))
    assert stat.S_IMODE((tmp_path / "answers").stat().st_mode) == 0o700


def test_a_run_survives_its_cache_being_cleared_by_another_process(tmp_path):
    """A real worker process, and this process clearing (clear_cache, rm -rf) under it."""
    from tests.cache.test_processes import _lines, _start

    cache_dir = tmp_path / "cache"
    proc = _start(cache_dir, 300, 10, 0.01, tmp_path / "progress")
    deadline = time.monotonic() + 120
    clears = 0
    while proc.poll() is None and clears < 8:
        assert time.monotonic() < deadline, "the worker made no progress"
        if _lines(tmp_path / "progress") >= 2 + 3 * clears:
            if clears % 2:
                shutil.rmtree(cache_dir / "answers", ignore_errors=True)
            else:
                clear_cache(cache_dir)
            clears += 1
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert clears >= 3
    assert "Traceback" not in err


# --------------------------------------------------------------------------- item 9: locked, truncated, random


def _close(cache) -> None:
    """Close this process's connection (so the file can be damaged under it). Written so that the
    tests also run against the code before the fix, which had no connection to close."""
    close = getattr(cache, "close", None)
    if close is not None:
        close()


def _filled(tmp_path: Path, n: int = 3000) -> Path:
    cache = open_exact_cache(tmp_path)
    _put(cache, _keys(n))
    _close(cache)
    path = tmp_path / "answers" / DB_NAME
    assert path.exists()
    return path


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "text"])
def test_an_unreadable_file_is_moved_aside_and_the_run_continues(tmp_path, caplog, damage):
    path = _filled(tmp_path)
    data = path.read_bytes()
    bad = {"truncated": data[: len(data) // 2], "random": os.urandom(len(data)), "empty": b"",
           "text": b"not a database\n" * 100}[damage]
    path.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="semframe"):
        cache = open_exact_cache(tmp_path)
        assert cache.count() == 0  # was: a raw duckdb IOException, on every run
        _put(cache, _keys(2))
        assert cache.count() == 2
    moved = list(path.parent.glob(f"{DB_NAME}.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == bad  # kept, not deleted
    assert stat.S_IMODE(moved[0].stat().st_mode) == 0o600
    assert any("could not be read" in r.getMessage() and "moved it to" in r.getMessage() for r in caplog.records)


def test_a_file_corrupt_inside_is_moved_aside_when_read(tmp_path, caplog):
    path = _filled(tmp_path, 30_000)
    data = path.read_bytes()
    path.write_bytes(data[:12288] + os.urandom(len(data) - 12288))  # the header is fine, the blocks are not
    with caplog.at_level(logging.WARNING, logger="semframe"):
        cache = open_exact_cache(tmp_path)
        assert cache.get_many(FP, _keys(10)) == {}  # was: "Corrupt database file: computed checksum ..."
        _put(cache, _keys(2, "again"))
    assert cache.count() == 2
    assert len(list(path.parent.glob(f"{DB_NAME}.corrupt-*"))) == 1
    assert any("checksum" in r.getMessage() for r in caplog.records)


def test_a_file_held_open_by_another_program_is_waited_for_then_named(tmp_path, monkeypatch):
    path = _filled(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time\n"
        f"con = duckdb.connect({str(path)!r})\n"
        "print('open', flush=True)\n"
        "time.sleep(float(sys.argv[1]))\n"), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        monkeypatch.setattr(store_module, "FOREIGN_LOCK_TIMEOUT_S", 0.5)
        with pytest.raises(CacheError) as info:  # was: a raw duckdb IOException
            open_exact_cache(tmp_path).count()
        message = str(info.value)
        assert str(path) in message and f"PID {holder.pid}" in message and "cache=False" in message
        assert not list(path.parent.glob(f"{DB_NAME}.corrupt-*"))  # a lock is not corruption
    finally:
        holder.kill()
        holder.wait()
    assert open_exact_cache(tmp_path).count() == 3000  # once it is gone, the cache is all there


def test_a_program_that_closes_the_file_soon_is_waited_for(tmp_path, caplog):
    path = _filled(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time\n"
        f"con = duckdb.connect({str(path)!r})\n"
        "print('open', flush=True)\n"
        "time.sleep(1.0)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with caplog.at_level(logging.WARNING, logger="semframe"):
            assert open_exact_cache(tmp_path).count() == 3000
        assert any("waiting up to" in r.getMessage() for r in caplog.records)
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- item 10: planted files


def _plant(tmp_path: Path, statements: list[str]) -> Path:
    folder = tmp_path / "answers"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / DB_NAME
    con = duckdb.connect(str(path))
    for s in statements:
        con.execute(s)
    con.close()
    os.chmod(path, 0o600)
    return path


V1_EXACT = ("CREATE TABLE exact_rows (fingerprint VARCHAR NOT NULL, request_key VARCHAR NOT NULL, model VARCHAR, "
            "value_json VARCHAR, raw_output VARCHAR, finish_reason VARCHAR, prompt_tokens BIGINT, "
            "output_tokens BIGINT, created_at DOUBLE)")


def _planted_view(tmp_path: Path, df: pl.DataFrame, where: Path, secret: Path) -> Path:
    """A cache file whose ``exact`` is a view that answers every request of ``df``'s plan with the
    content of ``secret`` (the keys computed as an attacker could: by running the plan elsewhere)."""
    sf.configure(cache_dir=tmp_path / "scratch")
    _classify(df).run(sf.DeterministicEngine())
    scratch = open_exact_cache(tmp_path / "scratch")
    with scratch.store.connect() as con:
        keys = con.execute("SELECT fingerprint, request_key FROM exact").fetchall()
    _close(scratch)
    values = ", ".join(f"('{f}', '{k}')" for f, k in keys)
    return _plant(where, [
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        "INSERT INTO meta VALUES ('schema_version', '1')",
        "CREATE TABLE keys (fingerprint VARCHAR, request_key VARCHAR)",
        f"INSERT INTO keys VALUES {values}",
        "CREATE VIEW exact AS SELECT fingerprint, request_key, '' AS model, "
        f"to_json((SELECT content FROM read_text('{secret}'))) AS value_json, 'x' AS raw_output, "
        "'stop' AS finish_reason, 0::BIGINT AS prompt_tokens, 0::BIGINT AS output_tokens, 0.0::DOUBLE AS created_at "
        "FROM keys",
    ])


def test_a_planted_view_over_a_file_is_refused(tmp_path, df):
    secret = tmp_path / "secret.txt"
    secret.write_text("the content of a private file")
    path = _planted_view(tmp_path, df, tmp_path / "planted", secret)
    before = path.read_bytes()
    sf.configure(cache_dir=tmp_path / "planted")
    engine = sf.DeterministicEngine()
    with pytest.raises(CacheError, match=r"view main\.exact.*refuses") as info:
        _classify(df).run(engine)
    assert "clear_cache" in str(info.value) and str(path) in str(info.value)
    assert engine.requests_seen == 0
    assert path.read_bytes() == before  # refused, not modified


def test_a_planted_file_swapped_in_under_a_running_process_is_refused(tmp_path, df):
    """The audit's case: the process had already opened (and checked) its cache when the file was
    replaced by one whose answers are a view over another file."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the content of a private file")
    sf.configure(cache_dir=tmp_path / "victim")
    engine = sf.DeterministicEngine()
    _classify(df.head(1)).run(engine)  # the cache is open and checked
    planted = _planted_view(tmp_path, df, tmp_path / "planted", secret)
    sf.configure(cache_dir=tmp_path / "victim")
    os.replace(planted, tmp_path / "victim" / "answers" / DB_NAME)
    with pytest.raises(CacheError, match="view"):
        result = _classify(df).run(engine)
        # before the fix: every row was the secret, with 0 engine calls
        assert "the content of a private file" not in result.df["c"].to_list()


@pytest.mark.parametrize("plant, match", [
    (["CREATE MACRO max(x) AS 41"], r"macro main\.max"),  # would answer every max() in our SQL
    (["CREATE MACRO m() AS TABLE SELECT 1"], r"table macro main\.m"),
    (["CREATE TABLE exact (fingerprint INTEGER, request_key VARCHAR)"], r"table exact with columns"),
    (["CREATE TYPE mood AS ENUM ('a')"], r"user type"),
    (["CREATE TABLE meta (key VARCHAR, value VARCHAR, CHECK (length(value) < 99))"], r"CHECK constraint"),
    (["CREATE TABLE meta (key VARCHAR, value VARCHAR)", "CREATE INDEX odd ON meta ((lower(value)))"],
     r"index main\.odd"),
    (["CREATE TABLE embeddings (model VARCHAR, text_hash VARCHAR, "
      "embedding FLOAT[] DEFAULT ([1.0]::FLOAT[]))"], r"table embeddings"),
], ids=["macro-shadowing-max", "table-macro", "wrong-types", "user-type", "check", "expression-index", "default"])
def test_objects_semframe_did_not_create_are_refused(tmp_path, plant, match):
    _plant(tmp_path, plant)
    with pytest.raises(CacheError, match=match):
        open_exact_cache(tmp_path).count()


def test_the_connection_cannot_read_files_or_turn_that_back_on(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    store = AnswerStore(tmp_path / "answers")
    with pytest.raises(duckdb.Error, match="disabled"):
        with store.connect() as con:
            con.execute(f"SELECT content FROM read_text('{secret}')").fetchall()
    with pytest.raises(duckdb.Error, match="Cannot change configuration"):
        with store.connect() as con:
            con.execute("SET enable_external_access = true")


def test_a_version_1_cache_is_migrated_in_place(tmp_path):
    rows = [(FP, k, "m", '"A"', "A", "stop", 3, 1, 0.0) for k in _keys(50)]
    path = _plant(tmp_path, [
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        "INSERT INTO meta VALUES ('schema_version', '1')",
        V1_EXACT.replace("exact_rows", "exact").replace("created_at DOUBLE)",
                                                        "created_at DOUBLE, PRIMARY KEY (fingerprint, request_key))"),
        "INSERT INTO exact VALUES " + ", ".join(str(r) for r in rows),
    ])
    cache = open_exact_cache(tmp_path)
    got = cache.get_many(FP, _keys(60))
    assert set(got) == set(_keys(50)) and got[_keys(1)[0]].value == "A"
    _put(cache, _keys(60))  # the ten new ones are added, the fifty are not repeated
    assert cache.count() == 60
    with AnswerStore(path.parent).connect() as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
            (str(store_module.SCHEMA_VERSION),)]


# --------------------------------------------------------------------------- item 11: permissions


def test_loose_permissions_are_tightened(tmp_path, caplog):
    path = _filled(tmp_path)
    folder = path.parent
    os.chmod(folder, 0o777)
    for f in folder.iterdir():
        os.chmod(f, 0o666)
    with caplog.at_level(logging.WARNING, logger="semframe"):
        cache = open_exact_cache(tmp_path)
        _put(cache, _keys(10, "more"))  # a write: the WAL exists now
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # was: left 0777
    files = list(folder.iterdir())
    assert any(f.name.endswith(".wal") for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert any("open to other users" in r.getMessage() for r in caplog.records)


def test_a_symlinked_database_is_refused(tmp_path):
    elsewhere = _filled(tmp_path / "elsewhere")
    folder = tmp_path / "mine" / "answers"
    folder.mkdir(parents=True, mode=0o700)
    (folder / DB_NAME).symlink_to(elsewhere)
    with pytest.raises(CacheError, match="symbolic link"):
        open_exact_cache(tmp_path / "mine").count()


# --------------------------------------------------------------------------- item 12: lone surrogates


def test_a_lone_surrogate_does_not_lose_the_batch(tmp_path):
    cache = open_exact_cache(tmp_path)
    keys = _keys(4)
    comps = [Completion("A", "A", "stop"), Completion("\ud800", "\ud800", "stop"),
             Completion("x\udfffy", {"t": "x\udfffy"}, "stop"), Completion("B", "B", "stop")]
    cache.put_many(FP, list(zip(keys, [None] * 4, comps)))  # was: UnicodeEncodeError, nothing stored
    got = cache.get_many(FP, keys)
    assert len(got) == 4
    assert got[keys[1]].value == "\ud800"  # the value exactly
    assert got[keys[1]].text == "\ufffd"  # the raw text as UTF-8 can hold it
    assert got[keys[2]].value == {"t": "x\udfffy"}
    assert got[keys[0]].value == "A" and got[keys[3]].value == "B"


def test_an_answer_that_is_not_json_is_skipped_with_a_reason(tmp_path, caplog):
    cache = open_exact_cache(tmp_path)
    keys = _keys(3)
    comps = [Completion("A", "A", "stop"), Completion("?", object(), "stop"), Completion("B", "B", "stop")]
    with caplog.at_level(logging.WARNING, logger="semframe"):
        cache.put_many(FP, list(zip(keys, [None] * 3, comps)))
    assert set(cache.get_many(FP, keys)) == {keys[0], keys[2]}
    assert any("not stored" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the key index


def test_rows_deleted_by_hand_do_not_confuse_the_index(tmp_path):
    cache = open_exact_cache(tmp_path)
    keys = _keys(100)
    _put(cache, keys)
    assert len(cache.get_many(FP, keys)) == 100
    with cache.store.connect() as con:  # someone edits the file with SQL
        con.execute("DELETE FROM exact WHERE request_key IN (SELECT unnest(?::VARCHAR[]))", [keys[:30]])
        con.execute("UPDATE exact SET value_json = '\"B\"' WHERE request_key = ?", [keys[50]])
    got = cache.get_many(FP, keys)
    assert set(got) == set(keys[30:]) and got[keys[50]].value == "B"
    _put(cache, keys)  # the deleted ones are stored again, the others not twice
    assert cache.count() == 100


def test_answers_another_process_wrote_are_found(tmp_path):
    """The index is refreshed when this process takes the file back from another."""
    from tests.cache.test_processes import _start

    cache = open_exact_cache(tmp_path / "cache")
    assert cache.count() == 0
    proc = _start(tmp_path / "cache", 40, 8, 0.0, tmp_path / "progress")
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    sf.configure(cache_dir=tmp_path / "cache")
    from tests.cache.worker import plan

    engine = sf.DeterministicEngine()
    plan(40).run(engine)
    assert engine.requests_seen == 0


def test_the_key_index_matches_the_table(tmp_path):
    """Row ids the index predicts for its own inserts are the ones DuckDB gave, with two engines'
    answers interleaved in one table."""
    cache = open_exact_cache(tmp_path)
    other = "e" * 64
    for b in range(6):
        _put(cache, _keys(300, f"a{b}"))
        cache.put_many(other, [(k, None, Completion("B", "B", "stop")) for k in _keys(200 + b, f"b{b}")])
    handle = cache.store._handle
    for fp in (FP, other):
        index = handle.indexes[fp]
        rows = cache.store.run(lambda con, _h, fp=fp: con.execute(
            "SELECT key_hash, rowid FROM exact WHERE fingerprint = ?", [fp]).fetchall())
        assert len(rows) == len(index)
        assert index.find([h for h, _ in rows]) == [r for _, r in rows]
        assert not index.stale


def test_a_forked_child_uses_the_cache_safely(tmp_path):
    """A process that forks (multiprocessing's default on Linux) while it holds the cache: the
    child must not inherit the open database (DuckDB would hand the parent's instance to it)."""
    cache = open_exact_cache(tmp_path)
    _put(cache, _keys(10))  # the parent holds the file now
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            child = open_exact_cache(tmp_path)
            _put(child, _keys(5, "child"))
            code = 0 if child.count() == 15 else 2
            child.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.count() == 15
    assert set(cache.get_many(FP, _keys(5, "child"))) == set(_keys(5, "child"))
    assert not list((tmp_path / "answers").glob("*.corrupt-*"))
