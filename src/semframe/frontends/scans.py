"""Plans that start from files, and plans read back from plan files.

``sf.scan_parquet(path)`` (and ``scan_csv``, ``scan_ndjson``, ``scan_ipc``) is ``pl.scan_parquet``
for semframe: a lazy scan (polars pushes filters and projections into it) that remembers its path
and options, so the plan saves to a plan file (``plan.serialize()``) and runs elsewhere
(``semframe run plan.json``). ``sf.deserialize(...)`` reads a plan file back.

>>> import polars as pl, semframe as sf, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "titles.parquet")
>>> pl.DataFrame({"title": ["Battle of Waterloo", "Banana bread"]}).write_parquet(path)
>>> plan = sf.scan_parquet(path).semantic.classify("title", ["YES", "NO"], name="war")
>>> sf.deserialize(plan.serialize()).collect(engine=sf.DeterministicEngine()).columns
['title', 'war']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from semframe.errors import PlanError
from semframe.frontends.lazy import SemLazyFrame
from semframe.plan.nodes import Scan, Source


def _scan(kind: str, path: Any, options: dict[str, Any]) -> SemLazyFrame:
    return SemLazyFrame(Scan(Source.from_file(kind, path, **options)))


def scan_parquet(path: str | os.PathLike | list[str], **options: Any) -> SemLazyFrame:
    """A plan reading Parquet file(s) lazily (``pl.scan_parquet``'s options), saved by path."""
    return _scan("parquet", path, options)


def scan_csv(path: str | os.PathLike | list[str], **options: Any) -> SemLazyFrame:
    """A plan reading CSV file(s) lazily (``pl.scan_csv``'s options, e.g. ``separator``), saved by path."""
    return _scan("csv", path, options)


def scan_ndjson(path: str | os.PathLike | list[str], **options: Any) -> SemLazyFrame:
    """A plan reading newline-delimited JSON lazily (``pl.scan_ndjson``'s options), saved by path."""
    return _scan("ndjson", path, options)


def scan_ipc(path: str | os.PathLike | list[str], **options: Any) -> SemLazyFrame:
    """A plan reading Arrow IPC (Feather v2) file(s) lazily (``pl.scan_ipc``'s options), saved by path."""
    return _scan("ipc", path, options)


def deserialize(source: Any, *, import_models: bool = False,
                base_dir: str | os.PathLike | None = None) -> SemLazyFrame:
    """The plan in a plan file (what ``SemLazyFrame.serialize()`` wrote), as a :class:`SemLazyFrame`.

    Parameters
    ----------
    source
        The JSON text, its bytes, the parsed dict, a file path, or a file object.
    import_models
        Allow importing the module of a pydantic model an ``extract`` step names (code from that
        module runs). Off by default: loading a plan file otherwise never runs code.
    base_dir
        Where relative file paths in the plan are resolved (None: the current directory).

    Raises :class:`semframe.PlanError` naming what is wrong with the file.
    """
    from semframe.plan.serialize import loads, plan_from_dict

    kw = {"import_models": import_models, "base_dir": base_dir}
    if isinstance(source, dict):
        return SemLazyFrame(plan_from_dict(source, **kw))
    if isinstance(source, (bytes, bytearray)):
        return SemLazyFrame(loads(bytes(source), **kw))
    if hasattr(source, "read"):
        return SemLazyFrame(loads(source.read(), **kw))
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return SemLazyFrame(loads(source, **kw))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise PlanError(f"deserialize: no plan file {str(path)!r}")
        return SemLazyFrame(loads(path.read_bytes(), **kw))
    raise PlanError(f"deserialize: expected JSON text, a path or a file, got {type(source).__name__}")
