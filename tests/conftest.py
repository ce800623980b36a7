"""Shared fixtures. Models load once per session; the SciFact corpus is encoded once per session."""

from __future__ import annotations

import os

# Set before any library import: nothing in the tests may reach a model hub or send telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path

import pytest

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def minilm():
    """The Siamese all-MiniLM-L6-v2 encoder, loaded once."""
    from dual_encoder.encoder import DualEncoder

    return DualEncoder("all-MiniLM-L6-v2").load()


@pytest.fixture(scope="session")
def builders():
    """``examples/build_pipelines.py`` as a module: the example pipelines, their encoder and the sample corpus."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_pipelines", Path(__file__).resolve().parents[1] / "examples" / "build_pipelines.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def embedded_samples(builders):
    """The sample corpus embedded once, as the example indexing pipeline embeds it (so it passes through unchanged)."""
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder

    embedder = DualEncoderDocumentEmbedder(encoder=builders.ENCODER, meta_fields_to_embed=["title"], progress_bar=False)
    return embedder.run(documents=builders.sample_documents())["documents"]


@pytest.fixture(scope="session")
def index_sample_corpus(builders, embedded_samples):
    """``index_sample_corpus(path)`` writes the sample corpus into an embedded store at ``path`` with the example
    indexing pipeline (its embedder reuses the session's embeddings) and returns that pipeline, not yet closed."""

    def index(path: Path):
        indexing = builders.build_indexing_pipeline(str(path))
        indexing.get_component("embedder").progress_bar = False
        assert indexing.run({"embedder": {"documents": embedded_samples}})["writer"]["documents_written"] == 30
        return indexing

    return index


@pytest.fixture(scope="session")
def asymmetric_model_dir(tmp_path_factory) -> Path:
    """An asymmetric Router model: full all-MiniLM-L6-v2 for documents, its first 3 layers for queries."""
    from sentence_transformers import SentenceTransformer

    from dual_encoder.models import resolve_model_location
    from dual_encoder.towers import combine_towers, keep_first_layers

    document_tower = SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"), device="cpu")
    model = combine_towers(query_tower=keep_first_layers(document_tower, 3), document_tower=document_tower)
    folder = tmp_path_factory.mktemp("models") / "minilm-3layer-query"
    model.save(str(folder))
    return folder


@pytest.fixture(scope="session")
def other_space_model_dir(tmp_path_factory) -> Path:
    """A model with a different document tower (2 layers): a different embedding space of the same size."""
    from sentence_transformers import SentenceTransformer

    from dual_encoder.models import resolve_model_location
    from dual_encoder.towers import keep_first_layers

    model = keep_first_layers(SentenceTransformer(resolve_model_location("all-MiniLM-L6-v2"), device="cpu"), 2)
    folder = tmp_path_factory.mktemp("models") / "minilm-2layer"
    model.save(str(folder))
    return folder


@pytest.fixture(scope="session")
def scifact_folder() -> Path:
    if not SCIFACT.is_dir():
        if IN_CI:
            pytest.fail(f"CI must run the SciFact tests, but {SCIFACT} is missing.")
        pytest.skip(f"{SCIFACT} is absent (a fresh clone without ../shared); SciFact tests need it.")
    return SCIFACT


@pytest.fixture(scope="session")
def scifact_embedded(scifact_folder):
    """SciFact test split and its corpus embedded once through DualEncoderDocumentEmbedder (title + text)."""
    from haystack import Document
    from haystack_integrations.components.embedders.dual_encoder import DualEncoderDocumentEmbedder

    from dual_encoder.evaluation import load_beir

    data = load_beir(scifact_folder, split="test")
    documents = [Document(id=d.id, content=d.text, meta={"title": d.title}) for d in data.corpus.values()]
    embedder = DualEncoderDocumentEmbedder(
        encoder="all-MiniLM-L6-v2", meta_fields_to_embed=["title"], embedding_separator=" ", progress_bar=False
    )
    return data, embedder.run(documents=documents)["documents"]


@pytest.fixture(scope="session")
def weaviate_server(tmp_path_factory):
    """A real Weaviate node on free loopback ports for the whole session (built or reused, always stopped)."""
    from dual_encoder_weaviate.server import WeaviateServer

    server = WeaviateServer(data_dir=tmp_path_factory.mktemp("weaviate")).start(quiet=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def weaviate_cluster(tmp_path_factory):
    """A real 3-node Weaviate cluster on free loopback ports (node1..node3, one data directory each), started
    with the same code as ``dual-encoder weaviate start --nodes 3`` and always stopped."""
    from dual_encoder_weaviate.server import WeaviateCluster

    cluster = WeaviateCluster(data_dir=tmp_path_factory.mktemp("weaviate-cluster"), nodes=3)
    try:
        cluster.start(quiet=False, timeout=300)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def weaviate_env(weaviate_server, monkeypatch):
    """Point WEAVIATE_URL / WEAVIATE_GRPC_PORT at the session's server, as a user's environment would."""
    monkeypatch.setenv("WEAVIATE_URL", weaviate_server.url)
    monkeypatch.setenv("WEAVIATE_GRPC_PORT", str(weaviate_server.ports.grpc))
    monkeypatch.delenv("WEAVIATE_API_KEY", raising=False)
    return weaviate_server


@pytest.fixture
def collection_name(request) -> str:
    """A collection name unique to the test."""
    import re
    import uuid

    return "T" + re.sub(r"[^A-Za-z0-9]", "", request.node.name)[:40] + uuid.uuid4().hex[:6]
