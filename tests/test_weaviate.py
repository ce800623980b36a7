"""The dual encoder against a real Weaviate server started by the test session (never mocked, never
skipped in CI): the core store (:class:`dual_encoder_weaviate.WeaviateStore`), its Haystack adapter, the
server tool and the plug-ins."""

import threading
import time

import numpy as np
import pytest
import yaml
from dual_encoder_weaviate import PartialWriteError, WeaviateStore, WeaviateUnavailableError
from dual_encoder_weaviate.collection import parse_stored_space, vector_settings
from dual_encoder_weaviate.server import WeaviateServer, free_port
from haystack import Document, Pipeline
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore, EmbeddedDocumentStore

from dual_encoder.errors import DimensionMismatchError, EncoderMismatchError
from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY
from dual_encoder.stores import DuplicatePolicy as StorePolicy
from dual_encoder.stores import StoredRecord

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
    vectorizer, index = vector_settings(config)
    assert vectorizer == "none"
    assert index.vector_index_type() == "hnsw" and index.distance_metric.value == "cosine"
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
    {
        "operator": "AND",
        "conditions": [
            {"field": "meta.topic", "operator": "==", "value": "space"},
            {"field": "meta.year", "operator": ">=", "value": 2020},
        ],
    },
    {
        "operator": "OR",
        "conditions": [
            {"field": "meta.draft", "operator": "==", "value": True},
            {"field": "meta.rating", "operator": ">=", "value": 5.0},
        ],
    },
    {
        "operator": "NOT",
        "conditions": [
            {"field": "meta.topic", "operator": "in", "value": ["sea", "food"]},
        ],
    },
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
        store.write_documents(
            [Document(id="y", content="short", embedding=[0.1] * 8)], policy=DuplicatePolicy.OVERWRITE
        )
    assert store.count_documents() == 6
    with pytest.raises(EncoderMismatchError) as error:
        retriever_over(store, encoder=str(other_space_model_dir)).run(query="tides")
    assert other.encoder.fingerprint.document_space in str(error.value)


def test_reindexing_is_idempotent(weaviate_env, collection_name, corpus_documents):
    store = weaviate_store(collection_name)
    for _ in range(3):
        store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    assert store.count_documents() == len(corpus_documents)


def test_unchanged_objects_are_not_sent_again_and_every_change_is(
    weaviate_env, collection_name, corpus_documents, monkeypatch
):
    from dataclasses import replace

    from weaviate.util import generate_uuid5

    store = weaviate_store(collection_name)
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    sent = []
    insert_many = store.collection.data.insert_many
    monkeypatch.setattr(
        store.collection.data, "insert_many", lambda objects: sent.append(objects) or insert_many(objects)
    )

    # The same documents again (a re-run of the indexing): nothing is sent, all count as written.
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    assert sent == [] and store.unchanged_not_rewritten == 6
    # Batches larger than one lookup (Weaviate caps a query's results) are compared in full too.
    monkeypatch.setattr("dual_encoder_weaviate.store.ID_CHUNK", 4)
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
    assert store.write_documents(documents, policy=DuplicatePolicy.OVERWRITE) == 6
    assert [{str(o.uuid) for o in objects} for objects in sent] == [{generate_uuid5(i) for i in changed}]
    assert store.unchanged_not_rewritten == 14
    stored = {d.id: d for d in store.filter_documents()}
    assert stored["tides"].content == "Tides follow the Moon." and stored["coral"].meta["rating"] == 3.5
    assert stored["rice"].meta.get("year") is None
    np.testing.assert_allclose(stored["bread"].embedding, changed["bread"].embedding, atol=1e-6)


def test_dates_are_always_written_again_since_they_read_back_in_another_type(
    weaviate_env, collection_name, corpus_documents
):
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


def test_a_node_that_has_not_opened_the_collection_yet_is_asked_again_for_a_bounded_time(monkeypatch):
    """Just after a collection is created, a cluster node can know it from the schema but not have opened its
    copy ("tried to browse non-existing index"); the call is sent again until it has, and not forever."""
    from dual_encoder_weaviate import store as store_module

    not_loaded = RuntimeError("explorer: list class: search: tried to browse non-existing index for Docs")
    answers = [not_loaded, not_loaded, "hits"]

    def node(*args, **kwargs):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert store_module._waiting_for_index_load(node, (), {}) == "hits"
    assert answers == []

    monkeypatch.setattr(store_module, "INDEX_LOAD_WAIT_SECONDS", 0.3)
    calls = []

    def never_loads(*args, **kwargs):
        calls.append(time.monotonic())
        raise not_loaded

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="non-existing index"):
        store_module._waiting_for_index_load(never_loads, (), {})
    assert len(calls) > 1 and time.monotonic() - started < 2

    other = RuntimeError("class Docs not found")  # any other refusal is not retried
    calls.clear()

    def refuses(*args, **kwargs):
        calls.append(1)
        raise other

    with pytest.raises(RuntimeError, match="not found"):
        store_module._waiting_for_index_load(refuses, (), {})
    assert len(calls) == 1


def test_server_killed_during_indexing_then_reindexed_gives_an_exact_count(tmp_path):
    server = WeaviateServer(data_dir=tmp_path / "node").start()
    rng = np.random.default_rng(0)
    documents = [
        Document(
            id=f"d{i}",
            content=f"document {i}",
            meta={DOCUMENT_SPACE_META_KEY: "ds1-synthetic"},
            embedding=rng.normal(size=32).tolist(),
        )
        for i in range(10000)
    ]
    try:
        store = DualEncoderWeaviateDocumentStore(
            url=server.url, grpc_port=server.ports.grpc, collection_name="Crash", timeout=5
        )
        outcome = {}

        def index():
            try:
                for start in range(0, len(documents), 500):
                    store.write_documents(documents[start : start + 500], policy=DuplicatePolicy.OVERWRITE)
                outcome["finished"] = True
            except WeaviateUnavailableError as error:
                outcome["error"] = error

        # The first batch is written before the observer looks: a collection's index is created a moment
        # after its schema, and counting in between fails with "non-existing index".
        store.write_documents(documents[:500], policy=DuplicatePolicy.OVERWRITE)
        # A second client watches progress, so the writer's connection is only ever used by the writer.
        observer = DualEncoderWeaviateDocumentStore(
            url=server.url, grpc_port=server.ports.grpc, collection_name="Crash", timeout=5
        )
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
        restarted = DualEncoderWeaviateDocumentStore(
            url=server.url, grpc_port=server.ports.grpc, collection_name="Crash", timeout=5
        )
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
            restarted.write_documents(documents[start : start + 2000], policy=DuplicatePolicy.OVERWRITE)
        assert restarted.count_documents() == len(documents)
        assert {
            d.id for d in restarted.filter_documents({"field": "id", "operator": "in", "value": ["d0", "d9999"]})
        } == {"d0", "d9999"}
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
    result = query.run(
        {"retriever": {"query": question}, "prompt_builder": {"question": question}}, include_outputs_from={"retriever"}
    )
    assert result["retriever"]["documents"][0].id == "seasons"


async def test_async_matches_sync(weaviate_env, collection_name, corpus_documents):
    store = weaviate_store(collection_name)
    await store.write_documents_async(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    retriever = retriever_over(store, top_k=3)
    sync = retriever.run(query="fusion in stars")["documents"]
    asynchronous = (await retriever.run_async(query="fusion in stars"))["documents"]
    assert [(d.id, d.score) for d in sync] == [(d.id, d.score) for d in asynchronous]


def test_round_trips_through_to_dict(monkeypatch):
    store = DualEncoderWeaviateDocumentStore(
        collection_name="Rt", similarity="dot", meta_fields={"a": "int"}, grpc_port=1234, timeout=3
    )
    clone = DualEncoderWeaviateDocumentStore.from_dict(store.to_dict())
    assert clone.to_dict() == store.to_dict()
    assert (clone.collection_name, clone.similarity, clone.meta_fields, clone.grpc_port, clone.timeout) == (
        "Rt",
        "dot",
        {"a": "int"},
        1234,
        3,
    )


def _sample_beir(folder):
    import json
    from importlib import resources

    rows = [
        json.loads(line)
        for line in resources.files("dual_encoder.sample_data").joinpath("corpus.jsonl").read_text().splitlines()
        if line.strip()
    ]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": row["id"], "title": "", "text": row["content"]}) + "\n" for row in rows)
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q-{row['id']}", "text": row["meta"]["title"]}) + "\n" for row in rows)
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{row['id']}\t{row['id']}\t1\n" for row in rows)
    )
    return folder


def test_evaluate_command_scores_weaviate_like_the_embedded_store(weaviate_env, collection_name, tmp_path):
    import json

    from typer.testing import CliRunner

    from dual_encoder.cli import app
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.evaluation import evaluate_embedded

    folder = _sample_beir(tmp_path / "beir")
    embedded = evaluate_embedded(folder, encoder=DualEncoder("all-MiniLM-L6-v2"), progress_bar=False)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(folder),
            "--store-type",
            "weaviate",
            "--store-option",
            f"collection={collection_name}",
            "--no-progress",
            "--output",
            str(tmp_path / "weaviate.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "weaviate store" in result.output
    metrics = json.loads((tmp_path / "weaviate.json").read_text())["metrics"]
    assert embedded.metrics["ndcg@10"] > 0.5
    for name, value in embedded.metrics.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name


def test_evaluate_command_names_unknown_store_types():
    from dual_encoder.errors import ConfigurationError
    from dual_encoder.plugins import open_store

    with pytest.raises(ConfigurationError, match="Unknown store type 'qdrant'; registered store plug-ins: .*weaviate"):
        open_store("qdrant")


# ------------------------------------------------------------------------------ the core store and plug-ins
def core_store(weaviate_server, name, **kwargs):
    return WeaviateStore(url=weaviate_server.url, grpc_port=weaviate_server.ports.grpc, collection=name, **kwargs)


def as_records(documents):
    return [
        StoredRecord(id=d.id, content=d.content, meta=dict(d.meta), embedding=np.asarray(d.embedding, np.float32))
        for d in documents
    ]


def test_store_plugin_is_found_by_name_and_works(weaviate_env, collection_name, corpus_documents):
    from dual_encoder.plugins import open_store, store_names

    assert "weaviate" in store_names()
    store = open_store("weaviate", collection=collection_name, meta_fields="year:int,topic:text", timeout="5")
    assert isinstance(store, WeaviateStore) and store.meta_fields == {"year": "int", "topic": "text"}
    summary = store.upsert(as_records(corpus_documents))
    assert (summary.written, summary.unchanged) == (6, 0)
    assert store.upsert(as_records(corpus_documents)).unchanged == 6  # what _fetch returns compares equal
    assert store.count({"field": "meta.year", "operator": ">=", "value": 2021}) == 3
    from dual_encoder.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="Unknown Weaviate store option"):
        open_store("weaviate", colection="typo")


def test_weaviate_cli_is_a_plugin_sub_app(tmp_path):
    from typer.testing import CliRunner

    from dual_encoder.cli import app

    result = CliRunner().invoke(app, ["weaviate", "status", "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "No node is running" in result.output
    assert "weaviate" in CliRunner().invoke(app, ["--help"]).output


def test_vector_search_async_returns_similarities_not_certainties(
    weaviate_server, collection_name, corpus_documents, minilm
):
    import asyncio

    store = core_store(weaviate_server, collection_name)
    store.upsert(as_records(corpus_documents))
    query = minilm.encode_query("Why does the sea rise and fall?")
    sync = store.vector_search(query, top_k=6)
    asynchronous = asyncio.run(store.vector_search_async(query, top_k=6))
    assert sync.method == asynchronous.method == "approximate"
    assert [(h.record.id, h.score) for h in sync.hits] == [(h.record.id, h.score) for h in asynchronous.hits]
    vectors = {d.id: np.asarray(d.embedding, np.float32) for d in corpus_documents}
    for hit in asynchronous.hits:  # the cosine itself (the vectors are normalised), not (1 + cos) / 2
        assert hit.score == pytest.approx(float(vectors[hit.record.id] @ query), abs=1e-5)
    assert asynchronous.hits[0].record.id == "tides" and asynchronous.hits[-1].score < 0.5


async def test_a_fresh_haystack_store_works_through_its_async_methods_first(
    weaviate_env, collection_name, corpus_documents
):
    store = weaviate_store(collection_name)
    assert await store.count_documents_async() == 0
    assert await store.write_documents_async(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    by_id = await store.filter_documents_async({"field": "id", "operator": "in", "value": ["tides", "mars"]})
    assert {d.id for d in by_id} == {"tides", "mars"}
    query = corpus_documents[0].embedding
    not_food = {"field": "meta.topic", "operator": "!=", "value": "food"}
    asynchronous = await store.embedding_retrieval_async(query, top_k=3, filters=not_food)
    sync = store.embedding_retrieval(query, top_k=3, filters=not_food)
    assert [(d.id, d.score, d.meta) for d in asynchronous] == [(d.id, d.score, d.meta) for d in sync]
    assert asynchronous[0].id == "tides" and asynchronous[0].score == pytest.approx(1.0, abs=1e-5)
    await store.delete_documents_async(["tides"])
    assert await store.count_documents_async() == 5
    await store.close_async()


def test_keyword_and_hybrid_search(weaviate_server, collection_name, corpus_documents, minilm):
    store = core_store(weaviate_server, collection_name)
    assert store.supports_keyword_search
    store.upsert(as_records(corpus_documents))
    keyword = store.keyword_search("sourdough starter flour", top_k=3)
    assert keyword.method == "keyword" and keyword.hits[0].record.id == "bread" and keyword.hits[0].score > 0
    assert store.keyword_search("flour", filters={"field": "meta.topic", "operator": "==", "value": "sea"}).hits == []
    query = minilm.encode_query("What makes stars shine?")
    vector_order = [h.record.id for h in store.vector_search(query, top_k=6).hits]
    vector_only = store.hybrid_search("What makes stars shine?", query, top_k=6, alpha=1.0)
    assert [h.record.id for h in vector_only.hits] == vector_order
    bm25_only = store.hybrid_search("sourdough starter flour", query, top_k=3, alpha=0.0)
    assert bm25_only.hits[0].record.id == "bread"


def test_listing_pages_through_the_collection_and_past_the_result_cap(
    weaviate_server, collection_name, corpus_documents, monkeypatch
):
    store = core_store(weaviate_server, collection_name, meta_fields=META_FIELDS)
    store.upsert(as_records(corpus_documents))
    where = {"field": "meta.year", "operator": ">=", "value": 2020}
    expected = {d.id for d in corpus_documents if d.meta["year"] >= 2020}
    assert {r.id for r in store.list(where)} == expected
    monkeypatch.setattr("dual_encoder_weaviate.store.PAGE_SIZE", 2)  # several cursor pages
    monkeypatch.setattr("dual_encoder_weaviate.store.QUERY_MAXIMUM_RESULTS", 2)  # more matches than one query returns
    listed = store.list()
    assert sorted(r.id for r in listed) == sorted(d.id for d in corpus_documents)
    assert all(r.embedding is not None and r.embedding.dtype == np.float32 for r in listed)
    assert {r.id for r in store.list(where)} == expected


def test_blob_and_sparse_embedding_round_trip(weaviate_env, collection_name, corpus_documents):
    from dataclasses import replace

    from haystack.dataclasses import ByteStream, SparseEmbedding

    store = weaviate_store(collection_name)
    document = replace(
        corpus_documents[0],
        blob=ByteStream(data=b"\x00\x01binary\xff", mime_type="application/x-test", meta={"source": "test"}),
        sparse_embedding=SparseEmbedding(indices=[3, 7], values=[0.5, 0.25]),
    )
    store.write_documents([document], policy=DuplicatePolicy.OVERWRITE)
    [stored] = store.filter_documents()
    assert stored.blob == document.blob and stored.sparse_embedding == document.sparse_embedding
    raw = store.collection.query.fetch_objects(return_properties=["blob_data", "blob_mime_type"]).objects[0].properties
    assert raw["blob_mime_type"] == "application/x-test" and raw["blob_data"]  # weaviate-haystack's layout
    store.write_documents([document], policy=DuplicatePolicy.OVERWRITE)
    assert store.unchanged_not_rewritten == 1


def test_collections_written_by_weaviate_haystack_keep_working(weaviate_env, collection_name, corpus_documents):
    from haystack_integrations.document_stores.weaviate import WeaviateDocumentStore

    legacy = WeaviateDocumentStore(
        url=weaviate_env.url, collection_settings={"class": collection_name}, grpc_port=weaviate_env.ports.grpc
    )
    legacy.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE)
    legacy.client.close()
    store = weaviate_store(collection_name)
    stored = {d.id: d for d in store.filter_documents()}
    assert set(stored) == {d.id for d in corpus_documents}
    assert stored["coral"].meta["topic"] == "sea" and stored["coral"].meta["draft"] is True
    assert store.filter_documents({"field": "id", "operator": "==", "value": "mars"})[0].content == CORPUS[5][1]
    hits = store.embedding_retrieval(corpus_documents[2].embedding, top_k=2)
    assert hits[0].id == "bread" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # What the old store wrote reads back as the same records, so a re-run sends nothing.
    assert store.write_documents(corpus_documents, policy=DuplicatePolicy.OVERWRITE) == 6
    assert store.unchanged_not_rewritten == 6


def test_delete_all_forgets_the_recorded_space(weaviate_server, collection_name, corpus_documents):
    store = core_store(weaviate_server, collection_name)
    store.upsert(as_records(corpus_documents))
    assert store.embedding_space().dimension == 384
    store.delete_all()
    assert store.count() == 0 and store.embedding_space().document_space is None
    other = StoredRecord(
        id="x", content="eight dims", meta={DOCUMENT_SPACE_META_KEY: "ds1-other"}, embedding=np.ones(8, np.float32)
    )
    store.upsert([other])
    assert store.embedding_space().dimension == 8
    fresh = core_store(weaviate_server, collection_name)  # the description recorded the new space
    assert (fresh.embedding_space().document_space, fresh.embedding_space().dimension) == ("ds1-other", 8)
    assert fresh.delete(["x", "missing"]) == 1 and fresh.count() == 0


def test_write_policies_through_the_contract(weaviate_server, collection_name, corpus_documents):
    from dual_encoder.errors import DuplicateIdError

    store = core_store(weaviate_server, collection_name)
    records = as_records(corpus_documents)
    store.upsert(records[:3])
    with pytest.raises(DuplicateIdError):
        store.upsert(records[:4], policy=StorePolicy.FAIL)
    assert store.count() == 3
    changed = [StoredRecord(id=r.id, content="changed", meta=r.meta, embedding=r.embedding) for r in records[:4]]
    summary = store.upsert(changed, policy=StorePolicy.SKIP)
    assert (summary.written, summary.skipped) == (1, 3)
    assert store.stored_versions(["tides"])["tides"].content == CORPUS[0][1]


def test_a_similarity_other_than_the_collections_is_refused(weaviate_server, collection_name, corpus_documents):
    from dual_encoder.errors import ConfigurationError

    core_store(weaviate_server, collection_name).upsert(as_records(corpus_documents[:1]))
    with pytest.raises(ConfigurationError, match="uses the 'cosine' distance"):
        core_store(weaviate_server, collection_name, similarity="dot").count()


def test_exact_search_is_the_reference_for_hnsw(weaviate_server, collection_name, corpus_documents, minilm):
    store = core_store(weaviate_server, collection_name, meta_fields=META_FIELDS)
    store.upsert(as_records(corpus_documents))
    query = minilm.encode_query("warm water and coral")
    where = {"field": "meta.topic", "operator": "!=", "value": "food"}
    exact = store.vector_search(query, top_k=3, filters=where, exact=True)
    approximate = store.vector_search(query, top_k=3, filters=where)
    assert (exact.method, approximate.method) == ("exact", "approximate")
    assert [h.record.id for h in exact.hits] == [h.record.id for h in approximate.hits]
    np.testing.assert_allclose([h.score for h in exact.hits], [h.score for h in approximate.hits], atol=1e-5)
    assert all(h.record.meta["topic"] != "food" for h in exact.hits)


def test_the_weaviate_package_imports_neither_haystack_nor_langchain():
    import subprocess
    import sys

    code = (
        "import sys, dual_encoder_weaviate.store, dual_encoder_weaviate.cli, dual_encoder.plugins; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('haystack', 'langchain'))}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_meta_names_weaviate_reserves_are_stored_escaped_and_read_back(weaviate_server, collection_name):
    """LangChain documents often carry ``metadata={"id": ...}``: reserved names are escaped, never refused."""
    store = WeaviateStore(
        url=weaviate_server.url,
        grpc_port=weaviate_server.ports.grpc,
        collection=collection_name,
        meta_fields={"id": "int"},
    )
    meta = {"id": 7, "content": "in meta", "score": 0.5, "vector": "v", "_id": "x", "_meta_kept": 1, "plain": 2}
    vectors = np.eye(4, dtype=np.float32)
    store.upsert(
        [
            StoredRecord(id="doc", content="the text", meta=meta, embedding=vectors[0]),
            StoredRecord(id="other", content="in meta", meta={"id": 8}, embedding=vectors[1]),
        ]
    )
    assert store.stored_versions(["doc"])["doc"].meta == meta
    assert store.stored_versions(["doc"])["doc"].content == "the text"
    properties = {p.name: p.data_type.value for p in store.collection.config.get().properties}
    assert properties["_meta_id"] == "int" and "_meta__meta_kept" in properties and "id" not in properties
    by_meta_id = store.vector_search(vectors[0], top_k=5, filters={"field": "meta.id", "operator": "<", "value": 8})
    assert [hit.record.id for hit in by_meta_id.hits] == ["doc"]
    by_content = store.vector_search(
        vectors[0], top_k=5, filters={"field": "content", "operator": "==", "value": "in meta"}
    )
    assert [hit.record.id for hit in by_content.hits] == ["other"]
    by_meta_content = store.count({"field": "meta.content", "operator": "==", "value": "in meta"})
    assert by_meta_content == 1
    store.close()
