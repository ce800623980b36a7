"""Quality on real data: the Siamese all-MiniLM-L6-v2 through our components reproduces MTEB's SciFact score.

MTEB reports nDCG@10 = 0.645 on the 300 SciFact test queries (documents are "title text"). Reproducing it
through the document embedder, the embedded store and the retriever shows nothing in our path changes the
embeddings. The corpus is embedded once per session (conftest.scifact_embedded).
"""

import pytest
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

from dual_encoder.evaluation import evaluate_run

pytestmark = pytest.mark.scifact


def test_minilm_reproduces_the_published_ndcg(scifact_embedded, tmp_path):
    data, documents = scifact_embedded
    store = EmbeddedDocumentStore(path=str(tmp_path / "scifact"))
    assert store.write_documents(documents) == 5183
    retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), top_k=100)
    run = {
        query_id: {doc.id: doc.score for doc in retriever.run(query=text)["documents"]}
        for query_id, text in data.queries.items()
    }
    metrics = evaluate_run(data.qrels, run)
    assert len(run) == 300
    assert metrics["ndcg@10"] == pytest.approx(0.645, abs=0.002), metrics


def test_approximate_search_stays_within_0_002_of_exact(scifact_embedded, tmp_path):
    """The embedded store's approximate index, forced on the 5,183 SciFact documents, loses at most 0.002 nDCG@10."""
    data, documents = scifact_embedded
    store = EmbeddedDocumentStore(path=str(tmp_path / "approximate"), approximate_threshold=0)
    store.write_documents(documents)
    runs = {}
    for exact in (True, False):
        retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store, exact=exact), top_k=10)
        runs[exact] = {
            q: {d.id: d.score for d in retriever.run(query=text)["documents"]} for q, text in data.queries.items()
        }
    exact_ndcg = evaluate_run(data.qrels, runs[True])["ndcg@10"]
    approximate_ndcg = evaluate_run(data.qrels, runs[False])["ndcg@10"]
    assert exact_ndcg == pytest.approx(0.6451, abs=0.0005)
    assert abs(approximate_ndcg - exact_ndcg) <= 0.002, (approximate_ndcg, exact_ndcg)
    overlap = [len(set(runs[True][q]) & set(runs[False][q])) / 10 for q in data.queries]
    assert sum(overlap) / len(overlap) >= 0.95
    probe = store.store.vector_search(documents[0].embedding, top_k=5, exact=False)
    assert probe.method == "approximate" and probe.hits[0].record.id == documents[0].id


def test_reloaded_store_gives_identical_rankings(scifact_embedded, tmp_path):
    data, documents = scifact_embedded
    EmbeddedDocumentStore(path=str(tmp_path / "s")).write_documents(documents)
    first = EmbeddedDocumentStore(path=str(tmp_path / "s"))
    retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=first), top_k=10)
    query = next(iter(data.queries.values()))
    before = [(d.id, d.score) for d in retriever.run(query=query)["documents"]]
    reopened = DualEncoderRetriever(
        retriever=StoreEmbeddingRetriever(document_store=EmbeddedDocumentStore(path=str(tmp_path / "s"))), top_k=10
    )
    assert [(d.id, d.score) for d in reopened.run(query=query)["documents"]] == before


def test_weaviate_matches_the_embedded_store_on_scifact(scifact_embedded, weaviate_env, tmp_path):
    from haystack.document_stores.types import DuplicatePolicy
    from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore

    data, documents = scifact_embedded
    weaviate = DualEncoderWeaviateDocumentStore(collection_name="SciFact", meta_fields={"title": "text"})
    assert weaviate.write_documents(documents, policy=DuplicatePolicy.OVERWRITE) == 5183
    weaviate.write_documents(documents, policy=DuplicatePolicy.OVERWRITE)
    assert weaviate.count_documents() == 5183
    embedded = EmbeddedDocumentStore(path=str(tmp_path / "scifact"))
    embedded.write_documents(documents)

    runs, overlaps = {"weaviate": {}, "embedded": {}}, []
    retrievers = {
        name: DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), top_k=10)
        for name, store in (("weaviate", weaviate), ("embedded", embedded))
    }
    for query_id, text in data.queries.items():
        for name, retriever in retrievers.items():
            runs[name][query_id] = {d.id: d.score for d in retriever.run(query=text)["documents"]}
        overlaps.append(len(set(runs["weaviate"][query_id]) & set(runs["embedded"][query_id])) / 10)
    assert sum(overlaps) / len(overlaps) >= 0.95
    weaviate_ndcg = evaluate_run(data.qrels, runs["weaviate"])["ndcg@10"]
    embedded_ndcg = evaluate_run(data.qrels, runs["embedded"])["ndcg@10"]
    assert abs(weaviate_ndcg - embedded_ndcg) <= 0.005, (weaviate_ndcg, embedded_ndcg)


def test_evaluate_reproduces_the_published_ndcg(scifact_folder, scifact_embedded, tmp_path, minilm):
    """`dual-encoder evaluate`'s path; the index is pre-filled from the session's embeddings, which the
    evaluation recognises as unchanged instead of encoding the corpus again."""
    from dual_encoder.evaluation import evaluate_embedded

    _, documents = scifact_embedded
    EmbeddedDocumentStore(path=str(tmp_path / "eval")).write_documents(documents)
    calls = []
    original = minilm.encode_documents
    minilm.encode_documents = lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw)
    try:
        report = evaluate_embedded(scifact_folder, encoder=minilm, index_path=tmp_path / "eval", progress_bar=False)
    finally:
        del minilm.encode_documents
    assert sum(calls) < 50, "unchanged documents were encoded again"
    assert report.metrics["ndcg@10"] == pytest.approx(0.645, abs=0.002), report.metrics
    assert report.queries == 300 and report.depth == 1000
