"""The dual encoder against a real Weaviate server started by the test session (never mocked, never
skipped in CI)."""

import os
import threading
import time

import numpy as np
import pytest
import yaml
from haystack import Document, Pipeline
from haystack.document_stores.types import DuplicatePolicy

from dual_encoder.errors import DimensionMismatchError, EncoderMismatchError
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY, parse_stored_space
from dual_encoder.weaviate_server import WeaviateServer, free_port
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore
from haystack_integrations.document_stores.dual_encoder.weaviate_store import PartialWriteError, WeaviateUnavailableError

META_FIELDS = {"year": "int", "topic": "text", "draft": "boolean", "rating": "number"}
CORPUS = [
    ("tides", "Tides are caused by the Moon's gravity pulling on the oceans.", 2019, "sea", False, 4.5),
    ("coral", "Corals bleach when the water stays too warm for weeks.", 2021, "sea", True, 3.0),
    ("bread", "A sourdough starter needs flour and water every day.", 2020, "food", False, 4.0),
    ("rice", "Rinse rice before simmering it with the lid on.", 2023, "food", True, 2.5),
    ("stars", "Stars shine because of nuclear fusion in their cores.", 2018, "space", False, 5.0),
    ("mars", "Dry river valleys show that water once flowed on Mars.", 2022, "space", False, 3.5),
]


@pytest.fixture(scope="module")
def corpus_documents():
    documents = [
        Document(id=i, content=c, meta={"year": y, "topic": t, "draft": d, "rating": r}) for i, c, y, t, d, r in CORPUS
    ]
    return DualEncoderDocumentEmbedder(progress_bar=False).run(documents=documents)["documents"]


def weaviate_store(name, **kwargs):
    return DualEncoderWeaviateDocumentStore(collection_name=name, **{"meta_fields": META_FIELDS, **kwargs})


def retriever_over(store, encoder="all-MiniLM-L6-v2", top_k=10):
    return DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), encoder=encoder, top_k=top_k)


def test_collection_is_created_explicitly_for_the_encoder(weaviate_env, collection_name, corpus_documents, minilm):
    store = weaviate_store(collection_name)
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    config = store.collection.config.get()
    assert config.vectorizer.value == "none"
    assert config.vector_index_type.value == "hnsw"
    assert config.vector_index_config.distance_metric.value == "cosine"
    declared = {p.name: p.data_type.value for p in config.properties}
    assert declared["year"] == "int" and declared["draft"] == "boolean" and declared[DOCUMENT_SPACE_META_KEY] == "text"
    recorded = parse_stored_space(config.description)
    assert (recorded.document_space, recorded.dimension) == (minilm.fingerprint.document_space, 384)


def test_scores_and_order_match_the_embedded_store(weaviate_env, collection_name, corpus_documents):
    weaviate = weaviate_store(collection_name)
    weaviate.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    embedded = EmbeddedDocumentStore()
    embedded.write_documents(corpus_documents)
    for question in ("What pulls the oceans?", "how to bake bread", "is there water on other planets"):
        from_weaviate = retriever_over(weaviate).run(query=question)["documents"]
        from_embedded = retriever_over(embedded).run(query=question)["documents"]
        assert [d.id for d in from_weaviate] == [d.id for d in from_embedded]
        np.testing.assert_allclose([d.score for d in from_weaviate], [d.score for d in from_embedded], atol=1e-5)
        assert from_weaviate[0].meta["topic"] == from_embedded[0].meta["topic"]


FILTERS = [
    {"field": "meta.topic", "operator": "==", "value": "sea"},
    {"field": "meta.topic", "operator": "!=", "value": "sea"},
    {"field": "meta.year", "operator": ">", "value": 2020},
    {"field": "meta.year", "operator": ">=", "value": 2020},
    {"field": "meta.year", "operator": "<", "value": 2020},
    {"field": "meta.rating", "operator": "<=", "value": 3.5},
    {"field": "meta.topic", "operator": "in", "value": ["food", "space"]},
    {"field": "meta.topic", "operator": "not in", "value": ["food", "space"]},
    {"field": "meta.draft", "operator": "==", "value": True},
    {"field": "id", "operator": "in", "value": ["tides", "mars"]},
    {"operator": "AND", "conditions": [
        {"field": "meta.topic", "operator": "==", "value": "space"},
        {"field": "meta.year", "operator": ">=", "value": 2020},
    ]},
    {"operator": "OR", "conditions": [
        {"field": "meta.draft", "operator": "==", "value": True},
        {"field": "meta.rating", "operator": ">=", "value": 5.0},
    ]},
    {"operator": "NOT", "conditions": [
        {"field": "meta.topic", "operator": "in", "value": ["sea", "food"]},
    ]},
]


def test_filters_behave_the_same_on_both_stores(weaviate_env, collection_name, corpus_documents):
    weaviate = weaviate_store(collection_name)
    weaviate.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    embedded = EmbeddedDocumentStore()
    embedded.write_documents(corpus_documents)
    for filters in FILTERS:
        expected = {d.id for d in embedded.filter_documents(filters)}
        assert expected, f"filter selects nothing: {filters}"
        assert {d.id for d in weaviate.filter_documents(filters)} == expected, filters
        retrieved = retriever_over(weaviate).run(query="water", filters=filters)["documents"]
        assert {d.id for d in retrieved} == expected, filters


def test_other_encoders_are_refused_on_write_and_query(
    weaviate_env, collection_name, corpus_documents, other_space_model_dir, minilm
):
    store = weaviate_store(collection_name)
    store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    other = DualEncoderDocumentEmbedder(encoder=str(other_space_model_dir), progress_bar=False)
    foreign = other.run(documents=[Document(id="x", content="Foreign vectors.")])["documents"]
    with pytest.raises(EncoderMismatchError) as error:
        store.write_documents(foreign, policy=DuplicatePolicy.OVERWRITE)
    assert minilm.fingerprint.document_space in str(error.value)
    with pytest.raises(DimensionMismatchError, match="8-d embedding"):
        store.write_documents([Document(id="y", content="short", embedding=[0.1] * 8)], policy=DuplicatePolicy.OVERWRITE)
    assert store.count_documents() == 6
    with pytest.raises(EncoderMismatchError) as error:
        retriever_over(store, encoder=str(other_space_model_dir)).run(query="tides")
    assert other.encoder.fingerprint.document_space in str(error.value)


def test_reindexing_is_idempotent(weaviate_env, collection_name, corpus_documents):
    store = weaviate_store(collection_name)
    for _ in range(3):
        store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    assert store.count_documents() == len(corpus_documents)


def test_unchanged_objects_are_not_sent_again_and_every_change_is(weaviate_env, collection_name, corpus_documents, monkeypatch):
    from dataclasses import replace

    from weaviate.util import generate_uuid5

    store = weaviate_store(collection_name)
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    sent = []
    insert_many = store.collection.data.insert_many
    monkeypatch.setattr(store.collection.data, "insert_many", lambda objects: sent.append(objects) or insert_many(objects))

    # The same documents again (a re-run of the indexing): nothing is sent, all count as written.
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    assert sent == [] and store.unchanged_not_rewritten == 6
    # Batches larger than one lookup (Weaviate caps a query's results) are compared in full too.
    monkeypatch.setattr("haystack_integrations.document_stores.dual_encoder.weaviate_store.STORED_LOOKUP_CHUNK", 4)
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    assert sent == [] and store.unchanged_not_rewritten == 12

    # Content, a meta value, an unset meta value and the embedding each make a document differ.
    by_id = {d.id: d for d in corpus_documents}
    changed = {
        "tides": replace(by_id["tides"], content="Tides follow the Moon."),
        "coral": replace(by_id["coral"], meta={**by_id["coral"].meta, "rating": 3.5}),
        "rice": replace(by_id["rice"], meta={k: v for k, v in by_id["rice"].meta.items() if k != "year"}),
        "bread": replace(by_id["bread"], embedding=[x + 1e-3 for x in by_id["bread"].embedding]),
    }
    documents = [changed.get(d.id, d) for d in corpus_documents]
    assert store.write_documents(documents, policy=DuplicatePolicy.NONE) == 6
    assert [{str(o.uuid) for o in objects} for objects in sent] == [{generate_uuid5(i) for i in changed}]
    assert store.unchanged_not_rewritten == 14
    stored = {d.id: d for d in store.filter_documents()}
    assert stored["tides"].content == "Tides follow the Moon." and stored["coral"].meta["rating"] == 3.5
    assert stored["rice"].meta.get("year") is None
    np.testing.assert_allclose(stored["bread"].embedding, changed["bread"].embedding, atol=1e-6)


def test_dates_are_always_written_again_since_they_read_back_in_another_type(weaviate_env, collection_name, corpus_documents):
    store = weaviate_store(collection_name, meta_fields={**META_FIELDS, "published": "date"})
    first = replace_meta(corpus_documents[0], published="2024-05-01T10:00:00.250Z")
    store.write_documents([first], policy=DuplicatePolicy.OVERWRITE)
    store.write_documents([first], policy=DuplicatePolicy.OVERWRITE)
    # Only the sub-second part changes, which weaviate-haystack's read-back would round away.
    store.write_documents([replace_meta(first, published="2024-05-01T10:00:00.750Z")], policy=DuplicatePolicy.OVERWRITE)
    assert store.unchanged_not_rewritten == 0
    raw = store.collection.query.fetch_objects(limit=1).objects[0].properties["published"]
    assert raw.microsecond == 750_000


def replace_meta(document, **meta):
    from dataclasses import replace

    return replace(document, meta={**document.meta, **meta})


def test_refused_objects_are_named_with_the_reason(weaviate_env, collection_name, corpus_documents):
    store = weaviate_store(collection_name)
    store.write_documents(corpus_documents[:2], policy=DuplicatePolicy.OVERWRITE)
    bad = Document(id="bad-year", content="x", meta={"year": "not a number"}, embedding=corpus_documents[0].embedding)
    with pytest.raises(PartialWriteError) as error:
        store.write_documents([corpus_documents[2], bad], policy=DuplicatePolicy.OVERWRITE)
    assert list(error.value.failed) == ["bad-year"] and "bad-year" in str(error.value)
    assert {d.id for d in store.filter_documents()} == {"tides", "coral", "bread"}


def test_unreachable_server_fails_fast_and_clearly():
    store = DualEncoderWeaviateDocumentStore(url=f"http://127.0.0.1:{free_port()}", grpc_port=free_port(), timeout=2)
    started = time.monotonic()
    with pytest.raises(WeaviateUnavailableError, match="Cannot use Weaviate at http://127.0.0.1"):
        store.count_documents()
    assert time.monotonic() - started < 15


def test_missing_url_is_explained(monkeypatch):
    monkeypatch.delenv("WEAVIATE_URL", raising=False)
    with pytest.raises(ValueError, match="WEAVIATE_URL"):
        DualEncoderWeaviateDocumentStore().count_documents()


def test_server_killed_during_indexing_then_reindexed_gives_an_exact_count(tmp_path):
    server = WeaviateServer(data_dir=tmp_path / "node").start()
    rng = np.random.default_rng(0)
    documents = [
        Document(id=f"d{i}", content=f"document {i}", meta={DOCUMENT_SPACE_META_KEY: "ds1-synthetic"},
                 embedding=rng.normal(size=32).tolist())
        for i in range(30000)
    ]
    try:
        store = DualEncoderWeaviateDocumentStore(url=server.url, grpc_port=server.ports.grpc, collection_name="Crash", timeout=5)
        outcome = {}

        def index():
            try:
                for start in range(0, len(documents), 500):
                    store.write_documents(documents[start:start + 500], policy=DuplicatePolicy.OVERWRITE)
                outcome["finished"] = True
            except WeaviateUnavailableError as error:
                outcome["error"] = error

        # The first batch is written before the observer looks: a collection's index is created a moment
        # after its schema, and counting in between fails with "non-existing index".
        store.write_documents(documents[:500], policy=DuplicatePolicy.OVERWRITE)
        # A second client watches progress, so the writer's connection is only ever used by the writer.
        observer = DualEncoderWeaviateDocumentStore(url=server.url, grpc_port=server.ports.grpc, collection_name="Crash", timeout=5)
        worker = threading.Thread(target=index)
        worker.start()
        deadline = time.monotonic() + 120
        while observer.count_documents() < 1000 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.is_alive(), f"indexing ended before the server could be killed: {outcome}"
        server.kill()
        worker.join(timeout=120)
        assert not worker.is_alive(), "indexing hung after the server died"
        assert "error" in outcome and outcome["error"].unconfirmed_ids, outcome
        server.start()
        restarted = DualEncoderWeaviateDocumentStore(url=server.url, grpc_port=server.ports.grpc, collection_name="Crash", timeout=5)
        # After a crash the node replays its write-ahead log; gRPC can refuse connections for a few seconds
        # after REST reports ready. This test is about the data, so it waits for gRPC instead of failing.
        deadline = time.monotonic() + 60
        while True:
            try:
                count = restarted.count_documents()
                break
            except WeaviateUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert count < len(documents)
        for start in range(0, len(documents), 2000):
            restarted.write_documents(documents[start:start + 2000], policy=DuplicatePolicy.OVERWRITE)
        assert restarted.count_documents() == len(documents)
        assert {d.id for d in restarted.filter_documents({"field": "id", "operator": "in", "value": ["d0", "d29999"]})} == {"d0", "d29999"}
    finally:
        server.stop()


def test_api_key_authentication(tmp_path, monkeypatch, corpus_documents):
    import urllib.error
    import urllib.request

    server = WeaviateServer(data_dir=tmp_path / "secure", api_keys=["test-key-123"]).start()
    try:
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{server.url}/v1/schema")
        monkeypatch.setenv("WEAVIATE_URL", server.url)
        monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(server.ports.grpc))
        monkeypatch.delenv("WEAVIATE_API_KEY", raising=False)
        with pytest.raises(WeaviateUnavailableError, match="401"):
            DualEncoderWeaviateDocumentStore(collection_name="Secure").count_documents()
        monkeypatch.setenv("WEAVIATE_API_KEY", "test-key-123")
        store = DualEncoderWeaviateDocumentStore(collection_name="Secure", meta_fields=META_FIELDS)
        store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
        assert retriever_over(store).run(query="What pulls the oceans?")["documents"][0].id == "tides"
        serialized = yaml.safe_dump(store.to_dict())
        assert "test-key-123" not in serialized and server.url not in serialized
    finally:
        server.stop()


def test_weaviate_yaml_pipelines_run_with_env_secrets(weaviate_env, monkeypatch):
    import importlib.util
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    text = (examples / "weaviate_indexing_pipeline.yaml").read_text()
    assert weaviate_env.url not in text and "WEAVIATE_URL" in text
    spec = importlib.util.spec_from_file_location("build_pipelines", examples / "build_pipelines.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    assert yaml.safe_load(text) == builders.build_indexing_pipeline(weaviate=True).to_dict()
    indexing = Pipeline.loads(text)
    assert indexing.run({"embedder": {"documents": builders.sample_documents()}})["writer"]["documents_written"] == 30
    # Running it again over the unchanged corpus reads the stored embeddings back from Weaviate: nothing is
    # encoded, and the same 30 documents are written with the same vectors.
    embedder = indexing.get_component("embedder")
    encoded = []
    monkeypatch.setattr(embedder.encoder, "encode_documents", lambda texts, **kw: encoded.extend(texts))
    assert indexing.run({"embedder": {"documents": builders.sample_documents()}})["writer"]["documents_written"] == 30
    assert encoded == []
    query = Pipeline.loads((examples / "weaviate_query_pipeline.yaml").read_text())
    question = "Why do we have summer and winter?"
    result = query.run({"retriever": {"query": question}, "prompt_builder": {"question": question}},
                       include_outputs_from={"retriever"})
    assert result["retriever"]["documents"][0].id == "seasons"


async def test_async_matches_sync(weaviate_env, collection_name, corpus_documents):
    store = weaviate_store(collection_name)
    await store.write_documents_async(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    retriever = retriever_over(store, top_k=3)
    sync = retriever.run(query="fusion in stars")["documents"]
    asynchronous = (await retriever.run_async(query="fusion in stars"))["documents"]
    assert [(d.id, d.score) for d in sync] == [(d.id, d.score) for d in asynchronous]


def test_round_trips_through_to_dict(monkeypatch):
    store = DualEncoderWeaviateDocumentStore(collection_name="Rt", similarity="dot", meta_fields={"a": "int"}, grpc_port=1234, timeout=3)
    clone = DualEncoderWeaviateDocumentStore.from_dict(store.to_dict())
    assert clone.to_dict() == store.to_dict()
    assert (clone.collection_name, clone.similarity, clone.meta_fields, clone.grpc_port, clone.timeout) == ("Rt", "dot", {"a": "int"}, 1234, 3)


def _sample_beir(folder):
    import json
    from importlib import resources

    rows = [json.loads(line) for line in
            resources.files("dual_encoder.sample_data").joinpath("corpus.jsonl").read_text().splitlines() if line.strip()]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": row["id"], "title": "", "text": row["content"]}) + "\n" for row in rows))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q-{row['id']}", "text": row["meta"]["title"]}) + "\n" for row in rows))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{row['id']}\t{row['id']}\t1\n" for row in rows))
    return folder


def test_evaluate_command_scores_weaviate_like_the_embedded_store(weaviate_env, collection_name, tmp_path):
    import json

    from typer.testing import CliRunner

    from dual_encoder.cli import app
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.evaluation import evaluate_embedded

    folder = _sample_beir(tmp_path / "beir")
    embedded = evaluate_embedded(folder, encoder=DualEncoder("all-MiniLM-L6-v2"), progress_bar=False)
    result = CliRunner().invoke(app, [
        "evaluate", str(folder), "--store-type", "weaviate", "--weaviate-collection", collection_name,
        "--no-progress", "--output", str(tmp_path / "weaviate.json"),
    ])
    assert result.exit_code == 0, result.output
    assert "weaviate store" in result.output
    metrics = json.loads((tmp_path / "weaviate.json").read_text())["metrics"]
    assert embedded.metrics["ndcg@10"] > 0.5
    for name, value in embedded.metrics.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name


def test_evaluate_command_names_unknown_store_types(tmp_path):
    from dual_encoder.errors import ConfigurationError
    from dual_encoder.evaluation import evaluation_store

    with pytest.raises(ConfigurationError, match="Unknown evaluation store 'qdrant'; available: embedded, weaviate"):
        evaluation_store("qdrant")
