"""The embedding verbs ``embed``, ``search``, ``sim_join``: a mixin of :class:`~semframe.frontends.verbs.SemanticVerbs`.

They ask an embedding engine, never an LLM. ``embedder=`` picks it (an embedding engine, a
sentence-transformers folder or name, or None: the configured one). ``engine=`` names an LLM
engine everywhere else; here an *embedding* engine given as ``engine=`` is taken as the
embedder, and anything else is refused with a message saying so.
"""

from __future__ import annotations

from typing import Any

from semframe.errors import PlanError
from semframe.frontends.arguments import input_plan, resolve_template
from semframe.plan.embedding import SemEmbed, SemSearch, SemSimJoin
from semframe.plan.nodes import Node


def _embedder(embedder: Any, run_options: dict[str, Any], where: str) -> Any:
    """The step's embedder, taking an embedding engine passed as ``engine=``; refusing an LLM engine."""
    from semframe.engines.embedding import EmbeddingEngine

    engine = run_options.pop("engine", None)
    if engine is not None:
        if not isinstance(engine, EmbeddingEngine):
            raise PlanError(f"{where} asks no LLM engine, so it takes no engine= (got {engine!r}); pass the "
                            "embedding model as embedder=... (e.g. sf.HashingEmbedder(), or a model name)")
        if embedder is not None and embedder is not engine:
            raise PlanError(f"{where}: give the embedding engine once, as embedder=..., not also as engine=")
        embedder = engine
    if embedder is not None and not isinstance(embedder, (str, EmbeddingEngine)):
        raise PlanError(f"{where}: embedder must be an embedding engine (sf.HashingEmbedder(), "
                        f"sf.SentenceTransformerEmbedder(), sf.OpenAIEmbedder(...)) or a sentence-transformers "
                        f"model folder or name, got {type(embedder).__name__} {embedder!r}")
    return embedder


def _dimension(embedder: Any, where: str) -> int | None:
    """The vectors' width if known without loading a model (None: the column is a List)."""
    from semframe.engines.embedding import known_dimension

    try:
        return known_dimension(embedder)
    except Exception as exc:  # no model installed, a bad name: the run would fail the same way
        raise PlanError(f"{where}: {exc}") from None


class EmbeddingVerbs:
    """Mixin: builds plan nodes through the frontend's ``_plan()`` / ``_finish()`` hooks."""

    def _plan(self) -> Node:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def embed(self, column: str, *, name: str = "embedding", embedder: Any = None, **run_options: Any) -> Any:
        """Add a column of embeddings: one unit vector (float32) per row, null where the text is
        null or blank.

        Parameters
        ----------
        column
            A column name (its text is embedded) or a template such as ``"{title}: {body}"``.
        name
            The output column: ``Array(Float32, d)`` when the embedder's width ``d`` is known
            without loading it (the default model, ``sf.HashingEmbedder``,
            ``sf.OpenAIEmbedder(dimensions=...)``), else ``List(Float32)``.
        embedder
            An embedding engine, a sentence-transformers folder or name, or None (the configured
            one: ``sf.configure(embedding_model=...)``, else all-MiniLM-L6-v2).

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"title": ["Battle of Waterloo", None]})
        >>> out = df.semantic.embed("title", embedder=sf.HashingEmbedder(dimension=16))
        >>> out.schema["embedding"], out["embedding"].is_null().to_list()
        (Array(Float32, shape=(16,)), [False, True])
        """
        where = "semantic.embed"
        embedder = _embedder(embedder, run_options, where)
        plan = self._plan()
        node = SemEmbed(plan, resolve_template(column, plan.columns, where), name, embedder,
                        _dimension(embedder, where))
        return self._finish(node, run_options)

    def search(self, query: str, column: str, *, k: int = 10, name: str = "score", embedder: Any = None,
               **run_options: Any) -> Any:
        """The ``k`` rows whose text is most similar to ``query``, most similar first, with their
        cosine similarity in column ``name`` (exact search; ties keep input order).

        Parameters
        ----------
        query
            The text to search for.
        column
            A column name or a template (``"{title}: {body}"``); rows whose text is null or
            blank never match.
        k
            How many rows (fewer when fewer rows have a text).
        name
            The similarity column (Float64).
        embedder
            As for :meth:`embed`.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"title": ["Banana bread", "Battle of Waterloo", "Waterloo station"]})
        >>> out = df.semantic.search("battle at waterloo", "title", k=2, embedder=sf.HashingEmbedder())
        >>> out["title"].to_list()
        ['Battle of Waterloo', 'Waterloo station']
        """
        where = "semantic.search"
        embedder = _embedder(embedder, run_options, where)
        plan = self._plan()
        node = SemSearch(plan, query, resolve_template(column, plan.columns, where), k, name, embedder)
        return self._finish(node, run_options)

    def sim_join(self, right: Any, *, left_on: str, right_on: str, k: int = 1, threshold: float | None = None,
                 name: str = "similarity", embedder: Any = None, **run_options: Any) -> Any:
        """Join each row to its ``k`` most similar rows of ``right`` by embedding similarity.

        Output: the left columns, the right columns (a name the left side has too gets the suffix
        ``_right``) and the cosine similarity in column ``name``, left rows in order, each left
        row's matches most similar first. Left rows with no match (null text, or none at or above
        ``threshold``) are dropped. Exact search (ties go to the earlier right row).

        Parameters
        ----------
        right
            The other table: a polars DataFrame or LazyFrame, a semframe lazy frame, or pandas.
        left_on, right_on
            Each side's text: a column name or a template.
        k
            Matches per left row.
        threshold
            Keep only pairs with at least this cosine similarity (None: keep the top ``k``).
        name
            The similarity column (Float64).
        embedder
            As for :meth:`embed`; both sides use the same one.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> people = pl.DataFrame({"name": ["jonh smith", "mary jones"]})
        >>> registry = pl.DataFrame({"name": ["Mary Jones", "John Smith", "Peter Pan"], "id": [1, 2, 3]})
        >>> out = people.semantic.sim_join(registry, left_on="name", right_on="name",
        ...                                embedder=sf.HashingEmbedder())
        >>> out.select("name", "name_right", "id").rows()
        [('jonh smith', 'John Smith', 2), ('mary jones', 'Mary Jones', 1)]
        """
        where = "semantic.sim_join"
        embedder = _embedder(embedder, run_options, where)
        plan = self._plan()
        other = input_plan(right, where)
        node = SemSimJoin(plan, other, resolve_template(left_on, plan.columns, f"{where} (left_on)"),
                          resolve_template(right_on, other.columns, f"{where} (right_on)"), k, threshold, name,
                          embedder)
        return self._finish(node, run_options)
