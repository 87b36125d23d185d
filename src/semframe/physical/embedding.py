"""Physical operators for semantic.embedding (being built)."""

from __future__ import annotations
