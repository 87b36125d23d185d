"""Registering semframe's verbs on polars and pandas frames, beside other libraries.

semframe's verbs live in two namespaces on each frame type (polars DataFrame and LazyFrame,
pandas DataFrame): ``.semantic`` and its alias ``.sf``. Other libraries register a ``.semantic``
too (DocETL does on pandas), and polars' and pandas' registration functions simply overwrite
an existing one, with a generic warning -- so importing both libraries silently breaks one.

So semframe looks before it registers. If a frame type already has a ``.semantic`` that is not
semframe's, semframe leaves it in place (the other library keeps working), warns once naming
that library, and is reachable as ``.sf`` -- which it always registers, whatever else exists:
``df.sf.classify(...)`` works in every case. (A library imported *after* semframe that registers
``.semantic`` takes it over, with polars' or pandas' own warning; ``.sf`` still works.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

#: The namespace semframe's docs use, and the alias that is always semframe's.
NAMESPACE = "semantic"
ALIAS = "sf"

_warned: set[tuple[str, str]] = set()


class NamespaceConflictWarning(UserWarning):
    """Another library already registered ``.semantic`` on a frame type; use ``.sf`` there."""


def owner(existing: Any) -> str:
    """The top-level package that defined a registered namespace (its class's module)."""
    module = getattr(existing, "__module__", None) or type(existing).__module__ or "?"
    return module.split(".")[0]


def register(targets: Sequence[tuple[type, Callable[[str], Callable[[type], type]], type]]) -> None:
    """Register each ``(frame type, registration function, namespace class)`` as ``.sf`` and, where
    no other library has it, as ``.semantic``; warn once per frame type taken by another library."""
    taken: dict[str, list[tuple[type, Any]]] = {}
    for cls, register_as, namespace in targets:
        existing = getattr(cls, NAMESPACE, None)
        if existing is None or owner(existing) == "semframe":
            register_as(NAMESPACE)(namespace)
        else:
            taken.setdefault(owner(existing), []).append((cls, existing))
        register_as(ALIAS)(namespace)
    for package, conflicts in taken.items():
        fresh = [(cls, ex) for cls, ex in conflicts if (package, _name(cls)) not in _warned]
        if not fresh:
            continue
        _warned.update((package, _name(cls)) for cls, _ in fresh)
        where = " and ".join(f"{_name(cls)}.{NAMESPACE}" for cls, _ in fresh)
        by = ", ".join(sorted({f"{getattr(ex, '__module__', '?')}.{getattr(ex, '__qualname__', type(ex).__name__)}"
                               for _, ex in fresh}))
        warnings.warn(
            f"semframe: {where} is already registered by the package {package!r} ({by}); semframe leaves it "
            f"to {package} and is available as .{ALIAS} there: write df.{ALIAS}.classify(...), "
            f"df.{ALIAS}.filter(...), ... (.{ALIAS} is always semframe's)",
            NamespaceConflictWarning, stacklevel=3,
        )


def _name(cls: type) -> str:
    module = cls.__module__.split(".")[0]
    return f"{module}.{cls.__name__}"
