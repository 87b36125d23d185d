"""Label probabilities in the persistent exact cache (issue 17): stored with each answer, read
back only when they are a distribution over the request's labels, and migrated files (format
versions 1 and 2) gain the column. A rerun with ``probabilities=True`` asks the engine nothing."""

from __future__ import annotations

import logging
import os

import duckdb
import polars as pl
import pytest

import semframe as sf
from semframe.cache import AnswerStore, CacheError, open_exact_cache
from semframe.cache.store import _EXACT_COLUMNS, DB_NAME, SCHEMA_VERSION, key_hash
from semframe.engines.base import Completion, Message, Request
from semframe.plan.spec import ChoiceSpec

LABELS = ["A", "B", "C"]


@pytest.fixture
def df() -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(12)] + ["row 0", None]})


def _plan(df: pl.DataFrame, probabilities: bool = True):
    return df.lazy().semantic.classify("t", LABELS, name="c", probabilities=probabilities)


def _rows(result) -> list:
    return result.df.select("t", "c", "c_probabilities").rows()


def _exact_columns(cache_dir) -> list[str]:
    with AnswerStore(cache_dir / "answers").connect() as con:
        return [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'exact' ORDER BY column_index").fetchall()]


def _version(cache_dir) -> str:
    with AnswerStore(cache_dir / "answers").connect() as con:
        return con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()[0][0]


def _engine_requests(result) -> int:
    return int(result.metrics["engine_requests"].sum())


# --------------------------------------------------------------------------- round trip


def test_probabilities_round_trip_through_the_exact_cache(tmp_path):
    cache = open_exact_cache(tmp_path)
    spec = ChoiceSpec(("YES", "NO"))
    reqs = [Request((Message("user", f"q{i}"),), spec, max_tokens=3) for i in range(3)]
    probs = {"YES": 0.7310585786300049, "NO": 0.2689414213699951}  # floats that need all 17 digits
    comps = [Completion("YES", "YES", "stop", 5, 0, 1, probabilities=probs),
             Completion("NO", "NO", "stop", 5, 0, 1),  # none: stored as NULL
             Completion("NO", "NO", "stop", 5, 0, 1, probabilities={"YES": 0.0, "NO": 1.0})]
    cache.put_many("fp", [(r.key, r, c) for r, c in zip(reqs, comps)])
    cache.close()
    got = open_exact_cache(tmp_path).get_many("fp", [r.key for r in reqs])
    assert got[reqs[0].key].probabilities == probs  # exactly: JSON keeps a float's every bit
    assert list(got[reqs[0].key].probabilities) == ["YES", "NO"]  # in the labels' order
    assert got[reqs[1].key].probabilities is None
    assert got[reqs[2].key].probabilities == {"YES": 0.0, "NO": 1.0}
    assert [got[r.key].value for r in reqs] == ["YES", "NO", "NO"]


def test_probabilities_that_are_not_numbers_are_not_stored(tmp_path, caplog):
    cache = open_exact_cache(tmp_path)
    req = Request((Message("user", "q"),), ChoiceSpec(("YES", "NO")), max_tokens=3)
    bad = Completion("YES", "YES", "stop", probabilities={"YES": float("nan"), "NO": 0.5})
    with caplog.at_level(logging.WARNING, logger="semframe"):
        cache.put_many("fp", [(req.key, req, bad)])
    assert "probabilities were not stored" in caplog.text
    got = cache.get_many("fp", [req.key])[req.key]
    assert got.value == "YES" and got.probabilities is None  # the answer is kept, without them


# --------------------------------------------------------------------------- rerun


def test_a_rerun_with_probabilities_asks_the_engine_nothing(df):
    engine = sf.DeterministicEngine()  # hashed distributions, different per row
    first = _plan(df).run(engine)
    asked = engine.requests_seen
    assert asked == 12 and _engine_requests(first) == 12  # 12 distinct texts (a repeat, a null)
    probs = first.df["c_probabilities"].to_list()
    assert all(p is not None and abs(sum(p.values()) - 1) < 1e-9 for p in probs[:-1])
    assert len({tuple(p.values()) for p in probs[:-1]}) > 3  # not one constant distribution
    again_engine = sf.DeterministicEngine()  # another engine object, as in a new process
    second = _plan(df).run(again_engine)
    assert again_engine.requests_seen == 0 and _engine_requests(second) == 0
    assert _rows(second) == _rows(first)  # the very same probabilities, bit for bit
    sources = second.lineage.filter(pl.col("source") != "skipped")["source"].unique().to_list()
    assert set(sources) <= {"exact_cache", "dedup"} and "exact_cache" in sources


def test_a_rerun_on_pandas_and_eager_frontends_too(df):
    engine = sf.DeterministicEngine()
    lazy = _plan(df).run(engine).df
    eager = df.semantic.classify("t", LABELS, name="c", probabilities=True, engine=engine)
    pandas_out = df.to_pandas().semantic.classify("t", LABELS, name="c", probabilities=True, engine=engine)
    assert engine.requests_seen == 12
    assert eager["c_probabilities"].to_list() == lazy["c_probabilities"].to_list()
    assert list(pandas_out["c_probabilities"][:12]) == lazy["c_probabilities"].to_list()[:12]


def test_a_run_without_probabilities_stores_them_for_a_later_run_that_shows_them(df):
    engine = sf.DeterministicEngine()
    plain = _plan(df, probabilities=False).run(engine)
    assert engine.requests_seen == 12 and "c_probabilities" not in plain.df.columns
    shown = _plan(df).run(engine)
    assert engine.requests_seen == 12  # the engine gave them the first time; the cache kept them
    fresh = sf.DeterministicEngine(model="deterministic-v1")
    assert shown.df["c"].to_list() == plain.df["c"].to_list()
    assert all(p is not None for p in shown.df["c_probabilities"].to_list()[:-1])
    direct = _plan(df).run(fresh, cache=False)  # what the engine says, asked again
    assert fresh.requests_seen == 12 and _rows(direct) == _rows(shown)


def test_a_present_answer_takes_new_probabilities_only_for_the_same_value(tmp_path):
    cache = open_exact_cache(tmp_path)
    spec = ChoiceSpec(("YES", "NO"))
    reqs = [Request((Message("user", f"q{i}"),), spec, max_tokens=3) for i in range(3)]
    cache.put_many("fp", [(r.key, r, Completion("YES", "YES", "stop")) for r in reqs])
    probs = {"YES": 0.25, "NO": 0.75}
    cache.put_many("fp", [
        (reqs[0].key, reqs[0], Completion("YES", "YES", "stop", probabilities=probs)),  # same answer
        (reqs[1].key, reqs[1], Completion("NO", "NO", "stop", probabilities=probs)),  # another answer
        (reqs[2].key, reqs[2], Completion("YES", "YES", "stop")),  # none: nothing to add
    ])
    got = cache.get_many("fp", [r.key for r in reqs])
    assert cache.count() == 3
    assert got[reqs[0].key].probabilities == probs
    assert got[reqs[1].key].value == "YES" and got[reqs[1].key].probabilities is None  # left as it is
    assert got[reqs[2].key].probabilities is None


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("stored", [
    '{"A":0.9,"B":0.9,"C":0.9}',  # does not sum to 1
    '{"A":1.5,"B":-0.25,"C":-0.25}',  # sums to 1, out of [0, 1]
    '{"A":NaN,"B":0.5,"C":0.5}',
    '{"A":Infinity,"B":0.0,"C":0.0}',
    '{"A":1e400,"B":0.0,"C":0.0}',
    '{"X":0.5,"Y":0.25,"Z":0.25}',  # a distribution, over other labels
    '{"A":0.5,"B":0.5}',  # a label missing
    '{"A":0.5,"B":0.25,"C":0.25,"D":0.0}',  # a label too many
    '{"A":true,"B":false,"C":false}',
    '{"A":"1","B":"0","C":"0"}',
    '[0.5,0.25,0.25]',
    '"A"',
    'not json at all',
    '{}',
], ids=["sum", "range", "nan", "infinity", "overflow", "other-labels", "missing", "extra", "bools",
        "strings", "list", "string", "not-json", "empty"])
def test_tampered_probabilities_are_not_trusted(df, caplog, stored):
    engine = sf.DeterministicEngine()
    first = _plan(df).run(engine)
    cache = open_exact_cache()
    with cache.store.connect() as con:
        key = con.execute("SELECT request_key FROM exact ORDER BY rowid LIMIT 1").fetchall()[0][0]
        con.execute("UPDATE exact SET probabilities_json = ? WHERE request_key = ?", [stored, key])
    cache.close()
    with caplog.at_level(logging.WARNING, logger="semframe"):
        second = _plan(df).run(engine)
    assert "label probabilities were not used" in caplog.text
    assert engine.requests_seen == 13  # that one answer was asked again; the other 11 came from the cache
    assert _rows(second) == _rows(first)  # the engine's probabilities, not the planted ones
    # Without probabilities the answer itself is still good: no engine call.
    before = engine.requests_seen
    third = _plan(df, probabilities=False).run(engine)
    assert engine.requests_seen == before and third.df["c"].to_list() == first.df["c"].to_list()
    # The answer asked again replaced the bad probabilities: the next run asks nothing.
    fourth = _plan(df).run(engine)
    assert engine.requests_seen == before and _rows(fourth) == _rows(first)


def test_a_planted_distribution_over_the_right_labels_is_only_a_distribution(df):
    """What the check can and cannot tell: a well-formed distribution over the request's labels
    is read back (as the answer's value is, once it parses); the file is the user's own."""
    engine = sf.DeterministicEngine()
    _plan(df).run(engine)
    cache = open_exact_cache()
    with cache.store.connect() as con:
        key = con.execute("SELECT request_key FROM exact ORDER BY rowid LIMIT 1").fetchall()[0][0]
        con.execute("UPDATE exact SET probabilities_json = ? WHERE request_key = ?",
                    ['{"C":0.25,"A":0.5,"B":0.25}', key])
    cache.close()
    second = _plan(df).run(engine)
    assert engine.requests_seen == 12
    assert second.df["c_probabilities"][0] == {"A": 0.5, "B": 0.25, "C": 0.25}  # in label order


# --------------------------------------------------------------------------- migrations


V2_EXACT = ("CREATE TABLE exact (fingerprint VARCHAR NOT NULL, request_key VARCHAR NOT NULL, key_hash BIGINT NOT NULL, "
            "model VARCHAR, value_json VARCHAR, raw_output VARCHAR, finish_reason VARCHAR, prompt_tokens BIGINT, "
            "output_tokens BIGINT, created_at DOUBLE)")
V1_EXACT = ("CREATE TABLE exact (fingerprint VARCHAR NOT NULL, request_key VARCHAR NOT NULL, model VARCHAR, "
            "value_json VARCHAR, raw_output VARCHAR, finish_reason VARCHAR, prompt_tokens BIGINT, "
            "output_tokens BIGINT, created_at DOUBLE, PRIMARY KEY (fingerprint, request_key))")


def _answers_of_a_run(df: pl.DataFrame) -> list[tuple]:
    """(fingerprint, key, value_json, raw, finish, prompt, output) of every answer of the plan, as
    this semframe stores them (run in a scratch cache, then read back)."""
    scratch = sf.DeterministicEngine()
    _plan(df).run(scratch)
    with AnswerStore(open_exact_cache().store.directory).connect() as con:
        rows = con.execute("SELECT fingerprint, request_key, value_json, raw_output, finish_reason, prompt_tokens, "
                           "output_tokens FROM exact ORDER BY rowid").fetchall()
    open_exact_cache().close()
    return rows


def _plant(folder, statements: list[str]) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    con = duckdb.connect(str(folder / DB_NAME))
    for s in statements:
        con.execute(s)
    con.close()
    os.chmod(folder / DB_NAME, 0o600)


def _old_file(tmp_path, df, version: int):
    """A cache directory whose file is format ``version`` (1 or 2), holding the plan's answers."""
    rows = _answers_of_a_run(df)
    target = tmp_path / f"v{version}"
    values = []
    for fp, key, value, raw, finish, prompt, output in rows:
        h = f"{key_hash(fp, key)}, " if version == 2 else ""
        values.append(f"('{fp}', '{key}', {h}'m', '{value}', '{raw}', '{finish}', {prompt}, {output}, 0.0)")
    _plant(target / "answers", [
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
        f"INSERT INTO meta VALUES ('schema_version', '{version}')",
        V2_EXACT if version == 2 else V1_EXACT,
        "INSERT INTO exact VALUES " + ", ".join(values),
    ])
    return target, len(rows)


@pytest.mark.parametrize("version", [2, 1])
def test_an_older_file_is_migrated_and_gains_probabilities(tmp_path, df, caplog, version):
    target, n = _old_file(tmp_path, df, version)
    assert n == 12
    sf.configure(cache_dir=target)
    engine = sf.DeterministicEngine()
    with caplog.at_level(logging.INFO, logger="semframe"):
        plain = _plan(df, probabilities=False).run(engine)  # the old answers are reused as they are
    assert f"from format version {version} to {SCHEMA_VERSION}" in caplog.text
    assert engine.requests_seen == 0 and plain.df["c"].null_count() == 1
    assert _version(target) == str(SCHEMA_VERSION) == "3"
    assert _exact_columns(target) == [n for n, _ in _EXACT_COLUMNS]
    assert open_exact_cache(target).count() == 12
    with_probs = _plan(df).run(engine)  # migrated answers have none: asked once more
    assert engine.requests_seen == 12 and with_probs.df["c"].to_list() == plain.df["c"].to_list()
    again = _plan(df).run(engine)
    assert engine.requests_seen == 12 and _rows(again) == _rows(with_probs)
    assert open_exact_cache(target).count() == 12  # the old rows were kept, not duplicated


def test_a_version_3_file_without_the_probabilities_column_is_refused(tmp_path, df):
    target, _ = _old_file(tmp_path, df, 2)
    con = duckdb.connect(str(target / "answers" / DB_NAME))
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(CacheError, match="says format version 3 but its table exact has the columns"):
        open_exact_cache(target).count()


def test_a_probabilities_column_of_another_type_is_refused(tmp_path, df):
    target, _ = _old_file(tmp_path, df, 2)
    con = duckdb.connect(str(target / "answers" / DB_NAME))
    con.execute("ALTER TABLE exact ADD COLUMN probabilities_json DOUBLE[]")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(CacheError, match="table exact with columns"):
        open_exact_cache(target).count()
