"""The ranking verbs, ``topk`` and ``sort``: a mixin of :class:`~semframe.frontends.verbs.SemanticVerbs`.

Both order rows by pairwise comparisons the model answers (see docs/ranking.md for the
algorithms, what they cost and how ties and positional bias are handled).
"""

from __future__ import annotations

from typing import Any

from semframe.errors import PlanError
from semframe.frontends.arguments import resolve_template
from semframe.plan.nodes import Node
from semframe.plan.ranking import SemSort, SemTopK
from semframe.plan.template import Template


def _question(text: Any, where: str) -> Template:
    if not isinstance(text, str):
        raise PlanError(f"{where}: the question must be a template string such as "
                        f"'Which is more urgent: {{a}} or {{b}}?', got {type(text).__name__}")
    return Template.parse(text)


class RankingVerbs:
    """Mixin: builds plan nodes through the frontend's ``_plan()`` / ``_finish()`` hooks."""

    def _plan(self) -> Node:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def topk(self, k: int, question: str, *, column: str, algorithm: str = "auto", both_orders: bool = True,
             instruction: str | None = None, name: str = "rank", cache: bool | None = None,
             **run_options: Any) -> Any:
        """The ``k`` best rows by the model's pairwise judgement, best first, with their rank.

        Parameters
        ----------
        k
            How many rows to keep.
        question
            The comparison, naming the two items ``{a}`` and ``{b}``, e.g.
            ``"Which complaint is more urgent: {a} or {b}?"``. The model answers ``A`` or ``B``.
        column
            What an item is: a column (its text) or a template of columns, e.g.
            ``"{title}: {body}"``. Rows whose item is null or blank are never compared or returned.
        algorithm
            ``"auto"`` (quickselect), ``"quickselect"``: pairwise comparisons in rounds, each round
            one engine batch, about ``2n + 2k ln k`` comparisons; ``"score"``: each row rated once
            (1-10), ``n`` calls in one round, ties by input order.
        both_orders
            Ask each comparison both ways round (twice the calls) so that a model's preference
            for the first or second position cancels out: an item wins only when both answers
            agree; otherwise the earlier row (by input position) wins.
        instruction
            Extra text shared by every comparison.
        name
            The rank column (UInt32, 1 = best).
        cache
            ``False`` skips the persistent exact cache for this step.

        Examples
        --------
        >>> import re, polars as pl, semframe as sf
        >>> df = pl.DataFrame({"ticket": ["printer jam (2)", "server down (9)", "typo (1)", "data loss (7)"]})
        >>> def urgency(request):  # answers from the number in each item's text
        ...     a, b = (int(n) for n in re.findall(r"\\((\\d+)\\)", request.prompt_text)[-2:])
        ...     return "A" if a >= b else "B"
        >>> out = df.semantic.topk(2, "Which ticket is more urgent: {a} or {b}?", column="ticket",
        ...                        engine=sf.DeterministicEngine(responder=urgency))
        >>> out.rows()
        [('server down (9)', 1), ('data loss (7)', 2)]
        """
        plan = self._plan()
        where = "semantic.topk"
        node = SemTopK(plan, _question(question, where), resolve_template(column, plan.columns, where), k,
                       instruction, algorithm, both_orders, name, cache)
        return self._finish(node, run_options)

    def sort(self, question: str, *, column: str, algorithm: str = "auto", both_orders: bool = True,
             instruction: str | None = None, name: str = "rank", cache: bool | None = None,
             **run_options: Any) -> Any:
        """Every row in the model's order, best first, with its rank (see :meth:`topk`).

        Rows whose item is null or blank come last, in input order, with a null rank.
        ``sort(...).head(n)`` runs as ``topk(n, ...)``: far fewer comparisons.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"word": ["kiwi", "fig", "banana"]})
        >>> def longer(request):  # the model's user message is "A: <item>\\n\\nB: <item>"
        ...     a, b = request.messages[-1].content.split("\\n\\nB: ")
        ...     return "A" if len(a) - len("A: ") >= len(b) else "B"
        >>> engine = sf.DeterministicEngine(responder=longer)
        >>> df.semantic.sort("Which word is longer: {a} or {b}?", column="word", engine=engine)["word"].to_list()
        ['banana', 'kiwi', 'fig']
        """
        plan = self._plan()
        where = "semantic.sort"
        node = SemSort(plan, _question(question, where), resolve_template(column, plan.columns, where), None,
                       instruction, algorithm, both_orders, name, cache)
        return self._finish(node, run_options)
