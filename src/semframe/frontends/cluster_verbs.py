"""The cluster, dedup verb(s) (being built): a mixin of :class:`~semframe.frontends.verbs.SemanticVerbs`."""

from __future__ import annotations

from typing import Any

from semframe.plan.nodes import Node


class ClusterVerbs:
    """Mixin: builds plan nodes through the frontend's ``_plan()`` / ``_finish()`` hooks."""

    def _plan(self) -> Node:  # pragma: no cover - provided by the frontend
        raise NotImplementedError

    def _finish(self, node: Node, run_options: dict[str, Any]) -> Any:  # pragma: no cover - provided by the frontend
        raise NotImplementedError
