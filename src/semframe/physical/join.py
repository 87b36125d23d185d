"""Physical operators for semantic.join (being built)."""

from __future__ import annotations
