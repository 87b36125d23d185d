"""Physical operators for semantic.cluster (being built)."""

from __future__ import annotations
