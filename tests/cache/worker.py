"""A separate process that runs a plan against a shared cache directory (used by the tests and by
``benchmarks/kill_trials.py``).

    python worker.py CACHE_DIR N_ROWS BATCH_SIZE SLEEP_S PROGRESS_FILE [OFFSET]

Classifies N_ROWS distinct texts ("item <offset+i>") with a DeterministicEngine that sleeps
SLEEP_S per engine batch and appends one line per batch to PROGRESS_FILE (the batch's size)
before answering it. After each batch's answers are stored in the cache (``put_many`` returned,
so they are committed), it appends their number to PROGRESS_FILE + ".stored". Prints the number
of requests the engine saw.
"""

from __future__ import annotations

import os
import sys
import time


def plan(n_rows: int, offset: int = 0):
    import polars as pl

    df = pl.DataFrame({"text": [f"item {offset + i}" for i in range(n_rows)]})
    return df.lazy().semantic.classify("text", ["A", "B", "C"], instruction="Pick a letter.")


def main() -> None:
    cache_dir, n_rows, batch_size, sleep_s, progress = sys.argv[1:6]
    offset = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    os.environ["SEMFRAME_CACHE_DIR"] = cache_dir
    import semframe as sf
    from semframe.cache.exact import ExactCache

    class SlowEngine(sf.DeterministicEngine):
        def _generate(self, requests):
            with open(progress, "a") as f:
                f.write(f"{len(requests)}\n")
            time.sleep(float(sleep_s))
            return super()._generate(requests)

    put_many = ExactCache.put_many

    def recorded_put_many(self, fingerprint, items):
        items = [item for item in items if item[2].ok]
        put_many(self, fingerprint, items)
        with open(progress + ".stored", "a") as f:
            f.write(f"{len(items)}\n")

    ExactCache.put_many = recorded_put_many
    engine = SlowEngine()
    plan(int(n_rows), offset).run(engine, batch_size=int(batch_size))
    print(engine.requests_seen)


if __name__ == "__main__":
    main()
