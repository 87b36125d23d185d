import pandas as pd
import pytest

import semframe as sf


@pytest.fixture
def pdf():
    return pd.DataFrame(
        {"review": ["great phone", "terrible battery", "great phone", None], "stars": [5, 1, 5, 3]},
        index=pd.Index(["r1", "r2", "r3", "r4"], name="id"),
    )


def test_classify_keeps_index_columns_and_dtypes(pdf):
    engine = sf.DeterministicEngine()
    out = pdf.semantic.classify("review", ["pos", "neg"], engine=engine)
    assert list(out.index) == ["r1", "r2", "r3", "r4"] and out.index.name == "id"
    assert list(out.columns) == ["review", "stars", "classify"]
    assert out["stars"].dtype == pdf["stars"].dtype
    assert out["classify"].iloc[0] == out["classify"].iloc[2]
    assert out["classify"].iloc[3] is None
    assert engine.requests_seen == 2
    assert "classify" not in pdf.columns  # the input is not modified


def test_filter_keeps_original_labels_and_order(pdf):
    engine = sf.DeterministicEngine(responder=lambda r: "YES" if "great" in r.messages[-1].content else "NO")
    out = pdf.semantic.filter("Is {review} positive?", engine=engine)
    assert list(out.index) == ["r1", "r3"]
    assert out["stars"].tolist() == [5, 5]


def test_extract_and_map(pdf):
    engine = sf.DeterministicEngine()
    out = pdf.semantic.extract("review", {"topic": str, "score": int}, name="facts", engine=engine)
    assert set(out["facts"].iloc[0]) == {"topic", "score"}
    assert out["facts"].iloc[3] is None
    gist = pdf.semantic.map("Summarize {review}", name="gist", engine=engine)
    assert gist["gist"].iloc[0].startswith("echo:")


def test_unknown_column_error(pdf):
    with pytest.raises(sf.PlanError, match="columns are 'review', 'stars'"):
        pdf.semantic.classify("reveiw", ["a", "b"], engine=sf.DeterministicEngine())


def test_name_clash(pdf):
    with pytest.raises(sf.PlanError, match="'stars' already exists"):
        pdf.semantic.map("{review}", name="stars", engine=sf.DeterministicEngine())


def test_duplicate_index_labels_are_kept(pdf):
    pdf.index = ["x", "x", "y", "y"]
    out = pdf.semantic.classify("review", ["pos", "neg"], engine=sf.DeterministicEngine())
    assert list(out.index) == ["x", "x", "y", "y"]
