"""Weaviate: our store and retriever side by side with weaviate-haystack used directly.

For SciFact (5,183 documents with real all-MiniLM-L6-v2 embeddings) and 100,000 synthetic 384-d vectors:
- ingest throughput (documents/s, embeddings given): DualEncoderWeaviateDocumentStore.write_documents vs
  WeaviateDocumentStore.write_documents, each into a fresh collection, OVERWRITE policy;
- query latency, text to top-10 Documents including query encoding: DualEncoderRetriever over
  StoreEmbeddingRetriever vs DualEncoderTextEmbedder + WeaviateEmbeddingRetriever, alternating per query.

A fresh single-node server is started on free loopback ports (built or reused) and stopped at the end.
Target (issue 3): ingest at least as fast as the direct path; query p50 <= 15 ms at 100,000 documents.
Run: .venv/bin/python benchmarks/weaviate_ingest_query.py   (results: results/weaviate_ingest_query.json)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import argparse
import gc
import tempfile
import time

from _common import scifact_documents_embedded, summary, timed, unit_vectors, write_result
from dual_encoder_weaviate.server import WeaviateServer
from haystack import Document
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.embedders.dual_encoder import DualEncoderTextEmbedder
from haystack_integrations.components.retrievers.dual_encoder import DualEncoderRetriever, StoreEmbeddingRetriever
from haystack_integrations.components.retrievers.weaviate import WeaviateEmbeddingRetriever
from haystack_integrations.document_stores.dual_encoder import DualEncoderWeaviateDocumentStore
from haystack_integrations.document_stores.weaviate import WeaviateDocumentStore
from haystack_integrations.document_stores.weaviate.document_store import DOCUMENT_COLLECTION_PROPERTIES

from dual_encoder.fingerprint import DOCUMENT_SPACE_META_KEY


def direct_store(server: WeaviateServer, name: str) -> WeaviateDocumentStore:
    properties = DOCUMENT_COLLECTION_PROPERTIES + [
        {"name": "title", "dataType": ["text"]},
        {"name": "encoder_fingerprint", "dataType": ["text"]},
        {"name": "encoder_input_digest", "dataType": ["text"]},
    ]
    return WeaviateDocumentStore(
        url=server.url,
        grpc_port=server.ports.grpc,
        collection_settings={
            "class": name,
            "vectorizer": "none",
            "vectorIndexConfig": {"distance": "cosine"},
            "invertedIndexConfig": {"indexNullState": True},
            "properties": properties,
        },
    )


def ours_store(server: WeaviateServer, name: str) -> DualEncoderWeaviateDocumentStore:
    return DualEncoderWeaviateDocumentStore(
        url=server.url, grpc_port=server.ports.grpc, collection_name=name, meta_fields={"title": "text"}
    )


def ingest(store, documents: list[Document], chunk: int = 5000) -> float:
    store.count_documents()  # connect and create the collection outside the timing
    started = time.perf_counter()
    for start in range(0, len(documents), chunk):
        store.write_documents(documents[start : start + chunk], policy=DuplicatePolicy.OVERWRITE)
    elapsed = time.perf_counter() - started
    assert store.count_documents() == len(documents), "not every document was written"
    return len(documents) / elapsed


def compare(server: WeaviateServer, label: str, documents: list[Document], queries: list[str], rounds: int) -> dict:
    # Ingest: alternate which path goes first, fresh collections each time.
    ours_rates, direct_rates = [], []
    for round_number in range(rounds):
        order = [("ours", ours_store), ("direct", direct_store)]
        if round_number % 2:
            order.reverse()
        for name, make in order:
            store = make(server, f"{label}{name.capitalize()}{round_number}")
            (ours_rates if name == "ours" else direct_rates).append(ingest(store, documents))
            if round_number < rounds - 1:
                store.client.collections.delete(store.collection.name)
            store.close()
            gc.collect()
    ours = ours_store(server, f"{label}Ours{rounds - 1}")
    direct = direct_store(server, f"{label}Direct{rounds - 1}")
    our_retriever = DualEncoderRetriever(retriever=StoreEmbeddingRetriever(document_store=ours), top_k=10)
    our_retriever.warm_up()
    text_embedder = DualEncoderTextEmbedder()
    text_embedder.warm_up()
    direct_retriever = WeaviateEmbeddingRetriever(document_store=direct, top_k=10)
    for query in queries[:10]:  # warm connections and caches
        our_retriever.run(query=query)
        direct_retriever.run(query_embedding=text_embedder.run(text=query)["embedding"])
    our_samples, direct_samples = [], []
    for query in queries:
        our_samples += timed(lambda: our_retriever.run(query=query), 1)
        direct_samples += timed(
            lambda: direct_retriever.run(query_embedding=text_embedder.run(text=query)["embedding"]), 1
        )
    ours_query, direct_query = summary(our_samples), summary(direct_samples)
    ours_ingest = sorted(ours_rates)[len(ours_rates) // 2]
    direct_ingest = sorted(direct_rates)[len(direct_rates) // 2]
    return {
        "documents": len(documents),
        "ingest_docs_per_s": {
            "ours_median": round(ours_ingest),
            "direct_median": round(direct_ingest),
            "ours_all": [round(r) for r in ours_rates],
            "direct_all": [round(r) for r in direct_rates],
            "ratio_ours_over_direct": round(ours_ingest / direct_ingest, 2),
        },
        "query_text_to_top10": {
            "ours": ours_query,
            "direct": direct_query,
            "ratio_direct_over_ours_p50": round(direct_query["p50_ms"] / ours_query["p50_ms"], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="ingest repetitions per path at the SciFact scale")
    parser.add_argument("--synthetic", type=int, default=100_000)
    args = parser.parse_args()
    data, scifact = scifact_documents_embedded()
    queries = list(data.queries.values())
    vectors = unit_vectors(args.synthetic, 384, seed=0)
    synthetic = [
        Document(
            id=f"s{i}",
            content=f"synthetic document {i}",
            meta={DOCUMENT_SPACE_META_KEY: scifact[0].meta[DOCUMENT_SPACE_META_KEY]},
            embedding=vectors[i].tolist(),
        )
        for i in range(args.synthetic)
    ]
    del vectors
    with tempfile.TemporaryDirectory() as directory:
        server = WeaviateServer(data_dir=directory).start(quiet=False)
        try:
            result = {
                "scifact": compare(server, "Scifact", scifact, queries, rounds=args.rounds),
                "synthetic_100k": compare(server, "Synthetic", synthetic, queries, rounds=1),
            }
        finally:
            server.stop()
    q = result["synthetic_100k"]["query_text_to_top10"]["ours"]["p50_ms"]
    result["targets"] = {
        "query_p50_ms_at_100k": 15,
        "query_met": q <= 15,
        "ingest_at_least_direct": all(
            result[k]["ingest_docs_per_s"]["ratio_ours_over_direct"] >= 1.0 for k in ("scifact", "synthetic_100k")
        ),
    }
    path = write_result("weaviate_ingest_query", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
