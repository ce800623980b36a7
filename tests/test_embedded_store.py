"""The embedded store (dual_encoder.embedded): contract behaviour, search against a numpy reference,
persistence, metadata, migration of the old snapshot format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dual_encoder.embedded import EmbeddedStore, open_embedded_store
from dual_encoder.embedded.storage import DATABASE_FILE
from dual_encoder.errors import (
    ConfigurationError,
    DimensionMismatchError,
    DuplicateIdError,
    EncoderMismatchError,
    InvalidDocumentError,
)
from dual_encoder.filters import compile_filter
from dual_encoder.stores.contract import DuplicatePolicy, StoredRecord

DIM = 16
YEAR_FILTER = {"field": "meta.year", "operator": ">=", "value": 2018}


def _records(count: int, seed: int = 0, start: int = 0, dim: int = DIM) -> list[StoredRecord]:
    rng = np.random.default_rng(seed)
    return [
        StoredRecord(
            id=f"doc-{i}",
            content=f"text {i}",
            meta={"year": 2000 + i % 24, "source": ["web", "paper", "book"][i % 3]},
            embedding=rng.standard_normal(dim).astype(np.float32),
        )
        for i in range(start, start + count)
    ]


@pytest.fixture(params=["memory", "disk"])
def store(request, tmp_path):
    path = None if request.param == "memory" else tmp_path / "store"
    store = EmbeddedStore(path)
    yield store
    store.close()


def _reference_top(records: list[StoredRecord], query: np.ndarray, similarity: str, k: int, filters=None):
    """(ids, scores) of the best ``k`` by a plain numpy computation, ties by insertion order."""
    matches = compile_filter(filters)
    kept = [
        r
        for r in records
        if r.embedding is not None and (matches is None or matches({"id": r.id, "content": r.content, "meta": r.meta}))
    ]
    matrix = np.stack([r.embedding for r in kept]).astype(np.float64)
    scores = matrix @ query.astype(np.float64)
    if similarity == "cosine":
        norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    order = sorted(range(len(kept)), key=lambda i: (-round(scores[i], 5), i))[:k]
    return [kept[i].id for i in order], [float(scores[i]) for i in order]


# --------------------------------------------------------------------------------------------- writing
def test_upsert_policies_and_unchanged_records(store):
    records = _records(10)
    assert store.upsert(records).written == 10
    again = store.upsert(records)
    assert (again.written, again.unchanged) == (0, 10)

    changed = StoredRecord(id="doc-3", content="new text", meta={"year": 1999}, embedding=records[3].embedding)
    assert store.upsert([changed], DuplicatePolicy.SKIP).skipped == 1
    assert store.stored_versions(["doc-3"])["doc-3"].content == "text 3"
    with pytest.raises(DuplicateIdError):
        store.upsert([changed, StoredRecord(id="fresh")], DuplicatePolicy.FAIL)
    assert store.count() == 10, "FAIL refused the whole write"
    assert store.upsert([changed]).written == 1
    stored = store.stored_versions(["doc-3"])["doc-3"]
    assert (stored.content, stored.meta) == ("new text", {"year": 1999})
    np.testing.assert_array_equal(stored.embedding, records[3].embedding)


def test_overwrite_with_a_new_vector_keeps_insertion_order(store):
    records = _records(6)
    store.upsert(records)
    moved = StoredRecord(id="doc-1", content="moved", embedding=np.ones(DIM, np.float32))
    store.upsert([moved])
    store.delete(["doc-0"])
    store.upsert([StoredRecord(id="late", embedding=np.full(DIM, 2.0, np.float32))])
    assert [r.id for r in store.list()] == ["doc-1", "doc-2", "doc-3", "doc-4", "doc-5", "late"]
    listed = {r.id: r for r in store.list()}
    np.testing.assert_array_equal(listed["doc-1"].embedding, np.ones(DIM, np.float32))
    np.testing.assert_array_equal(listed["late"].embedding, np.full(DIM, 2.0, np.float32))
    np.testing.assert_array_equal(listed["doc-4"].embedding, records[4].embedding)


def test_delete_count_list_with_filters(store):
    records = _records(48)
    store.upsert(records)
    expected = [r.id for r in records if r.meta["year"] >= 2018]
    assert store.count(YEAR_FILTER) == len(expected) == 12
    assert [r.id for r in store.list(YEAR_FILTER)] == expected
    assert store.delete(["doc-18", "doc-19", "missing"]) == 2
    assert store.count() == 46
    assert store.count(YEAR_FILTER) == 10
    assert "doc-18" not in {r.id for r in store.list(YEAR_FILTER)}
    both = {"operator": "AND", "conditions": [YEAR_FILTER, {"field": "meta.source", "operator": "==", "value": "web"}]}
    assert [r.id for r in store.list(both)] == [
        r.id
        for r in records
        if r.meta["year"] >= 2018 and r.meta["source"] == "web" and r.id not in ("doc-18", "doc-19")
    ]
    store.delete_all()
    assert store.count() == 0 and store.list() == []


def test_id_filters_go_by_id(store):
    store.upsert(_records(30))
    assert [r.id for r in store.list({"field": "id", "operator": "==", "value": "doc-7"})] == ["doc-7"]
    chosen = {"field": "id", "operator": "in", "value": ["doc-20", "doc-3", "nope", 5]}
    assert [r.id for r in store.list(chosen)] == ["doc-3", "doc-20"]
    assert store.count(chosen) == 2
    hits = store.vector_search(np.ones(DIM, np.float32), top_k=5, filters=chosen).hits
    assert sorted(h.record.id for h in hits) == ["doc-20", "doc-3"]


def test_bad_records_are_refused_before_anything_is_written(store):
    with pytest.raises(InvalidDocumentError):
        store.upsert(
            [StoredRecord(id="ok", embedding=np.ones(DIM, np.float32)), StoredRecord(id="bad", meta={"when": object()})]
        )
    assert store.count() == 0
    store.upsert(_records(2))
    with pytest.raises(DimensionMismatchError):
        store.upsert([StoredRecord(id="short", embedding=np.ones(DIM - 1, np.float32))])
    with pytest.raises(DimensionMismatchError):
        store.vector_search(np.ones(DIM + 1, np.float32))


def test_document_space_is_recorded_and_guarded(store):
    space = {"encoder_fingerprint": "ds1-aaaaaaaaaaaaaaaaaaaaaaaa"}
    store.upsert([StoredRecord(id="a", meta=space, embedding=np.ones(DIM, np.float32))])
    assert store.embedding_space().document_space == space["encoder_fingerprint"]
    with pytest.raises(EncoderMismatchError):
        store.upsert(
            [
                StoredRecord(
                    id="b",
                    meta={"encoder_fingerprint": "ds1-bbbbbbbbbbbbbbbbbbbbbbbb"},
                    embedding=np.ones(DIM, np.float32),
                )
            ]
        )
    store.delete_all()
    assert store.embedding_space().dimension is None
    store.upsert([StoredRecord(id="c", embedding=np.ones(DIM * 2, np.float32))])
    assert store.embedding_space().dimension == DIM * 2
    assert store.vector_search(np.ones(DIM * 2, np.float32), top_k=1).hits[0].record.id == "c"


# ---------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_exact_search_matches_numpy(tmp_path, similarity):
    store = EmbeddedStore(tmp_path / "s", similarity=similarity)
    records = _records(300, seed=1)
    records[5] = StoredRecord(id="no-vector", content="x", meta={"year": 2020})
    records[6] = StoredRecord(id="zero", meta={"year": 2020}, embedding=np.zeros(DIM, np.float32))
    store.upsert(records)
    store.delete(["doc-10", "doc-11"])
    store.upsert(_records(2, seed=9, start=10))  # re-added: they take freed slots but sort as latest
    records = [r for r in records if r.id not in ("doc-10", "doc-11")] + _records(2, seed=9, start=10)
    rng = np.random.default_rng(2)
    for filters in (None, YEAR_FILTER, {"field": "meta.source", "operator": "==", "value": "book"}):
        query = rng.standard_normal(DIM).astype(np.float32)
        result = store.vector_search(query, top_k=10, filters=filters, exact=True)
        ids, scores = _reference_top(records, query, similarity, 10, filters)
        assert result.method == "exact"
        assert [h.record.id for h in result.hits] == ids
        np.testing.assert_allclose([h.score for h in result.hits], scores, rtol=1e-4, atol=1e-5)
        assert all(h.record.id != "no-vector" for h in result.hits)
    everything = store.vector_search(np.ones(DIM, np.float32), top_k=1000).hits
    assert len(everything) == len(records) - 1  # all but the one without a vector
    assert not any(np.isnan(h.score) for h in everything)
    if similarity == "cosine":
        assert {h.record.id: h.score for h in everything}["zero"] == 0.0
        assert all(-1.0 <= h.score <= 1.0 for h in everything)
    store.close()


def test_searches_between_changes_see_exactly_the_current_documents(store):
    """Search keeps the searchable-slot mask between calls; every kind of change must show in the next search."""
    probe = np.ones(DIM, np.float32)

    def searched() -> set[str]:
        return {hit.record.id for hit in store.vector_search(probe, top_k=5000, exact=True).hits}

    store.upsert(_records(30))
    assert searched() == {f"doc-{i}" for i in range(30)}
    store.delete(["doc-3", "doc-4"])
    assert searched() == {f"doc-{i}" for i in range(30)} - {"doc-3", "doc-4"}
    store.upsert([StoredRecord(id="doc-5", content="now without a vector")], policy=DuplicatePolicy.OVERWRITE)
    assert "doc-5" not in searched()
    store.upsert(_records(1, seed=4, start=3))  # a freed slot is reused
    assert "doc-3" in searched() and "doc-4" not in searched()
    store.upsert(_records(3000, seed=5, start=100))  # the per-slot arrays grow
    assert len(searched()) == 28 + 3000
    store.delete_all()
    assert searched() == set()
    store.upsert(_records(2, seed=6))
    assert searched() == {"doc-0", "doc-1"}


def test_a_search_sees_what_another_instance_changed_since_its_last_search(tmp_path):
    writer, reader = EmbeddedStore(tmp_path / "s"), EmbeddedStore(tmp_path / "s")
    probe = np.ones(DIM, np.float32)
    writer.upsert(_records(20))
    assert len(reader.vector_search(probe, top_k=100).hits) == 20
    writer.delete(["doc-7"])
    assert "doc-7" not in {hit.record.id for hit in reader.vector_search(probe, top_k=100).hits}
    writer.upsert(_records(5, seed=2, start=50))
    assert len(reader.vector_search(probe, top_k=100).hits) == 24
    writer.close()
    reader.close()


def test_ties_are_broken_by_insertion_order(store):
    vector = np.ones(DIM, np.float32)
    store.upsert([StoredRecord(id=f"t{i}", embedding=vector) for i in range(20)])
    store.delete(["t3"])
    store.upsert([StoredRecord(id="t3", embedding=vector)])  # re-inserted: now the latest
    hits = store.vector_search(vector, top_k=5).hits
    assert [h.record.id for h in hits] == ["t0", "t1", "t2", "t4", "t5"]
    assert [h.record.id for h in store.vector_search(vector, top_k=20).hits][-1] == "t3"


def test_search_on_an_empty_store(store):
    assert store.vector_search(np.ones(DIM, np.float32)).hits == []
    store.upsert([StoredRecord(id="text-only", content="no embedding")])
    assert store.vector_search(np.ones(DIM, np.float32)).hits == []


def test_approximate_search_recall_against_exact(tmp_path, monkeypatch):
    ann = pytest.importorskip("dual_encoder.embedded.ann")
    monkeypatch.setitem(ann.DEFAULT_PARAMETERS, "train_size", 1000)  # train the quantiser on this small store
    store = EmbeddedStore(tmp_path / "ann", approximate_threshold=500)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    store.upsert([StoredRecord(id=f"v{i}", meta={"year": 2000 + i % 24}, embedding=v) for i, v in enumerate(vectors)])
    recalls = []
    for _ in range(20):
        query = rng.standard_normal(DIM).astype(np.float32)
        approximate = store.vector_search(query, top_k=10)
        exact = store.vector_search(query, top_k=10, exact=True)
        assert approximate.method == "approximate" and exact.method == "exact"
        truth = {h.record.id for h in exact.hits}
        recalls.append(len(truth & {h.record.id for h in approximate.hits}) / 10)
        for hit in approximate.hits:  # scores are exact values, not the index's estimates
            vector = hit.record.embedding
            expected = float(vector @ query / np.linalg.norm(vector) / np.linalg.norm(query))
            assert hit.score == pytest.approx(expected, abs=1e-5)
        scores = [h.score for h in approximate.hits]
        assert scores == sorted(scores, reverse=True)
    assert np.mean(recalls) >= 0.9
    filtered = store.vector_search(rng.standard_normal(DIM).astype(np.float32), top_k=10, filters=YEAR_FILTER)
    assert all(h.record.meta["year"] >= 2018 for h in filtered.hits) and len(filtered.hits) == 10
    # Writes reach the approximate index: a new exact match is found at once, a deleted one is gone.
    store.upsert([StoredRecord(id="needle", embedding=vectors[0] * 3)])
    store.delete(["v0"])
    hits = store.vector_search(vectors[0], top_k=3).hits
    assert hits[0].record.id == "needle" and "v0" not in {h.record.id for h in hits}
    assert store._ann.trained, "the test exercises the quantised index, not its exact warm-up"
    small = EmbeddedStore(None)
    small.upsert(_records(20))
    assert small.vector_search(np.ones(DIM, np.float32)).method == "exact"

    # Saved with the store; a reopen loads it and applies writes made since from the change log.
    store.close()
    assert (tmp_path / "ann" / "ann.json").exists()
    other = EmbeddedStore(tmp_path / "ann", approximate_threshold=10**9)  # never builds an index itself
    other.upsert([StoredRecord(id="needle-2", embedding=vectors[1] * 2)])
    other.delete(["v1", "needle"])
    reopened = EmbeddedStore(tmp_path / "ann", approximate_threshold=500)
    result = reopened.vector_search(vectors[1], top_k=3)
    assert result.method == "approximate" and reopened.approximate_index_source == "loaded", "loaded, not rebuilt"
    assert result.hits[0].record.id == "needle-2"
    assert not {"v1", "needle"} & {h.record.id for h in reopened.vector_search(vectors[0], top_k=20).hits}
    assert len(reopened._ann) == reopened.count()


# ----------------------------------------------------------------------------------------- persistence
def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "s"
    store = EmbeddedStore(path, similarity="dot")
    records = _records(50)
    store.upsert(records)
    store.delete(["doc-4"])
    store.upsert([StoredRecord(id="doc-7", content="changed", meta={"year": 2023}, embedding=np.ones(DIM, np.float32))])
    store.set_metadata("encoder", {"model": "all-MiniLM-L6-v2", "dimension": DIM})
    before = store.list()
    query = np.arange(DIM, dtype=np.float32)
    hits_before = store.vector_search(query, top_k=5, filters=YEAR_FILTER).hits
    store.close()

    reopened = EmbeddedStore(path)
    assert reopened.similarity == "dot"
    assert dict(reopened.metadata) == {"encoder": {"model": "all-MiniLM-L6-v2", "dimension": DIM}}
    after = reopened.list()
    assert [r.id for r in after] == [r.id for r in before]
    for old, new in zip(before, after):
        assert (old.content, old.meta, old.extra) == (new.content, new.meta, new.extra)
        np.testing.assert_array_equal(old.embedding, new.embedding)
    hits_after = reopened.vector_search(query, top_k=5, filters=YEAR_FILTER).hits
    assert [(h.record.id, h.score) for h in hits_after] == [(h.record.id, h.score) for h in hits_before]
    with pytest.raises(TypeError):
        reopened.metadata["x"] = 1  # read-only view
    reopened.close()
    # A closed store reopens on next use.
    assert reopened.count() == 49


def test_similarity_mismatch_on_reopen(tmp_path):
    path = tmp_path / "s"
    store = EmbeddedStore(path, similarity="cosine")
    store.upsert(_records(3))
    store.close()
    with pytest.raises(ConfigurationError, match="similarity='cosine'"):
        EmbeddedStore(path, similarity="dot")
    assert EmbeddedStore(path).similarity == "cosine"
    empty = tmp_path / "empty"
    EmbeddedStore(empty).close()  # nothing stored yet: another similarity may still be chosen
    assert EmbeddedStore(empty, similarity="dot").similarity == "dot"
    assert EmbeddedStore(empty).similarity == "dot"
    with pytest.raises(ConfigurationError):
        EmbeddedStore(None, similarity="euclid")


def test_open_embedded_store_shares_one_instance(tmp_path):
    first = open_embedded_store(tmp_path / "shared")
    second = open_embedded_store(str(tmp_path / "shared" / ".." / "shared"))
    assert first is second
    with pytest.raises(ConfigurationError):
        open_embedded_store(tmp_path / "shared", similarity="dot")
    assert open_embedded_store(None) is not open_embedded_store(None)


def test_two_instances_on_one_directory_see_each_others_writes(tmp_path):
    writer, reader = EmbeddedStore(tmp_path / "s"), EmbeddedStore(tmp_path / "s")
    assert reader.count() == 0
    writer.upsert(_records(10))
    assert reader.count() == 10
    assert reader.count(YEAR_FILTER) == 0  # builds the reader's filter columns
    writer.upsert(_records(10, start=18))
    writer.delete(["doc-0"])
    writer.set_metadata("k", "v")
    assert reader.count() == 19 and reader.count(YEAR_FILTER) == 6
    assert reader.metadata["k"] == "v"
    top = reader.vector_search(_records(1, start=18)[0].embedding, top_k=1).hits[0]
    assert top.record.id == "doc-18" and top.score == pytest.approx(1.0, abs=1e-6)
    writer.delete_all()
    assert reader.count() == 0 and reader.vector_search(np.ones(DIM, np.float32)).hits == []


# ------------------------------------------------------------------------------------------- migration
def _write_old_format(path: Path, records: list[StoredRecord], *, similarity="dot", metadata=None) -> None:
    """An index directory exactly as dual_encoder.index.EmbeddedIndex wrote it (format version 1)."""
    snapshot = path / "snapshot-0123456789ab"
    snapshot.mkdir(parents=True)
    with open(snapshot / "documents.jsonl", "w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps({"id": r.id, "content": r.content, "meta": r.meta, "extra": r.extra}) + "\n")
    has = np.array([r.embedding is not None for r in records])
    matrix = np.stack([r.embedding if r.embedding is not None else np.zeros(DIM, np.float32) for r in records])
    np.save(snapshot / "embeddings.npy", matrix)
    np.save(snapshot / "has_embedding.npy", has)
    manifest = {
        "format": "dual-encoder-embedded-index",
        "version": 1,
        "snapshot": snapshot.name,
        "count": len(records),
        "dimension": DIM,
        "similarity": similarity,
        "document_space": "ds1-cccccccccccccccccccccccc",
        "metadata": metadata or {},
    }
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _old_records() -> list[StoredRecord]:
    records = _records(25)
    for r in records:
        r.meta["encoder_fingerprint"] = "ds1-cccccccccccccccccccccccc"
    records[2] = StoredRecord(id="plain", content="no vector", meta={"k": [1, 2]}, extra={"blob": {"mime": "x"}})
    return records


def test_old_snapshot_format_is_migrated(tmp_path, caplog):
    path = tmp_path / "old"
    records = _old_records()
    _write_old_format(path, records, metadata={"encoder": {"name": "m"}})
    with caplog.at_level("WARNING"):
        store = EmbeddedStore(path)
    assert sum("Migrated" in message for message in caplog.messages) == 1
    assert store.similarity == "dot"
    assert dict(store.metadata) == {"encoder": {"name": "m"}}
    space = store.embedding_space()
    assert (space.document_space, space.dimension) == ("ds1-cccccccccccccccccccccccc", DIM)
    listed = store.list()
    assert [r.id for r in listed] == [r.id for r in records]
    for old, new in zip(records, listed):
        assert (old.content, old.meta, old.extra) == (new.content, new.meta, new.extra)
        if old.embedding is None:
            assert new.embedding is None
        else:
            np.testing.assert_array_equal(old.embedding, new.embedding)
    assert not (path / "manifest.json").exists() and not list(path.glob("snapshot-*"))
    store.close()
    assert EmbeddedStore(path).count() == 25


def test_interrupted_migration_leaves_the_old_index_and_runs_again(tmp_path, monkeypatch):
    path = tmp_path / "old"
    records = _old_records()
    _write_old_format(path, records)
    real_replace = os.replace

    def crash_at_commit(source, target):
        if Path(target).name == DATABASE_FILE:
            raise OSError("simulated crash before the database moved in")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_at_commit)
    with pytest.raises(OSError, match="simulated"):
        EmbeddedStore(path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (path / "manifest.json").exists() and not (path / DATABASE_FILE).exists()
    assert list(path.glob(".migration-*")), "the staging directory of the interrupted run is left behind"
    store = EmbeddedStore(path)
    assert store.count() == 25 and [r.id for r in store.list()] == [r.id for r in records]
    assert not list(path.glob(".migration-*"))
    assert len(list(path.glob("vectors-*.f32"))) == 1, "the orphan vector file of the failed run is removed"


def test_reopen_from_checkpoint_plus_change_log(tmp_path, monkeypatch):
    from dual_encoder.embedded import store as store_module
    from dual_encoder.embedded.storage import CHECKPOINT_FILE

    monkeypatch.setattr(store_module, "_CHECKPOINT_MIN_SLOTS", 10)
    path = tmp_path / "s"
    first = EmbeddedStore(path)
    first.upsert(_records(40))
    first.close()  # writes the checkpoint
    assert (path / CHECKPOINT_FILE).exists()
    other = EmbeddedStore(path)  # later writes land only in the database and its change log
    other.delete(["doc-3"])
    other.upsert([StoredRecord(id="doc-5", content="moved", embedding=np.ones(DIM, np.float32))])
    other.upsert(_records(5, start=40))
    expected = [(r.id, r.content) for r in other.list()]
    query = np.linspace(-1, 1, DIM).astype(np.float32)
    expected_hits = [(h.record.id, h.score) for h in other.vector_search(query, top_k=8).hits]
    # other is not closed, so the checkpoint on disk is older than the database
    reopened = EmbeddedStore(path)
    assert reopened._checkpoint_generation >= 0, "opened from the checkpoint"
    assert [(r.id, r.content) for r in reopened.list()] == expected
    assert [(h.record.id, h.score) for h in reopened.vector_search(query, top_k=8).hits] == expected_hits
    # A damaged checkpoint is only a cache: the database answers.
    (path / CHECKPOINT_FILE).write_bytes(b"garbage")
    fallback = EmbeddedStore(path)
    assert fallback._checkpoint_generation == -1
    assert [(r.id, r.content) for r in fallback.list()] == expected


def test_filters_on_id_content_and_meta_match_the_reference_after_changes(store):
    records = _records(60)
    store.upsert(records)
    store.count(YEAR_FILTER)  # builds the filter columns now, so the changes below must keep them current
    store.delete(["doc-2", "doc-30"])
    store.upsert(
        [
            StoredRecord(
                id="doc-7", content="text 3", meta={"year": 2019, "nested": {"k": "v"}}, embedding=records[7].embedding
            )
        ]
    )
    store.upsert([StoredRecord(id="late", content="text 3", meta={"year": 2020, "source": "web"})])
    kept = {r.id: r for r in store.list()}
    filters = [
        {"field": "content", "operator": "==", "value": "text 3"},
        {"operator": "AND", "conditions": [{"field": "id", "operator": "!=", "value": "doc-7"}, YEAR_FILTER]},
        {
            "operator": "OR",
            "conditions": [
                {"field": "id", "operator": "in", "value": ["doc-1", "late"]},
                {"field": "meta.nested.k", "operator": "==", "value": "v"},
            ],
        },
        {"operator": "NOT", "conditions": [{"field": "meta.source", "operator": "in", "value": ["web", "book"]}]},
    ]
    for condition in filters:
        reference = compile_filter(condition)
        expected = [i for i, r in kept.items() if reference({"id": r.id, "content": r.content, "meta": r.meta})]
        assert [r.id for r in store.list(condition)] == expected, condition
        assert store.count(condition) == len(expected)


def test_filter_values_read_from_the_database_keep_json_types(store):
    metas = [
        {"flag": True, "n": 2**70, "nested": {"deep": {"x": 1}}, 'quo"te': "a", "tags": ["x", "y"]},
        {"flag": False, "n": 3, "nested": [1, 2], 'quo"te': "b", "tags": "x"},
        {"flag": 1, "n": 3.0, "nested": {"deep": None}},
        {"nested": "flat", "n": None},
        {},
    ]
    store.upsert(
        [StoredRecord(id=f"j{i}", meta=meta, embedding=np.ones(DIM, np.float32)) for i, meta in enumerate(metas)]
    )
    filters = [
        {"field": "meta.flag", "operator": "==", "value": True},
        {"field": "meta.flag", "operator": "!=", "value": False},
        {"field": "meta.n", "operator": "==", "value": 2**70},
        {"field": "meta.n", "operator": ">", "value": 2},
        {"field": "meta.nested.deep.x", "operator": "==", "value": 1},
        {"field": "meta.nested.deep", "operator": "==", "value": None},
        {"field": 'meta.quo"te', "operator": "in", "value": ["a", "b"]},
        {"field": "meta.tags", "operator": "==", "value": ["x", "y"]},
        {"field": "flag", "operator": "==", "value": False},  # a bare name means meta.<name>
        {"field": "other.flag", "operator": "==", "value": None},  # outside meta: always missing
    ]
    for condition in filters:
        reference = compile_filter(condition)
        expected = [
            f"j{i}" for i, meta in enumerate(metas) if reference({"id": f"j{i}", "content": None, "meta": meta})
        ]
        assert [r.id for r in store.list(condition)] == expected, condition
    assert store._columns_on_demand, "field values are read from the database, not held per row"


def test_large_filtered_gather_on_two_threads_matches_numpy():
    """Filtered exact search above the single-thread size splits its gather over two threads; same answer."""
    from dual_encoder.embedded.store import _SINGLE_THREAD_MAX_ELEMENTS, _exact_top

    rng = np.random.default_rng(3)
    rows, dimension = 60_000, 384
    matrix = rng.standard_normal((rows, dimension), dtype=np.float32)
    inv_norms = (1 / np.linalg.norm(matrix, axis=1)).astype(np.float32)
    valid = rng.random(rows) < 0.4
    assert valid.sum() * dimension > _SINGLE_THREAD_MAX_ELEMENTS  # the two-thread path runs
    query = rng.standard_normal(dimension).astype(np.float32)
    slots, scores = _exact_top(matrix, inv_norms, np.arange(rows), valid, query, 10, "cosine")
    reference = (matrix @ (query / np.linalg.norm(query))) * inv_norms
    reference[~valid] = -np.inf
    expected = np.argsort(-reference, kind="stable")[:10]
    assert list(slots) == list(expected)
    np.testing.assert_allclose(scores, reference[expected], atol=1e-5)
