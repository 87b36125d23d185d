"""The join verb: a mixin of :class:`~semframe.frontends.verbs.SemanticVerbs`."""

from __future__ import annotations

from typing import Any

from semframe.frontends.arguments import input_plan
from semframe.plan.join import SemJoin, join_template
from semframe.plan.nodes import Node


class JoinVerbs:
    """Mixin: builds plan nodes through the frontend's ``_plan()`` / ``_finish()`` hooks."""

    def _plan(self) -> Node:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def join(self, right: Any, template: str, *, how: str = "inner", algorithm: str = "auto",
             candidates: int = 10, audit: int = 100, instruction: str | None = None,
             max_tokens: int | None = None, temperature: float = 0.0, cache: bool | None = None,
             approx: Any = None, **run_options: Any) -> Any:
        """Pairs of rows, one from this frame and one from ``right``, for which the model answers YES.

        Parameters
        ----------
        right
            The other input: a polars DataFrame or LazyFrame, a pandas DataFrame or a semframe
            lazy frame.
        template
            The question about one pair, naming columns by side:
            ``"Is {left.ticket} about {right.product}?"``. A plain ``{x}`` is allowed where ``x``
            is a column of exactly one side.
        how
            ``"inner"`` (matched pairs only) or ``"left"`` (also every left row with no match,
            its right columns null).
        algorithm
            ``"auto"`` (default: the cheapest by estimated calls x tokens; ``explain()`` shows the
            choice and every alternative's estimate), ``"nested_loop"`` (every pair),
            ``"blocking"`` (each left row's ``candidates`` most similar right rows by embedding,
            plus an audit of pairs outside the blocks) or ``"classify"`` (a small right side listed
            in the prompt; one request per left row picks the matching items).
        candidates
            Right rows per left row that blocking asks about.
        audit
            Random pairs outside the blocks that blocking asks about to estimate its recall
            (reported in ``sf.last_run().step_metrics[i].notes``); 0 turns the audit off.
        instruction
            Text shared by every request, before the question.
        max_tokens, temperature
            Decoding limits.
        cache
            ``False`` keeps this step out of the persistent exact cache.
        approx
            ``sf.Target(recall=r, confidence=c)``: blocking widens its blocks until a recall of at
            least ``r`` is certified on a random sample of pairs (docs/approximation.md, "A recall
            target on join"); every pair returned was asked.

        Returns
        -------
        The left columns, then the right columns (a right column whose name is a left column too
        gets the suffix ``_right``), one row per matched pair, ordered by (left row, right row).

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> tickets = pl.DataFrame({"ticket": ["my phone will not charge", "the blender is loud"]})
        >>> products = pl.DataFrame({"product": ["phone", "blender", "kettle"]})
        >>> gold = {("my phone will not charge", "phone"), ("the blender is loud", "blender")}
        >>> def judge(request):
        ...     text = request.messages[-1].content          # "Is <ticket> about <product>?"
        ...     ticket, product = text[3:-1].split(" about ")
        ...     return "YES" if (ticket, product) in gold else "NO"
        >>> out = tickets.semantic.join(products, "Is {left.ticket} about {right.product}?",
        ...                             algorithm="nested_loop", engine=sf.DeterministicEngine(responder=judge))
        >>> out.rows()
        [('my phone will not charge', 'phone'), ('the blender is loud', 'blender')]
        >>> sf.last_run().engine_requests                    # 2 x 3 pairs
        6
        >>> sf.last_run().row_ids.to_list()                  # (left row, right row) of each output row
        [{'left': 0, 'right': 0}, {'left': 1, 'right': 1}]
        """
        plan = self._plan()
        where = "semantic.join"
        other = input_plan(right, where)
        node = SemJoin(plan, other, join_template(template, plan.columns, other.columns, where), how=how,
                       algorithm=algorithm, candidates=candidates, audit=audit, instruction=instruction,
                       max_tokens=max_tokens, temperature=temperature, cache=cache, approx=approx)
        return self._finish(node, run_options)
