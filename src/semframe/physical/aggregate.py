"""Physical operators for semantic.aggregate (being built)."""

from __future__ import annotations
