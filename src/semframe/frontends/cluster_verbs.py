"""The cluster and dedup verbs: a mixin of :class:`~semframe.frontends.verbs.SemanticVerbs`.

Both read a whole column (embeddings, then the LLM), keep every row in order and add columns;
see docs/cluster-dedup.md.
"""

from __future__ import annotations

from typing import Any

from semframe.frontends.arguments import resolve_template
from semframe.plan.cluster import SemCluster, SemDedup
from semframe.plan.nodes import Node


class ClusterVerbs:
    """Mixin: builds plan nodes through the frontend's ``_plan()`` / ``_finish()`` hooks."""

    def _plan(self) -> Node:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def cluster(self, column: str, *, k: int = 8, name: str = "cluster", label: bool = True,
                instruction: str | None = None, embedder: Any = None, seed: int = 0,
                cache: bool | None = None, **run_options: Any) -> Any:
        """Group rows by the meaning of their text, and name each group.

        The column's text is embedded, k-means (scikit-learn, ``random_state=seed``) splits the
        rows into ``k`` clusters, and with ``label=True`` the model names each cluster from the
        few distinct rows nearest its centroid: ``k`` engine requests in all, whatever the
        number of rows.

        Parameters
        ----------
        column
            A column name (its text is clustered) or a template such as ``"{title}: {body}"``.
        k
            The number of clusters: at least 1, and (checked when the step runs, before it asks
            anything) at most the number of distinct texts.
        name
            The cluster id column: Int32, ``0..k-1`` numbered in order of first appearance (the
            first row is in cluster 0); null for a row with no text. The label column is
            ``<name>_label`` (String).
        label
            Ask the model for a label per cluster; ``False``: ids only (no engine).
        instruction
            What the label request asks (default: a short label of at most five words).
        embedder
            An embedding engine (``sf.HashingEmbedder()`` ...) or any object with ``.embed(texts)``
            returning one unit vector per text, or a sentence-transformers model name or folder
            (None: the process's embedder, all-MiniLM-L6-v2 unless configured).
        seed
            k-means' seed: the same data and seed give the same clusters.
        cache
            ``False`` keeps the label requests out of the persistent exact cache.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> class Letters:  # a toy embedder: texts starting alike are alike
        ...     def embed(self, texts):
        ...         import numpy as np
        ...         return np.array([[t[0] == "a", t[0] == "b", 0.1] for t in texts], dtype=np.float32)
        >>> df = pl.DataFrame({"word": ["apple", "banana", "avocado", "blueberry", None]})
        >>> out = df.semantic.cluster("word", k=2, embedder=Letters(), engine=sf.DeterministicEngine())
        >>> out["cluster"].to_list()
        [0, 1, 0, 1, None]
        >>> out.columns
        ['word', 'cluster', 'cluster_label']
        """
        plan = self._plan()
        node = SemCluster(plan, resolve_template(column, plan.columns, "semantic.cluster"), k, name, label,
                          instruction, embedder, seed, cache=cache)
        return self._finish(node, run_options)

    def dedup(self, column: str, *, name: str = "entity", question: str | None = None, candidates: int = 5,
              threshold: float | None = None, canonical: bool = False, embedder: Any = None,
              cache: bool | None = None, **run_options: Any) -> Any:
        """Entity resolution: find the rows that describe the same thing.

        Each row's ``candidates`` nearest rows by embedding become candidate pairs (each
        unordered pair once); the model answers ``question`` YES or NO for each pair, and the
        YES pairs are closed transitively (a~b and b~c make a, b and c one entity). At most
        ``n * candidates`` engine requests instead of all ``n * (n - 1) / 2`` pairs.

        Parameters
        ----------
        column
            A column name (its text is the record) or a template such as ``"{name}, {city}"``.
        name
            The entity id column (Int64): the position, in the frame this step sees, of the
            entity's first row (so ``df[entity]`` is its first row); null for a row with no text.
        question
            The YES/NO question for a pair (default: "Do these two records refer to the same
            entity?"). The two records follow it as ``Record 1: ...`` and ``Record 2: ...``.
        candidates
            Nearest neighbours per row that are asked about.
        threshold
            Ask only about neighbours at least this similar (cosine similarity); None: all.
        canonical
            Add ``<name>_canonical``: the model's canonical value of each entity (one request per
            entity whose rows hold two or more distinct texts; other rows keep their own text).
        embedder
            As for :meth:`cluster`.
        cache
            ``False`` keeps the step's requests out of the persistent exact cache.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> class Letters:  # a toy embedder: records starting alike are near each other
        ...     def embed(self, texts):
        ...         import numpy as np
        ...         return np.array([[t[0] == "J", t[0] == "M", 0.1] for t in texts], dtype=np.float32)
        >>> same = lambda r: "YES" if "1: Jon" in r.prompt_text and "2: Jon" in r.prompt_text else "NO"
        >>> df = pl.DataFrame({"who": ["Jon Smith", "Mary Jones", "Jon Smith Jr", "Maria Jonas"]})
        >>> out = df.semantic.dedup("who", candidates=1, embedder=Letters(),
        ...                         engine=sf.DeterministicEngine(responder=same))
        >>> out["entity"].to_list()
        [0, 1, 0, 3]
        """
        plan = self._plan()
        node = SemDedup(plan, resolve_template(column, plan.columns, "semantic.dedup"), name, question, candidates,
                        threshold, canonical, embedder, cache=cache)
        return self._finish(node, run_options)
