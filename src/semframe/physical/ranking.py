"""Physical operators for semantic.ranking (being built)."""

from __future__ import annotations
