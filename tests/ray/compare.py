"""The comparison every Ray test makes: a cluster run against the local executor's run."""

from __future__ import annotations

import semframe as sf

#: Lineage columns that must agree (latency is wall time, which differs run to run).
LINEAGE = ["row_id", "step", "operator", "column", "request_key", "model", "source", "source_row_id",
           "raw_output", "value", "probabilities", "error", "finish_reason", "prompt_tokens", "output_tokens",
           "attempts"]
METRICS = ["step", "operator", "rows_in", "rows_out", "engine_requests", "engine_batches", "dedup_hits",
           "exact_cache_hits", "skipped", "errors", "prompt_tokens", "output_tokens"]


def same(local: sf.RunResult, remote: sf.RunResult, batches: bool = True) -> None:
    """Equal results, lineage, metrics and prompts; ``batches``: engine batches too (the data mode
    asks in Ray Data blocks, not in the local executor's batches)."""
    metrics = METRICS if batches else [m for m in METRICS if m != "engine_batches"]
    assert remote.df.equals(local.df)
    assert remote.row_ids.equals(local.row_ids)
    key = ["step", "row_id", "request_key"]
    assert remote.lineage.select(LINEAGE).sort(key, nulls_last=True).equals(
        local.lineage.select(LINEAGE).sort(key, nulls_last=True))
    assert remote.metrics.select(metrics).equals(local.metrics.select(metrics))
    assert remote.prompts.sort("request_key").equals(local.prompts.sort("request_key"))
