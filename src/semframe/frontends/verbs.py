"""The semantic verbs, shared by every frontend: each builds one plan node.

Frontends differ only in where the plan starts (a polars DataFrame or LazyFrame, a pandas
DataFrame, a semframe lazy frame) and in what they return (a lazy frame, or the collected
result); :class:`SemanticVerbs` takes both as hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from semframe.frontends.aggregate_verbs import AggregateVerbs
from semframe.frontends.arguments import (  # noqa: F401  (re-exported: the CLI uses them)
    _labels,
    _semantic_cache,
    resolve_template,
)
from semframe.frontends.cluster_verbs import ClusterVerbs
from semframe.frontends.embedding_verbs import EmbeddingVerbs
from semframe.frontends.join_verbs import JoinVerbs
from semframe.frontends.ranking_verbs import RankingVerbs
from semframe.errors import PlanError
from semframe.plan.approx import SemApproxClassify, SemApproxFilter
from semframe.plan.nodes import Node
from semframe.plan.semantic import SemClassify, SemExtract, SemFilter, SemMap
from semframe.plan.spec import ChoiceSpec, JsonSpec, TextSpec

class SemanticVerbs(JoinVerbs, AggregateVerbs, RankingVerbs, EmbeddingVerbs, ClusterVerbs):
    """Every semantic verb; subclasses say where plans start (:meth:`_plan`) and how they end
    (:meth:`_finish`: a lazy frame, or the collected result).

    The row-wise verbs (``classify``, ``filter``, ``extract``, ``map``) are here; the others come
    from one mixin per operator family (join, aggregate, ranking, embedding, cluster), each in its
    own module, over the same two hooks.
    """

    def _plan(self) -> Node:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, column: str, labels: Sequence[str], *, instruction: str | None = None,
                 name: str = "classify", max_tokens: int | None = None, temperature: float = 0.0,
                 cache: bool | None = None, semantic_cache: bool | float | None = None,
                 probabilities: bool = False, approx: Any = None, proxy: Any = None,
                 **run_options: Any) -> Any:
        """Label each row with one of ``labels`` (a string column; null where no answer).

        Parameters
        ----------
        column
            A column name (its text is classified) or a template such as ``"{title}: {body}"``.
        labels
            The possible answers, e.g. ``["positive", "negative", "neutral"]``.
        instruction
            The task, shared by every row, e.g. ``"Is the title about European history?"``.
        name
            The output column.
        max_tokens, temperature
            Decoding limits (the default max_tokens fits the longest label).
        cache
            ``False`` skips the persistent exact cache for this step.
        semantic_cache
            ``True`` (or a similarity threshold) reuses answers for near-duplicate texts.
        probabilities
            ``True`` adds ``<name>_probabilities``: a struct of one Float64 per label, the
            engine's probability of each label for the row (null where the engine gave none:
            see docs/engines.md, "Labels in one decode step").
        approx
            ``sf.Target(accuracy=..., confidence=...)``: let a proxy answer the rows where its
            accuracy (agreement with this step's engine) is certified on a calibration sample;
            the engine answers the rest (see docs/approximation.md).
        proxy
            With ``approx``: ``None`` / ``"learned"`` (logistic regression on embeddings of the
            default embedder, trained on the calibration answers), an embedding engine (the
            learned proxy on its embeddings, e.g. ``sf.HashingEmbedder()``), a cheaper engine
            (or engine name) for a cascade, ``"neighbour"`` (the oracle answer of the most similar
            reference row of the calibration sample, scored by that cosine similarity), or a list
            of those (``[sf.HashingEmbedder(), "small"]``): combined sources, each answering the
            rows it is certified for that no earlier one answered, the engine the rest.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"review": ["Great!", "Awful."]})
        >>> out = df.semantic.classify("review", ["pos", "neg"], engine=sf.DeterministicEngine())
        >>> out.columns
        ['review', 'classify']
        >>> out = df.semantic.classify("review", ["pos", "neg"], probabilities=True, engine=sf.DeterministicEngine())
        >>> out.schema["classify_probabilities"]
        Struct({'pos': Float64, 'neg': Float64})
        """
        plan = self._plan()
        where = "semantic.classify"
        node = (SemClassify if approx is None else SemApproxClassify)(
            plan, resolve_template(column, plan.columns, where), instruction, _labels(labels),
            name, max_tokens, temperature, cache=cache, semantic_cache=_semantic_cache(semantic_cache, where),
            probabilities=probabilities, **_approx_fields(approx, proxy, where),
        )
        return self._finish(node, run_options)

    def filter(self, question: str, *, instruction: str | None = None, max_tokens: int | None = None,
               temperature: float = 0.0, cache: bool | None = None,
               semantic_cache: bool | float | None = None, approx: Any = None, proxy: Any = None,
               **run_options: Any) -> Any:
        """Keep the rows for which the model answers YES to ``question``.

        ``question`` is a template such as ``"Is {title} about a war?"`` (or a column name whose
        text is the question). Rows with no answer (null input, a failed answer) are dropped,
        as polars drops rows whose predicate is null.

        ``approx=sf.Target(...)`` and ``proxy=`` work as for :meth:`classify`: a proxy answers
        YES or NO where its accuracy is certified. ``approx=sf.Target(precision=..., recall=...)``
        (either or both) targets the rows kept instead, against the rows the engine would keep
        (SUPG; see docs/approximation.md).

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"title": ["War and Peace", "Cooking"]})
        >>> yes = sf.DeterministicEngine(responder=lambda r: "YES" if "War" in r.prompt_text else "NO")
        >>> df.semantic.filter("Is {title} about a war?", engine=yes)["title"].to_list()
        ['War and Peace']
        """
        plan = self._plan()
        where = "semantic.filter"
        node = (SemFilter if approx is None else SemApproxFilter)(
            plan, resolve_template(question, plan.columns, where), instruction, ChoiceSpec(("YES", "NO")),
            None, max_tokens, temperature, cache=cache, semantic_cache=_semantic_cache(semantic_cache, where),
            **_approx_fields(approx, proxy, where),
        )
        return self._finish(node, run_options)

    def extract(self, column: str, schema: Any, *, instruction: str | None = None, name: str = "extract",
                max_tokens: int | None = None, temperature: float = 0.0, cache: bool | None = None,
                semantic_cache: bool | float | None = None, **run_options: Any) -> Any:
        """Extract typed fields from each row into a struct column.

        ``schema`` is a dict of field name -> type (``str``, ``int``, ``float``, ``bool``,
        ``list[str]``, ``Optional[...]``) or a pydantic model. The engine decodes under the
        schema's JSON schema, so answers parse; a row whose answer still does not fit gets null.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"title": ["Battle of Hastings, 1066"]})
        >>> out = df.semantic.extract("title", {"place": str, "year": int}, name="facts",
        ...                           engine=sf.DeterministicEngine())
        >>> out.schema["facts"]
        Struct({'place': String, 'year': Int64})
        """
        plan = self._plan()
        where = "semantic.extract"
        node = SemExtract(
            plan, resolve_template(column, plan.columns, where), instruction, JsonSpec.from_schema(schema, where),
            name, max_tokens, temperature, cache=cache, semantic_cache=_semantic_cache(semantic_cache, where),
        )
        return self._finish(node, run_options)

    def map(self, template: str, *, name: str = "map", instruction: str | None = None,
            max_tokens: int | None = None, temperature: float = 0.0, cache: bool | None = None,
            semantic_cache: bool | float | None = None, **run_options: Any) -> Any:
        """Free text for each row, e.g. ``map("Summarize {title} in five words.", name="gist")``.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"title": ["The history of Rome"]})
        >>> df.semantic.map("Summarize {title}.", name="gist", engine=sf.DeterministicEngine())["gist"][0]
        'echo: Summarize The history of Rome.'
        """
        plan = self._plan()
        where = "semantic.map"
        node = SemMap(
            plan, resolve_template(template, plan.columns, where), instruction, TextSpec(),
            name, max_tokens, temperature, cache=cache, semantic_cache=_semantic_cache(semantic_cache, where),
        )
        return self._finish(node, run_options)


def _approx_fields(approx: Any, proxy: Any, where: str) -> dict[str, Any]:
    """The approximate node's extra fields (none without ``approx``); an embedding engine as
    ``proxy`` means the learned proxy on its vectors."""
    if approx is None:
        if proxy is not None:
            raise PlanError(f"{where}: proxy= needs a target; pass approx=sf.Target(accuracy=..., confidence=...)")
        return {}
    if isinstance(proxy, (list, tuple)):  # combined sources, in the order they answer
        embedders = [p for p in proxy if _is_embedder(p)]
        if len(embedders) > 1:
            raise PlanError(f"{where}: proxy= lists {len(embedders)} embedding engines; the learned proxy is one "
                            "source, give one embedder")
        sources = tuple("learned" if _is_embedder(p) else p for p in proxy)
        return {"approx": approx, "proxy": sources, "embedder": embedders[0] if embedders else None}
    if _is_embedder(proxy):
        return {"approx": approx, "proxy": "learned", "embedder": proxy}
    return {"approx": approx, "proxy": proxy}


def _is_embedder(value: Any) -> bool:
    """True for an embedding engine (``proxy=`` then means the learned proxy on its vectors)."""
    from semframe.engines.embedding import EmbeddingEngine

    return isinstance(value, EmbeddingEngine)
