"""semframe: semantic DataFrame operators, planned lazily, optimized, run on a local vLLM engine.

Importing semframe registers ``.semantic`` on polars DataFrame and LazyFrame (and on pandas
DataFrame when pandas is installed). It imports no heavy library: vLLM and torch load only when
the first engine starts.

>>> import polars as pl, semframe as sf
>>> df = pl.DataFrame({"title": ["Battle of Waterloo", "Banana bread"]})
>>> df.semantic.classify("title", ["YES", "NO"], instruction="Is it about European history?",
...                      engine=sf.DeterministicEngine()).columns
['title', 'classify']
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from semframe import accounting, frontends as _frontends  # noqa: F401
from semframe.accounting.prices import register_machine_price, register_price, unregister_price
from semframe.configure import configure
from semframe.engines import DeterministicEngine, Engine, Request
from semframe.errors import BudgetExceeded, EngineError, EngineFailure, OutputError, PlanError, SemframeError
from semframe.execution.context import RunOptions, last_run
from semframe.execution.result import RunResult
from semframe.plan.approx import Target
from semframe.frontends import polars as _polars_front  # noqa: F401  (registers the namespaces)
from semframe.frontends.lazy import SemLazyFrame
from semframe.frontends.scans import deserialize, scan_csv, scan_ipc, scan_ndjson, scan_parquet

if importlib.util.find_spec("pandas") is not None:
    from semframe.frontends import pandas as _pandas_front  # noqa: F401

if TYPE_CHECKING:
    from semframe.engines.openai import OpenAIEngine
    from semframe.engines.vllm import VLLMEngine

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "DeterministicEngine",
    "Engine",
    "EngineError",
    "EngineFailure",
    "HashingEmbedder",
    "OpenAIEmbedder",
    "OpenAIEngine",
    "OutputError",
    "PlanError",
    "RayExecutor",
    "Request",
    "RunOptions",
    "RunResult",
    "SemLazyFrame",
    "SentenceTransformerEmbedder",
    "SemframeError",
    "Target",
    "VLLMEngine",
    "accounting",
    "configure",
    "deserialize",
    "duckdb",
    "last_run",
    "read_batch_results",
    "register_machine_price",
    "register_price",
    "scan_csv",
    "scan_ipc",
    "scan_ndjson",
    "scan_parquet",
    "unregister_price",
]


def __getattr__(name: str) -> Any:
    if name == "VLLMEngine":
        from semframe.engines.vllm import VLLMEngine

        return VLLMEngine
    if name == "OpenAIEngine":  # imports httpx only when used
        from semframe.engines.openai import OpenAIEngine

        return OpenAIEngine
    if name == "RayExecutor":  # imports ray only when a plan runs on it (docs/scale-out.md)
        from semframe.physical.ray import RayExecutor

        return RayExecutor
    if name == "read_batch_results":  # batch files (docs/engines.md, "Batch files")
        from semframe.physical.batchfile import read_batch_results

        return read_batch_results
    if name in ("HashingEmbedder", "SentenceTransformerEmbedder", "OpenAIEmbedder"):  # embedding engines
        from semframe.engines import embedding

        return getattr(embedding, name)
    if name == "duckdb":  # sf.duckdb.register(con): SQL functions (imports duckdb only when used)
        import importlib

        return importlib.import_module("semframe.frontends.duckdb")
    raise AttributeError(f"module 'semframe' has no attribute {name!r}")
