"""Fixtures for the cache tests. The suite-wide autouse fixture already gives every test its own
``SEMFRAME_CACHE_DIR``; here: the embedding model, loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedder():
    """The default embedder with its model loaded (shared by every test that uses it)."""
    from semframe.cache.embed import default_embedder, load_model

    emb = default_embedder()
    load_model(emb.path)
    return emb
