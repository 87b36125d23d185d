"""The aggregate verb: a mixin of :class:`~semframe.frontends.verbs.SemanticVerbs`, and the
``group_by(...).semantic`` object of a semframe lazy frame.

``semantic.aggregate`` answers one question per group of rows (see docs/aggregate.md).

On a semframe lazy frame (``SemLazyFrame``), ``lf.group_by("product").semantic.aggregate(...)``
is the same as ``lf.semantic.aggregate(..., by=["product"])``. Polars' own ``GroupBy`` objects
(``pl.LazyFrame.group_by(...)``, ``pl.DataFrame.group_by(...)``) take no namespaces, so
``pl.LazyFrame.group_by(...).semantic`` does not exist: write
``lf.semantic.aggregate(..., by=[...])`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from semframe.errors import PlanError
from semframe.frontends.arguments import resolve_template
from semframe.plan.aggregate import SemAggregate
from semframe.plan.nodes import Call, FrozenList, Node
from semframe.plan.spec import JsonSpec, TextSpec


def _names(value: Any, what: str) -> tuple[str, ...]:
    """``None``, a column name or a list of names -> a tuple of names."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PlanError(f"semantic.aggregate: {what} must be a column name or a list of column names, got {value!r}")


class AggregateVerbs:
    """Mixin: builds plan nodes through the frontend's ``_plan()`` / ``_finish()`` hooks."""

    def _plan(self) -> Node:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def aggregate(self, task: str, column: str, *, by: str | Sequence[str] | None = None, name: str = "aggregate",
                  schema: Any = None, order_by: str | Sequence[str] | None = None, instruction: str | None = None,
                  max_tokens: int | None = None, context_window: int | None = None, cache: bool | None = None,
                  **run_options: Any) -> Any:
        """One answer per group of rows: ``task`` over the texts of each group's rows.

        The rows of each group are rendered (``column``), ordered (input row order, or
        ``order_by`` first), packed into requests that fit the engine's context window by
        tokens, and reduced level by level (partial answers combined) until one answer per group
        remains. The result has one row per group: the ``by`` columns, then ``name``; groups in
        order of first appearance (by input row).

        Parameters
        ----------
        task
            What to answer about the rows, e.g. ``"Summarize the complaints"``.
        column
            A column name (its text) or a template such as ``"{title}: {body}"``. Rows whose
            input is null or blank are left out (no prompt, no lineage); a group with no text
            at all gets a null answer.
        by
            Group key column(s); None: one answer for the whole input.
        name
            The answer column.
        schema
            None for a text answer; a dict of field name -> type or a pydantic model (as in
            ``extract``) for a struct answer.
        order_by
            Column(s) that order the rows of a group before packing (ascending, nulls last,
            ties by input row); None: input row order.
        instruction
            Extra guidance after the task (length, tone, language ...).
        max_tokens
            The most tokens per answer, partial or final (default: 256 for text, from the
            schema for a struct).
        context_window
            Tokens (prompt plus answer) each request must fit; None: the engine's
            (``Engine.context_window``; ``max_model_len`` for vLLM), else 2048.
        cache
            ``False`` skips the persistent exact cache for this step.

        Examples
        --------
        >>> import polars as pl, semframe as sf
        >>> df = pl.DataFrame({"product": ["phone", "phone", "lamp"],
        ...                    "review": ["battery dies", "screen cracked", "too dim"]})
        >>> engine = sf.DeterministicEngine(responder=lambda r: "complaints noted")
        >>> df.semantic.aggregate("Summarize the complaints", "review", by="product", engine=engine).rows()
        [('phone', 'complaints noted'), ('lamp', 'complaints noted')]
        >>> lf = sf.SemLazyFrame.from_data(df).group_by("product").semantic.aggregate("Summarize", "review", name="gist")
        >>> lf.collect(engine=engine).columns
        ['product', 'gist']
        """
        plan = self._plan()
        where = "semantic.aggregate"
        spec = TextSpec() if schema is None else JsonSpec.from_schema(schema, where)
        node = SemAggregate(
            plan, task, resolve_template(column, plan.columns, where), spec, _names(by, "by"), name,
            _names(order_by, "order_by"), instruction, max_tokens, context_window, cache,
        )
        return self._finish(node, run_options)


class GroupedSemantic:
    """``SemLazyFrame.group_by(keys).semantic``: only :meth:`aggregate`, grouped by ``keys``."""

    def __init__(self, verbs: AggregateVerbs, keys: tuple[str, ...]):
        self._verbs = verbs
        self._keys = keys

    def aggregate(self, task: str, column: str, **kwargs: Any) -> Any:
        """``semantic.aggregate(task, column, by=<the group_by keys>, ...)``; see :meth:`AggregateVerbs.aggregate`."""
        if "by" in kwargs:
            raise PlanError("group_by(...).semantic.aggregate: the groups are the group_by keys; "
                            "do not pass by= as well")
        return self._verbs.aggregate(task, column, by=list(self._keys), **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise PlanError(f"group_by(...).semantic has only aggregate(), not {name!r}; for a row-wise verb, call "
                        f".semantic.{name}(...) on the frame itself")


def group_keys(calls: tuple[Call, ...]) -> tuple[str, ...]:
    """The key columns of a pending ``group_by("a", "b")`` chain, or a PlanError saying why not."""
    if len(calls) != 1 or calls[0].name != "group_by":
        chain = ".".join(c.name for c in calls)
        raise PlanError(f"{chain}(...).semantic: .semantic after a pending chain works only right after "
                        "group_by(...) (as group_by(keys).semantic.aggregate(...))")
    call = calls[0]
    keys: list[str] = []
    for arg in call.args:
        values = list(arg) if isinstance(arg, (FrozenList, list, tuple)) else [arg]
        if not all(isinstance(v, str) for v in values):
            raise PlanError("group_by(...).semantic.aggregate groups by plain column names only, got "
                            f"{arg!r}; add the key with with_columns(...) first, or pass by=[...] to "
                            "semantic.aggregate")
        keys.extend(values)
    extra = [k for k, _ in call.kwargs if k != "maintain_order"]
    if extra:
        raise PlanError(f"group_by(...).semantic.aggregate takes no group_by option {extra[0]!r} (groups come out "
                        "in order of first appearance); pass plain column names")
    if not keys:
        raise PlanError("group_by().semantic.aggregate: name at least one key column")
    return tuple(keys)
