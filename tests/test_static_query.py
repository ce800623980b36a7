"""The static-query architecture and its torch-free query path, on tiny data (the bundled sample corpus)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "src" / "dual_encoder" / "sample_data" / "corpus.jsonl"


def _write_beir_folder(folder: Path, *, with_labels: bool) -> Path:
    """The sample corpus as a BEIR folder; each document's title is a query whose positive is that document."""
    folder.mkdir(parents=True)
    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for row in rows:
            corpus.write(json.dumps({"_id": row["id"], "title": "", "text": row["content"]}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as queries:
        for row in rows:
            queries.write(json.dumps({"_id": f"q-{row['id']}", "text": row["meta"]["title"]}) + "\n")
    if with_labels:
        (folder / "qrels").mkdir()
        lines = ["query-id\tcorpus-id\tscore"] + [f"q-{row['id']}\t{row['id']}\t1" for row in rows]
        (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _config(data: Path, output: Path, **options):
    from dual_encoder.training import TrainingConfig

    settings = {
        "data": data,
        "output": output,
        "architecture": "static-query",
        "static_query_init": "token-embeddings",
        "static_query_epochs": 4,
        "static_query_batch_size": 16,
        "static_query_learning_rate": 0.05,
        "dev_fraction": 0.0,
        "progress_bar": False,
        "precision": "fp32",
    }
    return TrainingConfig(**(settings | options))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dual_encoder.training import train

    root = tmp_path_factory.mktemp("static-query")
    data = _write_beir_folder(root / "data", with_labels=True)
    return train(_config(data, root / "model"), announce=None)


@pytest.fixture(scope="module")
def static_model_dir(trained) -> Path:
    return Path(trained.model_path)


QUERIES = ["Why does the sea rise and fall?", "coral reefs turning white", "How do heat pumps work in winter?"]


def test_training_lowers_the_loss(trained):
    losses = [entry["loss"] for entry in trained.report["history"]["loss"]]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert trained.report["architecture"] == "static-query"
    assert trained.report["objective"] == "both"
    assert trained.report["status"] == "not_checked"  # no dev slice: the last epoch is saved
    timing = trained.report["query_encoding"]
    assert timing["static_p50_ms"] > 0 and timing["full_p50_ms"] > 0


def test_saved_model_reloads_in_the_base_models_document_space(static_model_dir, minilm):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    from dual_encoder.encoder import DualEncoder

    reloaded = SentenceTransformer(str(static_model_dir), device="cpu")
    assert isinstance(reloaded[0], Router)
    assert isinstance(reloaded[0].sub_modules["query"][0], StaticEmbedding)

    encoder = DualEncoder(str(static_model_dir))
    assert encoder.fingerprint.document_space == minilm.fingerprint.document_space
    assert encoder.fingerprint.query_tower != minilm.fingerprint.query_tower
    documents = ["Tides are caused by the Moon.", "Heat pumps move heat instead of making it."]
    np.testing.assert_allclose(encoder.encode_documents(documents), minilm.encode_documents(documents), atol=1e-6)
    queries = encoder.encode_queries(QUERIES)
    assert queries.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    # The trained tower ranks the sample corpus sensibly: the tides question finds the tides document first.
    corpus = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    vectors = minilm.encode_documents([row["content"] for row in corpus])
    assert corpus[int(np.argmax(vectors @ queries[0]))]["id"] == "tides"


def test_torch_free_path_equals_the_torch_path(static_model_dir):
    from sentence_transformers import SentenceTransformer

    from dual_encoder.encoder import DualEncoder
    from dual_encoder.static_query import load_static_query_encoder

    torch_vectors = SentenceTransformer(str(static_model_dir), device="cpu").encode_query(QUERIES)
    numpy_vectors = load_static_query_encoder(static_model_dir).encode(QUERIES)
    np.testing.assert_allclose(numpy_vectors, torch_vectors, atol=1e-5)
    np.testing.assert_allclose(DualEncoder(str(static_model_dir)).encode_queries(QUERIES), torch_vectors, atol=1e-5)


def test_a_query_only_process_loads_neither_torch_nor_the_document_tower(static_model_dir, tmp_path, minilm):
    """Index with the base model, then answer a query in a fresh process through the Haystack retriever."""
    from haystack import Document
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder
    from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore

    store_path = tmp_path / "index"
    store = EmbeddedDocumentStore(path=str(store_path))
    corpus = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    documents = [Document(id=row["id"], content=row["content"]) for row in corpus]
    store.write_documents(DualEncoderDocumentEmbedder(encoder="all-MiniLM-L6-v2").run(documents=documents)["documents"])
    store.close() if hasattr(store, "close") else None

    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HAYSTACK_TELEMETRY_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }

    def run(script: str) -> dict:
        completed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=600, check=False
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        return json.loads(completed.stdout.strip().splitlines()[-1])

    heavy = 'sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)'
    # The framework-free core: nothing imports torch.
    core = run(f"""
import json, sys
from dual_encoder.embedded import open_embedded_store
from dual_encoder.encoder import DualEncoder
encoder = DualEncoder({str(static_model_dir)!r})
store = open_embedded_store({str(store_path)!r})
store.check_encoder(encoder.fingerprint)
hits = store.vector_search(encoder.encode_query("Why does the sea rise and fall?"), top_k=3).hits
print(json.dumps({{"ids": [hit.record.id for hit in hits], "heavy": {heavy}}}))
""")
    assert core["heavy"] == []
    assert core["ids"][0] == "tides"
    # Haystack itself imports torch when it is installed (haystack.utils.device); with torch made unimportable,
    # the components still answer, so nothing of ours needs it.
    adapters = run(f"""
import json, sys
sys.modules["torch"] = None
from haystack_integrations.components.embedders.dual_encoder import DualEncoderTextEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import EmbeddedDocumentStore
from langchain_dual_encoder.embeddings import DualEncoderEmbeddings
store = EmbeddedDocumentStore(path={str(store_path)!r})
retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=store), encoder={str(static_model_dir)!r})
found = retriever.run(query="Why does the sea rise and fall?", top_k=3)["documents"]
embedding = DualEncoderTextEmbedder(encoder={str(static_model_dir)!r}).run(text="coral")["embedding"]
langchain = DualEncoderEmbeddings({str(static_model_dir)!r}).embed_query("coral")
print(json.dumps({{"ids": [d.id for d in found], "heavy": {heavy}, "same": embedding == langchain}}))
""")
    assert adapters["heavy"] == ["torch"]  # the placeholder set above, never imported
    assert adapters["ids"][0] == "tides"
    assert adapters["same"] is True


def test_a_query_of_unknown_tokens_only_is_refused(static_model_dir):
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.static_query import UnknownTokensError

    encoder = DualEncoder(str(static_model_dir))
    with pytest.raises(UnknownTokensError, match="unknown to the vocabulary") as raised:
        encoder.encode_query("🦄🦄 🦄")
    assert isinstance(raised.value, ValueError)  # what Haystack and LangChain callers already catch
    # A known word next to unknown ones is fine: the unknown token adds nothing to the mean's direction.
    np.testing.assert_allclose(encoder.encode_query("coral 🦄"), encoder.encode_query("coral"), atol=1e-6)


def test_an_over_long_query_is_truncated_with_one_warning(static_model_dir, caplog):
    from dual_encoder.static_query import StaticQueryEncoder, load_static_query_export

    export = load_static_query_export(static_model_dir)
    # A fresh encoder over the same files, so the warning has not been given yet.
    tower = StaticQueryEncoder(
        tokenizer=export.encoder._tokenizer,
        table=export.encoder.table,
        prompt="",
        normalize=True,
        unknown_token_ids=export.manifest.unknown_token_ids,
        name="test",
    )
    limit = tower.max_tokens
    assert limit == 256
    words = [f"word{i % 50}" for i in range(limit * 2)]
    long_query = " ".join(words)
    with caplog.at_level(logging.WARNING, logger="dual_encoder.static_query"):
        first = tower.encode([long_query])
        tower.encode([long_query, "short"])
    warnings = [record for record in caplog.records if "truncated" in record.getMessage()]
    assert len(warnings) == 1
    ids = tower._tokenizer.encode(long_query, add_special_tokens=False).ids
    expected = export.encoder.table[ids[:limit]].mean(axis=0)
    np.testing.assert_allclose(first[0], expected / np.linalg.norm(expected), atol=1e-6)


def test_an_export_that_no_longer_matches_its_model_is_refused(static_model_dir, tmp_path):
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.static_query import StaleStaticQueryExportError, forget_static_query_exports

    copy = tmp_path / "changed"
    shutil.copytree(static_model_dir, copy)
    config = copy / "config_sentence_transformers.json"
    settings = json.loads(config.read_text(encoding="utf-8"))
    settings["similarity_fn_name"] = "dot"  # changes the space the document vectors are scored in
    config.write_text(json.dumps(settings), encoding="utf-8")
    forget_static_query_exports()
    with pytest.raises(StaleStaticQueryExportError, match="write_static_query_export"):
        DualEncoder(str(copy)).encode_query("tides")


def test_the_wrong_index_is_refused_without_loading_the_document_tower(static_model_dir):
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.errors import EncoderMismatchError
    from dual_encoder.fingerprint import StoredSpace, check_store_compatible

    encoder = DualEncoder(str(static_model_dir))
    fingerprint = encoder.fingerprint
    assert encoder._model is None  # known from the export alone
    check_store_compatible(fingerprint, StoredSpace(fingerprint.document_space, 384, "cosine"), "the store")
    with pytest.raises(EncoderMismatchError, match="Encoder mismatch"):
        check_store_compatible(fingerprint, StoredSpace("ds1-000000000000000000000000", 384, "cosine"), "the store")


def test_a_definition_that_changes_the_space_uses_the_full_model(static_model_dir, minilm):
    from dual_encoder.encoder import DualEncoder

    encoder = DualEncoder({"model": str(static_model_dir), "document_prompt": "passage: "})
    assert encoder.fingerprint.document_space != minilm.fingerprint.document_space
    assert encoder._model is not None
    vector = encoder.encode_query("tides")  # still the static tower, through the loaded model
    np.testing.assert_allclose(vector, DualEncoder(str(static_model_dir)).encode_query("tides"), atol=1e-6)


def test_training_without_labels_uses_the_corpus_alone(tmp_path):
    from dual_encoder.training import train

    data = _write_beir_folder(tmp_path / "data", with_labels=False)
    result = train(_config(data, tmp_path / "model", static_query_epochs=2), announce=None)
    assert result.report["objective"] == "distill"
    assert result.report["status"] == "not_checked"
    assert result.report["data"]["training_pairs"] == 0
    assert any("distillation alone" in note for note in result.report["data"]["notes"])
    losses = [entry["loss"] for entry in result.report["history"]["loss"]]
    assert losses[-1] < losses[0]
    assert (Path(result.model_path) / "static_query" / "static_query.json").is_file()


def test_static_query_settings_are_checked():
    from dual_encoder.errors import ConfigurationError
    from dual_encoder.training import TrainingConfig

    with pytest.raises(ConfigurationError, match="static_query_init"):
        TrainingConfig(data="x", output="y", architecture="static-query", static_query_init="random")
    with pytest.raises(ConfigurationError, match="query_model"):
        TrainingConfig(data="x", output="y", architecture="static-query", query_model="all-MiniLM-L6-v2")
