"""The segment cache on an object store by URL (``SegmentCache("s3://bucket/prefix?...")``), against
an S3 server on loopback (moto's server in a child process, started once for the module): answers
round-trip and other instances see them, compaction loses nothing even while others write, many
writers never leave a segment that cannot be read, an upload cut short shows no partial segment,
and a URL's credentials never reach a repr or a message. ``sf.RayExecutor(shared_cache=<URL>)``
takes the URL (checked, redacted in its repr) without starting Ray."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid

import pytest

import semframe as sf
from semframe.cache import SegmentCache
from semframe.cache.segments import redact_url
from semframe.engines.base import Completion
from tests.cache.test_segments import (PER_BATCH, _batch, _expected, _fields, _request,
                                       check_the_first_answer_of_a_key_wins)

from tests.s3_server import require_moto, s3_server

require_moto()
pafs = pytest.importorskip("pyarrow.fs")

KEY_ID, SECRET = "AKIDLEAKCHECK0000001", "sEcReTlEaKcHeCk+0000001"  # in URLs: must never be shown


@pytest.fixture(scope="module")
def endpoint():
    """``host:port`` of an S3 server on loopback, with test credentials in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_EC2_METADATA_DISABLED", "true")):
            mp.setenv(name, value)
        with s3_server() as where:
            yield where


@pytest.fixture
def s3(endpoint):
    """pyarrow's S3 filesystem on the server (to make buckets and look at the objects)."""
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing",
                             secret_key="testing", region="us-east-1", allow_bucket_creation=True)


@pytest.fixture
def url(endpoint, s3):
    """A fresh bucket's ``answers`` prefix, as a URL (credentials from the environment)."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_dir(bucket)
    return f"s3://{bucket}/answers?endpoint_override={endpoint}&scheme=http"


def _bucket(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]


def _objects(s3, url: str) -> list[str]:
    infos = s3.get_file_info(pafs.FileSelector(f"{_bucket(url)}/answers/segments", allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def test_answers_round_trip_and_another_instance_sees_them(url, s3, tmp_path):
    reqs = [_request(f"q{i}") for i in range(5)]
    comps = [
        Completion("YES", "YES", "stop", prompt_tokens=12, output_tokens=1, probabilities={"YES": 0.6, "NO": 0.4}),
        Completion(' {"place": "Wien"}', {"place": "Wien", "year": 1815, "n": [1, 2.5, None]}, "stop", 30, 9),
        Completion("naïve — ünïcödé 😀", "naïve — ünïcödé 😀", "length", 5, 64),
        Completion(None, None, "error", error="boom"),  # not stored
        Completion("NO", "NO", "stop", probabilities={"YES": 1.5, "NO": -0.5}),  # not a distribution
    ]
    items = [(r.key, r, c) for r, c in zip(reqs, comps)]
    writer = SegmentCache(url)
    writer.put_many("fp", items)
    SegmentCache(tmp_path).put_many("fp", items)  # the local directory version, for comparison
    keys = [r.key for r in reqs]
    local = SegmentCache(tmp_path).get_many("fp", keys)
    assert set(local) == {r.key for i, r in enumerate(reqs) if i != 3}
    for cache in (writer, SegmentCache(url)):  # this instance, and another one (another process would)
        got = cache.get_many("fp", keys)
        assert set(got) == set(local)
        for key in local:
            assert _fields(got[key]) == _fields(local[key])
    assert SegmentCache(url).get_many("another-engine", keys) == {}  # another fingerprint sees nothing
    assert SegmentCache(url).count() == 4
    # One object per put_many, under <prefix>/segments/, and no temporary object.
    assert _objects(s3, url) == SegmentCache(url).segments()
    assert len(_objects(s3, url)) == 1 and _objects(s3, url)[0].endswith(".arrow")
    writer.put_many("fp", items)  # nothing new: nothing written
    assert len(_objects(s3, url)) == 1


def test_an_empty_prefix_holds_nothing(url):
    cache = SegmentCache(url.replace("/answers?", "/nothing-yet?"))
    assert cache.segments() == [] and cache.count() == 0
    assert cache.get_many("fp", [_request("q").key]) == {}
    assert cache.compact() == 0


def test_the_first_answer_of_a_key_wins_and_a_later_segment_fills_in_probabilities(url):
    check_the_first_answer_of_a_key_wins(url)


def test_compact_merges_into_one_segment_and_loses_nothing(url, s3):
    cache = SegmentCache(url)
    for b in range(6):
        cache.put_many("fp", _batch(0, b))
    assert len(cache.segments()) == 6
    assert cache.compact() == 6
    assert len(cache.segments()) == 1 and len(_objects(s3, url)) == 1
    expected = _expected(1, 6)
    for reader in (cache, SegmentCache(url)):
        assert {k: c.value for k, c in reader.get_many("fp", expected).items()} == expected
    assert cache.compact() == 0  # one segment: nothing to merge


def test_compaction_while_another_instance_writes_loses_nothing(url):
    batches, errors, counts = 20, [], []
    done = threading.Event()

    def write():
        try:
            writer = SegmentCache(url)
            for b in range(batches):
                writer.put_many("fp", _batch(1, b))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read():  # readers from scratch, while both work: never fewer answers than the one before
        try:
            while not done.is_set():
                counts.append(SegmentCache(url).count("fp"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer, reader = threading.Thread(target=write), threading.Thread(target=read)
    compactor = SegmentCache(url)
    writer.start()
    reader.start()
    merged = 0
    while writer.is_alive():
        merged += compactor.compact()
    writer.join()
    merged += compactor.compact()
    done.set()
    reader.join()
    assert not errors
    assert merged >= batches  # every segment was merged at least once
    assert len(compactor.segments()) == 1
    assert len(counts) >= 3 and counts == sorted(counts), counts  # no answer ever went missing
    expected = {key: c.value for b in range(batches) for key, _r, c in _batch(1, b)}
    for cache in (compactor, SegmentCache(url)):
        assert {k: c.value for k, c in cache.get_many("fp", expected).items()} == expected


def test_many_writers_every_answer_readable_and_never_a_partial_segment(url):
    writers, batches, errors = 4, 8, []

    def write(w):
        try:
            cache = SegmentCache(url)  # each writer its own instance, as each process has
            for b in range(batches):
                cache.put_many("fp", _batch(w, b))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    reader = SegmentCache(url)
    deadline = time.monotonic() + 120
    seen = 0
    while any(t.is_alive() for t in threads):  # poll while they write: only whole segments appear
        n = reader.count("fp")
        assert n % PER_BATCH == 0, f"a partial segment was read ({n} answers)"
        assert n >= seen
        seen = n
        assert time.monotonic() < deadline
    for t in threads:
        t.join()
    assert not errors
    expected = _expected(writers, batches)
    fresh = SegmentCache(url)
    assert fresh.refresh() == writers * batches  # every segment read, none unreadable
    for cache in (reader, fresh):
        assert {k: c.value for k, c in cache.get_many("fp", expected).items()} == expected


class _CutStream:
    """An output stream whose write sends half the bytes, then fails (a connection lost)."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(memoryview(data)[: len(data) // 2])
        raise OSError("connection reset by peer (simulated)")

    def close(self):
        self.real.close()


class _CuttingFS:
    def __init__(self, real):
        self.real = real

    def open_output_stream(self, path, *args, **kwargs):
        return _CutStream(self.real.open_output_stream(path, *args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_an_upload_cut_short_shows_no_partial_segment(url, s3, caplog):
    cache = SegmentCache(url)
    cache.put_many("fp", _batch(0, 0))
    cache._fs = _CuttingFS(cache._fs)
    with pytest.raises(OSError, match="simulated"):
        cache.put_many("fp", _batch(0, 1))
    assert len(_objects(s3, url)) == 1  # what pyarrow published on close was deleted at once
    assert SegmentCache(url).count() == PER_BATCH
    # A prefix of a segment that stayed (the writer died before deleting it) is skipped, with a warning.
    whole = _objects(s3, url)[0]
    with s3.open_input_file(f"{_bucket(url)}/answers/segments/{whole}") as f:
        data = f.read()
    cut = "00000000000000000001-cut.arrow"  # sorts first
    with s3.open_output_stream(f"{_bucket(url)}/answers/segments/{cut}") as out:
        out.write(data[: len(data) // 2])
    reader = SegmentCache(url)
    with caplog.at_level(logging.WARNING, logger="semframe"):
        assert reader.count() == PER_BATCH
    assert any(cut in r.getMessage() and "not a whole Arrow file" in r.getMessage() for r in caplog.records)
    assert cut in reader.segments()
    cache = SegmentCache(url)
    cache.put_many("fp", _batch(0, 2))
    assert cache.compact() == 2  # the two whole segments; the cut one is young: kept
    assert cut in cache.segments()
    time.sleep(1.1)  # object times are whole seconds
    cache.compact(stale_tmp_seconds=0)  # now old enough: removed
    assert cut not in cache.segments() and len(cache.segments()) == 1
    assert SegmentCache(url).count() == 2 * PER_BATCH


class _DeletingFS:
    """Deletes each segment just after opening it (a compactor elsewhere, between HEAD and GET)."""

    def __init__(self, real):
        self.real = real

    def open_input_file(self, path, *args, **kwargs):
        f = self.real.open_input_file(path, *args, **kwargs)
        self.real.delete_file(path)
        return f

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_segment_deleted_while_it_is_read_counts_as_merged(url):
    SegmentCache(url).put_many("fp", _batch(0, 0))
    reader = SegmentCache(url)
    reader._fs = _DeletingFS(reader._fs)
    assert reader.refresh() == 0  # gone (as after a compaction): listed again, not an error
    assert reader.segments() == []


def _leaks(text: str) -> bool:
    return any(s in text for s in (KEY_ID, SECRET, SECRET.replace("+", "%2B"), "SKVALUE0001", "STVALUE0001"))


def test_credentials_in_the_url_are_never_shown(endpoint, s3, caplog):
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_dir(bucket)
    secret_url = f"s3://{KEY_ID}:{SECRET.replace('+', '%2B')}@{bucket}/answers?endpoint_override={endpoint}&scheme=http"
    assert redact_url(secret_url) == f"s3://{bucket}/answers?endpoint_override={endpoint}&scheme=http"
    shown = []
    with caplog.at_level(logging.DEBUG, logger="semframe"):
        cache = SegmentCache(secret_url)
        cache.put_many("fp", _batch(0, 0))  # the server takes any credentials: they work
        assert SegmentCache(secret_url).count() == PER_BATCH
        shown += [repr(cache), str(cache), str(cache.directory), str(cache.path), str(cache.segments_dir)]
        assert str(cache.path) == f"s3://{bucket}/answers/segments?endpoint_override={endpoint}&scheme=http"
        # Error messages: an option pyarrow does not know, a URL it cannot parse, a bucket that is not there,
        # credentials as query parameters (which pyarrow refuses).
        bad = [secret_url + "&nosuch=1", secret_url.replace(bucket, "bad bucket"),
               f"s3://bucket/x?endpoint_override={endpoint}&access_key={KEY_ID}&secret_key=SKVALUE0001"
               "&session_token=STVALUE0001"]
        for wrong in bad:
            with pytest.raises(ValueError) as info:
                SegmentCache(wrong)
            shown.append(str(info.value))
            assert "SegmentCache=" in str(info.value)
            with pytest.raises(ValueError, match="shared_cache") as info:
                sf.RayExecutor(shared_cache=wrong)
            shown.append(str(info.value))
        missing = SegmentCache(secret_url.replace(bucket, f"missing-{bucket}"))
        shown.append(repr(missing))
        with pytest.raises(OSError) as info:
            missing.put_many("fp", _batch(0, 1))
        shown.append(str(info.value))
        ex = sf.RayExecutor(shared_cache=secret_url)
        shown += [repr(ex), str(ex)]
    shown += [r.getMessage() for r in caplog.records if r.name.startswith("semframe")]
    assert not [s for s in shown if _leaks(s)]
    assert ex.shared_cache == secret_url  # handed to the actors as given
    assert f"shared_cache='s3://{bucket}/answers?" in repr(ex)
    assert redact_url("s3://b/p?access_key=AK&Secret_Key=SK&session_token=ST&region=r") == (
        "s3://b/p?access_key=***&Secret_Key=***&session_token=***&region=r")


def test_the_ray_executor_takes_an_object_store_url_without_starting_ray(url, monkeypatch):
    had_ray = "ray" in sys.modules
    monkeypatch.setattr(sf.RayExecutor, "connect", lambda self: pytest.fail("constructing started Ray"))
    ex = sf.RayExecutor(num_actors=2, shared_cache=url)
    assert ex.shared_cache == url  # as given: each actor opens it
    assert repr(ex) == f"RayExecutor(num_actors=2, address='local', shared_cache={url!r})"
    # No region and no endpoint: checked without asking S3 for the bucket's region.
    started = time.monotonic()
    assert sf.RayExecutor(shared_cache="s3://some-bucket/answers").shared_cache == "s3://some-bucket/answers"
    assert sf.RayExecutor(shared_cache="gs://some-bucket/answers").shared_cache == "gs://some-bucket/answers"
    assert time.monotonic() - started < 5
    if not had_ray:
        assert "ray" not in sys.modules
    # A directory stays a directory, made absolute, as before.
    assert sf.RayExecutor(shared_cache="rel/dir").shared_cache.endswith("/rel/dir")
    assert sf.RayExecutor(shared_cache="file:///mnt/x").shared_cache == "/mnt/x"


@pytest.mark.parametrize("where", ["nosuch://x", "s3://bad bucket/x", "s3://", "s3://bucket/x?nosuch=1"])
def test_a_url_pyarrow_cannot_open_fails_early_naming_shared_cache(where):
    with pytest.raises(ValueError, match=r"RayExecutor: shared_cache=") as info:
        sf.RayExecutor(shared_cache=where)
    assert repr(where) in str(info.value)
    with pytest.raises(ValueError, match="SegmentCache="):
        SegmentCache(where)
