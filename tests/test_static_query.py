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


# ------------------------------------------------------------------------------------------------ token limits
LONG_TEXT = " ".join(f"tide{number} coral heat pump" for number in range(25))  # far over 16 tokens, under 256


def test_a_token_limit_set_on_a_static_query_model_applies_to_both_towers(static_model_dir, minilm, caplog):
    from dual_encoder.encoder import QUERY_ROUTE, DualEncoder, tower_modules
    from dual_encoder.static_query import load_static_query_export, token_limit

    encoder = DualEncoder({"model": str(static_model_dir), "max_seq_length": 16})
    assert encoder.max_seq_length == 16
    assert token_limit(tower_modules(encoder.model, QUERY_ROUTE)[0]) == 16  # the static tower's tokenizer
    # Another truncation is another document space: the one all-MiniLM-L6-v2 has with the same limit.
    same_limit = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 16})
    assert encoder.fingerprint.document_space == same_limit.fingerprint.document_space
    assert encoder.fingerprint.document_space != minilm.fingerprint.document_space

    with caplog.at_level(logging.WARNING):
        first = encoder.encode_query(LONG_TEXT)
        encoder.encode_queries([LONG_TEXT, "tides"])
        documents = encoder.encode_documents([LONG_TEXT, "Tides are caused by the Moon."])
        encoder.encode_documents([LONG_TEXT])
    query_warnings = [r.getMessage() for r in caplog.records if "static query tower's limit" in r.getMessage()]
    document_warnings = [r.getMessage() for r in caplog.records if "document tower's limit" in r.getMessage()]
    assert len(query_warnings) == 1 and "limit of 16 tokens" in query_warnings[0]
    assert len(document_warnings) == 1 and "limit of 16 tokens" in document_warnings[0]
    export = load_static_query_export(static_model_dir)
    ids = export.encoder._tokenizer.encode(LONG_TEXT, add_special_tokens=False).ids
    assert len(ids) > 16
    expected = export.encoder.table[ids[:16]].mean(axis=0)
    np.testing.assert_allclose(first, expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_allclose(documents, same_limit.encode_documents([LONG_TEXT, "Tides are caused by the Moon."]))


def test_an_over_long_query_through_the_encoder_warns_once_per_loaded_tower(static_model_dir, caplog):
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.static_query import forget_static_query_exports

    forget_static_query_exports()  # the next encoders load the export afresh, so nothing has warned yet
    longest = " ".join(["coral"] * 300)
    first, second = DualEncoder(str(static_model_dir)), DualEncoder(str(static_model_dir))
    with caplog.at_level(logging.WARNING, logger="dual_encoder.static_query"):
        first.encode_query(longest)
        second.encode_queries([longest, "tides", longest])
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warnings == [
        "1 of 1 queries are longer than the static query tower's limit of 256 tokens and were truncated; only their "
        "first 256 tokens are embedded. This warning is shown once per loaded tower."
    ]
    assert first._static_export is not None and first._model is None  # the torch-free path, no model loaded


def _plain_static_model(folder: Path, static_model_dir: Path, *, truncate: bool) -> Path:
    """A Siamese model that is nothing but a StaticEmbedding (both towers static), over the trained table."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(static_model_dir / "static_query" / "tokenizer.json"))
    if not truncate:
        tokenizer.no_truncation()
    table = np.load(static_model_dir / "static_query" / "embeddings.npy")
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=table)], device="cpu").save(str(folder))
    return folder


def test_a_static_document_tower_reports_its_tokenizers_limit_and_takes_another(static_model_dir, tmp_path):
    from dual_encoder.encoder import DualEncoder

    folder = _plain_static_model(tmp_path / "plain", static_model_dir, truncate=True)
    encoder = DualEncoder(str(folder))
    assert encoder.max_seq_length == 256  # its tokenizer's truncation, not StaticEmbedding's infinite limit
    assert len(encoder.model[0].tokenizer.encode(LONG_TEXT, add_special_tokens=False).ids) < 256
    assert encoder.count_truncated([LONG_TEXT, "tides"]) == 0
    assert encoder.count_truncated([" ".join(["coral"] * 300), "tides"]) == 1
    limited = DualEncoder({"model": str(folder), "max_seq_length": 8})
    assert limited.max_seq_length == 8
    assert limited.fingerprint.document_space != encoder.fingerprint.document_space
    assert limited.count_truncated([LONG_TEXT, "tides"]) == 1
    ids = limited.model[0].tokenizer.encode(LONG_TEXT, add_special_tokens=False).ids
    assert len(ids) == 8
    table = np.load(static_model_dir / "static_query" / "embeddings.npy")
    full_ids = encoder.model[0].tokenizer.encode(LONG_TEXT, add_special_tokens=False).ids
    np.testing.assert_allclose(limited.encode_documents([LONG_TEXT])[0], table[full_ids[:8]].mean(axis=0), atol=1e-5)


def test_a_static_tower_whose_tokenizer_does_not_truncate_has_no_limit(static_model_dir, tmp_path):
    from dual_encoder.encoder import DualEncoder

    folder = _plain_static_model(tmp_path / "unlimited", static_model_dir, truncate=False)
    encoder = DualEncoder(str(folder))
    assert encoder.max_seq_length is None
    assert encoder.count_truncated([" ".join(["coral"] * 1000)]) == 0
    assert encoder.fingerprint.dimension == 384  # computed without an infinite limit in it


def test_training_with_a_token_limit_saves_it_in_both_towers(tmp_path):
    from dual_encoder.encoder import DualEncoder
    from dual_encoder.static_query import load_static_query_export
    from dual_encoder.training import train

    data = _write_beir_folder(tmp_path / "data", with_labels=True)
    result = train(_config(data, tmp_path / "model", static_query_epochs=1, max_seq_length=32), announce=None)
    model = Path(result.model_path)
    manifest = load_static_query_export(model).manifest
    assert (manifest.document_max_seq_length, manifest.max_query_tokens) == (32, 32)
    assert DualEncoder(str(model)).max_seq_length == 32
    assert DualEncoder({"model": str(model), "max_seq_length": 32}).load()._static_export is not None
    assert result.report["document_index_still_valid"] is True
    minilm_32 = DualEncoder({"model": "all-MiniLM-L6-v2", "max_seq_length": 32})
    assert result.report["fingerprint"]["document_space"] == minilm_32.fingerprint.document_space
    card = (model / "README.md").read_text(encoding="utf-8")
    assert "inf tokens" not in card
    assert "**Maximum Sequence Length:** 32 tokens for documents, 32 for queries" in card


def test_the_report_goes_through_the_shared_writer(trained, static_model_dir):
    from test_training_outputs import SHARED_KEYS

    assert set(trained.report) == SHARED_KEYS | {"objective", "dev_full_query_tower", "query_encoding"}
    assert json.loads((static_model_dir / "training_report.json").read_text(encoding="utf-8")) == trained.report
    record = json.loads((static_model_dir / "dual_encoder.json").read_text(encoding="utf-8"))
    assert record["architecture"] == "static-query" and record["training_status"] == "not_checked"
    assert record["document_index_still_valid_for_base_model"] is True
    assert record["fingerprint"] == trained.report["fingerprint"]
