"""kill -9 at random moments, many times: no answer lost, at most one batch repeated per kill.

Each trial starts a real worker process (``tests/cache/worker.py``) on a cache directory shared
by all trials (so each resumes the previous ones' work), kills it with SIGKILL after a random
time, and compares what the worker reported (batches the engine started, answers whose
``put_many`` returned) with what the cache holds (see ``tests/cache/trials.py``). When a
worker finishes the whole plan before its kill, the next trial starts on a fresh directory.
At the end a last run resumes every directory and must equal an uninterrupted run.

Prints a table (one row per trial) and a summary; writes nothing.

    .venv/bin/python benchmarks/kill_trials.py [--trials 24] [--rows 600] [--batch 16] [--sleep 0.01] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cache.trials import cached, corrupt_files, kill_trial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sleep", type=float, default=0.01, help="seconds the engine takes per batch")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    import semframe as sf
    from tests.cache.worker import plan

    work = Path(tempfile.mkdtemp(prefix="sf-kill-trials-"))
    dirs = [work / "cache0"]
    print(f"seed {seed}; {args.rows} rows, batches of {args.batch}, {args.sleep * 1000:.0f} ms per engine batch\n")
    print("| trial | cache | killed after (s) | in cache before | asked | stored (reported) | in cache after "
          "| lost | repeated |")  # lost < 0: committed, not yet reported
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    trials = []
    bad = []
    for k in range(args.trials):
        cache_dir = dirs[-1]
        t = kill_trial(cache_dir, work / f"progress{k}", rng, n_rows=args.rows, batch_size=args.batch,
                       sleep_s=args.sleep)
        trials.append(t)
        killed = "finished" if t.finished else f"{t.kill_after_s:.3f}"
        print(f"| {k + 1} | {cache_dir.name} | {killed} | {t.before} | {t.asked} | {t.stored} | {t.after} "
              f"| {t.lost} | {t.repeated} |", flush=True)
        if t.lost > 0 or t.repeated > args.batch or corrupt_files(cache_dir):
            bad.append(k + 1)
        if t.after >= args.rows:
            dirs.append(work / f"cache{len(dirs)}")

    # Resume each directory to the end: the result must equal an uninterrupted run.
    sf.configure(cache_dir=work / "uninterrupted")
    expected = plan(args.rows).run(sf.DeterministicEngine(), batch_size=args.batch).df
    resumed_ok = True
    for d in dirs:
        if not (d / "answers").exists():
            continue
        sf.configure(cache_dir=d)
        before = cached(d)
        engine = sf.DeterministicEngine()
        got = plan(args.rows).run(engine, batch_size=args.batch).df
        resumed_ok &= got.equals(expected) and engine.requests_seen == args.rows - before

    kills = [t for t in trials if not t.finished]
    worst = max((t.repeated for t in kills), default=0)
    print()
    print(f"{len(kills)} kills ({len(trials) - len(kills)} workers finished first); answers lost: "
          f"{sum(max(0, t.lost) for t in trials)}; repeated per kill: max {worst}, "
          f"mean {sum(t.repeated for t in kills) / max(1, len(kills)):.1f} (one batch = {args.batch}); "
          f"corrupt files: {sum(len(corrupt_files(d)) for d in dirs)}; "
          f"resumed runs equal an uninterrupted run: {'yes' if resumed_ok else 'NO'}")
    if bad or not resumed_ok:
        print(f"FAILED trials: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
