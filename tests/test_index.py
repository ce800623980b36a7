import json

import numpy as np
import pytest

from dual_encoder.errors import (
    DimensionMismatchError,
    DuplicateIdError,
    EncoderMismatchError,
    InvalidDocumentError,
    StoreFormatError,
)
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY
from dual_encoder.index import EmbeddedIndex, IndexRecord


def random_records(count, dimension=16, seed=0, prefix="d"):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dimension)).astype(np.float32)
    return [
        IndexRecord(id=f"{prefix}{i}", content=f"text {i}", meta={"group": i % 3}, embedding=vectors[i])
        for i in range(count)
    ], vectors


def brute_force(vectors, ids, query, k, similarity="cosine"):
    scores = vectors @ query
    if similarity == "cosine":
        scores = scores / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], scores[order]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_exact_top_k_matches_brute_force(similarity):
    records, vectors = random_records(3000)
    index = EmbeddedIndex(similarity=similarity)
    index.upsert(records)
    query = np.random.default_rng(1).normal(size=16).astype(np.float32)
    hits = index.search(query, top_k=7)
    expected_ids, expected_scores = brute_force(vectors, [r.id for r in records], query, 7, similarity)
    assert [h.record.id for h in hits] == expected_ids
    np.testing.assert_allclose([h.score for h in hits], expected_scores, rtol=1e-5)


def test_filters_restrict_the_candidates():
    records, vectors = random_records(300)
    index = EmbeddedIndex()
    index.upsert(records)
    query = vectors[5]
    hits = index.search(query, top_k=10, filters={"field": "meta.group", "operator": "==", "value": 1})
    assert len(hits) == 10 and all(h.record.meta["group"] == 1 for h in hits)
    group_ids = [r.id for r in records if r.meta["group"] == 1]
    expected, _ = brute_force(vectors[[int(i[1:]) for i in group_ids]], group_ids, query, 10)
    assert [h.record.id for h in hits] == expected


@pytest.mark.parametrize("filters", [
    {"field": "id", "operator": "in", "value": ["d7", "missing", "d2", "d7", 3]},
    {"field": "id", "operator": "==", "value": "d4"},
    {"field": "id", "operator": "==", "value": "missing"},
])
def test_lookups_by_id_match_a_full_scan(filters):
    records, _ = random_records(50)
    index = EmbeddedIndex()
    index.upsert(records + [IndexRecord(id="bare", content="no vector", meta={})])
    # The same condition inside an AND goes through the record-by-record scan.
    scanned = index.records({"operator": "AND", "conditions": [filters]})
    looked_up = index.records(filters)
    assert [r.id for r in looked_up] == [r.id for r in scanned]
    for got, expected in zip(looked_up, scanned):
        np.testing.assert_array_equal(got.embedding, expected.embedding)
    assert index.records({"field": "id", "operator": "in", "value": ["bare", "d1"]})[1].embedding is None
    assert [r.id for r in index.records({"field": "id", "operator": "in", "value": ["d9", "d1"]})] == ["d1", "d9"]


def test_matrix_is_updated_in_place_not_rebuilt_per_query():
    records, _ = random_records(100)
    index = EmbeddedIndex()
    index.upsert(records)
    matrix = index._matrix
    for _ in range(3):
        index.search(np.ones(16, dtype=np.float32), top_k=3)
    assert index._matrix is matrix
    index.delete(["d3", "d50"])
    index.upsert(random_records(10, seed=2, prefix="new")[0])
    assert index._matrix is matrix, "writes within capacity must reuse the same matrix"
    assert len(index) == 108
    assert index.search(np.ones(16, dtype=np.float32), top_k=200)[-1].score > -np.inf


def test_delete_keeps_rows_aligned_with_records():
    records, vectors = random_records(50)
    index = EmbeddedIndex()
    index.upsert(records)
    index.delete(["d0", "d10", "d49", "missing"])
    assert len(index) == 47
    for record in index.records():
        np.testing.assert_array_equal(record.embedding, vectors[int(record.id[1:])])
    assert index.search(vectors[20], top_k=1)[0].record.id == "d20"


def test_documents_without_embeddings_are_stored_but_never_retrieved():
    records, _ = random_records(5)
    index = EmbeddedIndex()
    index.upsert([IndexRecord(id="plain", content="no vector")] + records)
    assert len(index) == 6
    assert "plain" not in [h.record.id for h in index.search(np.ones(16), top_k=10)]


def test_persistence_round_trip_without_pickle(tmp_path):
    records, vectors = random_records(40)
    index = EmbeddedIndex(tmp_path / "store", similarity="dot")
    index.metadata["encoder"] = {"model": "x"}
    index.upsert(records)
    index.delete(["d7"])
    files = {p.name for p in (tmp_path / "store").rglob("*") if p.is_file()}
    assert files == {"manifest.json", "documents.jsonl", "embeddings.npy", "has_embedding.npy"}
    reopened = EmbeddedIndex(tmp_path / "store")
    assert reopened.similarity == "dot" and len(reopened) == 39 and reopened.metadata == {"encoder": {"model": "x"}}
    query = vectors[3]
    assert [h.record.id for h in reopened.search(query, top_k=5)] == [h.record.id for h in index.search(query, top_k=5)]
    assert [r.meta for r in reopened.records()] == [r.meta for r in index.records()]


def test_damaged_store_is_reported(tmp_path):
    index = EmbeddedIndex(tmp_path)
    index.upsert(random_records(3)[0])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["snapshot"] / "embeddings.npy").unlink()
    with pytest.raises(StoreFormatError, match="damaged"):
        EmbeddedIndex(tmp_path)


def test_wrong_dimension_is_refused_on_write_and_search():
    index = EmbeddedIndex()
    index.upsert(random_records(3)[0])
    with pytest.raises(DimensionMismatchError, match="8-d embedding.*16-d"):
        index.upsert([IndexRecord(id="x", embedding=np.ones(8))])
    with pytest.raises(DimensionMismatchError, match="8 dimensions"):
        index.search(np.ones(8), top_k=1)
    assert len(index) == 3


def test_mixing_encoders_is_refused_and_nothing_is_written():
    index = EmbeddedIndex()
    index.upsert([IndexRecord(id="a", meta={DOCUMENT_SPACE_META_KEY: "ds1-aaa"}, embedding=np.ones(4))])
    batch = [
        IndexRecord(id="b", meta={DOCUMENT_SPACE_META_KEY: "ds1-aaa"}, embedding=np.ones(4)),
        IndexRecord(id="c", meta={DOCUMENT_SPACE_META_KEY: "ds1-bbb"}, embedding=np.ones(4)),
    ]
    with pytest.raises(EncoderMismatchError, match="ds1-bbb.*ds1-aaa"):
        index.upsert(batch)
    assert [r.id for r in index.records()] == ["a"]


def test_duplicate_policies():
    index = EmbeddedIndex()
    index.upsert([IndexRecord(id="a", content="one")])
    assert index.upsert([IndexRecord(id="a", content="two")], policy="skip") == 0
    assert index.records()[0].content == "one"
    with pytest.raises(DuplicateIdError, match="Nothing was written"):
        index.upsert([IndexRecord(id="new"), IndexRecord(id="a", content="three")], policy="fail")
    assert len(index) == 1
    assert index.upsert([IndexRecord(id="a", content="four")], policy="overwrite") == 1
    assert index.records()[0].content == "four"


@pytest.mark.parametrize(
    "record, message",
    [
        (IndexRecord(id="", content="x"), "non-empty string id"),
        (IndexRecord(id="n", embedding=[1.0, float("nan")]), "NaN"),
        (IndexRecord(id="o", meta={"when": object()}), "not JSON-serialisable"),
    ],
)
def test_invalid_records_are_refused(record, message):
    with pytest.raises(InvalidDocumentError, match=message):
        EmbeddedIndex().upsert([record])


def test_openers_of_one_directory_share_the_index(tmp_path):
    from dual_encoder.index import open_index

    first = open_index(tmp_path / "shared")
    second = open_index(str(tmp_path / "shared"))
    assert first is second
    first.upsert(random_records(3)[0])
    assert len(second) == 3
    with pytest.raises(Exception, match="uses similarity 'cosine', not 'dot'"):
        open_index(tmp_path / "shared", similarity="dot")


def test_changes_saved_by_another_process_are_picked_up(tmp_path):
    reader = EmbeddedIndex(tmp_path)
    writer = EmbeddedIndex(tmp_path)  # stands in for another process: its own instance on the same directory
    records, vectors = random_records(5)
    writer.upsert(records)
    assert len(reader) == 5
    assert reader.search(vectors[2], top_k=1)[0].record.id == "d2"
    writer.delete(["d2"])
    assert reader.search(vectors[2], top_k=1)[0].record.id != "d2"
    writer.clear()
    assert len(reader) == 0 and reader.search(vectors[2], top_k=1) == []
